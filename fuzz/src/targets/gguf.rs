//! GGUF targets: the reader (header, metadata, tensor infos) with every
//! tensor dequantized and the model configuration read from the metadata;
//! and the tokenizer built from `tokenizer.ggml.*` metadata.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use formats::gguf::{GgmlType, GgufFile, GgufValue, GgufWriter};
use formats::tokenizer::Tokenizer;
use model::ModelConfig;

use super::Outcome;
use crate::mutate::{Field, Rng, Width};

/// Text the tokenizer target encodes: ASCII, code, digits, whitespace runs,
/// multi-byte and special-token text.
const TEXT: &str = "Hello world! def f(x):\n\treturn x * 2  # 12345\n<|im_start|>user ü 日本語 🙂<s></s>  \r\n";

/// Walks a GGUF header like the reader does, recording where every count,
/// length, type, dimension and offset lies. Stops at the first thing that
/// does not parse.
pub fn fields(data: &[u8]) -> Vec<Field> {
    let mut out = Vec::new();
    let _ = walk(data, &mut out);
    out
}

fn walk(data: &[u8], out: &mut Vec<Field>) -> Option<()> {
    let mut pos = 4usize;
    let mut field = |at: usize, n: u8, out: &mut Vec<Field>| -> Option<u64> {
        let bytes = data.get(at..at + n as usize)?;
        out.push(Field { at, width: Width::Le(n) });
        let mut v = 0u64;
        for (i, b) in bytes.iter().enumerate() {
            v |= u64::from(*b) << (8 * i);
        }
        Some(v)
    };
    field(pos, 4, out)?;
    pos += 4;
    let n_tensors = field(pos, 8, out)?;
    let n_kv = field(pos + 8, 8, out)?;
    pos += 16;
    for _ in 0..n_kv.min(10_000) {
        let klen = field(pos, 8, out)? as usize;
        pos = pos.checked_add(8 + klen)?;
        let ty = field(pos, 4, out)? as u32;
        pos += 4;
        pos = value(data, pos, ty, out, &mut field, 0)?;
    }
    for _ in 0..n_tensors.min(10_000) {
        let nlen = field(pos, 8, out)? as usize;
        pos = pos.checked_add(8 + nlen)?;
        let n_dims = field(pos, 4, out)? as usize;
        pos += 4;
        for _ in 0..n_dims.min(8) {
            field(pos, 8, out)?;
            pos += 8;
        }
        field(pos, 4, out)?;
        field(pos + 4, 8, out)?;
        pos += 12;
    }
    Some(())
}

type FieldFn<'a> = dyn FnMut(usize, u8, &mut Vec<Field>) -> Option<u64> + 'a;

fn value(data: &[u8], pos: usize, ty: u32, out: &mut Vec<Field>, field: &mut FieldFn<'_>, depth: usize) -> Option<usize> {
    if depth > 4 {
        return None;
    }
    Some(match ty {
        0 | 1 | 7 => pos + 1,
        2 | 3 => pos + 2,
        4..=6 => {
            field(pos, 4, out)?;
            pos + 4
        }
        10..=12 => {
            field(pos, 8, out)?;
            pos + 8
        }
        8 => {
            let n = field(pos, 8, out)? as usize;
            pos.checked_add(8 + n)?
        }
        9 => {
            let elem = field(pos, 4, out)? as u32;
            let n = field(pos + 4, 8, out)?;
            let mut p = pos + 12;
            for i in 0..n.min(100_000) {
                // Record the fields of the first few elements only.
                if i < 8 {
                    p = value(data, p, elem, out, field, depth + 1)?;
                } else {
                    p = value(data, p, elem, &mut Vec::new(), field, depth + 1)?;
                }
                if p > data.len() {
                    return None;
                }
            }
            p
        }
        _ => return None,
    })
}

