//! Reading and writing safetensors files (Hugging Face checkpoints), single
//! or sharded with `model.safetensors.index.json`. f32, f16 and bf16 are
//! read into f32; files are parsed by Hugging Face's `safetensors` crate.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;

use half::{bf16, f16};
use kernels::encoded::Encoding;
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
    /// Unsigned bytes: only the keep bits of the sparse format ([`crate::sparse`]).
    U8,
}

impl StoredDtype {
    /// Name used in the safetensors header.
    pub fn as_str(self) -> &'static str {
        match self {
            StoredDtype::F32 => "F32",
            StoredDtype::F16 => "F16",
            StoredDtype::BF16 => "BF16",
            StoredDtype::U8 => "U8",
        }
    }

    /// The `torch_dtype` name of config.json for weights of this type.
    pub fn torch_name(self) -> &'static str {
        match self {
            StoredDtype::F32 => "float32",
            StoredDtype::F16 => "float16",
            StoredDtype::BF16 => "bfloat16",
            StoredDtype::U8 => "uint8",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StoredDtype::F32 => 4,
            StoredDtype::F16 | StoredDtype::BF16 => 2,
            StoredDtype::U8 => 1,
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "F32" => Some(StoredDtype::F32),
            "F16" => Some(StoredDtype::F16),
            "BF16" => Some(StoredDtype::BF16),
            "U8" => Some(StoredDtype::U8),
            _ => None,
        }
    }

    /// Encodes f32 values in this storage type (round to nearest even; U8
    /// saturates to 0..=255).
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(values.len() * self.size());
        match self {
            StoredDtype::F32 => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            StoredDtype::F16 => values.iter().for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
            StoredDtype::BF16 => values.iter().for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
            StoredDtype::U8 => out.extend(values.iter().map(|&v| v.round() as u8)),
        }
        out
    }

    /// Decodes little-endian values of this storage type into `out` (exact);
    /// `bytes` holds `out.len()` values. Whole groups of eight go through
    /// the register decoders of [`kernels::encoded`] where the CPU has them.
    pub fn decode_into(self, bytes: &[u8], out: &mut [f32]) {
        let encoding = match self {
            StoredDtype::F32 => Some(Encoding::F32),
            StoredDtype::F16 => Some(Encoding::F16),
            StoredDtype::BF16 => Some(Encoding::BF16),
            StoredDtype::U8 => None,
        };
        let whole = out.len() / 8 * 8;
        let done = match encoding {
            Some(encoding) if kernels::encoded::decode(encoding, &bytes[..whole * self.size()], &mut out[..whole]) => whole,
            _ => 0,
        };
        let (bytes, out) = (&bytes[done * self.size()..], &mut out[done..]);
        match self {
            StoredDtype::F32 => {
                out.iter_mut().zip(bytes.chunks_exact(4)).for_each(|(o, c)| *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            }
            StoredDtype::F16 => out.iter_mut().zip(bytes.chunks_exact(2)).for_each(|(o, c)| *o = f16::from_le_bytes([c[0], c[1]]).to_f32()),
            StoredDtype::BF16 => {
                out.iter_mut().zip(bytes.chunks_exact(2)).for_each(|(o, c)| *o = bf16::from_le_bytes([c[0], c[1]]).to_f32())
            }
            StoredDtype::U8 => out.iter_mut().zip(bytes).for_each(|(o, &b)| *o = f32::from(b)),
        }
    }

    /// Decodes little-endian values of this storage type into f32 (exact).
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        let mut out = vec![0.0f32; bytes.len() / self.size()];
        self.decode_into(bytes, &mut out);
        out
    }
}

/// Where one tensor lies in a safetensors file and how it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTensorInfo {
    /// Storage type.
    pub dtype: StoredDtype,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Byte range in the file (header included in the offset).
    range: std::ops::Range<usize>,
}

impl StoredTensorInfo {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the tensor occupies in the file.
    pub fn n_bytes(&self) -> usize {
        self.range.len()
    }
}

