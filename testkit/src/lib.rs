//! Tiny random Llama models written as real safetensors and GGUF files, and
//! a naive f64 reference forward with plain loops: the test fixtures of every
//! stage of subprune.

use std::collections::BTreeMap;
use std::path::Path;

use formats::gguf::writer::GgufWriter;
use formats::gguf::{GgmlType, GgufValue};
use formats::safetensors::{write_file, StoredDtype, TensorToWrite};
use formats::HostTensor;

pub use kernels::rng::Rng;

/// The cpu device (burn's ndarray backend), for tests.
#[allow(deprecated)]
pub fn cpu() -> burn::tensor::Device {
    burn::tensor::Device::ndarray()
}

/// The tiny model's hyper-parameters: 2 layers, hidden 64, GQA 4 query / 2 kv heads.
pub struct TinyConfig {
    /// Vocabulary size.
    pub vocab: usize,
    /// Hidden size.
    pub hidden: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
    /// Rotary base.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub eps: f64,
    /// Whether the LM head is the embedding.
    pub tied: bool,
}

/// The default tiny model.
pub const TINY: TinyConfig = TinyConfig {
    vocab: 96,
    hidden: 64,
    intermediate: 128,
    layers: 2,
    heads: 4,
    kv_heads: 2,
    head_dim: 16,
    rope_theta: 10000.0,
    eps: 1e-5,
    tied: false,
};

/// Random weights in Hugging Face naming and layout.
pub fn tiny_weights(cfg: &TinyConfig, seed: u64) -> BTreeMap<String, HostTensor> {
    let mut rng = Rng::new(seed);
    let mut w = BTreeMap::new();
    let mut rand = |shape: Vec<usize>, scale: f32, offset: f32| {
        let n: usize = shape.iter().product();
        HostTensor::new(shape, (0..n).map(|_| offset + scale * rng.next_f32()).collect())
    };
    let (h, q, kv, i) = (cfg.hidden, cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.intermediate);
    w.insert("model.embed_tokens.weight".into(), rand(vec![cfg.vocab, h], 1.0, 0.0));
    for l in 0..cfg.layers {
        let p = format!("model.layers.{l}");
        w.insert(format!("{p}.input_layernorm.weight"), rand(vec![h], 0.2, 1.0));
        w.insert(format!("{p}.post_attention_layernorm.weight"), rand(vec![h], 0.2, 1.0));
        w.insert(format!("{p}.self_attn.q_proj.weight"), rand(vec![q, h], 0.25, 0.0));
        w.insert(format!("{p}.self_attn.k_proj.weight"), rand(vec![kv, h], 0.25, 0.0));
        w.insert(format!("{p}.self_attn.v_proj.weight"), rand(vec![kv, h], 0.25, 0.0));
        w.insert(format!("{p}.self_attn.o_proj.weight"), rand(vec![h, q], 0.25, 0.0));
        w.insert(format!("{p}.mlp.gate_proj.weight"), rand(vec![i, h], 0.25, 0.0));
        w.insert(format!("{p}.mlp.up_proj.weight"), rand(vec![i, h], 0.25, 0.0));
        w.insert(format!("{p}.mlp.down_proj.weight"), rand(vec![h, i], 0.2, 0.0));
    }
    w.insert("model.norm.weight".into(), rand(vec![h], 0.2, 1.0));
    if !cfg.tied {
        w.insert("lm_head.weight".into(), rand(vec![cfg.vocab, h], 0.5, 0.0));
    }
    w
}

/// Its Hugging Face `config.json`.
pub fn hf_config_json(cfg: &TinyConfig) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab,
        "hidden_size": cfg.hidden,
        "intermediate_size": cfg.intermediate,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": 128,
        "tie_word_embeddings": cfg.tied,
        "bos_token_id": 1,
        "eos_token_id": 2
    })
}

/// Writes a Hugging Face checkpoint directory (config.json + model.safetensors).
pub fn write_hf_dir(dir: &Path, cfg: &TinyConfig, weights: &BTreeMap<String, HostTensor>, dtype: StoredDtype) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&hf_config_json(cfg)).unwrap()).unwrap();
    let tensors: Vec<TensorToWrite<'_>> = weights.iter().map(|(name, t)| TensorToWrite { name, dtype, tensor: t }).collect();
    write_file(&dir.join("model.safetensors"), &tensors, &BTreeMap::new()).unwrap();
}

