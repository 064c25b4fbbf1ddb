//! The Llama family: Llama 2 / 3 / 3.1 / 3.2 (and SmolLM, TinyLlama,
//! CodeLlama), Mistral (sliding-window attention) and Qwen2 / Qwen2.5 (q, k
//! and v biases). Pre-norm blocks with SwiGLU MLPs and RoPE.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    as_f32, check_layer_count, gguf_to_hf_name, hf_json_base, hf_rope, token_id, usize_field, ArchConfig, Family, Fixup, GgufMeta,
    GgufTensor,
};
use crate::decoder::{DecoderSpec, LayerSpec};
use crate::error::ModelError;
use crate::gguf::GgufFile;
use crate::nn::rope::inverse_frequencies;
use crate::nn::{Activation, RopeScaling};

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
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Epsilon of RMSNorm.
    pub rms_norm_eps: f64,
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
        if let Some(act) = json.get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                return Err(ModelError::config(path, format!("expected hidden_act `silu`; found `{act}`")));
            }
        }
        if json.get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
            return Err(ModelError::config(path, "use_sliding_window true (sliding attention on some Qwen2 layers) is not supported"));
        }
        let hidden_size = usize_field(json, "hidden_size", path)?;
        let num_attention_heads = usize_field(json, "num_attention_heads", path)?;
        let num_hidden_layers = usize_field(json, "num_hidden_layers", path)?;
        check_layer_count(num_hidden_layers, path)?;
        let (rope_theta, rope_scaling) = hf_rope(json, json.get("rope_parameters"), 10000.0, path)?;
        let flag = |key: &str| json.get(key).and_then(Value::as_bool).unwrap_or(false);
        Ok(LlamaConfig {
            attention_bias: model_type == "qwen2" || flag("attention_bias"),
            sliding_window: if model_type == "mistral" {
                json.get("sliding_window").and_then(Value::as_u64).map(|w| w as usize)
            } else {
                None
            },
            model_type,
            vocab_size: usize_field(json, "vocab_size", path)?,
            hidden_size,
            intermediate_size: usize_field(json, "intermediate_size", path)?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: json.get("num_key_value_heads").and_then(Value::as_u64).map_or(num_attention_heads, |v| v as usize),
            head_dim: json.get("head_dim").and_then(Value::as_u64).map_or(hidden_size / num_attention_heads.max(1), |v| v as usize),
            rms_norm_eps: json.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6),
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
    /// one of `architectures`), with the per-frequency rotary factors of a
    /// `rope_freqs.weight` tensor when the file has one.
    pub fn from_gguf(file: &GgufFile, architectures: &[&str]) -> Result<Self, ModelError> {
        let meta = GgufMeta::new(file, architectures, "Llama")?;
        let (path, arch) = (file.path(), &meta.arch);
        let hidden_size = meta.int("embedding_length")?;
        let num_attention_heads = meta.int("attention.head_count")?;
        let num_hidden_layers = meta.int("block_count")?;
        check_layer_count(num_hidden_layers, path)?;
        let head_dim = meta.opt_int("attention.key_length").unwrap_or(hidden_size / num_attention_heads.max(1));
        if let Some(rot) = meta.opt_int("rope.dimension_count").filter(|&rot| rot != head_dim) {
            return Err(ModelError::config(
                path,
                format!("partial rotary embeddings are not supported: {arch}.rope.dimension_count is {rot}, head_dim is {head_dim}"),
            ));
        }
        let rope_scaling = if meta.has_tensor("rope_freqs.weight") {
            Some(RopeScaling::Factors { factors: file.tensor_f32("rope_freqs.weight")?.into_iter().map(f64::from).collect() })
        } else {
            meta.rope_scaling()?
        };
        Ok(LlamaConfig {
            model_type: arch.clone(),
            vocab_size: meta.vocab_size()?,
            hidden_size,
            intermediate_size: meta.int("feed_forward_length")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: meta.opt_int("attention.head_count_kv").unwrap_or(num_attention_heads),
            head_dim,
            rms_norm_eps: meta.opt_f64("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
            rope_theta: meta.opt_f64("rope.freq_base").unwrap_or(10000.0),
            rope_scaling,
            max_position_embeddings: meta.opt_int("context_length").unwrap_or(2048),
            tie_word_embeddings: !meta.has_tensor("output.weight"),
            attention_bias: meta.has_tensor("blk.0.attn_q.bias"),
            mlp_bias: false,
            bos_token_id: meta.token("bos_token_id"),
            eos_token_id: meta.token("eos_token_id"),
            sliding_window: None,
        })
    }
}

impl ArchConfig for LlamaConfig {
    fn model_type(&self) -> String {
        self.model_type.clone()
    }

    fn spec(&self) -> DecoderSpec {
        DecoderSpec {
            architecture: self.model_type.clone(),
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            heads: self.num_attention_heads,
            kv_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            norm_eps: self.rms_norm_eps,
            norm_offset: 0.0,
            activation: Activation::Silu,
            qkv_bias: self.attention_bias,
            o_bias: self.attention_bias && self.model_type != "qwen2",
            mlp_bias: self.mlp_bias,
            qk_norm: false,
            sandwich_norms: false,
            attention_scale: 1.0 / (self.head_dim as f64).sqrt(),
            attn_softcap: None,
            final_softcap: None,
            embedding_scale: None,
            rope_frequencies: vec![inverse_frequencies(self.head_dim, self.rope_theta, self.rope_scaling.as_ref())],
            layers: vec![LayerSpec { rope: 0, window: self.sliding_window }; self.num_hidden_layers],
            tie_word_embeddings: self.tie_word_embeddings,
            max_position_embeddings: self.max_position_embeddings,
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
        c.rms_norm_eps = as_f32(c.rms_norm_eps);
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
            "attn_q" if self.model_type == "llama" => Fixup::UnpermuteRows { heads: self.num_attention_heads },
            "attn_k" if self.model_type == "llama" => Fixup::UnpermuteRows { heads: self.num_key_value_heads },
            _ => Fixup::None,
        };
        Some(GgufTensor::Load { hf_name, fixup })
    }
}
