//! Wanda statistics on a tiny model: against a hand computation, across
//! batch sizes, sequential versus one-shot, and the masks that `score` +
//! `mask` rebuild from the written statistics.

use calibrate::{calibrate, Activations, CalibrateOptions};
use model::safetensors::StoredDtype;
use model::{load_model, select_device, DeviceChoice, LoadedModel};
use sparsity::owl::SparsityProfile;
use sparsity::{Group, Method, Pattern};
use testkit::*;

fn tiny_model(dir: &std::path::Path, seed: u64) -> LoadedModel {
    write_hf_dir(dir, &TINY, &tiny_weights(&TINY, seed), StoredDtype::F32);
    load_model(dir).unwrap()
}

fn samples() -> Vec<Vec<u32>> {
    let mut rng = Rng::new(5);
    (0..4).map(|_| (0..10).map(|_| ((rng.next_f32() + 1.0) * 47.9) as u32).collect()).collect()
}

fn options(oneshot: bool, batch: usize, pattern: Pattern) -> CalibrateOptions {
    CalibrateOptions {
        pattern,
        group: Group::Row,
        method: Method::Wanda,
        sparsegpt: Default::default(),
        profile: SparsityProfile::Uniform,
        oneshot,
        batch,
        activations: Activations::F32,
    }
}

fn cpu() -> burn::tensor::Device {
    select_device(DeviceChoice::Cpu).unwrap().device
}

#[test]
fn layer0_statistic_matches_hand_computation() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = tiny_model(dir.path(), 1);
    let samples = samples();
    let result = calibrate(&loaded, &cpu(), &samples, &options(true, 1, Pattern::unstructured(0.5).unwrap()), |_| {}).unwrap();
    // q_proj of layer 0 sees RMSNorm(embedding): compute sum over tokens of x_j^2 per sample by hand.
    let emb = loaded.weights.load("model.embed_tokens.weight").unwrap();
    let norm_w = loaded.weights.load("model.layers.0.input_layernorm.weight").unwrap();
    let h = TINY.hidden;
    let per_sample: Vec<Vec<f64>> = samples
        .iter()
        .map(|s| {
            let mut acc = vec![0.0f64; h];
            for &t in s {
                let x: Vec<f64> = emb.data[t as usize * h..(t as usize + 1) * h].iter().map(|&v| f64::from(v)).collect();
                let inv = 1.0 / (x.iter().map(|v| v * v).sum::<f64>() / h as f64 + TINY.eps).sqrt();
                for j in 0..h {
                    let y = x[j] * inv * f64::from(norm_w.data[j]);
                    acc[j] += y * y;
                }
            }
            acc
        })
        .collect();
    let q = result.stats.iter().find(|s| s.module == "model.layers.0.self_attn.q_proj").unwrap();
    assert_eq!(q.n_samples, 4);
    assert_eq!(q.n_tokens, 40);
    for j in 0..h {
        let mean: f64 = per_sample.iter().map(|s| s[j]).sum::<f64>() / 4.0;
        let total: f64 = per_sample.iter().map(|s| s[j]).sum();
        assert!((f64::from(q.scaler_row[j]) / mean - 1.0).abs() < 1e-4, "column {j}: {} vs {mean}", q.scaler_row[j]);
        assert!((f64::from(q.sum_sq[j]) / total - 1.0).abs() < 1e-4, "column {j}: {} vs {total}", q.sum_sq[j]);
    }
    // k and v share q's input.
    let k = result.stats.iter().find(|s| s.module == "model.layers.0.self_attn.k_proj").unwrap();
    assert_eq!(k.scaler_row, q.scaler_row);
}

#[test]
fn batch_size_does_not_change_the_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = tiny_model(dir.path(), 2);
    let pattern = Pattern::unstructured(0.5).unwrap();
    let one = calibrate(&loaded, &cpu(), &samples(), &options(false, 1, pattern), |_| {}).unwrap();
    let four = calibrate(&loaded, &cpu(), &samples(), &options(false, 4, pattern), |_| {}).unwrap();
    for (a, b) in one.stats.iter().zip(&four.stats) {
        assert_eq!(a.module, b.module);
        for (x, y) in a.scaler_row.iter().zip(&b.scaler_row) {
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1e-3), "{}: {x} vs {y}", a.module);
        }
    }
    assert_eq!(one.applied_masks, four.applied_masks);
}

