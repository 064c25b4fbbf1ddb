//! A sandbox for generated programs (Linux only).
//!
//! Every program runs in its own temporary directory, which is removed
//! afterwards, with these limits (set by `setrlimit` in the child before
//! `exec`):
//!
//! - wall time (`timeout`, the whole process group and every process of the
//!   run's user killed when it passes) and CPU time (`RLIMIT_CPU`, one second
//!   above the wall time);
//! - address space (`RLIMIT_AS`, `memory_mb`; compilers get at least
//!   [`COMPILE_MEMORY_MB`]). The JVM runs with `-Xmx` a quarter of it, a serial
//!   collector, a 64 MiB code cache and a 64 MiB compressed class space, and
//!   node with `--max-old-space-size` half of it, so both fit the 1 GiB default;
//! - processes and threads (`RLIMIT_NPROC`, `max_processes`), file size
//!   (`RLIMIT_FSIZE`, 16 MiB), no core files.
//!
//! Isolation, chosen once when the sandbox is made and checked by running a
//! probe through it:
//!
//! - as root: a new network namespace (only a loopback device, down) and a
//!   new mount namespace in which every mount is made read-only except the
//!   program's directory; the program then runs as a user id of its own
//!   (one per parallel slot, not an account of the system), which makes
//!   `RLIMIT_NPROC` count only that program's processes and lets every one of
//!   them be found and killed afterwards, even those that left the process
//!   group. It keeps one capability, `CAP_DAC_READ_SEARCH`, so toolchains
//!   installed under private home directories (pyenv, nvm) still run: it may
//!   read any file but write none outside its directory, and has no network.
//! - as another user: a new user namespace (mapping the user to itself) with
//!   the same network and read-only mount namespaces. `RLIMIT_NPROC` then
//!   counts all of the user's processes, so it is set to the user's current
//!   count plus `max_processes`, and leftover processes are killed by process
//!   group.
//! - where namespaces cannot be made the sandbox refuses to run unless
//!   `allow_network` is set; then programs run in their directories with the
//!   limits above but with network access and a writable file system.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Address space given to compilers (g++, javac), in MiB, when `memory_mb` is smaller.
pub const COMPILE_MEMORY_MB: u64 = 2048;
/// Largest file a program may write (its output files included), in bytes.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// How much of a program's stdout and stderr is kept, in bytes.
const KEPT_OUTPUT: usize = 16 << 10;
/// Prefix of every sandbox directory.
pub const DIR_PREFIX: &str = "subprune-sandbox-";
/// First user id of the per-slot users (root mode); ids are not accounts of the system.
const UID_BASE: u32 = 1_000_000_000;
/// Slots per process in the user-id space.
const SLOTS_PER_PROCESS: u32 = 256;

/// A language the sandbox runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Language {
    /// Python 3 (`python3`).
    Python,
    /// C++17 (`g++ -std=c++17`).
    Cpp,
    /// Java (`javac`, then `java`); the program's entry point is `public class Main`.
    Java,
    /// JavaScript (`node`).
    JavaScript,
}

impl Language {
    /// The tools the language needs, in the order they run.
    pub fn tools(self) -> &'static [&'static str] {
        match self {
            Language::Python => &["python3"],
            Language::Cpp => &["g++"],
            Language::Java => &["javac", "java"],
            Language::JavaScript => &["node"],
        }
    }

    /// The source file name the program is written to.
    fn source_name(self) -> &'static str {
        match self {
            Language::Python => "main.py",
            Language::Cpp => "main.cpp",
            Language::Java => "Main.java",
            Language::JavaScript => "main.js",
        }
    }

    /// A short name (`python`, `cpp`, `java`, `js`).
    pub fn name(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Cpp => "cpp",
            Language::Java => "java",
            Language::JavaScript => "js",
        }
    }
}

