//! Phi-3 (mini, small, medium; 4k and LongRoPE 128k): the Llama block with
//! q/k/v and gate/up fused in the checkpoint (`qkv_proj`, `gate_up_proj`,
//! split on loading and fused again on writing), an optional sliding window,
//! and LongRoPE: short or long per-frequency factors, the long ones for a
//! forward reaching past `original_max_position_embeddings`, and an
//! attention factor on every rotary cosine and sine.

use std::borrow::Cow;

use serde_json::Value;

use super::llama::LlamaConfig;
use super::{as_f32, ArchConfig, Family, GgufTensor};
use crate::decoder::{DecoderSpec, LongRope};
use crate::error::ModelError;
use crate::nn::rope::inverse_frequencies;
use crate::nn::RopeScaling;
use crate::weights::{HostTensor, WeightMap};

/// The family's entry in the registry (Hugging Face checkpoints only).
pub const FAMILY: Family = Family {
    hf_model_types: &["phi3"],
    gguf_architectures: &[],
    from_hf_json: |json, path| Ok(Box::new(Phi3Config::from_hf_json(json, path)?)),
    from_gguf: |file| Err(ModelError::config(file.path(), "Phi-3 GGUF files are not supported; use its Hugging Face checkpoint")),
};

/// LongRoPE's rotary factors.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LongRopeFactors {
    /// Divisors of the frequencies up to the original context.
    pub short_factor: Vec<f64>,
    /// Divisors of the frequencies past it.
    pub long_factor: Vec<f64>,
    /// The context the model was trained with.
    pub original_max_position_embeddings: usize,
    /// Factor of every rotary cosine and sine.
    pub attention_factor: f64,
}

/// Hyper-parameters of a Phi-3 decoder: the Llama family's, its window and LongRoPE.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Phi3Config {
    /// The Llama-family hyper-parameters (rotary scaling aside).
    pub base: LlamaConfig,
    /// LongRoPE's factors, if the model has them.
    pub long_rope: Option<LongRopeFactors>,
}

impl Phi3Config {
    /// Reads a Hugging Face `config.json` of model_type phi3.
    pub fn from_hf_json(json: &Value, path: &std::path::Path) -> Result<Self, ModelError> {
        let params = json.get("rope_parameters").or_else(|| json.get("rope_scaling")).filter(|p| !p.is_null());
        let kind = params.and_then(|p| p.get("rope_type").or_else(|| p.get("type"))).and_then(Value::as_str).unwrap_or("default");
        if let Some(partial) = params.and_then(|p| p.get("partial_rotary_factor")).or_else(|| json.get("partial_rotary_factor")) {
            if partial.as_f64() != Some(1.0) {
                return Err(ModelError::config(
                    path,
                    format!("partial rotary embeddings are not supported; found partial_rotary_factor {partial}"),
                ));
            }
        }
        let mut plain = json.clone();
        plain["model_type"] = "llama".into();
        if let Some(p) = plain.get_mut("rope_parameters").filter(|p| p.is_object()) {
            p["rope_type"] = "default".into();
        }
        plain["rope_scaling"] = Value::Null;
        let mut base = LlamaConfig::from_hf_json(&plain, path)?;
        base.model_type = "phi3".into();
        base.sliding_window = json.get("sliding_window").and_then(Value::as_u64).map(|w| w as usize);
        let long_rope = match (kind, params) {
            ("default", _) | (_, None) => None,
            ("longrope", Some(p)) => {
                let factors = |key: &str| -> Result<Vec<f64>, ModelError> {
                    let list = p.get(key).and_then(Value::as_array);
                    list.map(|l| l.iter().filter_map(Value::as_f64).collect::<Vec<f64>>())
                        .filter(|f| f.len() == base.dims.head_dim / 2)
                        .ok_or_else(|| ModelError::config(path, format!("longrope needs `{key}`: {} numbers", base.dims.head_dim / 2)))
                };
                let original = json
                    .get("original_max_position_embeddings")
                    .or_else(|| p.get("original_max_position_embeddings"))
                    .and_then(Value::as_u64)
                    .ok_or_else(|| ModelError::config(path, "longrope needs `original_max_position_embeddings`"))?
                    as usize;
                let factor = base.max_position_embeddings as f64 / original.max(1) as f64;
                let derived = if factor <= 1.0 { 1.0 } else { (1.0 + factor.ln() / (original as f64).ln()).sqrt() };
                Some(LongRopeFactors {
                    short_factor: factors("short_factor")?,
                    long_factor: factors("long_factor")?,
                    original_max_position_embeddings: original,
                    attention_factor: p.get("attention_factor").and_then(Value::as_f64).unwrap_or(derived),
                })
            }
            (other, _) => {
                return Err(ModelError::config(
                    path,
                    format!("unsupported rope scaling type `{other}` for Phi-3; supported: default, longrope"),
                ))
            }
        };
        Ok(Phi3Config { base, long_rope })
    }

