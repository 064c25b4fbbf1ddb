//! Corrupted GGUF files: every defect gives its own clear error, never a
//! panic or a huge allocation.

use std::path::{Path, PathBuf};

use model::gguf::{GgmlType, GgufError, GgufFile, GgufValue, GgufWriter};

/// Builds raw GGUF bytes field by field.
#[derive(Clone, Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn string(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.string(key).u32(4).u32(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.string(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    fn pad(&mut self, align: usize) -> &mut Self {
        while !self.0.len().is_multiple_of(align) {
            self.0.push(0);
        }
        self
    }
    fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.extend(std::iter::repeat_n(0u8, n));
        self
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Opens `bytes` as a file, expects an error whose message names the file.
fn open_err(bytes: &[u8]) -> GgufError {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bad.gguf", bytes);
    let err = GgufFile::open(&path).expect_err("corrupt file opened");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "message lacks the path: {msg}");
    err
}

/// A valid file: one u32 key, one string key, two F32 tensors.
fn valid_file() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.gguf");
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", GgufValue::String("llama".into()));
    w.add_metadata("llama.block_count", GgufValue::U32(2));
    w.add_metadata("tokenizer.ggml.tokens", GgufValue::Array(vec![GgufValue::String("a".into()), GgufValue::String("bc".into())]));
    w.add_f32_tensor("first", &[2, 4], &[1.0; 8]);
    w.add_f32_tensor("second", &[8], &[2.0; 8]);
    w.write(&path).unwrap();
    std::fs::read(&path).unwrap()
}

#[test]
fn empty_and_short_files_are_truncated() {
    for bytes in [&b""[..], b"GGU", b"GGUF", b"GGUF\x03\x00\x00\x00\x01\x00"] {
        let err = open_err(bytes);
        assert!(matches!(err, GgufError::Truncated { .. }), "{bytes:?}: {err}");
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}

#[test]
fn wrong_magic() {
    let mut bytes = valid_file();
    bytes[..4].copy_from_slice(b"GGML");
    let err = open_err(&bytes);
    assert!(matches!(err, GgufError::BadMagic { found, .. } if &found == b"GGML"), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("\"GGUF\"") && msg.contains("47 47 4d 4c"), "{msg}");
}

#[test]
fn unsupported_versions() {
    for version in [1u32, 4, 0x0300_0000] {
        let mut bytes = valid_file();
        bytes[4..8].copy_from_slice(&version.to_le_bytes());
        let err = open_err(&bytes);
        assert!(matches!(err, GgufError::UnsupportedVersion { found, .. } if found == version), "{err}");
        assert!(err.to_string().contains("expected 2 or 3"), "{err}");
    }
}

#[test]
fn unknown_metadata_value_type() {
    let mut r = Raw::header(3, 0, 1);
    r.string("weird.key").u32(13).u32(0);
    let err = open_err(&r.0);
    assert!(matches!(&err, GgufError::UnknownValueType { key, type_id: 13, .. } if key == "weird.key"), "{err}");

    let mut r = Raw::header(3, 0, 1);
    r.string("weird.array").u32(9).u32(42).u64(1).u32(0);
    let err = open_err(&r.0);
    assert!(matches!(&err, GgufError::UnknownValueType { key, type_id: 42, .. } if key == "weird.array"), "{err}");
}

#[test]
fn truncated_metadata() {
    // Key length says 100 bytes, file ends after 8: rejected as a length
    // that cannot fit in the rest of the file.
    let mut r = Raw::header(3, 0, 1);
    r.u64(100).bytes(b"abcdefgh");
    let err = open_err(&r.0);
    assert!(matches!(err, GgufError::ImplausibleCount { count: 100, remaining: 8, .. }), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");

    // Value missing entirely.
    let mut r = Raw::header(3, 0, 1);
    r.string("some.key").u32(10).bytes(&[1, 2, 3]);
    let err = open_err(&r.0);
    assert!(matches!(&err, GgufError::Truncated { what, needed: 8, .. } if what.contains("some.key")), "{err}");
}

#[test]
fn truncated_tensor_infos() {
    let mut r = Raw::header(3, 1, 0);
    r.string("w").u32(2).u64(4).zeros(8);
    let err = open_err(&r.0);
    assert!(matches!(&err, GgufError::Truncated { what, .. } if what.contains("\"w\"")), "{err}");
}

#[test]
fn every_prefix_fails_cleanly() {
    let bytes = valid_file();
    let dir = tempfile::tempdir().unwrap();
    for len in 0..bytes.len() {
        let path = write(dir.path(), "prefix.gguf", &bytes[..len]);
        let err = GgufFile::open(&path).expect_err("a truncated file opened");
        assert!(
            matches!(err, GgufError::Truncated { .. } | GgufError::ImplausibleCount { .. } | GgufError::TensorOutOfBounds { .. }),
            "prefix of {len} bytes: {err}"
        );
    }
    let path = write(dir.path(), "full.gguf", &bytes);
    GgufFile::open(&path).unwrap();
}

#[test]
fn corrupted_bytes_never_panic() {
    let bytes = valid_file();
    let dir = tempfile::tempdir().unwrap();
    for at in 0..bytes.len() {
        for v in [0xFFu8, 0x80, 0x01] {
            let mut b = bytes.clone();
            b[at] ^= v;
            let path = write(dir.path(), "flip.gguf", &b);
            if let Ok(f) = GgufFile::open(&path) {
                for t in f.tensors() {
                    let _ = f.tensor_bytes(&t.name);
                    let _ = f.tensor_f32(&t.name);
                }
            }
        }
    }
}

#[test]
fn tensor_data_past_end_of_file() {
    let bytes = valid_file();
    // Drop the last bytes of "second" (the file ends with its 32 data bytes).
    let err = open_err(&bytes[..bytes.len() - 4]);
    assert!(matches!(&err, GgufError::TensorOutOfBounds { tensor, size: 32, .. } if tensor == "second"), "{err}");
}

#[test]
fn unknown_tensor_type() {
    let mut r = Raw::header(3, 1, 0);
    r.tensor("blk.0.ffn_up.weight", &[32], 99, 0).pad(32).zeros(64);
    let err = open_err(&r.0);
    assert!(matches!(&err, GgufError::UnsupportedTensorType { tensor, type_id: 99, .. } if tensor == "blk.0.ffn_up.weight"), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("99") && msg.contains("Q4_K") && msg.contains("BF16"), "{msg}");
}

#[test]
fn known_layout_without_dequantizer() {
    // IQ4_NL (id 20): 32 elements in 18 bytes. Opens, raw bytes readable.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("iq", &[32], 20, 0).pad(32).zeros(18).pad(32);
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "iq.gguf", &r.0);
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensor_info("iq").unwrap().ggml_type, GgmlType::Other(20));
    assert_eq!(f.tensor_bytes("iq").unwrap().len(), 18);
    let err = f.tensor_f32("iq").unwrap_err();
    assert!(matches!(err, GgufError::UnsupportedTensorType { type_id: 20, .. }), "{err}");
    assert!(err.to_string().contains("IQ4_NL"), "{err}");
}

