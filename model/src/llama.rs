//! The Llama family of decoders (Llama 2/3, SmolLM, TinyLlama, CodeLlama,
//! Mistral within its sliding window, Qwen2 = Llama + q/k/v bias): its
//! configuration, read from a Hugging Face `config.json` or GGUF metadata,
//! and its forward pass in burn.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cache::{KvCache, LayerKv};
use crate::error::ModelError;
use crate::gemm;
use crate::gguf::GgufFile;
use crate::kernels::{self, AttentionShape};
use crate::sparse_gemm;
use crate::weights::{HostTensor, WeightMap};

/// Rotary-embedding frequency scaling, as in Hugging Face's `rope_scaling`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Every inverse frequency divided by `factor`.
    Linear {
        /// Division factor.
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        /// Scaling factor of low frequencies.
        factor: f64,
        /// Wavelength bound (in units of the original context) under which frequencies are scaled.
        low_freq_factor: f64,
        /// Wavelength bound over which frequencies are kept.
        high_freq_factor: f64,
        /// Context length the model was trained with.
        original_max_position_embeddings: f64,
    },
    /// Explicit per-frequency divisors (GGUF's `rope_freqs.weight`, written by
    /// llama.cpp's converter for Llama 3 scaling).
    Factors {
        /// One divisor per rotary frequency (head_dim / 2 values).
        factors: Vec<f64>,
    },
}

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
    /// Whether q, k and v projections have a bias (Qwen2).
    pub attention_bias: bool,
    /// Whether the MLP projections have a bias.
    pub mlp_bias: bool,
    /// Beginning-of-sequence token, if the model has one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token, if the model has one.
    pub eos_token_id: Option<u32>,
}

fn field_usize(json: &Value, key: &str, path: &Path) -> Result<usize, ModelError> {
    json.get(key).and_then(Value::as_u64).map(|v| v as usize).ok_or_else(|| {
        ModelError::config(
            path,
            format!("expected a non-negative integer `{key}`; found {}", json.get(key).map_or("nothing".to_string(), |v| v.to_string())),
        )
    })
}

fn first_token_id(value: Option<&Value>) -> Option<u32> {
    match value? {
        Value::Number(n) => n.as_u64().map(|v| v as u32),
        Value::Array(items) => items.first().and_then(Value::as_u64).map(|v| v as u32),
        _ => None,
    }
}

impl LlamaConfig {
    /// Reads a Hugging Face `config.json` of model_type llama, mistral or qwen2.
    pub fn from_hf_json(json: &Value, path: &Path) -> Result<Self, ModelError> {
        let model_type = json.get("model_type").and_then(Value::as_str).unwrap_or("").to_string();
        if !matches!(model_type.as_str(), "llama" | "mistral" | "qwen2") {
            return Err(ModelError::config(
                path,
                format!("expected model_type llama, mistral or qwen2 for the Llama family; found `{model_type}`"),
            ));
        }
        if let Some(act) = json.get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                return Err(ModelError::config(path, format!("expected hidden_act `silu`; found `{act}`")));
            }
        }
        let hidden_size = field_usize(json, "hidden_size", path)?;
        let num_attention_heads = field_usize(json, "num_attention_heads", path)?;
        let num_key_value_heads = json.get("num_key_value_heads").and_then(Value::as_u64).map_or(num_attention_heads, |v| v as usize);
        let head_dim = json.get("head_dim").and_then(Value::as_u64).map_or(hidden_size / num_attention_heads.max(1), |v| v as usize);
        let rope_scaling = match json.get("rope_scaling") {
            None | Some(Value::Null) => None,
            Some(s) => {
                let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str).unwrap_or("default");
                let num = |k: &str| {
                    s.get(k)
                        .and_then(Value::as_f64)
                        .ok_or_else(|| ModelError::config(path, format!("rope_scaling of type {kind} needs a number `{k}`")))
                };
                match kind {
                    "default" => None,
                    "linear" => Some(RopeScaling::Linear { factor: num("factor")? }),
                    "llama3" => Some(RopeScaling::Llama3 {
                        factor: num("factor")?,
                        low_freq_factor: num("low_freq_factor")?,
                        high_freq_factor: num("high_freq_factor")?,
                        original_max_position_embeddings: num("original_max_position_embeddings")?,
                    }),
                    other => {
                        return Err(ModelError::config(
                            path,
                            format!("unsupported rope_scaling type `{other}`; supported: default, linear, llama3"),
                        ))
                    }
                }
            }
        };
        let config = LlamaConfig {
            attention_bias: model_type == "qwen2" || json.get("attention_bias").and_then(Value::as_bool).unwrap_or(false),
            model_type,
            vocab_size: field_usize(json, "vocab_size", path)?,
            hidden_size,
            intermediate_size: field_usize(json, "intermediate_size", path)?,
            num_hidden_layers: field_usize(json, "num_hidden_layers", path)?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: json.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6),
            rope_theta: json.get("rope_theta").and_then(Value::as_f64).unwrap_or(10000.0),
            rope_scaling,
            max_position_embeddings: json.get("max_position_embeddings").and_then(Value::as_u64).unwrap_or(2048) as usize,
            tie_word_embeddings: json.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
            mlp_bias: json.get("mlp_bias").and_then(Value::as_bool).unwrap_or(false),
            bos_token_id: first_token_id(json.get("bos_token_id")),
            eos_token_id: first_token_id(json.get("eos_token_id")),
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Reads the configuration from GGUF metadata (`general.architecture`
    /// llama or qwen2, keys `<arch>.block_count`, ...). `rope_factors` are the
    /// values of a `rope_freqs.weight` tensor, when the file has one.
    pub fn from_gguf(file: &GgufFile, rope_factors: Option<Vec<f64>>) -> Result<Self, ModelError> {
        let path = file.path();
        let arch = file.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("").to_string();
        if !matches!(arch.as_str(), "llama" | "qwen2") {
            return Err(ModelError::config(
                path,
                format!("expected general.architecture llama or qwen2 for the Llama family; found `{arch}`"),
            ));
        }
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
        let head_dim = opt_int("attention.key_length").unwrap_or(hidden_size / num_attention_heads.max(1));
        if let Some(rot) = opt_int("rope.dimension_count") {
            if rot != head_dim {
                return Err(ModelError::config(
                    path,
                    format!("partial rotary embeddings are not supported: {arch}.rope.dimension_count is {rot}, head_dim is {head_dim}"),
                ));
            }
        }
        let vocab_size = match opt_int("vocab_size") {
            Some(v) => v,
            None => file.tensor_info("token_embd.weight").map(|t| t.shape()[0]).ok_or_else(|| {
                ModelError::config(path, "expected a tensor `token_embd.weight` (or metadata vocab_size) to know the vocabulary size")
            })?,
        };
        let scaling_type = file.get(&format!("{arch}.rope.scaling.type")).and_then(|v| v.as_str()).unwrap_or("none");
        let rope_scaling = if let Some(factors) = rope_factors {
            Some(RopeScaling::Factors { factors })
        } else {
            match scaling_type {
                "none" => None,
                "linear" => Some(RopeScaling::Linear {
                    factor: opt_f("rope.scaling.factor")
                        .ok_or_else(|| ModelError::config(path, format!("linear rope scaling needs `{arch}.rope.scaling.factor`")))?,
                }),
                other => {
                    return Err(ModelError::config(
                        path,
                        format!("unsupported {arch}.rope.scaling.type `{other}`; supported: none, linear (and rope_freqs.weight factors)"),
                    ))
                }
            }
        };
        let token = |key: &str| file.get(key).and_then(|v| v.as_u64()).map(|v| v as u32);
        let config = LlamaConfig {
            model_type: arch.clone(),
            vocab_size,
            hidden_size,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: int("block_count")?,
            num_attention_heads,
            num_key_value_heads: opt_int("attention.head_count_kv").unwrap_or(num_attention_heads),
            head_dim,
            rms_norm_eps: opt_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
            rope_theta: opt_f("rope.freq_base").unwrap_or(10000.0),
            rope_scaling,
            max_position_embeddings: opt_int("context_length").unwrap_or(2048),
            tie_word_embeddings: file.tensor_info("output.weight").is_none(),
            attention_bias: file.tensor_info("blk.0.attn_q.bias").is_some(),
            mlp_bias: false,
            bos_token_id: token("tokenizer.ggml.bos_token_id"),
            eos_token_id: token("tokenizer.ggml.eos_token_id"),
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
        Ok(())
    }

    /// The Hugging Face `config.json` of this configuration, as written next to pruned models.
    pub fn to_hf_json(&self) -> Value {
        let architecture = match self.model_type.as_str() {
            "qwen2" => "Qwen2ForCausalLM",
            "mistral" => "MistralForCausalLM",
            _ => "LlamaForCausalLM",
        };
        let rope_scaling = match &self.rope_scaling {
            None => Value::Null,
            Some(RopeScaling::Linear { factor }) => serde_json::json!({"rope_type": "linear", "factor": factor}),
            Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
                serde_json::json!({
                    "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_max_position_embeddings
                })
            }
            Some(RopeScaling::Factors { .. }) => Value::Null,
        };
        serde_json::json!({
            "architectures": [architecture],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "torch_dtype": "float32",
        })
    }

    /// Inverse rotary frequencies (head_dim / 2 values), scaled as configured,
    /// computed in f64.
    pub fn inverse_frequencies(&self) -> Vec<f64> {
        let d = self.head_dim as f64;
        let base: Vec<f64> = (0..self.head_dim / 2).map(|i| 1.0 / self.rope_theta.powf((2 * i) as f64 / d)).collect();
        match &self.rope_scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
            Some(RopeScaling::Factors { factors }) => base.iter().zip(factors).map(|(f, s)| f / s).collect(),
            Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
                let low_freq_wavelen = original_max_position_embeddings / low_freq_factor;
                let high_freq_wavelen = original_max_position_embeddings / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_freq_wavelen {
                            f
                        } else if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            let smooth =
                                (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
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

    /// Every tensor the architecture needs, with its shape.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab_size, self.hidden_size])];
        for layer in 0..self.num_hidden_layers {
            let p = format!("model.layers.{layer}");
            out.push((format!("{p}.input_layernorm.weight"), vec![self.hidden_size]));
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![self.hidden_size]));
            for (name, o, i) in self.linear_modules(layer) {
                let is_qkv = name.ends_with("q_proj") || name.ends_with("k_proj") || name.ends_with("v_proj");
                let is_mlp = name.contains(".mlp.");
                if (is_qkv && self.attention_bias) || (is_mlp && self.mlp_bias) {
                    out.push((format!("{name}.bias"), vec![o]));
                }
                out.push((format!("{name}.weight"), vec![o, i]));
            }
        }
        out.push(("model.norm.weight".to_string(), vec![self.hidden_size]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![self.vocab_size, self.hidden_size]));
        }
        out
    }
}

