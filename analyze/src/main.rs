//! `analyze`: Jaccard distances between masks, figures and the report of a run.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use analyze::figures::{self, parse_pairs};
use analyze::{compute_jaccard, created_by, write_partial_report, write_report, write_table, NamedMask};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Compares masks (Jaccard distance of their pruned weights), draws figures, and
/// writes the Markdown report of a run.
#[derive(Parser)]
#[command(name = "analyze", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Jaccard distance of the pruned weights of every pair of masks, per module,
    /// per layer and for the whole model, written as a jaccard artifact.
    Jaccard(JaccardArgs),
    /// Draw a figure as a PNG.
    #[command(subcommand)]
    Figures(FigureCommand),
    /// Render the figures of a run directory and write its Markdown report.
    Report(ReportArgs),
}

#[derive(Args)]
struct JaccardArgs {
    /// Mask artifacts to compare (at least two), all made for the same model.
    #[arg(long, required = true, num_args = 2..)]
    masks: Vec<PathBuf>,
    /// Comma-separated names of the masks, in the order of --masks [default: the file stems].
    #[arg(long, value_delimiter = ',')]
    names: Option<Vec<String>>,
    /// Jaccard artifact to write (Parquet).
    #[arg(long)]
    out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Subcommand)]
enum FigureCommand {
    /// Per-layer Jaccard distance curves (x = decoder layer, y = distance), one per pair of masks.
    Curves(CurvesArgs),
    /// Mask A, mask B and where they differ, for one module, side by side.
    MaskDiff(MaskDiffArgs),
    /// A metric by calibration (rows) and evaluation domain (columns), from results artifacts.
    Heatmap(HeatmapArgs),
    /// Whole-model Jaccard distances between all masks as a matrix.
    JaccardMatrix(JaccardMatrixArgs),
}

#[derive(Args)]
struct CurvesArgs {
    /// Jaccard artifact written by `analyze jaccard`.
    #[arg(long)]
    jaccard: PathBuf,
    /// Pairs to draw, as comma-separated A:B mask names [default: all pairs].
    #[arg(long)]
    pairs: Option<String>,
    /// PNG to write.
    #[arg(long)]
    out: PathBuf,
    /// Image width in pixels.
    #[arg(long, default_value_t = 1000)]
    width: u32,
    /// Image height in pixels.
    #[arg(long, default_value_t = 560)]
    height: u32,
}

#[derive(Args)]
struct MaskDiffArgs {
    /// First mask artifact.
    #[arg(long)]
    a: PathBuf,
    /// Second mask artifact (same model).
    #[arg(long)]
    b: PathBuf,
    /// Module to draw, a Hugging Face name without `.weight`, e.g. model.layers.15.self_attn.q_proj.
    #[arg(long)]
    module: String,
    /// PNG to write.
    #[arg(long)]
    out: PathBuf,
    /// Largest panel side in pixels; a larger matrix is drawn in blocks of weights.
    #[arg(long, default_value_t = 1024)]
    max_size: u32,
    /// Name of mask A in the figure [default: its file stem].
    #[arg(long)]
    name_a: Option<String>,
    /// Name of mask B in the figure [default: its file stem].
    #[arg(long)]
    name_b: Option<String>,
}

#[derive(Args)]
struct HeatmapArgs {
    /// Results artifacts written by `evaluate`.
    #[arg(long, required = true, num_args = 1..)]
    results: Vec<PathBuf>,
    /// The metric to show (the results' `metric` column).
    #[arg(long, default_value = "perplexity")]
    metric: String,
    /// PNG to write.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct JaccardMatrixArgs {
    /// Jaccard artifact written by `analyze jaccard`.
    #[arg(long)]
    jaccard: PathBuf,
    /// PNG to write.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct ReportArgs {
    /// Run directory holding run.json (written by `cargo xtask`); its paths are relative to it.
    #[arg(long)]
    run: PathBuf,
    /// Markdown report to write [default: <run>/report.md].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Report a run still under way: results not written yet read `n/a`
    /// instead of failing the report (a note counts them).
    #[arg(long)]
    partial: bool,
}

