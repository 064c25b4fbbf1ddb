//! The `jaccard` artifact: how far apart the pruned weights of two masks are, one
//! row per (mask A, mask B, module), plus per-layer and whole-model totals.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::columns::{check_field, column, f64_column, opt_u32_column, string_column, u64_column, Accept};
use crate::{read_with_schema, write_parquet, ArtifactError, ArtifactKind, Provenance};

/// The Jaccard distance of the pruned sets of two masks over one module, one layer or the whole model.
///
/// With P_a and P_b the sets of pruned weights (keep bit 0), `intersect` = |P_a ∩ P_b|,
/// `union` = |P_a ∪ P_b| and `jaccard_distance` = 1 - intersect / union, defined as 0
/// when both sets are empty.
#[derive(Debug, Clone, PartialEq)]
pub struct JaccardRow {
    /// Name of the first mask.
    pub mask_a: String,
    /// Name of the second mask.
    pub mask_b: String,
    /// Decoder layer; `None` for the whole-model row and for modules outside decoder layers.
    pub layer: Option<u32>,
    /// A module name (e.g. `model.layers.3.self_attn.q_proj`), `layer` for a per-layer
    /// total or `model` for the whole-model total.
    pub module: String,
    /// Weights pruned by mask A.
    pub pruned_a: u64,
    /// Weights pruned by mask B.
    pub pruned_b: u64,
    /// Weights pruned by both.
    pub intersect: u64,
    /// Weights pruned by either.
    pub union: u64,
    /// 1 - intersect / union (0 when union is 0).
    pub jaccard_distance: f64,
}

/// The Arrow schema of a jaccard artifact.
pub fn jaccard_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("mask_a", DataType::Utf8, false),
        Field::new("mask_b", DataType::Utf8, false),
        Field::new("layer", DataType::UInt32, true),
        Field::new("module", DataType::Utf8, false),
        Field::new("pruned_a", DataType::UInt64, false),
        Field::new("pruned_b", DataType::UInt64, false),
        Field::new("intersect", DataType::UInt64, false),
        Field::new("union", DataType::UInt64, false),
        Field::new("jaccard_distance", DataType::Float64, false),
    ]))
}

fn jaccard_batch(path: &Path, rows: &[JaccardRow]) -> Result<RecordBatch, ArtifactError> {
    let strings = |f: fn(&JaccardRow) -> &str| -> ArrayRef { Arc::new(StringArray::from_iter_values(rows.iter().map(f))) };
    let counts = |f: fn(&JaccardRow) -> u64| -> ArrayRef { Arc::new(UInt64Array::from_iter_values(rows.iter().map(f))) };
    let columns: Vec<ArrayRef> = vec![
        strings(|r| r.mask_a.as_str()),
        strings(|r| r.mask_b.as_str()),
        Arc::new(rows.iter().map(|r| r.layer).collect::<UInt32Array>()),
        strings(|r| r.module.as_str()),
        counts(|r| r.pruned_a),
        counts(|r| r.pruned_b),
        counts(|r| r.intersect),
        counts(|r| r.union),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.jaccard_distance))),
    ];
    RecordBatch::try_new(jaccard_schema(), columns).map_err(|source| ArtifactError::Arrow { path: path.to_path_buf(), source })
}

/// Checks the counts of one row: intersect <= min(pruned) <= max(pruned) <= union,
/// and the distance in [0, 1].
fn check_row(path: &Path, index: usize, r: &JaccardRow) -> Result<(), ArtifactError> {
    let bad = |column: &str, expected: String, found: String| ArtifactError::BadValue {
        path: path.to_path_buf(),
        column: column.to_string(),
        row: index,
        expected,
        found,
    };
    if r.intersect > r.pruned_a.min(r.pruned_b) {
        return Err(bad("intersect", format!("at most min(pruned_a, pruned_b) = {}", r.pruned_a.min(r.pruned_b)), r.intersect.to_string()));
    }
    if r.union < r.pruned_a.max(r.pruned_b) || r.union > r.pruned_a + r.pruned_b {
        return Err(bad(
            "union",
            format!(
                "between max(pruned_a, pruned_b) = {} and pruned_a + pruned_b = {}",
                r.pruned_a.max(r.pruned_b),
                r.pruned_a + r.pruned_b
            ),
            r.union.to_string(),
        ));
    }
    if !(0.0..=1.0).contains(&r.jaccard_distance) {
        return Err(bad("jaccard_distance", "a number in [0, 1]".to_string(), r.jaccard_distance.to_string()));
    }
    Ok(())
}

