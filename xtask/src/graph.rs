//! A Makefile-style graph of stage runs with artifact reuse.
//!
//! Each [`Step`] is one run of a stage binary: its arguments, the files it
//! reads and the files (or directories) it writes. A step's *recipe* is a hash
//! of its program (its name and the content hash of its binary, so a rebuilt
//! stage reruns), its arguments (less the ones the step declares to change
//! only speed or display, [`Step::speed_only`]) and the content hashes of its inputs. The
//! run directory's ledger records, for every step that succeeded, its recipe
//! and the content hashes of its outputs. A step is reused when its recipe is
//! unchanged and its outputs are still there with the recorded content;
//! otherwise it runs. Outputs are compared by content, so a step whose inputs
//! were rebuilt to the same bytes is not rerun.
//!
//! A run directory lives and dies with its machine. An [`Archive`] keeps the
//! small outputs of finished steps (task results, perplexities) with their
//! recipes in a directory of its own that can be committed or copied, so that
//! a run of many hours carries over to a fresh machine: a step whose recipe
//! the archive holds gets its outputs back from it instead of running. The
//! recipe still binds the program's bytes and the inputs' content, so a
//! rebuilt or changed stage, or a changed input, reruns as without it.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Instant, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::estimate::Work;

/// A flag that changes only speed or display, not results, and whether it takes a value.
pub type SpeedFlag = (&'static str, bool);

/// One run of a stage binary.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// A unique, human-readable name, e.g. `calibrate python-a`.
    pub name: String,
    /// The stage binary, e.g. `calibrate`.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Files or directories it reads.
    pub inputs: Vec<PathBuf>,
    /// Files or directories it writes.
    pub outputs: Vec<PathBuf>,
    /// Run every time (cheap steps that read many files, such as the report).
    pub always: bool,
    /// Pass the stage's stdout through (a summary for the user) instead of discarding it.
    pub show_stdout: bool,
    /// This step's flags that change only speed or display; left out of its recipe.
    pub speed_only: Vec<SpeedFlag>,
    /// Its expected work, for time estimates.
    pub work: Work,
}

impl Step {
    /// A step of `program` with `args`, reading `inputs` and writing `outputs`.
    pub fn new(name: impl Into<String>, program: &str, args: Vec<String>, inputs: Vec<PathBuf>, outputs: Vec<PathBuf>) -> Self {
        Step {
            name: name.into(),
            program: program.to_string(),
            args,
            inputs,
            outputs,
            always: false,
            show_stdout: false,
            speed_only: Vec::new(),
            work: Work::default(),
        }
    }

    /// The same step with its expected work, for time estimates.
    pub fn with_work(mut self, work: Work) -> Self {
        self.work = work;
        self
    }

    /// The same step with `flags` declared as changing only speed or display:
    /// another value of one of them reuses the step's outputs. Each step
    /// declares its own, since a flag name may mean speed in one stage and
    /// results in another.
    pub fn speed_only(mut self, flags: &[SpeedFlag]) -> Self {
        self.speed_only.extend_from_slice(flags);
        self
    }

    /// The same step, run every time.
    pub fn always(mut self) -> Self {
        self.always = true;
        self
    }

    /// The same step, its stdout shown to the user.
    pub fn with_stdout(mut self) -> Self {
        self.show_stdout = true;
        self
    }

    /// The arguments that determine the results: all but the step's speed-only flags.
    pub fn result_args(&self) -> Vec<&str> {
        let mut kept = Vec::with_capacity(self.args.len());
        let mut skip_value = false;
        for arg in &self.args {
            if skip_value {
                skip_value = false;
                continue;
            }
            if let Some((_, takes_value)) = self.speed_only.iter().find(|(flag, _)| arg == flag) {
                skip_value = *takes_value;
                continue;
            }
            if self.speed_only.iter().any(|(flag, takes)| *takes && arg.starts_with(&format!("{flag}="))) {
                continue;
            }
            kept.push(arg.as_str());
        }
        kept
    }
}

