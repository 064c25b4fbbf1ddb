//! The `samples` artifact: tokenized calibration sequences.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, ListArray, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::columns::{check_field, column, string_column, u32_list_column, u64_column, Accept};
use crate::{read_with_schema, write_parquet, ArtifactError, ArtifactKind, Provenance};

/// Extra key (under `subprune.samples.`) of the tokenizer hash.
const EXTRA_TOKENIZER_HASH: &str = "tokenizer_hash";
/// Extra key (under `subprune.samples.`) of the sequence length.
const EXTRA_SEQLEN: &str = "seqlen";
/// Extra key (under `subprune.samples.`) of the sampling seed.
const EXTRA_SEED: &str = "seed";

/// Most rows per record batch written.
const ROWS_PER_BATCH: usize = 8192;

/// One calibration sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Identifier of the sample, unique within the file.
    pub sample_id: u64,
    /// The domain it was drawn from (e.g. `python`).
    pub domain: String,
    /// Token ids.
    pub tokens: Vec<u32>,
}

/// File-level facts about a samples artifact, stored as `subprune.samples.*` metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplesInfo {
    /// Hash of the tokenizer that produced the tokens (`subprune.samples.tokenizer_hash`).
    pub tokenizer_hash: String,
    /// Sequence length the samples were cut to (`subprune.samples.seqlen`).
    pub seqlen: usize,
    /// Seed of the sampling, if any (`subprune.samples.seed`).
    pub seed: Option<u64>,
}

/// The Arrow schema of a samples artifact: sample_id UInt64, domain Utf8, tokens List<UInt32>.
pub fn samples_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("sample_id", DataType::UInt64, false),
        Field::new("domain", DataType::Utf8, false),
        Field::new("tokens", DataType::List(Arc::new(Field::new_list_field(DataType::UInt32, false))), false),
    ]))
}

fn samples_batch(path: &Path, chunk: &[Sample]) -> Result<RecordBatch, ArtifactError> {
    let arrow_err = |source| ArtifactError::Arrow { path: path.to_path_buf(), source };
    let ids = UInt64Array::from_iter_values(chunk.iter().map(|s| s.sample_id));
    let domains = StringArray::from_iter_values(chunk.iter().map(|s| s.domain.as_str()));
    let mut offsets = Vec::with_capacity(chunk.len() + 1);
    offsets.push(0i32);
    let mut total: usize = 0;
    for (i, s) in chunk.iter().enumerate() {
        total += s.tokens.len();
        let end = i32::try_from(total).map_err(|_| ArtifactError::BadValue {
            path: path.to_path_buf(),
            column: "tokens".to_string(),
            row: i,
            expected: format!("at most {} tokens in one record batch", i32::MAX),
            found: format!("{total} tokens"),
        })?;
        offsets.push(end);
    }
    let values = UInt32Array::from_iter_values(chunk.iter().flat_map(|s| s.tokens.iter().copied()));
    let item = Arc::new(Field::new_list_field(DataType::UInt32, false));
    let tokens = ListArray::try_new(item, OffsetBuffer::new(ScalarBuffer::from(offsets)), Arc::new(values), None).map_err(arrow_err)?;
    let columns: Vec<ArrayRef> = vec![Arc::new(ids), Arc::new(domains), Arc::new(tokens)];
    RecordBatch::try_new(samples_schema(), columns).map_err(arrow_err)
}

