//! Experiment files (TOML): models x domains (their sources) x methods x
//! patterns x evaluations, planned as a [`graph`](crate::graph) of stage runs.
//!
//! `experiments/demo.toml` is the demo's; a user copies it and points the
//! sources at their own data. A source's `from` entries are paths, or
//! `@name` for a corpus found on this machine (see [`crate::corpus::builtin`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::estimate::{self, Work};
use crate::graph::{SpeedFlag, Step};
use sparsity::Pattern;

/// An experiment file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Title shown in the report.
    pub title: String,
    /// A model id of `cargo xtask fetch-model`, or a path to a GGUF file or Hugging Face directory.
    pub model: String,
    /// How calibration sequences are drawn.
    #[serde(default)]
    pub calibration: Calibration,
    /// How held-out perplexity is measured.
    #[serde(default)]
    pub evaluation: Evaluation,
    /// The corpora, each of one domain.
    pub sources: Vec<Source>,
    /// The sub-models to make.
    pub prune: Vec<Prune>,
    /// Masks to write as pruned Hugging Face directories.
    #[serde(default)]
    pub apply: Apply,
    /// Tasks scored for the dense model and every sub-model.
    #[serde(default)]
    pub tasks: Vec<Task>,
}

/// The tasks an experiment can score, as `evaluate` names its subcommands.
pub const TASKS: &[&str] =
    &["humaneval-x", "mbpp", "gsm8k", "piqa", "hellaswag", "arc-easy", "arc-challenge", "winogrande", "boolq", "translation", "ppl"];

/// One task scored for the dense model and every sub-model (`[[tasks]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// One of [`TASKS`].
    pub task: String,
    /// Its column in the report (default: the task, with the language for humaneval-x).
    pub name: Option<String>,
    /// HumanEval-X's language: python, cpp, java or js.
    pub language: Option<String>,
    /// The data file or directory; `data:REL` is REL under the data root
    /// (`SUBPRUNE_DATA`, else `../shared/data` beside the workspace). Default: the task's shipped copy.
    pub data: Option<String>,
    /// Only the first N items, in the data's order.
    pub limit: Option<usize>,
    /// Samples per problem (code tasks: n of pass@k).
    pub samples: Option<usize>,
    /// Sampling temperature (code tasks; 0 is greedy).
    pub temperature: Option<f64>,
    /// Most tokens generated per answer (generation tasks).
    pub max_new_tokens: Option<usize>,
    /// Sequences per forward pass (speed only).
    pub batch: Option<usize>,
    /// Code tasks: `completion` or `instruct`.
    pub protocol: Option<String>,
    /// The metric the report shows (default: pass@1, exact_match, acc, meteor or perplexity by task).
    pub metric: Option<String>,
    /// Tokens per window (ppl).
    pub seqlen: Option<usize>,
    /// Windows (ppl).
    pub max_windows: Option<usize>,
    /// The calibration domain the task measures, for the report's claim that
    /// a domain's own calibration gives its best task score (default: the
    /// language of a code task, `math` for GSM8K, `commonsense` for the
    /// multiple-choice tasks, `translation`, and `general` for perplexity).
    pub domain: Option<String>,
}

impl Task {
    /// Whether the task generates its answers (code, GSM8K, translation)
    /// rather than scoring given choices or text.
    pub fn generates(&self) -> bool {
        matches!(self.task.as_str(), "humaneval-x" | "mbpp" | "gsm8k" | "translation")
    }

    /// The calibration domain the task measures: its `domain`, else its task's default.
    pub fn measured_domain(&self) -> Option<String> {
        if let Some(domain) = &self.domain {
            return Some(domain.clone());
        }
        let domain = match (self.task.as_str(), self.language.as_deref()) {
            ("humaneval-x", Some("js")) => "javascript",
            ("humaneval-x", Some(language)) => language,
            ("mbpp", _) => "python",
            ("gsm8k", _) => "math",
            ("piqa" | "hellaswag" | "arc-easy" | "arc-challenge" | "winogrande" | "boolq", _) => "commonsense",
            ("translation", _) => "translation",
            ("ppl", _) => "general",
            _ => return None,
        };
        Some(domain.to_string())
    }

    /// Its expected work, for time estimates.
    pub fn work(&self) -> Work {
        if self.task == "ppl" {
            let tokens = match (self.max_windows, self.seqlen) {
                (Some(windows), Some(seqlen)) => windows * seqlen,
                _ => estimate::PPL_TEXT_TOKENS,
            };
            return Work { prefill_tokens: tokens as f64, decode_tokens: 0.0 };
        }
        let work = estimate::task_work(&self.task, self.language.as_deref(), estimate::task_items(&self.task, self.limit));
        let samples = self.samples.unwrap_or(1) as f64;
        Work { prefill_tokens: work.prefill_tokens, decode_tokens: samples * work.decode_tokens }
    }

    /// The task's column name in the report and its file names.
    pub fn column(&self) -> String {
        match (&self.name, &self.language) {
            (Some(name), _) => name.clone(),
            (None, Some(language)) => format!("{}-{language}", self.task),
            (None, None) => self.task.clone(),
        }
    }

    /// The metric the report shows.
    pub fn metric(&self) -> String {
        if let Some(m) = &self.metric {
            return m.clone();
        }
        match self.task.as_str() {
            "humaneval-x" | "mbpp" => "pass@1",
            "gsm8k" => "exact_match",
            "translation" => "meteor",
            "ppl" => "perplexity",
            _ => "acc",
        }
        .to_string()
    }