/// Reads a GGUF file, dequantizes every tensor and reads the model configuration.
pub fn run(path: &Path) -> Outcome {
    let file = match GgufFile::open(path) {
        Ok(f) => f,
        Err(e) => return Outcome::err("open", e),
    };
    let names: Vec<String> = file.tensors().iter().map(|t| t.name.clone()).collect();
    let mut dequantized = 0;
    for name in names.iter().take(256) {
        let bytes = file.tensor_bytes(name).map(<[u8]>::len).unwrap_or(0);
        let range = file.tensor_range(name).map(|r| r.len()).unwrap_or(0);
        assert_eq!(bytes, range, "tensor_bytes and tensor_range of {name:?} disagree");
        if let Ok(values) = file.tensor_f32(name) {
            let info = file.tensor_info(name).expect("a listed tensor has info");
            assert_eq!(values.len() as u64, info.n_elements(), "dequantized length of {name:?}");
            dequantized += 1;
        }
    }
    match ModelConfig::from_gguf(&file) {
        Ok(config) => {
            let _ = config.expected_tensors();
            Outcome::ok("config")
        }
        Err(e) if dequantized > 0 => Outcome::err("tensors", e),
        Err(e) => Outcome::err("metadata", e),
    }
}

/// Builds the tokenizer from the metadata and tokenizes a short text.
pub fn run_tokenizer(path: &Path) -> Outcome {
    let file = match GgufFile::open(path) {
        Ok(f) => f,
        Err(e) => return Outcome::err("open", e),
    };
    let tok = match Tokenizer::from_gguf(&file) {
        Ok(t) => t,
        Err(e) => return Outcome::err("build", e),
    };
    let _ = tok.fingerprint();
    match tok.encode(TEXT, true) {
        Ok(ids) => {
            for &id in &ids {
                assert!((id as usize) < tok.vocab_size().max(1) + 1024, "token id {id} far outside the vocabulary of {}", tok.vocab_size());
            }
            match tok.decode(&ids) {
                Ok(_) => Outcome::ok("encode+decode"),
                Err(e) => Outcome::err("decode", e),
            }
        }
        Err(e) => Outcome::err("encode", e),
    }
}

/// Stored bytes of `n` elements of type `ty`, random.
fn random_blocks(ty: GgmlType, n: usize, rng: &mut Rng) -> Vec<u8> {
    let size = ty.n_bytes(n as u64).expect("a supported type") as usize;
    let mut out: Vec<u8> = (0..size).map(|_| rng.next_u64() as u8).collect();
    // Keep f16 scales finite most of the time: clear the exponent's top bit
    // of every other byte.
    for b in out.iter_mut().skip(1).step_by(2) {
        *b &= 0x3f;
    }
    out
}

fn write(w: &GgufWriter, scratch: &Path) -> Option<Vec<u8>> {
    let path = scratch.join("seed.gguf");
    w.write(&path).ok()?;
    std::fs::read(&path).ok()
}

/// Seeds of the reader target: every value type and every dequantizable
/// tensor type, written by the project's writer, and the metadata and first
/// tensor infos of each real model in the cache (tensors shrunk).
pub fn seeds(scratch: &Path) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(7);
    let mut out = Vec::new();
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", GgufValue::String("llama".into()));
    w.add_metadata("general.alignment", GgufValue::U32(32));
    w.add_metadata("u8", GgufValue::U8(1));
    w.add_metadata("i8", GgufValue::I8(-1));
    w.add_metadata("u16", GgufValue::U16(2));
    w.add_metadata("i16", GgufValue::I16(-2));
    w.add_metadata("i32", GgufValue::I32(-3));
    w.add_metadata("f32", GgufValue::F32(0.5));
    w.add_metadata("bool", GgufValue::Bool(true));
    w.add_metadata("u64", GgufValue::U64(1 << 33));
    w.add_metadata("i64", GgufValue::I64(-4));
    w.add_metadata("f64", GgufValue::F64(2.5));
    w.add_metadata("strings", GgufValue::Array(vec![GgufValue::String("a".into()), GgufValue::String("bc".into())]));
    w.add_metadata("nested", GgufValue::Array(vec![GgufValue::Array(vec![GgufValue::U32(1), GgufValue::U32(2)])]));
    for (key, v) in [
        ("llama.block_count", 2u32),
        ("llama.context_length", 64),
        ("llama.embedding_length", 64),
        ("llama.feed_forward_length", 128),
        ("llama.attention.head_count", 4),
        ("llama.attention.head_count_kv", 2),
        ("llama.vocab_size", 32),
    ] {
        w.add_metadata(key, GgufValue::U32(v));
    }
    w.add_metadata("llama.attention.layer_norm_rms_epsilon", GgufValue::F32(1e-5));
    w.add_metadata("llama.rope.freq_base", GgufValue::F32(10000.0));
    let types = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];
    for ty in types {
        w.add_tensor(&format!("t.{}", ty.name()), &[2, 256], ty, random_blocks(ty, 512, &mut rng));
    }
    out.extend(write(&w, scratch));
    // One small file per type, so a mutation hits the tensor it changes.
    for ty in types {
        let mut w = GgufWriter::new();
        w.add_metadata("general.architecture", GgufValue::String("qwen2".into()));
        w.add_tensor("token_embd.weight", &[1, 256], ty, random_blocks(ty, 256, &mut rng));
        out.extend(write(&w, scratch));
    }
    for model in real_models() {
        let Ok(file) = GgufFile::open(&model) else { continue };
        let mut w = GgufWriter::new();
        for (k, v) in file.metadata() {
            if !k.starts_with("tokenizer.") {
                w.add_metadata(k, v.clone());
            }
        }
        for info in file.tensors().iter().take(6) {
            let block = info.ggml_type.block_size().unwrap_or(1);
            if info.ggml_type.can_dequantize() {
                w.add_tensor(&info.name, &[2, block], info.ggml_type, random_blocks(info.ggml_type, 2 * block, &mut rng));
            }
        }
        out.extend(write(&w, scratch));
    }
    out
}

