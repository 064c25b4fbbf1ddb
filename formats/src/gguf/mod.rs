//! GGUF (llama.cpp) files: a memory-mapped reader for versions 2 and 3,
//! dequantizers to f32 ([`dequantize`]), a writer ([`GgufWriter`]) and
//! reference quantizers ([`quantize`]) used by tests to build tiny models.
//!
//! The reader validates the whole header when the file is opened: every
//! count and length is checked against the bytes left in the file before
//! anything is allocated, all arithmetic is checked, and every tensor's data
//! must lie, aligned, inside the file. After [`GgufFile::open`] succeeds,
//! [`GgufFile::tensor_bytes`] cannot fail for a tensor of the file.

pub mod dequant;
pub mod quantize;
pub mod writer;

pub use dequant::{dequantize, dequantize_into, dequantize_into_serial, DequantError};
pub use writer::GgufWriter;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";

/// Data-section alignment used when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Most dimensions a ggml tensor can have (`GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;

/// Deepest nesting of arrays inside metadata values that the reader accepts.
const MAX_ARRAY_NESTING: usize = 16;

/// Size in bytes of the fixed header: magic, version, tensor count, kv count.
const HEADER_LEN: usize = 4 + 4 + 8 + 8;

/// A metadata value of a GGUF file.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    /// Unsigned 8-bit integer (type 0).
    U8(u8),
    /// Signed 8-bit integer (type 1).
    I8(i8),
    /// Unsigned 16-bit integer (type 2).
    U16(u16),
    /// Signed 16-bit integer (type 3).
    I16(i16),
    /// Unsigned 32-bit integer (type 4).
    U32(u32),
    /// Signed 32-bit integer (type 5).
    I32(i32),
    /// Unsigned 64-bit integer (type 10).
    U64(u64),
    /// Signed 64-bit integer (type 11).
    I64(i64),
    /// 32-bit float (type 6).
    F32(f32),
    /// 64-bit float (type 12).
    F64(f64),
    /// Boolean (type 7).
    Bool(bool),
    /// UTF-8 string (type 8).
    String(String),
    /// Array of values that all have the same type (type 9).
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The value as u64 if it is an integer of any width that is >= 0.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as i64 if it is an integer of any width that fits in i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// The value as f64 if it is a float or an integer (large 64-bit
    /// integers are rounded to the nearest f64).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            GgufValue::U64(v) => Some(v as f64),
            GgufValue::I64(v) => Some(v as f64),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The string if the value is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The boolean if the value is a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The elements if the value is an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The GGUF value-type id of this value (0 u8 ... 12 f64).
    pub fn type_id(&self) -> u32 {
        match self {
            GgufValue::U8(_) => 0,
            GgufValue::I8(_) => 1,
            GgufValue::U16(_) => 2,
            GgufValue::I16(_) => 3,
            GgufValue::U32(_) => 4,
            GgufValue::I32(_) => 5,
            GgufValue::F32(_) => 6,
            GgufValue::Bool(_) => 7,
            GgufValue::String(_) => 8,
            GgufValue::Array(_) => 9,
            GgufValue::U64(_) => 10,
            GgufValue::I64(_) => 11,
            GgufValue::F64(_) => 12,
        }
    }
}

/// The name of a GGUF metadata value type id, for messages.
fn value_type_name(id: u32) -> &'static str {
    match id {
        0 => "u8",
        1 => "i8",
        2 => "u16",
        3 => "i16",
        4 => "u32",
        5 => "i32",
        6 => "f32",
        7 => "bool",
        8 => "string",
        9 => "array",
        10 => "u64",
        11 => "i64",
        12 => "f64",
        _ => "unknown",
    }
}

/// Fewest bytes one value of a metadata type can occupy in a file, or None
/// for an unknown type id.
fn value_min_size(id: u32) -> Option<u64> {
    match id {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        8 => Some(8),
        9 => Some(12),
        _ => None,
    }
}

