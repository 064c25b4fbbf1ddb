//! User-facing model loading: a Hugging Face checkpoint directory or a GGUF
//! file, into Hugging Face-named f32 weights, a configuration and a tokenizer.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::cache::KvCache;
use crate::error::ModelError;
use crate::gemma::{self, GemmaConfig, GemmaContext, GemmaDecoderLayer, GemmaModel};
use crate::gguf::GgufFile;
use crate::llama::{DecoderLayer, ForwardContext, Kernels, LinearObserver, LlamaConfig, LlamaModel};
use crate::safetensors;
use crate::tokenizer::Tokenizer;
use crate::weights::{HostTensor, WeightMap};

/// File format a model was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// A Hugging Face directory with config.json and safetensors.
    HuggingFace,
    /// A llama.cpp GGUF file.
    Gguf,
}

/// Configuration of any supported architecture.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// The Llama family (Llama, Mistral, Qwen2, SmolLM, ...).
    Llama(LlamaConfig),
    /// The Gemma family (Gemma 1, 2 and 3).
    Gemma(GemmaConfig),
}

impl ModelConfig {
    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        match self {
            ModelConfig::Llama(c) => c.num_hidden_layers,
            ModelConfig::Gemma(c) => c.num_hidden_layers,
        }
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Llama(c) => c.vocab_size,
            ModelConfig::Gemma(c) => c.vocab_size,
        }
    }

    /// Every tensor the architecture needs, with its shape, by Hugging Face name.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        match self {
            ModelConfig::Llama(c) => c.expected_tensors(),
            ModelConfig::Gemma(c) => c.expected_tensors(),
        }
    }

    /// The prunable linear modules of layer `layer`: (name without `.weight`, out, in).
    pub fn linear_modules(&self, layer: usize) -> Vec<(String, usize, usize)> {
        match self {
            ModelConfig::Llama(c) => c.linear_modules(layer),
            ModelConfig::Gemma(c) => c.linear_modules(layer),
        }
    }

    /// The longest sequence the model is configured for.
    pub fn max_position_embeddings(&self) -> usize {
        match self {
            ModelConfig::Llama(c) => c.max_position_embeddings,
            ModelConfig::Gemma(c) => c.max_position_embeddings,
        }
    }

    /// Width of the residual stream.
    pub fn hidden_size(&self) -> usize {
        match self {
            ModelConfig::Llama(c) => c.hidden_size,
            ModelConfig::Gemma(c) => c.hidden_size,
        }
    }

    /// Hugging Face `model_type` of the architecture.
    pub fn model_type(&self) -> String {
        match self {
            ModelConfig::Llama(c) => c.model_type.clone(),
            ModelConfig::Gemma(c) => c.model_type().to_string(),
        }
    }

    /// Hugging Face `config.json` content.
    pub fn to_hf_json(&self) -> Value {
        match self {
            ModelConfig::Llama(c) => c.to_hf_json(),
            ModelConfig::Gemma(c) => c.to_hf_json(),
        }
    }

    /// Canonical JSON of the configuration, used in the fingerprint. Float
    /// hyper-parameters are rounded to f32, the precision they are used in,
    /// so that a GGUF (which stores them as f32) and a config.json of the
    /// same model agree.
    fn canonical_json(&self) -> String {
        match self {
            ModelConfig::Llama(c) => {
                let mut c = c.clone();
                c.rms_norm_eps = f64::from(c.rms_norm_eps as f32);
                c.rope_theta = f64::from(c.rope_theta as f32);
                serde_json::to_string(&c).expect("serializable config")
            }
            ModelConfig::Gemma(c) => {
                let mut c = c.clone();
                c.rms_norm_eps = f64::from(c.rms_norm_eps as f32);
                c.rope_theta = f64::from(c.rope_theta as f32);
                c.rope_local_base_freq = f64::from(c.rope_local_base_freq as f32);
                c.query_pre_attn_scalar = f64::from(c.query_pre_attn_scalar as f32);
                c.rope_scaling_factor = c.rope_scaling_factor.map(|f| f64::from(f as f32));
                c.attn_logit_softcapping = c.attn_logit_softcapping.map(|f| f64::from(f as f32));
                c.final_logit_softcapping = c.final_logit_softcapping.map(|f| f64::from(f as f32));
                serde_json::to_string(&c).expect("serializable config")
            }
        }
    }
}

