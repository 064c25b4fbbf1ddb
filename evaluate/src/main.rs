//! `evaluate`: measures models. `evaluate ppl` computes perplexity on a text
//! file or on the token windows of a samples artifact; `evaluate generate`
//! prints what a model writes after prompts.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use artifacts::{ArtifactKind, Provenance, ResultRow, Sample, SamplesInfo};
use clap::{Args, Parser, Subcommand};
use evaluate::chat::{render_model_chat, ChatMessage};
use evaluate::generate::{generate, GenerationConfig};
use evaluate::{bootstrap_ci, make_windows, perplexity, window_nlls_streamed_from, WindowSpec};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use model::{select_device, DeviceChoice};

mod code_cli;
mod task_cli;
mod tasks;

use evaluate::choice::ChoiceTask;
use task_cli::TaskArgs;

/// Measures what a (pruned) model keeps: perplexity now, task suites later.
#[derive(Parser)]
#[command(name = "evaluate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Perplexity as Wanda defines it: non-overlapping windows, each predicted
    /// from its own start; prints `perplexity: <value>` as the last line.
    Ppl(PplArgs),
    /// Generates continuations of prompts and prints them (a quick look at
    /// what a model, or a sub-model with --mask, writes).
    Generate(GenerateArgs),
    /// PIQA, zero-shot multiple choice by log-likelihood; prints `acc` and `acc_norm`.
    Piqa(TaskArgs),
    /// HellaSwag, zero-shot multiple choice by log-likelihood; prints `acc` and `acc_norm`.
    Hellaswag(TaskArgs),
    /// ARC-Easy, zero-shot multiple choice by log-likelihood; prints `acc` and `acc_norm`.
    ArcEasy(TaskArgs),
    /// ARC-Challenge, zero-shot multiple choice by log-likelihood; prints `acc` and `acc_norm`.
    ArcChallenge(TaskArgs),
    /// WinoGrande, zero-shot partial scoring (log-likelihood of the sentence's rest after each option); prints `acc`.
    Winogrande(TaskArgs),
    /// BoolQ, zero-shot yes/no by log-likelihood; prints `acc`.
    Boolq(TaskArgs),
    /// GSM8K 8-shot chain-of-thought, greedy; exact match of the final number; prints `exact_match`.
    Gsm8k(tasks::Gsm8kArgs),
    /// Few-shot translation (Multi30k en->de or any parallel set), greedy; prints `meteor`.
    Translation(tasks::TranslationArgs),
    /// pass@k on HumanEval-X in one language: completions of each prompt run
    /// against its tests in the sandbox; prints `pass@1: <value>` (and pass@10) last.
    HumanevalX(HumanEvalXArgs),
    /// pass@k on MBPP (3-shot prompt, test tasks 11..510), run in the sandbox;
    /// prints `pass@1: <value>` (and pass@10) last.
    Mbpp(code_cli::CodeArgs),
    /// This machine's speed on a model, for time estimates: prefill tokens/s
    /// of one sequence (as perplexity and multiple-choice tasks run) and
    /// greedy decode tokens/s at batch 1 with the cache (as generation runs);
    /// prints one JSON line.
    Speed(SpeedArgs),
    /// The device `--device` picks on this machine: prints `cpu` or `wgpu`
    /// (what `auto` resolves to), so that a runner can pass every stage the
    /// device it will use.
    Device(DeviceArgs),
}

#[derive(Args)]
struct DeviceArgs {
    /// Compute device to resolve: cpu, wgpu or auto (a hardware GPU if present, else cpu).
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
}

#[derive(Args)]
struct SpeedArgs {
    /// Model: a Hugging Face checkpoint directory or a GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// Compute device: cpu, wgpu or auto (a hardware GPU if present, else cpu).
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Tokens of the timed prefill.
    #[arg(long, default_value_t = 256)]
    prefill_tokens: usize,
    /// Timed decoding steps.
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
}

#[derive(Args)]
struct HumanEvalXArgs {
    /// The language: python, cpp, java or js.
    #[arg(long)]
    lang: code_cli::Lang,
    #[command(flatten)]
    code: code_cli::CodeArgs,
}

