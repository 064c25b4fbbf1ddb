//! A sandbox for generated programs (Linux only).
//!
//! Generated code is hostile. Every run (a compile step where the language
//! has one, then the program) gets these limits, set by `setrlimit` in the
//! program's process before `exec`:
//!
//! - wall time (`timeout`; at the limit every process of the run is killed)
//!   and CPU time (`RLIMIT_CPU`, two seconds above the wall time);
//! - address space (`RLIMIT_AS`, `memory_mb`; compilers get at least
//!   [`COMPILE_MEMORY_MB`]). The JVM runs with `-Xmx` a quarter of it, a serial
//!   collector, a 64 MiB code cache and a 64 MiB compressed class space, and
//!   node with `--max-old-space-size` half of it, so both fit the 1 GiB default;
//! - processes and threads (`RLIMIT_NPROC`, `max_processes`), file size
//!   (`RLIMIT_FSIZE`, [`MAX_FILE_BYTES`], standard output and error included),
//!   no core files, and in the namespace modes `disk_mb` of disk in all.
//!
//! # Containment (the namespace modes)
//!
//! The parent clones the run's *init* into new mount, network and PID
//! namespaces (and a new user namespace when not root). The init:
//!
//! - builds a new root on a small tmpfs: read-only bind mounts of the
//!   toolchains' allow-list (`/usr`, the `/bin`, `/sbin` and `/lib*` links or
//!   directories, `/etc/ld.so.cache`, `/etc/ld.so.conf*`,
//!   `/etc/alternatives`, `/etc/localtime`, the `/etc/java-*` configuration
//!   of a JDK, and the install prefix of every tool that lives elsewhere, such
//!   as a pyenv or nvm interpreter under a private home), the device files
//!   `null`, `zero`, `full`, `random` and `urandom`, a `/proc` of the new PID
//!   namespace, and the program's directory, a tmpfs of `disk_mb` MiB at the
//!   path of its host directory holding the program's files. It then
//!   `pivot_root`s into it and detaches the host's root, so nothing else of the
//!   host (other homes, `/etc/shadow`, `/tmp`, sockets in `/run`) exists for
//!   the program, and makes the new root read-only;
//! - is PID 1 of the PID namespace: host processes are invisible and cannot
//!   be signalled. It runs each step as its child, kills every other process
//!   of the namespace when the step ends (a step that left one running, a
//!   daemon for instance, fails with the reason `left N processes running`)
//!   and at the time limit, and when the init exits the kernel kills anything
//!   left. The init dies with the parent's thread (`PR_SET_PDEATHSIG`), is
//!   not dumpable and blanks its copy of the parent's command line, so the
//!   program cannot read the parent's memory, environment or arguments.
//!
//! Each step's process then, before `exec`:
//!
//! - as root, becomes a user id of its own (one per parallel slot, not an
//!   account of the system) with no capability at all; with user namespaces
//!   it is the calling user, whose capabilities in the namespace end at `exec`;
//! - sets `no_new_privs` and restricts itself with Landlock where the kernel
//!   has it: read and execute beneath the allow-list, read `/proc`, read and
//!   write the device files, anything in its directory; from Landlock ABI 4
//!   no TCP, from ABI 6 signals and abstract UNIX sockets only within the run;
//! - installs a seccomp filter that makes these calls fail with `EPERM`:
//!   `ptrace` and `process_vm_*`, `mount` and the other mount calls, `chroot`,
//!   `setns`, `unshare` and `clone` with namespace flags, the keyring calls,
//!   `bpf`, kernel modules, `io_uring`, `kexec`, `perf_event_open`,
//!   `userfaultfd`, file handles, settings of the machine, and every `socket`
//!   or `socketpair` other than AF_UNIX (`clone3` fails with `ENOSYS`, so the
//!   C library falls back to `clone`, whose flags the filter sees). Calls of
//!   another architecture (i386 or x32 on x86_64) fail the same way.
//!
//! The network namespace has only a loopback device, down. No capability
//! that bypasses file permissions is ever granted.
//!
//! # Modes, chosen once when the sandbox is made and checked by a probe run
//!
//! - [`Isolation::RootNamespaces`] as root: as above; `RLIMIT_NPROC` counts only
//!   the slot user's processes.
//! - [`Isolation::UserNamespaces`] otherwise: as above inside a user namespace
//!   that maps the user to itself. `RLIMIT_NPROC` counts all of the user's
//!   processes, so it is set to the user's current count plus `max_processes`.
//! - Without Landlock (kernels before 5.13, or Landlock disabled) both modes
//!   still run, with file access limited by the allow-list root alone; the
//!   sandbox warns and [`Sandbox::describe`] says so. Without namespaces, a
//!   working probe or a seccomp filter for the architecture (only x86_64 and
//!   aarch64 have one) the sandbox refuses to run, unless `allow_network` is
//!   set: then [`Isolation::Open`] runs programs in their host directories with
//!   the limits above only (network, the file system and the host's processes
//!   open; leftover processes killed by process group, so one that calls
//!   `setsid` escapes) and warns.
//!
//! Standard output and error go to memory files, of which the first
//! [`KEPT_OUTPUT`] bytes are kept. The host directory of a run is removed
//! afterwards.

