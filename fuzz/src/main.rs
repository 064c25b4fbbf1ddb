//! `subprune-fuzz`: a structure-aware mutation fuzzer of subprune's readers
//! (run it through `cargo xtask fuzz TARGET --seconds N`).
//!
//! A supervisor process starts a worker and restarts it when it dies. The
//! worker mutates seeds (real files made in code) and the inputs that
//! reached a new outcome, writes each input to a file in a RAM-backed work
//! directory and runs the target's reader on it in-process, with:
//! - panics caught (a panic is a crash: the input and message are saved);
//! - a watchdog thread that aborts an input running past `--timeout` (a hang);
//! - a counting allocator that aborts an input whose heap would exceed
//!   max(64 MiB, 64 x its length) (an over-allocation);
//! - RLIMIT_AS at `--memory-mib` (2 GiB) for everything else.
//!
//! The supervisor saves the input of a worker that aborted or was killed,
//! with the reason, under `OUT/crashes/`, and starts a new worker.
//!
//! Feedback: with no coverage instrumentation on stable Rust, an input is
//! kept for further mutation when its outcome is new: the reader's error
//! message with numbers and quoted text blanked out (or the step it reached),
//! which tells apart the checks an input got past.

mod alloc;
mod mutate;
mod targets;
mod thrift;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;

use mutate::Rng;
use targets::Target;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// Fuzz one of subprune's readers with structure-aware mutations of real files.
#[derive(Debug, Parser)]
#[command(name = "subprune-fuzz", version, about, long_about = None)]
struct Cli {
    /// The target to fuzz (see --list).
    target: Option<String>,
    /// How long to fuzz, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// An input running longer than this many seconds is a hang.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Address-space limit of the worker (RLIMIT_AS), in MiB.
    #[arg(long, default_value_t = 2048)]
    memory_mib: u64,
    /// Seed of the mutations.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Inputs longer than this are cut to it, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_len: usize,
    /// Where crashes and the summary go (default: fuzz/out/TARGET).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Directories of extra seed files (committed fixtures, regression inputs).
    #[arg(long)]
    corpus: Vec<PathBuf>,
    /// List the targets and exit.
    #[arg(long)]
    list: bool,
    /// Run these input files once each (with the allocation bound) and print
    /// what the reader said, instead of fuzzing.
    #[arg(long, num_args = 1..)]
    replay: Vec<PathBuf>,
    /// Write the target's seeds (made in code) to this directory and exit.
    #[arg(long)]
    write_seeds: Option<PathBuf>,
    /// Internal: run as the worker in this work directory.
    #[arg(long, hide = true)]
    worker_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("subprune-fuzz: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    if cli.list {
        println!("targets:\n{}", targets::list());
        return Ok(ExitCode::SUCCESS);
    }
    let Some(name) = cli.target.as_deref() else {
        bail!("expected a target; the targets are:\n{}", targets::list());
    };
    let Some(target) = targets::find(name) else {
        bail!("unknown target `{name}`; the targets are:\n{}", targets::list());
    };
    if !cli.replay.is_empty() {
        return replay(target, &cli);
    }
    if let Some(dir) = &cli.write_seeds {
        let scratch = dir.join(".scratch");
        std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
        let ext = Path::new(target.file_name).extension().and_then(|e| e.to_str()).unwrap_or("bin");
        for (i, seed) in (target.seeds)(&scratch).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}.{ext}")), seed)?;
        }
        std::fs::remove_dir_all(&scratch)?;
        return Ok(ExitCode::SUCCESS);
    }
    match &cli.worker_dir {
        Some(dir) => worker(target, &cli, dir),
        None => supervise(target, &cli),
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// FNV-1a of bytes, for file names and outcome signatures.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// A RAM-backed directory for inputs when the machine has one.
fn work_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn set_memory_limit(mib: u64) {
    let bytes = mib.saturating_mul(1 << 20);
    let limit = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
    // SAFETY: setrlimit with a valid, initialised struct.
    unsafe {
        libc::setrlimit(libc::RLIMIT_AS, &limit);
    }
}

/// Where the supervisor's worker keeps its statistics.
fn stats_path(dir: &Path) -> PathBuf {
    dir.join("stats.json")
}

/// Counters of one worker's life.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Stats {
    execs: u64,
    refused: u64,
    accepted: u64,
    labels: BTreeMap<String, u64>,
    corpus: usize,
    outcomes: usize,
    panics: u64,
    max_peak_bytes: u64,
    max_peak_per_input_byte: f64,
}

