//! Errors of reading and writing checkpoint files.

use std::path::PathBuf;

/// What can go wrong with a checkpoint file. Every message names the file
/// involved, what was expected and what was found.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
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
    /// A weight an architecture needs is absent from the checkpoint.
    #[error("{path}: missing tensor `{name}` (the {architecture} architecture needs it)")]
    MissingTensor {
        /// The checkpoint file or directory.
        path: PathBuf,
        /// Hugging Face name of the missing tensor.
        name: String,
        /// Architecture that needed it.
        architecture: String,
    },
    /// A weight whose shape disagrees with the model configuration.
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
}

impl FormatError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io { path: path.into(), source }
    }

    /// A format error for `path` with the given explanation.
    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        FormatError::Format { path: path.into(), message: message.into() }
    }
}
