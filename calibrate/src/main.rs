//! `calibrate`: Wanda's activation statistics of a model on calibration
//! samples, sequential (pruning layer by layer, as the reference) or one-shot.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use artifacts::{ArtifactKind, Provenance};
use calibrate::{calibrate, Activations, CalibrateOptions};
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use model::{load_model, select_device, DeviceChoice};
use sparsity::{Group, Pattern};

/// Gathers Wanda's statistic (running mean over samples of the squared L2
/// norm of each input column) for every linear module of every decoder layer.
#[derive(Parser)]
#[command(name = "calibrate", version, about)]
struct Cli {
    /// Model: a Hugging Face checkpoint directory or a GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// Samples artifact (from `datasets sample`) tokenized for this model.
    #[arg(long)]
    samples: PathBuf,
    /// Unstructured sparsity the layers are pruned with while calibrating (sequential mode).
    #[arg(long, conflicts_with = "nm", required_unless_present_any = ["nm", "oneshot"])]
    sparsity: Option<f64>,
    /// N:M pattern the layers are pruned with while calibrating, e.g. 2:4.
    #[arg(long)]
    nm: Option<String>,
    /// Comparison group of unstructured pruning: row (Wanda's default) or layer (RIA's default).
    #[arg(long, default_value = "row")]
    group: Group,
    /// Scores the layers are pruned by while calibrating (sequential mode): wanda or ria.
    #[arg(long, default_value = "wanda")]
    method: sparsity::Method,
    /// How --sparsity is spread over the layers: uniform, or owl (OWL's
    /// outlier-weighted layer sparsities, M = 5, lambda = 0.08, from a first
    /// pass over the dense model; recorded in the statistics for `mask`).
    #[arg(long, default_value = "uniform")]
    sparsity_profile: sparsity::owl::SparsityProfile,
    /// Gather every layer's statistics from the dense model in one pass instead of sequentially.
    #[arg(long)]
    oneshot: bool,
    /// Samples per forward pass: a throughput knob, results do not depend on it.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Precision of the samples' hidden states kept between layers: f32, or
    /// f16 / bf16 to halve their memory (layers still compute in f32 and the
    /// statistics accumulate in f64; the masks can differ slightly).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    activations: String,
    /// Compute device: cpu, wgpu or auto (a hardware GPU if present, else cpu).
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Statistics artifact to write (Parquet).
    #[arg(long)]
    out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    model::device::reuse_freed_memory();
    let pattern = match (&cli.sparsity, &cli.nm) {
        (Some(s), None) => Pattern::unstructured(*s)?,
        (None, Some(nm)) => Pattern::parse_nm(nm)?,
        (None, None) => Pattern::Unstructured { sparsity: 0.0 },
        (Some(_), Some(_)) => bail!("give either --sparsity or --nm, not both"),
    };
    let started = Instant::now();
    let loaded = load_model(&cli.model).with_context(|| format!("loading model {}", cli.model.display()))?;
    let (samples_provenance, info, samples) = artifacts::read_samples(&cli.samples)?;
    if samples_provenance.model != loaded.fingerprint {
        bail!(
            "{} was tokenized for model {} but {} is model {}: sample with this model first (`datasets sample --model ...`)",
            cli.samples.display(),
            samples_provenance.model,
            cli.model.display(),
            loaded.fingerprint
        );
    }
    let windows: Vec<Vec<u32>> = samples.into_iter().map(|s| s.tokens).collect();
    if windows.is_empty() {
        bail!("{} holds no samples", cli.samples.display());
    }
    let selected = select_device(cli.device)?;
    eprintln!("device: {}", selected.description);
    let activations = match cli.activations.as_str() {
        "f16" => Activations::F16,
        "bf16" => Activations::Bf16,
        _ => Activations::F32,
    };
    if !cli.method.needs_stats() {
        bail!(
            "--method {}: calibration prunes by scores that use the inputs' statistics (wanda or ria); {} needs no calibration",
            cli.method,
            cli.method
        );
    }
    let options = CalibrateOptions {
        pattern,
        group: cli.group,
        method: cli.method,
        profile: cli.sparsity_profile,
        oneshot: cli.oneshot,
        batch: cli.batch,
        activations,
    };

    let layers = loaded.config.num_layers();
    let bar = ProgressBar::new(layers as u64);
    if cli.quiet || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("calibrate [{bar:40}] layer {pos}/{len} ({elapsed} elapsed, eta {eta})").expect("valid template"),
    );
    let result = calibrate(&loaded, &selected.device, &windows, &options, |_| bar.inc(1))?;
    bar.finish_and_clear();

    let (sparsity, nm) = match pattern {
        Pattern::Unstructured { sparsity } => (Some(sparsity), None),
        Pattern::NM { n, m } => (None, Some(format!("{n}:{m}"))),
    };
    let params = serde_json::json!({
        "method": cli.method.as_str(),
        "sparsity_profile": cli.sparsity_profile.as_str(),
        "layer_sparsities": result.layer_sparsities,
        "pattern": pattern.to_string(),
        "sparsity": sparsity,
        "nm": nm,
        "group": cli.group.to_string(),
        "oneshot": cli.oneshot,
        "activations": activations.as_str(),
        "batch": cli.batch,
        "nsamples": windows.len(),
        "seqlen": info.seqlen,
    });
    let provenance = Provenance::new(
        ArtifactKind::Stats,
        loaded.fingerprint.clone(),
        params,
        format!("subprune-calibrate {}", env!("CARGO_PKG_VERSION")),
    )
    .with_input("samples", artifacts::content_hash(&cli.samples)?);
    artifacts::write_stats(&cli.out, &result.stats, &provenance).with_context(|| format!("writing {}", cli.out.display()))?;
    let tokens: usize = windows.iter().map(Vec::len).sum();
    eprintln!(
        "{} modules, {} samples, {tokens} tokens, {} mode, in {:.1} s",
        result.stats.len(),
        windows.len(),
        if cli.oneshot { "one-shot" } else { "sequential" },
        started.elapsed().as_secs_f64()
    );
    println!("wrote {}", cli.out.display());
    Ok(())
}