/// A model read from disk: its configuration, weights in host memory and tokenizer.
pub struct LoadedModel {
    /// The file or directory it was read from.
    pub path: PathBuf,
    /// Its format.
    pub format: ModelFormat,
    /// Architecture and hyper-parameters.
    pub config: ModelConfig,
    /// All weights, Hugging Face names and layout.
    pub weights: WeightMap,
    /// The tokenizer, when the checkpoint has one.
    pub tokenizer: Option<Tokenizer>,
    /// The Jinja chat template, when the checkpoint has one (GGUF
    /// `tokenizer.chat_template`; `chat_template` of `tokenizer_config.json`
    /// or a `chat_template.jinja` file in a Hugging Face directory).
    pub chat_template: Option<String>,
    /// Fingerprint of the configuration and of the tensor names and shapes:
    /// the same model gives the same fingerprint from GGUF or safetensors.
    pub fingerprint: String,
}

impl LoadedModel {
    /// The tokenizer, or an error saying the checkpoint has none.
    pub fn tokenizer(&self) -> Result<&Tokenizer, ModelError> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| ModelError::format(&self.path, "expected a tokenizer (tokenizer.json in the checkpoint directory); found none"))
    }

    /// Builds the network on `device`.
    pub fn build(&self, device: &burn::tensor::Device) -> Result<Model, ModelError> {
        match &self.config {
            ModelConfig::Llama(c) => Ok(Model::Llama(LlamaModel::from_weights(c, &self.weights, device)?)),
            ModelConfig::Gemma(c) => Ok(Model::Gemma(GemmaModel::from_weights(c, &self.weights, device)?)),
        }
    }
}

/// A runnable network of any supported architecture.
#[derive(Debug, Clone)]
pub enum Model {
    /// A Llama-family decoder.
    Llama(LlamaModel),
    /// A Gemma decoder.
    Gemma(GemmaModel),
}

/// Per-forward context of a [`Model`] (rotary tables, masks), shared by its
/// layers when they are run one at a time; made by [`Model::context`].
pub enum LayerContext {
    /// Of a Llama-family model.
    Llama(ForwardContext),
    /// Of a Gemma model.
    Gemma(GemmaContext),
}

const CONTEXT_MISMATCH: &str = "a LayerContext is used with the model that made it";

impl Model {
    /// Logits [batch, seq, vocab] of equal-length token sequences.
    pub fn forward(&self, tokens: &[Vec<u32>]) -> Result<burn::tensor::Tensor<3>, ModelError> {
        match self {
            Model::Llama(m) => m.forward(tokens),
            Model::Gemma(m) => m.forward(tokens),
        }
    }

    /// The kernels a forward pass on this model's device uses by default.
    pub fn kernels(&self) -> Kernels {
        match self {
            Model::Llama(m) => Kernels::for_device(m.device()),
            Model::Gemma(_) => Kernels::Tensor,
        }
    }

    /// An empty key/value cache for `batch` unpadded rows.
    pub fn new_cache(&self, batch: usize) -> KvCache {
        self.new_padded_cache(vec![0; batch])
    }

    /// An empty key/value cache for rows left-padded by the given numbers of
    /// slots: the first forward over it passes each row's padding slots
    /// (any valid token id) followed by its real tokens.
    pub fn new_padded_cache(&self, padding: Vec<usize>) -> KvCache {
        match self {
            Model::Llama(m) => m.new_cache(padding),
            Model::Gemma(m) => m.new_cache(padding),
        }
    }

    /// Logits [batch, new, vocab] of equal-length rows of new tokens that
    /// follow what `cache` holds; their keys and values are appended to it.
    pub fn forward_cached(&self, tokens: &[Vec<u32>], cache: &mut KvCache) -> Result<burn::tensor::Tensor<3>, ModelError> {
        self.forward_cached_with(tokens, cache, self.kernels())
    }

    /// [`Model::forward_cached`] with the given kernels (Gemma models have
    /// tensor kernels only and ignore the choice).
    pub fn forward_cached_with(
        &self,
        tokens: &[Vec<u32>],
        cache: &mut KvCache,
        kernels: Kernels,
    ) -> Result<burn::tensor::Tensor<3>, ModelError> {
        match self {
            Model::Llama(m) => m.forward_cached_with(tokens, cache, kernels),
            Model::Gemma(m) => m.forward_cached(tokens, cache),
        }
    }

