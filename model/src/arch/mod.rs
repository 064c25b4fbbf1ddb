//! Architecture families: each file parses its family's configuration
//! (Hugging Face `config.json` and GGUF metadata), maps llama.cpp's GGUF
//! tensor names to Hugging Face names with their fixups, writes
//! `config.json` back, and returns the [`DecoderSpec`] that drives the
//! generic decoder. The registry ([`FAMILIES`]) is the only place that lists
//! them; nothing outside this module names an architecture.

pub mod gemma;
pub mod llama;
pub mod phi3;
pub mod qwen3;
pub mod shapes;

use std::any::Any;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::decoder::{DecoderSpec, LayerSpec};
use crate::error::ModelError;
use crate::gguf::GgufFile;
use crate::nn::{Activation, RopeScaling};

/// Copying and downcasting of a boxed [`ArchConfig`], for every cloneable configuration type.
pub trait ArchBox {
    /// A boxed copy.
    fn clone_box(&self) -> Box<dyn ArchConfig>;
    /// The configuration as `Any`, to reach the family's own type.
    fn as_any(&self) -> &dyn Any;
}

impl<T: ArchConfig + Clone> ArchBox for T {
    fn clone_box(&self) -> Box<dyn ArchConfig> {
        Box::new(self.clone())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A family's parsed configuration.
pub trait ArchConfig: ArchBox + std::fmt::Debug + Send + Sync + 'static {
    /// Hugging Face `model_type`.
    fn model_type(&self) -> String;
    /// The spec of the generic decoder for this configuration.
    fn spec(&self) -> DecoderSpec;
    /// The Hugging Face `config.json` of this configuration, as written next to pruned models.
    fn to_hf_json(&self) -> Value;
    /// Canonical JSON of the configuration, used in the model fingerprint.
    /// Float hyper-parameters are rounded to f32, the precision they are
    /// used in, so that a GGUF (which stores them as f32) and a config.json
    /// of the same model agree.
    fn canonical_json(&self) -> String;
    /// What the loader does with the GGUF tensor `gguf_name`; `None` for a
    /// name the family does not know.
    fn gguf_tensor(&self, gguf_name: &str) -> Option<GgufTensor>;
    /// The fused projections of a Hugging Face checkpoint of this family
    /// (e.g. Phi-3's `qkv_proj`): loaders serve their parts as the decoder's
    /// tensors, and pruned checkpoints stack the parts again. Most families
    /// store every projection on its own.
    fn fused(&self) -> Vec<Fused> {
        Vec::new()
    }
}

/// What the GGUF loader does with one tensor of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GgufTensor {
    /// Not a weight of the model (e.g. llama.cpp's precomputed `rope_freqs`).
    Skip,
    /// A weight, stored under its Hugging Face name after `fixup`.
    Load {
        /// Hugging Face parameter name.
        hf_name: String,
        /// How llama.cpp's converter changed the values, undone on loading.
        fixup: Fixup,
    },
}

/// A change llama.cpp's converter made to a tensor, undone by the loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fixup {
    /// Stored as in Hugging Face.
    None,
    /// q/k rows interleaved for llama.cpp's RoPE over `heads` heads ([`unpermute_rows`]).
    UnpermuteRows {
        /// Heads of the projection.
        heads: usize,
    },
    /// A norm weight stored as `1 + w` (Gemma).
    SubtractOne,
}

/// One architecture family: the `model_type`s and GGUF architectures it
/// reads and its configuration parsers.
pub struct Family {
    /// Hugging Face `model_type` values of the family.
    pub hf_model_types: &'static [&'static str],
    /// GGUF `general.architecture` values of the family.
    pub gguf_architectures: &'static [&'static str],
    /// Parses a `config.json` (the path is for messages).
    pub from_hf_json: fn(&Value, &Path) -> Result<Box<dyn ArchConfig>, ModelError>,
    /// Parses GGUF metadata.
    pub from_gguf: fn(&GgufFile) -> Result<Box<dyn ArchConfig>, ModelError>,
}

/// Every supported family.
pub const FAMILIES: &[&Family] = &[&llama::FAMILY, &qwen3::FAMILY, &phi3::FAMILY, &gemma::FAMILY];

/// More decoder layers than any real model has: a configuration declaring
/// more is refused before anything is allocated per layer.
pub const MAX_LAYERS: usize = 4096;

