//! Landlock, through its system calls: each program restricts itself, just
//! before `exec`, to reading and executing the allow-list, reading and
//! writing its device files and doing anything in its own directory. Where
//! the kernel's Landlock is new enough, TCP is denied and signals and
//! abstract UNIX sockets are confined to the program's own processes.

use std::ffi::CString;

const CREATE_RULESET_VERSION: u32 = 1;
const RULE_PATH_BENEATH: u32 = 1;

/// File-system rights (`LANDLOCK_ACCESS_FS_*`).
pub(super) const EXECUTE: u64 = 1 << 0;
pub(super) const WRITE_FILE: u64 = 1 << 1;
pub(super) const READ_FILE: u64 = 1 << 2;
pub(super) const READ_DIR: u64 = 1 << 3;
const REFER: u64 = 1 << 13;
pub(super) const TRUNCATE: u64 = 1 << 14;
pub(super) const IOCTL_DEV: u64 = 1 << 15;
/// The rights that apply to a file (the others apply to directories only).
const FILE_RIGHTS: u64 = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV;
/// Every right, of every ABI this module knows.
pub(super) const ALL: u64 = (1 << 16) - 1;

/// Network rights (ABI 4): binding and connecting TCP ports.
const NET_BIND_TCP: u64 = 1 << 0;
const NET_CONNECT_TCP: u64 = 1 << 1;
/// Scopes (ABI 6): abstract UNIX sockets and signals stay within the domain.
const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
const SCOPE_SIGNAL: u64 = 1 << 1;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The Landlock ABI version of the running kernel, or why there is none.
pub(super) fn abi() -> Result<u32, String> {
    let ret = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<RulesetAttr>(), 0usize, CREATE_RULESET_VERSION) };
    if ret >= 1 {
        Ok(ret as u32)
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

/// The file-system rights an ABI version handles.
fn handled_fs(abi: u32) -> u64 {
    let mut rights = (1 << 13) - 1;
    if abi >= 2 {
        rights |= REFER;
    }
    if abi >= 3 {
        rights |= TRUNCATE;
    }
    if abi >= 5 {
        rights |= IOCTL_DEV;
    }
    rights
}

/// One path (in the program's root) and the rights granted beneath it.
pub(super) struct Rule {
    path: CString,
    access: u64,
}

/// What a program may do, prepared before fork.
pub(super) struct Policy {
    attr: RulesetAttr,
    rules: Vec<Rule>,
}

impl Policy {
    /// An empty policy for ABI `abi`: nothing on the file system, no TCP,
    /// signals and abstract sockets within the program's own processes.
    pub(super) fn new(abi: u32) -> Policy {
        Policy {
            attr: RulesetAttr {
                handled_access_fs: handled_fs(abi),
                handled_access_net: if abi >= 4 { NET_BIND_TCP | NET_CONNECT_TCP } else { 0 },
                scoped: if abi >= 6 { SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL } else { 0 },
            },
            rules: Vec::new(),
        }
    }

    /// Grants `access` beneath `path` (a file gets only the rights that apply to files).
    pub(super) fn allow(&mut self, path: CString, access: u64, is_dir: bool) {
        let access = access & self.attr.handled_access_fs & if is_dir { ALL } else { FILE_RIGHTS };
        if access != 0 {
            self.rules.push(Rule { path, access });
        }
    }

    /// Restricts the calling thread and its future children (after fork,
    /// before exec: no allocation). Needs `PR_SET_NO_NEW_PRIVS`.
    ///
    /// # Safety
    /// Only system calls; safe to call in a child between fork and exec.
    pub(super) unsafe fn restrict_self(&self) -> Result<(), i32> {
        let errno = || unsafe { *libc::__errno_location() };
        let ruleset = unsafe {
            libc::syscall(libc::SYS_landlock_create_ruleset, &self.attr as *const RulesetAttr, std::mem::size_of::<RulesetAttr>(), 0u32)
        } as libc::c_int;
        if ruleset < 0 {
            return Err(errno());
        }
        let result = (|| {
            for rule in &self.rules {
                let fd = unsafe { libc::open(rule.path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
                if fd < 0 {
                    return Err(errno());
                }
                let beneath = PathBeneathAttr { allowed_access: rule.access, parent_fd: fd };
                let ret = unsafe {
                    libc::syscall(libc::SYS_landlock_add_rule, ruleset, RULE_PATH_BENEATH, &beneath as *const PathBeneathAttr, 0u32)
                };
                let error = errno();
                unsafe { libc::close(fd) };
                if ret != 0 {
                    return Err(error);
                }
            }
            if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) } != 0 {
                return Err(errno());
            }
            Ok(())
        })();
        unsafe { libc::close(ruleset) };
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restricted_process_reaches_only_its_rules() {
        let abi = match abi() {
            Ok(abi) => abi,
            Err(why) => {
                eprintln!("skipped: no Landlock here ({why})");
                return;
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let inside = CString::new(dir.path().join("inside.txt").into_os_string().into_encoded_bytes()).unwrap();
        let mut policy = Policy::new(abi);
        policy.allow(CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap(), ALL, true);
        // A file rule given directory rights keeps only the file rights (else the kernel refuses it).
        policy.allow(c"/etc/hostname".into(), READ_FILE | READ_DIR, false);
        assert_eq!(policy.rules.last().map(|r| r.access), Some(READ_FILE));
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || policy.restrict_self().is_err() {
                    libc::_exit(100);
                }
                let created = libc::open(inside.as_ptr(), libc::O_WRONLY | libc::O_CREAT, 0o600);
                let outside = libc::open(c"/etc/passwd".as_ptr(), libc::O_RDONLY);
                let denied = *libc::__errno_location();
                let listed = libc::open(c"/".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
                libc::_exit(match (created >= 0, outside < 0 && denied == libc::EACCES, listed < 0) {
                    (true, true, true) => 0,
                    (false, _, _) => 1,
                    (_, false, _) => 2,
                    _ => 3,
                });
            }
            let mut status = 0;
            assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
            assert_eq!(libc::WEXITSTATUS(status), 0, "status {status:#x}");
        }
        assert!(dir.path().join("inside.txt").exists());
    }
}