/// The sizes every decoder configuration must get right, checked by [`check_decoder_shape`].
pub(crate) struct DecoderShape {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

/// Refuses sizes no decoder can have: a zero size, query heads that are not
/// a multiple of the key/value heads, an odd rotary head dimension.
pub(crate) fn check_decoder_shape(path: &Path, shape: &DecoderShape) -> Result<(), ModelError> {
    let positive = [
        ("vocab_size", shape.vocab_size),
        ("hidden_size", shape.hidden_size),
        ("intermediate_size", shape.intermediate_size),
        ("num_hidden_layers", shape.num_hidden_layers),
        ("num_attention_heads", shape.num_attention_heads),
        ("num_key_value_heads", shape.num_key_value_heads),
        ("head_dim", shape.head_dim),
    ];
    for (name, value) in positive {
        if value == 0 {
            return Err(ModelError::config(path, format!("`{name}` must be positive; found 0")));
        }
    }
    if shape.num_attention_heads % shape.num_key_value_heads != 0 {
        return Err(ModelError::config(
            path,
            format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                shape.num_attention_heads, shape.num_key_value_heads
            ),
        ));
    }
    if shape.head_dim % 2 != 0 {
        return Err(ModelError::config(path, format!("head_dim must be even for rotary embeddings; found {}", shape.head_dim)));
    }
    Ok(())
}

/// A linear layer `y = x W^T + b`.
/// It may hold several linear modules reading the same input, their outputs side by side.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor<1>>,
    host_weight: HostWeight,
}

/// How a [`Linear`] keeps its weight for products of many rows.
#[derive(Debug, Clone)]
enum LinearWeight {
    /// Transposed ([in, out]) on the device, for burn's matmul.
    Tensor(Tensor<2>),
    /// Packed in host memory for [`gemm::matmul`]: on host-memory devices
    /// whose processor runs its fast kernel.
    Packed(Arc<gemm::PackedRhs>),
    /// Its nonzero values listed for [`sparse_gemm::matmul`], where it would
    /// be packed but at least [`SPARSE_FROM`] of it is zero (a pruned layer):
    /// the same products, skipping the zeros.
    Sparse(Arc<sparse_gemm::SparseRhs>),
}

/// The fraction of zeros from which a packed weight is kept sparse instead:
/// at 50% the sparse products take 0.65-0.75 of the dense ones' time
/// (`cargo xtask bench gemm` on Zen 4), so 40% leaves a margin.
const SPARSE_FROM: f64 = 0.4;

