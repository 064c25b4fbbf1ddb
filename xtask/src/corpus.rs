//! Domain text found on the machine: a deterministic selection of Python source
//! from python3's standard library.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Directory names never descended into: tests and installed third-party packages.
const SKIPPED_DIRS: &[&str] = &["test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"];

/// A Python source file chosen for the corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Path relative to the library root, with `/` separators.
    pub rel: String,
    /// The file's text.
    pub text: String,
}

/// What was written by [`write_corpus`].
#[derive(Debug, Clone)]
pub struct CorpusSummary {
    /// The corpus text file.
    pub path: PathBuf,
    /// The file listing the included sources.
    pub manifest: PathBuf,
    /// Number of source files included.
    pub files: usize,
    /// Size of the corpus in bytes.
    pub bytes: usize,
}

/// Where python3's standard library is (`sysconfig.get_paths()["stdlib"]`).
pub fn python_stdlib_dir() -> Result<PathBuf> {
    let output = Command::new("python3")
        .args(["-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"])
        .output()
        .context("could not run python3 (install it, e.g. `apt-get install -y python3`)")?;
    if !output.status.success() {
        bail!("python3 could not tell where its standard library is: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !dir.is_dir() {
        bail!("python3 reports its standard library at {}, which is not a directory", dir.display());
    }
    Ok(dir)
}

/// All `.py` files under `root` (relative paths with `/`), skipping [`SKIPPED_DIRS`]
/// and symbolic links, sorted.
fn python_files(root: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel_dir) = stack.pop() {
        let dir = root.join(&rel_dir);
        let entries = fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let file_type = entry.file_type()?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let rel = rel_dir.join(name);
            if file_type.is_dir() {
                if !SKIPPED_DIRS.contains(&name) {
                    stack.push(rel);
                }
            } else if file_type.is_file() && name.ends_with(".py") {
                let parts: Vec<&str> = rel.iter().filter_map(|c| c.to_str()).collect();
                found.push(parts.join("/"));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Whether a file is generated per machine rather than written by people
/// (`_sysconfigdata_*.py` holds the build configuration of this Python).
fn is_generated(rel: &str) -> bool {
    rel.rsplit('/').next().is_some_and(|name| name.starts_with("_sysconfigdata"))
}

/// A deterministic selection of Python sources under `root`: files in sorted path
/// order, each taken whole if it is UTF-8, at most `max_file` bytes, and still
/// fits in `budget` bytes; generated files are left out.
pub fn select_python_sources(root: &Path, budget: usize, max_file: usize) -> Result<Vec<Source>> {
    let mut total = 0usize;
    let mut chosen = Vec::new();
    for rel in python_files(root)? {
        if is_generated(&rel) {
            continue;
        }
        let path = root.join(&rel);
        let len = fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?.len();
        let Ok(len) = usize::try_from(len) else {
            continue;
        };
        if len == 0 || len > max_file || total + len > budget {
            continue;
        }
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let Ok(text) = String::from_utf8(bytes) else {
            continue;
        };
        total += text.len();
        chosen.push(Source { rel, text });
    }
    Ok(chosen)
}

/// Writes `sources` joined by blank lines to `path` (atomically), and their list to
/// `<path>.files` (one relative path a line, after a `# root: ...` line).
pub fn write_corpus(root: &Path, sources: &[Source], path: &Path) -> Result<CorpusSummary> {
    if sources.is_empty() {
        bail!("no Python source files found under {}", root.display());
    }
    let mut text = String::new();
    for s in sources {
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        text.push_str(s.text.trim_end());
        text.push('\n');
    }
    let mut manifest = format!("# root: {}\n", root.display());
    for s in sources {
        manifest.push_str(&s.rel);
        manifest.push('\n');
    }
    let manifest_path = PathBuf::from(format!("{}.files", path.display()));
    write_atomic(path, text.as_bytes())?;
    write_atomic(&manifest_path, manifest.as_bytes())?;
    Ok(CorpusSummary { path: path.to_path_buf(), manifest: manifest_path, files: sources.len(), bytes: text.len() })
}

/// Writes `data` to `path` through a temporary file in the same directory and a rename.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.tmp-{}", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(), std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn selection_is_sorted_and_skips_tests_and_packages() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        put(root, "zlib_helper.py", "z = 1\n");
        put(root, "abc.py", "a = 1\n");
        put(root, "json/__init__.py", "j = 1\n");
        put(root, "json/decoder.py", "d = 1\n");
        put(root, "test/test_abc.py", "t = 1\n");
        put(root, "unittest/test/test_case.py", "t = 2\n");
        put(root, "lib2to3/tests/data.py", "t = 3\n");
        put(root, "idlelib/idle_test/t.py", "t = 4\n");
        put(root, "site-packages/numpy/core.py", "n = 1\n");
        put(root, "unittest/case.py", "c = 1\n");
        put(root, "notes.txt", "not python\n");
        put(root, "empty.py", "");
        put(root, "_sysconfigdata__linux_x86_64-linux-gnu.py", "build_time_vars = {}\n");
        fs::write(root.join("latin1.py"), b"x = '\xe9'\n").unwrap();

        let chosen = select_python_sources(root, 1 << 20, 1 << 20).unwrap();
        let rels: Vec<&str> = chosen.iter().map(|s| s.rel.as_str()).collect();
        assert_eq!(rels, ["abc.py", "json/__init__.py", "json/decoder.py", "unittest/case.py", "zlib_helper.py"]);
        assert_eq!(chosen, select_python_sources(root, 1 << 20, 1 << 20).unwrap());
    }

    #[test]
    fn selection_respects_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        put(root, "a.py", &"a".repeat(40));
        put(root, "b.py", &"b".repeat(100));
        put(root, "c.py", &"c".repeat(50));
        put(root, "d.py", &"d".repeat(5));
        let select = |budget, max_file| -> Vec<String> {
            select_python_sources(root, budget, max_file).unwrap().into_iter().map(|s| s.rel).collect()
        };
        assert_eq!(select(95, 1000), ["a.py", "c.py", "d.py"]);
        assert_eq!(select(1000, 45), ["a.py", "d.py"]);
    }

    #[test]
    fn corpus_and_manifest_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("lib");
        put(&root, "a.py", "a = 1\n\n");
        put(&root, "b/c.py", "c = 2\n");
        let sources = select_python_sources(&root, 1000, 1000).unwrap();
        let out = dir.path().join("out/corpus.txt");
        let summary = write_corpus(&root, &sources, &out).unwrap();
        assert_eq!(fs::read_to_string(&out).unwrap(), "a = 1\n\n\nc = 2\n");
        assert_eq!(summary.files, 2);
        assert_eq!(summary.bytes, 14);
        let manifest = fs::read_to_string(summary.manifest).unwrap();
        assert!(manifest.ends_with("a.py\nb/c.py\n"), "{manifest}");
        assert!(write_corpus(&root, &[], &out).is_err());
    }
}