/// Limits and options of a sandbox.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Wall-time limit of running a program.
    pub timeout: Duration,
    /// Wall-time limit of compiling a program (C++, Java).
    pub compile_timeout: Duration,
    /// Address-space limit in MiB.
    pub memory_mb: u64,
    /// Processes and threads a program may have at once.
    pub max_processes: u64,
    /// Programs run at once.
    pub jobs: usize,
    /// Run without network isolation where namespaces cannot be made.
    pub allow_network: bool,
    /// Directory the per-program directories are made in (default: the system's temporary directory).
    pub root: Option<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            timeout: Duration::from_secs(10),
            compile_timeout: Duration::from_secs(30),
            memory_mb: 1024,
            max_processes: 64,
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            allow_network: false,
            root: None,
        }
    }
}

/// What can keep the sandbox from running programs.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A tool a language needs is not installed.
    #[error("`{tool}` (needed to run {language} programs) was not found in PATH; install it (Debian: {package})")]
    MissingTool {
        /// The tool.
        tool: String,
        /// The language.
        language: String,
        /// The Debian package that provides it.
        package: String,
    },
    /// No network namespace could be made and `allow_network` is not set.
    #[error("cannot isolate programs from the network ({0}); refusing to run generated code. Run as root, enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1), or pass --allow-network to run it with network access")]
    NoIsolation(String),
    /// An operating-system error around a program (temporary directory, spawn).
    #[error("sandbox: {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A tool found in PATH cannot run inside the sandbox.
    #[error("sandbox probe failed: {0}")]
    Probe(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Io { what, source }
}

/// How programs are isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Root: network and mount namespaces, a user id per slot.
    RootNamespaces,
    /// Not root: user, network and mount namespaces.
    UserNamespaces,
    /// None (network allowed by the user's explicit choice).
    Open,
}

/// The result of running one program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Whether it compiled, ran to completion within its limits and passed its tests.
    pub passed: bool,
    /// Why it failed (`timeout after 10 s`, `memory limit`, `exit code 1: ...`), `passed` when it passed.
    pub reason: String,
    /// The start of its standard output.
    pub stdout: String,
    /// The start of its standard error.
    pub stderr: String,
}

/// One command of a program's run (compile, run).
struct Step {
    program: PathBuf,
    args: Vec<String>,
    timeout: Duration,
    memory_mb: u64,
    compile: bool,
}

/// How a step ended.
struct StepEnd {
    status: Option<std::process::ExitStatus>,
    timed_out: bool,
    stdout: String,
    stderr: String,
}

/// Runs programs in isolated temporary directories; see the module documentation.
pub struct Sandbox {
    config: SandboxConfig,
    isolation: Isolation,
    tools: Vec<(String, PathBuf)>,
    root: PathBuf,
    free_slots: Mutex<Vec<u32>>,
    slot_freed: Condvar,
    uid_base: u32,
}

/// Finds `tool` in PATH.
pub fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false))
}

fn debian_package(tool: &str) -> &'static str {
    match tool {
        "python3" => "python3",
        "g++" => "g++",
        "javac" | "java" => "default-jdk-headless",
        "node" => "nodejs",
        _ => "?",
    }
}

