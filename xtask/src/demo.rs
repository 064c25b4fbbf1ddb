//! `cargo xtask demo`, `cargo xtask experiment` and `cargo xtask prune`: an
//! experiment planned as a graph of stage runs and executed with artifact reuse.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use crate::experiment::{self, Apply, Calibration, Evaluation, Experiment, Prune, Source};
use crate::graph::{BinaryRunner, Graph};
use crate::{corpus, models, prereqs, workspace};

/// The demo's experiment file, relative to the workspace root.
pub const DEMO_EXPERIMENT: &str = "experiments/demo.toml";

/// The compute device of the project's binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Device {
    /// A hardware wgpu adapter if there is one, else cpu.
    Auto,
    /// burn's ndarray backend with OpenBLAS.
    Cpu,
    /// wgpu (Vulkan, Metal, DX12; lavapipe without a GPU).
    Wgpu,
}

impl Device {
    /// The value the binaries' `--device` takes.
    pub fn as_arg(self) -> &'static str {
        match self {
            Device::Auto => "auto",
            Device::Cpu => "cpu",
            Device::Wgpu => "wgpu",
        }
    }
}

/// Options of `cargo xtask demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Device the model runs on.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Directory for the demo's artifacts, report and figures.
    #[arg(long, default_value = "out/demo")]
    pub out: PathBuf,
    /// Experiment file to run instead of experiments/demo.toml.
    #[arg(long)]
    pub experiment: Option<PathBuf>,
    #[command(flatten)]
    pub prereqs: prereqs::SkipPrereqs,
}

/// Options of `cargo xtask experiment`.
#[derive(Debug, Args)]
pub struct ExperimentArgs {
    /// The experiment file (TOML; see experiments/demo.toml).
    pub file: PathBuf,
    /// Run directory: artifacts, ledger, report and figures.
    #[arg(long)]
    pub out: PathBuf,
    /// Device the model runs on.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    #[command(flatten)]
    pub prereqs: prereqs::SkipPrereqs,
}

/// Options of `cargo xtask prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Model: a model id of fetch-model (e.g. smollm2-135m), a GGUF file or a Hugging Face directory.
    #[arg(long)]
    pub model: String,
    /// Domain of the calibration data (python, java, cpp, javascript, math, ... or your own).
    #[arg(long)]
    pub domain: String,
    /// Calibration data: source trees, JSONL/Parquet files, text files, or @name built-in corpora.
    #[arg(long, num_args = 1.., required = true)]
    pub from: Vec<String>,
    /// Record field holding the text (for JSONL/Parquet sources).
    #[arg(long)]
    pub field: Option<String>,
    /// A `datasets presets` name (gives the field).
    #[arg(long)]
    pub preset: Option<String>,
    /// Unstructured sparsity.
    #[arg(long, conflicts_with = "nm", required_unless_present = "nm")]
    pub sparsity: Option<f64>,
    /// N:M pattern, e.g. 2:4.
    #[arg(long)]
    pub nm: Option<String>,
    /// Scoring method: wanda or magnitude.
    #[arg(long, default_value = "wanda")]
    pub method: String,
    /// Calibration sequences.
    #[arg(long, default_value_t = 128)]
    pub nsamples: usize,
    /// Tokens per calibration sequence.
    #[arg(long, default_value_t = 2048)]
    pub seqlen: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Held-out windows for the dense vs pruned perplexity (0: no evaluation).
    #[arg(long, default_value_t = 8)]
    pub eval_windows: usize,
    /// Stored dtype of the pruned model: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Run directory; the pruned model goes to DIR/models/<mask name>.
    #[arg(long)]
    pub out: PathBuf,
    /// Device the model runs on.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    #[command(flatten)]
    pub prereqs: prereqs::SkipPrereqs,
}

/// The model file of an experiment's `model`: a fetch-model id (fetched) or a path.
fn model_path(model: &str) -> Result<PathBuf> {
    if models::ids().any(|id| id == model) {
        return models::fetch(models::find(model)?, &models::subprune_home()?);
    }
    let path = PathBuf::from(model);
    if !path.exists() {
        bail!(
            "model `{model}` is neither a model id of fetch-model ({}) nor an existing path",
            models::ids().collect::<Vec<_>>().join(", ")
        );
    }
    workspace::absolute(&path)
}

