//! `datasets`: collect documents of a domain, sample calibration sequences, list presets.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use artifacts::Split;
use clap::{Parser, Subcommand, ValueEnum};
use datasets::collect::{collect, write_collection, CollectOptions};
use datasets::sample::{sample, SampleMode, SampleOptions};
use datasets::{presets, TextSpec};
use serde_json::json;

/// Corpora -> documents.parquet -> samples.parquet.
#[derive(Parser)]
#[command(name = "datasets", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Collect documents of one domain from source trees, data files (JSONL, JSONL.gz, JSON, Parquet) and text files.
    Collect(CollectArgs),
    /// Tokenize documents of one split and draw calibration sequences or perplexity windows.
    Sample(SampleArgs),
    /// List the Hugging Face data sets the paper calibrated each domain with, and the `collect` command for each.
    Presets,
}

#[derive(Parser)]
struct CollectArgs {
    /// Domain name: python, java, cpp, javascript (source trees by extension), math, csr, translation, general, or your own
    /// (then give --field/--template for data files and --ext for trees). Taken from --preset when omitted.
    #[arg(long)]
    domain: Option<String>,
    /// Directory trees, data files (.jsonl, .jsonl.gz, .json, .parquet) or text files to read, in order.
    #[arg(long, num_args = 1.., required = true)]
    from: Vec<PathBuf>,
    /// Record field that holds the text (a dotted path such as translation.en reaches into nested fields).
    #[arg(long, conflicts_with = "template")]
    field: Option<String>,
    /// Template joining record fields, e.g. "{prompt}\n{canonical_solution}" (\n and \t are escapes; {{ and }} literal braces).
    #[arg(long)]
    template: Option<String>,
    /// Keep only records whose `split` field has this value (train, test, ...); recorded in the params when records have none.
    #[arg(long)]
    split: Option<String>,
    /// A preset from `datasets presets`: gives the domain and the field/template.
    #[arg(long)]
    preset: Option<String>,
    /// Fraction of documents held out from calibration, chosen by a hash of their text.
    #[arg(long, default_value_t = 0.1)]
    heldout_fraction: f64,
    /// Stop after this many unique documents.
    #[arg(long)]
    max_docs: Option<usize>,
    /// Skip the first N records of every data file, in file order (e.g. the
    /// HellaSwag validation items an evaluation reads, which then never calibrate).
    #[arg(long, default_value_t = 0)]
    skip_records: usize,
    /// File extensions to collect from trees (comma separated or repeated), for domains without built-in rules.
    #[arg(long, value_delimiter = ',')]
    ext: Vec<String>,
    /// Also walk vendored directories (node_modules, vendor, third_party, ...) below the given roots.
    #[arg(long)]
    include_vendored: bool,
    /// Keep only shard I of N (e.g. 0/2), by a hash of each document's text: disjoint sources from one corpus.
    #[arg(long, value_parser = parse_shard_arg)]
    shard: Option<(u64, u64)>,
    /// Output documents artifact.
    #[arg(long)]
    out: PathBuf,
    /// No progress output on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum SplitArg {
    /// The calibration split.
    Calib,
    /// The held-out split.
    Heldout,
}

#[derive(Parser)]
struct SampleArgs {
    /// Documents artifact written by `datasets collect`.
    #[arg(long)]
    documents: PathBuf,
    /// Model whose tokenizer to use: a Hugging Face checkpoint directory or a GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// Number of sequences to draw (Wanda sampling and --whole-docs).
    #[arg(long, default_value_t = 128)]
    nsamples: usize,
    /// Tokens per sequence (the maximum with --whole-docs).
    #[arg(long, default_value_t = 2048)]
    seqlen: usize,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Which split to draw from.
    #[arg(long, value_enum, default_value = "calib")]
    split: SplitArg,
    /// Whole documents (first seqlen tokens), nsamples of them without replacement: the paper's variant.
    #[arg(long, conflicts_with = "windows")]
    whole_docs: bool,
    /// Non-overlapping windows of the split's documents in order (for held-out perplexity); ignores --nsamples and --seed.
    #[arg(long)]
    windows: bool,
    /// At most this many windows (with --windows).
    #[arg(long, requires = "windows")]
    max_windows: Option<usize>,
    /// Join documents in order into groups longer than seqlen before Wanda sampling (for corpora of short documents).
    #[arg(long, conflicts_with_all = ["windows", "whole_docs"])]
    concat: bool,
    /// Output samples artifact.
    #[arg(long)]
    out: PathBuf,
    /// No progress output on stderr.
    #[arg(long)]
    quiet: bool,
}

