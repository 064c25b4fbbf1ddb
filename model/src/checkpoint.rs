//! Lazy weights: a checkpoint opened by memory map whose tensors are read in
//! their stored type (f32, f16, bf16 or GGUF blocks) and turned into
//! Hugging Face-named f32 host tensors only when asked for, one at a time.
//! Nothing is decoded when a model is opened: the configuration, the
//! fingerprint and the tokenizer come from metadata, and a stage that holds
//! one decoder layer at a time never holds more of the model than that.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::arch::{unpermute_rows, Fixup, Fused};
use crate::error::ModelError;
use crate::gguf::{GgmlType, GgufFile};
use crate::safetensors::{SafetensorsCheckpoint, StoredDtype};
use crate::weights::{HostTensor, WeightMap};
use formats::sparse::SparseRows;
use formats::FormatError;
use kernels::apply_keep_bits;
use kernels::encoded::{Encoding, PackedValues};

/// How a tensor is stored in its checkpoint file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredType {
    /// A safetensors dtype.
    Float(StoredDtype),
    /// A GGUF type (f32, f16, bf16 or a quantized block type).
    Gguf(GgmlType),
    /// subprune's compressed sparse format ([`formats::sparse`]): keep bits
    /// and the kept values only, of this safetensors dtype.
    Sparse(StoredDtype),
}

/// Anything that yields Hugging Face-named f32 host tensors of a given
/// shape: host weights in memory ([`WeightMap`]) or a lazily read
/// [`Checkpoint`]. The decoder builds its layers from either.
pub trait Weights: Sync {
    /// Tensor `name`, checked to have shape `expected`; `architecture` is
    /// for the message when the tensor is missing.
    fn tensor(&self, name: &str, expected: &[usize], architecture: &str) -> Result<Cow<'_, HostTensor>, ModelError>;

    /// The rows of matrix `name` as stored in a file, decoded on demand
    /// ([`StoredRows`]), where the weights have a file behind them.
    fn stored_rows(&self, _name: &str) -> Option<StoredRows> {
        None
    }
}

impl Weights for WeightMap {
    fn tensor(&self, name: &str, expected: &[usize], architecture: &str) -> Result<Cow<'_, HostTensor>, ModelError> {
        Ok(Cow::Borrowed(self.require(name, expected, architecture)?))
    }
}

/// Where the values of one decoder tensor are stored.
#[derive(Debug, Clone)]
struct Entry {
    /// Decoder (Hugging Face) shape.
    shape: Vec<usize>,
    /// Name of the tensor in the file.
    stored: String,
    /// How llama.cpp's converter changed the values (GGUF only).
    fixup: Fixup,
    /// Rows of the stored tensor that make this one (a part of a fused projection).
    rows: Option<Range<usize>>,
    /// Storage type in the file.
    stored_type: StoredType,
    /// The keep bits of a matrix in the sparse format (then `stored` names its values).
    sparse: Option<Arc<SparseEntry>>,
}

/// A matrix stored in the compressed sparse format: its keep-bits tensor,
/// and where each row's values start, counted from the keep bits (and
/// checked against the values) on first use.
#[derive(Debug)]
struct SparseEntry {
    /// Name of the keep-bits tensor in the file.
    keep: String,
    /// Rows and columns of the dense matrix.
    shape: [usize; 2],
    rows: std::sync::OnceLock<Result<SparseRows, String>>,
}

/// The file behind a checkpoint.
enum Store {
    Safetensors(SafetensorsCheckpoint),
    Gguf(GgufFile),
}

/// A checkpoint whose tensors are read on demand; see the module docs.
/// A tensor can be masked ([`Checkpoint::set_keep_bits`]): its pruned
/// weights read as zeros; or replaced ([`Checkpoint::set_values`]) by the
/// weights of a method that updates what it keeps.
pub struct Checkpoint {
    source: PathBuf,
    store: Arc<Store>,
    entries: BTreeMap<String, Entry>,
    keep_bits: BTreeMap<String, Arc<Vec<u8>>>,
    /// Replaced matrices, as little-endian f32 bytes row by row.
    replaced: BTreeMap<String, Arc<Vec<u8>>>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint").field("source", &self.source).field("tensors", &self.entries.len()).finish_non_exhaustive()
    }
}

