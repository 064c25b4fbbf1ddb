//! Round trips and refusals of the stats, scores and mask artifacts.

use std::sync::Arc;

use arrow_array::builder::{Float64Builder, LargeListBuilder};
use arrow_array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema};
use artifacts::{
    read_mask, read_scores, read_stats, write_mask, write_parquet, write_scores, write_stats, ArtifactError, ArtifactKind, MaskInfo,
    MaskRow, ModuleStats, Provenance, ScoreRow,
};
use serde_json::json;

fn prov(kind: ArtifactKind) -> Provenance {
    Provenance::new(kind, "sha256:model", json!({"method": "wanda"}), "test 0.1.0").with_input("x", "sha256:00")
}

fn some_stats() -> Vec<ModuleStats> {
    (0..3)
        .map(|i| ModuleStats {
            layer: i / 2,
            module: format!("model.layers.{}.mlp.down_proj", i / 2),
            in_features: 5 + i,
            n_tokens: 1024 + u64::from(i),
            n_samples: 8,
            sum_sq: (0..5 + i).map(|j| j as f32 * 0.5).collect(),
            scaler_row: (0..5 + i).map(|j| j as f32 * 0.25 + f32::EPSILON).collect(),
        })
        .collect()
}

#[test]
fn stats_round_trip_and_check_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stats.parquet");
    let stats = some_stats();
    let hash = write_stats(&path, &stats, &prov(ArtifactKind::Stats)).unwrap();
    assert_eq!(hash, artifacts::content_hash(&path).unwrap());
    let (p, back) = read_stats(&path).unwrap();
    assert_eq!(p, prov(ArtifactKind::Stats));
    assert_eq!(back, stats);

    let mut bad = some_stats();
    bad[1].scaler_row.pop();
    let err = write_stats(&dir.path().join("bad.parquet"), &bad, &prov(ArtifactKind::Stats)).unwrap_err();
    assert!(matches!(err, ArtifactError::BadValue { ref column, row: 1, .. } if column == "scaler_row"), "{err}");
    let err = write_stats(&dir.path().join("bad.parquet"), &stats, &prov(ArtifactKind::Scores)).unwrap_err();
    assert!(matches!(err, ArtifactError::ProvenanceKind { .. }), "{err}");
    let (_, empty) = {
        let p = dir.path().join("empty.parquet");
        write_stats(&p, &[], &prov(ArtifactKind::Stats)).unwrap();
        read_stats(&p).unwrap()
    };
    assert!(empty.is_empty());
}

#[test]
fn scores_round_trip_across_record_batches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scores.parquet");
    let rows: Vec<ScoreRow> = (0..9000u32)
        .map(|r| ScoreRow {
            module: format!("model.layers.{}.self_attn.q_proj", r / 4000),
            row: r % 4000,
            score: vec![r as f32, -0.0, f32::MAX],
        })
        .collect();
    write_scores(&path, &rows, &prov(ArtifactKind::Scores)).unwrap();
    let (p, back) = read_scores(&path).unwrap();
    assert_eq!(p.kind, ArtifactKind::Scores);
    assert_eq!(back, rows);
    assert_eq!(back[1].score[1].to_bits(), (-0.0f32).to_bits());

    let err = read_stats(&path).unwrap_err();
    assert!(err.to_string().contains("expected a `stats` artifact, found a `scores` artifact"), "{err}");
}

