//! SparseGPT against the authors' implementation (IST-DASLab/sparsegpt) on a
//! small layer with correlated inputs: fixtures/sparsegpt_reference.json,
//! made by fixtures/make_sparsegpt_fixture.py.

use serde_json::Value;
use sparsity::sparsegpt::{sparsegpt, Hessian, SparseGptOptions};
use sparsity::Pattern;

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array().expect("an array").iter().map(|x| x.as_f64().expect("a number")).collect()
}

#[test]
fn masks_and_updated_weights_match_the_reference_s_float64_run() {
    let fixture: Value = serde_json::from_str(include_str!("fixtures/sparsegpt_reference.json")).unwrap();
    let (rows, cols) = (fixture["rows"].as_u64().unwrap() as usize, fixture["cols"].as_u64().unwrap() as usize);
    let weight = numbers(&fixture["weight"]);
    let mut hessian = Hessian::new(cols);
    for batch in fixture["batches"].as_array().unwrap() {
        // Each batch is one sequence; its values are exact in f32, as a layer sees them.
        let x: Vec<f32> = numbers(batch).iter().map(|&v| v as f32).collect();
        hessian.add_batch(&x, 1).unwrap();
    }
    for (label, pattern) in [("unstructured-0.5", Pattern::unstructured(0.5).unwrap()), ("2:4", Pattern::parse_nm("2:4").unwrap())] {
        let reference = &fixture["results"][label];
        let options = SparseGptOptions {
            pattern,
            blocksize: fixture["blocksize"].as_u64().unwrap() as usize,
            percdamp: fixture["percdamp"].as_f64().unwrap(),
        };
        let out = sparsegpt(&weight, rows, cols, &hessian, &options).unwrap();
        let want_keep: Vec<bool> = reference["f64"]["keep"].as_array().unwrap().iter().map(|b| b.as_bool().unwrap()).collect();
        let differences = out.keep.iter().zip(&want_keep).filter(|(a, b)| a != b).count();
        let f32_differences = reference["f32_keep_differences"].as_u64().unwrap() as usize;
        assert!(differences <= f32_differences, "{label}: {differences} mask differences, the reference's f32 run has {f32_differences}");
        let want_weight = numbers(&reference["f64"]["weight"]);
        let largest = out.weight.iter().zip(&want_weight).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        let f32_largest = reference["f32_max_weight_difference"].as_f64().unwrap();
        assert!(
            largest < 1e-9 && largest < f32_largest,
            "{label}: updated weights differ by {largest} (the reference's f32 run: {f32_largest})"
        );
        // The pruned weights are exactly zero and the pattern's count is pruned.
        assert!(out.weight.iter().zip(&out.keep).all(|(w, k)| *k || *w == 0.0));
        if label == "2:4" {
            assert_eq!(out.keep.iter().filter(|k| !**k).count(), rows * cols / 2);
        }
    }
}
