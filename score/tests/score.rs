//! Tests of the `score` stage on tiny random Llama models written to a temp dir.

use std::path::{Path, PathBuf};
use std::process::Command;

use artifacts::{ArtifactKind, MaskInfo, MaskRow, ModuleStats, Provenance};
use indicatif::ProgressBar;
use model::safetensors::StoredDtype;
use score::ScoreError;
use serde_json::json;
use sparsity::Method;
use testkit::{tiny_weights, write_hf_dir, Rng, TinyConfig, TINY};

/// A tiny HF model in `dir/name`; returns its path and fingerprint.
fn tiny_model(dir: &Path, name: &str, cfg: &TinyConfig, seed: u64) -> (PathBuf, String) {
    let path = dir.join(name);
    write_hf_dir(&path, cfg, &tiny_weights(cfg, seed), StoredDtype::F32);
    let fp = model::load_model(&path).unwrap().fingerprint;
    (path, fp)
}

fn stats_params() -> serde_json::Value {
    json!({"method": "wanda", "pattern": "unstructured-0.5", "sparsity": 0.5, "nm": null, "group": "row",
           "oneshot": false, "batch": 1, "nsamples": 4, "seqlen": 16})
}

/// Statistics for every linear module of `model_path`, positive and distinct per column.
fn make_stats(model_path: &Path) -> Vec<ModuleStats> {
    let loaded = model::load_model(model_path).unwrap();
    let mut rng = Rng::new(7);
    let mut out = Vec::new();
    for layer in 0..loaded.config.num_layers() {
        for (module, _, cols) in loaded.config.linear_modules(layer) {
            let scaler_row: Vec<f32> = (0..cols).map(|_| 0.01 + 3.0 * rng.next_f32().abs()).collect();
            let sum_sq = scaler_row.iter().map(|v| v * 4.0).collect();
            out.push(ModuleStats { layer: layer as u32, module, in_features: cols as u32, n_tokens: 64, n_samples: 4, sum_sq, scaler_row });
        }
    }
    out
}

fn write_stats(path: &Path, model_fp: &str, stats: &[ModuleStats]) -> String {
    let p = Provenance::new(ArtifactKind::Stats, model_fp, stats_params(), "test").with_input("samples", "sha256:00");
    artifacts::write_stats(path, stats, &p).unwrap()
}

fn hidden() -> ProgressBar {
    ProgressBar::hidden()
}

#[test]
fn wanda_scores_are_abs_weight_times_root_statistic() {
    let dir = tempfile::tempdir().unwrap();
    let (model_path, fp) = tiny_model(dir.path(), "m", &TINY, 1);
    let stats = make_stats(&model_path);
    let stats_path = dir.path().join("stats.parquet");
    let stats_hash = write_stats(&stats_path, &fp, &stats);
    let out = dir.path().join("scores.parquet");
    let summary = score::run(&model_path, Some(&stats_path), Method::Wanda, &out, &hidden()).unwrap();
    assert_eq!(summary.modules, 14);

    let (prov, rows) = artifacts::read_scores(&out).unwrap();
    assert_eq!(prov.kind, ArtifactKind::Scores);
    assert_eq!(prov.model, fp);
    assert_eq!(prov.inputs.get("stats"), Some(&stats_hash));
    assert_eq!(prov.params["method"], "wanda");
    assert_eq!(prov.params["stats_params"], stats_params());
    // 2 layers x (q 64 + k 32 + v 32 + o 64 + gate 128 + up 128 + down 64) rows.
    assert_eq!(rows.len(), 2 * (64 + 32 + 32 + 64 + 128 + 128 + 64));
    assert_eq!(summary.rows, rows.len());

    let weights = tiny_weights(&TINY, 1);
    let checks = [
        ("model.layers.0.self_attn.q_proj", 0usize, 0usize),
        ("model.layers.0.self_attn.k_proj", 31, 63),
        ("model.layers.1.mlp.down_proj", 5, 127),
        ("model.layers.1.mlp.gate_proj", 100, 17),
        ("model.layers.1.self_attn.o_proj", 63, 40),
    ];
    for (module, r, c) in checks {
        let w = &weights[&format!("{module}.weight")];
        let cols = w.shape[1];
        let stat = stats.iter().find(|s| s.module == module).unwrap().scaler_row[c];
        let expected = w.data[r * cols + c].abs() * stat.sqrt();
        let row = rows.iter().find(|x| x.module == module && x.row as usize == r).unwrap();
        assert_eq!(row.score.len(), cols);
        assert_eq!(row.score[c].to_bits(), expected.to_bits(), "{module}[{r}, {c}]");
    }
}

