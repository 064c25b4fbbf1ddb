//! Integration tests of the artifacts crate on real files in a temp dir.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, Int32Array, Int64Array, LargeListArray, ListArray, RecordBatch, StringArray, UInt64Array};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, Schema};
use artifacts::{
    check_same_model, content_hash, read_parquet, read_provenance, read_results, read_samples, write_parquet, write_results, write_samples,
    ArtifactError, ArtifactKind, Provenance, ResultRow, Sample, SamplesInfo, SCHEMA_VERSION,
};
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde_json::json;
use sha2::{Digest, Sha256};

fn samples_provenance() -> Provenance {
    Provenance::new(ArtifactKind::Samples, "", json!({"domain": "python", "n": 3, "seqlen": 8}), "subprune-datasets 0.1.0")
        .with_input("documents", "sha256:00ff")
}

fn some_samples() -> Vec<Sample> {
    vec![
        Sample { sample_id: 0, domain: "python".into(), tokens: vec![1, 2, 3, u32::MAX] },
        Sample { sample_id: 7, domain: "java".into(), tokens: vec![] },
        Sample { sample_id: u64::MAX, domain: "c++ / ünïcode".into(), tokens: (0..1000).collect() },
    ]
}

fn info() -> SamplesInfo {
    SamplesInfo { tokenizer_hash: "sha256:abcd".into(), seqlen: 8, seed: Some(42) }
}

fn results_provenance() -> Provenance {
    Provenance::new(ArtifactKind::Results, "llama:fp:1234", json!({"tasks": ["mbpp"], "k": [1, 10]}), "subprune-evaluate 0.1.0")
        .with_input("mask", "sha256:beef")
}

fn some_results() -> Vec<ResultRow> {
    vec![
        ResultRow {
            model: "llama:fp:1234".into(),
            mask: None,
            task: "mbpp".into(),
            metric: "pass@1".into(),
            value: 0.25,
            n: 500,
            stderr: Some(0.019),
            ci_low: Some(0.21),
            ci_high: Some(0.29),
        },
        ResultRow {
            model: "llama:fp:1234".into(),
            mask: Some("sha256:beef".into()),
            task: "perplexity/python".into(),
            metric: "ppl".into(),
            value: 12.5,
            n: 4096,
            stderr: None,
            ci_low: None,
            ci_high: None,
        },
    ]
}

fn sha256_of(path: &Path) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(fs::read(path).unwrap())))
}

/// Names of all entries in `dir`, sorted.
fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Writes a batch with plain parquet/arrow and the given key-value metadata.
fn write_raw(path: &Path, batch: &RecordBatch, kv: Vec<(String, String)>) {
    let kv = kv.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect();
    let props = WriterProperties::builder().set_key_value_metadata(Some(kv)).build();
    let file = fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

/// The metadata a samples file needs, as another tool would write it.
fn samples_metadata() -> Vec<(String, String)> {
    samples_provenance().with_extra("tokenizer_hash", "sha256:abcd").with_extra("seqlen", "8").to_metadata()
}

fn foreign_samples_batch(tokens: ArrayRef) -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("sample_id", DataType::UInt64, true),
        Field::new("domain", DataType::Utf8, true),
        Field::new("tokens", tokens.data_type().clone(), true),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![Arc::new(UInt64Array::from(vec![10, 11])), Arc::new(StringArray::from(vec!["math", "math"])), tokens],
    )
    .unwrap()
}

fn int64_list(values: Vec<i64>, lengths: Vec<usize>) -> ArrayRef {
    Arc::new(
        ListArray::try_new(
            Arc::new(Field::new_list_field(DataType::Int64, true)),
            OffsetBuffer::from_lengths(lengths),
            Arc::new(Int64Array::from(values)),
            None,
        )
        .unwrap(),
    )
}

#[test]
fn samples_round_trip_with_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("samples.parquet");
    let prov = samples_provenance();
    let hash = write_samples(&path, &some_samples(), &info(), &prov).unwrap();
    assert_eq!(hash, sha256_of(&path));
    assert_eq!(hash, content_hash(&path).unwrap());

    let (p, i, s) = read_samples(&path).unwrap();
    assert_eq!(s, some_samples());
    assert_eq!(i, info());
    assert_eq!(p.kind, ArtifactKind::Samples);
    assert_eq!(p.schema_version, SCHEMA_VERSION);
    assert_eq!(p.model, "");
    assert_eq!(p.inputs, prov.inputs);
    assert_eq!(p.params, prov.params);
    assert_eq!(p.created_by, "subprune-datasets 0.1.0");
    assert_eq!(p.extra.get("seqlen").map(String::as_str), Some("8"));
    assert_eq!(p.extra.get("seed").map(String::as_str), Some("42"));

    let footer = read_provenance(&path).unwrap();
    assert_eq!(footer, p);

    let (p2, batches) = read_parquet(&path, ArtifactKind::Samples).unwrap();
    assert_eq!(p2, p);
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    assert_eq!(
        batches[0].schema().field_with_name("tokens").unwrap().data_type(),
        &DataType::List(Arc::new(Field::new_list_field(DataType::UInt32, false)))
    );
}

