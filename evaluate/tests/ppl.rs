//! Perplexity: windowing by hand, the metric against a naive f64 reference on
//! a tiny model, and the `evaluate ppl` binary end to end.

use std::process::Command;

use artifacts::{ArtifactKind, Provenance, Sample, SamplesInfo};
use evaluate::{
    apply_mask_file, bootstrap_ci, make_windows, perplexity, token_nlls, window_nlls, window_nlls_streamed, window_nlls_streamed_from,
    WindowNll, WindowSpec,
};
use model::safetensors::StoredDtype;
use model::{load_model, select_device, DeviceChoice};
use testkit::*;

#[test]
fn windows_are_non_overlapping_and_drop_the_tail() {
    let tokens: Vec<u32> = (0..10).collect();
    let plain = make_windows(&tokens, &WindowSpec { seqlen: 4, max_windows: None, bos: None }).unwrap();
    assert_eq!(plain, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
    let with_bos = make_windows(&tokens, &WindowSpec { seqlen: 4, max_windows: None, bos: Some(99) }).unwrap();
    assert_eq!(with_bos, vec![vec![99, 0, 1, 2], vec![99, 3, 4, 5], vec![99, 6, 7, 8]]);
    let first = make_windows(&tokens, &WindowSpec { seqlen: 4, max_windows: Some(1), bos: None }).unwrap();
    assert_eq!(first, vec![vec![0, 1, 2, 3]]);
    assert!(make_windows(&tokens, &WindowSpec { seqlen: 11, max_windows: None, bos: None }).is_err());
    assert!(make_windows(&tokens, &WindowSpec { seqlen: 1, max_windows: None, bos: None }).is_err());
}

fn reference_nll(weights: &std::collections::BTreeMap<String, model::HostTensor>, window: &[u32]) -> f64 {
    let logits = reference_forward(&TINY, weights, window);
    (0..window.len() - 1)
        .map(|i| {
            let row = &logits[i];
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            lse - row[window[i + 1] as usize]
        })
        .sum()
}

fn tiny_windows() -> Vec<Vec<u32>> {
    let mut rng = Rng::new(11);
    (0..3).map(|_| (0..8).map(|_| ((rng.next_f32() + 1.0) * 47.9) as u32).collect()).collect()
}

#[test]
fn perplexity_matches_reference_and_ignores_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_weights(&TINY, 21);
    write_hf_dir(dir.path(), &TINY, &weights, StoredDtype::F32);
    let loaded = load_model(dir.path()).unwrap();
    let model = loaded.build(&select_device(DeviceChoice::Cpu).unwrap().device).unwrap();
    let windows = tiny_windows();
    let one = window_nlls(&model, &windows, 1, |_| {}).unwrap();
    let three = window_nlls(&model, &windows, 3, |_| {}).unwrap();
    let expected_total: f64 = windows.iter().map(|w| reference_nll(&weights, w)).sum();
    let expected_ppl = (expected_total / (3.0 * 7.0)).exp();
    for (w, nll) in windows.iter().zip(&one) {
        assert_eq!(nll.tokens, 7);
        assert!((nll.nll_sum - reference_nll(&weights, w)).abs() < 1e-3, "{} vs {}", nll.nll_sum, reference_nll(&weights, w));
    }
    assert!((perplexity(&one) / expected_ppl - 1.0).abs() < 1e-5, "{} vs {expected_ppl}", perplexity(&one));
    assert!((perplexity(&three) / perplexity(&one) - 1.0).abs() < 1e-6);
}

#[test]
fn layer_by_layer_perplexity_equals_the_whole_model_s_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_weights(&TINY, 22);
    write_hf_dir(dir.path(), &TINY, &weights, StoredDtype::F32);
    let loaded = load_model(dir.path()).unwrap();
    let device = select_device(DeviceChoice::Cpu).unwrap().device;
    let model = loaded.build(&device).unwrap();
    // Windows of two lengths: batches are runs of equal length.
    let mut windows = tiny_windows();
    windows.push(windows[0][..5].to_vec());
    for batch in [1, 2, 4] {
        let whole = window_nlls(&model, &windows, batch, |_| {}).unwrap();
        let mut steps = 0;
        let streamed = window_nlls_streamed(&loaded, &device, &windows, batch, || steps += 1).unwrap();
        assert_eq!(steps, TINY.layers + 2, "embedding, every layer, head");
        assert_eq!(whole.len(), streamed.len());
        for (a, b) in whole.iter().zip(&streamed) {
            assert_eq!((a.nll_sum.to_bits(), a.tokens), (b.nll_sum.to_bits(), b.tokens), "batch {batch}");
        }
        let expected: f64 = windows.iter().map(|w| reference_nll(&weights, w)).sum();
        let got: f64 = streamed.iter().map(|w| w.nll_sum).sum();
        assert!((got - expected).abs() < 1e-3, "{got} vs {expected}");
    }
}

