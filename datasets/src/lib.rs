//! The `datasets` stage of subprune: corpora -> `documents.parquet` -> `samples.parquet`.
//!
//! - [`collect`] gathers documents of one domain from directory trees of source
//!   code (chosen by extension and shebang, skipping minified, generated,
//!   vendored and binary files), from Hugging Face style data files (JSONL,
//!   JSONL.gz, JSON, Parquet; text from a field or a template) and from plain
//!   text files. Documents are deduplicated by content and split into `calib`
//!   and `heldout` by a hash of their text, so identical text always lands in
//!   one split and held-out text never reaches calibration.
//! - [`sample`] tokenizes the documents of one split with a model's tokenizer
//!   and draws calibration sequences (Wanda's sampling, whole documents) or
//!   non-overlapping windows for perplexity.
//! - [`presets`] lists the data sets the paper calibrated each domain with.

pub mod collect;
mod error;
pub mod presets;
pub mod rng;
pub mod sample;
pub mod text;
pub mod tree;

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use collect::{collect, write_collection, CollectOptions, CollectReport, Collection};
pub use error::DatasetsError;
pub use sample::{sample, SampleMode, SampleOptions, SampleSummary};
pub use text::TextSpec;

/// The tool name and version recorded in `subprune.created_by`.
pub const CREATED_BY: &str = concat!("subprune-datasets ", env!("CARGO_PKG_VERSION"));

/// A spinner on stderr with `message`, hidden unless `show` (indicatif also
/// hides it when stderr is not a terminal).
pub fn progress_spinner(show: bool, message: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(ProgressStyle::with_template("{spinner} {prefix}: {msg} [{elapsed}]").expect("valid template"));
    bar.set_prefix(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// A progress bar of `total` steps on stderr, hidden unless `show` (and when
/// stderr is not a terminal).
pub fn progress_bar(show: bool, total: u64, message: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} [{elapsed} < {eta}]").expect("valid template").progress_chars("=> "),
    );
    bar.set_prefix(message.to_string());
    bar
}