/// llama.cpp's converter permutation of q/k rows (the inverse of what the loader undoes).
pub fn permute_rows(data: &[f32], heads: usize, row_len: usize) -> Vec<f32> {
    let rows = data.len() / row_len;
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0.0; data.len()];
    for h in 0..heads {
        for t in 0..2 {
            for j in 0..half {
                let hf_row = h * head_dim + t * half + j;
                let gguf_row = h * head_dim + 2 * j + t;
                out[gguf_row * row_len..(gguf_row + 1) * row_len].copy_from_slice(&data[hf_row * row_len..(hf_row + 1) * row_len]);
            }
        }
    }
    out
}

fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, tail) = rest.split_once('.').unwrap();
    let module = match tail {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        other => panic!("unmapped {other}"),
    };
    format!("blk.{layer}.{module}")
}

/// Writes the model as a GGUF file the way llama.cpp's converter does
/// (llama naming, q/k rows permuted); 2-D weights stored as `quant`
/// (F32, Q8_0 or Q4_0), norms always F32.
pub fn write_gguf(path: &Path, cfg: &TinyConfig, weights: &BTreeMap<String, HostTensor>, quant: GgmlType) {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", GgufValue::String("llama".into()));
    w.add_metadata("general.name", GgufValue::String("tiny-llama".into()));
    w.add_metadata("llama.context_length", GgufValue::U32(128));
    w.add_metadata("llama.embedding_length", GgufValue::U32(cfg.hidden as u32));
    w.add_metadata("llama.block_count", GgufValue::U32(cfg.layers as u32));
    w.add_metadata("llama.feed_forward_length", GgufValue::U32(cfg.intermediate as u32));
    w.add_metadata("llama.attention.head_count", GgufValue::U32(cfg.heads as u32));
    w.add_metadata("llama.attention.head_count_kv", GgufValue::U32(cfg.kv_heads as u32));
    w.add_metadata("llama.rope.freq_base", GgufValue::F32(cfg.rope_theta as f32));
    w.add_metadata("llama.rope.dimension_count", GgufValue::U32(cfg.head_dim as u32));
    w.add_metadata("llama.attention.layer_norm_rms_epsilon", GgufValue::F32(cfg.eps as f32));
    w.add_metadata("tokenizer.ggml.bos_token_id", GgufValue::U32(1));
    w.add_metadata("tokenizer.ggml.eos_token_id", GgufValue::U32(2));
    for (name, t) in weights {
        let mut data = t.data.clone();
        if name.ends_with("q_proj.weight") {
            data = permute_rows(&data, cfg.heads, t.shape[1]);
        } else if name.ends_with("k_proj.weight") {
            data = permute_rows(&data, cfg.kv_heads, t.shape[1]);
        }
        let gname = gguf_name(name);
        if t.shape.len() == 2 && quant == GgmlType::Q8_0 {
            w.add_tensor(&gname, &t.shape, GgmlType::Q8_0, formats::gguf::quantize::quantize_q8_0(&data));
        } else if t.shape.len() == 2 && quant == GgmlType::Q4_0 {
            w.add_tensor(&gname, &t.shape, GgmlType::Q4_0, formats::gguf::quantize::quantize_q4_0(&data));
        } else {
            w.add_f32_tensor(&gname, &t.shape, &data);
        }
    }
    w.write(path).unwrap();
}

/// The weights as the reference should see them after a storage round trip.
pub fn round_trip(weights: &BTreeMap<String, HostTensor>, f: impl Fn(&[f32]) -> Vec<f32>) -> BTreeMap<String, HostTensor> {
    weights
        .iter()
        .map(|(n, t)| {
            let data = if t.shape.len() == 2 { f(&t.data) } else { t.data.clone() };
            (n.clone(), HostTensor::new(t.shape.clone(), data))
        })
        .collect()
}

fn rms_norm(x: &[f64], w: &[f32], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, w)| v * inv * f64::from(*w)).collect()
}

