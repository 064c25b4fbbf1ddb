//! Decoder LLMs for subprune: burn modules, loaders for Hugging Face safetensors
//! directories and GGUF files, and their tokenizers.
//!
//! Every loader yields weights in Hugging Face layout and naming
//! (`model.layers.L.self_attn.q_proj.weight`, rows in HF order), whatever the
//! file format, so that all artifacts of subprune name modules the same way.

pub mod arch;
pub mod checkpoint;
pub mod decoder;
pub mod device;
pub mod error;
pub mod loader;
pub mod nn;
pub mod stream;

pub use arch::ModelConfig;
pub use checkpoint::{Checkpoint, MaskedWeights, ReplacedWeights, StoredPart, StoredRows, StoredType, Weights};
pub use decoder::{Decoder, DecoderSpec, ForwardContext, LayerSpec};
pub use device::{select_device, BlasThreads, DeviceChoice, SelectedDevice};
pub use error::ModelError;
pub use formats::{gguf, safetensors, sparse, tokenizer, weights};
pub use formats::{FormatError, HostTensor, WeightMap};
pub use loader::{load_model, write_hf_metadata, LoadedModel, ModelFormat};
pub use nn::{shared_values, HostKv, Kernels, KvCache, LayerKv, LinearObserver};

/// Most rows that a linear layer in host memory multiplies row by row (the
/// few-row kernels, as decoding steps run); a forward of more rows goes
/// through the general matmul, which sums in another order. A sequence
/// computes the same bits in any batch as long as every forward it is part
/// of stays on the same side of this bound.
pub const FEW_ROWS: usize = kernels::SMALL_MATMUL_ROWS;