#[test]
fn samples_without_seed_and_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.parquet");
    let info = SamplesInfo { seed: None, ..info() };
    write_samples(&path, &[], &info, &samples_provenance()).unwrap();
    let (p, i, s) = read_samples(&path).unwrap();
    assert!(s.is_empty());
    assert_eq!(i, info);
    assert!(!p.extra.contains_key("seed"));
}

#[test]
fn metadata_keys_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("samples.parquet");
    write_samples(&path, &some_samples(), &info(), &samples_provenance()).unwrap();
    let file = fs::File::open(&path).unwrap();
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let kv = builder.metadata().file_metadata().key_value_metadata().unwrap();
    let get = |k: &str| kv.iter().find(|e| e.key == k).and_then(|e| e.value.clone()).unwrap_or_else(|| panic!("missing key {k}"));
    assert_eq!(get("subprune.kind"), "samples");
    assert_eq!(get("subprune.schema_version"), "1");
    assert_eq!(get("subprune.model"), "");
    assert_eq!(get("subprune.inputs"), r#"{"documents":"sha256:00ff"}"#);
    let params: serde_json::Value = serde_json::from_str(&get("subprune.params")).unwrap();
    assert_eq!(params, json!({"domain": "python", "n": 3, "seqlen": 8}));
    assert_eq!(get("subprune.created_by"), "subprune-datasets 0.1.0");
    assert_eq!(get("subprune.samples.tokenizer_hash"), "sha256:abcd");
    assert_eq!(get("subprune.samples.seqlen"), "8");
    assert_eq!(get("subprune.samples.seed"), "42");
    let compression = builder.metadata().row_group(0).column(0).compression();
    assert!(matches!(compression, parquet::basic::Compression::ZSTD(_)), "{compression:?}");
}

#[test]
fn results_round_trip_with_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/deeper/results.parquet");
    let prov = results_provenance();
    let hash = write_results(&path, &some_results(), &prov).unwrap();
    assert_eq!(hash, sha256_of(&path));
    let (p, rows) = read_results(&path).unwrap();
    assert_eq!(rows, some_results());
    assert_eq!(p, prov);
}

#[test]
fn content_hash_tracks_content() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.parquet");
    let b = dir.path().join("b.parquet");
    let h1 = write_results(&a, &some_results(), &results_provenance()).unwrap();
    assert_eq!(content_hash(&a).unwrap(), h1);
    assert_eq!(content_hash(&a).unwrap(), sha256_of(&a));
    let h_same = write_results(&b, &some_results(), &results_provenance()).unwrap();
    assert_eq!(h_same, h1, "same content, same hash");

    let mut changed = some_results();
    changed[0].value = 0.26;
    let h2 = write_results(&a, &changed, &results_provenance()).unwrap();
    assert_ne!(h2, h1);
    assert_eq!(content_hash(&a).unwrap(), h2);
    assert_eq!(sha256_of(&a), h2);
    assert!(h2.starts_with("sha256:") && h2.len() == "sha256:".len() + 64);

    let prov = results_provenance().with_input("extra", "sha256:01");
    let h3 = write_results(&b, &some_results(), &prov).unwrap();
    assert_ne!(h3, h1, "metadata is part of the content");
}