#[test]
fn magnitude_scores_are_abs_weight_and_need_no_stats() {
    let dir = tempfile::tempdir().unwrap();
    let (model_path, fp) = tiny_model(dir.path(), "m", &TINY, 2);
    let out = dir.path().join("scores.parquet");
    score::run(&model_path, None, Method::Magnitude, &out, &hidden()).unwrap();
    let (prov, rows) = artifacts::read_scores(&out).unwrap();
    assert_eq!(prov.model, fp);
    assert!(prov.inputs.is_empty());
    assert_eq!(prov.params["stats_params"], serde_json::Value::Null);
    let weights = tiny_weights(&TINY, 2);
    for row in &rows {
        let w = &weights[&format!("{}.weight", row.module)];
        let cols = w.shape[1];
        let expected: Vec<f32> = w.data[row.row as usize * cols..(row.row as usize + 1) * cols].iter().map(|v| v.abs()).collect();
        assert_eq!(row.score, expected, "{} row {}", row.module, row.row);
    }
}

#[test]
fn wanda_without_stats_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (model_path, _) = tiny_model(dir.path(), "m", &TINY, 1);
    let err = score::run(&model_path, None, Method::Wanda, &dir.path().join("s.parquet"), &hidden()).unwrap_err();
    assert!(matches!(err, ScoreError::StatsRequired { .. }), "{err}");
    assert!(err.to_string().contains("--stats"), "{err}");
}

#[test]
fn stats_of_another_model_are_refused_naming_both_files_and_fingerprints() {
    let dir = tempfile::tempdir().unwrap();
    let (model_a, fp_a) = tiny_model(dir.path(), "a", &TINY, 1);
    let (model_b, fp_b) = tiny_model(dir.path(), "b", &TinyConfig { intermediate: 96, ..TINY }, 1);
    assert_ne!(fp_a, fp_b);
    let stats_path = dir.path().join("stats-b.parquet");
    write_stats(&stats_path, &fp_b, &make_stats(&model_b));
    let out = dir.path().join("s.parquet");
    let err = score::run(&model_a, Some(&stats_path), Method::Wanda, &out, &hidden()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ScoreError::ModelMismatch { .. }), "{msg}");
    for needle in [stats_path.display().to_string(), model_a.display().to_string(), fp_a, fp_b] {
        assert!(msg.contains(&needle), "`{needle}` missing from: {msg}");
    }
    assert!(!out.exists());
    // Magnitude with foreign stats is refused too: given stats are always checked.
    assert!(score::run(&model_a, Some(&stats_path), Method::Magnitude, &out, &hidden()).is_err());
}

