//! The key/value cache on tiny random Gemma models, over sequences longer
//! than the sliding window: logits of a prefill followed by cached steps
//! equal those of the uncached forward at every position, for one row and
//! for a left-padded batch of two rows of different lengths; Gemma 3 (q/k
//! norms, local and global rotary bases) and Gemma 2 (soft-capping).

use std::collections::BTreeMap;

use model::safetensors::StoredDtype;
use model::{load_model, select_device, Decoder, DeviceChoice, HostTensor};
use testkit::*;

/// 12 tokens, over twice the sliding window of 5.
const TOKENS: [u32; 12] = [5, 17, 3, 95, 42, 0, 8, 61, 61, 30, 77, 1];
/// 7 tokens; after three more steps still longer than the window.
const SHORT: [u32; 7] = [9, 4, 33, 2, 70, 18, 6];

fn build(dir: &std::path::Path) -> Decoder {
    let loaded = load_model(dir).unwrap();
    loaded.build(&select_device(DeviceChoice::Cpu).unwrap().device).unwrap()
}

fn gemma3(seed: u64) -> (Decoder, BTreeMap<String, HostTensor>) {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_gemma_weights(&TINY_GEMMA, seed);
    write_gemma_hf_dir(dir.path(), &TINY_GEMMA, &weights, StoredDtype::F32);
    (build(dir.path()), weights)
}

/// Soft-caps small enough to bend the tiny model's scores and logits.
const ATTN_CAP: f64 = 0.5;
const FINAL_CAP: f64 = 1.5;

fn gemma2(seed: u64, caps: bool) -> Decoder {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_gemma_weights(&TINY_GEMMA, seed);
    let (attn, last) = if caps { (Some(ATTN_CAP), Some(FINAL_CAP)) } else { (None, None) };
    write_gemma2_hf_dir(dir.path(), &TINY_GEMMA, &weights, attn, last);
    build(dir.path())
}

fn values<const D: usize>(t: burn::tensor::Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Logits [seq * vocab] of one sequence by the uncached forward.
fn uncached(model: &Decoder, tokens: &[u32]) -> Vec<f32> {
    values(model.forward(&[tokens.to_vec()]).unwrap())
}

/// Feeds TOKENS through a cache as a prefill of 4 then pieces of 1, 1, 3,
/// 1, 2 (the last through the last-logits path) and checks every piece's
/// logits against the uncached forward's at the same positions.
fn check_pieces(model: &Decoder, what: &str) {
    let v = TINY_GEMMA.vocab;
    let full = uncached(model, &TOKENS);
    let mut cache = model.new_cache(1);
    let mut start = 0;
    for piece in [4, 1, 1, 3, 1] {
        let tokens = vec![TOKENS[start..start + piece].to_vec()];
        let logits = values(model.forward_cached(&tokens, &mut cache).unwrap());
        let diff = max_diff(&logits, &full[start * v..(start + piece) * v]);
        assert!(diff < 1e-4, "{what}: positions {start}..{}: max |cached - uncached| = {diff}", start + piece);
        start += piece;
    }
    let last = values(model.forward_cached_last(&[TOKENS[start..].to_vec()], &mut cache).unwrap());
    let diff = max_diff(&last, &full[(TOKENS.len() - 1) * v..]);
    assert!(diff < 1e-4, "{what}: last position through forward_cached_last: max |cached - uncached| = {diff}");
    assert_eq!(cache.len(), TOKENS.len());
}

/// A left-padded batch of TOKENS and SHORT: the prefill's logits of each
/// row's real positions, then three single-token steps, equal the uncached
/// forward of each row alone.
fn check_padded_batch(model: &Decoder, what: &str) {
    let v = TINY_GEMMA.vocab;
    let pad = TOKENS.len() - SHORT.len();
    let mut cache = model.new_padded_cache(vec![0, pad]);
    // Padding slots hold an arbitrary valid id.
    let padded: Vec<u32> = std::iter::repeat_n(50, pad).chain(SHORT.iter().copied()).collect();
    let logits = values(model.forward_cached(&[TOKENS.to_vec(), padded], &mut cache).unwrap());
    let n = TOKENS.len() * v;
    let diff = max_diff(&logits[..n], &uncached(model, &TOKENS));
    assert!(diff < 1e-4, "{what}: unpadded row of the prefill: max |cached - uncached| = {diff}");
    let diff = max_diff(&logits[n + pad * v..], &uncached(model, &SHORT));
    assert!(diff < 1e-4, "{what}: padded row of the prefill: max |cached - uncached| = {diff}");
    let (mut long, mut short) = (TOKENS.to_vec(), SHORT.to_vec());
    for next in [7u32, 88, 21] {
        long.push(next);
        short.push(next);
        let last = values(model.forward_cached_last(&[vec![next], vec![next]], &mut cache).unwrap());
        let want_long = uncached(model, &long);
        let want_short = uncached(model, &short);
        let diff = max_diff(&last[..v], &want_long[(long.len() - 1) * v..]);
        assert!(diff < 1e-4, "{what}: unpadded row at length {}: max |cached - uncached| = {diff}", long.len());
        let diff = max_diff(&last[v..], &want_short[(short.len() - 1) * v..]);
        assert!(diff < 1e-4, "{what}: padded row at length {}: max |cached - uncached| = {diff}", short.len());
    }
}

#[test]
fn gemma3_cached_pieces_match_the_uncached_forward_past_the_window() {
    let (model, weights) = gemma3(21);
    check_pieces(&model, "gemma3");
    // The uncached forward itself agrees with the naive f64 reference.
    let diff = max_abs_diff(&uncached(&model, &TOKENS), &gemma_reference_forward(&TINY_GEMMA, &weights, &TOKENS));
    assert!(diff < 1e-4, "max |uncached - reference| = {diff}");
}

#[test]
fn gemma3_left_padded_cached_batch_matches_each_row_alone() {
    let (model, _) = gemma3(22);
    check_padded_batch(&model, "gemma3");
}

#[test]
fn gemma2_soft_capped_cached_decoding_matches_the_uncached_forward() {
    let capped = gemma2(23, true);
    check_pieces(&capped, "gemma2");
    check_padded_batch(&capped, "gemma2");
    // The caps are in force: final logits stay within the cap, and both caps change the logits.
    let logits = uncached(&capped, &TOKENS);
    assert!(logits.iter().all(|x| x.abs() < FINAL_CAP as f32), "a logit beyond the final cap {FINAL_CAP}");
    let plain = uncached(&gemma2(23, false), &TOKENS);
    let recapped: Vec<f32> = plain.iter().map(|x| (f64::from(*x) / FINAL_CAP).tanh() as f32 * FINAL_CAP as f32).collect();
    let diff = max_diff(&logits, &recapped);
    assert!(diff > 1e-3, "the attention soft-cap should change the logits beyond the final cap (diff {diff})");
}

#[test]
fn a_gemma_cache_refuses_a_batch_of_another_size() {
    let (model, _) = gemma3(24);
    let mut cache = model.new_cache(2);
    let err = model.forward_cached(&[vec![1, 2]], &mut cache).unwrap_err().to_string();
    assert!(err.contains("2 rows"), "{err}");
}
