//! The configuration parsers of the architecture families: what they read
//! from `config.json`, what they write back, and how GGUF names map.

use std::path::Path;

use model::arch::gemma::{GemmaConfig, GemmaVersion, LayerType};
use model::arch::llama::LlamaConfig;
use model::arch::{ArchConfig, GgufTensor};

/// The rotary frequencies of the first sliding-window layer.
fn sliding_frequencies(c: &GemmaConfig) -> Vec<f64> {
    let spec = c.spec();
    let at = c.layer_types.iter().position(|t| *t == LayerType::Sliding).expect("a sliding layer");
    spec.rope_frequencies[spec.layers[at].rope].clone()
}

/// The rotary frequencies of global layers.
fn full_frequencies(c: &GemmaConfig) -> Vec<f64> {
    let spec = c.spec();
    match c.layer_types.iter().position(|t| *t == LayerType::Full) {
        Some(at) => spec.rope_frequencies[spec.layers[at].rope].clone(),
        None => spec.rope_frequencies[0].clone(),
    }
}

fn path() -> &'static Path {
    Path::new("config.json")
}

#[test]
fn gemma3_config_reads_pattern_and_rope_bases() {
    let json = serde_json::json!({
        "model_type": "gemma3_text", "vocab_size": 262144, "hidden_size": 640, "intermediate_size": 2048,
        "num_hidden_layers": 18, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 256, "sliding_window": 512,
        "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "rope_scaling": null,
        "sliding_window_pattern": 6, "max_position_embeddings": 32768
    });
    let c = GemmaConfig::from_hf_json(&json, path()).unwrap();
    assert_eq!(c.version, GemmaVersion::Gemma3);
    // Layers 5, 11, 17 (every sixth) are global.
    let full: Vec<usize> = c.layer_types.iter().enumerate().filter(|(_, t)| **t == LayerType::Full).map(|(i, _)| i).collect();
    assert_eq!(full, vec![5, 11, 17]);
    assert_eq!(sliding_frequencies(&c)[1], 1.0 / 10000f64.powf(2.0 / 256.0));
    assert_eq!(full_frequencies(&c)[1], 1.0 / 1e6f64.powf(2.0 / 256.0));
    assert!(c.tie_word_embeddings && c.attn_logit_softcapping.is_none());
    // layer_types, when given, win over the pattern; transformers 5's rope_parameters are read too.
    let mut json = json;
    json["layer_types"] = serde_json::json!(vec!["full_attention"; 18]);
    json["rope_parameters"] = serde_json::json!({
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}
    });
    let c = GemmaConfig::from_hf_json(&json, path()).unwrap();
    assert!(c.layer_types.iter().all(|t| *t == LayerType::Full));
    assert_eq!(c.rope_scaling_factor, Some(8.0));
    assert_eq!(full_frequencies(&c)[0], 1.0 / 8.0);
    // The written config reads back to the same configuration.
    assert_eq!(GemmaConfig::from_hf_json(&c.to_hf_json(), path()).unwrap(), c);
}

#[test]
fn gemma2_config_alternates_layers_and_soft_caps() {
    let json = serde_json::json!({
        "model_type": "gemma2", "vocab_size": 256000, "hidden_size": 2304, "intermediate_size": 9216,
        "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 224, "sliding_window": 4096,
        "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0
    });
    let c = GemmaConfig::from_hf_json(&json, path()).unwrap();
    assert_eq!(c.layer_types, vec![LayerType::Sliding, LayerType::Full, LayerType::Sliding, LayerType::Full]);
    assert_eq!((c.attn_logit_softcapping, c.final_logit_softcapping), (Some(50.0), Some(30.0)));
    assert_eq!(c.query_pre_attn_scalar, 224.0);
    assert_eq!(c.rope_theta, 10000.0);
    assert_eq!(c.rope_local_base_freq, 10000.0);
    assert!(c.spec().expected_tensors().iter().any(|(n, _)| n == "model.layers.3.post_feedforward_layernorm.weight"));
    assert!(!c.spec().expected_tensors().iter().any(|(n, _)| n.contains("q_norm")));
    assert_eq!(GemmaConfig::from_hf_json(&c.to_hf_json(), path()).unwrap(), c);
    // transformers' config classes type it as an integer and refuse `224.0`.
    assert_eq!(c.to_hf_json()["query_pre_attn_scalar"], serde_json::json!(224));
    assert!(c.to_hf_json()["query_pre_attn_scalar"].is_u64());
}