#[test]
fn sequential_and_oneshot_agree_on_layer0_only() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = tiny_model(dir.path(), 3);
    let pattern = Pattern::unstructured(0.5).unwrap();
    let seq = calibrate(&loaded, &cpu(), &samples(), &options(false, 1, pattern), |_| {}).unwrap();
    let one = calibrate(&loaded, &cpu(), &samples(), &options(true, 1, pattern), |_| {}).unwrap();
    assert!(one.applied_masks.is_empty());
    assert_eq!(seq.applied_masks.len(), 7 * TINY.layers);
    for (a, b) in seq.stats.iter().zip(&one.stats) {
        if a.layer == 0 {
            assert_eq!(a.scaler_row, b.scaler_row, "{} differs on layer 0", a.module);
        } else {
            let diff = a.scaler_row.iter().zip(&b.scaler_row).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(diff > 1e-4, "{} should see pruned inputs in sequential mode", a.module);
        }
    }
}

#[test]
fn masks_rebuilt_from_written_stats_equal_the_applied_ones() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = tiny_model(&dir.path().join("m"), 4);
    for pattern in [Pattern::unstructured(0.5).unwrap(), Pattern::parse_nm("2:4").unwrap()] {
        let result = calibrate(&loaded, &cpu(), &samples(), &options(false, 2, pattern), |_| {}).unwrap();
        let path = dir.path().join("stats.parquet");
        let provenance =
            artifacts::Provenance::new(artifacts::ArtifactKind::Stats, loaded.fingerprint.clone(), serde_json::json!({}), "test");
        artifacts::write_stats(&path, &result.stats, &provenance).unwrap();
        let (_, read) = artifacts::read_stats(&path).unwrap();
        for stat in &read {
            let w = loaded.weights.load(&format!("{}.weight", stat.module)).unwrap();
            let (rows, cols) = (w.shape[0], w.shape[1]);
            let scores = sparsity::scores(Method::Wanda, &w.data, rows, cols, Some(&stat.scaler_row)).unwrap();
            let keep = sparsity::keep_mask(&scores, rows, cols, pattern, Group::Row).unwrap();
            assert_eq!(calibrate::mask_digest(&keep), result.applied_masks[&stat.module], "{} ({})", stat.module, pattern);
            let pruned = keep.iter().filter(|k| !**k).count();
            assert_eq!(pruned, rows * pattern.pruned_per_row(cols));
        }
    }
}

#[test]
fn owl_spreads_the_sparsity_by_the_dense_model_s_outliers_and_prunes_each_layer_at_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = tiny_model(dir.path(), 8);
    let target = 0.5;
    // The tiny model's random weights have no scores above 5 x the mean: outliers above 2 x.
    let profile = SparsityProfile::Owl { outlier_multiple: 2.0, lambda: 0.08 };
    let owl = CalibrateOptions { profile, ..options(false, 2, Pattern::unstructured(target).unwrap()) };
    let result = calibrate(&loaded, &cpu(), &samples(), &owl, |_| {}).unwrap();
    let layers = result.layer_sparsities.clone().expect("OWL records its layer sparsities");
    assert_eq!(layers.len(), TINY.layers);
    // Independently: the dense (one-shot) statistics, each layer's share of Wanda
    // scores above 2 x their mean (in f64 throughout), OWL's scaling by 2 x 0.08.
    let dense = calibrate(&loaded, &cpu(), &samples(), &options(true, 1, Pattern::unstructured(target).unwrap()), |_| {}).unwrap();
    let ratios: Vec<f64> = (0..TINY.layers)
        .map(|layer| {
            let mut all = Vec::new();
            for stat in dense.stats.iter().filter(|s| s.layer as usize == layer) {
                let w = loaded.weights.load(&format!("{}.weight", stat.module)).unwrap();
                let cols = w.shape[1];
                all.extend(w.data.iter().enumerate().map(|(i, v)| f64::from(v.abs()) * f64::from(stat.scaler_row[i % cols]).sqrt()));
            }
            let mean = all.iter().sum::<f64>() / all.len() as f64;
            100.0 * all.iter().filter(|&&v| v > 2.0 * mean).count() as f64 / all.len() as f64
        })
        .collect();
    let (lo, hi) = (ratios.iter().copied().fold(f64::MAX, f64::min), ratios.iter().copied().fold(f64::MIN, f64::max));
    let scaled: Vec<f64> = ratios.iter().map(|r| (r - lo) / (hi - lo) * 0.16).collect();
    let mean = scaled.iter().sum::<f64>() / scaled.len() as f64;
    for (got, d) in layers.iter().zip(&scaled) {
        assert!((got - (1.0 - (d - mean + 1.0 - target))).abs() < 1e-6, "{layers:?} against ratios {ratios:?}");
    }
    assert!((layers.iter().sum::<f64>() / layers.len() as f64 - target).abs() < 1e-12);
    assert!(layers.iter().any(|s| (s - target).abs() > 0.01), "the tiny model's layers differ: {layers:?}");
    // Each layer was pruned at its own sparsity, per row.
    let uniform = calibrate(&loaded, &cpu(), &samples(), &options(false, 2, Pattern::unstructured(target).unwrap()), |_| {}).unwrap();
    assert_ne!(uniform.applied_masks, result.applied_masks);
    let first = &result.stats[0];
    assert_eq!(first.layer, 0);
    let w = loaded.weights.load(&format!("{}.weight", first.module)).unwrap();
    let (rows, cols) = (w.shape[0], w.shape[1]);
    let scores = sparsity::scores(Method::Wanda, &w.data, rows, cols, Some(&first.scaler_row)).unwrap();
    let keep = sparsity::keep_mask(&scores, rows, cols, Pattern::unstructured(layers[0]).unwrap(), Group::Row).unwrap();
    assert_eq!(calibrate::mask_digest(&keep), result.applied_masks[&first.module]);
    // N:M patterns are not spread.
    let nm = CalibrateOptions { profile: SparsityProfile::owl(), ..options(false, 1, Pattern::parse_nm("2:4").unwrap()) };
    assert!(calibrate(&loaded, &cpu(), &samples(), &nm, |_| {}).is_err());
}