#[test]
fn tensor_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "ok.gguf", &valid_file());
    let f = GgufFile::open(&path).unwrap();
    for err in [f.tensor_bytes("missing").unwrap_err(), f.tensor_f32("missing").unwrap_err()] {
        assert!(matches!(&err, GgufError::TensorNotFound { name, count: 2, .. } if name == "missing"), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    }
    assert!(f.tensor_info("missing").is_none());
}

#[test]
fn absurd_counts_are_rejected_before_allocating() {
    let huge_tensors = Raw::header(3, 1 << 62, 0);
    let err = open_err(&huge_tensors.0);
    assert!(matches!(&err, GgufError::ImplausibleCount { what, .. } if what == "tensor count"), "{err}");

    let huge_kv = Raw::header(3, 0, 1 << 62);
    let err = open_err(&huge_kv.0);
    assert!(matches!(&err, GgufError::ImplausibleCount { what, .. } if what.contains("key-value count")), "{err}");

    let mut huge_key = Raw::header(3, 0, 1);
    huge_key.u64(1 << 60).zeros(16);
    let err = open_err(&huge_key.0);
    assert!(matches!(err, GgufError::ImplausibleCount { count, .. } if count == 1 << 60), "{err}");

    let mut huge_string = Raw::header(3, 0, 1);
    huge_string.string("s").u32(8).u64(1 << 60).zeros(16);
    let err = open_err(&huge_string.0);
    assert!(matches!(err, GgufError::ImplausibleCount { count, .. } if count == 1 << 60), "{err}");

    let mut huge_array = Raw::header(3, 0, 1);
    huge_array.string("a").u32(9).u32(10).u64(1 << 60).zeros(64);
    let err = open_err(&huge_array.0);
    assert!(matches!(err, GgufError::ImplausibleCount { count, .. } if count == 1 << 60), "{err}");

    // Array of u64 whose length fits bytes-wise only at 1 byte per element.
    let mut long_array = Raw::header(3, 0, 1);
    long_array.string("a").u32(9).u32(10).u64(16).zeros(64);
    let err = open_err(&long_array.0);
    assert!(matches!(err, GgufError::ImplausibleCount { count: 16, min_bytes: 128, .. }), "{err}");

    let mut many_dims = Raw::header(3, 1, 0);
    many_dims.tensor("t", &[1, 1, 1, 1, 1], 0, 0).pad(32).zeros(32);
    let err = open_err(&many_dims.0);
    assert!(matches!(&err, GgufError::TooManyDims { tensor, n_dims: 5, .. } if tensor == "t"), "{err}");

    let mut absurd_dims = Raw::header(3, 1, 0);
    absurd_dims.string("t").u32(u32::MAX).zeros(64);
    let err = open_err(&absurd_dims.0);
    assert!(matches!(err, GgufError::TooManyDims { n_dims: u32::MAX, .. }), "{err}");
}