/// A ggml tensor data type.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float (id 0).
    F32,
    /// IEEE half float (id 1).
    F16,
    /// 4-bit blocks of 32 with a scale (id 2).
    Q4_0,
    /// 4-bit blocks of 32 with a scale and a minimum (id 3).
    Q4_1,
    /// 5-bit blocks of 32 with a scale (id 6).
    Q5_0,
    /// 5-bit blocks of 32 with a scale and a minimum (id 7).
    Q5_1,
    /// 8-bit blocks of 32 with a scale (id 8).
    Q8_0,
    /// 8-bit blocks of 32 with a scale and a sum (id 9).
    Q8_1,
    /// 2-bit k-quant super-blocks of 256 (id 10).
    Q2K,
    /// 3-bit k-quant super-blocks of 256 (id 11).
    Q3K,
    /// 4-bit k-quant super-blocks of 256 (id 12).
    Q4K,
    /// 5-bit k-quant super-blocks of 256 (id 13).
    Q5K,
    /// 6-bit k-quant super-blocks of 256 (id 14).
    Q6K,
    /// 8-bit k-quant super-blocks of 256 (id 15).
    Q8K,
    /// bfloat16 (id 30).
    BF16,
    /// Any other ggml type id.
    Other(u32),
}

/// Block size, bytes per block and name of ggml types this crate has no
/// variant for, so that files holding them still open (their tensors can be
/// read raw but not dequantized).
fn other_type_layout(id: u32) -> Option<(usize, usize, &'static str)> {
    Some(match id {
        16 => (256, 66, "IQ2_XXS"),
        17 => (256, 74, "IQ2_XS"),
        18 => (256, 98, "IQ3_XXS"),
        19 => (256, 50, "IQ1_S"),
        20 => (32, 18, "IQ4_NL"),
        21 => (256, 110, "IQ3_S"),
        22 => (256, 82, "IQ2_S"),
        23 => (256, 136, "IQ4_XS"),
        24 => (1, 1, "I8"),
        25 => (1, 2, "I16"),
        26 => (1, 4, "I32"),
        27 => (1, 8, "I64"),
        28 => (1, 8, "F64"),
        29 => (256, 56, "IQ1_M"),
        34 => (256, 54, "TQ1_0"),
        35 => (256, 66, "TQ2_0"),
        39 => (32, 17, "MXFP4"),
        _ => return None,
    })
}