#[test]
fn samples_run_in_parallel_give_the_statistics_and_masks_of_a_serial_run() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = tiny_model(dir.path(), 6);
    for pattern in [Pattern::unstructured(0.5).unwrap(), Pattern::parse_nm("2:4").unwrap()] {
        // One sample per group: four groups, which run in parallel on the cpu device.
        let parallel = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let serial = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let run = |pool: &rayon::ThreadPool| {
            pool.install(|| calibrate(&loaded, &cpu(), &samples(), &options(false, 1, pattern), |_| {}).unwrap())
        };
        let (a, b) = (run(&parallel), run(&serial));
        assert_eq!(a.applied_masks, b.applied_masks, "{}", pattern);
        for (x, y) in a.stats.iter().zip(&b.stats) {
            assert_eq!((&x.module, &x.scaler_row, &x.sum_sq, x.n_tokens), (&y.module, &y.scaler_row, &y.sum_sq, y.n_tokens));
        }
    }
}

#[test]
fn half_precision_activations_are_what_the_first_layer_reads() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = tiny_model(dir.path(), 3);
    let samples = samples();
    let emb = loaded.weights.load("model.embed_tokens.weight").unwrap();
    let norm_w = loaded.weights.load("model.layers.0.input_layernorm.weight").unwrap();
    let h = TINY.hidden;
    let pattern = Pattern::unstructured(0.5).unwrap();
    let full = calibrate(&loaded, &cpu(), &samples, &options(true, 1, pattern), |_| {}).unwrap();
    let rounders: [(Activations, fn(f32) -> f32); 2] =
        [(Activations::F16, |v| half::f16::from_f32(v).to_f32()), (Activations::Bf16, |v| half::bf16::from_f32(v).to_f32())];
    for (precision, round) in rounders {
        let run = calibrate(&loaded, &cpu(), &samples, &CalibrateOptions { activations: precision, ..options(true, 1, pattern) }, |_| {})
            .unwrap();
        // q_proj of layer 0 reads RMSNorm of the embeddings rounded to the precision: by hand, in f64.
        let mut total = vec![0.0f64; h];
        for s in &samples {
            for &t in s {
                let x: Vec<f64> = emb.data[t as usize * h..(t as usize + 1) * h].iter().map(|&v| f64::from(round(v))).collect();
                let inv = 1.0 / (x.iter().map(|v| v * v).sum::<f64>() / h as f64 + TINY.eps).sqrt();
                for j in 0..h {
                    let y = x[j] * inv * f64::from(norm_w.data[j]);
                    total[j] += y * y;
                }
            }
        }
        let q = run.stats.iter().find(|s| s.module == "model.layers.0.self_attn.q_proj").unwrap();
        for j in 0..h {
            assert!(
                (f64::from(q.sum_sq[j]) / total[j] - 1.0).abs() < 1e-4,
                "{} column {j}: {} vs {}",
                precision.as_str(),
                q.sum_sq[j],
                total[j]
            );
        }
        // Later layers stay close to the f32 run's statistics (they read rounded hidden states).
        let tolerance = if precision == Activations::Bf16 { 0.1 } else { 0.01 };
        for (a, b) in full.stats.iter().zip(&run.stats) {
            for (x, y) in a.scaler_row.iter().zip(&b.scaler_row) {
                assert!((x - y).abs() <= tolerance * x.abs().max(1e-3), "{} ({}): {x} vs {y}", a.module, precision.as_str());
            }
        }
    }
}

