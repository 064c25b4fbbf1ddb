//! Checks that a Parquet file from a stranger is safe to decode, before the
//! `parquet` crate decodes it, and a last line of defence around decoding.
//!
//! The `parquet` crate trusts the sizes a file declares: a page header that
//! claims 2^31 uncompressed bytes or values makes it reserve that much
//! memory, and negative offsets in the footer make it panic. [`check`]
//! reads the footer's column chunks and every page header (Thrift compact
//! protocol) and refuses, with what it expected and what it found:
//! - a column chunk whose byte range is negative or lies outside the data
//!   before the footer;
//! - a page whose header is unreadable, whose compressed bytes run past its
//!   column chunk, that declares more than [`MAX_PAGE_BYTES`] uncompressed
//!   bytes or more than [`MAX_PAGE_VALUES`] values (or a negative count);
//! - a dictionary-encoded data page in a column chunk with no dictionary page.
//!
//! [`check_footer`] runs before the crate decodes the footer, whose schema
//! elements' child counts it would otherwise trust.
//!
//! What no header check can see (for example a page whose value count
//! disagrees with its levels) still makes the crate panic; [`Guarded`] and
//! [`catch`] turn such a panic into an error.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};

use arrow_array::RecordBatch;
use arrow_schema::ArrowError;
use parquet::arrow::arrow_reader::ParquetRecordBatchReader;
use parquet::errors::ParquetError;
use parquet::file::metadata::ParquetMetaData;

/// The most uncompressed bytes one page may declare (32 MiB). Writers cut
/// pages at about 1 MiB; a bigger page holds one huge value.
pub const MAX_PAGE_BYTES: i64 = 32 << 20;

/// The most values one page may declare (2^22). Writers cut pages at 20,000
/// rows; list columns hold more values than rows, but not 200 per row.
pub const MAX_PAGE_VALUES: i64 = 1 << 22;

/// Largest page header read (headers carry min/max statistics).
const MAX_HEADER_BYTES: usize = 16 << 20;

/// Thrift compact type ids.
const T_BOOL_TRUE: u8 = 1;
const T_BOOL_FALSE: u8 = 2;
const T_STRUCT: u8 = 12;

/// The fields of a page header that are checked.
#[derive(Default, Debug)]
struct PageHeader {
    page_type: i64,
    uncompressed: i64,
    compressed: i64,
    num_values: Option<i64>,
    encoding: Option<i64>,
}

/// A Thrift compact-protocol reader over a header's bytes.
struct Thrift<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Thrift<'_> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.buf.get(self.pos).ok_or("the header ends early")?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            if shift < 64 {
                v |= u64::from(b & 0x7f) << shift;
            }
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("a varint longer than 10 bytes".into())
    }

    fn int(&mut self) -> Result<i64, String> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn skip(&mut self, ty: u8, depth: usize) -> Result<(), String> {
        if depth > 16 {
            return Err("structures nested more than 16 deep".into());
        }
        match ty {
            T_BOOL_TRUE | T_BOOL_FALSE => {}
            3 => {
                self.byte()?;
            }
            4..=6 => {
                self.varint()?;
            }
            7 => self.advance(8)?,
            8 => {
                let n = self.varint()?;
                self.advance(usize::try_from(n).map_err(|_| "a string length past the header")?)?;
            }
            9 | 10 => {
                let head = self.byte()?;
                let n = if head >> 4 == 15 { self.varint()? } else { u64::from(head >> 4) };
                if n > self.buf.len() as u64 {
                    return Err(format!("a list of {n} elements in a header of {} bytes", self.buf.len()));
                }
                for _ in 0..n {
                    self.skip(head & 0x0f, depth + 1)?;
                }
            }
            11 => {
                let n = self.varint()?;
                if n > self.buf.len() as u64 {
                    return Err(format!("a map of {n} entries in a header of {} bytes", self.buf.len()));
                }
                if n > 0 {
                    let kinds = self.byte()?;
                    for _ in 0..n {
                        self.skip(kinds >> 4, depth + 1)?;
                        self.skip(kinds & 0x0f, depth + 1)?;
                    }
                }
            }
            T_STRUCT => self.each_field(depth + 1, &mut |t, _, ty| t.skip(ty, depth + 1))?,
            other => return Err(format!("unknown Thrift type {other}")),
        }
        Ok(())
    }

    fn advance(&mut self, n: usize) -> Result<(), String> {
        if n > self.buf.len() - self.pos {
            return Err("the header ends early".into());
        }
        self.pos += n;
        Ok(())
    }

    /// Calls `f(self, field id, type)` for each field of a struct; `f` must consume the value.
    fn each_field(&mut self, depth: usize, f: &mut dyn FnMut(&mut Self, i64, u8) -> Result<(), String>) -> Result<(), String> {
        let mut id = 0i64;
        loop {
            let head = self.byte()?;
            if head == 0 {
                return Ok(());
            }
            id = if head >> 4 == 0 { self.int()? } else { id + i64::from(head >> 4) };
            let ty = head & 0x0f;
            if depth > 16 {
                return Err("structures nested more than 16 deep".into());
            }
            f(self, id, ty)?;
        }
    }

    fn page_header(&mut self) -> Result<PageHeader, String> {
        let mut h = PageHeader { page_type: -1, uncompressed: -1, compressed: -1, ..PageHeader::default() };
        self.each_field(0, &mut |t, id, ty| match (id, ty) {
            (1, 5) => t.int().map(|v| h.page_type = v),
            (2, 5) => t.int().map(|v| h.uncompressed = v),
            (3, 5) => t.int().map(|v| h.compressed = v),
            // Data page (v1 and v2) and dictionary page headers: field 1 is
            // the number of values; field 2 (v1, dictionary) or 4 (v2) the encoding.
            (5 | 7 | 8, T_STRUCT) => {
                let encoding_field = if id == 8 { 4 } else { 2 };
                t.each_field(1, &mut |t, sub, ty| match (sub, ty) {
                    (1, 5) => t.int().map(|v| h.num_values = Some(v)),
                    (s, 5) if s == encoding_field => t.int().map(|v| h.encoding = Some(v)),
                    (_, ty) => t.skip(ty, 2),
                })
            }
            (_, ty) => t.skip(ty, 1),
        })?;
        Ok(h)
    }
}

