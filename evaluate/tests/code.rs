//! The code tasks end to end: canonical solutions through the whole harness
//! (`evaluate humaneval-x --canonical`, `evaluate mbpp --canonical`), wrong and
//! mixed completions, and the sandbox's containment of misbehaving programs.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use evaluate::sandbox::{Isolation, Language, Sandbox, SandboxConfig};

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
        assert_eq!(row.pred.as_deref().map(str::trim), row.gold.as_deref().map(str::trim), "the canonical solution is what ran");
        assert_eq!(row.generation, row.gold, "the answer is recorded as given");
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
/// for MBPP, the whole function): every one must pass and stay in the
/// source, the results must be recorded under the instruct task name and
/// the protocol in the provenance.
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
    // Every line of the answer is in the source (Python's sanitizer may
    // move imports first and rejoin lines).
    for row in &items {
        assert_eq!(row.generation, row.gold, "{task:?} item {}: the answer is recorded as given", row.item);
        let source: Vec<&str> = row.pred.as_deref().unwrap().lines().map(str::trim_end).collect();
        for line in row.gold.as_deref().unwrap().lines().map(str::trim_end).filter(|l| !l.trim().is_empty()) {
            assert!(source.contains(&line), "{task:?} item {}: the source lacks the answer's line {line:?}", row.item);
        }
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

/// A hostile program, the reason its run must fail with (every sign in it), and what it tried.
struct Attempt {
    what: &'static str,
    language: Language,
    source: String,
    signs: &'static [&'static str],
}

