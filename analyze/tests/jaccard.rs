//! Jaccard distances against hand-computed sets, and the refusals of masks that do not match.

mod common;

use analyze::jaccard::{LAYER_ROW, MODEL_ROW};
use analyze::{compute_jaccard, write_table, AnalyzeError, NamedMask};
use artifacts::{read_jaccard, ArtifactKind, JaccardRow};
use common::{naive_distance, rows, write_test_mask, write_test_mask_for, Lcg};
use indicatif::ProgressBar;

const Q0: &str = "model.layers.0.self_attn.q_proj";
const D1: &str = "model.layers.1.mlp.down_proj";

fn named(name: &str, path: std::path::PathBuf) -> NamedMask {
    NamedMask { name: name.to_string(), path }
}

fn find<'a>(rows: &'a [JaccardRow], a: &str, b: &str, module: &str, layer: Option<u32>) -> &'a JaccardRow {
    rows.iter()
        .find(|r| r.mask_a == a && r.mask_b == b && r.module == module && r.layer == layer)
        .unwrap_or_else(|| panic!("no row {a} {b} {module} {layer:?}"))
}

fn counts(r: &JaccardRow) -> (u64, u64, u64, u64) {
    (r.pruned_a, r.pruned_b, r.intersect, r.union)
}

#[test]
fn worked_example_matches_hand_counts() {
    // Module q_proj (layer 0), 3 x 4, keep bits (1 = kept):
    //   A: 1010 / 0011 / 1110  -> pruned P_A = {(0,1), (0,3), (1,0), (1,1), (2,3)}, |P_A| = 5
    //   B: 1001 / 0111 / 0110  -> pruned P_B = {(0,1), (0,2), (1,0), (2,0), (2,3)}, |P_B| = 5
    //   P_A & P_B = {(0,1), (1,0), (2,3)} = 3; P_A | P_B = 7; distance = 1 - 3/7 = 4/7.
    // Module down_proj (layer 1), 2 x 10 (two padding bits in each row's last byte):
    //   A: row 0 all kept, row 1 all pruned -> |P_A| = 10
    //   B: row 0 prunes inputs 0..3, row 1 all pruned -> |P_B| = 13
    //   intersect = 10, union = 13, distance = 3/13.
    // Whole model: pruned 15 and 18, intersect 13, union 20, distance 7/20 = 0.35.
    // C keeps everything: A vs C has intersect 0 and union 15, distance 1.
    let dir = tempfile::tempdir().unwrap();
    let a =
        write_test_mask(&dir.path().join("a.parquet"), &[(Q0, rows(&["1010", "0011", "1110"])), (D1, rows(&["1111111111", "0000000000"]))]);
    let b =
        write_test_mask(&dir.path().join("b.parquet"), &[(Q0, rows(&["1001", "0111", "0110"])), (D1, rows(&["0001111111", "0000000000"]))]);
    let c =
        write_test_mask(&dir.path().join("c.parquet"), &[(Q0, rows(&["1111", "1111", "1111"])), (D1, rows(&["1111111111", "1111111111"]))]);
    let masks = vec![NamedMask::from_stem(&a), NamedMask::from_stem(&b), NamedMask::from_stem(&c)];
    let table = compute_jaccard(&masks, &ProgressBar::hidden()).unwrap();
    assert_eq!(table.model, common::MODEL);
    // 3 pairs x (2 modules + 2 layers + 1 model).
    assert_eq!(table.rows.len(), 15);

    let q = find(&table.rows, "a", "b", Q0, Some(0));
    assert_eq!(counts(q), (5, 5, 3, 7));
    assert!((q.jaccard_distance - 4.0 / 7.0).abs() < 1e-12);
    let d = find(&table.rows, "a", "b", D1, Some(1));
    assert_eq!(counts(d), (10, 13, 10, 13));
    assert!((d.jaccard_distance - 3.0 / 13.0).abs() < 1e-12);
    assert_eq!(counts(find(&table.rows, "a", "b", LAYER_ROW, Some(0))), (5, 5, 3, 7));
    assert_eq!(counts(find(&table.rows, "a", "b", LAYER_ROW, Some(1))), (10, 13, 10, 13));
    let whole = find(&table.rows, "a", "b", MODEL_ROW, None);
    assert_eq!(counts(whole), (15, 18, 13, 20));
    assert!((whole.jaccard_distance - 0.35).abs() < 1e-12);

    let ac = find(&table.rows, "a", "c", MODEL_ROW, None);
    assert_eq!(counts(ac), (15, 0, 0, 15));
    assert_eq!(ac.jaccard_distance, 1.0);

    // The artifact round-trips, with the inputs' hashes and the model in its provenance.
    let out = dir.path().join("jaccard.parquet");
    write_table(&out, &table, "test").unwrap();
    let (p, back) = read_jaccard(&out).unwrap();
    assert_eq!(back, table.rows);
    assert_eq!(p.kind, ArtifactKind::Jaccard);
    assert_eq!(p.model, common::MODEL);
    assert_eq!(p.inputs.get("a").unwrap(), &artifacts::content_hash(&a).unwrap());
}