impl GgmlType {
    /// The type for a ggml type id; ids without a variant give `Other(id)`.
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            9 => GgmlType::Q8_1,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            15 => GgmlType::Q8K,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    /// The ggml type id.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q8_1 => 9,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Q8K => 15,
            GgmlType::BF16 => 30,
            GgmlType::Other(id) => id,
        }
    }

    /// Elements per block (1 for plain float types), or None if the layout
    /// of the type is unknown.
    pub fn block_size(self) -> Option<usize> {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => Some(1),
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 | GgmlType::Q8_1 => Some(32),
            GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K | GgmlType::Q8K => Some(256),
            GgmlType::Other(id) => other_type_layout(id).map(|(b, _, _)| b),
        }
    }

    /// Bytes per block, or None if the layout of the type is unknown.
    pub fn type_size(self) -> Option<usize> {
        match self {
            GgmlType::F32 => Some(4),
            GgmlType::F16 | GgmlType::BF16 => Some(2),
            GgmlType::Q4_0 => Some(18),
            GgmlType::Q4_1 => Some(20),
            GgmlType::Q5_0 => Some(22),
            GgmlType::Q5_1 => Some(24),
            GgmlType::Q8_0 => Some(34),
            GgmlType::Q8_1 => Some(36),
            GgmlType::Q2K => Some(84),
            GgmlType::Q3K => Some(110),
            GgmlType::Q4K => Some(144),
            GgmlType::Q5K => Some(176),
            GgmlType::Q6K => Some(210),
            GgmlType::Q8K => Some(292),
            GgmlType::Other(id) => other_type_layout(id).map(|(_, s, _)| s),
        }
    }

    /// The ggml name of the type ("Q4_K", "BF16", ...), or "unknown type N".
    pub fn name(self) -> String {
        match self {
            GgmlType::F32 => "F32".into(),
            GgmlType::F16 => "F16".into(),
            GgmlType::Q4_0 => "Q4_0".into(),
            GgmlType::Q4_1 => "Q4_1".into(),
            GgmlType::Q5_0 => "Q5_0".into(),
            GgmlType::Q5_1 => "Q5_1".into(),
            GgmlType::Q8_0 => "Q8_0".into(),
            GgmlType::Q8_1 => "Q8_1".into(),
            GgmlType::Q2K => "Q2_K".into(),
            GgmlType::Q3K => "Q3_K".into(),
            GgmlType::Q4K => "Q4_K".into(),
            GgmlType::Q5K => "Q5_K".into(),
            GgmlType::Q6K => "Q6_K".into(),
            GgmlType::Q8K => "Q8_K".into(),
            GgmlType::BF16 => "BF16".into(),
            GgmlType::Other(id) => match other_type_layout(id) {
                Some((_, _, name)) => name.into(),
                None => format!("unknown type {id}"),
            },
        }
    }

    /// Whether [`dequantize`] supports this type.
    pub fn can_dequantize(self) -> bool {
        dequant::SUPPORTED_TYPES.contains(&self)
    }

    /// Bytes that `n_elements` elements of this type occupy, or None if the
    /// layout is unknown, the count is not a multiple of the block size, or
    /// the size overflows u64.
    pub fn n_bytes(self, n_elements: u64) -> Option<u64> {
        let block = u64::try_from(self.block_size()?).ok()?;
        let size = u64::try_from(self.type_size()?).ok()?;
        if !n_elements.is_multiple_of(block) {
            return None;
        }
        (n_elements / block).checked_mul(size)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (id {})", self.name(), self.id())
    }
}

/// Description of one tensor of a GGUF file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the innermost (contiguous) one.
    pub dims: Vec<u64>,
    /// Data type of the stored blocks.
    pub ggml_type: GgmlType,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Shape in row-major (numpy / Hugging Face) order: the dims reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect()
    }

    /// Number of elements: the product of the dims (saturating at u64::MAX,
    /// which [`GgufFile::open`] never lets through).
    pub fn n_elements(&self) -> u64 {
        self.checked_n_elements().unwrap_or(u64::MAX)
    }

    /// Number of elements, or None if the product of the dims overflows.
    fn checked_n_elements(&self) -> Option<u64> {
        self.dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
    }

    /// Bytes of stored data, or None if the type layout is unknown, the
    /// innermost dim is not a multiple of the block size, or it overflows.
    pub fn n_bytes(&self) -> Option<u64> {
        let block = u64::try_from(self.ggml_type.block_size()?).ok()?;
        let first = self.dims.first().copied().unwrap_or(1);
        if first % block != 0 {
            return None;
        }
        self.ggml_type.n_bytes(self.checked_n_elements()?)
    }
}