    /// The shipped copy of the task's data, relative to the data root.
    fn default_data(&self) -> &'static str {
        match self.task.as_str() {
            "humaneval-x" => "humaneval-x",
            "mbpp" => "mbpp/mbpp.jsonl",
            "gsm8k" => "gsm8k/test.jsonl",
            "piqa" => "piqa",
            "hellaswag" => "hellaswag/hellaswag_val.jsonl.gz",
            "arc-easy" => "arc/arc_easy.jsonl",
            "arc-challenge" => "arc/arc_challenge.jsonl",
            "winogrande" => "winogrande",
            "boolq" => "boolq/boolq.jsonl.gz",
            "translation" => "multi30k-en-de/test.en-de.jsonl",
            _ => "wikitext-2-raw/wiki.test.raw",
        }
    }

    /// Checks the task name and the options that apply to it.
    fn check(&self) -> Result<()> {
        let task = self.task.as_str();
        if !TASKS.contains(&task) {
            bail!("unknown task `{task}`: expected one of {}", TASKS.join(", "));
        }
        let code = task == "humaneval-x" || task == "mbpp";
        match (task, self.language.as_deref()) {
            ("humaneval-x", None) => bail!("task humaneval-x needs `language` (python, cpp, java or js)"),
            ("humaneval-x", Some("python" | "cpp" | "java" | "js")) | (_, None) => {}
            ("humaneval-x", Some(other)) => bail!("task humaneval-x: unknown language `{other}` (expected python, cpp, java or js)"),
            (_, Some(_)) => bail!("task `{task}` takes no `language` (only humaneval-x does)"),
        }
        for (option, given, applies) in [
            ("samples", self.samples.is_some(), code),
            ("temperature", self.temperature.is_some(), code),
            ("protocol", self.protocol.is_some(), code),
            ("max_new_tokens", self.max_new_tokens.is_some(), self.generates()),
            ("seqlen", self.seqlen.is_some(), task == "ppl"),
            ("max_windows", self.max_windows.is_some(), task == "ppl"),
            ("limit", self.limit.is_some(), task != "ppl"),
        ] {
            if given && !applies {
                bail!("task `{}`: option `{option}` does not apply to it", self.column());
            }
        }
        if task == "ppl" && self.seqlen.is_none() {
            bail!("task `{}`: ppl needs `seqlen` (tokens per window)", self.column());
        }
        if let Some(p) = &self.protocol {
            if p != "completion" && p != "instruct" {
                bail!("task `{}`: unknown protocol `{p}` (expected completion or instruct)", self.column());
            }
        }
        if self.column().is_empty() || !self.column().chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '@') {
            bail!("task name `{}`: use letters, digits, `-`, `_` and `@`", self.column());
        }
        Ok(())
    }

    /// The `evaluate` arguments of the task on `data`, before `--model`, `--mask`, `--device` and `--out`.
    fn args(&self, data: &Path) -> Vec<String> {
        let mut args = vec![self.task.clone()];
        if let Some(language) = &self.language {
            args.extend(["--lang".to_string(), language.clone()]);
        }
        args.extend([if self.task == "ppl" { "--text" } else { "--data" }.to_string(), path_arg(data)]);
        let options: [(&str, Option<String>); 8] = [
            ("--limit", self.limit.map(|v| v.to_string())),
            ("--samples", self.samples.map(|v| v.to_string())),
            ("--temperature", self.temperature.map(|v| v.to_string())),
            ("--max-new-tokens", self.max_new_tokens.map(|v| v.to_string())),
            ("--batch", self.batch.map(|v| v.to_string())),
            ("--protocol", self.protocol.clone()),
            ("--seqlen", self.seqlen.map(|v| v.to_string())),
            ("--max-windows", self.max_windows.map(|v| v.to_string())),
        ];
        for (flag, value) in options {
            if let Some(v) = value {
                args.extend([flag.to_string(), v]);
            }
        }
        args.push("--quiet".to_string());
        args
    }
}

/// Calibration options (`datasets sample` and `calibrate`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Calibration {
    /// Sequences per source.
    pub nsamples: usize,
    /// Tokens per sequence.
    pub seqlen: usize,
    /// Sampling seed.
    pub seed: u64,
    /// Fraction of each source's documents held out from calibration.
    pub heldout_fraction: f64,
    /// Statistics of every layer from the dense model (instead of sequential).
    pub oneshot: bool,
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration { nsamples: 128, seqlen: 2048, seed: 0, heldout_fraction: 0.1, oneshot: false }
    }
}

/// Held-out perplexity options (`datasets sample --windows` and `evaluate ppl`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Evaluation {
    /// Tokens per window.
    pub seqlen: usize,
    /// Windows per domain (the first ones of its held-out documents, in order); 0 skips evaluation and the report.
    pub max_windows: usize,
}

impl Default for Evaluation {
    fn default() -> Self {
        Evaluation { seqlen: 512, max_windows: 16 }
    }
}

/// One corpus of one domain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Unique name, used in file names (letters, digits, `-`, `_`).
    pub name: String,
    /// Its domain; the first source of a domain supplies the domain's held-out windows.
    pub domain: String,
    /// Paths (trees, JSONL/Parquet, text files) or `@name` built-in corpora.
    pub from: Vec<String>,
    /// Record field holding the text (data files).
    pub field: Option<String>,
    /// Template joining record fields (data files).
    pub template: Option<String>,
    /// Keep only records of this split (data files).
    pub split: Option<String>,
    /// A `datasets presets` name.
    pub preset: Option<String>,
    /// File extensions of trees, for domains without built-in rules.
    pub ext: Option<Vec<String>>,
    /// Keep only shard `i/n` of the documents.
    pub shard: Option<String>,
    /// At most this many documents.
    pub max_docs: Option<usize>,
    /// Join short documents before sampling (`datasets sample --concat`).
    #[serde(default)]
    pub concat: bool,
    /// Skip the first N records of every data file (`datasets collect
    /// --skip-records`): e.g. the items of a set that a task evaluates.
    #[serde(default)]
    pub skip_records: usize,
}

/// A set of sub-models: sources x methods x patterns.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prune {
    /// Source names, or `["*"]` for all (ignored by magnitude, which needs no data).
    #[serde(default = "all_sources")]
    pub sources: Vec<String>,
    /// `wanda`, `ria` (unstructured: per matrix, as its authors), `sparsegpt` and/or `magnitude`.
    pub methods: Vec<String>,
    /// `unstructured-<s>` (e.g. `unstructured-0.5`) and/or `N:M` (e.g. `2:4`).
    pub patterns: Vec<String>,
    /// How each unstructured sparsity is spread over the layers: `uniform`
    /// and/or `owl` (OWL's outlier-weighted layer sparsities; not magnitude).
    #[serde(default = "uniform_profile")]
    pub profiles: Vec<String>,
}

fn uniform_profile() -> Vec<String> {
    vec!["uniform".to_string()]
}

fn all_sources() -> Vec<String> {
    vec!["*".to_string()]
}

/// Which masks to write as pruned models.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Apply {
    /// Mask names (as in the report, e.g. `python-a-wanda-u0.5`).
    #[serde(default)]
    pub masks: Vec<String>,
    /// Stored dtype: f32, f16 or bf16.
    pub dtype: Option<String>,
}

/// Speed-only flags of the stages that compute with the model (calibrate,
/// score, evaluate): the device, the rows per pass, the display.
const COMPUTE_SPEED: &[SpeedFlag] = &[("--device", true), ("--batch", true), ("--quiet", false)];
/// Speed-only flags of the code tasks (evaluate humaneval-x, mbpp): also the programs run at once.
const CODE_SPEED: &[SpeedFlag] = &[("--device", true), ("--batch", true), ("--quiet", false), ("--jobs", true)];
/// Speed-only flags of datasets and mask: the display (and apply's overwrite permission).
const FILE_SPEED: &[SpeedFlag] = &[("--quiet", false), ("--force", false)];

/// The flags of calibrate and mask for `pattern`.
/// The comparison group a method's authors choose among weights: RIA's
/// unstructured masks compare the whole matrix (`--group layer`); the
/// others keep the stages' default (per row).
fn group_flags(method: &str, pattern: &Pattern) -> Vec<String> {
    match (method, pattern) {
        ("ria", Pattern::Unstructured { .. }) => vec!["--group".into(), "layer".into()],
        _ => Vec::new(),
    }
}

fn pattern_flags(pattern: &Pattern) -> Vec<String> {
    match pattern {
        Pattern::Unstructured { sparsity } => vec!["--sparsity".into(), sparsity.to_string()],
        Pattern::NM { .. } => vec!["--nm".into(), pattern.to_string()],
    }
}

/// The run manifest (`run.json`) that `analyze report` reads.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    /// The experiment's title.
    pub title: String,
    /// The model.
    pub model: ManifestModel,
    /// Every mask made.
    pub masks: Vec<ManifestMask>,
    /// Every perplexity result.
    pub results: Vec<ManifestResult>,
    /// Every task result.
    pub task_results: Vec<ManifestTaskResult>,
    /// The Jaccard artifact, when there are two masks or more.
    pub jaccard: Option<String>,
    /// Pairs of masks from two sources of the same domain, method and pattern.
    pub same_domain_pairs: Vec<(String, String)>,
    /// Where the report's figures go.
    pub figures_dir: String,
}

