//! `cargo xtask bench prune`: wall time and peak RSS of the pruning stages.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use crate::demo::Device;
use crate::graph::{BinaryRunner, Graph, Step};
use crate::{corpus, models, process, workspace};

/// Options of the prune benchmark (given after `--`).
#[derive(Debug, Parser)]
#[command(name = "cargo xtask bench prune --")]
struct PruneBench {
    /// Device of calibrate.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// Calibration windows.
    #[arg(long, default_value_t = 32)]
    nsamples: usize,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    seqlen: usize,
    /// Prune with this N:M pattern (e.g. 2:4) instead of 50% unstructured.
    #[arg(long)]
    nm: Option<String>,
    /// Working directory for the inputs and outputs of the benchmark.
    #[arg(long, default_value = "out/bench-prune")]
    out: PathBuf,
}

/// Wall time and peak resident memory of one child process.
struct Measured {
    seconds: f64,
    peak_rss_mib: Option<f64>,
}

/// Peak resident set size (VmHWM) of a running process, in MiB.
fn vm_hwm_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Runs a command to completion, sampling its VmHWM every 10 ms (the kernel's high-water mark,
/// so only growth in the last 10 ms before exit can be missed).
fn measure(cmd: &mut Command) -> Result<Measured> {
    eprintln!("running: {}", process::display(cmd));
    let started = Instant::now();
    let mut child = cmd.stdout(Stdio::null()).spawn().with_context(|| format!("could not start `{}`", process::display(cmd)))?;
    let mut peak: Option<f64> = None;
    loop {
        if let Some(v) = vm_hwm_mib(child.id()) {
            peak = Some(peak.map_or(v, |p: f64| p.max(v)));
        }
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("`{}` failed ({status})", process::display(cmd));
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(Measured { seconds: started.elapsed().as_secs_f64(), peak_rss_mib: peak })
}

/// `cargo xtask bench prune [-- OPTIONS]`.
pub fn prune(bench_args: &[String]) -> Result<ExitCode> {
    let opts = PruneBench::try_parse_from(std::iter::once("bench-prune".to_string()).chain(bench_args.iter().cloned()))?;
    let model = models::fetch(models::find(models::SMOLLM2_135M)?, &models::subprune_home()?)?;
    let bin = workspace::build_binaries()?;
    let dir = workspace::absolute(&opts.out)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    // Inputs (reused across runs): Python stdlib documents and the calibration windows, seed 0.
    let sources = corpus::builtin("python-stdlib", &dir)?.context("python3's standard library was not found")?;
    let docs = dir.join("python-docs.parquet");
    let samples = dir.join(format!("python-{}x{}.parquet", opts.nsamples, opts.seqlen));
    let path = |p: &Path| p.display().to_string();
    let mut collect = vec!["collect".to_string(), "--domain".into(), "python".into(), "--out".into(), path(&docs), "--from".into()];
    collect.extend(sources.iter().map(|p| path(p)));
    let sample: Vec<String> = [
        "sample",
        "--documents",
        &path(&docs),
        "--model",
        &path(&model),
        "--nsamples",
        &opts.nsamples.to_string(),
        "--seqlen",
        &opts.seqlen.to_string(),
        "--seed",
        "0",
        "--out",
        &path(&samples),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let setup = [
        Step::new("collect python", "datasets", collect, sources.clone(), vec![docs.clone()]),
        Step::new("sample python", "datasets", sample, vec![docs, model.clone()], vec![samples.clone()]),
    ];
    Graph::open(&dir)?.execute(&setup, &mut BinaryRunner { bin_dir: bin.clone() })?;

    let pattern: [&str; 2] = match &opts.nm {
        Some(nm) => ["--nm", nm],
        None => ["--sparsity", "0.5"],
    };
    let stats = dir.join("stats.parquet");
    let scores = dir.join("scores.parquet");
    let mask = dir.join("mask.parquet");
    let calibrate =
        measure(
            Command::new(bin.join("calibrate"))
                .args(["--model", &path(&model), "--samples", &path(&samples), "--quiet"])
                .args(pattern)
                .args(["--device", opts.device.as_arg(), "--out", &path(&stats)]),
        )?;
    let score = measure(Command::new(bin.join("score")).args([
        "--model",
        &path(&model),
        "--stats",
        &path(&stats),
        "--method",
        "wanda",
        "--quiet",
        "--out",
        &path(&scores),
    ]))?;
    let masking =
        measure(Command::new(bin.join("mask")).args(["--scores", &path(&scores), "--quiet", "--out", &path(&mask)]).args(pattern))?;

    println!();
    let label = opts.nm.as_deref().map_or_else(|| "50% unstructured".to_string(), str::to_string);
    println!("bench prune: SmolLM2-135M, {} windows x {} tokens of Python, wanda {label}, sequential", opts.nsamples, opts.seqlen);
    println!("device: {}; {} CPU threads available", opts.device.as_arg(), std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!("{:<28} {:>10} {:>14}", "stage", "wall (s)", "peak RSS (MiB)");
    let mut total = 0.0;
    for (name, m) in [("calibrate (stats + prune)", &calibrate), ("score", &score), ("mask", &masking)] {
        total += m.seconds;
        let rss = m.peak_rss_mib.map_or_else(|| "n/a".to_string(), |v| format!("{v:.0}"));
        println!("{name:<28} {:>10.2} {rss:>14}", m.seconds);
    }
    println!("{:<28} {total:>10.2}", "total");
    Ok(ExitCode::SUCCESS)
}