/// Errors of reading a GGUF file. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened, inspected or mapped.
    #[error("{}: cannot read GGUF file: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file ends before a field that must be there.
    #[error(
        "{}: truncated GGUF file: expected {needed} bytes of {what} at offset {offset}, \
         but the file is only {file_len} bytes long",
        .path.display()
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was being read.
        what: String,
        /// Where it starts.
        offset: u64,
        /// How many bytes it needs.
        needed: u64,
        /// Length of the file.
        file_len: u64,
    },
    /// The file does not start with "GGUF".
    #[error(
        "{}: not a GGUF file: expected magic \"GGUF\" (47 47 55 46), found {} ({:?})",
        .path.display(),
        hex_bytes(.found),
        String::from_utf8_lossy(.found)
    )]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first four bytes.
        found: [u8; 4],
    },
    /// The GGUF version is not 2 or 3.
    #[error(
        "{}: unsupported GGUF version {found}: expected 2 or 3 (version 1 used 32-bit counts \
         and is not supported)",
        .path.display()
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version in the header.
        found: u32,
    },
    /// A metadata value has a type id outside 0..=12.
    #[error(
        "{}: metadata key {key:?} at offset {offset} has unknown value type {type_id} \
         (expected 0..=12: u8, i8, u16, i16, u32, i32, f32, bool, string, array, u64, i64, f64)",
        .path.display()
    )]
    UnknownValueType {
        /// The file.
        path: PathBuf,
        /// The key whose value (or array element type) is unknown.
        key: String,
        /// The type id found.
        type_id: u32,
        /// Offset of the type id.
        offset: u64,
    },
    /// A tensor has a type whose layout is unknown or that cannot be dequantized.
    #[error(
        "{}: tensor {tensor:?} has type {type_name} (id {type_id}), which is not supported; \
         supported types: {supported}",
        .path.display()
    )]
    UnsupportedTensorType {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// The ggml type id.
        type_id: u32,
        /// The type name (or "unknown type N").
        type_name: String,
        /// The supported types, comma-separated.
        supported: String,
    },
    /// No tensor of that name in the file.
    #[error("{}: no tensor named {name:?} (the file has {count} tensors)", .path.display())]
    TensorNotFound {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        name: String,
        /// How many tensors the file has.
        count: usize,
    },
    /// A count or length in the header cannot fit in the rest of the file.
    #[error(
        "{}: {what} at offset {offset} is {count}, which needs at least {min_bytes} bytes \
         but only {remaining} bytes remain in the file (truncated or corrupt file)",
        .path.display()
    )]
    ImplausibleCount {
        /// The file.
        path: PathBuf,
        /// What the count is ("tensor count", "length of string ...").
        what: String,
        /// Where it was read.
        offset: u64,
        /// The count found.
        count: u64,
        /// The fewest bytes that many items need (saturated).
        min_bytes: u64,
        /// Bytes left in the file after the count.
        remaining: u64,
    },
    /// A tensor has more than four dimensions.
    #[error(
        "{}: tensor {tensor:?} has {n_dims} dimensions, expected at most {MAX_DIMS}",
        .path.display()
    )]
    TooManyDims {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// The number of dims found.
        n_dims: u32,
    },
    /// A tensor's element count or byte size overflows.
    #[error("{}: tensor {tensor:?} with dims {dims:?} (ggml order) is too large: {what} overflows",
        .path.display())]
    SizeOverflow {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// Its dims.
        dims: Vec<u64>,
        /// What overflowed.
        what: String,
    },
    /// A tensor's innermost dimension is not a multiple of its type's block size.
    #[error(
        "{}: tensor {tensor:?} of type {type_name} has innermost dimension {dim0} (dims {dims:?}), \
         expected a multiple of the block size {block_size}",
        .path.display()
    )]
    NotBlockMultiple {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// The type name.
        type_name: String,
        /// Its dims (ggml order).
        dims: Vec<u64>,
        /// The innermost dim.
        dim0: u64,
        /// The block size of the type.
        block_size: usize,
    },
    /// A tensor's data does not lie inside the file.
    #[error(
        "{}: data of tensor {tensor:?} ({size} bytes at data offset {offset}) extends past the \
         end of the file: expected it to end within the {data_len} bytes of the data section \
         (which starts at file offset {data_start}; file length {file_len})",
        .path.display()
    )]
    TensorOutOfBounds {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// Offset relative to the data section.
        offset: u64,
        /// Size of the data in bytes.
        size: u64,
        /// File offset of the data section.
        data_start: u64,
        /// Length of the data section.
        data_len: u64,
        /// Length of the file.
        file_len: u64,
    },
    /// A tensor's data offset is not a multiple of the alignment.
    #[error(
        "{}: data offset {offset} of tensor {tensor:?} is not aligned: expected a multiple of {alignment}",
        .path.display()
    )]
    Misaligned {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// Its data offset.
        offset: u64,
        /// The required alignment.
        alignment: u64,
    },
    /// `general.alignment` is not a non-zero power of two.
    #[error(
        "{}: general.alignment is {found}, expected an unsigned integer that is a non-zero power of two",
        .path.display()
    )]
    BadAlignment {
        /// The file.
        path: PathBuf,
        /// The value found, as written in the metadata.
        found: String,
    },
    /// A string is not valid UTF-8.
    #[error("{}: {what} at offset {offset} is not valid UTF-8", .path.display())]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// Which string.
        what: String,
        /// Where its bytes start.
        offset: u64,
    },
    /// A metadata key or tensor name occurs twice.
    #[error("{}: duplicate {what} {name:?}: expected each to occur once", .path.display())]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// "metadata key" or "tensor name".
        what: String,
        /// The repeated name.
        name: String,
    },
    /// Arrays nested deeper than the reader accepts.
    #[error(
        "{}: metadata key {key:?} nests arrays more than {MAX_ARRAY_NESTING} deep (offset {offset})",
        .path.display()
    )]
    NestingTooDeep {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// Where the too-deep array starts.
        offset: u64,
    },
    /// Dequantizing a tensor failed.
    #[error("{}: cannot dequantize tensor {tensor:?}: {source}", .path.display())]
    Dequant {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// The cause.
        source: DequantError,
    },
}