/// The values of a [`Linear`]'s weight ([out, in]) in host memory, copied
/// on first use by [`kernels::small_matmul`] and shared by clones of the layer.
#[derive(Clone, Default)]
struct HostWeight(Arc<OnceLock<Vec<f32>>>);

impl std::fmt::Debug for HostWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.get() {
            Some(values) => write!(f, "HostWeight({} values)", values.len()),
            None => write!(f, "HostWeight(not copied)"),
        }
    }
}

/// Transposes a row-major [rows, cols] matrix into [cols, rows], bands of
/// output rows in parallel.
pub fn transpose_host(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    use rayon::prelude::*;
    const BLOCK: usize = 32;
    assert_eq!(data.len(), rows * cols, "transpose_host: data is not [rows, cols]");
    let mut out = vec![0.0f32; data.len()];
    if data.is_empty() {
        return out;
    }
    // Output rows c0..c0 + BLOCK are input columns c0..c0 + BLOCK.
    out.par_chunks_mut(BLOCK * rows).enumerate().for_each(|(band, out)| {
        let c0 = band * BLOCK;
        let width = out.len() / rows;
        for r0 in (0..rows).step_by(BLOCK) {
            for r in r0..(r0 + BLOCK).min(rows) {
                let row = &data[r * cols + c0..r * cols + c0 + width];
                for (c, &v) in row.iter().enumerate() {
                    out[c * rows + r] = v;
                }
            }
        }
    });
    out
}

fn upload(tensor: &HostTensor, device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(tensor.data.clone(), [tensor.data.len()]), device)
}

/// The f32 values of a tensor; without a copy when it lives in host memory and nothing else holds it.
pub(crate) fn host_values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor.into_data().try_into_vec::<f32>().expect("f32 activations")
}

/// The f32 values of a tensor that something else still holds. The values
/// come from a fresh tensor, which moves them out in one piece: converting
/// the shared one would copy them element by element (on the cpu device,
/// many times slower).
pub fn shared_values<const D: usize>(tensor: &Tensor<D>) -> Vec<f32> {
    host_values(tensor.clone().mul_scalar(1.0))
}

/// A tensor of `shape` holding `values`.
pub(crate) fn from_values<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

impl Linear {
    /// Builds the layer from a Hugging Face weight [out, in] and optional bias [out].
    pub fn from_host(weight: &HostTensor, bias: Option<&HostTensor>, device: &Device) -> Self {
        Self::concat_from_host(&[(weight, bias)], device)
    }

    /// Builds one layer computing several linear modules of the same input,
    /// their outputs concatenated in the order given: Hugging Face weights
    /// [out_i, in] and biases [out_i] (all present or all absent). One wide
    /// matmul instead of several narrow ones.
    pub fn concat_from_host(parts: &[(&HostTensor, Option<&HostTensor>)], device: &Device) -> Self {
        Self::concat_from_host_packed(parts, device, crate::device::is_host_memory(device) && gemm::fast_kernel_available())
    }

    /// [`Linear::concat_from_host`], the weight packed for [`gemm::matmul`]
    /// when `packed` (host-memory devices only) and a device tensor otherwise.
    fn concat_from_host_packed(parts: &[(&HostTensor, Option<&HostTensor>)], device: &Device, packed: bool) -> Self {
        let in_f = parts[0].0.shape[1];
        let out_f: usize = parts.iter().map(|(w, _)| w.shape[0]).sum();
        let stacked: Vec<f32> = parts.iter().flat_map(|(w, _)| w.data.iter().copied()).collect();
        let zeros = stacked.iter().filter(|&&v| v == 0.0).count();
        let weight = if packed && zeros > 0 && zeros as f64 >= SPARSE_FROM * stacked.len() as f64 {
            LinearWeight::Sparse(Arc::new(sparse_gemm::SparseRhs::from_transposed(&stacked, out_f, in_f)))
        } else if packed {
            LinearWeight::Packed(Arc::new(gemm::PackedRhs::from_transposed(&stacked, out_f, in_f)))
        } else {
            LinearWeight::Tensor(Tensor::from_data(TensorData::new(transpose_host(&stacked, out_f, in_f), [in_f, out_f]), device))
        };
        let bias = parts.iter().map(|(_, b)| b.map(|b| b.data.iter().copied())).collect::<Option<Vec<_>>>().map(|parts| {
            let values: Vec<f32> = parts.into_iter().flatten().collect();
            Tensor::from_data(TensorData::new(values, [out_f]), device)
        });
        Linear { weight, bias, host_weight: HostWeight::default() }
    }

    /// Output features (of all the modules the layer holds).
    pub fn out_features(&self) -> usize {
        match &self.weight {
            LinearWeight::Tensor(weight_t) => weight_t.dims()[1],
            LinearWeight::Packed(packed) => packed.cols(),
            LinearWeight::Sparse(sparse) => sparse.cols(),
        }
    }

    /// Applies the layer to rows of `x` ([n, in] -> [n, out]). A few rows in
    /// host memory (incremental decoding) go through
    /// [`kernels::small_matmul`], more through [`gemm::matmul`] where the
    /// weight is packed for it, the rest through burn's matmul.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let [rows, _] = x.dims();
        let device = x.device();
        let y = if rows <= kernels::SMALL_MATMUL_ROWS && crate::device::is_host_memory(&device) {
            let weight = self.host_weight.0.get_or_init(|| match &self.weight {
                LinearWeight::Tensor(weight_t) => {
                    let [inner, cols] = weight_t.dims();
                    transpose_host(&shared_values(weight_t), inner, cols)
                }
                LinearWeight::Packed(packed) => packed.transposed(),
                LinearWeight::Sparse(sparse) => sparse.transposed(),
            });
            let cols = self.out_features();
            from_values(kernels::small_matmul(&host_values(x), rows, weight, cols), [rows, cols], &device)
        } else {
            match &self.weight {
                LinearWeight::Tensor(weight_t) => x.matmul(weight_t.clone()),
                LinearWeight::Packed(packed) => from_values(gemm::matmul(&host_values(x), rows, packed), [rows, packed.cols()], &device),
                LinearWeight::Sparse(sparse) => {
                    from_values(sparse_gemm::matmul(&host_values(x), rows, sparse), [rows, sparse.cols()], &device)
                }
            }
        };
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze::<2>(),
            None => y,
        }
    }
}

/// Root-mean-square normalisation with a learned scale: `x / rms(x) * w`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor<1>,
    weight_host: Vec<f32>,
    eps: f64,
}

impl RmsNorm {
    /// Builds the norm from its weight.
    pub fn from_host(weight: &HostTensor, eps: f64, device: &Device) -> Self {
        RmsNorm { weight: upload(weight, device), weight_host: weight.data.clone(), eps }
    }

