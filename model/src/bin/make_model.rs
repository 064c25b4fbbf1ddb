//! `make-model`: a random-weight Hugging Face checkpoint with a real model's
//! layer shapes (config.json, sharded safetensors, SmolLM2's tokenizer and
//! vocabulary), for scale tests and benchmarks. Its weights are random, so
//! its perplexities and task scores mean nothing; only time and memory do.
//!
//! Run through `cargo xtask make-model`, which fetches SmolLM2 and sets
//! `SUBPRUNE_SMOLLM2_GGUF`. Options: `--shape NAME` (see
//! `model::arch::shapes::SHAPES`), `--out DIR`, `--dtype bf16|f16|f32`
//! (default bf16), `--seed N` (default 0), `--layers N` (fewer layers than
//! the shape, for quick runs).

#[path = "shared/args.rs"]
mod args;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kernels::rng::Rng;
use model::arch::shapes::{config_for_shape, SHAPES};
use model::gguf::GgufFile;
use model::safetensors::{ShardedWriter, StoredDtype, TensorLayout};
use model::tokenizer::Tokenizer;
use model::ModelConfig;
use rayon::prelude::*;

use args::arg;

/// Values per independently seeded block of random weights (so that blocks fill in parallel).
const BLOCK: usize = 1 << 20;

/// Random values of tensor `name`: norms 1 (0 for Gemma's `1 + w` norms),
/// everything else uniform with the standard deviation 0.02 transformers
/// initialises with; the same for a seed and a name on any machine.
fn values(name: &str, len: usize, seed: u64, norm_value: f32) -> Vec<f32> {
    if name.ends_with("norm.weight") {
        return vec![norm_value; len];
    }
    let tensor_seed = name.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let scale = 0.02 * 3f32.sqrt();
    let mut out = vec![0.0f32; len];
    out.par_chunks_mut(BLOCK).enumerate().for_each(|(block, chunk)| {
        let mut rng = Rng::new(tensor_seed.wrapping_add(block as u64));
        chunk.iter_mut().for_each(|v| *v = rng.next_f32() * scale);
    });
    out
}

fn fail(message: String) -> ! {
    eprintln!("make-model: {message}");
    std::process::exit(2);
}

fn main() {
    let shape: String = arg("--shape", String::new());
    let out: PathBuf = arg("--out", PathBuf::new());
    let dtype = match arg("--dtype", "bf16".to_string()).as_str() {
        "bf16" => StoredDtype::BF16,
        "f16" => StoredDtype::F16,
        "f32" => StoredDtype::F32,
        other => fail(format!("--dtype {other}: expected bf16, f16 or f32")),
    };
    let seed: u64 = arg("--seed", 0);
    let layers: usize = arg("--layers", 0);
    let Some(smollm2) = std::env::var_os("SUBPRUNE_SMOLLM2_GGUF").map(PathBuf::from) else {
        fail("SUBPRUNE_SMOLLM2_GGUF is not set: run this through `cargo xtask make-model`".into())
    };
    if out.as_os_str().is_empty() {
        fail("--out DIR is required".into());
    }
    if out.exists() {
        fail(format!("{} exists; give a new directory", out.display()));
    }
    let gguf = GgufFile::open(&smollm2).unwrap_or_else(|e| fail(format!("{e}")));
    let tokenizer = Tokenizer::from_gguf(&gguf).unwrap_or_else(|e| fail(format!("{e}")));
    let vocab = tokenizer.inner().get_vocab_size(true);
    let mut config = config_for_shape(&shape, vocab, tokenizer.bos_id(), tokenizer.eos_id())
        .unwrap_or_else(|| fail(format!("--shape {shape:?}: expected one of {}", SHAPES.join(", "))));
    if layers > 0 {
        config["num_hidden_layers"] = layers.into();
    }
    config["torch_dtype"] = dtype.torch_name().into();
    let parsed = ModelConfig::from_hf_json(&config, Path::new("config.json")).unwrap_or_else(|e| fail(format!("{e}")));
    let norm_value = if parsed.spec().norm_offset != 0.0 { 0.0 } else { 1.0 };
    // Tensors in the order the decoder reads them: embedding, layers, head.
    let mut tensors = parsed.expected_tensors();
    let rank = |name: &str| match name {
        "model.embed_tokens.weight" => (0, 0),
        "model.norm.weight" | "lm_head.weight" => (usize::MAX, 0),
        _ => (1 + name.split('.').nth(2).and_then(|l| l.parse::<usize>().ok()).unwrap_or(0), 0),
    };
    tensors.sort_by(|a, b| rank(&a.0).cmp(&rank(&b.0)).then(a.0.cmp(&b.0)));

    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = parent.join(format!(".{}.tmp-{}", out.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(), std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap_or_else(|e| fail(format!("creating {}: {e}", tmp.display())));
    model::write_hf_metadata(&tmp, &config, Some(&tokenizer)).unwrap_or_else(|e| fail(format!("{e}")));
    std::fs::write(
        tmp.join("README.md"),
        format!(
            "# Random-weight `{shape}`-shaped checkpoint\n\nMade by subprune's `cargo xtask make-model --shape {shape} --seed {seed}` \
             for scale tests and benchmarks. The layer shapes are those of {shape}; the vocabulary and tokenizer are SmolLM2's; \
             the weights are random. Its perplexities and task scores mean nothing: only time and memory do.\n"
        ),
    )
    .unwrap_or_else(|e| fail(format!("writing README.md: {e}")));

    let layouts: Vec<TensorLayout> =
        tensors.iter().map(|(name, shape)| TensorLayout { name: name.clone(), dtype, shape: shape.clone() }).collect();
    let total: usize = layouts.iter().map(|l| l.shape.iter().product::<usize>()).sum();
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let started = Instant::now();
    let mut writer = ShardedWriter::create(&tmp, layouts, 5_000_000_000, metadata).unwrap_or_else(|e| fail(format!("{e}")));
    let mut done = 0usize;
    // A progress line on a terminal; in a log, only the summary below.
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    for (name, shape) in &tensors {
        let len: usize = shape.iter().product();
        writer.write(name, &values(name, len, seed, norm_value)).unwrap_or_else(|e| fail(format!("{e}")));
        done += len;
        if progress {
            eprint!("\rwrote {done} of {total} weights ({:.0}%)", 100.0 * done as f64 / total as f64);
        }
    }
    writer.finish().unwrap_or_else(|e| fail(format!("{e}")));
    std::fs::rename(&tmp, &out).unwrap_or_else(|e| fail(format!("renaming {} to {}: {e}", tmp.display(), out.display())));
    if progress {
        eprintln!();
    }
    eprintln!(
        "made {} ({shape}, {} layers, {total} weights, {dtype:?}) in {:.1} s",
        out.display(),
        parsed.num_layers(),
        started.elapsed().as_secs_f64()
    );
    println!("{}", out.display());
}
