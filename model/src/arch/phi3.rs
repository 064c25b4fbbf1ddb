//! Phi-3 (mini, small, medium; 4k and LongRoPE 128k): the Llama block with
//! q/k/v and gate/up fused in the checkpoint (`qkv_proj`, `gate_up_proj`,
//! split on loading and stacked again on writing), an optional sliding
//! window, and LongRoPE scaling (read by the shared rope parser).

use std::borrow::Cow;
use std::path::Path;

use serde_json::Value;

use super::llama::LlamaConfig;
use super::{join_fused, split_fused, ArchConfig, Family, Fused, GgufTensor};
use crate::decoder::DecoderSpec;
use crate::error::ModelError;
use crate::nn::RopeScaling;
use crate::weights::{HostTensor, WeightMap};

/// The family's entry in the registry (Hugging Face checkpoints only).
pub const FAMILY: Family = Family {
    hf_model_types: &["phi3"],
    gguf_architectures: &[],
    from_hf_json: |json, path| Ok(Box::new(Phi3Config::from_hf_json(json, path)?)),
    from_gguf: |file| Err(ModelError::config(file.path(), "Phi-3 GGUF files are not supported; use its Hugging Face checkpoint")),
};

/// Hyper-parameters of a Phi-3 decoder: those of the Llama family, with its sliding window.
#[derive(Debug, Clone, PartialEq)]
pub struct Phi3Config(pub LlamaConfig);

impl Phi3Config {
    /// Reads a Hugging Face `config.json` of model_type phi3.
    pub fn from_hf_json(json: &Value, path: &Path) -> Result<Self, ModelError> {
        let params = json.get("rope_parameters").or_else(|| json.get("rope_scaling"));
        let partial = params.and_then(|p| p.get("partial_rotary_factor")).or_else(|| json.get("partial_rotary_factor"));
        if let Some(partial) = partial.filter(|p| p.as_f64() != Some(1.0)) {
            return Err(ModelError::config(
                path,
                format!("partial rotary embeddings are not supported; found partial_rotary_factor {partial}"),
            ));
        }
        let mut config = LlamaConfig::from_hf_json(json, path)?;
        config.sliding_window = json.get("sliding_window").and_then(Value::as_u64).map(|w| w as usize);
        Ok(Phi3Config(config))
    }

    /// The fused projections of every layer.
    fn fused(&self) -> Vec<Fused> {
        let d = &self.0.dims;
        let (q, kv, i) = (d.num_attention_heads * d.head_dim, d.num_key_value_heads * d.head_dim, d.intermediate_size);
        (0..d.num_hidden_layers)
            .flat_map(|layer| {
                let p = format!("model.layers.{layer}");
                let part = |name: &str, rows: usize| (format!("{p}.{name}.weight"), rows);
                [
                    Fused {
                        name: format!("{p}.self_attn.qkv_proj.weight"),
                        parts: vec![part("self_attn.q_proj", q), part("self_attn.k_proj", kv), part("self_attn.v_proj", kv)],
                    },
                    Fused { name: format!("{p}.mlp.gate_up_proj.weight"), parts: vec![part("mlp.gate_proj", i), part("mlp.up_proj", i)] },
                ]
            })
            .collect()
    }
}

impl ArchConfig for Phi3Config {
    fn model_type(&self) -> String {
        "phi3".to_string()
    }

    fn spec(&self) -> DecoderSpec {
        self.0.spec()
    }

    fn to_hf_json(&self) -> Value {
        let mut json = self.0.to_hf_json();
        json["architectures"] = serde_json::json!(["Phi3ForCausalLM"]);
        json["sliding_window"] = serde_json::json!(self.0.sliding_window);
        if let Some(RopeScaling::LongRope { original_max_position_embeddings, .. }) = &self.0.rope_scaling {
            json["original_max_position_embeddings"] = (*original_max_position_embeddings).into();
        }
        json
    }

    fn canonical_json(&self) -> String {
        self.0.canonical_json()
    }

    fn gguf_tensor(&self, _gguf_name: &str) -> Option<GgufTensor> {
        None
    }

    fn from_hf_weights(&self, weights: &mut WeightMap) -> Result<(), ModelError> {
        split_fused(weights, &self.fused())
    }

    fn hf_weights<'w>(&self, weights: &'w WeightMap) -> Vec<(String, Cow<'w, HostTensor>)> {
        join_fused(weights, &self.fused())
    }
}
