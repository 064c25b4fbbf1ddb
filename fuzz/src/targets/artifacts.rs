//! The artifacts target: Parquet files of every artifact kind (documents,
//! samples, stats, scores, mask (with and without SparseGPT's values),
//! hessians, results, items, jaccard) through the artifacts crate's
//! readers, the streaming mask and Hessian readers included.

use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float32Builder, Float64Builder, ListBuilder, StringBuilder, UInt32Builder, UInt64Builder,
};
use arrow_array::{new_null_array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field as ArrowField, Schema};
use artifacts::{
    read_documents, read_items, read_jaccard, read_mask, read_provenance, read_results, read_samples, read_scores, read_stats,
    write_documents, write_hessians, write_items, write_jaccard, write_mask, write_parquet, write_results, write_samples, write_scores,
    write_stats, ArtifactError, ArtifactKind, Document, HessiansReader, InputHessian, ItemRow, JaccardRow, MaskInfo, MaskReader, MaskRow,
    ModuleStats, Provenance, ResultRow, Sample, SamplesInfo, ScoreRow, Split,
};
use serde_json::json;

use super::Outcome;
use crate::mutate::{Field, Rng};

/// Every artifact kind, in the order seeds are made.
const KINDS: [ArtifactKind; 9] = [
    ArtifactKind::Documents,
    ArtifactKind::Samples,
    ArtifactKind::Stats,
    ArtifactKind::Scores,
    ArtifactKind::Mask,
    ArtifactKind::Hessians,
    ArtifactKind::Results,
    ArtifactKind::Items,
    ArtifactKind::Jaccard,
];

/// The Parquet footer and page-header fields.
pub fn fields(data: &[u8]) -> Vec<Field> {
    crate::thrift::parquet_fields(data)
}

/// Reads the input with the reader of the kind its footer declares (or,
/// when the footer does not say, with each reader in turn).
pub fn run(path: &Path) -> Outcome {
    match read_provenance(path) {
        Ok(p) => read_kind(path, p.kind),
        Err(e) => {
            // Each reader opens the file its own way: try all of them.
            for kind in KINDS {
                let _ = read_kind(path, kind);
            }
            Outcome::err("footer", e)
        }
    }
}

fn read_kind(path: &Path, kind: ArtifactKind) -> Outcome {
    let label = kind_label(kind);
    let result = match kind {
        ArtifactKind::Documents => read_documents(path).map(drop),
        ArtifactKind::Samples => read_samples(path).map(drop),
        ArtifactKind::Stats => read_stats(path).map(drop),
        ArtifactKind::Scores => read_scores(path).map(drop),
        ArtifactKind::Mask => read_mask(path).map(drop).and_then(|()| {
            let reader = MaskReader::open(path)?;
            for row in reader {
                row?;
            }
            Ok(())
        }),
        ArtifactKind::Hessians => HessiansReader::open(path).and_then(|reader| reader.map(|row| row.map(drop)).collect()),
        ArtifactKind::Results => read_results(path).map(drop),
        ArtifactKind::Items => read_items(path).map(drop),
        ArtifactKind::Jaccard => read_jaccard(path).map(drop),
    };
    match result {
        Ok(()) => Outcome::ok(label),
        Err(e) => Outcome::err(label, e),
    }
}

fn kind_label(kind: ArtifactKind) -> &'static str {
    match kind {
        ArtifactKind::Documents => "documents",
        ArtifactKind::Samples => "samples",
        ArtifactKind::Stats => "stats",
        ArtifactKind::Scores => "scores",
        ArtifactKind::Mask => "mask",
        ArtifactKind::Hessians => "hessians",
        ArtifactKind::Results => "results",
        ArtifactKind::Items => "items",
        ArtifactKind::Jaccard => "jaccard",
    }
}

fn provenance(kind: ArtifactKind) -> Provenance {
    Provenance::new(kind, "sha256:00ff", json!({"seed": 0}), "subprune-fuzz").with_input("samples", "sha256:abcd")
}