/// The model of a run.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestModel {
    /// Its name in the experiment file.
    pub name: String,
    /// Its file or directory.
    pub path: String,
}

/// A mask of a run.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestMask {
    /// The mask's name (its file stem).
    pub name: String,
    /// The calibration domain (`none` for magnitude).
    pub domain: String,
    /// The calibration source (`none` for magnitude).
    pub source: String,
    /// The scoring method.
    pub method: String,
    /// The pattern label.
    pub pattern: String,
    /// The mask artifact, relative to the run directory.
    pub path: String,
}

/// A task result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestTaskResult {
    /// The mask evaluated, `None` for the dense model.
    pub mask: Option<String>,
    /// The task's column name.
    pub task: String,
    /// The metric the report shows.
    pub metric: String,
    /// The results artifact, relative to the run directory.
    pub path: String,
    /// The calibration domain the task measures.
    pub domain: Option<String>,
}

/// A perplexity result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestResult {
    /// The mask evaluated, `None` for the dense model.
    pub mask: Option<String>,
    /// The evaluation domain.
    pub domain: String,
    /// The results artifact, relative to the run directory.
    pub path: String,
}

/// The steps of an experiment and its manifest.
#[derive(Debug)]
pub struct Plan {
    /// The stage runs in dependency order.
    pub steps: Vec<Step>,
    /// What `analyze report` reads.
    pub manifest: Manifest,
    /// Sources left out (a built-in corpus absent from this machine), with the reason.
    pub skipped: Vec<String>,
}

/// Calibration sequences per source of a [`quick`] run.
const QUICK_NSAMPLES: usize = 8;
/// Tokens per calibration sequence of a [`quick`] run.
const QUICK_SEQLEN: usize = 256;
/// Items of each generation task (code, GSM8K, translation) in a [`quick`]
/// run: a pruned Qwen2.5-Coder-0.5B takes about 10 s per code item on two
/// cores, so 4 items of 5 code tasks for 9 models are most of 45 minutes.
const QUICK_GENERATED_ITEMS: usize = 4;
/// Items of each log-likelihood task (multiple choice) in a [`quick`] run.
const QUICK_SCORED_ITEMS: usize = 20;
/// Windows of held-out and task perplexity in a [`quick`] run.
const QUICK_WINDOWS: usize = 2;
/// Tokens per window of held-out and task perplexity in a [`quick`] run.
const QUICK_WINDOW_SEQLEN: usize = 256;

/// The experiment in small: fewer and shorter calibration sequences, fewer
/// perplexity windows, and only the first items of each task. Every cell is
/// still measured, so the whole pipeline runs; the numbers are rough.
pub fn quick(mut exp: Experiment) -> Experiment {
    exp.title = format!("{} (quick: first items of each task)", exp.title);
    exp.calibration.nsamples = exp.calibration.nsamples.min(QUICK_NSAMPLES);
    exp.calibration.seqlen = exp.calibration.seqlen.min(QUICK_SEQLEN);
    exp.evaluation.max_windows = exp.evaluation.max_windows.min(QUICK_WINDOWS);
    exp.evaluation.seqlen = exp.evaluation.seqlen.min(QUICK_WINDOW_SEQLEN);
    for task in &mut exp.tasks {
        match task.task.as_str() {
            "ppl" => {
                task.max_windows = Some(task.max_windows.unwrap_or(QUICK_WINDOWS).min(QUICK_WINDOWS));
                task.seqlen = Some(task.seqlen.unwrap_or(QUICK_WINDOW_SEQLEN).min(QUICK_WINDOW_SEQLEN));
            }
            _ => {
                let items = if task.generates() { QUICK_GENERATED_ITEMS } else { QUICK_SCORED_ITEMS };
                task.limit = Some(task.limit.unwrap_or(items).min(items));
            }
        }
    }
    exp
}

/// Reads and checks an experiment file.
pub fn load(path: &Path) -> Result<Experiment> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading experiment file {}", path.display()))?;
    let exp: Experiment = toml::from_str(&text).with_context(|| format!("{} is not a valid experiment file", path.display()))?;
    check(&exp).with_context(|| format!("in experiment file {}", path.display()))?;
    Ok(exp)
}

/// Checks the held-out fraction, names, methods, patterns and source references of an experiment.
pub fn check(exp: &Experiment) -> Result<()> {
    let fraction = exp.calibration.heldout_fraction;
    if !(0.0..=1.0).contains(&fraction) {
        bail!("calibration.heldout_fraction: expected a fraction in [0, 1], found {fraction}");
    }
    let mut names = std::collections::BTreeSet::new();
    for s in &exp.sources {
        if s.name.is_empty() || !s.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            bail!("source name `{}`: use letters, digits, `-` and `_`", s.name);
        }
        if !names.insert(s.name.as_str()) {
            bail!("two sources are named `{}`", s.name);
        }
        if s.from.is_empty() {
            bail!("source `{}` has an empty `from`", s.name);
        }
    }
    let mut columns = std::collections::BTreeSet::new();
    for t in &exp.tasks {
        t.check()?;
        if !columns.insert(t.column()) {
            bail!("two tasks are named `{}`: give one a `name`", t.column());
        }
    }
    for p in &exp.prune {
        for m in &p.methods {
            if !["wanda", "ria", "sparsegpt", "magnitude"].contains(&m.as_str()) {
                bail!("unknown method `{m}`: expected wanda, ria, sparsegpt or magnitude");
            }
        }
        for pat in &p.patterns {
            pat.parse::<Pattern>()?;
        }
        for profile in &p.profiles {
            match profile.as_str() {
                "uniform" => {}
                "owl" if p.patterns.iter().any(|pat| matches!(pat.parse(), Ok(Pattern::NM { .. }))) => {
                    bail!(
                        "profile owl spreads an unstructured sparsity over the layers; give it unstructured patterns only (N:M is uniform)"
                    )
                }
                "owl" => {}
                other => bail!("unknown sparsity profile `{other}`: expected uniform or owl"),
            }
        }
        for s in &p.sources {
            if s != "*" && !names.contains(s.as_str()) {
                bail!("prune names source `{s}`, which is not among the sources");
            }
        }
    }
    Ok(())
}

/// Strings of a slice of `&str`.
fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

