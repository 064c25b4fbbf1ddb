//! The Gemma family of decoders (Gemma 1, 2 and 3, text only): its
//! configuration, read from a Hugging Face `config.json` or GGUF metadata,
//! the mapping of llama.cpp's GGUF tensors to Hugging Face names, and the
//! forward pass in burn.
//!
//! What sets Gemma apart from Llama: RMSNorm scales by `1 + w`; embeddings
//! are multiplied by `sqrt(hidden)` (as an f32 constant, the compute dtype);
//! the MLP gates with GELU (tanh approximation); `head_dim` is independent of
//! hidden / heads and the attention scale is `query_pre_attn_scalar^-0.5`.
//! Gemma 2 adds norms after attention and after the MLP (and one before the
//! MLP), soft-caps attention logits and final logits, and alternates
//! sliding-window and global layers. Gemma 3 normalises queries and keys per
//! head, and runs local layers (sliding window, rotary base
//! `rope_local_base_freq`) and global layers (rotary base `rope_theta`, with
//! its scaling) in the pattern its configuration gives.
//!
//! Incremental decoding ([`GemmaModel::forward_cached`]) keeps every layer's
//! keys and values in a [`KvCache`]; sliding-window layers attend through
//! the cache's windowed mask, global layers through its causal one.

use std::path::Path;

use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cache::{KvCache, LayerKv};
use crate::error::ModelError;
use crate::gguf::GgufFile;
use crate::kernels::{AttentionShape, NewHeads};
use crate::llama::{
    apply_rope, apply_rope_rows, batch_shape, check_decoder_shape, flatten_tokens, from_values, host_values, repeat_kv, rope_tables,
    rope_tables_at, DecoderShape, Linear, LinearObserver,
};
use crate::weights::{HostTensor, WeightMap};

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
    /// Number of key/value heads.
    pub num_key_value_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Epsilon of RMSNorm.
    pub rms_norm_eps: f64,
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

/// Whether a `config.json` `model_type` belongs to the Gemma family.
pub fn is_gemma_model_type(model_type: &str) -> bool {
    matches!(model_type, "gemma" | "gemma2" | "gemma3" | "gemma3_text")
}

/// Whether a GGUF `general.architecture` belongs to the Gemma family.
pub fn is_gemma_architecture(arch: &str) -> bool {
    matches!(arch, "gemma" | "gemma2" | "gemma3")
}

fn token_id(value: Option<&Value>) -> Option<u32> {
    match value? {
        Value::Number(n) => n.as_u64().map(|v| v as u32),
        Value::Array(items) => items.first().and_then(Value::as_u64).map(|v| v as u32),
        _ => None,
    }
}

