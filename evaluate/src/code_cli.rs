//! `evaluate humaneval-x` and `evaluate mbpp`: pass@k of code run in the sandbox.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use evaluate::chat::render_model_chat;
use evaluate::code_instruct::{instruct_prompt, instruct_stops, response_prefix, Protocol};
use evaluate::code_tasks::{read_humaneval_x, read_mbpp, score, CodeData, CodeTask};
use evaluate::generate::{FinishReason, GenerationConfig, GenerationRequest};
use evaluate::sandbox::{Language, Sandbox, SandboxConfig};
use model::{LoadedModel, ModelFormat};

use crate::progress;
use crate::task_cli::{generate_journaled, load_masked, remove_journal, write_task_outputs, Metric, OutputModel, TaskArgs};

/// A HumanEval-X language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// Python 3.
    Python,
    /// C++17 (g++).
    Cpp,
    /// Java (javac, java).
    Java,
    /// JavaScript (node).
    Js,
}

impl From<Lang> for Language {
    fn from(l: Lang) -> Language {
        match l {
            Lang::Python => Language::Python,
            Lang::Cpp => Language::Cpp,
            Lang::Java => Language::Java,
            Lang::Js => Language::JavaScript,
        }
    }
}

/// Options of the code tasks: the shared task options (with `--model`
/// needed only to generate), sampling, what to score and the sandbox.
#[derive(Args, Debug, Clone)]
pub struct CodeArgs {
    /// The options every task shares (`--model` is needed only to generate).
    #[command(flatten)]
    pub task: TaskArgs,
    /// Samples generated per problem (n of pass@k).
    #[arg(long, default_value_t = 10)]
    pub samples: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches this (1: off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f64,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Most tokens generated per sample.
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// How the model is asked: `completion` continues the raw prompt (MBPP:
    /// 3-shot) and cuts where the function ends; `instruct` poses the problem
    /// through the model's chat template as evalplus's instruct mode does and
    /// runs the first fenced code block of the answer (with the prompt's
    /// signature when it is only a body). With --completions or --canonical,
    /// `instruct` treats each text as such an answer.
    #[arg(long, value_enum, default_value_t = Protocol::Completion)]
    pub protocol: Protocol,
    /// Values of k for pass@k (those above the sample count are skipped).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 10])]
    pub k: Vec<usize>,
    /// Score the data's canonical solutions, fed through the whole harness as if generated (one sample each; no model).
    #[arg(long, conflicts_with = "completions")]
    pub canonical: bool,
    /// Score these completions instead of generating: JSON lines with `task_id` and `completion` (or `generation`), one line per sample.
    #[arg(long)]
    pub completions: Option<PathBuf>,
    /// Wall-time limit of each program run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Wall-time limit of each compilation (C++, Java), in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub compile_timeout: f64,
    /// Address-space limit of each program, in MiB (compilers get at least 2048).
    #[arg(long, default_value_t = 1024)]
    pub memory_mb: u64,
    /// Processes and threads each program may have.
    #[arg(long, default_value_t = 64)]
    pub max_processes: u64,
    /// Disk each program's run may fill, in MiB (its directory is a tmpfs of this size).
    #[arg(long, default_value_t = 64)]
    pub disk_mb: u64,
    /// Programs run at once (default: the number of cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Run programs even where they cannot be isolated: they then have network access, a writable file system and the host's processes in reach.
    #[arg(long)]
    pub allow_network: bool,
    /// Directory for the programs' temporary directories (default: the system's temporary directory).
    #[arg(long)]
    pub sandbox_dir: Option<PathBuf>,
}

/// Reads `--completions`: per task id, its completions in file order.
fn read_completions(path: &Path) -> Result<HashMap<String, Vec<String>>> {
    let records = artifacts::records::read_records(path).with_context(|| format!("reading completions {}", path.display()))?;
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        let id = match r.get("task_id") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => bail!("{}: record {i} has no `task_id` (expected text or a number)", path.display()),
        };
        let text = ["completion", "generation"]
            .iter()
            .find_map(|f| r.get(*f).and_then(|v| v.as_str()))
            .with_context(|| format!("{}: record {i} has no `completion` (or `generation`) text", path.display()))?;
        map.entry(id).or_default().push(text.to_string());
    }
    Ok(map)
}