fn sparsegpt_options(oneshot: bool, batch: usize, pattern: Pattern) -> CalibrateOptions {
    CalibrateOptions { method: Method::SparseGpt, ..options(oneshot, batch, pattern) }
}

/// Each pruned module's input count, keep flags and updated weight, by name.
type Pruned = std::collections::BTreeMap<String, (usize, Vec<bool>, Vec<f32>)>;

/// Runs SparseGPT calibration and returns its result and the Hessians and pruned modules it handed out.
fn run_sparsegpt_pruned(
    loaded: &LoadedModel,
    options: &CalibrateOptions,
) -> (calibrate::Calibration, Vec<artifacts::InputHessian>, Pruned) {
    let (mut hessians, mut pruned) = (Vec::new(), Pruned::new());
    let result = calibrate::calibrate_with_hessians(
        loaded,
        &cpu(),
        &samples(),
        options,
        |_| {},
        |h| hessians.push(h),
        |module, cols, keep, updated| {
            assert!(pruned.insert(module.to_string(), (cols, keep.to_vec(), updated.to_vec())).is_none(), "{module} pruned twice");
        },
    )
    .unwrap();
    (result, hessians, pruned)
}

/// Runs SparseGPT calibration and returns its result and the Hessians it handed out.
fn run_sparsegpt(loaded: &LoadedModel, options: &CalibrateOptions) -> (calibrate::Calibration, Vec<artifacts::InputHessian>) {
    let (result, hessians, _) = run_sparsegpt_pruned(loaded, options);
    (result, hessians)
}

#[test]
fn sparsegpt_layer0_hessian_matches_hand_computation() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = tiny_model(dir.path(), 11);
    let samples = samples();
    let (_, hessians) = run_sparsegpt(&loaded, &sparsegpt_options(true, 1, Pattern::unstructured(0.5).unwrap()));
    // One Hessian per distinct input: attention in, o_proj in, MLP in, down_proj in; per layer.
    assert_eq!(hessians.len(), 4 * TINY.layers);
    let first = hessians.iter().find(|h| h.modules.iter().any(|m| m == "model.layers.0.self_attn.q_proj")).unwrap();
    assert_eq!(first.layer, 0);
    let qkv = ["model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"];
    let mut modules = first.modules.clone();
    modules.sort();
    assert_eq!(modules, qkv, "q, k and v share one input and one Hessian");
    // H = 2/N Σ_s Σ_t x xᵀ over the RMS-normed embeddings, by hand in f64.
    let emb = loaded.weights.load("model.embed_tokens.weight").unwrap();
    let norm_w = loaded.weights.load("model.layers.0.input_layernorm.weight").unwrap();
    let h = TINY.hidden;
    let mut expected = vec![0.0f64; h * h];
    for s in &samples {
        for &t in s {
            let x: Vec<f64> = emb.data[t as usize * h..(t as usize + 1) * h].iter().map(|&v| f64::from(v)).collect();
            let inv = 1.0 / (x.iter().map(|v| v * v).sum::<f64>() / h as f64 + TINY.eps).sqrt();
            let y: Vec<f64> = (0..h).map(|j| x[j] * inv * f64::from(norm_w.data[j])).collect();
            for i in 0..h {
                for j in 0..h {
                    expected[i * h + j] += 2.0 / samples.len() as f64 * y[i] * y[j];
                }
            }
        }
    }
    let got = first.full();
    let scale = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (a, b)) in got.iter().zip(&expected).enumerate() {
        assert!((a - b).abs() <= 1e-5 * scale, "H[{}][{}]: {a} vs {b}", i / h, i % h);
    }
    assert_eq!((first.n_samples, first.n_tokens), (4, 40));
}

