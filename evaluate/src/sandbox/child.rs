//! The processes of one run, after the parent's `clone`: the run's init
//! (PID 1 of the new PID namespace) builds the program's root, then runs each
//! step as a child of its own and reports how it ended through a pipe.
//!
//! The parent is multithreaded and clones with a raw system call, so nothing
//! here allocates, takes a lock or calls a C-library function that assumes
//! the library's thread bookkeeping (`fork`, `setresuid`, `setgroups` are
//! made as raw system calls). Everything is prepared before the clone.

use std::ffi::{c_char, CStr, CString};
use std::time::Duration;

use super::landlock;
use super::Isolation;

/// `mount_setattr` attributes.
pub(super) const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub(super) const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub(super) const MOUNT_ATTR_NODEV: u64 = 0x4;
pub(super) const MOUNT_ATTR_NOEXEC: u64 = 0x8;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// One step of building the program's root, on the staging tmpfs.
pub(super) enum Op {
    /// Make a directory (mode 0755).
    Mkdir(CString),
    /// Make an empty file, the mount point of a file bind mount.
    Touch(CString),
    /// Make a symbolic link at `link` pointing to `target`.
    Symlink { target: CString, link: CString },
    /// Bind-mount `source` (recursively) at `target` with the attributes `attr`.
    Bind { source: CString, target: CString, attr: u64 },
    /// Mount a tmpfs at `target` with `options`.
    Tmpfs { target: CString, options: CString },
    /// Mount the PID namespace's own procfs at `target`.
    Proc(CString),
    /// Write a file of the program (its source) with mode 0644, owned by `owner` where given.
    Write { path: CString, contents: Vec<u8>, owner: Option<u32> },
}

impl Op {
    /// What the step does, for error messages.
    pub(super) fn describe(&self) -> String {
        let show = |c: &CString| c.to_string_lossy().into_owned();
        match self {
            Op::Mkdir(path) => format!("making the directory {}", show(path)),
            Op::Touch(path) => format!("making the mount point {}", show(path)),
            Op::Symlink { target, link } => format!("linking {} to {}", show(link), show(target)),
            Op::Bind { source, target, .. } => format!("bind-mounting {} at {}", show(source), show(target)),
            Op::Tmpfs { target, .. } => format!("mounting a tmpfs at {}", show(target)),
            Op::Proc(path) => format!("mounting the PID namespace's /proc at {}", show(path)),
            Op::Write { path, .. } => format!("writing {}", show(path)),
        }
    }
}

/// Resource limits of one step.
#[derive(Clone, Copy)]
pub(super) struct Limits {
    pub(super) memory: u64,
    pub(super) cpu_seconds: u64,
    pub(super) processes: u64,
    pub(super) file_bytes: u64,
}

/// One command of the run, ready for `execve`.
pub(super) struct StepPlan {
    pub(super) program: CString,
    /// Keeps the strings `argv` points into.
    pub(super) _args: Vec<CString>,
    pub(super) argv: Vec<*const c_char>,
    /// Keeps the strings `envp` points into.
    pub(super) _env: Vec<CString>,
    pub(super) envp: Vec<*const c_char>,
    pub(super) timeout: Duration,
    pub(super) limits: Limits,
    pub(super) stdout_fd: libc::c_int,
    pub(super) stderr_fd: libc::c_int,
}

/// Everything the run's processes need, prepared before the clone.
pub(super) struct RunPlan {
    pub(super) isolation: Isolation,
    /// `uid_map` and `gid_map` lines (user namespaces).
    pub(super) id_maps: Option<(CString, CString)>,
    /// The staging directory the new root is built on (namespaces).
    pub(super) stage: CString,
    pub(super) ops: Vec<Op>,
    /// The program's directory (the same path in its root and on the host).
    pub(super) workdir: CString,
    /// The user id the steps run as (root mode).
    pub(super) run_as: Option<u32>,
    pub(super) landlock: Option<landlock::Policy>,
    pub(super) seccomp: Vec<libc::sock_filter>,
    pub(super) steps: Vec<StepPlan>,
    pub(super) report_fd: libc::c_int,
    /// Descriptors the init keeps, in increasing order; it closes every other.
    pub(super) keep_fds: Vec<libc::c_int>,
    /// The parent's command line in memory (`arg_start..arg_end` of /proc/self/stat), blanked in the init.
    pub(super) command_line: Option<(usize, usize)>,
}

