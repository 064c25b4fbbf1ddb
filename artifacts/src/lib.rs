//! Parquet artifacts of subprune: schemas, provenance metadata, atomic writes.
//!
//! Every artifact is a Parquet file whose footer carries `subprune.*` key-value
//! metadata (see [`Provenance`]). Files are written atomically: to a temp file in
//! the target's directory, fsynced, then renamed over the target. Readers refuse a
//! file of another kind or schema version with an error naming the file, what was
//! expected and what was found.

mod columns;
mod documents;
mod error;
mod hessians;
mod items;
mod jaccard;
mod kind;
mod mask;
pub mod parquet_guard;
mod provenance;
pub mod records;
mod results;
mod samples;
mod scores;
mod stats;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{KeyValue, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};

pub use documents::{documents_content_hash, documents_schema, read_documents, write_documents, Document, Split, EXTRA_CONTENT_HASH};
pub use error::ArtifactError;
pub use hessians::{hessians_schema, write_hessians, HessiansReader, InputHessian};
pub use items::{items_path_for, items_schema, read_items, write_items, ItemRow};
pub use jaccard::{jaccard_schema, read_jaccard, write_jaccard, JaccardRow};
pub use kind::{ArtifactKind, UnknownKindError};
pub use mask::{layer_of, mask_schema, read_mask, write_mask, LayerOrderedMaskWriter, MaskInfo, MaskReader, MaskRow, MaskWriter};
pub use provenance::{Provenance, KEY_CREATED_BY, KEY_INPUTS, KEY_KIND, KEY_MODEL, KEY_PARAMS, KEY_SCHEMA_VERSION, PARAM_LAYER_SPARSITIES};
pub use results::{read_results, results_schema, write_results, ResultRow};
pub use samples::{read_samples, samples_schema, write_samples, Sample, SamplesInfo};
pub use scores::{read_scores, scores_schema, write_scores, write_scores_streamed, ScoreRow};
pub use stats::{read_stats, stats_schema, write_stats, ModuleStats};

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Size of the Parquet magic (`PAR1`) at both ends of a file.
const MAGIC_LEN: u64 = 4;

/// A counter that keeps temp names unique between threads of one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io { path: path.to_path_buf(), source }
}

fn pq_err(path: &Path) -> impl FnOnce(parquet::errors::ParquetError) -> ArtifactError + '_ {
    move |source| ArtifactError::Parquet { path: path.to_path_buf(), source }
}