/// Runs a code task: reads the data, gets completions (canonical, given or
/// generated), runs them in the sandbox and writes and prints pass@k.
pub fn run_code_task(task: CodeTask, args: CodeArgs) -> Result<()> {
    let started = Instant::now();
    let expected = match task {
        CodeTask::HumanEvalX(l) => format!(
            "the HumanEval-X {} data, e.g. humaneval_{}.jsonl.gz (CodeGeeX) or THUDM/humaneval-x's file, or a directory holding it",
            l.name(),
            l.name()
        ),
        CodeTask::Mbpp => {
            "the MBPP data, e.g. mbpp.jsonl (google-research) or google-research-datasets/mbpp's Parquet files, or a directory holding them"
                .into()
        }
    };
    let data_path = args.task.data.as_ref().with_context(|| format!("--data is required: give {expected}"))?;
    if !data_path.exists() {
        bail!("--data {}: no such file or directory; expected {expected}", data_path.display());
    }
    let mut data: CodeData = match task {
        CodeTask::HumanEvalX(l) => read_humaneval_x(data_path, l)?,
        CodeTask::Mbpp => read_mbpp(data_path)?,
    };
    if let Some(n) = args.task.limit {
        data.problems.truncate(n);
    }
    let sandbox = Sandbox::new(
        SandboxConfig {
            timeout: Duration::from_secs_f64(args.timeout),
            compile_timeout: Duration::from_secs_f64(args.compile_timeout),
            memory_mb: args.memory_mb,
            max_processes: args.max_processes,
            disk_mb: args.disk_mb,
            jobs: args.jobs.unwrap_or_else(|| SandboxConfig::default().jobs),
            allow_network: args.allow_network,
            root: args.sandbox_dir.clone(),
        },
        &[task.language()],
    )?;
    eprintln!(
        "{} ({} protocol): {} problems from {}; sandbox: {}, {} jobs",
        task.name(),
        args.protocol.name(),
        data.problems.len(),
        data.files[0].display(),
        sandbox.describe(),
        sandbox.config().jobs
    );

    let mut label = match (&args.completions, args.canonical) {
        (_, true) => OutputModel::none("canonical"),
        (Some(path), _) => OutputModel::none(&path.display().to_string()),
        _ => OutputModel::none("none"),
    };
    let mut journal = None;
    let (completions, source): (Vec<Vec<String>>, &str) = if args.canonical {
        (data.problems.iter().map(|p| vec![p.canonical.clone()]).collect(), "canonical")
    } else if let Some(path) = &args.completions {
        let mut given = read_completions(path)?;
        let mut out = Vec::with_capacity(data.problems.len());
        for p in &data.problems {
            let samples =
                given.remove(&p.task_id).with_context(|| format!("{}: no completion for task_id {}", path.display(), p.task_id))?;
            out.push(samples);
        }
        (out, "completions")
    } else {
        let model_path = args.task.model.as_ref().with_context(|| {
            format!("--model is required to generate completions for {} (or pass --canonical, or --completions FILE.jsonl)", task.name())
        })?;
        let (loaded, mask) = load_masked(model_path, args.task.mask.as_deref())?;
        if args.protocol == Protocol::Instruct {
            require_chat_template(&loaded)?;
        }
        let selected = model::select_device(args.task.device)?;
        eprintln!("device: {}", selected.description);
        let model = loaded.build_stored(&selected.device)?;
        let (prompts, stop): (Vec<String>, Vec<String>) = match args.protocol {
            Protocol::Completion => {
                (data.problems.iter().map(|p| data.generation_prompt(p)).collect::<Result<_, _>>()?, task.stop_sequences())
            }
            Protocol::Instruct => (
                data.problems
                    .iter()
                    .map(|p| instruct_prompt(task, p, |m| render_model_chat(&loaded, m, true)))
                    .collect::<Result<_, _>>()?,
                instruct_stops(task),
            ),
        };
        let config = GenerationConfig {
            max_new_tokens: args.max_new_tokens,
            temperature: args.temperature,
            top_p: args.top_p,
            seed: args.seed,
            stop: stop.clone(),
            // A rendered chat template holds its own special tokens.
            add_special_tokens: args.protocol == Protocol::Completion,
            draft_tokens: args.task.draft_tokens,
            ..GenerationConfig::default()
        };
        let bar = progress(prompts.len() * args.samples, args.task.quiet, "generating");
        let request = GenerationRequest {
            model: &model,
            tokenizer: loaded.tokenizer()?,
            prompts: &prompts,
            samples: args.samples,
            config: &config,
            batch: args.task.batch,
        };
        let (generated, used_journal) = generate_journaled(request, &loaded.fingerprint, mask.as_ref(), args.task.out.as_deref(), &bar)?;
        journal = used_journal;
        bar.finish_and_clear();
        // The generator cuts text before a stop sequence; C-like tasks stop at a
        // closing brace in column 0, which belongs to the function: put it back.
        // Under the instruct protocol the answer is the response prefix (which
        // opens the code block) and what the model wrote after it.
        let reattach = matches!(task, CodeTask::HumanEvalX(l) if l != Language::Python) && args.protocol == Protocol::Completion;
        let prefix = match args.protocol {
            Protocol::Completion => String::new(),
            Protocol::Instruct => response_prefix(task.language()),
        };
        let completions = generated
            .into_iter()
            .map(|samples| {
                samples
                    .into_iter()
                    .map(|g| {
                        if reattach && g.finish == FinishReason::Stop {
                            format!("{}{}", g.text, stop[0])
                        } else if prefix.is_empty() {
                            g.text
                        } else {
                            format!("{prefix}{}", g.text)
                        }
                    })
                    .collect()
            })
            .collect();
        label = OutputModel { label: model_path.display().to_string(), fingerprint: loaded.fingerprint.clone(), mask };
        (completions, "generated")
    };
    let total: usize = completions.iter().map(Vec::len).sum();
    let bar = progress(total, args.task.quiet, "running programs");
    let run_started = Instant::now();
    let scores = score(task, args.protocol, &data.problems, &completions, &sandbox, &args.k, &|| bar.inc(1))?;
    bar.finish_and_clear();
    let passed: usize = scores.counts.iter().map(|c| c.1).sum();
    let failed: Vec<&artifacts::ItemRow> = scores.rows.iter().filter(|r| r.passed == Some(false)).collect();
    for row in failed.iter().take(20) {
        let task_id = data.problems.iter().find(|p| p.item == row.item).map_or("?", |p| p.task_id.as_str());
        eprintln!("failed: {task_id} (item {}, sample {}): {}", row.item, row.sample, row.reason.as_deref().unwrap_or(""));
    }
    if failed.len() > 20 {
        eprintln!("... and {} more failures (all in the items artifact)", failed.len() - 20);
    }
    eprintln!(
        "{passed} of {total} programs passed; ran in {:.1} s ({:.1} s in all)",
        run_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let n_problems = scores.counts.len() as u64;
    let metrics: Vec<Metric> = scores
        .pass_at
        .iter()
        .map(|&(k, value, se)| Metric { name: format!("pass@{k}"), value, n: n_problems, stderr: Some(se), ci: None })
        .collect();
    if metrics.is_empty() {
        bail!("no pass@k can be computed: every k in {:?} is above the number of samples of some problem", args.k);
    }
    let params = serde_json::json!({
        "task": task.name(),
        "protocol": args.protocol.name(),
        "source": source,
        "limit": args.task.limit,
        "problems": n_problems,
        "samples": if args.canonical { 1 } else { args.samples },
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
        "max_new_tokens": args.max_new_tokens,
        "k": args.k,
        "timeout_s": args.timeout,
        "compile_timeout_s": args.compile_timeout,
        "memory_mb": args.memory_mb,
        "max_processes": args.max_processes,
        "isolation": format!("{:?}", sandbox.isolation()),
        "landlock_abi": sandbox.landlock_abi(),
        "disk_mb": args.disk_mb,
    });
    write_task_outputs(args.task.out.as_deref(), &label, &args.protocol.task_name(task), &data.files[0], params, &metrics, &scores.rows)?;
    remove_journal(journal)
}

/// An error naming the file that should hold `loaded`'s chat template when
/// it has none: the instruct protocol needs one.
fn require_chat_template(loaded: &LoadedModel) -> Result<()> {
    if loaded.chat_template.is_some() {
        return Ok(());
    }
    let place = match loaded.format {
        ModelFormat::Gguf => format!("the GGUF file {} has no `tokenizer.chat_template` metadata", loaded.path.display()),
        ModelFormat::HuggingFace => format!(
            "{} holds no `chat_template` and there is no {}",
            loaded.path.join("tokenizer_config.json").display(),
            loaded.path.join("chat_template.jinja").display()
        ),
    };
    bail!("--protocol instruct renders the problem through the model's chat template, but {place}; --protocol completion works without one")
}
