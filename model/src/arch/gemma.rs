//! The Gemma family (Gemma 1, 2 and 3, text only): RMSNorm scales by `1 + w`;
//! embeddings are multiplied by `sqrt(hidden)` (an f32 constant); GELU-tanh
//! gating; an independent `head_dim`, scores scaled by `query_pre_attn_scalar^-0.5`.
//! Gemma 2 adds norms after attention and around the MLP, soft-caps attention
//! and final logits, and alternates sliding-window and global layers. Gemma 3
//! normalises queries and keys per head; local layers (sliding window, base
//! `rope_local_base_freq`) and global ones (`rope_theta`, scaled) follow its pattern.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{as_f32, gguf_to_hf_name, hf_json_base, hf_rope, token_id, ArchConfig, Dims, Family, Fixup, GgufMeta, GgufTensor};
use crate::decoder::{DecoderSpec, LayerSpec};
use crate::error::ModelError;
use crate::gguf::GgufFile;
use crate::nn::rope::inverse_frequencies;
use crate::nn::{Activation, RopeScaling};

/// The largest magnitude below which every integral f64 is exact (2^53):
/// `query_pre_attn_scalar` is written as a JSON integer only below it.
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

/// The family's entry in the registry.

pub const FAMILY: Family = Family {
    hf_model_types: &["gemma", "gemma2", "gemma3", "gemma3_text"],
    gguf_architectures: &["gemma", "gemma2", "gemma3"],
    from_hf_json: |json, path| Ok(Box::new(GemmaConfig::from_hf_json(json, path)?)),
    from_gguf: |file| Ok(Box::new(GemmaConfig::from_gguf(file)?)),
};

/// Which Gemma generation a configuration describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GemmaVersion {
    /// Gemma (1): Llama-like block with Gemma's norm, embedding scale and GELU.
    Gemma1,
    /// Gemma 2: sandwich norms, soft-capping, alternating sliding/global layers.
    Gemma2,
    /// Gemma 3: Gemma 2's block with q/k norms, local/global rotary bases.
    Gemma3,
}

impl GemmaVersion {
    /// The generation of a `model_type` or GGUF architecture of the family.
    fn of(name: &str) -> Self {
        match name {
            "gemma" => GemmaVersion::Gemma1,
            "gemma2" => GemmaVersion::Gemma2,
            _ => GemmaVersion::Gemma3,
        }
    }
}

/// How a decoder layer attends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerType {
    /// Causal attention over the last `sliding_window` positions (the query's own included).
    Sliding,
    /// Causal attention over all earlier positions.
    Full,
}

/// Hyper-parameters of a Gemma decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GemmaConfig {
    /// The generation.
    pub version: GemmaVersion,
    /// The sizes.
    #[serde(flatten)]
    pub dims: Dims,
    /// Rotary base of global (full-attention) layers.
    pub rope_theta: f64,
    /// Rotary base of local (sliding-window) layers.
    pub rope_local_base_freq: f64,
    /// Linear rotary scaling factor of global layers (Gemma 3 4B and larger), if any.
    pub rope_scaling_factor: Option<f64>,
    /// Attention scores are multiplied by `query_pre_attn_scalar^-0.5`.
    pub query_pre_attn_scalar: f64,
    /// Window of sliding-window layers, in positions.
    pub sliding_window: Option<usize>,
    /// The kind of every layer, bottom first.
    pub layer_types: Vec<LayerType>,
    /// Attention logits become `cap * tanh(logits / cap)` (Gemma 2).
    pub attn_logit_softcapping: Option<f64>,
    /// Final logits become `cap * tanh(logits / cap)` (Gemma 2).
    pub final_logit_softcapping: Option<f64>,
    /// Context length the model supports.
    pub max_position_embeddings: usize,
    /// Whether the LM head reuses the token embedding.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token, if the model has one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token, if the model has one.
    pub eos_token_id: Option<u32>,
    /// Padding token, if the model has one.
    pub pad_token_id: Option<u32>,
}

/// Layer kinds from a Gemma 3 `sliding_window_pattern` (every `pattern`-th layer is global).
pub fn layer_types_from_pattern(layers: usize, pattern: usize) -> Vec<LayerType> {
    (0..layers).map(|i| if pattern > 0 && (i + 1) % pattern == 0 { LayerType::Full } else { LayerType::Sliding }).collect()
}