/// A writer that hashes everything written through it.
struct HashingWriter {
    file: File,
    hasher: Sha256,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Removes the temp file when dropped, unless it was renamed into place.
struct TempGuard {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn format_hash(digest: &[u8]) -> String {
    format!("sha256:{}", hex::encode(digest))
}

/// Writes record batches as a Parquet artifact with provenance metadata, atomically.
///
/// The data go to a temp file `.<name>.tmp-<pid>-<n>` in the target's directory
/// (created if missing), which is fsynced and renamed over `path`. On any error the
/// temp file is removed and an existing target is left untouched. ZSTD compression.
/// All batches must share the first batch's schema; pass a single batch with
/// `std::slice::from_ref(&batch)`. Returns the content hash (`sha256:<hex>`) of the
/// written file.
pub fn write_parquet(path: &Path, batches: &[RecordBatch], provenance: &Provenance) -> Result<String, ArtifactError> {
    let schema = batches.first().map(|b| b.schema()).ok_or_else(|| ArtifactError::NoBatches { path: path.to_path_buf() })?;
    write_parquet_streamed(path, schema, batches.iter().cloned().map(Ok), provenance)
}

/// Writes record batches produced one at a time as a Parquet artifact, atomically.
///
/// Like [`write_parquet`] (temp file in the target's directory, fsync,
/// rename, temp removed on error), but each batch is built only when it is
/// written, so a large artifact is never held twice in memory. Returns the
/// content hash (`sha256:<hex>`) of the written file.
pub(crate) fn write_parquet_streamed<I, E>(path: &Path, schema: SchemaRef, batches: I, provenance: &Provenance) -> Result<String, E>
where
    I: IntoIterator<Item = Result<RecordBatch, E>>,
    E: From<ArtifactError>,
{
    write_parquet_grouped(path, schema, batches, provenance, None)
}

/// [`write_parquet_streamed`] with row groups of at most `max_row_group_rows`
/// rows (the writer holds one row group in memory before writing it; the
/// default is a million rows, too many for a large model's scores).
pub(crate) fn write_parquet_grouped<I, E>(
    path: &Path,
    schema: SchemaRef,
    batches: I,
    provenance: &Provenance,
    max_row_group_rows: Option<usize>,
) -> Result<String, E>
where
    I: IntoIterator<Item = Result<RecordBatch, E>>,
    E: From<ArtifactError>,
{
    let mut file = ParquetFile::create(path, schema, &provenance.to_metadata(), max_row_group_rows)?;
    for batch in batches {
        file.write(&batch?)?;
    }
    Ok(file.finish(&[])?)
}

/// A Parquet artifact being written: batches go to a temp file
/// `.<name>.tmp-<pid>-<n>` in the target's directory (created if missing);
/// [`ParquetFile::finish`] fsyncs it and renames it over the target.
/// Dropped unfinished (an error, a panic), it removes the temp file and
/// leaves an existing target untouched.
pub(crate) struct ParquetFile {
    path: PathBuf,
    dir: PathBuf,
    tmp_path: PathBuf,
    writer: ArrowWriter<HashingWriter>,
    guard: TempGuard,
}

impl ParquetFile {
    /// Starts the artifact `path` of `schema` with key-value `metadata`
    /// (a provenance's, or none until [`ParquetFile::finish`]) and row
    /// groups of at most `max_row_group_rows` rows (default: a million).
    pub(crate) fn create(
        path: &Path,
        schema: SchemaRef,
        metadata: &[(String, String)],
        max_row_group_rows: Option<usize>,
    ) -> Result<Self, ArtifactError> {
        let file_name =
            path.file_name().ok_or_else(|| ArtifactError::NoFileName { path: path.to_path_buf() })?.to_string_lossy().into_owned();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp_path = dir.join(format!(".{file_name}.tmp-{}-{n}", std::process::id()));
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp_path).map_err(io_err(&tmp_path))?;
        let guard = TempGuard { path: tmp_path.clone(), armed: true };
        let kv = metadata.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect();
        let mut props =
            WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::default())).set_key_value_metadata(Some(kv));
        if let Some(rows) = max_row_group_rows {
            props = props.set_max_row_group_row_count(Some(rows));
        }
        let sink = HashingWriter { file, hasher: Sha256::new() };
        let writer = ArrowWriter::try_new(sink, schema, Some(props.build())).map_err(pq_err(path))?;
        Ok(ParquetFile { path: path.to_path_buf(), dir, tmp_path, writer, guard })
    }

    /// Appends one batch (of the artifact's schema).
    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<(), ArtifactError> {
        self.writer.write(batch).map_err(pq_err(&self.path))
    }

    /// Adds the metadata known only at the end (`extra`, key and value),
    /// then closes, fsyncs and renames the file into place; returns its
    /// content hash (`sha256:<hex>`).
    pub(crate) fn finish(mut self, extra: &[(String, String)]) -> Result<String, ArtifactError> {
        let path = self.path.clone();
        for (key, value) in extra {
            self.writer.append_key_value_metadata(KeyValue::new(key.clone(), value.clone()));
        }
        let mut sink = self.writer.into_inner().map_err(pq_err(&path))?;
        sink.flush().map_err(io_err(&path))?;
        sink.file.sync_all().map_err(io_err(&path))?;
        let hash = format_hash(&sink.hasher.finalize());
        fs::rename(&self.tmp_path, &path).map_err(io_err(&path))?;
        self.guard.armed = false;
        if let Ok(d) = fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(hash)
    }
}

/// Opens `path` and checks the Parquet magic at both ends.
fn open_parquet(path: &Path) -> Result<File, ArtifactError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    let not_parquet = |reason: String| ArtifactError::NotParquet { path: path.to_path_buf(), reason };
    if len < 2 * MAGIC_LEN + 4 {
        return Err(not_parquet(format!("it is {len} bytes long, too short for a Parquet file")));
    }
    let mut head = [0u8; MAGIC_LEN as usize];
    let mut tail = [0u8; MAGIC_LEN as usize];
    file.read_exact(&mut head).map_err(io_err(path))?;
    file.seek(SeekFrom::End(-(MAGIC_LEN as i64))).map_err(io_err(path))?;
    file.read_exact(&mut tail).map_err(io_err(path))?;
    file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    let magic_ok = |m: &[u8; 4]| m == b"PAR1" || m == b"PARE";
    if !magic_ok(&head) || !magic_ok(&tail) {
        return Err(not_parquet(format!(
            "expected the magic bytes `PAR1` at its start and end, found {:?} and {:?}",
            String::from_utf8_lossy(&head),
            String::from_utf8_lossy(&tail)
        )));
    }
    parquet_guard::check_footer(&file, len).map_err(pq_err(path))?;
    Ok(file)
}

fn kv_pairs(kv: Option<&Vec<KeyValue>>) -> Vec<(String, String)> {
    kv.map(|kv| kv.iter().filter_map(|e| e.value.as_ref().map(|v| (e.key.clone(), v.clone()))).collect()).unwrap_or_default()
}

/// Checks that a provenance read from `path` has the current schema version.
fn check_version(path: &Path, p: &Provenance) -> Result<(), ArtifactError> {
    if p.schema_version != SCHEMA_VERSION {
        return Err(ArtifactError::WrongSchemaVersion {
            path: path.to_path_buf(),
            kind: p.kind,
            expected: SCHEMA_VERSION,
            found: p.schema_version.to_string(),
        });
    }
    Ok(())
}

/// Reads an artifact: its provenance, Arrow schema and record batches.
///
/// Refuses a file of another kind or schema version, and one without subprune metadata.
pub(crate) fn read_with_schema(path: &Path, expected: ArtifactKind) -> Result<(Provenance, SchemaRef, Vec<RecordBatch>), ArtifactError> {
    let (provenance, schema, reader) = open_streamed(path, expected)?;
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|source| ArtifactError::Arrow { path: path.to_path_buf(), source })?;
    Ok((provenance, schema, batches))
}

