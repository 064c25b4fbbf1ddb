//! The `stats` artifact: activation statistics of every prunable linear module,
//! gathered by `calibrate` over the calibration samples.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::columns::{check_field, column, u64_column, Accept};
use crate::scores::{check_float_list, f32_list_array, f32_list_column, text_column, u32_column, ROWS_PER_BATCH};
use crate::{open_streamed, write_parquet_streamed};
use crate::{ArtifactError, ArtifactKind, Provenance};

/// Input statistics of one linear module.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleStats {
    /// Decoder layer index.
    pub layer: u32,
    /// Hugging Face parameter name without `.weight`, e.g. `model.layers.3.mlp.down_proj`.
    pub module: String,
    /// Number of input columns of the module.
    pub in_features: u32,
    /// Calibration tokens seen.
    pub n_tokens: u64,
    /// Calibration samples (forward batches of the reference) seen.
    pub n_samples: u64,
    /// Sum over all calibration tokens of `x_j^2`, per input column.
    pub sum_sq: Vec<f32>,
    /// Wanda's statistic as the reference accumulates it: the running mean over
    /// samples of `||X_j||^2`, per input column.
    pub scaler_row: Vec<f32>,
}

/// The Arrow schema of a stats artifact: layer UInt32, module Utf8, in_features
/// UInt32, n_tokens UInt64, n_samples UInt64, sum_sq and scaler_row List<Float32>.
pub fn stats_schema() -> SchemaRef {
    let floats = || DataType::List(Arc::new(Field::new_list_field(DataType::Float32, false)));
    Arc::new(Schema::new(vec![
        Field::new("layer", DataType::UInt32, false),
        Field::new("module", DataType::Utf8, false),
        Field::new("in_features", DataType::UInt32, false),
        Field::new("n_tokens", DataType::UInt64, false),
        Field::new("n_samples", DataType::UInt64, false),
        Field::new("sum_sq", floats(), false),
        Field::new("scaler_row", floats(), false),
    ]))
}

/// Checks that both statistic vectors of `s` have `in_features` entries.
fn check_lengths(path: &Path, row: usize, s: &ModuleStats) -> Result<(), ArtifactError> {
    for (name, len) in [("sum_sq", s.sum_sq.len()), ("scaler_row", s.scaler_row.len())] {
        if len != s.in_features as usize {
            return Err(ArtifactError::BadValue {
                path: path.to_path_buf(),
                column: name.to_string(),
                row,
                expected: format!("{} values (in_features of {})", s.in_features, s.module),
                found: format!("{len} values"),
            });
        }
    }
    Ok(())
}

fn stats_batch(path: &Path, first_row: usize, chunk: &[ModuleStats]) -> Result<RecordBatch, ArtifactError> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(chunk.iter().map(|s| s.layer))),
        Arc::new(StringArray::from_iter_values(chunk.iter().map(|s| s.module.as_str()))),
        Arc::new(UInt32Array::from_iter_values(chunk.iter().map(|s| s.in_features))),
        Arc::new(UInt64Array::from_iter_values(chunk.iter().map(|s| s.n_tokens))),
        Arc::new(UInt64Array::from_iter_values(chunk.iter().map(|s| s.n_samples))),
        Arc::new(f32_list_array(path, "sum_sq", first_row, chunk.iter().map(|s| s.sum_sq.as_slice()))?),
        Arc::new(f32_list_array(path, "scaler_row", first_row, chunk.iter().map(|s| s.scaler_row.as_slice()))?),
    ];
    RecordBatch::try_new(stats_schema(), columns).map_err(|source| ArtifactError::Arrow { path: path.to_path_buf(), source })
}

/// Writes a stats artifact atomically; returns its content hash.
///
/// `provenance` must be of kind `stats`; every row's `sum_sq` and `scaler_row`
/// must have `in_features` entries.
pub fn write_stats(path: &Path, stats: &[ModuleStats], provenance: &Provenance) -> Result<String, ArtifactError> {
    if provenance.kind != ArtifactKind::Stats {
        return Err(ArtifactError::ProvenanceKind { path: path.to_path_buf(), expected: ArtifactKind::Stats, found: provenance.kind });
    }
    for (i, s) in stats.iter().enumerate() {
        check_lengths(path, i, s)?;
    }
    let chunks: Vec<(usize, &[ModuleStats])> = if stats.is_empty() {
        vec![(0, stats)]
    } else {
        stats.chunks(ROWS_PER_BATCH).enumerate().map(|(i, c)| (i * ROWS_PER_BATCH, c)).collect()
    };
    let batches = chunks.into_iter().map(|(first, chunk)| stats_batch(path, first, chunk));
    write_parquet_streamed(path, stats_schema(), batches, provenance)
}

/// Reads a stats artifact: provenance and rows in file order.
///
/// Accepts any integer type for the integer columns, any string type for module
/// and any list of Float32 or Float64 for the statistics; refuses nulls, values
/// out of range and statistics whose length is not `in_features`.
pub fn read_stats(path: &Path) -> Result<(Provenance, Vec<ModuleStats>), ArtifactError> {
    let (provenance, schema, reader) = open_streamed(path, ArtifactKind::Stats)?;
    let spec = [
        ("layer", Accept::Int),
        ("module", Accept::Str),
        ("in_features", Accept::Int),
        ("n_tokens", Accept::Int),
        ("n_samples", Accept::Int),
    ];
    for (name, accept) in spec {
        check_field(path, &schema, name, accept)?;
    }
    check_float_list(path, &schema, "sum_sq")?;
    check_float_list(path, &schema, "scaler_row")?;
    let mut out = Vec::new();
    let mut first = 0;
    for batch in reader {
        let batch = batch.map_err(|source| ArtifactError::Arrow { path: path.to_path_buf(), source })?;
        let layers = u32_column(path, "layer", &batch, first)?;
        let modules = text_column(path, "module", &batch, first)?;
        let in_features = u32_column(path, "in_features", &batch, first)?;
        let n_tokens = u64_column(path, "n_tokens", column(path, &batch, "n_tokens", Accept::Int)?.as_ref(), first)?;
        let n_samples = u64_column(path, "n_samples", column(path, &batch, "n_samples", Accept::Int)?.as_ref(), first)?;
        let sum_sq = f32_list_column(path, "sum_sq", &batch, first)?;
        let scaler_row = f32_list_column(path, "scaler_row", &batch, first)?;
        let rows = layers.into_iter().zip(modules).zip(in_features).zip(n_tokens).zip(n_samples).zip(sum_sq).zip(scaler_row);
        for (i, ((((((layer, module), in_features), n_tokens), n_samples), sum_sq), scaler_row)) in rows.enumerate() {
            let s = ModuleStats { layer, module, in_features, n_tokens, n_samples, sum_sq, scaler_row };
            check_lengths(path, first + i, &s)?;
            out.push(s);
        }
        first += batch.num_rows();
    }
    Ok((provenance, out))
}