fn supervise(target: &'static Target, cli: &Cli) -> Result<ExitCode> {
    let out = cli.out.clone().unwrap_or_else(|| Path::new("fuzz/out").join(target.name));
    let crashes = out.join("crashes");
    std::fs::create_dir_all(&crashes).with_context(|| format!("creating {}", crashes.display()))?;
    let dir = work_root().join(format!("subprune-fuzz-{}-{}", target.name, std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let exe = std::env::current_exe().context("locating the fuzzer binary")?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(cli.seconds);
    let mut total = Stats::default();
    let mut worker_crashes: Vec<String> = Vec::new();
    let mut lives = 0u64;
    println!(
        "fuzzing `{}` for {} s (inputs in {}, crashes to {}; heap bound max(64 MiB, 64 x input), address space {} MiB, timeout {} s)",
        target.name,
        cli.seconds,
        dir.display(),
        crashes.display(),
        cli.memory_mib,
        cli.timeout
    );
    while Instant::now() < deadline {
        let remaining = deadline.saturating_duration_since(Instant::now()).as_secs().max(1);
        let _ = std::fs::remove_file(stats_path(&dir));
        let stderr_path = dir.join("worker.stderr");
        let stderr = std::fs::File::create(&stderr_path)?;
        let mut cmd = Command::new(&exe);
        cmd.arg(target.name)
            .args(["--seconds", &remaining.to_string()])
            .args(["--timeout", &cli.timeout.to_string()])
            .args(["--memory-mib", &cli.memory_mib.to_string()])
            .args(["--seed", &(cli.seed.wrapping_add(lives.wrapping_mul(0x1000_0001))).to_string()])
            .args(["--max-len", &cli.max_len.to_string()])
            .arg("--out")
            .arg(&out)
            .arg("--worker-dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stderr(stderr);
        for c in &cli.corpus {
            cmd.arg("--corpus").arg(c);
        }
        let status = cmd.status().context("starting the worker")?;
        lives += 1;
        if let Some(s) = std::fs::read(stats_path(&dir)).ok().and_then(|b| serde_json::from_slice::<Stats>(&b).ok()) {
            merge(&mut total, s);
        }
        if status.success() {
            break;
        }
        let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        let kind = if log.contains("over-allocation") {
            "overalloc"
        } else if log.contains("subprune-fuzz: hang") {
            "hang"
        } else {
            "abort"
        };
        let input = std::fs::read(dir.join(target.file_name)).unwrap_or_default();
        let ext = Path::new(target.file_name).extension().and_then(|e| e.to_str()).unwrap_or("bin");
        let base = crashes.join(format!("{kind}-{:016x}", fnv(&input)));
        std::fs::write(base.with_extension(ext), &input)?;
        std::fs::write(base.with_extension("txt"), format!("worker ended with {status}\n{tail}\n"))?;
        println!("CRASH ({kind}, worker {status}): saved {} — {}", base.with_extension(ext).display(), tail.lines().last().unwrap_or(""));
        worker_crashes.push(base.with_extension(ext).display().to_string());
    }
    let _ = std::fs::remove_dir_all(&dir);
    let secs = start.elapsed().as_secs_f64();
    let summary = serde_json::json!({
        "target": target.name,
        "seconds": secs,
        "execs": total.execs,
        "execs_per_second": total.execs as f64 / secs.max(1e-9),
        "accepted": total.accepted,
        "refused": total.refused,
        "labels": total.labels,
        "panics": total.panics,
        "worker_crashes": worker_crashes,
        "workers": lives,
        "max_peak_heap_bytes": total.max_peak_bytes,
        "max_peak_heap_per_input_byte": total.max_peak_per_input_byte,
        "distinct_outcomes": total.outcomes,
    });
    std::fs::write(out.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    let failures = total.panics as usize + worker_crashes.len();
    if failures > 0 {
        println!("{failures} failing inputs saved in {}", crashes.display());
        Ok(ExitCode::FAILURE)
    } else {
        println!("clean: no panic, hang or over-allocation in {} executions", total.execs);
        Ok(ExitCode::SUCCESS)
    }
}

fn merge(total: &mut Stats, s: Stats) {
    total.execs += s.execs;
    total.refused += s.refused;
    total.accepted += s.accepted;
    for (k, v) in s.labels {
        *total.labels.entry(k).or_default() += v;
    }
    total.corpus = total.corpus.max(s.corpus);
    total.outcomes = total.outcomes.max(s.outcomes);
    total.panics += s.panics;
    total.max_peak_bytes = total.max_peak_bytes.max(s.max_peak_bytes);
    total.max_peak_per_input_byte = total.max_peak_per_input_byte.max(s.max_peak_per_input_byte);
}

/// When the running input started (ms since the epoch; 0 when idle).
static STARTED_MS: AtomicU64 = AtomicU64::new(0);
/// The message and place of the last panic.
static PANIC: Mutex<Option<String>> = Mutex::new(None);

fn install_hooks(timeout: Duration) {
    std::panic::set_hook(Box::new(|info| {
        let place = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        if let Ok(mut slot) = PANIC.lock() {
            *slot = Some(format!("panicked at {place}: {msg}"));
        }
    }));
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(50));
        let started = STARTED_MS.load(Ordering::SeqCst);
        if started != 0 && now_ms().saturating_sub(started) > timeout.as_millis() as u64 {
            let msg = format!("subprune-fuzz: hang: an input ran longer than {} s\n", timeout.as_secs());
            let _ = std::io::stderr().write_all(msg.as_bytes());
            std::process::abort();
        }
    });
}

/// Runs one input file through the target with every check; returns the
/// outcome, or the panic message.
fn execute(target: &Target, path: &Path, len: usize) -> (Result<targets::Outcome, String>, usize) {
    alloc::arm(alloc::bound_for(len));
    STARTED_MS.store(now_ms(), Ordering::SeqCst);
    let result = catch_unwind(AssertUnwindSafe(|| (target.run)(path)));
    STARTED_MS.store(0, Ordering::SeqCst);
    let peak = alloc::disarm();
    let result = result.map_err(|_| PANIC.lock().ok().and_then(|mut p| p.take()).unwrap_or_else(|| "panicked".into()));
    (result, peak)
}

/// An outcome with numbers and quoted text blanked, so that inputs refused
/// by the same check share it.
fn signature(label: &str, error: Option<&str>) -> u64 {
    let mut s = String::from(label);
    if let Some(e) = error {
        let mut quoted: Option<char> = None;
        let mut last_digit = false;
        // The first words of a message name the check; what follows
        // (positions, found values) would make every input look new.
        for c in e.chars().take(400) {
            if s.len() >= label.len() + 80 {
                break;
            }
            match quoted {
                Some(q) if c == q => quoted = None,
                Some(_) => {}
                None if c == '"' || c == '`' => quoted = Some(c),
                None if c.is_ascii_digit() => {
                    if !last_digit {
                        s.push('#');
                    }
                }
                None => s.push(c),
            }
            last_digit = c.is_ascii_digit();
        }
    }
    fnv(s.as_bytes())
}

/// Seed inputs: the target's own and those in the corpus directories.
fn load_seeds(target: &Target, cli: &Cli, scratch: &Path) -> Vec<Vec<u8>> {
    let mut seeds = (target.seeds)(scratch);
    for dir in &cli.corpus {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).collect();
        files.sort();
        seeds
            .extend(files.iter().filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "txt")).filter_map(|p| std::fs::read(p).ok()));
    }
    seeds.retain(|s| s.len() <= cli.max_len);
    seeds
}