/// How a step is carried out (the real runner starts the stage binary; tests fake it).
pub trait Runner {
    /// Runs `step`; an error stops the graph.
    fn run(&mut self, step: &Step) -> Result<()>;

    /// The file that is `program`, whose content enters the recipes of its
    /// steps; `None` where there is no such file (a fake stage).
    fn program_file(&self, _program: &str) -> Option<PathBuf> {
        None
    }
}

/// What one execution of a graph did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Names of the steps that ran, in order.
    pub ran: Vec<String>,
    /// Names of the steps whose outputs were reused.
    pub reused: Vec<String>,
    /// Names of the steps whose outputs were restored from the archive.
    pub restored: Vec<String>,
}

/// A ledger entry: the recipe a step's outputs were made with and their content hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    recipe: String,
    outputs: BTreeMap<String, String>,
}

/// A content hash remembered for a file of a given size and modification time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct KnownHash {
    size: u64,
    mtime_ns: u128,
    hash: String,
}

/// The ledger file of a run directory.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Ledger {
    /// Step name to entry.
    steps: BTreeMap<String, Entry>,
    /// File path to its last computed content hash (skips rehashing unchanged big files).
    hashes: BTreeMap<String, KnownHash>,
}

/// The graph's state between steps: the ledger and where it is kept.
pub struct Graph {
    ledger_path: PathBuf,
    ledger: Ledger,
    archive: Option<Archive>,
}

/// The largest output file an [`Archive`] keeps: task results and
/// perplexities (tens of kilobytes) are kept, while steps with bigger
/// outputs (statistics, masks, models), which take minutes where a task
/// takes hours, rerun on a fresh machine instead, so a committed archive stays small.
pub const ARCHIVE_MAX_FILE_BYTES: u64 = 1 << 20;

/// A directory of finished steps' small outputs, by recipe, that outlives
/// the run directory: `index.json` (step name to recipe and output hashes)
/// and `files/<sha256>` (each output file once, by content).
pub struct Archive {
    dir: PathBuf,
    index: BTreeMap<String, Entry>,
    max_file_bytes: u64,
}

impl Archive {
    /// Opens (or starts) the archive in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir.join("files")).with_context(|| format!("creating archive directory {}", dir.display()))?;
        let index = read_json_or_default(&dir.join("index.json"), "a subprune archive index (JSON of step recipes and output hashes)")?;
        Ok(Archive { dir: dir.to_path_buf(), index, max_file_bytes: ARCHIVE_MAX_FILE_BYTES })
    }

    /// Where the archive keeps the file of content hash `hash` (`sha256:HEX`);
    /// `None` for a hash of anything but one file.
    fn file(&self, hash: &str) -> Option<PathBuf> {
        let hex = hash.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| self.dir.join("files").join(hex))
    }

    /// The archived entry of `step` made with `recipe`, when it holds every output's file.
    fn entry(&self, step: &Step, recipe: &str) -> Option<&Entry> {
        let entry = self.index.get(&step.name).filter(|e| e.recipe == recipe && e.outputs.len() == step.outputs.len())?;
        let complete = step.outputs.iter().all(|output| {
            entry.outputs.get(&output.display().to_string()).and_then(|hash| self.file(hash)).is_some_and(|file| file.is_file())
        });
        complete.then_some(entry)
    }

    /// Keeps `entry`'s outputs of `step` when each is a file of at most
    /// [`ARCHIVE_MAX_FILE_BYTES`]; returns whether it did.
    fn keep(&mut self, step: &Step, entry: &Entry) -> Result<bool> {
        let mut files = Vec::with_capacity(step.outputs.len());
        for output in &step.outputs {
            let Some(target) = entry.outputs.get(&output.display().to_string()).and_then(|hash| self.file(hash)) else {
                return Ok(false);
            };
            let meta = fs::metadata(output).with_context(|| format!("reading the metadata of {}", output.display()))?;
            if !meta.is_file() || meta.len() > self.max_file_bytes {
                return Ok(false);
            }
            files.push((output, target));
        }
        for (output, target) in files {
            if !target.is_file() {
                copy_atomically(output, &target)?;
            }
        }
        self.index.insert(step.name.clone(), entry.clone());
        write_atomically(&self.dir.join("index.json"), &serde_json::to_vec_pretty(&self.index)?)?;
        Ok(true)
    }
}

