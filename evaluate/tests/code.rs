//! The code tasks end to end: canonical solutions through the whole harness
//! (`evaluate humaneval-x --canonical`, `evaluate mbpp --canonical`), wrong and
//! mixed completions, and the sandbox's containment of misbehaving programs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use evaluate::sandbox::{Language, Sandbox, SandboxConfig};

fn data() -> PathBuf {
    testkit::shared_data()
}

fn evaluate(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_evaluate")).args(args).output().expect("evaluate runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The value printed on the `name: value` line of stdout.
fn metric(stdout: &str, name: &str) -> f64 {
    let line = stdout.lines().find(|l| l.starts_with(&format!("{name}: "))).unwrap_or_else(|| panic!("no {name} line in {stdout}"));
    line[name.len() + 2..].trim().parse().expect("a number")
}

/// Runs the canonical solutions of the first `limit` problems and checks
/// that every one passed, in the printed metric and in the items artifact.
fn canonical(task: &[&str], data_file: &Path, limit: usize) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.parquet");
    let limit_s = limit.to_string();
    let mut args: Vec<&str> = task.to_vec();
    args.extend(["--data", data_file.to_str().unwrap(), "--canonical", "--limit", &limit_s, "--quiet", "--out", out.to_str().unwrap()]);
    let (ok, stdout, stderr) = evaluate(&args);
    assert!(ok, "{task:?} failed: {stderr}");
    assert_eq!(stdout.lines().last(), Some("pass@1: 1.0000"), "{task:?}: {stdout}\n{stderr}");
    let (_, items) = artifacts::read_items(&artifacts::items_path_for(&out)).unwrap();
    assert_eq!(items.len(), limit);
    for row in &items {
        assert_eq!(row.passed, Some(true), "{task:?} item {}: {:?}", row.item, row.reason);
        assert_eq!(row.generation.as_deref().map(str::trim), row.gold.as_deref().map(str::trim), "the canonical solution is what ran");
    }
    let (_, results) = artifacts::read_results(&out).unwrap();
    assert_eq!(results.len(), 1, "pass@10 needs 10 samples, so only pass@1");
    assert_eq!(results[0].metric, "pass@1");
    assert_eq!(results[0].n, limit as u64);
}

#[test]
fn humaneval_x_canonical_python() {
    canonical(&["humaneval-x", "--lang", "python"], &data().join("humaneval-x/humaneval_python.jsonl.gz"), 20);
}

#[test]
fn humaneval_x_canonical_cpp() {
    canonical(&["humaneval-x", "--lang", "cpp"], &data().join("humaneval-x/humaneval_cpp.jsonl.gz"), 10);
}

#[test]
fn humaneval_x_canonical_java() {
    canonical(&["humaneval-x", "--lang", "java"], &data().join("humaneval-x/humaneval_java.jsonl.gz"), 10);
}

#[test]
fn humaneval_x_canonical_js() {
    canonical(&["humaneval-x", "--lang", "js"], &data().join("humaneval-x/humaneval_js.jsonl.gz"), 20);
}

#[test]
fn mbpp_canonical() {
    canonical(&["mbpp"], &data().join("mbpp/mbpp.jsonl"), 20);
}

/// Runs the canonical solutions of the first `limit` problems under
/// `--protocol instruct`, each as an answer that holds only the body (or,
/// for MBPP, the whole function): every one must pass, the results must be
/// recorded under the instruct task name and the protocol in the provenance.
fn canonical_instruct(task: &[&str], data_file: &Path, limit: usize, task_name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.parquet");
    let limit_s = limit.to_string();
    let mut args: Vec<&str> = task.to_vec();
    args.extend(["--data", data_file.to_str().unwrap(), "--canonical", "--protocol", "instruct", "--limit", &limit_s, "--quiet"]);
    args.extend(["--out", out.to_str().unwrap()]);
    let (ok, stdout, stderr) = evaluate(&args);
    assert!(ok, "{task:?} failed: {stderr}");
    assert_eq!(stdout.lines().last(), Some("pass@1: 1.0000"), "{task:?}: {stdout}\n{stderr}");
    let (provenance, results) = artifacts::read_results(&out).unwrap();
    assert_eq!(results[0].task, task_name);
    assert_eq!(provenance.params["protocol"], "instruct");
    let (items_provenance, items) = artifacts::read_items(&artifacts::items_path_for(&out)).unwrap();
    assert_eq!(items_provenance.params["protocol"], "instruct");
    for row in &items {
        let gold = row.gold.as_deref().unwrap().trim();
        assert!(row.generation.as_deref().unwrap().contains(gold), "{task:?} item {}: the source holds the answer", row.item);
    }
}

