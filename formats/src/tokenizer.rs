//! Tokenizers for subprune models: Hugging Face `tokenizer.json` files and the
//! tokenizer stored in GGUF metadata (llama.cpp conventions), both as a
//! [`tokenizers::Tokenizer`] plus the special-token facts (BOS, EOS, whether
//! BOS is added) that encoding needs.
//!
//! A GGUF tokenizer is rebuilt the way llama.cpp's `llama-vocab.cpp` tokenizes:
//! byte-level BPE over the stored vocabulary and merges, the pre-tokenizer
//! regexes chosen by `tokenizer.ggml.pre`, and control / user-defined tokens
//! matched whole. The result can be written out as a `tokenizer.json` that
//! Hugging Face `transformers` loads.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::gguf::{GgufFile, GgufValue};

/// Errors from loading, building, or running a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A `tokenizer.json` could not be parsed by the `tokenizers` library.
    #[error("cannot load Hugging Face tokenizer {path}: {message} (expected a tokenizer.json as written by the `tokenizers` library)")]
    Load {
        /// The file.
        path: PathBuf,
        /// What the library reported.
        message: String,
    },
    /// A JSON side file (`tokenizer_config.json`, `config.json`) is malformed.
    #[error("cannot parse {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A required GGUF metadata key is absent.
    #[error("{path}: GGUF metadata key `{key}` is missing (expected {expected})")]
    MissingKey {
        /// The GGUF file.
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// What the key should hold.
        expected: String,
    },
    /// A metadata value or config entry has the wrong type or an invalid value.
    #[error("{path}: `{key}`: expected {expected}, found {found}")]
    InvalidValue {
        /// The file.
        path: PathBuf,
        /// The metadata key or JSON field.
        key: String,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// The tokenizer model kind is not supported (yet).
    #[error("{path}: tokenizer model `{model}` is not supported yet (supported: {supported})")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The value of `tokenizer.ggml.model`.
        model: String,
        /// The supported values.
        supported: String,
    },
    /// The GGUF names a pre-tokenizer this module does not know.
    #[error("{path}: unknown pre-tokenizer `tokenizer.ggml.pre` = `{pre}` (known: {known})")]
    UnknownPreTokenizer {
        /// The file.
        path: PathBuf,
        /// The value of `tokenizer.ggml.pre`.
        pre: String,
        /// The known values, comma-separated.
        known: String,
    },
    /// The `tokenizers` library refused to build a component from valid-looking metadata.
    #[error("{path}: cannot build the tokenizer: {message}")]
    Build {
        /// The file the tokenizer comes from.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Encoding a text failed.
    #[error("cannot encode text with the tokenizer from {path}: {message}")]
    Encode {
        /// The file the tokenizer comes from.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Decoding ids failed, e.g. an id outside the vocabulary.
    #[error("cannot decode ids with the tokenizer from {path}: {message}")]
    Decode {
        /// The file the tokenizer comes from.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Serializing the tokenizer to `tokenizer.json` text failed.
    #[error("cannot serialize the tokenizer from {path}: {message}")]
    Serialize {
        /// The file the tokenizer comes from.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// A text tokenizer: a [`tokenizers::Tokenizer`] plus its special-token facts.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    source: PathBuf,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    add_bos: bool,
    /// Whether `inner`'s post-processor itself inserts BOS when asked for special tokens.
    post_adds_bos: bool,
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size)
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

/// How the text is split before byte-level BPE, per llama.cpp's pre-tokenizer types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreKind {
    /// GPT-2's regex (HF `ByteLevel(use_regex=true)`).
    Gpt2,
    /// Every digit on its own, then GPT-2's regex (StarCoder, SmolLM, ...).
    DigitsGpt2,
    /// Llama 3's regex (numbers in groups of up to three).
    Llama3,
    /// Qwen2's regex (digits one by one).
    Qwen2,
}

/// `tokenizer.ggml.pre` values understood, their split rules, and whether
/// llama.cpp treats them as Llama 3 proper (merges ignored for whole-vocabulary
/// words, BOS added by default).
const KNOWN_PRE: &[(&str, PreKind, bool)] = &[
    ("default", PreKind::Gpt2, false),
    ("gpt2", PreKind::Gpt2, false),
    ("gpt-2", PreKind::Gpt2, false),
    ("phi-2", PreKind::Gpt2, false),
    ("mpt", PreKind::Gpt2, false),
    ("olmo", PreKind::Gpt2, false),
    ("jais", PreKind::Gpt2, false),
    ("roberta-bpe", PreKind::Gpt2, false),
    ("smollm", PreKind::DigitsGpt2, false),
    ("starcoder", PreKind::DigitsGpt2, false),
    ("refact", PreKind::DigitsGpt2, false),
    ("codeshell", PreKind::DigitsGpt2, false),
    ("command-r", PreKind::DigitsGpt2, false),
    ("exaone", PreKind::DigitsGpt2, false),
    ("minerva-7b", PreKind::DigitsGpt2, false),
    ("llama3", PreKind::Llama3, true),
    ("llama-v3", PreKind::Llama3, true),
    ("llama-bpe", PreKind::Llama3, true),
    ("falcon3", PreKind::Llama3, true),
    ("pixtral", PreKind::Llama3, true),
    ("dbrx", PreKind::Llama3, false),
    ("smaug-bpe", PreKind::Llama3, false),
    ("qwen2", PreKind::Qwen2, false),
    ("deepseek-r1-qwen", PreKind::Qwen2, false),
    ("stablelm2", PreKind::Qwen2, false),
];

/// Llama 3's split regex as adapted in llama.cpp (explicit case classes instead of `(?i:)`).
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split regex as adapted in llama.cpp.
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_UNKNOWN: i64 = 2;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

fn describe(value: &GgufValue) -> String {
    match value {
        GgufValue::String(s) => format!("string {s:?}"),
        GgufValue::Array(a) => format!("array of {} values", a.len()),
        GgufValue::I32(v) => format!("i32 {v}"),
        GgufValue::U32(v) => format!("u32 {v}"),
        GgufValue::Bool(v) => format!("bool {v}"),
        #[allow(unreachable_patterns)]
        other => match (other.as_u64(), other.as_i64(), other.as_f64()) {
            (Some(v), _, _) => format!("integer {v}"),
            (_, Some(v), _) => format!("integer {v}"),
            (_, _, Some(v)) => format!("float {v}"),
            _ => "a value of another type".to_string(),
        },
    }
}

/// Reads typed GGUF metadata with errors naming the file and key.
struct Meta<'a> {
    file: &'a GgufFile,
    path: PathBuf,
}

impl<'a> Meta<'a> {
    fn invalid(&self, key: &str, expected: &str, found: String) -> TokenizerError {
        TokenizerError::InvalidValue { path: self.path.clone(), key: key.to_string(), expected: expected.to_string(), found }
    }

    fn required(&self, key: &str, expected: &str) -> Result<&'a GgufValue, TokenizerError> {
        self.file.get(key).ok_or_else(|| TokenizerError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
            expected: expected.to_string(),
        })
    }

    fn str_opt(&self, key: &str) -> Result<Option<&'a str>, TokenizerError> {
        match self.file.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.invalid(key, "a string", describe(v))),
        }
    }

    fn bool_opt(&self, key: &str) -> Result<Option<bool>, TokenizerError> {
        match self.file.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.invalid(key, "a bool", describe(v))),
        }
    }

    /// An optional token id, checked against the vocabulary size.
    fn token_id_opt(&self, key: &str, n_vocab: usize) -> Result<Option<u32>, TokenizerError> {
        let Some(v) = self.file.get(key) else {
            return Ok(None);
        };
        let expected = format!("a token id below the vocabulary size {n_vocab}");
        match v.as_u64() {
            Some(id) if (id as usize) < n_vocab => Ok(Some(id as u32)),
            _ => Err(self.invalid(key, &expected, describe(v))),
        }
    }

    fn array(&self, key: &str, expected: &str) -> Result<&'a [GgufValue], TokenizerError> {
        let v = self.required(key, expected)?;
        v.as_array().ok_or_else(|| self.invalid(key, expected, describe(v)))
    }

    fn string_array(&self, key: &str, expected: &str) -> Result<Vec<&'a str>, TokenizerError> {
        self.array(key, expected)?
            .iter()
            .enumerate()
            .map(|(i, v)| v.as_str().ok_or_else(|| self.invalid(key, expected, format!("element {i} is {}", describe(v)))))
            .collect()
    }
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`; BOS/EOS and whether BOS is added
    /// come from `tokenizer_config.json` and `config.json` in the same
    /// directory when present, else from the tokenizer's own post-processor.
    pub fn from_file(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io { path: path.to_path_buf(), source })?;
        let inner: tokenizers::Tokenizer =
            text.parse().map_err(|e: tokenizers::Error| TokenizerError::Load { path: path.to_path_buf(), message: e.to_string() })?;
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        let tok_config = read_json_opt(&dir.join("tokenizer_config.json"))?;
        let model_config = read_json_opt(&dir.join("config.json"))?;

        let lookup = |field: &str| -> Result<Option<u32>, TokenizerError> {
            if let Some((cfg_path, cfg)) = &tok_config {
                if let Some(v) = cfg.get(field) {
                    let content = match v {
                        serde_json::Value::Null => None,
                        serde_json::Value::String(s) => Some(s.as_str()),
                        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()),
                        _ => None,
                    };
                    if let Some(content) = content {
                        return inner.token_to_id(content).map(Some).ok_or_else(|| TokenizerError::InvalidValue {
                            path: cfg_path.clone(),
                            key: field.to_string(),
                            expected: format!("a token of {}", path.display()),
                            found: format!("{content:?}, which is not in its vocabulary"),
                        });
                    }
                }
            }
            if let Some((cfg_path, cfg)) = &model_config {
                let key = format!("{field}_id");
                let id = match cfg.get(&key) {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::Array(a)) => a.first().and_then(|x| x.as_u64()),
                    Some(v) => Some(v.as_u64().ok_or_else(|| TokenizerError::InvalidValue {
                        path: cfg_path.clone(),
                        key: key.clone(),
                        expected: "a token id (non-negative integer) or a list of them".into(),
                        found: v.to_string(),
                    })?),
                };
                if let Some(id) = id {
                    return u32::try_from(id).map(Some).map_err(|_| TokenizerError::InvalidValue {
                        path: cfg_path.clone(),
                        key,
                        expected: "a 32-bit token id".into(),
                        found: id.to_string(),
                    });
                }
            }
            Ok(None)
        };
        let probe = |add_special: bool| -> Result<Vec<u32>, TokenizerError> {
            inner
                .encode("a", add_special)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| TokenizerError::Encode { path: path.to_path_buf(), message: e.to_string() })
        };
        let (with_special, without) = (probe(true)?, probe(false)?);
        // Tokens the post-processor puts around the text, for when no config names them.
        let (template_bos, template_eos) = match with_special.len().checked_sub(without.len()) {
            Some(1..) if !without.is_empty() => (
                with_special.first().filter(|&&id| id != without[0]).copied(),
                with_special.last().filter(|&&id| Some(&id) != without.last()).copied(),
            ),
            _ => (None, None),
        };
        let bos_id = lookup("bos_token")?.or(template_bos);
        let eos_id = lookup("eos_token")?.or(template_eos);
        let post_adds_bos = match bos_id {
            Some(bos) => with_special.first() == Some(&bos) && without.first() != Some(&bos),
            None => false,
        };
        let add_bos = match tok_config.as_ref().and_then(|(_, cfg)| cfg.get("add_bos_token")) {
            Some(serde_json::Value::Bool(b)) => *b && bos_id.is_some(),
            _ => post_adds_bos,
        };
        let vocab_size = inner.get_vocab_size(true);
        Ok(Tokenizer { inner, source: path.to_path_buf(), bos_id, eos_id, add_bos, post_adds_bos, vocab_size })
    }

    /// Builds the tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata.
    /// Byte-level BPE (`tokenizer.ggml.model` = `gpt2`) and SentencePiece
    /// BPE without a prefix space (`llama`, `add_space_prefix` false) are supported.
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        let path = file.path().to_path_buf();
        let meta = Meta { file, path: path.clone() };
        let model = meta.required("tokenizer.ggml.model", "the tokenizer kind, e.g. \"gpt2\"")?;
        let model = model.as_str().ok_or_else(|| meta.invalid("tokenizer.ggml.model", "a string", describe(model)))?;
        if model == "llama" && meta.bool_opt("tokenizer.ggml.add_space_prefix")? == Some(false) {
            return sentencepiece_from_gguf(&meta);
        }
        if model != "gpt2" {
            let kind = match model {
                "llama" => "llama (SentencePiece) with a prefix space".to_string(),
                other => other.to_string(),
            };
            let supported = "gpt2 (byte-level BPE), llama (SentencePiece) with tokenizer.ggml.add_space_prefix false";
            return Err(TokenizerError::Unsupported { path, model: kind, supported: supported.into() });
        }

        let pre_name = meta.str_opt("tokenizer.ggml.pre")?.unwrap_or("default");
        let Some(&(_, pre_kind, llama3_proper)) = KNOWN_PRE.iter().find(|(name, _, _)| *name == pre_name) else {
            let known: Vec<&str> = KNOWN_PRE.iter().map(|(n, _, _)| *n).collect();
            return Err(TokenizerError::UnknownPreTokenizer { path, pre: pre_name.to_string(), known: known.join(", ") });
        };

        let tokens = meta.string_array("tokenizer.ggml.tokens", "an array of token strings")?;
        let n_vocab = tokens.len();
        let types = token_types(&meta, n_vocab)?;
        let merges_raw = meta.string_array("tokenizer.ggml.merges", "an array of \"left right\" merge strings")?;
        let mut merges = Vec::with_capacity(merges_raw.len());
        for (i, m) in merges_raw.iter().enumerate() {
            let split = m.bytes().enumerate().skip(1).find(|&(_, b)| b == b' ').map(|(p, _)| p);
            let Some(p) = split else {
                return Err(meta.invalid("tokenizer.ggml.merges", "merges of the form \"left right\"", format!("element {i} = {m:?}")));
            };
            merges.push((m[..p].to_string(), m[p + 1..].to_string()));
        }

        let bos_id = meta.token_id_opt("tokenizer.ggml.bos_token_id", n_vocab)?;
        let eos_id = meta.token_id_opt("tokenizer.ggml.eos_token_id", n_vocab)?;
        let unk_id = meta.token_id_opt("tokenizer.ggml.unknown_token_id", n_vocab)?;
        let add_bos = meta.bool_opt("tokenizer.ggml.add_bos_token")?.unwrap_or(llama3_proper);
        let add_eos = meta.bool_opt("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        if add_bos && bos_id.is_none() {
            return Err(meta.invalid("tokenizer.ggml.bos_token_id", "a BOS token id, since BOS is to be added", "no such key".into()));
        }
        if add_eos && eos_id.is_none() {
            return Err(meta.invalid("tokenizer.ggml.eos_token_id", "an EOS token id, since EOS is to be added", "no such key".into()));
        }

        // As in llama.cpp, a later duplicate token string wins the string -> id map.
        let mut vocab = tokenizers::models::bpe::Vocab::default();
        for (id, tok) in tokens.iter().enumerate() {
            vocab.insert((*tok).to_string(), id as u32);
        }
        let build_err = |message: String| TokenizerError::Build { path: path.clone(), message };
        let mut bpe = BPE::builder().vocab_and_merges(vocab, merges).ignore_merges(llama3_proper);
        if let Some(unk) = unk_id {
            bpe = bpe.unk_token(tokens[unk as usize].to_string());
        }
        let bpe = bpe.build().map_err(|e| build_err(format!("BPE from tokens and merges: {e}")))?;

        let byte_level = |use_regex: bool| ByteLevel::default().add_prefix_space(false).trim_offsets(true).use_regex(use_regex);
        let split = |regex: &str| {
            Split::new(SplitPattern::Regex(regex.to_string()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| build_err(format!("pre-tokenizer regex for `{pre_name}`: {e}")))
        };
        let pre: PreTokenizerWrapper = match pre_kind {
            PreKind::Gpt2 => byte_level(true).into(),
            PreKind::DigitsGpt2 => PreSequence::new(vec![Digits::new(true).into(), byte_level(true).into()]).into(),
            PreKind::Llama3 => PreSequence::new(vec![split(LLAMA3_REGEX)?.into(), byte_level(false).into()]).into(),
            PreKind::Qwen2 => PreSequence::new(vec![split(QWEN2_REGEX)?.into(), byte_level(false).into()]).into(),
        };

        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let post = post_processor(
            add_bos.then(|| (tokens[bos_id.unwrap_or(0) as usize], bos_id.unwrap_or(0))),
            add_eos.then(|| (tokens[eos_id.unwrap_or(0) as usize], eos_id.unwrap_or(0))),
        )
        .map_err(|e| build_err(format!("post-processor: {e}")))?;
        inner.with_post_processor(Some(post));

        let mut specials = Vec::new();
        let mut user_defined = Vec::new();
        for (tok, ty) in tokens.iter().zip(&types) {
            match *ty {
                TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN => specials.push(AddedToken::from(*tok, true).normalized(false)),
                TOKEN_TYPE_USER_DEFINED => user_defined.push(AddedToken::from(*tok, false).normalized(false)),
                _ => {}
            }
        }
        inner.add_special_tokens(&specials);
        inner.add_tokens(&user_defined);

        Ok(Tokenizer { inner, source: path, bos_id, eos_id, add_bos, post_adds_bos: add_bos, vocab_size: n_vocab })
    }

    /// Encodes `text` to token ids. Special-token texts in `text` (e.g.
    /// `<|im_start|>`) always map to their single ids. With `add_special`,
    /// BOS is prepended when [`Tokenizer::add_bos`] says so (and any other
    /// special tokens the tokenizer's template adds); without it, never.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| TokenizerError::Encode { path: self.source.clone(), message: e.to_string() })?;
        let mut ids = enc.get_ids().to_vec();
        if add_special {
            if let Some(bos) = self.bos_id {
                if self.add_bos && !self.post_adds_bos {
                    ids.insert(0, bos);
                } else if !self.add_bos && self.post_adds_bos && ids.first() == Some(&bos) {
                    ids.remove(0);
                }
            }
        }
        Ok(ids)
    }

    /// Decodes token ids to text, special tokens included as their text, so
    /// that `decode(encode(t, false)) == t`. Ids outside the vocabulary are an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        if let Some(bad) = ids.iter().find(|&&id| self.inner.id_to_token(id).is_none()) {
            return Err(TokenizerError::Decode {
                path: self.source.clone(),
                message: format!("token id {bad} is not in the vocabulary (size {})", self.vocab_size),
            });
        }
        self.inner.decode(ids, false).map_err(|e| TokenizerError::Decode { path: self.source.clone(), message: e.to_string() })
    }

    /// The beginning-of-sequence token id, if the tokenizer has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The end-of-sequence token id, if the tokenizer has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Whether `encode(text, true)` starts with BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Number of token ids (the model's embedding rows it addresses).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// `"sha256:<hex>"` of the tokenizer's canonical compact JSON
    /// serialization, plus its BOS/EOS/add-BOS settings.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        match self.inner.to_string(false) {
            Ok(json) => h.update(json.as_bytes()),
            Err(e) => h.update(format!("unserializable: {e}").as_bytes()),
        }
        h.update(format!("\nbos={:?} eos={:?} add_bos={}", self.bos_id, self.eos_id, self.add_bos).as_bytes());
        format!("sha256:{}", hex::encode(h.finalize()))
    }

    /// The tokenizer as Hugging Face `tokenizer.json` text (pretty-printed),
    /// loadable by `tokenizers` and `transformers`' `PreTrainedTokenizerFast`.
    pub fn to_tokenizer_json(&self) -> Result<String, TokenizerError> {
        self.inner.to_string(true).map_err(|e| TokenizerError::Serialize { path: self.source.clone(), message: e.to_string() })
    }

    /// The `tokenizer_config.json` transformers reads next to `tokenizer.json`:
    /// special tokens and whether a BOS token is added.
    pub fn hf_tokenizer_config(&self, model_max_length: serde_json::Value) -> serde_json::Value {
        let token = |id: Option<u32>| id.and_then(|i| self.inner.id_to_token(i)).map_or(serde_json::Value::Null, serde_json::Value::from);
        serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": token(self.bos_id),
            "eos_token": token(self.eos_id),
            "add_bos_token": self.add_bos,
            "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
            "model_max_length": model_max_length,
        })
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Token types of a GGUF vocabulary (`tokenizer.ggml.token_type`), all
/// normal (1) when the key is absent.
fn token_types(meta: &Meta<'_>, n_vocab: usize) -> Result<Vec<i64>, TokenizerError> {
    let Some(v) = meta.file.get("tokenizer.ggml.token_type") else {
        return Ok(vec![1; n_vocab]);
    };
    let expected = format!("an array of {n_vocab} integer token types");
    let arr = v.as_array().ok_or_else(|| meta.invalid("tokenizer.ggml.token_type", &expected, describe(v)))?;
    if arr.len() != n_vocab {
        return Err(meta.invalid("tokenizer.ggml.token_type", &expected, format!("{} entries", arr.len())));
    }
    arr.iter()
        .enumerate()
        .map(|(i, t)| {
            t.as_i64().ok_or_else(|| meta.invalid("tokenizer.ggml.token_type", &expected, format!("element {i} is {}", describe(t))))
        })
        .collect()
}

/// BPE merges implied by a vocabulary, best first, as transformers'
/// `generate_merges` derives them for Gemma GGUF files (which store no
/// merges): every split of a token into two tokens of the vocabulary, ranked
/// by the token's position in the file (earlier first), then by longer left
/// part, then longer right part; ties keep the order of the pieces' ids.
/// `tokens` are in file order; `ids` maps each token to its (last) id.
pub fn merges_from_vocab(tokens: &[String], ids: &std::collections::HashMap<&str, u32>) -> Vec<(String, String)> {
    // (rank of the merged token, chars of left, chars of right, left, right)
    let mut merges: Vec<(u32, usize, usize, &str, &str)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for token in tokens {
        if !seen.insert(token.as_str()) {
            continue;
        }
        let rank = ids[token.as_str()];
        let mut local = Vec::new();
        for (n_left, (at, _)) in token.char_indices().enumerate().skip(1) {
            let (left, right) = token.split_at(at);
            if let (Some(&l), Some(&r)) = (ids.get(left), ids.get(right)) {
                local.push((l, r, n_left, token.chars().count() - n_left, left, right));
            }
        }
        local.sort_by_key(|&(l, r, ..)| (l, r));
        merges.extend(local.into_iter().map(|(_, _, nl, nr, left, right)| (rank, nl, nr, left, right)));
    }
    // Python's stable `sorted(key=(-rank, len_l, len_r), reverse=True)`.
    merges.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
    merges.into_iter().map(|(_, _, _, l, r)| (l.to_string(), r.to_string())).collect()
}

/// Builds the SentencePiece-style BPE tokenizer of a GGUF whose
/// `tokenizer.ggml.model` is `llama` without a prefix space (Gemma's) as
/// transformers' GGUF converter does (`gemma_tokenizer` + `GemmaTokenizer`): tokens made only of spaces are
/// respelled with `▁`; merges are derived from the vocabulary in file order;
/// BPE with byte fallback, spaces normalised to `▁`, no prefix space;
/// control tokens special, user-defined tokens matched whole; BOS added
/// unless `tokenizer.ggml.add_bos_token` says otherwise.
fn sentencepiece_from_gguf(meta: &Meta<'_>) -> Result<Tokenizer, TokenizerError> {
    use serde_json::json;
    let path = meta.path.clone();
    let raw = meta.string_array("tokenizer.ggml.tokens", "an array of token strings")?;
    let n_vocab = raw.len();
    let types = token_types(meta, n_vocab)?;
    let tokens: Vec<String> = raw
        .iter()
        .map(|t| if t.contains(' ') && t.trim().is_empty() { "\u{2581}".repeat(t.chars().count()) } else { (*t).to_string() })
        .collect();
    let mut ids = std::collections::HashMap::with_capacity(n_vocab);
    for (id, tok) in tokens.iter().enumerate() {
        ids.insert(tok.as_str(), id as u32);
    }
    let merges = merges_from_vocab(&tokens, &ids);
    let bos_id = meta.token_id_opt("tokenizer.ggml.bos_token_id", n_vocab)?;
    let eos_id = meta.token_id_opt("tokenizer.ggml.eos_token_id", n_vocab)?;
    let add_bos = meta.bool_opt("tokenizer.ggml.add_bos_token")?.unwrap_or(true);
    if add_bos && bos_id.is_none() {
        return Err(meta.invalid("tokenizer.ggml.bos_token_id", "a BOS token id, since BOS is to be added", "no such key".into()));
    }
    let build_err = |message: String| TokenizerError::Build { path: path.clone(), message };
    let mut vocab = tokenizers::models::bpe::Vocab::default();
    for (tok, id) in &ids {
        vocab.insert((*tok).to_string(), *id);
    }
    let mut bpe = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
    if ids.contains_key("<unk>") {
        bpe = bpe.unk_token("<unk>".to_string());
    }
    let bpe = bpe.build().map_err(|e| build_err(format!("BPE from the vocabulary: {e}")))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let parse = |what: &str, value: serde_json::Value| build_err(format!("{what}: {value}"));
    let normalizer: tokenizers::NormalizerWrapper =
        serde_json::from_value(json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}))
            .map_err(|e| parse("normalizer", json!(e.to_string())))?;
    let pre: PreTokenizerWrapper =
        serde_json::from_value(json!({"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false}))
            .map_err(|e| parse("pre-tokenizer", json!(e.to_string())))?;
    let decoder: tokenizers::DecoderWrapper = serde_json::from_value(json!({"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"}
    ]}))
    .map_err(|e| parse("decoder", json!(e.to_string())))?;
    inner.with_normalizer(Some(normalizer));
    inner.with_pre_tokenizer(Some(pre));
    inner.with_decoder(Some(decoder));
    if add_bos {
        let bos = bos_id.unwrap_or(0);
        let bos_text = tokens[bos as usize].as_str();
        let post: PostProcessorWrapper = serde_json::from_value(json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos_text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos_text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos_text, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos_text: {"id": bos_text, "ids": [bos], "tokens": [bos_text]}}
        }))
        .map_err(|e| parse("post-processor", json!(e.to_string())))?;
        inner.with_post_processor(Some(post));
    }
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, ty)| **ty == TOKEN_TYPE_CONTROL)
        .map(|(tok, _)| AddedToken::from(tok.clone(), true).normalized(false))
        .collect();
    inner.add_special_tokens(&specials);
    let user_defined: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(tok, ty)| **ty == TOKEN_TYPE_USER_DEFINED && ids.contains_key(tok.as_str()))
        .map(|(tok, _)| AddedToken::from(tok.clone(), false).normalized(false))
        .collect();
    inner.add_tokens(&user_defined);
    Ok(Tokenizer { inner, source: path, bos_id, eos_id, add_bos, post_adds_bos: add_bos, vocab_size: n_vocab })
}

/// Byte-level offset trimming, followed by a template adding BOS / EOS when asked.
fn post_processor(bos: Option<(&str, u32)>, eos: Option<(&str, u32)>) -> Result<PostProcessorWrapper, serde_json::Error> {
    use serde_json::json;
    let byte_level = json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
    });
    if bos.is_none() && eos.is_none() {
        return serde_json::from_value(byte_level);
    }
    let mut special_tokens = serde_json::Map::new();
    for (content, id) in bos.iter().chain(eos.iter()) {
        special_tokens.insert(content.to_string(), json!({"id": content, "ids": [id], "tokens": [content]}));
    }
    let part = |seq: &str, type_id: u32| {
        let mut pieces = Vec::new();
        if let Some((b, _)) = bos {
            pieces.push(json!({"SpecialToken": {"id": b, "type_id": type_id}}));
        }
        pieces.push(json!({"Sequence": {"id": seq, "type_id": type_id}}));
        if let Some((e, _)) = eos {
            pieces.push(json!({"SpecialToken": {"id": e, "type_id": type_id}}));
        }
        pieces
    };
    let single = part("A", 0);
    let mut pair = part("A", 0);
    pair.extend(part("B", 1));
    serde_json::from_value(json!({
        "type": "Sequence",
        "processors": [
            byte_level,
            {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_tokens}
        ]
    }))
}

/// Reads an optional JSON file next to a `tokenizer.json`.
fn read_json_opt(path: &Path) -> Result<Option<(PathBuf, serde_json::Value)>, TokenizerError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io { path: path.to_path_buf(), source })?;
    let value = serde_json::from_str(&text).map_err(|source| TokenizerError::Json { path: path.to_path_buf(), source })?;
    Ok(Some((path.to_path_buf(), value)))
}