#[test]
fn sparsegpt_hessians_and_masks_do_not_depend_on_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = tiny_model(dir.path(), 12);
    let pattern = Pattern::unstructured(0.5).unwrap();
    let (one, h1) = run_sparsegpt(&loaded, &sparsegpt_options(false, 1, pattern));
    let (four, h4) = run_sparsegpt(&loaded, &sparsegpt_options(false, 4, pattern));
    assert_eq!(h1, h4, "the Gram matrices are summed sample by sample in order");
    assert_eq!(one.applied_masks, four.applied_masks);
    assert_eq!(one.applied_masks.len(), 7 * TINY.layers);
}

#[test]
fn sequential_sparsegpt_masks_rebuilt_from_written_hessians_equal_the_applied_ones() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = tiny_model(&dir.path().join("m"), 13);
    for pattern in [Pattern::unstructured(0.5).unwrap(), Pattern::parse_nm("2:4").unwrap()] {
        let (result, hessians, handed_out) = run_sparsegpt_pruned(&loaded, &sparsegpt_options(false, 2, pattern));
        assert_eq!(handed_out.len(), 7 * TINY.layers, "every module is handed out once");
        let path = dir.path().join("hessians.parquet");
        let provenance =
            artifacts::Provenance::new(artifacts::ArtifactKind::Hessians, loaded.fingerprint.clone(), serde_json::json!({}), "test");
        artifacts::write_hessians(&path, hessians.into_iter().map(Ok::<_, artifacts::ArtifactError>), &provenance).unwrap();
        let mut covered = 0;
        for row in artifacts::HessiansReader::open(&path).unwrap() {
            let row = row.unwrap();
            let n = row.in_features as usize;
            let hessian = sparsity::sparsegpt::Hessian::from_values(row.full(), n, row.n_samples as usize).unwrap();
            for module in &row.modules {
                let w = loaded.weights.load(&format!("{module}.weight")).unwrap();
                let (rows, cols) = (w.shape[0], w.shape[1]);
                let options = sparsity::sparsegpt::SparseGptOptions::new(pattern);
                let prepared = sparsity::sparsegpt::PreparedHessian::new(&hessian, options.percdamp).unwrap();
                let (updated, keep) = sparsity::sparsegpt::sparsegpt_f32(&w.data, rows, cols, &prepared, &options).unwrap();
                assert_eq!(calibrate::mask_digest(&keep), result.applied_masks[module], "{module} ({pattern})");
                let (handed_cols, handed_keep, handed_values) = &handed_out[module];
                assert_eq!((*handed_cols, handed_keep), (cols, &keep), "{module}: the mask handed out is the applied one");
                assert!(
                    handed_values.iter().zip(&updated).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{module}: the updated weights handed out are those rebuilt from the Hessians"
                );
                assert!(updated.iter().zip(&keep).all(|(v, k)| *k || *v == 0.0), "pruned weights are zero");
                assert!(updated.iter().zip(&w.data).zip(&keep).any(|((u, w), k)| *k && u != w), "kept weights are updated");
                if let Pattern::NM { n, m } = pattern {
                    assert!(keep.chunks(m).all(|g| g.iter().filter(|k| !**k).count() == n), "{module}: {n} of every {m} pruned");
                }
                covered += 1;
            }
        }
        assert_eq!(covered, 7 * TINY.layers);
    }
}

