//! The model file formats subprune reads and writes, with no tensor library:
//! GGUF files (reader, dequantization of every common type, writer and
//! quantization), safetensors checkpoints (single or sharded), subprune's
//! compressed sparse matrices inside them ([`sparse`]), the f32 host
//! weights every loader yields ([`weights`]), and tokenizers (Hugging Face
//! `tokenizer.json`, and GGUF tokenizer metadata built as llama.cpp
//! tokenizes). Nothing here knows an architecture.

pub mod error;
pub mod gguf;
pub mod safetensors;
pub mod sparse;
pub mod tokenizer;
pub mod weights;

pub use error::FormatError;
pub use weights::{HostTensor, WeightMap};
