//! Opens the real SmolLM2 GGUF (fetched by `cargo xtask test`, path in
//! `SUBPRUNE_SMOLLM2_GGUF`), dequantizes every tensor and loads it as a
//! model: shapes match the configuration and every value is finite.

use model::gguf::GgufFile;

#[test]
fn real_model_opens_and_dequantizes() {
    let path = testkit::smollm2_gguf();
    let f = GgufFile::open(&path).unwrap();
    let mut n = 0u64;
    for t in f.tensors() {
        let v = f.tensor_f32(&t.name).unwrap();
        assert_eq!(v.len() as u64, t.n_elements(), "{}", t.name);
        assert!(v.iter().all(|x| x.is_finite()), "{}: non-finite values", t.name);
        n += v.len() as u64;
    }
    assert!(n > 100_000_000, "SmolLM2-135M has over 100M weights; found {n}");
    let loaded = model::load_model(&path).unwrap();
    let Some(config) = loaded.config.downcast_ref::<model::arch::llama::LlamaConfig>() else { panic!("SmolLM2 is a Llama-family model") };
    let dims = &config.dims;
    assert_eq!((dims.num_hidden_layers, dims.hidden_size, dims.num_attention_heads, dims.num_key_value_heads), (30, 576, 9, 3));
    assert!(config.tie_word_embeddings);
}
