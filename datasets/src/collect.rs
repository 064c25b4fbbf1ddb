//! `datasets collect`: gather documents of one domain from source trees, data
//! files and text files, deduplicate them, and split them into calibration and
//! held-out sets by a hash of their content.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use artifacts::{write_documents, ArtifactKind, Document, Provenance, Split};
use indicatif::ProgressBar;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::io_err;
use crate::text::{FieldProblem, TextSpec};
use crate::tree::{judge, walk, Language, Skip};
use crate::{progress_spinner, DatasetsError, CREATED_BY};
use artifacts::records::{for_each_record, parquet_columns, DataFormat};

/// Largest document cut from one file: longer files are split at line
/// boundaries into parts of about this many bytes, so hash-based splits and
/// deduplication work at a useful grain.
pub const MAX_DOC_BYTES: usize = 64 * 1024;

/// Folder names whose data are for evaluation only: documents from them are
/// always held out (MultiPL-E's license forbids training on it).
pub const EVAL_ONLY_DIRS: &[&str] = &["multipl-e-humaneval"];

/// Options of `collect`.
#[derive(Debug, Clone)]
pub struct CollectOptions {
    /// The domain name recorded in every document.
    pub domain: String,
    /// Directory trees, data files and text files, in order.
    pub from: Vec<PathBuf>,
    /// How to make text from data-file records (`--field` / `--template`).
    pub text: Option<TextSpec>,
    /// Keep only records whose `split` field equals this (`--split`).
    pub split_filter: Option<String>,
    /// Fraction of documents held out, in [0, 1].
    pub heldout_fraction: f64,
    /// Stop after this many (unique) documents.
    pub max_docs: Option<usize>,
    /// Skip the first this many records of every data file, in file order
    /// (`--skip-records`): the items an evaluation reads first stay out.
    pub skip_records: usize,
    /// File extensions of a tree for a domain without built-in rules (`--ext`).
    pub extensions: Vec<String>,
    /// Also walk vendored directories (`node_modules`, `vendor`, ...) below a root.
    pub include_vendored: bool,
    /// Keep only shard `i` of `n` (`--shard i/n`), chosen by a hash of each text
    /// independent of its split, so disjoint sources can be cut from one corpus.
    pub shard: Option<(u64, u64)>,
    /// Show a spinner on stderr.
    pub progress: bool,
}

/// Counts of what `collect` saw and skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectReport {
    /// Source or text files read.
    pub files: usize,
    /// Data-file records read.
    pub records: usize,
    /// Files skipped as binary (NUL bytes or not UTF-8).
    pub binary: usize,
    /// Files skipped as minified.
    pub minified: usize,
    /// Files skipped as generated.
    pub generated: usize,
    /// Empty files and records with empty text.
    pub empty: usize,
    /// Records with a null field.
    pub null_records: usize,
    /// Records dropped by `--split`.
    pub other_split: usize,
    /// Leading records passed over by `--skip-records`.
    pub skipped_records: usize,
    /// Vendored directories not walked.
    pub vendored_dirs: usize,
    /// Documents dropped as exact duplicates of earlier ones.
    pub duplicates: usize,
    /// Documents held out because they come from an evaluation-only folder.
    pub forced_heldout: usize,
    /// Documents left out because they belong to another shard (`--shard`).
    pub other_shard: usize,
    /// Notes for the user (e.g. a `--split` that could not filter).
    pub notes: Vec<String>,
}

/// The result of `collect`: the documents in order and what was seen.
#[derive(Debug, Clone)]
pub struct Collection {
    /// The documents, deduplicated, in source order.
    pub documents: Vec<Document>,
    /// Counts and notes.
    pub report: CollectReport,
}

impl Collection {
    /// How many documents are in `split`.
    pub fn count(&self, split: Split) -> usize {
        self.documents.iter().filter(|d| d.split == split).count()
    }
}

/// The fraction in [0, 1) that a text's hash maps to: the first 8 bytes of sha256(text), big-endian, over 2^64.
pub fn hash_fraction(text: &str) -> f64 {
    let digest = Sha256::digest(text.as_bytes());
    let x = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    x as f64 / 18_446_744_073_709_551_616.0
}

