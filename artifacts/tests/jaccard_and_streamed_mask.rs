//! Round trips and refusals of the jaccard artifact, and the streamed mask reader.

use artifacts::{
    read_jaccard, read_mask, write_jaccard, write_mask, ArtifactError, ArtifactKind, JaccardRow, MaskInfo, MaskReader, MaskRow, Provenance,
};
use serde_json::json;

fn prov(kind: ArtifactKind) -> Provenance {
    Provenance::new(kind, "sha256:model", json!({"names": ["a", "b"]}), "test 0.1.0").with_input("a", "sha256:00")
}

fn rows() -> Vec<JaccardRow> {
    vec![
        JaccardRow {
            mask_a: "a".into(),
            mask_b: "b".into(),
            layer: Some(3),
            module: "model.layers.3.self_attn.q_proj".into(),
            pruned_a: 6,
            pruned_b: 5,
            intersect: 4,
            union: 7,
            jaccard_distance: 1.0 - 4.0 / 7.0,
        },
        JaccardRow {
            mask_a: "a".into(),
            mask_b: "b".into(),
            layer: None,
            module: "model".into(),
            pruned_a: 0,
            pruned_b: 0,
            intersect: 0,
            union: 0,
            jaccard_distance: 0.0,
        },
    ]
}

#[test]
fn jaccard_round_trips_with_null_layer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jaccard.parquet");
    let hash = write_jaccard(&path, &rows(), &prov(ArtifactKind::Jaccard)).unwrap();
    assert_eq!(hash, artifacts::content_hash(&path).unwrap());
    let (p, back) = read_jaccard(&path).unwrap();
    assert_eq!(p, prov(ArtifactKind::Jaccard));
    assert_eq!(back, rows());
}

#[test]
fn jaccard_refuses_wrong_kind_and_inconsistent_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.parquet");
    let err = write_jaccard(&path, &rows(), &prov(ArtifactKind::Results)).unwrap_err();
    assert!(matches!(err, ArtifactError::ProvenanceKind { .. }), "{err}");

    let mut bad = rows();
    bad[0].intersect = 6;
    let err = write_jaccard(&path, &bad, &prov(ArtifactKind::Jaccard)).unwrap_err();
    assert!(matches!(err, ArtifactError::BadValue { ref column, row: 0, .. } if column == "intersect"), "{err}");
    let mut bad = rows();
    bad[0].union = 12;
    let err = write_jaccard(&path, &bad, &prov(ArtifactKind::Jaccard)).unwrap_err();
    assert!(matches!(err, ArtifactError::BadValue { ref column, .. } if column == "union"), "{err}");
    let mut bad = rows();
    bad[1].jaccard_distance = 1.5;
    let err = write_jaccard(&path, &bad, &prov(ArtifactKind::Jaccard)).unwrap_err();
    assert!(matches!(err, ArtifactError::BadValue { ref column, row: 1, .. } if column == "jaccard_distance"), "{err}");

    let info = MaskInfo { method: "wanda".into(), sparsity: 0.5, pattern: "unstructured-0.5".into(), group: "row".into() };
    let mask = dir.path().join("mask.parquet");
    write_mask(&mask, &[], &info, &prov(ArtifactKind::Mask)).unwrap();
    let err = read_jaccard(&mask).unwrap_err();
    assert!(matches!(err, ArtifactError::WrongKind { .. }), "{err}");
}

#[test]
fn streamed_mask_reader_yields_the_rows_of_read_mask_across_batches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mask.parquet");
    let info = MaskInfo { method: "wanda".into(), sparsity: 0.5, pattern: "unstructured-0.5".into(), group: "row".into() };
    let rows: Vec<MaskRow> = (0..10_000u32)
        .map(|i| MaskRow {
            module: format!("model.layers.{}.mlp.up_proj", i / 5000),
            row: i % 5000,
            in_features: 12,
            keep: vec![i as u8, 0x0f & (i >> 8) as u8],
            values: None,
        })
        .collect();
    write_mask(&path, &rows, &info, &prov(ArtifactKind::Mask)).unwrap();
    let reader = MaskReader::open(&path).unwrap();
    assert_eq!(reader.num_rows(), 10_000);
    assert_eq!(reader.info(), &info);
    assert_eq!(reader.path(), path.as_path());
    let streamed: Vec<MaskRow> = reader.collect::<Result<_, _>>().unwrap();
    assert_eq!(streamed, rows);
    assert_eq!(read_mask(&path).unwrap().2, rows);
}