/// What a report is about.
pub(super) mod kind {
    /// Building the root failed: `step` is the stage (see `Stage`) or the op index, `detail` the errno.
    pub const SETUP_FAILED: u32 = 1;
    /// Step `step` started; `status` is its process id (in the parent's namespace only in open mode).
    pub const STEP_STARTED: u32 = 2;
    /// Step `step` ended: `status` its wait status, `detail` the processes it left running (killed).
    pub const STEP_ENDED: u32 = 3;
    /// Step `step` passed its time limit and was killed with all its processes.
    pub const STEP_TIMED_OUT: u32 = 4;
    /// Preparing step `step`'s process failed at stage `status` (see `Stage`), `detail` the errno.
    pub const STEP_SETUP_FAILED: u32 = 5;
}

/// A fixed-size message from the run's processes to the parent (atomic on a pipe).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Report {
    pub(super) kind: u32,
    pub(super) step: u32,
    pub(super) status: i32,
    pub(super) detail: i32,
}

/// Where a set-up failed (besides ops, which are reported by index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(super) enum Stage {
    DeathSignal = 1,
    Setgroups,
    UidMap,
    GidMap,
    CloseFds,
    PrivateMounts,
    EnterStage,
    PivotRoot,
    DetachHostRoot,
    RootReadOnly,
    EnterWorkdir,
    NotDumpable,
    Fork,
    Stdio,
    Signals,
    Limits,
    User,
    NoNewPrivileges,
    Landlock,
    CloseOnExec,
    Seccomp,
    Exec,
}

impl Stage {
    /// The stage with code `code`.
    pub(super) fn from_code(code: u32) -> Option<Stage> {
        use Stage::*;
        [
            DeathSignal,
            Setgroups,
            UidMap,
            GidMap,
            CloseFds,
            PrivateMounts,
            EnterStage,
            PivotRoot,
            DetachHostRoot,
            RootReadOnly,
            EnterWorkdir,
            NotDumpable,
            Fork,
            Stdio,
            Signals,
            Limits,
            User,
            NoNewPrivileges,
            Landlock,
            CloseOnExec,
            Seccomp,
            Exec,
        ]
        .into_iter()
        .find(|s| *s as u32 == code)
    }

    /// What was being done.
    pub(super) fn describe(self) -> &'static str {
        match self {
            Stage::DeathSignal => "asking for SIGKILL when the sandbox's thread ends",
            Stage::Setgroups => "denying setgroups in the user namespace",
            Stage::UidMap => "writing the user namespace's uid_map",
            Stage::GidMap => "writing the user namespace's gid_map",
            Stage::CloseFds => "closing inherited descriptors",
            Stage::PrivateMounts => "making the mount namespace private",
            Stage::EnterStage => "entering the new root",
            Stage::PivotRoot => "pivot_root to the new root",
            Stage::DetachHostRoot => "detaching the host's root",
            Stage::RootReadOnly => "making the new root read-only",
            Stage::EnterWorkdir => "entering the program's directory",
            Stage::NotDumpable => "making the run's init non-dumpable",
            Stage::Fork => "forking the program",
            Stage::Stdio => "redirecting standard input and output",
            Stage::Signals => "resetting signal handlers",
            Stage::Limits => "setting resource limits",
            Stage::User => "switching to the sandbox user",
            Stage::NoNewPrivileges => "setting no_new_privs",
            Stage::Landlock => "restricting file access with Landlock",
            Stage::CloseOnExec => "closing descriptors on exec",
            Stage::Seccomp => "installing the seccomp filter",
            Stage::Exec => "executing the program",
        }
    }
}

fn errno() -> i32 {
    unsafe { *libc::__errno_location() }
}