/// One safetensors file opened by memory map: the header is parsed and
/// checked at once; a tensor's bytes are read and decoded only when asked for.
pub struct SafetensorsFile {
    path: std::path::PathBuf,
    map: memmap2::Mmap,
    tensors: BTreeMap<String, StoredTensorInfo>,
    metadata: BTreeMap<String, String>,
}

impl SafetensorsFile {
    /// Opens and checks `path`: Hugging Face's parser checks that every
    /// tensor's bytes lie within the data section, match its shape and dtype,
    /// and overlap no other tensor's.
    pub fn open(path: &Path) -> Result<Self, FormatError> {
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
        let (header_len, metadata) = ::safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| FormatError::format(path, format!("not a valid safetensors file: {e} (truncated file or corrupt header)")))?;
        let data_start = 8 + header_len;
        let mut tensors = BTreeMap::new();
        for (name, info) in metadata.tensors() {
            let dtype_name = format!("{:?}", info.dtype);
            let dtype = StoredDtype::parse(&dtype_name).ok_or_else(|| {
                FormatError::format(
                    path,
                    format!("tensor `{name}` has dtype {dtype_name}; supported: F32, F16, BF16 (and U8 for sparse keep bits)"),
                )
            })?;
            let (begin, end) = info.data_offsets;
            tensors.insert(name, StoredTensorInfo { dtype, shape: info.shape.clone(), range: data_start + begin..data_start + end });
        }
        let file_metadata = metadata.metadata().clone().unwrap_or_default().into_iter().collect();
        Ok(SafetensorsFile { path: path.to_path_buf(), map, tensors, metadata: file_metadata })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor of the file, by name.
    pub fn tensors(&self) -> &BTreeMap<String, StoredTensorInfo> {
        &self.tensors
    }

    /// The file's `__metadata__` (string to string).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The stored bytes of tensor `name`.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], FormatError> {
        let info = self.info(name)?;
        Ok(&self.map[info.range.clone()])
    }

    /// Tensor `name` decoded to f32. Its pages of the mapping are released
    /// afterwards, so reading a checkpoint tensor by tensor keeps only what
    /// the caller holds resident.
    pub fn tensor_f32(&self, name: &str) -> Result<HostTensor, FormatError> {
        let info = self.info(name)?;
        let values = info.dtype.decode(&self.map[info.range.clone()]);
        self.release(info);
        Ok(HostTensor::new(info.shape.clone(), values))
    }

    /// Drops the mapped pages of `info` from this process (the kernel reads
    /// them again from the file if they are touched later).
    fn release(&self, info: &StoredTensorInfo) {
        self.release_range(info.range.clone());
    }

    /// Drops the mapped pages of bytes `range` of the file from this process.
    fn release_range(&self, range: std::ops::Range<usize>) {
        // SAFETY: the mapping is shared and read-only, backed by the file:
        // dropped pages read back the same bytes, so no borrow can observe a change.
        let _ = unsafe { self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, range.start, range.len()) };
    }

    fn info(&self, name: &str) -> Result<&StoredTensorInfo, FormatError> {
        self.tensors.get(name).ok_or_else(|| FormatError::format(&self.path, format!("has no tensor `{name}`")))
    }
}

/// The safetensors files of a Hugging Face checkpoint directory
/// (`model.safetensors`, or the shards of `model.safetensors.index.json`),
/// opened lazily: tensors are decoded one at a time, when asked for.
pub struct SafetensorsCheckpoint {
    files: Vec<SafetensorsFile>,
    by_name: BTreeMap<String, usize>,
}