#[test]
fn sequential_sparsegpt_feeds_later_layers_the_updated_weights() {
    // Layer 1's Hessians in sequential mode are those of a one-shot run on
    // the model whose layer 0 holds the updated weights.
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_weights(&TINY, 14);
    write_hf_dir(&dir.path().join("dense"), &TINY, &weights, StoredDtype::F32);
    let dense = load_model(&dir.path().join("dense")).unwrap();
    let pattern = Pattern::parse_nm("2:4").unwrap();
    let (_, sequential) = run_sparsegpt(&dense, &sparsegpt_options(false, 1, pattern));
    let mut updated = weights.clone();
    for row in sequential.iter().filter(|h| h.layer == 0) {
        let n = row.in_features as usize;
        let hessian = sparsity::sparsegpt::Hessian::from_values(row.full(), n, row.n_samples as usize).unwrap();
        for module in &row.modules {
            let name = format!("{module}.weight");
            let w = dense.weights.load(&name).unwrap();
            let options = sparsity::sparsegpt::SparseGptOptions::new(pattern);
            let prepared = sparsity::sparsegpt::PreparedHessian::new(&hessian, options.percdamp).unwrap();
            let (values, _) = sparsity::sparsegpt::sparsegpt_f32(&w.data, w.shape[0], w.shape[1], &prepared, &options).unwrap();
            updated.insert(name, model::HostTensor::new(w.shape.clone(), values));
        }
    }
    write_hf_dir(&dir.path().join("updated"), &TINY, &updated, StoredDtype::F32);
    let updated = load_model(&dir.path().join("updated")).unwrap();
    let (_, oneshot) = run_sparsegpt(&updated, &sparsegpt_options(true, 1, pattern));
    let layer1 = |h: &[artifacts::InputHessian]| h.iter().filter(|h| h.layer == 1).cloned().collect::<Vec<_>>();
    let (a, b) = (layer1(&sequential), layer1(&oneshot));
    assert_eq!(a.len(), 4);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.modules, y.modules);
        let scale = y.upper.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let diff = x.upper.iter().zip(&y.upper).fold(0.0f64, |m, (p, q)| m.max((p - q).abs()));
        assert!(diff <= 1e-6 * scale, "{:?}: differs by {diff} (scale {scale})", x.modules);
    }
    let dense_layer1 = layer1(&run_sparsegpt(&dense, &sparsegpt_options(true, 1, pattern)).1);
    assert_ne!(dense_layer1[0].upper, a[0].upper, "the dense model's layer-1 inputs differ");
}

#[test]
fn hessians_are_only_for_sparsegpt() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = tiny_model(dir.path(), 15);
    let wanda = options(false, 1, Pattern::unstructured(0.5).unwrap());
    let err = calibrate::calibrate_with_hessians(&loaded, &cpu(), &samples(), &wanda, |_| {}, |_| {}, |_, _, _, _| {}).err().unwrap();
    assert!(err.to_string().contains("Hessians are gathered for SparseGPT"), "{err}");
}

