//! A tiny random Llama written as safetensors (f32, bf16) and as GGUF (F32,
//! Q8_0) through the user-facing loaders: logits agree with each other and
//! with a naive f64 forward.

use model::gguf::GgmlType;
use model::safetensors::StoredDtype;
use model::Kernels;
use model::{load_model, select_device, DeviceChoice};
use testkit::*;

const TOKENS: [u32; 12] = [5, 17, 3, 95, 42, 0, 8, 61, 61, 30, 77, 1];

fn logits_of(path: &std::path::Path, choice: DeviceChoice) -> Vec<f32> {
    let loaded = load_model(path).unwrap();
    let device = select_device(choice).unwrap();
    let model = loaded.build(&device.device).unwrap();
    model.forward(&[TOKENS.to_vec()]).unwrap().into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn safetensors_f32_matches_reference() {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_weights(&TINY, 1);
    write_hf_dir(dir.path(), &TINY, &weights, StoredDtype::F32);
    let logits = logits_of(dir.path(), DeviceChoice::Cpu);
    let reference = reference_forward(&TINY, &weights, &TOKENS);
    let diff = max_abs_diff(&logits, &reference);
    assert!(diff < 1e-4, "max |burn - reference| = {diff}");
}

#[test]
fn safetensors_bf16_is_computed_in_f32() {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_weights(&TINY, 2);
    write_hf_dir(dir.path(), &TINY, &weights, StoredDtype::BF16);
    let rounded: std::collections::BTreeMap<_, _> = weights
        .iter()
        .map(|(n, t)| {
            (n.clone(), model::HostTensor::new(t.shape.clone(), t.data.iter().map(|v| half::bf16::from_f32(*v).to_f32()).collect()))
        })
        .collect();
    let logits = logits_of(dir.path(), DeviceChoice::Cpu);
    let diff = max_abs_diff(&logits, &reference_forward(&TINY, &rounded, &TOKENS));
    assert!(diff < 1e-4, "max |burn - reference| = {diff}");
}

#[test]
fn gguf_f32_matches_safetensors_and_reference() {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_weights(&TINY, 3);
    write_hf_dir(&dir.path().join("hf"), &TINY, &weights, StoredDtype::F32);
    let gguf = dir.path().join("tiny.gguf");
    write_gguf(&gguf, &TINY, &weights, GgmlType::F32);
    let from_gguf = logits_of(&gguf, DeviceChoice::Cpu);
    let from_hf = logits_of(&dir.path().join("hf"), DeviceChoice::Cpu);
    let between = from_gguf.iter().zip(&from_hf).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(between < 1e-4, "max |gguf - safetensors| = {between}");
    let diff = max_abs_diff(&from_gguf, &reference_forward(&TINY, &weights, &TOKENS));
    assert!(diff < 1e-4, "max |burn - reference| = {diff}");
    let a = load_model(&gguf).unwrap();
    let b = load_model(&dir.path().join("hf")).unwrap();
    assert_eq!(a.fingerprint, b.fingerprint, "one model, one fingerprint, whatever the format");
    let (a, b) = (a.weights.load_all().unwrap(), b.weights.load_all().unwrap());
    for (name, t) in b.iter() {
        assert_eq!(a.get(name).unwrap(), t, "{name} differs between GGUF and safetensors");
    }
}

#[test]
fn gguf_q8_0_matches_reference_on_dequantized_weights() {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_weights(&TINY, 4);
    let gguf = dir.path().join("tiny-q8_0.gguf");
    write_gguf(&gguf, &TINY, &weights, GgmlType::Q8_0);
    let dequantized =
        round_trip(&weights, |v| model::gguf::dequantize(GgmlType::Q8_0, &model::gguf::quantize::quantize_q8_0(v), v.len()).unwrap());
    let logits = logits_of(&gguf, DeviceChoice::Cpu);
    let diff = max_abs_diff(&logits, &reference_forward(&TINY, &dequantized, &TOKENS));
    assert!(diff < 1e-4, "max |burn - reference| = {diff}");
    let undequantized = max_abs_diff(&logits, &reference_forward(&TINY, &weights, &TOKENS));
    assert!(undequantized > 1e-4, "quantization should be visible in the logits (diff {undequantized})");
}

#[test]
fn batched_forward_equals_single_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_weights(&TINY, 5);
    write_hf_dir(dir.path(), &TINY, &weights, StoredDtype::F32);
    let loaded = load_model(dir.path()).unwrap();
    let device = select_device(DeviceChoice::Cpu).unwrap();
    let model = loaded.build(&device.device).unwrap();
    let other: Vec<u32> = TOKENS.iter().rev().copied().collect();
    let batched = model.forward(&[TOKENS.to_vec(), other.clone()]).unwrap().into_data().try_into_vec::<f32>().unwrap();
    let n = TOKENS.len() * TINY.vocab;
    for (k, seq) in [TOKENS.to_vec(), other].iter().enumerate() {
        let single = model.forward(std::slice::from_ref(seq)).unwrap().into_data().try_into_vec::<f32>().unwrap();
        let diff = single.iter().zip(&batched[k * n..(k + 1) * n]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "sequence {k}: batched differs by {diff}");
    }
}