/// Wider attention heads than any real model has (they reach 256): a
/// configuration declaring wider ones is refused before rotary tables of
/// that width are allocated.
pub const MAX_HEAD_DIM: usize = 4096;

/// The configuration of a model of any supported family, with the decoder
/// spec it implies.
pub struct ModelConfig {
    arch: Box<dyn ArchConfig>,
    spec: DecoderSpec,
}

impl ModelConfig {
    /// Wraps a family's configuration, checking the spec it implies.
    pub fn new(arch: Box<dyn ArchConfig>, path: &Path) -> Result<Self, ModelError> {
        let spec = arch.spec();
        spec.validate(path)?;
        Ok(ModelConfig { arch, spec })
    }

    /// Reads a Hugging Face `config.json` of any supported family.
    pub fn from_hf_json(json: &Value, path: &Path) -> Result<Self, ModelError> {
        let model_type = json.get("model_type").and_then(Value::as_str).unwrap_or("");
        let family = FAMILIES.iter().find(|f| f.hf_model_types.contains(&model_type)).ok_or_else(|| {
            let known: Vec<&str> = FAMILIES.iter().flat_map(|f| f.hf_model_types.iter().copied()).collect();
            ModelError::config(path, format!("unsupported model_type `{model_type}`; supported: {}", known.join(", ")))
        })?;
        Self::new((family.from_hf_json)(json, path)?, path)
    }

    /// Reads the configuration from the metadata of a GGUF file of any supported family.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, ModelError> {
        let arch = file.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("");
        let family = FAMILIES.iter().find(|f| f.gguf_architectures.contains(&arch)).ok_or_else(|| {
            let known: Vec<&str> = FAMILIES.iter().flat_map(|f| f.gguf_architectures.iter().copied()).collect();
            ModelError::config(file.path(), format!("unsupported general.architecture `{arch}`; supported: {}", known.join(", ")))
        })?;
        Self::new((family.from_gguf)(file)?, file.path())
    }

    /// The decoder spec.
    pub fn spec(&self) -> &DecoderSpec {
        &self.spec
    }

    /// The family's configuration.
    pub fn arch(&self) -> &dyn ArchConfig {
        self.arch.as_ref()
    }

    /// The family's configuration as its own type `T`, if it is one.
    pub fn downcast_ref<T: 'static>(&self) -> Option<&T> {
        self.arch.as_any().downcast_ref::<T>()
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.spec.num_layers()
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.spec.vocab_size
    }

    /// Width of the residual stream.
    pub fn hidden_size(&self) -> usize {
        self.spec.hidden_size
    }

    /// The longest sequence the model is configured for.
    pub fn max_position_embeddings(&self) -> usize {
        self.spec.max_position_embeddings
    }

    /// Every tensor the architecture needs, with its shape, by Hugging Face name.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        self.spec.expected_tensors()
    }

    /// The prunable linear modules of layer `layer`: (name without `.weight`, out, in).
    pub fn linear_modules(&self, layer: usize) -> Vec<(String, usize, usize)> {
        self.spec.linear_modules(layer)
    }

    /// Each prunable linear module's position in the model's canonical
    /// order (layer by layer, each layer's modules as [`Self::linear_modules`]
    /// lists them): the order mask artifacts list their rows in.
    pub fn linear_module_order(&self) -> std::collections::HashMap<String, usize> {
        (0..self.num_layers()).flat_map(|l| self.linear_modules(l)).enumerate().map(|(i, (m, _, _))| (m, i)).collect()
    }

    /// Hugging Face `model_type` of the architecture.
    pub fn model_type(&self) -> String {
        self.arch.model_type()
    }

    /// Hugging Face `config.json` content.
    pub fn to_hf_json(&self) -> Value {
        self.arch.to_hf_json()
    }

    /// Canonical JSON of the configuration (see [`ArchConfig::canonical_json`]).
    pub fn canonical_json(&self) -> String {
        self.arch.canonical_json()
    }
}

impl Clone for ModelConfig {
    fn clone(&self) -> Self {
        ModelConfig { arch: self.arch.clone_box(), spec: self.spec.clone() }
    }
}

impl PartialEq for ModelConfig {
    fn eq(&self, other: &Self) -> bool {
        self.model_type() == other.model_type() && self.canonical_json() == other.canonical_json()
    }
}

impl std::fmt::Debug for ModelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.arch.fmt(f)
    }
}