/// Writes a jaccard artifact atomically; returns its content hash.
///
/// `provenance` must be of kind `jaccard`; every row's counts must be consistent
/// (intersect <= pruned_a, pruned_b <= union <= pruned_a + pruned_b) and its distance in [0, 1].
pub fn write_jaccard(path: &Path, rows: &[JaccardRow], provenance: &Provenance) -> Result<String, ArtifactError> {
    if provenance.kind != ArtifactKind::Jaccard {
        return Err(ArtifactError::ProvenanceKind { path: path.to_path_buf(), expected: ArtifactKind::Jaccard, found: provenance.kind });
    }
    for (i, r) in rows.iter().enumerate() {
        check_row(path, i, r)?;
    }
    let batch = jaccard_batch(path, rows)?;
    write_parquet(path, std::slice::from_ref(&batch), provenance)
}

/// Reads a jaccard artifact: provenance and rows in file order.
///
/// Accepts any string type for the text columns, any integer type for layer and the
/// counts, and Float32 or Float64 for the distance; nulls are refused except in
/// layer, and so are rows with inconsistent counts.
pub fn read_jaccard(path: &Path) -> Result<(Provenance, Vec<JaccardRow>), ArtifactError> {
    let (provenance, schema, batches) = read_with_schema(path, ArtifactKind::Jaccard)?;
    let spec = [
        ("mask_a", Accept::Str),
        ("mask_b", Accept::Str),
        ("layer", Accept::Int),
        ("module", Accept::Str),
        ("pruned_a", Accept::Int),
        ("pruned_b", Accept::Int),
        ("intersect", Accept::Int),
        ("union", Accept::Int),
        ("jaccard_distance", Accept::Float),
    ];
    for (name, accept) in spec {
        check_field(path, &schema, name, accept)?;
    }
    let mut rows = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    let mut first = 0;
    for batch in &batches {
        let text = |name: &str| -> Result<Vec<String>, ArtifactError> {
            let array = column(path, batch, name, Accept::Str)?;
            Ok(string_column(path, name, array.as_ref(), first, false)?.into_iter().map(Option::unwrap_or_default).collect())
        };
        let count = |name: &str| -> Result<Vec<u64>, ArtifactError> {
            u64_column(path, name, column(path, batch, name, Accept::Int)?.as_ref(), first)
        };
        let mask_a = text("mask_a")?;
        let mask_b = text("mask_b")?;
        let layer = opt_u32_column(path, "layer", column(path, batch, "layer", Accept::Int)?.as_ref(), first)?;
        let module = text("module")?;
        let pruned_a = count("pruned_a")?;
        let pruned_b = count("pruned_b")?;
        let intersect = count("intersect")?;
        let union = count("union")?;
        let distance =
            f64_column(path, "jaccard_distance", column(path, batch, "jaccard_distance", Accept::Float)?.as_ref(), first, false)?;
        for i in 0..batch.num_rows() {
            let row = JaccardRow {
                mask_a: mask_a[i].clone(),
                mask_b: mask_b[i].clone(),
                layer: layer[i],
                module: module[i].clone(),
                pruned_a: pruned_a[i],
                pruned_b: pruned_b[i],
                intersect: intersect[i],
                union: union[i],
                jaccard_distance: distance[i].unwrap_or_default(),
            };
            check_row(path, first + i, &row)?;
            rows.push(row);
        }
        first += batch.num_rows();
    }
    Ok((provenance, rows))
}