fn run_jaccard(args: JaccardArgs) -> Result<()> {
    let started = Instant::now();
    let masks: Vec<NamedMask> = match &args.names {
        None => args.masks.iter().map(|p| NamedMask::from_stem(p)).collect(),
        Some(names) => {
            if names.len() != args.masks.len() {
                bail!(
                    "--names gives {} names for {} masks; give one name per mask, in the order of --masks",
                    names.len(),
                    args.masks.len()
                );
            }
            names.iter().zip(&args.masks).map(|(n, p)| NamedMask { name: n.trim().to_string(), path: p.clone() }).collect()
        }
    };
    let bar = ProgressBar::new(0);
    if args.quiet || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(ProgressStyle::with_template("comparing masks [{bar:40}] {pos}/{len} rows ({elapsed})").expect("valid template"));
    let table = compute_jaccard(&masks, &bar).context("comparing masks")?;
    bar.finish_and_clear();
    let hash = write_table(&args.out, &table, &created_by()).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {} ({hash}) in {:.2} s", args.out.display(), started.elapsed().as_secs_f64());
    println!("{:<30} {:<30} {:>10} {:>14} {:>14}", "mask A", "mask B", "distance", "intersect", "union");
    for r in table.whole_model() {
        println!("{:<30} {:<30} {:>10.4} {:>14} {:>14}", r.mask_a, r.mask_b, r.jaccard_distance, r.intersect, r.union);
    }
    Ok(())
}

fn run_figure(cmd: FigureCommand) -> Result<()> {
    match cmd {
        FigureCommand::Curves(a) => {
            let pairs = a.pairs.as_deref().map(parse_pairs).transpose()?;
            let series = figures::curves_figure(&a.jaccard, pairs.as_deref(), &a.out, a.width, a.height)
                .with_context(|| format!("drawing {}", a.out.display()))?;
            println!("wrote {} ({} curves)", a.out.display(), series.len());
        }
        FigureCommand::MaskDiff(a) => {
            let named = |p: &PathBuf, n: Option<String>| {
                let m = NamedMask::from_stem(p);
                NamedMask { name: n.unwrap_or(m.name), path: m.path }
            };
            let (ma, mb) = (named(&a.a, a.name_a), named(&a.b, a.name_b));
            let layout = figures::mask_diff_figure(&ma, &mb, &a.module, &a.out, a.max_size)
                .with_context(|| format!("drawing {}", a.out.display()))?;
            let total = f64::from(layout.shape.0) * f64::from(layout.shape.1);
            println!(
                "wrote {}: {} x {} weights, 1 pixel = {} x {} weights; pruned {:.4} / {:.4}, differing {:.4}",
                a.out.display(),
                layout.shape.0,
                layout.shape.1,
                layout.block.0,
                layout.block.1,
                layout.pruned_a as f64 / total,
                layout.pruned_b as f64 / total,
                layout.differing as f64 / total
            );
        }
        FigureCommand::Heatmap(a) => {
            let h = figures::results_heatmap(&a.results, &a.metric)?;
            h.draw().save_png(&a.out).with_context(|| format!("writing {}", a.out.display()))?;
            println!("wrote {} ({} calibrations x {} domains)", a.out.display(), h.rows.len(), h.cols.len());
        }
        FigureCommand::JaccardMatrix(a) => {
            let h = figures::jaccard_matrix_figure(&a.jaccard, &a.out).with_context(|| format!("drawing {}", a.out.display()))?;
            println!("wrote {} ({} masks)", a.out.display(), h.rows.len());
        }
    }
    Ok(())
}

fn run_report(args: ReportArgs) -> Result<()> {
    let out = args.out.unwrap_or_else(|| args.run.join("report.md"));
    let write = if args.partial { write_partial_report } else { write_report };
    let report = write(&args.run, &out).with_context(|| format!("writing the report of {}", args.run.display()))?;
    print!("{}", report.summary);
    println!("wrote {} and {} figures", out.display(), report.figures.len());
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Jaccard(a) => run_jaccard(a),
        Command::Figures(c) => run_figure(c),
        Command::Report(a) => run_report(a),
    }
}
