//! Errors of model loading and execution.

use std::path::PathBuf;

use formats::gguf::GgufError;
use formats::tokenizer::TokenizerError;
use formats::FormatError;

/// Everything that can go wrong while loading or running a model. Every
/// message names the file involved, what was expected and what was found.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A checkpoint file that could not be read or written, or lacks a
    /// tensor the architecture needs, or holds one of the wrong shape.
    #[error(transparent)]
    File(#[from] FormatError),
    /// A configuration that is missing a field or holds an unsupported value.
    #[error("{path}: {message}")]
    Config {
        /// The configuration file (config.json or the GGUF file).
        path: PathBuf,
        /// What was expected and what was found.
        message: String,
    },
    /// An error of the GGUF reader.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// An error of the tokenizer.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The requested compute device is not available.
    #[error("device: {0}")]
    Device(String),
    /// Input that the model cannot process (empty sequence, token id out of range, ...).
    #[error("invalid input: {0}")]
    Input(String),
}

impl ModelError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::File(FormatError::io(path, source))
    }

    /// A format error for `path` with the given explanation.
    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ModelError::File(FormatError::format(path, message))
    }

    /// A configuration error for `path` with the given explanation.
    pub fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ModelError::Config { path: path.into(), message: message.into() }
    }
}
