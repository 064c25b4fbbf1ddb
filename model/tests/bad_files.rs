//! Every bad input file gets a clear error naming the file, never a panic.

use model::gguf::GgmlType;
use model::safetensors::StoredDtype;
use model::{load_model, FormatError, ModelError};
use testkit::*;

fn error_of(path: &std::path::Path) -> String {
    match load_model(path) {
        Ok(_) => panic!("{} loaded although it is broken", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn truncated_safetensors_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(dir.path(), &TINY, &tiny_weights(&TINY, 1), StoredDtype::F32);
    let file = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    let msg = error_of(dir.path());
    assert!(msg.contains("model.safetensors") && msg.contains("truncated"), "{msg}");
}

#[test]
fn absurd_safetensors_header_length_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(dir.path(), &TINY, &tiny_weights(&TINY, 1), StoredDtype::F32);
    let file = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&file, &bytes).unwrap();
    let msg = error_of(dir.path());
    assert!(msg.contains("header claims"), "{msg}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut weights = tiny_weights(&TINY, 1);
    weights.remove("model.layers.1.mlp.up_proj.weight");
    write_hf_dir(dir.path(), &TINY, &weights, StoredDtype::F32);
    let err = load_model(dir.path()).err().expect("must fail");
    assert!(
        matches!(err, ModelError::File(FormatError::MissingTensor { ref name, .. }) if name == "model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );
}

#[test]
fn wrong_shape_is_reported_with_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let mut weights = tiny_weights(&TINY, 1);
    weights.insert("model.layers.0.self_attn.k_proj.weight".into(), model::HostTensor::new(vec![64, 64], vec![0.0; 64 * 64]));
    write_hf_dir(dir.path(), &TINY, &weights, StoredDtype::F32);
    let msg = error_of(dir.path());
    assert!(msg.contains("k_proj") && msg.contains("[64, 64]") && msg.contains("[32, 64]"), "{msg}");
}

#[test]
fn config_without_required_field_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(dir.path(), &TINY, &tiny_weights(&TINY, 1), StoredDtype::F32);
    let mut config = hf_config_json(&TINY);
    config.as_object_mut().unwrap().remove("hidden_size");
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let msg = error_of(dir.path());
    assert!(msg.contains("config.json") && msg.contains("hidden_size"), "{msg}");
}

#[test]
fn absurd_declared_sizes_are_refused_before_anything_is_allocated_for_them() {
    // Every size of config.json at 2^40 (layers, widths, heads, vocabulary):
    // a clear error naming the file, never an allocation of that size.
    for key in
        ["num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size", "num_attention_heads", "num_key_value_heads", "head_dim"]
    {
        let dir = tempfile::tempdir().unwrap();
        write_hf_dir(dir.path(), &TINY, &tiny_weights(&TINY, 1), StoredDtype::F32);
        let mut config = hf_config_json(&TINY);
        config[key] = serde_json::json!(1u64 << 40);
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        let msg = error_of(dir.path());
        assert!(msg.contains(&dir.path().display().to_string()), "{key}: {msg}");
    }
}

#[test]
fn unsupported_architecture_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(dir.path(), &TINY, &tiny_weights(&TINY, 1), StoredDtype::F32);
    let mut config = hf_config_json(&TINY);
    config["model_type"] = "gpt_neox".into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let msg = error_of(dir.path());
    assert!(msg.contains("gpt_neox"), "{msg}");
}

#[test]
fn unsupported_safetensors_dtype_is_refused() {
    let dir = raw_safetensors_dir(br#"{"x":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#);
    let msg = error_of(dir.path());
    assert!(msg.contains("I64") && msg.contains("F32, F16, BF16"), "{msg}");
}

#[test]
fn directory_without_weights_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), hf_config_json(&TINY).to_string()).unwrap();
    let msg = error_of(dir.path());
    assert!(msg.contains("model.safetensors.index.json"), "{msg}");
}

#[test]
fn file_that_is_not_gguf_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.bin");
    std::fs::write(&path, b"PK\x03\x04 not a model").unwrap();
    let msg = error_of(&path);
    assert!(msg.contains("model.bin") && msg.contains("GGUF"), "{msg}");
}

#[test]
fn truncated_gguf_is_refused_at_every_cut() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, &TINY, &tiny_weights(&TINY, 1), GgmlType::F32);
    let bytes = std::fs::read(&path).unwrap();
    let cut_path = dir.path().join("cut.gguf");
    for cut in [4usize, 10, 30, 200, 1000, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&cut_path, &bytes[..cut]).unwrap();
        let msg = error_of(&cut_path);
        assert!(msg.contains("cut.gguf"), "cut at {cut}: {msg}");
    }
}

#[test]
fn gguf_missing_tensor_is_named_in_hugging_face_terms() {
    let dir = tempfile::tempdir().unwrap();
    let mut weights = tiny_weights(&TINY, 1);
    weights.remove("model.layers.0.mlp.gate_proj.weight");
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, &TINY, &weights, GgmlType::F32);
    let msg = error_of(&path);
    assert!(msg.contains("model.layers.0.mlp.gate_proj.weight") && msg.contains("tiny.gguf"), "{msg}");
}

#[test]
fn overlapping_safetensors_tensors_are_refused() {
    // Two tensors over the same 8 bytes: each lies within the file, but they overlap.
    let dir = raw_safetensors_dir(
        br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
    );
    let msg = error_of(dir.path());
    assert!(msg.contains("model.safetensors") && msg.contains("not a valid safetensors file"), "{msg}");
}

/// A checkpoint directory with the tiny config and a `model.safetensors`
/// of the given JSON header followed by 8 zero bytes of data.
fn raw_safetensors_dir(header: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), hf_config_json(&TINY).to_string()).unwrap();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 8]);
    std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
    dir
}
