//! System prerequisites: what the builds, tests and demo need from the system,
//! and installing it with apt-get where that is possible.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};
use clap::Args;

use crate::process;

/// Options of `cargo xtask prereqs`.
#[derive(Debug, Args)]
pub struct PrereqArgs {
    /// Only check and report; never install anything.
    #[arg(long)]
    pub check: bool,
}

/// The option of `test`, `demo` and `bench` that skips the prerequisite step.
#[derive(Debug, Args)]
pub struct SkipPrereqs {
    /// Do not check (or install) the system prerequisites.
    #[arg(long)]
    pub skip_prereqs: bool,
}

impl SkipPrereqs {
    /// Checks (and where possible installs) the prerequisites unless skipped.
    pub fn ensure(&self) -> Result<()> {
        if self.skip_prereqs {
            eprintln!("prerequisites: skipped (--skip-prereqs)");
            return Ok(());
        }
        ensure(&PrereqArgs { check: false })
    }
}

/// One system prerequisite.
struct Prereq {
    /// What it is.
    name: &'static str,
    /// The Debian/Ubuntu package that provides it.
    package: &'static str,
    /// What needs it.
    why: &'static str,
    /// Where it was found, or None.
    find: fn() -> Option<String>,
}

/// Every prerequisite, in the order they are reported.
const PREREQS: &[Prereq] = &[
    Prereq {
        name: "OpenBLAS",
        package: "libopenblas-dev",
        why: "the cpu device (burn ndarray with openblas-system) links it",
        find: find_openblas,
    },
    Prereq { name: "Vulkan loader", package: "libvulkan1", why: "the wgpu device", find: find_vulkan_loader },
    Prereq {
        name: "lavapipe (Mesa's software Vulkan driver)",
        package: "mesa-vulkan-drivers",
        why: "wgpu tests on machines without a GPU",
        find: find_lavapipe,
    },
    Prereq { name: "pip", package: "python3-pip", why: "fetching models from PyPI", find: find_pip },
    Prereq { name: "pkg-config", package: "pkg-config", why: "locating system libraries at build time", find: find_pkg_config },
    Prereq {
        name: "python3",
        package: "python3",
        why: "running Python programs in the code tasks (HumanEval-X, MBPP)",
        find: find_python3,
    },
    Prereq { name: "g++", package: "g++", why: "compiling C++ programs in the HumanEval-X cpp task", find: find_gxx },
    Prereq {
        name: "javac and java",
        package: "default-jdk-headless",
        why: "compiling and running Java programs in the HumanEval-X java task",
        find: find_jdk,
    },
    Prereq { name: "node", package: "nodejs", why: "running JavaScript programs in the HumanEval-X js task", find: find_node },
    Prereq {
        name: "OpenSSL headers",
        package: "libssl-dev",
        why: "HumanEval-X CPP/162 (openssl/md5.h, linked with -lcrypto)",
        find: find_openssl_headers,
    },
    Prereq {
        name: "Boost headers",
        package: "libboost-dev",
        why: "HumanEval-X CPP/22 and CPP/137 (boost/any.hpp)",
        find: find_boost_headers,
    },
];

fn find_python3() -> Option<String> {
    in_path("python3").then(|| "python3".into())
}

fn find_gxx() -> Option<String> {
    in_path("g++").then(|| "g++".into())
}

fn find_jdk() -> Option<String> {
    (in_path("javac") && in_path("java")).then(|| "javac, java".into())
}

fn find_node() -> Option<String> {
    in_path("node").then(|| "node".into())
}

/// The first of `paths` that exists.
fn find_file(paths: &[&str]) -> Option<String> {
    paths.iter().find(|p| Path::new(p).exists()).map(|p| p.to_string())
}

fn find_openssl_headers() -> Option<String> {
    find_file(&["/usr/include/openssl/md5.h", "/usr/local/include/openssl/md5.h"])
}

fn find_boost_headers() -> Option<String> {
    find_file(&["/usr/include/boost/any.hpp", "/usr/local/include/boost/any.hpp"])
}

/// The Debian multiarch directory name of this machine, e.g. `x86_64-linux-gnu`.
fn multiarch() -> String {
    format!("{}-linux-gnu", std::env::consts::ARCH)
}

/// Directories where system libraries live.
fn lib_dirs() -> Vec<PathBuf> {
    let ma = multiarch();
    vec![
        PathBuf::from("/usr/lib").join(&ma),
        PathBuf::from("/lib").join(&ma),
        PathBuf::from("/usr/lib64"),
        PathBuf::from("/usr/lib"),
        PathBuf::from("/usr/local/lib"),
    ]
}

/// The output of `ldconfig -p`, or empty when ldconfig cannot run.
fn ldconfig_cache() -> String {
    for program in ["ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"] {
        if let Ok(out) = Command::new(program).arg("-p").output() {
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
        }
    }
    String::new()
}

/// The path `ldconfig -p` output gives for exactly the library `soname`.
fn ldconfig_lookup(cache: &str, soname: &str) -> Option<String> {
    cache.lines().find_map(|line| {
        let line = line.trim();
        let (name, rest) = line.split_once(' ')?;
        if name != soname {
            return None;
        }
        rest.split_once("=>").map(|(_, path)| path.trim().to_string())
    })
}

/// A library found through the ldconfig cache or in the usual directories.
fn find_library(soname: &str) -> Option<String> {
    ldconfig_lookup(&ldconfig_cache(), soname)
        .or_else(|| lib_dirs().into_iter().map(|d| d.join(soname)).find(|p| p.exists()).map(|p| p.display().to_string()))
}

fn find_openblas() -> Option<String> {
    find_library("libopenblas.so")
        .or_else(|| process::succeeds("pkg-config", &["--exists", "openblas"]).then(|| "pkg-config openblas".into()))
}