fn check(ret: libc::c_long) -> Result<(), i32> {
    if ret < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

fn send(fd: libc::c_int, report: Report) {
    unsafe {
        libc::write(fd, (&report as *const Report).cast(), std::mem::size_of::<Report>());
    }
}

/// A raw `fork` (clone with only SIGCHLD): the C library's `fork` could wait on
/// locks held by threads of the parent that do not exist here.
fn raw_fork() -> libc::c_long {
    unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0usize, 0usize, 0usize, 0usize) }
}

fn now() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn sleep_briefly() {
    let ts = libc::timespec { tv_sec: 0, tv_nsec: 2_000_000 };
    unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
}

fn write_file(path: &CStr, text: &[u8]) -> Result<(), i32> {
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(errno());
        }
        let n = libc::write(fd, text.as_ptr().cast(), text.len());
        let error = errno();
        libc::close(fd);
        if n != text.len() as isize {
            return Err(error);
        }
    }
    Ok(())
}

fn mount_setattr(path: *const c_char, flags: libc::c_uint, set: u64, clear: u64) -> Result<(), i32> {
    let attr = MountAttr { attr_set: set, attr_clr: clear, propagation: 0, userns_fd: 0 };
    check(unsafe {
        libc::syscall(libc::SYS_mount_setattr, libc::AT_FDCWD, path, flags, &attr as *const MountAttr, std::mem::size_of::<MountAttr>())
    })
}

/// Closes every descriptor not in `keep` (increasing).
fn close_all_except(keep: &[libc::c_int]) -> Result<(), i32> {
    let mut next: libc::c_uint = 0;
    for &fd in keep {
        let fd = fd as libc::c_uint;
        if fd > next {
            check(unsafe { libc::syscall(libc::SYS_close_range, next, fd - 1, 0u32) })?;
        }
        next = fd + 1;
    }
    check(unsafe { libc::syscall(libc::SYS_close_range, next, libc::c_uint::MAX, 0u32) })
}

impl Op {
    fn apply(&self) -> Result<(), i32> {
        unsafe {
            match self {
                Op::Mkdir(path) => check(libc::mkdir(path.as_ptr(), 0o755) as libc::c_long),
                Op::Touch(path) => {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC, 0o644);
                    check(fd as libc::c_long)?;
                    libc::close(fd);
                    Ok(())
                }
                Op::Symlink { target, link } => check(libc::symlink(target.as_ptr(), link.as_ptr()) as libc::c_long),
                Op::Bind { source, target, attr } => {
                    check(libc::mount(source.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null())
                        as libc::c_long)?;
                    mount_setattr(target.as_ptr(), libc::AT_RECURSIVE as libc::c_uint, *attr, 0)
                }
                Op::Tmpfs { target, options } => check(libc::mount(
                    c"tmpfs".as_ptr(),
                    target.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    options.as_ptr().cast(),
                ) as libc::c_long),
                Op::Proc(path) => check(libc::mount(
                    c"proc".as_ptr(),
                    path.as_ptr(),
                    c"proc".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                ) as libc::c_long),
                Op::Write { path, contents, owner } => {
                    let fd = libc::open(
                        path.as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                        0o644,
                    );
                    check(fd as libc::c_long)?;
                    let mut written = 0;
                    let mut result = Ok(());
                    while written < contents.len() {
                        let n = libc::write(fd, contents[written..].as_ptr().cast(), contents.len() - written);
                        if n <= 0 {
                            result = Err(errno());
                            break;
                        }
                        written += n as usize;
                    }
                    if let (Ok(()), Some(uid)) = (result, owner) {
                        result = check(libc::fchown(fd, *uid, *uid) as libc::c_long);
                    }
                    libc::close(fd);
                    result
                }
            }
        }
    }
}