    /// Names of the fused modules of layer `layer` and the parts they hold, with their rows.
    fn fused(&self, layer: usize) -> [(String, Vec<(String, usize)>); 2] {
        let (d, p) = (&self.base.dims, format!("model.layers.{layer}"));
        let (q, kv, i) = (d.num_attention_heads * d.head_dim, d.num_key_value_heads * d.head_dim, d.intermediate_size);
        let part = |name: &str, rows: usize| (format!("{p}.{name}.weight"), rows);
        [
            (
                format!("{p}.self_attn.qkv_proj.weight"),
                vec![part("self_attn.q_proj", q), part("self_attn.k_proj", kv), part("self_attn.v_proj", kv)],
            ),
            (format!("{p}.mlp.gate_up_proj.weight"), vec![part("mlp.gate_proj", i), part("mlp.up_proj", i)]),
        ]
    }
}

impl ArchConfig for Phi3Config {
    fn model_type(&self) -> String {
        "phi3".to_string()
    }

    fn spec(&self) -> DecoderSpec {
        let spec = self.base.spec();
        let Some(long) = &self.long_rope else { return spec };
        let (head_dim, theta) = (self.base.dims.head_dim, self.base.rope_theta);
        let set = |factors: &[f64]| vec![inverse_frequencies(head_dim, theta, Some(&RopeScaling::Factors { factors: factors.to_vec() }))];
        DecoderSpec {
            rope_frequencies: set(&long.short_factor),
            long_rope: Some(LongRope { from_length: long.original_max_position_embeddings, frequencies: set(&long.long_factor) }),
            rope_attention_factor: long.attention_factor,
            ..spec
        }
    }

    fn to_hf_json(&self) -> Value {
        let mut json = self.base.to_hf_json();
        json["architectures"] = serde_json::json!(["Phi3ForCausalLM"]);
        json["sliding_window"] = serde_json::json!(self.base.sliding_window);
        if let Some(long) = &self.long_rope {
            json["original_max_position_embeddings"] = long.original_max_position_embeddings.into();
            json["rope_scaling"] = serde_json::json!({
                "rope_type": "longrope", "short_factor": long.short_factor, "long_factor": long.long_factor,
                "attention_factor": long.attention_factor,
            });
        }
        json
    }

    fn canonical_json(&self) -> String {
        let mut c = self.clone();
        c.base.dims.rms_norm_eps = as_f32(c.base.dims.rms_norm_eps);
        c.base.rope_theta = as_f32(c.base.rope_theta);
        serde_json::to_string(&c).expect("serializable config")
    }

    fn gguf_tensor(&self, _gguf_name: &str) -> Option<GgufTensor> {
        None
    }

    fn from_hf_weights(&self, weights: &mut WeightMap) -> Result<(), ModelError> {
        for layer in 0..self.base.dims.num_hidden_layers {
            for (fused, parts) in self.fused(layer) {
                let rows: usize = parts.iter().map(|(_, r)| r).sum();
                let Some(tensor) = weights.remove(&fused) else { continue };
                let [out, cols] = tensor.shape[..] else {
                    return Err(ModelError::format(
                        weights.source(),
                        format!("`{fused}` has shape {:?}; expected [{rows}, in]", tensor.shape),
                    ));
                };
                if out != rows {
                    return Err(ModelError::format(weights.source(), format!("`{fused}` has {out} rows; expected {rows}")));
                }
                let mut first = 0;
                for (name, rows) in parts {
                    weights.insert(name, HostTensor::new(vec![rows, cols], tensor.data[first * cols..(first + rows) * cols].to_vec()));
                    first += rows;
                }
            }
        }
        Ok(())
    }

    fn hf_weights<'w>(&self, weights: &'w WeightMap) -> Vec<(String, Cow<'w, HostTensor>)> {
        let mut out: Vec<(String, Cow<'w, HostTensor>)> = Vec::new();
        let mut fused_parts = std::collections::BTreeSet::new();
        for layer in 0..self.base.dims.num_hidden_layers {
            for (fused, parts) in self.fused(layer) {
                let tensors: Option<Vec<&HostTensor>> = parts.iter().map(|(name, _)| weights.get(name)).collect();
                let Some(tensors) = tensors else { continue };
                let cols = tensors[0].shape[1];
                let data: Vec<f32> = tensors.iter().flat_map(|t| t.data.iter().copied()).collect();
                out.push((fused, Cow::Owned(HostTensor::new(vec![data.len() / cols, cols], data))));
                fused_parts.extend(parts.into_iter().map(|(name, _)| name));
            }
        }
        out.extend(weights.iter().filter(|(name, _)| !fused_parts.contains(*name)).map(|(n, t)| (n.clone(), Cow::Borrowed(t))));
        out
    }
}