/// The layer kinds of a generation without explicit `layer_types`.
fn default_layer_types(version: GemmaVersion, layers: usize, pattern: Option<usize>) -> Vec<LayerType> {
    match version {
        GemmaVersion::Gemma1 => vec![LayerType::Full; layers],
        GemmaVersion::Gemma2 => layer_types_from_pattern(layers, 2),
        GemmaVersion::Gemma3 => layer_types_from_pattern(layers, pattern.unwrap_or(6)),
    }
}

impl GemmaConfig {
    /// Reads a Hugging Face `config.json` of model_type gemma, gemma2,
    /// gemma3_text, or gemma3 (whose `text_config` is then read).
    pub fn from_hf_json(json: &Value, path: &Path) -> Result<Self, ModelError> {
        let model_type = json.get("model_type").and_then(Value::as_str).unwrap_or("");
        let (json, model_type) = match (model_type, json.get("text_config")) {
            ("gemma3", Some(text)) => (text, "gemma3_text"),
            _ => (json, model_type),
        };
        let version = GemmaVersion::of(model_type);
        for key in ["hidden_activation", "hidden_act"] {
            if let Some(act) = json.get(key).and_then(Value::as_str).filter(|a| !matches!(*a, "gelu_pytorch_tanh" | "gelu_tanh" | "gelu")) {
                return Err(ModelError::config(path, format!("expected {key} `gelu_pytorch_tanh`; found `{act}`")));
            }
        }
        let opt_usize = |key: &str| json.get(key).and_then(Value::as_u64).map(|v| v as usize);
        let opt_f64 = |key: &str| json.get(key).and_then(Value::as_f64);
        let dims = Dims::from_hf_json(json, path)?;
        let layer_types = match (version, json.get("layer_types")) {
            (GemmaVersion::Gemma2 | GemmaVersion::Gemma3, Some(Value::Array(items))) => items
                .iter()
                .map(|v| match v.as_str() {
                    Some("sliding_attention") => Ok(LayerType::Sliding),
                    Some("full_attention") => Ok(LayerType::Full),
                    _ => Err(ModelError::config(
                        path,
                        format!("expected layer_types of \"sliding_attention\" or \"full_attention\"; found {v}"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => default_layer_types(version, dims.num_hidden_layers, opt_usize("sliding_window_pattern")),
        };
        // transformers 5 writes `rope_parameters` per layer kind; older configs `rope_theta`, `rope_local_base_freq`, `rope_scaling`.
        let params = |kind: &str| json.get("rope_parameters").and_then(|p| p.get(kind));
        let default_theta = if version == GemmaVersion::Gemma3 { 1_000_000.0 } else { 10_000.0 };
        let (rope_theta, scaling) = hf_rope(json, params("full_attention"), default_theta, path)?;
        let rope_scaling_factor = match scaling {
            None => None,
            Some(RopeScaling::Linear { factor }) => Some(factor),
            Some(_) => return Err(ModelError::config(path, "unsupported rope scaling type for Gemma; supported: default, linear")),
        };
        let local = params("sliding_attention").and_then(|p| p.get("rope_theta")).and_then(Value::as_f64);
        let cap = |key: &str| opt_f64(key).filter(|v| *v > 0.0 && version != GemmaVersion::Gemma1);
        let config = GemmaConfig {
            version,
            // Gemma 1 scales by head_dim^-0.5 whatever config.json says, as transformers does.
            query_pre_attn_scalar: match version {
                GemmaVersion::Gemma1 => dims.head_dim as f64,
                _ => opt_f64("query_pre_attn_scalar").unwrap_or(dims.head_dim as f64),
            },
            dims,
            rope_theta,
            rope_local_base_freq: match version {
                GemmaVersion::Gemma3 => local.or_else(|| opt_f64("rope_local_base_freq")).unwrap_or(10_000.0),
                _ => rope_theta,
            },
            rope_scaling_factor,
            sliding_window: if version == GemmaVersion::Gemma1 { None } else { opt_usize("sliding_window") },
            layer_types,
            attn_logit_softcapping: cap("attn_logit_softcapping"),
            final_logit_softcapping: cap("final_logit_softcapping"),
            max_position_embeddings: opt_usize("max_position_embeddings").unwrap_or(8192),
            tie_word_embeddings: json.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(true),
            bos_token_id: token_id(json.get("bos_token_id")),
            eos_token_id: token_id(json.get("eos_token_id")),
            pad_token_id: token_id(json.get("pad_token_id")),
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Reads the configuration from GGUF metadata (`general.architecture`
    /// gemma, gemma2 or gemma3), as the `config.json` it stands for, with
    /// llama.cpp's defaults for what the file does not say: Gemma 3's local
    /// rotary base (`rope.freq_base_swa`, else 10000) and its pattern of five local layers then one
    /// global; the attention scale of head_dim, except for the 27B models
    /// (46 and 62 layers) that use hidden / heads.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, ModelError> {
        let meta = GgufMeta::new(file, FAMILY.gguf_architectures, "Gemma")?;
        let version = GemmaVersion::of(&meta.arch);
        let mut json = Dims::hf_json_from_gguf(&meta)?;
        let (layers, hidden, heads) = (meta.int("block_count")?, meta.int("embedding_length")?, meta.int("attention.head_count")?);
        let is_27b = matches!((version, layers), (GemmaVersion::Gemma2, 46) | (GemmaVersion::Gemma3, 62));
        let scalar = if is_27b { serde_json::json!(hidden / heads.max(1)) } else { json["head_dim"].clone() };
        let rope_scaling = match meta.rope_scaling()? {
            Some(RopeScaling::Linear { factor }) => serde_json::json!({"rope_type": "linear", "factor": factor}),
            _ => Value::Null,
        };
        let caps = |key: &str| meta.opt_f64(key).filter(|_| version == GemmaVersion::Gemma2);
        for (key, value) in [
            ("model_type", meta.arch.clone().into()),
            ("rope_scaling", rope_scaling),
            ("query_pre_attn_scalar", scalar),
            ("sliding_window", meta.opt_int("attention.sliding_window").into()),
            ("attn_logit_softcapping", caps("attn_logit_softcapping").into()),
            ("final_logit_softcapping", caps("final_logit_softcapping").into()),
            ("pad_token_id", meta.token("padding_token_id").into()),
            ("rope_local_base_freq", meta.opt_f64("rope.freq_base_swa").into()),
        ] {
            json.insert(key.to_string(), value);
        }
        let json = Value::Object(json);
        Self::from_hf_json(&json, file.path())
    }

    fn validate(&self, path: &Path) -> Result<(), ModelError> {
        let (layers, kinds) = (self.dims.num_hidden_layers, self.layer_types.len());
        if kinds != layers {
            return Err(ModelError::config(path, format!("expected {layers} layer_types, one per layer; found {kinds}")));
        }
        if self.layer_types.contains(&LayerType::Sliding) && self.sliding_window.is_none_or(|w| w == 0) {
            return Err(ModelError::config(path, "sliding-window layers need a positive `sliding_window`; found none"));
        }
        if !(self.query_pre_attn_scalar > 0.0 && self.query_pre_attn_scalar.is_finite()) {
            return Err(ModelError::config(
                path,
                format!("query_pre_attn_scalar must be a positive finite number; found {}", self.query_pre_attn_scalar),
            ));
        }
        Ok(())
    }
}

impl ArchConfig for GemmaConfig {
    fn model_type(&self) -> String {
        let name = match self.version {
            GemmaVersion::Gemma1 => "gemma",
            GemmaVersion::Gemma2 => "gemma2",
            GemmaVersion::Gemma3 => "gemma3_text",
        };
        name.to_string()
    }

    fn spec(&self) -> DecoderSpec {
        let global = inverse_frequencies(
            self.dims.head_dim,
            self.rope_theta,
            self.rope_scaling_factor.map(|factor| RopeScaling::Linear { factor }).as_ref(),
        );
        let mut rope_frequencies = vec![global];
        if self.version == GemmaVersion::Gemma3 {
            rope_frequencies.push(inverse_frequencies(self.dims.head_dim, self.rope_local_base_freq, None));
        }
        let local = rope_frequencies.len() - 1;
        let layers = self
            .layer_types
            .iter()
            .map(|kind| match kind {
                LayerType::Sliding => LayerSpec { rope: local, window: self.sliding_window },
                LayerType::Full => LayerSpec { rope: 0, window: None },
            })
            .collect();
        DecoderSpec {
            norm_offset: 1.0,
            activation: Activation::GeluTanh,
            qk_norm: self.version == GemmaVersion::Gemma3,
            sandwich_norms: self.version != GemmaVersion::Gemma1,
            attention_scale: self.query_pre_attn_scalar.powf(-0.5),
            attn_softcap: self.attn_logit_softcapping,
            final_softcap: self.final_logit_softcapping,
            embedding_scale: Some((self.dims.hidden_size as f64).sqrt() as f32),
            ..self.dims.plain_spec(self.model_type(), rope_frequencies, layers, self.tie_word_embeddings, self.max_position_embeddings)
        }
    }

    /// The `config.json` of Gemma3ForCausalLM, Gemma2ForCausalLM or GemmaForCausalLM.
    fn to_hf_json(&self) -> Value {
        let architecture = match self.version {
            GemmaVersion::Gemma1 => "GemmaForCausalLM",
            GemmaVersion::Gemma2 => "Gemma2ForCausalLM",
            GemmaVersion::Gemma3 => "Gemma3ForCausalLM",
        };
        let mut json = hf_json_base(&self.spec(), architecture, self.rope_theta, self.bos_token_id, self.eos_token_id);
        json["hidden_act"] = "gelu_pytorch_tanh".into();
        json["hidden_activation"] = "gelu_pytorch_tanh".into();
        json["attention_bias"] = false.into();
        json["pad_token_id"] = serde_json::json!(self.pad_token_id);
        if self.version != GemmaVersion::Gemma1 {
            let kinds: Vec<&str> =
                self.layer_types.iter().map(|t| if *t == LayerType::Sliding { "sliding_attention" } else { "full_attention" }).collect();
            json["layer_types"] = serde_json::json!(kinds);
            json["sliding_window"] = serde_json::json!(self.sliding_window);
            // transformers declares it an integer and refuses `256.0`; an
            // integral value past 2^53 stays a float, which `as u64` would
            // change (it saturates at 2^64).
            let scalar = self.query_pre_attn_scalar;
            json["query_pre_attn_scalar"] = if scalar.fract() == 0.0 && scalar.abs() < MAX_EXACT_INTEGER {
                serde_json::json!(scalar as u64)
            } else {
                serde_json::json!(scalar)
            };
            json["attn_logit_softcapping"] = serde_json::json!(self.attn_logit_softcapping);
            json["final_logit_softcapping"] = serde_json::json!(self.final_logit_softcapping);
        }
        // Every version applies a linear factor read from config.json, so
        // every version writes it back.
        let rope_scaling = self.rope_scaling_factor.map(|factor| serde_json::json!({"rope_type": "linear", "factor": factor}));
        if self.version == GemmaVersion::Gemma3 {
            json["rope_local_base_freq"] = serde_json::json!(self.rope_local_base_freq);
            json["rope_scaling"] = rope_scaling.unwrap_or(Value::Null);
        } else if let Some(scaling) = rope_scaling {
            json["rope_scaling"] = scaling;
        }
        json
    }

    fn canonical_json(&self) -> String {
        let mut c = self.clone();
        c.dims.rms_norm_eps = as_f32(c.dims.rms_norm_eps);
        c.rope_theta = as_f32(c.rope_theta);
        c.rope_local_base_freq = as_f32(c.rope_local_base_freq);
        c.query_pre_attn_scalar = as_f32(c.query_pre_attn_scalar);
        c.rope_scaling_factor = c.rope_scaling_factor.map(as_f32);
        c.attn_logit_softcapping = c.attn_logit_softcapping.map(as_f32);
        c.final_logit_softcapping = c.final_logit_softcapping.map(as_f32);
        serde_json::to_string(&c).expect("serializable config")
    }

    /// Gemma 1 names its pre-MLP norm `ffn_norm` like Llama (HF
    /// `post_attention_layernorm`); Gemma 2 and 3 name the norm after
    /// attention `post_attention_norm` and the one before the MLP `ffn_norm`
    /// (HF `pre_feedforward_layernorm`). q/k rows are not permuted, and every
    /// norm weight is stored as `1 + w`.
    fn gguf_tensor(&self, gguf_name: &str) -> Option<GgufTensor> {
        let version = self.version;
        let norms = |module: &str| match (module, version) {
            ("attn_norm", _) => Some("input_layernorm"),
            ("ffn_norm", GemmaVersion::Gemma1) => Some("post_attention_layernorm"),
            ("ffn_norm", _) => Some("pre_feedforward_layernorm"),
            ("post_attention_norm", GemmaVersion::Gemma2 | GemmaVersion::Gemma3) => Some("post_attention_layernorm"),
            ("post_ffw_norm", GemmaVersion::Gemma2 | GemmaVersion::Gemma3) => Some("post_feedforward_layernorm"),
            ("attn_q_norm", GemmaVersion::Gemma3) => Some("self_attn.q_norm"),
            ("attn_k_norm", GemmaVersion::Gemma3) => Some("self_attn.k_norm"),
            _ => None,
        };
        let (hf_name, _) = gguf_to_hf_name(gguf_name, norms)?;
        let fixup = if hf_name.ends_with("norm.weight") { Fixup::SubtractOne } else { Fixup::None };
        Some(GgufTensor::Load { hf_name, fixup })
    }
}