#[test]
fn stats_missing_a_module_or_of_another_width_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (model_path, fp) = tiny_model(dir.path(), "m", &TINY, 1);
    let out = dir.path().join("s.parquet");

    let mut missing = make_stats(&model_path);
    let removed = missing.remove(3).module;
    let path = dir.path().join("missing.parquet");
    write_stats(&path, &fp, &missing);
    let err = score::run(&model_path, Some(&path), Method::Wanda, &out, &hidden()).unwrap_err();
    assert!(matches!(err, ScoreError::MissingModule { .. }) && err.to_string().contains(&removed), "{err}");

    let mut wide = make_stats(&model_path);
    wide[0].in_features = 65;
    wide[0].scaler_row.push(1.0);
    wide[0].sum_sq.push(1.0);
    let path = dir.path().join("wide.parquet");
    write_stats(&path, &fp, &wide);
    let msg = score::run(&model_path, Some(&path), Method::Wanda, &out, &hidden()).unwrap_err().to_string();
    assert!(msg.contains("in_features 65") && msg.contains("64 input columns") && msg.contains("wide.parquet"), "{msg}");

    let mut extra = make_stats(&model_path);
    let mut foreign = extra[0].clone();
    foreign.module = "model.layers.9.mlp.up_proj".into();
    extra.push(foreign);
    let path = dir.path().join("extra.parquet");
    write_stats(&path, &fp, &extra);
    let msg = score::run(&model_path, Some(&path), Method::Wanda, &out, &hidden()).unwrap_err().to_string();
    assert!(msg.contains("model.layers.9.mlp.up_proj"), "{msg}");
}

#[test]
fn a_mask_or_a_newer_schema_given_as_stats_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (model_path, fp) = tiny_model(dir.path(), "m", &TINY, 1);
    let mask_path = dir.path().join("mask.parquet");
    let rows = vec![MaskRow { module: "model.layers.0.mlp.up_proj".into(), row: 0, in_features: 8, keep: vec![0xff], values: None }];
    let info = MaskInfo { method: "wanda".into(), sparsity: 0.0, pattern: "unstructured-0.5".into(), group: "row".into() };
    artifacts::write_mask(&mask_path, &rows, &info, &Provenance::new(ArtifactKind::Mask, fp.clone(), json!({}), "test")).unwrap();
    let out = dir.path().join("s.parquet");
    let msg = score::run(&model_path, Some(&mask_path), Method::Wanda, &out, &hidden()).unwrap_err().to_string();
    assert!(msg.contains("mask.parquet") && msg.contains("expected a `stats` artifact, found a `mask` artifact"), "{msg}");

    let newer = dir.path().join("newer.parquet");
    let mut p = Provenance::new(ArtifactKind::Stats, fp, stats_params(), "test");
    p.schema_version = artifacts::SCHEMA_VERSION + 1;
    artifacts::write_stats(&newer, &make_stats(&model_path), &p).unwrap();
    let msg = score::run(&model_path, Some(&newer), Method::Wanda, &out, &hidden()).unwrap_err().to_string();
    assert!(msg.contains("newer.parquet") && msg.contains("schema version"), "{msg}");
}

#[test]
fn the_binary_scores_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (model_path, fp) = tiny_model(dir.path(), "m", &TINY, 3);
    let stats_path = dir.path().join("stats.parquet");
    write_stats(&stats_path, &fp, &make_stats(&model_path));
    let out = dir.path().join("scores.parquet");
    let run = Command::new(env!("CARGO_BIN_EXE_score"))
        .args(["--model", model_path.to_str().unwrap(), "--stats", stats_path.to_str().unwrap(), "--method", "wanda", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stdout).contains("scored 73728 weights"), "{}", String::from_utf8_lossy(&run.stdout));
    let help = Command::new(env!("CARGO_BIN_EXE_score")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in ["--model", "--stats", "--method", "--out", "--quiet"] {
        assert!(help.contains(flag), "{flag} missing from --help: {help}");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_score"))
        .args(["--model", model_path.to_str().unwrap(), "--method", "rand", "--out", "x"])
        .output()
        .unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("expected wanda, ria, sparsegpt or magnitude"));
    let sparsegpt = Command::new(env!("CARGO_BIN_EXE_score"))
        .args(["--model", model_path.to_str().unwrap(), "--method", "sparsegpt", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&sparsegpt.stderr);
    assert!(
        !sparsegpt.status.success() && stderr.contains("has no per-weight scores") && stderr.contains("mask --method sparsegpt --hessians"),
        "{stderr}"
    );
}