fn matvec(w: &HostTensor, x: &[f64]) -> Vec<f64> {
    let (rows, cols) = (w.shape[0], w.shape[1]);
    (0..rows).map(|r| (0..cols).map(|c| f64::from(w.data[r * cols + c]) * x[c]).sum()).collect()
}

fn rope(v: &mut [f64], pos: usize, theta: f64) {
    let d = v.len();
    let half = d / 2;
    let orig = v.to_vec();
    for i in 0..half {
        let freq = 1.0 / theta.powf((2 * i) as f64 / d as f64);
        let (s, c) = (pos as f64 * freq).sin_cos();
        v[i] = orig[i] * c - orig[i + half] * s;
        v[i + half] = orig[i + half] * c + orig[i] * s;
    }
}

/// Naive f64 forward with plain loops: logits [seq][vocab] of one sequence.
pub fn reference_forward(cfg: &TinyConfig, w: &BTreeMap<String, HostTensor>, tokens: &[u32]) -> Vec<Vec<f64>> {
    let (h, hd) = (cfg.hidden, cfg.head_dim);
    let emb = &w["model.embed_tokens.weight"];
    let mut xs: Vec<Vec<f64>> =
        tokens.iter().map(|&t| emb.data[t as usize * h..(t as usize + 1) * h].iter().map(|&v| f64::from(v)).collect()).collect();
    let rep = cfg.heads / cfg.kv_heads;
    for l in 0..cfg.layers {
        let p = format!("model.layers.{l}");
        let get = |n: &str| &w[&format!("{p}.{n}")];
        let normed: Vec<Vec<f64>> = xs.iter().map(|x| rms_norm(x, &get("input_layernorm.weight").data, cfg.eps)).collect();
        let qs: Vec<Vec<f64>> = normed.iter().map(|x| matvec(get("self_attn.q_proj.weight"), x)).collect();
        let ks: Vec<Vec<f64>> = normed.iter().map(|x| matvec(get("self_attn.k_proj.weight"), x)).collect();
        let vs: Vec<Vec<f64>> = normed.iter().map(|x| matvec(get("self_attn.v_proj.weight"), x)).collect();
        let mut attn_out = vec![vec![0.0; cfg.heads * hd]; tokens.len()];
        for head in 0..cfg.heads {
            let kvh = head / rep;
            for i in 0..tokens.len() {
                let mut q = qs[i][head * hd..(head + 1) * hd].to_vec();
                rope(&mut q, i, cfg.rope_theta);
                let mut scores = Vec::with_capacity(i + 1);
                for j in 0..=i {
                    let mut k = ks[j][kvh * hd..(kvh + 1) * hd].to_vec();
                    rope(&mut k, j, cfg.rope_theta);
                    scores.push(q.iter().zip(&k).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt());
                }
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let z: f64 = exps.iter().sum();
                for (j, e) in exps.iter().enumerate() {
                    for d in 0..hd {
                        attn_out[i][head * hd + d] += e / z * vs[j][kvh * hd + d];
                    }
                }
            }
        }
        for i in 0..tokens.len() {
            let o = matvec(get("self_attn.o_proj.weight"), &attn_out[i]);
            for d in 0..h {
                xs[i][d] += o[d];
            }
            let n = rms_norm(&xs[i], &get("post_attention_layernorm.weight").data, cfg.eps);
            let g = matvec(get("mlp.gate_proj.weight"), &n);
            let u = matvec(get("mlp.up_proj.weight"), &n);
            let act: Vec<f64> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let down = matvec(get("mlp.down_proj.weight"), &act);
            for d in 0..h {
                xs[i][d] += down[d];
            }
        }
    }
    let head = if cfg.tied { &w["model.embed_tokens.weight"] } else { &w["lm_head.weight"] };
    xs.iter().map(|x| matvec(head, &rms_norm(x, &w["model.norm.weight"].data, cfg.eps))).collect()
}

/// Largest absolute difference between burn logits [batch=1, seq, vocab] and the reference.
pub fn max_abs_diff(logits: &[f32], reference: &[Vec<f64>]) -> f64 {
    let vocab = reference[0].len();
    reference
        .iter()
        .enumerate()
        .flat_map(|(i, row)| row.iter().enumerate().map(move |(j, r)| (i * vocab + j, *r)))
        .map(|(k, r)| (f64::from(logits[k]) - r).abs())
        .fold(0.0, f64::max)
}