impl SafetensorsCheckpoint {
    /// Opens the checkpoint in `dir`, checking every header and that the
    /// index names only tensors the shards hold.
    pub fn open(dir: &Path) -> Result<Self, FormatError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let mut files = Vec::new();
        let mut listed = Vec::new();
        if single.is_file() {
            files.push(SafetensorsFile::open(&single)?);
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
                if shard.contains('/') || !shard_path.is_file() {
                    return Err(FormatError::format(&index, format!("lists shard `{shard}`, which does not exist in {}", dir.display())));
                }
                files.push(SafetensorsFile::open(&shard_path)?);
            }
            listed = map.keys().cloned().map(|name| (name, index.clone())).collect();
        } else {
            return Err(FormatError::format(
                dir,
                "expected `model.safetensors` or `model.safetensors.index.json` in this checkpoint directory; found neither",
            ));
        }
        let mut by_name = BTreeMap::new();
        for (i, file) in files.iter().enumerate() {
            for name in file.tensors().keys() {
                if let Some(first) = by_name.insert(name.clone(), i) {
                    return Err(FormatError::format(
                        file.path(),
                        format!("holds tensor `{name}`, which shard {} holds too", files[first].path().display()),
                    ));
                }
            }
        }
        for (name, index) in listed {
            if !by_name.contains_key(&name) {
                return Err(FormatError::format(&index, format!("lists tensor `{name}`, which none of the shards holds")));
            }
        }
        Ok(SafetensorsCheckpoint { files, by_name })
    }

    /// Every tensor name with its storage, sorted by name.
    pub fn tensors(&self) -> impl Iterator<Item = (&String, &StoredTensorInfo)> {
        self.by_name.iter().map(|(name, &i)| (name, &self.files[i].tensors()[name]))
    }

    /// The shards' files, in the order [`SafetensorsCheckpoint::tensor_location`] numbers them.
    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }

    /// How tensor `name` is stored, if the checkpoint has it.
    pub fn info(&self, name: &str) -> Option<&StoredTensorInfo> {
        self.by_name.get(name).map(|&i| &self.files[i].tensors()[name])
    }

    /// The stored bytes of tensor `name`.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], FormatError> {
        let i = self.shard_of(name)?;
        self.files[i].tensor_bytes(name)
    }

    /// Which shard holds tensor `name` and where its bytes lie in
    /// [`SafetensorsCheckpoint::shard_bytes`]: for readers that slice them
    /// often, without looking the name up again.
    pub fn tensor_location(&self, name: &str) -> Result<(usize, std::ops::Range<usize>), FormatError> {
        let i = self.shard_of(name)?;
        Ok((i, self.files[i].info(name)?.range.clone()))
    }

    /// The shard holding tensor `name`, or an error naming the checkpoint.
    fn shard_of(&self, name: &str) -> Result<usize, FormatError> {
        self.by_name.get(name).copied().ok_or_else(|| FormatError::format(self.files[0].path(), format!("has no tensor `{name}`")))
    }

    /// Drops the mapped pages of tensor `name` from this process (see
    /// [`SafetensorsFile::tensor_f32`]), for readers that decode its bytes themselves.
    pub fn release(&self, name: &str) -> Result<(), FormatError> {
        let i = self.shard_of(name)?;
        let file = &self.files[i];
        file.release(file.info(name)?);
        Ok(())
    }

    /// Drops the pages of bytes `range` of shard `shard` ([`SafetensorsCheckpoint::shard_bytes`])
    /// from this process, for readers that decode a tensor from the mapping themselves.
    pub fn release_range(&self, shard: usize, range: std::ops::Range<usize>) {
        self.files[shard].release_range(range);
    }

    /// The whole mapped file of shard `shard`.
    pub fn shard_bytes(&self, shard: usize) -> &[u8] {
        &self.files[shard].map
    }

    /// Tensor `name` decoded to f32 (see [`SafetensorsFile::tensor_f32`]).
    pub fn tensor_f32(&self, name: &str) -> Result<HostTensor, FormatError> {
        let i = self.shard_of(name)?;
        self.files[i].tensor_f32(name)
    }
}

