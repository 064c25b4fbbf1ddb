//! Tokenizer tests against the real SmolLM2-135M-Instruct GGUF (path in
//! `SUBPRUNE_SMOLLM2_GGUF`, set by `cargo xtask test`), plus error cases on
//! small GGUF files written here.

use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

use model::gguf::GgufFile;
use model::tokenizer::{Tokenizer, TokenizerError};

fn smollm2() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = testkit::smollm2_gguf();
        let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("cannot open {}: {e:?}", path.display()));
        Tokenizer::from_gguf(&file).unwrap_or_else(|e| panic!("{e}"))
    })
}

const ROUND_TRIP_TEXTS: &[&str] = &[
    "",
    "Hello, world!",
    "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "class Foo:\n\tdef __init__(self):\n\t\tself.x = 12345\t# tab\n\n\n",
    "12345 and 3.14159 and 1,000,000",
    "naïve café 日本語",
    "emoji: 🎉🚀 👩‍👩‍👧 and ½ ² ٣",
    "<|im_start|>user\nWrite hello world in Python<|im_end|>\n<|im_start|>assistant\n",
    "trailing spaces   \n  \t leading",
];

#[test]
fn round_trip() {
    let tok = smollm2();
    for text in ROUND_TRIP_TEXTS {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), *text, "ids {ids:?}");
    }
}

#[test]
fn digits_are_split_individually() {
    let tok = smollm2();
    let ids = tok.encode("12345", false).unwrap();
    assert_eq!(ids.len(), 5, "{ids:?}");
    for (id, digit) in ids.iter().zip(["1", "2", "3", "4", "5"]) {
        assert_eq!(tok.decode(&[*id]).unwrap(), digit);
    }
    let ids = tok.encode("year 2024", false).unwrap();
    let pieces: Vec<String> = ids.iter().map(|&i| tok.decode(&[i]).unwrap()).collect();
    assert_eq!(pieces, ["year", " ", "2", "0", "2", "4"]);
}

/// Expected ids from transformers 5.24.0 / tokenizers 0.23.3
/// (`AutoTokenizer.from_pretrained(dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")`,
/// `encode(text, add_special_tokens=False)`), in the throwaway venv /tmp/refvenv.
const REFERENCE_IDS: &[(&str, &[u32])] = &[
    ("Hello world 12345", &[19556, 905, 216, 33, 34, 35, 36, 37]),
    ("x = 3.14159", &[104, 446, 216, 35, 30, 33, 36, 33, 37, 41]),
    (
        " He had a guest @-@ starring role on the television series The Bill in 2000 .",
        &[909, 761, 253, 16204, 3394, 29, 48, 45608, 1791, 335, 260, 8552, 3086, 378, 8593, 281, 216, 34, 32, 32, 32, 1673],
    ),
    ("def f(x):\n\treturn x  # ok\n", &[1604, 275, 24, 104, 727, 198, 197, 5406, 1792, 216, 907, 10907, 198]),
    (
        "class Foo:\n    def bar(self):\n        return [i ** 2 for i in range(10)]\n",
        &[2064, 426, 568, 42, 472, 753, 2753, 24, 771, 727, 448, 1003, 933, 89, 1903, 216, 34, 327, 2056, 281, 1845, 24, 33, 32, 8307, 198],
    ),
    ("naïve café 日本語 🎉", &[3546, 46494, 37366, 17097, 241, 115, 40993, 179, 120, 248, 15107, 232, 227]),
    ("<|im_start|>user\nWrite a Python function.<|im_end|>\n", &[1, 4093, 198, 19161, 253, 5905, 1517, 30, 2, 198]),
    ("don't we're I'll", &[12420, 982, 392, 2316, 339, 3060]),
    // transformers' GGUF converter omits the Digits(individual_digits) step that
    // llama.cpp's "smollm" pre-tokenizer has; for non-ASCII numerals this changes
    // the ids (plain transformers gives [16738, 3351, 127, 16936, 113]). These ids
    // are transformers' with its pre-tokenizer set to
    // Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False)],
    // as in SmolLM2's own tokenizer.json and llama.cpp.
    ("½ ² ٣", &[16738, 216, 19133, 216, 164, 113]),
];

