//! Errors of the `analyze` crate.

use std::path::PathBuf;

use artifacts::ArtifactError;

/// Everything that can go wrong while comparing masks, drawing figures or writing a report.
///
/// Every message names the file involved and, where it applies, what was expected
/// and what was found.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    /// Reading or writing an artifact failed.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),

    /// An operating-system I/O error on a file or directory.
    #[error("I/O error on {}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A file that the inputs name does not exist.
    #[error("{what} {} does not exist", .path.display())]
    MissingFile {
        /// The file.
        path: PathBuf,
        /// What the file should have been, e.g. "mask `python-wanda-50` listed in run.json:".
        what: String,
    },

    /// The run manifest cannot be parsed.
    #[error("{}: not a valid run manifest: {reason}", .path.display())]
    BadManifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Two masks do not cover the same modules and rows.
    #[error(
        "{} and {} do not cover the same weights: {detail}; masks compared must come from the same model \
         and list the same modules and rows in the same order",
        .a_path.display(),
        .b_path.display()
    )]
    ShapeMismatch {
        /// The first mask.
        a_path: PathBuf,
        /// The second mask.
        b_path: PathBuf,
        /// Where they differ.
        detail: String,
    },

    /// A mask has no rows of the module asked for, or its rows are not a full matrix.
    #[error("{}: module `{module}`: {detail}", .path.display())]
    BadModule {
        /// The mask.
        path: PathBuf,
        /// The module asked for.
        module: String,
        /// What is wrong.
        detail: String,
    },

    /// The command-line or manifest inputs are inconsistent.
    #[error("{0}")]
    Invalid(String),
}

/// An I/O error on `path`, for `map_err`.
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> AnalyzeError + '_ {
    move |source| AnalyzeError::Io { path: path.to_path_buf(), source }
}
