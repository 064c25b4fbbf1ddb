//! Analysis stage of subprune: Jaccard distances between the pruned weights of
//! masks, figures (PNG, drawn by a small built-in rasteriser) and the Markdown
//! report of a run.
//!
//! Everything is read from artifacts: masks and results in, a `jaccard` artifact,
//! PNG figures and `report.md` out.

mod error;
pub mod figures;
pub mod items;
pub mod jaccard;
pub mod raster;
pub mod report;

pub use error::AnalyzeError;
pub use jaccard::{compute_jaccard, write_table, JaccardTable, NamedMask};
pub use report::{
    read_manifest, write_partial_report, write_report, ClaimCheck, MaskEntry, ModelEntry, ReportOutput, ResultEntry, RunManifest, Verdict,
};

/// The `created_by` of the artifacts this crate writes.
pub fn created_by() -> String {
    format!("subprune-analyze {}", env!("CARGO_PKG_VERSION"))
}
