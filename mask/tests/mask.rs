//! Tests of the `mask` stage and `mask apply` on tiny random Llama models and
//! hand-made scores written to a temp dir.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use artifacts::{ArtifactKind, Provenance, ScoreRow};
use indicatif::ProgressBar;
use mask::{ApplyOptions, GgufWeightType, MaskError, OutputDtype};
use model::gguf::GgmlType;
use model::safetensors::StoredDtype;
use model::StoredType;
use serde_json::json;
use sparsity::owl::SparsityProfile;
use sparsity::{Group, Method, Pattern};
use testkit::{tiny_weights, write_gguf, write_hf_dir, TinyConfig, TINY};

fn hidden() -> ProgressBar {
    ProgressBar::hidden()
}

/// A tiny f32 HF model in `dir/name`.
fn tiny_model(dir: &Path, name: &str, cfg: &TinyConfig, seed: u64) -> PathBuf {
    let path = dir.join(name);
    write_hf_dir(&path, cfg, &tiny_weights(cfg, seed), StoredDtype::F32);
    path
}

/// Magnitude scores of every linear module of a model, written as a scores artifact.
fn magnitude_scores(model_path: &Path, out: &Path, stats_params: serde_json::Value) {
    let loaded = model::load_model(model_path).unwrap();
    let mut rows = Vec::new();
    for layer in 0..loaded.config.num_layers() {
        for (module, r, c) in loaded.config.linear_modules(layer) {
            let w = loaded.weights.load(&format!("{module}.weight")).unwrap();
            let s = sparsity::scores(Method::Magnitude, &w.data, r, c, None).unwrap();
            rows.extend(s.chunks(c).enumerate().map(|(i, s)| ScoreRow { module: module.clone(), row: i as u32, score: s.to_vec() }));
        }
    }
    let p = Provenance::new(ArtifactKind::Scores, loaded.fingerprint, json!({"method": "magnitude", "stats_params": stats_params}), "test")
        .with_input("stats", "sha256:00");
    artifacts::write_scores(out, &rows, &p).unwrap();
}

fn unpacked(row: &artifacts::MaskRow) -> Vec<bool> {
    sparsity::unpack_bits(&row.keep, row.in_features as usize).unwrap()
}

#[test]
fn row_pruning_removes_exactly_floor_in_times_s_in_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = tiny_model(dir.path(), "m", &TINY, 1);
    let scores = dir.path().join("scores.parquet");
    magnitude_scores(&model_path, &scores, serde_json::Value::Null);
    let scores_hash = artifacts::content_hash(&scores).unwrap();
    for s in [0.5, 0.3, 0.77] {
        let out = dir.path().join(format!("mask-{s}.parquet"));
        let summary = mask::make_mask(&scores, Pattern::unstructured(s).unwrap(), Group::Row, &out, &hidden()).unwrap();
        assert!(summary.warning.is_none());
        let (prov, info, rows) = artifacts::read_mask(&out).unwrap();
        assert_eq!(rows.len(), 2 * (64 + 32 + 32 + 64 + 128 + 128 + 64));
        let mut pruned_total = 0usize;
        for row in &rows {
            let pruned = unpacked(row).iter().filter(|k| !**k).count();
            assert_eq!(pruned, (row.in_features as f64 * s).floor() as usize, "{} row {} at {s}", row.module, row.row);
            pruned_total += pruned;
        }
        let total: usize = rows.iter().map(|r| r.in_features as usize).sum();
        assert_eq!(info.sparsity, pruned_total as f64 / total as f64);
        assert!((summary.sparsity - info.sparsity).abs() < 1e-15);
        assert_eq!((info.method.as_str(), info.group.as_str()), ("magnitude", "row"));
        assert_eq!(info.pattern, format!("unstructured-{s}"));
        assert_eq!(prov.model, model::load_model(&model_path).unwrap().fingerprint);
        assert_eq!(prov.inputs.get("scores"), Some(&scores_hash));
        assert_eq!(prov.params["sparsity"], s);
    }
}

#[test]
fn two_four_prunes_two_of_every_four_and_layer_group_prunes_floor_of_the_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = tiny_model(dir.path(), "m", &TINY, 4);
    let scores = dir.path().join("scores.parquet");
    magnitude_scores(&model_path, &scores, serde_json::Value::Null);

    let out = dir.path().join("mask-24.parquet");
    let summary = mask::make_mask(&scores, Pattern::parse_nm("2:4").unwrap(), Group::Row, &out, &hidden()).unwrap();
    assert_eq!(summary.sparsity, 0.5);
    let (_, info, rows) = artifacts::read_mask(&out).unwrap();
    assert_eq!(info.pattern, "2:4");
    let (_, score_rows) = artifacts::read_scores(&scores).unwrap();
    for (row, srow) in rows.iter().zip(&score_rows) {
        assert_eq!((&row.module, row.row), (&srow.module, srow.row));
        let keep = unpacked(row);
        for (g, group) in keep.chunks(4).enumerate() {
            assert_eq!(group.iter().filter(|k| !**k).count(), 2, "{} row {} group {g}", row.module, row.row);
            let s = &srow.score[g * 4..g * 4 + 4];
            let max_pruned = (0..4).filter(|&i| !group[i]).map(|i| s[i]).fold(f32::MIN, f32::max);
            let min_kept = (0..4).filter(|&i| group[i]).map(|i| s[i]).fold(f32::MAX, f32::min);
            assert!(max_pruned <= min_kept, "pruned a higher score than one kept");
        }
    }

    let out = dir.path().join("mask-layer.parquet");
    mask::make_mask(&scores, Pattern::unstructured(0.5).unwrap(), Group::Layer, &out, &hidden()).unwrap();
    let (_, info, rows) = artifacts::read_mask(&out).unwrap();
    assert_eq!(info.group, "layer");
    let mut per_module = std::collections::BTreeMap::<String, (usize, usize)>::new();
    for row in &rows {
        let e = per_module.entry(row.module.clone()).or_default();
        e.0 += unpacked(row).iter().filter(|k| !**k).count();
        e.1 += row.in_features as usize;
    }
    for (module, (pruned, total)) in per_module {
        assert_eq!(pruned, total / 2, "{module}");
    }

    let err = mask::make_mask(&scores, Pattern::parse_nm("2:4").unwrap(), Group::Layer, &out, &hidden()).unwrap_err();
    assert!(matches!(err, MaskError::Options(_)), "{err}");
}

