//! What every `evaluate TASK` subcommand shares: its common options, loading
//! the (masked) model, and writing the results and items artifacts.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use artifacts::{ArtifactKind, ItemRow, Provenance, ResultRow};
use clap::Args;
use evaluate::apply_mask_file;
use evaluate::generate::{Generation, GenerationConfig, GenerationRequest};
use evaluate::journal::Journal;
use model::{load_model, select_device, Decoder, DeviceChoice, LoadedModel};

/// Options shared by every task: `evaluate TASK --model M [--data PATH] [--limit N] [--device D] --out results.parquet`.
#[derive(Args, Debug, Clone)]
pub struct TaskArgs {
    /// Model: a Hugging Face checkpoint directory or a GGUF file (every task
    /// needs one, except the code tasks with --canonical or --completions).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The task's data: a file (JSONL, JSONL.gz, JSON or Parquet in Hugging Face layout) or a directory holding it.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Evaluate only the first N items (in the data file's order).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Mask artifact to apply before evaluating (the sub-model it defines), made for this model.
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// Compute device: cpu, wgpu or auto (a hardware GPU if present, else cpu).
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Sequences per forward pass (a throughput knob: generation gives the same bits at any batch up to
    /// 64; multiple-choice log-likelihoods of short requests can differ in their last bits).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Most tokens of a prompt-lookup draft checked per greedy step while at most four sequences decode
    /// (generation tasks; a speed knob: the tokens do not change on the CPU; 0 turns drafts off).
    #[arg(long, default_value_t = evaluate::generate::DRAFT_TOKENS)]
    pub draft_tokens: usize,
    /// Results artifact to write (Parquet); the per-item outputs go beside it as `<name>.items.parquet`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl TaskArgs {
    /// The model path, or an error saying that `--model` is needed.
    pub fn model_path(&self) -> Result<&Path> {
        self.model.as_deref().ok_or_else(|| {
            anyhow::anyhow!("--model is required: the model to evaluate (a Hugging Face checkpoint directory or a GGUF file)")
        })
    }
}

/// A model ready for a task: the loaded files, the model on its device, and
/// the mask applied to it (name and content hash).
pub struct TaskModel {
    /// The loaded checkpoint (configuration, tokenizer, fingerprint), mask applied.
    pub loaded: LoadedModel,
    /// The model built on the selected device.
    pub model: Decoder,
    /// The applied mask's name (file stem) and content hash.
    pub mask: Option<(String, String)>,
}

/// Loads `args.model`, applies `args.mask` and builds the model on the
/// chosen device, its matrices kept in their stored form on the CPU (no f32
/// copy of the model; the same results bit for bit, see
/// [`model::Decoder::from_weights_stored`]).
pub fn load_task_model(args: &TaskArgs) -> Result<TaskModel> {
    let (loaded, mask) = load_masked(args.model_path()?, args.mask.as_deref())?;
    let selected = select_device(args.device)?;
    eprintln!("device: {}", selected.description);
    let model = loaded.build_stored(&selected.device)?;
    Ok(TaskModel { loaded, model, mask })
}

/// Loads the model at `model_path` and applies the mask artifact at
/// `mask_path`, if any; returns the model and the mask's name and content hash.
pub fn load_masked(model_path: &Path, mask_path: Option<&Path>) -> Result<(LoadedModel, Option<(String, String)>)> {
    let started = Instant::now();
    let mut loaded = load_model(model_path).with_context(|| format!("loading model {}", model_path.display()))?;
    eprintln!("loaded {} ({} layers) in {:.2} s", model_path.display(), loaded.config.num_layers(), started.elapsed().as_secs_f64());
    let mask = match mask_path {
        Some(path) => {
            let counts = apply_mask_file(&mut loaded, path).with_context(|| format!("applying mask {}", path.display()))?;
            eprintln!(
                "applied {}: {} of {} weights pruned ({:.2}%) in {} modules",
                path.display(),
                counts.masked,
                counts.total,
                100.0 * counts.masked as f64 / counts.total.max(1) as f64,
                counts.modules
            );
            Some((crate::mask_name(path), artifacts::content_hash(path)?))
        }
        None => None,
    };
    Ok((loaded, mask))
}

/// One metric of a task run, e.g. `acc` with its standard error.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Metric name as printed (`acc`, `acc_norm`, `pass@1`, `exact_match`, `meteor`).
    pub name: String,
    /// Its value.
    pub value: f64,
    /// Number of items it is computed over.
    pub n: u64,
    /// Standard error, if known.
    pub stderr: Option<f64>,
    /// 95% confidence interval, if known.
    pub ci: Option<(f64, f64)>,
}

/// The model a task's results are recorded under: its name in the results,
/// its fingerprint in the provenance and the mask applied (name, content hash).
pub struct OutputModel {
    /// Name in the `model` column (the model path, or what was scored instead of a model).
    pub label: String,
    /// Model fingerprint recorded in the provenance.
    pub fingerprint: String,
    /// The applied mask's name and content hash.
    pub mask: Option<(String, String)>,
}

impl OutputModel {
    /// The record of a loaded task model.
    pub fn of(args: &TaskArgs, task: &TaskModel) -> OutputModel {
        let label = args.model.as_deref().map_or_else(|| "none".to_string(), |m| m.display().to_string());
        OutputModel { label, fingerprint: task.loaded.fingerprint.clone(), mask: task.mask.clone() }
    }