impl Checkpoint {
    /// Opens the safetensors of a Hugging Face directory; the parts of every
    /// tensor in `fused` are served as tensors of their own.
    pub(crate) fn open_safetensors(dir: &Path, fused: &[Fused]) -> Result<Self, ModelError> {
        let file = SafetensorsCheckpoint::open(dir)?;
        let sparse = sparse_declarations(&file)?;
        let mut entries = BTreeMap::new();
        for (name, info) in file.tensors() {
            if let Some(base) = [formats::sparse::KEEP_SUFFIX, formats::sparse::VALUES_SUFFIX]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| sparse.contains_key(*base))
            {
                if file.info(base).is_some() {
                    return Err(ModelError::format(dir, format!("holds `{base}` both dense and in the sparse format (`{name}`)")));
                }
                continue;
            }
            if info.dtype == StoredDtype::U8 {
                return Err(ModelError::format(
                    dir,
                    format!(
                        "tensor `{name}` has dtype U8; only the keep bits of matrices that `{}` declares are U8",
                        formats::sparse::METADATA_KEY
                    ),
                ));
            }
            let entry = Entry {
                shape: info.shape.clone(),
                stored: name.clone(),
                fixup: Fixup::None,
                rows: None,
                stored_type: StoredType::Float(info.dtype),
                sparse: None,
            };
            entries.insert(name.clone(), entry);
        }
        for (name, [rows, cols]) in sparse {
            let keep = format!("{name}{}", formats::sparse::KEEP_SUFFIX);
            let values = format!("{name}{}", formats::sparse::VALUES_SUFFIX);
            let (Some(keep_info), Some(values_info)) = (file.info(&keep), file.info(&values)) else {
                return Err(ModelError::format(
                    dir,
                    format!("declares `{name}` sparse ({}) but lacks `{keep}` or `{values}`", formats::sparse::METADATA_KEY),
                ));
            };
            if keep_info.dtype != StoredDtype::U8 || keep_info.shape != [rows, cols.div_ceil(8)] {
                return Err(ModelError::format(
                    dir,
                    format!(
                        "`{keep}` is {} {:?}; expected U8 [{rows}, {}] (the keep bits of [{rows}, {cols}])",
                        keep_info.dtype.as_str(),
                        keep_info.shape,
                        cols.div_ceil(8)
                    ),
                ));
            }
            if values_info.dtype == StoredDtype::U8 || values_info.shape.len() != 1 {
                return Err(ModelError::format(
                    dir,
                    format!(
                        "`{values}` is {} {:?}; expected F16, BF16 or F32 [kept values]",
                        values_info.dtype.as_str(),
                        values_info.shape
                    ),
                ));
            }
            let sparse = SparseEntry { keep, shape: [rows, cols], rows: std::sync::OnceLock::new() };
            let entry = Entry {
                shape: vec![rows, cols],
                stored: values,
                fixup: Fixup::None,
                rows: None,
                stored_type: StoredType::Sparse(values_info.dtype),
                sparse: Some(Arc::new(sparse)),
            };
            entries.insert(name, entry);
        }
        let mut checkpoint = Checkpoint {
            source: dir.to_path_buf(),
            store: Arc::new(Store::Safetensors(file)),
            entries,
            keep_bits: BTreeMap::new(),
            replaced: BTreeMap::new(),
        };
        checkpoint.split_fused(fused)?;
        Ok(checkpoint)
    }

    /// Opens a GGUF file whose tensors `mapped` lists as (GGUF name,
    /// Hugging Face name, shape, fixup); the parts of every tensor in `fused`
    /// are served as tensors of their own.
    pub(crate) fn open_gguf(file: GgufFile, mapped: Vec<(String, String, Vec<usize>, Fixup)>, fused: &[Fused]) -> Result<Self, ModelError> {
        let mut entries = BTreeMap::new();
        for (stored, hf, shape, fixup) in mapped {
            file.check_dequantizable(&stored)?;
            let ggml_type = file.tensor_info(&stored).expect("mapped from the file's own tensors").ggml_type;
            entries.insert(hf, Entry { shape, stored, fixup, rows: None, stored_type: StoredType::Gguf(ggml_type), sparse: None });
        }
        let mut checkpoint = Checkpoint {
            source: file.path().to_path_buf(),
            store: Arc::new(Store::Gguf(file)),
            entries,
            keep_bits: BTreeMap::new(),
            replaced: BTreeMap::new(),
        };
        checkpoint.split_fused(fused)?;
        Ok(checkpoint)
    }

    /// Replaces every fused tensor by entries for its parts (rows of the stored tensor).
    fn split_fused(&mut self, fused: &[Fused]) -> Result<(), ModelError> {
        for Fused { name, parts } in fused {
            let Some(entry) = self.entries.remove(name) else { continue };
            let rows: usize = parts.iter().map(|(_, r)| r).sum();
            let &[out, cols] = entry.shape.as_slice() else {
                return Err(ModelError::format(&self.source, format!("`{name}` has shape {:?}; expected [{rows}, in]", entry.shape)));
            };
            if out != rows {
                return Err(ModelError::format(&self.source, format!("`{name}` has {out} rows; expected {rows}")));
            }
            let mut first = 0;
            for (part, part_rows) in parts {
                let rows = first..first + part_rows;
                self.entries.insert(part.clone(), Entry { shape: vec![*part_rows, cols], rows: Some(rows), ..entry.clone() });
                first += part_rows;
            }
        }
        Ok(())
    }

    /// The GGUF file behind the checkpoint, if it is one (its metadata holds the tokenizer).
    pub fn gguf(&self) -> Option<&GgufFile> {
        match &*self.store {
            Store::Gguf(file) => Some(file),
            Store::Safetensors(_) => None,
        }
    }

    /// The file or directory the checkpoint was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Every tensor name, in name order.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the checkpoint holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the checkpoint has tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The shape of tensor `name`, read from the file's header.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// Names and shapes of every tensor, in name order.
    pub fn shapes(&self) -> impl Iterator<Item = (&String, &[usize])> {
        self.entries.iter().map(|(name, e)| (name, e.shape.as_slice()))
    }

    /// How tensor `name` is stored in the file.
    pub fn stored_type(&self, name: &str) -> Option<StoredType> {
        self.entries.get(name).map(|e| e.stored_type)
    }

    /// Tensor `name` in f32 (exactly the stored values, dequantized and with
    /// the converter's fixups undone, masked if a mask was set), read from the file now.
    pub fn load(&self, name: &str) -> Result<HostTensor, ModelError> {
        let entry = self.entries.get(name).ok_or_else(|| ModelError::format(&self.source, format!("has no tensor `{name}`")))?;
        if let Some(bytes) = self.replaced.get(name) {
            let mut data = vec![0.0f32; bytes.len() / 4];
            StoredDtype::F32.decode_into(bytes, &mut data);
            return Ok(HostTensor::new(entry.shape.clone(), data));
        }
        if let Some(sparse) = &entry.sparse {
            let Store::Safetensors(file) = &*self.store else { unreachable!("sparse matrices are read from safetensors") };
            let rows = entry.rows.clone().unwrap_or(0..entry.shape[0]);
            let mut data = vec![0.0f32; rows.len() * entry.shape[1]];
            let dtype = match entry.stored_type {
                StoredType::Sparse(dtype) => dtype,
                _ => unreachable!("a sparse entry has a sparse type"),
            };
            let keep = file.tensor_bytes(&sparse.keep)?;
            let values = file.tensor_bytes(&entry.stored)?;
            decode_sparse_rows(sparse.rows(file, &self.source, &entry.stored)?, keep, values, dtype, rows.start, &mut data);
            file.release(&sparse.keep)?;
            file.release(&entry.stored)?;
            if let Some(keep) = self.keep_bits.get(name) {
                apply_keep_bits(&mut data, entry.shape[1], keep);
            }
            return Ok(HostTensor::new(entry.shape.clone(), data));
        }
        let (stored_shape, mut data) = match &*self.store {
            Store::Safetensors(file) => {
                let tensor = file.tensor_f32(&entry.stored)?;
                (tensor.shape, tensor.data)
            }
            Store::Gguf(file) => {
                let info = file.tensor_info(&entry.stored).expect("entries name the file's own tensors");
                (info.shape(), file.tensor_f32(&entry.stored)?)
            }
        };
        match entry.fixup {
            Fixup::None => {}
            Fixup::UnpermuteRows { heads } => {
                data = unpermute_rows(&data, heads, if stored_shape.len() == 2 { stored_shape[1] } else { 1 })
            }
            Fixup::SubtractOne => data.iter_mut().for_each(|v| *v -= 1.0),
        }
        if let Some(rows) = &entry.rows {
            let cols = stored_shape[1];
            data = data[rows.start * cols..rows.end * cols].to_vec();
        }
        if let Some(keep) = self.keep_bits.get(name) {
            apply_keep_bits(&mut data, entry.shape[1], keep);
        }
        Ok(HostTensor::new(entry.shape.clone(), data))
    }

    /// The keep bits that matrix `name` stores, when it is in the sparse
    /// format (rows of `ceil(cols / 8)` bytes, least significant bit first):
    /// the mask it was written with, exactly.
    pub fn stored_keep_bits(&self, name: &str) -> Result<Option<Vec<u8>>, ModelError> {
        let Some(entry) = self.entries.get(name) else {
            return Err(ModelError::format(&self.source, format!("has no tensor `{name}`")));
        };
        let (Some(sparse), Store::Safetensors(file)) = (&entry.sparse, &*self.store) else { return Ok(None) };
        let row_bytes = entry.shape[1].div_ceil(8);
        let rows = entry.rows.clone().unwrap_or(0..entry.shape[0]);
        Ok(Some(file.tensor_bytes(&sparse.keep)?[rows.start * row_bytes..rows.end * row_bytes].to_vec()))
    }

    /// Zeroes, from now on, the weights of tensor `name` ([rows, cols]) whose
    /// keep bit is 0: `keep` holds each row's bits packed LSB first in
    /// `ceil(cols / 8)` bytes, rows one after another (a mask applied as the
    /// model is read, so a masked model needs no more memory than a dense one).
    pub fn set_keep_bits(&mut self, name: &str, keep: Vec<u8>) -> Result<(), ModelError> {
        let Some(entry) = self.entries.get(name) else {
            return Err(ModelError::format(&self.source, format!("has no tensor `{name}` to mask")));
        };
        let &[rows, cols] = entry.shape.as_slice() else {
            return Err(ModelError::format(&self.source, format!("tensor `{name}` has shape {:?}; only matrices are masked", entry.shape)));
        };
        if keep.len() != rows * cols.div_ceil(8) {
            return Err(ModelError::Input(format!(
                "keep bits of `{name}` ([{rows}, {cols}]): expected {} bytes, found {}",
                rows * cols.div_ceil(8),
                keep.len()
            )));
        }
        self.keep_bits.insert(name.to_string(), Arc::new(keep));
        Ok(())
    }

    /// Replaces, from now on, matrix `name` ([rows, cols]) by `values`
    /// (row-major): the pruned and updated weights of a method such as
    /// SparseGPT. The replacement is held in memory, 4 bytes per weight.
    pub fn set_values(&mut self, name: &str, values: &[f32]) -> Result<(), ModelError> {
        let Some(entry) = self.entries.get(name) else {
            return Err(ModelError::format(&self.source, format!("has no tensor `{name}` to replace")));
        };
        let &[rows, cols] = entry.shape.as_slice() else {
            return Err(ModelError::format(
                &self.source,
                format!("tensor `{name}` has shape {:?}; only matrices are replaced", entry.shape),
            ));
        };
        if values.len() != rows * cols {
            return Err(ModelError::Input(format!(
                "values of `{name}` ([{rows}, {cols}]): expected {} values, found {}",
                rows * cols,
                values.len()
            )));
        }
        self.keep_bits.remove(name);
        self.replaced.insert(name.to_string(), Arc::new(values.iter().flat_map(|v| v.to_le_bytes()).collect()));
        Ok(())
    }

    /// Every tensor whose name starts with `prefix` (e.g. `model.layers.3.`), read now.
    pub fn load_prefixed(&self, prefix: &str) -> Result<WeightMap, ModelError> {
        let mut weights = WeightMap::new(&self.source);
        for name in self.entries.keys().filter(|name| name.starts_with(prefix)) {
            weights.insert(name.clone(), self.load(name)?);
        }
        Ok(weights)
    }

    /// Every tensor of the checkpoint in host memory (small models and tests).
    pub fn load_all(&self) -> Result<WeightMap, ModelError> {
        self.load_prefixed("")
    }
}

