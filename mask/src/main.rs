//! `mask`: the keep-mask of every prunable linear module from a scores
//! artifact (or from statistics and the model's weights, for models whose
//! scores file would be too large, or, for SparseGPT, from the inputs'
//! Hessians, with the updated kept weights); `mask apply` writes the pruned
//! model as a Hugging Face directory or a GGUF file.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mask::{ApplyOptions, OutputDtype};
use sparsity::{Group, Method, Pattern};

/// Selects the weights to prune from a scores artifact and writes a mask
/// artifact; `mask apply` zeroes them in a model and writes it out.
#[derive(Parser)]
#[command(name = "mask", version, about, args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    make: MakeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Zero the weights a mask prunes and write the model as a Hugging Face
    /// directory (config.json, tokenizer.json, model.safetensors) that
    /// transformers loads.
    Apply(ApplyArgs),
}

#[derive(Args)]
struct MakeArgs {
    /// Scores artifact written by `score`.
    #[arg(long, required_unless_present_any = ["stats", "hessians"], conflicts_with_all = ["stats", "hessians"])]
    scores: Option<PathBuf>,
    /// Statistics artifact written by `calibrate`: compute the scores module by
    /// module from it and --model's weights instead of reading --scores (no
    /// scores file, whose size would limit large models). With --hessians:
    /// the same run's statistics, for OWL's layer sparsities.
    #[arg(long, requires = "model")]
    stats: Option<PathBuf>,
    /// Hessians artifact written by `calibrate --method sparsegpt`: prune
    /// every module with SparseGPT, whose updated kept weights the mask
    /// artifact then carries.
    #[arg(long, requires = "model")]
    hessians: Option<PathBuf>,
    /// The model the statistics or Hessians were gathered on.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Method: with --stats wanda (default), ria or magnitude; with --hessians sparsegpt.
    #[arg(long)]
    method: Option<sparsity::Method>,
    /// With --stats or --hessians: uniform, or owl (each layer at the OWL
    /// sparsity that `calibrate --sparsity-profile owl` recorded in the statistics).
    #[arg(long, default_value = "uniform")]
    sparsity_profile: sparsity::owl::SparsityProfile,
    /// Unstructured pruning: the fraction of weights pruned in every comparison group, in [0, 1).
    #[arg(long, conflicts_with = "nm", required_unless_present = "nm")]
    sparsity: Option<f64>,
    /// N:M pruning, e.g. 2:4: in every group of M consecutive inputs of a row, the N lowest scores pruned.
    #[arg(long)]
    nm: Option<String>,
    /// Over which weights scores are compared for unstructured pruning: row (each output row, Wanda's default) or layer (the whole matrix).
    #[arg(long, default_value = "row")]
    group: Group,
    /// Mask artifact to write (Parquet).
    #[arg(long, required = true)]
    out: Option<PathBuf>,
    /// No progress bar and no per-layer summary.
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum DtypeArg {
    /// float32: the weights exactly as loaded.
    F32,
    /// float16.
    F16,
    /// bfloat16.
    Bf16,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum FormatArg {
    /// A Hugging Face directory (config.json, safetensors, tokenizer).
    Hf,
    /// One GGUF file that llama.cpp loads (GGUF sources only: their metadata and tokenizer are carried over).
    Gguf,
    /// A Hugging Face directory whose pruned linears are stored compressed:
    /// their keep bits and kept values only (the sparse format in the README).
    /// subprune loads it, and decodes from it with sparse kernels; transformers does not load it.
    Sparse,
}

#[derive(Clone, Copy, ValueEnum)]
enum GgufTypeArg {
    /// float32: the masked weights exactly.
    F32,
    /// float16.
    F16,
    /// ggml's Q8_0 blocks.
    #[value(name = "q8_0")]
    Q8_0,
}

#[derive(Args)]
struct ApplyArgs {
    /// Model the mask was made for: a Hugging Face checkpoint directory or a GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// Mask artifact written by `mask`.
    #[arg(long)]
    mask: PathBuf,
    /// Output directory (Hugging Face layout), or file with --format gguf; must not exist or be empty unless --force.
    #[arg(long)]
    out: PathBuf,
    /// What to write: a Hugging Face directory, or a GGUF file (the source's
    /// tensors and metadata, its pruned linears in --type).
    #[arg(long, value_enum, default_value = "hf")]
    format: FormatArg,
    /// With --format gguf: storage type of the pruned linears (the other tensors keep theirs).
    #[arg(long = "type", value_enum, default_value = "f16")]
    gguf_type: GgufTypeArg,
    /// Storage type of the written weights [default: each tensor's type in a
    /// safetensors source (bf16 stays bf16); f32 for a GGUF source].
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
    /// Replace a non-empty output directory.
    #[arg(long)]
    force: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn progress(quiet: bool, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    if quiet || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} modules ({elapsed})").expect("valid template"));
    bar.set_message(what.to_string());
    bar
}

fn run_make(args: MakeArgs) -> Result<()> {
    let out = args.out.context("--out is required")?;
    let pattern = match (args.sparsity, &args.nm) {
        (Some(s), None) => Pattern::unstructured(s)?,
        (None, Some(nm)) => Pattern::parse_nm(nm)?,
        _ => anyhow::bail!("give exactly one of --sparsity S or --nm N:M"),
    };
    let started = Instant::now();
    let bar = progress(args.quiet, "masking");
    let profile = args.sparsity_profile;
    if args.scores.is_some() && (args.method.is_some() || profile != sparsity::owl::SparsityProfile::Uniform || args.model.is_some()) {
        anyhow::bail!("--scores already holds the method's scores: --method, --sparsity-profile and --model go with --stats or --hessians");
    }
    let summary = match (&args.scores, &args.stats, &args.hessians, &args.model) {
        (Some(scores), None, None, _) => mask::make_mask(scores, pattern, args.group, &out, &bar)
            .with_context(|| format!("making a {} mask from {}", pattern, scores.display()))?,
        (None, stats, Some(hessians), Some(model)) => {
            let method = args.method.unwrap_or(Method::SparseGpt);
            if method != Method::SparseGpt || args.group != Group::Row {
                anyhow::bail!(
                    "--hessians makes SparseGPT masks (--method sparsegpt, no --group); found --method {method} --group {}",
                    args.group
                );
            }
            mask::make_mask_from_hessians(model, hessians, stats.as_deref(), (pattern, profile), &out, &bar)
                .with_context(|| format!("making a SparseGPT {} mask from {} and {}", pattern, hessians.display(), model.display()))?
        }
        (None, Some(stats), None, Some(model)) => {
            let method = args.method.unwrap_or(Method::Wanda);
            if method.updates_weights() {
                anyhow::bail!("--method {method} is made from the Hessians of `calibrate --method {method}`: give --hessians");
            }
            mask::make_mask_from_stats(model, stats, method, (pattern, profile), args.group, &out, &bar)
                .with_context(|| format!("making a {} {} mask from {} and {}", method, pattern, stats.display(), model.display()))?
        }
        _ => anyhow::bail!("give --scores, or --stats with --model, or --hessians with --model"),
    };
    bar.finish_and_clear();
    if let Some(w) = &summary.warning {
        eprintln!("{w}");
    }
    if !args.quiet {
        for (layer, pruned, total) in mask::per_layer(&summary.modules) {
            let name = layer.map_or_else(|| "other".to_string(), |l| format!("layer {l}"));
            eprintln!("{name:>9}: pruned {:.4} ({pruned} of {total})", pruned as f64 / total.max(1) as f64);
        }
    }
    eprintln!("wrote {} ({}) in {:.2} s", out.display(), summary.hash, started.elapsed().as_secs_f64());
    println!("sparsity: {:.6}", summary.sparsity);
    Ok(())
}

fn run_apply(args: ApplyArgs) -> Result<()> {
    let started = Instant::now();
    let dtype = args.dtype.map(|d| match d {
        DtypeArg::F32 => OutputDtype::F32,
        DtypeArg::F16 => OutputDtype::F16,
        DtypeArg::Bf16 => OutputDtype::Bf16,
    });
    if args.format == FormatArg::Gguf && dtype.is_some() {
        anyhow::bail!("--dtype is for --format hf and sparse; with --format gguf give --type f32|f16|q8_0");
    }
    let gguf = (args.format == FormatArg::Gguf).then_some(match args.gguf_type {
        GgufTypeArg::F32 => mask::GgufWeightType::F32,
        GgufTypeArg::F16 => mask::GgufWeightType::F16,
        GgufTypeArg::Q8_0 => mask::GgufWeightType::Q8_0,
    });
    let opts = ApplyOptions {
        model: args.model.clone(),
        mask: args.mask.clone(),
        out: args.out.clone(),
        dtype,
        gguf,
        sparse: args.format == FormatArg::Sparse,
        force: args.force,
    };
    let bar = progress(args.quiet, "applying");
    let summary = mask::apply(&opts, &bar)
        .with_context(|| format!("applying {} to {} into {}", args.mask.display(), args.model.display(), args.out.display()))?;
    bar.finish_and_clear();
    let stored = match gguf {
        Some(ty) => ty.ggml().name(),
        None => dtype.map_or("the source's types", |d| d.stored().torch_name()).to_string(),
    };
    eprintln!("wrote {} ({stored}) in {:.2} s", args.out.display(), started.elapsed().as_secs_f64());
    println!(
        "pruned linear layers: {} modules, {} of {} weights zero, sparsity {:.6} (mask prunes {:.6})",
        summary.modules,
        summary.zeros,
        summary.total,
        summary.zeros as f64 / summary.total.max(1) as f64,
        summary.masked as f64 / summary.total.max(1) as f64
    );
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Apply(args)) => run_apply(args),
        None => run_make(cli.make),
    }
}
