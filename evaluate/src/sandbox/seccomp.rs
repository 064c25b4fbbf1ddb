//! The system-call filter of sandboxed programs: a classic-BPF seccomp program,
//! built once by the parent and installed by every program just before `exec`.
//!
//! Denied calls fail with `EPERM` (so a program sees an ordinary failure and
//! reports it) except `clone3`, which fails with `ENOSYS` so that C libraries
//! fall back to `clone`, whose flags the filter can inspect. A call made for
//! another architecture (x86_64's `int 0x80` i386 calls, x32 calls) is denied.

use libc::sock_filter;

/// `AUDIT_ARCH_X86_64`: `EM_X86_64`, 64-bit, little-endian.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = libc::EM_X86_64 as u32 | AUDIT_ARCH_64BIT | AUDIT_ARCH_LE;
/// `AUDIT_ARCH_AARCH64`: `EM_AARCH64`, 64-bit, little-endian.
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = libc::EM_AARCH64 as u32 | AUDIT_ARCH_64BIT | AUDIT_ARCH_LE;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const AUDIT_ARCH_64BIT: u32 = 0x8000_0000;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const AUDIT_ARCH_LE: u32 = 0x4000_0000;

/// Offsets in `struct seccomp_data`: the call number, the architecture and the
/// low 32 bits of the first argument (both supported architectures are little-endian).
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
const ARG0_LOW_OFFSET: u32 = 16;

/// Namespace flags of `clone` (its low byte is the exit signal, so `CLONE_NEWTIME`, 0x80, is not among them).
const CLONE_NAMESPACES: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32;
/// Namespace flags of `unshare`.
const UNSHARE_NAMESPACES: u32 = CLONE_NAMESPACES | libc::CLONE_NEWTIME as u32;

/// Calls no test program needs, denied whatever their arguments: debugging
/// other processes, mounting, namespaces, keyrings, BPF, kernel modules,
/// io_uring (it can open sockets behind the filter's back), kexec, perf,
/// userfaultfd, file handles and settings of the whole machine.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const DENIED: &[libc::c_long] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pidfd_getfd,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_setns,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_bpf,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_lookup_dcookie,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_quotactl_fd,
    libc::SYS_syslog,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    libc::SYS_vhangup,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
];

fn statement(code: u32, k: u32) -> sock_filter {
    sock_filter { code: code as u16, jt: 0, jf: 0, k }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code: code as u16, jt, jf, k }
}

fn load(offset: u32) -> sock_filter {
    statement(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset)
}

fn ret(action: u32) -> sock_filter {
    statement(libc::BPF_RET | libc::BPF_K, action)
}

fn fail_with(errno: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA)
}

/// A call checked by its first argument: denied when `arg0 & mask != 0`
/// (`mask`), or when `arg0 != value` (`only`).
enum FirstArgument {
    Mask(u32),
    Only(u32),
}

/// The filter for this architecture, or `None` where the sandbox has none
/// (architectures other than x86_64 and aarch64).
pub(super) fn filter() -> Option<Vec<sock_filter>> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let eperm = fail_with(libc::EPERM);
        let mut program =
            vec![load(ARCH_OFFSET), jump(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, AUDIT_ARCH, 1, 0), ret(eperm), load(NR_OFFSET)];
        #[cfg(target_arch = "x86_64")]
        {
            // x32 calls: the same architecture field, numbers with bit 30 set.
            program.push(jump(libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K, 0x4000_0000, 0, 1));
            program.push(ret(eperm));
        }
        for &nr in DENIED {
            program.push(jump(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, nr as u32, 0, 1));
            program.push(ret(eperm));
        }
        program.push(jump(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, libc::SYS_clone3 as u32, 0, 1));
        program.push(ret(fail_with(libc::ENOSYS)));
        let checked = [
            (libc::SYS_clone, FirstArgument::Mask(CLONE_NAMESPACES)),
            (libc::SYS_unshare, FirstArgument::Mask(UNSHARE_NAMESPACES)),
            (libc::SYS_socket, FirstArgument::Only(libc::AF_UNIX as u32)),
            (libc::SYS_socketpair, FirstArgument::Only(libc::AF_UNIX as u32)),
        ];
        for (nr, check) in checked {
            // Five instructions: on another call, jump past the four that follow.
            program.push(jump(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, nr as u32, 0, 4));
            program.push(load(ARG0_LOW_OFFSET));
            program.push(match check {
                FirstArgument::Mask(mask) => jump(libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K, mask, 0, 1),
                FirstArgument::Only(value) => jump(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, value, 1, 0),
            });
            program.push(ret(eperm));
            program.push(ret(libc::SECCOMP_RET_ALLOW));
        }
        program.push(ret(libc::SECCOMP_RET_ALLOW));
        Some(program)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        None
    }
}

