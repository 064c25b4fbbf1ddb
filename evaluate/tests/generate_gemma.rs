//! Generation on the real Gemma 3 270M (CPU): greedy decoding with the
//! key/value cache (sliding-window and global layers, q/k norms, two rotary
//! bases) equals decoding without it token for token, and a left-padded
//! batch, with prompts joining it as rows finish, equals one prompt at a time.

use std::sync::OnceLock;

use evaluate::generate::{generate, GenerationConfig};
use model::{load_model, select_device, Decoder, DeviceChoice, LoadedModel};

struct Gemma {
    loaded: LoadedModel,
    model: Decoder,
}

fn gemma() -> &'static Gemma {
    static GEMMA: OnceLock<Gemma> = OnceLock::new();
    GEMMA.get_or_init(|| {
        let loaded = load_model(&testkit::gemma3_gguf()).unwrap();
        let model = loaded.build(&select_device(DeviceChoice::Cpu).unwrap().device).unwrap();
        Gemma { loaded, model }
    })
}

fn prompts() -> Vec<String> {
    vec!["The capital of France is".to_string(), "def fibonacci(n):".to_string()]
}

fn greedy(max_new_tokens: usize, use_cache: bool) -> GenerationConfig {
    GenerationConfig { max_new_tokens, use_cache, ..GenerationConfig::default() }
}

#[test]
fn gemma3_greedy_with_the_cache_equals_greedy_without_it_token_for_token() {
    let g = gemma();
    let tok = g.loaded.tokenizer().unwrap();
    let Some(config) = g.loaded.config.downcast_ref::<model::arch::gemma::GemmaConfig>() else {
        panic!("expected a Gemma configuration, found {:?}", g.loaded.config)
    };
    // Prompts start with BOS, as Gemma needs.
    for p in prompts() {
        assert_eq!(tok.encode(&p, true).unwrap().first().copied(), config.bos_token_id, "prompt {p:?} does not start with BOS");
    }
    let cached = generate(&g.model, tok, &prompts(), &greedy(24, true), 1, |_| {}).unwrap();
    let uncached = generate(&g.model, tok, &prompts(), &greedy(24, false), 1, |_| {}).unwrap();
    for (i, (c, u)) in cached.iter().zip(&uncached).enumerate() {
        assert!(!c.tokens.is_empty(), "prompt {i}: nothing generated");
        assert_eq!(c.tokens, u.tokens, "prompt {i}: cached {:?} vs uncached {:?}", c.text, u.text);
        assert_eq!(c.text, u.text);
    }
}

#[test]
fn gemma3_left_padded_batch_equals_one_prompt_at_a_time() {
    let g = gemma();
    let tok = g.loaded.tokenizer().unwrap();
    let lengths: Vec<usize> = prompts().iter().map(|p| tok.encode(p, true).unwrap().len()).collect();
    assert!(lengths[0] != lengths[1], "the prompts must differ in length to exercise padding: {lengths:?}");
    let single = generate(&g.model, tok, &prompts(), &greedy(12, true), 1, |_| {}).unwrap();
    let batched = generate(&g.model, tok, &prompts(), &greedy(12, true), 2, |_| {}).unwrap();
    for (i, (a, b)) in single.iter().zip(&batched).enumerate() {
        assert_eq!(a.tokens, b.tokens, "prompt {i}: one at a time {:?} vs batched {:?}", a.text, b.text);
    }
}

#[test]
fn gemma3_prompts_joining_a_batch_as_rows_finish_equal_one_at_a_time() {
    let g = gemma();
    let tok = g.loaded.tokenizer().unwrap();
    let mut many = prompts();
    many.extend(["Once upon a time".to_string(), "1, 2, 3, 4,".to_string()]);
    // A stop string ends rows at different steps, so later prompts join a batch already decoding.
    let config = GenerationConfig { stop: vec!["\n".into()], ..greedy(16, true) };
    let single = generate(&g.model, tok, &many, &config, 1, |_| {}).unwrap();
    let lengths: Vec<usize> = single.iter().map(|g| g.tokens.len()).collect();
    assert!(lengths.iter().any(|&l| l != lengths[0]), "rows must finish at different steps to exercise joining: {lengths:?}");
    let batched = generate(&g.model, tok, &many, &config, 2, |_| {}).unwrap();
    for (i, (a, b)) in single.iter().zip(&batched).enumerate() {
        assert_eq!((&a.tokens, &a.text), (&b.tokens, &b.text), "prompt {i}");
    }
}
