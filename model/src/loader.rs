//! User-facing model loading: a Hugging Face checkpoint directory or a GGUF
//! file, opened as a configuration, a tokenizer and lazily read
//! Hugging Face-named weights ([`Checkpoint`]): no tensor is decoded until
//! a stage asks for it.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::arch::{GgufTensor, ModelConfig};
use crate::checkpoint::Checkpoint;
use crate::decoder::Decoder;
use crate::error::ModelError;
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;

/// File format a model was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// A Hugging Face directory with config.json and safetensors.
    HuggingFace,
    /// A llama.cpp GGUF file.
    Gguf,
}

/// A model opened from disk: its configuration, lazily read weights and tokenizer.
pub struct LoadedModel {
    /// The file or directory it was read from.
    pub path: PathBuf,
    /// Its format.
    pub format: ModelFormat,
    /// Architecture and hyper-parameters.
    pub config: ModelConfig,
    /// All weights, Hugging Face names and layout, read when asked for.
    pub weights: Checkpoint,
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

    /// Builds the whole network on `device` for decoding, its matrices kept
    /// in their stored form on host-memory devices ([`Decoder::from_weights_stored`]).
    pub fn build_stored(&self, device: &burn::tensor::Device) -> Result<Decoder, ModelError> {
        Decoder::from_weights_stored(self.config.spec(), &self.weights, device)
    }

    /// Builds the whole network on `device`, reading the weights tensor by tensor.
    pub fn build(&self, device: &burn::tensor::Device) -> Result<Decoder, ModelError> {
        Decoder::from_weights(self.config.spec(), &self.weights, device)
    }
}

/// Fingerprint ("sha256:<hex>") of a configuration and the names and shapes
/// of its tensors, given in name order.
pub fn fingerprint<'a>(config: &ModelConfig, shapes: impl IntoIterator<Item = (&'a String, &'a [usize])>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(config.canonical_json().as_bytes());
    for (name, shape) in shapes {
        hasher.update(format!("\n{name}:{shape:?}").as_bytes());
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
    let weights = Checkpoint::open_safetensors(dir, &config.arch().fused())?;
    check_tensors(&config, &weights)?;
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = if tokenizer_path.is_file() { Some(Tokenizer::from_file(&tokenizer_path)?) } else { None };
    let fingerprint = fingerprint(&config, weights.shapes());
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
fn check_tensors(config: &ModelConfig, weights: &Checkpoint) -> Result<(), ModelError> {
    let arch = config.model_type();
    for (name, shape) in config.expected_tensors() {
        weights.check_shape(&name, &shape, &arch)?;
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
    let weights = Checkpoint::open_gguf(file, mapped, &config.arch().fused())?;
    check_tensors(&config, &weights)?;
    finish_gguf(path, config, weights)
}

/// Reads the tokenizer and chat template of a GGUF model.
fn finish_gguf(path: &Path, config: ModelConfig, weights: Checkpoint) -> Result<LoadedModel, ModelError> {
    let file = weights.gguf().expect("a GGUF checkpoint");
    let tokenizer = if file.get("tokenizer.ggml.tokens").is_some() { Some(Tokenizer::from_gguf(file)?) } else { None };
    let fingerprint = fingerprint(&config, weights.shapes());
    let chat_template = file.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(str::to_string);
    Ok(LoadedModel { path: path.to_path_buf(), format: ModelFormat::Gguf, config, weights, tokenizer, chat_template, fingerprint })
}

/// Writes the files of a Hugging Face checkpoint directory other than its
/// weights, as transformers reads them: `config` as config.json,
/// generation_config.json (BOS / EOS of the tokenizer, else of the config),
/// and, with a tokenizer, tokenizer.json and tokenizer_config.json.
pub fn write_hf_metadata(dir: &Path, config: &Value, tokenizer: Option<&Tokenizer>) -> Result<(), ModelError> {
    let write_json = |name: &str, value: &Value| -> Result<(), ModelError> {
        let path = dir.join(name);
        let text = serde_json::to_string_pretty(value).expect("JSON values serialise");
        std::fs::write(&path, text + "\n").map_err(|e| ModelError::io(&path, e))
    };
    let mut generation = serde_json::Map::new();
    let from_config = |key: &str| config.get(key).filter(|v| !v.is_null()).cloned();
    let bos = tokenizer.and_then(|t| t.bos_id()).map(Value::from).or_else(|| from_config("bos_token_id"));
    let eos = tokenizer.and_then(|t| t.eos_id()).map(Value::from).or_else(|| from_config("eos_token_id"));
    if let Some(b) = bos {
        generation.insert("bos_token_id".into(), b);
    }
    if let Some(e) = eos {
        generation.insert("eos_token_id".into(), e);
    }
    write_json("config.json", config)?;
    write_json("generation_config.json", &Value::Object(generation))?;
    if let Some(t) = tokenizer {
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, t.to_tokenizer_json()?).map_err(|e| ModelError::io(&path, e))?;
        write_json("tokenizer_config.json", &t.hf_tokenizer_config(config.get("max_position_embeddings").cloned().unwrap_or(Value::Null)))?;
    }
    Ok(())
}