#[test]
fn ties_prune_the_lower_column_first_on_a_hand_made_scores_file() {
    let dir = tempfile::tempdir().unwrap();
    let scores = dir.path().join("scores.parquet");
    let module = "model.layers.0.mlp.down_proj".to_string();
    let rows = vec![
        // Row order in the file does not matter; rows are matched by index.
        ScoreRow { module: module.clone(), row: 1, score: vec![2.0, 3.0, 2.0, 2.0, 1.0, 5.0, 2.0, 5.0, 2.0, 9.0] },
        ScoreRow { module: module.clone(), row: 0, score: vec![1.0; 10] },
    ];
    let p = Provenance::new(ArtifactKind::Scores, "fp", json!({"method": "wanda"}), "test");
    artifacts::write_scores(&scores, &rows, &p).unwrap();
    let out = dir.path().join("mask.parquet");
    mask::make_mask(&scores, Pattern::unstructured(0.5).unwrap(), Group::Row, &out, &hidden()).unwrap();
    let (prov, info, rows) = artifacts::read_mask(&out).unwrap();
    assert_eq!(prov.model, "fp");
    assert_eq!(info.method, "wanda");
    assert_eq!((rows[0].row, rows[1].row), (0, 1));
    // Row 0: all equal, the five lowest columns go.
    assert_eq!(unpacked(&rows[0]), [false, false, false, false, false, true, true, true, true, true]);
    assert_eq!(rows[0].keep, vec![0b1110_0000, 0b0000_0011]);
    // Row 1: 1.0 (col 4), then four of the five 2.0s in column order (0, 2, 3, 6); col 8 kept.
    assert_eq!(unpacked(&rows[1]), [false, true, false, false, false, true, false, true, true, true]);

    let out = dir.path().join("mask-25.parquet");
    mask::make_mask(&scores, Pattern::parse_nm("2:5").unwrap(), Group::Row, &out, &hidden()).unwrap();
    let (_, _, rows) = artifacts::read_mask(&out).unwrap();
    assert_eq!(unpacked(&rows[0]), [false, false, true, true, true, false, false, true, true, true]);
    assert_eq!(unpacked(&rows[1]), [false, true, true, true, false, true, false, true, false, true]);
}

#[test]
fn scores_with_gaps_or_of_the_wrong_kind_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let scores = dir.path().join("gappy.parquet");
    let module = "model.layers.0.mlp.up_proj".to_string();
    let rows = vec![ScoreRow { module: module.clone(), row: 0, score: vec![1.0; 4] }, ScoreRow { module, row: 2, score: vec![1.0; 4] }];
    artifacts::write_scores(&scores, &rows, &Provenance::new(ArtifactKind::Scores, "fp", json!({}), "test")).unwrap();
    let out = dir.path().join("mask.parquet");
    let msg = mask::make_mask(&scores, Pattern::unstructured(0.5).unwrap(), Group::Row, &out, &hidden()).unwrap_err().to_string();
    assert!(msg.contains("gappy.parquet") && msg.contains("row 1 missing"), "{msg}");

    let mask_path = dir.path().join("a-mask.parquet");
    let model_path = tiny_model(dir.path(), "m", &TINY, 1);
    let good = dir.path().join("scores.parquet");
    magnitude_scores(&model_path, &good, serde_json::Value::Null);
    mask::make_mask(&good, Pattern::unstructured(0.5).unwrap(), Group::Row, &mask_path, &hidden()).unwrap();
    let msg = mask::make_mask(&mask_path, Pattern::unstructured(0.5).unwrap(), Group::Row, &out, &hidden()).unwrap_err().to_string();
    assert!(msg.contains("a-mask.parquet") && msg.contains("expected a `scores` artifact, found a `mask` artifact"), "{msg}");
    assert!(!out.exists());
}

#[test]
fn masks_differing_from_sequential_calibration_warn() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = tiny_model(dir.path(), "m", &TINY, 1);
    let scores = dir.path().join("scores.parquet");
    let seq = json!({"method": "magnitude", "pattern": "unstructured-0.5", "sparsity": 0.5, "nm": null, "group": "row", "oneshot": false});
    magnitude_scores(&model_path, &scores, seq);
    let out = dir.path().join("mask.parquet");
    let same = mask::make_mask(&scores, Pattern::unstructured(0.5).unwrap(), Group::Row, &out, &hidden()).unwrap();
    assert!(same.warning.is_none(), "{:?}", same.warning);
    let other = mask::make_mask(&scores, Pattern::parse_nm("2:4").unwrap(), Group::Row, &out, &hidden()).unwrap();
    let w = other.warning.expect("a warning for another pattern");
    assert!(w.contains("unstructured-0.5") && w.contains("2:4") && w.contains("scores.parquet"), "{w}");
    let layer = mask::make_mask(&scores, Pattern::unstructured(0.5).unwrap(), Group::Layer, &out, &hidden()).unwrap();
    assert!(layer.warning.is_some());

    let oneshot = json!({"method": "magnitude", "pattern": "unstructured-0.5", "group": "row", "oneshot": true});
    magnitude_scores(&model_path, &scores, oneshot);
    let ok = mask::make_mask(&scores, Pattern::parse_nm("2:4").unwrap(), Group::Row, &out, &hidden()).unwrap();
    assert!(ok.warning.is_none());
}

fn apply_opts(model: &Path, mask: &Path, out: &Path, dtype: OutputDtype, force: bool) -> ApplyOptions {
    ApplyOptions {
        model: model.to_path_buf(),
        mask: mask.to_path_buf(),
        out: out.to_path_buf(),
        dtype: Some(dtype),
        gguf: None,
        sparse: false,
        force,
    }
}

/// Names in `dir` starting with a dot: leftovers of an atomic write.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with('.')).collect()
}

