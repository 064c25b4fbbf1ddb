//! The cargo workspace xtask belongs to: its root, cargo itself, its targets.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The workspace root (the parent of the xtask crate).
///
/// Read at run time from the `CARGO_MANIFEST_DIR` that `cargo xtask` sets,
/// not from the path baked in at build time: a build cache shared by
/// checkouts in other directories can hand one checkout an xtask binary
/// built in another (cargo does not rebuild it when only the path changed).
pub fn root() -> &'static Path {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .filter(|dir| dir.join("Cargo.toml").is_file())
            .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
        manifest_dir.parent().expect("xtask lives inside the workspace").to_path_buf()
    })
}

/// A `cargo` command (the cargo that runs xtask when there is one) run in the workspace root.
///
/// The variables `cargo run` sets for xtask itself are removed: build
/// scripts such as ring's declare `rerun-if-env-changed` on some of them
/// (`CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`, `OUT_DIR`, ...), so a cargo run
/// from xtask with them set would rebuild ring, openblas-src and with them
/// all of burn after every cargo run from a shell, and the other way round.
pub fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_by_cargo_run) {
            cmd.env_remove(&name);
        }
    }
    cmd.current_dir(root());
    cmd
}

/// Whether `name` is one of the variables cargo sets for the program that
/// `cargo run` starts (rather than configuration the user set for cargo).
fn set_by_cargo_run(name: &str) -> bool {
    const EXACT: [&str; 9] = [
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_RUSTC_CURRENT_DIR",
        "CARGO_TARGET_TMPDIR",
        "OUT_DIR",
    ];
    EXACT.contains(&name) || name.starts_with("CARGO_PKG_") || name.starts_with("CARGO_BIN_EXE_")
}

/// Whether `cargo metadata` JSON lists a target of `kind` named `name` in `package`.
fn has_target(metadata: &serde_json::Value, package: &str, kind: &str, name: &str) -> bool {
    let Some(packages) = metadata["packages"].as_array() else {
        return false;
    };
    packages
        .iter()
        .filter(|p| p["name"] == package)
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .any(|t| t["name"] == name && t["kind"].as_array().is_some_and(|kinds| kinds.iter().any(|k| k == kind)))
}

/// Fails with a clear message unless `package` has a target of `kind` (bin, bench, ...) named `name`.
pub fn require_target(package: &str, kind: &str, name: &str) -> Result<()> {
    let output =
        cargo().args(["metadata", "--no-deps", "--format-version", "1", "--offline"]).output().context("could not run `cargo metadata`")?;
    if !output.status.success() {
        bail!("`cargo metadata` failed ({}):\n{}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).context("parsing `cargo metadata` output")?;
    if !has_target(&metadata, package, kind, name) {
        bail!(
            "this workspace has no {kind} target `{name}` in package `{package}` yet \
             (looked in {}); it is needed for this command",
            root().join(package).join("Cargo.toml").display()
        );
    }
    Ok(())
}

/// Builds every binary of the workspace in release mode and returns the
/// directory holding them. `cargo build --release --workspace` resolves the
/// same features as `cargo test --release --workspace`, so the demo, the
/// benches and the tests share one build of the dependencies.
pub fn build_binaries() -> Result<PathBuf> {
    crate::process::run_checked(cargo().args(["build", "--release", "--workspace", "--bins"]))?;
    let output =
        cargo().args(["metadata", "--no-deps", "--format-version", "1", "--offline"]).output().context("could not run `cargo metadata`")?;
    if !output.status.success() {
        bail!("`cargo metadata` failed ({}):\n{}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).context("parsing `cargo metadata` output")?;
    let target = metadata["target_directory"].as_str().context("`cargo metadata` gave no target_directory")?;
    Ok(PathBuf::from(target).join("release"))
}

/// Makes `path` absolute against the current directory (children run in the workspace root).
pub fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_targets_in_metadata() {
        let metadata = serde_json::json!({
            "packages": [
                {"name": "model", "targets": [
                    {"name": "model", "kind": ["lib"]},
                    {"name": "forward", "kind": ["bench"]}
                ]},
                {"name": "evaluate", "targets": [{"name": "evaluate", "kind": ["lib"]}]}
            ]
        });
        assert!(has_target(&metadata, "model", "bench", "forward"));
        assert!(!has_target(&metadata, "model", "bin", "forward"));
        assert!(!has_target(&metadata, "evaluate", "bin", "evaluate"));
        assert!(!has_target(&metadata, "artifacts", "lib", "artifacts"));
    }

    #[test]
    fn root_holds_the_workspace_manifest() {
        assert!(root().join("Cargo.toml").is_file());
        assert!(root().join("xtask").is_dir());
    }

    #[test]
    fn spawned_cargo_drops_what_cargo_run_set_and_keeps_user_configuration() {
        for name in ["CARGO_MANIFEST_DIR", "CARGO_PKG_NAME", "CARGO_PKG_VERSION_MAJOR", "OUT_DIR", "CARGO_BIN_EXE_evaluate"] {
            assert!(set_by_cargo_run(name), "{name}");
        }
        for name in ["CARGO_TARGET_DIR", "CARGO_HOME", "CARGO", "CARGO_TERM_COLOR", "PATH", "SUBPRUNE_HOME"] {
            assert!(!set_by_cargo_run(name), "{name}");
        }
    }
}

/// Where experiment files' `data:REL` paths point: `SUBPRUNE_DATA`, else the
/// `shared/data` directory beside the workspace.
pub fn data_root() -> PathBuf {
    match std::env::var_os("SUBPRUNE_DATA") {
        Some(dir) => PathBuf::from(dir),
        None => root().join("../shared/data"),
    }
}
