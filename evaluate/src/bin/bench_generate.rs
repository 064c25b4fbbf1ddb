//! Generation benchmark on SmolLM2-135M: tokens/s of greedy decoding with
//! and without the key/value cache, and peak RSS. Prints figures; asserts
//! nothing about time.
//!
//! Run through `cargo xtask bench generate`, which builds the workspace,
//! fetches the model and sets `SUBPRUNE_SMOLLM2_GGUF`. Options (after `--`):
//! `--device cpu|wgpu|auto` (default cpu), `--new-tokens N` (default 64),
//! `--prompts N` (default 4), `--batch N` (default 1; also run batched when above 1),
//! `--model PATH` (another model than SmolLM2: a GGUF file or a Hugging Face
//! directory, sparse ones included), `--cached-only` (no runs without the
//! cache), `--tokens-out FILE` (the first run's generated token ids, as JSON).
//! Batch 1 with the cache runs twice: without prompt-lookup drafts, then
//! with them (`--draft-tokens N`, default evaluate's), which must give the
//! same tokens.
//!
//! The "decode steps" rows time decoding alone, as llama.cpp's `llama-bench
//! -n N` and `llama-batched-bench` do: from one start token per sequence,
//! N single-token steps through the cache, each picking its argmax.
//! `--decode-only` runs only those rows; `--no-decode-steps` skips them.
//!
//! Given several `--model`s, it loads them all and times only the decode
//! steps, the models taken in turn for `--repeats N` rounds (default 3),
//! and prints the best of each: back to back in one process, so that a
//! slow spell of the machine falls on every model alike.

use std::path::PathBuf;
use std::time::Instant;

use evaluate::generate::{generate, GenerationConfig, DRAFT_TOKENS};
use model::{load_model, select_device, DeviceChoice};

#[path = "../../../model/src/bin/shared/args.rs"]
mod args;

use args::{arg, repeated_arg};

const PROMPTS: [&str; 8] = [
    "def quicksort(items):",
    "The history of the Roman Empire began",
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did she sell altogether?\nAnswer:",
    "public static int gcd(int a, int b) {",
    "Once upon a time, in a small village,",
    "#include <vector>\n\nint sum(const std::vector<int>& v) {",
    "The three laws of thermodynamics are",
    "function debounce(fn, ms) {",
];