/// Copies `from` to `to` through a temporary file beside `to`, so `to` is
/// either absent or whole.
fn copy_atomically(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("tmp");
    fs::copy(from, &tmp).with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    fs::File::open(&tmp).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", tmp.display()))?;
    fs::rename(&tmp, to).with_context(|| format!("renaming {} to {}", tmp.display(), to.display()))
}

/// The JSON value in `path`, or the default where there is no such file;
/// an error says the file is not `what`.
fn read_json_or_default<T: serde::de::DeserializeOwned + Default>(path: &Path, what: &str) -> Result<T> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("{} is not {what}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes `bytes` to `path` through a temporary file beside it.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

impl Graph {
    /// Opens (or starts) the ledger `ledger.json` of run directory `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating run directory {}", dir.display()))?;
        let ledger_path = dir.join("ledger.json");
        let ledger = read_json_or_default(&ledger_path, "a subprune ledger (JSON of steps and hashes); delete it to rebuild everything")?;
        Ok(Graph { ledger_path, ledger, archive: None })
    }

    /// The same graph, keeping finished steps' small outputs in `archive` and
    /// restoring from it the steps whose recipes it holds.
    pub fn with_archive(mut self, archive: Archive) -> Self {
        self.archive = Some(archive);
        self
    }

    /// Runs the steps in order, reusing every step whose recipe and outputs are unchanged.
    ///
    /// Steps must be given in dependency order (every input made by an earlier
    /// step or already present). The ledger is saved after every step that runs,
    /// so an interrupted run keeps what finished.
    pub fn execute(&mut self, steps: &[Step], runner: &mut dyn Runner) -> Result<Outcome> {
        let mut names = std::collections::BTreeSet::new();
        for step in steps {
            if !names.insert(&step.name) {
                bail!("two steps are named `{}`; step names must be unique", step.name);
            }
        }
        let mut outcome = Outcome::default();
        for (i, step) in steps.iter().enumerate() {
            let recipe = self.recipe(step, runner.program_file(&step.program), &BTreeMap::new())?;
            let fresh = !step.always && self.is_fresh(step, &recipe)?;
            let label = format!("[{}/{}] {}", i + 1, steps.len(), step.name);
            if fresh {
                eprintln!("{label}: reused (inputs and options unchanged)");
                outcome.reused.push(step.name.clone());
                continue;
            }
            self.ledger.steps.remove(&step.name);
            if self.restore(step, &recipe)? {
                eprintln!("{label}: restored from the archive (the same recipe finished before)");
                outcome.restored.push(step.name.clone());
                continue;
            }
            eprintln!("{label}: running");
            let started = Instant::now();
            runner.run(step).with_context(|| format!("step `{}` failed", step.name))?;
            let mut outputs = BTreeMap::new();
            for output in &step.outputs {
                if !output.exists() {
                    bail!("step `{}` finished but did not write {}", step.name, output.display());
                }
                outputs.insert(output.display().to_string(), self.hash(output)?);
            }
            let entry = Entry { recipe, outputs };
            self.ledger.steps.insert(step.name.clone(), entry.clone());
            self.save()?;
            if let Some(archive) = self.archive.as_mut().filter(|_| !step.always) {
                archive.keep(step, &entry)?;
            }
            eprintln!("{label}: done in {:.1} s", started.elapsed().as_secs_f64());
            outcome.ran.push(step.name.clone());
        }
        Ok(outcome)
    }

    /// Which of `steps` [`Graph::execute`] would run, as far as can be told
    /// before running any: a step runs when it always does, when an earlier
    /// step that runs makes one of its inputs (whose new content may differ),
    /// or when its recipe or outputs changed.
    pub fn pending(&mut self, steps: &[Step], runner: &dyn Runner) -> Result<Vec<bool>> {
        let mut remade = std::collections::BTreeSet::new();
        // The content of the outputs that the archive will give back, before they are there.
        let mut restored = BTreeMap::new();
        let mut pending = Vec::with_capacity(steps.len());
        for step in steps {
            let runs = step.always || step.inputs.iter().any(|input| remade.contains(input)) || {
                let recipe = self.recipe(step, runner.program_file(&step.program), &restored)?;
                !self.is_fresh(step, &recipe)? && {
                    let archived = self.archive.as_ref().and_then(|a| a.entry(step, &recipe));
                    if let Some(entry) = archived {
                        for output in &step.outputs {
                            restored.insert(output.clone(), entry.outputs[&output.display().to_string()].clone());
                        }
                    }
                    archived.is_none()
                }
            };
            if runs {
                remade.extend(step.outputs.iter().cloned());
            }
            pending.push(runs);
        }
        Ok(pending)
    }

    /// The recipe of a step: program (name, and content of `program_file`),
    /// result-determining arguments, input content hashes (taken from
    /// `planned` for inputs that are not there yet).
    fn recipe(&mut self, step: &Step, program_file: Option<PathBuf>, planned: &BTreeMap<PathBuf, String>) -> Result<String> {
        let mut h = Sha256::new();
        h.update(step.program.as_bytes());
        if let Some(file) = program_file {
            if !file.is_file() {
                bail!("step `{}` runs {}, which does not exist (build the workspace first)", step.name, file.display());
            }
            h.update([2]);
            h.update(self.hash(&file)?.as_bytes());
        }
        for arg in step.result_args() {
            h.update([0]);
            h.update(arg.as_bytes());
        }
        for input in &step.inputs {
            let hash = match planned.get(input) {
                Some(hash) => hash.clone(),
                None if input.exists() => self.hash(input)?,
                None => bail!("step `{}` needs {}, which does not exist (and no earlier step makes it)", step.name, input.display()),
            };
            h.update([1]);
            h.update(hash.as_bytes());
        }
        Ok(hex::encode(h.finalize()))
    }

    /// Whether the ledger holds this recipe for the step and its outputs are unchanged.
    fn is_fresh(&mut self, step: &Step, recipe: &str) -> Result<bool> {
        let Some(entry) = self.ledger.steps.get(&step.name).cloned() else {
            return Ok(false);
        };
        if entry.recipe != recipe || entry.outputs.len() != step.outputs.len() {
            return Ok(false);
        }
        for output in &step.outputs {
            let Some(recorded) = entry.outputs.get(&output.display().to_string()) else {
                return Ok(false);
            };
            if !output.exists() || &self.hash(output)? != recorded {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether the archive holds outputs of a step named `name`, made with
    /// some recipe: a step that will run because steps before it remake its
    /// inputs comes back from the archive when they remake the same bytes.
    pub fn archived(&self, name: &str) -> bool {
        self.archive.as_ref().is_some_and(|a| a.index.contains_key(name))
    }

    /// Puts back the outputs of `step` from the archive when it holds them for
    /// `recipe`, checking each file's content, and records them in the
    /// ledger; returns whether it did.
    fn restore(&mut self, step: &Step, recipe: &str) -> Result<bool> {
        let Some(archive) = &self.archive else {
            return Ok(false);
        };
        let Some(entry) = archive.entry(step, recipe).cloned() else {
            return Ok(false);
        };
        let mut sources = Vec::with_capacity(step.outputs.len());
        for output in &step.outputs {
            let hash = entry.outputs[&output.display().to_string()].clone();
            sources.push((archive.file(&hash).expect("entry() checked every file"), output, hash));
        }
        for (source, output, hash) in sources {
            if let Some(parent) = output.parent() {
                fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            copy_atomically(&source, output)?;
            let found = self.hash(output)?;
            if found != hash {
                fs::remove_file(output).with_context(|| format!("removing {}", output.display()))?;
                bail!(
                    "archived file {} holds {found}, not the {hash} its index records; delete it to rerun step `{}`",
                    source.display(),
                    step.name
                );
            }
        }
        self.ledger.steps.insert(step.name.clone(), entry);
        self.save()?;
        Ok(true)
    }

    /// Content hash of a file, or of a directory (its relative paths and file hashes).
    fn hash(&mut self, path: &Path) -> Result<String> {
        if path.is_dir() {
            let mut files = Vec::new();
            list_files(path, path, &mut files)?;
            files.sort();
            let mut h = Sha256::new();
            for rel in files {
                let hash = self.hash(&path.join(&rel))?;
                h.update(rel.as_bytes());
                h.update([0]);
                h.update(hash.as_bytes());
            }
            return Ok(format!("dir-sha256:{}", hex::encode(h.finalize())));
        }
        let meta = fs::metadata(path).with_context(|| format!("reading the metadata of {}", path.display()))?;
        let mtime_ns = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        let key = path.display().to_string();
        if let Some(known) = self.ledger.hashes.get(&key) {
            if known.size == meta.len() && known.mtime_ns == mtime_ns && mtime_ns != 0 {
                return Ok(known.hash.clone());
            }
        }
        let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let hash = format!("sha256:{}", crate::models::sha256_reader(file).with_context(|| format!("hashing {}", path.display()))?);
        self.ledger.hashes.insert(key, KnownHash { size: meta.len(), mtime_ns, hash: hash.clone() });
        Ok(hash)
    }

    /// Writes the ledger atomically.
    fn save(&self) -> Result<()> {
        write_atomically(&self.ledger_path, &serde_json::to_vec_pretty(&self.ledger)?)
    }
}

/// Every file below `dir`, as paths relative to `root` with `/` separators.
fn list_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            list_files(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root).expect("below root");
            out.push(rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/"));
        }
    }
    Ok(())
}

/// Runs steps as the workspace's stage binaries found in one directory.
pub struct BinaryRunner {
    /// Directory of the release binaries.
    pub bin_dir: PathBuf,
}

impl Runner for BinaryRunner {
    fn run(&mut self, step: &Step) -> Result<()> {
        for output in &step.outputs {
            if let Some(parent) = output.parent() {
                fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
        }
        let mut cmd = std::process::Command::new(self.bin_dir.join(&step.program));
        cmd.args(&step.args);
        if !step.show_stdout {
            cmd.stdout(std::process::Stdio::null());
        }
        crate::process::run_checked(&mut cmd)
    }

    fn program_file(&self, program: &str) -> Option<PathBuf> {
        Some(self.bin_dir.join(program))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake stage: writes to each output the hash of its program, arguments
    /// and inputs' bytes, and counts its runs.
    #[derive(Default)]
    struct FakeRunner {
        runs: Vec<String>,
    }

    impl Runner for FakeRunner {
        fn run(&mut self, step: &Step) -> Result<()> {
            let mut h = Sha256::new();
            for arg in step.result_args() {
                h.update(arg.as_bytes());
            }
            for input in &step.inputs {
                h.update(fs::read(input)?);
            }
            for output in &step.outputs {
                fs::write(output, hex::encode(h.clone().finalize()))?;
            }
            self.runs.push(step.name.clone());
            Ok(())
        }
    }

    /// corpus -> samples -> stats -> {scores-wanda -> mask-wanda, scores-mag -> mask-mag}; options vary per test.
    fn pipeline(dir: &Path, seed: &str, method_b: &str, device: &str) -> Vec<Step> {
        let p = |name: &str| dir.join(name);
        let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        vec![
            Step::new("sample", "datasets", s(&["sample", "--seed", seed]), vec![p("corpus.txt")], vec![p("samples")]),
            Step::new("calibrate", "calibrate", s(&["--device", device, "--sparsity", "0.5"]), vec![p("samples")], vec![p("stats")])
                .speed_only(&[("--device", true)]),
            Step::new("score a", "score", s(&["--method", "wanda"]), vec![p("stats")], vec![p("scores-a")]),
            Step::new("mask a", "mask", s(&["--sparsity", "0.5"]), vec![p("scores-a")], vec![p("mask-a")]),
            Step::new("score b", "score", s(&["--method", method_b]), vec![p("stats")], vec![p("scores-b")]),
            Step::new("mask b", "mask", s(&["--sparsity", "0.5"]), vec![p("scores-b")], vec![p("mask-b")]),
            Step::new("report", "analyze", s(&["report"]), vec![p("mask-a"), p("mask-b")], vec![p("report")]).always(),
        ]
    }

    fn run(dir: &Path, steps: &[Step]) -> Vec<String> {
        let mut runner = FakeRunner::default();
        let outcome = Graph::open(dir).unwrap().execute(steps, &mut runner).unwrap();
        assert_eq!(outcome.ran, runner.runs);
        assert_eq!(outcome.ran.len() + outcome.reused.len() + outcome.restored.len(), steps.len());
        runner.runs
    }

    #[test]
    fn a_changed_option_reruns_exactly_the_affected_steps() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join("corpus.txt"), "def f(): pass\n").unwrap();
        let all = ["sample", "calibrate", "score a", "mask a", "score b", "mask b", "report"];
        assert_eq!(run(dir, &pipeline(dir, "0", "magnitude", "cpu")), all);
        // Nothing changed: only the always-run report.
        assert_eq!(run(dir, &pipeline(dir, "0", "magnitude", "cpu")), ["report"]);
        // A neutral flag (device) changes nothing either.
        assert_eq!(run(dir, &pipeline(dir, "0", "magnitude", "wgpu")), ["report"]);
        // Branch b's method: score b and mask b, not branch a or the upstream stages.
        assert_eq!(run(dir, &pipeline(dir, "0", "wanda-b", "cpu")), ["score b", "mask b", "report"]);
        // The seed: everything downstream of sampling.
        assert_eq!(run(dir, &pipeline(dir, "1", "wanda-b", "cpu")), all);
        // An edited input file reruns from its consumer on.
        fs::write(dir.join("corpus.txt"), "def g(): pass\n").unwrap();
        assert_eq!(run(dir, &pipeline(dir, "1", "wanda-b", "cpu")), all);
        // A deleted or modified output is rebuilt, and only what depends on its content follows.
        fs::remove_file(dir.join("mask-a")).unwrap();
        assert_eq!(run(dir, &pipeline(dir, "1", "wanda-b", "cpu")), ["mask a", "report"]);
        fs::write(dir.join("stats"), "tampered").unwrap();
        assert_eq!(run(dir, &pipeline(dir, "1", "wanda-b", "cpu")), ["calibrate", "report"]);
    }

    /// The fake stages as files in a directory, so their content enters the
    /// recipes; each output also holds its program's bytes, as a changed
    /// program writes different results.
    struct FakeBinaries {
        bin: PathBuf,
        fake: FakeRunner,
    }

    impl Runner for FakeBinaries {
        fn run(&mut self, step: &Step) -> Result<()> {
            self.fake.run(step)?;
            let program = fs::read(self.bin.join(&step.program))?;
            for output in &step.outputs {
                let mut content = fs::read(output)?;
                content.extend_from_slice(&program);
                fs::write(output, content)?;
            }
            Ok(())
        }

        fn program_file(&self, program: &str) -> Option<PathBuf> {
            Some(self.bin.join(program))
        }
    }

    #[test]
    fn a_rebuilt_stage_reruns_with_everything_downstream_and_nothing_upstream() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, bin) = (tmp.path().join("run"), tmp.path().join("bin"));
        fs::create_dir_all(&dir).unwrap();
        fs::create_dir_all(&bin).unwrap();
        for program in ["datasets", "calibrate", "score", "mask", "analyze"] {
            fs::write(bin.join(program), format!("{program} v1")).unwrap();
        }
        fs::write(dir.join("corpus.txt"), "x").unwrap();
        let steps = pipeline(&dir, "0", "magnitude", "cpu");
        let run = |steps: &[Step]| {
            let mut runner = FakeBinaries { bin: bin.clone(), fake: FakeRunner::default() };
            Graph::open(&dir).unwrap().execute(steps, &mut runner).unwrap().ran
        };
        assert_eq!(run(&steps).len(), steps.len());
        assert_eq!(run(&steps), ["report"], "nothing changed: only the always-run step reruns");
        fs::write(bin.join("calibrate"), "calibrate v2").unwrap();
        assert_eq!(run(&steps), ["calibrate", "score a", "mask a", "score b", "mask b", "report"]);
        fs::remove_file(bin.join("mask")).unwrap();
        let mut runner = FakeBinaries { bin: bin.clone(), fake: FakeRunner::default() };
        let err = Graph::open(&dir).unwrap().execute(&steps, &mut runner).unwrap_err().to_string();
        assert!(err.contains("mask a") && err.contains("does not exist"), "{err}");
    }

    #[test]
    fn a_step_s_speed_only_flags_are_left_out_of_its_recipe_and_no_other_step_s() {
        let args: Vec<String> =
            ["ppl", "--device", "wgpu", "--batch=4", "--quiet", "--seqlen", "512"].iter().map(|s| s.to_string()).collect();
        let step = Step::new("x", "evaluate", args.clone(), vec![], vec![]).speed_only(&[
            ("--device", true),
            ("--batch", true),
            ("--quiet", false),
        ]);
        assert_eq!(step.result_args(), ["ppl", "--seqlen", "512"]);
        // A stage where --batch changes results declares only what is speed there.
        let other = Step::new("y", "other", args, vec![], vec![]).speed_only(&[("--quiet", false)]);
        assert_eq!(other.result_args(), ["ppl", "--device", "wgpu", "--batch=4", "--seqlen", "512"]);
    }

    #[test]
    fn missing_inputs_and_duplicate_names_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let missing = vec![Step::new("a", "mask", vec![], vec![dir.join("nope")], vec![dir.join("out")])];
        let err = Graph::open(dir).unwrap().execute(&missing, &mut FakeRunner::default()).unwrap_err();
        assert!(format!("{err:#}").contains("nope"), "{err:#}");
        let twice =
            vec![Step::new("a", "mask", vec![], vec![], vec![dir.join("x")]), Step::new("a", "mask", vec![], vec![], vec![dir.join("y")])];
        assert!(Graph::open(dir).unwrap().execute(&twice, &mut FakeRunner::default()).is_err());
    }

    #[test]
    fn a_failed_step_keeps_what_finished() {
        struct FailOn(&'static str, FakeRunner);
        impl Runner for FailOn {
            fn run(&mut self, step: &Step) -> Result<()> {
                if step.name == self.0 {
                    bail!("boom");
                }
                self.1.run(step)
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join("corpus.txt"), "x").unwrap();
        let steps = pipeline(dir, "0", "magnitude", "cpu");
        let mut failing = FailOn("score a", FakeRunner::default());
        assert!(Graph::open(dir).unwrap().execute(&steps, &mut failing).is_err());
        assert_eq!(failing.1.runs, ["sample", "calibrate"]);
        assert_eq!(run(dir, &steps), ["score a", "mask a", "score b", "mask b", "report"]);
    }

    #[test]
    fn an_archive_carries_small_outputs_to_a_fresh_run_directory() {
        /// The fake stages, with a calibrate output too big for the archive.
        struct BigStats(FakeRunner);
        impl Runner for BigStats {
            fn run(&mut self, step: &Step) -> Result<()> {
                self.0.run(step)?;
                if step.program == "calibrate" {
                    let mut content = fs::read(&step.outputs[0])?;
                    content.extend_from_slice(&[b'.'; 100]);
                    fs::write(&step.outputs[0], content)?;
                }
                Ok(())
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let archive_dir = tmp.path().join("archive");
        fs::create_dir_all(&dir).unwrap();
        let execute = |runner: &mut BigStats| {
            let mut archive = Archive::open(&archive_dir).unwrap();
            archive.max_file_bytes = 80;
            Graph::open(&dir).unwrap().with_archive(archive).execute(&pipeline(&dir, "0", "magnitude", "cpu"), runner).unwrap()
        };
        fs::write(dir.join("corpus.txt"), "def f(): pass\n").unwrap();
        let mut first = BigStats(FakeRunner::default());
        let outcome = execute(&mut first);
        assert_eq!(outcome.ran.len(), 7);
        let made: BTreeMap<String, Vec<u8>> = ["samples", "stats", "scores-a", "mask-a", "scores-b", "mask-b"]
            .iter()
            .map(|name| (name.to_string(), fs::read(dir.join(name)).unwrap()))
            .collect();
        // The five small outputs are kept, each once by content; not the big
        // one, nor the output of the step that always runs.
        assert_eq!(fs::read_dir(archive_dir.join("files")).unwrap().count(), 5);
        let graph = Graph::open(&dir).unwrap().with_archive(Archive::open(&archive_dir).unwrap());
        assert!(graph.archived("sample") && graph.archived("mask b"));
        assert!(!graph.archived("calibrate") && !graph.archived("report"));

        // A fresh machine: the run directory is gone, the archive is not.
        fs::remove_dir_all(&dir).unwrap();
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("corpus.txt"), "def f(): pass\n").unwrap();
        let mut second = BigStats(FakeRunner::default());
        let outcome = execute(&mut second);
        assert_eq!(second.0.runs, ["calibrate", "report"]);
        assert_eq!(outcome.restored, ["sample", "score a", "mask a", "score b", "mask b"]);
        for (name, bytes) in &made {
            assert_eq!(&fs::read(dir.join(name)).unwrap(), bytes, "{name}");
        }
        // Restored outputs enter the ledger: the next run reuses them.
        let mut third = BigStats(FakeRunner::default());
        assert_eq!(execute(&mut third).reused.len(), 6);

        // An archived file whose bytes no longer match its index is refused by name.
        fs::remove_dir_all(&dir).unwrap();
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("corpus.txt"), "def f(): pass\n").unwrap();
        let index: BTreeMap<String, Entry> = serde_json::from_slice(&fs::read(archive_dir.join("index.json")).unwrap()).unwrap();
        let hash = &index["sample"].outputs[&dir.join("samples").display().to_string()];
        let file = archive_dir.join("files").join(hash.strip_prefix("sha256:").unwrap());
        fs::write(&file, "tampered").unwrap();
        let mut archive = Archive::open(&archive_dir).unwrap();
        archive.max_file_bytes = 80;
        let err = Graph::open(&dir)
            .unwrap()
            .with_archive(archive)
            .execute(&pipeline(&dir, "0", "magnitude", "cpu"), &mut BigStats(FakeRunner::default()))
            .unwrap_err();
        assert!(format!("{err:#}").contains(&file.display().to_string()), "{err:#}");
        assert!(!dir.join("samples").exists());
        // Another input changes the recipes: nothing is restored from the archive.
        fs::remove_dir_all(&dir).unwrap();
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("corpus.txt"), "def g(): pass\n").unwrap();
        let mut fourth = BigStats(FakeRunner::default());
        assert!(execute(&mut fourth).restored.is_empty());
        assert_eq!(fourth.0.runs.len(), 7);
    }
}