/// Layer kinds from a Gemma 3 `sliding_window_pattern` (every `pattern`-th layer is global).
pub fn layer_types_from_pattern(layers: usize, pattern: usize) -> Vec<LayerType> {
    (0..layers).map(|i| if pattern > 0 && (i + 1) % pattern == 0 { LayerType::Full } else { LayerType::Sliding }).collect()
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
        let version = match model_type {
            "gemma" => GemmaVersion::Gemma1,
            "gemma2" => GemmaVersion::Gemma2,
            "gemma3" | "gemma3_text" => GemmaVersion::Gemma3,
            other => {
                return Err(ModelError::config(
                    path,
                    format!("expected model_type gemma, gemma2, gemma3_text or gemma3 for the Gemma family; found `{other}`"),
                ))
            }
        };
        for key in ["hidden_activation", "hidden_act"] {
            if let Some(act) = json.get(key).and_then(Value::as_str) {
                if !matches!(act, "gelu_pytorch_tanh" | "gelu_tanh" | "gelu") {
                    return Err(ModelError::config(path, format!("expected {key} `gelu_pytorch_tanh`; found `{act}`")));
                }
            }
        }
        let usize_field = |key: &str| -> Result<usize, ModelError> {
            json.get(key).and_then(Value::as_u64).map(|v| v as usize).ok_or_else(|| {
                ModelError::config(
                    path,
                    format!(
                        "expected a non-negative integer `{key}`; found {}",
                        json.get(key).map_or("nothing".to_string(), |v| v.to_string())
                    ),
                )
            })
        };
        let opt_usize = |key: &str| json.get(key).and_then(Value::as_u64).map(|v| v as usize);
        let opt_f64 = |key: &str| json.get(key).and_then(Value::as_f64);
        let hidden_size = usize_field("hidden_size")?;
        let num_attention_heads = usize_field("num_attention_heads")?;
        let num_hidden_layers = usize_field("num_hidden_layers")?;
        let head_dim = opt_usize("head_dim").unwrap_or(hidden_size / num_attention_heads.max(1));
        let layer_types = match (version, json.get("layer_types")) {
            (GemmaVersion::Gemma1, _) => vec![LayerType::Full; num_hidden_layers],
            (_, Some(Value::Array(items))) => items
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
            (GemmaVersion::Gemma2, _) => layer_types_from_pattern(num_hidden_layers, 2),
            (GemmaVersion::Gemma3, _) => layer_types_from_pattern(num_hidden_layers, opt_usize("sliding_window_pattern").unwrap_or(6)),
        };
        // Rotary parameters: transformers 5 writes `rope_parameters` per layer
        // kind; older configs `rope_theta`, `rope_local_base_freq`, `rope_scaling`.
        let params = json.get("rope_parameters");
        let full = params.and_then(|p| p.get("full_attention"));
        let sliding = params.and_then(|p| p.get("sliding_attention"));
        let default_theta = if version == GemmaVersion::Gemma3 { 1_000_000.0 } else { 10_000.0 };
        let rope_theta =
            full.and_then(|p| p.get("rope_theta")).and_then(Value::as_f64).or_else(|| opt_f64("rope_theta")).unwrap_or(default_theta);
        let rope_local_base_freq = match version {
            GemmaVersion::Gemma3 => sliding
                .and_then(|p| p.get("rope_theta"))
                .and_then(Value::as_f64)
                .or_else(|| opt_f64("rope_local_base_freq"))
                .unwrap_or(10_000.0),
            _ => rope_theta,
        };
        let scaling = full.filter(|p| p.get("rope_type").is_some()).or_else(|| json.get("rope_scaling").filter(|v| !v.is_null()));
        let rope_scaling_factor = match scaling {
            None => None,
            Some(s) => {
                let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str).unwrap_or("default");
                match kind {
                    "default" => None,
                    "linear" => Some(
                        s.get("factor")
                            .and_then(Value::as_f64)
                            .ok_or_else(|| ModelError::config(path, "rope scaling of type linear needs a number `factor`".to_string()))?,
                    ),
                    other => {
                        return Err(ModelError::config(
                            path,
                            format!("unsupported rope scaling type `{other}` for Gemma; supported: default, linear"),
                        ))
                    }
                }
            }
        };
        let cap = |key: &str| opt_f64(key).filter(|v| *v > 0.0);
        let config = GemmaConfig {
            version,
            vocab_size: usize_field("vocab_size")?,
            hidden_size,
            intermediate_size: usize_field("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: opt_usize("num_key_value_heads").unwrap_or(num_attention_heads),
            head_dim,
            rms_norm_eps: opt_f64("rms_norm_eps").unwrap_or(1e-6),
            rope_theta,
            rope_local_base_freq,
            rope_scaling_factor,
            query_pre_attn_scalar: opt_f64("query_pre_attn_scalar").unwrap_or(head_dim as f64),
            sliding_window: if version == GemmaVersion::Gemma1 { None } else { opt_usize("sliding_window") },
            layer_types,
            attn_logit_softcapping: if version == GemmaVersion::Gemma1 { None } else { cap("attn_logit_softcapping") },
            final_logit_softcapping: if version == GemmaVersion::Gemma1 { None } else { cap("final_logit_softcapping") },
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
    /// gemma, gemma2 or gemma3), with llama.cpp's defaults for what the file
    /// does not say: Gemma 3's local rotary base 10000 and its pattern of
    /// five local layers then one global; the attention scale of head_dim,
    /// except for the 27B models (46 and 62 layers) that use hidden / heads.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, ModelError> {
        let path = file.path();
        let arch = file.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("").to_string();
        let version = match arch.as_str() {
            "gemma" => GemmaVersion::Gemma1,
            "gemma2" => GemmaVersion::Gemma2,
            "gemma3" => GemmaVersion::Gemma3,
            other => {
                return Err(ModelError::config(
                    path,
                    format!("expected general.architecture gemma, gemma2 or gemma3 for the Gemma family; found `{other}`"),
                ))
            }
        };
        let int = |key: &str| -> Result<usize, ModelError> {
            let full = format!("{arch}.{key}");
            file.get(&full)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| ModelError::config(path, format!("expected an integer metadata key `{full}`; it is missing")))
        };
        let opt_int = |key: &str| file.get(&format!("{arch}.{key}")).and_then(|v| v.as_u64()).map(|v| v as usize);
        let opt_f = |key: &str| file.get(&format!("{arch}.{key}")).and_then(|v| v.as_f64());
        let hidden_size = int("embedding_length")?;
        let num_attention_heads = int("attention.head_count")?;
        let num_hidden_layers = int("block_count")?;
        let head_dim = opt_int("attention.key_length").unwrap_or(hidden_size / num_attention_heads.max(1));
        let vocab_size = match opt_int("vocab_size") {
            Some(v) => v,
            None => file.tensor_info("token_embd.weight").map(|t| t.shape()[0]).ok_or_else(|| {
                ModelError::config(path, "expected a tensor `token_embd.weight` (or metadata vocab_size) to know the vocabulary size")
            })?,
        };
        let scaling_type = file.get(&format!("{arch}.rope.scaling.type")).and_then(|v| v.as_str()).unwrap_or("none");
        let rope_scaling_factor = match scaling_type {
            "none" => None,
            "linear" => Some(
                opt_f("rope.scaling.factor")
                    .ok_or_else(|| ModelError::config(path, format!("linear rope scaling needs `{arch}.rope.scaling.factor`")))?,
            ),
            other => {
                return Err(ModelError::config(path, format!("unsupported {arch}.rope.scaling.type `{other}`; supported: none, linear")))
            }
        };
        let is_27b = matches!((version, num_hidden_layers), (GemmaVersion::Gemma2, 46) | (GemmaVersion::Gemma3, 62));
        let query_pre_attn_scalar = if is_27b { (hidden_size / num_attention_heads.max(1)) as f64 } else { head_dim as f64 };
        let layer_types = match version {
            GemmaVersion::Gemma1 => vec![LayerType::Full; num_hidden_layers],
            GemmaVersion::Gemma2 => layer_types_from_pattern(num_hidden_layers, 2),
            GemmaVersion::Gemma3 => layer_types_from_pattern(num_hidden_layers, 6),
        };
        let rope_theta = opt_f("rope.freq_base").unwrap_or(if version == GemmaVersion::Gemma3 { 1_000_000.0 } else { 10_000.0 });
        let token = |key: &str| file.get(key).and_then(|v| v.as_u64()).map(|v| v as u32);
        let cap = |key: &str| opt_f(key).filter(|v| *v > 0.0);
        let config = GemmaConfig {
            version,
            vocab_size,
            hidden_size,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: opt_int("attention.head_count_kv").unwrap_or(num_attention_heads),
            head_dim,
            rms_norm_eps: opt_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
            rope_theta,
            rope_local_base_freq: if version == GemmaVersion::Gemma3 { 10_000.0 } else { rope_theta },
            rope_scaling_factor,
            query_pre_attn_scalar,
            sliding_window: if version == GemmaVersion::Gemma1 { None } else { opt_int("attention.sliding_window") },
            layer_types,
            attn_logit_softcapping: if version == GemmaVersion::Gemma2 { cap("attn_logit_softcapping") } else { None },
            final_logit_softcapping: if version == GemmaVersion::Gemma2 { cap("final_logit_softcapping") } else { None },
            max_position_embeddings: opt_int("context_length").unwrap_or(8192),
            tie_word_embeddings: file.tensor_info("output.weight").is_none(),
            bos_token_id: token("tokenizer.ggml.bos_token_id"),
            eos_token_id: token("tokenizer.ggml.eos_token_id"),
            pad_token_id: token("tokenizer.ggml.padding_token_id"),
        };
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ModelError> {
        check_decoder_shape(
            path,
            &DecoderShape {
                vocab_size: self.vocab_size,
                hidden_size: self.hidden_size,
                intermediate_size: self.intermediate_size,
                num_hidden_layers: self.num_hidden_layers,
                num_attention_heads: self.num_attention_heads,
                num_key_value_heads: self.num_key_value_heads,
                head_dim: self.head_dim,
            },
        )?;
        if self.layer_types.len() != self.num_hidden_layers {
            return Err(ModelError::config(
                path,
                format!("expected {} layer_types, one per layer; found {}", self.num_hidden_layers, self.layer_types.len()),
            ));
        }
        if self.layer_types.contains(&LayerType::Sliding) && self.sliding_window.is_none_or(|w| w == 0) {
            return Err(ModelError::config(path, "sliding-window layers need a positive `sliding_window`; found none"));
        }
        if self.query_pre_attn_scalar <= 0.0 {
            return Err(ModelError::config(path, format!("query_pre_attn_scalar must be positive; found {}", self.query_pre_attn_scalar)));
        }
        Ok(())
    }

    /// Hugging Face `model_type`.
    pub fn model_type(&self) -> &'static str {
        match self.version {
            GemmaVersion::Gemma1 => "gemma",
            GemmaVersion::Gemma2 => "gemma2",
            GemmaVersion::Gemma3 => "gemma3_text",
        }
    }

    /// The Hugging Face `config.json` of this configuration, as written next to
    /// pruned models (Gemma3ForCausalLM, Gemma2ForCausalLM or GemmaForCausalLM).
    pub fn to_hf_json(&self) -> Value {
        let architecture = match self.version {
            GemmaVersion::Gemma1 => "GemmaForCausalLM",
            GemmaVersion::Gemma2 => "Gemma2ForCausalLM",
            GemmaVersion::Gemma3 => "Gemma3ForCausalLM",
        };
        let mut json = serde_json::json!({
            "architectures": [architecture],
            "model_type": self.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "gelu_pytorch_tanh",
            "hidden_activation": "gelu_pytorch_tanh",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": false,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32",
        });
        if self.version != GemmaVersion::Gemma1 {
            let kinds: Vec<&str> = self
                .layer_types
                .iter()
                .map(|t| match t {
                    LayerType::Sliding => "sliding_attention",
                    LayerType::Full => "full_attention",
                })
                .collect();
            json["layer_types"] = serde_json::json!(kinds);
            json["sliding_window"] = serde_json::json!(self.sliding_window);
            // transformers declares it an integer and refuses `256.0`.
            json["query_pre_attn_scalar"] = if self.query_pre_attn_scalar.fract() == 0.0 {
                serde_json::json!(self.query_pre_attn_scalar as u64)
            } else {
                serde_json::json!(self.query_pre_attn_scalar)
            };
            json["attn_logit_softcapping"] = serde_json::json!(self.attn_logit_softcapping);
            json["final_logit_softcapping"] = serde_json::json!(self.final_logit_softcapping);
        }
        if self.version == GemmaVersion::Gemma3 {
            json["rope_local_base_freq"] = serde_json::json!(self.rope_local_base_freq);
            json["rope_scaling"] = match self.rope_scaling_factor {
                Some(factor) => serde_json::json!({"rope_type": "linear", "factor": factor}),
                None => Value::Null,
            };
        }
        json
    }

    /// Inverse rotary frequencies (head_dim / 2 values) of layers of `kind`, in f64.
    pub fn inverse_frequencies(&self, kind: LayerType) -> Vec<f64> {
        let (base, factor) = match kind {
            LayerType::Sliding if self.version == GemmaVersion::Gemma3 => (self.rope_local_base_freq, 1.0),
            _ => (self.rope_theta, self.rope_scaling_factor.unwrap_or(1.0)),
        };
        let d = self.head_dim as f64;
        (0..self.head_dim / 2).map(|i| 1.0 / base.powf((2 * i) as f64 / d) / factor).collect()
    }

    /// Names of the linear modules of decoder layer `layer` (Hugging Face
    /// parameter names without `.weight`) with their (out, in) features.
    pub fn linear_modules(&self, layer: usize) -> Vec<(String, usize, usize)> {
        let p = format!("model.layers.{layer}");
        let (h, q, kv, i) =
            (self.hidden_size, self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim, self.intermediate_size);
        vec![
            (format!("{p}.self_attn.q_proj"), q, h),
            (format!("{p}.self_attn.k_proj"), kv, h),
            (format!("{p}.self_attn.v_proj"), kv, h),
            (format!("{p}.self_attn.o_proj"), h, q),
            (format!("{p}.mlp.gate_proj"), i, h),
            (format!("{p}.mlp.up_proj"), i, h),
            (format!("{p}.mlp.down_proj"), h, i),
        ]
    }

    /// Names and widths of the norms of decoder layer `layer`.
    fn layer_norms(&self, layer: usize) -> Vec<(String, usize)> {
        let p = format!("model.layers.{layer}");
        let h = self.hidden_size;
        let mut out = vec![(format!("{p}.input_layernorm.weight"), h), (format!("{p}.post_attention_layernorm.weight"), h)];
        if self.version != GemmaVersion::Gemma1 {
            out.push((format!("{p}.pre_feedforward_layernorm.weight"), h));
            out.push((format!("{p}.post_feedforward_layernorm.weight"), h));
        }
        if self.version == GemmaVersion::Gemma3 {
            out.push((format!("{p}.self_attn.q_norm.weight"), self.head_dim));
            out.push((format!("{p}.self_attn.k_norm.weight"), self.head_dim));
        }
        out
    }

    /// Every tensor the architecture needs, with its shape.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab_size, self.hidden_size])];
        for layer in 0..self.num_hidden_layers {
            out.extend(self.layer_norms(layer).into_iter().map(|(n, w)| (n, vec![w])));
            out.extend(self.linear_modules(layer).into_iter().map(|(n, o, i)| (format!("{n}.weight"), vec![o, i])));
        }
        out.push(("model.norm.weight".to_string(), vec![self.hidden_size]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![self.vocab_size, self.hidden_size]));
        }
        out
    }
}