/// The GGUF models in the cache ($SUBPRUNE_HOME or ~/.cache/subprune).
pub fn real_models() -> Vec<std::path::PathBuf> {
    let home = std::env::var_os("SUBPRUNE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/subprune")));
    let Some(dir) = home.map(|h| h.join("models")) else { return Vec::new() };
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    found.sort();
    found
}

fn strings(v: Vec<String>) -> GgufValue {
    GgufValue::Array(v.into_iter().map(GgufValue::String).collect())
}

/// A tokenizer-only GGUF file from metadata pairs.
fn tokenizer_file(meta: Vec<(&str, GgufValue)>, scratch: &Path) -> Option<Vec<u8>> {
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.add_metadata(k, v);
    }
    write(&w, scratch)
}

/// Seeds of the tokenizer target: small byte-level BPE and SentencePiece
/// vocabularies made in code, and each real model's tokenizer cut down to
/// its first tokens (the merges among them kept, ids renumbered densely).
pub fn tokenizer_seeds(scratch: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    // Byte-level BPE over the GPT-2 byte alphabet.
    let mut bytes_tokens: Vec<String> = Vec::new();
    for b in 0..=255u32 {
        let c = match b {
            33..=126 | 161..=172 | 174..=255 => char::from_u32(b).unwrap_or('?'),
            _ => char::from_u32(256 + b).unwrap_or('?'),
        };
        bytes_tokens.push(c.to_string());
    }
    bytes_tokens.sort();
    bytes_tokens.dedup();
    let mut gpt2 = vec!["<|endoftext|>".to_string(), "<|im_start|>".to_string()];
    gpt2.extend(bytes_tokens);
    gpt2.extend(["he", "ll", "hell", "Ġw", "or"].map(String::from));
    let n = gpt2.len();
    let mut types = vec![GgufValue::I32(1); n];
    types[0] = GgufValue::I32(3);
    types[1] = GgufValue::I32(3);
    for pre in ["default", "qwen2", "llama-bpe", "smollm"] {
        out.extend(tokenizer_file(
            vec![
                ("tokenizer.ggml.model", GgufValue::String("gpt2".into())),
                ("tokenizer.ggml.pre", GgufValue::String(pre.into())),
                ("tokenizer.ggml.tokens", strings(gpt2.clone())),
                ("tokenizer.ggml.token_type", GgufValue::Array(types.clone())),
                ("tokenizer.ggml.merges", strings(["h e", "l l", "he ll", "Ġ w", "o r"].map(String::from).to_vec())),
                ("tokenizer.ggml.bos_token_id", GgufValue::U32(0)),
                ("tokenizer.ggml.eos_token_id", GgufValue::U32(0)),
                ("tokenizer.ggml.add_bos_token", GgufValue::Bool(true)),
            ],
            scratch,
        ));
    }
    // SentencePiece with byte fallback.
    let mut spm = vec!["<unk>".to_string(), "<s>".to_string(), "</s>".to_string()];
    spm.extend((0..=255u32).map(|b| format!("<0x{b:02X}>")));
    spm.extend(["▁", "▁H", "ello", "▁world", "e", "l", "o", "H"].map(String::from));
    let n = spm.len();
    let mut types = vec![GgufValue::I32(1); n];
    types[0] = GgufValue::I32(2);
    types[1] = GgufValue::I32(3);
    types[2] = GgufValue::I32(3);
    for t in types.iter_mut().skip(3).take(256) {
        *t = GgufValue::I32(6);
    }
    let scores: Vec<GgufValue> = (0..n).map(|i| GgufValue::F32(-(i as f32))).collect();
    out.extend(tokenizer_file(
        vec![
            ("tokenizer.ggml.model", GgufValue::String("llama".into())),
            ("tokenizer.ggml.add_space_prefix", GgufValue::Bool(false)),
            ("tokenizer.ggml.tokens", strings(spm)),
            ("tokenizer.ggml.scores", GgufValue::Array(scores)),
            ("tokenizer.ggml.token_type", GgufValue::Array(types)),
            ("tokenizer.ggml.bos_token_id", GgufValue::U32(1)),
            ("tokenizer.ggml.eos_token_id", GgufValue::U32(2)),
            ("tokenizer.ggml.unknown_token_id", GgufValue::U32(0)),
        ],
        scratch,
    ));
    for model in real_models() {
        if let Some(seed) = cut_tokenizer(&model, 600, scratch) {
            out.push(seed);
        }
    }
    out
}

