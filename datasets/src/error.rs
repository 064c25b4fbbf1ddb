//! Errors of the `datasets` crate.

use std::path::PathBuf;

/// Everything that can go wrong while collecting documents or sampling them.
///
/// Every message names the file involved and, where it applies, what was
/// expected and what was found.
#[derive(Debug, thiserror::Error)]
pub enum DatasetsError {
    /// An operating-system I/O error on a file or directory.
    #[error("I/O error on {}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A path given on the command line does not exist.
    #[error("{} not found (expected a directory tree, a JSONL/JSONL.gz/JSON/Parquet data file or a text file)", .path.display())]
    NotFound {
        /// The path.
        path: PathBuf,
    },

    /// A file given directly has an extension the collector cannot read.
    #[error("{}: cannot read files ending in `{extension}` ({hint})", .path.display())]
    UnknownExtension {
        /// The file.
        path: PathBuf,
        /// Its extension.
        extension: String,
        /// What can be read instead.
        hint: String,
    },

    /// A record is not a JSON object.
    #[error("{}: {record}: expected a JSON object per record, found {found}", .path.display())]
    NotAnObject {
        /// The file.
        path: PathBuf,
        /// The record (`line N` or `row N`).
        record: String,
        /// What was found instead.
        found: String,
    },

    /// A field named by `--field` or the template is absent from a record.
    #[error(
        "{}: {record}: missing field `{field}`; the record has fields [{found}] (choose them with --field NAME or --template \"{{a}}\\n{{b}}\")",
        .path.display()
    )]
    MissingField {
        /// The file.
        path: PathBuf,
        /// The record (`line N` or `row N`).
        record: String,
        /// The missing field (a dotted path for nested fields).
        field: String,
        /// The fields the record has, comma separated.
        found: String,
    },

    /// A field's value cannot be turned into text.
    #[error("{}: {record}: field `{field}`: expected text, a number or a list of strings, found {found}", .path.display())]
    BadFieldValue {
        /// The file.
        path: PathBuf,
        /// The record (`line N` or `row N`).
        record: String,
        /// The field.
        field: String,
        /// A description of the value found.
        found: String,
    },

    /// A data file is given but neither `--field` nor `--template` (nor a preset) says which text to take.
    #[error(
        "{}: a data file needs --field NAME or --template \"{{a}}\\n{{b}}\" (or --preset NAME) to say which text to take; its first record has fields [{found}]",
        .path.display()
    )]
    NoTextSpec {
        /// The data file.
        path: PathBuf,
        /// The fields of its first record, comma separated.
        found: String,
    },

    /// A template cannot be parsed.
    #[error("bad template `{template}`: {message}")]
    Template {
        /// The template text.
        template: String,
        /// What is wrong.
        message: String,
    },

    /// A domain without built-in file rules was given a directory tree without `--ext`.
    #[error(
        "{}: domain `{domain}` has no built-in source-file extensions; give --ext (e.g. --ext rs,toml) to collect files from a directory tree, or name data files directly",
        .path.display()
    )]
    NoExtensions {
        /// The directory.
        path: PathBuf,
        /// The domain.
        domain: String,
    },

    /// Nothing was collected from a source.
    #[error("no documents found under {} for domain {domain} (looked for {looked_for})", .path.display())]
    NoDocuments {
        /// The source path.
        path: PathBuf,
        /// The domain.
        domain: String,
        /// What was looked for.
        looked_for: String,
    },

    /// An option has a value that cannot be used.
    #[error("{option}: {message}")]
    BadOption {
        /// The option, e.g. `--heldout-fraction`.
        option: String,
        /// What is wrong and what is expected.
        message: String,
    },

    /// No preset has the name given.
    #[error("unknown preset `{name}`; known presets: {known} (see `datasets presets`)")]
    UnknownPreset {
        /// The name given.
        name: String,
        /// The known names, comma separated.
        known: String,
    },

    /// The split asked for has no documents.
    #[error(
        "{}: the `{split}` split has no documents (the file has {total} documents in all); `datasets collect` puts each document in calib or heldout by a hash of its text, with --heldout-fraction of them held out: collect more documents or change that fraction",
        .path.display()
    )]
    EmptySplit {
        /// The documents artifact.
        path: PathBuf,
        /// The split.
        split: String,
        /// How many documents the file has.
        total: usize,
    },

    /// Wanda sampling needs a document longer than seqlen tokens and none is.
    #[error(
        "{}: no `{split}` document is longer than seqlen = {seqlen} tokens ({docs} documents, the longest has {longest} tokens); \
         lower --seqlen, collect longer documents, use --whole-docs, or pass --concat to join documents into longer ones",
        .path.display()
    )]
    NoLongDocument {
        /// The documents artifact.
        path: PathBuf,
        /// The split sampled.
        split: String,
        /// The sequence length asked for.
        seqlen: usize,
        /// How many documents the split has.
        docs: usize,
        /// The token count of the longest one.
        longest: usize,
    },

    /// More whole documents were asked for than the split has.
    #[error(
        "{}: asked for {asked} whole documents without replacement, but the `{split}` split has only {available} non-empty documents; lower --nsamples",
        .path.display()
    )]
    TooFewDocuments {
        /// The documents artifact.
        path: PathBuf,
        /// The split sampled.
        split: String,
        /// The number asked for.
        asked: usize,
        /// The number available.
        available: usize,
    },

    /// The split's tokens do not fill a single window.
    #[error(
        "{}: the `{split}` split has {tokens} tokens in all, fewer than one window of seqlen = {seqlen}; lower --seqlen",
        .path.display()
    )]
    NoWindow {
        /// The documents artifact.
        path: PathBuf,
        /// The split.
        split: String,
        /// Its total token count (separators included).
        tokens: usize,
        /// The window length.
        seqlen: usize,
    },

    /// Reading a data file's records failed.
    #[error(transparent)]
    Records(#[from] artifacts::records::RecordsError),

    /// Reading or writing an artifact failed.
    #[error(transparent)]
    Artifact(#[from] artifacts::ArtifactError),

    /// Loading the model failed.
    #[error(transparent)]
    Model(#[from] model::ModelError),

    /// Tokenizing failed.
    #[error(transparent)]
    Tokenizer(#[from] model::tokenizer::TokenizerError),
}

/// Wraps an I/O error with its path.
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> DatasetsError + '_ {
    move |source| DatasetsError::Io { path: path.to_path_buf(), source }
}