/// Maps a GGUF tensor name of a Gemma model (llama.cpp convention) to its
/// Hugging Face name. Gemma 1 names its pre-MLP norm `ffn_norm` like Llama
/// (HF `post_attention_layernorm`); Gemma 2 and 3 name the norm after
/// attention `post_attention_norm` and the one before the MLP `ffn_norm`
/// (HF `pre_feedforward_layernorm`).
pub fn gguf_to_hf_name(version: GemmaVersion, name: &str) -> Option<String> {
    match name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let module = tail.strip_suffix(".weight")?;
    let hf = match (module, version) {
        ("attn_norm", _) => "input_layernorm",
        ("ffn_norm", GemmaVersion::Gemma1) => "post_attention_layernorm",
        ("ffn_norm", _) => "pre_feedforward_layernorm",
        ("post_attention_norm", GemmaVersion::Gemma2 | GemmaVersion::Gemma3) => "post_attention_layernorm",
        ("post_ffw_norm", GemmaVersion::Gemma2 | GemmaVersion::Gemma3) => "post_feedforward_layernorm",
        ("attn_q_norm", GemmaVersion::Gemma3) => "self_attn.q_norm",
        ("attn_k_norm", GemmaVersion::Gemma3) => "self_attn.k_norm",
        ("attn_q", _) => "self_attn.q_proj",
        ("attn_k", _) => "self_attn.k_proj",
        ("attn_v", _) => "self_attn.v_proj",
        ("attn_output", _) => "self_attn.o_proj",
        ("ffn_gate", _) => "mlp.gate_proj",
        ("ffn_up", _) => "mlp.up_proj",
        ("ffn_down", _) => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.weight"))
}

/// Whether a Hugging Face tensor name is a Gemma RMSNorm weight, which
/// llama.cpp's converter stores as `1 + w` (the loader subtracts the 1 again).
pub fn is_norm_weight(hf_name: &str) -> bool {
    hf_name.ends_with("norm.weight")
}

/// `cap * tanh(x / cap)`.
fn soft_cap<const D: usize>(x: Tensor<D>, cap: f64) -> Tensor<D> {
    (x / cap).tanh() * cap
}

/// GELU with the tanh approximation (PyTorch's `gelu(approximate="tanh")`).
fn gelu_tanh(x: Tensor<2>) -> Tensor<2> {
    let inner = (x.clone() + x.clone().powi_scalar(3) * 0.044_715) * (2.0 / std::f64::consts::PI).sqrt();
    x * (inner.tanh() + 1.0) * 0.5
}

/// Gemma's RMSNorm: `x / rms(x) * (1 + w)`, the scale computed in f32.
#[derive(Debug, Clone)]
pub struct GemmaRmsNorm {
    scale: Tensor<1>,
    eps: f64,
}

impl GemmaRmsNorm {
    /// Builds the norm from its Hugging Face weight `w`.
    pub fn from_host(weight: &HostTensor, eps: f64, device: &Device) -> Self {
        let scale: Vec<f32> = weight.data.iter().map(|w| 1.0 + w).collect();
        GemmaRmsNorm { scale: Tensor::from_data(TensorData::new(scale, [weight.data.len()]), device), eps }
    }

    /// Normalises each row of `x` ([n, width]).
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let inv = (x.clone().powi_scalar(2).mean_dim(1) + self.eps).sqrt().recip();
        x * inv * self.scale.clone().unsqueeze::<2>()
    }
}