    /// Normalises each row of `x` ([n, hidden]).
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let mean_sq = x.clone().powi_scalar(2).mean_dim(1);
        let inv = (mean_sq + self.eps).sqrt().recip();
        x * inv * self.weight.clone().unsqueeze::<2>()
    }

    /// `(x, norm(x))`.
    fn forward_keep(&self, x: Tensor<2>, kernels: Kernels) -> (Tensor<2>, Tensor<2>) {
        match kernels {
            Kernels::Host => {
                let (dims, device) = (x.dims(), x.device());
                let values = host_values(x);
                let normed = kernels::rms_norm(&values, &self.weight_host, self.eps as f32);
                (from_values(values, dims, &device), from_values(normed, dims, &device))
            }
            Kernels::Tensor => (x.clone(), self.forward(x)),
        }
    }

    /// The residual add and this norm: `(x + o, norm(x + o))`.
    fn add_forward(&self, x: Tensor<2>, o: Tensor<2>, kernels: Kernels) -> (Tensor<2>, Tensor<2>) {
        match kernels {
            Kernels::Host => {
                let (dims, device) = (x.dims(), x.device());
                let (mut sum, mut normed) = (host_values(x), host_values(o));
                kernels::add_rms_norm(&mut sum, &mut normed, &self.weight_host, self.eps as f32);
                (from_values(sum, dims, &device), from_values(normed, dims, &device))
            }
            Kernels::Tensor => {
                let h = x + o;
                (h.clone(), self.forward(h))
            }
        }
    }
}