impl Sandbox {
    /// Makes a sandbox for `languages`: finds their tools (a missing one is an
    /// error naming it), chooses the isolation and checks it by running a probe.
    pub fn new(config: SandboxConfig, languages: &[Language]) -> Result<Sandbox, SandboxError> {
        let mut tools = Vec::new();
        for &language in languages {
            for &tool in language.tools() {
                let path = find_in_path(tool).ok_or_else(|| SandboxError::MissingTool {
                    tool: tool.to_string(),
                    language: language.name().to_string(),
                    package: debian_package(tool).to_string(),
                })?;
                let path = if tool == "python3" { real_python(&path).unwrap_or(path) } else { path };
                if !tools.iter().any(|(t, _)| t == tool) {
                    tools.push((tool.to_string(), path));
                }
            }
        }
        let root = config.root.clone().unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&root).map_err(io_err(format!("creating {}", root.display())))?;
        let jobs = config.jobs.clamp(1, SLOTS_PER_PROCESS as usize);
        let is_root = unsafe { libc::geteuid() } == 0;
        if is_root {
            // Orphaned processes of a program are reparented to this process, so
            // they can be reaped here whatever the system's init does.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        }
        // Each process gets its own block of user ids (pids are unique on the machine), so
        // concurrent evaluations never count or kill each other's processes.
        let uid_base = UID_BASE + (std::process::id() % ((u32::MAX - UID_BASE) / SLOTS_PER_PROCESS)) * SLOTS_PER_PROCESS;
        let mut sandbox = Sandbox {
            config: SandboxConfig { jobs, ..config },
            isolation: if is_root { Isolation::RootNamespaces } else { Isolation::UserNamespaces },
            tools,
            root,
            free_slots: Mutex::new((0..jobs as u32).rev().collect()),
            slot_freed: Condvar::new(),
            uid_base,
        };
        if let Err(why) = sandbox.probe() {
            if !sandbox.config.allow_network {
                return Err(SandboxError::NoIsolation(why));
            }
            eprintln!("warning: programs run WITH network access and a writable file system (--allow-network): {why}");
            sandbox.isolation = Isolation::Open;
        }
        Ok(sandbox)
    }

    /// The isolation in use.
    pub fn isolation(&self) -> Isolation {
        self.isolation
    }

    /// The configuration in use.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// The directory the per-program directories are made in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Runs a shell-free probe in the isolation: the network must be unreachable
    /// and the root read-only.
    fn probe(&self) -> Result<(), String> {
        let check = Path::new("/bin/sh");
        if !check.exists() {
            return Err("/bin/sh not found for the isolation probe".into());
        }
        let step = Step {
            program: check.to_path_buf(),
            args: vec!["-c".into(), "test -w / && exit 3; test -w . || exit 4; exit 0".into()],
            timeout: Duration::from_secs(10),
            memory_mb: 256,
            compile: false,
        };
        let outcome = self.run_steps("probe", &[], &[step]).map_err(|e| e.to_string())?;
        if !outcome.passed {
            return Err(format!("the isolation probe failed: {}", outcome.reason));
        }
        Ok(())
    }

    fn tool(&self, name: &str) -> PathBuf {
        self.tools.iter().find(|(t, _)| t == name).map(|(_, p)| p.clone()).unwrap_or_else(|| PathBuf::from(name))
    }

    fn steps(&self, language: Language) -> Vec<Step> {
        let mem = self.config.memory_mb;
        let compile_mem = mem.max(COMPILE_MEMORY_MB);
        let run =
            |program: PathBuf, args: Vec<String>| Step { program, args, timeout: self.config.timeout, memory_mb: mem, compile: false };
        let jvm = |heap: u64| {
            vec![
                format!("-Xmx{heap}m"),
                "-XX:+UseSerialGC".into(),
                "-XX:TieredStopAtLevel=1".into(),
                "-XX:ReservedCodeCacheSize=64m".into(),
                "-XX:CompressedClassSpaceSize=64m".into(),
                "-XX:-UsePerfData".into(),
            ]
        };
        match language {
            Language::Python => vec![run(self.tool("python3"), vec!["main.py".into()])],
            Language::JavaScript => {
                vec![run(self.tool("node"), vec![format!("--max-old-space-size={}", (mem / 2).max(16)), "main.js".into()])]
            }
            Language::Cpp => vec![
                Step {
                    program: self.tool("g++"),
                    args: vec!["-std=c++17".into(), "main.cpp".into(), "-o".into(), "main".into()],
                    timeout: self.config.compile_timeout,
                    memory_mb: compile_mem,
                    compile: true,
                },
                run(PathBuf::from("./main"), vec![]),
            ],
            Language::Java => {
                let mut javac: Vec<String> = jvm(compile_mem / 4).into_iter().map(|f| format!("-J{f}")).collect();
                javac.extend(["-encoding".into(), "UTF-8".into(), "Main.java".into()]);
                let mut java = jvm((mem / 4).max(16));
                java.extend(["-cp".into(), ".".into(), "Main".into()]);
                vec![
                    Step {
                        program: self.tool("javac"),
                        args: javac,
                        timeout: self.config.compile_timeout,
                        memory_mb: compile_mem,
                        compile: true,
                    },
                    run(self.tool("java"), java),
                ]
            }
        }
    }