#[test]
fn cpu_and_wgpu_logits_agree() {
    let adapters = model::device::wgpu_adapters();
    assert!(
        !adapters.is_empty(),
        "no wgpu adapter: install lavapipe (apt-get install mesa-vulkan-drivers libvulkan1); `cargo xtask test` does this"
    );
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_weights(&TINY, 6);
    write_hf_dir(dir.path(), &TINY, &weights, StoredDtype::F32);
    let cpu = logits_of(dir.path(), DeviceChoice::Cpu);
    let gpu = logits_of(dir.path(), DeviceChoice::Wgpu);
    let diff = cpu.iter().zip(&gpu).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-3, "max |cpu - wgpu| = {diff} on {:?}", adapters.iter().map(|a| &a.name).collect::<Vec<_>>());
}

/// The weights with every other entry of each linear layer's rows set to
/// zero (a 50% pruned model).
fn pruned(weights: &std::collections::BTreeMap<String, model::HostTensor>) -> std::collections::BTreeMap<String, model::HostTensor> {
    let mut pruned = weights.clone();
    for (name, tensor) in pruned.iter_mut() {
        if name.starts_with("model.layers.") && name.ends_with("proj.weight") {
            tensor.data.iter_mut().enumerate().filter(|(i, _)| (i / 3 + i) % 2 == 0).for_each(|(_, v)| *v = 0.0);
        }
    }
    pruned
}

#[test]
fn a_pruned_model_on_wgpu_keeps_only_its_kept_weights_and_gives_the_reference_logits() {
    let dir = tempfile::tempdir().unwrap();
    let weights = pruned(&tiny_weights(&TINY, 8));
    write_hf_dir(dir.path(), &TINY, &weights, StoredDtype::F32);
    let loaded = load_model(dir.path()).unwrap();
    let model = loaded.build(&select_device(DeviceChoice::Wgpu).unwrap().device).unwrap();
    let layers = format!("{model:?}");
    assert_eq!(
        layers.matches("DeviceSparse([").count(),
        4 * TINY.layers,
        "every linear of every layer (fused: qkv, o, gate-up, down) in the sparse form"
    );
    let logits = model.forward(&[TOKENS.to_vec()]).unwrap().into_data().try_into_vec::<f32>().unwrap();
    let diff = max_abs_diff(&logits, &reference_forward(&TINY, &weights, &TOKENS));
    assert!(diff < 1e-4, "max |wgpu sparse - reference| = {diff}");
}

#[test]
fn host_and_tensor_kernels_agree_with_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_weights(&TINY, 7);
    write_hf_dir(dir.path(), &TINY, &weights, StoredDtype::F32);
    let loaded = load_model(dir.path()).unwrap();
    let model = loaded.build(&select_device(DeviceChoice::Cpu).unwrap().device).unwrap();
    let other: Vec<u32> = TOKENS.iter().rev().copied().collect();
    let tokens = [TOKENS.to_vec(), other.clone()];
    let logits = |kernels| model.forward_with(&tokens, kernels).unwrap().into_data().try_into_vec::<f32>().unwrap();
    let (host, tensor) = (logits(Kernels::Host), logits(Kernels::Tensor));
    let between = host.iter().zip(&tensor).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(between < 1e-5, "max |host - tensor| = {between}");
    let n = TOKENS.len() * TINY.vocab;
    for (k, seq) in tokens.iter().enumerate() {
        let diff = max_abs_diff(&host[k * n..(k + 1) * n], &reference_forward(&TINY, &weights, seq));
        assert!(diff < 1e-4, "sequence {k}: max |host kernels - reference| = {diff}");
    }
}

#[test]
fn a_weight_larger_than_the_wgpu_adapter_allows_is_refused_with_its_size_and_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(dir.path(), &TINY, &tiny_weights(&TINY, 9), StoredDtype::F32);
    let loaded = load_model(dir.path()).unwrap();
    let wgpu = select_device(DeviceChoice::Wgpu).unwrap().device;
    let limit = model::device::max_buffer_bytes(&wgpu).expect("wgpu has a buffer limit");
    assert!(model::device::max_buffer_bytes(&select_device(DeviceChoice::Cpu).unwrap().device).is_none());
    let mut spec = loaded.config.spec().clone();
    spec.check_device_buffers(&wgpu).unwrap();
    // A vocabulary whose embedding needs one f32 buffer past the limit.
    spec.vocab_size = (limit as usize / (4 * spec.hidden_size)) + 1;
    assert_eq!(spec.largest_device_weight(), ("the embedding / LM head", [spec.vocab_size, spec.hidden_size]));
    let message = spec.check_device_buffers(&wgpu).unwrap_err().to_string();
    let mib = |b: f64| format!("{:.0} MiB", b / (1u64 << 20) as f64);
    assert!(message.contains(&mib((spec.vocab_size * spec.hidden_size * 4) as f64)), "{message}");
    assert!(message.contains(&format!("at most {}", mib(limit as f64))) && message.contains("--device cpu"), "{message}");
    spec.check_device_buffers(&select_device(DeviceChoice::Cpu).unwrap().device).unwrap();
}