/// `../shared/data` beside the workspace, where the tests read the shared
/// data sets, found from the `CARGO_MANIFEST_DIR` that cargo sets when it
/// runs a test of one of the workspace's crates. It is read at run time: a
/// build cache shared with a checkout elsewhere can hand over test binaries
/// built there, with that checkout's path baked in.
pub fn shared_data() -> std::path::PathBuf {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for tests");
    std::path::Path::new(&crate_dir).join("../../shared/data")
}

/// Path of the real SmolLM2-135M-Instruct GGUF for tests that need it, from
/// `SUBPRUNE_SMOLLM2_GGUF` (set by `cargo xtask test`, which fetches the model).
/// Panics with that instruction when unset: such tests never pass silently.
pub fn smollm2_gguf() -> std::path::PathBuf {
    match std::env::var_os("SUBPRUNE_SMOLLM2_GGUF") {
        Some(p) => std::path::PathBuf::from(p),
        None => panic!(
            "SUBPRUNE_SMOLLM2_GGUF is not set: run these tests through `cargo xtask test`, \
             which fetches SmolLM2-135M-Instruct.Q4_1.gguf and sets it"
        ),
    }
}

/// The tiny Gemma 3 of the tests: 2 layers (one local, one global with the
/// pattern 2), hidden 64, head_dim 24 (independent of hidden / heads),
/// GQA 4 query / 2 kv heads, sliding window 5.
pub struct TinyGemma {
    /// Vocabulary size.
    pub vocab: usize,
    /// Hidden size.
    pub hidden: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
    /// Rotary base of global layers.
    pub rope_theta: f64,
    /// Rotary base of local layers.
    pub rope_local: f64,
    /// Attention scale is `query_pre_attn_scalar^-0.5`.
    pub query_pre_attn_scalar: f64,
    /// Window of local layers.
    pub sliding_window: usize,
    /// Every `pattern`-th layer is global.
    pub pattern: usize,
    /// RMSNorm epsilon.
    pub eps: f64,
}

/// The default tiny Gemma 3.
pub const TINY_GEMMA: TinyGemma = TinyGemma {
    vocab: 96,
    hidden: 64,
    intermediate: 128,
    layers: 2,
    heads: 4,
    kv_heads: 2,
    head_dim: 24,
    rope_theta: 1_000_000.0,
    rope_local: 10_000.0,
    query_pre_attn_scalar: 20.0,
    sliding_window: 5,
    pattern: 2,
    eps: 1e-6,
};

/// Random Gemma 3 weights in Hugging Face naming and layout (norm weights
/// around 0, since Gemma scales by `1 + w`; tied embeddings).
pub fn tiny_gemma_weights(cfg: &TinyGemma, seed: u64) -> BTreeMap<String, HostTensor> {
    let mut rng = Rng::new(seed);
    let mut w = BTreeMap::new();
    let mut rand = |shape: Vec<usize>, scale: f32| {
        let n: usize = shape.iter().product();
        HostTensor::new(shape, (0..n).map(|_| scale * rng.next_f32()).collect())
    };
    let (h, q, kv, i, d) = (cfg.hidden, cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.intermediate, cfg.head_dim);
    w.insert("model.embed_tokens.weight".into(), rand(vec![cfg.vocab, h], 0.2));
    for l in 0..cfg.layers {
        let p = format!("model.layers.{l}");
        for norm in ["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"] {
            w.insert(format!("{p}.{norm}.weight"), rand(vec![h], 0.3));
        }
        w.insert(format!("{p}.self_attn.q_norm.weight"), rand(vec![d], 0.3));
        w.insert(format!("{p}.self_attn.k_norm.weight"), rand(vec![d], 0.3));
        w.insert(format!("{p}.self_attn.q_proj.weight"), rand(vec![q, h], 0.25));
        w.insert(format!("{p}.self_attn.k_proj.weight"), rand(vec![kv, h], 0.25));
        w.insert(format!("{p}.self_attn.v_proj.weight"), rand(vec![kv, h], 0.25));
        w.insert(format!("{p}.self_attn.o_proj.weight"), rand(vec![h, q], 0.25));
        w.insert(format!("{p}.mlp.gate_proj.weight"), rand(vec![i, h], 0.25));
        w.insert(format!("{p}.mlp.up_proj.weight"), rand(vec![i, h], 0.25));
        w.insert(format!("{p}.mlp.down_proj.weight"), rand(vec![h, i], 0.2));
    }
    w.insert("model.norm.weight".into(), rand(vec![h], 0.3));
    w
}