/// Cosine and sine values of the rotary embedding for positions 0..len,
/// each [len, head_dim] row-major with the frequencies repeated as in
/// Hugging Face's `rotate_half` layout.
pub fn rope_values(inv_freq: &[f64], len: usize) -> (Vec<f32>, Vec<f32>) {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(len * half * 2);
    let mut sin = Vec::with_capacity(len * half * 2);
    for pos in 0..len {
        for _ in 0..2 {
            for f in inv_freq {
                let angle = pos as f64 * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
    }
    (cos, sin)
}

/// [`rope_values`] as tensors [len, head_dim] on `device`.
pub fn rope_tables(inv_freq: &[f64], len: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let (cos, sin) = rope_values(inv_freq, len);
    let shape = [len, 2 * inv_freq.len()];
    (from_values(cos, shape, device), from_values(sin, shape, device))
}

/// Applies the rotary embedding to x [batch, heads, seq, head_dim].
pub fn apply_rope(x: Tensor<4>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<4> {
    let [_, _, seq, head_dim] = x.dims();
    let half = head_dim / 2;
    let cos = cos.clone().narrow(0, 0, seq).unsqueeze::<4>();
    let sin = sin.clone().narrow(0, 0, seq).unsqueeze::<4>();
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos + rotated * sin
}

/// Applies the rotary embedding to x [batch, heads, seq, head_dim] with
/// per-row tables `cos` and `sin` [batch, 1, seq, head_dim].
pub fn apply_rope_rows(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let head_dim = x.dims()[3];
    let half = head_dim / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

/// Cosine and sine tables [batch, 1, seq, head_dim] of the rotary embedding
/// at the given positions ([batch][seq]), in Hugging Face's `rotate_half` layout.
pub fn rope_tables_at(inv_freq: &[f64], positions: &[Vec<usize>], device: &Device) -> (Tensor<4>, Tensor<4>) {
    let (batch, seq, d) = (positions.len(), positions.first().map_or(0, Vec::len), 2 * inv_freq.len());
    let (cos, sin) = rope_values_at(inv_freq, positions);
    (from_values(cos, [batch, 1, seq, d], device), from_values(sin, [batch, 1, seq, d], device))
}

/// The values of [`rope_tables_at`], [batch * seq, head_dim] row-major.
pub fn rope_values_at(inv_freq: &[f64], positions: &[Vec<usize>]) -> (Vec<f32>, Vec<f32>) {
    let d = 2 * inv_freq.len();
    let count = positions.iter().map(Vec::len).sum::<usize>();
    let mut cos = Vec::with_capacity(count * d);
    let mut sin = Vec::with_capacity(count * d);
    for &pos in positions.iter().flatten() {
        for _ in 0..2 {
            for f in inv_freq {
                let angle = pos as f64 * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
    }
    (cos, sin)
}

/// Repeats each of the `kv_heads` heads of x [batch, kv_heads, seq, d]
/// `n_rep` times, so that query head h reads key/value head h / n_rep.
pub fn repeat_kv(x: Tensor<4>, n_rep: usize) -> Tensor<4> {
    if n_rep == 1 {
        return x;
    }
    let [b, kv, s, d] = x.dims();
    x.unsqueeze_dim::<5>(2).expand([b, kv, n_rep, s, d]).reshape([b, kv * n_rep, s, d])
}

/// Boolean mask [seq, seq], true where a query position may not attend (key after query).
pub fn causal_mask(seq: usize, device: &Device) -> Tensor<2, Bool> {
    let values: Vec<bool> = (0..seq).flat_map(|i| (0..seq).map(move |j| j > i)).collect();
    Tensor::from_data(TensorData::new(values, [seq, seq]), device)
}

/// How the element-wise parts of a forward pass (norms, rotary embedding,
/// softmax, gating) are computed; the results are the same either way, up
/// to float rounding. (Matmuls are chosen by [`Linear`] and the attention:
/// [`gemm`] on host memory with AVX-512, burn's elsewhere.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// The fused kernels of [`crate::kernels`] on the tensors' values: for
    /// devices whose tensors live in host memory, where that costs no copy.
    Host,
    /// Composed burn tensor ops: for every device.
    Tensor,
}

impl Kernels {
    /// [`Kernels::Host`] for devices whose tensors live in host memory, else [`Kernels::Tensor`].
    pub fn for_device(device: &Device) -> Self {
        if crate::device::is_host_memory(device) {
            Kernels::Host
        } else {
            Kernels::Tensor
        }
    }
}

/// Self-attention with grouped-query heads and rotary embeddings.
#[derive(Debug, Clone)]
pub struct Attention {
    /// Query, key and value projections as one layer: outputs `[q, k, v]` side by side.
    pub qkv_proj: Linear,
    /// Output projection.
    pub o_proj: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    /// Attention context [batch * seq, heads * head_dim] of the fused
    /// projection `qkv` [batch * seq, (heads + 2 * kv_heads) * head_dim].
    fn attend(&self, qkv: Tensor<2>, ctx: &ForwardContext) -> Tensor<2> {
        let (b, s, d) = (ctx.batch, ctx.seq, self.head_dim);
        let scale = 1.0 / (d as f64).sqrt();
        match &ctx.tables {
            Tables::Host { cos, sin } => {
                let device = qkv.device();
                let shape = AttentionShape { batch: b, seq: s, heads: self.heads, kv_heads: self.kv_heads, head_dim: d };
                let split = kernels::split_heads(&host_values(qkv), shape, cos, sin);
                let matmul = |lhs: Vec<f32>, [batch, m, k]: [usize; 3], rhs: Vec<f32>, [_, _, n]: [usize; 3]| {
                    if gemm::fast_kernel_available() {
                        gemm::batched_matmul(&lhs, &rhs, batch, m, k, n)
                    } else {
                        host_values(from_values(lhs, [batch, m, k], &device).matmul(from_values(rhs, [batch, k, n], &device)))
                    }
                };
                let context = kernels::causal_attention(&split, shape, scale as f32, matmul);
                from_values(context, [b * s, self.heads * d], &device)
            }
            Tables::Tensor { cos, sin, mask } => {
                let (q_width, kv_width) = (self.heads * d, self.kv_heads * d);
                let heads = |t: Tensor<2>, n: usize| t.reshape([b, s, n, d]).swap_dims(1, 2);
                let q = apply_rope(heads(qkv.clone().narrow(1, 0, q_width), self.heads), cos, sin);
                let k = apply_rope(heads(qkv.clone().narrow(1, q_width, kv_width), self.kv_heads), cos, sin);
                let v = heads(qkv.narrow(1, q_width + kv_width, kv_width), self.kv_heads);
                let n_rep = self.heads / self.kv_heads;
                let k = repeat_kv(k, n_rep);
                let v = repeat_kv(v, n_rep);
                let scores = q.matmul(k.swap_dims(2, 3)) * scale;
                let mask = mask.clone().unsqueeze::<4>().expand([b, self.heads, s, s]);
                let probs = softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3);
                probs.matmul(v).swap_dims(1, 2).reshape([b * s, self.heads * d])
            }
        }
    }
}

impl Attention {
    /// Attention context [batch * new, heads * head_dim] of the fused
    /// projection `qkv` [batch * new, ...] of new positions, over the keys and
    /// values in `kv` and the new ones, which are appended to `kv`.
    fn attend_cached(&self, qkv: Tensor<2>, step: &CachedStep, kv: &mut LayerKv) -> Tensor<2> {
        let (b, s, d) = (step.batch, step.seq, self.head_dim);
        let (cos, sin, mask) = match &step.tables {
            StepTables::Host { cos, sin, visible } => {
                let device = qkv.device();
                let shape = AttentionShape { batch: b, seq: s, heads: self.heads, kv_heads: self.kv_heads, head_dim: d };
                let new = kernels::split_new_heads(&host_values(qkv), shape, cos, sin);
                let context = kv.attend_host(&new, shape, visible, (1.0 / (d as f64).sqrt()) as f32);
                return from_values(context, [b * s, self.heads * d], &device);
            }
            StepTables::Tensor { cos, sin, mask } => {
                kv.move_to_tensors(b, &qkv.device());
                (cos, sin, mask)
            }
        };
        let (q_width, kv_width) = (self.heads * d, self.kv_heads * d);
        let heads = |t: Tensor<2>, n: usize| t.reshape([b, s, n, d]).swap_dims(1, 2);
        let q = apply_rope_rows(heads(qkv.clone().narrow(1, 0, q_width), self.heads), cos, sin);
        let k = apply_rope_rows(heads(qkv.clone().narrow(1, q_width, kv_width), self.kv_heads), cos, sin);
        let v = heads(qkv.narrow(1, q_width + kv_width, kv_width), self.kv_heads);
        let (k, v) = kv.append(k, v);
        let total = k.dims()[2];
        let group = self.heads / self.kv_heads;
        // Query head g * group + r at new slot i is row r * s + i of key/value head g.
        let q = q.reshape([b, self.kv_heads, group * s, d]);
        let scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (d as f64).sqrt());
        let mask = mask.clone().expand([b, self.kv_heads, group * s, total]);
        let probs = softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3);
        probs.matmul(v).reshape([b, self.heads, s, d]).swap_dims(1, 2).reshape([b * s, self.heads * d])
    }
}

/// What every layer of one cached forward step shares: shape, kernels, the
/// rotary tables of the new positions and what each may attend to.
pub struct CachedStep {
    kernels: Kernels,
    batch: usize,
    seq: usize,
    tables: StepTables,
}

/// Rotary tables and attention visibility of one cached step, in the form
/// its kernels use.
enum StepTables {
    /// For the host kernels: tables [batch * new, head_dim] and the key
    /// slots each new slot sees.
    Host { cos: Vec<f32>, sin: Vec<f32>, visible: Vec<std::ops::Range<usize>> },
    /// For tensor ops: tables [batch, 1, new, head_dim] and the mask of
    /// [`KvCache::mask`].
    Tensor { cos: Tensor<4>, sin: Tensor<4>, mask: Tensor<4, Bool> },
}

/// SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct Mlp {
    /// Gate and up projections as one layer: outputs `[gate, up]` side by side.
    pub gate_up_proj: Linear,
    /// Down projection.
    pub down_proj: Linear,
    intermediate: usize,
}

impl Mlp {
    /// `silu(gate(x)) * up(x)` [n, intermediate], the input of the down projection.
    fn gate(&self, x: Tensor<2>, kernels: Kernels) -> Tensor<2> {
        let gate_up = self.gate_up_proj.forward(x);
        let i = self.intermediate;
        match kernels {
            Kernels::Host => {
                let (device, [n, _]) = (gate_up.device(), gate_up.dims());
                from_values(kernels::silu_mul(&host_values(gate_up), i), [n, i], &device)
            }
            Kernels::Tensor => silu(gate_up.clone().narrow(1, 0, i)) * gate_up.narrow(1, i, i),
        }
    }
}

/// One decoder layer: pre-norm attention and pre-norm MLP with residuals.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Attention block.
    pub self_attn: Attention,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// MLP block.
    pub mlp: Mlp,
}

/// What the kernels of a forward pass need of its positions.
enum Tables {
    /// Rotary tables as values [seq, head_dim], for [`Kernels::Host`].
    Host { cos: Vec<f32>, sin: Vec<f32> },
    /// Rotary tables and causal mask as tensors, for [`Kernels::Tensor`].
    Tensor { cos: Tensor<2>, sin: Tensor<2>, mask: Tensor<2, Bool> },
}

/// Per-forward context shared by all layers: shape, kernels, rotary tables and causal mask.
pub struct ForwardContext {
    tables: Tables,
    kernels: Kernels,
    batch: usize,
    seq: usize,
}

impl ForwardContext {
    /// The kernels this context runs with.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }
}