#[test]
fn ids_match_reference() {
    let tok = smollm2();
    for (text, expected) in REFERENCE_IDS {
        assert_eq!(tok.encode(text, false).unwrap(), *expected, "text {text:?}");
    }
}

#[test]
fn special_tokens_and_settings() {
    let tok = smollm2();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert!(!tok.add_bos(), "SmolLM2's GGUF says tokenizer.ggml.add_bos_token = false");
    assert_eq!(tok.encode("<|im_start|>", false).unwrap(), [1]);
    assert_eq!(tok.encode("<|endoftext|>", false).unwrap(), [0]);
    let text = "hi <|im_end|>";
    assert_eq!(tok.encode(text, true).unwrap(), tok.encode(text, false).unwrap());
    assert!(tok.decode(&[49152]).is_err());
}

#[test]
fn fingerprint_is_stable() {
    let a = smollm2().fingerprint();
    let file = GgufFile::open(&testkit::smollm2_gguf()).unwrap();
    let b = Tokenizer::from_gguf(&file).unwrap().fingerprint();
    assert_eq!(a, b);
    assert!(a.starts_with("sha256:") && a.len() == 7 + 64, "{a}");
}

#[test]
fn tokenizer_json_reloads_with_same_ids() {
    let tok = smollm2();
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("tokenizer.json");
    std::fs::write(&json_path, tok.to_tokenizer_json().unwrap()).unwrap();

    let plain = Tokenizer::from_file(&json_path).unwrap();
    assert_eq!(plain.vocab_size(), tok.vocab_size());
    assert_eq!(plain.fingerprint().len(), tok.fingerprint().len());
    for text in ROUND_TRIP_TEXTS {
        assert_eq!(plain.encode(text, false).unwrap(), tok.encode(text, false).unwrap());
    }

    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}, "add_bos_token": true}"#,
    )
    .unwrap();
    let with_bos = Tokenizer::from_file(&json_path).unwrap();
    assert_eq!(with_bos.bos_id(), Some(1));
    assert_eq!(with_bos.eos_id(), Some(2));
    assert!(with_bos.add_bos());
    assert_eq!(with_bos.encode("12", true).unwrap(), [1, 33, 34]);
    assert_eq!(with_bos.encode("12", false).unwrap(), [33, 34]);
}