/// Its Hugging Face `config.json` (model_type gemma3_text).
pub fn gemma_config_json(cfg: &TinyGemma) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": cfg.vocab,
        "hidden_size": cfg.hidden,
        "intermediate_size": cfg.intermediate,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": cfg.eps,
        "rope_theta": cfg.rope_theta,
        "rope_local_base_freq": cfg.rope_local,
        "query_pre_attn_scalar": cfg.query_pre_attn_scalar,
        "sliding_window": cfg.sliding_window,
        "sliding_window_pattern": cfg.pattern,
        "max_position_embeddings": 128,
        "tie_word_embeddings": true,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0
    })
}

/// Writes the tiny Gemma 3 as a Hugging Face checkpoint directory.
pub fn write_gemma_hf_dir(dir: &Path, cfg: &TinyGemma, weights: &BTreeMap<String, HostTensor>, dtype: StoredDtype) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&gemma_config_json(cfg)).unwrap()).unwrap();
    let tensors: Vec<TensorToWrite<'_>> = weights.iter().map(|(name, t)| TensorToWrite { name, dtype, tensor: t }).collect();
    write_file(&dir.join("model.safetensors"), &tensors, &BTreeMap::new()).unwrap();
}

/// The tiny model as a Gemma 2 `config.json`: layers alternate local and
/// global as the pattern 2 does, both with the rotary base `rope_theta`, no
/// q/k norms, and the given attention-logit and final-logit soft-caps
/// (`None`: no capping).
pub fn gemma2_config_json(cfg: &TinyGemma, attn_cap: Option<f64>, final_cap: Option<f64>) -> serde_json::Value {
    assert_eq!(cfg.pattern, 2, "Gemma 2 alternates local and global layers");
    serde_json::json!({
        "architectures": ["Gemma2ForCausalLM"],
        "model_type": "gemma2",
        "vocab_size": cfg.vocab,
        "hidden_size": cfg.hidden,
        "intermediate_size": cfg.intermediate,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": cfg.eps,
        "rope_theta": cfg.rope_theta,
        "query_pre_attn_scalar": cfg.query_pre_attn_scalar,
        "sliding_window": cfg.sliding_window,
        "attn_logit_softcapping": attn_cap,
        "final_logit_softcapping": final_cap,
        "max_position_embeddings": 128,
        "tie_word_embeddings": true,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0
    })
}

/// Writes the tiny model as a Gemma 2 checkpoint directory (see
/// [`gemma2_config_json`]); the q/k norm weights of `weights` are left out.
pub fn write_gemma2_hf_dir(
    dir: &Path,
    cfg: &TinyGemma,
    weights: &BTreeMap<String, HostTensor>,
    attn_cap: Option<f64>,
    final_cap: Option<f64>,
) {
    std::fs::create_dir_all(dir).unwrap();
    let json = gemma2_config_json(cfg, attn_cap, final_cap);
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&json).unwrap()).unwrap();
    let tensors: Vec<TensorToWrite<'_>> = weights
        .iter()
        .filter(|(name, _)| !name.ends_with("q_norm.weight") && !name.ends_with("k_norm.weight"))
        .map(|(name, t)| TensorToWrite { name, dtype: StoredDtype::F32, tensor: t })
        .collect();
    write_file(&dir.join("model.safetensors"), &tensors, &BTreeMap::new()).unwrap();
}