/// The tokenizer metadata of a real model cut to its first `keep` tokens
/// plus its special tokens and byte tokens.
fn cut_tokenizer(model: &Path, keep: usize, scratch: &Path) -> Option<Vec<u8>> {
    let file = GgufFile::open(model).ok()?;
    let tokens: Vec<&str> = file.get("tokenizer.ggml.tokens")?.as_array()?.iter().filter_map(GgufValue::as_str).collect();
    let specials: Vec<u64> = ["bos", "eos", "unknown", "padding"]
        .iter()
        .filter_map(|k| file.get(&format!("tokenizer.ggml.{k}_token_id")).and_then(GgufValue::as_u64))
        .collect();
    let mut kept: BTreeSet<usize> = (0..keep.min(tokens.len())).collect();
    kept.extend(specials.iter().map(|&i| i as usize).filter(|&i| i < tokens.len()));
    kept.extend(tokens.iter().enumerate().filter(|(_, t)| t.starts_with("<0x") && t.len() == 6).map(|(i, _)| i));
    let renumber: HashMap<usize, u32> = kept.iter().enumerate().map(|(new, &old)| (old, new as u32)).collect();
    let names: BTreeSet<&str> = kept.iter().map(|&i| tokens[i]).collect();
    let mut w = GgufWriter::new();
    for (k, v) in file.metadata() {
        let Some(rest) = k.strip_prefix("tokenizer.") else { continue };
        let v = match rest {
            "ggml.tokens" | "ggml.scores" | "ggml.token_type" => {
                GgufValue::Array(kept.iter().filter_map(|&i| v.as_array().and_then(|a| a.get(i)).cloned()).collect())
            }
            "ggml.merges" => GgufValue::Array(
                v.as_array()?
                    .iter()
                    .filter(|m| {
                        m.as_str()
                            .and_then(|m| m.split_once(' '))
                            .is_some_and(|(a, b)| names.contains(a) && names.contains(b) && names.contains(format!("{a}{b}").as_str()))
                    })
                    .cloned()
                    .collect(),
            ),
            _ if rest.ends_with("_token_id") => match v.as_u64().and_then(|i| renumber.get(&(i as usize))) {
                Some(&new) => GgufValue::U32(new),
                None => continue,
            },
            "chat_template" => continue,
            _ => v.clone(),
        };
        w.add_metadata(k, v);
    }
    write(&w, scratch)
}