#[test]
fn wrong_kind_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.parquet");
    write_results(&path, &some_results(), &results_provenance()).unwrap();
    let err = read_samples(&path).unwrap_err();
    assert!(matches!(err, ArtifactError::WrongKind { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("samples"), "{msg}");
    assert!(msg.contains("results"), "{msg}");
    assert!(msg.contains("results.parquet"), "{msg}");
    let err = read_parquet(&path, ArtifactKind::Mask).unwrap_err();
    assert!(err.to_string().contains("mask"), "{err}");
}

#[test]
fn wrong_schema_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results_v2.parquet");
    let mut prov = results_provenance();
    prov.schema_version = SCHEMA_VERSION + 1;
    write_results(&path, &some_results(), &prov).unwrap();
    let err = read_results(&path).unwrap_err();
    assert!(matches!(err, ArtifactError::WrongSchemaVersion { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("results_v2.parquet"), "{msg}");
    assert!(msg.contains(&format!("schema version {}", SCHEMA_VERSION + 1)), "{msg}");
    assert!(msg.contains(&format!("expected schema version {SCHEMA_VERSION}")), "{msg}");
    assert_eq!(read_provenance(&path).unwrap().schema_version, SCHEMA_VERSION + 1);
}

#[test]
fn non_parquet_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.parquet");
    fs::write(&path, "this is plain text, not a Parquet file at all\n").unwrap();
    for err in [read_samples(&path).unwrap_err(), read_provenance(&path).unwrap_err()] {
        assert!(matches!(err, ArtifactError::NotParquet { .. }), "{err:?}");
        assert!(err.to_string().contains("notes.parquet"), "{err}");
        assert!(err.to_string().contains("not a Parquet file"), "{err}");
    }
    let tiny = dir.path().join("tiny.parquet");
    fs::write(&tiny, "PAR1").unwrap();
    let err = read_results(&tiny).unwrap_err();
    assert!(matches!(err, ArtifactError::NotParquet { .. }), "{err:?}");

    let missing = dir.path().join("missing.parquet");
    let err = read_samples(&missing).unwrap_err();
    assert!(matches!(err, ArtifactError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.parquet"), "{err}");
}

#[test]
fn plain_parquet_without_metadata_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pandas.parquet");
    let batch = foreign_samples_batch(int64_list(vec![1, 2, 3], vec![2, 1]));
    write_raw(&path, &batch, vec![("pandas".into(), "{}".into())]);
    let err = read_samples(&path).unwrap_err();
    assert!(matches!(err, ArtifactError::NotAnArtifact { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("pandas.parquet"), "{msg}");
    assert!(msg.contains("subprune.kind"), "{msg}");
    assert!(msg.contains("subprune.schema_version"), "{msg}");
    assert!(msg.contains("samples"), "{msg}");
}

#[test]
fn atomic_write_leaves_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("samples.parquet");
    write_samples(&path, &some_samples(), &info(), &samples_provenance()).unwrap();
    write_samples(&path, &some_samples()[..1], &info(), &samples_provenance()).unwrap();
    assert_eq!(dir_names(dir.path()), vec!["samples.parquet".to_string()]);
    assert_eq!(read_samples(&path).unwrap().2.len(), 1);
}

#[test]
fn failed_write_leaves_old_file_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.parquet");
    write_results(&path, &some_results(), &results_provenance()).unwrap();
    let before = fs::read(&path).unwrap();

    let a = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("x", DataType::Int32, false)])),
        vec![Arc::new(Int32Array::from(vec![1, 2]))],
    )
    .unwrap();
    let b = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("y", DataType::Utf8, false)])),
        vec![Arc::new(StringArray::from(vec!["z"]))],
    )
    .unwrap();
    let err = write_parquet(&path, &[a, b], &results_provenance()).unwrap_err();
    assert!(matches!(err, ArtifactError::Parquet { .. }), "{err:?}");
    assert!(err.to_string().contains("results.parquet"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), before);
    assert_eq!(dir_names(dir.path()), vec!["results.parquet".to_string()]);
    assert_eq!(read_results(&path).unwrap().1, some_results());

    let err = write_parquet(&path, &[], &results_provenance()).unwrap_err();
    assert!(matches!(err, ArtifactError::NoBatches { .. }), "{err:?}");
    assert_eq!(fs::read(&path).unwrap(), before);

    let err = write_samples(&path, &some_samples(), &info(), &results_provenance()).unwrap_err();
    assert!(matches!(err, ArtifactError::ProvenanceKind { .. }), "{err:?}");
    assert_eq!(fs::read(&path).unwrap(), before);
    assert_eq!(dir_names(dir.path()), vec!["results.parquet".to_string()]);
}

#[test]
fn foreign_int64_tokens_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("foreign.parquet");
    let batch = foreign_samples_batch(int64_list(vec![5, 6, 4_294_967_295], vec![2, 1]));
    write_raw(&path, &batch, samples_metadata());
    let (p, i, s) = read_samples(&path).unwrap();
    assert_eq!(p.kind, ArtifactKind::Samples);
    assert_eq!(i, SamplesInfo { tokenizer_hash: "sha256:abcd".into(), seqlen: 8, seed: None });
    assert_eq!(
        s,
        vec![
            Sample { sample_id: 10, domain: "math".into(), tokens: vec![5, 6] },
            Sample { sample_id: 11, domain: "math".into(), tokens: vec![4_294_967_295] },
        ]
    );
}