#[test]
fn apply_writes_a_hf_dir_with_exact_zeros_and_untouched_weights() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = tiny_model(dir.path(), "m", &TINY, 5);
    let input = model::load_model(&model_path).unwrap();
    let scores = dir.path().join("scores.parquet");
    magnitude_scores(&model_path, &scores, serde_json::Value::Null);
    let mask_path = dir.path().join("mask.parquet");
    mask::make_mask(&scores, Pattern::unstructured(0.5).unwrap(), Group::Row, &mask_path, &hidden()).unwrap();
    let (_, _, rows) = artifacts::read_mask(&mask_path).unwrap();

    let out = dir.path().join("pruned");
    let summary = mask::apply(&apply_opts(&model_path, &mask_path, &out, OutputDtype::F32, false), &hidden()).unwrap();
    assert_eq!(summary.modules, 14);
    assert_eq!(summary.total, 73728);
    assert_eq!(summary.masked, 73728 / 2);
    assert_eq!(summary.zeros, 73728 / 2);
    for f in ["config.json", "generation_config.json", "model.safetensors"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "float32");
    assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));

    let output = model::load_model(&out).unwrap();
    assert_eq!(output.fingerprint, input.fingerprint);
    let (input_weights, output_weights) = (input.weights.load_all().unwrap(), output.weights.load_all().unwrap());
    let mut masked = std::collections::BTreeSet::new();
    for row in &rows {
        let name = format!("{}.weight", row.module);
        masked.insert(name.clone());
        let cols = row.in_features as usize;
        let r = row.row as usize;
        let a = &input_weights.get(&name).unwrap().data[r * cols..(r + 1) * cols];
        let b = &output_weights.get(&name).unwrap().data[r * cols..(r + 1) * cols];
        for (c, keep) in unpacked(row).into_iter().enumerate() {
            if keep {
                assert_eq!(a[c].to_bits(), b[c].to_bits(), "{name}[{r}, {c}] changed");
            } else {
                assert_eq!(b[c].to_bits(), 0, "{name}[{r}, {c}] not +0.0");
            }
        }
    }
    for (name, t) in input_weights.iter() {
        let o = output_weights.get(name).unwrap();
        assert_eq!(o.shape, t.shape);
        if !masked.contains(name) {
            assert!(o.data.iter().zip(&t.data).all(|(x, y)| x.to_bits() == y.to_bits()), "{name} changed");
        }
    }
    assert_eq!(output.weights.len(), input.weights.len());

    for (dtype, name) in [(OutputDtype::F16, "float16"), (OutputDtype::Bf16, "bfloat16")] {
        let out = dir.path().join(format!("pruned-{name}"));
        mask::apply(&apply_opts(&model_path, &mask_path, &out, dtype, false), &hidden()).unwrap();
        let loaded = model::load_model(&out).unwrap();
        assert_eq!(loaded.fingerprint, input.fingerprint);
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["torch_dtype"], name);
        for row in &rows {
            let w = &loaded.weights.load(&format!("{}.weight", row.module)).unwrap().data;
            let cols = row.in_features as usize;
            for (c, keep) in unpacked(row).into_iter().enumerate() {
                if !keep {
                    assert_eq!(w[row.row as usize * cols + c], 0.0);
                }
            }
        }
    }
}

#[test]
fn apply_reads_gguf_and_writes_hf_names_and_order() {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_weights(&TINY, 6);
    let gguf = dir.path().join("tiny.gguf");
    write_gguf(&gguf, &TINY, &weights, GgmlType::F32);
    let scores = dir.path().join("scores.parquet");
    magnitude_scores(&gguf, &scores, serde_json::Value::Null);
    let mask_path = dir.path().join("mask.parquet");
    mask::make_mask(&scores, Pattern::parse_nm("2:4").unwrap(), Group::Row, &mask_path, &hidden()).unwrap();
    let out = dir.path().join("pruned");
    mask::apply(&apply_opts(&gguf, &mask_path, &out, OutputDtype::F32, false), &hidden()).unwrap();
    let input = model::load_model(&gguf).unwrap();
    let output = model::load_model(&out).unwrap();
    assert_eq!(output.fingerprint, input.fingerprint);
    // q_proj rows are in HF order: kept values equal the original HF weights.
    let q = "model.layers.1.self_attn.q_proj.weight";
    let (orig, pruned) = (&weights[q].data, &output.weights.load(q).unwrap().data);
    assert!(orig.iter().zip(pruned.iter()).all(|(a, b)| *b == 0.0 || a.to_bits() == b.to_bits()));
    assert_eq!(pruned.iter().filter(|v| **v == 0.0).count(), orig.len() / 2);
}