#[test]
fn scoring_from_a_position_counts_only_the_later_predictions() {
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(dir.path(), &TINY, &tiny_weights(&TINY, 24), StoredDtype::F32);
    let loaded = load_model(dir.path()).unwrap();
    let device = select_device(DeviceChoice::Cpu).unwrap().device;
    let windows = tiny_windows();
    // Per-position NLLs of the whole model (not streamed), summed from position 3.
    let per_position = token_nlls(&loaded.build(&device).unwrap(), &windows).unwrap();
    let from = window_nlls_streamed_from(&loaded, &device, &windows, 2, 3, || {}).unwrap();
    for (w, (got, all)) in from.iter().zip(&per_position).enumerate() {
        let want: f64 = all[3..].iter().map(|&v| f64::from(v)).sum();
        assert_eq!(got.tokens, windows[w].len() - 4, "window {w}: tokens 4.. are predicted");
        assert!((got.nll_sum - want).abs() < 1e-5 * want.abs().max(1.0), "window {w}: {} vs {want}", got.nll_sum);
    }
    let shortest = windows.iter().map(Vec::len).min().unwrap();
    let err = window_nlls_streamed_from(&loaded, &device, &windows, 1, shortest - 1, || {}).unwrap_err().to_string();
    assert!(err.contains(&format!("scoring from position {}", shortest - 1)), "{err}");
}

/// `evaluate ppl --device DEVICE --model MODEL --samples SAMPLES`, to which a call adds its own arguments.
fn ppl_command(device: &str, model: &std::path::Path, samples: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_evaluate"));
    command.args(["ppl", "--device", device, "--model"]).arg(model).arg("--samples").arg(samples);
    command
}

/// Writes `windows` as a samples artifact of 8-token windows made for model `fingerprint`.
fn write_windows(path: &std::path::Path, windows: &[Vec<u32>], fingerprint: &str) {
    let samples: Vec<Sample> =
        windows.iter().enumerate().map(|(i, w)| Sample { sample_id: i as u64, domain: "test".into(), tokens: w.clone() }).collect();
    let info = SamplesInfo { tokenizer_hash: String::new(), seqlen: 8, seed: Some(0) };
    let provenance = Provenance::new(ArtifactKind::Samples, fingerprint, serde_json::json!({}), "test");
    artifacts::write_samples(path, &samples, &info, &provenance).unwrap();
}

/// The perplexity an `evaluate ppl` run printed on its last line.
fn printed_perplexity(stdout: &[u8]) -> f64 {
    let last = String::from_utf8_lossy(stdout).lines().last().unwrap().to_string();
    last.strip_prefix("perplexity: ").expect("last line is the perplexity").parse().unwrap()
}

#[test]
fn evaluate_ppl_binary_reads_samples_and_writes_results() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("tiny");
    let weights = tiny_weights(&TINY, 22);
    write_hf_dir(&model_dir, &TINY, &weights, StoredDtype::F32);
    let loaded = load_model(&model_dir).unwrap();
    let windows = tiny_windows();
    let samples_path = dir.path().join("samples.parquet");
    write_windows(&samples_path, &windows, &loaded.fingerprint);

    let out = dir.path().join("results.parquet");
    let run = ppl_command("cpu", &model_dir, &samples_path).args(["--seqlen", "8", "--out"]).arg(&out).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let printed = printed_perplexity(&run.stdout);
    let expected_total: f64 = windows.iter().map(|w| reference_nll(&weights, w)).sum();
    let expected = (expected_total / 21.0).exp();
    assert!((printed / expected - 1.0).abs() < 1e-5, "{printed} vs {expected}");
    let (prov, rows) = artifacts::read_results(&out).unwrap();
    assert_eq!(prov.model, loaded.fingerprint);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].n, 21);
    assert!((rows[0].value / expected - 1.0).abs() < 1e-5);

    // `auto` probes the wgpu adapters; on a machine without a display that
    // must not print Mesa's display-server errors (its device_select layer
    // does at every Vulkan instance unless switched off).
    let run = ppl_command("auto", &model_dir, &samples_path)
        .args(["--seqlen", "8"])
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("NODEVICE_SELECT")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("device: auto picked") && !stderr.contains("XDG_RUNTIME_DIR"), "{stderr}");
    let auto = printed_perplexity(&run.stdout);
    assert!((auto / expected - 1.0).abs() < 1e-4, "{auto} vs {expected}");

    // Samples made for another model are refused.
    write_windows(&samples_path, &windows, "sha256:other");
    let run = ppl_command("cpu", &model_dir, &samples_path).output().unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("sha256:other") && stderr.contains("samples.parquet"), "{stderr}");
}

