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
    /// Pruning method: wanda, ria (calibrate + score + mask), sparsegpt
    /// (calibrate, which writes the mask it applied) or magnitude (score + mask).
    #[arg(long, default_value = "wanda", value_parser = ["wanda", "ria", "sparsegpt", "magnitude"])]
    method: String,
    /// uniform, or owl (OWL's layer sparsities; unstructured, not magnitude).
    #[arg(long, default_value = "uniform", value_parser = ["uniform", "owl"])]
    sparsity_profile: String,
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
    let (method, owl) = (opts.method.as_str(), opts.sparsity_profile == "owl");
    if owl && (opts.nm.is_some() || method == "magnitude") {
        bail!("--sparsity-profile owl spreads an unstructured sparsity by activation outliers: not with --nm or magnitude");
    }
    let profile: &[&str] = if owl { &["--sparsity-profile", "owl"] } else { &[] };
    let model_arg = path(&model);
    let mut stages: Vec<(&str, Measured)> = Vec::new();
    if method != "magnitude" {
        let mut calibrate = Command::new(bin.join("calibrate"));
        calibrate.args(["--model", &model_arg, "--samples", &path(&samples), "--quiet", "--method", method]).args(pattern).args(profile);
        // Sequential SparseGPT writes the mask it applied: no second pass from Hessians.
        if method == "sparsegpt" {
            calibrate.args(["--mask", &path(&mask)]);
        }
        if method == "ria" && opts.nm.is_none() {
            calibrate.args(["--group", "layer"]);
        }
        calibrate.args(["--device", opts.device.as_arg(), "--out", &path(&stats)]);
        let label = if method == "sparsegpt" { "calibrate (stats + mask)" } else { "calibrate (stats + prune)" };
        stages.push((label, measure(&mut calibrate)?));
    }
    let mut masking = Command::new(bin.join("mask"));
    match method {
        "sparsegpt" => {}
        // OWL's layer sparsities are recorded in the statistics: its masks come from them.
        _ if owl => {
            masking.args(["--stats", &path(&stats), "--model", &model_arg, "--method", method]);
            if method == "ria" {
                masking.args(["--group", "layer"]);
            }
        }
        _ => {
            let mut score = Command::new(bin.join("score"));
            score.args(["--model", &model_arg, "--method", method, "--quiet", "--out", &path(&scores)]);
            if method != "magnitude" {
                score.args(["--stats", &path(&stats)]);
            }
            stages.push(("score", measure(&mut score)?));
            masking.args(["--scores", &path(&scores)]);
            if method == "ria" && opts.nm.is_none() {
                masking.args(["--group", "layer"]);
            }
        }
    }
    if method != "sparsegpt" {
        masking.args(profile).args(["--quiet", "--out", &path(&mask)]).args(pattern);
        stages.push(("mask", measure(&mut masking)?));
    }

    println!();
    let label = opts.nm.as_deref().map_or_else(|| "50% unstructured".to_string(), str::to_string);
    println!(
        "bench prune: SmolLM2-135M, {} windows x {} tokens of Python, {method} {label}, {} profile, sequential",
        opts.nsamples, opts.seqlen, opts.sparsity_profile
    );
    println!("device: {}; {} CPU threads available", opts.device.as_arg(), std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!("{:<28} {:>10} {:>14}", "stage", "wall (s)", "peak RSS (MiB)");
    let mut total = 0.0;
    for (name, m) in &stages {
        total += m.seconds;
        let rss = m.peak_rss_mib.map_or_else(|| "n/a".to_string(), |v| format!("{v:.0}"));
        println!("{name:<28} {:>10.2} {rss:>14}", m.seconds);
    }
    println!("{:<28} {total:>10.2}", "total");
    Ok(ExitCode::SUCCESS)
}