#[test]
fn a_gguf_export_holds_the_masked_weights_in_llama_cpp_s_order_and_everything_else_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_weights(&TINY, 12);
    // Q8_0 source: the masked linears are decoded, zeroed and re-encoded; the rest is copied.
    let gguf = dir.path().join("tiny.gguf");
    write_gguf(&gguf, &TINY, &weights, GgmlType::Q8_0);
    let scores = dir.path().join("scores.parquet");
    magnitude_scores(&gguf, &scores, serde_json::Value::Null);
    let mask_path = dir.path().join("mask.parquet");
    mask::make_mask(&scores, Pattern::unstructured(0.5).unwrap(), Group::Row, &mask_path, &hidden()).unwrap();
    let source_model = model::load_model(&gguf).unwrap();
    let mut masked = source_model.weights.load_all().unwrap();
    for row in &artifacts::read_mask(&mask_path).unwrap().2 {
        let cols = row.in_features as usize;
        let weight = masked.get_mut(&format!("{}.weight", row.module)).unwrap();
        for (value, keep) in weight.data[row.row as usize * cols..][..cols].iter_mut().zip(unpacked(row)) {
            if !keep {
                *value = 0.0;
            }
        }
    }
    for ty in [GgufWeightType::F32, GgufWeightType::F16] {
        let out = dir.path().join(format!("pruned-{ty:?}.gguf"));
        let opts = ApplyOptions { gguf: Some(ty), ..apply_opts(&gguf, &mask_path, &out, OutputDtype::F32, false) };
        let summary = mask::apply(&opts, &hidden()).unwrap();
        assert_eq!(summary.masked * 2, summary.total);
        let (source, written) = (model::gguf::GgufFile::open(&gguf).unwrap(), model::gguf::GgufFile::open(&out).unwrap());
        // The source's metadata (tokenizer included), and the mask's hash.
        for (key, value) in source.metadata().iter().filter(|(k, _)| *k != "general.file_type") {
            assert_eq!(written.get(key), Some(value), "{key}");
        }
        let file_type = if ty == GgufWeightType::F32 { 0 } else { 1 };
        assert_eq!(written.get("general.file_type").and_then(|v| v.as_u64()), Some(file_type));
        assert_eq!(written.get("subprune.mask").and_then(|v| v.as_str()), Some(artifacts::content_hash(&mask_path).unwrap().as_str()));
        let reloaded = model::load_model(&out).unwrap();
        assert_eq!(reloaded.fingerprint, source_model.fingerprint);
        for (info, info_out) in source.tensors().iter().zip(written.tensors()) {
            assert_eq!(info.name, info_out.name);
            let hf = reloaded.weights.parts_of(&info.name);
            let pruned = hf.iter().any(|p| p.name.contains("_proj"));
            if !pruned {
                assert_eq!(source.tensor_bytes(&info.name).unwrap(), written.tensor_bytes(&info.name).unwrap(), "{}", info.name);
                continue;
            }
            // Read back through the loader (which undoes llama.cpp's q/k order): the masked weights, exactly in f32.
            for part in hf {
                let (want, got) = (masked.get(&part.name).unwrap().data.clone(), reloaded.weights.load(&part.name).unwrap().data);
                match ty {
                    GgufWeightType::F32 => assert_eq!(want, got, "{}", part.name),
                    _ => assert!(
                        want.iter().zip(&got).all(|(a, b)| (*a == 0.0) == (*b == 0.0) && (a - b).abs() <= 1e-3 * a.abs().max(1e-3)),
                        "{}",
                        part.name
                    ),
                }
            }
        }
    }
    // A Hugging Face source has no GGUF metadata to carry over.
    let hf = tiny_model(dir.path(), "hf", &TINY, 3);
    let hf_scores = dir.path().join("hf-scores.parquet");
    magnitude_scores(&hf, &hf_scores, serde_json::Value::Null);
    let hf_mask = dir.path().join("hf-mask.parquet");
    mask::make_mask(&hf_scores, Pattern::unstructured(0.5).unwrap(), Group::Row, &hf_mask, &hidden()).unwrap();
    let out = dir.path().join("hf.gguf");
    let opts = ApplyOptions { gguf: Some(GgufWeightType::F16), ..apply_opts(&hf, &hf_mask, &out, OutputDtype::F32, false) };
    let err = mask::apply(&opts, &hidden()).unwrap_err().to_string();
    assert!(err.contains("is not a GGUF file") && err.contains("--format hf"), "{err}");
    assert!(!out.exists(), "nothing is left behind");
}

#[test]
fn apply_refuses_a_foreign_mask_a_wrong_kind_and_a_non_empty_output() {
    let dir = tempfile::tempdir().unwrap();
    let model_a = tiny_model(dir.path(), "a", &TINY, 1);
    let model_b = tiny_model(dir.path(), "b", &TinyConfig { layers: 3, ..TINY }, 1);
    let scores_b = dir.path().join("scores-b.parquet");
    magnitude_scores(&model_b, &scores_b, serde_json::Value::Null);
    let mask_b = dir.path().join("mask-b.parquet");
    mask::make_mask(&scores_b, Pattern::unstructured(0.5).unwrap(), Group::Row, &mask_b, &hidden()).unwrap();
    let out = dir.path().join("pruned");

    let err = mask::apply(&apply_opts(&model_a, &mask_b, &out, OutputDtype::F32, false), &hidden()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, MaskError::ModelMismatch { .. }), "{msg}");
    let fp_a = model::load_model(&model_a).unwrap().fingerprint;
    let fp_b = model::load_model(&model_b).unwrap().fingerprint;
    for needle in [mask_b.display().to_string(), model_a.display().to_string(), fp_a, fp_b] {
        assert!(msg.contains(&needle), "`{needle}` missing from: {msg}");
    }
    assert!(!out.exists());
    assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));

    let msg = mask::apply(&apply_opts(&model_b, &scores_b, &out, OutputDtype::F32, false), &hidden()).unwrap_err().to_string();
    assert!(msg.contains("scores-b.parquet") && msg.contains("expected a `mask` artifact, found a `scores` artifact"), "{msg}");

    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep-me.txt"), "x").unwrap();
    let err = mask::apply(&apply_opts(&model_b, &mask_b, &out, OutputDtype::F32, false), &hidden()).unwrap_err();
    assert!(matches!(err, MaskError::OutputExists(_)) && err.to_string().contains("--force"), "{err}");
    assert!(out.join("keep-me.txt").exists());
    mask::apply(&apply_opts(&model_b, &mask_b, &out, OutputDtype::F32, true), &hidden()).unwrap();
    assert!(!out.join("keep-me.txt").exists());
    assert!(model::load_model(&out).is_ok());
    assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));

    // An empty existing directory is fine without --force.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    mask::apply(&apply_opts(&model_b, &mask_b, &empty, OutputDtype::F32, false), &hidden()).unwrap();
}

#[test]
fn the_binary_makes_and_applies_masks() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = tiny_model(dir.path(), "m", &TINY, 8);
    let scores = dir.path().join("scores.parquet");
    magnitude_scores(&model_path, &scores, serde_json::Value::Null);
    let mask_path = dir.path().join("mask.parquet");
    let bin = env!("CARGO_BIN_EXE_mask");
    let run = Command::new(bin).arg("--scores").arg(&scores).args(["--sparsity", "0.5", "--out"]).arg(&mask_path).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "sparsity: 0.500000");
    assert!(stderr.contains("layer 0: pruned 0.5000") && stderr.contains("layer 1: pruned 0.5000"), "{stderr}");

    let out = dir.path().join("pruned");
    let run = Command::new(bin)
        .args(["apply", "--model"])
        .arg(&model_path)
        .arg("--mask")
        .arg(&mask_path)
        .arg("--out")
        .arg(&out)
        .args(["--dtype", "bf16"])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(
        String::from_utf8_lossy(&run.stdout).contains("36864 of 73728 weights zero, sparsity 0.500000"),
        "{}",
        String::from_utf8_lossy(&run.stdout)
    );

    let none = Command::new(bin).arg("--scores").arg(&scores).arg("--out").arg(&mask_path).output().unwrap();
    assert!(!none.status.success());
    let both = Command::new(bin)
        .arg("--scores")
        .arg(&scores)
        .args(["--sparsity", "0.5", "--nm", "2:4", "--out"])
        .arg(&mask_path)
        .output()
        .unwrap();
    assert!(!both.status.success());
    for args in [vec!["--help"], vec!["apply", "--help"]] {
        let help = Command::new(bin).args(&args).output().unwrap();
        assert!(help.status.success());
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(text.contains("--out") && text.contains("--quiet"), "{text}");
    }
}

