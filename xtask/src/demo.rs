//! `cargo xtask demo`, `cargo xtask experiment` and `cargo xtask prune`: an
//! experiment planned as a graph of stage runs and executed with artifact reuse.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use crate::estimate::{self, Speed, Work};
use crate::experiment::{self, Apply, Calibration, Evaluation, Experiment, Prune, Source};
use crate::graph::{Archive, BinaryRunner, Graph, Outcome, Step};
use crate::{corpus, models, prereqs, workspace};

/// The demo's experiment file, relative to the workspace root.
pub const DEMO_EXPERIMENT: &str = "experiments/demo.toml";
/// The paper's experiment, relative to the workspace root.
pub const PAPER_EXPERIMENT: &str = "experiments/paper.toml";

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

    /// This device, with `auto` resolved to the one the stages pick on this
    /// machine (`evaluate device`), so that every step's recipe names the
    /// device its results come from (a result of the CPU is never reused
    /// where `auto` means a GPU) and no stage probes the adapters again.
    pub fn resolved(self, bin_dir: &Path) -> Result<Device> {
        if self != Device::Auto {
            return Ok(self);
        }
        let out =
            crate::process::output_checked(std::process::Command::new(bin_dir.join("evaluate")).args(["device", "--device", "auto"]))?;
        Device::from_printed(&String::from_utf8_lossy(&out))
    }

    /// The device `evaluate device` printed on its last line.
    fn from_printed(text: &str) -> Result<Device> {
        match text.lines().last().map(str::trim) {
            Some("cpu") => Ok(Device::Cpu),
            Some("wgpu") => Ok(Device::Wgpu),
            other => bail!("`evaluate device` printed {other:?}; expected `cpu` or `wgpu`"),
        }
    }
}

/// Options of `cargo xtask demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Device the model runs on.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Directory for the demo's artifacts, report and figures [default: out/demo, or out/demo-<MODEL> with --model].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Experiment file to run instead of experiments/demo.toml.
    #[arg(long)]
    pub experiment: Option<PathBuf>,
    /// Model to run the experiment on instead of the file's `model`: a model id of fetch-model (e.g. gemma3-270m), a GGUF file or a Hugging Face directory.
    #[arg(long)]
    pub model: Option<String>,
    #[command(flatten)]
    pub prereqs: prereqs::SkipPrereqs,
}