fn run_collect(a: CollectArgs) -> Result<()> {
    let preset = match &a.preset {
        Some(name) => Some(
            presets::find(name).ok_or_else(|| datasets::DatasetsError::UnknownPreset { name: name.clone(), known: presets::names() })?,
        ),
        None => None,
    };
    let domain = match (&a.domain, preset) {
        (Some(d), _) => d.clone(),
        (None, Some(p)) => p.domain.to_string(),
        (None, None) => bail!("--domain NAME is required (or --preset NAME, which gives one); see `datasets presets`"),
    };
    let text = match (&a.field, &a.template, preset) {
        (Some(f), _, _) => Some(TextSpec::field(f)?),
        (None, Some(t), _) => Some(TextSpec::template(t)?),
        (None, None, Some(p)) => Some(TextSpec::template(p.template)?),
        (None, None, None) => None,
    };
    let opts = CollectOptions {
        domain: domain.clone(),
        from: a.from.clone(),
        text: text.clone(),
        split_filter: a.split.clone(),
        heldout_fraction: a.heldout_fraction,
        max_docs: a.max_docs,
        skip_records: a.skip_records,
        extensions: a.ext.clone(),
        include_vendored: a.include_vendored,
        shard: a.shard,
        progress: !a.quiet && std::io::stderr().is_terminal(),
    };
    let collection = collect(&opts)?;
    for note in &collection.report.notes {
        eprintln!("note: {note}");
    }
    let params = json!({
        "domain": domain,
        "from": a.from.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "text": text.as_ref().map(|t| t.as_str().to_string()),
        "split": a.split,
        "preset": a.preset,
        "heldout_fraction": a.heldout_fraction,
        "max_docs": a.max_docs,
        "skip_records": a.skip_records,
        "ext": a.ext,
        "include_vendored": a.include_vendored,
        "shard": a.shard.map(|(i, n)| format!("{i}/{n}")),
    });
    write_collection(&a.out, &collection, params).with_context(|| format!("writing {}", a.out.display()))?;
    let r = &collection.report;
    println!(
        "wrote {} documents of domain {} ({} calib, {} heldout) to {}",
        collection.documents.len(),
        domain,
        collection.count(Split::Calib),
        collection.count(Split::Heldout),
        a.out.display()
    );
    println!(
        "read {} files and {} records (past {} skipped); skipped {} duplicates, {} minified, {} generated, {} binary, {} empty, {} null-field records, {} of other splits, {} vendored dirs",
        r.files, r.records, r.skipped_records, r.duplicates, r.minified, r.generated, r.binary, r.empty, r.null_records, r.other_split, r.vendored_dirs
    );
    Ok(())
}

fn run_sample(a: SampleArgs) -> Result<()> {
    let mode = if a.windows {
        SampleMode::Windows
    } else if a.whole_docs {
        SampleMode::WholeDocs
    } else {
        SampleMode::Wanda
    };
    let split = match a.split {
        SplitArg::Calib => Split::Calib,
        SplitArg::Heldout => Split::Heldout,
    };
    let opts = SampleOptions {
        nsamples: a.nsamples,
        seqlen: a.seqlen,
        seed: a.seed,
        split,
        mode,
        max_windows: a.max_windows,
        concat: a.concat,
        progress: !a.quiet && std::io::stderr().is_terminal(),
    };
    let params = json!({
        "mode": mode.as_str(),
        "split": split.as_str(),
        "nsamples": (mode != SampleMode::Windows).then_some(a.nsamples),
        "seqlen": a.seqlen,
        "seed": (mode != SampleMode::Windows).then_some(a.seed),
        "max_windows": a.max_windows,
        "concat": a.concat,
        "special_tokens": false,
    });
    let s = sample(&a.documents, &a.model, &opts, &a.out, params)?;
    println!(
        "wrote {} {} samples ({} tokens) from {} {} documents to {}",
        s.samples,
        mode.as_str(),
        s.tokens,
        s.split_docs,
        split.as_str(),
        a.out.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Collect(a) => run_collect(a),
        Command::Sample(a) => run_sample(a),
        Command::Presets => {
            print!("{}", presets::table());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Parses `--shard I/N`.
fn parse_shard_arg(text: &str) -> Result<(u64, u64), String> {
    datasets::collect::parse_shard(text).ok_or_else(|| format!("expected I/N with 0 <= I < N (e.g. 0/2), found `{text}`"))
}
