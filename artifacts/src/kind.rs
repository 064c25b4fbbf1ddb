//! The kinds of artifact subprune writes.

use std::fmt;
use std::str::FromStr;

/// The kind of an artifact, stored in the metadata key `subprune.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ArtifactKind {
    /// One row per source document (`documents`).
    Documents,
    /// One row per calibration sequence (`samples`).
    Samples,
    /// One row per linear module: activation statistics (`stats`).
    Stats,
    /// One row per distinct input of a layer's linear modules: SparseGPT's
    /// Hessian of it (`hessians`).
    Hessians,
    /// One row per output row of a linear: importance scores (`scores`).
    Scores,
    /// One row per output row of a linear: packed keep bits (`mask`).
    Mask,
    /// One row per (model, mask, task, metric) (`results`).
    Results,
    /// One row per (mask A, mask B, module) (`jaccard`).
    Jaccard,
    /// One row per evaluated item (and sample) of a task: the per-item details
    /// beside a results artifact (`items`).
    Items,
}

impl ArtifactKind {
    /// Every kind, in pipeline order.
    pub const ALL: [ArtifactKind; 9] = [
        ArtifactKind::Documents,
        ArtifactKind::Samples,
        ArtifactKind::Stats,
        ArtifactKind::Hessians,
        ArtifactKind::Scores,
        ArtifactKind::Mask,
        ArtifactKind::Results,
        ArtifactKind::Jaccard,
        ArtifactKind::Items,
    ];

    /// The lowercase name stored in `subprune.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::Documents => "documents",
            ArtifactKind::Samples => "samples",
            ArtifactKind::Stats => "stats",
            ArtifactKind::Hessians => "hessians",
            ArtifactKind::Scores => "scores",
            ArtifactKind::Mask => "mask",
            ArtifactKind::Results => "results",
            ArtifactKind::Jaccard => "jaccard",
            ArtifactKind::Items => "items",
        }
    }

    /// The names of every kind, in pipeline order.
    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|k| k.as_str()).collect()
    }
}

impl fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an unknown artifact kind name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown artifact kind `{found}`; expected one of {}", ArtifactKind::names().join(", "))]
pub struct UnknownKindError {
    /// The name that was not recognised.
    pub found: String,
}

impl FromStr for ArtifactKind {
    type Err = UnknownKindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.iter().copied().find(|k| k.as_str() == s).ok_or_else(|| UnknownKindError { found: s.to_string() })
    }
}
