//! A tiny random Gemma 3 written as safetensors and as GGUF (F32, Q8_0)
//! through the user-facing loaders: logits agree with each other and with a
//! naive f64 forward, over sequences longer than the sliding window.

use model::gguf::GgmlType;
use model::safetensors::StoredDtype;
use model::{load_model, select_device, DeviceChoice, ModelConfig};
use testkit::*;

/// 12 tokens, over twice the sliding window of 5.
const TOKENS: [u32; 12] = [5, 17, 3, 95, 42, 0, 8, 61, 61, 30, 77, 1];

/// The GGUF variant: llama.cpp fixes Gemma 3's pattern at one global layer
/// in six and its attention scale at head_dim^-0.5.
const SIX_LAYERS: TinyGemma = TinyGemma { layers: 6, pattern: 6, query_pre_attn_scalar: 24.0, ..TINY_GEMMA };

fn logits_of(path: &std::path::Path, tokens: &[Vec<u32>]) -> Vec<f32> {
    let loaded = load_model(path).unwrap();
    let device = select_device(DeviceChoice::Cpu).unwrap();
    let model = loaded.build(&device.device).unwrap();
    model.forward(tokens).unwrap().into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn safetensors_f32_matches_reference_past_the_sliding_window() {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_gemma_weights(&TINY_GEMMA, 1);
    write_gemma_hf_dir(dir.path(), &TINY_GEMMA, &weights, StoredDtype::F32);
    let loaded = load_model(dir.path()).unwrap();
    let Some(config) = loaded.config.downcast_ref::<model::arch::gemma::GemmaConfig>() else {
        panic!("expected a Gemma configuration, found {:?}", loaded.config)
    };
    assert_eq!(config.layer_types, vec![model::arch::gemma::LayerType::Sliding, model::arch::gemma::LayerType::Full]);
    let logits = logits_of(dir.path(), &[TOKENS.to_vec()]);
    let reference = gemma_reference_forward(&TINY_GEMMA, &weights, &TOKENS);
    let diff = max_abs_diff(&logits, &reference);
    assert!(diff < 1e-4, "max |burn - reference| = {diff}");
    // The window matters: a reference attending to everything differs.
    let unwindowed = TinyGemma { sliding_window: 100, ..TINY_GEMMA };
    let far = max_abs_diff(&logits, &gemma_reference_forward(&unwindowed, &weights, &TOKENS));
    assert!(far > 1e-3, "the sliding window should change the logits (diff {far})");
}

#[test]
fn batched_forward_equals_single_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_gemma_weights(&TINY_GEMMA, 2);
    write_gemma_hf_dir(dir.path(), &TINY_GEMMA, &weights, StoredDtype::F32);
    let other: Vec<u32> = TOKENS.iter().rev().copied().collect();
    let batched = logits_of(dir.path(), &[TOKENS.to_vec(), other.clone()]);
    let n = TOKENS.len() * TINY_GEMMA.vocab;
    for (k, seq) in [TOKENS.to_vec(), other].iter().enumerate() {
        let diff = max_abs_diff(&batched[k * n..(k + 1) * n], &gemma_reference_forward(&TINY_GEMMA, &weights, seq));
        assert!(diff < 1e-4, "sequence {k}: max |batched - reference| = {diff}");
    }
}

#[test]
fn gguf_f32_matches_safetensors_and_reference() {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_gemma_weights(&SIX_LAYERS, 3);
    let hf = dir.path().join("hf");
    write_gemma_hf_dir(&hf, &SIX_LAYERS, &weights, StoredDtype::F32);
    let gguf = dir.path().join("tiny-gemma3.gguf");
    write_gemma_gguf(&gguf, &SIX_LAYERS, &weights, GgmlType::F32);
    let (a, b) = (load_model(&gguf).unwrap(), load_model(&hf).unwrap());
    let (a_weights, b_weights) = (a.weights.load_all().unwrap(), b.weights.load_all().unwrap());
    for (name, t) in b_weights.iter() {
        let g = a_weights.get(name).unwrap_or_else(|| panic!("{name} missing from the GGUF load"));
        let diff = g.data.iter().zip(&t.data).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(g.shape == t.shape && diff < 1e-6, "{name} differs between GGUF and safetensors by {diff}");
    }
    assert_eq!(a.weights.len(), b.weights.len());
    assert_eq!(a.fingerprint, b.fingerprint, "GGUF metadata and config.json describe one model");
    let from_gguf = logits_of(&gguf, &[TOKENS.to_vec()]);
    let from_hf = logits_of(&hf, &[TOKENS.to_vec()]);
    let between = from_gguf.iter().zip(&from_hf).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(between < 1e-4, "max |gguf - safetensors| = {between}");
    let diff = max_abs_diff(&from_gguf, &gemma_reference_forward(&SIX_LAYERS, &weights, &TOKENS));
    assert!(diff < 1e-4, "max |burn - reference| = {diff}");
}

#[test]
fn gguf_q8_0_matches_reference_on_dequantized_weights() {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_gemma_weights(&SIX_LAYERS, 4);
    let gguf = dir.path().join("tiny-gemma3-q8_0.gguf");
    write_gemma_gguf(&gguf, &SIX_LAYERS, &weights, GgmlType::Q8_0);
    let dequantized =
        round_trip(&weights, |v| model::gguf::dequantize(GgmlType::Q8_0, &model::gguf::quantize::quantize_q8_0(v), v.len()).unwrap());
    let logits = logits_of(&gguf, &[TOKENS.to_vec()]);
    let diff = max_abs_diff(&logits, &gemma_reference_forward(&SIX_LAYERS, &dequantized, &TOKENS));
    assert!(diff < 1e-4, "max |burn - reference| = {diff}");
}

#[test]
fn written_config_reads_back_and_names_gemma3() {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_gemma_weights(&TINY_GEMMA, 5);
    write_gemma_hf_dir(dir.path(), &TINY_GEMMA, &weights, StoredDtype::F32);
    let loaded = load_model(dir.path()).unwrap();
    let json = loaded.config.to_hf_json();
    assert_eq!(json["architectures"][0], "Gemma3ForCausalLM");
    assert_eq!(json["model_type"], "gemma3_text");
    let again = model::arch::gemma::GemmaConfig::from_hf_json(&json, std::path::Path::new("config.json")).unwrap();
    assert_eq!(ModelConfig::new(Box::new(again), std::path::Path::new("config.json")).unwrap(), loaded.config);
}