mod child;
mod landlock;
mod seccomp;

use std::collections::HashSet;
use std::ffi::{c_char, CString, OsString};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use child::{kind, Limits, Op, Report, RunPlan, Stage, StepPlan};

/// Address space given to compilers (g++, javac), in MiB, when `memory_mb` is smaller.
pub const COMPILE_MEMORY_MB: u64 = 2048;
/// Largest file a program may write (its output files included), in bytes.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// How much of a program's stdout and stderr is kept, in bytes.
pub const KEPT_OUTPUT: usize = 16 << 10;
/// Prefix of every sandbox directory.
pub const DIR_PREFIX: &str = "subprune-sandbox-";
/// First user id of the per-slot users (root mode); ids are not accounts of the system.
const UID_BASE: u32 = 1_000_000_000;
/// Slots per process in the user-id space.
const SLOTS_PER_PROCESS: u32 = 256;
/// Time the parent allows a run beyond its steps' limits (building the root,
/// starting processes) before it kills the run's init.
const SETUP_ALLOWANCE: Duration = Duration::from_secs(20);
/// Files a program's directory may hold (tmpfs inodes).
const MAX_FILES: u64 = 16_384;

/// System paths a toolchain may read, where they exist: programs, libraries
/// and headers, the dynamic loader's cache and configuration, the
/// alternatives links and the time zone.
const SYSTEM_PATHS: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/localtime",
];
/// Device files a program may read and write.
const DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"];
/// Links of `/dev` to the process's own descriptors.
const DEVICE_LINKS: &[(&str, &str)] = &[
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
];

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
    /// Disk a run may fill, in MiB (its directory is a tmpfs of this size; namespace modes only).
    pub disk_mb: u64,
    /// Programs run at once.
    pub jobs: usize,
    /// Run without isolation (network, file system and processes open) where it cannot be had.
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
            disk_mb: 64,
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
    /// Programs cannot be contained here and `allow_network` is not set.
    #[error("cannot isolate programs ({0}); refusing to run generated code. Run as root, enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 or user.max_user_namespaces > 0), or pass --allow-network to run it with no isolation (network, file system and processes open)")]
    NoIsolation(String),
    /// An operating-system error around a program (temporary directory, building its root, starting it).
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
    /// Root: mount (an allow-list root), network and PID namespaces, a user id per slot, seccomp, Landlock where the kernel has it.
    RootNamespaces,
    /// Not root: user, mount (an allow-list root), network and PID namespaces, seccomp, Landlock where the kernel has it.
    UserNamespaces,
    /// None but the resource limits (network, file system and processes open), by the user's explicit choice.
    Open,
}

/// The result of running one program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Whether it compiled, ran to completion within its limits, left no process running and passed its tests.
    pub passed: bool,
    /// Why it failed (`timeout after 10 s`, `memory limit`, `exit code 1: ...`, `left 1 process running ...`), `passed` when it passed.
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
    /// Processes it left running when it exited (all killed).
    left_running: u32,
    stdout: String,
    stderr: String,
}

/// One entry of the read-only allow-list, a host path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed {
    /// A directory, bind-mounted with everything beneath it.
    Dir(PathBuf),
    /// A file, bind-mounted.
    File(PathBuf),
    /// A symbolic link, recreated with the same target.
    Link(PathBuf, PathBuf),
}

impl Allowed {
    fn path(&self) -> &Path {
        match self {
            Allowed::Dir(p) | Allowed::File(p) | Allowed::Link(p, _) => p,
        }
    }

    /// The entry for `path` as it is on this machine, `None` if it does not exist.
    fn of(path: &Path) -> Option<Allowed> {
        let meta = path.symlink_metadata().ok()?;
        if meta.file_type().is_symlink() {
            Some(Allowed::Link(path.to_path_buf(), std::fs::read_link(path).ok()?))
        } else if meta.is_dir() {
            Some(Allowed::Dir(path.to_path_buf()))
        } else {
            Some(Allowed::File(path.to_path_buf()))
        }
    }
}

