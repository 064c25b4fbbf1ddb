//! The `documents` artifact: source documents of one or more domains, each
//! assigned to the calibration or the held-out split.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use sha2::{Digest, Sha256};

use crate::columns::{check_field, column, string_column, Accept};
use crate::{format_hash, read_with_schema, write_parquet, ArtifactError, ArtifactKind, Provenance};

/// Extra key (under `subprune.documents.`) of the content hash of the documents.
pub const EXTRA_CONTENT_HASH: &str = "content_hash";

/// Most rows per record batch written.
const ROWS_PER_BATCH: usize = 8192;
/// Most text bytes per record batch written (keeps Utf8 offsets far below `i32::MAX`).
const BYTES_PER_BATCH: usize = 256 << 20;

/// Which split a document belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Split {
    /// Used for calibration (`calib`).
    Calib,
    /// Held out for evaluation, never used for calibration (`heldout`).
    Heldout,
}

impl Split {
    /// Every split, calibration first.
    pub const ALL: [Split; 2] = [Split::Calib, Split::Heldout];

    /// The name stored in the `split` column: `calib` or `heldout`.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Calib => "calib",
            Split::Heldout => "heldout",
        }
    }

    /// Parses `calib` or `heldout`.
    pub fn parse(s: &str) -> Option<Split> {
        Split::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One source document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// The domain it belongs to (e.g. `python`, `math`).
    pub domain: String,
    /// Where it comes from: the directory tree or data file given.
    pub source: String,
    /// Its identity within the source: a relative path, `line N` or `row N`, possibly with a part suffix.
    pub id: String,
    /// The text.
    pub text: String,
    /// Calibration or held-out.
    pub split: Split,
}

/// The Arrow schema of a documents artifact: domain, source, id, text, split (all Utf8).
pub fn documents_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("domain", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
    ]))
}

/// The content hash of a list of documents: `sha256:<hex>` of the concatenated
/// 32-byte sha256 digests of each document's text, in order.
///
/// Stored as `subprune.documents.content_hash`; two collections with the same
/// texts in the same order have the same hash whatever their file bytes.
pub fn documents_content_hash(documents: &[Document]) -> String {
    let mut outer = Sha256::new();
    for d in documents {
        outer.update(Sha256::digest(d.text.as_bytes()));
    }
    format_hash(&outer.finalize())
}

fn documents_batch(path: &Path, chunk: &[Document]) -> Result<RecordBatch, ArtifactError> {
    let strings = |f: fn(&Document) -> &str| -> ArrayRef { Arc::new(StringArray::from_iter_values(chunk.iter().map(f))) };
    let columns: Vec<ArrayRef> = vec![
        strings(|d| d.domain.as_str()),
        strings(|d| d.source.as_str()),
        strings(|d| d.id.as_str()),
        strings(|d| d.text.as_str()),
        strings(|d| d.split.as_str()),
    ];
    RecordBatch::try_new(documents_schema(), columns).map_err(|source| ArtifactError::Arrow { path: path.to_path_buf(), source })
}

/// Splits `documents` into chunks of at most [`ROWS_PER_BATCH`] rows and about [`BYTES_PER_BATCH`] text bytes.
fn chunks(documents: &[Document]) -> Vec<&[Document]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, d) in documents.iter().enumerate() {
        let len = d.text.len() + d.id.len() + d.source.len() + d.domain.len();
        if i > start && (i - start >= ROWS_PER_BATCH || bytes + len > BYTES_PER_BATCH) {
            out.push(&documents[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += len;
    }
    if start < documents.len() {
        out.push(&documents[start..]);
    }
    out
}

/// Writes a documents artifact atomically; returns its file content hash.
///
/// `provenance` must be of kind `documents`; the model fingerprint is normally
/// empty since documents do not depend on a model. The documents' content hash
/// ([`documents_content_hash`]) is added as `subprune.documents.content_hash`.
pub fn write_documents(path: &Path, documents: &[Document], provenance: &Provenance) -> Result<String, ArtifactError> {
    if provenance.kind != ArtifactKind::Documents {
        return Err(ArtifactError::ProvenanceKind { path: path.to_path_buf(), expected: ArtifactKind::Documents, found: provenance.kind });
    }
    let provenance = provenance.clone().with_extra(EXTRA_CONTENT_HASH, documents_content_hash(documents));
    let batches = if documents.is_empty() {
        vec![documents_batch(path, &[])?]
    } else {
        chunks(documents).into_iter().map(|c| documents_batch(path, c)).collect::<Result<Vec<_>, _>>()?
    };
    write_parquet(path, &batches, &provenance)
}

/// Reads a documents artifact: provenance and documents in file order.
///
/// Accepts any string type for every column; refuses nulls and split values
/// other than `calib` and `heldout`.
pub fn read_documents(path: &Path) -> Result<(Provenance, Vec<Document>), ArtifactError> {
    let (provenance, schema, batches) = read_with_schema(path, ArtifactKind::Documents)?;
    let names = ["domain", "source", "id", "text", "split"];
    for name in names {
        check_field(path, &schema, name, Accept::Str)?;
    }
    let mut documents = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    let mut first = 0;
    for batch in &batches {
        let mut cols = Vec::with_capacity(names.len());
        for name in names {
            let array = column(path, batch, name, Accept::Str)?;
            cols.push(string_column(path, name, array.as_ref(), first, false)?.into_iter().map(Option::unwrap_or_default));
        }
        let mut it = cols.into_iter();
        let (domain, source, id, text, split) =
            (it.next().unwrap(), it.next().unwrap(), it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        for (row, ((((domain, source), id), text), split)) in domain.zip(source).zip(id).zip(text).zip(split).enumerate() {
            let split = Split::parse(&split).ok_or_else(|| ArtifactError::BadValue {
                path: path.to_path_buf(),
                column: "split".to_string(),
                row: first + row,
                expected: "`calib` or `heldout`".to_string(),
                found: format!("`{split}`"),
            })?;
            documents.push(Document { domain, source, id, text, split });
        }
        first += batch.num_rows();
    }
    Ok((provenance, documents))
}