    /// Logits [batch, vocab] of the last new token of each row, as
    /// [`Model::forward_cached`] would give them, without computing the
    /// others' (what each decoding step needs).
    pub fn forward_cached_last(&self, tokens: &[Vec<u32>], cache: &mut KvCache) -> Result<burn::tensor::Tensor<2>, ModelError> {
        match self {
            Model::Llama(m) => m.forward_cached_last_with(tokens, cache, self.kernels()),
            Model::Gemma(m) => m.forward_cached_last(tokens, cache),
        }
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        match self {
            Model::Llama(m) => m.layers.len(),
            Model::Gemma(m) => m.layers.len(),
        }
    }

    /// Input of the first decoder layer [batch * seq, hidden] for equal-length sequences.
    pub fn embed(&self, tokens: &[Vec<u32>]) -> Result<burn::tensor::Tensor<2>, ModelError> {
        match self {
            Model::Llama(m) => m.embed(tokens),
            Model::Gemma(m) => m.embed(tokens),
        }
    }

    /// Context for running layers over `batch` sequences of `seq` tokens.
    pub fn context(&self, batch: usize, seq: usize) -> LayerContext {
        match self {
            Model::Llama(m) => LayerContext::Llama(m.context(batch, seq)),
            Model::Gemma(m) => LayerContext::Gemma(m.context(batch, seq)),
        }
    }

    /// Runs decoder layer `layer` on hidden states [batch * seq, hidden],
    /// reporting every linear input to `observer`.
    pub fn layer_forward(
        &self,
        layer: usize,
        x: burn::tensor::Tensor<2>,
        ctx: &LayerContext,
        observer: Option<&mut dyn LinearObserver>,
    ) -> burn::tensor::Tensor<2> {
        let prefix = format!("model.layers.{layer}");
        match (self, ctx) {
            (Model::Llama(m), LayerContext::Llama(c)) => m.layers[layer].forward(x, c, &prefix, observer),
            (Model::Gemma(m), LayerContext::Gemma(c)) => m.layers[layer].forward(x, c, &prefix, observer),
            _ => panic!("{CONTEXT_MISMATCH}"),
        }
    }

    /// Reports the linear inputs of decoder layer `layer` to `observer`
    /// without computing its output.
    pub fn layer_observe_inputs(&self, layer: usize, x: burn::tensor::Tensor<2>, ctx: &LayerContext, observer: &mut dyn LinearObserver) {
        let prefix = format!("model.layers.{layer}");
        match (self, ctx) {
            (Model::Llama(m), LayerContext::Llama(c)) => m.layers[layer].observe_inputs(x, c, &prefix, observer),
            (Model::Gemma(m), LayerContext::Gemma(c)) => m.layers[layer].observe_inputs(x, c, &prefix, observer),
            _ => panic!("{CONTEXT_MISMATCH}"),
        }
    }

    /// Rebuilds decoder layer `layer` from `weights` (e.g. after pruning it).
    pub fn rebuild_layer(&mut self, weights: &WeightMap, layer: usize) -> Result<(), ModelError> {
        match self {
            Model::Llama(m) => {
                let rebuilt = DecoderLayer::from_weights(&m.config, weights, layer, &m.device().clone())?;
                m.replace_layer(layer, rebuilt);
            }
            Model::Gemma(m) => {
                let rebuilt = GemmaDecoderLayer::from_weights(&m.config, weights, layer, &m.device().clone())?;
                m.replace_layer(layer, rebuilt);
            }
        }
        Ok(())
    }
}