fn find_vulkan_loader() -> Option<String> {
    find_library("libvulkan.so.1")
}

/// Whether a file name is that of lavapipe's ICD manifest (`lvp_icd*.json`).
fn is_lavapipe_icd(name: &str) -> bool {
    name.starts_with("lvp_icd") && name.ends_with(".json")
}

/// The first lavapipe ICD manifest in `dirs`.
fn find_icd_in(dirs: &[&Path]) -> Option<String> {
    dirs.iter().find_map(|dir| {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| is_lavapipe_icd(&e.file_name().to_string_lossy()))
            .map(|e| e.path())
            .collect();
        names.sort();
        names.first().map(|p| p.display().to_string())
    })
}

fn find_lavapipe() -> Option<String> {
    find_icd_in(&[Path::new("/usr/share/vulkan/icd.d"), Path::new("/etc/vulkan/icd.d"), Path::new("/usr/local/share/vulkan/icd.d")])
}

fn find_pip() -> Option<String> {
    if process::succeeds("python3", &["-m", "pip", "--version"]) {
        Some("python3 -m pip".into())
    } else if process::succeeds("pip3", &["--version"]) {
        Some("pip3".into())
    } else {
        None
    }
}

fn find_pkg_config() -> Option<String> {
    process::succeeds("pkg-config", &["--version"]).then(|| "pkg-config".into())
}

/// Checks every prerequisite, prints what was found, and returns the missing ones.
fn check() -> Vec<&'static Prereq> {
    let mut missing = Vec::new();
    for p in PREREQS {
        match (p.find)() {
            Some(found) => eprintln!("  found    {} ({}): {found}", p.name, p.package),
            None => {
                eprintln!("  MISSING  {} ({}), needed for {}", p.name, p.package, p.why);
                missing.push(p);
            }
        }
    }
    missing
}

/// Whether this process runs as root.
fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Whether `program` is an executable found in PATH.
fn in_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// The apt-get command line that installs `packages`.
fn apt_command_line(packages: &[&str], sudo: bool) -> String {
    let sudo = if sudo { "sudo " } else { "" };
    format!(
        "{sudo}apt-get update && {sudo}env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {}",
        packages.join(" ")
    )
}

/// Checks the prerequisites; installs missing ones with apt-get when running as
/// root on Debian/Ubuntu (unless `args.check`), else fails with the command to run.
pub fn ensure(args: &PrereqArgs) -> Result<()> {
    if !cfg!(target_os = "linux") {
        eprintln!(
            "prerequisites: automatic checks exist for Linux only; make sure OpenBLAS, \
             a Vulkan driver, pip and pkg-config are installed"
        );
        return Ok(());
    }
    eprintln!("prerequisites:");
    let missing = check();
    if missing.is_empty() {
        eprintln!("prerequisites: all found");
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|p| p.package).collect();
    let apt = in_path("apt-get");
    if args.check || !apt || !is_root() {
        let how = if apt {
            format!("run: {}", apt_command_line(&packages, !is_root()))
        } else {
            format!(
                "install them with your system's package manager (Debian/Ubuntu packages: {}; \
                 on Debian/Ubuntu: {})",
                packages.join(" "),
                apt_command_line(&packages, true)
            )
        };
        bail!("missing prerequisites: {}\n{how}", packages.join(", "));
    }
    eprintln!("prerequisites: installing {} with apt-get", packages.join(" "));
    process::run_checked(Command::new("apt-get").arg("update").env("DEBIAN_FRONTEND", "noninteractive"))?;
    process::run_checked(
        Command::new("apt-get").args(["install", "-y", "--no-install-recommends"]).args(&packages).env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    eprintln!("prerequisites: after installing:");
    let still: Vec<&str> = check().iter().map(|p| p.package).collect();
    if !still.is_empty() {
        bail!("apt-get installed {} but these are still not found: {}", packages.join(" "), still.join(", "));
    }
    eprintln!("prerequisites: installed {}", packages.join(" "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LDCONFIG: &str = "\
1234 libs found in cache `/etc/ld.so.cache'
\tlibvulkan.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libvulkan.so.1
\tlibopenblas.so.0 (libc6,x86-64) => /lib/x86_64-linux-gnu/libopenblas.so.0
\tlibopenblas.so (libc6,x86-64) => /lib/x86_64-linux-gnu/libopenblas.so
";

    #[test]
    fn ldconfig_lookup_matches_exact_soname() {
        assert_eq!(ldconfig_lookup(LDCONFIG, "libopenblas.so").as_deref(), Some("/lib/x86_64-linux-gnu/libopenblas.so"));
        assert_eq!(ldconfig_lookup(LDCONFIG, "libvulkan.so.1").as_deref(), Some("/lib/x86_64-linux-gnu/libvulkan.so.1"));
        assert_eq!(ldconfig_lookup(LDCONFIG, "libvulkan.so"), None);
        assert_eq!(ldconfig_lookup("", "libopenblas.so"), None);
    }

    #[test]
    fn lavapipe_icd_is_found_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("radeon_icd.x86_64.json"), "{}").unwrap();
        assert_eq!(find_icd_in(&[dir.path()]), None);
        std::fs::write(dir.path().join("lvp_icd.x86_64.json"), "{}").unwrap();
        let found = find_icd_in(&[Path::new("/nonexistent"), dir.path()]).unwrap();
        assert!(found.ends_with("lvp_icd.x86_64.json"));
    }

    #[test]
    fn apt_command_is_exact() {
        assert_eq!(
            apt_command_line(&["libvulkan1", "pkg-config"], true),
            "sudo apt-get update && sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y \
             --no-install-recommends libvulkan1 pkg-config"
        );
    }
}