/// Writes a samples artifact atomically; returns its content hash.
///
/// `provenance` must be of kind `samples`; `info` is added to it as
/// `subprune.samples.*` extras (no seed key when `info.seed` is `None`).
pub fn write_samples(path: &Path, samples: &[Sample], info: &SamplesInfo, provenance: &Provenance) -> Result<String, ArtifactError> {
    if provenance.kind != ArtifactKind::Samples {
        return Err(ArtifactError::ProvenanceKind { path: path.to_path_buf(), expected: ArtifactKind::Samples, found: provenance.kind });
    }
    let mut provenance = provenance.clone();
    provenance.extra.insert(EXTRA_TOKENIZER_HASH.to_string(), info.tokenizer_hash.clone());
    provenance.extra.insert(EXTRA_SEQLEN.to_string(), info.seqlen.to_string());
    match info.seed {
        Some(seed) => provenance.extra.insert(EXTRA_SEED.to_string(), seed.to_string()),
        None => provenance.extra.remove(EXTRA_SEED),
    };
    let batches = if samples.is_empty() {
        vec![samples_batch(path, &[])?]
    } else {
        samples.chunks(ROWS_PER_BATCH).map(|chunk| samples_batch(path, chunk)).collect::<Result<Vec<_>, _>>()?
    };
    write_parquet(path, &batches, &provenance)
}

fn samples_info(path: &Path, p: &Provenance) -> Result<SamplesInfo, ArtifactError> {
    let key = |k: &str| format!("subprune.samples.{k}");
    let tokenizer_hash = p
        .extra
        .get(EXTRA_TOKENIZER_HASH)
        .ok_or_else(|| ArtifactError::MissingMetadata {
            path: path.to_path_buf(),
            key: key(EXTRA_TOKENIZER_HASH),
            expected: "the hash of the tokenizer".to_string(),
        })?
        .clone();
    let seqlen_str = p.extra.get(EXTRA_SEQLEN).ok_or_else(|| ArtifactError::MissingMetadata {
        path: path.to_path_buf(),
        key: key(EXTRA_SEQLEN),
        expected: "the sequence length, an integer".to_string(),
    })?;
    let seqlen = seqlen_str.trim().parse().map_err(|_| ArtifactError::BadMetadata {
        path: path.to_path_buf(),
        key: key(EXTRA_SEQLEN),
        expected: "a non-negative integer".to_string(),
        found: seqlen_str.clone(),
    })?;
    let seed = p
        .extra
        .get(EXTRA_SEED)
        .map(|s| {
            s.trim().parse().map_err(|_| ArtifactError::BadMetadata {
                path: path.to_path_buf(),
                key: key(EXTRA_SEED),
                expected: format!("an integer in 0..={}", u64::MAX),
                found: s.clone(),
            })
        })
        .transpose()?;
    Ok(SamplesInfo { tokenizer_hash, seqlen, seed })
}

/// Reads a samples artifact: provenance, file-level info and samples in file order.
///
/// Besides the written layout it accepts sample_id of any integer type, domain as any
/// string type, and tokens as List, LargeList or FixedSizeList of any integer type;
/// nulls, negative ids or tokens, and tokens above `u32::MAX` are refused.
pub fn read_samples(path: &Path) -> Result<(Provenance, SamplesInfo, Vec<Sample>), ArtifactError> {
    let (provenance, schema, batches) = read_with_schema(path, ArtifactKind::Samples)?;
    let info = samples_info(path, &provenance)?;
    check_field(path, &schema, "sample_id", Accept::Int)?;
    check_field(path, &schema, "domain", Accept::Str)?;
    check_field(path, &schema, "tokens", Accept::IntList)?;
    let mut samples = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    let mut first_row = 0;
    for batch in &batches {
        let ids = u64_column(path, "sample_id", column(path, batch, "sample_id", Accept::Int)?.as_ref(), first_row)?;
        let domains = string_column(path, "domain", column(path, batch, "domain", Accept::Str)?.as_ref(), first_row, false)?;
        let tokens = u32_list_column(path, "tokens", column(path, batch, "tokens", Accept::IntList)?.as_ref(), first_row)?;
        samples.extend(ids.into_iter().zip(domains).zip(tokens).map(|((sample_id, domain), tokens)| Sample {
            sample_id,
            domain: domain.unwrap_or_default(),
            tokens,
        }));
        first_row += batch.num_rows();
    }
    Ok((provenance, info, samples))
}
