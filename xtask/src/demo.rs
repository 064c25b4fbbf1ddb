//! `cargo xtask demo`: the main job, as a list of stages run in order.
//!
//! Each stage reads and fills a shared [`Demo`] context; new stages (datasets,
//! calibration, pruning, evaluation of the pruned model, ...) are added to
//! [`STAGES`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};

use crate::corpus::{self, CorpusSummary};
use crate::{models, prereqs, process, workspace};

/// Size budget of the Python corpus, in bytes.
const CORPUS_BUDGET: usize = 400_000;
/// Largest source file taken into the corpus, in bytes (keeps it varied).
const CORPUS_MAX_FILE: usize = 40_000;
/// Tokens per perplexity window.
const SEQLEN: usize = 512;
/// Number of windows evaluated.
const MAX_WINDOWS: usize = 16;

/// The compute device of the project's binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Device {
    /// A hardware wgpu adapter if there is one, else cpu.
    Auto,
    /// burn's ndarray backend with OpenBLAS.
    Cpu,
    /// wgpu (Vulkan, Metal, DX12; lavapipe without a GPU).
    Wgpu,
}

impl Device {
    /// The value the binaries' `--device` takes.
    fn as_arg(self) -> &'static str {
        match self {
            Device::Auto => "auto",
            Device::Cpu => "cpu",
            Device::Wgpu => "wgpu",
        }
    }
}

/// Options of `cargo xtask demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Device the model runs on.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Directory for the demo's outputs (corpus, results artifacts).
    #[arg(long, default_value = "out/demo")]
    pub out: PathBuf,
    #[command(flatten)]
    pub prereqs: prereqs::SkipPrereqs,
}

/// State shared by the stages.
struct Demo<'a> {
    args: &'a DemoArgs,
    /// Absolute output directory.
    out: PathBuf,
    model: Option<PathBuf>,
    corpus: Option<CorpusSummary>,
    perplexity: Option<(f64, PathBuf)>,
}

/// A named step of the demo.
struct Stage {
    name: &'static str,
    run: fn(&mut Demo) -> Result<()>,
}

/// The demo's stages, in order.
const STAGES: &[Stage] = &[
    Stage { name: "check the workspace", run: check_workspace },
    Stage { name: "system prerequisites", run: prerequisites },
    Stage { name: "fetch SmolLM2-135M", run: fetch_model },
    Stage { name: "Python corpus from python3's standard library", run: python_corpus },
    Stage { name: "perplexity on Python", run: perplexity },
];

/// Runs every stage, then prints a summary to stdout.
pub fn run(args: &DemoArgs) -> Result<ExitCode> {
    let mut demo = Demo { args, out: workspace::absolute(&args.out)?, model: None, corpus: None, perplexity: None };
    let started = Instant::now();
    for (i, stage) in STAGES.iter().enumerate() {
        eprintln!("\n== demo [{}/{}] {}", i + 1, STAGES.len(), stage.name);
        let t = Instant::now();
        (stage.run)(&mut demo).with_context(|| format!("demo stage `{}` failed", stage.name))?;
        eprintln!("== done in {:.1} s", t.elapsed().as_secs_f64());
    }
    print_summary(&demo, started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

fn check_workspace(_: &mut Demo) -> Result<()> {
    workspace::require_target("evaluate", "bin", "evaluate")
}

fn prerequisites(demo: &mut Demo) -> Result<()> {
    demo.args.prereqs.ensure()
}

fn fetch_model(demo: &mut Demo) -> Result<()> {
    let spec = models::find(models::SMOLLM2_135M)?;
    demo.model = Some(models::fetch(spec, &models::subprune_home()?)?);
    Ok(())
}

fn python_corpus(demo: &mut Demo) -> Result<()> {
    let stdlib = corpus::python_stdlib_dir()?;
    let sources = corpus::select_python_sources(&stdlib, CORPUS_BUDGET, CORPUS_MAX_FILE)?;
    let summary = corpus::write_corpus(&stdlib, &sources, &demo.out.join("python-stdlib.txt"))?;
    eprintln!(
        "{} files, {} bytes from {} -> {} (list in {})",
        summary.files,
        summary.bytes,
        stdlib.display(),
        summary.path.display(),
        summary.manifest.display()
    );
    demo.corpus = Some(summary);
    Ok(())
}

/// The value of the last `perplexity: <value>` line.
fn parse_perplexity(lines: &[String]) -> Option<f64> {
    lines.iter().rev().find_map(|l| l.trim().strip_prefix("perplexity:")).and_then(|v| v.trim().parse().ok())
}

fn perplexity(demo: &mut Demo) -> Result<()> {
    let model = demo.model.clone().ok_or_else(|| anyhow!("no model fetched"))?;
    let corpus = demo.corpus.clone().ok_or_else(|| anyhow!("no corpus written"))?;
    let results = demo.out.join("ppl-python.parquet");
    let bin = workspace::build_binaries()?;
    let mut cmd = std::process::Command::new(bin.join("evaluate"));
    cmd.args(["ppl", "--model"])
        .arg(&model)
        .arg("--text")
        .arg(&corpus.path)
        .args(["--seqlen", &SEQLEN.to_string()])
        .args(["--max-windows", &MAX_WINDOWS.to_string()])
        .args(["--device", demo.args.device.as_arg()])
        .arg("--out")
        .arg(&results);
    let (status, lines) = process::run_streaming(&mut cmd, &mut std::io::stdout())?;
    if !status.success() {
        bail!("`{}` failed ({status})", process::display(&cmd));
    }
    let value = parse_perplexity(&lines).ok_or_else(|| anyhow!("evaluate did not print a `perplexity: <value>` line"))?;
    demo.perplexity = Some((value, results));
    Ok(())
}

fn print_summary(demo: &Demo, seconds: f64) {
    println!();
    println!("subprune demo summary ({seconds:.0} s)");
    if let Some(model) = &demo.model {
        println!("  model:      {}", model.display());
    }
    if let Some(corpus) = &demo.corpus {
        println!("  corpus:     {} ({} Python files, {} bytes)", corpus.path.display(), corpus.files, corpus.bytes);
    }
    if let Some((value, results)) = &demo.perplexity {
        println!("  perplexity: {value:.4} (first {MAX_WINDOWS} windows of {SEQLEN} tokens, device {})", demo.args.device.as_arg());
        println!("  results:    {}", results.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perplexity_is_read_from_the_last_matching_line() {
        let lines: Vec<String> = ["loading", "perplexity: 3.5", "windows: 16", "perplexity: 12.25"].into_iter().map(String::from).collect();
        assert_eq!(parse_perplexity(&lines), Some(12.25));
        assert_eq!(parse_perplexity(&["done".to_string()]), None);
    }

    #[test]
    fn stage_names_are_unique() {
        let mut names: Vec<_> = STAGES.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), STAGES.len());
    }
}
