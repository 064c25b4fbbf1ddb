//! Every supported family against Hugging Face transformers: tiny random
//! checkpoints (2 layers) written by transformers, with its logits on a
//! fixed token sequence (`tests/fixtures/hf_tiny`, made by
//! `make_fixtures.py` there), and the GGUF files llama.cpp's converter made
//! of them (`make_ggufs.py`). Our forward, with the host kernels and with
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

/// The fixtures llama.cpp's converter turned into f32 GGUF files, with the
/// positions at which the GGUF model is still the checkpoint's. The
/// converter drops Mistral's sliding window, which changes nothing before
/// the window of 4 positions; Gemma 2's query_pre_attn_scalar (llama.cpp
/// scales by head_dim) and Gemma 3's layer pattern (llama.cpp then makes
/// both tiny layers sliding, so the global layer loses its rotary base),
/// which change nothing at the first position only, where every query sees
/// one key at rotary angle 0.
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

/// One fixture: its directory, its tokens and transformers' logits on them.
struct Fixture {
    dir: PathBuf,
    tokens: Vec<u32>,
    /// One row of vocabulary logits per token.
    logits: Vec<Vec<f64>>,
}

fn fixture(case: &str) -> Fixture {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_tiny").join(case);
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("logits.json")).unwrap()).unwrap();
    let numbers = |v: &serde_json::Value| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<f64>>();
    let tokens = numbers(&json["tokens"]).into_iter().map(|t| t as u32).collect();
    let logits = json["logits"].as_array().unwrap().iter().map(numbers).collect();
    Fixture { dir, tokens, logits }
}

/// Largest |ours - transformers'| over the rows of `got` ([rows, vocab],
/// row-major) against transformers' rows from `first` on.
fn max_diff(got: &[f32], want: &[Vec<f64>], first: usize) -> f64 {
    let vocab = want[0].len();
    got.chunks(vocab).zip(&want[first..]).flat_map(|(g, w)| g.iter().zip(w).map(|(g, w)| (f64::from(*g) - w).abs())).fold(0.0, f64::max)
}

fn logits(t: burn::tensor::Tensor<3>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn every_family_matches_transformers_logits() {
    let device = select_device(DeviceChoice::Cpu).unwrap().device;
    for case in CASES {
        let f = fixture(case);
        let loaded = load_model(&f.dir).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(f.logits.len(), f.tokens.len(), "{case}: logits.json holds one row per token");
        assert_eq!(f.logits[0].len(), loaded.config.vocab_size(), "{case}: logits.json rows are as long as the vocabulary");
        let network = loaded.build(&device).unwrap();
        for kernels in [Kernels::Host, Kernels::Tensor] {
            let diff = max_diff(&logits(network.forward_with(&[f.tokens.clone()], kernels).unwrap()), &f.logits, 0);
            assert!(diff < 1e-4, "{case} ({kernels:?}): max |subprune - transformers| = {diff}");
        }
    }
}

#[test]
fn cached_decoding_matches_transformers_logits_on_every_family() {
    let device = select_device(DeviceChoice::Cpu).unwrap().device;
    for case in CASES.iter().filter(|case| !CACHED_DIFFERS.contains(case)) {
        let f = fixture(case);
        let network = load_model(&f.dir).unwrap().build(&device).unwrap();
        for kernels in [Kernels::Host, Kernels::Tensor] {
            let mut cache = network.new_cache(1);
            let mut start = 0;
            for piece in [5, 1, 4, 2] {
                let step = vec![f.tokens[start..start + piece].to_vec()];
                let diff = max_diff(&logits(network.forward_cached_with(&step, &mut cache, kernels).unwrap()), &f.logits, start);
                assert!(diff < 1e-4, "{case} ({kernels:?}), positions {start}..{}: max |cached - transformers| = {diff}", start + piece);
                start += piece;
            }
        }
    }
}

#[test]
fn fused_phi3_projections_split_on_loading_and_fuse_back_to_the_checkpoint_s_tensors() {
    let dir = fixture("phi3_longrope_long").dir;
    let stored = model::safetensors::read_checkpoint_dir(&dir).unwrap();
    let loaded = load_model(&dir).unwrap();
    assert!(
        loaded.weights.contains("model.layers.1.self_attn.k_proj.weight")
            && !loaded.weights.contains("model.layers.1.mlp.gate_up_proj.weight")
    );
    let written = model::arch::hf_tensors(loaded.weights.names(), &loaded.config.arch().fused());
    assert_eq!(written.len(), stored.len());
    for (name, parts) in &written {
        let mut data = Vec::new();
        for part in parts {
            data.extend(loaded.weights.load(part).unwrap().data);
        }
        assert_eq!(Some(&data), stored.get(name).map(|t| &t.data), "{name} differs from the checkpoint's");
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
        let f = fixture(case);
        let network = load_model(&f.dir).unwrap().build(&device).unwrap();
        let diff = max_diff(&logits(network.forward(&[f.tokens]).unwrap()), &f.logits, 0);
        let names: Vec<&String> = adapters.iter().map(|a| &a.name).collect();
        assert!(diff < 1e-3, "{case} on {names:?}: max |subprune - transformers| = {diff}");
    }
}

#[test]
fn gguf_files_written_by_llama_cpp_match_transformers_logits() {
    let device = select_device(DeviceChoice::Cpu).unwrap().device;
    for &(case, agree) in GGUF_CASES {
        let f = fixture(case);
        let loaded = load_model(&f.dir.join("model-f32.gguf")).unwrap_or_else(|e| panic!("{case}: {e}"));
        let from_hf = load_model(&f.dir).unwrap();
        let same = loaded.config.expected_tensors() == from_hf.config.expected_tensors();
        assert!(same, "{case}: the GGUF and the checkpoint hold the same tensors");
        let network = loaded.build(&device).unwrap();
        for kernels in [Kernels::Host, Kernels::Tensor] {
            let tokens = vec![f.tokens[..agree].to_vec()];
            let diff = max_diff(&logits(network.forward_with(&tokens, kernels).unwrap()), &f.logits, 0);
            assert!(diff < 1e-4, "{case} GGUF ({kernels:?}), positions 0..{agree}: max |subprune - transformers| = {diff}");
        }
    }
}