fn worker(target: &'static Target, cli: &Cli, dir: &Path) -> Result<ExitCode> {
    set_memory_limit(cli.memory_mib);
    let out = cli.out.clone().unwrap_or_else(|| Path::new("fuzz/out").join(target.name));
    let crashes = out.join("crashes");
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(&scratch)?;
    let seeds = load_seeds(target, cli, &scratch);
    if seeds.is_empty() {
        bail!("target `{}` has no seeds", target.name);
    }
    install_hooks(Duration::from_secs(cli.timeout));
    let input_path = dir.join(target.file_name);
    let deadline = Instant::now() + Duration::from_secs(cli.seconds);
    let mut rng = Rng::new(cli.seed);
    let mut stats = Stats::default();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    let mut panics_seen: HashSet<String> = HashSet::new();
    let mut last_write = Instant::now();
    let mut last_print = Instant::now();
    let started = Instant::now();
    // Run every seed as it is first.
    let mut pending: Vec<Vec<u8>> = seeds.clone();
    pending.reverse();
    while Instant::now() < deadline {
        let data = match pending.pop() {
            Some(d) => d,
            None => mutate_input(target, &seeds, &corpus, &mut rng, &scratch, cli.max_len),
        };
        std::fs::write(&input_path, &data).with_context(|| format!("writing {}", input_path.display()))?;
        let (result, peak) = execute(target, &input_path, data.len());
        stats.execs += 1;
        stats.max_peak_bytes = stats.max_peak_bytes.max(peak as u64);
        stats.max_peak_per_input_byte = stats.max_peak_per_input_byte.max(peak as f64 / data.len().max(1) as f64);
        match result {
            Ok(outcome) => {
                *stats.labels.entry(outcome.label.to_string()).or_default() += 1;
                if outcome.error.is_some() {
                    stats.refused += 1;
                } else {
                    stats.accepted += 1;
                }
                if seen.insert(signature(outcome.label, outcome.error.as_deref())) {
                    if corpus.len() < 20_000 {
                        corpus.push(data);
                    } else {
                        let i = rng.below(corpus.len());
                        corpus[i] = data;
                    }
                }
            }
            Err(message) => {
                stats.panics += 1;
                let first = message.lines().next().unwrap_or("").to_string();
                if panics_seen.insert(first.clone()) {
                    std::fs::create_dir_all(&crashes)?;
                    let ext = Path::new(target.file_name).extension().and_then(|e| e.to_str()).unwrap_or("bin");
                    let base = crashes.join(format!("panic-{:016x}", fnv(&data)));
                    std::fs::write(base.with_extension(ext), &data)?;
                    std::fs::write(base.with_extension("txt"), format!("{message}\n"))?;
                    println!("CRASH (panic): saved {} — {first}", base.with_extension(ext).display());
                }
            }
        }
        if last_write.elapsed() > Duration::from_secs(1) {
            stats.corpus = corpus.len();
            stats.outcomes = seen.len();
            std::fs::write(stats_path(dir), serde_json::to_vec(&stats)?)?;
            last_write = Instant::now();
        }
        if last_print.elapsed() > Duration::from_secs(60) {
            let secs = started.elapsed().as_secs_f64();
            println!(
                "  {:>5.0} s  {} execs  {:.0}/s  {} outcomes  {} panics",
                secs,
                stats.execs,
                stats.execs as f64 / secs,
                seen.len(),
                stats.panics
            );
            last_print = Instant::now();
        }
    }
    stats.corpus = corpus.len();
    stats.outcomes = seen.len();
    std::fs::write(stats_path(dir), serde_json::to_vec(&stats)?)?;
    Ok(ExitCode::SUCCESS)
}

