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

/// Logits of the last token after feeding `pieces` of one row through its own cache.
fn alone(model: &Decoder, pieces: &[&[u32]], kernels: Kernels) -> Vec<f32> {
    let mut cache = model.new_cache(1);
    let mut last = Vec::new();
    for piece in pieces {
        last = values(model.forward_cached_last_with(&[piece.to_vec()], &mut cache, kernels).unwrap());
    }
    last
}

#[test]
fn rows_joining_a_running_cache_and_trimmed_padding_change_no_row() {
    let (model, weights) = tiny_model(DeviceChoice::Cpu, 15);
    let v = TINY.vocab;
    let (first, short, two): (&[u32], &[u32], &[u32]) = (&TOKENS[..4], &[9, 4, 33, 2, 70, 18, 6], &[12, 40]);
    for kernels in [Kernels::Host, Kernels::Tensor] {
        // A running row: a prompt of 4 and one decoded token (5 slots).
        let mut running = model.new_cache(1);
        model.forward_cached_last_with(&[first.to_vec()], &mut running, kernels).unwrap();
        model.forward_cached_last_with(&[vec![TOKENS[4]]], &mut running, kernels).unwrap();
        // Two rows joining it, prefilled together (7 slots, the second padded by 5).
        let mut joining = model.new_padded_cache(vec![0, 5]);
        let padded: Vec<u32> = std::iter::repeat_n(50, 5).chain(two.iter().copied()).collect();
        model.forward_cached_last_with(&[short.to_vec(), padded], &mut joining, kernels).unwrap();
        running.append_rows(joining).unwrap();
        assert_eq!((running.len(), running.padding()), (7, &[2, 0, 5][..]), "{kernels:?}: the shorter cache is padded in front");
        let step = values(model.forward_cached_last_with(&[vec![TOKENS[5]], vec![7], vec![7]], &mut running, kernels).unwrap());
        let rows: [Vec<u32>; 3] = [TOKENS[..6].to_vec(), [short, &[7]].concat(), [two, &[7]].concat()];
        for (r, tokens) in rows.iter().enumerate() {
            let reference = reference_forward(&TINY, &weights, tokens);
            let diff = max_abs_diff(&step[r * v..(r + 1) * v], &reference[tokens.len() - 1..]);
            assert!(diff < 1e-4, "{kernels:?}: row {r} after joining: max |cached - reference| = {diff}");
        }
        if kernels == Kernels::Host {
            let by_itself = [
                alone(&model, &[first, &[TOKENS[4]], &[TOKENS[5]]], kernels),
                alone(&model, &[short, &[7]], kernels),
                alone(&model, &[two, &[7]], kernels),
            ];
            for (r, own) in by_itself.iter().enumerate() {
                assert_eq!(&step[r * v..(r + 1) * v], &own[..], "host kernels: row {r} after joining, bit for bit");
            }
        }
        // The longest row finishes: the two slots every remaining row pads go.
        running.select_rows(&[0, 2]);
        running.trim_padding();
        assert_eq!((running.len(), running.padding()), (6, &[0, 3][..]), "{kernels:?}: trimmed");
        let step = values(model.forward_cached_last_with(&[vec![TOKENS[6]], vec![8]], &mut running, kernels).unwrap());
        let rows: [Vec<u32>; 2] = [TOKENS[..7].to_vec(), [two, &[7, 8]].concat()];
        for (r, tokens) in rows.iter().enumerate() {
            let reference = reference_forward(&TINY, &weights, tokens);
            let diff = max_abs_diff(&step[r * v..(r + 1) * v], &reference[tokens.len() - 1..]);
            assert!(diff < 1e-4, "{kernels:?}: row {r} after trimming: max |cached - reference| = {diff}");
        }
        if kernels == Kernels::Host {
            assert_eq!(&step[..v], &alone(&model, &[first, &[TOKENS[4]], &[TOKENS[5]], &[TOKENS[6]]], kernels)[..], "row 0 after trimming");
            assert_eq!(&step[v..], &alone(&model, &[two, &[7], &[8]], kernels)[..], "row 1 after trimming");
        }
    }
}

#[test]
fn caches_of_another_depth_or_empty_do_not_join() {
    let (model, _) = tiny_model(DeviceChoice::Cpu, 16);
    let mut filled = model.new_cache(1);
    model.forward_cached_last(&[vec![1, 2]], &mut filled).unwrap();
    let err = filled.append_rows(model.new_cache(1)).unwrap_err().to_string();
    assert!(err.contains("at least one step"), "{err}");
    let err = filled.append_rows(model::KvCache::new(TINY.layers + 1, vec![0])).unwrap_err().to_string();
    assert!(err.contains("layers"), "{err}");
}