/// Perplexity of `loaded` on `windows` of equal length, from the logits of
/// one forward pass on the cpu device: exp of the mean negative
/// log-likelihood (in f64) of every token after the first of each window.
fn perplexity(network: &model::Decoder, windows: &[Vec<u32>]) -> f64 {
    let logits: Vec<f32> = network.forward(windows).unwrap().into_data().try_into_vec().unwrap();
    let vocab = network.spec().vocab_size;
    let (mut total, mut count) = (0.0f64, 0usize);
    for (window, rows) in windows.iter().zip(logits.chunks_exact(windows[0].len() * vocab)) {
        for (i, row) in rows.chunks_exact(vocab).take(window.len() - 1).enumerate() {
            let max = row.iter().map(|&v| f64::from(v)).fold(f64::NEG_INFINITY, f64::max);
            let log_sum = max + row.iter().map(|&v| (f64::from(v) - max).exp()).sum::<f64>().ln();
            total += log_sum - f64::from(row[window[i + 1] as usize]);
            count += 1;
        }
    }
    (total / count as f64).exp()
}

/// The model of `model_path` with the weights `mask_path` prunes set to zero
/// in memory, bit by bit from the unpacked rows: independent of
/// `sparsity::apply_packed_rows`, which `mask apply` itself uses, so a fault
/// there shows as a difference too.
fn masked_in_memory(model_path: &Path, mask_path: &Path) -> model::Decoder {
    let loaded = model::load_model(model_path).unwrap();
    let mut weights = loaded.weights.load_all().unwrap();
    let (_, _, rows) = artifacts::read_mask(mask_path).unwrap();
    for row in &rows {
        let cols = row.in_features as usize;
        let weight = weights.get_mut(&format!("{}.weight", row.module)).unwrap();
        for (value, keep) in weight.data[row.row as usize * cols..][..cols].iter_mut().zip(unpacked(row)) {
            if !keep {
                *value = 0.0;
            }
        }
    }
    let device = model::select_device(model::DeviceChoice::Cpu).unwrap().device;
    model::Decoder::from_weights(loaded.config.spec(), &weights, &device).unwrap()
}

#[test]
fn applied_models_reload_with_the_perplexity_of_the_mask_applied_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = testkit::Rng::new(17);
    let vocab = TINY.vocab as f32;
    let windows: Vec<Vec<u32>> = (0..3).map(|_| (0..12).map(|_| ((rng.next_f32() + 1.0) / 2.0 * (vocab - 1.0)) as u32).collect()).collect();
    // A Hugging Face input pruned 50% per row, and a GGUF input (whose q and
    // k rows the loader puts back in Hugging Face order) pruned 2:4.
    let gguf = dir.path().join("tiny.gguf");
    write_gguf(&gguf, &TINY, &tiny_weights(&TINY, 9), GgmlType::F32);
    let inputs = [(tiny_model(dir.path(), "hf", &TINY, 4), Pattern::unstructured(0.5).unwrap()), (gguf, Pattern::parse_nm("2:4").unwrap())];
    for (index, (model_path, pattern)) in inputs.iter().enumerate() {
        let scores = dir.path().join(format!("scores-{index}.parquet"));
        magnitude_scores(model_path, &scores, serde_json::Value::Null);
        let mask_path = dir.path().join(format!("mask-{index}.parquet"));
        mask::make_mask(&scores, *pattern, Group::Row, &mask_path, &hidden()).unwrap();
        let out = dir.path().join(format!("pruned-{index}"));
        mask::apply(&apply_opts(model_path, &mask_path, &out, OutputDtype::F32, false), &hidden()).unwrap();

        let build =
            |path: &Path| model::load_model(path).unwrap().build(&model::select_device(model::DeviceChoice::Cpu).unwrap().device).unwrap();
        let dense = perplexity(&build(model_path), &windows);
        let in_memory = perplexity(&masked_in_memory(model_path, &mask_path), &windows);
        let reloaded = perplexity(&build(&out), &windows);
        assert!(in_memory.is_finite() && in_memory > 1.0, "{}: perplexity {in_memory}", pattern);
        // The mask changes the model, so equal perplexities say something.
        assert!((in_memory / dense - 1.0).abs() > 1e-4, "{}: masked {in_memory} vs dense {dense}", pattern);
        assert_eq!(reloaded.to_bits(), in_memory.to_bits(), "{}: reloaded {reloaded} vs in memory {in_memory}", pattern);
    }
}

/// Greedy-decoding logits of the model at `path` kept in its stored form: a
/// prompt (the many-row path) and then single tokens (the few-row kernels).
fn stored_cached_logits(path: &Path, prompt: &[u32], next: &[u32]) -> Vec<Vec<f32>> {
    let device = model::select_device(model::DeviceChoice::Cpu).unwrap().device;
    let decoder = model::load_model(path).unwrap().build_stored(&device).unwrap();
    let mut cache = decoder.new_cache(1);
    let mut out = vec![decoder.forward_cached(&[prompt.to_vec()], &mut cache).unwrap().into_data().try_into_vec::<f32>().unwrap()];
    for &t in next {
        out.push(decoder.forward_cached(&[vec![t]], &mut cache).unwrap().into_data().try_into_vec::<f32>().unwrap());
    }
    out
}