/// The sparse matrices the shards' `__metadata__` declare (dense name ->
/// [rows, cols]); shards that disagree are refused.
fn sparse_declarations(file: &SafetensorsCheckpoint) -> Result<BTreeMap<String, [usize; 2]>, ModelError> {
    let mut declared: BTreeMap<String, [usize; 2]> = BTreeMap::new();
    for shard in file.files() {
        let Some(text) = shard.metadata().get(formats::sparse::METADATA_KEY) else { continue };
        let shapes = formats::sparse::parse_metadata(text).map_err(|e| ModelError::format(shard.path(), e))?;
        for (name, shape) in shapes {
            if let Some(other) = declared.insert(name.clone(), shape).filter(|other| *other != shape) {
                return Err(ModelError::format(shard.path(), format!("declares sparse `{name}` as {shape:?}; another shard as {other:?}")));
            }
        }
    }
    Ok(declared)
}

impl SparseEntry {
    /// Where each row's values start, counted from the keep bits on first
    /// use and checked against the values tensor `values` of `file`.
    fn rows(&self, file: &SafetensorsCheckpoint, source: &Path, values: &str) -> Result<&SparseRows, ModelError> {
        let counted = self.rows.get_or_init(|| {
            let keep = file.tensor_bytes(&self.keep).map_err(|e| e.to_string())?;
            let rows = SparseRows::from_keep(keep, self.shape[0], self.shape[1]).map_err(|e| format!("`{}`: {e}", self.keep))?;
            let stored = file.info(values).map_or(0, |info| info.shape.iter().product());
            if rows.nnz() != stored {
                return Err(format!("`{}` keeps {} values but `{values}` holds {stored}", self.keep, rows.nnz()));
            }
            Ok(rows)
        });
        counted.as_ref().map_err(|e| ModelError::format(source, e.clone()))
    }
}