/// Checks the footer before the `parquet` crate decodes it: every schema
/// element's child count must be one the schema can hold (the crate
/// reserves room for that many children first).
pub fn check_footer(file: &File, file_len: u64) -> Result<(), ParquetError> {
    check_footer_inner(file, file_len).map_err(|e| ParquetError::General(format!("corrupt Parquet file: {e}")))
}

fn check_footer_inner(file: &File, file_len: u64) -> Result<(), String> {
    if file_len < 12 {
        return Ok(());
    }
    let mut tail = [0u8; 4];
    file.read_exact_at(&mut tail, file_len - 8).map_err(|e| format!("cannot read the footer length: {e}"))?;
    let footer_len = u64::from(u32::from_le_bytes(tail));
    if footer_len > file_len - 12 {
        // The parquet crate reports this one itself.
        return Ok(());
    }
    let mut buf = vec![0u8; footer_len as usize];
    file.read_exact_at(&mut buf, file_len - 8 - footer_len).map_err(|e| format!("cannot read the footer: {e}"))?;
    let mut t = Thrift { buf: &buf, pos: 0 };
    // A footer this walk cannot follow is left to the parquet crate, whose
    // errors say more; only a child count found out of range is refused.
    match schema_children(&mut t) {
        Err(e) if e.starts_with("schema element") => Err(e),
        _ => Ok(()),
    }
}

/// Walks FileMetaData up to its schema (field 2, a list of SchemaElement)
/// and checks each element's num_children (field 5). Known fields are read
/// by their declared Parquet types whatever type the field header names, as
/// the parquet crate reads them.
fn schema_children(t: &mut Thrift<'_>) -> Result<(), String> {
    let mut id = 0i64;
    loop {
        let head = t.byte()?;
        if head == 0 {
            return Ok(());
        }
        id = if head >> 4 == 0 { t.int()? } else { id + i64::from(head >> 4) };
        match id {
            1 => {
                t.varint()?;
            }
            2 => break,
            _ => t.skip(head & 0x0f, 1)?,
        }
    }
    let head = t.byte()?;
    let n = if head >> 4 == 15 { t.varint()? } else { u64::from(head >> 4) };
    for i in 0..n {
        let mut sub = 0i64;
        loop {
            let head = t.byte()?;
            if head == 0 {
                break;
            }
            sub = if head >> 4 == 0 { t.int()? } else { sub + i64::from(head >> 4) };
            match sub {
                5 => {
                    let children = t.int()?;
                    if children < 0 || children as u64 >= n {
                        return Err(format!(
                            "schema element {i} declares {children} children, expected 0 to {} (the schema has {n} elements)",
                            n.saturating_sub(1)
                        ));
                    }
                }
                1..=3 | 6..=9 => {
                    t.varint()?;
                }
                4 => {
                    let len = t.varint()?;
                    t.advance(usize::try_from(len).map_err(|_| "a name longer than the footer")?)?;
                }
                _ => t.skip(head & 0x0f, 2)?,
            }
        }
    }
    Ok(())
}

/// Reads the page header at `offset`, growing the read window up to
/// [`MAX_HEADER_BYTES`] (never past `end`); returns it and its length.
fn read_header(file: &File, offset: u64, end: u64) -> Result<(PageHeader, u64), String> {
    let mut window = 64usize << 10;
    loop {
        let len = window.min((end - offset) as usize);
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).map_err(|e| format!("cannot read the page header at offset {offset}: {e}"))?;
        let mut t = Thrift { buf: &buf, pos: 0 };
        match t.page_header() {
            Ok(h) => return Ok((h, t.pos as u64)),
            Err(e) if len < window || window >= MAX_HEADER_BYTES => {
                return Err(format!("unreadable page header at offset {offset}: {e}"));
            }
            Err(_) => window *= 4,
        }
    }
}