#[test]
fn instruct_protocol_completes_bodies_with_the_signature() {
    let hx = data().join("humaneval-x");
    canonical_instruct(&["humaneval-x", "--lang", "python"], &hx.join("humaneval_python.jsonl.gz"), 20, "humaneval-x/python-instruct");
    canonical_instruct(&["humaneval-x", "--lang", "cpp"], &hx.join("humaneval_cpp.jsonl.gz"), 5, "humaneval-x/cpp-instruct");
    canonical_instruct(&["humaneval-x", "--lang", "java"], &hx.join("humaneval_java.jsonl.gz"), 5, "humaneval-x/java-instruct");
    canonical_instruct(&["humaneval-x", "--lang", "js"], &hx.join("humaneval_js.jsonl.gz"), 10, "humaneval-x/js-instruct");
    canonical_instruct(&["mbpp"], &data().join("mbpp/mbpp.jsonl"), 10, "mbpp-instruct");
}

#[test]
fn instruct_protocol_refuses_a_model_without_chat_template() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("tiny");
    testkit::write_hf_dir(&model_dir, &testkit::TINY, &testkit::tiny_weights(&testkit::TINY, 5), model::safetensors::StoredDtype::F32);
    let data_file = data().join("humaneval-x/humaneval_python.jsonl.gz");
    let args = ["humaneval-x", "--lang", "python", "--data", data_file.to_str().unwrap(), "--limit", "1", "--device", "cpu", "--quiet"];
    let (ok, _, stderr) = evaluate(&[&args[..], &["--protocol", "instruct", "--model", model_dir.to_str().unwrap()]].concat());
    assert!(!ok);
    assert!(stderr.contains("tokenizer_config.json") && stderr.contains("--protocol completion works"), "{stderr}");
}

