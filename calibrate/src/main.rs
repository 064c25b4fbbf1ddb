//! `calibrate`: Wanda's activation statistics of a model on calibration
//! samples, sequential (pruning layer by layer, as the reference) or one-shot;
//! with SparseGPT also the inputs' Hessians and the mask it applied.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use artifacts::{ArtifactKind, Provenance};
use calibrate::{calibrate, calibrate_with_hessians, Activations, CalibrateOptions, SparseGptSettings};
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
    /// How the layers are pruned while calibrating (sequential mode): wanda
    /// or ria (by their scores), or sparsegpt (which also writes the inputs'
    /// Hessians to --hessians, for `mask --hessians`, and/or the mask it
    /// applied to --mask).
    #[arg(long, default_value = "wanda")]
    method: sparsity::Method,
    /// Hessians artifact to write with --method sparsegpt (Parquet; one
    /// in_features² / 2 f64 matrix per distinct input of each layer).
    #[arg(long)]
    hessians: Option<PathBuf>,
    /// Mask artifact to write with sequential --method sparsegpt: the masks
    /// and updated weights calibration applied (under its pattern and
    /// sparsity profile), the very artifact `mask --hessians` would compute
    /// again from the Hessians, without that second pass.
    #[arg(long, conflicts_with = "oneshot")]
    mask: Option<PathBuf>,
    /// SparseGPT: columns pruned and updated together.
    #[arg(long, default_value_t = sparsity::sparsegpt::DEFAULT_BLOCKSIZE)]
    blocksize: usize,
    /// SparseGPT: dampening of the Hessian's diagonal, as a fraction of its mean.
    #[arg(long, default_value_t = sparsity::sparsegpt::DEFAULT_PERCDAMP)]
    percdamp: f64,
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
            "--method {}: calibration prunes by scores that use the inputs' statistics (wanda or ria) or by SparseGPT; {} needs no calibration",
            cli.method,
            cli.method
        );
    }
    let sparsegpt = cli.method.updates_weights();
    match (sparsegpt, &cli.hessians, &cli.mask) {
        (true, None, None) => bail!(
            "--method sparsegpt writes the inputs' Hessians, which `mask --hessians` needs, or the mask it applied: give --hessians \
             hessians.parquet and/or --mask mask.parquet"
        ),
        (true, None, Some(_)) if cli.oneshot => bail!("--oneshot prunes nothing: give --hessians for `mask --hessians`"),
        (false, Some(_), _) => bail!("--hessians is written by --method sparsegpt only; the method is {}", cli.method),
        (false, _, Some(_)) => bail!(
            "--mask is written by --method sparsegpt only (its mask is the costly part); with {} make the mask with `mask --stats`",
            cli.method
        ),
        _ => {}
    }
    if sparsegpt && cli.group != Group::Row {
        bail!(
            "--group {}: SparseGPT chooses the weights to prune per block of columns, not by a comparison group; leave --group out",
            cli.group
        );
    }
    if cli.blocksize == 0 || !(cli.percdamp.is_finite() && cli.percdamp >= 0.0) {
        bail!("--blocksize must be at least 1 and --percdamp a finite number >= 0; found {} and {}", cli.blocksize, cli.percdamp);
    }
    let options = CalibrateOptions {
        pattern,
        group: cli.group,
        method: cli.method,
        sparsegpt: SparseGptSettings { blocksize: cli.blocksize, percdamp: cli.percdamp },
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
    let samples_hash = artifacts::content_hash(&cli.samples)?;
    let created_by = format!("subprune-calibrate {}", env!("CARGO_PKG_VERSION"));
    // SparseGPT's applied masks, written as each module is pruned when --mask
    // is given (in the model's module order, one layer's rows held at a time).
    let mut mask_writer = match &cli.mask {
        Some(path) => Some(artifacts::LayerOrderedMaskWriter::new(
            artifacts::MaskWriter::create(path, true).with_context(|| format!("writing {}", path.display()))?,
            loaded.config.linear_module_order(),
        )),
        None => None,
    };
    let mut mask_error: Option<artifacts::ArtifactError> = None;
    let mut pruned_weights = (0u64, 0u64);
    let mut collect_mask = |module: &str, cols: usize, keep: &[bool], updated: &[f32]| {
        let Some(writer) = mask_writer.as_mut().filter(|_| mask_error.is_none()) else { return };
        for (r, (bits, kept)) in sparsity::sparsegpt::kept_rows(keep, updated, cols).enumerate() {
            let row =
                artifacts::MaskRow { module: module.to_string(), row: r as u32, in_features: cols as u32, keep: bits, values: Some(kept) };
            if let Err(e) = writer.push(row) {
                mask_error = Some(e);
                return;
            }
        }
        pruned_weights.0 += keep.iter().filter(|k| !**k).count() as u64;
        pruned_weights.1 += keep.len() as u64;
    };
    let result = match &cli.hessians {
        None if !sparsegpt => calibrate(&loaded, &selected.device, &windows, &options, |_| bar.inc(1))?,
        None => calibrate_with_hessians(&loaded, &selected.device, &windows, &options, |_| bar.inc(1), |_| {}, &mut collect_mask)?,
        Some(path) => {
            // The Hessians are written by a thread of their own as each layer
            // yields them; a failed calibration abandons the file.
            let params = serde_json::json!({
                "method": cli.method.as_str(),
                "pattern": pattern.to_string(),
                "sparsity_profile": cli.sparsity_profile.as_str(),
                "oneshot": cli.oneshot,
                "blocksize": cli.blocksize,
                "percdamp": cli.percdamp,
                "activations": activations.as_str(),
                "nsamples": windows.len(),
                "seqlen": info.seqlen,
            });
            let provenance = Provenance::new(ArtifactKind::Hessians, loaded.fingerprint.clone(), params, created_by.clone())
                .with_input("samples", samples_hash.clone());
            let (sender, receiver) = std::sync::mpsc::sync_channel::<Result<artifacts::InputHessian>>(1);
            let writer = {
                let path = path.clone();
                std::thread::spawn(move || artifacts::write_hessians(&path, receiver, &provenance))
            };
            let result = calibrate_with_hessians(
                &loaded,
                &selected.device,
                &windows,
                &options,
                |_| bar.inc(1),
                |h| {
                    let _ = sender.send(Ok(h));
                },
                &mut collect_mask,
            );
            if let Err(e) = &result {
                let _ = sender.send(Err(anyhow::anyhow!("calibration failed: {e}")));
            }
            drop(sender);
            let written = writer.join().map_err(|_| anyhow::anyhow!("the Hessians writer panicked"))?;
            let result = result?;
            written.with_context(|| format!("writing {}", path.display()))?;
            result
        }
    };
    bar.finish_and_clear();

    let (sparsity, nm) = match pattern {
        Pattern::Unstructured { sparsity } => (Some(sparsity), None),
        Pattern::NM { n, m } => (None, Some(format!("{n}:{m}"))),
    };
    let mut params = serde_json::json!({
        "method": cli.method.as_str(),
        "sparsity_profile": cli.sparsity_profile.as_str(),
        "pattern": pattern.to_string(),
        "sparsity": sparsity,
        "nm": nm,
        "group": cli.group.to_string(),
        "oneshot": cli.oneshot,
        "activations": activations.as_str(),
        "blocksize": cli.blocksize,
        "percdamp": cli.percdamp,
        "batch": cli.batch,
        "nsamples": windows.len(),
        "seqlen": info.seqlen,
    });
    params[artifacts::PARAM_LAYER_SPARSITIES] = serde_json::json!(result.layer_sparsities);
    let provenance = Provenance::new(ArtifactKind::Stats, loaded.fingerprint.clone(), params.clone(), created_by.clone())
        .with_input("samples", samples_hash.clone());
    artifacts::write_stats(&cli.out, &result.stats, &provenance).with_context(|| format!("writing {}", cli.out.display()))?;
    if let Some(path) = &cli.mask {
        // The mask artifact `mask --hessians` writes, with the calibration's params in place of the Hessians'.
        let (pruned, total) = pruned_weights;
        let overall = if total == 0 { 0.0 } else { pruned as f64 / total as f64 };
        let info = artifacts::MaskInfo {
            method: cli.method.as_str().to_string(),
            sparsity: overall,
            pattern: pattern.to_string(),
            group: Group::Row.to_string(),
        };
        let mask_params = serde_json::json!({
            "method": cli.method.as_str(),
            "pattern": pattern.to_string(),
            "sparsity": sparsity,
            "nm": params["nm"],
            "group": Group::Row.to_string(),
            "calibrate_params": params,
        });
        let mask_provenance =
            Provenance::new(ArtifactKind::Mask, loaded.fingerprint.clone(), mask_params, created_by).with_input("samples", samples_hash);
        if let Some(e) = mask_error {
            return Err(e).with_context(|| format!("writing {}", path.display()));
        }
        let writer = mask_writer.expect("created with --mask");
        writer.finish(&info, &mask_provenance).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("mask: {} modules, sparsity {overall:.6}", result.applied_masks.len());
    }
    let tokens: usize = windows.iter().map(Vec::len).sum();
    eprintln!(
        "{} modules, {} samples, {tokens} tokens, {} mode, in {:.1} s",
        result.stats.len(),
        windows.len(),
        if cli.oneshot { "one-shot" } else { "sequential" },
        started.elapsed().as_secs_f64()
    );
    println!("wrote {}", cli.out.display());
    for path in cli.hessians.iter().chain(&cli.mask) {
        println!("wrote {}", path.display());
    }
    Ok(())
}