fn gemma_gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, tail) = rest.split_once('.').unwrap();
    let module = match tail {
        "input_layernorm.weight" => "attn_norm",
        "post_attention_layernorm.weight" => "post_attention_norm",
        "pre_feedforward_layernorm.weight" => "ffn_norm",
        "post_feedforward_layernorm.weight" => "post_ffw_norm",
        "self_attn.q_norm.weight" => "attn_q_norm",
        "self_attn.k_norm.weight" => "attn_k_norm",
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        other => panic!("unmapped {other}"),
    };
    format!("blk.{layer}.{module}.weight")
}

/// Writes the tiny Gemma 3 as a GGUF file the way llama.cpp's converter does
/// (gemma3 naming, q/k rows not permuted, `1 + w` stored for every norm);
/// 2-D weights as `quant` (F32 or Q8_0). llama.cpp's Gemma 3 layout is fixed
/// (local rotary base 10000, every sixth layer global), so the file can
/// only describe the tiny model when `cfg` has those values.
pub fn write_gemma_gguf(path: &Path, cfg: &TinyGemma, weights: &BTreeMap<String, HostTensor>, quant: GgmlType) {
    assert!(cfg.rope_local == 10_000.0 && cfg.pattern == 6, "GGUF cannot state another local rotary base or pattern");
    let mut w = GgufWriter::new();
    let arch = "gemma3";
    let u32_of = |v: usize| GgufValue::U32(v as u32);
    w.add_metadata("general.architecture", GgufValue::String(arch.into()));
    w.add_metadata("general.name", GgufValue::String("tiny-gemma3".into()));
    w.add_metadata(&format!("{arch}.context_length"), u32_of(128));
    w.add_metadata(&format!("{arch}.embedding_length"), u32_of(cfg.hidden));
    w.add_metadata(&format!("{arch}.block_count"), u32_of(cfg.layers));
    w.add_metadata(&format!("{arch}.feed_forward_length"), u32_of(cfg.intermediate));
    w.add_metadata(&format!("{arch}.attention.head_count"), u32_of(cfg.heads));
    w.add_metadata(&format!("{arch}.attention.head_count_kv"), u32_of(cfg.kv_heads));
    w.add_metadata(&format!("{arch}.attention.key_length"), u32_of(cfg.head_dim));
    w.add_metadata(&format!("{arch}.attention.value_length"), u32_of(cfg.head_dim));
    w.add_metadata(&format!("{arch}.attention.sliding_window"), u32_of(cfg.sliding_window));
    w.add_metadata(&format!("{arch}.rope.freq_base"), GgufValue::F32(cfg.rope_theta as f32));
    w.add_metadata(&format!("{arch}.attention.layer_norm_rms_epsilon"), GgufValue::F32(cfg.eps as f32));
    w.add_metadata("tokenizer.ggml.bos_token_id", GgufValue::U32(2));
    w.add_metadata("tokenizer.ggml.eos_token_id", GgufValue::U32(1));
    w.add_metadata("tokenizer.ggml.padding_token_id", GgufValue::U32(0));
    for (name, t) in weights {
        let gname = gemma_gguf_name(name);
        if name.ends_with("norm.weight") {
            let plus_one: Vec<f32> = t.data.iter().map(|v| v + 1.0).collect();
            w.add_f32_tensor(&gname, &t.shape, &plus_one);
        } else if t.shape.len() == 2 && quant == GgmlType::Q8_0 {
            w.add_tensor(&gname, &t.shape, GgmlType::Q8_0, formats::gguf::quantize::quantize_q8_0(&t.data));
        } else {
            w.add_f32_tensor(&gname, &t.shape, &t.data);
        }
    }
    w.write(path).unwrap();
}

fn gemma_norm(x: &[f64], w: &[f32], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, w)| v * inv * (1.0 + f64::from(*w))).collect()
}

fn gelu_tanh(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
}