/// Options of the scale benchmark (given after `--`).
#[derive(Debug, Parser)]
#[command(name = "cargo xtask bench scale --")]
struct ScaleBench {
    /// Layer shapes of the made model.
    #[arg(long, default_value = "llama-2-7b", value_parser = crate::MODEL_SHAPES)]
    shape: String,
    /// Fewer layers than the shape has (0: all of them), for a quick run.
    #[arg(long, default_value_t = 0)]
    layers: usize,
    /// Device of calibrate and evaluate.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// Calibration windows.
    #[arg(long, default_value_t = 4)]
    nsamples: usize,
    /// Tokens per window (calibration and perplexity).
    #[arg(long, default_value_t = 128)]
    seqlen: usize,
    /// Working directory; the made model is kept there and reused.
    #[arg(long, default_value = "out/bench-scale")]
    out: PathBuf,
}

/// Bytes of the files under `path` (a file or a directory tree).
fn disk_bytes(path: &Path) -> u64 {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path).map_or(0, |entries| entries.flatten().map(|e| disk_bytes(&e.path())).sum()),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// `cargo xtask bench scale [-- OPTIONS]`: every stage on a made model with
/// a real model's shapes, its wall time and peak RSS, as a table.
pub fn scale(bench_args: &[String]) -> Result<ExitCode> {
    let opts = ScaleBench::try_parse_from(std::iter::once("bench-scale".to_string()).chain(bench_args.iter().cloned()))?;
    let tokenizer_model = models::fetch(models::find(models::SMOLLM2_135M)?, &models::subprune_home()?)?;
    let bin = workspace::build_binaries()?;
    let dir = workspace::absolute(&opts.out)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = |p: &Path| p.display().to_string();
    let layers = if opts.layers == 0 { "all".to_string() } else { opts.layers.to_string() };
    let model = dir.join(format!("{}-{layers}-layers-bf16", opts.shape));
    let mut rows: Vec<(String, Measured)> = Vec::new();
    if !model.join("config.json").is_file() {
        let mut make = Command::new(bin.join("make-model"));
        make.args(["--shape", &opts.shape, "--dtype", "bf16", "--layers", &opts.layers.to_string(), "--out", &path(&model)]);
        make.env(models::SMOLLM2_ENV, &tokenizer_model);
        rows.push(("make-model".into(), measure(&mut make)?));
    }
    let sources = corpus::builtin("python-stdlib", &dir)?.context("python3's standard library was not found")?;
    let docs = dir.join("python-docs.parquet");
    if !docs.is_file() {
        let mut collect = Command::new(bin.join("datasets"));
        collect.args(["collect", "--domain", "python", "--out", &path(&docs), "--from"]).args(&sources);
        measure(&mut collect)?;
    }
    let (calib, heldout) = (dir.join("calib.parquet"), dir.join("heldout.parquet"));
    let (stats, mask, pruned) = (dir.join("stats.parquet"), dir.join("mask.parquet"), dir.join("pruned"));
    let (n, seqlen, device) = (opts.nsamples.to_string(), opts.seqlen.to_string(), opts.device.as_arg());
    let run = |name: &str, args: Vec<String>| -> Result<(String, Measured)> {
        let (program, args) = args.split_first().expect("a program");
        Ok((name.to_string(), measure(Command::new(bin.join(program)).args(args))?))
    };
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let (m, d, c, h, s, k, p) = (path(&model), path(&docs), path(&calib), path(&heldout), path(&stats), path(&mask), path(&pruned));
    rows.push(run(
        "datasets sample",
        args(&["datasets", "sample", "--documents", &d, "--model", &m, "--nsamples", &n, "--seqlen", &seqlen, "--out", &c]),
    )?);
    rows.push(run(
        "datasets sample (held out)",
        args(&[
            "datasets",
            "sample",
            "--documents",
            &d,
            "--model",
            &m,
            "--split",
            "heldout",
            "--windows",
            "--seqlen",
            &seqlen,
            "--out",
            &h,
        ]),
    )?);
    rows.push(run(
        "calibrate (sequential 50%)",
        args(&["calibrate", "--model", &m, "--samples", &c, "--sparsity", "0.5", "--device", device, "--quiet", "--out", &s]),
    )?);
    rows.push(run(
        "mask (scores from stats)",
        args(&["mask", "--stats", &s, "--model", &m, "--method", "wanda", "--sparsity", "0.5", "--quiet", "--out", &k]),
    )?);
    rows.push(run("mask apply", args(&["mask", "apply", "--model", &m, "--mask", &k, "--out", &p, "--force", "--quiet"]))?);
    let ppl = |label: &str, model: &str, mask: Option<&str>| -> Result<(String, Measured)> {
        let mut list = args(&["evaluate", "ppl", "--model", model, "--samples", &h, "--max-windows", &n, "--device", device, "--quiet"]);
        if let Some(mask) = mask {
            list.extend(args(&["--mask", mask]));
        }
        run(label, list)
    };
    rows.push(ppl("evaluate ppl (dense)", &m, None)?);
    rows.push(ppl("evaluate ppl (--mask)", &m, Some(&k))?);
    rows.push(ppl("evaluate ppl (pruned dir)", &p, None)?);

    println!();
    let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
    println!(
        "bench scale: random-weight {} shape ({layers} layers, bf16, {:.2} GiB), {} x {} tokens of Python; quality figures of a made model mean nothing",
        opts.shape,
        gib(disk_bytes(&model)),
        opts.nsamples,
        opts.seqlen
    );
    println!(
        "device: {device}; {} CPU threads available; GPU memory: not measured",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("{:<30} {:>10} {:>14}", "stage", "wall (s)", "peak RSS (MiB)");
    for (name, m) in &rows {
        let rss = m.peak_rss_mib.map_or_else(|| "n/a".to_string(), |v| format!("{v:.0}"));
        println!("{name:<30} {:>10.2} {rss:>14}", m.seconds);
    }
    let outputs = disk_bytes(&pruned) + disk_bytes(&stats) + disk_bytes(&mask) + disk_bytes(&calib) + disk_bytes(&heldout);
    println!(
        "disk: checkpoint {:.2} GiB, pipeline outputs {:.2} GiB (pruned checkpoint {:.2} GiB): {:.2} x the checkpoint in all",
        gib(disk_bytes(&model)),
        gib(outputs),
        gib(disk_bytes(&pruned)),
        (disk_bytes(&model) + outputs) as f64 / disk_bytes(&model).max(1) as f64
    );
    Ok(ExitCode::SUCCESS)
}

/// Options of the sparse-execution benchmark (given after `--`).
#[derive(Debug, Parser)]
#[command(name = "cargo xtask bench sparse --")]
struct SparseBench {
    /// Model: a model id of `cargo xtask fetch-model` (smollm2-135m, gemma3-270m, ...), or
    /// `llama-2-7b-layer` for one decoder layer of a random-weight Llama-2-7B-shaped model.
    #[arg(long, default_value = "smollm2-135m")]
    model: String,
    /// Value type of the written models (dense and sparse alike).
    #[arg(long, default_value = "f16", value_parser = ["f16", "bf16", "f32"])]
    dtype: String,
    /// Sparsities to compare with the dense model: unstructured fractions and N:M patterns.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.6,0.7,2:4")]
    patterns: Vec<String>,
    /// Tokens decoded per sequence in the timed decoding runs.
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Device of the runs.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// Working directory (models, masks, outputs).
    #[arg(long, default_value = "out/bench-sparse")]
    out: PathBuf,
}

/// What `bench sparse` measured of one written model.
struct SparseRow {
    label: String,
    weight_bytes: u64,
    decode_1: f64,
    decode_8: f64,
    prefill: f64,
    peak_rss_mib: Option<f64>,
    perplexity: Option<f64>,
    tokens: Option<String>,
    /// Milliseconds of layer 0's few-row products at batch 1 and 8 (`bench-sparse-layer`).
    layer_ms: [f64; 2],
}

/// The number after `prefix` on the line of `text` that starts with it, up to " tokens/s" or " MiB".
fn figure_after(text: &str, prefix: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with(prefix))?;
    let value = line.rsplit_once(" = ").map_or(&line[prefix.len()..], |(_, v)| v);
    value.split_whitespace().next()?.parse().ok()
}