/// Bytes as space-separated hex, for messages.
fn hex_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

/// A memory-mapped GGUF file whose header has been parsed and validated.
pub struct GgufFile {
    path: PathBuf,
    map: Option<Mmap>,
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    index: HashMap<String, usize>,
    alignment: u64,
    data_start: usize,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_start", &self.data_start)
            .finish()
    }
}

/// Bounds-checked little-endian reader over the bytes of a file.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn file_len(&self) -> u64 {
        self.buf.len() as u64
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn truncated(&self, what: &dyn fmt::Display, needed: u64) -> GgufError {
        GgufError::Truncated {
            path: self.path.to_path_buf(),
            what: what.to_string(),
            offset: self.pos as u64,
            needed,
            file_len: self.file_len(),
        }
    }

    fn take(&mut self, n: usize, what: &dyn fmt::Display) -> Result<&'a [u8], GgufError> {
        if n > self.buf.len() - self.pos {
            return Err(self.truncated(what, n as u64));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &dyn fmt::Display) -> Result<[u8; N], GgufError> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn fmt::Display) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn fmt::Display) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Checks that `count` items of at least `min_size` bytes each fit in
    /// the rest of the file; `count_offset` is where the count was read.
    fn check_count(&self, count: u64, min_size: u64, what: &dyn fmt::Display, count_offset: usize) -> Result<usize, GgufError> {
        let min_bytes = count.saturating_mul(min_size);
        let remaining = self.remaining();
        if min_bytes > remaining {
            return Err(GgufError::ImplausibleCount {
                path: self.path.to_path_buf(),
                what: what.to_string(),
                offset: count_offset as u64,
                count,
                min_bytes,
                remaining,
            });
        }
        // count <= remaining <= buf.len(), so it fits in usize.
        Ok(count as usize)
    }

    fn string(&mut self, what: &dyn fmt::Display) -> Result<String, GgufError> {
        let len_offset = self.pos;
        let len = self.u64(&format_args!("length of {what}"))?;
        let len = self.check_count(len, 1, &format_args!("length of {what}"), len_offset)?;
        let start = self.pos;
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(GgufError::InvalidUtf8 { path: self.path.to_path_buf(), what: what.to_string(), offset: start as u64 }),
        }
    }

    fn value(&mut self, type_id: u32, type_offset: usize, key: &str, depth: usize) -> Result<GgufValue, GgufError> {
        let what = ValueOf(key);
        Ok(match type_id {
            0 => GgufValue::U8(self.array::<1>(&what)?[0]),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(&what)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.array(&what)?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => GgufValue::Bool(self.array::<1>(&what)?[0] != 0),
            8 => GgufValue::String(self.string(&what)?),
            9 => {
                if depth >= MAX_ARRAY_NESTING {
                    return Err(GgufError::NestingTooDeep { path: self.path.to_path_buf(), key: key.to_owned(), offset: self.pos as u64 });
                }
                let elem_offset = self.pos;
                let elem_type = self.u32(&format_args!("array element type of metadata key {key:?}"))?;
                let Some(min_size) = value_min_size(elem_type) else {
                    return Err(GgufError::UnknownValueType {
                        path: self.path.to_path_buf(),
                        key: key.to_owned(),
                        type_id: elem_type,
                        offset: elem_offset as u64,
                    });
                };
                let count_offset = self.pos;
                let count = self.u64(&format_args!("array length of metadata key {key:?}"))?;
                let count = self.check_count(
                    count,
                    min_size,
                    &format_args!("array length of metadata key {key:?} ({} elements)", value_type_name(elem_type)),
                    count_offset,
                )?;
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.value(elem_type, elem_offset, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.array(&what)?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(&what)?)),
            other => {
                return Err(GgufError::UnknownValueType {
                    path: self.path.to_path_buf(),
                    key: key.to_owned(),
                    type_id: other,
                    offset: type_offset as u64,
                })
            }
        })
    }
}

