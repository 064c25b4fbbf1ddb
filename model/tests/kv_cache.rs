//! The key/value cache on a tiny random Llama: logits of tokens fed in
//! pieces through the cache equal those of one full forward and of the
//! naive f64 reference, on the host kernels, the tensor kernels and wgpu;
//! left-padded rows compute what their tokens alone would.

use model::safetensors::StoredDtype;
use model::Kernels;
use model::{load_model, select_device, Decoder, DeviceChoice};
use testkit::*;

const TOKENS: [u32; 12] = [5, 17, 3, 95, 42, 0, 8, 61, 61, 30, 77, 1];

fn tiny_model(choice: DeviceChoice, seed: u64) -> (Decoder, std::collections::BTreeMap<String, model::HostTensor>) {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_weights(&TINY, seed);
    write_hf_dir(dir.path(), &TINY, &weights, StoredDtype::F32);
    let loaded = load_model(dir.path()).unwrap();
    (loaded.build(&select_device(choice).unwrap().device).unwrap(), weights)
}

fn values<const D: usize>(t: burn::tensor::Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

/// Feeds TOKENS through a cache in pieces of 5, 1, 1, 3 and 2 tokens and
/// checks every piece's logits against the same positions of the reference.
fn check_pieces(model: &Decoder, weights: &std::collections::BTreeMap<String, model::HostTensor>, kernels: Kernels, what: &str) {
    let reference = reference_forward(&TINY, weights, &TOKENS);
    let full = values(model.forward(&[TOKENS.to_vec()]).unwrap());
    let mut cache = model.new_cache(1);
    let mut start = 0;
    for piece in [5, 1, 1, 3, 2] {
        let tokens = vec![TOKENS[start..start + piece].to_vec()];
        let logits = values(model.forward_cached_with(&tokens, &mut cache, kernels).unwrap());
        let diff = max_abs_diff(&logits, &reference[start..start + piece]);
        assert!(diff < 1e-4, "{what}: positions {start}..{}: max |cached - reference| = {diff}", start + piece);
        let v = TINY.vocab;
        let between = logits.iter().zip(&full[start * v..(start + piece) * v]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(between < 1e-4, "{what}: positions {start}..{}: max |cached - full forward| = {between}", start + piece);
        start += piece;
    }
    assert_eq!(cache.len(), TOKENS.len());
}

#[test]
fn cached_pieces_match_the_full_forward_on_host_and_tensor_kernels() {
    let (model, weights) = tiny_model(DeviceChoice::Cpu, 11);
    check_pieces(&model, &weights, Kernels::Host, "host kernels");
    check_pieces(&model, &weights, Kernels::Tensor, "tensor kernels");
}

#[test]
fn cached_pieces_match_the_full_forward_on_wgpu() {
    if model::device::wgpu_adapters().is_empty() {
        eprintln!("no wgpu adapter: the wgpu half of the KV-cache test did not run");
        return;
    }
    let (model, weights) = tiny_model(DeviceChoice::Wgpu, 12);
    check_pieces(&model, &weights, Kernels::Tensor, "wgpu");
}

#[test]
fn left_padded_rows_compute_what_their_tokens_alone_would() {
    let (model, weights) = tiny_model(DeviceChoice::Cpu, 13);
    let short: Vec<u32> = vec![9, 4, 33, 2, 70, 18, 6];
    let pad = TOKENS.len() - short.len();
    for kernels in [Kernels::Host, Kernels::Tensor] {
        let mut cache = model.new_padded_cache(vec![0, pad]);
        // Padding slots hold an arbitrary valid id.
        let padded: Vec<u32> = std::iter::repeat_n(50, pad).chain(short.iter().copied()).collect();
        let prompt = vec![TOKENS.to_vec(), padded];
        let logits = values(model.forward_cached_with(&prompt, &mut cache, kernels).unwrap());
        let n = TOKENS.len() * TINY.vocab;
        let long_ref = reference_forward(&TINY, &weights, &TOKENS);
        assert!(max_abs_diff(&logits[..n], &long_ref) < 1e-4, "{kernels:?}: unpadded row");
        let short_ref = reference_forward(&TINY, &weights, &short);
        let diff = max_abs_diff(&logits[n + pad * TINY.vocab..], &short_ref);
        assert!(diff < 1e-4, "{kernels:?}: padded row: max |cached - reference| = {diff}");
        // One more token on each row, through the last-logits path.
        let step = vec![vec![7], vec![7]];
        let last = values(model.forward_cached_last(&step, &mut cache).unwrap());
        let long_ref = reference_forward(&TINY, &weights, &[TOKENS.as_slice(), &[7]].concat());
        let short_ref = reference_forward(&TINY, &weights, &[short.as_slice(), &[7]].concat());
        assert!(max_abs_diff(&last[..TINY.vocab], &long_ref[TOKENS.len()..]) < 1e-4, "{kernels:?}: unpadded step");
        assert!(max_abs_diff(&last[TINY.vocab..], &short_ref[short.len()..]) < 1e-4, "{kernels:?}: padded step");
    }
}

#[test]
fn a_cache_refuses_a_batch_of_another_size() {
    let (model, _) = tiny_model(DeviceChoice::Cpu, 14);
    let mut cache = model.new_cache(2);
    let err = model.forward_cached(&[vec![1, 2]], &mut cache).unwrap_err().to_string();
    assert!(err.contains("2 rows") && err.contains("1"), "{err}");
}
