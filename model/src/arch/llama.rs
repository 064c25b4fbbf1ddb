//! The Llama family: Llama 2 / 3 / 3.1 / 3.2 (and SmolLM, TinyLlama,
//! CodeLlama), Mistral (sliding-window attention) and Qwen2 / Qwen2.5 (q, k
//! and v biases). Pre-norm blocks with SwiGLU MLPs and RoPE.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{as_f32, gguf_to_hf_name, hf_json_base, hf_rope, token_id, ArchConfig, Dims, Family, Fixup, GgufMeta, GgufTensor};
use crate::decoder::{DecoderSpec, LayerSpec, LongRope};
use crate::error::ModelError;
use crate::gguf::GgufFile;
use crate::nn::rope::inverse_frequencies;
use crate::nn::RopeScaling;

/// The family's entry in the registry.
pub const FAMILY: Family = Family {
    hf_model_types: &["llama", "mistral", "qwen2"],
    gguf_architectures: &["llama", "qwen2"],
    from_hf_json: |json, path| Ok(Box::new(LlamaConfig::from_hf_json(json, path)?)),
    from_gguf: |file| Ok(Box::new(LlamaConfig::from_gguf(file, FAMILY.gguf_architectures)?)),
};

/// Hyper-parameters of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Hugging Face `model_type`: llama, mistral or qwen2.
    pub model_type: String,
    /// The sizes.
    #[serde(flatten)]
    pub dims: Dims,
    /// Base of the rotary frequencies.
    pub rope_theta: f64,
    /// Optional scaling of the rotary frequencies.
    pub rope_scaling: Option<RopeScaling>,
    /// Context length the model supports.
    pub max_position_embeddings: usize,
    /// Whether the LM head reuses the token embedding.
    pub tie_word_embeddings: bool,
    /// Whether q, k and v projections have a bias (Qwen2; Llama's also gives o_proj one).
    pub attention_bias: bool,
    /// Whether the MLP projections have a bias.
    pub mlp_bias: bool,
    /// Beginning-of-sequence token, if the model has one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token, if the model has one.
    pub eos_token_id: Option<u32>,
    /// Sliding window of every layer's attention (Mistral), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
}

impl LlamaConfig {
    /// Reads a Hugging Face `config.json` of model_type llama, mistral or
    /// qwen2 (or of a family built on this one).
    pub fn from_hf_json(json: &Value, path: &Path) -> Result<Self, ModelError> {
        let model_type = json.get("model_type").and_then(Value::as_str).unwrap_or("").to_string();
        if let Some(act) = json.get("hidden_act").and_then(Value::as_str).filter(|act| *act != "silu") {
            return Err(ModelError::config(path, format!("expected hidden_act `silu`; found `{act}`")));
        }
        if json.get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
            return Err(ModelError::config(path, "use_sliding_window true (sliding attention on some Qwen2 layers) is not supported"));
        }
        let (rope_theta, rope_scaling) = hf_rope(json, json.get("rope_parameters"), 10000.0, path)?;
        let flag = |key: &str| json.get(key).and_then(Value::as_bool).unwrap_or(false);
        let window = json.get("sliding_window").and_then(Value::as_u64).map(|w| w as usize);
        Ok(LlamaConfig {
            attention_bias: model_type == "qwen2" || flag("attention_bias"),
            sliding_window: if model_type == "mistral" { window } else { None },
            model_type,
            dims: Dims::from_hf_json(json, path)?,
            rope_theta,
            rope_scaling,
            max_position_embeddings: json.get("max_position_embeddings").and_then(Value::as_u64).unwrap_or(2048) as usize,
            tie_word_embeddings: flag("tie_word_embeddings"),
            mlp_bias: flag("mlp_bias"),
            bos_token_id: token_id(json.get("bos_token_id")),
            eos_token_id: token_id(json.get("eos_token_id")),
        })
    }

    /// Reads the configuration from GGUF metadata (`general.architecture`
    /// one of `architectures`), as the `config.json` it stands for, with the
    /// per-frequency rotary factors of a `rope_freqs.weight` tensor when the
    /// file has one.
    pub fn from_gguf(file: &GgufFile, architectures: &[&str]) -> Result<Self, ModelError> {
        let meta = GgufMeta::new(file, architectures, "Llama")?;
        let mut json = Dims::hf_json_from_gguf(&meta)?;
        let head_dim = json["head_dim"].as_u64().unwrap_or(0) as usize;
        if let Some(rot) = meta.opt_int("rope.dimension_count").filter(|&rot| rot != head_dim) {
            let arch = &meta.arch;
            return Err(ModelError::config(
                file.path(),
                format!("partial rotary embeddings are not supported: {arch}.rope.dimension_count is {rot}, head_dim is {head_dim}"),
            ));
        }
        json.insert("model_type".into(), meta.arch.clone().into());
        json.insert("attention_bias".into(), meta.has_tensor("blk.0.attn_q.bias").into());
        let mut config = Self::from_hf_json(&Value::Object(json), file.path())?;
        config.rope_scaling = if meta.has_tensor("rope_freqs.weight") {
            Some(RopeScaling::Factors { factors: file.tensor_f32("rope_freqs.weight")?.into_iter().map(f64::from).collect() })
        } else {
            meta.rope_scaling()?
        };
        Ok(config)
    }
}