/// Runs programs in isolated temporary directories; see the module documentation.
pub struct Sandbox {
    config: SandboxConfig,
    isolation: Isolation,
    landlock_abi: Option<u32>,
    tools: Vec<(String, PathBuf)>,
    allowed: Vec<Allowed>,
    path_env: OsString,
    seccomp: Vec<libc::sock_filter>,
    command_line: Option<(usize, usize)>,
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

/// The read-only allow-list for `tools` (canonical paths): the system paths,
/// a JDK's `/etc/java-*` configuration, and the install prefix of each tool
/// outside them (`PREFIX/bin/TOOL` gives `PREFIX`).
fn allow_list(tools: &[(String, PathBuf)]) -> Vec<Allowed> {
    let mut allowed: Vec<Allowed> = SYSTEM_PATHS.iter().filter_map(|p| Allowed::of(Path::new(p))).collect();
    if tools.iter().any(|(t, _)| t == "java" || t == "javac") {
        if let Ok(entries) = std::fs::read_dir("/etc") {
            let mut java: Vec<PathBuf> =
                entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("java")).map(|e| e.path()).collect();
            java.sort();
            allowed.extend(java.iter().filter_map(|p| Allowed::of(p)));
        }
    }
    let covered: Vec<PathBuf> =
        allowed.iter().filter(|a| matches!(a, Allowed::Dir(_))).filter_map(|a| a.path().canonicalize().ok()).collect();
    for (_, tool) in tools {
        if covered.iter().any(|dir| tool.starts_with(dir)) {
            continue;
        }
        let Some(dir) = tool.parent() else { continue };
        let prefix = if dir.file_name().is_some_and(|n| n == "bin") { dir.parent().unwrap_or(dir) } else { dir };
        let entry = Allowed::Dir(prefix.to_path_buf());
        if prefix != Path::new("/") && !allowed.contains(&entry) {
            allowed.push(entry);
        }
    }
    allowed
}

fn cstring(path: &Path) -> Result<CString, SandboxError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| SandboxError::Io {
        what: format!("the path {}", path.display()),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    })
}

/// `path` (absolute) under `stage`.
fn staged(stage: &Path, path: &Path) -> PathBuf {
    stage.join(path.strip_prefix("/").unwrap_or(path))
}

/// Builds the ops that make the new root, making each directory once.
struct RootBuilder<'a> {
    stage: &'a Path,
    made: HashSet<PathBuf>,
    ops: Vec<Op>,
}