/// Decodes rows `first..first + out.len() / cols` of a sparse matrix into
/// `out` (dense f32, zeros at the pruned weights): with the kernels'
/// register expansion where the CPU has it, else value by value.
fn decode_sparse_rows(rows: &SparseRows, keep: &[u8], values: &[u8], dtype: StoredDtype, first: usize, out: &mut [f32]) {
    let (cols, size) = (rows.cols, dtype.size());
    if cols == 0 {
        return;
    }
    let row_bytes = cols.div_ceil(8);
    let count = out.len() / cols;
    let packed = match dtype {
        StoredDtype::F32 => Some(PackedValues::F32),
        StoredDtype::F16 => Some(PackedValues::F16),
        StoredDtype::BF16 => Some(PackedValues::BF16),
        StoredDtype::U8 => None,
    };
    let stored: Vec<kernels::encoded::StoredRow<'_>> = (first..first + count)
        .map(|row| (&values[rows.starts[row] * size..], Some(&keep[row * row_bytes..(row + 1) * row_bytes])))
        .collect();
    if packed.is_some_and(|packed| kernels::encoded::expand_packed(packed, &stored, out)) {
        return;
    }
    let mut kept = Vec::with_capacity(cols);
    for (i, dense) in out.chunks_exact_mut(cols).enumerate() {
        let row = first + i;
        let (start, end) = (rows.starts[row], rows.starts[row + 1]);
        kept.resize(end - start, 0.0);
        dtype.decode_into(&values[start * size..end * size], &mut kept);
        formats::sparse::unpack_row(&kept, &keep[row * row_bytes..(row + 1) * row_bytes], dense);
    }
}

