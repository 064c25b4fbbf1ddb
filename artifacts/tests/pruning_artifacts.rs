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
        MaskRow { module: "a".into(), row: 0, in_features: 10, keep: vec![0xff, 0b0000_0011], values: None },
        MaskRow { module: "a".into(), row: 1, in_features: 8, keep: vec![0b1010_1010], values: None },
    ];
    write_mask(&path, &rows, &info(), &prov(ArtifactKind::Mask)).unwrap();
    let (p, i, back) = read_mask(&path).unwrap();
    assert_eq!((i, back), (info(), rows));
    assert_eq!(p.extra.get("pattern").map(String::as_str), Some("unstructured-0.5"));

    let padded = vec![MaskRow { module: "a".into(), row: 0, in_features: 10, keep: vec![0xff, 0b0000_0111], values: None }];
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
    let batch = RecordBatch::try_new(artifacts::mask_schema(false), columns).unwrap();
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

#[test]
fn mask_values_round_trip_one_per_kept_weight() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mask.parquet");
    // Row 0 keeps 8 + 2 = 10 weights, row 1 keeps 4.
    let rows = vec![
        MaskRow {
            module: "a".into(),
            row: 0,
            in_features: 10,
            keep: vec![0xff, 0b11],
            values: Some((0..10).map(|v| v as f32 * 0.5).collect()),
        },
        MaskRow { module: "a".into(), row: 1, in_features: 8, keep: vec![0b1010_1010], values: Some(vec![1.0, -2.0, 3.0, -4.0]) },
    ];
    write_mask(&path, &rows, &info(), &prov(ArtifactKind::Mask)).unwrap();
    assert!(artifacts::MaskReader::open(&path).unwrap().has_values());
    let (_, _, back) = read_mask(&path).unwrap();
    assert_eq!(back, rows);

    let mut short = rows.clone();
    short[1].values = Some(vec![1.0, -2.0, 3.0]);
    let err = write_mask(&dir.path().join("short.parquet"), &short, &info(), &prov(ArtifactKind::Mask)).unwrap_err();
    assert!(err.to_string().contains("expected 4 values (one per kept weight of the row)"), "{err}");

    let mut mixed = rows;
    mixed[1].values = None;
    let err = write_mask(&dir.path().join("mixed.parquet"), &mixed, &info(), &prov(ArtifactKind::Mask)).unwrap_err();
    assert!(err.to_string().contains("expected values present as in the rest of the mask, found values absent"), "{err}");

    // Values written by another tool that do not fit the bits are refused on reading.
    let raw = dir.path().join("raw.parquet");
    let values = arrow_array::ListArray::from_iter_primitive::<arrow_array::types::Float32Type, _, _>(vec![Some(vec![Some(1.0f32)])]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec!["a"])),
        Arc::new(UInt32Array::from(vec![0])),
        Arc::new(UInt32Array::from(vec![8])),
        Arc::new(BinaryArray::from_vec(vec![&[0b11u8][..]])),
        Arc::new(values),
    ];
    let schema = Arc::new(arrow_schema::Schema::new(vec![
        arrow_schema::Field::new("module", arrow_schema::DataType::Utf8, false),
        arrow_schema::Field::new("row", arrow_schema::DataType::UInt32, false),
        arrow_schema::Field::new("in_features", arrow_schema::DataType::UInt32, false),
        arrow_schema::Field::new("keep", arrow_schema::DataType::Binary, false),
        arrow_schema::Field::new(
            "values",
            arrow_schema::DataType::List(Arc::new(arrow_schema::Field::new_list_field(arrow_schema::DataType::Float32, true))),
            true,
        ),
    ]));
    let batch = RecordBatch::try_new(schema, columns).unwrap();
    let p = prov(ArtifactKind::Mask)
        .with_extra("method", "sparsegpt")
        .with_extra("sparsity", "0.75")
        .with_extra("pattern", "unstructured-0.75")
        .with_extra("group", "row");
    write_parquet(&raw, &[batch], &p).unwrap();
    let err = read_mask(&raw).unwrap_err();
    assert!(matches!(err, ArtifactError::BadValue { ref column, row: 0, .. } if column == "values"), "{err}");
}

#[test]
fn hessians_round_trip_as_upper_triangles_one_matrix_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hessians.parquet");
    // A symmetric 3 × 3 matrix and its triangle by hand.
    let full = vec![4.0, 1.0, 2.0, 1.0, 5.0, 3.0, 2.0, 3.0, 6.0];
    let upper = artifacts::InputHessian::upper_of(&full, 3);
    assert_eq!(upper, vec![4.0, 1.0, 2.0, 5.0, 3.0, 6.0]);
    let rows = vec![
        artifacts::InputHessian { layer: 0, modules: vec!["q".into(), "k".into()], in_features: 3, n_samples: 2, n_tokens: 8, upper },
        artifacts::InputHessian { layer: 1, modules: vec!["down".into()], in_features: 1, n_samples: 2, n_tokens: 8, upper: vec![0.5] },
    ];
    let ok = rows.iter().cloned().map(Ok::<_, ArtifactError>);
    artifacts::write_hessians(&path, ok, &prov(ArtifactKind::Hessians)).unwrap();
    let back: Vec<_> = artifacts::HessiansReader::open(&path).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(back, rows);
    assert_eq!(back[0].full(), full);

    let mut bad = rows.clone();
    bad[1].upper.push(1.0);
    let err = artifacts::write_hessians(
        &dir.path().join("bad.parquet"),
        bad.into_iter().map(Ok::<_, ArtifactError>),
        &prov(ArtifactKind::Hessians),
    )
    .unwrap_err();
    assert!(err.to_string().contains("1 values (the upper triangle of 1 × 1)"), "{err}");
    assert!(!dir.path().join("bad.parquet").exists(), "nothing is left by a failed write");

    // A failure upstream of the writer abandons the file too.
    let failing = vec![Ok(rows[0].clone()), Err(ArtifactError::NoFileName { path: "upstream".into() })];
    assert!(artifacts::write_hessians(&dir.path().join("cut.parquet"), failing, &prov(ArtifactKind::Hessians)).is_err());
    assert!(!dir.path().join("cut.parquet").exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left");

    let err = artifacts::HessiansReader::open(&dir.path().join("missing.parquet")).err().unwrap();
    assert!(err.to_string().contains("missing.parquet"), "{err}");
    assert!(artifacts::write_hessians(
        &dir.path().join("k.parquet"),
        rows.into_iter().map(Ok::<_, ArtifactError>),
        &prov(ArtifactKind::Stats)
    )
    .is_err());
}