/// The run's init: never returns. In the namespace modes it is PID 1 of a new
/// PID namespace; when it exits, the kernel kills every process left in it.
///
/// # Safety
/// Call only in the child of a raw clone, with `plan` prepared by the parent.
pub(super) unsafe fn run_init(plan: &RunPlan) -> ! {
    let fd = plan.report_fd;
    let setup_failed = |stage: u32, errno: i32| -> ! {
        send(fd, Report { kind: kind::SETUP_FAILED, step: stage, status: 0, detail: errno });
        unsafe { libc::_exit(126) }
    };
    let stage_failed = |stage: Stage, errno: i32| -> ! { setup_failed(stage as u32 | 0x8000_0000, errno) };
    // Die with the parent's thread, taking every process of the run along.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        stage_failed(Stage::DeathSignal, errno());
    }
    if let Some((uid_map, gid_map)) = &plan.id_maps {
        write_file(c"/proc/self/setgroups", b"deny").unwrap_or_else(|e| stage_failed(Stage::Setgroups, e));
        write_file(c"/proc/self/uid_map", uid_map.as_bytes()).unwrap_or_else(|e| stage_failed(Stage::UidMap, e));
        write_file(c"/proc/self/gid_map", gid_map.as_bytes()).unwrap_or_else(|e| stage_failed(Stage::GidMap, e));
    }
    close_all_except(&plan.keep_fds).unwrap_or_else(|e| stage_failed(Stage::CloseFds, e));
    let contained = plan.isolation != Isolation::Open;
    unsafe {
        if contained {
            check(libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null())
                as libc::c_long)
            .unwrap_or_else(|e| stage_failed(Stage::PrivateMounts, e));
            for (i, op) in plan.ops.iter().enumerate() {
                op.apply().unwrap_or_else(|e| setup_failed(i as u32, e));
            }
            // Swap roots: the staging tmpfs becomes "/", the host's root is stacked under it and detached.
            check(libc::chdir(plan.stage.as_ptr()) as libc::c_long).unwrap_or_else(|e| stage_failed(Stage::EnterStage, e));
            check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr())).unwrap_or_else(|e| stage_failed(Stage::PivotRoot, e));
            check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH) as libc::c_long)
                .unwrap_or_else(|e| stage_failed(Stage::DetachHostRoot, e));
            check(libc::chdir(c"/".as_ptr()) as libc::c_long).unwrap_or_else(|e| stage_failed(Stage::EnterStage, e));
            mount_setattr(c"/".as_ptr(), 0, MOUNT_ATTR_RDONLY, 0).unwrap_or_else(|e| stage_failed(Stage::RootReadOnly, e));
            // The run sees its init as `sandbox-init` with an empty command line, not the parent's.
            if let Some((start, end)) = plan.command_line {
                std::ptr::write_bytes(start as *mut u8, 0, end - start);
            }
            libc::prctl(libc::PR_SET_NAME, c"sandbox-init".as_ptr(), 0, 0, 0);
            // Nothing of the run may read this process's memory or environment through /proc/1.
            check(libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) as libc::c_long).unwrap_or_else(|e| stage_failed(Stage::NotDumpable, e));
        }
        check(libc::chdir(plan.workdir.as_ptr()) as libc::c_long).unwrap_or_else(|e| stage_failed(Stage::EnterWorkdir, e));
    }
    for (index, step) in plan.steps.iter().enumerate() {
        let step_index = index as u32;
        let pid = raw_fork();
        if pid < 0 {
            stage_failed(Stage::Fork, errno());
        }
        if pid == 0 {
            unsafe { run_program(plan, step, step_index) }
        }
        let pid = pid as libc::pid_t;
        send(fd, Report { kind: kind::STEP_STARTED, step: step_index, status: pid, detail: 0 });
        let deadline = now() + step.timeout;
        let mut status = 0;
        let ended = loop {
            // In a PID namespace every orphan of the run is this process's child: reap them all.
            let waited = unsafe { libc::waitpid(if contained { -1 } else { pid }, &mut status, libc::WNOHANG) };
            if waited == pid {
                break true;
            }
            if waited > 0 {
                continue;
            }
            if now() >= deadline {
                break false;
            }
            sleep_briefly();
        };
        let left = kill_the_rest(contained, pid);
        if !ended {
            send(fd, Report { kind: kind::STEP_TIMED_OUT, step: step_index, status: 0, detail: 0 });
            break;
        }
        send(fd, Report { kind: kind::STEP_ENDED, step: step_index, status, detail: left });
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 && left == 0) {
            break;
        }
    }
    unsafe { libc::_exit(0) }
}