impl RootBuilder<'_> {
    /// Makes `dir` (a path in the new root) and its missing parents.
    fn dir(&mut self, dir: &Path) -> Result<(), SandboxError> {
        if dir == Path::new("/") || self.made.contains(dir) {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            self.dir(parent)?;
        }
        self.ops.push(Op::Mkdir(cstring(&staged(self.stage, dir))?));
        self.made.insert(dir.to_path_buf());
        Ok(())
    }

    fn parent_of(&mut self, path: &Path) -> Result<(), SandboxError> {
        self.dir(path.parent().unwrap_or(Path::new("/")))
    }

    /// Bind-mounts the host's `path` at the same place with `attr`.
    fn bind(&mut self, path: &Path, is_dir: bool, attr: u64) -> Result<(), SandboxError> {
        let target = staged(self.stage, path);
        if is_dir {
            self.dir(path)?;
        } else {
            self.parent_of(path)?;
            self.ops.push(Op::Touch(cstring(&target)?));
        }
        self.ops.push(Op::Bind { source: cstring(path)?, target: cstring(&target)?, attr });
        Ok(())
    }

    fn link(&mut self, path: &Path, target: &Path) -> Result<(), SandboxError> {
        self.parent_of(path)?;
        self.ops.push(Op::Symlink { target: cstring(target)?, link: cstring(&staged(self.stage, path))? });
        Ok(())
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
                // The canonical path: the new root need not hold the links that lead to it.
                let path = path.canonicalize().unwrap_or(path);
                if !tools.iter().any(|(t, _)| t == tool) {
                    tools.push((tool.to_string(), path));
                }
            }
        }
        let root = config.root.clone().unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&root).map_err(io_err(format!("creating {}", root.display())))?;
        let root = root.canonicalize().map_err(io_err(format!("resolving {}", root.display())))?;
        let jobs = config.jobs.clamp(1, SLOTS_PER_PROCESS as usize);
        let is_root = unsafe { libc::geteuid() } == 0;
        // Each process gets its own block of user ids (pids are unique on the machine), so
        // concurrent evaluations never count each other's processes.
        let uid_base = UID_BASE + (std::process::id() % ((u32::MAX - UID_BASE) / SLOTS_PER_PROCESS)) * SLOTS_PER_PROCESS;
        let mut path_env: Vec<PathBuf> = Vec::new();
        for (_, tool) in &tools {
            if let Some(dir) = tool.parent() {
                if !path_env.iter().any(|d| d == dir) {
                    path_env.push(dir.to_path_buf());
                }
            }
        }
        path_env.extend(["/usr/local/bin", "/usr/bin", "/bin"].map(PathBuf::from));
        let path_env = std::env::join_paths(path_env).map_err(|e| SandboxError::Io {
            what: "building PATH".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?;
        let landlock_abi = landlock::abi();
        let seccomp = seccomp::filter();
        let mut sandbox = Sandbox {
            config: SandboxConfig { jobs, ..config },
            isolation: if is_root { Isolation::RootNamespaces } else { Isolation::UserNamespaces },
            landlock_abi: landlock_abi.as_ref().ok().copied(),
            allowed: allow_list(&tools),
            tools,
            path_env,
            seccomp: seccomp.clone().unwrap_or_default(),
            command_line: command_line_memory(),
            root,
            free_slots: Mutex::new((0..jobs as u32).rev().collect()),
            slot_freed: Condvar::new(),
            uid_base,
        };
        let contained = match seccomp {
            None => Err(format!("no seccomp filter for the {} architecture (only x86_64 and aarch64)", std::env::consts::ARCH)),
            Some(_) => sandbox.probe(),
        };
        if let Err(why) = contained {
            if !sandbox.config.allow_network {
                return Err(SandboxError::NoIsolation(why));
            }
            eprintln!("warning: programs run WITHOUT isolation, with network access, a writable file system and the host's processes in reach (--allow-network): {why}");
            sandbox.isolation = Isolation::Open;
            sandbox.landlock_abi = None;
            sandbox.seccomp.clear();
        } else if let Err(why) = landlock_abi {
            eprintln!("warning: no Landlock ({why}): the programs' file access is limited by their allow-list root alone");
        }
        Ok(sandbox)
    }

    /// The isolation in use.
    pub fn isolation(&self) -> Isolation {
        self.isolation
    }

    /// The Landlock ABI version programs restrict themselves with, `None` where they do not.
    pub fn landlock_abi(&self) -> Option<u32> {
        self.landlock_abi
    }

    /// The isolation in words: the mode, seccomp and Landlock.
    pub fn describe(&self) -> String {
        let landlock = match self.landlock_abi {
            Some(abi) => format!("Landlock ABI {abi}"),
            None => "no Landlock (file access limited by the allow-list root alone)".into(),
        };
        match self.isolation {
            Isolation::RootNamespaces => {
                format!("root mode: mount (allow-list root), network and PID namespaces, a user id per slot, seccomp filter, {landlock}")
            }
            Isolation::UserNamespaces => {
                format!("user-namespace mode: user, mount (allow-list root), network and PID namespaces, seccomp filter, {landlock}")
            }
            Isolation::Open => "open mode (--allow-network): resource limits only; network, file system and processes open".into(),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// The directory the per-program directories are made in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Runs a shell-free probe through the whole isolation: the root must be
    /// read-only and the program's directory writable.
    fn probe(&self) -> Result<(), String> {
        let check = Path::new("/bin/sh");
        if !check.exists() {
            return Err("/bin/sh not found for the isolation probe".into());
        }
        let step = Step {
            program: check.canonicalize().unwrap_or_else(|_| check.to_path_buf()),
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
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{label}-"))
            .tempdir_in(&self.root)
            .map_err(io_err(format!("making a directory in {}", self.root.display())))?;
        let path = dir.path().to_path_buf();
        let result = (|| {
            if self.isolation == Isolation::Open {
                for (name, text) in files {
                    std::fs::write(path.join(name), text).map_err(io_err(format!("writing {}", path.join(name).display())))?;
                }
            }
            let mut outputs = Vec::new();
            for _ in steps {
                outputs.push((memory_file(c"subprune-sandbox-stdout")?, memory_file(c"subprune-sandbox-stderr")?));
            }
            let (report_read, report_write) = report_pipe()?;
            let run_as = (self.isolation == Isolation::RootNamespaces).then_some(self.uid_base + slot);
            let plan = self.plan(&path, files, steps, &outputs, report_write.as_raw_fd(), run_as)?;
            let ends = self.execute(&plan, steps, report_read, report_write, &outputs)?;
            for (i, (step, end)) in steps.iter().zip(&ends).enumerate() {
                let outcome = judge(step, end, self.config.disk_mb);
                if !outcome.passed || i + 1 == steps.len() {
                    return Ok(outcome);
                }
            }
            Ok(Outcome { passed: true, reason: "passed".into(), stdout: String::new(), stderr: String::new() })
        })();
        // Every process of the run is gone by now, so nothing can write into the directory any more.
        dir.close().map_err(io_err(format!("removing {}", path.display())))?;
        result
    }

    /// Everything the run's processes need, prepared before the clone.
    fn plan(
        &self,
        dir: &Path,
        files: &[(&str, &str)],
        steps: &[Step],
        outputs: &[(OwnedFd, OwnedFd)],
        report_fd: libc::c_int,
        run_as: Option<u32>,
    ) -> Result<RunPlan, SandboxError> {
        let contained = self.isolation != Isolation::Open;
        let workdir = cstring(dir)?;
        let mut root = RootBuilder { stage: dir, made: HashSet::new(), ops: Vec::new() };
        let mut landlock_policy = self.landlock_abi.map(landlock::Policy::new);
        if contained {
            root.ops.push(Op::Tmpfs { target: workdir.clone(), options: c"mode=0755,size=1m,nr_inodes=4096".into() });
            let read_only = child::MOUNT_ATTR_RDONLY | child::MOUNT_ATTR_NOSUID | child::MOUNT_ATTR_NODEV;
            let reading = landlock::EXECUTE | landlock::READ_FILE | landlock::READ_DIR;
            if let Some(policy) = &mut landlock_policy {
                policy.allow(c"/".into(), landlock::READ_DIR, true);
            }
            for entry in &self.allowed {
                match entry {
                    Allowed::Dir(path) | Allowed::File(path) => {
                        let is_dir = matches!(entry, Allowed::Dir(_));
                        root.bind(path, is_dir, read_only)?;
                        if let Some(policy) = &mut landlock_policy {
                            policy.allow(cstring(path)?, reading, is_dir);
                        }
                    }
                    Allowed::Link(path, target) => root.link(path, target)?,
                }
            }
            for device in DEVICES.iter().map(Path::new).filter(|d| d.exists()) {
                // Devices keep `dev`; a read-only mount still lets a device be written.
                root.bind(device, false, child::MOUNT_ATTR_RDONLY | child::MOUNT_ATTR_NOSUID | child::MOUNT_ATTR_NOEXEC)?;
                if let Some(policy) = &mut landlock_policy {
                    let access = landlock::READ_FILE | landlock::WRITE_FILE | landlock::TRUNCATE | landlock::IOCTL_DEV;
                    policy.allow(cstring(device)?, access, false);
                }
            }
            for (link, target) in DEVICE_LINKS {
                root.link(Path::new(link), Path::new(target))?;
            }
            root.dir(Path::new("/proc"))?;
            root.ops.push(Op::Proc(cstring(&staged(dir, Path::new("/proc")))?));
            root.dir(dir)?;
            let owner = run_as.map(|uid| format!(",uid={uid},gid={uid}")).unwrap_or_default();
            let options = format!("mode=0700,size={}m,nr_inodes={MAX_FILES}{owner}", self.config.disk_mb.max(1));
            let staged_workdir = staged(dir, dir);
            root.ops.push(Op::Tmpfs { target: cstring(&staged_workdir)?, options: CString::new(options).expect("no NUL") });
            for (name, text) in files {
                root.ops.push(Op::Write { path: cstring(&staged_workdir.join(name))?, contents: text.as_bytes().to_vec(), owner: run_as });
            }
            if let Some(policy) = &mut landlock_policy {
                policy.allow(c"/proc".into(), landlock::READ_FILE | landlock::READ_DIR, true);
                policy.allow(workdir.clone(), landlock::ALL, true);
            }
        }
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let processes = match self.isolation {
            Isolation::RootNamespaces => self.config.max_processes,
            // The run's init counts too.
            _ => user_process_count(uid) + self.config.max_processes + 1,
        };
        let mut env: Vec<CString> = Vec::new();
        let mut push_env = |name: &str, value: &[u8]| {
            let mut entry = format!("{name}=").into_bytes();
            entry.extend_from_slice(value);
            env.push(CString::new(entry).map_err(|e| SandboxError::Io {
                what: format!("the environment variable {name}"),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            })?);
            Ok::<(), SandboxError>(())
        };
        push_env("PATH", self.path_env.as_bytes())?;
        push_env("HOME", dir.as_os_str().as_bytes())?;
        push_env("TMPDIR", dir.as_os_str().as_bytes())?;
        push_env("LANG", b"C.UTF-8")?;
        push_env("PYTHONDONTWRITEBYTECODE", b"1")?;
        let mut step_plans = Vec::new();
        for (step, (stdout, stderr)) in steps.iter().zip(outputs) {
            let program = cstring(&step.program)?;
            let mut args = vec![program.clone()];
            for arg in &step.args {
                args.push(CString::new(arg.as_bytes()).map_err(|e| SandboxError::Io {
                    what: format!("the argument {arg:?}"),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
                })?);
            }
            let env = env.clone();
            let argv = args.iter().map(|a| a.as_ptr()).chain([std::ptr::null::<c_char>()]).collect();
            let envp = env.iter().map(|e| e.as_ptr()).chain([std::ptr::null::<c_char>()]).collect();
            step_plans.push(StepPlan {
                program,
                _args: args,
                argv,
                _env: env,
                envp,
                timeout: step.timeout,
                limits: Limits {
                    memory: step.memory_mb << 20,
                    cpu_seconds: step.timeout.as_secs() + 2,
                    processes,
                    file_bytes: MAX_FILE_BYTES,
                },
                stdout_fd: stdout.as_raw_fd(),
                stderr_fd: stderr.as_raw_fd(),
            });
        }
        let mut keep_fds: Vec<libc::c_int> = vec![0, 1, 2, report_fd];
        keep_fds.extend(outputs.iter().flat_map(|(o, e)| [o.as_raw_fd(), e.as_raw_fd()]));
        keep_fds.sort_unstable();
        keep_fds.dedup();
        let id_maps = (self.isolation == Isolation::UserNamespaces).then(|| {
            (CString::new(format!("{uid} {uid} 1\n")).expect("no NUL"), CString::new(format!("{gid} {gid} 1\n")).expect("no NUL"))
        });
        Ok(RunPlan {
            isolation: self.isolation,
            id_maps,
            stage: workdir.clone(),
            ops: root.ops,
            workdir,
            run_as,
            landlock: if contained { landlock_policy } else { None },
            seccomp: self.seccomp.clone(),
            steps: step_plans,
            report_fd,
            keep_fds,
            command_line: self.command_line,
        })
    }

    /// Clones the run's init, waits for it (killing it when the run takes
    /// longer than its steps' limits allow) and turns its reports into step ends.
    fn execute(
        &self,
        plan: &RunPlan,
        steps: &[Step],
        report_read: OwnedFd,
        report_write: OwnedFd,
        outputs: &[(OwnedFd, OwnedFd)],
    ) -> Result<Vec<StepEnd>, SandboxError> {
        let namespaces = match self.isolation {
            Isolation::RootNamespaces => libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWPID,
            Isolation::UserNamespaces => libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWPID,
            Isolation::Open => 0,
        };
        let flags = (namespaces | libc::SIGCHLD) as libc::c_ulong;
        // A raw clone: the C library's wrappers cannot put the child in a new PID namespace.
        let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
        if pid == 0 {
            unsafe { child::run_init(plan) }
        }
        if pid < 0 {
            return Err(SandboxError::Io { what: "starting a run (clone)".into(), source: std::io::Error::last_os_error() });
        }
        let pid = pid as libc::pid_t;
        drop(report_write);
        let limit = steps.iter().map(|s| s.timeout).sum::<Duration>() + SETUP_ALLOWANCE;
        let started = Instant::now();
        let mut killed = false;
        loop {
            let mut status = 0;
            let waited = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if waited == pid {
                break;
            }
            if waited < 0 {
                return Err(SandboxError::Io { what: "waiting for a run".into(), source: std::io::Error::last_os_error() });
            }
            if !killed && started.elapsed() >= limit {
                // In the namespace modes the init's death kills every process of the run.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                killed = true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let reports = read_reports(&report_read);
        let unfinished = reports
            .iter()
            .filter(|r| r.kind == kind::STEP_STARTED)
            .find(|started| !reports.iter().any(|r| r.step == started.step && matches!(r.kind, kind::STEP_ENDED | kind::STEP_TIMED_OUT)));
        if let (Isolation::Open, true, Some(started)) = (self.isolation, killed, unfinished) {
            // The init was killed before it could kill the step's process group.
            unsafe { libc::kill(-started.status, libc::SIGKILL) };
        }
        let mut ends: Vec<StepEnd> = Vec::new();
        for report in &reports {
            let step = report.step as usize;
            match report.kind {
                kind::SETUP_FAILED => {
                    let what = if report.step & 0x8000_0000 != 0 {
                        Stage::from_code(report.step & 0x7fff_ffff).map_or("setting up", |s| s.describe()).to_string()
                    } else {
                        plan.ops.get(step).map_or_else(|| "setting up".into(), |op| op.describe())
                    };
                    return Err(SandboxError::Io {
                        what: format!("building the run's root: {what}"),
                        source: std::io::Error::from_raw_os_error(report.detail),
                    });
                }
                kind::STEP_SETUP_FAILED => {
                    let stage = Stage::from_code(report.status as u32).map_or("setting up", |s| s.describe());
                    let program = steps.get(step).map_or_else(String::new, |s| s.program.display().to_string());
                    return Err(SandboxError::Io {
                        what: format!("{program}: {stage}"),
                        source: std::io::Error::from_raw_os_error(report.detail),
                    });
                }
                kind::STEP_ENDED | kind::STEP_TIMED_OUT => {
                    let (stdout, stderr) = &outputs[step];
                    ends.push(StepEnd {
                        status: (report.kind == kind::STEP_ENDED).then(|| std::process::ExitStatus::from_raw(report.status)),
                        timed_out: report.kind == kind::STEP_TIMED_OUT,
                        left_running: report.detail.max(0) as u32,
                        stdout: read_start(stdout),
                        stderr: read_start(stderr),
                    });
                }
                _ => {}
            }
        }
        let started_steps = reports.iter().filter(|r| r.kind == kind::STEP_STARTED).count();
        if started_steps > ends.len() {
            if !killed {
                return Err(SandboxError::Io {
                    what: "a run's init ended without a report".into(),
                    source: std::io::Error::other("lost the run's report"),
                });
            }
            let (stdout, stderr) = &outputs[ends.len()];
            ends.push(StepEnd { status: None, timed_out: true, left_running: 0, stdout: read_start(stdout), stderr: read_start(stderr) });
        }
        if ends.is_empty() {
            return Err(SandboxError::Io {
                what: "a run ended before its first step".into(),
                source: std::io::Error::other("no step started"),
            });
        }
        Ok(ends)
    }
}

/// A memory file (closed on exec) for a step's output.
fn memory_file(name: &std::ffi::CStr) -> Result<OwnedFd, SandboxError> {
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(SandboxError::Io {
            what: "making a memory file for a program's output".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The pipe the run's processes report on: (read end, non-blocking; write end). Both close on exec.
fn report_pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SandboxError::Io { what: "making the report pipe".into(), source: std::io::Error::last_os_error() });
    }
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // Other runs' processes may hold the write end for a moment: never wait for its end.
    unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    Ok((read, write))
}

/// Every report waiting on the pipe.
fn read_reports(pipe: &OwnedFd) -> Vec<Report> {
    let mut reports = Vec::new();
    loop {
        let mut report = Report::default();
        let size = std::mem::size_of::<Report>();
        let n = unsafe { libc::read(pipe.as_raw_fd(), (&mut report as *mut Report).cast(), size) };
        if n != size as isize {
            return reports;
        }
        reports.push(report);
    }
}

/// Where this process's command line lies in memory (`arg_start`, `arg_end` of /proc/self/stat).
fn command_line_memory() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at field 3; arg_start is field 48.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let start = fields.get(45)?.parse::<usize>().ok()?;
    let end = fields.get(46)?.parse::<usize>().ok()?;
    (start < end).then_some((start, end))
}

/// The real interpreter behind a `python3` found in PATH (pyenv shims are scripts).
fn real_python(shim: &Path) -> Option<PathBuf> {
    let out = Command::new(shim).args(["-c", "import sys; print(sys.executable)"]).output().ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && path.is_file()).then_some(path)
}

/// How many processes have `uid` as their real user id.
fn user_process_count(uid: u32) -> u64 {
    let mut count = 0;
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    for entry in entries.flatten() {
        if entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()).is_none() {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else { continue };
        let real_uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok());
        if real_uid == Some(uid) {
            count += 1;
        }
    }
    count
}

/// The start of a step's output.
fn read_start(output: &OwnedFd) -> String {
    let mut buf = vec![0; KEPT_OUTPUT];
    let Ok(output) = output.try_clone() else { return String::new() };
    let file = File::from(output);
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], filled as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    buf.truncate(filled);
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
fn judge(step: &Step, end: &StepEnd, disk_mb: u64) -> Outcome {
    let mut outcome = Outcome { passed: false, reason: String::new(), stdout: end.stdout.clone(), stderr: end.stderr.clone() };
    let what = if step.compile { "compile error" } else { "" };
    if end.timed_out {
        outcome.reason = format!("{}timeout after {} s", if step.compile { "compile " } else { "" }, step.timeout.as_secs_f64());
        return outcome;
    }
    let failed = !end.status.is_some_and(|s| s.success());
    if MEMORY_SIGNS.iter().any(|s| end.stderr.contains(s)) && failed {
        outcome.reason = format!("memory limit ({} MiB): {}", step.memory_mb, last_line(&end.stderr));
        return outcome;
    }
    // Programs that ignore SIGXFSZ (Python does) see EFBIG instead.
    if end.stderr.contains("File too large") && failed {
        outcome.reason = format!("file size limit ({} MiB): {}", MAX_FILE_BYTES >> 20, last_line(&end.stderr));
        return outcome;
    }
    if end.stderr.contains("No space left on device") && failed {
        outcome.reason = format!("disk limit ({disk_mb} MiB): {}", last_line(&end.stderr));
        return outcome;
    }
    match end.status {
        Some(s) if s.success() && end.left_running > 0 => {
            let n = end.left_running;
            outcome.reason = format!("left {n} process{} running after it exited (killed with the run)", if n == 1 { "" } else { "es" });
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run_step() -> Step {
        Step { program: PathBuf::from("/usr/bin/python3"), args: vec![], timeout: Duration::from_secs(3), memory_mb: 512, compile: false }
    }

    fn end(code: i32, left_running: u32, stderr: &str) -> StepEnd {
        StepEnd {
            status: Some(std::process::ExitStatus::from_raw(code << 8)),
            timed_out: false,
            left_running,
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn reasons_name_the_limit_or_the_leftover() {
        assert_eq!(judge(&run_step(), &end(0, 0, ""), 64).reason, "passed");
        let daemon = judge(&run_step(), &end(0, 2, ""), 64);
        assert!(!daemon.passed);
        assert_eq!(daemon.reason, "left 2 processes running after it exited (killed with the run)");
        let big = judge(&run_step(), &end(1, 0, "OSError: [Errno 27] File too large\n"), 64);
        assert_eq!(big.reason, "file size limit (16 MiB): OSError: [Errno 27] File too large");
        let full = judge(&run_step(), &end(1, 0, "OSError: [Errno 28] No space left on device\n"), 64);
        assert_eq!(full.reason, "disk limit (64 MiB): OSError: [Errno 28] No space left on device");
        let timed_out = StepEnd { status: None, timed_out: true, left_running: 0, stdout: String::new(), stderr: String::new() };
        assert_eq!(judge(&run_step(), &timed_out, 64).reason, "timeout after 3 s");
    }

    #[test]
    fn the_allow_list_holds_system_paths_and_outside_prefixes() {
        let tools = vec![
            ("python3".to_string(), PathBuf::from("/opt/private-home/.pyenv/versions/3.11.7/bin/python3.11")),
            ("node".to_string(), PathBuf::from("/opt/node-v20/node")),
            ("g++".to_string(), PathBuf::from("/usr/bin/x86_64-linux-gnu-g++-12")),
        ];
        let allowed = allow_list(&tools);
        assert!(allowed.contains(&Allowed::Dir(PathBuf::from("/opt/private-home/.pyenv/versions/3.11.7"))), "{allowed:?}");
        assert!(allowed.contains(&Allowed::Dir(PathBuf::from("/opt/node-v20"))), "{allowed:?}");
        assert!(allowed.iter().any(|a| a.path() == Path::new("/usr")));
        // Nothing that would expose the host beyond the toolchains.
        for forbidden in ["/", "/etc", "/etc/shadow", "/root", "/home", "/tmp", "/run", "/proc", "/sys", "/dev"] {
            assert!(!allowed.iter().any(|a| a.path() == Path::new(forbidden)), "{forbidden} is allowed");
        }
    }

    #[test]
    fn the_command_line_range_spans_the_arguments() {
        let (start, end) = command_line_memory().expect("arg_start and arg_end in /proc/self/stat");
        let cmdline = std::fs::read("/proc/self/cmdline").unwrap();
        assert_eq!(end - start, cmdline.len(), "the range spans the command line");
    }
}
