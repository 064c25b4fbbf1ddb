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

/// All files under `root` whose name `accept` takes (relative paths with `/`),
/// skipping [`SKIPPED_DIRS`] and symbolic links, sorted.
fn files_under(root: &Path, accept: &dyn Fn(&str) -> bool) -> Result<Vec<String>> {
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
            } else if file_type.is_file() && accept(name) {
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

/// A deterministic selection of the files under `root` that `accept` takes by
/// name: sorted path order, each whole if UTF-8, at most `max_file` bytes and
/// still within `budget` bytes; generated files are left out.
pub fn select_sources(root: &Path, accept: &dyn Fn(&str) -> bool, budget: usize, max_file: usize) -> Result<Vec<Source>> {
    let mut total = 0usize;
    let mut chosen = Vec::new();
    for rel in files_under(root, accept)? {
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

/// Bytes taken from each built-in corpus.
const BUILTIN_BUDGET: usize = 800_000;
/// Largest file taken into a built-in corpus, in bytes.
const BUILTIN_MAX_FILE: usize = 40_000;

/// The corpora `@name` can name in an experiment file, with what each is made of.
pub const BUILTINS: &[(&str, &str)] = &[
    ("python-stdlib", "Python: python3's standard library (no tests, no site-packages)"),
    ("cpp-libstdc++", "C++: the libstdc++ headers under /usr/include/c++/<newest>"),
    ("js-npm", "JavaScript: the npm package bundled with node (/usr/lib/node_modules/npm or /usr/share/nodejs/npm)"),
    ("java-jdk-src", "Java: java.base sources from a JDK's lib/src.zip (JAVA_HOME or /usr/lib/jvm/*)"),
    ("english-licenses", "English prose: /usr/share/common-licenses and /usr/share/doc/*/copyright"),
];

/// The files of built-in corpus `name`, a deterministic selection of about
/// [`BUILTIN_BUDGET`] bytes, or `None` when this machine does not have it.
/// Java sources are extracted from `src.zip` into `scratch`.
pub fn builtin(name: &str, scratch: &Path) -> Result<Option<Vec<PathBuf>>> {
    let pick = |root: &Path, accept: &dyn Fn(&str) -> bool, budget: usize| -> Result<Option<Vec<PathBuf>>> {
        let chosen = select_sources(root, accept, budget, BUILTIN_MAX_FILE)?;
        Ok((!chosen.is_empty()).then(|| chosen.into_iter().map(|s| root.join(s.rel)).collect()))
    };
    match name {
        "python-stdlib" => match python_stdlib_dir() {
            Ok(dir) => pick(&dir, &|n| n.ends_with(".py"), 2 * BUILTIN_BUDGET),
            Err(_) => Ok(None),
        },
        "cpp-libstdc++" => {
            let Some(dir) = newest_subdir(Path::new("/usr/include/c++"))? else { return Ok(None) };
            pick(&dir, &|n| !n.contains('.') || [".h", ".hpp", ".tcc", ".cc"].iter().any(|e| n.ends_with(e)), BUILTIN_BUDGET)
        }
        "js-npm" => {
            for root in ["/usr/lib/node_modules/npm", "/usr/share/nodejs/npm", "/usr/local/lib/node_modules/npm"] {
                let root = Path::new(root);
                if root.is_dir() {
                    return pick(root, &|n| n.ends_with(".js") && !n.ends_with(".min.js"), BUILTIN_BUDGET);
                }
            }
            Ok(None)
        }
        "java-jdk-src" => match jdk_src_zip() {
            Some(zip) => extract_java(&zip, &scratch.join("java-jdk-src")).map(Some),
            None => Ok(None),
        },
        "english-licenses" => {
            let mut files = Vec::new();
            let licenses = Path::new("/usr/share/common-licenses");
            if licenses.is_dir() {
                files.extend(files_under(licenses, &|_| true)?.into_iter().map(|rel| licenses.join(rel)));
            }
            if let Ok(entries) = fs::read_dir("/usr/share/doc") {
                let mut docs: Vec<PathBuf> =
                    entries.filter_map(|e| e.ok()).map(|e| e.path().join("copyright")).filter(|p| p.is_file()).collect();
                docs.sort();
                files.extend(docs);
            }
            let mut total = 0;
            let mut chosen = Vec::new();
            for f in files {
                let len = fs::metadata(&f).map(|m| m.len() as usize).unwrap_or(0);
                if len == 0 || len > BUILTIN_MAX_FILE || total + len > BUILTIN_BUDGET || fs::read_to_string(&f).is_err() {
                    continue;
                }
                total += len;
                chosen.push(f);
            }
            Ok((!chosen.is_empty()).then_some(chosen))
        }
        other => bail!(
            "unknown built-in corpus @{other}; known: {}",
            BUILTINS.iter().map(|(n, _)| format!("@{n}")).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The subdirectory of `dir` with the highest version-like name (`12` > `9`).
fn newest_subdir(dir: &Path) -> Result<Option<PathBuf>> {
    let Ok(entries) = fs::read_dir(dir) else { return Ok(None) };
    let mut best: Option<(Vec<u64>, PathBuf)> = None;
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let version: Vec<u64> = name.split('.').map(|p| p.parse().unwrap_or(0)).collect();
        if best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, path));
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// A JDK's `lib/src.zip`: under JAVA_HOME, else the first in /usr/lib/jvm in name order.
fn jdk_src_zip() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("JAVA_HOME") {
        let zip = PathBuf::from(home).join("lib/src.zip");
        if zip.is_file() {
            return Some(zip);
        }
    }
    let mut found: Vec<PathBuf> =
        fs::read_dir("/usr/lib/jvm").ok()?.filter_map(|e| e.ok()).map(|e| e.path().join("lib/src.zip")).filter(|p| p.is_file()).collect();
    found.sort();
    found.into_iter().next()
}

/// Extracts a deterministic selection of `java.base/java/**.java` from `zip` into
/// `dir` (files already there with the right size are kept) and returns their paths.
fn extract_java(zip: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    use std::io::Read;
    let file = fs::File::open(zip).with_context(|| format!("opening {}", zip.display()))?;
    let mut archive = zip::ZipArchive::new(file).with_context(|| format!("{} is not a readable zip file", zip.display()))?;
    let mut names: Vec<(String, u64)> = (0..archive.len())
        .filter_map(|i| archive.by_index(i).ok().map(|e| (e.name().to_string(), e.size())))
        .filter(|(n, size)| {
            n.starts_with("java.base/java/") && n.ends_with(".java") && !n.contains("..") && *size > 0 && *size as usize <= BUILTIN_MAX_FILE
        })
        .collect();
    names.sort();
    let mut total = 0usize;
    let mut out = Vec::new();
    for (name, size) in names {
        if total + size as usize > BUILTIN_BUDGET {
            continue;
        }
        total += size as usize;
        let dest = dir.join(&name);
        if fs::metadata(&dest).map(|m| m.len()).ok() != Some(size) {
            let mut text = Vec::with_capacity(size as usize);
            archive.by_name(&name)?.read_to_end(&mut text).with_context(|| format!("reading {name} from {}", zip.display()))?;
            write_atomic(&dest, &text)?;
        }
        out.push(dest);
    }
    if out.is_empty() {
        bail!("{} holds no java.base/java/**.java sources", zip.display());
    }
    Ok(out)
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

        let chosen = select_sources(root, &|n| n.ends_with(".py"), 1 << 20, 1 << 20).unwrap();
        let rels: Vec<&str> = chosen.iter().map(|s| s.rel.as_str()).collect();
        assert_eq!(rels, ["abc.py", "json/__init__.py", "json/decoder.py", "unittest/case.py", "zlib_helper.py"]);
        assert_eq!(chosen, select_sources(root, &|n| n.ends_with(".py"), 1 << 20, 1 << 20).unwrap());
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
            select_sources(root, &|n| n.ends_with(".py"), budget, max_file).unwrap().into_iter().map(|s| s.rel).collect()
        };
        assert_eq!(select(95, 1000), ["a.py", "c.py", "d.py"]);
        assert_eq!(select(1000, 45), ["a.py", "d.py"]);
    }
}