#[test]
fn several_samples_in_one_run_give_each_the_results_it_gets_alone() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("tiny");
    let weights = tiny_weights(&TINY, 23);
    write_hf_dir(&model_dir, &TINY, &weights, StoredDtype::F32);
    let loaded = load_model(&model_dir).unwrap();
    let all = tiny_windows();
    let (first, second) = all.split_at(1);
    let mut inputs = Vec::new();
    for (name, windows) in [("a", first), ("b", second)] {
        let path = dir.path().join(format!("{name}.parquet"));
        write_windows(&path, windows, &loaded.fingerprint);
        inputs.push((name, path, windows));
    }

    let mut together = ppl_command("cpu", &model_dir, &inputs[0].1);
    together.args(["--domain", "a", "--out"]).arg(dir.path().join("a-together.parquet"));
    together.arg("--samples").arg(&inputs[1].1).args(["--domain", "b", "--out"]).arg(dir.path().join("b-together.parquet"));
    let run = together.output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    for (name, path, windows) in &inputs {
        let alone_out = dir.path().join(format!("{name}-alone.parquet"));
        let alone = ppl_command("cpu", &model_dir, path).args(["--domain", name, "--out"]).arg(&alone_out).output().unwrap();
        assert!(alone.status.success(), "{}", String::from_utf8_lossy(&alone.stderr));
        let (_, alone_rows) = artifacts::read_results(&alone_out).unwrap();
        let (together_prov, together_rows) = artifacts::read_results(&dir.path().join(format!("{name}-together.parquet"))).unwrap();
        assert_eq!(together_rows[0].task, format!("perplexity/{name}"));
        assert_eq!(together_rows[0].value.to_bits(), alone_rows[0].value.to_bits(), "{name}");
        assert_eq!((together_rows[0].n, together_prov.params["windows"].as_u64()), (alone_rows[0].n, Some(windows.len() as u64)));
        assert_eq!(together_prov.inputs["samples"], artifacts::content_hash(path).unwrap());
        let expected_total: f64 = windows.iter().map(|w| reference_nll(&weights, w)).sum();
        let expected = (expected_total / alone_rows[0].n as f64).exp();
        assert!((alone_rows[0].value / expected - 1.0).abs() < 1e-5, "{name}: {} vs {expected}", alone_rows[0].value);
        assert!(stdout.contains(&format!("perplexity/{name}: {:.6}", alone_rows[0].value)), "{stdout}");
    }

    // Flags that do not pair up are refused before the model is loaded.
    let refused = |extra: &[&str]| {
        let mut command = ppl_command("cpu", &model_dir, &inputs[0].1);
        command.arg("--samples").arg(&inputs[1].1).args(extra);
        let run = command.output().unwrap();
        assert!(!run.status.success());
        String::from_utf8_lossy(&run.stderr).to_string()
    };
    assert!(refused(&["--domain", "a", "--domain", "b", "--out", "x.parquet"]).contains("--out given once for 2 inputs"));
    assert!(refused(&[]).contains("2 --samples given without --domain"));
    assert!(refused(&["--domain", "a", "--domain", "b", "--out", "x", "--out", "x"]).contains("--out x is given twice"));
}