/// Gemma self-attention: grouped-query heads, optional q/k norms (Gemma 3),
/// rotary embeddings, optional logit soft-capping and sliding window.
#[derive(Debug, Clone)]
pub struct GemmaAttention {
    /// Query, key and value projections as one layer: outputs `[q, k, v]` side by side.
    pub qkv_proj: Linear,
    /// Output projection.
    pub o_proj: Linear,
    q_norm: Option<GemmaRmsNorm>,
    k_norm: Option<GemmaRmsNorm>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scaling: f64,
    softcap: Option<f64>,
}

impl GemmaAttention {
    /// Queries, keys and values [batch, n, seq, head_dim] of the fused
    /// projection `qkv` [batch * seq, ...], q and k normalised per head
    /// (Gemma 3), before the rotary embedding.
    fn split_heads(&self, qkv: Tensor<2>, b: usize, s: usize) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let d = self.head_dim;
        let (q_width, kv_width) = (self.heads * d, self.kv_heads * d);
        let norm = |t: Tensor<2>, n: usize, norm: &Option<GemmaRmsNorm>| match norm {
            Some(norm) => norm.forward(t.reshape([b * s * n, d])).reshape([b * s, n * d]),
            None => t,
        };
        let q = norm(qkv.clone().narrow(1, 0, q_width), self.heads, &self.q_norm);
        let k = norm(qkv.clone().narrow(1, q_width, kv_width), self.kv_heads, &self.k_norm);
        let v = qkv.narrow(1, q_width + kv_width, kv_width);
        let heads = |t: Tensor<2>, n: usize| t.reshape([b, s, n, d]).swap_dims(1, 2);
        (heads(q, self.heads), heads(k, self.kv_heads), heads(v, self.kv_heads))
    }

    /// Scaled, soft-capped attention scores (Gemma 2's cap when configured).
    fn scores(&self, q: Tensor<4>, k: Tensor<4>) -> Tensor<4> {
        let scores = q.matmul(k.swap_dims(2, 3)) * self.scaling;
        match self.softcap {
            Some(cap) => soft_cap(scores, cap),
            None => scores,
        }
    }

    /// Attention context [batch * seq, heads * head_dim] of the fused projection `qkv`.
    fn attend(&self, qkv: Tensor<2>, ctx: &GemmaContext, kind: LayerType) -> Tensor<2> {
        let (b, s, d) = (ctx.batch, ctx.seq, self.head_dim);
        let (q, k, v) = self.split_heads(qkv, b, s);
        let (cos, sin, mask) = match kind {
            LayerType::Sliding => (&ctx.local_cos, &ctx.local_sin, &ctx.sliding_mask),
            LayerType::Full => (&ctx.global_cos, &ctx.global_sin, &ctx.causal_mask),
        };
        let q = apply_rope(q, cos, sin);
        let n_rep = self.heads / self.kv_heads;
        let k = repeat_kv(apply_rope(k, cos, sin), n_rep);
        let v = repeat_kv(v, n_rep);
        let scores = self.scores(q, k);
        let mask = mask.clone().unsqueeze::<4>().expand([b, self.heads, s, s]);
        let probs = softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3);
        probs.matmul(v).swap_dims(1, 2).reshape([b * s, self.heads * d])
    }

    /// Attention context [batch * new, heads * head_dim] of the fused
    /// projection `qkv` of new positions, over the keys and values in `kv`
    /// and the new ones, which are appended to `kv`. Layers of `kind`
    /// Sliding see only the last `sliding_window` positions through the mask.
    fn attend_cached(&self, qkv: Tensor<2>, step: &GemmaCachedStep, kind: LayerType, kv: &mut LayerKv) -> Tensor<2> {
        let (b, s, d) = (step.batch, step.seq, self.head_dim);
        let (q, k, v) = self.split_heads(qkv, b, s);
        let (cos, sin, mask) = match kind {
            LayerType::Sliding => (&step.local_cos, &step.local_sin, &step.sliding_mask),
            LayerType::Full => (&step.global_cos, &step.global_sin, &step.causal_mask),
        };
        let q = apply_rope_rows(q, cos, sin);
        let k = apply_rope_rows(k, cos, sin);
        if let (Some(visible), None) = (&step.host_visible, self.softcap) {
            // Host memory and no soft-capping: the host cache and kernel.
            let visible = match kind {
                LayerType::Sliding => &visible.sliding,
                LayerType::Full => &visible.causal,
            };
            let device = q.device();
            let shape = AttentionShape { batch: b, seq: s, heads: self.heads, kv_heads: self.kv_heads, head_dim: d };
            let new = NewHeads { queries: host_values(q.swap_dims(1, 2)), keys: host_values(k), values: host_values(v) };
            let context = kv.attend_host(&new, shape, visible, self.scaling as f32);
            return from_values(context, [b * s, self.heads * d], &device);
        }
        kv.move_to_tensors(b, &q.device());
        let (k, v) = kv.append(k, v);
        let total = k.dims()[2];
        let group = self.heads / self.kv_heads;
        // Query head g * group + r at new slot i is row r * s + i of key/value head g.
        let q = q.reshape([b, self.kv_heads, group * s, d]);
        let scores = self.scores(q, k);
        let mask = mask.clone().expand([b, self.kv_heads, group * s, total]);
        let probs = softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3);
        probs.matmul(v).reshape([b, self.heads, s, d]).swap_dims(1, 2).reshape([b * s, self.heads * d])
    }
}