#[test]
fn a_sparse_directory_gives_back_the_mask_and_the_values_and_runs_as_the_dense_one_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = tiny_model(dir.path(), "hf", &TINY, 12);
    let scores = dir.path().join("scores.parquet");
    magnitude_scores(&model_path, &scores, serde_json::Value::Null);
    let mask_path = dir.path().join("mask.parquet");
    mask::make_mask(&scores, Pattern::unstructured(0.5).unwrap(), Group::Row, &mask_path, &hidden()).unwrap();
    let (_, _, rows) = artifacts::read_mask(&mask_path).unwrap();
    let mut keep: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for r in &rows {
        keep.entry(format!("{}.weight", r.module)).or_default().extend_from_slice(&r.keep);
    }
    let windows: Vec<Vec<u32>> = vec![(0..12).map(|i| (i * 7 + 3) % TINY.vocab as u32).collect()];
    let build =
        |path: &Path| model::load_model(path).unwrap().build(&model::select_device(model::DeviceChoice::Cpu).unwrap().device).unwrap();
    for dtype in [OutputDtype::F32, OutputDtype::F16] {
        let dense_dir = dir.path().join(format!("dense-{dtype:?}"));
        let sparse_dir = dir.path().join(format!("sparse-{dtype:?}"));
        mask::apply(&apply_opts(&model_path, &mask_path, &dense_dir, dtype, false), &hidden()).unwrap();
        mask::apply(&ApplyOptions { sparse: true, ..apply_opts(&model_path, &mask_path, &sparse_dir, dtype, false) }, &hidden()).unwrap();
        let (dense, sparse) = (model::load_model(&dense_dir).unwrap(), model::load_model(&sparse_dir).unwrap());
        assert_eq!(dense.fingerprint, sparse.fingerprint, "the same model, stored another way");
        for name in dense.weights.names() {
            let (a, b) = (dense.weights.load(name).unwrap(), sparse.weights.load(name).unwrap());
            assert_eq!(a.shape, b.shape, "{name}");
            assert!(a.data.iter().zip(&b.data).all(|(x, y)| x.to_bits() == y.to_bits()), "{dtype:?} {name}: values differ");
            let stored_keep = sparse.weights.stored_keep_bits(name).unwrap();
            assert_eq!(stored_keep.as_ref(), keep.get(name), "{dtype:?} {name}: the keep bits are the mask's");
            let expected_type =
                if keep.contains_key(name) { StoredType::Sparse(dtype.stored()) } else { StoredType::Float(dtype.stored()) };
            assert_eq!(sparse.weights.stored_type(name), Some(expected_type), "{name}");
        }
        let size = |d: &Path| std::fs::metadata(d.join("model.safetensors")).unwrap().len();
        assert!(size(&sparse_dir) < size(&dense_dir), "{dtype:?}: sparse {} bytes vs dense {}", size(&sparse_dir), size(&dense_dir));
        let (a, b) = (perplexity(&build(&dense_dir), &windows), perplexity(&build(&sparse_dir), &windows));
        assert_eq!(a.to_bits(), b.to_bits(), "{dtype:?}: perplexity {a} vs {b}");
        let (a, b) = (
            stored_cached_logits(&dense_dir, &windows[0][..7], &windows[0][7..]),
            stored_cached_logits(&sparse_dir, &windows[0][..7], &windows[0][7..]),
        );
        for (step, (a, b)) in a.iter().zip(&b).enumerate() {
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "{dtype:?}: decoding step {step} differs");
        }
    }
}

/// Statistics of every linear module of a model (random positive scaler
/// rows), written as a stats artifact of that model.
fn random_stats(model_path: &Path, out: &Path, seed: u64) {
    random_stats_with(model_path, out, seed, json!({"oneshot": true}));
}

/// [`random_stats`] with the given provenance params.
fn random_stats_with(model_path: &Path, out: &Path, seed: u64, params: serde_json::Value) {
    let loaded = model::load_model(model_path).unwrap();
    let mut rng = testkit::Rng::new(seed);
    let mut stats = Vec::new();
    for layer in 0..loaded.config.num_layers() {
        for (module, _, cols) in loaded.config.linear_modules(layer) {
            let scaler_row: Vec<f32> = (0..cols).map(|_| rng.next_f32().abs() + 0.01).collect();
            stats.push(artifacts::ModuleStats {
                layer: layer as u32,
                module,
                in_features: cols as u32,
                n_tokens: 10,
                n_samples: 2,
                sum_sq: scaler_row.iter().map(|v| v * 2.0).collect(),
                scaler_row,
            });
        }
    }
    artifacts::write_stats(out, &stats, &Provenance::new(ArtifactKind::Stats, loaded.fingerprint, params, "test")).unwrap();
}

#[test]
fn an_owl_mask_prunes_each_layer_at_the_sparsity_its_statistics_record() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = tiny_model(dir.path(), "m", &TINY, 41);
    let stats = dir.path().join("owl-stats.parquet");
    random_stats_with(&model_path, &stats, 42, json!({"oneshot": false, "sparsity": 0.5, "layer_sparsities": [0.375, 0.625]}));
    let out = dir.path().join("owl.parquet");
    let owl = (Pattern::unstructured(0.5).unwrap(), SparsityProfile::owl());
    let summary = mask::make_mask_from_stats(&model_path, &stats, Method::Wanda, owl, Group::Row, &out, &hidden()).unwrap();
    for (layer, pruned, total) in mask::per_layer(&summary.modules) {
        let want = [0.375, 0.625][layer.unwrap() as usize];
        assert_eq!(pruned as f64 / total as f64, want, "layer {layer:?}");
    }
    // Statistics without OWL sparsities, or for another target, are refused.
    let plain = dir.path().join("plain.parquet");
    random_stats(&model_path, &plain, 43);
    let err = mask::make_mask_from_stats(&model_path, &plain, Method::Wanda, owl, Group::Row, &out, &hidden()).unwrap_err().to_string();
    assert!(err.contains("--sparsity-profile owl"), "{err}");
    let other = (Pattern::unstructured(0.7).unwrap(), SparsityProfile::owl());
    let err = mask::make_mask_from_stats(&model_path, &stats, Method::Wanda, other, Group::Row, &out, &hidden()).unwrap_err().to_string();
    assert!(err.contains("average 0.5000") && err.contains("--sparsity 0.7"), "{err}");
}