/// Plans and runs an experiment in `run_dir`; returns the paths of the pruned models.
pub fn run_experiment(exp: &Experiment, run_dir: &Path, device: Device) -> Result<Vec<PathBuf>> {
    let started = Instant::now();
    let model = model_path(&exp.model)?;
    let bin_dir = workspace::build_binaries()?;
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let run_dir = workspace::absolute(run_dir)?;
    let scratch = run_dir.join("corpora");
    let mut resolve = |name: &str| corpus::builtin(name, &scratch);
    let plan = experiment::plan(exp, &model, &run_dir, device.as_arg(), &mut resolve)?;
    let mut domains: Vec<&str> = plan.manifest.masks.iter().map(|m| m.domain.as_str()).filter(|d| *d != "none").collect();
    domains.dedup();
    eprintln!("model: {}", model.display());
    eprintln!("domains found: {}", domains.join(", "));
    for note in &plan.skipped {
        eprintln!("skipped: {note}");
    }
    experiment::write_manifest(&run_dir, &plan.manifest)?;
    let mut graph = Graph::open(&run_dir)?;
    let outcome = graph.execute(&plan.steps, &mut BinaryRunner { bin_dir })?;
    eprintln!(
        "{} steps ran, {} reused, in {:.0} s; outputs in {}",
        outcome.ran.len(),
        outcome.reused.len(),
        started.elapsed().as_secs_f64(),
        run_dir.display()
    );
    Ok(exp.apply.masks.iter().map(|m| run_dir.join("models").join(m)).collect())
}

/// `cargo xtask demo`.
pub fn demo(args: &DemoArgs) -> Result<ExitCode> {
    let started = Instant::now();
    workspace::require_target("analyze", "bin", "analyze")?;
    args.prereqs.ensure()?;
    let file = args.experiment.clone().unwrap_or_else(|| workspace::root().join(DEMO_EXPERIMENT));
    let exp = experiment::load(&file)?;
    run_experiment(&exp, &args.out, args.device)?;
    println!("report: {}", workspace::absolute(&args.out.join("report.md"))?.display());
    eprintln!("demo finished in {:.0} s", started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

/// `cargo xtask experiment FILE --out DIR`.
pub fn run_file(args: &ExperimentArgs) -> Result<ExitCode> {
    args.prereqs.ensure()?;
    let exp = experiment::load(&args.file)?;
    run_experiment(&exp, &args.out, args.device)?;
    Ok(ExitCode::SUCCESS)
}

/// The one-source experiment `cargo xtask prune` runs.
pub fn prune_experiment(args: &PruneArgs) -> Result<Experiment> {
    let pattern = match (&args.sparsity, &args.nm) {
        (Some(s), None) => format!("unstructured-{s}"),
        (None, Some(nm)) => nm.clone(),
        _ => bail!("give exactly one of --sparsity S or --nm N:M"),
    };
    let tag = match (&args.sparsity, &args.nm) {
        (Some(s), _) => format!("u{s}"),
        (_, Some(nm)) => nm.replace(':', "of"),
        _ => unreachable!("checked above"),
    };
    let name = if args.method == "magnitude" { format!("magnitude-{tag}") } else { format!("{}-{}-{tag}", args.domain, args.method) };
    let exp = Experiment {
        title: format!("{} sub-model of {}", args.domain, args.model),
        model: args.model.clone(),
        calibration: Calibration { nsamples: args.nsamples, seqlen: args.seqlen, seed: args.seed, ..Calibration::default() },
        evaluation: Evaluation { seqlen: args.seqlen.min(512), max_windows: args.eval_windows },
        sources: vec![Source {
            name: args.domain.clone(),
            domain: args.domain.clone(),
            from: args.from.clone(),
            field: args.field.clone(),
            template: None,
            split: None,
            preset: args.preset.clone(),
            ext: None,
            shard: None,
            max_docs: None,
            concat: false,
        }],
        prune: vec![Prune { sources: vec!["*".into()], methods: vec![args.method.clone()], patterns: vec![pattern] }],
        apply: Apply { masks: vec![name], dtype: Some(args.dtype.clone()) },
    };
    experiment::check(&exp)?;
    Ok(exp)
}

/// `cargo xtask prune`.
pub fn prune(args: &PruneArgs) -> Result<ExitCode> {
    args.prereqs.ensure()?;
    let exp = prune_experiment(args)?;
    for model in run_experiment(&exp, &args.out, args.device)? {
        println!("pruned model: {}", model.display());
    }
    Ok(ExitCode::SUCCESS)
}