/// Gated GELU MLP: `down(gelu_tanh(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct GemmaMlp {
    /// Gate and up projections as one layer: outputs `[gate, up]` side by side.
    pub gate_up_proj: Linear,
    /// Down projection.
    pub down_proj: Linear,
    intermediate: usize,
}

impl GemmaMlp {
    fn gate(&self, x: Tensor<2>) -> Tensor<2> {
        let gate_up = self.gate_up_proj.forward(x);
        let i = self.intermediate;
        gelu_tanh(gate_up.clone().narrow(1, 0, i)) * gate_up.narrow(1, i, i)
    }
}

/// One Gemma decoder layer.
#[derive(Debug, Clone)]
pub struct GemmaDecoderLayer {
    kind: LayerType,
    input_layernorm: GemmaRmsNorm,
    /// Gemma 1: the norm before the MLP; Gemma 2/3: the norm of the attention output.
    post_attention_layernorm: GemmaRmsNorm,
    /// Gemma 2/3: the norm before the MLP.
    pre_feedforward_layernorm: Option<GemmaRmsNorm>,
    /// Gemma 2/3: the norm of the MLP output.
    post_feedforward_layernorm: Option<GemmaRmsNorm>,
    /// Attention block.
    pub self_attn: GemmaAttention,
    /// MLP block.
    pub mlp: GemmaMlp,
}

/// Per-forward context shared by all layers: shape, rotary tables of both
/// layer kinds and the causal and sliding-window masks.
pub struct GemmaContext {
    batch: usize,
    seq: usize,
    local_cos: Tensor<2>,
    local_sin: Tensor<2>,
    global_cos: Tensor<2>,
    global_sin: Tensor<2>,
    causal_mask: Tensor<2, Bool>,
    sliding_mask: Tensor<2, Bool>,
}

/// What every layer of one cached forward step shares: shape, the rotary
/// tables of the new positions for both layer kinds ([batch, 1, new,
/// head_dim]) and the causal and sliding-window masks over the cache.
pub struct GemmaCachedStep {
    batch: usize,
    seq: usize,
    local_cos: Tensor<4>,
    local_sin: Tensor<4>,
    global_cos: Tensor<4>,
    global_sin: Tensor<4>,
    causal_mask: Tensor<4, Bool>,
    sliding_mask: Tensor<4, Bool>,
    /// On devices whose tensors live in host memory: the key slots each new
    /// slot sees, for the host attention kernel.
    host_visible: Option<HostVisible>,
}

/// The key slots each new slot of a cached step sees ([`KvCache::visible`]),
/// on global and on sliding-window layers.
struct HostVisible {
    causal: Vec<std::ops::Range<usize>>,
    sliding: Vec<std::ops::Range<usize>>,
}

