//! Lazy weights and layer-by-layer decoding: a checkpoint read tensor by
//! tensor gives the values a whole read gives; a decoder that holds one
//! layer at a time gives the whole model's logits bit for bit; masks applied
//! as tensors are read zero exactly the pruned weights.

use std::collections::BTreeMap;

use burn::tensor::Tensor;
use model::gguf::GgmlType;
use model::safetensors::StoredDtype;
use model::{load_model, Decoder, MaskedWeights, StoredType, Weights};
use testkit::*;

const TOKENS: [u32; 12] = [5, 17, 3, 95, 42, 0, 8, 61, 61, 30, 77, 1];

fn values(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn a_decoder_holding_one_layer_at_a_time_gives_the_whole_model_s_logits() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    write_gguf(&gguf, &TINY, &tiny_weights(&TINY, 3), GgmlType::Q8_0);
    let loaded = load_model(&gguf).unwrap();
    let whole = loaded.build(&cpu()).unwrap();
    let expected = whole.forward(&[TOKENS.to_vec()]).unwrap().into_data().try_into_vec::<f32>().unwrap();

    let mut streamed = Decoder::empty(loaded.config.spec(), &cpu());
    streamed.load_embedding(&loaded.weights).unwrap();
    let mut hidden = streamed.embed(&[TOKENS.to_vec()]).unwrap();
    streamed.unload_embedding();
    let ctx = streamed.context(1, TOKENS.len());
    for layer in 0..loaded.config.num_layers() {
        streamed.load_layer(&loaded.weights, layer).unwrap();
        hidden = streamed.layer_forward(layer, hidden, &ctx, None);
        streamed.unload_layer(layer);
    }
    streamed.load_head(&loaded.weights).unwrap();
    let logits = values(streamed.head(hidden));
    assert_eq!(logits.len(), expected.len());
    assert!(logits.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits()), "streamed logits differ");
}

/// `weights` written in `dir` as GGUF with q/k rows interleaved by
/// llama.cpp (Q8_0 and Q4_0 blocks) and as bf16 safetensors.
fn stored_forms(dir: &std::path::Path, weights: &BTreeMap<String, model::HostTensor>) -> [std::path::PathBuf; 3] {
    let (q8, q4, bf16) = (dir.join("q8.gguf"), dir.join("q4.gguf"), dir.join("bf16"));
    write_gguf(&q8, &TINY, weights, GgmlType::Q8_0);
    write_gguf(&q4, &TINY, weights, GgmlType::Q4_0);
    write_hf_dir(&bf16, &TINY, weights, StoredDtype::BF16);
    [q8, q4, bf16]
}

#[test]
fn layers_packed_straight_from_the_file_equal_layers_built_from_decoded_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_weights(&TINY, 9);
    let batch = [TOKENS.to_vec(), TOKENS.iter().rev().copied().collect()];
    for path in &stored_forms(dir.path(), &weights) {
        let mut loaded = load_model(path).unwrap();
        // One matrix pruned past the sparse threshold (decoded whole and
        // listed sparse), one barely masked (packed from the file).
        let (heavy, light) = ("model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.q_proj.weight");
        for (name, byte) in [(heavy, 0b0101_0001u8), (light, 0xffu8 ^ 0b1000_0000)] {
            let (rows, cols) = (weights[name].shape[0], weights[name].shape[1]);
            loaded.weights.set_keep_bits(name, vec![byte; rows * cols.div_ceil(8)]).unwrap();
        }
        // The same values, decoded tensor by tensor into memory, where no
        // stored rows exist: the layers are built from f32 tensors.
        let decoded = loaded.weights.load_prefixed("").unwrap();
        let spec = loaded.config.spec();
        let from_file = Decoder::from_weights(spec, &loaded.weights, &cpu()).unwrap();
        let from_tensors = Decoder::from_weights(spec, &decoded, &cpu()).unwrap();
        let logits = |decoder: &Decoder| decoder.forward(&batch).unwrap().into_data().try_into_vec::<f32>().unwrap();
        let (a, b) = (logits(&from_file), logits(&from_tensors));
        assert_eq!(a.len(), b.len());
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{}: logits differ", path.display());
        // The file's pages were released once packed; reading them again gives the same values.
        assert_eq!(loaded.weights.load(light).unwrap().data, decoded.get(light).unwrap().data);
    }
}

#[test]
#[should_panic(expected = "decoder layer 0 is not loaded")]
fn running_a_layer_that_is_not_loaded_is_a_clear_panic() {
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(dir.path(), &TINY, &tiny_weights(&TINY, 4), StoredDtype::F32);
    let loaded = load_model(dir.path()).unwrap();
    let decoder = Decoder::empty(loaded.config.spec(), &cpu());
    let ctx = decoder.context(1, 2);
    let x = Tensor::<2>::zeros([2, TINY.hidden], &cpu());
    decoder.layer_forward(0, x, &ctx, None);
}

#[test]
fn tensors_are_read_in_their_stored_type_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_weights(&TINY, 5);
    write_hf_dir(dir.path(), &TINY, &weights, StoredDtype::BF16);
    let loaded = load_model(dir.path()).unwrap();
    let name = "model.layers.1.mlp.down_proj.weight";
    assert_eq!(loaded.weights.stored_type(name), Some(StoredType::Float(StoredDtype::BF16)));
    assert_eq!(loaded.weights.shape(name), Some(weights[name].shape.as_slice()));
    // The values are bf16's rounding of the written ones, exactly.
    let expected = StoredDtype::BF16.decode(&StoredDtype::BF16.encode(&weights[name].data));
    assert_eq!(loaded.weights.load(name).unwrap().data, expected);
    assert_eq!(loaded.weights.load_all().unwrap().len(), weights.len());
}