/// Describes the value of a metadata key in messages, formatted only on error.
struct ValueOf<'k>(&'k str);

impl fmt::Display for ValueOf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "value of metadata key {:?}", self.0)
    }
}

/// The supported tensor types as a comma-separated list, for messages.
fn supported_types_list() -> String {
    dequant::SUPPORTED_TYPES.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
}

impl GgufFile {
    /// Opens, memory-maps and validates a GGUF v2/v3 file.
    ///
    /// The file must not be modified while the returned value is alive (it
    /// is memory-mapped).
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let io_err = |source| GgufError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        // mmap of an empty file fails on some systems; an empty file is
        // simply truncated.
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the mapping is read-only and the documented contract of
            // `open` is that the file is not modified while it is mapped.
            Some(unsafe { Mmap::map(&file) }.map_err(io_err)?)
        };
        let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
        let parsed = parse(path, bytes)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            map,
            version: parsed.version,
            metadata: parsed.metadata,
            index: parsed.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect(),
            tensors: parsed.tensors,
            alignment: parsed.alignment,
            data_start: parsed.data_start,
        })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data-section alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// All metadata, by key.
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// All tensors, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// One tensor's description.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    fn find(&self, name: &str) -> Result<&GgufTensorInfo, GgufError> {
        self.tensor_info(name).ok_or_else(|| GgufError::TensorNotFound {
            path: self.path.clone(),
            name: name.to_owned(),
            count: self.tensors.len(),
        })
    }

    /// The raw stored blocks of a tensor.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], GgufError> {
        let info = self.find(name)?;
        Ok(self.bytes_of(info))
    }

    /// Where the stored blocks of a tensor lie in [`GgufFile::mapped`]:
    /// for readers that slice them often, without looking the name up again.
    pub fn tensor_range(&self, name: &str) -> Result<std::ops::Range<usize>, GgufError> {
        Ok(self.range_of(self.find(name)?))
    }

    /// The whole mapped file (empty when it holds no tensor data).
    pub fn mapped(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// The byte range of a tensor validated by `open`.
    fn range_of(&self, info: &GgufTensorInfo) -> std::ops::Range<usize> {
        // `open` checked that the type layout is known, that sizes do not
        // overflow and that the range lies inside the mapped file.
        let start = self.data_start + info.offset as usize;
        start..start + info.n_bytes().unwrap_or(0) as usize
    }

    /// The data of a tensor validated by `open`.
    fn bytes_of(&self, info: &GgufTensorInfo) -> &[u8] {
        &self.mapped()[self.range_of(info)]
    }

    /// Whether tensor `name` is of a type subprune can dequantize (an error saying which types are, if not).
    pub fn check_dequantizable(&self, name: &str) -> Result<(), GgufError> {
        let info = self.find(name)?;
        if !info.ggml_type.can_dequantize() {
            return Err(GgufError::UnsupportedTensorType {
                path: self.path.clone(),
                tensor: info.name.clone(),
                type_id: info.ggml_type.id(),
                type_name: info.ggml_type.name(),
                supported: supported_types_list(),
            });
        }
        Ok(())
    }

    /// A tensor dequantized to f32, row-major, `n_elements` long.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        self.check_dequantizable(name)?;
        let info = self.find(name)?;
        let n = info.n_elements() as usize;
        let values = dequantize(info.ggml_type, self.bytes_of(info), n).map_err(|source| GgufError::Dequant {
            path: self.path.clone(),
            tensor: info.name.clone(),
            source,
        })?;
        self.release(info);
        Ok(values)
    }

    /// Drops the mapped pages of a tensor from this process once it has been
    /// dequantized, so that reading a model tensor by tensor keeps only what
    /// the caller holds resident (the kernel reads them again if touched).
    fn release(&self, info: &GgufTensorInfo) {
        self.release_range(self.range_of(info));
    }

    /// Drops the pages of bytes `range` of [`GgufFile::mapped`] from this
    /// process (the kernel reads them again if they are touched later): for
    /// readers that decode a tensor from the mapping themselves and are done with it.
    pub fn release_range(&self, range: std::ops::Range<usize>) {
        if let Some(map) = &self.map {
            // SAFETY: the mapping is shared and read-only, backed by the file:
            // dropped pages read back the same bytes, so no borrow can observe a change.
            let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, range.start, range.len()) };
        }
    }
}

