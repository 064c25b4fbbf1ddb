//! The `results` artifact: one metric value per (model, mask, task, metric).

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::columns::{check_field, column, f64_column, string_column, u64_column, Accept};
use crate::{read_with_schema, write_parquet, ArtifactError, ArtifactKind, Provenance};

/// One evaluation result.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    /// Model fingerprint or name evaluated.
    pub model: String,
    /// The mask applied (its name or content hash), `None` for the dense model.
    pub mask: Option<String>,
    /// The task, e.g. `mbpp` or `perplexity/python`.
    pub task: String,
    /// The metric, e.g. `pass@1`.
    pub metric: String,
    /// The metric's value.
    pub value: f64,
    /// Number of items the value is computed over.
    pub n: u64,
    /// Standard error of the value, if known.
    pub stderr: Option<f64>,
    /// Lower end of the confidence interval, if known.
    pub ci_low: Option<f64>,
    /// Upper end of the confidence interval, if known.
    pub ci_high: Option<f64>,
}

/// The Arrow schema of a results artifact.
pub fn results_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("model", DataType::Utf8, false),
        Field::new("mask", DataType::Utf8, true),
        Field::new("task", DataType::Utf8, false),
        Field::new("metric", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
        Field::new("n", DataType::UInt64, false),
        Field::new("stderr", DataType::Float64, true),
        Field::new("ci_low", DataType::Float64, true),
        Field::new("ci_high", DataType::Float64, true),
    ]))
}

fn results_batch(path: &Path, rows: &[ResultRow]) -> Result<RecordBatch, ArtifactError> {
    let strings = |f: fn(&ResultRow) -> &str| -> ArrayRef { Arc::new(StringArray::from_iter_values(rows.iter().map(f))) };
    let floats = |f: fn(&ResultRow) -> Option<f64>| -> ArrayRef { Arc::new(rows.iter().map(f).collect::<Float64Array>()) };
    let columns: Vec<ArrayRef> = vec![
        strings(|r| r.model.as_str()),
        Arc::new(rows.iter().map(|r| r.mask.as_deref()).collect::<StringArray>()),
        strings(|r| r.task.as_str()),
        strings(|r| r.metric.as_str()),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.value))),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.n))),
        floats(|r| r.stderr),
        floats(|r| r.ci_low),
        floats(|r| r.ci_high),
    ];
    RecordBatch::try_new(results_schema(), columns).map_err(|source| ArtifactError::Arrow { path: path.to_path_buf(), source })
}

/// Writes a results artifact atomically; returns its content hash.
///
/// `provenance` must be of kind `results`.
pub fn write_results(path: &Path, rows: &[ResultRow], provenance: &Provenance) -> Result<String, ArtifactError> {
    if provenance.kind != ArtifactKind::Results {
        return Err(ArtifactError::ProvenanceKind { path: path.to_path_buf(), expected: ArtifactKind::Results, found: provenance.kind });
    }
    let batch = results_batch(path, rows)?;
    write_parquet(path, std::slice::from_ref(&batch), provenance)
}

/// Reads a results artifact: provenance and rows in file order.
///
/// Accepts any string type for the text columns, Float32 or Float64 for the numbers
/// and any integer type for `n`; nulls are refused except in mask, stderr, ci_low
/// and ci_high.
pub fn read_results(path: &Path) -> Result<(Provenance, Vec<ResultRow>), ArtifactError> {
    let (provenance, schema, batches) = read_with_schema(path, ArtifactKind::Results)?;
    let spec = [
        ("model", Accept::Str),
        ("mask", Accept::Str),
        ("task", Accept::Str),
        ("metric", Accept::Str),
        ("value", Accept::Float),
        ("n", Accept::Int),
        ("stderr", Accept::Float),
        ("ci_low", Accept::Float),
        ("ci_high", Accept::Float),
    ];
    for (name, accept) in spec {
        check_field(path, &schema, name, accept)?;
    }
    let mut rows = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    let mut first = 0;
    for batch in &batches {
        let text = |name: &str, nullable: bool| -> Result<Vec<Option<String>>, ArtifactError> {
            let array = column(path, batch, name, Accept::Str)?;
            string_column(path, name, array.as_ref(), first, nullable)
        };
        let num = |name: &str, nullable: bool| -> Result<Vec<Option<f64>>, ArtifactError> {
            let array = column(path, batch, name, Accept::Float)?;
            f64_column(path, name, array.as_ref(), first, nullable)
        };
        let model = text("model", false)?;
        let mask = text("mask", true)?;
        let task = text("task", false)?;
        let metric = text("metric", false)?;
        let value = num("value", false)?;
        let n = u64_column(path, "n", column(path, batch, "n", Accept::Int)?.as_ref(), first)?;
        let stderr = num("stderr", true)?;
        let ci_low = num("ci_low", true)?;
        let ci_high = num("ci_high", true)?;
        for i in 0..batch.num_rows() {
            rows.push(ResultRow {
                model: model[i].clone().unwrap_or_default(),
                mask: mask[i].clone(),
                task: task[i].clone().unwrap_or_default(),
                metric: metric[i].clone().unwrap_or_default(),
                value: value[i].unwrap_or_default(),
                n: n[i],
                stderr: stderr[i],
                ci_low: ci_low[i],
                ci_high: ci_high[i],
            });
        }
        first += batch.num_rows();
    }
    Ok((provenance, rows))
}