#[test]
fn scores_written_by_other_tools_read_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pandas.parquet");
    let mut lists = LargeListBuilder::new(Float64Builder::new());
    lists.values().append_slice(&[1.5, 2.5]);
    lists.append(true);
    lists.values().append_slice(&[3.5]);
    lists.append(true);
    let schema = Arc::new(Schema::new(vec![
        Field::new("module", DataType::Utf8, false),
        Field::new("row", DataType::Int64, false),
        Field::new("score", DataType::LargeList(Arc::new(Field::new_list_field(DataType::Float64, true))), false),
    ]));
    let columns: Vec<ArrayRef> =
        vec![Arc::new(StringArray::from(vec!["m", "m"])), Arc::new(Int64Array::from(vec![0, 1])), Arc::new(lists.finish())];
    write_parquet(&path, &[RecordBatch::try_new(schema.clone(), columns).unwrap()], &prov(ArtifactKind::Scores)).unwrap();
    let (_, rows) = read_scores(&path).unwrap();
    assert_eq!(rows[0], ScoreRow { module: "m".into(), row: 0, score: vec![1.5, 2.5] });
    assert_eq!(rows[1].score, vec![3.5]);

    // A null inside a row's list is refused, naming the row and the position.
    let mut lists = LargeListBuilder::new(Float64Builder::new());
    lists.values().append_slice(&[1.5, 2.5]);
    lists.append(true);
    lists.values().append_value(3.5);
    lists.values().append_null();
    lists.append(true);
    let columns: Vec<ArrayRef> =
        vec![Arc::new(StringArray::from(vec!["m", "m"])), Arc::new(Int64Array::from(vec![0, 1])), Arc::new(lists.finish())];
    let with_null = dir.path().join("null.parquet");
    write_parquet(&with_null, &[RecordBatch::try_new(schema, columns).unwrap()], &prov(ArtifactKind::Scores)).unwrap();
    let err = read_scores(&with_null).unwrap_err();
    assert!(matches!(err, ArtifactError::BadValue { ref found, row: 1, .. } if found == "null at position 1"), "{err}");
}

fn info() -> MaskInfo {
    MaskInfo { method: "wanda".into(), sparsity: 0.4, pattern: "unstructured-0.5".into(), group: "row".into() }
}

#[test]
fn mask_round_trips_with_its_info_and_refuses_bad_bits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mask.parquet");
    let rows = vec![
        MaskRow { module: "a".into(), row: 0, in_features: 10, keep: vec![0xff, 0b0000_0011] },
        MaskRow { module: "a".into(), row: 1, in_features: 8, keep: vec![0b1010_1010] },
    ];
    write_mask(&path, &rows, &info(), &prov(ArtifactKind::Mask)).unwrap();
    let (p, i, back) = read_mask(&path).unwrap();
    assert_eq!((i, back), (info(), rows));
    assert_eq!(p.extra.get("pattern").map(String::as_str), Some("unstructured-0.5"));

    let padded = vec![MaskRow { module: "a".into(), row: 0, in_features: 10, keep: vec![0xff, 0b0000_0111] }];
    let err = write_mask(&dir.path().join("bad.parquet"), &padded, &info(), &prov(ArtifactKind::Mask)).unwrap_err();
    assert!(err.to_string().contains("padding bits set"), "{err}");

    // The same bad row written by another tool is refused on reading.
    let raw = dir.path().join("raw.parquet");
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec!["a"])),
        Arc::new(UInt32Array::from(vec![0])),
        Arc::new(UInt32Array::from(vec![10])),
        Arc::new(BinaryArray::from_vec(vec![&[0xffu8, 0x07][..]])),
    ];
    let batch = RecordBatch::try_new(artifacts::mask_schema(), columns).unwrap();
    let p = prov(ArtifactKind::Mask)
        .with_extra("method", "wanda")
        .with_extra("sparsity", "0")
        .with_extra("pattern", "2:4")
        .with_extra("group", "row");
    write_parquet(&raw, &[batch.clone()], &p).unwrap();
    let err = read_mask(&raw).unwrap_err();
    assert!(matches!(err, ArtifactError::BadValue { ref column, row: 0, .. } if column == "keep"), "{err}");

    // A mask without its info metadata is refused naming the key.
    write_parquet(&raw, &[batch], &prov(ArtifactKind::Mask)).unwrap();
    let err = read_mask(&raw).unwrap_err();
    assert!(err.to_string().contains("subprune.mask.sparsity"), "{err}");
}