/// Receives the input of every linear module during a forward pass, e.g. to
/// accumulate calibration statistics.
pub trait LinearObserver {
    /// Called with `input` [tokens, in_features], the input rows shared by
    /// the linear `modules` (Hugging Face names without `.weight`; q, k and v
    /// share one input, as do gate and up).
    fn observe(&mut self, modules: &[String], input: &Tensor<2>);
}

fn observe(observer: &mut Option<&mut dyn LinearObserver>, prefix: &str, names: &[&str], x: &Tensor<2>) {
    if let Some(obs) = observer.as_deref_mut() {
        let modules: Vec<String> = names.iter().map(|name| format!("{prefix}.{name}")).collect();
        obs.observe(&modules, x);
    }
}

impl DecoderLayer {
    /// Builds decoder layer `layer` on `device` from Hugging Face-named host
    /// weights (used by sequential calibration to rebuild a layer after pruning).
    pub fn from_weights(config: &LlamaConfig, weights: &WeightMap, layer: usize, device: &Device) -> Result<Self, ModelError> {
        let p = format!("model.layers.{layer}");
        let (h, q, kv, i) = (
            config.hidden_size,
            config.num_attention_heads * config.head_dim,
            config.num_key_value_heads * config.head_dim,
            config.intermediate_size,
        );
        let arch = &config.model_type;
        let part = |name: &str, out_f: usize, in_f: usize, has_bias: bool| -> Result<(&HostTensor, Option<&HostTensor>), ModelError> {
            let w = weights.require(&format!("{p}.{name}.weight"), &[out_f, in_f], arch)?;
            let b = if has_bias { Some(weights.require(&format!("{p}.{name}.bias"), &[out_f], arch)?) } else { None };
            Ok((w, b))
        };
        let ab = config.attention_bias;
        let mb = config.mlp_bias;
        let qkv = [part("self_attn.q_proj", q, h, ab)?, part("self_attn.k_proj", kv, h, ab)?, part("self_attn.v_proj", kv, h, ab)?];
        let gate_up = [part("mlp.gate_proj", i, h, mb)?, part("mlp.up_proj", i, h, mb)?];
        let (o, o_bias) = part("self_attn.o_proj", h, q, false)?;
        let (down, down_bias) = part("mlp.down_proj", h, i, mb)?;
        Ok(DecoderLayer {
            input_layernorm: RmsNorm::from_host(
                weights.require(&format!("{p}.input_layernorm.weight"), &[h], arch)?,
                config.rms_norm_eps,
                device,
            ),
            self_attn: Attention {
                qkv_proj: Linear::concat_from_host(&qkv, device),
                o_proj: Linear::from_host(o, o_bias, device),
                heads: config.num_attention_heads,
                kv_heads: config.num_key_value_heads,
                head_dim: config.head_dim,
            },
            post_attention_layernorm: RmsNorm::from_host(
                weights.require(&format!("{p}.post_attention_layernorm.weight"), &[h], arch)?,
                config.rms_norm_eps,
                device,
            ),
            mlp: Mlp {
                gate_up_proj: Linear::concat_from_host(&gate_up, device),
                down_proj: Linear::from_host(down, down_bias, device),
                intermediate: i,
            },
        })
    }

    /// Runs the layer on hidden states [batch * seq, hidden]; reports every
    /// linear input to `observer` under the prefix `model.layers.L`.
    pub fn forward(&self, x: Tensor<2>, ctx: &ForwardContext, prefix: &str, observer: Option<&mut dyn LinearObserver>) -> Tensor<2> {
        self.run(x, ctx, prefix, observer, true).expect("the layer output was asked for")
    }

    /// Reports every linear input of the layer on hidden states [batch * seq,
    /// hidden] to `observer`, without computing the layer's output: the run
    /// stops at the input of the down projection.
    pub fn observe_inputs(&self, x: Tensor<2>, ctx: &ForwardContext, prefix: &str, observer: &mut dyn LinearObserver) {
        self.run(x, ctx, prefix, Some(observer), false);
    }

    /// Runs the layer on hidden states [batch * new, hidden] of new
    /// positions, attending over the cached keys and values of this layer,
    /// to which the new ones are appended.
    pub fn forward_cached(&self, x: Tensor<2>, step: &CachedStep, kv: &mut LayerKv) -> Tensor<2> {
        let (x, normed) = self.input_layernorm.forward_keep(x, step.kernels);
        let context = self.self_attn.attend_cached(self.self_attn.qkv_proj.forward(normed), step, kv);
        let (h, normed) = self.post_attention_layernorm.add_forward(x, self.self_attn.o_proj.forward(context), step.kernels);
        h + self.mlp.down_proj.forward(self.mlp.gate(normed, step.kernels))
    }

    fn run(
        &self,
        x: Tensor<2>,
        ctx: &ForwardContext,
        prefix: &str,
        mut observer: Option<&mut dyn LinearObserver>,
        output: bool,
    ) -> Option<Tensor<2>> {
        let (x, normed) = self.input_layernorm.forward_keep(x, ctx.kernels);
        observe(&mut observer, prefix, &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], &normed);
        let context = self.self_attn.attend(self.self_attn.qkv_proj.forward(normed), ctx);
        observe(&mut observer, prefix, &["self_attn.o_proj"], &context);
        let (h, normed) = self.post_attention_layernorm.add_forward(x, self.self_attn.o_proj.forward(context), ctx.kernels);
        observe(&mut observer, prefix, &["mlp.gate_proj", "mlp.up_proj"], &normed);
        let gated = self.mlp.gate(normed, ctx.kernels);
        observe(&mut observer, prefix, &["mlp.down_proj"], &gated);
        output.then(|| h + self.mlp.down_proj.forward(gated))
    }
}

/// A Llama-family decoder on a burn device.
#[derive(Debug, Clone)]
pub struct LlamaModel {
    /// The configuration the model was built from.
    pub config: LlamaConfig,
    embed_tokens: Tensor<2>,
    /// The decoder layers, bottom first.
    pub layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    inv_freq: Vec<f64>,
    device: Device,
}

impl LlamaModel {
    /// Builds the model on `device` from Hugging Face-named weights, checking
    /// that every tensor is present with the shape the configuration implies.
    pub fn from_weights(config: &LlamaConfig, weights: &WeightMap, device: &Device) -> Result<Self, ModelError> {
        let arch = &config.model_type;
        let embed = weights.require("model.embed_tokens.weight", &[config.vocab_size, config.hidden_size], arch)?;
        let embed_tokens = Tensor::from_data(TensorData::new(embed.data.clone(), [config.vocab_size, config.hidden_size]), device);
        let layers =
            (0..config.num_hidden_layers).map(|l| DecoderLayer::from_weights(config, weights, l, device)).collect::<Result<Vec<_>, _>>()?;
        let norm = RmsNorm::from_host(weights.require("model.norm.weight", &[config.hidden_size], arch)?, config.rms_norm_eps, device);
        let head = if config.tie_word_embeddings {
            embed
        } else {
            weights.require("lm_head.weight", &[config.vocab_size, config.hidden_size], arch)?
        };
        Ok(LlamaModel {
            config: config.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head: Linear::from_host(head, None, device),
            inv_freq: config.inverse_frequencies(),
            device: device.clone(),
        })
    }

