//! The fields of a Parquet file that a structure-aware mutation rewrites:
//! the footer length, and every integer, length and collection size of the
//! Thrift compact-protocol footer and page headers.

use crate::mutate::{read_varint, Field, Width};

/// Walks Thrift compact-protocol structs, recording their numeric fields.
struct Walker<'a> {
    buf: &'a [u8],
    pos: usize,
    fields: Vec<Field>,
    /// Where a `compressed_page_size` (PageHeader field 3) was last read.
    last_i32s: Vec<(i16, i64)>,
}

impl Walker<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn varint(&mut self, zigzag: bool) -> Option<u64> {
        let (v, n) = read_varint(self.buf, self.pos)?;
        let width = if zigzag { Width::Zigzag(n as u8) } else { Width::Varint(n as u8) };
        self.fields.push(Field { at: self.pos, width });
        self.pos += n;
        Some(v)
    }

    fn value(&mut self, ty: u8, depth: usize, id: i16) -> Option<()> {
        if depth > 32 {
            return None;
        }
        match ty {
            1 | 2 => {}
            3 => {
                self.fields.push(Field { at: self.pos, width: Width::Le(1) });
                self.byte()?;
            }
            4..=6 => {
                let raw = self.varint(true)?;
                let v = ((raw >> 1) as i64) ^ -((raw & 1) as i64);
                if depth == 0 {
                    self.last_i32s.push((id, v));
                }
            }
            7 => self.pos += 8,
            8 => {
                let n = self.varint(false)? as usize;
                self.pos = self.pos.checked_add(n)?;
            }
            9 | 10 => {
                let head = self.byte()?;
                let elem = head & 0x0f;
                let mut n = u64::from(head >> 4);
                if n == 15 {
                    n = self.varint(false)?;
                }
                for _ in 0..n.min(100_000) {
                    if elem == 1 || elem == 2 {
                        self.byte()?;
                    } else {
                        self.value(elem, depth + 1, 0)?;
                    }
                }
            }
            11 => {
                let n = self.varint(false)?;
                if n > 0 {
                    let kinds = self.byte()?;
                    for _ in 0..n.min(100_000) {
                        self.value(kinds >> 4, depth + 1, 0)?;
                        self.value(kinds & 0x0f, depth + 1, 0)?;
                    }
                }
            }
            12 => self.strukt(depth + 1)?,
            _ => return None,
        }
        (self.pos <= self.buf.len()).then_some(())
    }

    fn strukt(&mut self, depth: usize) -> Option<()> {
        let mut last_id = 0i16;
        loop {
            let head = self.byte()?;
            if head == 0 {
                return Some(());
            }
            let delta = head >> 4;
            let id = if delta == 0 {
                let raw = self.varint(true)?;
                ((raw >> 1) as i64 ^ -((raw & 1) as i64)) as i16
            } else {
                last_id.wrapping_add(i16::from(delta))
            };
            last_id = id;
            self.value(head & 0x0f, depth, id)?;
        }
    }
}

/// The fields of a Parquet file: its footer length, the footer's numbers,
/// and those of the page headers found by following each page's compressed size.
pub fn parquet_fields(data: &[u8]) -> Vec<Field> {
    let mut fields = Vec::new();
    let len = data.len();
    if len < 12 {
        return fields;
    }
    fields.push(Field { at: len - 8, width: Width::Le(4) });
    let footer_len = u32::from_le_bytes([data[len - 8], data[len - 7], data[len - 6], data[len - 5]]) as usize;
    let footer_start = (len - 8).saturating_sub(footer_len);
    let mut w = Walker { buf: &data[..len - 8], pos: footer_start, fields: Vec::new(), last_i32s: Vec::new() };
    let _ = w.strukt(0);
    fields.append(&mut w.fields);
    // Page headers: PageHeader field 3 is the compressed page size.
    let mut pos = 4;
    while pos < footer_start {
        let mut w = Walker { buf: &data[..footer_start], pos, fields: Vec::new(), last_i32s: Vec::new() };
        if w.strukt(0).is_none() {
            break;
        }
        let size = w.last_i32s.iter().find(|(id, _)| *id == 3).map(|&(_, v)| v);
        fields.append(&mut w.fields);
        match size {
            Some(s) if s >= 0 => pos = w.pos + s as usize,
            _ => break,
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_length_and_page_header_fields_are_found() {
        // PAR1, a page header {1: i32 0, 2: i32 3, 3: i32 3, stop} and 3 data
        // bytes, a footer {1: i32 1, stop}, its length and PAR1.
        let mut file = b"PAR1".to_vec();
        file.extend([0x15, 0x00, 0x15, 0x06, 0x15, 0x06, 0x00, 9, 9, 9]);
        let footer = [0x15, 0x02, 0x00];
        file.extend(footer);
        file.extend((footer.len() as u32).to_le_bytes());
        file.extend(b"PAR1");
        let at: Vec<usize> = parquet_fields(&file).iter().map(|f| f.at).collect();
        assert_eq!(at, [file.len() - 8, 15, 5, 7, 9]);
    }
}
