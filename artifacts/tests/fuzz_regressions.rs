//! Inputs that crashed or over-allocated the Parquet readers under `cargo
//! xtask fuzz artifacts` and `cargo xtask fuzz datasets-parquet`, each a
//! seed with one footer or page-header field rewritten as the fuzzer did.
//! Before `parquet_guard`, negative column-chunk offsets and sizes made the
//! parquet crate panic ("column start and length should not be negative"),
//! and a page declaring 2^31 values or uncompressed bytes made it reserve
//! 2 to 16 GiB. Each is now refused with what was expected and found.

use std::path::PathBuf;

fn input(target: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions").join(target).join(name)
}

fn expect_refused(result: Result<impl Sized, impl std::fmt::Display>, expected: &str) {
    match result {
        Ok(_) => panic!("accepted; expected an error containing {expected:?}"),
        Err(e) => assert!(e.to_string().contains(expected), "error {e}\ndoes not contain {expected:?}"),
    }
}

#[test]
fn schema_element_with_two_billion_children_is_refused() {
    // Found by the fuzzer as is: the footer decoder reserved 16 GiB for the
    // children of the root before reading any of them.
    let path = input("artifacts", "schema-children-2g.parquet");
    let expected = "schema element 0 declares 2147483647 children, expected 0 to 11 (the schema has 12 elements)";
    expect_refused(artifacts::read_provenance(&path), expected);
    expect_refused(artifacts::read_items(&path), expected);
    expect_refused(artifacts::records::read_records(&path), expected);
}

#[test]
fn schema_children_behind_a_mistyped_field_are_refused() {
    // Found by the fuzzer as is: the footer's version field is typed as a
    // struct; the parquet crate reads it as the i32 it expects anyway and
    // went on to reserve 16 GiB for the root's children.
    let path = input("artifacts", "schema-children-2g-mistyped-version.parquet");
    expect_refused(artifacts::read_provenance(&path), "schema element 0 declares 2147483647 children, expected 0 to 11");
}

#[test]
fn negative_column_chunk_size_is_refused() {
    expect_refused(
        artifacts::read_jaccard(&input("artifacts", "jaccard-chunk-size-negative.parquet")),
        "column 2 (`\"layer\"`): column chunk of -1 bytes at offset 116, expected it within the data section",
    );
}

#[test]
fn negative_dictionary_page_offset_is_refused() {
    expect_refused(
        artifacts::read_samples(&input("artifacts", "samples-chunk-offset-negative.parquet")),
        "column chunk of 68 bytes at offset -1, expected it within the data section (bytes 4 to 355)",
    );
}

#[test]
fn page_declaring_two_gib_uncompressed_is_refused() {
    let path = input("artifacts", "mask-page-uncompressed-2gib.parquet");
    let expected = "page at offset 4: declares 2147483647 uncompressed bytes, expected at most 33554432";
    expect_refused(artifacts::read_mask(&path), expected);
    expect_refused(artifacts::MaskReader::open(&path), expected);
}

#[test]
fn dictionary_page_declaring_two_billion_values_is_refused() {
    expect_refused(
        artifacts::read_scores(&input("artifacts", "scores-dictionary-values-2g.parquet")),
        "page at offset 4: declares 2147483647 values, expected 0 to 4194304",
    );
}

#[test]
fn data_file_with_negative_chunk_offset_is_refused() {
    expect_refused(
        artifacts::records::read_records(&input("datasets-parquet", "chunk-offset-negative.parquet")),
        "column chunk of 657 bytes at offset -3, expected it within the data section",
    );
}

#[test]
fn data_file_page_declaring_two_billion_values_is_refused() {
    let path = input("datasets-parquet", "dictionary-values-2g.parquet");
    let expected = "declares 2147483647 values, expected 0 to 4194304";
    expect_refused(artifacts::records::read_records(&path), expected);
    expect_refused(artifacts::records::parquet_columns(&path).and_then(|_| artifacts::records::read_records(&path)), expected);
}

#[test]
fn every_seed_kind_still_reads() {
    // The guard must not refuse what the writers write: one file per kind.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mask.parquet");
    let provenance = artifacts::Provenance::new(artifacts::ArtifactKind::Mask, "m", serde_json::json!({}), "test");
    let rows: Vec<artifacts::MaskRow> = (0..3000)
        .map(|row| artifacts::MaskRow {
            module: "model.layers.0.mlp.up_proj".into(),
            row,
            in_features: 4096,
            keep: vec![0xff; 512],
            values: None,
        })
        .collect();
    let info = artifacts::MaskInfo { method: "wanda".into(), sparsity: 0.0, pattern: "unstructured".into(), group: "row".into() };
    artifacts::write_mask(&path, &rows, &info, &provenance).unwrap();
    let (_, _, read) = artifacts::read_mask(&path).unwrap();
    assert_eq!(read.len(), 3000);
}