/// The milliseconds at batch `batch` on a model's line of `bench-sparse-layer`.
fn layer_ms(line: &str, batch: usize) -> Option<f64> {
    let key = format!("batch {batch} ");
    figure_after(&line[line.find(&key)?..], &key)
}

/// Bytes of the safetensors files of a model directory.
fn safetensors_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "safetensors")).map(|e| disk_bytes(&e.path())).sum()
    })
}

/// `cargo xtask bench sparse [-- OPTIONS]`: decoding and prefill speed,
/// weight bytes and peak RSS of a model written dense, with zeros, and in
/// the sparse format at several sparsities; checks that each sparse model's
/// perplexity and greedy generations are those of the same model with zeros.
pub fn sparse(bench_args: &[String]) -> Result<ExitCode> {
    let opts = SparseBench::try_parse_from(std::iter::once("bench-sparse".to_string()).chain(bench_args.iter().cloned()))?;
    let bin = workspace::build_binaries()?;
    let dir = workspace::absolute(&opts.out)?.join(&opts.model);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = |p: &Path| p.display().to_string();
    let source = if opts.model == "llama-2-7b-layer" {
        let tokenizer_model = models::fetch(models::find(models::SMOLLM2_135M)?, &models::subprune_home()?)?;
        let made = dir.join("made-bf16");
        if !made.join("config.json").is_file() {
            let mut make = Command::new(bin.join("make-model"));
            make.args(["--shape", "llama-2-7b", "--dtype", "bf16", "--layers", "1", "--out", &path(&made)]);
            make.env(models::SMOLLM2_ENV, &tokenizer_model);
            process::run_checked(&mut make)?;
        }
        made
    } else {
        models::fetch(models::find(&opts.model)?, &models::subprune_home()?)?
    };
    let (device, src) = (opts.device.as_arg(), path(&source));
    let run = |program: &str, args: &[&str]| -> Result<String> {
        let mut cmd = Command::new(bin.join(program));
        cmd.args(args);
        Ok(String::from_utf8_lossy(&process::output_checked(&mut cmd)?).into_owned())
    };
    let scores = dir.join("magnitude-scores.parquet");
    if !scores.is_file() {
        run("score", &["--method", "magnitude", "--model", &src, "--quiet", "--out", &path(&scores)])?;
    }
    let wikitext = workspace::data_root().join("wikitext-2-raw/wiki.test.raw");
    let measure_dir = |label: String, model: &Path| -> Result<SparseRow> {
        let m = path(model);
        let tokens_file = model.join("bench-tokens.json");
        let new_tokens = opts.new_tokens.to_string();
        let generated = run(
            "bench-generate",
            &[
                "--model",
                &m,
                "--device",
                device,
                "--prompts",
                "8",
                "--new-tokens",
                &new_tokens,
                "--batch",
                "8",
                "--cached-only",
                // Decoding speed comes from one run of every model in turn, below.
                "--no-decode-steps",
                "--tokens-out",
                &path(&tokens_file),
            ],
        )?;
        let speed = run("evaluate", &["speed", "--model", &m, "--device", device])?;
        let speed: serde_json::Value = serde_json::from_str(speed.lines().last().unwrap_or_default())
            .with_context(|| format!("`evaluate speed` printed {speed:?}; expected its JSON line"))?;
        let perplexity = if wikitext.is_file() {
            let out = run(
                "evaluate",
                &["ppl", "--model", &m, "--text", &path(&wikitext), "--seqlen", "512", "--max-windows", "4", "--device", device, "--quiet"],
            )?;
            figure_after(&out, "perplexity: ")
        } else {
            None
        };
        Ok(SparseRow {
            label,
            weight_bytes: safetensors_bytes(model),
            decode_1: 0.0,
            decode_8: 0.0,
            prefill: speed["prefill_tokens_per_s"].as_f64().context("`evaluate speed` gave no prefill speed")?,
            peak_rss_mib: figure_after(&generated, "peak RSS:"),
            perplexity,
            tokens: std::fs::read_to_string(&tokens_file).ok(),
            layer_ms: [0.0; 2],
        })
    };
    let apply = |mask: &Path, out: &Path, format: &str| -> Result<()> {
        run(
            "mask",
            &[
                "apply",
                "--model",
                &src,
                "--mask",
                &path(mask),
                "--out",
                &path(out),
                "--format",
                format,
                "--dtype",
                &opts.dtype,
                "--force",
                "--quiet",
            ],
        )?;
        Ok(())
    };
    let mask_for = |pattern: &str| -> Result<PathBuf> {
        let mask = dir.join(format!("mask-{}.parquet", pattern.replace(':', "of")));
        let flag = if pattern.contains(':') { "--nm" } else { "--sparsity" };
        run("mask", &["--scores", &path(&scores), flag, pattern, "--quiet", "--out", &path(&mask)])?;
        Ok(mask)
    };

    let dense_dir = dir.join(format!("dense-{}", opts.dtype));
    apply(&mask_for("0")?, &dense_dir, "hf")?;
    let mut rows = vec![measure_dir(format!("dense {}", opts.dtype), &dense_dir)?];
    for pattern in &opts.patterns {
        let mask = mask_for(pattern)?;
        let (zeros_dir, sparse_dir) = (dir.join(format!("zeros-{pattern}")), dir.join(format!("sparse-{pattern}")));
        apply(&mask, &zeros_dir, "hf")?;
        apply(&mask, &sparse_dir, "sparse")?;
        let name = if pattern.contains(':') { pattern.clone() } else { format!("{:.0}%", pattern.parse::<f64>().unwrap_or(0.0) * 100.0) };
        rows.push(measure_dir(format!("{name} with zeros"), &zeros_dir)?);
        rows.push(measure_dir(format!("{name} sparse"), &sparse_dir)?);
    }

    // The products of one layer alone, every model in one process, back to back.
    let dirs: Vec<PathBuf> = std::iter::once(dense_dir.clone())
        .chain(opts.patterns.iter().flat_map(|p| [dir.join(format!("zeros-{p}")), dir.join(format!("sparse-{p}"))]))
        .collect();
    let mut layer_args = vec!["--repeats".to_string(), "10".to_string(), "--device".to_string(), device.to_string()];
    for d in &dirs {
        layer_args.extend(["--model".to_string(), path(d)]);
    }
    let layer_out = run("bench-sparse-layer", &layer_args.iter().map(String::as_str).collect::<Vec<_>>())?;
    // Whole-model decoding, every model in one process, taken in turn.
    let new_tokens = opts.new_tokens.to_string();
    let mut decode_args = vec!["--device", device, "--batch", "8", "--new-tokens", &new_tokens, "--repeats", "3"];
    let dir_args: Vec<String> = dirs.iter().map(|d| path(d)).collect();
    for d in &dir_args {
        decode_args.extend(["--model", d]);
    }
    let decode_out = run("bench-generate", &decode_args)?;
    for (row, d) in rows.iter_mut().zip(&dirs) {
        let speed = |width: usize| {
            figure_after(&decode_out, &format!("decode steps batch {width} {}: ", path(d)))
                .with_context(|| format!("bench-generate printed no batch-{width} decoding speed for {}", d.display()))
        };
        row.decode_1 = speed(1)?;
        row.decode_8 = speed(8)?;
    }
    for (row, d) in rows.iter_mut().zip(&dirs) {
        let line = layer_out
            .lines()
            .find(|l| l.starts_with(&format!("{}: ", path(d))))
            .context("bench-sparse-layer printed no line for a model")?;
        row.layer_ms = [layer_ms(line, 1).unwrap_or(f64::NAN), layer_ms(line, 8).unwrap_or(f64::NAN)];
    }

    println!();
    println!(
        "bench sparse: {} ({} values, magnitude masks); device {device}; {} CPU threads; ratios against the dense model",
        opts.model,
        opts.dtype,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<18} {:>14} {:>16} {:>16} {:>16} {:>16} {:>16} {:>9} {:>11}  same as with zeros",
        "model", "weights MiB", "decode b1 tok/s", "decode b8 tok/s", "prefill tok/s", "layer b1 ms", "layer b8 ms", "RSS MiB", "ppl"
    );
    let dense = &rows[0];
    for (i, row) in rows.iter().enumerate() {
        let ratio = |v: f64, d: f64| format!("{v:.1} ({:.2}x)", v / d);
        let zeros = (row.label.ends_with("sparse")).then(|| &rows[i - 1]);
        let same = zeros.map_or_else(String::new, |z| {
            let ppl = match (row.perplexity, z.perplexity) {
                (Some(a), Some(b)) => {
                    format!("ppl {}", if format!("{a:.4e}") == format!("{b:.4e}") { "equal to 4 digits" } else { "DIFFERS" })
                }
                _ => "ppl not measured".to_string(),
            };
            let tokens = if row.tokens.is_some() && row.tokens == z.tokens { "generations identical" } else { "generations DIFFER" };
            format!("{ppl}, {tokens}")
        });
        let time_ratio = |v: f64, d: f64| format!("{v:.2} ({:.2}x)", d / v);
        println!(
            "{:<18} {:>14} {:>16} {:>16} {:>16} {:>16} {:>16} {:>9} {:>11}  {same}",
            row.label,
            format!(
                "{:.1} ({:.2}x)",
                row.weight_bytes as f64 / (1 << 20) as f64,
                row.weight_bytes as f64 / dense.weight_bytes.max(1) as f64
            ),
            ratio(row.decode_1, dense.decode_1),
            ratio(row.decode_8, dense.decode_8),
            ratio(row.prefill, dense.prefill),
            time_ratio(row.layer_ms[0], dense.layer_ms[0]),
            time_ratio(row.layer_ms[1], dense.layer_ms[1]),
            row.peak_rss_mib.map_or_else(|| "n/a".to_string(), |v| format!("{v:.0}")),
            row.perplexity.map_or_else(|| "n/a".to_string(), |p| format!("{p:.4}")),
        );
    }
    println!(
        "(decode: cached single-token steps of 1 and 8 sequences, {} tokens each, best of 3; layer: layer 0's linear products alone, \
         best of 10; both with every model in one process, taken in turn; prefill: one window through `evaluate speed`, as `evaluate ppl` streams it, less the layers' reading; \
         speed-up in brackets)",
        opts.new_tokens
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_read_from_the_benchmarks_lines() {
        let text = "cache     batch 1: 512 tokens in 16.00 s = 32.0 tokens/s\n\
                    decode steps batch 1: 64 tokens in 2.00 s = 32.0 tokens/s\n\
                    decode steps batch 8: 512 tokens in 4.00 s = 128.0 tokens/s\n\
                    peak RSS: 417 MiB (the model kept in its stored form)\n\
                    perplexity: 7.747902";
        assert_eq!(figure_after(text, "decode steps batch 1:"), Some(32.0));
        assert_eq!(figure_after(text, "decode steps batch 8:"), Some(128.0));
        assert_eq!(figure_after(text, "peak RSS:"), Some(417.0));
        assert_eq!(figure_after(text, "perplexity: "), Some(7.747902));
        assert_eq!(figure_after(text, "decode steps batch 2:"), None);
        let layer = "/m/sparse-0.5: batch 1 12.16 ms, batch 4 20.41 ms, batch 8 45.40 ms per layer";
        assert_eq!((layer_ms(layer, 1), layer_ms(layer, 8), layer_ms(layer, 2)), (Some(12.16), Some(45.4), None));
    }
}