#[test]
fn masks_applied_as_weights_are_read_zero_exactly_the_pruned_weights() {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_weights(&TINY, 6);
    write_hf_dir(dir.path(), &TINY, &weights, StoredDtype::F32);
    let mut loaded = load_model(dir.path()).unwrap();
    let name = "model.layers.0.self_attn.o_proj.weight";
    let (rows, cols) = (weights[name].shape[0], weights[name].shape[1]);
    // Keep column j of row r when (r + j) % 3 != 0; bits packed LSB first per row.
    let keep = |r: usize, j: usize| (r + j) % 3 != 0;
    let bits: Vec<u8> = (0..rows)
        .flat_map(|r| {
            (0..cols.div_ceil(8))
                .map(move |byte| (0..8).filter(|b| byte * 8 + b < cols && keep(r, byte * 8 + b)).fold(0u8, |v, b| v | 1 << b))
        })
        .collect();
    let expected: Vec<f32> = weights[name].data.iter().enumerate().map(|(i, &v)| if keep(i / cols, i % cols) { v } else { 0.0 }).collect();

    let masked = MaskedWeights::new(&loaded.weights, BTreeMap::from([(name.to_string(), bits.clone())]));
    assert_eq!(masked.tensor(name, &[rows, cols], "llama").unwrap().data, expected);
    let other = "model.layers.0.self_attn.q_proj.weight";
    assert_eq!(masked.tensor(other, &weights[other].shape, "llama").unwrap().data, weights[other].data, "unmasked tensors unchanged");
    // Its stored rows are masked too, on top of a mask they already carry.
    let mut decoded = vec![0.0f32; rows * cols];
    masked.stored_rows(name).unwrap().decode(0, &mut decoded);
    assert_eq!(decoded, expected);
    let first_column_off: Vec<u8> = (0..rows * cols.div_ceil(8)).map(|i| if i % cols.div_ceil(8) == 0 { 0xfe } else { 0xff }).collect();
    let twice = loaded
        .weights
        .rows_of(name)
        .unwrap()
        .masked(std::sync::Arc::new(first_column_off))
        .unwrap()
        .masked(std::sync::Arc::new(bits.clone()))
        .unwrap();
    twice.decode(0, &mut decoded);
    let both: Vec<f32> = expected.iter().enumerate().map(|(i, &v)| if i % cols == 0 { 0.0 } else { v }).collect();
    assert_eq!(decoded, both);
    assert!(
        masked.stored_rows(name).unwrap().masked(std::sync::Arc::new(bits[1..].to_vec())).is_none(),
        "bits of the wrong length are refused"
    );
    // A layer built from the masked stored rows equals one built from the masked tensors, bit for bit.
    let in_memory = loaded.weights.load_prefixed("").unwrap();
    let masked_in_memory = MaskedWeights::new(&in_memory, BTreeMap::from([(name.to_string(), bits.clone())]));
    let spec = loaded.config.spec();
    let (a, b) = (Decoder::from_weights(spec, &masked, &cpu()).unwrap(), Decoder::from_weights(spec, &masked_in_memory, &cpu()).unwrap());
    let logits = |d: &Decoder| d.forward(&[TOKENS.to_vec()]).unwrap().into_data().try_into_vec::<f32>().unwrap();
    assert!(logits(&a).iter().zip(&logits(&b)).all(|(x, y)| x.to_bits() == y.to_bits()), "masked layers differ");
    assert!(loaded.weights.set_keep_bits(name, bits[1..].to_vec()).is_err(), "bits of the wrong length are refused");
    loaded.weights.set_keep_bits(name, bits).unwrap();
    assert_eq!(loaded.weights.load(name).unwrap().data, expected);
}

/// Logits over a key/value cache: two prompts of 7 tokens (few rows: the
/// products decode the stored weights as they multiply), then 3 single
/// tokens each, then a continuation of 70 tokens each (many rows: the
/// weights are decoded a chunk at a time for the general product).
fn cached_logits(model: &Decoder) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache(2);
    let logits = |tokens: &[Vec<u32>], cache: &mut model::KvCache| {
        model.forward_cached(tokens, cache).unwrap().into_data().try_into_vec::<f32>().unwrap()
    };
    let mut out = vec![logits(&[TOKENS[..7].to_vec(), TOKENS[5..12].to_vec()], &mut cache)];
    for (&a, &b) in TOKENS[7..10].iter().zip(&TOKENS[..3]) {
        out.push(logits(&[vec![a], vec![b]], &mut cache));
    }
    let long = |seed: u32| (0..70).map(|i| (i * 31 + seed) % TINY.vocab as u32).collect::<Vec<u32>>();
    out.push(logits(&[long(3), long(11)], &mut cache));
    out
}

#[test]
fn a_model_kept_in_its_stored_form_decodes_as_the_f32_model_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_weights(&TINY, 7);
    for path in &stored_forms(dir.path(), &weights) {
        let mut loaded = load_model(path).unwrap();
        // A mask on one matrix, applied as its stored rows are decoded too.
        let name = "model.layers.1.mlp.up_proj.weight";
        let (rows, cols) = (weights[name].shape[0], weights[name].shape[1]);
        let bits: Vec<u8> = (0..rows * cols.div_ceil(8)).map(|i| (i as u8).wrapping_mul(37) | 1).collect();
        loaded.weights.set_keep_bits(name, bits).unwrap();
        let f32_model = loaded.build(&cpu()).unwrap();
        let stored = loaded.build_stored(&cpu()).unwrap();
        let (a, b) = (cached_logits(&f32_model), cached_logits(&stored));
        for (step, (a, b)) in a.iter().zip(&b).enumerate() {
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "{}: step {step} differs", path.display());
        }
    }
}
