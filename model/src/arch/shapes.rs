//! The layer shapes of real models, as config.json files, for random-weight
//! checkpoints that test and benchmark subprune at scale (`make-model`).
//! Only the shapes are real: the vocabulary is the one of the tokenizer the
//! checkpoint is written with, and the weights are random, so a made
//! model's quality figures mean nothing.

use serde_json::{json, Value};

/// The shapes `config_for_shape` knows.
pub const SHAPES: &[&str] = &["llama-2-7b", "llama-3-8b", "qwen2.5-7b", "gemma-2-9b"];

/// The config.json of shape `name` with a vocabulary of `vocab_size` and
/// BOS / EOS ids of its tokenizer, or `None` for an unknown shape.
pub fn config_for_shape(name: &str, vocab_size: usize, bos: Option<u32>, eos: Option<u32>) -> Option<Value> {
    let mut config = match name {
        "llama-2-7b" => json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
            "attention_bias": false, "tie_word_embeddings": false,
        }),
        "llama-3-8b" => json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "hidden_act": "silu",
            "attention_bias": false, "tie_word_embeddings": false,
        }),
        "qwen2.5-7b" => json!({
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "hidden_act": "silu",
            "sliding_window": 131072, "use_sliding_window": false, "max_window_layers": 28,
            "tie_word_embeddings": false,
        }),
        "gemma-2-9b" => json!({
            "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
            "hidden_size": 3584, "intermediate_size": 14336, "num_hidden_layers": 42,
            "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256, "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_activation": "gelu_pytorch_tanh",
            "query_pre_attn_scalar": 256, "sliding_window": 4096,
            "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
            "attention_bias": false, "tie_word_embeddings": true,
        }),
        _ => return None,
    };
    config["vocab_size"] = vocab_size.into();
    config["bos_token_id"] = bos.map_or(Value::Null, Value::from);
    config["eos_token_id"] = eos.map_or(Value::Null, Value::from);
    config["torch_dtype"] = "bfloat16".into();
    Some(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelConfig;

    #[test]
    fn every_shape_parses_with_its_real_parameter_count() {
        // Parameters of the real checkpoints with SmolLM2's 49152-token vocabulary
        // in place of their own: layers and norms from the published sizes.
        let expected = [
            ("llama-2-7b", 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096) + 2 * 49152 * 4096 + 4096),
            ("llama-3-8b", 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096) + 2 * 49152 * 4096 + 4096),
            (
                "qwen2.5-7b",
                28 * (2 * 3584 * 3584 + 2 * 3584 * 512 + 3584 + 2 * 512 + 3 * 3584 * 18944 + 2 * 3584) + 2 * 49152 * 3584 + 3584,
            ),
            ("gemma-2-9b", 42 * (2 * 3584 * 4096 + 2 * 3584 * 2048 + 3 * 3584 * 14336 + 4 * 3584) + 49152 * 3584 + 3584),
        ];
        for (name, parameters) in expected {
            let json = config_for_shape(name, 49152, Some(1), Some(2)).unwrap();
            let config = ModelConfig::from_hf_json(&json, std::path::Path::new("config.json")).unwrap_or_else(|e| panic!("{name}: {e}"));
            let count: usize = config.expected_tensors().iter().map(|(_, s)| s.iter().product::<usize>()).sum();
            assert_eq!(count, parameters, "{name}");
        }
        assert!(config_for_shape("gpt-5", 49152, None, None).is_none());
    }
}