/// Boolean mask [seq, seq], true where query i may not see key j: j after i,
/// or, with a window, j at or before i - window.
pub fn attention_mask(seq: usize, window: Option<usize>, device: &Device) -> Tensor<2, Bool> {
    let values: Vec<bool> = (0..seq).flat_map(|i| (0..seq).map(move |j| j > i || window.is_some_and(|w| i >= j + w))).collect();
    Tensor::from_data(TensorData::new(values, [seq, seq]), device)
}

fn report(observer: &mut Option<&mut dyn LinearObserver>, prefix: &str, names: &[&str], x: &Tensor<2>) {
    if let Some(obs) = observer.as_deref_mut() {
        let modules: Vec<String> = names.iter().map(|name| format!("{prefix}.{name}")).collect();
        obs.observe(&modules, x);
    }
}

impl GemmaDecoderLayer {
    /// Builds decoder layer `layer` on `device` from Hugging Face-named host weights.
    pub fn from_weights(config: &GemmaConfig, weights: &WeightMap, layer: usize, device: &Device) -> Result<Self, ModelError> {
        let p = format!("model.layers.{layer}");
        let arch = config.model_type();
        let (h, q, kv, i) = (
            config.hidden_size,
            config.num_attention_heads * config.head_dim,
            config.num_key_value_heads * config.head_dim,
            config.intermediate_size,
        );
        let w = |name: &str, shape: &[usize]| weights.require(&format!("{p}.{name}.weight"), shape, arch);
        let norm = |name: &str, width: usize| -> Result<GemmaRmsNorm, ModelError> {
            Ok(GemmaRmsNorm::from_host(w(name, &[width])?, config.rms_norm_eps, device))
        };
        let sandwich = config.version != GemmaVersion::Gemma1;
        let qk_norms = config.version == GemmaVersion::Gemma3;
        let qkv =
            [(w("self_attn.q_proj", &[q, h])?, None), (w("self_attn.k_proj", &[kv, h])?, None), (w("self_attn.v_proj", &[kv, h])?, None)];
        let gate_up = [(w("mlp.gate_proj", &[i, h])?, None), (w("mlp.up_proj", &[i, h])?, None)];
        Ok(GemmaDecoderLayer {
            kind: config.layer_types[layer],
            input_layernorm: norm("input_layernorm", h)?,
            post_attention_layernorm: norm("post_attention_layernorm", h)?,
            pre_feedforward_layernorm: if sandwich { Some(norm("pre_feedforward_layernorm", h)?) } else { None },
            post_feedforward_layernorm: if sandwich { Some(norm("post_feedforward_layernorm", h)?) } else { None },
            self_attn: GemmaAttention {
                qkv_proj: Linear::concat_from_host(&qkv, device),
                o_proj: Linear::from_host(w("self_attn.o_proj", &[h, q])?, None, device),
                q_norm: if qk_norms { Some(norm("self_attn.q_norm", config.head_dim)?) } else { None },
                k_norm: if qk_norms { Some(norm("self_attn.k_norm", config.head_dim)?) } else { None },
                heads: config.num_attention_heads,
                kv_heads: config.num_key_value_heads,
                head_dim: config.head_dim,
                scaling: config.query_pre_attn_scalar.powf(-0.5),
                softcap: config.attn_logit_softcapping,
            },
            mlp: GemmaMlp {
                gate_up_proj: Linear::concat_from_host(&gate_up, device),
                down_proj: Linear::from_host(w("mlp.down_proj", &[h, i])?, None, device),
                intermediate: i,
            },
        })
    }

    /// Runs the layer on hidden states [batch * seq, hidden]; reports every
    /// linear input to `observer` under the prefix `model.layers.L`.
    pub fn forward(&self, x: Tensor<2>, ctx: &GemmaContext, prefix: &str, observer: Option<&mut dyn LinearObserver>) -> Tensor<2> {
        self.run(x, ctx, prefix, observer, true).expect("the layer output was asked for")
    }

    /// Reports every linear input of the layer to `observer` without
    /// computing the layer's output (the run stops at the down projection's input).
    pub fn observe_inputs(&self, x: Tensor<2>, ctx: &GemmaContext, prefix: &str, observer: &mut dyn LinearObserver) {
        self.run(x, ctx, prefix, Some(observer), false);
    }

    /// Runs the layer on hidden states [batch * new, hidden] of new
    /// positions, attending over this layer's cached keys and values, to
    /// which the new ones are appended.
    pub fn forward_cached(&self, x: Tensor<2>, step: &GemmaCachedStep, kv: &mut LayerKv) -> Tensor<2> {
        let normed = self.input_layernorm.forward(x.clone());
        let context = self.self_attn.attend_cached(self.self_attn.qkv_proj.forward(normed), step, self.kind, kv);
        self.after_attention(x, context, "", None, true).expect("the layer output was asked for")
    }

    fn run(
        &self,
        x: Tensor<2>,
        ctx: &GemmaContext,
        prefix: &str,
        mut observer: Option<&mut dyn LinearObserver>,
        output: bool,
    ) -> Option<Tensor<2>> {
        let normed = self.input_layernorm.forward(x.clone());
        report(&mut observer, prefix, &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], &normed);
        let context = self.self_attn.attend(self.self_attn.qkv_proj.forward(normed), ctx, self.kind);
        self.after_attention(x, context, prefix, observer, output)
    }

    /// The rest of the layer from the attention context: output projection,
    /// norms, residuals and MLP; reports the linear inputs from o_proj on.
    fn after_attention(
        &self,
        x: Tensor<2>,
        context: Tensor<2>,
        prefix: &str,
        mut observer: Option<&mut dyn LinearObserver>,
        output: bool,
    ) -> Option<Tensor<2>> {
        report(&mut observer, prefix, &["self_attn.o_proj"], &context);
        let attn = self.self_attn.o_proj.forward(context);
        let (h, normed) = match &self.pre_feedforward_layernorm {
            Some(pre) => {
                let h = x + self.post_attention_layernorm.forward(attn);
                (h.clone(), pre.forward(h))
            }
            None => {
                let h = x + attn;
                (h.clone(), self.post_attention_layernorm.forward(h))
            }
        };
        report(&mut observer, prefix, &["mlp.gate_proj", "mlp.up_proj"], &normed);
        let gated = self.mlp.gate(normed);
        report(&mut observer, prefix, &["mlp.down_proj"], &gated);
        if !output {
            return None;
        }
        let down = self.mlp.down_proj.forward(gated);
        Some(match &self.post_feedforward_layernorm {
            Some(post) => h + post.forward(down),
            None => h + down,
        })
    }
}