/// Reads every tensor of a Hugging Face checkpoint directory into host
/// memory: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`.
pub fn read_checkpoint_dir(dir: &Path) -> Result<WeightMap, FormatError> {
    let checkpoint = SafetensorsCheckpoint::open(dir)?;
    let mut weights = WeightMap::new(dir);
    for (name, _) in checkpoint.tensors() {
        weights.insert(name.clone(), checkpoint.tensor_f32(name)?);
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

/// Name, storage type and shape of one tensor of a checkpoint being written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorLayout {
    /// Parameter name.
    pub name: String,
    /// Storage type in the file.
    pub dtype: StoredDtype,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
}

impl TensorLayout {
    fn n_bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// Writes the safetensors of a checkpoint directory tensor by tensor, so
/// that a model larger than memory can be written: the shards are planned
/// from the layouts (at most `max_shard_bytes` each, unless one tensor is
/// larger), each shard's header goes first, and the values are streamed in.
/// One shard is written as `model.safetensors`; several as
/// `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`,
/// as transformers writes them. Nothing appears under a final name before
/// [`ShardedWriter::finish`].
pub struct ShardedWriter {
    dir: std::path::PathBuf,
    layouts: Vec<TensorLayout>,
    /// Index of the first layout of every shard, and one past the last.
    bounds: Vec<usize>,
    metadata: BTreeMap<String, String>,
    next: usize,
    current: Option<std::io::BufWriter<tempfile::NamedTempFile>>,
    done: Vec<tempfile::NamedTempFile>,
}

impl ShardedWriter {
    /// Plans the shards of `layouts` (written in this order) in `dir`, which must exist.
    pub fn create(
        dir: &Path,
        layouts: Vec<TensorLayout>,
        max_shard_bytes: usize,
        metadata: BTreeMap<String, String>,
    ) -> Result<Self, FormatError> {
        let mut bounds = vec![0];
        let mut size = 0;
        for (i, layout) in layouts.iter().enumerate() {
            if size > 0 && size + layout.n_bytes() > max_shard_bytes {
                bounds.push(i);
                size = 0;
            }
            size += layout.n_bytes();
        }
        bounds.push(layouts.len());
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = layouts.iter().find(|l| !seen.insert(l.name.as_str())) {
            return Err(FormatError::format(dir, format!("tensor `{}` was planned twice", dup.name)));
        }
        Ok(ShardedWriter { dir: dir.to_path_buf(), layouts, bounds, metadata, next: 0, current: None, done: Vec::new() })
    }

    /// The tensors in the order [`ShardedWriter::write`] expects them.
    pub fn layouts(&self) -> &[TensorLayout] {
        &self.layouts
    }

    fn shard_count(&self) -> usize {
        self.bounds.len() - 1
    }

    fn shard_name(&self, shard: usize) -> String {
        match self.shard_count() {
            1 => "model.safetensors".to_string(),
            n => format!("model-{:05}-of-{n:05}.safetensors", shard + 1),
        }
    }

    fn start_shard(&mut self, shard: usize) -> std::io::Result<std::io::BufWriter<tempfile::NamedTempFile>> {
        let mut header = serde_json::Map::new();
        if !self.metadata.is_empty() {
            header.insert("__metadata__".into(), serde_json::to_value(&self.metadata).expect("string map"));
        }
        let mut offset = 0usize;
        for layout in &self.layouts[self.bounds[shard]..self.bounds[shard + 1]] {
            let size = layout.n_bytes();
            header.insert(
                layout.name.clone(),
                serde_json::json!({"dtype": layout.dtype.as_str(), "shape": layout.shape, "data_offsets": [offset, offset + size]}),
            );
            offset += size;
        }
        let mut header_bytes = serde_json::to_vec(&Value::Object(header)).expect("serializable header");
        while header_bytes.len() % 8 != 0 {
            header_bytes.push(b' ');
        }
        let mut out = std::io::BufWriter::with_capacity(1 << 20, tempfile::NamedTempFile::new_in(&self.dir)?);
        out.write_all(&(header_bytes.len() as u64).to_le_bytes())?;
        out.write_all(&header_bytes)?;
        Ok(out)
    }

    /// Writes the next tensor, which must be `layouts()[n]` for the n-th call.
    pub fn write(&mut self, name: &str, values: &[f32]) -> Result<(), FormatError> {
        let dtype = self.next_layout(name, values.len())?.dtype;
        self.write_encoded(values.chunks(1 << 16).map(|chunk| dtype.encode(chunk)))
    }

    /// Writes the next tensor from bytes already in its storage type (the
    /// sparse format's keep bits); `layouts()[n]` for the n-th call.
    pub fn write_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<(), FormatError> {
        let size = self.layouts.get(self.next).map_or(1, |l| l.dtype.size());
        if bytes.len() % size != 0 {
            return Err(FormatError::format(
                &self.dir,
                format!("tensor `{name}`: {} bytes are not whole values of {size} bytes", bytes.len()),
            ));
        }
        self.next_layout(name, bytes.len() / size)?;
        self.write_encoded(bytes.chunks(1 << 20).map(<[u8]>::to_vec))
    }

    /// The layout of the next tensor, checked to be `name` with `values` values.
    fn next_layout(&self, name: &str, values: usize) -> Result<&TensorLayout, FormatError> {
        let Some(layout) = self.layouts.get(self.next) else {
            return Err(FormatError::format(
                &self.dir,
                format!("tensor `{name}` was not planned (all {} are written)", self.layouts.len()),
            ));
        };
        if layout.name != name || layout.shape.iter().product::<usize>() != values {
            return Err(FormatError::format(
                &self.dir,
                format!("expected tensor `{}` of shape {:?} next; got `{name}` with {values} values", layout.name, layout.shape),
            ));
        }
        Ok(layout)
    }

    /// Writes the next tensor's encoded bytes, opening and closing shards as planned.
    fn write_encoded(&mut self, chunks: impl Iterator<Item = Vec<u8>>) -> Result<(), FormatError> {
        let shard = self.bounds.partition_point(|&b| b <= self.next) - 1;
        let result = (|| -> std::io::Result<()> {
            if self.bounds[shard] == self.next {
                let out = self.start_shard(shard)?;
                self.current = Some(out);
            }
            let out = self.current.as_mut().expect("a shard is open");
            for chunk in chunks {
                out.write_all(&chunk)?;
            }
            if self.bounds[shard + 1] == self.next + 1 {
                let file = self.current.take().expect("a shard is open").into_inner().map_err(|e| e.into_error())?;
                file.as_file().sync_all()?;
                self.done.push(file);
            }
            Ok(())
        })();
        self.next += 1;
        result.map_err(|e| FormatError::io(&self.dir, e))
    }

    /// Moves the shards to their names and writes the index (several shards).
    pub fn finish(self) -> Result<(), FormatError> {
        if self.next != self.layouts.len() {
            return Err(FormatError::format(
                &self.dir,
                format!(
                    "only {} of {} tensors were written; next expected `{}`",
                    self.next,
                    self.layouts.len(),
                    self.layouts[self.next].name
                ),
            ));
        }
        let names: Vec<String> = (0..self.shard_count()).map(|s| self.shard_name(s)).collect();
        if names.len() > 1 {
            let mut weight_map = serde_json::Map::new();
            for (shard, name) in names.iter().enumerate() {
                for layout in &self.layouts[self.bounds[shard]..self.bounds[shard + 1]] {
                    weight_map.insert(layout.name.clone(), Value::from(name.clone()));
                }
            }
            let total: usize = self.layouts.iter().map(TensorLayout::n_bytes).sum();
            let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
            let path = self.dir.join("model.safetensors.index.json");
            std::fs::write(&path, serde_json::to_string_pretty(&index).expect("JSON") + "\n").map_err(|e| FormatError::io(&path, e))?;
        }
        for (file, name) in self.done.into_iter().zip(names) {
            let path = self.dir.join(name);
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                file.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(|e| FormatError::io(&path, e))?;
            }
            file.persist(&path).map_err(|e| FormatError::io(&path, e.error))?;
        }
        Ok(())
    }
}
