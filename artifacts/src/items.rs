//! The `items` artifact: the per-item outputs of an evaluation task, written
//! beside its results artifact, so every score can be traced to what the
//! model produced on each item.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Float64Builder, ListBuilder};
use arrow_array::{ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::columns::{
    check_field, column, f64_column, opt_bool_column, opt_f64_list_column, opt_u32_column, string_column, u64_column, Accept,
};
use crate::{read_with_schema, write_parquet, ArtifactError, ArtifactKind, Provenance};

/// What the model produced on one item of a task (one row per generated
/// sample for tasks that draw several).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ItemRow {
    /// Index of the item in the data file's order.
    pub item: u64,
    /// Index of the sample among the item's samples (0 where a task draws one).
    pub sample: u32,
    /// The gold answer (a choice index, a number, a reference text).
    pub gold: Option<String>,
    /// The prediction (for multiple choice: by raw log-likelihood).
    pub pred: Option<String>,
    /// For multiple choice: the prediction by length-normalised log-likelihood.
    pub pred_norm: Option<String>,
    /// The generated text, for generation tasks.
    pub generation: Option<String>,
    /// Whether the item (or sample) counts as correct.
    pub passed: Option<bool>,
    /// Why a generated program failed (`timeout`, `memory`, `exit code 1`, ...),
    /// or another short note on the item.
    pub reason: Option<String>,
    /// For multiple choice: the log-likelihood of each choice, in choice order.
    pub choice_logliks: Option<Vec<f64>>,
    /// A numeric score of the item where the task has one: a perplexity
    /// window's mean NLL per predicted token, a sentence's METEOR.
    pub score: Option<f64>,
}

/// The sibling path of a results artifact where its items go:
/// `results.parquet` → `results.items.parquet`.
pub fn items_path_for(results: &Path) -> PathBuf {
    let stem = results.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    results.with_file_name(format!("{stem}.items.parquet"))
}

/// The Arrow schema of an items artifact.
pub fn items_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("item", DataType::UInt64, false),
        Field::new("sample", DataType::UInt32, true),
        Field::new("gold", DataType::Utf8, true),
        Field::new("pred", DataType::Utf8, true),
        Field::new("pred_norm", DataType::Utf8, true),
        Field::new("generation", DataType::Utf8, true),
        Field::new("passed", DataType::Boolean, true),
        Field::new("reason", DataType::Utf8, true),
        Field::new("choice_logliks", DataType::List(Arc::new(Field::new("item", DataType::Float64, true))), true),
        Field::new("score", DataType::Float64, true),
    ]))
}

fn items_batch(path: &Path, rows: &[ItemRow]) -> Result<RecordBatch, ArtifactError> {
    let text = |f: fn(&ItemRow) -> Option<&str>| -> ArrayRef { Arc::new(rows.iter().map(f).collect::<StringArray>()) };
    let mut logliks = ListBuilder::new(Float64Builder::new());
    for row in rows {
        match &row.choice_logliks {
            Some(values) => {
                logliks.values().append_slice(values);
                logliks.append(true);
            }
            None => logliks.append(false),
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.item))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.sample))),
        text(|r| r.gold.as_deref()),
        text(|r| r.pred.as_deref()),
        text(|r| r.pred_norm.as_deref()),
        text(|r| r.generation.as_deref()),
        Arc::new(rows.iter().map(|r| r.passed).collect::<BooleanArray>()),
        text(|r| r.reason.as_deref()),
        Arc::new(logliks.finish()),
        Arc::new(rows.iter().map(|r| r.score).collect::<Float64Array>()),
    ];
    RecordBatch::try_new(items_schema(), columns).map_err(|source| ArtifactError::Arrow { path: path.to_path_buf(), source })
}

/// Writes an items artifact atomically; returns its content hash.
///
/// `provenance` must be of kind `items`.
pub fn write_items(path: &Path, rows: &[ItemRow], provenance: &Provenance) -> Result<String, ArtifactError> {
    if provenance.kind != ArtifactKind::Items {
        return Err(ArtifactError::ProvenanceKind { path: path.to_path_buf(), expected: ArtifactKind::Items, found: provenance.kind });
    }
    let batch = items_batch(path, rows)?;
    write_parquet(path, std::slice::from_ref(&batch), provenance)
}

/// Reads an items artifact: provenance and rows in file order.
///
/// Only `item` is required; any other column may be absent (read as nulls),
/// so a file written by another tool with fewer columns reads too.
pub fn read_items(path: &Path) -> Result<(Provenance, Vec<ItemRow>), ArtifactError> {
    let (provenance, schema, batches) = read_with_schema(path, ArtifactKind::Items)?;
    check_field(path, &schema, "item", Accept::Int)?;
    let optional = [
        ("sample", Accept::Int),
        ("gold", Accept::Str),
        ("pred", Accept::Str),
        ("pred_norm", Accept::Str),
        ("generation", Accept::Str),
        ("passed", Accept::Bool),
        ("reason", Accept::Str),
        ("choice_logliks", Accept::FloatList),
        ("score", Accept::Float),
    ];
    for (name, accept) in optional {
        if schema.index_of(name).is_ok() {
            check_field(path, &schema, name, accept)?;
        }
    }
    let mut rows = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    let mut first = 0;
    for batch in &batches {
        let n = batch.num_rows();
        let present = |name: &str| batch.schema().index_of(name).is_ok();
        let text = |name: &str| -> Result<Vec<Option<String>>, ArtifactError> {
            if !present(name) {
                return Ok(vec![None; n]);
            }
            string_column(path, name, column(path, batch, name, Accept::Str)?.as_ref(), first, true)
        };
        let item = u64_column(path, "item", column(path, batch, "item", Accept::Int)?.as_ref(), first)?;
        let sample = if present("sample") {
            opt_u32_column(path, "sample", column(path, batch, "sample", Accept::Int)?.as_ref(), first)?
        } else {
            vec![None; n]
        };
        let (gold, pred, pred_norm, generation, reason) =
            (text("gold")?, text("pred")?, text("pred_norm")?, text("generation")?, text("reason")?);
        let passed = if present("passed") { opt_bool_column(column(path, batch, "passed", Accept::Bool)?.as_ref()) } else { vec![None; n] };
        let logliks = if present("choice_logliks") {
            opt_f64_list_column(path, "choice_logliks", column(path, batch, "choice_logliks", Accept::FloatList)?.as_ref(), first)?
        } else {
            vec![None; n]
        };
        let score = if present("score") {
            f64_column(path, "score", column(path, batch, "score", Accept::Float)?.as_ref(), first, true)?
        } else {
            vec![None; n]
        };
        for i in 0..n {
            rows.push(ItemRow {
                item: item[i],
                sample: sample[i].unwrap_or(0),
                gold: gold[i].clone(),
                pred: pred[i].clone(),
                pred_norm: pred_norm[i].clone(),
                generation: generation[i].clone(),
                passed: passed[i],
                reason: reason[i].clone(),
                choice_logliks: logliks[i].clone(),
                score: score[i],
            });
        }
        first += n;
    }
    Ok((provenance, rows))
}