fn main() {
    let models: Vec<PathBuf> = repeated_arg("--model").into_iter().map(PathBuf::from).collect();
    if models.len() > 1 {
        decode_in_turn(&models);
        return;
    }
    let model_arg: String = arg("--model", String::new());
    let Some(path) =
        (!model_arg.is_empty()).then(|| PathBuf::from(&model_arg)).or_else(|| std::env::var_os("SUBPRUNE_SMOLLM2_GGUF").map(PathBuf::from))
    else {
        eprintln!("SUBPRUNE_SMOLLM2_GGUF is not set and no --model given: run this benchmark through `cargo xtask bench generate`");
        std::process::exit(2);
    };
    let tokens_out: String = arg("--tokens-out", String::new());
    let cached_only = std::env::args().any(|a| a == "--cached-only");
    let device_choice: DeviceChoice = arg("--device", DeviceChoice::Cpu);
    let new_tokens: usize = arg("--new-tokens", 64);
    let n_prompts: usize = arg("--prompts", 4).clamp(1, PROMPTS.len());
    let batch: usize = arg("--batch", 1).max(1);
    let decode_only = std::env::args().any(|a| a == "--decode-only");
    let draft_tokens: usize = arg("--draft-tokens", DRAFT_TOKENS);
    let no_decode_steps = std::env::args().any(|a| a == "--no-decode-steps");

    let loaded = load_model(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    let selected = select_device(device_choice).expect("device");
    let model = loaded.build_stored(&selected.device).expect("build");
    let tokenizer = loaded.tokenizer().expect("tokenizer");
    let prompts: Vec<String> = PROMPTS[..n_prompts].iter().map(|p| p.to_string()).collect();
    let prompt_tokens: usize = prompts.iter().map(|p| tokenizer.encode(p, true).expect("encode").len()).sum();

    // Warm-up (kernel compilation on wgpu, allocator warm-up on cpu).
    let warm = GenerationConfig { max_new_tokens: 2, draft_tokens: 0, ..GenerationConfig::default() };
    generate(&model, tokenizer, &prompts[..1], &warm, 1, |_| {}).expect("generate");

    println!("model: {}", path.display());
    println!("device: {} ({:?} kernels)", selected.description, model.kernels());
    println!("greedy decoding of {n_prompts} prompts ({prompt_tokens} prompt tokens), at most {new_tokens} new tokens each");
    // (cache, batch, draft tokens)
    let mut runs = vec![(true, 1, 0), (true, 1, draft_tokens), (false, 1, 0)];
    if decode_only {
        runs.clear();
    } else if batch > 1 {
        runs.extend([(true, batch, 0), (false, batch, 0)]);
    }
    runs.retain(|&(use_cache, _, _)| use_cache || !cached_only);
    let mut cached_tokens = None;
    for (use_cache, batch, draft_tokens) in runs {
        let config = GenerationConfig { max_new_tokens: new_tokens, use_cache, draft_tokens, ..GenerationConfig::default() };
        let started = Instant::now();
        let generations = generate(&model, tokenizer, &prompts, &config, batch, |_| {}).expect("generate");
        let seconds = started.elapsed().as_secs_f64();
        let tokens: Vec<Vec<u32>> = generations.into_iter().map(|g| g.tokens).collect();
        let total: usize = tokens.iter().map(Vec::len).sum();
        let same = match &cached_tokens {
            None => {
                if !tokens_out.is_empty() {
                    let json = serde_json::to_string(&tokens).expect("token ids as JSON");
                    std::fs::write(&tokens_out, json).unwrap_or_else(|e| panic!("writing {tokens_out}: {e}"));
                }
                cached_tokens = Some(tokens);
                String::new()
            }
            Some(reference) => format!(", same tokens as the first run: {}", reference == &tokens),
        };
        let mode = match (use_cache, draft_tokens) {
            (false, _) => "no cache".to_string(),
            (true, 0) => "cache".to_string(),
            (true, n) => format!("cache, drafts of {n}"),
        };
        println!("{mode:<9} batch {batch}: {total} tokens in {seconds:.2} s = {:.1} tokens/s{same}", total as f64 / seconds);
    }
    let start = tokenizer.bos_id().unwrap_or(0);
    let widths = match (no_decode_steps, batch > 1) {
        (true, _) => vec![],
        (false, true) => vec![1, batch],
        (false, false) => vec![1],
    };
    for width in widths {
        let (tokens, seconds) = decode_steps(&model, start, width, new_tokens);
        println!("decode steps batch {width}: {tokens} tokens in {seconds:.2} s = {:.1} tokens/s", tokens as f64 / seconds);
    }
    match model::device::peak_rss_mib() {
        Some(mib) => println!("peak RSS: {mib:.0} MiB (the model kept in its stored form)"),
        None => println!("peak RSS: unavailable (no /proc/self/status)"),
    }
}

/// The decode steps of several models at batch 1 and `--batch`, the
/// models taken in turn for `--repeats` rounds; prints each one's best.
fn decode_in_turn(paths: &[PathBuf]) {
    let device_choice: DeviceChoice = arg("--device", DeviceChoice::Cpu);
    let new_tokens: usize = arg("--new-tokens", 64);
    let batch: usize = arg("--batch", 1).max(1);
    let repeats: usize = arg("--repeats", 3).max(1);
    let selected = select_device(device_choice).expect("device");
    let models: Vec<(model::Decoder, u32)> = paths
        .iter()
        .map(|path| {
            let loaded = load_model(path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
            let model = loaded.build_stored(&selected.device).expect("build");
            let start = loaded.tokenizer().expect("tokenizer").bos_id().unwrap_or(0);
            (model, start)
        })
        .collect();
    println!("device: {}; {} models taken in turn, best of {repeats}", selected.description, models.len());
    let mut widths = vec![1];
    if batch > 1 {
        widths.push(batch);
    }
    for width in widths {
        let mut best = vec![0.0f64; models.len()];
        for (model, start) in &models {
            decode_steps(model, *start, width, 2);
        }
        for _ in 0..repeats {
            for ((model, start), best) in models.iter().zip(&mut best) {
                let (tokens, seconds) = decode_steps(model, *start, width, new_tokens);
                *best = best.max(tokens as f64 / seconds);
            }
        }
        for (path, best) in paths.iter().zip(&best) {
            println!("decode steps batch {width} {}: {best:.1} tokens/s", path.display());
        }
    }
}

/// Times `steps` cached single-token decoding steps of `width` sequences
/// that all start from token `start`; gives (tokens decoded, seconds).
fn decode_steps(model: &model::Decoder, start: u32, width: usize, steps: usize) -> (usize, f64) {
    let mut cache = model.new_cache(width);
    let mut next: Vec<Vec<u32>> = vec![vec![start]; width];
    let started = Instant::now();
    for _ in 0..steps {
        let logits = model.forward_cached_last(&next, &mut cache).expect("decoding step");
        let values = logits.into_data().try_to_vec::<f32>().expect("f32 logits");
        let vocab = values.len() / width;
        next = values.chunks_exact(vocab).map(|row| vec![evaluate::generate::argmax(row) as u32]).collect();
    }
    (width * steps, started.elapsed().as_secs_f64())
}