impl ArchConfig for LlamaConfig {
    fn model_type(&self) -> String {
        self.model_type.clone()
    }

    fn spec(&self) -> DecoderSpec {
        let (head_dim, scaling) = (self.dims.head_dim, self.rope_scaling.as_ref());
        let long = scaling.and_then(|s| s.long_frequencies(head_dim, self.rope_theta));
        let layers = vec![LayerSpec { rope: 0, window: self.sliding_window }; self.dims.num_hidden_layers];
        let rope = vec![inverse_frequencies(head_dim, self.rope_theta, scaling)];
        DecoderSpec {
            qkv_bias: self.attention_bias,
            o_bias: self.attention_bias && self.model_type != "qwen2",
            mlp_bias: self.mlp_bias,
            long_rope: long.map(|(from_length, long)| LongRope { from_length, frequencies: vec![long] }),
            rope_attention_factor: scaling.map_or(1.0, RopeScaling::attention_factor),
            ..self.dims.plain_spec(self.model_type.clone(), rope, layers, self.tie_word_embeddings, self.max_position_embeddings)
        }
    }

    fn to_hf_json(&self) -> Value {
        let architecture = match self.model_type.as_str() {
            "qwen2" => "Qwen2ForCausalLM",
            "mistral" => "MistralForCausalLM",
            _ => "LlamaForCausalLM",
        };
        let rope_scaling = match &self.rope_scaling {
            None | Some(RopeScaling::Factors { .. }) => Value::Null,
            Some(long @ RopeScaling::LongRope { .. }) => serde_json::to_value(long).expect("serializable scaling"),
            Some(RopeScaling::Linear { factor }) => serde_json::json!({"rope_type": "linear", "factor": factor}),
            Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
                serde_json::json!({
                    "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_max_position_embeddings
                })
            }
        };
        let mut json = hf_json_base(&self.spec(), architecture, self.rope_theta, self.bos_token_id, self.eos_token_id);
        json["hidden_act"] = "silu".into();
        json["rope_scaling"] = rope_scaling;
        json["attention_bias"] = self.attention_bias.into();
        json["mlp_bias"] = self.mlp_bias.into();
        if self.model_type == "mistral" {
            json["sliding_window"] = serde_json::json!(self.sliding_window);
        }
        json
    }

    fn canonical_json(&self) -> String {
        let mut c = self.clone();
        c.dims.rms_norm_eps = as_f32(c.dims.rms_norm_eps);
        c.rope_theta = as_f32(c.rope_theta);
        serde_json::to_string(&c).expect("serializable config")
    }

    fn gguf_tensor(&self, gguf_name: &str) -> Option<GgufTensor> {
        if gguf_name == "rope_freqs.weight" {
            return Some(GgufTensor::Skip);
        }
        let norms = |module: &str| match module {
            "attn_norm" => Some("input_layernorm"),
            "ffn_norm" => Some("post_attention_layernorm"),
            _ => None,
        };
        let (hf_name, module) = gguf_to_hf_name(gguf_name, norms)?;
        // llama.cpp's converter interleaves q/k rows for its RoPE in Llama models, not in Qwen2.
        let fixup = match module {
            "attn_q" if self.model_type == "llama" => Fixup::UnpermuteRows { heads: self.dims.num_attention_heads },
            "attn_k" if self.model_type == "llama" => Fixup::UnpermuteRows { heads: self.dims.num_key_value_heads },
            _ => Fixup::None,
        };
        Some(GgufTensor::Load { hf_name, fixup })
    }
}