    /// The device the model lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Replaces decoder layer `index` (e.g. by its pruned version).
    pub fn replace_layer(&mut self, index: usize, layer: DecoderLayer) {
        self.layers[index] = layer;
    }

    /// Context for a forward pass over `batch` sequences of `seq` tokens,
    /// with the kernels that suit the model's device.
    pub fn context(&self, batch: usize, seq: usize) -> ForwardContext {
        self.context_with(batch, seq, Kernels::for_device(&self.device))
    }

    /// Context for a forward pass over `batch` sequences of `seq` tokens with the given kernels.
    pub fn context_with(&self, batch: usize, seq: usize, kernels: Kernels) -> ForwardContext {
        let tables = match kernels {
            Kernels::Host => {
                let (cos, sin) = rope_values(&self.inv_freq, seq);
                Tables::Host { cos, sin }
            }
            Kernels::Tensor => {
                let (cos, sin) = rope_tables(&self.inv_freq, seq, &self.device);
                Tables::Tensor { cos, sin, mask: causal_mask(seq, &self.device) }
            }
        };
        ForwardContext { tables, kernels, batch, seq }
    }

    /// Token embeddings [batch * seq, hidden] of equal-length sequences.
    pub fn embed(&self, tokens: &[Vec<u32>]) -> Result<Tensor<2>, ModelError> {
        let ids = flatten_tokens(tokens, self.config.vocab_size)?;
        let n = ids.len();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), &self.device);
        Ok(self.embed_tokens.clone().select(0, ids))
    }

    /// Final norm and LM head: hidden [n, hidden] -> logits [n, vocab].
    pub fn head(&self, hidden: Tensor<2>) -> Tensor<2> {
        self.lm_head.forward(self.norm.forward(hidden))
    }

    /// Logits [batch, seq, vocab] of equal-length token sequences.
    pub fn forward(&self, tokens: &[Vec<u32>]) -> Result<Tensor<3>, ModelError> {
        self.forward_with(tokens, Kernels::for_device(&self.device))
    }

    /// An empty key/value cache for rows with the given left padding.
    pub fn new_cache(&self, padding: Vec<usize>) -> KvCache {
        KvCache::new(self.layers.len(), padding)
    }

    /// Runs equal-length rows of new tokens after what `cache` holds,
    /// appending their keys and values to it; returns the hidden states
    /// [batch * new, hidden] after the last layer, before the final norm.
    pub fn forward_cached_hidden(&self, tokens: &[Vec<u32>], cache: &mut KvCache, kernels: Kernels) -> Result<Tensor<2>, ModelError> {
        let (batch, seq) = batch_shape(tokens)?;
        cache.check_step(batch, seq)?;
        if cache.layers.len() != self.layers.len() {
            return Err(ModelError::Input(format!("the cache has {} layers; the model has {}", cache.layers.len(), self.layers.len())));
        }
        let positions = cache.positions(seq);
        let tables = match kernels {
            Kernels::Host => {
                let (cos, sin) = rope_values_at(&self.inv_freq, &positions);
                StepTables::Host { cos, sin, visible: cache.visible(seq, None) }
            }
            Kernels::Tensor => {
                let (cos, sin) = rope_tables_at(&self.inv_freq, &positions, &self.device);
                let group = self.config.num_attention_heads / self.config.num_key_value_heads;
                StepTables::Tensor { cos, sin, mask: cache.mask(seq, group, None, &self.device) }
            }
        };
        let step = CachedStep { kernels, batch, seq, tables };
        let mut hidden = self.embed(tokens)?;
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            hidden = layer.forward_cached(hidden, &step, kv);
        }
        cache.advance(seq);
        Ok(hidden)
    }

    /// Logits [batch, new, vocab] of new tokens after what `cache` holds (see
    /// [`LlamaModel::forward_cached_hidden`]).
    pub fn forward_cached_with(&self, tokens: &[Vec<u32>], cache: &mut KvCache, kernels: Kernels) -> Result<Tensor<3>, ModelError> {
        let hidden = self.forward_cached_hidden(tokens, cache, kernels)?;
        let (batch, seq) = (tokens.len(), tokens[0].len());
        Ok(self.head(hidden).reshape([batch, seq, self.config.vocab_size]))
    }

    /// Logits [batch, vocab] of the last new token of each row only (the LM
    /// head runs on those rows alone).
    pub fn forward_cached_last_with(&self, tokens: &[Vec<u32>], cache: &mut KvCache, kernels: Kernels) -> Result<Tensor<2>, ModelError> {
        let hidden = self.forward_cached_hidden(tokens, cache, kernels)?;
        let (batch, seq) = (tokens.len(), tokens[0].len());
        let last = hidden.reshape([batch, seq, self.config.hidden_size]).narrow(1, seq - 1, 1).reshape([batch, self.config.hidden_size]);
        Ok(self.head(last))
    }

    /// [`LlamaModel::forward`] with the given kernels.
    pub fn forward_with(&self, tokens: &[Vec<u32>], kernels: Kernels) -> Result<Tensor<3>, ModelError> {
        let (batch, seq) = batch_shape(tokens)?;
        let ctx = self.context_with(batch, seq, kernels);
        let mut hidden = self.embed(tokens)?;
        for (l, layer) in self.layers.iter().enumerate() {
            hidden = layer.forward(hidden, &ctx, &format!("model.layers.{l}"), None);
        }
        Ok(self.head(hidden).reshape([batch, seq, self.config.vocab_size]))
    }
}

/// (batch, seq) of a batch of equal-length, non-empty sequences.
pub fn batch_shape(tokens: &[Vec<u32>]) -> Result<(usize, usize), ModelError> {
    let seq = tokens.first().map(Vec::len).unwrap_or(0);
    if tokens.is_empty() || seq == 0 {
        return Err(ModelError::Input("expected at least one non-empty token sequence".into()));
    }
    if let Some(bad) = tokens.iter().find(|t| t.len() != seq) {
        return Err(ModelError::Input(format!("all sequences of a batch must have the same length; found {seq} and {}", bad.len())));
    }
    Ok((tokens.len(), seq))
}

