//! User-facing model loading: a Hugging Face checkpoint directory or a GGUF
//! file, into Hugging Face-named f32 weights, a configuration and a tokenizer.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::arch::{unpermute_rows, Fixup, GgufTensor, ModelConfig};
use crate::decoder::Decoder;
use crate::error::ModelError;
use crate::gguf::GgufFile;
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
    pub fn build(&self, device: &burn::tensor::Device) -> Result<Decoder, ModelError> {
        Decoder::from_weights(self.config.spec(), &self.weights, device)
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
    let config = ModelConfig::from_hf_json(&json, &config_path)?;
    let mut weights = safetensors::read_checkpoint_dir(dir)?;
    config.arch().from_hf_weights(&mut weights)?;
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

/// Loads a GGUF file: its configuration from the metadata, its tensors
/// under their Hugging Face names with the family's fixups undone.
fn load_gguf(path: &Path) -> Result<LoadedModel, ModelError> {
    let file = GgufFile::open(path)?;
    let config = ModelConfig::from_gguf(&file)?;
    let mut mapped = Vec::with_capacity(file.tensors().len());
    for info in file.tensors() {
        match config.arch().gguf_tensor(&info.name) {
            Some(GgufTensor::Skip) => {}
            Some(GgufTensor::Load { hf_name, fixup }) => mapped.push((info.name.clone(), hf_name, info.shape(), fixup)),
            None => {
                return Err(ModelError::format(
                    path,
                    format!(
                        "tensor `{}` has no counterpart in the {} architecture (unexpected GGUF tensor name)",
                        info.name,
                        config.model_type()
                    ),
                ))
            }
        }
    }
    let names: Vec<(&str, usize)> = mapped.iter().map(|(name, _, shape, _)| (name.as_str(), shape.iter().product())).collect();
    let dequantized = dequantize_all(&file, &names)?;
    let mut weights = WeightMap::new(path);
    for ((_, hf, shape, fixup), mut data) in mapped.into_iter().zip(dequantized) {
        match fixup {
            Fixup::None => {}
            Fixup::UnpermuteRows { heads } => data = unpermute_rows(&data, heads, if shape.len() == 2 { shape[1] } else { 1 }),
            Fixup::SubtractOne => data.iter_mut().for_each(|v| *v -= 1.0),
        }
        weights.insert(hf, HostTensor::new(shape, data));
    }
    config.arch().from_hf_weights(&mut weights)?;
    finish_gguf(path, &file, config, weights)
}

/// Checks the tensors of a GGUF model and reads its tokenizer.
fn finish_gguf(path: &Path, file: &GgufFile, config: ModelConfig, weights: WeightMap) -> Result<LoadedModel, ModelError> {
    check_tensors(&config, &weights)?;
    let tokenizer = if file.get("tokenizer.ggml.tokens").is_some() { Some(Tokenizer::from_gguf(file)?) } else { None };
    let fingerprint = fingerprint(&config, &weights);
    let chat_template = file.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(str::to_string);
    Ok(LoadedModel { path: path.to_path_buf(), format: ModelFormat::Gguf, config, weights, tokenizer, chat_template, fingerprint })
}

/// Dequantizes the listed tensors (name, element count) on all cores, largest first.
fn dequantize_all(file: &GgufFile, tensors: &[(&str, usize)]) -> Result<Vec<Vec<f32>>, ModelError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(tensors.len().max(1));
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(tensors[i].1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Result<Vec<f32>, ModelError>>>> =
        (0..tensors.len()).map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&i) = order.get(k) else { break };
                let r = file.tensor_f32(tensors[i].0).map_err(ModelError::from);
                *results[i].lock().expect("no poisoned lock") = Some(r);
            });
        }
    });
    results.into_iter().map(|m| m.into_inner().expect("no poisoned lock").expect("every tensor visited")).collect()
}