/// Options of `cargo xtask paper`.
#[derive(Debug, Args)]
pub struct PaperArgs {
    /// Model instead of the file's (Qwen2.5-Coder-0.5B-Instruct): a model id of fetch-model, a GGUF file or a Hugging Face directory.
    #[arg(long)]
    pub model: Option<String>,
    /// A small version of every cell: 8 calibration sequences of 256 tokens per source, the first 4 items of each generation task and 20 of each multiple-choice task, 2 perplexity windows of 256 tokens.
    #[arg(long)]
    pub quick: bool,
    /// Run directory [default: out/paper-<MODEL>, with -quick for --quick].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Device the model runs on.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Also keep the small outputs of finished steps (task results,
    /// perplexities) in DIR, and take back from it every step it holds with
    /// the same recipe: commit or copy DIR to carry a long run over to a fresh
    /// machine (the same paths, model and build), where only the steps with
    /// big outputs (statistics, masks) rerun.
    #[arg(long, value_name = "DIR")]
    pub archive: Option<PathBuf>,
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
    /// Model instead of the file's: a model id of fetch-model (e.g. gemma3-270m), a GGUF file or a Hugging Face directory.
    #[arg(long)]
    pub model: Option<String>,
    /// Device the model runs on.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Also keep the small outputs of finished steps (task results,
    /// perplexities) in DIR, and take back from it every step it holds with
    /// the same recipe: commit or copy DIR to carry a long run over to a fresh
    /// machine (the same paths, model and build), where only the steps with
    /// big outputs (statistics, masks) rerun.
    #[arg(long, value_name = "DIR")]
    pub archive: Option<PathBuf>,
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
    /// Pruning method: wanda, ria, sparsegpt (which updates the weights it keeps) or magnitude.
    #[arg(long, default_value = "wanda", value_parser = ["wanda", "ria", "sparsegpt", "magnitude"])]
    pub method: String,
    /// How the sparsity is spread over the layers: uniform, or owl (OWL's
    /// outlier-weighted layer sparsities; unstructured only, not magnitude).
    #[arg(long, default_value = "uniform", value_parser = ["uniform", "owl"])]
    pub sparsity_profile: String,
    /// Calibration sequences.
    #[arg(long, default_value_t = 128)]
    pub nsamples: usize,
    /// Tokens per calibration sequence.
    #[arg(long, default_value_t = 2048)]
    pub seqlen: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fraction of the documents held out of calibration for the perplexity
    /// (each document is placed by a hash of its text).
    #[arg(long, default_value_t = 0.1)]
    pub heldout_fraction: f64,
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

/// Plans and runs an experiment in `run_dir`, with `archive` as the graph's
/// [`Archive`] when given; returns the paths of the pruned models.
pub fn run_experiment(exp: &Experiment, run_dir: &Path, device: Device, archive: Option<&Path>) -> Result<Vec<PathBuf>> {
    let bin_dir = workspace::build_binaries()?;
    Ok(run_experiment_with(exp, run_dir, device, archive, bin_dir)?.0)
}

/// [`run_experiment`] with the stage binaries of `bin_dir`, as built; also
/// returns which steps ran and which were reused.
fn run_experiment_with(
    exp: &Experiment,
    run_dir: &Path,
    device: Device,
    archive: Option<&Path>,
    bin_dir: PathBuf,
) -> Result<(Vec<PathBuf>, Outcome)> {
    let started = Instant::now();
    let device = device.resolved(&bin_dir)?;
    let model = model_path(&exp.model)?;
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let run_dir = workspace::absolute(run_dir)?;
    let scratch = run_dir.join("corpora");
    let mut resolve = |name: &str| corpus::builtin(name, &scratch);
    let plan = experiment::plan(exp, &model, &run_dir, device.as_arg(), &workspace::data_root(), &mut resolve)?;
    let mut domains: Vec<&str> = plan.manifest.masks.iter().map(|m| m.domain.as_str()).filter(|d| *d != "none").collect();
    domains.dedup();
    eprintln!("model: {}", model.display());
    eprintln!("domains found: {}", domains.join(", "));
    for note in &plan.skipped {
        eprintln!("skipped: {note}");
    }
    experiment::write_manifest(&run_dir, &plan.manifest)?;
    let mut graph = Graph::open(&run_dir)?;
    if let Some(archive) = archive {
        graph = graph.with_archive(Archive::open(archive)?);
    }
    let mut runner = BinaryRunner { bin_dir };
    if !exp.tasks.is_empty() {
        print_estimate(&mut graph, &plan.steps, &runner, &model, device)?;
    }
    let outcome = graph.execute(&plan.steps, &mut runner)?;
    eprintln!(
        "{} steps ran, {} reused, {} restored from the archive, in {:.0} s; outputs in {}",
        outcome.ran.len(),
        outcome.reused.len(),
        outcome.restored.len(),
        started.elapsed().as_secs_f64(),
        run_dir.display()
    );
    Ok((exp.apply.masks.iter().map(|m| run_dir.join("models").join(m)).collect(), outcome))
}

/// Prints how long the steps that will run should take: their expected
/// work at the model's speeds, measured now on this machine by a short
/// prefill and decode (`evaluate speed`).
fn print_estimate(graph: &mut Graph, steps: &[Step], runner: &BinaryRunner, model: &Path, device: Device) -> Result<()> {
    let pending = graph.pending(steps, runner)?;
    let to_run: Vec<&Step> = steps.iter().zip(&pending).filter(|(_, &runs)| runs).map(|(step, _)| step).collect();
    if to_run.iter().all(|step| step.work == Work::default()) {
        return Ok(());
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let speed = Speed::measure(&runner.bin_dir, model, device.as_arg())?;
    let seconds: f64 = to_run.iter().map(|step| speed.seconds(&step.work)).sum();
    eprintln!(
        "estimated time: about {} for {} of {} steps (the model measured now: {:.0} prefill and {:.1} decode tokens/s; expect +-30%)",
        estimate::human(seconds),
        to_run.len(),
        steps.len(),
        speed.prefill_tokens_per_s,
        speed.decode_tokens_per_s
    );
    let archived: Vec<&&Step> = to_run.iter().filter(|step| graph.archived(&step.name)).collect();
    if !archived.is_empty() {
        let rest: f64 = to_run.iter().filter(|step| !graph.archived(&step.name)).map(|step| speed.seconds(&step.work)).sum();
        eprintln!(
            "the archive holds outputs of {} of those steps, taken back if the steps before them remake the same inputs: then about {}",
            archived.len(),
            estimate::human(rest)
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    if let Some(warning) = estimate::busy_warning(&load, cores) {
        eprintln!("note: {warning}");
    }
    Ok(())
}

/// A model id or path as a part of a file name: a path's file name without
/// its extension, every character other than ASCII letters, digits, `.`,
/// `-` and `_` replaced by `_`.
fn model_slug(model: &str) -> String {
    let name = if models::ids().any(|id| id == model) {
        model.to_string()
    } else {
        let path = Path::new(model.trim_end_matches(['/', '\\']));
        path.file_stem().map_or_else(|| model.to_string(), |s| s.to_string_lossy().into_owned())
    };
    let slug: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' }).collect();
    if slug.is_empty() {
        "model".to_string()
    } else {
        slug
    }
}

/// The demo's run directory: `--out` when given; else `out/demo`, or
/// `out/demo-<model>` when `--model` chooses the model, so that runs on
/// different models keep their artifacts, ledgers and reports apart.
pub fn demo_out_dir(out: Option<&Path>, model: Option<&str>) -> PathBuf {
    match (out, model) {
        (Some(out), _) => out.to_path_buf(),
        (None, Some(model)) => PathBuf::from(format!("out/demo-{}", model_slug(model))),
        (None, None) => PathBuf::from("out/demo"),
    }
}

/// The experiment run on `model` instead of its own: `model` replaced and
/// the model named in the title.
pub fn with_model(mut exp: Experiment, model: &str) -> Experiment {
    exp.title = format!("{} [model: {model}]", exp.title);
    exp.model = model.to_string();
    exp
}

/// `cargo xtask demo`.
pub fn demo(args: &DemoArgs) -> Result<ExitCode> {
    let started = Instant::now();
    workspace::require_target("analyze", "bin", "analyze")?;
    args.prereqs.ensure()?;
    let file = args.experiment.clone().unwrap_or_else(|| workspace::root().join(DEMO_EXPERIMENT));
    let mut exp = experiment::load(&file)?;
    if let Some(model) = &args.model {
        exp = with_model(exp, model);
    }
    let out = demo_out_dir(args.out.as_deref(), args.model.as_deref());
    run_experiment(&exp, &out, args.device, None)?;
    println!("report: {}", workspace::absolute(&out.join("report.md"))?.display());
    eprintln!("demo finished in {:.0} s", started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

/// `cargo xtask paper`.
pub fn paper(args: &PaperArgs) -> Result<ExitCode> {
    let started = Instant::now();
    workspace::require_target("analyze", "bin", "analyze")?;
    args.prereqs.ensure()?;
    let mut exp = experiment::load(&workspace::root().join(PAPER_EXPERIMENT))?;
    if let Some(model) = &args.model {
        exp = with_model(exp, model);
    }
    if args.quick {
        exp = experiment::quick(exp);
    }
    let out = match &args.out {
        Some(out) => out.clone(),
        None => PathBuf::from(format!("out/paper-{}{}", model_slug(&exp.model), if args.quick { "-quick" } else { "" })),
    };
    run_experiment(&exp, &out, args.device, args.archive.as_deref())?;
    println!("report: {}", workspace::absolute(&out.join("report.md"))?.display());
    eprintln!("paper experiment finished in {:.0} s", started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

/// `cargo xtask experiment FILE --out DIR`.
pub fn run_file(args: &ExperimentArgs) -> Result<ExitCode> {
    args.prereqs.ensure()?;
    let mut exp = experiment::load(&args.file)?;
    if let Some(model) = &args.model {
        exp = with_model(exp, model);
    }
    run_experiment(&exp, &args.out, args.device, args.archive.as_deref())?;
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
    let profile_tag = if args.sparsity_profile == "owl" { "owl-" } else { "" };
    if args.method == "magnitude" && !profile_tag.is_empty() {
        bail!("--sparsity-profile owl weighs layers by their activation outliers; magnitude pruning has no calibration");
    }
    let name =
        if args.method == "magnitude" { format!("magnitude-{tag}") } else { format!("{}-{}-{profile_tag}{tag}", args.domain, args.method) };
    let exp = Experiment {
        title: format!("{} sub-model of {}", args.domain, args.model),
        model: args.model.clone(),
        calibration: Calibration {
            nsamples: args.nsamples,
            seqlen: args.seqlen,
            seed: args.seed,
            heldout_fraction: args.heldout_fraction,
            ..Calibration::default()
        },
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
            skip_records: 0,
        }],
        prune: vec![Prune {
            sources: vec!["*".into()],
            methods: vec![args.method.clone()],
            patterns: vec![pattern],
            profiles: vec![args.sparsity_profile.clone()],
        }],
        apply: Apply { masks: vec![name], dtype: Some(args.dtype.clone()) },
        tasks: Vec::new(),
    };
    experiment::check(&exp)?;
    Ok(exp)
}

/// `cargo xtask prune`.
pub fn prune(args: &PruneArgs) -> Result<ExitCode> {
    args.prereqs.ensure()?;
    let exp = prune_experiment(args)?;
    for model in run_experiment(&exp, &args.out, args.device, None)? {
        println!("pruned model: {}", model.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Runner, Step};

    #[test]
    fn auto_resolves_to_the_device_evaluate_picks_and_the_others_stay() {
        assert_eq!(Device::from_printed("cpu\n").unwrap(), Device::Cpu);
        assert_eq!(Device::from_printed("wgpu").unwrap(), Device::Wgpu);
        for bad in ["auto\n", "", "gpu"] {
            let err = Device::from_printed(bad).unwrap_err().to_string();
            assert!(err.contains("expected `cpu` or `wgpu`"), "{bad:?}: {err}");
        }
        let bin_dir = std::env::current_exe().unwrap().parent().and_then(Path::parent).unwrap().to_path_buf();
        assert_eq!(Device::Cpu.resolved(Path::new("/nonexistent")).unwrap(), Device::Cpu, "a named device runs nothing");
        assert_eq!(Device::Wgpu.resolved(Path::new("/nonexistent")).unwrap(), Device::Wgpu);
        if bin_dir.join("evaluate").is_file() {
            let resolved = Device::Auto.resolved(&bin_dir).unwrap();
            assert!(matches!(resolved, Device::Cpu | Device::Wgpu), "auto resolved to {resolved:?}");
        }
    }

    /// The paper's graph in miniature on SmolLM2, with the stage binaries
    /// `cargo test` built: two calibration sources, every task on 2 items
    /// with short generations. Every block runs, and a rerun reuses all of
    /// it (only the report, which always runs, runs again); on a fresh run
    /// directory, the archive gives back every task result.
    #[test]
    fn the_paper_graph_in_miniature_runs_every_task_and_a_rerun_reuses_it() {
        let model =
            std::env::var("SUBPRUNE_SMOLLM2_GGUF").expect("SUBPRUNE_SMOLLM2_GGUF is not set: run the tests through `cargo xtask test`");
        // The test runs as target/<profile>/deps/xtask-<hash>; the stage binaries are in target/<profile>.
        let bin_dir = std::env::current_exe().unwrap().parent().and_then(Path::parent).unwrap().to_path_buf();
        assert!(bin_dir.join("evaluate").is_file(), "no stage binaries in {}: run the tests through `cargo xtask test`", bin_dir.display());
        let mut exp = with_model(experiment::quick(experiment::load(&workspace::root().join(PAPER_EXPERIMENT)).unwrap()), &model);
        exp.sources.retain(|s| s.name == "python" || s.name == "math");
        (exp.calibration.nsamples, exp.calibration.seqlen) = (2, 64);
        (exp.evaluation.seqlen, exp.evaluation.max_windows) = (64, 2);
        for task in &mut exp.tasks {
            if task.task == "ppl" {
                (task.seqlen, task.max_windows) = (Some(64), Some(2));
            } else {
                task.limit = Some(2);
                if task.generates() {
                    task.max_new_tokens = Some(24);
                }
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let archive = tempfile::tempdir().unwrap();
        let (_, first) = run_experiment_with(&exp, tmp.path(), Device::Cpu, Some(archive.path()), bin_dir.clone()).unwrap();
        assert!(first.reused.is_empty(), "a fresh run reused {:?}", first.reused);
        let report = std::fs::read_to_string(tmp.path().join("report.md")).unwrap();
        for label in ["dense", "python-wanda-u0.5", "math-wanda-u0.5"] {
            for task in &exp.tasks {
                let result = tmp.path().join(format!("results/{label}--task-{}.parquet", task.column()));
                assert!(result.is_file(), "{} is missing", result.display());
                assert!(report.contains(&task.column()), "the report has no column {}", task.column());
            }
        }
        let (_, second) = run_experiment_with(&exp, tmp.path(), Device::Cpu, None, bin_dir.clone()).unwrap();
        assert_eq!(second.ran, vec!["report".to_string()]);
        assert_eq!(second.reused.len(), first.ran.len() - 1);

        // A fresh machine with the archive: the stages remake their big
        // outputs byte for byte, so every task's result comes back from it.
        std::fs::remove_dir_all(tmp.path()).unwrap();
        let (_, third) = run_experiment_with(&exp, tmp.path(), Device::Cpu, Some(archive.path()), bin_dir).unwrap();
        let tasks: Vec<&String> = first.ran.iter().filter(|name| name.starts_with("task ")).collect();
        // Dense, the two sources' masks and the magnitude baseline.
        assert_eq!(tasks.len(), 4 * exp.tasks.len());
        for task in tasks {
            assert!(third.restored.contains(task), "{task} was not restored: ran {:?}", third.ran);
        }
        assert!(third.ran.iter().all(|name| !name.starts_with("task ")), "{:?}", third.ran);
        assert_eq!(std::fs::read_to_string(tmp.path().join("report.md")).unwrap(), report);
    }

    #[test]
    fn a_chosen_model_gets_a_run_directory_of_its_own() {
        assert_eq!(demo_out_dir(None, None), PathBuf::from("out/demo"));
        assert_eq!(demo_out_dir(None, Some("gemma3-270m")), PathBuf::from("out/demo-gemma3-270m"));
        assert_eq!(demo_out_dir(None, Some("/models/My Model.Q8_0.gguf")), PathBuf::from("out/demo-My_Model.Q8_0"));
        assert_eq!(demo_out_dir(None, Some("ckpt/gemma-pruned/")), PathBuf::from("out/demo-gemma-pruned"));
        assert_eq!(demo_out_dir(Some(Path::new("/tmp/x")), Some("gemma3-270m")), PathBuf::from("/tmp/x"));
        let exp: Experiment = toml::from_str(EXAMPLE).unwrap();
        let exp = with_model(exp, "gemma3-270m");
        assert_eq!(exp.model, "gemma3-270m");
        assert_eq!(exp.title, "t [model: gemma3-270m]");
    }

    const EXAMPLE: &str = r#"
title = "t"
model = "smollm2-135m"
[calibration]
nsamples = 4
seqlen = 64
[evaluation]
max_windows = 2
[[sources]]
name = "py"
domain = "python"
from = ["@py"]
[[sources]]
name = "text"
domain = "prose"
from = ["@text"]
[[prune]]
methods = ["wanda", "magnitude"]
patterns = ["unstructured-0.5"]
"#;

    /// A fake stage: writes to each output a digest of its arguments and of
    /// the bytes of its file inputs, and counts its runs.
    #[derive(Default)]
    struct FakeRunner {
        runs: Vec<String>,
    }

    impl Runner for FakeRunner {
        fn run(&mut self, step: &Step) -> Result<()> {
            let mut content = step.result_args().join(" ");
            for input in step.inputs.iter().filter(|p| p.is_file()) {
                content.push_str(&String::from_utf8_lossy(&std::fs::read(input)?));
            }
            for output in &step.outputs {
                std::fs::create_dir_all(output.parent().unwrap())?;
                std::fs::write(output, &content)?;
            }
            self.runs.push(step.name.clone());
            Ok(())
        }
    }

    #[test]
    fn another_model_in_the_same_run_directory_reuses_only_the_model_free_steps() {
        let tmp = tempfile::tempdir().unwrap();
        let corpora = tmp.path().join("corpora");
        for name in ["py", "text"] {
            std::fs::create_dir_all(corpora.join(name)).unwrap();
            std::fs::write(corpora.join(name).join("doc.txt"), name).unwrap();
        }
        let (model_a, model_b) = (tmp.path().join("a.gguf"), tmp.path().join("b.gguf"));
        std::fs::write(&model_a, "model a").unwrap();
        std::fs::write(&model_b, "model b").unwrap();
        let run_dir = tmp.path().join("run");
        let exp: Experiment = toml::from_str(EXAMPLE).unwrap();
        let run = |model: &Path| {
            let mut resolve = |name: &str| Ok(Some(vec![corpora.join(name)]));
            let plan = experiment::plan(&exp, model, &run_dir, "cpu", Path::new("/data"), &mut resolve).unwrap();
            let mut runner = FakeRunner::default();
            Graph::open(&run_dir).unwrap().execute(&plan.steps, &mut runner).unwrap();
            let names: Vec<String> = plan.steps.iter().map(|s| s.name.clone()).collect();
            (names, runner.runs)
        };
        let (all, ran) = run(&model_a);
        assert_eq!(ran, all);
        // The same model again: only the always-run report.
        assert_eq!(run(&model_a).1, ["report"]);
        // Another model: everything but collecting documents, which reads no model.
        let (all, ran) = run(&model_b);
        let collect: Vec<&String> = all.iter().filter(|n| n.starts_with("collect ")).collect();
        assert_eq!(collect.len(), 2);
        let expected: Vec<&String> = all.iter().filter(|n| !n.starts_with("collect ")).collect();
        assert_eq!(ran.iter().collect::<Vec<_>>(), expected);
        // Back to the first model: its artifacts were replaced, so everything model-dependent runs again.
        assert_eq!(run(&model_a).1.iter().collect::<Vec<_>>(), expected);
    }
}