/// Drafts of four tokens checked in one step give each token the logits of
/// one-token steps, bit for bit on the host kernels; dropping the tokens
/// not kept (a different number per row) and going on computes what caches
/// that never saw them compute.
#[test]
fn drafts_checked_in_one_step_have_the_bits_of_one_token_steps_and_drop_cleanly() {
    let (model, weights) = tiny_model(DeviceChoice::Cpu, 17);
    assert!(model.multi_token_steps_are_exact(), "a CPU model runs the host kernels");
    let v = TINY.vocab;
    let prompts: [&[u32]; 2] = [&TOKENS[..5], &[9, 4, 33]];
    let drafts: [&[u32]; 2] = [&TOKENS[5..9], &[70, 18, 6, 2]];
    for kernels in [Kernels::Host, Kernels::Tensor] {
        let mut cache = model.new_padded_cache(vec![0, 2]);
        let padded: Vec<u32> = std::iter::repeat_n(50, 2).chain(prompts[1].iter().copied()).collect();
        model.forward_cached_last_with(&[prompts[0].to_vec(), padded], &mut cache, kernels).unwrap();
        let drafted = values(model.forward_cached_with(&[drafts[0].to_vec(), drafts[1].to_vec()], &mut cache, kernels).unwrap());
        assert_eq!(cache.len(), 9);
        for (r, (prompt, draft)) in prompts.iter().zip(drafts).enumerate() {
            for i in 0..draft.len() {
                let pieces: Vec<&[u32]> = std::iter::once(*prompt).chain(draft[..=i].chunks(1)).collect();
                let own = alone(&model, &pieces, kernels);
                let row = &drafted[(r * 4 + i) * v..(r * 4 + i + 1) * v];
                if kernels == Kernels::Host {
                    assert_eq!(row, &own[..], "host kernels: row {r}, draft token {i}, bit for bit");
                } else {
                    let diff = row.iter().zip(&own).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                    assert!(diff < 1e-4, "tensor kernels: row {r}, draft token {i}: max |one step - token by token| = {diff}");
                }
            }
        }
        // Row 0 keeps two drafted tokens, row 1 all four; then one more token each.
        cache.drop_last(&[2, 0]).unwrap();
        assert_eq!((cache.len(), cache.padding()), (9, &[2, 2][..]), "{kernels:?}: row 0 moves right by the two slots it dropped");
        let next = values(model.forward_cached_last_with(&[vec![3], vec![7]], &mut cache, kernels).unwrap());
        let rows = [[prompts[0], &drafts[0][..2], &[3]].concat(), [prompts[1], drafts[1], &[7]].concat()];
        for (r, tokens) in rows.iter().enumerate() {
            let reference = reference_forward(&TINY, &weights, tokens);
            let diff = max_abs_diff(&next[r * v..(r + 1) * v], &reference[tokens.len() - 1..]);
            assert!(diff < 1e-4, "{kernels:?}: row {r} after dropping: max |cached - reference| = {diff}");
        }
        if kernels == Kernels::Host {
            assert_eq!(&next[..v], &alone(&model, &[prompts[0], &drafts[0][..2], &[3]], kernels)[..], "row 0 after dropping, bit for bit");
            assert_eq!(&next[v..], &alone(&model, &[prompts[1], drafts[1], &[7]], kernels)[..], "row 1 after dropping, bit for bit");
        }
        // Both rows drop their last token: the cache just shrinks.
        cache.drop_last(&[1, 1]).unwrap();
        assert_eq!((cache.len(), cache.padding()), (9, &[2, 2][..]));
    }
}

#[test]
fn dropping_refuses_to_leave_a_row_without_a_real_token() {
    let (model, _) = tiny_model(DeviceChoice::Cpu, 18);
    let mut cache = model.new_padded_cache(vec![0, 3]);
    model.forward_cached_last(&[TOKENS[..5].to_vec(), vec![50, 50, 50, 4, 9]], &mut cache).unwrap();
    let err = cache.drop_last(&[0, 2]).unwrap_err().to_string();
    assert!(err.contains("row 1") && err.contains("3 are padding"), "{err}");
    let err = cache.drop_last(&[1]).unwrap_err().to_string();
    assert!(err.contains("2 rows"), "{err}");
    cache.drop_last(&[4, 1]).unwrap();
    assert_eq!((cache.len(), cache.padding()), (4, &[3, 3][..]));
}
