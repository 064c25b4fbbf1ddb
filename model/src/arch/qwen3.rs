//! Qwen3 (dense): the Llama block without q/k/v biases, with queries and
//! keys RMS-normalised per head (`q_norm`, `k_norm`) before RoPE.

use serde_json::Value;

use super::llama::LlamaConfig;
use super::{gguf_to_hf_name, ArchConfig, Family, Fixup, GgufTensor};
use crate::decoder::DecoderSpec;

/// The family's entry in the registry.
pub const FAMILY: Family = Family {
    hf_model_types: &["qwen3"],
    gguf_architectures: &["qwen3"],
    from_hf_json: |json, path| Ok(Box::new(Qwen3Config(LlamaConfig::from_hf_json(json, path)?))),
    from_gguf: |file| Ok(Box::new(Qwen3Config(LlamaConfig::from_gguf(file, FAMILY.gguf_architectures)?))),
};

/// Hyper-parameters of a Qwen3 decoder: those of the Llama family.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen3Config(pub LlamaConfig);

impl ArchConfig for Qwen3Config {
    fn model_type(&self) -> String {
        "qwen3".to_string()
    }

    fn spec(&self) -> DecoderSpec {
        DecoderSpec { qk_norm: true, o_bias: false, ..self.0.spec() }
    }

    fn to_hf_json(&self) -> Value {
        let mut json = self.0.to_hf_json();
        json["architectures"] = serde_json::json!(["Qwen3ForCausalLM"]);
        json
    }

    fn canonical_json(&self) -> String {
        self.0.canonical_json()
    }

    fn gguf_tensor(&self, gguf_name: &str) -> Option<GgufTensor> {
        let norms = |module: &str| match module {
            "attn_norm" => Some("input_layernorm"),
            "ffn_norm" => Some("post_attention_layernorm"),
            "attn_q_norm" => Some("self_attn.q_norm"),
            "attn_k_norm" => Some("self_attn.k_norm"),
            _ => None,
        };
        let (hf_name, _) = gguf_to_hf_name(gguf_name, norms)?;
        Some(GgufTensor::Load { hf_name, fixup: Fixup::None })
    }
}