/// Fingerprint ("sha256:<hex>") of a configuration and the names and shapes of its tensors.
pub fn fingerprint(config: &ModelConfig, weights: &WeightMap) -> String {
    let mut hasher = Sha256::new();
    hasher.update(config.canonical_json().as_bytes());
    for (name, tensor) in weights.iter() {
        hasher.update(format!("\n{name}:{:?}", tensor.shape).as_bytes());
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// Loads a model from a Hugging Face checkpoint directory or a GGUF file.
pub fn load_model(path: &Path) -> Result<LoadedModel, ModelError> {
    if path.is_dir() {
        load_hf_dir(path)
    } else if path.is_file() {
        let mut magic = [0u8; 4];
        let n = std::fs::File::open(path).and_then(|mut f| std::io::Read::read(&mut f, &mut magic)).map_err(|e| ModelError::io(path, e))?;
        if n == 4 && &magic == b"GGUF" {
            load_gguf(path)
        } else {
            Err(ModelError::format(
                path,
                format!(
                    "expected a GGUF file (magic \"GGUF\") or a Hugging Face checkpoint directory; found a file starting with {:?}",
                    &magic[..n]
                ),
            ))
        }
    } else {
        Err(ModelError::format(path, "no such file or directory (expected a Hugging Face checkpoint directory or a .gguf file)"))
    }
}

fn load_hf_dir(dir: &Path) -> Result<LoadedModel, ModelError> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| ModelError::io(&config_path, e))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| ModelError::config(&config_path, format!("not valid JSON: {e}")))?;
    let model_type = json.get("model_type").and_then(Value::as_str).unwrap_or("");
    let config = if gemma::is_gemma_model_type(model_type) {
        ModelConfig::Gemma(GemmaConfig::from_hf_json(&json, &config_path)?)
    } else {
        ModelConfig::Llama(LlamaConfig::from_hf_json(&json, &config_path)?)
    };
    let weights = safetensors::read_checkpoint_dir(dir)?;
    check_tensors(&config, &weights)?;
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = if tokenizer_path.is_file() { Some(Tokenizer::from_file(&tokenizer_path)?) } else { None };
    let fingerprint = fingerprint(&config, &weights);
    let chat_template = hf_chat_template(dir)?;
    Ok(LoadedModel { path: dir.to_path_buf(), format: ModelFormat::HuggingFace, config, weights, tokenizer, chat_template, fingerprint })
}

/// The chat template of a Hugging Face directory: `chat_template` of
/// `tokenizer_config.json` (a string, or a list of named templates of which
/// `default` is taken), else the file `chat_template.jinja`.
fn hf_chat_template(dir: &Path) -> Result<Option<String>, ModelError> {
    let config_path = dir.join("tokenizer_config.json");
    if config_path.is_file() {
        let text = std::fs::read_to_string(&config_path).map_err(|e| ModelError::io(&config_path, e))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| ModelError::config(&config_path, format!("not valid JSON: {e}")))?;
        match json.get("chat_template") {
            None | Some(Value::Null) => {}
            Some(Value::String(t)) => return Ok(Some(t.clone())),
            Some(Value::Array(named)) => {
                let default = named.iter().find(|t| t.get("name").and_then(Value::as_str) == Some("default"));
                return match default.and_then(|t| t.get("template")).and_then(Value::as_str) {
                    Some(t) => Ok(Some(t.to_string())),
                    None => Err(ModelError::config(
                        &config_path,
                        "expected `chat_template` to be a string or a list of {name, template} with one named `default`; found no `default`",
                    )),
                };
            }
            Some(other) => {
                return Err(ModelError::config(
                    &config_path,
                    format!("expected `chat_template` to be a string or a list of {{name, template}}; found {other}"),
                ))
            }
        }
    }
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return Ok(Some(std::fs::read_to_string(&jinja).map_err(|e| ModelError::io(&jinja, e))?));
    }
    Ok(None)
}

/// Checks that every tensor the configuration needs is present with the
/// shape the configuration implies.
fn check_tensors(config: &ModelConfig, weights: &WeightMap) -> Result<(), ModelError> {
    let arch = config.model_type();
    for (name, shape) in config.expected_tensors() {
        weights.require(&name, &shape, &arch)?;
    }
    Ok(())
}

/// Maps a GGUF tensor name (llama.cpp convention) to its Hugging Face name.
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = tail.rsplit_once('.')?;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// Undoes llama.cpp's row permutation of q/k projections (weights [heads *
/// head_dim, in] or biases [heads * head_dim]): GGUF row `h*d + 2j + t` is
/// Hugging Face row `h*d + t*d/2 + j`.
pub fn unpermute_rows(data: &[f32], heads: usize, row_len: usize) -> Vec<f32> {
    let rows = data.len() / row_len;
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0.0f32; data.len()];
    for h in 0..heads {
        for t in 0..2 {
            for j in 0..half {
                let src = h * head_dim + 2 * j + t;
                let dst = h * head_dim + t * half + j;
                out[dst * row_len..(dst + 1) * row_len].copy_from_slice(&data[src * row_len..(src + 1) * row_len]);
            }
        }
    }
    out
}