/// Token ids of a batch in one row-major list, each checked against the vocabulary size.
pub fn flatten_tokens(tokens: &[Vec<u32>], vocab: usize) -> Result<Vec<i32>, ModelError> {
    let mut out = Vec::with_capacity(tokens.iter().map(Vec::len).sum());
    for &t in tokens.iter().flatten() {
        if t as usize >= vocab {
            return Err(ModelError::Input(format!("token id {t} is outside the vocabulary of {vocab} tokens")));
        }
        out.push(t as i32);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(deprecated)]
    fn cpu() -> Device {
        Device::ndarray()
    }

    #[test]
    fn packed_and_tensor_weights_give_the_same_products() {
        let mut rng = crate::testing::Rng::new(11);
        let mut host = |shape: Vec<usize>| {
            let data = (0..shape.iter().product::<usize>()).map(|_| rng.next_f32()).collect();
            HostTensor { shape, data }
        };
        let (w1, w2, b1, b2) = (host(vec![40, 70]), host(vec![9, 70]), host(vec![40]), host(vec![9]));
        let parts = [(&w1, Some(&b1)), (&w2, Some(&b2))];
        let (packed, tensor) =
            (Linear::concat_from_host_packed(&parts, &cpu(), true), Linear::concat_from_host_packed(&parts, &cpu(), false));
        assert_eq!((packed.out_features(), tensor.out_features()), (49, 49));
        // Past the small-matmul rows (gemm vs burn's matmul) and within them (both small_matmul).
        for rows in [kernels::SMALL_MATMUL_ROWS + 37, 3] {
            let x = host(vec![rows, 70]);
            let input = || from_values(x.data.clone(), [rows, 70], &cpu());
            let (a, b) = (host_values(packed.forward(input())), host_values(tensor.forward(input())));
            for (e, (a, b)) in a.iter().zip(&b).enumerate() {
                let (r, c) = (e / 49, e % 49);
                let (w, bias) =
                    if c < 40 { (&w1.data[c * 70..][..70], b1.data[c]) } else { (&w2.data[(c - 40) * 70..][..70], b2.data[c - 40]) };
                let want: f64 =
                    x.data[r * 70..][..70].iter().zip(w).map(|(&x, &w)| f64::from(x) * f64::from(w)).sum::<f64>() + f64::from(bias);
                assert!((f64::from(*a) - want).abs() < 1e-4 && (a - b).abs() < 1e-4, "rows {rows}, element {e}: {a} / {b} vs {want}");
            }
        }
    }

    #[test]
    fn rope_rotates_pairs_half_a_head_apart() {
        let device = cpu();
        // head_dim 4, theta 10000: inverse frequencies 1 and 10000^(-1/2) = 0.01.
        let inv_freq = [1.0, 0.01];
        let (cos, sin) = rope_tables(&inv_freq, 2, &device);
        let x = Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0], [1, 1, 2, 4]), &device);
        let out = apply_rope(x, &cos, &sin).into_data().try_into_vec::<f32>().unwrap();
        // Position 0 is unchanged; position 1 rotates (x0, x2) by 1 rad and (x1, x3) by 0.01 rad:
        // cos1 - 3 sin1, 2 cos.01 - 4 sin.01, 3 cos1 + sin1, 4 cos.01 + 2 sin.01.
        let expected = [1.0, 2.0, 3.0, 4.0, -1.984_110_7, 1.959_900_7, 2.462_377_9, 4.019_799_7];
        for (got, want) in out.iter().zip(expected) {
            assert!((got - want).abs() < 1e-5, "{out:?} vs {expected:?}");
        }
    }

    #[test]
    fn inverse_frequencies_follow_rope_theta_and_scaling() {
        let mut config = LlamaConfig {
            model_type: "llama".into(),
            vocab_size: 8,
            hidden_size: 8,
            intermediate_size: 8,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            head_dim: 4,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: None,
            max_position_embeddings: 16,
            tie_word_embeddings: true,
            attention_bias: false,
            mlp_bias: false,
            bos_token_id: None,
            eos_token_id: None,
        };
        assert_eq!(config.inverse_frequencies(), vec![1.0, 0.01]);
        config.rope_scaling = Some(RopeScaling::Linear { factor: 4.0 });
        assert_eq!(config.inverse_frequencies(), vec![0.25, 0.0025]);
        // Llama 3 scaling with original context 100, low/high factors 1 and 4:
        // wavelengths 2pi (< 25, kept) and 200pi (> 100, divided by factor 8).
        config.rope_scaling =
            Some(RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 100.0 });
        assert_eq!(config.inverse_frequencies(), vec![1.0, 0.01 / 8.0]);
        // A medium wavelength (2pi/0.1 = 62.8, between 25 and 100) is smoothed:
        // smooth = (100/62.83 - 1) / 3 = 0.19718, f = (1 - s) * 0.1 / 8 + s * 0.1.
        config.rope_theta = 100.0;
        let f = config.inverse_frequencies()[1];
        let s = (100.0 / (2.0 * std::f64::consts::PI / 0.1) - 1.0) / 3.0;
        assert!((f - ((1.0 - s) * 0.1 / 8.0 + s * 0.1)).abs() < 1e-15);
        assert!((f - 0.029_753_5).abs() < 1e-7, "{f}");
    }

    #[test]
    fn repeat_kv_maps_query_head_h_to_kv_head_h_over_rep() {
        let device = cpu();
        // Two kv heads whose every value is its head index.
        let x = Tensor::<4>::from_data(TensorData::new(vec![0.0f32, 0.0, 1.0, 1.0], [1, 2, 1, 2]), &device);
        let out = repeat_kv(x, 3).into_data().try_into_vec::<f32>().unwrap();
        assert_eq!(out, vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn causal_mask_hides_future_positions() {
        let mask = causal_mask(3, &cpu()).into_data().try_into_vec::<bool>().unwrap();
        assert_eq!(mask, vec![false, true, true, false, false, true, false, false, false]);
    }

    #[test]
    fn rms_norm_matches_hand_computation() {
        let device = cpu();
        let norm = RmsNorm::from_host(&HostTensor::new(vec![2], vec![1.0, 2.0]), 0.0, &device);
        // rms of (3, 4) = sqrt(12.5) = 3.5355; outputs 3/3.5355 * 1, 4/3.5355 * 2.
        let out = norm
            .forward(Tensor::<2>::from_data(TensorData::new(vec![3.0f32, 4.0], [1, 2]), &device))
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        assert!((out[0] - 0.848_528_1).abs() < 1e-6 && (out[1] - 2.262_741_7).abs() < 1e-6, "{out:?}");
    }

    #[test]
    fn transpose_host_swaps_rows_and_columns() {
        assert_eq!(transpose_host(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }
}