#[test]
fn missing_tokenizer_json_names_the_file() {
    let err = Tokenizer::from_file(Path::new("/nonexistent/tokenizer.json")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/tokenizer.json"), "{err}");
}

/// A GGUF metadata value for the small files written below.
enum Meta {
    Str(&'static str),
    Strs(Vec<&'static str>),
    I32s(Vec<i32>),
    U32(u32),
    Bool(bool),
}

/// Writes a GGUF v3 file with the given metadata and no tensors.
fn write_gguf(path: &Path, kvs: &[(&str, Meta)]) {
    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend(0u64.to_le_bytes());
    out.extend((kvs.len() as u64).to_le_bytes());
    for (key, value) in kvs {
        put_str(&mut out, key);
        match value {
            Meta::Str(s) => {
                out.extend(8u32.to_le_bytes());
                put_str(&mut out, s);
            }
            Meta::Strs(v) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((v.len() as u64).to_le_bytes());
                for s in v {
                    put_str(&mut out, s);
                }
            }
            Meta::I32s(v) => {
                out.extend(9u32.to_le_bytes());
                out.extend(5u32.to_le_bytes());
                out.extend((v.len() as u64).to_le_bytes());
                for x in v {
                    out.extend(x.to_le_bytes());
                }
            }
            Meta::U32(x) => {
                out.extend(4u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Meta::Bool(b) => {
                out.extend(7u32.to_le_bytes());
                out.push(u8::from(*b));
            }
        }
    }
    while out.len() % 32 != 0 {
        out.push(0);
    }
    std::fs::File::create(path).unwrap().write_all(&out).unwrap();
}

/// A tiny byte-level BPE vocabulary: "<s>" (control), "a", "b", "ab", "Ġ", "Ġab".
fn tiny_kvs(model: &'static str, pre: &'static str) -> Vec<(&'static str, Meta)> {
    vec![
        ("tokenizer.ggml.model", Meta::Str(model)),
        ("tokenizer.ggml.pre", Meta::Str(pre)),
        ("tokenizer.ggml.tokens", Meta::Strs(vec!["<s>", "a", "b", "ab", "Ġ", "Ġab"])),
        ("tokenizer.ggml.token_type", Meta::I32s(vec![3, 1, 1, 1, 1, 1])),
        ("tokenizer.ggml.merges", Meta::Strs(vec!["a b", "Ġ ab"])),
        ("tokenizer.ggml.bos_token_id", Meta::U32(0)),
        ("tokenizer.ggml.add_bos_token", Meta::Bool(true)),
    ]
}

fn tiny(kvs: &[(&str, Meta)]) -> Result<Tokenizer, TokenizerError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, kvs);
    let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{e:?}"));
    Tokenizer::from_gguf(&file)
}

#[test]
fn tiny_gpt2_vocab_with_bos() {
    let tok = tiny(&tiny_kvs("gpt2", "gpt2")).unwrap();
    assert_eq!(tok.vocab_size(), 6);
    assert!(tok.add_bos());
    assert_eq!(tok.encode("ab ab", false).unwrap(), [3, 5]);
    assert_eq!(tok.encode("ab ab", true).unwrap(), [0, 3, 5]);
    assert_eq!(tok.encode("<s>ab", false).unwrap(), [0, 3]);
    assert_eq!(tok.decode(&[3, 5]).unwrap(), "ab ab");

    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("tokenizer.json");
    std::fs::write(&json_path, tok.to_tokenizer_json().unwrap()).unwrap();
    let reloaded = Tokenizer::from_file(&json_path).unwrap();
    assert_eq!(reloaded.bos_id(), Some(0), "BOS found from the exported template");
    assert!(reloaded.add_bos());
    assert_eq!(reloaded.encode("ab ab", true).unwrap(), [0, 3, 5]);
    assert_eq!(reloaded.encode("ab ab", false).unwrap(), [3, 5]);
}

#[test]
fn each_pre_tokenizer_family_builds() {
    for pre in ["default", "gpt2", "smollm", "starcoder", "llama-bpe", "llama3", "qwen2"] {
        let tok = tiny(&tiny_kvs("gpt2", pre)).unwrap_or_else(|e| panic!("{pre}: {e}"));
        assert_eq!(tok.encode("ab ab", false).unwrap(), [3, 5], "pre {pre}");
        assert_eq!(tok.decode(&[0, 3, 5]).unwrap(), "<s>ab ab", "pre {pre}");
    }
}

#[test]
fn sentencepiece_is_reported_unsupported() {
    let err = tiny(&tiny_kvs("llama", "default")).unwrap_err();
    assert!(matches!(err, TokenizerError::Unsupported { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("tiny.gguf") && msg.contains("llama"), "{msg}");
}

#[test]
fn unknown_pre_tokenizer_lists_known_ones() {
    let err = tiny(&tiny_kvs("gpt2", "no-such-pre")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TokenizerError::UnknownPreTokenizer { .. }), "{err:?}");
    assert!(msg.contains("no-such-pre") && msg.contains("smollm") && msg.contains("llama-bpe"), "{msg}");
}

#[test]
fn missing_tokens_key_is_named() {
    let kvs: Vec<_> = tiny_kvs("gpt2", "gpt2").into_iter().filter(|(k, _)| *k != "tokenizer.ggml.tokens").collect();
    let msg = tiny(&kvs).unwrap_err().to_string();
    assert!(msg.contains("tokenizer.ggml.tokens"), "{msg}");
}