/// Plans the experiment in `run_dir` for the model at `model_path`.
///
/// `resolve` turns `@name` entries into paths, or `None` when that corpus is not
/// on this machine (the source is then skipped with a note); `data:REL`
/// entries are REL under `data_root`; `device` is passed to the compute stages.
/// A calibration source that reads items a task evaluates is refused.
pub fn plan(
    exp: &Experiment,
    model_path: &Path,
    run_dir: &Path,
    device: &str,
    data_root: &Path,
    resolve: &mut dyn FnMut(&str) -> Result<Option<Vec<PathBuf>>>,
) -> Result<Plan> {
    let model = path_arg(model_path);
    let at = |rel: &str| run_dir.join(rel);
    let mut steps = Vec::new();
    let mut skipped = Vec::new();
    let mut sources: Vec<&Source> = Vec::new();
    let mut from_paths: BTreeMap<&str, Vec<PathBuf>> = BTreeMap::new();
    'sources: for source in &exp.sources {
        let mut paths = Vec::new();
        for entry in &source.from {
            match entry.strip_prefix('@') {
                Some(name) => match resolve(name)? {
                    Some(found) => paths.extend(found),
                    None => {
                        skipped.push(format!("source `{}` ({}): the corpus @{name} is not on this machine", source.name, source.domain));
                        continue 'sources;
                    }
                },
                None => paths.push(data_path(entry, data_root)),
            }
        }
        from_paths.insert(source.name.as_str(), paths);
        sources.push(source);
    }
    if sources.is_empty() {
        bail!("none of the experiment's sources is available: {}", skipped.join("; "));
    }
    let task_data: Vec<PathBuf> = exp
        .tasks
        .iter()
        .map(|t| data_path(t.data.as_deref().map_or_else(|| format!("data:{}", t.default_data()), str::to_string).as_str(), data_root))
        .collect();
    for (task, data) in exp.tasks.iter().zip(&task_data) {
        for s in &sources {
            for from in &from_paths[s.name.as_str()] {
                if let Some(why) = overlap(from, s.skip_records, data, task.limit) {
                    bail!(
                        "calibration source `{}` reads {}, which task `{}` evaluates ({}): calibrating on evaluated data would flatter the sub-model. {}",
                        s.name,
                        from.display(),
                        task.column(),
                        data.display(),
                        why
                    );
                }
            }
        }
    }

    // Documents and calibration samples of every source.
    for s in &sources {
        let docs = at(&format!("documents/{}.parquet", s.name));
        let mut args = strings(&["collect", "--domain", &s.domain, "--heldout-fraction", &exp.calibration.heldout_fraction.to_string()]);
        args.push("--from".into());
        args.extend(from_paths[s.name.as_str()].iter().map(|p| path_arg(p)));
        for (flag, value) in
            [("--field", &s.field), ("--template", &s.template), ("--split", &s.split), ("--preset", &s.preset), ("--shard", &s.shard)]
        {
            if let Some(v) = value {
                args.extend([flag.to_string(), v.clone()]);
            }
        }
        if let Some(ext) = &s.ext {
            args.extend(["--ext".to_string(), ext.join(",")]);
        }
        if let Some(n) = s.max_docs {
            args.extend(["--max-docs".to_string(), n.to_string()]);
        }
        if s.skip_records > 0 {
            args.extend(["--skip-records".to_string(), s.skip_records.to_string()]);
        }
        args.extend(["--out".to_string(), path_arg(&docs)]);
        steps.push(
            Step::new(format!("collect {}", s.name), "datasets", args, from_paths[s.name.as_str()].clone(), vec![docs.clone()])
                .speed_only(FILE_SPEED),
        );

        let calib = at(&format!("samples/{}-calib.parquet", s.name));
        let c = &exp.calibration;
        let mut args = strings(&["sample", "--documents", &path_arg(&docs), "--model", &model]);
        args.extend(strings(&["--nsamples", &c.nsamples.to_string(), "--seqlen", &c.seqlen.to_string(), "--seed", &c.seed.to_string()]));
        if s.concat {
            args.push("--concat".into());
        }
        args.extend(["--out".to_string(), path_arg(&calib)]);
        steps.push(
            Step::new(format!("calibration samples {}", s.name), "datasets", args, vec![docs, model_path.into()], vec![calib])
                .speed_only(FILE_SPEED),
        );
    }

    // Held-out windows of every domain, from its first source.
    let mut domains: Vec<(&str, &str)> = Vec::new();
    for s in &sources {
        if !domains.iter().any(|(d, _)| *d == s.domain) {
            domains.push((s.domain.as_str(), s.name.as_str()));
        }
    }
    let evaluate = exp.evaluation.max_windows > 0;
    for (domain, source) in domains.iter().filter(|_| evaluate) {
        let docs = at(&format!("documents/{source}.parquet"));
        let out = at(&format!("samples/{domain}-heldout.parquet"));
        let e = &exp.evaluation;
        let mut args = strings(&["sample", "--documents", &path_arg(&docs), "--model", &model, "--split", "heldout", "--windows"]);
        args.extend(strings(&["--seqlen", &e.seqlen.to_string(), "--max-windows", &e.max_windows.to_string(), "--out", &path_arg(&out)]));
        steps.push(
            Step::new(format!("held-out windows {domain}"), "datasets", args, vec![docs, model_path.into()], vec![out])
                .speed_only(FILE_SPEED),
        );
    }

    // Statistics, scores and masks.
    let mut masks: Vec<ManifestMask> = Vec::new();
    let mut made = std::collections::BTreeSet::new();
    for p in &exp.prune {
        for pattern_text in &p.patterns {
            let pattern: Pattern = pattern_text.parse()?;
            for method in &p.methods {
                let chosen: Vec<&&Source> = if method == "magnitude" {
                    Vec::new()
                } else {
                    sources.iter().filter(|s| p.sources.iter().any(|n| n == "*" || *n == s.name)).collect()
                };
                if method == "magnitude" {
                    let name = format!("magnitude-{}", pattern.tag());
                    if !made.insert(name.clone()) {
                        continue;
                    }
                    let scores = at("scores/magnitude.parquet");
                    if !steps.iter().any(|s: &Step| s.outputs.contains(&scores)) {
                        let args = strings(&["--model", &model, "--method", "magnitude", "--out", &path_arg(&scores)]);
                        steps.push(
                            Step::new("score magnitude", "score", args, vec![model_path.into()], vec![scores.clone()])
                                .speed_only(COMPUTE_SPEED),
                        );
                    }
                    push_mask(&mut steps, &mut masks, run_dir, &name, MaskSource::Scores(&scores), &pattern, ("none", "none", "magnitude"));
                    continue;
                }
                for (s, profile) in chosen.iter().flat_map(|s| p.profiles.iter().map(move |profile| (s, profile))) {
                    // OWL's masks carry the profile in their names and methods.
                    let (profile_tag, method_label) =
                        if profile == "owl" { ("owl-", format!("{method}+owl")) } else { ("", method.clone()) };
                    let name = format!("{}-{method}-{profile_tag}{}", s.name, pattern.tag());
                    if !made.insert(name.clone()) {
                        continue;
                    }
                    let calib = at(&format!("samples/{}-calib.parquet", s.name));
                    // Sequential calibration prunes by the method and profile as it goes: one statistics
                    // file for each (Wanda's uniform one keeps its historical name).
                    let method_tag = if method == "wanda" { String::new() } else { format!("{method}-") };
                    let stats = at(&format!("stats/{}-{method_tag}{profile_tag}{}.parquet", s.name, pattern.tag()));
                    // Sequential SparseGPT writes the mask (and updated weights) it applied as it
                    // calibrates; one-shot calibration prunes nothing, so its masks come from the
                    // inputs' Hessians, which it writes instead.
                    let calibrate_writes_mask = method == "sparsegpt" && !exp.calibration.oneshot;
                    let mask_path = at(&format!("masks/{name}.parquet"));
                    let hessians = (method == "sparsegpt" && exp.calibration.oneshot)
                        .then(|| at(&format!("hessians/{}-{method_tag}{profile_tag}{}.parquet", s.name, pattern.tag())));
                    if !steps.iter().any(|st: &Step| st.outputs.contains(&stats)) {
                        let mut args = strings(&["--model", &model, "--samples", &path_arg(&calib)]);
                        args.extend(pattern_flags(&pattern));
                        args.extend(group_flags(method, &pattern));
                        if method != "wanda" {
                            args.extend(["--method".to_string(), method.clone()]);
                        }
                        if profile == "owl" {
                            args.extend(["--sparsity-profile".to_string(), "owl".to_string()]);
                        }
                        if exp.calibration.oneshot {
                            args.push("--oneshot".into());
                        }
                        args.extend(strings(&["--device", device, "--out", &path_arg(&stats)]));
                        let mut outputs = vec![stats.clone()];
                        if let Some(hessians) = &hessians {
                            args.extend(["--hessians".to_string(), path_arg(hessians)]);
                            outputs.push(hessians.clone());
                        }
                        if calibrate_writes_mask {
                            args.extend(["--mask".to_string(), path_arg(&mask_path)]);
                            outputs.push(mask_path.clone());
                        }
                        let name = format!("calibrate {} {method_tag}{profile_tag}{}", s.name, pattern);
                        // Every calibration token goes through the model once; SparseGPT's
                        // Hessians and reconstruction take about as long again.
                        let passes = if method == "sparsegpt" { 2.0 } else { 1.0 };
                        let work = Work {
                            prefill_tokens: passes * (exp.calibration.nsamples * exp.calibration.seqlen) as f64,
                            decode_tokens: 0.0,
                        };
                        steps.push(
                            Step::new(name, "calibrate", args, vec![model_path.into(), calib], outputs)
                                .speed_only(COMPUTE_SPEED)
                                .with_work(work),
                        );
                    }
                    if calibrate_writes_mask {
                        record_mask(&mut masks, &name, &pattern, (&s.domain, &s.name, &method_label));
                        continue;
                    }
                    // The mask's scores come from the statistics and the weights
                    // module by module (`mask --stats`): no scores file, whose size
                    // (one f32 per weight) would limit large models.
                    let source = MaskSource::Stats {
                        stats: &stats,
                        hessians: hessians.as_deref(),
                        model: &model,
                        model_path,
                        method,
                        owl: profile == "owl",
                    };
                    push_mask(&mut steps, &mut masks, run_dir, &name, source, &pattern, (&s.domain, &s.name, &method_label));
                }
            }
        }
    }

    // Pruned model directories.
    for name in &exp.apply.masks {
        if !masks.iter().any(|m| &m.name == name) {
            bail!("apply names mask `{name}`, which the experiment does not make (masks: {})", mask_names(&masks));
        }
        let mask = at(&format!("masks/{name}.parquet"));
        let out = at(&format!("models/{name}"));
        let mut args = strings(&["apply", "--model", &model, "--mask", &path_arg(&mask), "--out", &path_arg(&out), "--force"]);
        if let Some(dtype) = &exp.apply.dtype {
            args.extend(["--dtype".to_string(), dtype.clone()]);
        }
        steps.push(Step::new(format!("apply {name}"), "mask", args, vec![model_path.into(), mask], vec![out]).speed_only(FILE_SPEED));
    }

    // Perplexity of the dense model and every sub-model on every domain: one
    // evaluate process per model measures all domains in one pass.
    let mut results = Vec::new();
    let evaluated: Vec<Option<&ManifestMask>> = std::iter::once(None).chain(masks.iter().map(Some)).collect();
    for mask in evaluated.into_iter().filter(|_| evaluate && !domains.is_empty()) {
        let label = mask.map_or("dense", |m| m.name.as_str());
        let mut args = strings(&["ppl", "--model", &model]);
        let mut inputs = vec![model_path.to_path_buf()];
        let mut outputs = Vec::new();
        for (domain, _) in &domains {
            let rel = format!("results/{label}--{domain}.parquet");
            let windows = at(&format!("samples/{domain}-heldout.parquet"));
            args.extend(["--samples".to_string(), path_arg(&windows), "--domain".to_string(), domain.to_string()]);
            args.extend(["--out".to_string(), path_arg(&at(&rel))]);
            inputs.push(windows);
            outputs.push(at(&rel));
            outputs.push(artifacts::items_path_for(&at(&rel)));
            results.push(ManifestResult { mask: mask.map(|m| m.name.clone()), domain: domain.to_string(), path: rel });
        }
        if let Some(m) = mask {
            args.extend(["--mask".to_string(), path_arg(&run_dir.join(&m.path))]);
            inputs.push(run_dir.join(&m.path));
        }
        args.extend(strings(&["--device", device]));
        let windows = (exp.evaluation.max_windows * domains.len()) as f64;
        let work = Work { prefill_tokens: windows * exp.evaluation.seqlen as f64, decode_tokens: 0.0 };
        steps.push(
            Step::new(format!("perplexity {label} on every domain"), "evaluate", args, inputs, outputs)
                .speed_only(COMPUTE_SPEED)
                .with_work(work),
        );
    }

    // Every task for the dense model and every sub-model.
    let mut task_results = Vec::new();
    for mask in std::iter::once(None).chain(masks.iter().map(Some)) {
        for (task, data) in exp.tasks.iter().zip(&task_data) {
            let label = mask.map_or("dense", |m| m.name.as_str());
            let column = task.column();
            let rel = format!("results/{label}--task-{column}.parquet");
            let mut args = task.args(data);
            args.extend(["--model".to_string(), model.clone()]);
            let mut inputs = vec![model_path.to_path_buf(), data.clone()];
            if let Some(m) = mask {
                args.extend(["--mask".to_string(), path_arg(&run_dir.join(&m.path))]);
                inputs.push(run_dir.join(&m.path));
            }
            args.extend(strings(&["--device", device, "--out", &path_arg(&at(&rel))]));
            let speed = if task.task == "humaneval-x" || task.task == "mbpp" { CODE_SPEED } else { COMPUTE_SPEED };
            steps.push(
                Step::new(format!("task {column} {label}"), "evaluate", args, inputs, vec![at(&rel), artifacts::items_path_for(&at(&rel))])
                    .speed_only(speed)
                    .with_work(task.work()),
            );
            task_results.push(ManifestTaskResult {
                mask: mask.map(|m| m.name.clone()),
                task: column,
                metric: task.metric(),
                path: rel,
                domain: task.measured_domain(),
            });
        }
    }

    // Jaccard distances between all masks, then the report.
    let jaccard = (masks.len() >= 2).then(|| "jaccard.parquet".to_string());
    if let Some(rel) = &jaccard {
        let mut args = vec!["jaccard".to_string(), "--masks".to_string()];
        args.extend(masks.iter().map(|m| path_arg(&run_dir.join(&m.path))));
        args.extend(["--out".to_string(), path_arg(&at(rel))]);
        let inputs = masks.iter().map(|m| run_dir.join(&m.path)).collect();
        steps.push(Step::new("jaccard distances", "analyze", args, inputs, vec![at(rel)]));
    }
    let mut same_domain_pairs = Vec::new();
    for (i, a) in masks.iter().enumerate() {
        for b in &masks[i + 1..] {
            if a.domain == b.domain && a.domain != "none" && a.source != b.source && a.method == b.method && a.pattern == b.pattern {
                same_domain_pairs.push((a.name.clone(), b.name.clone()));
            }
        }
    }
    let manifest = Manifest {
        title: exp.title.clone(),
        model: ManifestModel { name: exp.model.clone(), path: model.clone() },
        masks,
        results,
        task_results,
        jaccard,
        same_domain_pairs,
        figures_dir: "figures".to_string(),
    };
    let mut report_inputs: Vec<PathBuf> = manifest.results.iter().map(|r| run_dir.join(&r.path)).collect();
    report_inputs.extend(manifest.task_results.iter().map(|r| run_dir.join(&r.path)));
    report_inputs.extend(manifest.jaccard.iter().map(|j| run_dir.join(j)));
    if evaluate || !manifest.task_results.is_empty() {
        let report = at("report.md");
        let args = strings(&["report", "--run", &path_arg(run_dir), "--out", &path_arg(&report)]);
        steps.push(Step::new("report", "analyze", args, report_inputs, vec![report]).always().with_stdout());
    }
    Ok(Plan { steps, manifest, skipped })
}