/// The `config.json` keys every family writes the same way, from its spec:
/// `class` is the transformers model class, e.g. `LlamaForCausalLM`.
pub(crate) fn hf_json_base(spec: &DecoderSpec, class: &str, rope_theta: f64, bos: Option<u32>, eos: Option<u32>) -> Value {
    serde_json::json!({
        "architectures": [class],
        "model_type": spec.architecture,
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers(),
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "head_dim": spec.head_dim,
        "rms_norm_eps": spec.norm_eps,
        "rope_theta": rope_theta,
        "max_position_embeddings": spec.max_position_embeddings,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    })
}

/// The sizes every family's configuration has, read the same way from
/// every `config.json` (and flattened into each family's configuration, so
/// its JSON keeps the field order of the fingerprint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dims {
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
}

impl Dims {
    /// Reads the sizes of a `config.json`: `num_key_value_heads` defaults to
    /// the query heads, `head_dim` to hidden / heads, `rms_norm_eps` to 1e-6.
    pub(crate) fn from_hf_json(json: &Value, path: &Path) -> Result<Self, ModelError> {
        let hidden_size = usize_field(json, "hidden_size", path)?;
        let num_attention_heads = usize_field(json, "num_attention_heads", path)?;
        let num_hidden_layers = usize_field(json, "num_hidden_layers", path)?;
        check_layer_count(num_hidden_layers, path)?;
        let opt_usize = |key: &str| json.get(key).and_then(Value::as_u64).map(|v| v as usize);
        let head_dim = opt_usize("head_dim").unwrap_or(hidden_size / num_attention_heads.max(1));
        if head_dim > MAX_HEAD_DIM {
            return Err(ModelError::config(path, format!("expected a head_dim of at most {MAX_HEAD_DIM}; found {head_dim}")));
        }
        Ok(Dims {
            vocab_size: usize_field(json, "vocab_size", path)?,
            hidden_size,
            intermediate_size: usize_field(json, "intermediate_size", path)?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: opt_usize("num_key_value_heads").unwrap_or(num_attention_heads),
            head_dim,
            rms_norm_eps: json.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6),
        })
    }

    /// A spec of these sizes with the choices most families make: SiLU
    /// gating, no biases, no extra or per-head norms, scores scaled by
    /// 1/sqrt(head_dim), no soft caps, unscaled embeddings and plain rotary
    /// tables; a family changes what differs.
    pub(crate) fn plain_spec(
        &self,
        architecture: String,
        rope_frequencies: Vec<Vec<f64>>,
        layers: Vec<LayerSpec>,
        tie_word_embeddings: bool,
        max_position_embeddings: usize,
    ) -> DecoderSpec {
        DecoderSpec {
            architecture,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            heads: self.num_attention_heads,
            kv_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            norm_eps: self.rms_norm_eps,
            norm_offset: 0.0,
            activation: Activation::Silu,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
            sandwich_norms: false,
            attention_scale: 1.0 / (self.head_dim as f64).sqrt(),
            attn_softcap: None,
            final_softcap: None,
            embedding_scale: None,
            rope_frequencies,
            long_rope: None,
            rope_attention_factor: 1.0,
            layers,
            tie_word_embeddings,
            max_position_embeddings,
        }
    }

    /// The `config.json` keys of these sizes from GGUF metadata (the
    /// `<arch>.` keys llama.cpp writes), for the family's `config.json` parser.
    pub(crate) fn hf_json_from_gguf(meta: &GgufMeta<'_>) -> Result<serde_json::Map<String, Value>, ModelError> {
        let (hidden, heads) = (meta.int("embedding_length")?, meta.int("attention.head_count")?);
        let json = serde_json::json!({
            "vocab_size": meta.vocab_size()?, "hidden_size": hidden, "intermediate_size": meta.int("feed_forward_length")?,
            "num_hidden_layers": meta.int("block_count")?, "num_attention_heads": heads,
            "num_key_value_heads": meta.opt_int("attention.head_count_kv").unwrap_or(heads),
            "head_dim": meta.opt_int("attention.key_length").unwrap_or(hidden / heads.max(1)),
            "rms_norm_eps": meta.opt_f64("attention.layer_norm_rms_epsilon"),
            "max_position_embeddings": meta.opt_int("context_length"), "rope_theta": meta.opt_f64("rope.freq_base"),
            "tie_word_embeddings": !meta.has_tensor("output.weight"),
            "bos_token_id": meta.token("bos_token_id"), "eos_token_id": meta.token("eos_token_id"),
        });
        Ok(json.as_object().expect("an object").clone())
    }
}