#[test]
fn a_mask_from_statistics_equals_the_mask_from_their_scores() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = tiny_model(dir.path(), "m", &TINY, 31);
    let stats = dir.path().join("stats.parquet");
    random_stats(&model_path, &stats, 32);
    // The scores `score` would write, computed here from the artifact and the weights.
    let loaded = model::load_model(&model_path).unwrap();
    let (stats_provenance, module_stats) = artifacts::read_stats(&stats).unwrap();
    let mut rows = Vec::new();
    for s in &module_stats {
        let w = loaded.weights.load(&format!("{}.weight", s.module)).unwrap();
        let (r, c) = (w.shape[0], w.shape[1]);
        let scores = sparsity::scores(Method::Wanda, &w.data, r, c, Some(&s.scaler_row)).unwrap();
        rows.extend(scores.chunks(c).enumerate().map(|(i, v)| ScoreRow { module: s.module.clone(), row: i as u32, score: v.to_vec() }));
    }
    let scores = dir.path().join("scores.parquet");
    let params = json!({"method": "wanda", "stats_params": stats_provenance.params});
    artifacts::write_scores(&scores, &rows, &Provenance::new(ArtifactKind::Scores, loaded.fingerprint.clone(), params, "test")).unwrap();
    for pattern in [Pattern::unstructured(0.5).unwrap(), Pattern::parse_nm("2:4").unwrap()] {
        let (from_scores, from_stats) = (dir.path().join("a.parquet"), dir.path().join("b.parquet"));
        let a = mask::make_mask(&scores, pattern, Group::Row, &from_scores, &hidden()).unwrap();
        let b = mask::make_mask_from_stats(
            &model_path,
            &stats,
            Method::Wanda,
            (pattern, SparsityProfile::Uniform),
            Group::Row,
            &from_stats,
            &hidden(),
        )
        .unwrap();
        assert_eq!(a.modules, b.modules, "{}", pattern);
        let (pa, _, ra) = artifacts::read_mask(&from_scores).unwrap();
        let (pb, _, rb) = artifacts::read_mask(&from_stats).unwrap();
        assert_eq!(ra, rb, "{}", pattern);
        assert_eq!(pa.params, pb.params, "the same params, whichever path made the mask");
        assert_eq!(pb.inputs.get("stats").map(String::as_str), Some(artifacts::content_hash(&stats).unwrap().as_str()));
    }
    // Statistics of another model (one layer fewer) are refused.
    let other = tiny_model(dir.path(), "other", &TinyConfig { layers: 1, ..TINY }, 33);
    let other_stats = dir.path().join("other-stats.parquet");
    random_stats(&other, &other_stats, 34);
    let err = mask::make_mask_from_stats(
        &model_path,
        &other_stats,
        Method::Wanda,
        (Pattern::unstructured(0.5).unwrap(), SparsityProfile::Uniform),
        Group::Row,
        &dir.path().join("c.parquet"),
        &hidden(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("statistics and weights must be of one model"), "{err}");
}

#[test]
fn apply_streams_into_shards_and_keeps_a_bf16_source_bf16() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bf16");
    write_hf_dir(&path, &TINY, &tiny_weights(&TINY, 35), StoredDtype::BF16);
    let scores = dir.path().join("scores.parquet");
    magnitude_scores(&path, &scores, serde_json::Value::Null);
    let mask_path = dir.path().join("mask.parquet");
    mask::make_mask(&scores, Pattern::unstructured(0.5).unwrap(), Group::Row, &mask_path, &hidden()).unwrap();
    let loaded = model::load_model(&path).unwrap();
    let (provenance, _, rows) = artifacts::read_mask(&mask_path).unwrap();
    let masks = mask::check_mask(&loaded, &mask_path, &provenance, rows.clone()).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // Shards of at most 40 KB: the tiny model's 0.3 MB of bf16 weights take several.
    let summary = mask::write_hf_dir(&loaded, &masks, &mask_path, &out, None, false, 40_000, &hidden()).unwrap();
    assert_eq!(summary.masked * 2, summary.total);
    let shards =
        std::fs::read_dir(&out).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("model-")).count();
    assert!(shards > 2, "{shards} shards");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    let pruned = model::load_model(&out).unwrap();
    assert_eq!(pruned.fingerprint, loaded.fingerprint);
    for name in loaded.weights.names() {
        assert_eq!(pruned.weights.stored_type(name), Some(model::StoredType::Float(StoredDtype::BF16)), "{name}");
        let (before, after) = (loaded.weights.load(name).unwrap(), pruned.weights.load(name).unwrap());
        let module = name.strip_suffix(".weight").unwrap_or(name);
        match masks.get(module) {
            None => assert_eq!(before.data, after.data, "{name} unchanged"),
            Some(rows) => {
                let cols = rows[0].in_features as usize;
                for (i, (b, a)) in before.data.iter().zip(&after.data).enumerate() {
                    let (r, j) = (i / cols, i % cols);
                    let kept = rows[r].keep[j / 8] >> (j % 8) & 1 == 1;
                    assert_eq!(*a, if kept { *b } else { 0.0 }, "{name}[{i}]");
                }
            }
        }
    }
}

/// A Hessians artifact of a model: for every linear module, `2/N XᵀX` of
/// random inputs X (40 tokens, 4 sequences), with the SparseGPT params
/// `calibrate` records.
fn random_hessians(model_path: &Path, out: &Path, seed: u64) {
    let loaded = model::load_model(model_path).unwrap();
    let mut rng = testkit::Rng::new(seed);
    let mut rows = Vec::new();
    for layer in 0..loaded.config.num_layers() {
        for (module, _, n) in loaded.config.linear_modules(layer) {
            let x: Vec<f64> = (0..40 * n).map(|_| f64::from(rng.next_f32())).collect();
            let mut h = vec![0.0f64; n * n];
            for t in x.chunks_exact(n) {
                for i in 0..n {
                    for j in 0..n {
                        h[i * n + j] += 2.0 / 4.0 * t[i] * t[j];
                    }
                }
            }
            let upper = artifacts::InputHessian::upper_of(&h, n);
            rows.push(Ok::<_, artifacts::ArtifactError>(artifacts::InputHessian {
                layer: layer as u32,
                modules: vec![module],
                in_features: n as u32,
                n_samples: 4,
                n_tokens: 40,
                upper,
            }));
        }
    }
    let params = json!({"method": "sparsegpt", "pattern": "2:4", "oneshot": true, "blocksize": 16, "percdamp": 0.01});
    artifacts::write_hessians(out, rows, &Provenance::new(ArtifactKind::Hessians, loaded.fingerprint, params, "test")).unwrap();
}

/// `tr(D H Dᵀ)` for D = `a` - `b` ([rows, n]): the output error on the Hessian's inputs.
fn output_error(a: &[f32], b: &[f32], h: &[f64], n: usize) -> f64 {
    a.chunks_exact(n)
        .zip(b.chunks_exact(n))
        .map(|(x, y)| {
            let d: Vec<f64> = x.iter().zip(y).map(|(p, q)| f64::from(*p) - f64::from(*q)).collect();
            (0..n).map(|i| (0..n).map(|j| d[i] * h[i * n + j] * d[j]).sum::<f64>()).sum::<f64>()
        })
        .sum()
}