#[test]
fn wrong_and_mixed_completions() {
    let dir = tempfile::tempdir().unwrap();
    // Problems Python/0..2: sample 0 is the canonical solution, sample 1 returns None.
    let records = artifacts::records::read_records(&data().join("humaneval-x/humaneval_python.jsonl.gz")).unwrap();
    let mut lines = String::new();
    let mut wrong = String::new();
    for r in &records[..3] {
        let id = r["task_id"].as_str().unwrap();
        let good = r["canonical_solution"].as_str().unwrap();
        lines += &serde_json::json!({"task_id": id, "completion": good}).to_string();
        lines += "\n";
        let bad = serde_json::json!({"task_id": id, "completion": "    return None\n"}).to_string();
        lines += &bad;
        lines += "\n";
        wrong += &bad;
        wrong += "\n";
    }
    let mixed_path = dir.path().join("mixed.jsonl");
    std::fs::write(&mixed_path, lines).unwrap();
    let wrong_path = dir.path().join("wrong.jsonl");
    std::fs::write(&wrong_path, wrong).unwrap();
    let data_file = data().join("humaneval-x/humaneval_python.jsonl.gz");
    let base = ["humaneval-x", "--lang", "python", "--data", data_file.to_str().unwrap(), "--limit", "3", "--quiet"];

    let (ok, stdout, stderr) = evaluate(&[&base[..], &["--completions", wrong_path.to_str().unwrap()]].concat());
    assert!(ok, "{stderr}");
    assert_eq!(metric(&stdout, "pass@1"), 0.0);

    // n = 2, c = 1 on each problem: pass@1 = 1/2, pass@2 = 1 - C(1,2)/C(2,2) = 1.
    let (ok, stdout, stderr) = evaluate(&[&base[..], &["--completions", mixed_path.to_str().unwrap(), "--k", "1,2"]].concat());
    assert!(ok, "{stderr}");
    assert_eq!(metric(&stdout, "pass@1"), 0.5);
    assert_eq!(metric(&stdout, "pass@2"), 1.0);

    // MBPP: a function of the wrong name fails every test.
    let mbpp_wrong = dir.path().join("mbpp.jsonl");
    let lines: String = (11..14)
        .map(|id| serde_json::json!({"task_id": id, "completion": "def nothing():\n    pass\n[DONE]"}).to_string() + "\n")
        .collect();
    std::fs::write(&mbpp_wrong, lines).unwrap();
    let mbpp = data().join("mbpp/mbpp.jsonl");
    let (ok, stdout, stderr) =
        evaluate(&["mbpp", "--data", mbpp.to_str().unwrap(), "--limit", "3", "--quiet", "--completions", mbpp_wrong.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert_eq!(metric(&stdout, "pass@1"), 0.0);
}

#[test]
fn missing_data_is_a_clear_error() {
    let (ok, _, stderr) = evaluate(&["mbpp", "--canonical"]);
    assert!(!ok);
    assert!(stderr.contains("--data is required") && stderr.contains("mbpp.jsonl"), "{stderr}");
    let (ok, _, stderr) = evaluate(&["humaneval-x", "--lang", "cpp", "--canonical", "--data", "/nonexistent/humaneval_cpp.jsonl.gz"]);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/humaneval_cpp.jsonl.gz") && stderr.contains("HumanEval-X cpp"), "{stderr}");
    // The Python file given for --lang java is refused, naming the file.
    let py = data().join("humaneval-x/humaneval_python.jsonl.gz");
    let (ok, _, stderr) = evaluate(&["humaneval-x", "--lang", "java", "--canonical", "--data", py.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("humaneval_python.jsonl.gz") && stderr.contains("Java/"), "{stderr}");
}

/// Processes whose command line or working directory mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if entry.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let cmd = std::fs::read(entry.path().join("cmdline")).map(|c| String::from_utf8_lossy(&c).replace('\0', " ")).unwrap_or_default();
        let cwd = std::fs::read_link(entry.path().join("cwd")).map(|p| p.display().to_string()).unwrap_or_default();
        if cmd.contains(needle) || cwd.contains(needle) {
            found.push(format!("{}: {cmd} (in {cwd})", entry.file_name().to_string_lossy()));
        }
    }
    found
}

#[test]
fn sandbox_contains_misbehaving_programs() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("escaped.txt");
    let config = SandboxConfig {
        timeout: Duration::from_secs(2),
        memory_mb: 512,
        jobs: 2,
        root: Some(root.path().to_path_buf()),
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::new(config, &[Language::Python, Language::Cpp]).expect("a sandbox with network isolation");
    let marker = format!("{}", root.path().display());
    let programs: Vec<(&str, Language, String, &[&str])> = vec![
        ("infinite loop", Language::Python, "while True:\n    pass\n".into(), &["timeout"]),
        (
            "fork bomb",
            Language::Python,
            "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n".into(),
            &["timeout"],
        ),
        ("unbounded allocation", Language::Python, "x = []\nwhile True:\n    x.append(bytearray(10**7))\n".into(), &["memory"]),
        (
            "unbounded allocation in C++",
            Language::Cpp,
            "#include<vector>\nint main(){ std::vector<std::vector<char>> v; while(true) v.emplace_back(10000000, 'x'); }\n".into(),
            &["memory"],
        ),
        (
            "network connection",
            Language::Python,
            "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\n".into(),
            &["exit code 1", "Network is unreachable"],
        ),
        (
            "write outside its directory",
            Language::Python,
            format!("open({:?}, 'w').write('escaped')\n", target.display().to_string()),
            &["exit code 1", "Read-only file system"],
        ),
        (
            "write into the temporary directory",
            Language::Python,
            format!("open({:?}, 'w').write('escaped')\n", root.path().join("sibling.txt").display().to_string()),
            &["exit code 1", "Read-only file system"],
        ),
    ];
    let runs: Vec<(Language, String)> = programs.iter().map(|(_, l, s, _)| (*l, s.clone())).collect();
    let outcomes = sandbox.run_all(&runs, &|| {});
    for ((what, _, _, signs), outcome) in programs.iter().zip(outcomes) {
        let outcome = outcome.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(!outcome.passed, "{what} passed");
        for sign in *signs {
            assert!(outcome.reason.contains(sign), "{what}: reason `{}` lacks `{sign}`", outcome.reason);
        }
    }
    assert!(!target.exists(), "a program wrote outside its directory");
    let left: Vec<_> = std::fs::read_dir(root.path()).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let procs = processes_mentioning(&marker);
    assert!(procs.is_empty(), "processes left: {procs:?}");

    // A passing program and a failing one, so the limits do not fail everything.
    let ok = sandbox.run(Language::Python, "import os\nopen('here.txt', 'w').write('x')\nassert os.path.exists('here.txt')\n").unwrap();
    assert!(ok.passed, "{}", ok.reason);
    let bad = sandbox.run(Language::Python, "assert 1 == 2\n").unwrap();
    assert!(!bad.passed && bad.reason.starts_with("exit code 1"), "{}", bad.reason);
}
