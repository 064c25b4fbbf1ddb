//! Errors of the `artifacts` crate.

use std::path::PathBuf;

use arrow_schema::ArrowError;
use parquet::errors::ParquetError;

/// Everything that can go wrong while writing or reading an artifact.
///
/// Every message names the file involved and, where it applies, what was
/// expected and what was found.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// An operating-system I/O error on a file or directory.
    #[error("I/O error on {}: {source}", .path.display())]
    Io {
        /// The file or directory the operation was about.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The file exists but is not a Parquet file.
    #[error("{} is not a Parquet file: {reason}", .path.display())]
    NotParquet {
        /// The file.
        path: PathBuf,
        /// Why it was judged not to be Parquet.
        reason: String,
    },

    /// The Parquet library failed to read or write the file.
    #[error("Parquet error on {}: {source}", .path.display())]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: ParquetError,
    },

    /// Arrow refused to build or convert data for the file.
    #[error("Arrow error on {}: {source}", .path.display())]
    Arrow {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: ArrowError,
    },

    /// A Parquet file without subprune metadata.
    #[error(
        "{} is not a subprune artifact: expected {expected} artifact, but the file has no \
         `subprune.kind` key-value metadata. A subprune artifact carries the Parquet \
         key-value metadata keys `subprune.kind` (one of {kinds}), \
         `subprune.schema_version`, `subprune.model`, `subprune.inputs`, `subprune.params` \
         and `subprune.created_by`; write it with subprune or add these keys",
        .path.display(),
        kinds = crate::ArtifactKind::names().join(", ")
    )]
    NotAnArtifact {
        /// The file.
        path: PathBuf,
        /// What was expected: a kind name, or "a subprune" when any kind would do.
        expected: String,
    },

    /// The artifact is of another kind than the one asked for.
    #[error(
        "{}: expected a `{expected}` artifact, found a `{found}` artifact (metadata subprune.kind)",
        .path.display()
    )]
    WrongKind {
        /// The file.
        path: PathBuf,
        /// The kind that was asked for.
        expected: crate::ArtifactKind,
        /// The value of `subprune.kind` in the file.
        found: String,
    },

    /// The provenance handed to a typed writer is of another kind than the writer's.
    #[error(
        "cannot write {}: the writer writes `{expected}` artifacts, but the provenance given \
         says kind `{found}`",
        .path.display()
    )]
    ProvenanceKind {
        /// The file that was to be written.
        path: PathBuf,
        /// The writer's kind.
        expected: crate::ArtifactKind,
        /// The kind in the provenance.
        found: crate::ArtifactKind,
    },

    /// The `subprune.kind` value names no known kind.
    #[error(
        "{}: unknown artifact kind `{found}` in metadata subprune.kind; expected one of {kinds}",
        .path.display(),
        kinds = crate::ArtifactKind::names().join(", ")
    )]
    UnknownKind {
        /// The file.
        path: PathBuf,
        /// The value found.
        found: String,
    },

    /// The artifact was written with another schema version.
    #[error(
        "{}: `{kind}` artifact has schema version {found}, expected schema version {expected} \
         (metadata subprune.schema_version); regenerate it with this version of subprune",
        .path.display()
    )]
    WrongSchemaVersion {
        /// The file.
        path: PathBuf,
        /// The artifact's kind.
        kind: crate::ArtifactKind,
        /// The version this build reads.
        expected: u32,
        /// The value found in the file.
        found: String,
    },

    /// A required metadata key is absent.
    #[error("{}: missing key-value metadata `{key}` ({expected})", .path.display())]
    MissingMetadata {
        /// The file.
        path: PathBuf,
        /// The missing key.
        key: String,
        /// What the key should hold.
        expected: String,
    },

    /// A metadata value cannot be understood.
    #[error("{}: metadata `{key}`: expected {expected}, found `{found}`", .path.display())]
    BadMetadata {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What the value should be.
        expected: String,
        /// The value found (possibly shortened).
        found: String,
    },

    /// A required column is absent.
    #[error(
        "{}: missing column `{column}` (expected type {expected}); the file has columns [{found}]",
        .path.display()
    )]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The column name.
        column: String,
        /// The expected type.
        expected: String,
        /// The columns present, comma separated.
        found: String,
    },

    /// A column has a type that cannot be read as the expected one.
    #[error("{}: column `{column}` has type {found}, expected {expected}", .path.display())]
    WrongColumnType {
        /// The file.
        path: PathBuf,
        /// The column name.
        column: String,
        /// The expected type(s).
        expected: String,
        /// The type found.
        found: String,
    },

    /// A value in a column is out of range or null where none is allowed.
    #[error(
        "{}: column `{column}`, row {row}: expected {expected}, found {found}",
        .path.display()
    )]
    BadValue {
        /// The file.
        path: PathBuf,
        /// The column name.
        column: String,
        /// The row index within the file.
        row: usize,
        /// What the value should be.
        expected: String,
        /// The value found.
        found: String,
    },

    /// Nothing to write: no record batch was given, so the schema is unknown.
    #[error("cannot write {}: no record batches given (at least one, possibly empty, is needed for the schema)", .path.display())]
    NoBatches {
        /// The file that was to be written.
        path: PathBuf,
    },

    /// The path has no file name (e.g. `/` or `..`).
    #[error("cannot write {}: the path does not end in a file name", .path.display())]
    NoFileName {
        /// The path.
        path: PathBuf,
    },

    /// Two artifacts that must describe the same model do not.
    #[error(
        "model mismatch: {} was made for model `{a_model}`, but {} was made for model \
         `{b_model}` (metadata subprune.model); both must come from the same model",
        .a_path.display(),
        .b_path.display()
    )]
    ModelMismatch {
        /// The first file.
        a_path: PathBuf,
        /// The first file's model fingerprint.
        a_model: String,
        /// The second file.
        b_path: PathBuf,
        /// The second file's model fingerprint.
        b_model: String,
    },
}