/// Refuses a layer count no model has (see [`MAX_LAYERS`]).
pub(crate) fn check_layer_count(layers: usize, path: &Path) -> Result<(), ModelError> {
    if layers > MAX_LAYERS {
        return Err(ModelError::config(path, format!("expected at most {MAX_LAYERS} decoder layers; found {layers}")));
    }
    Ok(())
}

/// The first token id of a `config.json` field that holds one id or a list of them.
pub(crate) fn token_id(value: Option<&Value>) -> Option<u32> {
    match value? {
        Value::Number(n) => n.as_u64().map(|v| v as u32),
        Value::Array(items) => items.first().and_then(Value::as_u64).map(|v| v as u32),
        _ => None,
    }
}

/// A `config.json` field that must be a non-negative integer.
pub(crate) fn usize_field(json: &Value, key: &str, path: &Path) -> Result<usize, ModelError> {
    json.get(key).and_then(Value::as_u64).map(|v| v as usize).ok_or_else(|| {
        ModelError::config(
            path,
            format!("expected a non-negative integer `{key}`; found {}", json.get(key).map_or("nothing".to_string(), |v| v.to_string())),
        )
    })
}

/// The rotary base and scaling of a `config.json`: from `params` (an
/// object of transformers 5's `rope_parameters`, when the file has them),
/// else from the older `rope_theta` and `rope_scaling`; `default_theta` when
/// neither gives a base.
pub(crate) fn hf_rope(
    json: &Value,
    params: Option<&Value>,
    default_theta: f64,
    path: &Path,
) -> Result<(f64, Option<RopeScaling>), ModelError> {
    let theta =
        params.and_then(|p| p.get("rope_theta")).or_else(|| json.get("rope_theta")).and_then(Value::as_f64).unwrap_or(default_theta);
    let scaling = match params.filter(|p| p.get("rope_type").is_some()).or_else(|| json.get("rope_scaling").filter(|v| !v.is_null())) {
        None => None,
        Some(s) => {
            let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str).unwrap_or("default");
            let num = |k: &str| {
                s.get(k)
                    .and_then(Value::as_f64)
                    .ok_or_else(|| ModelError::config(path, format!("rope scaling of type {kind} needs a number `{k}`")))
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
                "longrope" => Some(long_rope(json, s, path)?),
                other => {
                    return Err(ModelError::config(
                        path,
                        format!("unsupported rope scaling type `{other}`; supported: default, linear, llama3, longrope"),
                    ))
                }
            }
        }
    };
    Ok((theta, scaling))
}

/// LongRoPE's scaling of a `config.json` whose rope parameters are `params`:
/// the original context from the top level (which transformers prefers) or
/// the parameters, and the attention factor given or transformers' default
/// `sqrt(1 + ln(s) / ln(original))`, `s` = max_position_embeddings / original.
fn long_rope(json: &Value, params: &Value, path: &Path) -> Result<RopeScaling, ModelError> {
    let factors = |key: &str| -> Result<Vec<f64>, ModelError> {
        let list =
            params.get(key).and_then(Value::as_array).ok_or_else(|| ModelError::config(path, format!("longrope needs a list `{key}`")))?;
        list.iter().map(|v| v.as_f64().ok_or_else(|| ModelError::config(path, format!("`{key}` holds {v}; expected numbers")))).collect()
    };
    let key = "original_max_position_embeddings";
    let original = json.get(key).or_else(|| params.get(key)).and_then(Value::as_u64).filter(|&o| o > 1);
    let original = original.ok_or_else(|| ModelError::config(path, format!("longrope needs `{key}` above 1")))? as usize;
    let scale = json.get("max_position_embeddings").and_then(Value::as_f64).unwrap_or(original as f64) / original as f64;
    let derived = if scale <= 1.0 { 1.0 } else { (1.0 + scale.ln() / (original as f64).ln()).sqrt() };
    Ok(RopeScaling::LongRope {
        short_factor: factors("short_factor")?,
        long_factor: factors("long_factor")?,
        original_max_position_embeddings: original,
        attention_factor: params.get("attention_factor").and_then(Value::as_f64).unwrap_or(derived),
    })
}

/// GGUF metadata of one architecture, keys `<arch>.<key>`.
pub(crate) struct GgufMeta<'a> {
    /// The file.
    pub file: &'a GgufFile,
    /// Its `general.architecture`.
    pub arch: String,
}

