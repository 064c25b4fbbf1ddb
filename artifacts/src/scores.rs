//! The `scores` artifact: importance scores of every weight, one row per output
//! row of a linear module. Also the streamed Parquet writing and reading shared
//! by the large per-row artifacts (stats, scores, mask).

use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type};
use arrow_array::{Array, ArrayRef, Float32Array, ListArray, RecordBatch, StringArray, UInt32Array};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::columns::{check_field, column, string_column, u64_column, Accept};
use crate::{open_streamed, write_parquet_grouped, ArtifactError, ArtifactKind, Provenance};

/// Rows per record batch of the per-row artifacts: a few thousand rows keep a
/// batch of SmolLM2-sized rows (up to 1536 floats) within tens of megabytes.
pub(crate) const ROWS_PER_BATCH: usize = 4096;

/// Importance scores of one output row of a linear module.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreRow {
    /// Hugging Face parameter name without `.weight`, e.g. `model.layers.3.mlp.down_proj`.
    pub module: String,
    /// Output row index, in Hugging Face row order.
    pub row: u32,
    /// One score per input column.
    pub score: Vec<f32>,
}

/// The Arrow schema of a scores artifact: module Utf8, row UInt32, score List<Float32>.
pub fn scores_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("module", DataType::Utf8, false),
        Field::new("row", DataType::UInt32, false),
        Field::new("score", DataType::List(Arc::new(Field::new_list_field(DataType::Float32, false))), false),
    ]))
}

/// A non-nullable `List<Float32>` array of the given rows.
pub(crate) fn f32_list_array<'a>(
    path: &Path,
    name: &str,
    first_row: usize,
    rows: impl Iterator<Item = &'a [f32]> + Clone,
) -> Result<ListArray, ArtifactError> {
    let mut offsets = Vec::with_capacity(rows.clone().count() + 1);
    offsets.push(0i32);
    let mut total = 0usize;
    for (i, r) in rows.clone().enumerate() {
        total += r.len();
        let end = i32::try_from(total).map_err(|_| ArtifactError::BadValue {
            path: path.to_path_buf(),
            column: name.to_string(),
            row: first_row + i,
            expected: format!("at most {} values in one record batch", i32::MAX),
            found: format!("{total} values"),
        })?;
        offsets.push(end);
    }
    let mut values = Vec::with_capacity(total);
    for r in rows {
        values.extend_from_slice(r);
    }
    let item = Arc::new(Field::new_list_field(DataType::Float32, false));
    ListArray::try_new(item, OffsetBuffer::new(ScalarBuffer::from(offsets)), Arc::new(Float32Array::from(values)), None)
        .map_err(|source| ArtifactError::Arrow { path: path.to_path_buf(), source })
}

/// Checks that `schema` has a list-of-floats column `name`; returns its index.
pub(crate) fn check_float_list(path: &Path, schema: &Schema, name: &str) -> Result<usize, ArtifactError> {
    let idx = schema.index_of(name).map_err(|_| ArtifactError::MissingColumn {
        path: path.to_path_buf(),
        column: name.to_string(),
        expected: FLOAT_LIST.to_string(),
        found: schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", "),
    })?;
    let ok = match schema.field(idx).data_type() {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            matches!(f.data_type(), DataType::Float32 | DataType::Float64)
        }
        _ => false,
    };
    if !ok {
        return Err(ArtifactError::WrongColumnType {
            path: path.to_path_buf(),
            column: name.to_string(),
            expected: FLOAT_LIST.to_string(),
            found: schema.field(idx).data_type().to_string(),
        });
    }
    Ok(idx)
}

/// Description of the accepted list-of-floats types.
const FLOAT_LIST: &str = "a list of floats (List<Float32> preferred)";

/// Reads a list-of-floats column (List, LargeList or FixedSizeList of Float32 or
/// Float64) as lists of `f32`, refusing nulls; `first_row` is the file row of the
/// batch's first row.
pub(crate) fn f32_list_column(path: &Path, name: &str, batch: &RecordBatch, first_row: usize) -> Result<Vec<Vec<f32>>, ArtifactError> {
    let idx = check_float_list(path, batch.schema_ref(), name)?;
    let array = batch.column(idx);
    let rows: Vec<Option<ArrayRef>> = match array.data_type() {
        DataType::List(_) => array.as_list::<i32>().iter().collect(),
        DataType::LargeList(_) => array.as_list::<i64>().iter().collect(),
        DataType::FixedSizeList(_, _) => array.as_fixed_size_list().iter().collect(),
        other => unreachable!("f32_list_column() called on {other}"),
    };
    let bad = |row: usize, found: String| ArtifactError::BadValue {
        path: path.to_path_buf(),
        column: name.to_string(),
        row,
        expected: "a non-null list of non-null floats".to_string(),
        found,
    };
    rows.into_iter()
        .enumerate()
        .map(|(i, row)| {
            let row = row.ok_or_else(|| bad(first_row + i, "null".to_string()))?;
            if let Some(p) = row.nulls().filter(|nulls| nulls.null_count() > 0).and_then(|nulls| nulls.iter().position(|valid| !valid)) {
                return Err(bad(first_row + i, format!("null at position {p}")));
            }
            Ok(match row.data_type() {
                DataType::Float32 => row.as_primitive::<Float32Type>().values().to_vec(),
                DataType::Float64 => row.as_primitive::<Float64Type>().values().iter().map(|&v| v as f32).collect(),
                other => unreachable!("float list of {other}"),
            })
        })
        .collect()
}

