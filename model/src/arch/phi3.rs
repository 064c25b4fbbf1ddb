//! Phi-3 (mini, small, medium; 4k and LongRoPE 128k): the Llama block with
//! q/k/v and gate/up fused in the checkpoint (`qkv_proj`, `gate_up_proj`,
//! split on loading and stacked again on writing), an optional sliding
//! window, and LongRoPE scaling (read by the shared rope parser).

use std::path::Path;

use serde_json::Value;

use super::llama::LlamaConfig;
use super::{gguf_to_hf_name, ArchConfig, Dims, Family, Fixup, Fused, GgufMeta, GgufTensor};
use crate::decoder::DecoderSpec;
use crate::error::ModelError;
use crate::gguf::GgufFile;
use crate::nn::RopeScaling;

/// The family's entry in the registry.
pub const FAMILY: Family = Family {
    hf_model_types: &["phi3"],
    gguf_architectures: &["phi3"],
    from_hf_json: |json, path| Ok(Box::new(Phi3Config::from_hf_json(json, path)?)),
    from_gguf: |file| Ok(Box::new(Phi3Config::from_gguf(file)?)),
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
        // llama.cpp's converter writes "no window" as 0.
        config.sliding_window = json.get("sliding_window").and_then(Value::as_u64).filter(|&w| w > 0).map(|w| w as usize);
        Ok(Phi3Config(config))
    }

    /// Reads the configuration from GGUF metadata (`general.architecture`
    /// phi3), as the `config.json` it stands for: LongRoPE's factors come
    /// from the tensors `rope_factors_short` and `rope_factors_long`.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, ModelError> {
        let meta = GgufMeta::new(file, FAMILY.gguf_architectures, "Phi-3")?;
        let mut json = Dims::hf_json_from_gguf(&meta)?;
        json.insert("model_type".into(), "phi3".into());
        json.insert("sliding_window".into(), meta.opt_int("attention.sliding_window").into());
        if meta.has_tensor("rope_factors_long.weight") {
            let factors = |name: &str| file.tensor_f32(name).map(|f| f.into_iter().map(f64::from).collect::<Vec<f64>>());
            let rope = serde_json::json!({
                "rope_type": "longrope",
                "short_factor": factors("rope_factors_short.weight")?,
                "long_factor": factors("rope_factors_long.weight")?,
                "original_max_position_embeddings": meta.opt_int("rope.scaling.original_context_length"),
                "attention_factor": meta.opt_f64("rope.scaling.attn_factor"),
            });
            json.insert("rope_scaling".into(), rope);
        }
        Self::from_hf_json(&Value::Object(json), file.path())
    }

    /// The fused projections of every layer.
    fn fused_projections(&self) -> Vec<Fused> {
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

    /// llama.cpp keeps Phi-3's fused projections (`attn_qkv`, and `ffn_up`
    /// holding gate and up) and its LongRoPE factors as tensors; q/k rows
    /// are not permuted.
    fn gguf_tensor(&self, gguf_name: &str) -> Option<GgufTensor> {
        if matches!(gguf_name, "rope_factors_long.weight" | "rope_factors_short.weight") {
            return Some(GgufTensor::Skip);
        }
        let norms = |module: &str| match module {
            "attn_norm" => Some("input_layernorm"),
            "ffn_norm" => Some("post_attention_layernorm"),
            "attn_qkv" => Some("self_attn.qkv_proj"),
            _ => None,
        };
        let (hf_name, module) = gguf_to_hf_name(gguf_name, norms)?;
        let hf_name = if module == "ffn_up" { hf_name.replace(".mlp.up_proj.", ".mlp.gate_up_proj.") } else { hf_name };
        Some(GgufTensor::Load { hf_name, fixup: Fixup::None })
    }

    fn fused(&self) -> Vec<Fused> {
        self.fused_projections()
    }
}