/// Seeds: a small file of every kind, written by the crate's own writers.
pub fn seeds(scratch: &Path) -> Vec<Vec<u8>> {
    let path = scratch.join("seed.parquet");
    let mut out = Vec::new();
    for kind in KINDS {
        let p = provenance(kind);
        let written = match kind {
            ArtifactKind::Documents => write_documents(
                &path,
                &[
                    Document {
                        domain: "python".into(),
                        source: "a.py".into(),
                        id: "a".into(),
                        text: "def f():\n  pass\n".into(),
                        split: Split::Calib,
                    },
                    Document {
                        domain: "python".into(),
                        source: "b.py".into(),
                        id: "b".into(),
                        text: "x = 1".into(),
                        split: Split::Heldout,
                    },
                ],
                &p.with_extra("content_hash", "sha256:00"),
            )
            .map(drop),
            ArtifactKind::Samples => write_samples(
                &path,
                &[
                    Sample { sample_id: 0, domain: "python".into(), tokens: vec![1, 2, 3, 4] },
                    Sample { sample_id: 1, domain: "python".into(), tokens: vec![5, 6, 7, 8] },
                ],
                &SamplesInfo { tokenizer_hash: "sha256:11".into(), seqlen: 4, seed: Some(0) },
                &p,
            )
            .map(drop),
            ArtifactKind::Stats => write_stats(
                &path,
                &[ModuleStats {
                    layer: 0,
                    module: "model.layers.0.mlp.down_proj".into(),
                    in_features: 4,
                    n_tokens: 8,
                    n_samples: 2,
                    sum_sq: vec![1.0, 2.0, 3.0, 4.0],
                    scaler_row: vec![0.5, 1.0, 1.5, 2.0],
                }],
                &p,
            )
            .map(drop),
            ArtifactKind::Scores => write_scores(
                &path,
                &[
                    ScoreRow { module: "model.layers.0.self_attn.q_proj".into(), row: 0, score: vec![0.1, 0.2, 0.3] },
                    ScoreRow { module: "model.layers.0.self_attn.q_proj".into(), row: 1, score: vec![0.4, 0.5, 0.6] },
                ],
                &p,
            )
            .map(drop),
            ArtifactKind::Mask => write_mask(
                &path,
                &[
                    MaskRow {
                        module: "model.layers.0.mlp.up_proj".into(),
                        row: 0,
                        in_features: 10,
                        keep: vec![0b1010_1010, 0b01],
                        values: None,
                    },
                    MaskRow { module: "model.layers.0.mlp.up_proj".into(), row: 1, in_features: 10, keep: vec![0xff, 0b11], values: None },
                ],
                &MaskInfo { method: "wanda".into(), sparsity: 0.5, pattern: "unstructured".into(), group: "row".into() },
                &p,
            )
            .map(drop)
            .and_then(|()| {
                // SparseGPT's masks carry the updated value of every kept weight.
                out.extend(std::fs::read(&path).ok());
                write_mask(
                    &path,
                    &[MaskRow {
                        module: "model.layers.0.mlp.up_proj".into(),
                        row: 0,
                        in_features: 4,
                        keep: vec![0b1001],
                        values: Some(vec![0.5, -1.25]),
                    }],
                    &MaskInfo { method: "sparsegpt".into(), sparsity: 0.5, pattern: "unstructured".into(), group: "row".into() },
                    &p,
                )
                .map(drop)
            }),
            ArtifactKind::Hessians => write_hessians::<ArtifactError>(
                &path,
                [InputHessian {
                    layer: 0,
                    modules: vec!["model.layers.0.self_attn.q_proj".into(), "model.layers.0.self_attn.k_proj".into()],
                    in_features: 3,
                    n_samples: 2,
                    n_tokens: 8,
                    upper: vec![4.0, 0.5, -1.0, 3.0, 0.25, 2.0],
                }]
                .into_iter()
                .map(Ok),
                &p,
            )
            .map(drop),
            ArtifactKind::Results => write_results(
                &path,
                &[ResultRow {
                    model: "m".into(),
                    mask: Some("mask.parquet".into()),
                    task: "ppl".into(),
                    metric: "perplexity".into(),
                    value: 12.5,
                    n: 10,
                    stderr: Some(0.1),
                    ci_low: Some(12.0),
                    ci_high: None,
                }],
                &p,
            )
            .map(drop),
            ArtifactKind::Items => write_items(
                &path,
                &[ItemRow {
                    item: 3,
                    sample: 0,
                    gold: Some("4".into()),
                    pred: Some("4".into()),
                    pred_norm: None,
                    generation: Some("The answer is 4".into()),
                    passed: Some(true),
                    reason: None,
                    choice_logliks: Some(vec![-1.5, -0.25]),
                    score: None,
                }],
                &p,
            )
            .map(drop),
            ArtifactKind::Jaccard => write_jaccard(
                &path,
                &[JaccardRow {
                    mask_a: "a".into(),
                    mask_b: "b".into(),
                    layer: Some(0),
                    module: "model.layers.0.mlp.up_proj".into(),
                    pruned_a: 5,
                    pruned_b: 6,
                    intersect: 4,
                    union: 7,
                    jaccard_distance: 3.0 / 7.0,
                }],
                &p,
            )
            .map(drop),
        };
        if written.is_ok() {
            out.extend(std::fs::read(&path).ok());
        }
    }
    out
}