/// A Gemma decoder on a burn device.
#[derive(Debug, Clone)]
pub struct GemmaModel {
    /// The configuration the model was built from.
    pub config: GemmaConfig,
    embed_tokens: Tensor<2>,
    /// The decoder layers, bottom first.
    pub layers: Vec<GemmaDecoderLayer>,
    norm: GemmaRmsNorm,
    lm_head: Linear,
    device: Device,
}

impl GemmaModel {
    /// Builds the model on `device` from Hugging Face-named weights, checking
    /// that every tensor is present with the shape the configuration implies.
    pub fn from_weights(config: &GemmaConfig, weights: &WeightMap, device: &Device) -> Result<Self, ModelError> {
        let arch = config.model_type();
        let (v, h) = (config.vocab_size, config.hidden_size);
        let embed = weights.require("model.embed_tokens.weight", &[v, h], arch)?;
        let embed_tokens = Tensor::from_data(TensorData::new(embed.data.clone(), [v, h]), device);
        let layers = (0..config.num_hidden_layers)
            .map(|l| GemmaDecoderLayer::from_weights(config, weights, l, device))
            .collect::<Result<Vec<_>, _>>()?;
        let norm = GemmaRmsNorm::from_host(weights.require("model.norm.weight", &[h], arch)?, config.rms_norm_eps, device);
        let head = if config.tie_word_embeddings { embed } else { weights.require("lm_head.weight", &[v, h], arch)? };
        Ok(GemmaModel {
            config: config.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head: Linear::from_host(head, None, device),
            device: device.clone(),
        })
    }

    /// The device the model lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Replaces decoder layer `index` (e.g. by its pruned version).
    pub fn replace_layer(&mut self, index: usize, layer: GemmaDecoderLayer) {
        self.layers[index] = layer;
    }

    /// Context for a forward pass over `batch` sequences of `seq` tokens.
    pub fn context(&self, batch: usize, seq: usize) -> GemmaContext {
        let (local_cos, local_sin) = rope_tables(&self.config.inverse_frequencies(LayerType::Sliding), seq, &self.device);
        let (global_cos, global_sin) = rope_tables(&self.config.inverse_frequencies(LayerType::Full), seq, &self.device);
        GemmaContext {
            batch,
            seq,
            local_cos,
            local_sin,
            global_cos,
            global_sin,
            causal_mask: attention_mask(seq, None, &self.device),
            sliding_mask: attention_mask(seq, self.config.sliding_window, &self.device),
        }
    }

    /// Scaled token embeddings [batch * seq, hidden] of equal-length
    /// sequences: rows times `sqrt(hidden)` rounded to f32, as Hugging Face
    /// does in the f32 compute dtype.
    pub fn embed(&self, tokens: &[Vec<u32>]) -> Result<Tensor<2>, ModelError> {
        let ids = flatten_tokens(tokens, self.config.vocab_size)?;
        let n = ids.len();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), &self.device);
        let normalizer = (self.config.hidden_size as f64).sqrt() as f32;
        Ok(self.embed_tokens.clone().select(0, ids) * normalizer)
    }

    /// Final norm, LM head and final soft-capping: hidden [n, hidden] -> logits [n, vocab].
    pub fn head(&self, hidden: Tensor<2>) -> Tensor<2> {
        let logits = self.lm_head.forward(self.norm.forward(hidden));
        match self.config.final_logit_softcapping {
            Some(cap) => soft_cap(logits, cap),
            None => logits,
        }
    }

    /// Logits [batch, seq, vocab] of equal-length token sequences.
    pub fn forward(&self, tokens: &[Vec<u32>]) -> Result<Tensor<3>, ModelError> {
        let (batch, seq) = batch_shape(tokens)?;
        let ctx = self.context(batch, seq);
        let mut hidden = self.embed(tokens)?;
        for (l, layer) in self.layers.iter().enumerate() {
            hidden = layer.forward(hidden, &ctx, &format!("model.layers.{l}"), None);
        }
        Ok(self.head(hidden).reshape([batch, seq, self.config.vocab_size]))
    }

    /// An empty key/value cache for rows with the given left padding.
    pub fn new_cache(&self, padding: Vec<usize>) -> KvCache {
        KvCache::new(self.layers.len(), padding)
    }

    /// Runs equal-length rows of new tokens after what `cache` holds,
    /// appending their keys and values to it; returns the hidden states
    /// [batch * new, hidden] after the last layer, before the final norm.
    /// Rotary positions follow the cache (each row's padding excluded), with
    /// the local base on sliding-window layers and the global base (and
    /// scaling) on global layers.
    pub fn forward_cached_hidden(&self, tokens: &[Vec<u32>], cache: &mut KvCache) -> Result<Tensor<2>, ModelError> {
        let (batch, seq) = batch_shape(tokens)?;
        cache.check_step(batch, seq)?;
        if cache.layers.len() != self.layers.len() {
            return Err(ModelError::Input(format!("the cache has {} layers; the model has {}", cache.layers.len(), self.layers.len())));
        }
        let positions = cache.positions(seq);
        let (local_cos, local_sin) = rope_tables_at(&self.config.inverse_frequencies(LayerType::Sliding), &positions, &self.device);
        let (global_cos, global_sin) = rope_tables_at(&self.config.inverse_frequencies(LayerType::Full), &positions, &self.device);
        let group = self.config.num_attention_heads / self.config.num_key_value_heads;
        let causal_mask = cache.mask(seq, group, None, &self.device);
        let sliding_mask = match self.config.sliding_window {
            Some(window) => cache.mask(seq, group, Some(window), &self.device),
            None => causal_mask.clone(),
        };
        let host_visible = crate::device::is_host_memory(&self.device)
            .then(|| HostVisible { causal: cache.visible(seq, None), sliding: cache.visible(seq, self.config.sliding_window) });
        let step = GemmaCachedStep { batch, seq, local_cos, local_sin, global_cos, global_sin, causal_mask, sliding_mask, host_visible };
        let mut hidden = self.embed(tokens)?;
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            hidden = layer.forward_cached(hidden, &step, kv);
        }
        cache.advance(seq);
        Ok(hidden)
    }

    /// Logits [batch, new, vocab] of new tokens after what `cache` holds
    /// (see [`GemmaModel::forward_cached_hidden`]), final soft-capping included.
    pub fn forward_cached(&self, tokens: &[Vec<u32>], cache: &mut KvCache) -> Result<Tensor<3>, ModelError> {
        let hidden = self.forward_cached_hidden(tokens, cache)?;
        let (batch, seq) = (tokens.len(), tokens[0].len());
        Ok(self.head(hidden).reshape([batch, seq, self.config.vocab_size]))
    }

    /// Logits [batch, vocab] of the last new token of each row only (the LM
    /// head runs on those rows alone).
    pub fn forward_cached_last(&self, tokens: &[Vec<u32>], cache: &mut KvCache) -> Result<Tensor<2>, ModelError> {
        let hidden = self.forward_cached_hidden(tokens, cache)?;
        let (batch, seq) = (tokens.len(), tokens[0].len());
        let last = hidden.reshape([batch, seq, self.config.hidden_size]).narrow(1, seq - 1, 1).reshape([batch, self.config.hidden_size]);
        Ok(self.head(last))
    }
}