/// `entry` as a path: `data:REL` is REL under `data_root`.
fn data_path(entry: &str, data_root: &Path) -> PathBuf {
    match entry.strip_prefix("data:") {
        Some(rel) => data_root.join(rel),
        None => PathBuf::from(entry),
    }
}

/// Why calibration path `from` (its first `skip` records of each data file
/// passed over) reads what a task evaluates in `data` (its first `limit`
/// items, or all), or `None` when they are apart. Paths are compared as
/// written and, where they exist, canonical; a directory covers its files.
fn overlap(from: &Path, skip: usize, data: &Path, limit: Option<usize>) -> Option<String> {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (from, data) = (canonical(from), canonical(data));
    if from == data {
        return match limit {
            Some(limit) if skip >= limit => None,
            Some(limit) => {
                Some(format!("The task reads its first {limit} items; give the source `skip_records = {limit}` (it skips {skip})."))
            }
            None => Some("The task reads every item; give it a `limit` and the source `skip_records` of at least that.".to_string()),
        };
    }
    if data.starts_with(&from) {
        return Some(format!("{} lies inside it.", data.display()));
    }
    if from.starts_with(&data) {
        return Some(format!("it lies inside {}.", data.display()));
    }
    None
}

fn mask_names(masks: &[ManifestMask]) -> String {
    masks.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// What a mask step selects from.
enum MaskSource<'a> {
    /// A scores artifact (`mask --scores`).
    Scores(&'a Path),
    /// Statistics and the model's weights (`mask --stats --model --method`),
    /// or for SparseGPT the Hessians (`mask --hessians --model`, the
    /// statistics only for OWL's layer sparsities).
    Stats {
        /// The statistics artifact.
        stats: &'a Path,
        /// The Hessians artifact (SparseGPT).
        hessians: Option<&'a Path>,
        /// The model as given on the stages' command lines.
        model: &'a str,
        /// The model's path, an input of the step.
        model_path: &'a Path,
        /// The scoring method.
        method: &'a str,
        /// Each layer at its OWL sparsity (recorded in the statistics).
        owl: bool,
    },
}

/// Adds the `mask` step of `name` and records the mask.
fn push_mask(
    steps: &mut Vec<Step>,
    masks: &mut Vec<ManifestMask>,
    run_dir: &Path,
    name: &str,
    from: MaskSource<'_>,
    pattern: &Pattern,
    (domain, source, method): (&str, &str, &str),
) {
    let rel = format!("masks/{name}.parquet");
    let (mut args, inputs) = match from {
        MaskSource::Scores(scores) => (strings(&["--scores", &path_arg(scores)]), vec![scores.to_path_buf()]),
        MaskSource::Stats { stats, hessians: None, model, model_path, method, owl } => {
            let mut args = strings(&["--stats", &path_arg(stats), "--model", model, "--method", method]);
            args.extend(group_flags(method, pattern));
            if owl {
                args.extend(strings(&["--sparsity-profile", "owl"]));
            }
            (args, vec![model_path.to_path_buf(), stats.to_path_buf()])
        }
        MaskSource::Stats { stats, hessians: Some(hessians), model, model_path, method, owl } => {
            let mut args = strings(&["--hessians", &path_arg(hessians), "--model", model, "--method", method]);
            let mut inputs = vec![model_path.to_path_buf(), hessians.to_path_buf()];
            if owl {
                args.extend(strings(&["--stats", &path_arg(stats), "--sparsity-profile", "owl"]));
                inputs.push(stats.to_path_buf());
            }
            (args, inputs)
        }
    };
    args.extend(pattern_flags(&pattern));
    args.extend(["--out".to_string(), path_arg(&run_dir.join(&rel))]);
    steps.push(Step::new(format!("mask {name}"), "mask", args, inputs, vec![run_dir.join(&rel)]).speed_only(FILE_SPEED));
    record_mask(masks, name, pattern, (domain, source, method));
}

/// Records the mask `name` (at `masks/{name}.parquet` in the run directory) in the manifest.
fn record_mask(masks: &mut Vec<ManifestMask>, name: &str, pattern: &Pattern, (domain, source, method): (&str, &str, &str)) {
    masks.push(ManifestMask {
        name: name.to_string(),
        domain: domain.to_string(),
        source: source.to_string(),
        method: method.to_string(),
        pattern: pattern.to_string(),
        path: format!("masks/{name}.parquet"),
    });
}

/// Writes the manifest as `run.json` in the run directory (atomically).
pub fn write_manifest(run_dir: &Path, manifest: &Manifest) -> Result<()> {
    let path = run_dir.join("run.json");
    let tmp = run_dir.join("run.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(manifest)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
title = "t"
model = "smollm2-135m"
[calibration]
nsamples = 4
seqlen = 64
[evaluation]
max_windows = 2
[[sources]]
name = "py-a"
domain = "python"
from = ["@py"]
shard = "0/2"
[[sources]]
name = "py-b"
domain = "python"
from = ["@py"]
shard = "1/2"
[[sources]]
name = "java"
domain = "java"
from = ["@jdk"]
[[sources]]
name = "text"
domain = "prose"
from = ["/some/file.txt"]
[[prune]]
methods = ["wanda", "magnitude"]
patterns = ["unstructured-0.5", "2:4"]
[apply]
masks = ["py-a-wanda-u0.5"]
dtype = "bf16"
"#;

    fn planned() -> Plan {
        let exp: Experiment = toml::from_str(EXAMPLE).unwrap();
        check(&exp).unwrap();
        let mut resolve = |name: &str| Ok((name == "py").then(|| vec![PathBuf::from("/usr/lib/python3")]));
        plan(&exp, Path::new("/m.gguf"), Path::new("/run"), "cpu", Path::new("/data"), &mut resolve).unwrap()
    }

    #[test]
    fn plans_every_stage_once_and_skips_absent_corpora() {
        let plan = planned();
        assert_eq!(plan.skipped.len(), 1, "{:?}", plan.skipped);
        assert!(plan.skipped[0].contains("@jdk"));
        let count = |program: &str, first: &str| plan.steps.iter().filter(|s| s.program == program && s.args[0] == first).count();
        // 3 sources: collect + calib samples each; 2 domains with held-out windows.
        assert_eq!(count("datasets", "collect"), 3);
        assert_eq!(count("datasets", "sample"), 3 + 2);
        // One calibration per (source, pattern); wanda masks per (source, pattern) straight from the
        // statistics; magnitude: one score, a mask per pattern.
        assert_eq!(plan.steps.iter().filter(|s| s.program == "calibrate").count(), 3 * 2);
        assert_eq!(plan.steps.iter().filter(|s| s.program == "score").count(), 1);
        assert_eq!(plan.steps.iter().filter(|s| s.program == "mask" && s.args[0] == "--stats").count(), 3 * 2);
        assert_eq!(plan.manifest.masks.len(), 3 * 2 + 2);
        // Dense + 8 masks on 2 domains, one evaluate process per model.
        assert_eq!(plan.manifest.results.len(), 9 * 2);
        assert_eq!(plan.steps.iter().filter(|s| s.program == "evaluate").count(), 9);
        assert_eq!(count("mask", "apply"), 1);
        assert_eq!(
            plan.manifest.same_domain_pairs,
            [
                ("py-a-wanda-u0.5".to_string(), "py-b-wanda-u0.5".to_string()),
                ("py-a-wanda-2of4".to_string(), "py-b-wanda-2of4".to_string())
            ]
        );
        assert_eq!(plan.steps.last().unwrap().name, "report");
        // Every input is made by an earlier step or is outside the run directory.
        for (i, step) in plan.steps.iter().enumerate() {
            for input in step.inputs.iter().filter(|p| p.starts_with("/run")) {
                assert!(plan.steps[..i].iter().any(|s| s.outputs.contains(input)), "{} needs {}", step.name, input.display());
            }
        }
    }

    const TASKS_EXAMPLE: &str = r#"
[[tasks]]
task = "humaneval-x"
language = "python"
limit = 20
samples = 1
temperature = 0.0
protocol = "instruct"
[[tasks]]
task = "hellaswag"
limit = 100
"#;

    #[test]
    fn tasks_run_for_the_dense_model_and_every_mask() {
        let exp: Experiment = toml::from_str(&format!("{EXAMPLE}{TASKS_EXAMPLE}")).unwrap();
        check(&exp).unwrap();
        let mut resolve = |name: &str| Ok((name == "py").then(|| vec![PathBuf::from("/usr/lib/python3")]));
        let plan = plan(&exp, Path::new("/m.gguf"), Path::new("/run"), "cpu", Path::new("/data"), &mut resolve).unwrap();
        // Dense + 8 masks, 2 tasks each.
        let tasks: Vec<&Step> = plan.steps.iter().filter(|s| s.name.starts_with("task ")).collect();
        assert_eq!(tasks.len(), 9 * 2);
        assert_eq!(plan.manifest.task_results.len(), 9 * 2);
        let dense = tasks.iter().find(|s| s.name == "task humaneval-x-python dense").unwrap();
        let want = "humaneval-x --lang python --data /data/humaneval-x --limit 20 --samples 1 --temperature 0 --protocol instruct --quiet --model /m.gguf --device cpu --out /run/results/dense--task-humaneval-x-python.parquet";
        assert_eq!(dense.args.join(" "), want);
        let masked = tasks.iter().find(|s| s.name == "task hellaswag py-a-wanda-u0.5").unwrap();
        assert!(masked.args.join(" ").contains("--mask /run/masks/py-a-wanda-u0.5.parquet"), "{:?}", masked.args);
        assert_eq!(plan.manifest.task_results[1].metric, "acc");
        assert!(plan.steps.last().unwrap().inputs.contains(&PathBuf::from("/run/results/dense--task-hellaswag.parquet")));
    }

    #[test]
    fn a_calibration_source_reading_evaluated_items_is_refused() {
        let source = |from: &str, skip: usize| {
            format!("{EXAMPLE}{TASKS_EXAMPLE}\n[[sources]]\nname = \"csr\"\ndomain = \"csr\"\nfrom = [\"{from}\"]\nfield = \"ctx\"\nskip_records = {skip}\n")
        };
        let run = |text: String| {
            let exp: Experiment = toml::from_str(&text).unwrap();
            check(&exp).unwrap();
            let mut resolve = |name: &str| Ok((name == "py").then(|| vec![PathBuf::from("/usr/lib/python3")]));
            plan(&exp, Path::new("/m.gguf"), Path::new("/run"), "cpu", Path::new("/data"), &mut resolve).map(|_| ())
        };
        // HellaSwag's first 100 items are evaluated: skipping 50 is not enough, 100 is.
        let err = run(source("data:hellaswag/hellaswag_val.jsonl.gz", 50)).unwrap_err().to_string();
        assert!(err.contains("`csr`") && err.contains("`hellaswag`") && err.contains("skip_records = 100"), "{err}");
        run(source("data:hellaswag/hellaswag_val.jsonl.gz", 100)).unwrap();
        // A directory holding evaluated data, and a file inside an evaluated directory.
        assert!(run(source("data:hellaswag", 0)).unwrap_err().to_string().contains("lies inside it"));
        assert!(run(source("data:humaneval-x/humaneval_python.jsonl.gz", 500)).unwrap_err().to_string().contains("it lies inside"));
        // Other files of the same sets are fine (GSM8K's train split is never evaluated here).
        run(source("data:gsm8k/train.jsonl", 0)).unwrap();
    }

    #[test]
    fn the_paper_experiment_plans_every_cell_and_its_quick_version_limits_each_task() {
        let exp = load(&crate::workspace::root().join("experiments/paper.toml")).unwrap();
        let mut resolve = |name: &str| Ok(Some(vec![PathBuf::from(format!("/corpora/{name}"))]));
        let full = plan(&exp, Path::new("/m.gguf"), Path::new("/run"), "cpu", Path::new("/data"), &mut resolve).unwrap();
        // 8 calibration domains, one Wanda mask each, and the magnitude
        // baseline; every task for dense + 9 masks.
        assert_eq!(full.manifest.masks.len(), 9);
        assert!(full.manifest.masks.iter().any(|m| m.method == "magnitude"), "no magnitude baseline");
        assert_eq!(full.manifest.task_results.len(), 10 * exp.tasks.len());
        let quick = quick(exp.clone());
        assert_eq!((quick.calibration.nsamples, quick.calibration.seqlen), (8, 256));
        assert_eq!((quick.evaluation.max_windows, quick.evaluation.seqlen), (2, 256));
        for (t, q) in exp.tasks.iter().zip(&quick.tasks) {
            match t.task.as_str() {
                "ppl" => assert_eq!((q.max_windows, q.seqlen), (Some(2), Some(256))),
                "humaneval-x" | "mbpp" | "gsm8k" | "translation" => assert_eq!(q.limit, Some(4), "{}", t.column()),
                _ => assert_eq!(q.limit, Some(20), "{}", t.column()),
            }
        }
        plan(&quick, Path::new("/m.gguf"), Path::new("/run"), "cpu", Path::new("/data"), &mut resolve).unwrap();
    }

    #[test]
    fn methods_and_profiles_each_calibrate_and_mask_once_per_source() {
        let text = EXAMPLE.replace(
            "methods = [\"wanda\", \"magnitude\"]\npatterns = [\"unstructured-0.5\", \"2:4\"]",
            "methods = [\"wanda\", \"ria\"]\npatterns = [\"unstructured-0.5\"]\nprofiles = [\"uniform\", \"owl\"]",
        );
        let exp: Experiment = toml::from_str(&text).unwrap();
        check(&exp).unwrap();
        let mut resolve = |name: &str| Ok((name == "py").then(|| vec![PathBuf::from("/usr/lib/python3")]));
        let plan = plan(&exp, Path::new("/m.gguf"), Path::new("/run"), "cpu", Path::new("/data"), &mut resolve).unwrap();
        // 3 sources x 2 methods x 2 profiles, each its own statistics and mask.
        let calibrations: Vec<&Step> = plan.steps.iter().filter(|s| s.program == "calibrate").collect();
        assert_eq!(calibrations.len(), 12);
        let ria_owl = calibrations.iter().find(|s| s.outputs[0] == Path::new("/run/stats/py-a-ria-owl-u0.5.parquet")).unwrap();
        let args = ria_owl.args.join(" ");
        assert!(args.contains("--method ria") && args.contains("--sparsity-profile owl"), "{args}");
        assert!(args.contains("--group layer"), "RIA's unstructured masks compare the whole matrix: {args}");
        let mask = plan.manifest.masks.iter().find(|m| m.name == "py-a-ria-owl-u0.5").unwrap();
        assert_eq!(mask.method, "ria+owl");
        let mask_step = plan.steps.iter().find(|s| s.name == "mask py-a-ria-owl-u0.5").unwrap();
        assert!(mask_step.args.join(" ").contains("--method ria --group layer --sparsity-profile owl"), "{:?}", mask_step.args);
        // Sequential SparseGPT's calibration writes the mask it applied (OWL's
        // layer sparsities included): no Hessians and no mask step.
        let sparsegpt =
            text.replace("methods = [\"wanda\", \"ria\"]", "methods = [\"sparsegpt\"]").replace("py-a-wanda-u0.5", "py-a-sparsegpt-u0.5");
        let exp: Experiment = toml::from_str(&sparsegpt).unwrap();
        check(&exp).unwrap();
        let plan = super::plan(&exp, Path::new("/m.gguf"), Path::new("/run"), "cpu", Path::new("/data"), &mut resolve).unwrap();
        let calibrate = plan.steps.iter().find(|s| s.name == "calibrate py-a sparsegpt-owl-unstructured-0.5").unwrap();
        assert_eq!(
            calibrate.outputs,
            [Path::new("/run/stats/py-a-sparsegpt-owl-u0.5.parquet"), Path::new("/run/masks/py-a-sparsegpt-owl-u0.5.parquet")]
        );
        let args = calibrate.args.join(" ");
        assert!(args.contains("--sparsity-profile owl") && args.contains("--mask /run/masks/py-a-sparsegpt-owl-u0.5.parquet"), "{args}");
        assert!(!args.contains("--hessians"), "{args}");
        let mask_steps: Vec<&str> = plan.steps.iter().filter(|s| s.program == "mask").map(|s| s.name.as_str()).collect();
        assert!(!mask_steps.iter().any(|n| n.starts_with("mask py-a-sparsegpt")), "no mask step for SparseGPT: {mask_steps:?}");
        let mask = plan.manifest.masks.iter().find(|m| m.name == "py-a-sparsegpt-owl-u0.5").unwrap();
        assert_eq!((mask.method.as_str(), mask.path.as_str()), ("sparsegpt+owl", "masks/py-a-sparsegpt-owl-u0.5.parquet"));
        // One-shot calibration prunes nothing: its masks come from the Hessians it writes.
        let oneshot: Experiment = toml::from_str(&sparsegpt.replace("[calibration]", "[calibration]\noneshot = true")).unwrap();
        let plan = super::plan(&oneshot, Path::new("/m.gguf"), Path::new("/run"), "cpu", Path::new("/data"), &mut resolve).unwrap();
        let calibrate = plan.steps.iter().find(|s| s.name == "calibrate py-a sparsegpt-owl-unstructured-0.5").unwrap();
        assert_eq!(calibrate.outputs[1], Path::new("/run/hessians/py-a-sparsegpt-owl-u0.5.parquet"));
        let owl = plan.steps.iter().find(|s| s.name == "mask py-a-sparsegpt-owl-u0.5").unwrap();
        let args = owl.args.join(" ");
        assert!(args.starts_with("--hessians /run/hessians/py-a-sparsegpt-owl-u0.5.parquet --model /m.gguf --method sparsegpt"), "{args}");
        assert!(args.contains("--stats /run/stats/py-a-sparsegpt-owl-u0.5.parquet --sparsity-profile owl"), "{args}");
        let uniform = plan.steps.iter().find(|s| s.name == "mask py-a-sparsegpt-u0.5").unwrap();
        assert!(!uniform.args.contains(&"--stats".to_string()), "{:?}", uniform.args);
        assert_eq!(uniform.inputs, [Path::new("/m.gguf"), Path::new("/run/hessians/py-a-sparsegpt-u0.5.parquet")]);
        // OWL spreads unstructured sparsities only.
        let nm = text.replace("patterns = [\"unstructured-0.5\"]", "patterns = [\"2:4\"]");
        let exp: Experiment = toml::from_str(&nm).unwrap();
        assert!(check(&exp).unwrap_err().to_string().contains("N:M is uniform"));
    }

    #[test]
    fn bad_tasks_are_refused_with_the_reason() {
        let refused = |extra: &str| {
            let exp: Experiment = toml::from_str(&format!("{EXAMPLE}\n[[tasks]]\n{extra}\n")).unwrap();
            check(&exp).unwrap_err().to_string()
        };
        assert!(refused("task = \"humaneval\"").contains("unknown task `humaneval`"));
        assert!(refused("task = \"humaneval-x\"").contains("needs `language`"));
        assert!(refused("task = \"humaneval-x\"\nlanguage = \"rust\"").contains("unknown language `rust`"));
        assert!(refused("task = \"piqa\"\nsamples = 5").contains("option `samples` does not apply"));
        assert!(refused("task = \"mbpp\"\nprotocol = \"chat\"").contains("unknown protocol `chat`"));
        assert!(refused("task = \"ppl\"").contains("ppl needs `seqlen`"));
        let twice = "task = \"piqa\"\n[[tasks]]\ntask = \"piqa\"";
        assert!(refused(twice).contains("two tasks are named `piqa`"));
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let bad_method = EXAMPLE.replace("\"wanda\", \"magnitude\"", "\"obs\"");
        let exp: Experiment = toml::from_str(&bad_method).unwrap();
        assert!(check(&exp).unwrap_err().to_string().contains("unknown method `obs`"));
        let bad_pattern = EXAMPLE.replace("\"2:4\"", "\"half\"");
        let exp: Experiment = toml::from_str(&bad_pattern).unwrap();
        assert!(check(&exp).unwrap_err().to_string().contains("half"));
        assert!(toml::from_str::<Experiment>(&EXAMPLE.replace("max_windows", "max_windowz")).is_err());
        let mut exp: Experiment = toml::from_str(EXAMPLE).unwrap();
        exp.calibration.heldout_fraction = 1.5;
        assert!(check(&exp).unwrap_err().to_string().contains("heldout_fraction: expected a fraction in [0, 1], found 1.5"));
    }
}