/// Reads an integer column as `u32`, refusing nulls and values out of range.
pub(crate) fn u32_column(path: &Path, name: &str, batch: &RecordBatch, first_row: usize) -> Result<Vec<u32>, ArtifactError> {
    let values = u64_column(path, name, column(path, batch, name, Accept::Int)?.as_ref(), first_row)?;
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            u32::try_from(v).map_err(|_| ArtifactError::BadValue {
                path: path.to_path_buf(),
                column: name.to_string(),
                row: first_row + i,
                expected: format!("an integer in 0..={}", u32::MAX),
                found: v.to_string(),
            })
        })
        .collect()
}

/// Reads a non-nullable string column.
pub(crate) fn text_column(path: &Path, name: &str, batch: &RecordBatch, first_row: usize) -> Result<Vec<String>, ArtifactError> {
    let values = string_column(path, name, column(path, batch, name, Accept::Str)?.as_ref(), first_row, false)?;
    Ok(values.into_iter().map(Option::unwrap_or_default).collect())
}

fn scores_batch(path: &Path, first_row: usize, chunk: &[ScoreRow]) -> Result<RecordBatch, ArtifactError> {
    let modules = StringArray::from_iter_values(chunk.iter().map(|r| r.module.as_str()));
    let rows = UInt32Array::from_iter_values(chunk.iter().map(|r| r.row));
    let scores = f32_list_array(path, "score", first_row, chunk.iter().map(|r| r.score.as_slice()))?;
    let columns: Vec<ArrayRef> = vec![Arc::new(modules), Arc::new(rows), Arc::new(scores)];
    RecordBatch::try_new(scores_schema(), columns).map_err(|source| ArtifactError::Arrow { path: path.to_path_buf(), source })
}

/// Writes a scores artifact atomically, in record batches of a few thousand rows;
/// returns its content hash.
///
/// `provenance` must be of kind `scores`.
pub fn write_scores(path: &Path, rows: &[ScoreRow], provenance: &Provenance) -> Result<String, ArtifactError> {
    if provenance.kind != ArtifactKind::Scores {
        return Err(ArtifactError::ProvenanceKind { path: path.to_path_buf(), expected: ArtifactKind::Scores, found: provenance.kind });
    }
    let chunks: Vec<(usize, &[ScoreRow])> = if rows.is_empty() {
        vec![(0, rows)]
    } else {
        rows.chunks(ROWS_PER_BATCH).enumerate().map(|(i, c)| (i * ROWS_PER_BATCH, c)).collect()
    };
    let batches = chunks.into_iter().map(|(first, chunk)| scores_batch(path, first, chunk));
    write_parquet_grouped(path, scores_schema(), batches, provenance, Some(ROWS_PER_BATCH))
}

/// Writes a scores artifact atomically from rows produced a group at a time
/// (e.g. one module's at a time), so that the scores are never all in memory;
/// returns its content hash. An error from `groups` stops the write and is
/// returned; the temp file is removed and an existing `path` is left as it was.
///
/// `provenance` must be of kind `scores`.
pub fn write_scores_streamed<E, I>(path: &Path, groups: I, provenance: &Provenance) -> Result<String, E>
where
    E: From<ArtifactError>,
    I: IntoIterator<Item = Result<Vec<ScoreRow>, E>>,
{
    if provenance.kind != ArtifactKind::Scores {
        return Err(
            ArtifactError::ProvenanceKind { path: path.to_path_buf(), expected: ArtifactKind::Scores, found: provenance.kind }.into()
        );
    }
    // Rows are regrouped into batches of ROWS_PER_BATCH whatever the groups,
    // so the file is byte for byte what `write_scores` writes of the same
    // rows; row groups of as many rows bound what the writer holds.
    let mut groups = groups.into_iter();
    let (mut pending, mut first, mut done) = (Vec::<ScoreRow>::new(), 0usize, false);
    let batches = std::iter::from_fn(move || loop {
        if pending.len() >= ROWS_PER_BATCH || (done && !pending.is_empty()) {
            let rest = pending.split_off(ROWS_PER_BATCH.min(pending.len()));
            let chunk = std::mem::replace(&mut pending, rest);
            let batch = scores_batch(path, first, &chunk).map_err(E::from);
            first += chunk.len();
            return Some(batch);
        }
        if done {
            return None;
        }
        match groups.next() {
            None => {
                done = true;
                if first == 0 && pending.is_empty() {
                    return Some(scores_batch(path, 0, &[]).map_err(E::from));
                }
            }
            Some(Err(e)) => {
                done = true;
                pending.clear();
                return Some(Err(e));
            }
            Some(Ok(rows)) => pending.extend(rows),
        }
    });
    write_parquet_grouped(path, scores_schema(), batches, provenance, Some(ROWS_PER_BATCH))
}

/// Reads a scores artifact: provenance and rows in file order, batch by batch.
///
/// Accepts module as any string type, row as any integer type in `u32` range and
/// score as any list of Float32 or Float64; nulls are refused.
pub fn read_scores(path: &Path) -> Result<(Provenance, Vec<ScoreRow>), ArtifactError> {
    let (provenance, schema, reader) = open_streamed(path, ArtifactKind::Scores)?;
    check_field(path, &schema, "module", Accept::Str)?;
    check_field(path, &schema, "row", Accept::Int)?;
    check_float_list(path, &schema, "score")?;
    let mut out = Vec::new();
    let mut first = 0;
    for batch in reader {
        let batch = batch.map_err(|source| ArtifactError::Arrow { path: path.to_path_buf(), source })?;
        let modules = text_column(path, "module", &batch, first)?;
        let rows = u32_column(path, "row", &batch, first)?;
        let scores = f32_list_column(path, "score", &batch, first)?;
        out.extend(modules.into_iter().zip(rows).zip(scores).map(|((module, row), score)| ScoreRow { module, row, score }));
        first += batch.num_rows();
    }
    Ok((provenance, out))
}