/// Checks the footer's column chunks and every page header of the file
/// against the limits above. `file_len` is the file's length.
pub fn check(file: &File, file_len: u64, metadata: &ParquetMetaData) -> Result<(), ParquetError> {
    check_inner(file, file_len, metadata).map_err(|e| ParquetError::General(format!("corrupt Parquet file: {e}")))
}

fn check_inner(file: &File, file_len: u64, metadata: &ParquetMetaData) -> Result<(), String> {
    // The data lies between the leading magic and the footer (metadata,
    // its 4-byte length and the trailing magic).
    let mut tail = [0u8; 4];
    file.read_exact_at(&mut tail, file_len.saturating_sub(8)).map_err(|e| format!("cannot read the footer length: {e}"))?;
    let data_end = file_len.saturating_sub(8).saturating_sub(u64::from(u32::from_le_bytes(tail)));
    for (g, group) in metadata.row_groups().iter().enumerate() {
        if group.num_rows() < 0 {
            return Err(format!("row group {g} declares {} rows, expected a count of at least 0", group.num_rows()));
        }
        for (c, chunk) in group.columns().iter().enumerate() {
            let at = || format!("row group {g}, column {c} (`{}`)", chunk.column_path());
            let start = chunk.dictionary_page_offset().unwrap_or(chunk.data_page_offset());
            let size = chunk.compressed_size();
            if start < 4 || size < 0 || (start as u64).saturating_add(size as u64) > data_end {
                return Err(format!(
                    "{}: column chunk of {size} bytes at offset {start}, expected it within the data section (bytes 4 to {data_end})",
                    at()
                ));
            }
            let (mut pos, end) = (start as u64, start as u64 + size as u64);
            let mut has_dictionary = false;
            while pos < end {
                let (h, header_len) = read_header(file, pos, end).map_err(|e| format!("{}: {e}", at()))?;
                let page = || format!("{}: page at offset {pos}", at());
                if h.compressed < 0 || h.uncompressed < 0 {
                    return Err(format!(
                        "{}: page sizes {} (compressed) and {} (uncompressed), expected sizes of at least 0",
                        page(),
                        h.compressed,
                        h.uncompressed
                    ));
                }
                if h.uncompressed > MAX_PAGE_BYTES {
                    return Err(format!("{}: declares {} uncompressed bytes, expected at most {MAX_PAGE_BYTES}", page(), h.uncompressed));
                }
                if let Some(n) = h.num_values {
                    if !(0..=MAX_PAGE_VALUES).contains(&n) {
                        return Err(format!("{}: declares {n} values, expected 0 to {MAX_PAGE_VALUES}", page()));
                    }
                }
                let next = pos + header_len + h.compressed as u64;
                if next > end {
                    return Err(format!(
                        "{}: {} compressed bytes after a {header_len}-byte header run past the column chunk's end at {end}",
                        page(),
                        h.compressed
                    ));
                }
                // Page types: 0 data, 2 dictionary, 3 data v2. Encodings 2 and
                // 8 are PLAIN_DICTIONARY and RLE_DICTIONARY.
                match h.page_type {
                    2 => has_dictionary = true,
                    0 | 3 if matches!(h.encoding, Some(2 | 8)) && !has_dictionary => {
                        return Err(format!("{}: a dictionary-encoded data page, but the column chunk has no dictionary page", page()));
                    }
                    _ => {}
                }
                pos = next;
            }
        }
    }
    Ok(())
}

/// The message of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs `f`, turning a panic inside the `parquet` crate into an error.
pub fn catch<T>(f: impl FnOnce() -> Result<T, ParquetError>) -> Result<T, ParquetError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        Err(ParquetError::General(format!("corrupt Parquet file: the Parquet reader failed on it ({})", panic_message(payload.as_ref()))))
    })
}

/// A record-batch reader whose panics (on corrupt data no header check
/// sees) become an error, after which it yields nothing.
pub struct Guarded {
    inner: ParquetRecordBatchReader,
    failed: bool,
}

impl Guarded {
    /// Wraps a reader.
    pub fn new(inner: ParquetRecordBatchReader) -> Self {
        Guarded { inner, failed: false }
    }
}

impl Iterator for Guarded {
    type Item = Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match catch_unwind(AssertUnwindSafe(|| self.inner.next())) {
            Ok(item) => item,
            Err(payload) => {
                self.failed = true;
                Some(Err(ArrowError::ParquetError(format!(
                    "corrupt Parquet file: the Parquet reader failed on it ({})",
                    panic_message(payload.as_ref())
                ))))
            }
        }
    }
}
