//! Every supported family against Hugging Face transformers: tiny random
//! checkpoints (2 layers) written by transformers, with its logits on a
//! fixed token sequence (`tests/fixtures/hf_tiny`, made by
//! `make_fixtures.py` there). Our forward, with the host kernels and with
//! tensor ops, matches them within 1e-4.

use std::path::PathBuf;

use model::{load_model, select_device, DeviceChoice, Kernels};

/// The families (and variants) with a fixture, by directory name.
const CASES: &[&str] =
    &["llama", "llama31", "mistral", "qwen2", "qwen3", "phi3", "phi3_longrope_short", "phi3_longrope_long", "gemma", "gemma2", "gemma3"];

/// Transformers picks LongRoPE's factors per forward call from its last
/// position, so a cache filled before the original length keeps keys
/// rotated by the short factors; a full forward of a longer sequence uses
/// the long ones throughout. Cached decoding then differs from the full
/// forward by design, in transformers as here: that case is left out of
/// the cached comparison.
const CACHED_DIFFERS: &[&str] = &["phi3_longrope_long"];

fn fixture(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_tiny").join(case)
}

#[test]
fn every_family_matches_transformers_logits() {
    let device = select_device(DeviceChoice::Cpu).unwrap().device;
    for case in CASES {
        let dir = fixture(case);
        let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("logits.json")).unwrap()).unwrap();
        let tokens: Vec<u32> = expected["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
        let want: Vec<f64> = expected["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
            .collect();
        let loaded = load_model(&dir).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(want.len(), tokens.len() * loaded.config.vocab_size(), "{case}: logits.json holds one row per token");
        let network = loaded.build(&device).unwrap();
        for kernels in [Kernels::Host, Kernels::Tensor] {
            let got = network.forward_with(&[tokens.clone()], kernels).unwrap().into_data().try_into_vec::<f32>().unwrap();
            let diff = got.iter().zip(&want).map(|(g, w)| (f64::from(*g) - w).abs()).fold(0.0, f64::max);
            assert!(diff < 1e-4, "{case} ({kernels:?}): max |subprune - transformers| = {diff}");
        }
    }
}

#[test]
fn cached_decoding_matches_transformers_logits_on_every_family() {
    let device = select_device(DeviceChoice::Cpu).unwrap().device;
    for case in CASES.iter().filter(|case| !CACHED_DIFFERS.contains(case)) {
        let dir = fixture(case);
        let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("logits.json")).unwrap()).unwrap();
        let tokens: Vec<u32> = expected["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
        let network = load_model(&dir).unwrap().build(&device).unwrap();
        let vocab = network.spec().vocab_size;
        for kernels in [Kernels::Host, Kernels::Tensor] {
            let mut cache = network.new_cache(1);
            let mut start = 0;
            for piece in [5, 1, 4, 2] {
                let step = vec![tokens[start..start + piece].to_vec()];
                let got = network.forward_cached_with(&step, &mut cache, kernels).unwrap().into_data().try_into_vec::<f32>().unwrap();
                for (i, row) in got.chunks(vocab).enumerate() {
                    let want = expected["logits"][start + i].as_array().unwrap();
                    let diff = row.iter().zip(want).map(|(g, w)| (f64::from(*g) - w.as_f64().unwrap()).abs()).fold(0.0, f64::max);
                    assert!(diff < 1e-4, "{case} ({kernels:?}), position {}: max |cached - transformers| = {diff}", start + i);
                }
                start += piece;
            }
        }
    }
}

#[test]
fn fused_phi3_projections_split_on_loading_and_fuse_back_to_the_checkpoint_s_tensors() {
    let dir = fixture("phi3_longrope_long");
    let stored = model::safetensors::read_checkpoint_dir(&dir).unwrap();
    let loaded = load_model(&dir).unwrap();
    assert!(
        loaded.weights.contains("model.layers.1.self_attn.k_proj.weight")
            && !loaded.weights.contains("model.layers.1.mlp.gate_up_proj.weight")
    );
    let written = loaded.config.arch().hf_weights(&loaded.weights);
    assert_eq!(written.len(), stored.len());
    for (name, tensor) in &written {
        assert_eq!(Some(tensor.as_ref()), stored.get(name), "{name} differs from the checkpoint's");
    }
    let json = loaded.config.to_hf_json();
    let again = model::ModelConfig::from_hf_json(&json, std::path::Path::new("config.json")).unwrap();
    assert_eq!(again, loaded.config, "the written config.json reads back to the same configuration");
}