#[test]
fn foreign_large_list_int32_tokens_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("large.parquet");
    let tokens: ArrayRef = Arc::new(
        LargeListArray::try_new(
            Arc::new(Field::new("element", DataType::Int32, true)),
            OffsetBuffer::from_lengths(vec![1, 3]),
            Arc::new(Int32Array::from(vec![9, 8, 7, 6])),
            None,
        )
        .unwrap(),
    );
    write_raw(&path, &foreign_samples_batch(tokens), samples_metadata());
    let (_, _, s) = read_samples(&path).unwrap();
    assert_eq!(s[0].tokens, vec![9]);
    assert_eq!(s[1].tokens, vec![8, 7, 6]);
}

#[test]
fn negative_or_too_large_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("negative.parquet");
    let batch = foreign_samples_batch(int64_list(vec![5, 6, -5], vec![2, 1]));
    write_raw(&path, &batch, samples_metadata());
    let err = read_samples(&path).unwrap_err();
    assert!(matches!(err, ArtifactError::BadValue { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("negative.parquet"), "{msg}");
    assert!(msg.contains("tokens"), "{msg}");
    assert!(msg.contains("row 1"), "{msg}");
    assert!(msg.contains("-5"), "{msg}");

    let path = dir.path().join("huge.parquet");
    let batch = foreign_samples_batch(int64_list(vec![4_294_967_296], vec![1, 0]));
    write_raw(&path, &batch, samples_metadata());
    let err = read_samples(&path).unwrap_err();
    assert!(err.to_string().contains("4294967296"), "{err}");

    let path = dir.path().join("null.parquet");
    let tokens: ArrayRef = Arc::new(
        ListArray::try_new(
            Arc::new(Field::new_list_field(DataType::Int64, true)),
            OffsetBuffer::from_lengths(vec![1, 1]),
            Arc::new(Int64Array::from(vec![Some(1), None])),
            None,
        )
        .unwrap(),
    );
    write_raw(&path, &foreign_samples_batch(tokens), samples_metadata());
    let err = read_samples(&path).unwrap_err();
    assert!(err.to_string().contains("null"), "{err}");
}

#[test]
fn missing_or_mistyped_columns_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nodomain.parquet");
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("sample_id", DataType::UInt64, false), Field::new("tokens", DataType::Utf8, false)])),
        vec![Arc::new(UInt64Array::from(vec![1])), Arc::new(StringArray::from(vec!["1 2 3"]))],
    )
    .unwrap();
    write_raw(&path, &batch, samples_metadata());
    let err = read_samples(&path).unwrap_err();
    assert!(matches!(err, ArtifactError::MissingColumn { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("domain") && msg.contains("nodomain.parquet"), "{msg}");

    let path = dir.path().join("strtokens.parquet");
    let batch = foreign_samples_batch(Arc::new(StringArray::from(vec!["1 2", "3"])));
    write_raw(&path, &batch, samples_metadata());
    let err = read_samples(&path).unwrap_err();
    assert!(matches!(err, ArtifactError::WrongColumnType { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("tokens") && msg.contains("Utf8"), "{msg}");
}

#[test]
fn missing_samples_info_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noinfo.parquet");
    let batch = foreign_samples_batch(int64_list(vec![1, 2, 3], vec![2, 1]));
    write_raw(&path, &batch, samples_provenance().to_metadata());
    let err = read_samples(&path).unwrap_err();
    assert!(matches!(err, ArtifactError::MissingMetadata { .. }), "{err:?}");
    assert!(err.to_string().contains("subprune.samples.tokenizer_hash"), "{err}");
}

#[test]
fn same_model_check_names_both_files() {
    let a = results_provenance();
    let mut b = results_provenance();
    let pa = PathBuf::from("/x/a.parquet");
    let pb = PathBuf::from("/x/b.parquet");
    check_same_model(&a, &pa, &b, &pb).unwrap();
    b.model = "gemma:fp:9".into();
    let err = check_same_model(&a, &pa, &b, &pb).unwrap_err();
    let msg = err.to_string();
    for part in ["/x/a.parquet", "/x/b.parquet", "llama:fp:1234", "gemma:fp:9"] {
        assert!(msg.contains(part), "{part} missing in {msg}");
    }
}

#[test]
fn kinds_round_trip_through_strings() {
    for kind in ArtifactKind::ALL {
        assert_eq!(kind.as_str().parse::<ArtifactKind>().unwrap(), kind);
        assert_eq!(kind.to_string(), kind.as_str());
    }
    assert_eq!(ArtifactKind::Jaccard.as_str(), "jaccard");
    assert!("Samples".parse::<ArtifactKind>().is_err());
}
