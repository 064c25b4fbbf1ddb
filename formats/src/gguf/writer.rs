//! A GGUF v3 writer, used by tests to create tiny models.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use super::{GgmlType, GgufValue, DEFAULT_ALIGNMENT, GGUF_MAGIC};

/// A tensor waiting to be written.
struct PendingTensor {
    name: String,
    /// ggml order (innermost first).
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

/// Collects metadata and tensors, then writes them as a GGUF v3 file.
///
/// The data alignment is 32 unless `general.alignment` is set.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<PendingTensor>,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl GgufWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a metadata value, replacing any earlier value of the same key
    /// (keys keep the order of their first insertion).
    pub fn add_metadata(&mut self, key: &str, value: GgufValue) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key.to_owned(), value)),
        }
    }

    /// Adds a tensor of row-major shape `shape_row_major` whose stored
    /// blocks of type `ty` are `data`, replacing any earlier tensor of the
    /// same name. The data length is checked by [`GgufWriter::write`].
    pub fn add_tensor(&mut self, name: &str, shape_row_major: &[usize], ty: GgmlType, data: Vec<u8>) {
        let tensor = PendingTensor { name: name.to_owned(), dims: shape_row_major.iter().rev().map(|&d| d as u64).collect(), ty, data };
        match self.tensors.iter_mut().find(|t| t.name == name) {
            Some(slot) => *slot = tensor,
            None => self.tensors.push(tensor),
        }
    }

    /// Adds an F32 tensor of row-major shape `shape_row_major`.
    pub fn add_f32_tensor(&mut self, name: &str, shape_row_major: &[usize], values: &[f32]) {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_tensor(name, shape_row_major, GgmlType::F32, data);
    }

    /// The alignment the file will use.
    fn alignment(&self) -> io::Result<u64> {
        match self.metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => Ok(DEFAULT_ALIGNMENT),
            Some((_, v)) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => Ok(a),
                _ => Err(invalid(format!("general.alignment is {v:?}, expected a non-zero power of two"))),
            },
        }
    }

    /// Writes the file (GGUF v3). Fails with `InvalidInput` if a tensor's
    /// data length does not match its shape and type, or a metadata array
    /// mixes element types.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let alignment = self.alignment()?;
        let mut header = Vec::new();
        header.extend_from_slice(&GGUF_MAGIC);
        header.extend_from_slice(&3u32.to_le_bytes());
        header.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut header, key);
            header.extend_from_slice(&value.type_id().to_le_bytes());
            put_value(&mut header, value, key)?;
        }
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            let n_elements = t.dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            let first = t.dims.first().copied().unwrap_or(1);
            let block = t.ty.block_size().map_or(0, |b| b as u64);
            let expected = n_elements.and_then(|n| t.ty.n_bytes(n)).filter(|_| block != 0 && first % block == 0);
            if expected != Some(t.data.len() as u64) {
                return Err(invalid(format!(
                    "tensor {:?}: dims {:?} (ggml order) of type {} take {} bytes, but {} bytes were given",
                    t.name,
                    t.dims,
                    t.ty,
                    expected.map_or("an invalid number of".to_owned(), |e| e.to_string()),
                    t.data.len()
                )));
            }
            offset = offset.next_multiple_of(alignment);
            offsets.push(offset);
            offset += t.data.len() as u64;
            put_string(&mut header, &t.name);
            header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.ty.id().to_le_bytes());
            header.extend_from_slice(&offsets[offsets.len() - 1].to_le_bytes());
        }
        let padded = (header.len() as u64).next_multiple_of(alignment);
        header.resize(padded as usize, 0);

        let mut out = BufWriter::new(File::create(path)?);
        out.write_all(&header)?;
        // Like ggml, pad after every tensor's data, so the file ends aligned.
        let mut written = 0u64;
        for (t, &at) in self.tensors.iter().zip(&offsets) {
            out.write_all(&vec![0u8; (at - written) as usize])?;
            out.write_all(&t.data)?;
            written = at + t.data.len() as u64;
        }
        let end = written.next_multiple_of(alignment);
        out.write_all(&vec![0u8; (end - written) as usize])?;
        out.flush()
    }
}

fn put_string(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// Appends the payload of a value (without its type id).
fn put_value(buf: &mut Vec<u8>, value: &GgufValue, key: &str) -> io::Result<()> {
    match value {
        GgufValue::U8(v) => buf.push(*v),
        GgufValue::I8(v) => buf.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U16(v) => buf.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I16(v) => buf.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        GgufValue::F32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        GgufValue::F64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        GgufValue::Bool(v) => buf.push(u8::from(*v)),
        GgufValue::String(s) => put_string(buf, s),
        GgufValue::Array(items) => {
            // An empty array is written with element type u8.
            let elem_type = items.first().map_or(0, GgufValue::type_id);
            if let Some(bad) = items.iter().find(|v| v.type_id() != elem_type) {
                return Err(invalid(format!("metadata key {key:?}: array mixes element type ids {elem_type} and {}", bad.type_id())));
            }
            buf.extend_from_slice(&elem_type.to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            // Elements that are arrays carry their own element type and length.
            for item in items {
                put_value(buf, item, key)?;
            }
        }
    }
    Ok(())
}