/// The header of a file, parsed and validated.
struct Parsed {
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    alignment: u64,
    data_start: usize,
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Parsed, GgufError> {
    let mut c = Cursor { buf: bytes, pos: 0, path };
    if bytes.len() < 4 {
        return Err(c.truncated(&"GGUF header (magic, version, tensor count, kv count)", HEADER_LEN as u64));
    }
    let magic: [u8; 4] = c.array(&"magic")?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic { path: path.to_path_buf(), found: magic });
    }
    let version = c.u32(&"GGUF version")?;
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion { path: path.to_path_buf(), found: version });
    }
    let tensor_count_offset = c.pos;
    let tensor_count = c.u64(&"tensor count")?;
    let kv_count_offset = c.pos;
    let kv_count = c.u64(&"metadata key-value count")?;
    // A kv pair needs a key length (8), a type (4) and at least one value byte.
    let kv_count = c.check_count(kv_count, 13, &"metadata key-value count", kv_count_offset)?;
    // A tensor info needs a name length (8), n_dims (4), a type (4) and an offset (8).
    if tensor_count.saturating_mul(24) > c.remaining() {
        return Err(GgufError::ImplausibleCount {
            path: path.to_path_buf(),
            what: "tensor count".into(),
            offset: tensor_count_offset as u64,
            count: tensor_count,
            min_bytes: tensor_count.saturating_mul(24),
            remaining: c.remaining(),
        });
    }

    let mut metadata = BTreeMap::new();
    for i in 0..kv_count {
        let key = c.string(&format_args!("key of metadata pair {i}"))?;
        let type_offset = c.pos;
        let type_id = c.u32(&format_args!("value type of metadata key {key:?}"))?;
        let value = c.value(type_id, type_offset, &key, 0)?;
        if metadata.contains_key(&key) {
            return Err(GgufError::Duplicate { path: path.to_path_buf(), what: "metadata key".into(), name: key });
        }
        metadata.insert(key, value);
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() => a,
            _ => return Err(GgufError::BadAlignment { path: path.to_path_buf(), found: format!("{v:?}") }),
        },
    };

    // Re-check the tensor count now that the metadata has been consumed.
    let tensor_count = c.check_count(tensor_count, 24, &"tensor count", tensor_count_offset)?;
    let mut tensors = Vec::with_capacity(tensor_count);
    let mut names = HashMap::with_capacity(tensor_count);
    for i in 0..tensor_count {
        let name = c.string(&format_args!("name of tensor {i}"))?;
        let n_dims = c.u32(&format_args!("n_dims of tensor {name:?}"))?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::TooManyDims { path: path.to_path_buf(), tensor: name, n_dims });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(c.u64(&format_args!("dim {d} of tensor {name:?}"))?);
        }
        let type_id = c.u32(&format_args!("type of tensor {name:?}"))?;
        let offset = c.u64(&format_args!("data offset of tensor {name:?}"))?;
        if names.insert(name.clone(), i).is_some() {
            return Err(GgufError::Duplicate { path: path.to_path_buf(), what: "tensor name".into(), name });
        }
        tensors.push(GgufTensorInfo { name, dims, ggml_type: GgmlType::from_id(type_id), offset });
    }

    let end_of_infos = c.pos as u64;
    // end_of_infos <= file length, so rounding up cannot overflow u64.
    let data_start = end_of_infos.div_ceil(alignment) * alignment;
    let file_len = bytes.len() as u64;
    let data_len = file_len.saturating_sub(data_start);
    for t in &tensors {
        validate_tensor(path, t, alignment, data_start, data_len, file_len)?;
    }
    Ok(Parsed {
        version,
        metadata,
        tensors,
        alignment,
        // Past the end only if there is no tensor data; clamp so slicing stays valid.
        data_start: data_start.min(file_len) as usize,
    })
}

