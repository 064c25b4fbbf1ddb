//! The `score` stage of subprune: the importance score of every weight of the
//! prunable linear modules of a model, from its weights and (for Wanda) the
//! activation statistics gathered by `calibrate`.
//!
//! Scores are computed by [`sparsity::scores`], the same f32 arithmetic that
//! sequential calibration uses internally, so that `mask` run on these scores
//! reproduces calibration's masks bit for bit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use artifacts::{ArtifactError, ArtifactKind, ModuleStats, Provenance, ScoreRow};
use indicatif::ProgressBar;
use model::{LoadedModel, ModelError};
use sparsity::{Method, SparsityError};

/// Everything that can go wrong while scoring.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// Reading or writing an artifact failed, or an artifact is of the wrong kind or version.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// Loading the model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The scoring kernel refused its inputs.
    #[error("scoring {module}: {source}")]
    Kernel {
        /// The module being scored.
        module: String,
        /// The kernel's error.
        #[source]
        source: SparsityError,
    },
    /// A method without per-weight scores (SparseGPT).
    #[error("method `{method}` has no per-weight scores: it chooses what to prune while updating the kept weights; make its mask with `mask --method {method} --hessians hessians.parquet --model MODEL`")]
    NoScores {
        /// The method asked for.
        method: Method,
    },
    /// Wanda needs statistics and none were given.
    #[error("method `{method}` needs activation statistics: pass --stats stats.parquet (written by `calibrate`)")]
    StatsRequired {
        /// The method asked for.
        method: Method,
    },
    /// The statistics were gathered on another model.
    #[error(
        "model mismatch: the statistics {} were gathered on model `{stats_model}` (metadata subprune.model), \
         but the model {} has fingerprint `{model}`; score with the model the statistics were calibrated on",
        .stats_path.display(),
        .model_path.display()
    )]
    ModelMismatch {
        /// The stats file.
        stats_path: PathBuf,
        /// The fingerprint recorded in the stats.
        stats_model: String,
        /// The model file or directory.
        model_path: PathBuf,
        /// The model's fingerprint.
        model: String,
    },
    /// A linear module of the model has no row in the statistics.
    #[error("{}: expected statistics for module `{module}` of the model {}, found none", .stats_path.display(), .model_path.display())]
    MissingModule {
        /// The stats file.
        stats_path: PathBuf,
        /// The module without statistics.
        module: String,
        /// The model file or directory.
        model_path: PathBuf,
    },
    /// The statistics name a module the model's prunable linears do not include.
    #[error(
        "{}: module `{module}` is not a prunable linear module of the model {} (expected modules such as `{example}`)",
        .stats_path.display(),
        .model_path.display()
    )]
    UnknownModule {
        /// The stats file.
        stats_path: PathBuf,
        /// The unknown module.
        module: String,
        /// The model file or directory.
        model_path: PathBuf,
        /// A module name the model does have.
        example: String,
    },
    /// A module appears more than once in the statistics.
    #[error("{}: module `{module}` has more than one row (expected exactly one per linear module)", .stats_path.display())]
    DuplicateModule {
        /// The stats file.
        stats_path: PathBuf,
        /// The repeated module.
        module: String,
    },
    /// The statistics of a module have another width than the module's input.
    #[error(
        "{}: module `{module}` has in_features {found} (and {found_len} statistics), but its weight in the model {} has {expected} input columns",
        .stats_path.display(),
        .model_path.display()
    )]
    InFeatures {
        /// The stats file.
        stats_path: PathBuf,
        /// The module.
        module: String,
        /// The model's input width.
        expected: usize,
        /// The stats' in_features.
        found: u32,
        /// The length of the stats' scaler_row.
        found_len: usize,
        /// The model file or directory.
        model_path: PathBuf,
    },
    /// The model lacks the weight of one of its own linear modules.
    #[error("{}: expected weight `{name}` of shape [{rows}, {cols}], found {found}", .model_path.display())]
    Weight {
        /// The model file or directory.
        model_path: PathBuf,
        /// The tensor name.
        name: String,
        /// Expected rows.
        rows: usize,
        /// Expected columns.
        cols: usize,
        /// What was found.
        found: String,
    },
}