#[test]
fn gemma1_config_has_head_dim_of_its_own_and_no_sandwich_norms() {
    let json = serde_json::json!({
        "model_type": "gemma", "vocab_size": 256000, "hidden_size": 2048, "intermediate_size": 16384,
        "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256,
        "hidden_act": "gelu", "rms_norm_eps": 1e-6, "rope_theta": 10000.0
    });
    let c = GemmaConfig::from_hf_json(&json, path()).unwrap();
    assert_eq!(c.version, GemmaVersion::Gemma1);
    assert_eq!(c.dims.head_dim, 256);
    assert_eq!(c.query_pre_attn_scalar, 256.0);
    assert!(c.layer_types.iter().all(|t| *t == LayerType::Full));
    let names: Vec<String> = c.spec().expected_tensors().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"model.layers.1.post_attention_layernorm.weight".to_string()));
    assert!(!names.iter().any(|n| n.contains("feedforward_layernorm")));
    let bad = serde_json::json!({"model_type": "gemma", "hidden_act": "silu"});
    assert!(GemmaConfig::from_hf_json(&bad, path()).unwrap_err().to_string().contains("gelu_pytorch_tanh"));
}

#[test]
fn gguf_names_follow_the_generation() {
    let gguf_to_hf_name = |version: GemmaVersion, name: &str| {
        let json = serde_json::json!({
            "model_type": match version { GemmaVersion::Gemma1 => "gemma", GemmaVersion::Gemma2 => "gemma2", GemmaVersion::Gemma3 => "gemma3_text" },
            "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 2,
            "num_attention_heads": 2, "head_dim": 4, "sliding_window": 4
        });
        match GemmaConfig::from_hf_json(&json, path()).unwrap().gguf_tensor(name) {
            Some(GgufTensor::Load { hf_name, .. }) => Some(hf_name),
            _ => None,
        }
    };
    assert_eq!(gguf_to_hf_name(GemmaVersion::Gemma1, "blk.2.ffn_norm.weight").unwrap(), "model.layers.2.post_attention_layernorm.weight");
    assert_eq!(gguf_to_hf_name(GemmaVersion::Gemma3, "blk.2.ffn_norm.weight").unwrap(), "model.layers.2.pre_feedforward_layernorm.weight");
    assert_eq!(
        gguf_to_hf_name(GemmaVersion::Gemma3, "blk.0.post_attention_norm.weight").unwrap(),
        "model.layers.0.post_attention_layernorm.weight"
    );
    assert_eq!(
        gguf_to_hf_name(GemmaVersion::Gemma2, "blk.9.post_ffw_norm.weight").unwrap(),
        "model.layers.9.post_feedforward_layernorm.weight"
    );
    assert_eq!(gguf_to_hf_name(GemmaVersion::Gemma3, "blk.1.attn_k_norm.weight").unwrap(), "model.layers.1.self_attn.k_norm.weight");
    assert_eq!(gguf_to_hf_name(GemmaVersion::Gemma2, "blk.1.attn_k_norm.weight"), None);
    assert_eq!(gguf_to_hf_name(GemmaVersion::Gemma3, "token_embd.weight").unwrap(), "model.embed_tokens.weight");
}

#[test]
fn gguf_names_map_to_hugging_face_names() {
    let config = LlamaConfig::from_hf_json(&testkit::hf_config_json(&testkit::TINY), path()).unwrap();
    let hf = |name: &str| match config.gguf_tensor(name) {
        Some(GgufTensor::Load { hf_name, .. }) => Some(hf_name),
        _ => None,
    };
    assert_eq!(hf("blk.12.attn_q.weight").unwrap(), "model.layers.12.self_attn.q_proj.weight");
    assert_eq!(hf("blk.0.attn_k.bias").unwrap(), "model.layers.0.self_attn.k_proj.bias");
    assert_eq!(hf("blk.3.ffn_down.weight").unwrap(), "model.layers.3.mlp.down_proj.weight");
    assert_eq!(hf("blk.3.ffn_norm.weight").unwrap(), "model.layers.3.post_attention_layernorm.weight");
    assert_eq!(hf("token_embd.weight").unwrap(), "model.embed_tokens.weight");
    assert_eq!(hf("output.weight").unwrap(), "lm_head.weight");
    assert_eq!(hf("blk.x.attn_q.weight"), None);
    assert_eq!(hf("blk.1.unknown.weight"), None);
}