fn attempt(what: &'static str, language: Language, source: impl Into<String>, signs: &'static [&'static str]) -> Attempt {
    Attempt { what, language, source: source.into(), signs }
}

/// Runs every attempt in `sandbox`; each must fail with its reason. Prints the list tried.
fn expect_failures(sandbox: &Sandbox, attempts: &[Attempt]) {
    let runs: Vec<(Language, String)> = attempts.iter().map(|a| (a.language, a.source.clone())).collect();
    let outcomes = sandbox.run_all(&runs, &|| {});
    let mut failures = Vec::new();
    for (attempt, outcome) in attempts.iter().zip(outcomes) {
        let outcome = outcome.unwrap_or_else(|e| panic!("{}: {e}", attempt.what));
        eprintln!("{:<6} {:<48} -> {}", attempt.language.name(), attempt.what, outcome.reason);
        if outcome.passed {
            failures.push(format!("{} passed: {}{}", attempt.what, outcome.stdout, outcome.stderr));
        }
        for sign in attempt.signs {
            if !outcome.reason.contains(sign) {
                failures.push(format!("{}: reason `{}` lacks `{sign}`", attempt.what, outcome.reason));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A sandbox for Python and C++ programs whose directories are made in `root`.
fn hostile_sandbox(root: &Path) -> Sandbox {
    let config = SandboxConfig {
        timeout: Duration::from_secs(3),
        memory_mb: 512,
        jobs: 2,
        root: Some(root.to_path_buf()),
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::new(config, &[Language::Python, Language::Cpp]).expect("a sandbox with isolation");
    assert_ne!(sandbox.isolation(), Isolation::Open);
    assert!(sandbox.describe().contains("seccomp filter"), "{}", sandbox.describe());
    sandbox
}

/// Python that calls the C library's `name(args)` and raises the errno as an OSError when it fails.
fn python_libc_call(call: &str) -> String {
    format!(
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nif libc.{call} != 0:\n    e = ctypes.get_errno()\n    raise OSError(e, os.strerror(e))\n"
    )
}

#[test]
fn sandbox_contains_misbehaving_programs() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("escaped.txt");
    let secret = outside.path().join("secret.txt");
    std::fs::write(&secret, "secret").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let sandbox = hostile_sandbox(root.path());
    let marker = format!("{}", root.path().display());
    let toolchain_dir = evaluate::sandbox::find_in_path("g++").unwrap().canonicalize().unwrap().parent().unwrap().join("escaped.txt");
    let write = |path: &Path| format!("open({:?}, 'w').write('escaped')\n", path.display().to_string());
    let attempts = vec![
        attempt("read a root-only file outside", Language::Python, format!("print(open({:?}).read())\n", secret.display().to_string()), &[
            "exit code 1",
            "FileNotFoundError",
        ]),
        attempt("read /etc/shadow", Language::Python, "print(open('/etc/shadow').read())\n", &["exit code 1", "FileNotFoundError"]),
        attempt("read the init's environment", Language::Python, "print(open('/proc/1/environ').read())\n", &[
            "exit code 1",
            "PermissionError",
        ]),
        attempt(
            "read /etc/shadow in C++",
            Language::Cpp,
            "#include <cstdio>\nint main(){ FILE* f = std::fopen(\"/etc/shadow\", \"r\"); if (!f) { std::perror(\"/etc/shadow\"); return 1; } return 0; }\n",
            &["exit code 1", "No such file or directory"],
        ),
        attempt("write outside its directory", Language::Python, write(&target), &["exit code 1", "FileNotFoundError"]),
        attempt("write into the sandbox's root", Language::Python, write(&root.path().join("sibling.txt")), &[
            "exit code 1",
            "Read-only file system",
        ]),
        attempt("write into the toolchain", Language::Python, write(&toolchain_dir), &["exit code 1", "Read-only file system"]),
        attempt("write to /", Language::Python, write(Path::new("/escaped.txt")), &["exit code 1", "Read-only file system"]),
        attempt("exhaust memory", Language::Python, "x = []\nwhile True:\n    x.append(bytearray(10**7))\n", &["memory"]),
        attempt(
            "exhaust memory in C++",
            Language::Cpp,
            "#include<vector>\nint main(){ std::vector<std::vector<char>> v; while(true) v.emplace_back(10000000, 'x'); }\n",
            &["memory"],
        ),
        attempt(
            "fill the disk with many files",
            Language::Python,
            "for i in range(1000):\n    open(f'fill{i}', 'wb').write(b'x' * (8 << 20))\n",
            &["disk limit (64 MiB)", "No space left on device"],
        ),
        attempt("write one huge file", Language::Python, "open('huge', 'wb').write(b'x' * (64 << 20))\n", &["file size limit"]),
        attempt("flood standard output", Language::Python, "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", &[
            "file size limit",
        ]),
    ];
    expect_failures(&sandbox, &attempts);
    // The CPU hogs run after the rest, so that they cannot starve a program of its time limit.
    let hogs = vec![
        attempt(
            "fork bomb",
            Language::Python,
            "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
            &["timeout"],
        ),
        attempt("infinite loop", Language::Python, "while True:\n    pass\n", &["timeout"]),
    ];
    expect_failures(&sandbox, &hogs);
    assert!(!target.exists(), "a program wrote outside its directory");
    assert!(!toolchain_dir.exists(), "a program wrote into the toolchain");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "secret");
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

/// A child process killed (and reaped) when the test ends, passed or failed.
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sandbox_hides_and_protects_host_processes() {
    let root = tempfile::tempdir().unwrap();
    let sandbox = hostile_sandbox(root.path());
    // A host process the programs look for and try to kill.
    let mut host = KilledOnDrop(Command::new("sleep").arg("987654.321").spawn().expect("sleep runs"));
    let host_pid = host.0.id();
    let marker = "987654.321";
    let attempts = vec![
        attempt(
            "list host processes in /proc",
            Language::Python,
            format!(
                "import os\npids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\nfound = [p for p in pids if b{marker:?} in open(f'/proc/{{p}}/cmdline', 'rb').read()]\nassert found, f'no host process visible; the namespace holds {{pids}}'\n"
            ),
            &["exit code 1", "AssertionError: no host process visible; the namespace holds [1, 2]"],
        ),
        attempt(
            "list host processes with ps",
            Language::Python,
            format!(
                "import subprocess\nout = subprocess.run(['ps', '-eo', 'pid,args'], capture_output=True, text=True, check=True).stdout\nassert {marker:?} in out, 'ps shows only ' + ', '.join(out.split(chr(10))[1:])\n"
            ),
            &["exit code 1", "AssertionError: ps shows only"],
        ),
        attempt(
            "read the parent's command line as the init's",
            Language::Python,
            "line = open('/proc/1/cmdline', 'rb').read().strip(b'\\0')\nassert line, 'the init shows no command line'\nprint(line)\n",
            &["exit code 1", "AssertionError: the init shows no command line"],
        ),
        attempt("signal a host process", Language::Python, format!("import os\nos.kill({host_pid}, 9)\n"), &[
            "exit code 1",
            "ProcessLookupError",
        ]),
        // No other process of the run exists, and the init cannot be signalled from inside: ESRCH.
        attempt("signal every process (kill -1)", Language::Python, "import os, signal\nos.kill(-1, signal.SIGKILL)\n", &[
            "exit code 1",
            "ProcessLookupError",
        ]),
        attempt(
            "leave a daemon running",
            Language::Python,
            "import os, time\npid = os.fork()\nif pid == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(60)\n    os._exit(0)\nos.waitpid(pid, 0)\n",
            &["left 1 process running after it exited"],
        ),
        attempt("ptrace the init", Language::Python, python_libc_call("ptrace(16, 1, None, None)"), &[
            "exit code 1",
            "PermissionError: [Errno 1] Operation not permitted",
        ]),
        attempt(
            "ptrace itself in C++",
            Language::Cpp,
            "#include <sys/ptrace.h>\n#include <cstdio>\nint main(){ if (ptrace(PTRACE_TRACEME, 0, nullptr, nullptr) == -1) { std::perror(\"ptrace\"); return 1; } return 0; }\n",
            &["exit code 1", "ptrace: Operation not permitted"],
        ),
        attempt("mount a file system", Language::Python, python_libc_call("mount(b'none', b'.', b'tmpfs', 0, None)"), &[
            "exit code 1",
            "PermissionError: [Errno 1] Operation not permitted",
        ]),
        attempt("unshare a user namespace", Language::Python, python_libc_call("unshare(0x10000000 | 0x00020000)"), &[
            "exit code 1",
            "PermissionError: [Errno 1] Operation not permitted",
        ]),
    ];
    expect_failures(&sandbox, &attempts);
    assert!(host.0.try_wait().unwrap().is_none(), "the host process was killed");
    let left: Vec<_> = std::fs::read_dir(root.path()).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let procs = processes_mentioning(&root.path().display().to_string());
    assert!(procs.is_empty(), "processes left: {procs:?}");
}

#[test]
fn sandbox_has_no_network() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let sandbox = hostile_sandbox(root.path());
    // A UNIX socket of the host, on the file system and in the abstract namespace.
    let socket_path = outside.path().join("host.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket_path).unwrap();
    let abstract_name = format!("subprune-sandbox-test-{}", std::process::id());
    let address = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap();
    let _abstract_listener = std::os::unix::net::UnixListener::bind_addr(&address).unwrap();
    let connect = |family: &str, address: &str| {
        format!("import socket\ns = socket.socket(socket.{family}, socket.SOCK_STREAM)\ns.settimeout(1)\ns.connect({address})\n")
    };
    let attempts = vec![
        attempt("connect over IPv4", Language::Python, connect("AF_INET", "('1.1.1.1', 80)"), &[
            "exit code 1",
            "PermissionError: [Errno 1] Operation not permitted",
        ]),
        attempt("connect over IPv4 to the loopback", Language::Python, connect("AF_INET", "('127.0.0.1', 22)"), &[
            "exit code 1",
            "PermissionError",
        ]),
        attempt("connect over IPv6", Language::Python, connect("AF_INET6", "('::1', 22)"), &["exit code 1", "PermissionError"]),
        attempt("open a UDP socket", Language::Python, "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n", &[
            "exit code 1",
            "PermissionError",
        ]),
        attempt("open a raw packet socket", Language::Python, "import socket\nsocket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n", &[
            "exit code 1",
            "PermissionError",
        ]),
        attempt("open a netlink socket", Language::Python, "import socket\nsocket.socket(socket.AF_NETLINK, socket.SOCK_RAW)\n", &[
            "exit code 1",
            "PermissionError",
        ]),
        attempt(
            "open a raw socket in C++",
            Language::Cpp,
            "#include <sys/socket.h>\n#include <netinet/in.h>\n#include <cstdio>\nint main(){ if (socket(AF_INET, SOCK_RAW, IPPROTO_ICMP) == -1) { std::perror(\"socket\"); return 1; } return 0; }\n",
            &["exit code 1", "socket: Operation not permitted"],
        ),
        attempt("connect to a host UNIX socket", Language::Python, connect("AF_UNIX", &format!("{:?}", socket_path.display().to_string())), &[
            "exit code 1",
            "FileNotFoundError",
        ]),
        attempt("connect to a host abstract UNIX socket", Language::Python, connect("AF_UNIX", &format!("'\\0{abstract_name}'")), &[
            "exit code 1",
            "ConnectionRefusedError",
        ]),
    ];
    expect_failures(&sandbox, &attempts);
    // UNIX sockets within the program still work (multiprocessing, asyncio).
    let pair =
        sandbox.run(Language::Python, "import socket\na, b = socket.socketpair()\na.send(b'x')\nassert b.recv(1) == b'x'\n").unwrap();
    assert!(pair.passed, "{}", pair.reason);
}