#[test]
fn every_family_matches_transformers_logits_on_wgpu() {
    let adapters = model::device::wgpu_adapters();
    if adapters.is_empty() {
        eprintln!("no wgpu adapter: the wgpu half of the transformers comparison did not run");
        return;
    }
    let device = select_device(DeviceChoice::Wgpu).unwrap().device;
    for case in CASES {
        let dir = fixture(case);
        let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("logits.json")).unwrap()).unwrap();
        let tokens: Vec<u32> = expected["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
        let want: Vec<f64> = expected["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
            .collect();
        let network = load_model(&dir).unwrap().build(&device).unwrap();
        let got = network.forward(&[tokens]).unwrap().into_data().try_into_vec::<f32>().unwrap();
        let diff = got.iter().zip(&want).map(|(g, w)| (f64::from(*g) - w).abs()).fold(0.0, f64::max);
        assert!(
            diff < 1e-3,
            "{case} on {:?}: max |subprune - transformers| = {diff}",
            adapters.iter().map(|a| &a.name).collect::<Vec<_>>()
        );
    }
}

/// The fixtures llama.cpp's converter turned into f32 GGUF files
/// (`make_ggufs.py`), with the positions at which the GGUF model is still
/// the checkpoint's. The converter drops Mistral's sliding window, which
/// changes nothing before the window of 4 positions; Gemma 2's
/// query_pre_attn_scalar (llama.cpp scales by head_dim) and Gemma 3's layer
/// pattern (llama.cpp then makes both tiny layers sliding, so the global
/// layer loses its rotary base), which change nothing at the first position
/// only, where every query sees one key at rotary angle 0.
const GGUF_CASES: &[(&str, usize)] = &[
    ("llama", 12),
    ("llama31", 12),
    ("mistral", 4),
    ("qwen2", 12),
    ("qwen3", 12),
    ("phi3", 12),
    ("phi3_longrope_short", 12),
    ("phi3_longrope_long", 12),
    ("gemma", 12),
    ("gemma2", 1),
    ("gemma3", 1),
];

#[test]
fn gguf_files_written_by_llama_cpp_match_transformers_logits() {
    let device = select_device(DeviceChoice::Cpu).unwrap().device;
    for &(case, agree) in GGUF_CASES {
        let dir = fixture(case);
        let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("logits.json")).unwrap()).unwrap();
        let tokens: Vec<u32> = expected["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
        let loaded = load_model(&dir.join("model-f32.gguf")).unwrap_or_else(|e| panic!("{case}: {e}"));
        let from_hf = load_model(&dir).unwrap();
        assert_eq!(
            loaded.config.expected_tensors(),
            from_hf.config.expected_tensors(),
            "{case}: the GGUF and the checkpoint hold the same tensors"
        );
        let vocab = loaded.config.vocab_size();
        let network = loaded.build(&device).unwrap();
        for kernels in [Kernels::Host, Kernels::Tensor] {
            let got = network.forward_with(&[tokens.clone()], kernels).unwrap().into_data().try_into_vec::<f32>().unwrap();
            for (position, row) in got.chunks(vocab).take(agree).enumerate() {
                let want = expected["logits"][position].as_array().unwrap();
                let diff = row.iter().zip(want).map(|(g, w)| (f64::from(*g) - w.as_f64().unwrap()).abs()).fold(0.0, f64::max);
                assert!(diff < 1e-4, "{case} GGUF ({kernels:?}), position {position}: max |subprune - transformers| = {diff}");
            }
        }
    }
}
