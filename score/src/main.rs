//! `score`: importance scores of every weight of a model's prunable linear
//! modules, from its weights and the statistics of `calibrate`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sparsity::Method;

/// Scores every weight of the prunable linear modules (q, k, v, o, gate, up,
/// down): `wanda` = |W_ij| * sqrt(stat_j), `magnitude` = |W_ij|.
#[derive(Parser)]
#[command(name = "score", version, about)]
struct Cli {
    /// Model: a Hugging Face checkpoint directory or a GGUF file (the one the statistics were gathered on).
    #[arg(long)]
    model: PathBuf,
    /// Stats artifact written by `calibrate` (required for wanda, optional for magnitude).
    #[arg(long)]
    stats: Option<PathBuf>,
    /// Scoring method: wanda, ria (both need --stats) or magnitude.
    #[arg(long, default_value = "wanda")]
    method: Method,
    /// Scores artifact to write (Parquet).
    #[arg(long)]
    out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn progress(quiet: bool) -> ProgressBar {
    let bar = ProgressBar::new(0);
    if quiet || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} modules ({elapsed})").expect("valid template"));
    bar.set_message("scoring");
    bar
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let started = Instant::now();
    let bar = progress(cli.quiet);
    let summary = score::run(&cli.model, cli.stats.as_deref(), cli.method, &cli.out, &bar)
        .with_context(|| format!("scoring {} with {}", cli.model.display(), cli.method))?;
    bar.finish_and_clear();
    eprintln!("wrote {} ({}) in {:.2} s", cli.out.display(), summary.hash, started.elapsed().as_secs_f64());
    println!("scored {} weights in {} rows of {} modules ({})", summary.weights, summary.rows, summary.modules, cli.method);
    Ok(())
}