#[test]
fn the_binary_writes_sparsegpt_hessians_and_refuses_what_does_not_go_together() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("m");
    let loaded = tiny_model(&model_dir, 16);
    let samples_path = dir.path().join("samples.parquet");
    let rows: Vec<artifacts::Sample> = samples()
        .into_iter()
        .enumerate()
        .map(|(i, tokens)| artifacts::Sample { sample_id: i as u64, domain: "x".into(), tokens })
        .collect();
    let info = artifacts::SamplesInfo { tokenizer_hash: "none".into(), seqlen: 10, seed: Some(0) };
    let provenance =
        artifacts::Provenance::new(artifacts::ArtifactKind::Samples, loaded.fingerprint.clone(), serde_json::json!({}), "test");
    artifacts::write_samples(&samples_path, &rows, &info, &provenance).unwrap();
    let (stats, hessians) = (dir.path().join("stats.parquet"), dir.path().join("hessians.parquet"));
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_calibrate"))
            .arg("--model")
            .arg(&model_dir)
            .arg("--samples")
            .arg(&samples_path)
            .args(["--device", "cpu", "--quiet", "--out"])
            .arg(&stats)
            .args(extra)
            .output()
            .unwrap()
    };
    let h = hessians.to_str().unwrap();
    let mask_path = dir.path().join("mask.parquet");
    let mask = mask_path.to_str().unwrap();
    let ok = run(&["--method", "sparsegpt", "--nm", "2:4", "--hessians", h, "--mask", mask]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let (provenance, read) = artifacts::read_stats(&stats).unwrap();
    assert_eq!(read.len(), 7 * TINY.layers);
    assert_eq!(provenance.params["method"], "sparsegpt");
    let reader = artifacts::HessiansReader::open(&hessians).unwrap();
    assert_eq!(
        (reader.provenance().params["blocksize"].as_u64(), reader.provenance().params["pattern"].as_str()),
        (Some(128), Some("2:4"))
    );
    assert_eq!(reader.provenance().inputs, provenance.inputs, "both artifacts come from the same samples");
    assert_eq!(reader.count(), 4 * TINY.layers);
    // The mask written is the one SparseGPT computes again from the written Hessians, values included.
    let (mask_provenance, mask_info, mask_rows) = artifacts::read_mask(&mask_path).unwrap();
    assert_eq!((mask_provenance.kind, &mask_provenance.model), (artifacts::ArtifactKind::Mask, &loaded.fingerprint));
    assert_eq!((mask_info.method.as_str(), mask_info.pattern.as_str(), mask_info.sparsity), ("sparsegpt", "2:4", 0.5));
    assert_eq!(mask_provenance.inputs, provenance.inputs, "the mask comes from the same samples");
    let mut rebuilt = Vec::new();
    for row in artifacts::HessiansReader::open(&hessians).unwrap() {
        let row = row.unwrap();
        let n = row.in_features as usize;
        let hessian = sparsity::sparsegpt::Hessian::from_values(row.full(), n, row.n_samples as usize).unwrap();
        let options = sparsity::sparsegpt::SparseGptOptions::new(Pattern::parse_nm("2:4").unwrap());
        let prepared = sparsity::sparsegpt::PreparedHessian::new(&hessian, options.percdamp).unwrap();
        for module in &row.modules {
            let w = loaded.weights.load(&format!("{module}.weight")).unwrap();
            let (updated, keep) = sparsity::sparsegpt::sparsegpt_f32(&w.data, w.shape[0], w.shape[1], &prepared, &options).unwrap();
            for (r, (bits, kept)) in sparsity::sparsegpt::kept_rows(&keep, &updated, n).enumerate() {
                rebuilt.push((module.clone(), r as u32, bits, kept));
            }
        }
    }
    let listed: Vec<(String, u32)> = mask_rows.iter().map(|r| (r.module.clone(), r.row)).collect();
    let canonical: Vec<(String, u32)> = (0..loaded.config.num_layers())
        .flat_map(|l| loaded.config.linear_modules(l))
        .flat_map(|(m, out, _)| (0..out as u32).map(move |r| (m.clone(), r)))
        .collect();
    assert_eq!(listed, canonical, "rows in the model's order, as every mask lists them");
    let mut written: Vec<_> = mask_rows.into_iter().map(|r| (r.module, r.row, r.keep, r.values.expect("values"))).collect();
    rebuilt.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    written.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    assert_eq!(written.len(), rebuilt.len());
    for (w, r) in written.iter().zip(&rebuilt) {
        assert_eq!((&w.0, w.1, &w.2), (&r.0, r.1, &r.2));
        assert!(w.3.iter().zip(&r.3).all(|(a, b)| a.to_bits() == b.to_bits()), "{} row {}: values", w.0, w.1);
    }
    // --mask alone (no Hessians) writes the same mask.
    std::fs::remove_file(&mask_path).unwrap();
    let alone = run(&["--method", "sparsegpt", "--nm", "2:4", "--mask", mask]);
    assert!(alone.status.success(), "{}", String::from_utf8_lossy(&alone.stderr));
    let mut again: Vec<_> =
        artifacts::read_mask(&mask_path).unwrap().2.into_iter().map(|r| (r.module, r.row, r.keep, r.values.unwrap())).collect();
    again.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    assert_eq!(again, written);
    std::fs::remove_file(&mask_path).unwrap();

    std::fs::remove_file(&stats).unwrap();
    for (extra, message) in [
        (vec!["--method", "sparsegpt", "--sparsity", "0.5"], "give --hessians"),
        (vec!["--method", "wanda", "--sparsity", "0.5", "--hessians", h], "written by --method sparsegpt only"),
        (vec!["--method", "sparsegpt", "--sparsity", "0.5", "--group", "layer", "--hessians", h], "per block of columns"),
        (vec!["--method", "sparsegpt", "--sparsity", "0.5", "--blocksize", "0", "--hessians", h], "--blocksize must be at least 1"),
        (vec!["--method", "wanda", "--sparsity", "0.5", "--mask", mask], "written by --method sparsegpt only"),
        (vec!["--method", "sparsegpt", "--oneshot", "--mask", mask], "cannot be used with"),
    ] {
        let refused = run(&extra);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success() && stderr.contains(message), "{extra:?}: {stderr}");
        assert!(!stats.exists() && !mask_path.exists(), "{extra:?} wrote statistics or a mask");
    }
}