impl<'a> GgufMeta<'a> {
    /// The metadata of `file`, whose architecture must be one of `expected` (for `family`'s messages).
    pub fn new(file: &'a GgufFile, expected: &[&str], family: &str) -> Result<Self, ModelError> {
        let arch = file.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("").to_string();
        if !expected.contains(&arch.as_str()) {
            return Err(ModelError::config(
                file.path(),
                format!("expected general.architecture {} for the {family} family; found `{arch}`", expected.join(" or ")),
            ));
        }
        Ok(GgufMeta { file, arch })
    }

    /// The integer `<arch>.<key>`, which must be there.
    pub fn int(&self, key: &str) -> Result<usize, ModelError> {
        let full = format!("{}.{key}", self.arch);
        self.opt_int(key)
            .ok_or_else(|| ModelError::config(self.file.path(), format!("expected an integer metadata key `{full}`; it is missing")))
    }

    /// The integer `<arch>.<key>`, if there.
    pub fn opt_int(&self, key: &str) -> Option<usize> {
        self.file.get(&format!("{}.{key}", self.arch)).and_then(|v| v.as_u64()).map(|v| v as usize)
    }

    /// The number `<arch>.<key>`, if there.
    pub fn opt_f64(&self, key: &str) -> Option<f64> {
        self.file.get(&format!("{}.{key}", self.arch)).and_then(|v| v.as_f64())
    }

    /// The string `<arch>.<key>`, if there.
    pub fn opt_str(&self, key: &str) -> Option<&str> {
        self.file.get(&format!("{}.{key}", self.arch)).and_then(|v| v.as_str())
    }

    /// A token id of the tokenizer metadata (`tokenizer.ggml.<key>`).
    pub fn token(&self, key: &str) -> Option<u32> {
        self.file.get(&format!("tokenizer.ggml.{key}")).and_then(|v| v.as_u64()).map(|v| v as u32)
    }

    /// The vocabulary size: `<arch>.vocab_size`, else the rows of `token_embd.weight`.
    pub fn vocab_size(&self) -> Result<usize, ModelError> {
        match self.opt_int("vocab_size") {
            Some(v) => Ok(v),
            None => self.file.tensor_info("token_embd.weight").map(|t| t.shape()[0]).ok_or_else(|| {
                ModelError::config(
                    self.file.path(),
                    "expected a tensor `token_embd.weight` (or metadata vocab_size) to know the vocabulary size",
                )
            }),
        }
    }

    /// The rotary scaling of `<arch>.rope.scaling.type` (none or linear).
    pub fn rope_scaling(&self) -> Result<Option<RopeScaling>, ModelError> {
        let (path, arch) = (self.file.path(), &self.arch);
        match self.opt_str("rope.scaling.type").unwrap_or("none") {
            "none" => Ok(None),
            "linear" => match self.opt_f64("rope.scaling.factor") {
                Some(factor) => Ok(Some(RopeScaling::Linear { factor })),
                None => Err(ModelError::config(path, format!("linear rope scaling needs `{arch}.rope.scaling.factor`"))),
            },
            other => Err(ModelError::config(path, format!("unsupported {arch}.rope.scaling.type `{other}`; supported: none, linear"))),
        }
    }

    /// Whether the file has a tensor called `name`.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.file.tensor_info(name).is_some()
    }
}

/// The Hugging Face names of llama.cpp's GGUF tensors outside the decoder layers.
fn gguf_global_name(name: &str) -> Option<&'static str> {
    match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    }
}

/// The Hugging Face module of llama.cpp's GGUF linear modules of a decoder layer.
fn gguf_linear_module(module: &str) -> Option<&'static str> {
    Some(match module {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    })
}

/// Maps a GGUF tensor name (llama.cpp convention) to its Hugging Face name:
/// the global tensors and linear modules are the same in every family;
/// `norms` maps the family's norm modules (`attn_norm`, `ffn_norm`, ...).
/// Returns the name and the GGUF module (`attn_q`, `ffn_norm`, ...; the
/// name itself for global tensors).
pub(crate) fn gguf_to_hf_name<'n>(name: &'n str, norms: impl Fn(&str) -> Option<&'static str>) -> Option<(String, &'n str)> {
    if let Some(global) = gguf_global_name(name) {
        return Some((global.to_string(), name));
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = tail.rsplit_once('.')?;
    let hf = gguf_linear_module(module).or_else(|| if suffix == "weight" { norms(module) } else { None })?;
    Some((format!("model.layers.{layer}.{hf}.{suffix}"), module))
}

/// A fused projection of a checkpoint (e.g. Phi-3's `qkv_proj`): its
/// tensor name and the decoder tensors it stacks, with their rows, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fused {
    /// Name of the fused tensor.
    pub name: String,
    /// Names and row counts of the parts, top to bottom.
    pub parts: Vec<(String, usize)>,
}