/// A decoder tensor read from a stored (GGUF) tensor: its Hugging Face
/// name, the stored rows it takes, and llama.cpp's q/k interleaving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPart {
    /// The decoder (Hugging Face) name.
    pub name: String,
    /// Rows of the stored tensor, in Hugging Face order, when it takes only some (a fused projection's part).
    pub rows: Option<Range<usize>>,
    /// The heads of llama.cpp's q/k row interleaving of the stored tensor, if any.
    pub interleaved_heads: Option<usize>,
}

impl Checkpoint {
    /// The GGUF file behind the checkpoint, if it is one.
    pub fn gguf_file(&self) -> Option<&GgufFile> {
        match &*self.store {
            Store::Gguf(file) => Some(file),
            Store::Safetensors(_) => None,
        }
    }

    /// The decoder tensors read from stored tensor `stored`, in name order.
    pub fn parts_of(&self, stored: &str) -> Vec<StoredPart> {
        self.entries
            .iter()
            .filter(|(_, e)| e.stored == stored)
            .map(|(name, e)| StoredPart {
                name: name.clone(),
                rows: e.rows.clone(),
                interleaved_heads: match e.fixup {
                    Fixup::UnpermuteRows { heads } => Some(heads),
                    _ => None,
                },
            })
            .collect()
    }

    /// The rows of matrix `name` in their stored form (see [`StoredRows`]).
    pub fn rows_of(&self, name: &str) -> Option<StoredRows> {
        let entry = self.entries.get(name)?;
        let &[rows, cols] = entry.shape.as_slice() else { return None };
        if let Some(bytes) = self.replaced.get(name) {
            return Some(StoredRows {
                store: Arc::clone(&self.store),
                stored: name.to_string(),
                location: (0, 0..bytes.len()),
                replaced: Some(Arc::clone(bytes)),
                stored_type: StoredType::Float(StoredDtype::F32),
                first: 0,
                rows,
                cols,
                row_bytes: cols * 4,
                heads: None,
                keep_bits: None,
                sparse: None,
            });
        }
        let mut sparse = None;
        let (first, row_bytes) = match (&*self.store, entry.stored_type) {
            (Store::Safetensors(_), StoredType::Float(dtype)) => (entry.rows.as_ref().map_or(0, |r| r.start), cols * dtype.size()),
            (Store::Gguf(_), StoredType::Gguf(ty)) => (entry.rows.as_ref().map_or(0, |r| r.start), ty.n_bytes(cols as u64)? as usize),
            (Store::Safetensors(file), StoredType::Sparse(_)) => {
                let entry_sparse = entry.sparse.as_ref().expect("a sparse entry has its keep bits");
                // Counted (and checked) now, so that the rows can be read without a failure.
                entry_sparse.rows(file, &self.source, &entry.stored).ok()?;
                let keep_location = file.tensor_location(&entry_sparse.keep).ok()?;
                sparse = Some(SparseStored { entry: Arc::clone(entry_sparse), keep_location });
                (entry.rows.as_ref().map_or(0, |r| r.start), 0)
            }
            _ => return None,
        };
        let heads = match entry.fixup {
            Fixup::None => None,
            Fixup::UnpermuteRows { heads } => Some(heads),
            Fixup::SubtractOne => return None,
        };
        let location = match &*self.store {
            Store::Safetensors(file) => file.tensor_location(&entry.stored).ok()?,
            Store::Gguf(file) => (0, file.tensor_range(&entry.stored).ok()?),
        };
        Some(StoredRows {
            store: Arc::clone(&self.store),
            stored: entry.stored.clone(),
            location,
            replaced: None,
            stored_type: entry.stored_type,
            first,
            rows,
            cols,
            row_bytes,
            heads,
            keep_bits: self.keep_bits.get(name).cloned(),
            sparse,
        })
    }
}

