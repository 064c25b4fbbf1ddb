//! Round trips and refusals of the `documents` artifact.

use std::sync::Arc;

use arrow_array::{RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use artifacts::{
    documents_content_hash, read_documents, read_samples, write_documents, ArtifactError, ArtifactKind, Document, Provenance, Split,
    EXTRA_CONTENT_HASH,
};
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde_json::json;

fn provenance() -> Provenance {
    Provenance::new(ArtifactKind::Documents, "", json!({"domain": "python", "heldout_fraction": 0.1}), "subprune-datasets 0.1.0")
}

fn docs() -> Vec<Document> {
    vec![
        Document { domain: "python".into(), source: "/src".into(), id: "a.py".into(), text: "print(1)\n".into(), split: Split::Calib },
        Document {
            domain: "python".into(), source: "/src".into(), id: "b/ü.py".into(), text: "x = 'ünï'\n".into(), split: Split::Heldout
        },
        Document { domain: "python".into(), source: "data.jsonl".into(), id: "line 3".into(), text: String::new(), split: Split::Calib },
    ]
}

#[test]
fn documents_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("documents.parquet");
    write_documents(&path, &docs(), &provenance()).unwrap();
    let (p, d) = read_documents(&path).unwrap();
    assert_eq!(d, docs());
    assert_eq!(p.kind, ArtifactKind::Documents);
    assert_eq!(p.model, "");
    assert_eq!(p.params, provenance().params);
    assert_eq!(p.extra.get(EXTRA_CONTENT_HASH), Some(&documents_content_hash(&docs())));
}

#[test]
fn empty_documents_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.parquet");
    write_documents(&path, &[], &provenance()).unwrap();
    let (_, d) = read_documents(&path).unwrap();
    assert!(d.is_empty());
}

#[test]
fn many_documents_span_batches_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.parquet");
    let many: Vec<Document> = (0..20_000)
        .map(|i| Document {
            domain: "general".into(),
            source: "s".into(),
            id: format!("row {i}"),
            text: format!("text {i}"),
            split: if i % 10 == 0 { Split::Heldout } else { Split::Calib },
        })
        .collect();
    write_documents(&path, &many, &provenance()).unwrap();
    assert_eq!(read_documents(&path).unwrap().1, many);
}

#[test]
fn content_hash_depends_on_texts_and_order_only() {
    let a = docs();
    let mut b = docs();
    b[0].id = "other".into();
    b[0].split = Split::Heldout;
    assert_eq!(documents_content_hash(&a), documents_content_hash(&b));
    b.swap(0, 1);
    assert_ne!(documents_content_hash(&a), documents_content_hash(&b));
    assert!(documents_content_hash(&a).starts_with("sha256:"));
}

#[test]
fn split_names() {
    assert_eq!(Split::Calib.as_str(), "calib");
    assert_eq!(Split::Heldout.to_string(), "heldout");
    assert_eq!(Split::parse("heldout"), Some(Split::Heldout));
    assert_eq!(Split::parse("train"), None);
}

#[test]
fn wrong_provenance_kind_and_wrong_file_kind_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.parquet");
    let wrong = Provenance::new(ArtifactKind::Samples, "", json!({}), "t");
    let err = write_documents(&path, &docs(), &wrong).unwrap_err();
    assert!(matches!(err, ArtifactError::ProvenanceKind { .. }), "{err}");
    assert!(!path.exists());
    write_documents(&path, &docs(), &provenance()).unwrap();
    let err = read_samples(&path).unwrap_err();
    assert!(err.to_string().contains("expected a `samples` artifact, found a `documents` artifact"), "{err}");
}

#[test]
fn bad_split_value_is_refused_with_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.parquet");
    let col = |v: Vec<&str>| Arc::new(StringArray::from(v)) as arrow_array::ArrayRef;
    let schema =
        Schema::new(["domain", "source", "id", "text", "split"].iter().map(|n| Field::new(*n, DataType::Utf8, false)).collect::<Vec<_>>());
    let batch = RecordBatch::try_new(
        Arc::new(schema),
        vec![col(vec!["m", "m"]), col(vec!["s", "s"]), col(vec!["1", "2"]), col(vec!["t", "u"]), col(vec!["calib", "train"])],
    )
    .unwrap();
    let kv = provenance().to_metadata().into_iter().map(|(k, v)| KeyValue::new(k, v)).collect();
    let props = WriterProperties::builder().set_key_value_metadata(Some(kv)).build();
    let mut w = ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let err = read_documents(&path).unwrap_err().to_string();
    assert!(err.contains("column `split`, row 1") && err.contains("`train`"), "{err}");
}