/// Installs `program` on the calling thread (after fork, before exec: no
/// allocation). Needs `PR_SET_NO_NEW_PRIVS` or `CAP_SYS_ADMIN`.
///
/// # Safety
/// Only system calls; safe to call in a child between fork and exec.
pub(super) unsafe fn install(program: &[sock_filter]) -> Result<(), i32> {
    let fprog = libc::sock_fprog { len: program.len() as libc::c_ushort, filter: program.as_ptr() as *mut sock_filter };
    let ret = unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &fprog as *const libc::sock_fprog) };
    if ret == 0 {
        Ok(())
    } else {
        Err(unsafe { *libc::__errno_location() })
    }
}

#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
mod tests {
    use super::*;

    /// Runs `probe` in a forked child under the filter; its exit code is the result.
    fn under_filter(probe: fn() -> i32) -> i32 {
        let program = filter().expect("a filter for this architecture");
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0, "fork");
            if pid == 0 {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || install(&program).is_err() {
                    libc::_exit(100);
                }
                libc::_exit(probe());
            }
            let mut status = 0;
            assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
            assert!(libc::WIFEXITED(status), "the probe died: {status:#x}");
            libc::WEXITSTATUS(status)
        }
    }

    fn errno() -> i32 {
        unsafe { *libc::__errno_location() }
    }

    /// 0 when `ret` is -1 with `expected` as errno, else 1 (succeeded) or 2 (another errno).
    fn failed_with(ret: libc::c_long, expected: i32) -> i32 {
        if ret != -1 {
            1
        } else if errno() != expected {
            2
        } else {
            0
        }
    }

    #[test]
    fn denied_calls_fail_with_eperm() {
        fn probe() -> i32 {
            unsafe {
                // Each result is taken right after its call, before errno changes.
                let results = [
                    failed_with(libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0), libc::EPERM),
                    failed_with(libc::syscall(libc::SYS_mount, c"none".as_ptr(), c"/".as_ptr(), c"tmpfs".as_ptr(), 0, 0), libc::EPERM),
                    failed_with(libc::syscall(libc::SYS_umount2, c"/".as_ptr(), 0), libc::EPERM),
                    failed_with(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER), libc::EPERM),
                    failed_with(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWTIME), libc::EPERM),
                    failed_with(libc::syscall(libc::SYS_setns, 0, 0), libc::EPERM),
                    failed_with(libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0), libc::EPERM),
                    failed_with(libc::syscall(libc::SYS_bpf, 0, 0, 0), libc::EPERM),
                    failed_with(libc::syscall(libc::SYS_perf_event_open, 0, 0, -1, -1, 0), libc::EPERM),
                    failed_with(libc::syscall(libc::SYS_userfaultfd, 0), libc::EPERM),
                    failed_with(libc::syscall(libc::SYS_io_uring_setup, 1, 0), libc::EPERM),
                    failed_with(libc::syscall(libc::SYS_clone3, 0, 0), libc::ENOSYS),
                ];
                if let Some(i) = results.iter().position(|&r| r != 0) {
                    return 10 + 2 * i as i32 + results[i] - 1;
                }
                // A new user namespace through clone is refused too.
                let r = libc::syscall(libc::SYS_clone, libc::CLONE_NEWUSER | libc::SIGCHLD, 0, 0, 0, 0);
                if r == 0 {
                    libc::_exit(0);
                }
                if failed_with(r, libc::EPERM) != 0 {
                    return 40;
                }
                0
            }
        }
        assert_eq!(under_filter(probe), 0);
    }

    #[test]
    fn only_unix_sockets_open() {
        fn probe() -> i32 {
            unsafe {
                for (family, kind) in [
                    (libc::AF_INET, libc::SOCK_STREAM),
                    (libc::AF_INET6, libc::SOCK_DGRAM),
                    (libc::AF_PACKET, libc::SOCK_RAW),
                    (libc::AF_NETLINK, libc::SOCK_RAW),
                ] {
                    if failed_with(libc::socket(family, kind, 0) as libc::c_long, libc::EPERM) != 0 {
                        return 1;
                    }
                }
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                if fd < 0 {
                    return 2;
                }
                libc::close(fd);
                let mut pair = [0; 2];
                if libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr()) != 0 {
                    return 3;
                }
                0
            }
        }
        assert_eq!(under_filter(probe), 0);
    }

    #[test]
    fn ordinary_calls_still_work() {
        fn probe() -> i32 {
            unsafe {
                // fork (clone without namespace flags), unshare of the file table, threads.
                let pid = libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0);
                if pid == 0 {
                    libc::_exit(7);
                }
                let mut status = 0;
                if pid < 0 || libc::waitpid(pid as i32, &mut status, 0) != pid as i32 || libc::WEXITSTATUS(status) != 7 {
                    return 1;
                }
                if libc::unshare(libc::CLONE_FILES) != 0 {
                    return 2;
                }
                let thread = std::thread::spawn(|| 5);
                if thread.join().ok() != Some(5) {
                    return 3;
                }
                0
            }
        }
        assert_eq!(under_filter(probe), 0);
    }
}