/// The keep bits of a [`StoredRows`] in the sparse format.
#[derive(Clone)]
struct SparseStored {
    entry: Arc<SparseEntry>,
    /// The keep-bits tensor's shard and byte range in it.
    keep_location: (usize, Range<usize>),
}

impl SparseStored {
    /// Where each row's values start (counted when the rows were made).
    fn rows(&self) -> &SparseRows {
        self.entry.rows.get().and_then(|r| r.as_ref().ok()).expect("counted and checked when the stored rows were made")
    }
}

/// The rows of a weight matrix kept in their stored form (f16, bf16, f32 or
/// GGUF blocks, in the file's memory map) and decoded to f32 only when
/// read: decoding gives exactly the values [`Checkpoint::load`] gives
/// (converter fixups undone, mask applied), so a model can run from its
/// stored form without an f32 copy.
#[derive(Clone)]
pub struct StoredRows {
    store: Arc<Store>,
    stored: String,
    /// The stored tensor's shard and byte range in it.
    location: (usize, Range<usize>),
    /// The matrix's replacement (little-endian f32), where it was replaced.
    replaced: Option<Arc<Vec<u8>>>,
    stored_type: StoredType,
    /// First row of the stored tensor that is row 0 here (a part of a fused projection).
    first: usize,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    /// llama.cpp's q/k row interleaving over this many heads, undone on reading.
    heads: Option<usize>,
    keep_bits: Option<Arc<Vec<u8>>>,
    /// The keep bits of a matrix in the sparse format, whose bytes are its packed values.
    sparse: Option<SparseStored>,
}

impl std::fmt::Debug for StoredRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoredRows({} [{}, {}] {:?})", self.stored, self.rows, self.cols, self.stored_type)
    }
}

impl StoredRows {
    /// Rows of the matrix.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns of the matrix.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The stored row that is row `row` here.
    fn stored_row(&self, row: usize) -> usize {
        let row = match self.heads {
            None => row,
            Some(heads) => {
                // Hugging Face row h*d + t*d/2 + j is GGUF row h*d + 2j + t.
                let head_dim = self.rows / heads;
                let half = head_dim / 2;
                let (h, within) = (row / head_dim, row % head_dim);
                let (t, j) = (within / half, within % half);
                h * head_dim + 2 * j + t
            }
        };
        self.first + row
    }

    /// The stored bytes of the whole tensor.
    fn bytes(&self) -> &[u8] {
        if let Some(bytes) = &self.replaced {
            return bytes;
        }
        self.mapped(&self.location)
    }

    /// The bytes at `location` (a shard and a byte range in it) of the file.
    fn mapped(&self, location: &(usize, Range<usize>)) -> &[u8] {
        let (shard, range) = location;
        match &*self.store {
            Store::Safetensors(file) => &file.shard_bytes(*shard)[range.clone()],
            Store::Gguf(file) => &file.mapped()[range.clone()],
        }
    }

    /// Decodes `out.len() / cols` consecutive stored rows of `bytes`, from `stored_row`, into `out`.
    fn decode_stored(&self, bytes: &[u8], stored_row: usize, out: &mut [f32]) {
        let count = out.len() / self.cols;
        let bytes = &bytes[stored_row * self.row_bytes..(stored_row + count) * self.row_bytes];
        match self.stored_type {
            StoredType::Float(dtype) => dtype.decode_into(bytes, out),
            StoredType::Gguf(ty) => {
                formats::gguf::dequantize_into_serial(ty, bytes, out).expect("a type and size checked when the file was opened")
            }
            StoredType::Sparse(_) => unreachable!("sparse rows are decoded by decode_sparse_rows"),
        }
    }