/// The data types a twisted column may take.
fn some_type(rng: &mut Rng) -> DataType {
    let item = |t: DataType| DataType::List(Arc::new(ArrowField::new("item", t, true)));
    match rng.below(10) {
        0 => DataType::Utf8,
        1 => DataType::UInt32,
        2 => DataType::UInt64,
        3 => DataType::Float32,
        4 => DataType::Float64,
        5 => DataType::Boolean,
        6 => DataType::Binary,
        7 => item(DataType::Float32),
        8 => item(DataType::UInt32),
        _ => item(DataType::Float64),
    }
}

/// A column of `n` random values of type `dt`, some null when `nulls`.
fn random_array(dt: &DataType, n: usize, nulls: bool, rng: &mut Rng) -> ArrayRef {
    let null = |rng: &mut Rng| nulls && rng.one_in(3);
    let list_len = |rng: &mut Rng| *rng.pick(&[0usize, 1, 3, 4, 10, 17]);
    match dt {
        DataType::Utf8 => {
            let mut b = StringBuilder::new();
            for _ in 0..n {
                if null(rng) {
                    b.append_null();
                } else {
                    b.append_value(*rng.pick(&["", "calib", "heldout", "model.layers.0.mlp.up_proj", "x", "0.5", "unstructured", "2:4"]));
                }
            }
            Arc::new(b.finish())
        }
        DataType::UInt32 => {
            let mut b = UInt32Builder::new();
            for _ in 0..n {
                if null(rng) {
                    b.append_null();
                } else {
                    b.append_value(*rng.pick(&[0u32, 1, 3, 9, 10, 4096, u32::MAX]));
                }
            }
            Arc::new(b.finish())
        }
        DataType::UInt64 => {
            let mut b = UInt64Builder::new();
            for _ in 0..n {
                if null(rng) {
                    b.append_null();
                } else {
                    b.append_value(*rng.pick(&[0u64, 1, 2, 1 << 40, u64::MAX]));
                }
            }
            Arc::new(b.finish())
        }
        DataType::Float32 => {
            let mut b = Float32Builder::new();
            for _ in 0..n {
                b.append_option((!null(rng)).then(|| *rng.pick(&[0.0f32, -1.0, 0.5, f32::NAN, f32::INFINITY])));
            }
            Arc::new(b.finish())
        }
        DataType::Float64 => {
            let mut b = Float64Builder::new();
            for _ in 0..n {
                b.append_option((!null(rng)).then(|| *rng.pick(&[0.0f64, -1.0, 0.5, 2.0, f64::NAN])));
            }
            Arc::new(b.finish())
        }
        DataType::Boolean => {
            let mut b = BooleanBuilder::new();
            for _ in 0..n {
                b.append_option((!null(rng)).then(|| rng.one_in(2)));
            }
            Arc::new(b.finish())
        }
        DataType::Binary => {
            let mut b = BinaryBuilder::new();
            for _ in 0..n {
                if null(rng) {
                    b.append_null();
                } else {
                    let len = list_len(rng);
                    b.append_value((0..len).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>());
                }
            }
            Arc::new(b.finish())
        }
        DataType::List(item) => {
            let len = |rng: &mut Rng| list_len(rng);
            match item.data_type() {
                DataType::Float32 => {
                    let mut b = ListBuilder::new(Float32Builder::new());
                    for _ in 0..n {
                        for _ in 0..len(rng) {
                            b.values().append_value(0.25);
                        }
                        b.append(!null(rng));
                    }
                    Arc::new(b.finish())
                }
                DataType::UInt32 => {
                    let mut b = ListBuilder::new(UInt32Builder::new());
                    for _ in 0..n {
                        for _ in 0..len(rng) {
                            b.values().append_value(*rng.pick(&[0u32, 7, u32::MAX]));
                        }
                        b.append(!null(rng));
                    }
                    Arc::new(b.finish())
                }
                DataType::Float64 => {
                    let mut b = ListBuilder::new(Float64Builder::new());
                    for _ in 0..n {
                        for _ in 0..len(rng) {
                            b.values().append_value(-0.5);
                        }
                        b.append(!null(rng));
                    }
                    Arc::new(b.finish())
                }
                _ => new_null_array(dt, n),
            }
        }
        _ => new_null_array(dt, n),
    }
}