/// The tensors of a Hugging Face checkpoint made from decoder tensors
/// `names`: each written tensor's name with the decoder tensors stacked
/// (row-wise) into it, one for most, several for a fused projection.
pub fn hf_tensors<'n>(names: impl IntoIterator<Item = &'n String>, fused: &[Fused]) -> Vec<(String, Vec<String>)> {
    let names: Vec<&String> = names.into_iter().collect();
    let present: std::collections::BTreeSet<&str> = names.iter().map(|n| n.as_str()).collect();
    let mut out = Vec::new();
    let mut joined = std::collections::BTreeSet::new();
    for Fused { name, parts } in fused {
        if parts.iter().all(|(part, _)| present.contains(part.as_str())) {
            out.push((name.clone(), parts.iter().map(|(part, _)| part.clone()).collect()));
            joined.extend(parts.iter().map(|(part, _)| part.clone()));
        }
    }
    out.extend(names.into_iter().filter(|name| !joined.contains(*name)).map(|name| (name.clone(), vec![name.clone()])));
    out
}

/// Undoes llama.cpp's row permutation of q/k projections (weights [heads *
/// head_dim, in] or biases [heads * head_dim]): GGUF row `h*d + 2j + t` is
/// Hugging Face row `h*d + t*d/2 + j`.
pub fn unpermute_rows(data: &[f32], heads: usize, row_len: usize) -> Vec<f32> {
    reorder_rows(data, heads, row_len, |interleaved, split| (interleaved, split))
}

/// The inverse of [`unpermute_rows`]: Hugging Face's q/k row order back to
/// llama.cpp's interleaved one (for writing a GGUF file).
pub fn permute_rows(data: &[f32], heads: usize, row_len: usize) -> Vec<f32> {
    reorder_rows(data, heads, row_len, |interleaved, split| (split, interleaved))
}

/// Copies every row of `data` to its place in the other q/k order:
/// `source_and_target(interleaved, split)` picks which of a row's two
/// positions (llama.cpp's `h*d + 2j + t`, Hugging Face's `h*d + t*d/2 + j`)
/// it is read from and which it is written to.
fn reorder_rows(data: &[f32], heads: usize, row_len: usize, source_and_target: fn(usize, usize) -> (usize, usize)) -> Vec<f32> {
    let rows = data.len() / row_len;
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0.0f32; data.len()];
    for h in 0..heads {
        for t in 0..2 {
            for j in 0..half {
                let (src, dst) = source_and_target(h * head_dim + 2 * j + t, h * head_dim + t * half + j);
                out[dst * row_len..(dst + 1) * row_len].copy_from_slice(&data[src * row_len..(src + 1) * row_len]);
            }
        }
    }
    out
}

/// Rounds an f64 hyper-parameter to the f32 it is used as (see [`ArchConfig::canonical_json`]).
pub(crate) fn as_f32(value: f64) -> f64 {
    f64::from(value as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_undoes_llama_cpp_interleaving() {
        // One head of dim 4: GGUF rows (j, t) = (0,0), (0,1), (1,0), (1,1) are HF rows 0, 2, 1, 3.
        assert_eq!(unpermute_rows(&[10.0, 11.0, 12.0, 13.0], 1, 1), vec![10.0, 12.0, 11.0, 13.0]);
        // Two heads, rows of two values: the permutation stays within each head.
        let gguf: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let hf = unpermute_rows(&gguf, 2, 2);
        assert_eq!(hf, vec![0.0, 1.0, 4.0, 5.0, 2.0, 3.0, 6.0, 7.0, 8.0, 9.0, 12.0, 13.0, 10.0, 11.0, 14.0, 15.0]);
        // And back: permute_rows is the inverse.
        assert_eq!(permute_rows(&hf, 2, 2), gguf);
        assert_eq!(permute_rows(&[10.0, 12.0, 11.0, 13.0], 1, 1), vec![10.0, 11.0, 12.0, 13.0]);
    }
}