    /// The encoding of the stored rows, where [`kernels::encoded`] decodes it in registers.
    pub fn encoding(&self) -> Option<Encoding> {
        Some(match self.stored_type {
            // A mask over sparse rows: decoded into the buffer, both applied.
            StoredType::Sparse(_) if self.keep_bits.is_some() => return None,
            StoredType::Sparse(StoredDtype::F32) => Encoding::Packed(PackedValues::F32),
            StoredType::Sparse(StoredDtype::F16) => Encoding::Packed(PackedValues::F16),
            StoredType::Sparse(StoredDtype::BF16) => Encoding::Packed(PackedValues::BF16),
            StoredType::Sparse(StoredDtype::U8) | StoredType::Float(StoredDtype::U8) => return None,
            StoredType::Float(StoredDtype::F32) | StoredType::Gguf(GgmlType::F32) => Encoding::F32,
            StoredType::Float(StoredDtype::F16) | StoredType::Gguf(GgmlType::F16) => Encoding::F16,
            StoredType::Float(StoredDtype::BF16) | StoredType::Gguf(GgmlType::BF16) => Encoding::BF16,
            StoredType::Gguf(GgmlType::Q4_0) => Encoding::Q4_0,
            StoredType::Gguf(GgmlType::Q4_1) => Encoding::Q4_1,
            StoredType::Gguf(GgmlType::Q5_0) => Encoding::Q5_0,
            StoredType::Gguf(GgmlType::Q8_0) => Encoding::Q8_0,
            StoredType::Gguf(GgmlType::Q4K) => Encoding::Q4K,
            StoredType::Gguf(GgmlType::Q6K) => Encoding::Q6K,
            StoredType::Gguf(_) => return None,
        })
    }

    /// Appends the stored bytes of rows `first..first + count` (llama.cpp's
    /// interleaving undone) and their keep bits, where the matrix is masked.
    pub fn rows_into<'a>(&'a self, first: usize, count: usize, out: &mut Vec<kernels::encoded::StoredRow<'a>>) {
        let bytes = self.bytes();
        if let (Some(sparse), StoredType::Sparse(dtype)) = (&self.sparse, self.stored_type) {
            // Each row's values from its first to the end of the matrix's (see Encoding::Packed).
            let (rows, keep) = (sparse.rows(), self.mapped(&sparse.keep_location));
            let keep_bytes = self.cols.div_ceil(8);
            for row in self.first + first..self.first + first + count {
                out.push((&bytes[rows.starts[row] * dtype.size()..], Some(&keep[row * keep_bytes..(row + 1) * keep_bytes])));
            }
            return;
        }
        let keep_bytes = self.cols.div_ceil(8);
        for row in first..first + count {
            let stored = self.stored_row(row);
            let keep = self.keep_bits.as_ref().map(|keep| &keep[row * keep_bytes..(row + 1) * keep_bytes]);
            out.push((&bytes[stored * self.row_bytes..(stored + 1) * self.row_bytes], keep));
        }
    }

    /// Writes rows `first..first + out.len() / cols` into `out` as f32.
    pub fn decode(&self, first: usize, out: &mut [f32]) {
        let count = out.len() / self.cols;
        let bytes = self.bytes();
        if let (Some(sparse), StoredType::Sparse(dtype)) = (&self.sparse, self.stored_type) {
            decode_sparse_rows(sparse.rows(), self.mapped(&sparse.keep_location), bytes, dtype, self.first + first, out);
        } else {
            self.decode_dense(bytes, first, out);
        }
        if let Some(keep) = &self.keep_bits {
            let row_bytes = self.cols.div_ceil(8);
            apply_keep_bits(out, self.cols, &keep[first * row_bytes..(first + count) * row_bytes]);
        }
    }

    /// Writes dense rows `first..first + out.len() / cols` into `out` as f32, unmasked.
    fn decode_dense(&self, bytes: &[u8], first: usize, out: &mut [f32]) {
        match self.heads {
            None => self.decode_stored(bytes, self.first + first, out),
            // Interleaved rows are decoded one by one, straight into place.
            Some(_) => {
                for (i, row) in out.chunks_exact_mut(self.cols).enumerate() {
                    self.decode_stored(bytes, self.stored_row(first + i), row);
                }
            }
        }
    }

    /// These rows with the weights whose bit in `keep` is 0 zeroed too (on
    /// top of any mask they have; bits as [`kernels::apply_keep_bits`] reads
    /// them); None unless `keep` holds a bit for every weight.
    pub fn masked(&self, keep: Arc<Vec<u8>>) -> Option<StoredRows> {
        if keep.len() != self.rows * self.cols.div_ceil(8) {
            return None;
        }
        let keep_bits = match &self.keep_bits {
            None => keep,
            Some(mine) => Arc::new(mine.iter().zip(keep.iter()).map(|(a, b)| a & b).collect()),
        };
        Some(StoredRows { keep_bits: Some(keep_bits), ..self.clone() })
    }

    /// Drops the file pages of the stored tensor from this process, for a
    /// reader done with it (as [`Checkpoint::load`] does after decoding), so
    /// that streaming a model layer by layer keeps only what it holds
    /// resident; pages touched again are read back from the file.
    pub fn release(&self) {
        if self.replaced.is_some() {
            return;
        }
        let release = |(shard, range): &(usize, Range<usize>)| match &*self.store {
            Store::Safetensors(file) => file.release_range(*shard, range.clone()),
            Store::Gguf(file) => file.release_range(range.clone()),
        };
        release(&self.location);
        if let Some(sparse) = &self.sparse {
            release(&sparse.keep_location);
        }
    }

    /// The whole matrix in f32.
    pub fn decode_all(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.rows * self.cols];
        self.decode(0, &mut out);
        out
    }
}

