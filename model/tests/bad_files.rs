//! Every bad input file gets a clear error naming the file, never a panic.

use model::gguf::GgmlType;
use model::safetensors::StoredDtype;
use model::{load_model, FormatError, HostTensor, ModelError};
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

/// Rewrites `dir`'s model.safetensors with `name` in the sparse format:
/// keep bits `keep` (one f32 per byte, written as U8) and `values`, with
/// `declared` (name and [rows, cols]) as the sparse matrices it declares.
fn write_sparse(
    dir: &std::path::Path,
    weights: &std::collections::BTreeMap<String, HostTensor>,
    name: &str,
    keep: HostTensor,
    values: HostTensor,
    declared: &[(&str, [usize; 2])],
) {
    use model::safetensors::{write_file, TensorToWrite};
    let (keep_name, values_name) = (format!("{name}.keep"), format!("{name}.values"));
    let mut tensors: Vec<TensorToWrite<'_>> = weights
        .iter()
        .filter(|(n, _)| n.as_str() != name)
        .map(|(n, t)| TensorToWrite { name: n, dtype: StoredDtype::F32, tensor: t })
        .collect();
    tensors.push(TensorToWrite { name: &keep_name, dtype: StoredDtype::U8, tensor: &keep });
    tensors.push(TensorToWrite { name: &values_name, dtype: StoredDtype::F32, tensor: &values });
    let mut metadata = std::collections::BTreeMap::new();
    if !declared.is_empty() {
        let shapes = declared.iter().map(|(n, shape)| (n.to_string(), *shape)).collect();
        metadata.insert(model::sparse::METADATA_KEY.to_string(), model::sparse::metadata_value(&shapes));
    }
    write_file(&dir.join("model.safetensors"), &tensors, &metadata).unwrap();
}

#[test]
fn sparse_matrices_that_do_not_add_up_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_weights(&TINY, 3);
    write_hf_dir(dir.path(), &TINY, &weights, StoredDtype::F32);
    let name = "model.layers.0.self_attn.q_proj.weight";
    let (rows, cols) = (weights[name].shape[0], weights[name].shape[1]);
    // Row 0 keeps its first four columns of the first eight; every other weight is kept.
    let mut keep = vec![255.0f32; rows * cols / 8];
    keep[0] = 15.0;
    let kept: Vec<f32> = weights[name].data.iter().enumerate().filter(|(i, _)| *i >= 8 || *i < 4).map(|(_, &v)| v).collect();
    let keep_tensor = || HostTensor::new(vec![rows, cols / 8], keep.clone());
    let values = |n: usize| HostTensor::new(vec![n], kept[..n].to_vec());

    write_sparse(dir.path(), &weights, name, keep_tensor(), values(kept.len()), &[(name, [rows, cols])]);
    let loaded = load_model(dir.path()).unwrap();
    let mut expected = weights[name].data.clone();
    expected[4..8].fill(0.0);
    assert_eq!(loaded.weights.load(name).unwrap().data, expected);

    // One value short of the keep bits: refused when the matrix is read.
    write_sparse(dir.path(), &weights, name, keep_tensor(), values(kept.len() - 1), &[(name, [rows, cols])]);
    let msg = load_model(dir.path()).unwrap().weights.load(name).unwrap_err().to_string();
    assert!(msg.contains(&format!("keeps {} values but `{name}.values` holds {}", kept.len(), kept.len() - 1)), "{msg}");
    // Keep bits of the wrong shape, a declared matrix without its tensors, and undeclared U8 tensors.
    write_sparse(
        dir.path(),
        &weights,
        name,
        HostTensor::new(vec![rows, 1], vec![255.0; rows]),
        values(kept.len()),
        &[(name, [rows, cols])],
    );
    assert!(error_of(dir.path()).contains(&format!("expected U8 [{rows}, {}]", cols / 8)));
    let other = "model.layers.1.mlp.up_proj.weight";
    write_sparse(dir.path(), &weights, name, keep_tensor(), values(kept.len()), &[(name, [rows, cols]), (other, [4, 8])]);
    assert!(error_of(dir.path()).contains("declares `model.layers.1.mlp.up_proj.weight` sparse"));
    write_sparse(dir.path(), &weights, name, keep_tensor(), values(kept.len()), &[]);
    assert!(error_of(dir.path()).contains("has dtype U8"));
}