/// Kills every process of the run but this one and reaps them; returns how
/// many were still running (zombies are reaped first and not counted). In open
/// mode only the program's process group can be found, and nothing is counted.
fn kill_the_rest(contained: bool, program: libc::pid_t) -> i32 {
    unsafe {
        if !contained {
            libc::kill(-program, libc::SIGKILL);
            libc::waitpid(program, std::ptr::null_mut(), 0);
            return 0;
        }
        while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
        // kill(-1) from a PID namespace's init reaches every process of that namespace but itself, and no
        // other. Repeated until none is left, since a process may have been forking while it was sent.
        let mut left = 0;
        while libc::kill(-1, libc::SIGKILL) == 0 {
            if libc::waitpid(-1, std::ptr::null_mut(), 0) <= 0 {
                break;
            }
            left += 1;
        }
        left
    }
}

/// A step's process: limits, user, Landlock, seccomp, then `execve`. Never returns.
unsafe fn run_program(plan: &RunPlan, step: &StepPlan, index: u32) -> ! {
    let fd = plan.report_fd;
    let failed = |stage: Stage, errno: i32| -> ! {
        send(fd, Report { kind: kind::STEP_SETUP_FAILED, step: index, status: stage as i32, detail: errno });
        unsafe { libc::_exit(127) }
    };
    unsafe {
        if plan.isolation == Isolation::Open {
            check(libc::setpgid(0, 0) as libc::c_long).unwrap_or_else(|e| failed(Stage::Stdio, e));
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        if null < 0 {
            failed(Stage::Stdio, errno());
        }
        for (from, to) in [(null, 0), (step.stdout_fd, 1), (step.stderr_fd, 2)] {
            check(libc::dup2(from, to) as libc::c_long).unwrap_or_else(|e| failed(Stage::Stdio, e));
            check(libc::fcntl(to, libc::F_SETFD, 0) as libc::c_long).unwrap_or_else(|e| failed(Stage::Stdio, e));
        }
        // Ignored signals stay ignored across exec (Rust ignores SIGPIPE): restore every default, unblock all.
        for signal in 1..32 {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        check(libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) as libc::c_long)
            .unwrap_or_else(|e| failed(Stage::Signals, e));
        let limits = step.limits;
        for (resource, value) in [
            (libc::RLIMIT_AS, limits.memory),
            (libc::RLIMIT_CPU, limits.cpu_seconds),
            (libc::RLIMIT_FSIZE, limits.file_bytes),
            (libc::RLIMIT_CORE, 0),
            (libc::RLIMIT_NPROC, limits.processes),
        ] {
            let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
            check(libc::setrlimit(resource, &limit) as libc::c_long).unwrap_or_else(|e| failed(Stage::Limits, e));
        }
        if let Some(uid) = plan.run_as {
            // Raw calls: the C library's versions signal every thread it believes the process has.
            check(libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>())).unwrap_or_else(|e| failed(Stage::User, e));
            check(libc::syscall(libc::SYS_setresgid, uid, uid, uid)).unwrap_or_else(|e| failed(Stage::User, e));
            check(libc::syscall(libc::SYS_setresuid, uid, uid, uid)).unwrap_or_else(|e| failed(Stage::User, e));
        }
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as libc::c_long).unwrap_or_else(|e| failed(Stage::NoNewPrivileges, e));
        if let Some(policy) = &plan.landlock {
            policy.restrict_self().unwrap_or_else(|e| failed(Stage::Landlock, e));
        }
        check(libc::syscall(libc::SYS_close_range, 3u32, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC))
            .unwrap_or_else(|e| failed(Stage::CloseOnExec, e));
        if !plan.seccomp.is_empty() {
            super::seccomp::install(&plan.seccomp).unwrap_or_else(|e| failed(Stage::Seccomp, e));
        }
        libc::execve(step.program.as_ptr(), step.argv.as_ptr(), step.envp.as_ptr());
        failed(Stage::Exec, errno())
    }
}