/// Opens an artifact of kind `expected` for reading batch by batch.
///
/// Refuses, as [`crate::read_parquet`] does, a file that is not Parquet, has no
/// subprune metadata, or is of another kind or schema version.
pub(crate) fn open_streamed(path: &Path, expected: ArtifactKind) -> Result<(Provenance, SchemaRef, parquet_guard::Guarded), ArtifactError> {
    let (provenance, schema, reader, _) = open_streamed_counted(path, expected)?;
    Ok((provenance, schema, reader))
}

/// Like [`open_streamed`], and also returns the number of rows the footer declares.
pub(crate) fn open_streamed_counted(
    path: &Path,
    expected: ArtifactKind,
) -> Result<(Provenance, SchemaRef, parquet_guard::Guarded, u64), ArtifactError> {
    let file = open_parquet(path)?;
    let len = file.metadata().map_err(io_err(path))?.len();
    let checked = file.try_clone().map_err(io_err(path))?;
    let builder = parquet_guard::catch(|| ParquetRecordBatchReaderBuilder::try_new(file)).map_err(pq_err(path))?;
    let pairs = kv_pairs(builder.metadata().file_metadata().key_value_metadata());
    let provenance = Provenance::from_metadata(path, &pairs, Some(expected))?;
    check_version(path, &provenance)?;
    parquet_guard::check(&checked, len, builder.metadata()).map_err(pq_err(path))?;
    let num_rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
    let schema = builder.schema().clone();
    let reader = parquet_guard::catch(|| builder.build()).map_err(pq_err(path))?;
    Ok((provenance, schema, parquet_guard::Guarded::new(reader), num_rows))
}

/// Reads an artifact of kind `expected`: its provenance and all record batches.
///
/// Refuses, with an error naming the file, what was expected and what was found:
/// a file that is not Parquet, one without subprune metadata, one of another kind,
/// and one of another schema version.
pub fn read_parquet(path: &Path, expected: ArtifactKind) -> Result<(Provenance, Vec<RecordBatch>), ArtifactError> {
    let (provenance, _, batches) = read_with_schema(path, expected)?;
    Ok((provenance, batches))
}

/// Reads only the footer's provenance, of any kind and schema version.
///
/// Fails on a file that is not Parquet or has no subprune metadata.
pub fn read_provenance(path: &Path) -> Result<Provenance, ArtifactError> {
    let file = open_parquet(path)?;
    let metadata = parquet_guard::catch(|| ParquetMetaDataReader::new().parse_and_finish(&file)).map_err(pq_err(path))?;
    let pairs = kv_pairs(metadata.file_metadata().key_value_metadata());
    Provenance::from_metadata(path, &pairs, None)
}

/// The content hash of a file: `sha256:<hex>` of its bytes.
pub fn content_hash(path: &Path) -> Result<String, ArtifactError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(path)(e)),
        };
        hasher.update(&buf[..n]);
    }
    Ok(format_hash(&hasher.finalize()))
}

/// Checks that two artifacts were made for the same model fingerprint.
///
/// The error names both files and both fingerprints.
pub fn check_same_model(a: &Provenance, a_path: &Path, b: &Provenance, b_path: &Path) -> Result<(), ArtifactError> {
    if a.model == b.model {
        Ok(())
    } else {
        Err(ArtifactError::ModelMismatch {
            a_path: a_path.to_path_buf(),
            a_model: a.model.clone(),
            b_path: b_path.to_path_buf(),
            b_model: b.model.clone(),
        })
    }
}

/// The rows a streamed reader has decoded from its last record batch and
/// not yet handed out, and whether it has reached its end.
pub(crate) struct RowQueue<T> {
    pending: std::vec::IntoIter<T>,
    done: bool,
}

impl<T> RowQueue<T> {
    /// An empty queue of a reader at its start.
    pub(crate) fn new() -> Self {
        RowQueue { pending: Vec::new().into_iter(), done: false }
    }
}

/// A streamed reader that decodes record batches into rows; its
/// [`BatchRows::next_row`] is the one implementation of their iterators.
pub(crate) trait BatchRows {
    /// The row type.
    type Row;

    /// The reader's queue of decoded rows.
    fn queue(&mut self) -> &mut RowQueue<Self::Row>;

    /// Reads and checks the next record batch; `None` at the end of the file.
    fn read_batch(&mut self) -> Option<Result<Vec<Self::Row>, ArtifactError>>;

    /// The next row; after an error, nothing more.
    fn next_row(&mut self) -> Option<Result<Self::Row, ArtifactError>> {
        loop {
            let queue = self.queue();
            if let Some(row) = queue.pending.next() {
                return Some(Ok(row));
            }
            if queue.done {
                return None;
            }
            match self.read_batch() {
                None => self.queue().done = true,
                Some(Ok(rows)) => self.queue().pending = rows.into_iter(),
                Some(Err(e)) => {
                    self.queue().done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
