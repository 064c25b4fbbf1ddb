//! Mutations: generic byte-level ones, rewrites of the length, count and
//! offset fields a target's format declares, and JSON-aware ones.

use serde_json::Value;

/// A small deterministic generator (SplitMix64).
pub struct Rng(u64);

impl Rng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True with probability 1/`n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// A random element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// How a field is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    /// Little-endian unsigned integer of 1, 2, 4 or 8 bytes.
    Le(u8),
    /// Unsigned LEB128 varint of this many bytes (Thrift's compact protocol
    /// stores i32/i64 zigzag-encoded, lengths and sizes plain).
    Varint(u8),
    /// Zigzag-encoded varint of this many bytes (Thrift i16/i32/i64).
    Zigzag(u8),
    /// Decimal digits in text (JSON numbers) of this many bytes.
    Decimal(u8),
}

/// A length, count, offset or type field of a format, found in an input.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Byte offset of the field in the input.
    pub at: usize,
    /// How it is stored.
    pub width: Width,
}

/// Values that break arithmetic and bounds checks, given the field's current
/// value and the input length.
fn interesting(rng: &mut Rng, current: u64, len: u64) -> u64 {
    let candidates = [
        0,
        1,
        2,
        current.wrapping_sub(1),
        current.wrapping_add(1),
        current.wrapping_mul(2),
        current / 2,
        current.wrapping_add(len),
        len,
        len.wrapping_sub(1),
        len + 1,
        0x7f,
        0xff,
        0x7fff,
        0xffff,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_ffff,
        1 << 32,
        1 << 40,
        1 << 62,
        i64::MAX as u64,
        1 << 63,
        u64::MAX,
        u64::MAX - 7,
        rng.below(2 * len.max(16) as usize) as u64,
        rng.next_u64(),
    ];
    *rng.pick(&candidates)
}

fn read_le(data: &[u8], at: usize, n: usize) -> u64 {
    let mut v = 0u64;
    for i in (0..n).rev() {
        v = (v << 8) | u64::from(data[at + i]);
    }
    v
}

/// Decodes a varint at `at`; returns its value and length.
pub fn read_varint(data: &[u8], at: usize) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for i in 0..10 {
        let b = *data.get(at + i)?;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// Rewrites one field with an interesting value (the input may change length).
pub fn rewrite_field(data: &mut Vec<u8>, field: Field, rng: &mut Rng) {
    let len = data.len() as u64;
    match field.width {
        Width::Le(n) => {
            let n = n as usize;
            if field.at + n > data.len() {
                return;
            }
            let v = interesting(rng, read_le(data, field.at, n), len);
            data[field.at..field.at + n].copy_from_slice(&v.to_le_bytes()[..n]);
        }
        Width::Varint(n) | Width::Zigzag(n) => {
            let n = n as usize;
            if field.at + n > data.len() {
                return;
            }
            let zigzag = matches!(field.width, Width::Zigzag(_));
            let raw = read_varint(data, field.at).map(|(v, _)| v).unwrap_or(0);
            let current = if zigzag { (raw >> 1) ^ (raw & 1).wrapping_neg() } else { raw };
            let mut v = interesting(rng, current, len);
            if zigzag {
                // Small negative values matter as much as large ones.
                if rng.one_in(4) {
                    v = (rng.below(4) as u64 + 1).wrapping_neg();
                }
                v = (v << 1) ^ (((v as i64) >> 63) as u64);
            }
            data.splice(field.at..field.at + n, varint(v));
        }
        Width::Decimal(n) => {
            let n = n as usize;
            if field.at + n > data.len() {
                return;
            }
            let text = String::from_utf8_lossy(&data[field.at..field.at + n]).into_owned();
            let current = text.trim_start_matches('-').parse::<u64>().unwrap_or(0);
            let v = interesting(rng, current, len);
            let new = match rng.below(6) {
                0 => format!("-{v}"),
                1 => format!("{v}.5"),
                2 => format!("{v}e300"),
                _ => v.to_string(),
            };
            data.splice(field.at..field.at + n, new.into_bytes());
        }
    }
}

/// The decimal numbers of a text (JSON), as fields.
pub fn decimal_fields(data: &[u8]) -> Vec<Field> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        if data[i].is_ascii_digit() || (data[i] == b'-' && data.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let start = i;
            i += 1;
            while i < data.len() && data[i].is_ascii_digit() {
                i += 1;
            }
            out.push(Field { at: start, width: Width::Decimal((i - start).min(255) as u8) });
        } else {
            i += 1;
        }
    }
    out
}

/// One generic byte-level mutation of `data`; `other` is another input to
/// splice from.
pub fn generic(data: &mut Vec<u8>, other: &[u8], rng: &mut Rng) {
    let len = data.len();
    match rng.below(10) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = *rng.pick(&[0u8, 1, 0x7f, 0x80, 0xff, b'"', b'{', b'[', b'0', b'-', b' ']);
        }
        2 if len > 0 => {
            let i = rng.below(len);
            data[i] = rng.next_u64() as u8;
        }
        3 if len >= 8 => {
            let n = *rng.pick(&[2usize, 4, 8]);
            let i = rng.below(len - n + 1);
            let v = interesting(rng, read_le(data, i, n), len as u64);
            data[i..i + n].copy_from_slice(&v.to_le_bytes()[..n]);
        }
        4 => {
            let i = rng.below(len + 1);
            let n = 1 + rng.below(32);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            data.splice(i..i, bytes);
        }
        5 if len > 0 => {
            let i = rng.below(len);
            let n = 1 + rng.below((len - i).min(256));
            data.drain(i..i + n);
        }
        6 if len > 0 => {
            let i = rng.below(len);
            let n = 1 + rng.below((len - i).min(256));
            let chunk = data[i..i + n].to_vec();
            let at = rng.below(len + 1);
            data.splice(at..at, chunk);
        }
        7 if !other.is_empty() => {
            // Splice: a prefix of this input and a suffix of the other.
            let cut = rng.below(len + 1);
            let from = rng.below(other.len());
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        8 if len > 0 => {
            data.truncate(rng.below(len));
        }
        _ if len > 1 => {
            let from = rng.below(len);
            let to = rng.below(len);
            let n = 1 + rng.below((len - from.max(to)).min(64));
            data.copy_within(from..from + n, to);
        }
        _ => data.push(rng.next_u64() as u8),
    }
}

/// A JSON value that breaks a reader expecting another: wrong types, huge
/// and negative numbers, deep nesting, long strings.
pub fn weird_json(rng: &mut Rng) -> Value {
    match rng.below(16) {
        0 => Value::Null,
        1 => Value::Bool(rng.one_in(2)),
        2 => serde_json::json!(0),
        3 => serde_json::json!(-1),
        4 => serde_json::json!(1u64 << 40),
        5 => serde_json::json!(u64::MAX),
        6 => serde_json::json!(i64::MIN),
        7 => serde_json::json!(1e300),
        8 => serde_json::json!(-0.5),
        9 => serde_json::json!(""),
        10 => Value::String("é\u{0}\u{ffff}".repeat(1 + rng.below(40))),
        11 => serde_json::json!([]),
        12 => serde_json::json!({}),
        13 => {
            let mut v = serde_json::json!(1);
            for _ in 0..rng.below(200) {
                v = serde_json::json!([v]);
            }
            v
        }
        14 => serde_json::json!(rng.below(100_000)),
        _ => serde_json::json!([1, "a", null, 2.5]),
    }
}

/// Collects mutable references to every node of a JSON tree, in preorder.
fn nodes(v: &mut Value) -> Vec<*mut Value> {
    let mut out = Vec::new();
    let mut stack = vec![v as *mut Value];
    while let Some(p) = stack.pop() {
        out.push(p);
        // SAFETY: `p` points into the tree owned by the caller; children are
        // distinct allocations and the tree is not reshaped while we walk.
        match unsafe { &mut *p } {
            Value::Array(items) => stack.extend(items.iter_mut().map(|c| c as *mut Value)),
            Value::Object(map) => stack.extend(map.values_mut().map(|c| c as *mut Value)),
            _ => {}
        }
    }
    out
}

/// One mutation of a JSON tree: a node replaced, removed, duplicated or
/// grown. `keys` are key names the reader knows, to add where they are not.
pub fn mutate_json(root: &mut Value, keys: &[&str], rng: &mut Rng) {
    let all = nodes(root);
    let target = *rng.pick(&all);
    // SAFETY: one node of the tree, which is not otherwise borrowed now.
    let node = unsafe { &mut *target };
    match rng.below(6) {
        0 | 1 => *node = weird_json(rng),
        2 => match node {
            Value::Object(map) if !map.is_empty() => {
                let k = map.keys().nth(rng.below(map.len())).cloned().unwrap_or_default();
                map.remove(&k);
            }
            Value::Array(items) if !items.is_empty() => {
                let i = rng.below(items.len());
                items.remove(i);
            }
            _ => *node = weird_json(rng),
        },
        3 => match node {
            Value::Array(items) if !items.is_empty() => {
                let i = rng.below(items.len());
                let copy = items[i].clone();
                for _ in 0..1 + rng.below(3) {
                    items.push(copy.clone());
                }
            }
            Value::Object(map) if !keys.is_empty() => {
                map.insert(rng.pick(keys).to_string(), weird_json(rng));
            }
            _ => *node = weird_json(rng),
        },
        4 => {
            if let Value::Object(map) = node {
                if !keys.is_empty() {
                    map.insert(rng.pick(keys).to_string(), weird_json(rng));
                }
            } else if let Some(n) = node.as_u64() {
                *node = serde_json::json!(n.wrapping_mul(1 + rng.below(1 << 20) as u64));
            } else if let Some(s) = node.as_str() {
                *node = Value::String(format!("{s}{s}"));
            }
        }
        _ => {
            if let Some(n) = node.as_i64() {
                *node = serde_json::json!(n.wrapping_neg());
            } else {
                *node = weird_json(rng);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let bytes = varint(v);
            assert_eq!(read_varint(&bytes, 0), Some((v, bytes.len())));
        }
    }

    #[test]
    fn little_endian_rewrites_keep_the_length() {
        let mut rng = Rng::new(1);
        for _ in 0..100 {
            let mut data = vec![7u8; 16];
            rewrite_field(&mut data, Field { at: 4, width: Width::Le(8) }, &mut rng);
            assert_eq!(data.len(), 16);
            assert_eq!(&data[..4], &[7, 7, 7, 7]);
        }
    }

    #[test]
    fn json_numbers_are_fields() {
        let fields = decimal_fields(br#"{"a": 12, "b": [-3, 4.5]}"#);
        let found: Vec<(usize, Width)> = fields.iter().map(|f| (f.at, f.width)).collect();
        assert_eq!(found, [(6, Width::Decimal(2)), (16, Width::Decimal(2)), (20, Width::Decimal(1)), (22, Width::Decimal(1))]);
    }
}