impl Checkpoint {
    /// Checks, from the header alone, that tensor `name` is present with
    /// shape `expected`; `architecture` is for the message when it is missing.
    pub fn check_shape(&self, name: &str, expected: &[usize], architecture: &str) -> Result<(), ModelError> {
        match self.entries.get(name) {
            None => Err(ModelError::File(FormatError::MissingTensor {
                path: self.source.clone(),
                name: name.to_string(),
                architecture: architecture.to_string(),
            })),
            Some(entry) if entry.shape != expected => Err(ModelError::File(FormatError::ShapeMismatch {
                path: self.source.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
                found: entry.shape.clone(),
            })),
            Some(_) => Ok(()),
        }
    }
}

impl Weights for Checkpoint {
    fn stored_rows(&self, name: &str) -> Option<StoredRows> {
        self.rows_of(name)
    }

    fn tensor(&self, name: &str, expected: &[usize], architecture: &str) -> Result<Cow<'_, HostTensor>, ModelError> {
        self.check_shape(name, expected, architecture)?;
        Ok(Cow::Owned(self.load(name)?))
    }
}

/// Weights of which some matrices are masked: their pruned values read as
/// zeros (sequential pruning rebuilds a layer from these, so that the
/// pruned layer is never held as a second copy of the weights).
pub struct MaskedWeights<'a> {
    weights: &'a dyn Weights,
    keep_bits: BTreeMap<String, Arc<Vec<u8>>>,
}

impl<'a> MaskedWeights<'a> {
    /// `weights` with the tensors of `keep_bits` masked (bits as [`kernels::apply_keep_bits`] reads them).
    pub fn new(weights: &'a dyn Weights, keep_bits: BTreeMap<String, Vec<u8>>) -> Self {
        MaskedWeights { weights, keep_bits: keep_bits.into_iter().map(|(name, keep)| (name, Arc::new(keep))).collect() }
    }
}

impl Weights for MaskedWeights<'_> {
    /// The stored rows of the underlying weights, masked here too.
    fn stored_rows(&self, name: &str) -> Option<StoredRows> {
        let rows = self.weights.stored_rows(name)?;
        match self.keep_bits.get(name) {
            Some(keep) => rows.masked(keep.clone()),
            None => Some(rows),
        }
    }

    fn tensor(&self, name: &str, expected: &[usize], architecture: &str) -> Result<Cow<'_, HostTensor>, ModelError> {
        let tensor = self.weights.tensor(name, expected, architecture)?;
        match (self.keep_bits.get(name), expected) {
            (Some(keep), &[rows, cols]) if keep.len() == rows * cols.div_ceil(8) => {
                let mut tensor = tensor.into_owned();
                apply_keep_bits(&mut tensor.data, cols, keep);
                Ok(Cow::Owned(tensor))
            }
            (Some(keep), _) => {
                Err(ModelError::Input(format!("keep bits of `{name}` ({} bytes) do not fit its shape {expected:?}", keep.len())))
            }
            (None, _) => Ok(tensor),
        }
    }
}

/// Weights of which some matrices are replaced by given values (sequential
/// SparseGPT rebuilds a layer from its pruned and updated weights, so that
/// the next layer sees their outputs).
pub struct ReplacedWeights<'a> {
    weights: &'a dyn Weights,
    replaced: BTreeMap<String, HostTensor>,
}

impl<'a> ReplacedWeights<'a> {
    /// `weights` with the tensors of `replaced` served instead of theirs.
    pub fn new(weights: &'a dyn Weights, replaced: BTreeMap<String, HostTensor>) -> Self {
        ReplacedWeights { weights, replaced }
    }
}

impl Weights for ReplacedWeights<'_> {
    /// The stored rows of the underlying weights, for the matrices not replaced.
    fn stored_rows(&self, name: &str) -> Option<StoredRows> {
        if self.replaced.contains_key(name) {
            return None;
        }
        self.weights.stored_rows(name)
    }

    fn tensor(&self, name: &str, expected: &[usize], architecture: &str) -> Result<Cow<'_, HostTensor>, ModelError> {
        match self.replaced.get(name) {
            Some(tensor) if tensor.shape == expected => Ok(Cow::Borrowed(tensor)),
            Some(tensor) => {
                Err(ModelError::Input(format!("the replacement of `{name}` has shape {:?}; expected {expected:?}", tensor.shape)))
            }
            None => self.weights.tensor(name, expected, architecture),
        }
    }
}