/// The split of a text: held out iff its [`hash_fraction`] is below `heldout_fraction`.
pub fn split_of(text: &str, heldout_fraction: f64) -> Split {
    if hash_fraction(text) < heldout_fraction {
        Split::Heldout
    } else {
        Split::Calib
    }
}

/// The shard in `0..n` a text belongs to: bytes 8..16 of sha256(text), big-endian,
/// modulo `n` (bytes 0..8 decide the split, so shards and splits are independent).
pub fn shard_of(text: &str, n: u64) -> u64 {
    let digest = Sha256::digest(text.as_bytes());
    u64::from_be_bytes(digest[8..16].try_into().expect("8 bytes")) % n.max(1)
}

/// Parses a shard `i/n` with `i < n`.
pub fn parse_shard(text: &str) -> Option<(u64, u64)> {
    let (i, n) = text.split_once('/')?;
    let (i, n): (u64, u64) = (i.trim().parse().ok()?, n.trim().parse().ok()?);
    (i < n).then_some((i, n))
}

/// Cuts `text` into parts of at most about `max` bytes at line boundaries (a
/// single longer line is cut at a character boundary). A text that fits is one part.
pub fn chunk_text(text: &str, max: usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = text;
    // The largest character boundary at or below `at` (a multi-byte character may straddle it).
    let boundary = |text: &str, mut at: usize| {
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        at
    };
    while rest.len() > max {
        let mut cut = rest[..boundary(rest, max + 1)].rfind('\n').map(|i| i + 1).unwrap_or(0);
        if cut == 0 {
            cut = boundary(rest, max);
        }
        if cut == 0 {
            // One character longer than `max` bytes: a part of its own.
            cut = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        parts.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    if !rest.is_empty() {
        parts.push(rest);
    }
    parts
}

/// Whether a path lies in an evaluation-only folder.
pub fn is_eval_only(path: &Path) -> bool {
    let check =
        |p: &Path| p.components().any(|c| matches!(c, Component::Normal(n) if EVAL_ONLY_DIRS.contains(&n.to_string_lossy().as_ref())));
    check(path) || fs::canonicalize(path).is_ok_and(|p| check(&p))
}

/// Collects while deduplicating; stops at `max_docs`.
struct Collector<'a> {
    opts: &'a CollectOptions,
    docs: Vec<Document>,
    seen: HashMap<[u8; 32], usize>,
    report: CollectReport,
    spinner: ProgressBar,
}

impl Collector<'_> {
    fn full(&self) -> bool {
        self.opts.max_docs.is_some_and(|m| self.docs.len() >= m)
    }

    /// Adds a document unless it is empty or a duplicate; `forced` holds it out.
    fn add(&mut self, source: &str, id: String, text: &str, forced: bool) {
        if text.trim().is_empty() {
            self.report.empty += 1;
            return;
        }
        let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        if let Some(&i) = self.seen.get(&digest) {
            self.report.duplicates += 1;
            if forced && i != usize::MAX && self.docs[i].split != Split::Heldout {
                self.docs[i].split = Split::Heldout;
                self.report.forced_heldout += 1;
            }
            return;
        }
        if self.full() {
            return;
        }
        if let Some((i, n)) = self.opts.shard {
            if shard_of(text, n) != i {
                self.seen.insert(digest, usize::MAX);
                self.report.other_shard += 1;
                return;
            }
        }
        let split = if forced {
            self.report.forced_heldout += 1;
            Split::Heldout
        } else {
            split_of(text, self.opts.heldout_fraction)
        };
        self.seen.insert(digest, self.docs.len());
        self.docs.push(Document { domain: self.opts.domain.clone(), source: source.to_string(), id, text: text.to_string(), split });
        if self.docs.len().is_multiple_of(64) {
            self.spinner.set_message(format!("{} documents", self.docs.len()));
        }
    }

    /// Adds a file's text, cut into parts when long.
    fn add_file_text(&mut self, source: &str, id: &str, text: &str, forced: bool) {
        let parts = chunk_text(text, MAX_DOC_BYTES);
        let n = parts.len();
        for (k, part) in parts.into_iter().enumerate() {
            let id = if n == 1 { id.to_string() } else { format!("{id}#part{}", k + 1) };
            self.add(source, id, part, forced);
        }
    }

    fn tree(&mut self, root: &Path, lang: &Language, forced: bool) -> Result<(), DatasetsError> {
        let w = walk(root, lang, self.opts.include_vendored)?;
        self.report.vendored_dirs += w.vendored_dirs;
        let source = root.display().to_string();
        for path in w.files {
            if self.full() {
                break;
            }
            let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
            if let Some(format) = DataFormat::of(&path) {
                self.data_file(&path, format, forced)?;
                continue;
            }
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => continue,
                Err(e) => return Err(io_err(&path)(e)),
            };
            if !lang.matches_extension(&path) {
                let head = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]);
                if !lang.matches_content(&head) {
                    continue;
                }
            }
            self.report.files += 1;
            match judge(&path, bytes) {
                Ok(text) => self.add_file_text(&source, &rel, &text, forced),
                Err(Skip::Binary) => self.report.binary += 1,
                Err(Skip::Minified) => self.report.minified += 1,
                Err(Skip::Generated) => self.report.generated += 1,
                Err(Skip::Empty) => self.report.empty += 1,
            }
        }
        Ok(())
    }

    fn data_file(&mut self, path: &Path, format: DataFormat, forced: bool) -> Result<(), DatasetsError> {
        let source = path.display().to_string();
        let spec = self.opts.text.clone();
        let mut columns = spec.as_ref().map(TextSpec::top_level_fields).unwrap_or_default();
        columns.push("split".to_string());
        let split_filter = self.opts.split_filter.clone();
        let mut saw_split_field = false;
        let mut to_skip = self.opts.skip_records;
        let mut cb = |label: String, record: Value| -> Result<bool, DatasetsError> {
            if to_skip > 0 {
                to_skip -= 1;
                self.report.skipped_records += 1;
                return Ok(true);
            }
            let Value::Object(map) = &record else {
                return Err(DatasetsError::NotAnObject {
                    path: path.to_path_buf(),
                    record: label,
                    found: record.to_string().chars().take(80).collect(),
                });
            };
            let fields = || map.keys().cloned().collect::<Vec<_>>().join(", ");
            let Some(spec) = &spec else {
                return Err(DatasetsError::NoTextSpec { path: path.to_path_buf(), found: fields() });
            };
            if let Some(want) = &split_filter {
                if let Some(v) = map.get("split") {
                    saw_split_field = true;
                    let have = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
                    if &have != want {
                        self.report.other_split += 1;
                        return Ok(true);
                    }
                }
            }
            self.report.records += 1;
            match spec.render(&record) {
                Ok(Some(text)) => self.add(&source, label, &text, forced),
                Ok(None) => self.report.null_records += 1,
                Err(FieldProblem::Missing(field)) => {
                    let found = if format == DataFormat::Parquet { parquet_columns(path)?.join(", ") } else { fields() };
                    return Err(DatasetsError::MissingField { path: path.to_path_buf(), record: label, field, found });
                }
                Err(FieldProblem::Bad(field, found)) => {
                    return Err(DatasetsError::BadFieldValue { path: path.to_path_buf(), record: label, field, found });
                }
            }
            Ok(!self.full())
        };
        for_each_record(path, format, &columns, &mut cb)?;
        if let Some(want) = &self.opts.split_filter {
            if !saw_split_field {
                self.report.notes.push(format!(
                    "{}: records have no `split` field, so --split {want} could not filter; all records were taken (the split is recorded in the params)",
                    path.display()
                ));
            }
        }
        Ok(())
    }

    fn text_file(&mut self, path: &Path, forced: bool) -> Result<(), DatasetsError> {
        let mut bytes = Vec::new();
        fs::File::open(path).map_err(io_err(path))?.read_to_end(&mut bytes).map_err(io_err(path))?;
        if bytes.contains(&0) {
            return Err(DatasetsError::UnknownExtension {
                path: path.to_path_buf(),
                extension: extension_of(path),
                hint: "it is a binary file (NUL bytes); expected UTF-8 text".into(),
            });
        }
        let text = String::from_utf8(bytes).map_err(|e| DatasetsError::UnknownExtension {
            path: path.to_path_buf(),
            extension: extension_of(path),
            hint: format!("it is not UTF-8 text ({e})"),
        })?;
        self.report.files += 1;
        let source = path.display().to_string();
        let id = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| source.clone());
        self.add_file_text(&source, &id, &text, forced);
        Ok(())
    }
}