    /// The record of a run without a model (reference solutions or given outputs scored): `label` says what was scored.
    pub fn none(label: &str) -> OutputModel {
        OutputModel { label: label.to_string(), fingerprint: "none".into(), mask: None }
    }
}

/// Writes the results artifact (one row per metric) and, beside it, the items
/// artifact, when `args.out` is given; then prints `<metric>: <value>` lines
/// as the last lines of stdout.
///
/// `data` is the data file read (its content hash goes into the provenance);
/// `params` the task's options as JSON.
pub fn finish_task(
    args: &TaskArgs,
    task: &TaskModel,
    task_name: &str,
    data: &Path,
    params: serde_json::Value,
    metrics: &[Metric],
    items: &[ItemRow],
) -> Result<()> {
    write_task_outputs(args.out.as_deref(), &OutputModel::of(args, task), task_name, data, params, metrics, items)
}

/// What [`finish_task`] does, for a run recorded under `model`: writes the
/// results and items artifacts when `out` is given, then prints the metrics.
pub fn write_task_outputs(
    out: Option<&Path>,
    model: &OutputModel,
    task_name: &str,
    data: &Path,
    params: serde_json::Value,
    metrics: &[Metric],
    items: &[ItemRow],
) -> Result<()> {
    if let Some(out) = out {
        let data_hash = artifacts::content_hash(data)?;
        let provenance = |kind| {
            let mut p =
                Provenance::new(kind, model.fingerprint.clone(), params.clone(), crate::created_by()).with_input("data", &data_hash);
            if let Some((_, hash)) = &model.mask {
                p = p.with_input("mask", hash);
            }
            p
        };
        let items_path = artifacts::items_path_for(out);
        let items_hash = artifacts::write_items(&items_path, items, &provenance(ArtifactKind::Items))
            .with_context(|| format!("writing {}", items_path.display()))?;
        let rows: Vec<ResultRow> = metrics
            .iter()
            .map(|m| ResultRow {
                model: model.label.clone(),
                mask: model.mask.as_ref().map(|(name, _)| name.clone()),
                task: task_name.to_string(),
                metric: m.name.clone(),
                value: m.value,
                n: m.n,
                stderr: m.stderr,
                ci_low: m.ci.map(|c| c.0),
                ci_high: m.ci.map(|c| c.1),
            })
            .collect();
        artifacts::write_results(out, &rows, &provenance(ArtifactKind::Results).with_input("items", &items_hash))
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wrote {} and {}", out.display(), items_path.display());
    }
    for m in metrics {
        println!("{}: {:.4}", m.name, m.value);
    }
    Ok(())
}

/// Runs `request` with a journal beside `out` (`<out>.journal.jsonl`,
/// when `out` is given), so that a run stopped part way resumes from the
/// generations it finished. The journal belongs to this program, the model
/// (its `fingerprint`), the `mask`, the prompts and the configuration; it
/// is returned to be removed once the results are written.
pub fn generate_journaled(
    request: GenerationRequest<'_>,
    fingerprint: &str,
    mask: Option<&(String, String)>,
    out: Option<&Path>,
    bar: &indicatif::ProgressBar,
) -> Result<(Vec<Vec<Generation>>, Option<Journal>)> {
    let drafted_before = evaluate::generate::drafted_tokens_on_this_thread();
    let report_drafts = |generations: &[Vec<Generation>]| {
        let drafted = evaluate::generate::drafted_tokens_on_this_thread() - drafted_before;
        if drafted > 0 {
            let tokens: usize = generations.iter().flatten().map(|g| g.tokens.len()).sum();
            eprintln!("{drafted} generated tokens came from prompt-lookup drafts ({tokens} tokens in all)");
        }
    };
    let Some(out) = out else {
        let generations = request.run(|k| bar.inc(k as u64))?;
        report_drafts(&generations);
        return Ok((generations, None));
    };
    let name = out.file_name().with_context(|| format!("--out {} names no file", out.display()))?;
    let path = out.with_file_name(format!("{}.journal.jsonl", name.to_string_lossy()));
    let program = std::env::current_exe().context("finding this program's file")?;
    let mut prompts_hash = std::collections::hash_map::DefaultHasher::new();
    request.prompts.hash(&mut prompts_hash);
    let key = serde_json::json!({
        "program": artifacts::content_hash(&program)?,
        "model": fingerprint,
        "mask": mask.map(|(_, hash)| hash),
        "samples": request.samples,
        // Drafts are a speed knob: they change no token.
        "config": format!("{:?}", GenerationConfig { draft_tokens: 0, ..request.config.clone() }),
        "prompts": format!("{} prompts, hash {:016x}", request.prompts.len(), prompts_hash.finish()),
    })
    .to_string();
    let (mut journal, finished) = Journal::open(&path, &key)?;
    if !finished.is_empty() {
        eprintln!(
            "resuming: {} of {} generations read back from {}",
            finished.len(),
            request.prompts.len() * request.samples,
            path.display()
        );
        bar.inc(finished.len() as u64);
    }
    let generations = request.resume(&finished, |p, j, g| {
        bar.inc(1);
        journal.record(p, j, g)
    })?;
    report_drafts(&generations);
    Ok((generations, Some(journal)))
}

/// Removes the journal of [`generate_journaled`], once the results are written.
pub fn remove_journal(journal: Option<Journal>) -> Result<()> {
    journal.map(Journal::remove).transpose()?;
    Ok(())
}