/// Naive f64 forward of the tiny Gemma 3 with plain loops: logits
/// [seq][vocab] of one sequence. Layer `l` is global when `(l + 1) %
/// pattern == 0`, else it attends to the last `sliding_window` positions.
pub fn gemma_reference_forward(cfg: &TinyGemma, w: &BTreeMap<String, HostTensor>, tokens: &[u32]) -> Vec<Vec<f64>> {
    let (h, hd) = (cfg.hidden, cfg.head_dim);
    let emb = &w["model.embed_tokens.weight"];
    let scale = (h as f64).sqrt();
    let mut xs: Vec<Vec<f64>> =
        tokens.iter().map(|&t| emb.data[t as usize * h..(t as usize + 1) * h].iter().map(|&v| f64::from(v) * scale).collect()).collect();
    let rep = cfg.heads / cfg.kv_heads;
    for l in 0..cfg.layers {
        let global = (l + 1) % cfg.pattern == 0;
        let theta = if global { cfg.rope_theta } else { cfg.rope_local };
        let p = format!("model.layers.{l}");
        let get = |n: &str| &w[&format!("{p}.{n}")];
        let normed: Vec<Vec<f64>> = xs.iter().map(|x| gemma_norm(x, &get("input_layernorm.weight").data, cfg.eps)).collect();
        let head_norm = |v: &[f64], name: &str| gemma_norm(v, &get(name).data, cfg.eps);
        let qs: Vec<Vec<f64>> = normed.iter().map(|x| matvec(get("self_attn.q_proj.weight"), x)).collect();
        let ks: Vec<Vec<f64>> = normed.iter().map(|x| matvec(get("self_attn.k_proj.weight"), x)).collect();
        let vs: Vec<Vec<f64>> = normed.iter().map(|x| matvec(get("self_attn.v_proj.weight"), x)).collect();
        let mut attn_out = vec![vec![0.0; cfg.heads * hd]; tokens.len()];
        for head in 0..cfg.heads {
            let kvh = head / rep;
            for i in 0..tokens.len() {
                let mut q = head_norm(&qs[i][head * hd..(head + 1) * hd], "self_attn.q_norm.weight");
                rope(&mut q, i, theta);
                let first = if global { 0 } else { (i + 1).saturating_sub(cfg.sliding_window) };
                let mut scores = Vec::new();
                for j in first..=i {
                    let mut k = head_norm(&ks[j][kvh * hd..(kvh + 1) * hd], "self_attn.k_norm.weight");
                    rope(&mut k, j, theta);
                    scores.push(q.iter().zip(&k).map(|(a, b)| a * b).sum::<f64>() / cfg.query_pre_attn_scalar.sqrt());
                }
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let z: f64 = exps.iter().sum();
                for (k, e) in exps.iter().enumerate() {
                    for d in 0..hd {
                        attn_out[i][head * hd + d] += e / z * vs[first + k][kvh * hd + d];
                    }
                }
            }
        }
        for i in 0..tokens.len() {
            let o =
                gemma_norm(&matvec(get("self_attn.o_proj.weight"), &attn_out[i]), &get("post_attention_layernorm.weight").data, cfg.eps);
            for d in 0..h {
                xs[i][d] += o[d];
            }
            let n = gemma_norm(&xs[i], &get("pre_feedforward_layernorm.weight").data, cfg.eps);
            let g = matvec(get("mlp.gate_proj.weight"), &n);
            let u = matvec(get("mlp.up_proj.weight"), &n);
            let act: Vec<f64> = g.iter().zip(&u).map(|(g, u)| gelu_tanh(*g) * u).collect();
            let down = gemma_norm(&matvec(get("mlp.down_proj.weight"), &act), &get("post_feedforward_layernorm.weight").data, cfg.eps);
            for d in 0..h {
                xs[i][d] += down[d];
            }
        }
    }
    xs.iter().map(|x| matvec(emb, &gemma_norm(x, &w["model.norm.weight"].data, cfg.eps))).collect()
}

/// Path of the real Gemma 3 270M GGUF for tests that need it, from
/// `SUBPRUNE_GEMMA3_GGUF` (set by `cargo xtask test`, which fetches the model).
/// Panics with that instruction when unset: such tests never pass silently.
pub fn gemma3_gguf() -> std::path::PathBuf {
    match std::env::var_os("SUBPRUNE_GEMMA3_GGUF") {
        Some(p) => std::path::PathBuf::from(p),
        None => panic!(
            "SUBPRUNE_GEMMA3_GGUF is not set: run these tests through `cargo xtask test`, \
             which fetches gemma-3-270m-q4_k_m.gguf and sets it"
        ),
    }
}
