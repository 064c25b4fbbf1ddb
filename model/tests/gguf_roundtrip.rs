//! Writer -> reader round trips for GGUF files.

use std::collections::BTreeMap;

use model::gguf::quantize::{quantize_q4_0, quantize_q8_0};
use model::gguf::{dequantize, GgmlType, GgufError, GgufFile, GgufValue, GgufWriter};

fn all_kinds_metadata() -> Vec<(&'static str, GgufValue)> {
    vec![
        ("general.architecture", GgufValue::String("llama".into())),
        ("test.u8", GgufValue::U8(200)),
        ("test.i8", GgufValue::I8(-100)),
        ("test.u16", GgufValue::U16(60000)),
        ("test.i16", GgufValue::I16(-30000)),
        ("test.u32", GgufValue::U32(4_000_000_000)),
        ("test.i32", GgufValue::I32(-2_000_000_000)),
        ("test.u64", GgufValue::U64(u64::MAX)),
        ("test.i64", GgufValue::I64(i64::MIN)),
        ("test.f32", GgufValue::F32(1e-5)),
        ("test.f64", GgufValue::F64(-2.5e300)),
        ("test.bool", GgufValue::Bool(true)),
        ("test.unicode", GgufValue::String("héllo ▁wörld 🦀".into())),
        (
            "tokenizer.ggml.tokens",
            GgufValue::Array(vec![GgufValue::String("<s>".into()), GgufValue::String("".into()), GgufValue::String("Ġthe".into())]),
        ),
        ("tokenizer.ggml.scores", GgufValue::Array(vec![GgufValue::F32(0.0), GgufValue::F32(-1.5)])),
        ("test.empty", GgufValue::Array(vec![])),
        (
            "test.nested",
            GgufValue::Array(vec![
                GgufValue::Array(vec![GgufValue::I32(1), GgufValue::I32(2)]),
                GgufValue::Array(vec![GgufValue::String("x".into())]),
            ]),
        ),
    ]
}

fn ramp(n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * scale).collect()
}

#[test]
fn round_trip_metadata_and_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");

    let mut w = GgufWriter::new();
    for (k, v) in all_kinds_metadata() {
        w.add_metadata(k, v);
    }
    let f32_vals = ramp(6, 0.25);
    w.add_f32_tensor("token_embd.weight", &[2, 3], &f32_vals);
    let f16_bytes: Vec<u8> = [0x3C00u16, 0xC000, 0x3800, 0x0000].iter().flat_map(|v| v.to_le_bytes()).collect();
    w.add_tensor("f16", &[4], GgmlType::F16, f16_bytes.clone());
    let bf16_bytes: Vec<u8> = [0x3F80u16, 0xC040].iter().flat_map(|v| v.to_le_bytes()).collect();
    w.add_tensor("bf16", &[1, 2], GgmlType::BF16, bf16_bytes.clone());
    let q8_src = ramp(2 * 64, 0.01);
    let q8 = quantize_q8_0(&q8_src);
    w.add_tensor("blk.0.attn_q.weight", &[2, 64], GgmlType::Q8_0, q8.clone());
    let q4_src = ramp(32, 0.1);
    let q4 = quantize_q4_0(&q4_src);
    w.add_tensor("q4", &[32], GgmlType::Q4_0, q4.clone());
    let q6: Vec<u8> = (0..210u32).map(|i| (i * 7 % 251) as u8).collect();
    w.add_tensor("q6k", &[1, 256], GgmlType::Q6K, q6.clone());
    let q2: Vec<u8> = vec![0x11; 84];
    w.add_tensor("q2k", &[256], GgmlType::Q2K, q2.clone());
    w.add_tensor("empty", &[0, 32], GgmlType::Q8_0, vec![]);
    w.write(&path).unwrap();

    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.path(), path.as_path());
    let want: BTreeMap<String, GgufValue> = all_kinds_metadata().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    assert_eq!(f.metadata(), &want);
    assert_eq!(f.get("test.u32").and_then(GgufValue::as_u64), Some(4_000_000_000));
    assert_eq!(f.get("test.i8").and_then(GgufValue::as_i64), Some(-100));
    assert_eq!(f.get("test.i8").and_then(GgufValue::as_u64), None);
    assert_eq!(f.get("test.u16").and_then(GgufValue::as_f64), Some(60000.0));
    assert_eq!(f.get("test.f32").and_then(GgufValue::as_f64), Some(1e-5f32 as f64));
    assert_eq!(f.get("test.bool").and_then(GgufValue::as_bool), Some(true));
    assert_eq!(f.get("general.architecture").and_then(GgufValue::as_str), Some("llama"));
    assert_eq!(f.get("tokenizer.ggml.tokens").and_then(GgufValue::as_array).map(<[_]>::len), Some(3));

    let names: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["token_embd.weight", "f16", "bf16", "blk.0.attn_q.weight", "q4", "q6k", "q2k", "empty"]);
    for t in f.tensors() {
        assert_eq!(t.offset % 32, 0, "{} offset {}", t.name, t.offset);
    }

    let emb = f.tensor_info("token_embd.weight").unwrap();
    assert_eq!(emb.dims, vec![3, 2]);
    assert_eq!(emb.shape(), vec![2, 3]);
    assert_eq!(emb.n_elements(), 6);
    assert_eq!(emb.n_bytes(), Some(24));
    assert_eq!(emb.ggml_type, GgmlType::F32);
    assert_eq!(f.tensor_f32("token_embd.weight").unwrap(), f32_vals);

    assert_eq!(f.tensor_bytes("f16").unwrap(), f16_bytes.as_slice());
    assert_eq!(f.tensor_f32("f16").unwrap(), vec![1.0, -2.0, 0.5, 0.0]);
    assert_eq!(f.tensor_bytes("bf16").unwrap(), bf16_bytes.as_slice());
    assert_eq!(f.tensor_f32("bf16").unwrap(), vec![1.0, -3.0]);
    assert_eq!(f.tensor_info("bf16").unwrap().shape(), vec![1, 2]);

    assert_eq!(f.tensor_bytes("blk.0.attn_q.weight").unwrap(), q8.as_slice());
    assert_eq!(f.tensor_info("blk.0.attn_q.weight").unwrap().shape(), vec![2, 64]);
    assert_eq!(f.tensor_f32("blk.0.attn_q.weight").unwrap(), dequantize(GgmlType::Q8_0, &q8, 128).unwrap());
    assert_eq!(f.tensor_bytes("q4").unwrap(), q4.as_slice());
    assert_eq!(f.tensor_f32("q4").unwrap(), dequantize(GgmlType::Q4_0, &q4, 32).unwrap());
    assert_eq!(f.tensor_bytes("q6k").unwrap(), q6.as_slice());
    assert_eq!(f.tensor_f32("q6k").unwrap().len(), 256);

    // Q2_K has a known layout but no dequantizer: raw bytes only.
    assert_eq!(f.tensor_bytes("q2k").unwrap(), q2.as_slice());
    let err = f.tensor_f32("q2k").unwrap_err();
    assert!(matches!(err, GgufError::UnsupportedTensorType { type_id: 10, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("q2k") && msg.contains("Q2_K") && msg.contains("Q6_K"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");

    assert_eq!(f.tensor_info("empty").unwrap().n_elements(), 0);
    assert_eq!(f.tensor_bytes("empty").unwrap(), &[] as &[u8]);
    assert_eq!(f.tensor_f32("empty").unwrap(), Vec::<f32>::new());
}

#[test]
fn custom_alignment_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aligned.gguf");
    let mut w = GgufWriter::new();
    w.add_metadata("general.alignment", GgufValue::U32(64));
    w.add_f32_tensor("a", &[3], &[1.0, 2.0, 3.0]);
    w.add_f32_tensor("b", &[2], &[4.0, 5.0]);
    w.write(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.tensor_info("b").unwrap().offset, 64);
    assert_eq!(f.tensor_f32("a").unwrap(), vec![1.0, 2.0, 3.0]);
    assert_eq!(f.tensor_f32("b").unwrap(), vec![4.0, 5.0]);
}

#[test]
fn version_2_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.gguf");
    let mut w = GgufWriter::new();
    w.add_metadata("k", GgufValue::String("v".into()));
    w.add_f32_tensor("t", &[2], &[1.0, -1.0]);
    w.write(&path).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version(), 2);
    assert_eq!(f.tensor_f32("t").unwrap(), vec![1.0, -1.0]);
}

