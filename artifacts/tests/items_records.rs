//! The items artifact round trip and the Hugging Face data-file reader.

use std::io::Write;

use artifacts::records::{read_records, RecordsError};
use artifacts::{items_path_for, read_items, write_items, ArtifactKind, ItemRow, Provenance};
use serde_json::json;

fn provenance(kind: ArtifactKind) -> Provenance {
    Provenance::new(kind, "model-fp", serde_json::json!({"task": "piqa"}), "test")
}

#[test]
fn items_round_trip_keeps_every_field_and_null() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.items.parquet");
    let rows = vec![
        ItemRow {
            item: 0,
            sample: 0,
            gold: Some("1".into()),
            pred: Some("1".into()),
            pred_norm: Some("0".into()),
            passed: Some(true),
            choice_logliks: Some(vec![-3.5, -1.25]),
            score: Some(-0.75),
            ..ItemRow::default()
        },
        ItemRow {
            item: 7,
            sample: 3,
            generation: Some("def f():\n    return 1\n".into()),
            passed: Some(false),
            reason: Some("timeout after 10 s".into()),
            ..ItemRow::default()
        },
        ItemRow { item: 8, ..ItemRow::default() },
    ];
    write_items(&path, &rows, &provenance(ArtifactKind::Items)).unwrap();
    let (prov, back) = read_items(&path).unwrap();
    assert_eq!(prov.kind, ArtifactKind::Items);
    assert_eq!(back, rows);
}

#[test]
fn items_refuse_another_kind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.parquet");
    let err = write_items(&path, &[], &provenance(ArtifactKind::Results)).unwrap_err().to_string();
    assert!(err.contains("items") && err.contains("results"), "{err}");
    assert!(!path.exists());
}

#[test]
fn items_sit_beside_their_results() {
    let p = items_path_for(std::path::Path::new("/tmp/out/piqa.parquet"));
    assert_eq!(p, std::path::Path::new("/tmp/out/piqa.items.parquet"));
}

#[test]
fn records_read_json_lines_gzip_and_json_arrays_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let lines = dir.path().join("a.jsonl");
    std::fs::write(&lines, "{\"q\": 1}\n\n{\"q\": 2}\n").unwrap();
    assert_eq!(read_records(&lines).unwrap(), vec![json!({"q": 1}), json!({"q": 2})]);

    let gz = dir.path().join("a.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::default());
    enc.write_all(b"{\"q\": \"x\"}\n{\"q\": \"y\"}\n{\"q\": \"z\"}\n").unwrap();
    enc.finish().unwrap();
    assert_eq!(read_records(&gz).unwrap().len(), 3);

    let array = dir.path().join("a.json");
    std::fs::write(&array, "[{\"q\": 3}, {\"q\": 4}]").unwrap();
    assert_eq!(read_records(&array).unwrap(), vec![json!({"q": 3}), json!({"q": 4})]);
}

#[test]
fn records_errors_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"q\": 1}\n{oops\n").unwrap();
    let err = read_records(&bad).unwrap_err();
    assert!(matches!(err, RecordsError::Json { line: 2, .. }), "{err}");
    assert!(err.to_string().contains("bad.jsonl:2"), "{err}");

    let unknown = dir.path().join("data.csv");
    std::fs::write(&unknown, "a,b\n").unwrap();
    let err = read_records(&unknown).unwrap_err().to_string();
    assert!(err.contains("data.csv") && err.contains(".parquet"), "{err}");
}

#[test]
fn records_of_the_shared_piqa_set_match_its_line_count() {
    let path = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for tests"))
        .join("../../shared/data/piqa/valid.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
    let records = read_records(&path).unwrap();
    assert_eq!(records.len(), lines);
    assert!(records[0].get("goal").is_some());
}