/// A metadata value of a random type, or a mutation of `v`.
fn mutate_value(v: &GgufValue, rng: &mut Rng, tokens: usize) -> GgufValue {
    let big = [0u64, 1, tokens as u64, tokens as u64 + 1, u32::MAX as u64, u64::MAX];
    match (v, rng.below(8)) {
        (GgufValue::Array(items), 0) if !items.is_empty() => {
            let mut items = items.clone();
            items.truncate(rng.below(items.len()));
            GgufValue::Array(items)
        }
        (GgufValue::Array(items), 1) if !items.is_empty() => {
            let mut items = items.clone();
            let i = rng.below(items.len());
            items[i] = mutate_value(&items[i], rng, tokens);
            GgufValue::Array(items)
        }
        (GgufValue::Array(items), 2) if !items.is_empty() => {
            let mut items = items.clone();
            let i = rng.below(items.len());
            let j = rng.below(items.len());
            items.swap(i, j);
            items.push(items[j].clone());
            GgufValue::Array(items)
        }
        (GgufValue::String(s), 3) => {
            let cut = rng.below(s.len() + 1);
            GgufValue::String(if s.is_char_boundary(cut) { format!("{} {}", &s[..cut], &s[cut..]) } else { String::new() })
        }
        (GgufValue::String(_), 4) => GgufValue::String(rng.pick(&["", " ", "  ", "a", "<0xZZ>", "▁", "Ġ", "\u{0}"]).to_string()),
        (_, 5) => GgufValue::U64(*rng.pick(&big)),
        (_, 6) => GgufValue::I32(*rng.pick(&[-1, 0, 1, 2, 3, 4, 5, 6, 7, i32::MIN])),
        (_, _) => match rng.below(6) {
            0 => GgufValue::Bool(rng.one_in(2)),
            1 => GgufValue::String("gpt2".into()),
            2 => GgufValue::String("llama".into()),
            3 => GgufValue::F32(f32::NAN),
            4 => GgufValue::Array(Vec::new()),
            _ => GgufValue::U32(*rng.pick(&big) as u32),
        },
    }
}

/// A structure-aware mutation: the file parsed with the project's reader,
/// one metadata value (or tensor) changed, and written back with its writer.
pub fn structured(data: &[u8], rng: &mut Rng, scratch: &Path) -> Option<Vec<u8>> {
    let path = scratch.join("structured.gguf");
    std::fs::write(&path, data).ok()?;
    let file = GgufFile::open(&path).ok()?;
    let tokens = file.get("tokenizer.ggml.tokens").and_then(GgufValue::as_array).map_or(0, <[GgufValue]>::len);
    let keys: Vec<&String> = file.metadata().keys().collect();
    let mut w = GgufWriter::new();
    let victim = if keys.is_empty() { None } else { Some(rng.below(keys.len())) };
    let extra_keys = [
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.add_space_prefix",
        "tokenizer.ggml.add_eos_token",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
        "general.alignment",
        "general.architecture",
        "llama.rope.dimension_count",
        "llama.attention.key_length",
        "llama.rope.scaling.type",
        "llama.rope.scaling.factor",
    ];
    for (i, (k, v)) in file.metadata().iter().enumerate() {
        if Some(i) == victim {
            match rng.below(4) {
                0 => continue,
                _ => w.add_metadata(k, mutate_value(v, rng, tokens)),
            }
        } else {
            w.add_metadata(k, v.clone());
        }
    }
    if rng.one_in(4) {
        let key = *rng.pick(&extra_keys);
        w.add_metadata(key, mutate_value(&GgufValue::U32(0), rng, tokens));
    }
    let mutate_tensor = file.tensors().len() > 0 && rng.one_in(3);
    let which = rng.below(file.tensors().len().max(1));
    for (i, t) in file.tensors().iter().enumerate() {
        let bytes = file.tensor_bytes(&t.name).ok()?.to_vec();
        let mut shape = t.shape();
        if mutate_tensor && i == which && !shape.is_empty() {
            let d = rng.below(shape.len());
            shape[d] = *rng.pick(&[0usize, 1, shape[d] * 2, shape[d] / 2]);
        }
        w.add_tensor(&t.name, &shape, t.ggml_type, bytes);
    }
    drop(file);
    write(&w, scratch)
}