fn load_gguf(path: &Path) -> Result<LoadedModel, ModelError> {
    let file = GgufFile::open(path)?;
    let arch = file.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("");
    if gemma::is_gemma_architecture(arch) {
        let gemma = GemmaConfig::from_gguf(&file)?;
        let weights = gemma::weights_from_gguf(&file, &gemma, |tensors| dequantize_all(&file, tensors))?;
        return finish_gguf(path, &file, ModelConfig::Gemma(gemma), weights);
    }
    let rope_factors = match file.tensor_info("rope_freqs.weight") {
        Some(_) => Some(file.tensor_f32("rope_freqs.weight")?.into_iter().map(f64::from).collect()),
        None => None,
    };
    let llama = LlamaConfig::from_gguf(&file, rope_factors)?;
    let permuted = llama.model_type == "llama";
    let (heads, kv_heads) = (llama.num_attention_heads, llama.num_key_value_heads);
    let infos: Vec<_> = file.tensors().iter().filter(|t| t.name != "rope_freqs.weight").cloned().collect();
    let mut mapped = Vec::with_capacity(infos.len());
    for info in &infos {
        let hf = gguf_to_hf_name(&info.name).ok_or_else(|| {
            ModelError::format(
                path,
                format!("tensor `{}` has no counterpart in the {} architecture (unexpected GGUF tensor name)", info.name, llama.model_type),
            )
        })?;
        mapped.push((info.name.clone(), hf, info.shape()));
    }
    let dequantized = dequantize_all(&file, &mapped)?;
    let mut weights = WeightMap::new(path);
    for ((gguf_name, hf, shape), data) in mapped.into_iter().zip(dequantized) {
        let data = if permuted && (gguf_name.contains(".attn_q.") || gguf_name.contains(".attn_k.")) {
            let n_heads = if gguf_name.contains(".attn_q.") { heads } else { kv_heads };
            let row_len = if shape.len() == 2 { shape[1] } else { 1 };
            unpermute_rows(&data, n_heads, row_len)
        } else {
            data
        };
        weights.insert(hf, HostTensor::new(shape, data));
    }
    finish_gguf(path, &file, ModelConfig::Llama(llama), weights)
}

/// Checks the tensors of a GGUF model and reads its tokenizer.
fn finish_gguf(path: &Path, file: &GgufFile, config: ModelConfig, weights: WeightMap) -> Result<LoadedModel, ModelError> {
    check_tensors(&config, &weights)?;
    let tokenizer = if file.get("tokenizer.ggml.tokens").is_some() { Some(Tokenizer::from_gguf(file)?) } else { None };
    let fingerprint = fingerprint(&config, &weights);
    let chat_template = file.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(str::to_string);
    Ok(LoadedModel { path: path.to_path_buf(), format: ModelFormat::Gguf, config, weights, tokenizer, chat_template, fingerprint })
}

/// Dequantizes the listed tensors on all cores, largest first.
fn dequantize_all(file: &GgufFile, tensors: &[(String, String, Vec<usize>)]) -> Result<Vec<Vec<f32>>, ModelError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(tensors.len().max(1));
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(tensors[i].2.iter().product::<usize>()));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Result<Vec<f32>, ModelError>>>> =
        (0..tensors.len()).map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&i) = order.get(k) else { break };
                let r = file.tensor_f32(&tensors[i].0).map_err(ModelError::from);
                *results[i].lock().expect("no poisoned lock") = Some(r);
            });
        }
    });
    results.into_iter().map(|m| m.into_inner().expect("no poisoned lock").expect("every tensor visited")).collect()
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
    }

    #[test]
    fn gguf_names_map_to_hugging_face_names() {
        assert_eq!(gguf_to_hf_name("blk.12.attn_q.weight").unwrap(), "model.layers.12.self_attn.q_proj.weight");
        assert_eq!(gguf_to_hf_name("blk.0.attn_k.bias").unwrap(), "model.layers.0.self_attn.k_proj.bias");
        assert_eq!(gguf_to_hf_name("blk.3.ffn_down.weight").unwrap(), "model.layers.3.mlp.down_proj.weight");
        assert_eq!(gguf_to_hf_name("blk.3.ffn_norm.weight").unwrap(), "model.layers.3.post_attention_layernorm.weight");
        assert_eq!(gguf_to_hf_name("token_embd.weight").unwrap(), "model.embed_tokens.weight");
        assert_eq!(gguf_to_hf_name("output.weight").unwrap(), "lm_head.weight");
        assert_eq!(gguf_to_hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(gguf_to_hf_name("blk.1.unknown.weight"), None);
    }
}
