//! Errors of model loading and execution.

use std::path::PathBuf;

use formats::gguf::GgufError;
use formats::tokenizer::TokenizerError;
use formats::FormatError;

/// Everything that can go wrong while loading or running a model. Every
/// message names the file involved, what was expected and what was found.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// An operating-system error while reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file that could not be read or written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file whose content does not have the expected structure.
    #[error("{path}: {message}")]
    Format {
        /// The offending file.
        path: PathBuf,
        /// What was expected and what was found.
        message: String,
    },
    /// A weight the architecture needs is absent from the checkpoint.
    #[error("{path}: missing tensor `{name}` (the {architecture} architecture needs it)")]
    MissingTensor {
        /// The checkpoint file or directory.
        path: PathBuf,
        /// Hugging Face name of the missing tensor.
        name: String,
        /// Architecture that needed it.
        architecture: String,
    },
    /// A weight whose shape disagrees with the configuration.
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?} from the model configuration")]
    ShapeMismatch {
        /// The checkpoint file or directory.
        path: PathBuf,
        /// Hugging Face name of the tensor.
        name: String,
        /// Shape implied by the configuration.
        expected: Vec<usize>,
        /// Shape stored in the file.
        found: Vec<usize>,
    },
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

impl From<FormatError> for ModelError {
    fn from(error: FormatError) -> Self {
        match error {
            FormatError::Io { path, source } => ModelError::Io { path, source },
            FormatError::Format { path, message } => ModelError::Format { path, message },
            FormatError::MissingTensor { path, name, architecture } => ModelError::MissingTensor { path, name, architecture },
            FormatError::ShapeMismatch { path, name, expected, found } => ModelError::ShapeMismatch { path, name, expected, found },
        }
    }
}

impl ModelError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io { path: path.into(), source }
    }

    /// A format error for `path` with the given explanation.
    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ModelError::Format { path: path.into(), message: message.into() }
    }

    /// A configuration error for `path` with the given explanation.
    pub fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ModelError::Config { path: path.into(), message: message.into() }
    }
}