#[test]
fn sparsegpt_masks_carry_updated_weights_that_lower_the_output_error() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = tiny_model(dir.path(), "m", &TINY, 21);
    let hessians = dir.path().join("hessians.parquet");
    random_hessians(&model_path, &hessians, 3);
    let out = dir.path().join("mask.parquet");
    let pattern = Pattern::parse_nm("2:4").unwrap();
    let summary =
        mask::make_mask_from_hessians(&model_path, &hessians, None, (pattern, SparsityProfile::Uniform), &out, &hidden()).unwrap();
    assert!(summary.warning.is_none(), "one-shot Hessians give no warning");
    assert!((summary.sparsity - 0.5).abs() < 1e-12);
    let (provenance, info, rows) = artifacts::read_mask(&out).unwrap();
    assert_eq!(info.method, "sparsegpt");
    assert!(provenance.inputs.contains_key("hessians"));
    let loaded = model::load_model(&model_path).unwrap();
    // Rows in the model's order (layer by layer, q k v o gate up down), as every mask lists them.
    let listed: Vec<(String, u32)> = rows.iter().map(|r| (r.module.clone(), r.row)).collect();
    let canonical: Vec<(String, u32)> = (0..loaded.config.num_layers())
        .flat_map(|l| loaded.config.linear_modules(l))
        .flat_map(|(m, out, _)| (0..out as u32).map(move |r| (m.clone(), r)))
        .collect();
    assert_eq!(listed, canonical);
    let by_module: std::collections::BTreeMap<String, artifacts::InputHessian> = artifacts::HessiansReader::open(&hessians)
        .unwrap()
        .map(|h| {
            let h = h.unwrap();
            (h.modules[0].clone(), h)
        })
        .collect();
    let mut checked = 0;
    for (module, h) in &by_module {
        let n = h.in_features as usize;
        let w = loaded.weights.load(&format!("{module}.weight")).unwrap();
        let module_rows: Vec<&artifacts::MaskRow> = rows.iter().filter(|r| &r.module == module).collect();
        assert_eq!(module_rows.len(), w.shape[0]);
        let (mut updated, mut masked) = (Vec::new(), Vec::new());
        for (r, row) in module_rows.iter().enumerate() {
            let keep = unpacked(row);
            assert!(keep.chunks(4).all(|g| g.iter().filter(|k| !**k).count() == 2), "{module}: 2 of every 4 pruned");
            let mut values = row.values.as_ref().unwrap().iter();
            for (j, k) in keep.iter().enumerate() {
                let original = w.data[r * n + j];
                masked.push(if *k { original } else { 0.0 });
                updated.push(if *k { *values.next().unwrap() } else { 0.0 });
            }
            assert!(values.next().is_none());
        }
        let full = h.full();
        let (with_update, mask_only) = (output_error(&updated, &w.data, &full, n), output_error(&masked, &w.data, &full, n));
        assert!(with_update < mask_only, "{module}: the OBS update lowers the error ({with_update} vs {mask_only})");
        checked += 1;
    }
    assert_eq!(checked, 7 * TINY.layers);

    // The written model holds the updated values; reloaded, it has the
    // perplexity of the model with the mask's values set in memory.
    let pruned = dir.path().join("pruned");
    mask::apply(&apply_opts(&model_path, &out, &pruned, OutputDtype::F32, false), &hidden()).unwrap();
    let written = model::load_model(&pruned).unwrap();
    let mut in_memory = model::load_model(&model_path).unwrap();
    for module in by_module.keys() {
        let name = format!("{module}.weight");
        let shape = loaded.weights.shape(&name).unwrap().to_vec();
        let mut dense = vec![0.0f32; shape[0] * shape[1]];
        for row in rows.iter().filter(|r| &r.module == module) {
            let kept = unpacked(row).into_iter().enumerate().filter(|(_, k)| *k).map(|(j, _)| j);
            for (j, v) in kept.zip(row.values.as_ref().unwrap()) {
                dense[row.row as usize * shape[1] + j] = *v;
            }
        }
        assert_eq!(written.weights.load(&name).unwrap().data, dense, "{name}");
        in_memory.weights.set_values(&name, &dense).unwrap();
        assert_eq!(in_memory.weights.rows_of(&name).unwrap().decode_all(), dense, "{name} decoded for generation");
    }
    let mut rng = testkit::Rng::new(5);
    let windows: Vec<Vec<u32>> = (0..2).map(|_| (0..12).map(|_| ((rng.next_f32() + 1.0) / 2.0 * 95.0) as u32).collect()).collect();
    let device = model::select_device(model::DeviceChoice::Cpu).unwrap().device;
    let (a, b) = (perplexity(&written.build(&device).unwrap(), &windows), perplexity(&in_memory.build(&device).unwrap(), &windows));
    assert_eq!(a.to_bits(), b.to_bits(), "{a} vs {b}");
    let dense_ppl = perplexity(&loaded.build(&device).unwrap(), &windows);
    assert!((a / dense_ppl - 1.0).abs() > 1e-4, "the sub-model differs from the dense model");
}

#[test]
fn sparsegpt_masks_refuse_missing_or_foreign_hessians() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = tiny_model(dir.path(), "m", &TINY, 22);
    let other = tiny_model(dir.path(), "other", &TinyConfig { layers: 1, ..TINY }, 22);
    let hessians = dir.path().join("hessians.parquet");
    random_hessians(&other, &hessians, 3);
    let out = dir.path().join("mask.parquet");
    let pattern = Pattern::unstructured(0.5).unwrap();
    let err =
        mask::make_mask_from_hessians(&model_path, &hessians, None, (pattern, SparsityProfile::Uniform), &out, &hidden()).unwrap_err();
    assert!(err.to_string().contains("Hessians and weights must be of one model"), "{err}");
    let err = mask::make_mask_from_hessians(&other, &hessians, None, (pattern, SparsityProfile::owl()), &out, &hidden()).unwrap_err();
    assert!(err.to_string().contains("give --stats too"), "{err}");
    assert!(!out.exists());
}