#[test]
fn bootstrap_interval_brackets_the_perplexity_and_is_deterministic() {
    // Equal windows: every resample has the same mean, so the interval collapses to exp(2.0).
    let same = vec![WindowNll { nll_sum: 20.0, tokens: 10 }; 5];
    let (lo, hi) = bootstrap_ci(&same, 200, 0).unwrap();
    assert!((lo - 2f64.exp()).abs() < 1e-12 && (hi - 2f64.exp()).abs() < 1e-12, "{lo} {hi}");
    // Unequal windows: the interval lies within the extremes of single-window perplexities
    // (exp(1) and exp(3)) and contains the overall perplexity.
    let mixed: Vec<WindowNll> = [1.0, 1.5, 2.0, 2.5, 3.0].iter().map(|m| WindowNll { nll_sum: m * 10.0, tokens: 10 }).collect();
    let ppl = perplexity(&mixed);
    let (lo, hi) = bootstrap_ci(&mixed, 1000, 7).unwrap();
    assert!(1f64.exp() <= lo && lo < ppl && ppl < hi && hi <= 3f64.exp(), "{lo} {ppl} {hi}");
    assert_eq!(bootstrap_ci(&mixed, 1000, 7), Some((lo, hi)));
    assert_eq!(bootstrap_ci(&mixed[..1], 1000, 7), None);
}

fn write_tiny_mask(path: &std::path::Path, fingerprint: &str, weights: &std::collections::BTreeMap<String, model::HostTensor>) {
    // Prune column 0 of every row of every q_proj; keep everything else.
    let rows: Vec<artifacts::MaskRow> = weights
        .iter()
        .filter(|(name, _)| name.ends_with("self_attn.q_proj.weight"))
        .flat_map(|(name, t)| {
            let (out, cols) = (t.shape[0], t.shape[1]);
            let module = name.trim_end_matches(".weight").to_string();
            (0..out).map(move |row| {
                let keep: Vec<bool> = (0..cols).map(|c| c != 0).collect();
                artifacts::MaskRow {
                    module: module.clone(),
                    row: row as u32,
                    in_features: cols as u32,
                    keep: sparsity::pack_bits(&keep),
                    values: None,
                }
            })
        })
        .collect();
    let info = artifacts::MaskInfo { method: "test".into(), sparsity: 0.0, pattern: "test".into(), group: "row".into() };
    let provenance = Provenance::new(ArtifactKind::Mask, fingerprint, serde_json::json!({}), "test");
    artifacts::write_mask(path, &rows, &info, &provenance).unwrap();
}

#[test]
fn mask_file_zeroes_exactly_its_pruned_weights_and_refuses_other_models() {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_weights(&TINY, 5);
    write_hf_dir(dir.path(), &TINY, &weights, StoredDtype::F32);
    let mut loaded = load_model(dir.path()).unwrap();
    let mask = dir.path().join("mask.parquet");
    write_tiny_mask(&mask, &loaded.fingerprint, &weights);
    let counts = apply_mask_file(&mut loaded, &mask).unwrap();
    assert_eq!(counts.modules, TINY.layers);
    for (name, original) in &weights {
        let now = loaded.weights.load(name).unwrap();
        let cols = original.shape.last().copied().unwrap_or(1);
        for (i, (a, b)) in original.data.iter().zip(&now.data).enumerate() {
            let pruned = name.ends_with("self_attn.q_proj.weight") && i % cols == 0;
            assert_eq!(*b, if pruned { 0.0 } else { *a }, "{name}[{i}]");
        }
    }
    let rows_per_module = TINY.hidden as u64;
    assert_eq!(counts.masked, rows_per_module * TINY.layers as u64);

    let other = dir.path().join("other.parquet");
    write_tiny_mask(&other, "another-model", &weights);
    let err = apply_mask_file(&mut load_model(dir.path()).unwrap(), &other).unwrap_err().to_string();
    assert!(err.contains("another-model") && err.contains("other.parquet"), "{err}");
}

#[test]
fn evaluate_speed_prints_both_speeds_and_refuses_too_few_tokens() {
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(dir.path(), &TINY, &tiny_weights(&TINY, 3), StoredDtype::F32);
    let speed = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_evaluate"))
            .args(["speed", "--model"])
            .arg(dir.path())
            .args(["--device", "cpu"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = speed(&["--prefill-tokens", "16", "--decode-tokens", "4"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    for key in ["prefill_tokens_per_s", "decode_tokens_per_s"] {
        let value = line[key].as_f64().unwrap_or_else(|| panic!("no {key} in {stdout}"));
        assert!(value.is_finite() && value > 0.0, "{key}: {value}");
    }
    let refused = speed(&["--prefill-tokens", "1"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--prefill-tokens of at least 2"));
}