fn extension_of(path: &Path) -> String {
    path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_else(|| "(no extension)".into())
}

/// Compressed or archive extensions that are not read directly.
const UNREADABLE: &[&str] = &["gz", "bz2", "xz", "zst", "zip", "tar", "tgz", "7z", "arrow", "feather", "csv"];

/// Collects documents per `opts`; see the crate documentation for the rules.
pub fn collect(opts: &CollectOptions) -> Result<Collection, DatasetsError> {
    if !(0.0..=1.0).contains(&opts.heldout_fraction) {
        return Err(DatasetsError::BadOption {
            option: "--heldout-fraction".into(),
            message: format!("expected a fraction in [0, 1], found {}", opts.heldout_fraction),
        });
    }
    if opts.domain.trim().is_empty() {
        return Err(DatasetsError::BadOption { option: "--domain".into(), message: "expected a domain name, found an empty one".into() });
    }
    if opts.from.is_empty() {
        return Err(DatasetsError::BadOption { option: "--from".into(), message: "expected at least one path".into() });
    }
    let lang =
        if opts.extensions.is_empty() { Language::builtin(&opts.domain) } else { Some(Language::custom(&opts.domain, &opts.extensions)) };
    let spinner = progress_spinner(opts.progress, "collecting");
    let mut c = Collector { opts, docs: Vec::new(), seen: HashMap::new(), report: CollectReport::default(), spinner };
    for path in &opts.from {
        if c.full() {
            break;
        }
        if !path.exists() {
            return Err(DatasetsError::NotFound { path: path.clone() });
        }
        let forced = is_eval_only(path);
        if forced {
            c.report.notes.push(format!(
                "{}: lies in an evaluation-only folder ({}); its documents are all marked heldout and never used for calibration",
                path.display(),
                EVAL_ONLY_DIRS.join(", ")
            ));
        }
        let seen = |c: &Collector| c.docs.len() + c.report.duplicates + c.report.other_shard;
        let before = seen(&c);
        if path.is_dir() {
            let lang = lang.as_ref().ok_or_else(|| DatasetsError::NoExtensions { path: path.clone(), domain: opts.domain.clone() })?;
            c.tree(path, lang, forced)?;
            if seen(&c) == before && !c.full() {
                return Err(DatasetsError::NoDocuments { path: path.clone(), domain: opts.domain.clone(), looked_for: lang.describe() });
            }
            continue;
        }
        if let Some(format) = DataFormat::of(path) {
            c.data_file(path, format, forced)?;
        } else if extension_of(path).strip_prefix('.').is_some_and(|e| UNREADABLE.contains(&e.to_lowercase().as_str())) {
            return Err(DatasetsError::UnknownExtension {
                path: path.clone(),
                extension: extension_of(path),
                hint: "expected .jsonl, .jsonl.gz, .json, .parquet, a source file or a plain text file; decompress or convert it first"
                    .into(),
            });
        } else {
            c.text_file(path, forced)?;
        }
        if seen(&c) == before && !c.full() {
            return Err(DatasetsError::NoDocuments {
                path: path.clone(),
                domain: opts.domain.clone(),
                looked_for: "non-empty records or text".into(),
            });
        }
    }
    c.spinner.finish_and_clear();
    Ok(Collection { documents: c.docs, report: c.report })
}

/// Writes a collection as a documents artifact (model fingerprint empty) with
/// `params` as its options; returns the file's content hash.
pub fn write_collection(out: &Path, collection: &Collection, params: Value) -> Result<String, DatasetsError> {
    let provenance = Provenance::new(ArtifactKind::Documents, "", params, CREATED_BY);
    Ok(write_documents(out, &collection.documents, &provenance)?)
}
