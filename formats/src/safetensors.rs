//! Reading and writing safetensors files (Hugging Face checkpoints), single
//! or sharded with `model.safetensors.index.json`. f32, f16 and bf16 are
//! read into f32; files are parsed by Hugging Face's `safetensors` crate.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;

use half::{bf16, f16};
use serde_json::Value;

use crate::error::FormatError;
use crate::weights::{HostTensor, WeightMap};

/// Largest JSON header accepted: real checkpoints stay far below it, and a
/// corrupt length field must not make us allocate gigabytes.
const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// Storage type of a tensor in a safetensors file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    /// IEEE single precision.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
}

impl StoredDtype {
    /// Name used in the safetensors header.
    pub fn as_str(self) -> &'static str {
        match self {
            StoredDtype::F32 => "F32",
            StoredDtype::F16 => "F16",
            StoredDtype::BF16 => "BF16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StoredDtype::F32 => 4,
            StoredDtype::F16 | StoredDtype::BF16 => 2,
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "F32" => Some(StoredDtype::F32),
            "F16" => Some(StoredDtype::F16),
            "BF16" => Some(StoredDtype::BF16),
            _ => None,
        }
    }

    /// Encodes f32 values in this storage type (round to nearest even).
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(values.len() * self.size());
        match self {
            StoredDtype::F32 => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            StoredDtype::F16 => values.iter().for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
            StoredDtype::BF16 => values.iter().for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
        }
        out
    }

    fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            StoredDtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            StoredDtype::F16 => bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            StoredDtype::BF16 => bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        }
    }
}

/// Reads every tensor of one safetensors file into `weights`.
pub fn read_file_into(path: &Path, weights: &mut WeightMap) -> Result<(), FormatError> {
    let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
    // SAFETY: the file is opened read-only; a concurrent truncation by another
    // process is outside what any reader of checkpoints can guard against.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
    let bytes: &[u8] = &map;
    if bytes.len() < 8 {
        return Err(FormatError::format(
            path,
            format!("not a safetensors file: {} bytes, expected at least an 8-byte header length", bytes.len()),
        ));
    }
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let available = bytes.len() as u64 - 8;
    if header_len > available || header_len > MAX_HEADER_BYTES {
        return Err(FormatError::format(
            path,
            format!("safetensors header claims {header_len} bytes but the file has {available} bytes after the length field (truncated or not a safetensors file)"),
        ));
    }
    // Hugging Face's parser checks that every tensor's bytes lie within the
    // data section, match its shape and dtype, and overlap no other tensor's.
    let parsed = ::safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| FormatError::format(path, format!("not a valid safetensors file: {e} (truncated file or corrupt header)")))?;
    for (name, view) in parsed.tensors() {
        let dtype_name = format!("{:?}", view.dtype());
        let dtype = StoredDtype::parse(&dtype_name)
            .ok_or_else(|| FormatError::format(path, format!("tensor `{name}` has dtype {dtype_name}; supported: F32, F16, BF16")))?;
        weights.insert(name, HostTensor::new(view.shape().to_vec(), dtype.decode(view.data())));
    }
    Ok(())
}

/// Reads the weights of a Hugging Face checkpoint directory: `model.safetensors`,
/// or the shards listed in `model.safetensors.index.json`.
pub fn read_checkpoint_dir(dir: &Path) -> Result<WeightMap, FormatError> {
    let mut weights = WeightMap::new(dir);
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if single.is_file() {
        read_file_into(&single, &mut weights)?;
    } else if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| FormatError::io(&index, e))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| FormatError::format(&index, format!("not valid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| FormatError::format(&index, "expected an object `weight_map` of tensor name -> shard file"))?;
        let mut shards: Vec<&str> = map.values().filter_map(Value::as_str).collect();
        shards.sort_unstable();
        shards.dedup();
        for shard in shards {
            let shard_path = dir.join(shard);
            if !shard_path.is_file() {
                return Err(FormatError::format(&index, format!("lists shard `{shard}`, which does not exist in {}", dir.display())));
            }
            read_file_into(&shard_path, &mut weights)?;
        }
        for name in map.keys() {
            if !weights.contains(name) {
                return Err(FormatError::format(&index, format!("lists tensor `{name}`, which none of the shards holds")));
            }
        }
    } else {
        return Err(FormatError::format(
            dir,
            "expected `model.safetensors` or `model.safetensors.index.json` in this checkpoint directory; found neither",
        ));
    }
    Ok(weights)
}

/// One tensor to write: name, storage type and f32 values with their shape.
pub struct TensorToWrite<'a> {
    /// Parameter name.
    pub name: &'a str,
    /// Storage type in the file.
    pub dtype: StoredDtype,
    /// Shape and values.
    pub tensor: &'a HostTensor,
}

/// Writes tensors as one safetensors file, atomically (temp file + rename).
pub fn write_file(path: &Path, tensors: &[TensorToWrite<'_>], metadata: &BTreeMap<String, String>) -> Result<(), FormatError> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(metadata).expect("string map"));
    }
    let mut offset = 0usize;
    let mut order: Vec<&TensorToWrite<'_>> = tensors.iter().collect();
    order.sort_by(|a, b| a.name.cmp(b.name));
    for t in &order {
        let size = t.tensor.len() * t.dtype.size();
        header.insert(
            t.name.to_string(),
            serde_json::json!({"dtype": t.dtype.as_str(), "shape": t.tensor.shape, "data_offsets": [offset, offset + size]}),
        );
        offset += size;
    }
    let mut header_bytes = serde_json::to_vec(&Value::Object(header)).expect("serializable header");
    while header_bytes.len() % 8 != 0 {
        header_bytes.push(b' ');
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let result = (|| -> std::io::Result<()> {
        let tmp = tempfile::NamedTempFile::new_in(dir)?;
        let mut out = std::io::BufWriter::new(tmp);
        out.write_all(&(header_bytes.len() as u64).to_le_bytes())?;
        out.write_all(&header_bytes)?;
        for t in &order {
            out.write_all(&t.dtype.encode(&t.tensor.data))?;
        }
        let tmp = out.into_inner().map_err(|e| e.into_error())?;
        tmp.as_file().sync_all()?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
        }
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    })();
    result.map_err(|e| FormatError::io(path, e))
}