    /// Compiles (where the language needs it) and runs `source`, a whole program
    /// whose exit status says whether its tests pass. JavaScript programs must
    /// also print nothing, as HumanEval-X's harness (CodeGeeX) requires, because
    /// their tests report failures with `console.assert`.
    pub fn run(&self, language: Language, source: &str) -> Result<Outcome, SandboxError> {
        let mut steps = self.steps(language);
        if language == Language::Cpp && source.contains("openssl/") {
            steps[0].args.push("-lcrypto".into());
        }
        let mut outcome = self.run_steps(language.name(), &[(language.source_name(), source)], &steps)?;
        if outcome.passed && language == Language::JavaScript && !(outcome.stdout.trim().is_empty() && outcome.stderr.trim().is_empty()) {
            let text = if outcome.stderr.trim().is_empty() { &outcome.stdout } else { &outcome.stderr };
            outcome.passed = false;
            outcome.reason = format!("printed output (a failed console.assert): {}", first_line(text));
        }
        Ok(outcome)
    }

    /// Runs every `(language, source)` program on `config.jobs` threads; calls
    /// `done` after each. Outcomes are in input order.
    pub fn run_all(&self, programs: &[(Language, String)], done: &(dyn Fn() + Sync)) -> Vec<Result<Outcome, SandboxError>> {
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<Outcome, SandboxError>>>> = Mutex::new((0..programs.len()).map(|_| None).collect());
        std::thread::scope(|scope| {
            for _ in 0..self.config.jobs.min(programs.len()) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some((language, source)) = programs.get(i) else { break };
                    let outcome = self.run(*language, source);
                    results.lock().expect("results lock")[i] = Some(outcome);
                    done();
                });
            }
        });
        results.into_inner().expect("results lock").into_iter().map(|r| r.expect("every program ran")).collect()
    }

    fn take_slot(&self) -> u32 {
        let mut free = self.free_slots.lock().expect("slot lock");
        loop {
            if let Some(slot) = free.pop() {
                return slot;
            }
            free = self.slot_freed.wait(free).expect("slot lock");
        }
    }

    fn give_slot(&self, slot: u32) {
        self.free_slots.lock().expect("slot lock").push(slot);
        self.slot_freed.notify_one();
    }

    fn run_steps(&self, label: &str, files: &[(&str, &str)], steps: &[Step]) -> Result<Outcome, SandboxError> {
        let slot = self.take_slot();
        let result = self.run_in_slot(slot, label, files, steps);
        self.give_slot(slot);
        result
    }

    fn run_in_slot(&self, slot: u32, label: &str, files: &[(&str, &str)], steps: &[Step]) -> Result<Outcome, SandboxError> {
        let uid = self.uid_base + slot;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{label}-"))
            .tempdir_in(&self.root)
            .map_err(io_err(format!("making a directory in {}", self.root.display())))?;
        let path = dir.path().to_path_buf();
        let result = (|| {
            for (name, text) in files {
                std::fs::write(path.join(name), text).map_err(io_err(format!("writing {}", path.join(name).display())))?;
            }
            if self.isolation == Isolation::RootNamespaces {
                chown_tree(&path, uid).map_err(io_err(format!("giving {} to the sandbox user", path.display())))?;
            }
            for (i, step) in steps.iter().enumerate() {
                let end = self.run_step(&path, uid, step, i)?;
                let outcome = judge(step, &end);
                if !outcome.passed || i + 1 == steps.len() {
                    return Ok(outcome);
                }
            }
            Ok(Outcome { passed: true, reason: "passed".into(), stdout: String::new(), stderr: String::new() })
        })();
        // Every process is gone by now, so nothing can write into the directory any more.
        dir.close().map_err(io_err(format!("removing {}", path.display())))?;
        result
    }

    fn run_step(&self, dir: &Path, uid: u32, step: &Step, index: usize) -> Result<StepEnd, SandboxError> {
        let out_path = dir.join(format!(".stdout{index}"));
        let err_path = dir.join(format!(".stderr{index}"));
        let out = File::create(&out_path).map_err(io_err(format!("creating {}", out_path.display())))?;
        let err = File::create(&err_path).map_err(io_err(format!("creating {}", err_path.display())))?;
        let mut command = Command::new(&step.program);
        command
            .args(&step.args)
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
            .env("HOME", dir)
            .env("TMPDIR", dir)
            .env("LANG", "C.UTF-8")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let isolation = self.isolation;
        let limits = Limits {
            memory: step.memory_mb << 20,
            cpu_seconds: step.timeout.as_secs() + 2,
            processes: match isolation {
                Isolation::RootNamespaces => self.config.max_processes,
                _ => user_process_count(unsafe { libc::getuid() }) + self.config.max_processes,
            },
        };
        let child_setup = ChildSetup::new(isolation, dir, uid).map_err(io_err("preparing the child"))?;
        unsafe {
            command.pre_exec(move || child_setup.apply(&limits));
        }
        let started = Instant::now();
        let mut child = command.spawn().map_err(io_err(format!("starting {}", step.program.display())))?;
        let pgid = child.id() as i32;
        let mut timed_out = false;
        let status = loop {
            match child.try_wait().map_err(io_err("waiting for a program"))? {
                Some(status) => break Some(status),
                None if started.elapsed() >= step.timeout => {
                    timed_out = true;
                    break None;
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        self.kill_all(pgid, uid);
        let status = match status {
            Some(s) => Some(s),
            None => Some(child.wait().map_err(io_err("waiting for a killed program"))?),
        };
        self.kill_all(pgid, uid);
        Ok(StepEnd { status, timed_out, stdout: read_start(&out_path), stderr: read_start(&err_path) })
    }

    /// Kills the process group `pgid` and, as root, every process of the slot
    /// user `uid`, until none is left; reaps those reparented here.
    fn kill_all(&self, pgid: i32, uid: u32) {
        for _ in 0..1000 {
            let group_alive = unsafe { libc::kill(-pgid, libc::SIGKILL) } == 0;
            let mut others = false;
            if self.isolation == Isolation::RootNamespaces {
                for (pid, state) in processes_of(uid) {
                    if state != 'Z' {
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                        others = true;
                    }
                    // A zombie reparented to this process (the subreaper) is reaped here;
                    // the direct child (the group leader) is left to `Child::wait`.
                    if pid != pgid {
                        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
                    }
                }
            }
            if !group_alive && !others {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The real interpreter behind a `python3` found in PATH (pyenv shims are scripts).
fn real_python(shim: &Path) -> Option<PathBuf> {
    let out = Command::new(shim).args(["-c", "import sys; print(sys.executable)"]).output().ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && path.is_file()).then_some(path)
}

fn chown_tree(dir: &Path, uid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(dir, Some(uid), Some(uid))?;
    for entry in std::fs::read_dir(dir)? {
        std::os::unix::fs::chown(entry?.path(), Some(uid), Some(uid))?;
    }
    Ok(())
}

/// Processes whose real user id is `uid`, with their state letter.
fn processes_of(uid: u32) -> Vec<(i32, char)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else { continue };
        let mut state = '?';
        let mut real_uid = None;
        for line in status.lines() {
            if let Some(rest) = line.strip_prefix("State:") {
                state = rest.trim().chars().next().unwrap_or('?');
            } else if let Some(rest) = line.strip_prefix("Uid:") {
                real_uid = rest.split_whitespace().next().and_then(|u| u.parse::<u32>().ok());
            }
        }
        if real_uid == Some(uid) {
            found.push((pid, state));
        }
    }
    found
}

fn user_process_count(uid: u32) -> u64 {
    processes_of(uid).len() as u64
}

fn read_start(path: &Path) -> String {
    let mut buf = Vec::new();
    if let Ok(file) = File::open(path) {
        let _ = file.take(KEPT_OUTPUT as u64).read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn first_line(text: &str) -> String {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    line.chars().take(200).collect()
}

fn last_line(text: &str) -> String {
    let line = text.lines().map(str::trim).rev().find(|l| !l.is_empty()).unwrap_or("");
    line.chars().take(200).collect()
}

const MEMORY_SIGNS: &[&str] = &[
    "MemoryError",
    "std::bad_alloc",
    "OutOfMemoryError",
    "heap out of memory",
    "Cannot allocate memory",
    "Could not reserve enough space",
    "failed to map segment",
    "Failed to reserve virtual memory",
    "out of memory",
];

/// The outcome of a step from how it ended.
fn judge(step: &Step, end: &StepEnd) -> Outcome {
    let mut outcome = Outcome { passed: false, reason: String::new(), stdout: end.stdout.clone(), stderr: end.stderr.clone() };
    let what = if step.compile { "compile error" } else { "" };
    if end.timed_out {
        outcome.reason = format!("{}timeout after {} s", if step.compile { "compile " } else { "" }, step.timeout.as_secs_f64());
        return outcome;
    }
    if MEMORY_SIGNS.iter().any(|s| end.stderr.contains(s)) && !end.status.is_some_and(|s| s.success()) {
        outcome.reason = format!("memory limit ({} MiB): {}", step.memory_mb, last_line(&end.stderr));
        return outcome;
    }
    match end.status {
        Some(s) if s.success() => {
            outcome.passed = true;
            outcome.reason = "passed".into();
        }
        Some(s) => {
            let detail = last_line(&end.stderr);
            outcome.reason = if let Some(code) = s.code() {
                if step.compile {
                    format!("{what}: {}", first_error_line(&end.stderr))
                } else {
                    format!("exit code {code}: {detail}")
                }
            } else {
                let sig = s.signal().unwrap_or(0);
                let name = match sig {
                    libc::SIGXCPU => "CPU time limit".to_string(),
                    libc::SIGXFSZ => format!("file size limit ({} MiB)", MAX_FILE_BYTES >> 20),
                    libc::SIGSEGV => "segmentation fault".to_string(),
                    libc::SIGABRT => "aborted".to_string(),
                    libc::SIGKILL => "killed".to_string(),
                    _ => format!("killed by signal {sig}"),
                };
                if detail.is_empty() {
                    name
                } else {
                    format!("{name}: {detail}")
                }
            };
        }
        None => outcome.reason = "did not finish".into(),
    }
    outcome
}

fn first_error_line(stderr: &str) -> String {
    let line = stderr.lines().find(|l| l.contains("error")).map(str::trim).unwrap_or_else(|| stderr.lines().next().unwrap_or("").trim());
    line.chars().take(200).collect()
}

/// Resource limits of one step.
#[derive(Clone, Copy)]
struct Limits {
    memory: u64,
    cpu_seconds: u64,
    processes: u64,
}

/// Everything the child needs after `fork`, prepared before it (no allocation in the child).
struct ChildSetup {
    isolation: Isolation,
    dir: CString,
    uid: u32,
    uid_map: CString,
    gid_map: CString,
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;
const CAP_DAC_READ_SEARCH: u32 = 2;
const MOUNT_ATTR_RDONLY: u64 = 1;

fn check(ret: libc::c_int) -> std::io::Result<()> {
    if ret == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl ChildSetup {
    fn new(isolation: Isolation, dir: &Path, uid: u32) -> std::io::Result<ChildSetup> {
        let outer_uid = unsafe { libc::getuid() };
        let outer_gid = unsafe { libc::getgid() };
        let cstr = |s: String| CString::new(s).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e));
        Ok(ChildSetup {
            isolation,
            dir: CString::new(dir.as_os_str().as_bytes()).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
            uid,
            uid_map: cstr(format!("{outer_uid} {outer_uid} 1\n"))?,
            gid_map: cstr(format!("{outer_gid} {outer_gid} 1\n"))?,
        })
    }

    /// Runs in the child between `fork` and `exec`: limits, namespaces, user.
    fn apply(&self, limits: &Limits) -> std::io::Result<()> {
        set_limit(libc::RLIMIT_AS, limits.memory)?;
        set_limit(libc::RLIMIT_CPU, limits.cpu_seconds)?;
        set_limit(libc::RLIMIT_FSIZE, MAX_FILE_BYTES)?;
        set_limit(libc::RLIMIT_CORE, 0)?;
        set_limit(libc::RLIMIT_NPROC, limits.processes)?;
        match self.isolation {
            Isolation::Open => Ok(()),
            Isolation::RootNamespaces => {
                check(unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWNET) })?;
                self.read_only_except_dir()?;
                unsafe {
                    check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0))?;
                    check(libc::setgroups(0, std::ptr::null()))?;
                    check(libc::setresgid(self.uid, self.uid, self.uid))?;
                    check(libc::setresuid(self.uid, self.uid, self.uid))?;
                    let header = CapHeader { version: CAP_VERSION_3, pid: 0 };
                    let bit = 1u32 << CAP_DAC_READ_SEARCH;
                    let data = [
                        CapData { effective: bit, permitted: bit, inheritable: bit },
                        CapData { effective: 0, permitted: 0, inheritable: 0 },
                    ];
                    check(libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) as libc::c_int)?;
                    check(libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, CAP_DAC_READ_SEARCH as libc::c_ulong, 0, 0))?;
                    check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
                }
                Ok(())
            }
            Isolation::UserNamespaces => {
                check(unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWNET) })?;
                write_proc(c"/proc/self/setgroups", c"deny")?;
                write_proc(c"/proc/self/uid_map", &self.uid_map)?;
                write_proc(c"/proc/self/gid_map", &self.gid_map)?;
                self.read_only_except_dir()?;
                check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
            }
        }
    }

    /// In the new mount namespace: every mount read-only, the program's directory a writable bind mount.
    fn read_only_except_dir(&self) -> std::io::Result<()> {
        unsafe {
            check(libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))?;
            let ro = MountAttr { attr_set: MOUNT_ATTR_RDONLY, attr_clr: 0, propagation: 0, userns_fd: 0 };
            check(libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                c"/".as_ptr(),
                libc::AT_RECURSIVE as libc::c_uint,
                &ro as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            ) as libc::c_int)?;
            check(libc::mount(self.dir.as_ptr(), self.dir.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()))?;
            let rw = MountAttr { attr_set: 0, attr_clr: MOUNT_ATTR_RDONLY, propagation: 0, userns_fd: 0 };
            check(libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                self.dir.as_ptr(),
                0 as libc::c_uint,
                &rw as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            ) as libc::c_int)?;
            // The working directory was opened before the bind mount; enter the writable mount.
            check(libc::chdir(self.dir.as_ptr()))?;
        }
        Ok(())
    }
}

fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
    check(unsafe { libc::setrlimit(resource, &limit) })
}

fn write_proc(path: &std::ffi::CStr, text: &std::ffi::CStr) -> std::io::Result<()> {
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let bytes = text.to_bytes();
        let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        libc::close(fd);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
