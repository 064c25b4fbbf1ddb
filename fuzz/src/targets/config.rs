//! The config target: a Hugging Face `config.json` read as the loader reads
//! it, into the model configuration of whichever family it names, then
//! written back and read again (the two must agree).

use std::path::Path;

use model::arch::shapes::{config_for_shape, SHAPES};
use model::ModelConfig;
use serde_json::{json, Value};

use super::Outcome;
use crate::mutate::{decimal_fields, mutate_json, Field, Rng};

/// Every key some family reads.
pub const KEYS: &[&str] = &[
    "architectures",
    "attention_bias",
    "attn_logit_softcapping",
    "bos_token_id",
    "eos_token_id",
    "final_logit_softcapping",
    "head_dim",
    "hidden_act",
    "hidden_activation",
    "hidden_size",
    "intermediate_size",
    "layer_types",
    "max_position_embeddings",
    "mlp_bias",
    "model_type",
    "num_attention_heads",
    "num_hidden_layers",
    "num_key_value_heads",
    "original_max_position_embeddings",
    "pad_token_id",
    "partial_rotary_factor",
    "query_pre_attn_scalar",
    "rms_norm_eps",
    "rope_local_base_freq",
    "rope_parameters",
    "rope_scaling",
    "rope_theta",
    "rope_type",
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "long_factor",
    "short_factor",
    "sliding_window",
    "sliding_window_pattern",
    "text_config",
    "tie_word_embeddings",
    "torch_dtype",
    "use_sliding_window",
    "vocab_size",
];

/// The JSON numbers of the file.
pub fn fields(data: &[u8]) -> Vec<Field> {
    decimal_fields(data)
}

/// Reads the configuration, its spec and tensor list, and checks that the
/// config.json it writes reads back to the same configuration.
pub fn run(path: &Path) -> Outcome {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return Outcome::err("utf8", e),
    };
    let json: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => return Outcome::err("json", e),
    };
    let config = match ModelConfig::from_hf_json(&json, path) {
        Ok(c) => c,
        Err(e) => return Outcome::err("config", e),
    };
    let _ = config.expected_tensors();
    for layer in 0..config.num_layers().min(4) {
        let _ = config.linear_modules(layer);
    }
    let written = config.to_hf_json();
    match ModelConfig::from_hf_json(&written, path) {
        Ok(again) => {
            assert!(again == config, "config.json written back reads as another configuration:\n{config:?}\n{again:?}");
            Outcome::ok(family_label(&config.model_type()))
        }
        Err(e) => panic!("the config.json written for a valid configuration does not read back: {e}\n{written}"),
    }
}

fn family_label(model_type: &str) -> &'static str {
    match model_type {
        "llama" => "llama",
        "mistral" => "mistral",
        "qwen2" => "qwen2",
        "qwen3" => "qwen3",
        "phi3" => "phi3",
        "gemma" => "gemma",
        "gemma2" => "gemma2",
        _ => "gemma3",
    }
}

/// Seeds: the config.json of each real shape the project knows, and a tiny
/// one of every model type, with rope scaling variants.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for shape in SHAPES {
        if let Some(v) = config_for_shape(shape, 32000, Some(1), Some(2)) {
            out.push(serde_json::to_vec_pretty(&v).expect("JSON"));
        }
    }
    let base = json!({
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 96,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": [2, 3],
    });
    let variants = [
        json!({"model_type": "llama", "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
        json!({"model_type": "mistral", "sliding_window": 64}),
        json!({"model_type": "qwen2", "attention_bias": true, "use_sliding_window": false}),
        json!({"model_type": "qwen3", "head_dim": 32}),
        json!({"model_type": "phi3", "rope_scaling": {"type": "longrope", "short_factor": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], "long_factor": [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]}, "original_max_position_embeddings": 64, "partial_rotary_factor": 1.0}),
        json!({"model_type": "gemma", "head_dim": 16, "hidden_activation": "gelu_pytorch_tanh"}),
        json!({"model_type": "gemma2", "head_dim": 16, "query_pre_attn_scalar": 16, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "sliding_window": 32}),
        json!({"model_type": "gemma3_text", "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 32, "sliding_window_pattern": 2, "rope_local_base_freq": 10000.0, "rope_scaling": {"rope_type": "linear", "factor": 8.0}}),
        json!({"model_type": "gemma3", "text_config": {"model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 96, "layer_types": ["sliding_attention", "full_attention"]}}),
    ];
    for v in variants {
        let mut config = base.clone();
        for (k, x) in v.as_object().expect("object") {
            config[k] = x.clone();
        }
        out.push(serde_json::to_vec_pretty(&config).expect("JSON"));
    }
    out
}

/// A JSON-tree mutation over the keys families read.
pub fn structured(data: &[u8], rng: &mut Rng, _scratch: &Path) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(data).ok()?;
    for _ in 0..1 + rng.below(3) {
        mutate_json(&mut v, KEYS, rng);
    }
    serde_json::to_vec(&v).ok()
}