/// A structure-aware mutation: the input's provenance kept (or twisted),
/// and its rows replaced by a batch of the kind's columns with one column
/// retyped, renamed, dropped or nulled, values drawn from edge cases, written
/// by the crate's own writer. Provenance twists change one `subprune.*`
/// value or an extra (a mask's method, a samples file's seqlen).
pub fn structured(data: &[u8], rng: &mut Rng, scratch: &Path) -> Option<Vec<u8>> {
    let input = scratch.join("structured-in.parquet");
    std::fs::write(&input, data).ok()?;
    let mut p = read_provenance(&input).ok()?;
    let schema = match p.kind {
        ArtifactKind::Documents => artifacts::documents_schema(),
        ArtifactKind::Samples => artifacts::samples_schema(),
        ArtifactKind::Stats => artifacts::stats_schema(),
        ArtifactKind::Scores => artifacts::scores_schema(),
        ArtifactKind::Mask => artifacts::mask_schema(rng.one_in(2)),
        ArtifactKind::Hessians => artifacts::hessians_schema(),
        ArtifactKind::Results => artifacts::results_schema(),
        ArtifactKind::Items => artifacts::items_schema(),
        ArtifactKind::Jaccard => artifacts::jaccard_schema(),
    };
    let weird = ["", "-1", "0", "1e999", "NaN", "18446744073709551616", "abc", "{}", "0.5", "2:4", "4:2", "0:0", "row", "layer"];
    if rng.one_in(3) {
        let keys: Vec<String> = p.extra.keys().cloned().collect();
        match rng.below(4) {
            0 if !keys.is_empty() => {
                let k = rng.pick(&keys).clone();
                p.extra.insert(k, rng.pick(&weird).to_string());
            }
            1 if !keys.is_empty() => {
                let k = rng.pick(&keys).clone();
                p.extra.remove(&k);
            }
            2 => p.schema_version = *rng.pick(&[0u32, 2, u32::MAX]),
            _ => p.params = crate::mutate::weird_json(rng),
        }
    }
    let n = *rng.pick(&[0usize, 1, 2, 5]);
    let mut fields: Vec<ArrowField> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    if !fields.is_empty() {
        let i = rng.below(fields.len());
        match rng.below(4) {
            0 => fields[i] = ArrowField::new(fields[i].name(), some_type(rng), true),
            1 => {
                fields.remove(i);
            }
            2 => fields[i] = ArrowField::new(format!("{}_", fields[i].name()), fields[i].data_type().clone(), true),
            _ => fields[i] = fields[i].clone().with_nullable(true),
        }
    }
    let nulls = rng.one_in(2);
    let columns: Vec<ArrayRef> = fields.iter().map(|f| random_array(f.data_type(), n, nulls && f.is_nullable(), rng)).collect();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).ok()?;
    let out = scratch.join("structured-out.parquet");
    write_parquet(&out, &[batch], &p).ok()?;
    std::fs::read(&out).ok()
}