#[derive(Args)]
struct GenerateArgs {
    /// Model: a Hugging Face checkpoint directory or a GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// A prompt.
    #[arg(long, conflicts_with = "prompts", required_unless_present = "prompts")]
    prompt: Option<String>,
    /// A file of prompts: a JSON array of strings, or else one prompt per line.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Wrap each prompt as a user message in the model's chat template (with the generation prompt).
    #[arg(long)]
    chat: bool,
    /// Most tokens generated per prompt.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus sampling threshold in (0, 1]; 1 samples from all tokens.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Seed of the sampling (each prompt draws from its own stream derived from it).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop string (repeatable): generation of a prompt ends when its text contains one, cut before it.
    #[arg(long)]
    stop: Vec<String>,
    /// Prompts decoded together (a throughput knob: the same bits at any batch up to 64 on the CPU).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Recompute the whole sequence at every step instead of using the key/value cache (slow; for comparison).
    #[arg(long)]
    no_cache: bool,
    /// Most tokens of a prompt-lookup draft checked per greedy step while at most four prompts decode
    /// (a speed knob: the tokens do not change on the CPU; 0 turns drafts off).
    #[arg(long, default_value_t = evaluate::generate::DRAFT_TOKENS)]
    draft_tokens: usize,
    /// Compute device: cpu, wgpu or auto (a hardware GPU if present, else cpu).
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Mask artifact to apply before generating (the sub-model it defines), made for this model.
    #[arg(long)]
    mask: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct PplArgs {
    /// Model: a Hugging Face checkpoint directory or a GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// Plain text file, tokenized once without special tokens and cut into windows.
    #[arg(long, conflicts_with = "samples", required_unless_present = "samples")]
    text: Option<PathBuf>,
    /// Samples artifact (Parquet, `tokens` column of list<u32>): its rows are the windows, used as stored.
    /// Repeat it (with as many --domain and --out, paired in order) to measure several texts in one pass
    /// through the model; each gets exactly the results it would get alone.
    #[arg(long)]
    samples: Vec<PathBuf>,
    /// Tokens per window (with --bos: BOS plus seqlen-1 text tokens). Required with --text; with --samples, checks every window has this length.
    #[arg(long)]
    seqlen: Option<usize>,
    /// Evaluate only the first K windows (of each input).
    #[arg(long)]
    max_windows: Option<usize>,
    /// Start every window with the model's BOS token (only with --text).
    #[arg(long, conflicts_with = "samples")]
    bos: bool,
    /// Mask artifact to apply before evaluating (the sub-model it defines), made for this model.
    #[arg(long)]
    mask: Option<PathBuf>,
    /// Domain of the text, recorded as the task `perplexity/<domain>` in the results (one per input).
    #[arg(long)]
    domain: Vec<String>,
    /// Count only the predictions made at positions K.. of each window (of
    /// its tokens K+1..): `--score-from 256` with `--seqlen 512` is
    /// llama.cpp's `llama-perplexity -c 512`, which scores the second half of
    /// each chunk. Default 0: every token after the first.
    #[arg(long, default_value_t = 0)]
    score_from: usize,
    /// Bootstrap resamples of the windows for the 95% confidence interval (0: none).
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Windows per forward pass (a throughput knob; results do not depend on it).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Compute device: cpu, wgpu or auto (a hardware GPU if present, else cpu).
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Results artifact to write (Parquet; one per input).
    #[arg(long)]
    out: Vec<PathBuf>,
    /// Also write the windows evaluated as a samples artifact, so another implementation can be fed exactly the same tokens.
    #[arg(long)]
    save_windows: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// One text `evaluate ppl` measures: its windows, where they came from, and
/// where its results go.
struct PplInput {
    windows: Vec<Vec<u32>>,
    input_name: &'static str,
    input_path: PathBuf,
    domain: Option<String>,
    out: Option<PathBuf>,
}

pub(crate) fn progress(len: usize, quiet: bool, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if quiet || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({elapsed} elapsed, eta {eta})").expect("valid template"));
    bar.set_message(what.to_string());
    bar
}

/// The `subprune.created_by` of every artifact this binary writes.
pub(crate) fn created_by() -> String {
    format!("subprune-evaluate {}", env!("CARGO_PKG_VERSION"))
}

fn run_ppl(args: PplArgs) -> Result<()> {
    let inputs = ppl_inputs_shape(&args)?;
    let (loaded, mask) = task_cli::load_masked(&args.model, args.mask.as_deref())?;
    let selected = select_device(args.device)?;
    eprintln!("device: {}", selected.description);

    let inputs: Vec<PplInput> = match &args.text {
        Some(text_path) => {
            let seqlen = args.seqlen.context("--seqlen is required with --text")?;
            let text = std::fs::read_to_string(text_path).with_context(|| format!("reading text file {}", text_path.display()))?;
            let tokenizer = loaded.tokenizer()?;
            let tokens = tokenizer.encode(&text, false)?;
            let bos = if args.bos {
                Some(tokenizer.bos_id().with_context(|| format!("--bos given but the model {} has no BOS token", args.model.display()))?)
            } else {
                None
            };
            let windows = make_windows(&tokens, &WindowSpec { seqlen, max_windows: args.max_windows, bos })
                .with_context(|| format!("cutting {} into windows", text_path.display()))?;
            let (domain, out) = inputs.into_iter().next().expect("one input with --text");
            vec![PplInput { windows, input_name: "text", input_path: text_path.clone(), domain, out }]
        }
        None => args
            .samples
            .iter()
            .zip(inputs)
            .map(|(path, (domain, out))| {
                Ok(PplInput { windows: read_windows(path, &loaded, &args)?, input_name: "samples", input_path: path.clone(), domain, out })
            })
            .collect::<Result<_>>()?,
    };

    if let Some(path) = &args.save_windows {
        let input = &inputs[0];
        let params = ppl_params(&args, input, &mask);
        save_windows(path, &input.windows, &loaded, input.input_name, &artifacts::content_hash(&input.input_path)?, &params)?;
    }

    // Every input's windows go through the model together, one layer at a
    // time; each window's NLL depends only on its own tokens.
    let all_windows: Vec<Vec<u32>> = inputs.iter().flat_map(|i| i.windows.iter().cloned()).collect();
    let bar = progress(loaded.config.num_layers() + 2, args.quiet, "perplexity (embedding, layers, head)");
    let compute_started = Instant::now();
    let all_nlls = window_nlls_streamed_from(&loaded, &selected.device, &all_windows, args.batch, args.score_from, || bar.inc(1))?;
    bar.finish_and_clear();
    let seconds = compute_started.elapsed().as_secs_f64();
    eprintln!("{} windows, {:.1} tokens/s", all_windows.len(), all_windows.iter().map(Vec::len).sum::<usize>() as f64 / seconds);

    let mut rest = all_nlls.as_slice();
    for input in &inputs {
        let (nlls, after) = rest.split_at(input.windows.len());
        rest = after;
        report_ppl(&args, &loaded, &mask, input, nlls)?;
    }
    Ok(())
}

/// Checks that --samples, --domain and --out pair up, and returns each
/// input's (domain, out) in order.
fn ppl_inputs_shape(args: &PplArgs) -> Result<Vec<(Option<String>, Option<PathBuf>)>> {
    let count = if args.text.is_some() { 1 } else { args.samples.len() };
    if count == 0 {
        bail!("give exactly one of --text FILE or --samples samples.parquet");
    }
    for (flag, given) in [("--domain", args.domain.len()), ("--out", args.out.len())] {
        if given > 1 && given != count {
            bail!("{flag} given {given} times for {count} inputs: give it once per input, in the same order, or not at all");
        }
        if given == 1 && count > 1 {
            bail!("{flag} given once for {count} inputs: give it once per input, in the same order, or not at all");
        }
    }
    if count > 1 && args.domain.is_empty() {
        bail!("{count} --samples given without --domain: name each input's domain, in the same order");
    }
    if args.save_windows.is_some() && count > 1 {
        bail!("--save-windows takes one input, found {count} --samples");
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = args.out.iter().find(|o| !seen.insert(*o)) {
        bail!("--out {} is given twice: every input needs its own results file", dup.display());
    }
    Ok((0..count).map(|i| (args.domain.get(i).cloned(), args.out.get(i).cloned())).collect())
}

/// The windows of one samples artifact, checked against the model and --seqlen.
fn read_windows(samples_path: &Path, loaded: &model::LoadedModel, args: &PplArgs) -> Result<Vec<Vec<u32>>> {
    let (provenance, _info, samples) = artifacts::read_samples(samples_path)?;
    if provenance.model != loaded.fingerprint {
        bail!(
            "{} was made for model {} but {} is model {}: samples must be tokenized for the model evaluated",
            samples_path.display(),
            provenance.model,
            args.model.display(),
            loaded.fingerprint
        );
    }
    let mut windows: Vec<Vec<u32>> = samples.into_iter().map(|s| s.tokens).collect();
    if let Some(k) = args.max_windows {
        windows.truncate(k);
    }
    if let Some(seqlen) = args.seqlen {
        if let Some((i, w)) = windows.iter().enumerate().find(|(_, w)| w.len() != seqlen) {
            bail!("{}: window {i} has {} tokens, expected --seqlen {seqlen}", samples_path.display(), w.len());
        }
    }
    if windows.is_empty() {
        bail!("{}: no windows to evaluate", samples_path.display());
    }
    Ok(windows)
}

/// The parameters recorded in one input's results provenance.
fn ppl_params(args: &PplArgs, input: &PplInput, mask: &Option<(String, String)>) -> serde_json::Value {
    serde_json::json!({
        "task": "perplexity",
        "seqlen": args.seqlen,
        "max_windows": args.max_windows,
        "bos": args.bos,
        "windows": input.windows.len(),
        "mask": mask.as_ref().map(|(name, _)| name),
        "domain": input.domain,
        "score_from": args.score_from,
        "bootstrap": args.bootstrap,
        "seed": args.seed,
    })
}

/// Prints one input's perplexity and interval and writes its results and items.
fn report_ppl(
    args: &PplArgs,
    loaded: &model::LoadedModel,
    mask: &Option<(String, String)>,
    input: &PplInput,
    nlls: &[evaluate::WindowNll],
) -> Result<()> {
    let ppl = perplexity(nlls);
    let predicted: usize = nlls.iter().map(|w| w.tokens).sum();
    let name = input.domain.as_deref().map_or_else(|| input.input_path.display().to_string(), str::to_string);
    eprintln!("{name}: {} windows, {predicted} predicted tokens", nlls.len());
    let ci = bootstrap_ci(nlls, args.bootstrap, args.seed);
    if let Some((lo, hi)) = ci {
        eprintln!("{name}: 95% bootstrap interval over {} windows: [{lo:.4}, {hi:.4}]", nlls.len());
    }
    if let Some(out) = &input.out {
        let input_hash = artifacts::content_hash(&input.input_path)?;
        let mut provenance =
            Provenance::new(ArtifactKind::Results, loaded.fingerprint.clone(), ppl_params(args, input, mask), created_by())
                .with_input(input.input_name, &input_hash);
        if let Some((_, hash)) = mask {
            provenance = provenance.with_input("mask", hash);
        }
        // Each window's mean NLL per predicted token, beside the results, so
        // that two models' perplexities can be compared window by window.
        let items: Vec<artifacts::ItemRow> = nlls
            .iter()
            .enumerate()
            .map(|(i, w)| artifacts::ItemRow { item: i as u64, score: Some(w.nll_sum / w.tokens as f64), ..Default::default() })
            .collect();
        let items_path = artifacts::items_path_for(out);
        let mut items_provenance = provenance.clone();
        items_provenance.kind = ArtifactKind::Items;
        artifacts::write_items(&items_path, &items, &items_provenance).with_context(|| format!("writing {}", items_path.display()))?;
        let row = ResultRow {
            model: args.model.display().to_string(),
            mask: mask.as_ref().map(|(name, _)| name.clone()),
            task: input.domain.as_ref().map_or_else(|| "perplexity".to_string(), |d| format!("perplexity/{d}")),
            metric: "perplexity".into(),
            value: ppl,
            n: predicted as u64,
            stderr: None,
            ci_low: ci.map(|c| c.0),
            ci_high: ci.map(|c| c.1),
        };
        artifacts::write_results(out, &[row], &provenance).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    match &input.domain {
        Some(domain) if args.samples.len() > 1 => println!("perplexity/{domain}: {ppl:.6}"),
        _ => println!("perplexity: {ppl:.6}"),
    }
    Ok(())
}

/// Prompts of `evaluate generate`: `--prompt`, or the file `--prompts` (a
/// JSON array of strings, else one prompt per non-empty line).
fn read_prompts(args: &GenerateArgs) -> Result<Vec<String>> {
    if let Some(p) = &args.prompt {
        return Ok(vec![p.clone()]);
    }
    let path = args.prompts.as_ref().context("give --prompt TEXT or --prompts FILE")?;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading prompts file {}", path.display()))?;
    let prompts: Vec<String> = if text.trim_start().starts_with('[') {
        serde_json::from_str(&text).with_context(|| {
            format!("{}: starts with `[` but is not a JSON array of strings (expected [\"prompt\", ...])", path.display())
        })?
    } else {
        text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
    };
    if prompts.is_empty() {
        bail!("{}: expected at least one prompt (a JSON array of strings or one prompt per line); found none", path.display());
    }
    Ok(prompts)
}

fn run_generate(args: GenerateArgs) -> Result<()> {
    let prompts = read_prompts(&args)?;
    let (loaded, _mask) = task_cli::load_masked(&args.model, args.mask.as_deref())?;
    let prompts: Vec<String> = if args.chat {
        prompts.iter().map(|p| render_model_chat(&loaded, &[ChatMessage::user(p.clone())], true)).collect::<Result<_, _>>()?
    } else {
        prompts
    };
    let selected = select_device(args.device)?;
    eprintln!("device: {}", selected.description);
    let model = loaded.build_stored(&selected.device)?;
    let config = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        stop: args.stop.clone(),
        use_cache: !args.no_cache,
        // A rendered chat template holds its own special tokens.
        add_special_tokens: !args.chat,
        draft_tokens: args.draft_tokens,
    };
    let bar = progress(prompts.len(), args.quiet, "generate");
    let compute_started = Instant::now();
    let generations = generate(&model, loaded.tokenizer()?, &prompts, &config, args.batch, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    let tokens: usize = generations.iter().map(|g| g.tokens.len()).sum();
    eprintln!("{tokens} tokens generated in {:.2} s", compute_started.elapsed().as_secs_f64());
    for (i, (prompt, g)) in prompts.iter().zip(&generations).enumerate() {
        println!(
            "=== prompt {i} ===\n{prompt}\n=== generation {i} ({} tokens, finish: {}) ===\n{}",
            g.tokens.len(),
            g.finish.as_str(),
            g.text
        );
    }
    Ok(())
}

fn run_speed(args: SpeedArgs) -> Result<()> {
    if args.prefill_tokens < 2 || args.decode_tokens == 0 {
        bail!("expected --prefill-tokens of at least 2 and --decode-tokens of at least 1");
    }
    let loaded = model::load_model(&args.model).with_context(|| format!("loading model {}", args.model.display()))?;
    let selected = select_device(args.device)?;
    eprintln!("device: {}", selected.description);
    // Token ids spread over the vocabulary: the speed does not depend on which.
    let vocab = loaded.config.vocab_size() as u64;
    let tokens: Vec<u32> = (0..args.prefill_tokens as u64).map(|i| ((i * 7919 + 13) % vocab) as u32).collect();
    // Prefill as `evaluate ppl` runs it, one layer at a time, so the probe
    // needs no more memory than perplexity does. Each pass reads and widens
    // every layer's weights, which a perplexity run does once for all its
    // windows: the speed is that of the tokens past a two-token pass's
    // (timed after a first one, which also fills the page cache and
    // compiles wgpu's kernels).
    let streamed_pass = |tokens: &[u32]| -> Result<f64> {
        let started = Instant::now();
        window_nlls_streamed_from(&loaded, &selected.device, &[tokens.to_vec()], 1, 0, || {})?;
        Ok(started.elapsed().as_secs_f64())
    };
    streamed_pass(&tokens[..2])?;
    let weights_only = streamed_pass(&tokens[..2])?;
    let whole = streamed_pass(&tokens)?;
    // A model so small that reading it is lost in the noise: the whole pass.
    let beyond_reading = whole - weights_only;
    let prefill = if beyond_reading > 0.0 { (args.prefill_tokens - 2) as f64 / beyond_reading } else { args.prefill_tokens as f64 / whole };
    let model = loaded.build_stored(&selected.device)?;
    let mut cache = model.new_cache(1);
    let mut logits = model.forward_cached_last(&[tokens[..16.min(tokens.len())].to_vec()], &mut cache)?;
    let started = Instant::now();
    for _ in 0..args.decode_tokens {
        let next = logits.argmax(1).into_data().iter::<i64>().next().context("no logits")? as u32;
        logits = model.forward_cached_last(&[vec![next]], &mut cache)?;
    }
    let decode = args.decode_tokens as f64 / started.elapsed().as_secs_f64();
    println!("{}", serde_json::json!({ "prefill_tokens_per_s": prefill, "decode_tokens_per_s": decode }));
    Ok(())
}

/// The name a mask is known by in results: its file stem.
pub(crate) fn mask_name(path: &Path) -> String {
    path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned())
}

fn save_windows(
    path: &Path,
    windows: &[Vec<u32>],
    loaded: &model::LoadedModel,
    input_name: &str,
    input_hash: &str,
    params: &serde_json::Value,
) -> Result<()> {
    let tokenizer_hash = loaded.tokenizer.as_ref().map(|t| t.fingerprint()).unwrap_or_default();
    let info = SamplesInfo { tokenizer_hash, seqlen: windows.iter().map(Vec::len).max().unwrap_or(0), seed: None };
    let samples: Vec<Sample> =
        windows.iter().enumerate().map(|(i, w)| Sample { sample_id: i as u64, domain: "eval".into(), tokens: w.clone() }).collect();
    let provenance =
        Provenance::new(ArtifactKind::Samples, loaded.fingerprint.clone(), params.clone(), created_by()).with_input(input_name, input_hash);
    artifacts::write_samples(path, &samples, &info, &provenance).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote the {} windows to {}", windows.len(), path.display());
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Ppl(args) => run_ppl(args),
        Command::Generate(args) => run_generate(args),
        Command::Speed(args) => run_speed(args),
        Command::Device(args) => {
            let selected = select_device(args.device)?;
            eprintln!("device: {}", selected.description);
            println!("{}", selected.resolved);
            Ok(())
        }
        Command::HumanevalX(args) => code_cli::run_code_task(evaluate::code_tasks::CodeTask::HumanEvalX(args.lang.into()), args.code),
        Command::Mbpp(args) => code_cli::run_code_task(evaluate::code_tasks::CodeTask::Mbpp, args),
        Command::Piqa(args) => tasks::run_choice(ChoiceTask::Piqa, args),
        Command::Hellaswag(args) => tasks::run_choice(ChoiceTask::Hellaswag, args),
        Command::ArcEasy(args) => tasks::run_choice(ChoiceTask::ArcEasy, args),
        Command::ArcChallenge(args) => tasks::run_choice(ChoiceTask::ArcChallenge, args),
        Command::Winogrande(args) => tasks::run_choice(ChoiceTask::Winogrande, args),
        Command::Boolq(args) => tasks::run_choice(ChoiceTask::Boolq, args),
        Command::Gsm8k(args) => tasks::run_gsm8k(args),
        Command::Translation(args) => tasks::run_translation(args),
    }
}