/// A stats artifact read from disk, with its content hash.
#[derive(Debug, Clone)]
pub struct StatsInput {
    /// The file it was read from.
    pub path: PathBuf,
    /// Its provenance.
    pub provenance: Provenance,
    /// Its content hash, `sha256:<hex>`.
    pub hash: String,
    /// One row per linear module.
    pub modules: Vec<ModuleStats>,
}

/// Reads a stats artifact (refusing another kind or schema version) and hashes it.
pub fn load_stats(path: &Path) -> Result<StatsInput, ScoreError> {
    let (provenance, modules) = artifacts::read_stats(path)?;
    let hash = artifacts::content_hash(path)?;
    Ok(StatsInput { path: path.to_path_buf(), provenance, hash, modules })
}

/// Every prunable linear module of the model: (name without `.weight`, out, in), layer by layer.
pub fn linear_modules(model: &LoadedModel) -> Vec<(String, usize, usize)> {
    (0..model.config.num_layers()).flat_map(|l| model.config.linear_modules(l)).collect()
}

/// Checks that `stats` belong to `model`: same fingerprint, one row for every
/// linear module and for no other, with matching input widths. Returns the
/// statistics by module name.
pub fn check_stats<'a>(model: &LoadedModel, stats: &'a StatsInput) -> Result<BTreeMap<&'a str, &'a ModuleStats>, ScoreError> {
    if stats.provenance.model != model.fingerprint {
        return Err(ScoreError::ModelMismatch {
            stats_path: stats.path.clone(),
            stats_model: stats.provenance.model.clone(),
            model_path: model.path.clone(),
            model: model.fingerprint.clone(),
        });
    }
    let modules = linear_modules(model);
    let widths: BTreeMap<&str, usize> = modules.iter().map(|(name, _, cols)| (name.as_str(), *cols)).collect();
    let mut by_name = BTreeMap::new();
    for s in &stats.modules {
        let Some(&cols) = widths.get(s.module.as_str()) else {
            return Err(ScoreError::UnknownModule {
                stats_path: stats.path.clone(),
                module: s.module.clone(),
                model_path: model.path.clone(),
                example: modules.first().map(|m| m.0.clone()).unwrap_or_default(),
            });
        };
        if s.in_features as usize != cols || s.scaler_row.len() != cols {
            return Err(ScoreError::InFeatures {
                stats_path: stats.path.clone(),
                module: s.module.clone(),
                expected: cols,
                found: s.in_features,
                found_len: s.scaler_row.len(),
                model_path: model.path.clone(),
            });
        }
        if by_name.insert(s.module.as_str(), s).is_some() {
            return Err(ScoreError::DuplicateModule { stats_path: stats.path.clone(), module: s.module.clone() });
        }
    }
    if let Some((name, _, _)) = modules.iter().find(|(name, _, _)| !by_name.contains_key(name.as_str())) {
        return Err(ScoreError::MissingModule { stats_path: stats.path.clone(), module: name.clone(), model_path: model.path.clone() });
    }
    Ok(by_name)
}

/// Scores every prunable linear module of `model`, layer by layer, rows in
/// Hugging Face order: `|W_ij|` for magnitude, `|W_ij| * sqrt(scaler_row_j)`
/// for Wanda (stats required and checked with [`check_stats`]; optional for
/// magnitude, checked when given). `progress` advances by one per module.
/// Holds every score; [`run`] writes them module by module instead.
pub fn score_model(
    model: &LoadedModel,
    method: Method,
    stats: Option<&StatsInput>,
    progress: &ProgressBar,
) -> Result<Vec<ScoreRow>, ScoreError> {
    let mut out = Vec::new();
    for module in module_scores(model, method, stats, progress)? {
        out.extend(module?);
    }
    Ok(out)
}