fn validate_tensor(
    path: &Path,
    t: &GgufTensorInfo,
    alignment: u64,
    data_start: u64,
    data_len: u64,
    file_len: u64,
) -> Result<(), GgufError> {
    let ty = t.ggml_type;
    let (Some(block_size), Some(_)) = (ty.block_size(), ty.type_size()) else {
        return Err(GgufError::UnsupportedTensorType {
            path: path.to_path_buf(),
            tensor: t.name.clone(),
            type_id: ty.id(),
            type_name: ty.name(),
            supported: supported_types_list(),
        });
    };
    let Some(n_elements) = t.checked_n_elements() else {
        return Err(GgufError::SizeOverflow {
            path: path.to_path_buf(),
            tensor: t.name.clone(),
            dims: t.dims.clone(),
            what: "the element count".into(),
        });
    };
    if usize::try_from(n_elements).is_err() {
        return Err(GgufError::SizeOverflow {
            path: path.to_path_buf(),
            tensor: t.name.clone(),
            dims: t.dims.clone(),
            what: "the element count (as usize)".into(),
        });
    }
    let dim0 = t.dims.first().copied().unwrap_or(1);
    if dim0 % block_size as u64 != 0 {
        return Err(GgufError::NotBlockMultiple {
            path: path.to_path_buf(),
            tensor: t.name.clone(),
            type_name: ty.name(),
            dims: t.dims.clone(),
            dim0,
            block_size,
        });
    }
    let Some(size) = t.n_bytes() else {
        return Err(GgufError::SizeOverflow {
            path: path.to_path_buf(),
            tensor: t.name.clone(),
            dims: t.dims.clone(),
            what: "the byte size".into(),
        });
    };
    if !t.offset.is_multiple_of(alignment) {
        return Err(GgufError::Misaligned { path: path.to_path_buf(), tensor: t.name.clone(), offset: t.offset, alignment });
    }
    let fits = matches!(t.offset.checked_add(size), Some(end) if end <= data_len);
    if !fits {
        return Err(GgufError::TensorOutOfBounds {
            path: path.to_path_buf(),
            tensor: t.name.clone(),
            offset: t.offset,
            size,
            data_start,
            data_len,
            file_len,
        });
    }
    Ok(())
}