/// Reads a Gemma GGUF's tensors into Hugging Face names and layout: names
/// mapped by [`gguf_to_hf_name`], q/k rows kept as they are (llama.cpp's
/// converter does not permute them for Gemma), and the `+ 1` its converter
/// adds to every norm weight subtracted again.
pub fn weights_from_gguf(
    file: &GgufFile,
    config: &GemmaConfig,
    dequantize: impl FnOnce(&[(String, String, Vec<usize>)]) -> Result<Vec<Vec<f32>>, ModelError>,
) -> Result<WeightMap, ModelError> {
    let path = file.path();
    let mut mapped = Vec::with_capacity(file.tensors().len());
    for info in file.tensors() {
        let hf = gguf_to_hf_name(config.version, &info.name).ok_or_else(|| {
            ModelError::format(
                path,
                format!(
                    "tensor `{}` has no counterpart in the {} architecture (unexpected GGUF tensor name)",
                    info.name,
                    config.model_type()
                ),
            )
        })?;
        mapped.push((info.name.clone(), hf, info.shape()));
    }
    let data = dequantize(&mapped)?;
    let mut weights = WeightMap::new(path);
    for ((_, hf, shape), mut values) in mapped.into_iter().zip(data) {
        if is_norm_weight(&hf) {
            values.iter_mut().for_each(|v| *v -= 1.0);
        }
        weights.insert(hf, HostTensor::new(shape, values));
    }
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(c.inverse_frequencies(LayerType::Sliding)[1], 1.0 / 10000f64.powf(2.0 / 256.0));
        assert_eq!(c.inverse_frequencies(LayerType::Full)[1], 1.0 / 1e6f64.powf(2.0 / 256.0));
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
        assert_eq!(c.inverse_frequencies(LayerType::Full)[0], 1.0 / 8.0);
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
        assert!(c.expected_tensors().iter().any(|(n, _)| n == "model.layers.3.post_feedforward_layernorm.weight"));
        assert!(!c.expected_tensors().iter().any(|(n, _)| n.contains("q_norm")));
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
        assert_eq!(c.head_dim, 256);
        assert_eq!(c.query_pre_attn_scalar, 256.0);
        assert!(c.layer_types.iter().all(|t| *t == LayerType::Full));
        let names: Vec<String> = c.expected_tensors().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"model.layers.1.post_attention_layernorm.weight".to_string()));
        assert!(!names.iter().any(|n| n.contains("feedforward_layernorm")));
        let bad = serde_json::json!({"model_type": "gemma", "hidden_act": "silu"});
        assert!(GemmaConfig::from_hf_json(&bad, path()).unwrap_err().to_string().contains("gelu_pytorch_tanh"));
    }

    #[test]
    fn gguf_names_follow_the_generation() {
        assert_eq!(
            gguf_to_hf_name(GemmaVersion::Gemma1, "blk.2.ffn_norm.weight").unwrap(),
            "model.layers.2.post_attention_layernorm.weight"
        );
        assert_eq!(
            gguf_to_hf_name(GemmaVersion::Gemma3, "blk.2.ffn_norm.weight").unwrap(),
            "model.layers.2.pre_feedforward_layernorm.weight"
        );
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
    fn sliding_mask_keeps_the_window_including_the_query() {
        #[allow(deprecated)]
        let device = Device::ndarray();
        let mask = attention_mask(4, Some(2), &device).into_data().try_into_vec::<bool>().unwrap();
        // Query i sees keys i-1 and i only.
        let want = [false, true, true, true, false, false, true, true, true, false, false, true, true, true, false, false];
        assert_eq!(mask, want);
    }

    #[test]
    fn gelu_tanh_matches_the_formula() {
        #[allow(deprecated)]
        let device = Device::ndarray();
        let xs = [-3.0f32, -0.5, 0.0, 0.7, 2.5];
        let out = gelu_tanh(Tensor::from_data(TensorData::new(xs.to_vec(), [1, 5]), &device)).into_data().try_into_vec::<f32>().unwrap();
        for (x, y) in xs.iter().zip(out) {
            let x = f64::from(*x);
            let want = 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
            assert!((f64::from(y) - want).abs() < 1e-6, "gelu_tanh({x}) = {y}, want {want}");
        }
    }
}