#[test]
fn identical_masks_are_at_distance_zero_and_disjoint_pruned_sets_at_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Lcg(7);
    let m = rng.matrix(16, 37);
    let a = write_test_mask(&dir.path().join("a.parquet"), &[(Q0, m.clone())]);
    let same = write_test_mask(&dir.path().join("same.parquet"), &[(Q0, m.clone())]);
    let flipped: Vec<Vec<bool>> = m.iter().map(|r| r.iter().map(|k| !k).collect()).collect();
    let disjoint = write_test_mask(&dir.path().join("disjoint.parquet"), &[(Q0, flipped)]);
    let table = compute_jaccard(&[named("a", a), named("same", same), named("disjoint", disjoint)], &ProgressBar::hidden()).unwrap();
    let pruned = m.iter().flatten().filter(|k| !**k).count() as u64;
    let r = find(&table.rows, "a", "same", MODEL_ROW, None);
    assert_eq!(counts(r), (pruned, pruned, pruned, pruned));
    assert_eq!(r.jaccard_distance, 0.0);
    let r = find(&table.rows, "a", "disjoint", MODEL_ROW, None);
    assert_eq!((r.intersect, r.union), (0, 16 * 37));
    assert_eq!(r.jaccard_distance, 1.0);
}

#[test]
fn two_empty_pruned_sets_are_at_distance_zero() {
    let dir = tempfile::tempdir().unwrap();
    let all = rows(&["111", "111"]);
    let a = write_test_mask(&dir.path().join("a.parquet"), &[(Q0, all.clone())]);
    let b = write_test_mask(&dir.path().join("b.parquet"), &[(Q0, all)]);
    let table = compute_jaccard(&[named("a", a), named("b", b)], &ProgressBar::hidden()).unwrap();
    for r in &table.rows {
        assert_eq!((r.union, r.jaccard_distance), (0, 0.0), "{r:?}");
    }
}

#[test]
fn streaming_agrees_with_set_counting_across_many_chunks() {
    // 5000 rows cross the reader's chunk and record-batch boundaries.
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Lcg(42);
    let ma: Vec<Vec<Vec<bool>>> = (0..2).map(|_| rng.matrix(2500, 21)).collect();
    let mb: Vec<Vec<Vec<bool>>> = (0..2).map(|_| rng.matrix(2500, 21)).collect();
    let names = ["model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj"];
    let spec = |m: &[Vec<Vec<bool>>]| names.iter().zip(m).map(|(n, x)| (*n, x.clone())).collect::<Vec<_>>();
    let a = write_test_mask(&dir.path().join("a.parquet"), &spec(&ma));
    let b = write_test_mask(&dir.path().join("b.parquet"), &spec(&mb));
    let table = compute_jaccard(&[named("a", a), named("b", b)], &ProgressBar::hidden()).unwrap();
    let whole = find(&table.rows, "a", "b", MODEL_ROW, None);
    assert!((whole.jaccard_distance - naive_distance(&ma, &mb)).abs() < 1e-12);
    let l1 = find(&table.rows, "a", "b", LAYER_ROW, Some(1));
    assert!((l1.jaccard_distance - naive_distance(&ma[1..], &mb[1..])).abs() < 1e-12);
}

#[test]
fn refuses_masks_of_other_models_and_other_shapes_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_test_mask(&dir.path().join("a.parquet"), &[(Q0, rows(&["1010", "0011"]))]);
    let other_model = write_test_mask_for(&dir.path().join("other-model.parquet"), &[(Q0, rows(&["1010", "0011"]))], "sha256:another");
    let err = compute_jaccard(&[named("a", a.clone()), named("o", other_model)], &ProgressBar::hidden()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("model mismatch") && msg.contains("other-model.parquet") && msg.contains("a.parquet"), "{msg}");

    let wider = write_test_mask(&dir.path().join("wider.parquet"), &[(Q0, rows(&["10101", "00110"]))]);
    let err = compute_jaccard(&[named("a", a.clone()), named("w", wider)], &ProgressBar::hidden()).unwrap_err();
    assert!(matches!(err, AnalyzeError::ShapeMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("a.parquet") && msg.contains("wider.parquet") && msg.contains("5 inputs"), "{msg}");

    let other_module = write_test_mask(&dir.path().join("renamed.parquet"), &[(D1, rows(&["1010", "0011"]))]);
    let err = compute_jaccard(&[named("a", a.clone()), named("r", other_module)], &ProgressBar::hidden()).unwrap_err();
    assert!(err.to_string().contains(D1) && err.to_string().contains("renamed.parquet"), "{err}");

    let longer = write_test_mask(&dir.path().join("longer.parquet"), &[(Q0, rows(&["1010", "0011"])), (D1, rows(&["1"]))]);
    let err = compute_jaccard(&[named("a", a.clone()), named("l", longer)], &ProgressBar::hidden()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("ends after 2 rows") && msg.contains("longer.parquet"), "{msg}");

    let err = compute_jaccard(&[named("a", a.clone()), named("a", a.clone())], &ProgressBar::hidden()).unwrap_err();
    assert!(err.to_string().contains("--names"), "{err}");
    let err = compute_jaccard(&[named("a", a), named("m", dir.path().join("missing.parquet"))], &ProgressBar::hidden()).unwrap_err();
    assert!(err.to_string().contains("missing.parquet"), "{err}");
}