/// A new input: a seed or kept input with a stack of 1 to 8 mutations.
fn mutate_input(target: &Target, seeds: &[Vec<u8>], corpus: &[Vec<u8>], rng: &mut Rng, scratch: &Path, max_len: usize) -> Vec<u8> {
    let pick = |rng: &mut Rng| -> &Vec<u8> {
        if !corpus.is_empty() && rng.one_in(2) {
            rng.pick(corpus)
        } else {
            rng.pick(seeds)
        }
    };
    let mut data = pick(rng).clone();
    let n = 1usize << rng.below(4);
    for step in 0..n {
        let other = pick(rng);
        match rng.below(10) {
            // Structure-aware rewrites parse the input with the project's
            // own readers: only on inputs already run under the checks.
            0..=2 if step == 0 => {
                let done = catch_unwind(AssertUnwindSafe(|| (target.structured)(&data, rng, scratch))).ok().flatten();
                if let Some(d) = done {
                    data = d;
                }
            }
            3..=5 => {
                let fields = (target.fields)(&data);
                if !fields.is_empty() {
                    let f = *rng.pick(&fields);
                    mutate::rewrite_field(&mut data, f, rng);
                } else {
                    mutate::generic(&mut data, other, rng);
                }
            }
            _ => mutate::generic(&mut data, other, rng),
        }
    }
    data.truncate(max_len);
    data
}

fn replay(target: &'static Target, cli: &Cli) -> Result<ExitCode> {
    set_memory_limit(cli.memory_mib);
    install_hooks(Duration::from_secs(cli.timeout));
    let dir = work_root().join(format!("subprune-fuzz-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(target.file_name);
    let mut failed = 0;
    for file in &cli.replay {
        let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        std::fs::write(&path, &data)?;
        let (result, peak) = execute(target, &path, data.len());
        match result {
            Ok(o) => println!(
                "{}: {} ({} bytes, peak heap {} bytes): {}",
                file.display(),
                o.label,
                data.len(),
                peak,
                o.error.as_deref().unwrap_or("accepted")
            ),
            Err(m) => {
                failed += 1;
                println!("{}: PANIC {m}", file.display());
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