#[test]
fn writer_replaces_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.gguf");
    let mut w = GgufWriter::new();
    w.add_metadata("k", GgufValue::U8(1));
    w.add_metadata("k", GgufValue::U8(2));
    w.add_f32_tensor("t", &[1], &[1.0]);
    w.add_f32_tensor("t", &[2], &[3.0, 4.0]);
    w.write(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.metadata().len(), 1);
    assert_eq!(f.get("k"), Some(&GgufValue::U8(2)));
    assert_eq!(f.tensors().len(), 1);
    assert_eq!(f.tensor_f32("t").unwrap(), vec![3.0, 4.0]);

    let mut bad = GgufWriter::new();
    bad.add_f32_tensor("t", &[3], &[1.0, 2.0]);
    let err = bad.write(&dir.path().join("bad.gguf")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);

    let mut mixed = GgufWriter::new();
    mixed.add_metadata("m", GgufValue::Array(vec![GgufValue::U8(1), GgufValue::I8(1)]));
    let err = mixed.write(&dir.path().join("mixed.gguf")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn large_vocabulary_parses_quickly() {
    // The size of SmolLM2's tokenizer metadata: 49152 tokens, ~49k merges.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vocab.gguf");
    let mut w = GgufWriter::new();
    let tokens = (0..49152).map(|i| GgufValue::String(format!("tok{i}"))).collect();
    let merges = (0..48900).map(|i| GgufValue::String(format!("a{i} b{i}"))).collect();
    let types = (0..49152).map(|i| GgufValue::I32(i % 6)).collect();
    w.add_metadata("tokenizer.ggml.tokens", GgufValue::Array(tokens));
    w.add_metadata("tokenizer.ggml.merges", GgufValue::Array(merges));
    w.add_metadata("tokenizer.ggml.token_type", GgufValue::Array(types));
    w.add_f32_tensor("x", &[1], &[0.0]);
    w.write(&path).unwrap();
    let start = std::time::Instant::now();
    let f = GgufFile::open(&path).unwrap();
    let elapsed = start.elapsed();
    let tokens = f.get("tokenizer.ggml.tokens").and_then(GgufValue::as_array).unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(tokens[49151].as_str(), Some("tok49151"));
    assert!(elapsed.as_secs_f64() < 1.0, "open took {elapsed:?}");
}