#[test]
fn tensor_sizes_that_overflow() {
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[1 << 40, 1 << 40], 0, 0).pad(32).zeros(32);
    let err = open_err(&r.0);
    assert!(matches!(err, GgufError::SizeOverflow { .. }), "{err}");

    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[1 << 62], 0, 0).pad(32).zeros(32);
    let err = open_err(&r.0);
    assert!(matches!(err, GgufError::SizeOverflow { .. }), "{err}");
}

#[test]
fn tensor_offsets_overflowing_or_past_end() {
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[8], 0, !31u64).pad(32).zeros(32);
    let err = open_err(&r.0);
    assert!(matches!(&err, GgufError::TensorOutOfBounds { tensor, .. } if tensor == "t"), "{err}");

    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[8], 0, 64).pad(32).zeros(32);
    let err = open_err(&r.0);
    assert!(matches!(err, GgufError::TensorOutOfBounds { offset: 64, size: 32, data_len: 32, .. }), "{err}");
}

#[test]
fn misaligned_tensor_offset() {
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[4], 0, 4).pad(32).zeros(64);
    let err = open_err(&r.0);
    assert!(matches!(&err, GgufError::Misaligned { tensor, offset: 4, alignment: 32, .. } if tensor == "t"), "{err}");

    let mut r = Raw::header(3, 1, 1);
    r.kv_u32("general.alignment", 64).tensor("t", &[4], 0, 32).pad(64).zeros(128);
    let err = open_err(&r.0);
    assert!(matches!(err, GgufError::Misaligned { offset: 32, alignment: 64, .. }), "{err}");
}

#[test]
fn bad_alignment_value() {
    for a in [0u32, 3, 48] {
        let mut r = Raw::header(3, 0, 1);
        r.kv_u32("general.alignment", a);
        let err = open_err(&r.0);
        assert!(matches!(err, GgufError::BadAlignment { .. }), "{a}: {err}");
    }
    let mut r = Raw::header(3, 0, 1);
    r.string("general.alignment").u32(8).string("32");
    let err = open_err(&r.0);
    assert!(matches!(err, GgufError::BadAlignment { .. }), "{err}");
}

#[test]
fn element_count_not_a_block_multiple() {
    let mut r = Raw::header(3, 1, 0);
    r.tensor("q", &[16, 2], GgmlType::Q8_0.id(), 0).pad(32).zeros(64);
    let err = open_err(&r.0);
    assert!(matches!(&err, GgufError::NotBlockMultiple { tensor, dim0: 16, block_size: 32, .. } if tensor == "q"), "{err}");
}

#[test]
fn duplicates() {
    let mut r = Raw::header(3, 0, 2);
    r.kv_u32("k", 1).kv_u32("k", 2);
    let err = open_err(&r.0);
    assert!(matches!(&err, GgufError::Duplicate { name, .. } if name == "k"), "{err}");

    let mut r = Raw::header(3, 2, 0);
    r.tensor("t", &[8], 0, 0).tensor("t", &[8], 0, 32).pad(32).zeros(64);
    let err = open_err(&r.0);
    assert!(matches!(&err, GgufError::Duplicate { name, .. } if name == "t"), "{err}");
}

#[test]
fn invalid_utf8() {
    let mut r = Raw::header(3, 0, 1);
    r.u64(2).bytes(&[0xC3, 0x28]).u32(0).bytes(&[0]);
    let err = open_err(&r.0);
    assert!(matches!(err, GgufError::InvalidUtf8 { .. }), "{err}");
}

#[test]
fn deeply_nested_arrays() {
    let mut r = Raw::header(3, 0, 1);
    r.string("deep").u32(9);
    for _ in 0..100 {
        r.u32(9).u64(1);
    }
    r.u32(0).u64(0);
    let err = open_err(&r.0);
    assert!(matches!(&err, GgufError::NestingTooDeep { key, .. } if key == "deep"), "{err}");
}