/// The scores of every prunable module as a lazy sequence, one module's rows
/// at a time (its weight read from the checkpoint when the module comes up),
/// after the statistics are checked against the model.
pub fn module_scores<'a>(
    model: &'a LoadedModel,
    method: Method,
    stats: Option<&'a StatsInput>,
    progress: &'a ProgressBar,
) -> Result<impl Iterator<Item = Result<Vec<ScoreRow>, ScoreError>> + 'a, ScoreError> {
    if method.updates_weights() {
        return Err(ScoreError::NoScores { method });
    }
    let by_name = stats.map(|s| check_stats(model, s)).transpose()?;
    if method.needs_stats() && by_name.is_none() {
        return Err(ScoreError::StatsRequired { method });
    }
    let modules = linear_modules(model);
    progress.set_length(modules.len() as u64);
    Ok(modules.into_iter().map(move |(name, rows, cols)| {
        let stat = match method {
            Method::Wanda | Method::Ria | Method::SparseGpt => {
                by_name.as_ref().and_then(|m| m.get(name.as_str())).map(|s| s.scaler_row.as_slice())
            }
            Method::Magnitude => None,
        };
        let scored = score_module(model, method, stat, &name, rows, cols);
        progress.inc(1);
        scored
    }))
}

/// The score rows of one module, its weight read now.
fn score_module(
    model: &LoadedModel,
    method: Method,
    stat: Option<&[f32]>,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<Vec<ScoreRow>, ScoreError> {
    let weight_name = format!("{name}.weight");
    let shape = model.weights.shape(&weight_name).ok_or_else(|| ScoreError::Weight {
        model_path: model.path.clone(),
        name: weight_name.clone(),
        rows,
        cols,
        found: "no such tensor".to_string(),
    })?;
    if shape != [rows, cols] {
        return Err(ScoreError::Weight {
            model_path: model.path.clone(),
            name: weight_name,
            rows,
            cols,
            found: format!("shape {shape:?}"),
        });
    }
    let weight = model.weights.load(&weight_name)?;
    let scores = sparsity::scores(method, &weight.data, rows, cols, stat)
        .map_err(|source| ScoreError::Kernel { module: name.to_string(), source })?;
    Ok(scores
        .chunks_exact(cols.max(1))
        .take(rows)
        .enumerate()
        .map(|(r, s)| ScoreRow { module: name.to_string(), row: r as u32, score: s.to_vec() })
        .collect())
}

/// The provenance of a scores artifact: the model's fingerprint, the stats'
/// content hash as input `stats`, and params `{"method", "stats_params"}` where
/// `stats_params` copies the calibration options (null without stats).
pub fn scores_provenance(model: &LoadedModel, method: Method, stats: Option<&StatsInput>) -> Provenance {
    let params = serde_json::json!({
        "method": method.as_str(),
        "stats_params": stats.map_or(serde_json::Value::Null, |s| s.provenance.params.clone()),
    });
    let p = Provenance::new(ArtifactKind::Scores, model.fingerprint.clone(), params, created_by());
    match stats {
        Some(s) => p.with_input("stats", s.hash.clone()),
        None => p,
    }
}

/// The `subprune.created_by` value of this stage.
pub fn created_by() -> String {
    format!("subprune-score {}", env!("CARGO_PKG_VERSION"))
}

/// What [`run`] did.
#[derive(Debug, Clone)]
pub struct ScoreSummary {
    /// Modules scored.
    pub modules: usize,
    /// Output rows written.
    pub rows: usize,
    /// Scores written.
    pub weights: u64,
    /// Content hash of the written scores file.
    pub hash: String,
}

/// Loads the model (and stats, when given), scores it and writes the scores artifact to `out`.
pub fn run(
    model_path: &Path,
    stats_path: Option<&Path>,
    method: Method,
    out: &Path,
    progress: &ProgressBar,
) -> Result<ScoreSummary, ScoreError> {
    let stats = stats_path.map(load_stats).transpose()?;
    let model = model::load_model(model_path)?;
    let provenance = scores_provenance(&model, method, stats.as_ref());
    let modules = linear_modules(&model).len();
    // Module by module: one weight and its scores are held at a time.
    let (mut rows, mut weights) = (0usize, 0u64);
    let counted = module_scores(&model, method, stats.as_ref(), progress)?.inspect(|module| {
        if let Ok(module) = module {
            rows += module.len();
            weights += module.iter().map(|r| r.score.len() as u64).sum::<u64>();
        }
    });
    let hash = artifacts::write_scores_streamed(out, counted, &provenance)?;
    Ok(ScoreSummary { modules, rows, weights, hash })
}
