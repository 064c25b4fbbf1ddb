//! The `mask` stage of subprune: the keep-mask of every prunable linear module
//! from a scores artifact ([`make_mask`]), and the pruned model written as a
//! Hugging Face checkpoint directory ([`apply`]).
//!
//! Selection is [`sparsity::keep_mask`], the same code sequential calibration
//! prunes with, so a mask made from the scores of calibration's statistics with
//! calibration's options equals the mask calibration applied, bit for bit.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use artifacts::{ArtifactError, ArtifactKind, LayerOrderedMaskWriter, MaskInfo, MaskRow, MaskWriter, Provenance, ScoreRow};
use indicatif::ProgressBar;
use model::safetensors::{ShardedWriter, StoredDtype, TensorLayout};
use model::{LoadedModel, ModelError, StoredType};
use rayon::prelude::*;
use serde_json::Value;
use sparsity::owl::SparsityProfile;
use sparsity::{Group, Pattern, SparsityError};

/// Everything that can go wrong while making or applying a mask.
#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    /// Reading or writing an artifact failed, or an artifact is of the wrong kind or version.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// Loading the model or writing its weights failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Options that do not go together.
    #[error("{0}")]
    Options(String),
    /// The selection kernel refused a module's scores.
    #[error("{}: module `{module}`: {source}", .path.display())]
    Kernel {
        /// The scores or mask file.
        path: PathBuf,
        /// The module.
        module: String,
        /// The kernel's error.
        #[source]
        source: SparsityError,
    },
    /// The rows of a module in a scores or mask file are not one row per output row.
    #[error("{}: module `{module}`: expected {expected}, found {found}", .path.display())]
    Rows {
        /// The scores or mask file.
        path: PathBuf,
        /// The module.
        module: String,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// The mask was made for another model.
    #[error(
        "model mismatch: the mask {} was made for model `{mask_model}` (metadata subprune.model), \
         but the model {} has fingerprint `{model}`; apply a mask to the model it was made for",
        .mask_path.display(),
        .model_path.display()
    )]
    ModelMismatch {
        /// The mask file.
        mask_path: PathBuf,
        /// The fingerprint recorded in the mask.
        mask_model: String,
        /// The model file or directory.
        model_path: PathBuf,
        /// The model's fingerprint.
        model: String,
    },
    /// A masked module does not exist in the model or has another shape.
    #[error("{}: module `{module}`: expected weight `{module}.weight` of shape [{rows}, {cols}] in the model {}, found {found}", .mask_path.display(), .model_path.display())]
    Shape {
        /// The mask file.
        mask_path: PathBuf,
        /// The module.
        module: String,
        /// Rows the mask has.
        rows: usize,
        /// Columns the mask has.
        cols: usize,
        /// The model file or directory.
        model_path: PathBuf,
        /// What the model has.
        found: String,
    },
    /// The output directory exists and is not empty.
    #[error("output directory {} exists and is not empty; pass --force to replace it", .0.display())]
    OutputExists(PathBuf),
    /// A file-system operation on the output failed.
    #[error("I/O error on {}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MaskError + '_ {
    move |source| MaskError::Io { path: path.to_path_buf(), source }
}

/// The `subprune.created_by` value of this stage.
pub fn created_by() -> String {
    format!("subprune-mask {}", env!("CARGO_PKG_VERSION"))
}

pub use artifacts::layer_of;

/// The scores of one linear module as a row-major `[rows, cols]` matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleScores {
    /// Hugging Face parameter name without `.weight`.
    pub module: String,
    /// Output rows.
    pub rows: usize,
    /// Input columns.
    pub cols: usize,
    /// `rows * cols` scores, row-major.
    pub scores: Vec<f32>,
}

/// Groups score rows by module, in order of first appearance, checking that
/// every module has rows `0..n` exactly once, all of the same length.
pub fn group_scores(path: &Path, rows: Vec<ScoreRow>) -> Result<Vec<ModuleScores>, MaskError> {
    let mut order: Vec<String> = Vec::new();
    let mut by_module: BTreeMap<String, Vec<ScoreRow>> = BTreeMap::new();
    for r in rows {
        if !by_module.contains_key(&r.module) {
            order.push(r.module.clone());
        }
        by_module.entry(r.module.clone()).or_default().push(r);
    }
    let mut out = Vec::with_capacity(order.len());
    for module in order {
        let mut rows = by_module.remove(&module).expect("grouped above");
        rows.sort_by_key(|r| r.row);
        let cols = rows[0].score.len();
        let err = |expected: String, found: String| MaskError::Rows { path: path.to_path_buf(), module: module.clone(), expected, found };
        if let Some((i, r)) = rows.iter().enumerate().find(|(i, r)| r.row as usize != *i) {
            let what = if i > 0 && rows[i - 1].row == r.row { format!("row {} twice", r.row) } else { format!("row {} missing", i) };
            return Err(err(format!("one row for each output row 0..{}", rows.len()), what));
        }
        if let Some(r) = rows.iter().find(|r| r.score.len() != cols) {
            return Err(err(format!("{cols} scores in every row (as in row 0)"), format!("{} in row {}", r.score.len(), r.row)));
        }
        let n = rows.len();
        let mut scores = Vec::with_capacity(n * cols);
        for r in rows {
            scores.extend_from_slice(&r.score);
        }
        out.push(ModuleScores { module, rows: n, cols, scores });
    }
    Ok(out)
}

/// How many weights of one module a mask prunes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSummary {
    /// The module.
    pub module: String,
    /// Its decoder layer, if the name has one.
    pub layer: Option<u32>,
    /// Weights in the module.
    pub total: u64,
    /// Weights pruned.
    pub pruned: u64,
}

/// Pruned fraction per decoder layer, in layer order (modules without a layer under `None`).
pub fn per_layer(summary: &[ModuleSummary]) -> Vec<(Option<u32>, u64, u64)> {
    let mut layers: BTreeMap<Option<u32>, (u64, u64)> = BTreeMap::new();
    for m in summary {
        let e = layers.entry(m.layer).or_default();
        e.0 += m.pruned;
        e.1 += m.total;
    }
    layers.into_iter().map(|(l, (p, t))| (l, p, t)).collect()
}

/// Overall pruned fraction of a summary (0 when empty).
pub fn overall(summary: &[ModuleSummary]) -> f64 {
    let (p, t) = summary.iter().fold((0u64, 0u64), |(p, t), m| (p + m.pruned, t + m.total));
    if t == 0 {
        0.0
    } else {
        p as f64 / t as f64
    }
}

/// The keep-masks `method` selects in every module under `pattern` and
/// `group` (via [`sparsity::select`]), as mask rows, plus a per-module
/// summary. `progress` advances by one per module; `path` names the scores in errors.
pub fn build_mask(
    path: &Path,
    modules: &[ModuleScores],
    (method, pattern): (sparsity::Method, Pattern),
    group: Group,
    progress: &ProgressBar,
) -> Result<(Vec<MaskRow>, Vec<ModuleSummary>), MaskError> {
    progress.set_length(modules.len() as u64);
    let mut rows = Vec::with_capacity(modules.iter().map(|m| m.rows).sum());
    let mut summary = Vec::with_capacity(modules.len());
    for m in modules {
        let keep = sparsity::select(method, &m.scores, m.rows, m.cols, pattern, group).map_err(|source| MaskError::Kernel {
            path: path.to_path_buf(),
            module: m.module.clone(),
            source,
        })?;
        let pruned = keep.iter().filter(|k| !**k).count() as u64;
        for (r, row) in keep.chunks_exact(m.cols.max(1)).take(m.rows).enumerate() {
            rows.push(MaskRow {
                module: m.module.clone(),
                row: r as u32,
                in_features: m.cols as u32,
                keep: sparsity::pack_bits(row),
                values: None,
            });
        }
        summary.push(ModuleSummary { module: m.module.clone(), layer: layer_of(&m.module), total: keep.len() as u64, pruned });
        progress.inc(1);
    }
    Ok((rows, summary))
}

/// A warning when the scores come from the statistics of a sequential
/// `calibrate` run whose method, pattern or group differ from this mask's:
/// calibration then pruned layers differently while gathering the statistics
/// of later layers, so this mask will not equal the one calibration applied.
pub fn calibration_mismatch(scores_path: &Path, scores: &Provenance, pattern: Pattern, group: Group) -> Option<String> {
    let stats = scores.params.get("stats_params")?.as_object()?;
    if stats.get("oneshot").and_then(Value::as_bool) != Some(false) {
        return None;
    }
    let method = scores.params.get("method").and_then(Value::as_str).unwrap_or("");
    let cal_method = stats.get("method").and_then(Value::as_str).unwrap_or("");
    let cal_pattern_label = stats.get("pattern").and_then(Value::as_str).unwrap_or("");
    let cal_group = stats.get("group").and_then(Value::as_str).unwrap_or("row");
    let cal_pattern = cal_pattern_label.parse::<Pattern>().ok();
    let same_group = matches!(pattern, Pattern::NM { .. }) || cal_group == group.to_string();
    if cal_method == method && cal_pattern == Some(pattern) && same_group {
        return None;
    }
    Some(format!(
        "warning: {} was scored ({method}) from the statistics of a sequential calibrate run with method {cal_method}, \
         pattern {cal_pattern_label}, group {cal_group}; this mask uses method {method}, pattern {}, group {group}, so it will \
         not equal the mask calibrate applied while gathering the statistics (use --oneshot calibration, or the same options)",
        scores_path.display(),
        pattern.to_string()
    ))
}

/// What [`make_mask`] did.
#[derive(Debug, Clone)]
pub struct MakeSummary {
    /// Per-module pruned counts.
    pub modules: Vec<ModuleSummary>,
    /// Overall pruned fraction.
    pub sparsity: f64,
    /// Content hash of the written mask.
    pub hash: String,
    /// The calibration mismatch warning, if any (see [`calibration_mismatch`]).
    pub warning: Option<String>,
}

/// Reads a scores artifact, selects the weights to prune and writes the mask artifact to `out`.
pub fn make_mask(scores_path: &Path, pattern: Pattern, group: Group, out: &Path, progress: &ProgressBar) -> Result<MakeSummary, MaskError> {
    check_group(pattern, group)?;
    let (provenance, rows) = artifacts::read_scores(scores_path)?;
    let hash = artifacts::content_hash(scores_path)?;
    let warning = calibration_mismatch(scores_path, &provenance, pattern, group);
    let modules = group_scores(scores_path, rows)?;
    // The method the scores were made by decides how they are selected (RIA's N:M reallocates channels).
    let method =
        provenance.params.get("method").and_then(Value::as_str).and_then(|m| m.parse().ok()).unwrap_or(sparsity::Method::Magnitude);
    let (mask_rows, summary) = build_mask(scores_path, &modules, (method, pattern), group, progress)?;
    drop(modules);
    write_made_mask(out, &mask_rows, summary, &provenance, ("scores", hash), pattern, group, warning)
}

/// Refuses a comparison group other than rows with an N:M pattern.
fn check_group(pattern: Pattern, group: Group) -> Result<(), MaskError> {
    if matches!(pattern, Pattern::NM { .. }) && group != Group::Row {
        return Err(MaskError::Options(format!(
            "--group {group} has no meaning with an N:M pattern ({}): N:M compares the weights of each group of M inputs of a row",
            pattern.to_string()
        )));
    }
    Ok(())
}

/// Writes a made mask's rows (see [`finish_made_mask`]).
#[allow(clippy::too_many_arguments)]
fn write_made_mask(
    out: &Path,
    rows: &[MaskRow],
    summary: Vec<ModuleSummary>,
    scores: &Provenance,
    input: (&str, String),
    pattern: Pattern,
    group: Group,
    warning: Option<String>,
) -> Result<MakeSummary, MaskError> {
    let write = |info: &MaskInfo, provenance: &Provenance| artifacts::write_mask(out, rows, info, provenance);
    finish_made_mask(write, summary, scores, input, pattern, group, warning)
}

/// Finishes a made mask (`finish` writes it with its info and provenance):
/// the provenance holds the scores' provenance (`scores`, as `score`
/// writes it, or as it would for scores computed in place) under
/// `scores_params`, and `input` (name, content hash) as the input.
#[allow(clippy::too_many_arguments)]
fn finish_made_mask(
    finish: impl FnOnce(&MaskInfo, &Provenance) -> Result<String, artifacts::ArtifactError>,
    summary: Vec<ModuleSummary>,
    scores: &Provenance,
    (input, hash): (&str, String),
    pattern: Pattern,
    group: Group,
    warning: Option<String>,
) -> Result<MakeSummary, MaskError> {
    let method = scores.params.get("method").and_then(Value::as_str).unwrap_or("unknown").to_string();
    let sparsity = overall(&summary);
    let info = MaskInfo { method: method.clone(), sparsity, pattern: pattern.to_string(), group: group.to_string() };
    let (ratio, nm) = match pattern {
        Pattern::Unstructured { sparsity } => (Value::from(sparsity), Value::Null),
        Pattern::NM { .. } => (Value::Null, Value::from(pattern.to_string())),
    };
    let params = serde_json::json!({
        "method": method,
        "pattern": pattern.to_string(),
        "sparsity": ratio,
        "nm": nm,
        "group": group.to_string(),
        "scores_params": scores.params,
    });
    let mask_provenance = Provenance::new(ArtifactKind::Mask, scores.model.clone(), params, created_by()).with_input(input, hash);
    let written = finish(&info, &mask_provenance)?;
    Ok(MakeSummary { modules: summary, sparsity, hash: written, warning })
}

/// Selects the weights to prune from scores computed, module by module,
/// from a statistics artifact and the model's weights, and writes the mask
/// artifact to `out`: the mask `score` + [`make_mask`] would give, without
/// a scores artifact (which, at one f32 per weight, is what would limit
/// scale: 26 GB for a 7B model). Only one module's weight and scores are
/// held at a time.
pub fn make_mask_from_stats(
    model_path: &Path,
    stats_path: &Path,
    method: sparsity::Method,
    (pattern, profile): (Pattern, SparsityProfile),
    group: Group,
    out: &Path,
    progress: &ProgressBar,
) -> Result<MakeSummary, MaskError> {
    check_group(pattern, group)?;
    let (stats_provenance, stats) = artifacts::read_stats(stats_path)?;
    let layer_patterns = layer_patterns(stats_path, &stats_provenance, pattern, profile)?;
    let stats_hash = artifacts::content_hash(stats_path)?;
    let model = model::load_model(model_path)?;
    if stats_provenance.model != model.fingerprint {
        return Err(MaskError::Options(format!(
            "{} was gathered on model {}, but {} is model {}: statistics and weights must be of one model",
            stats_path.display(),
            stats_provenance.model,
            model_path.display(),
            model.fingerprint
        )));
    }
    let by_module: BTreeMap<&str, &artifacts::ModuleStats> = stats.iter().map(|s| (s.module.as_str(), s)).collect();
    // The provenance `score` would give these scores, so that the mask's
    // params (and the calibration check) are those of the two-stage path.
    let mut scores_params = serde_json::json!({"method": method.as_str(), "stats_params": stats_provenance.params});
    if profile != SparsityProfile::Uniform {
        // Only OWL's masks say so: a uniform one has the params of the two-stage path.
        scores_params["sparsity_profile"] = profile.as_str().into();
    }
    let scores_provenance = Provenance::new(ArtifactKind::Scores, model.fingerprint.clone(), scores_params, created_by());
    let warning = calibration_mismatch(stats_path, &scores_provenance, pattern, group);
    let modules: Vec<(String, usize, usize)> = (0..model.config.num_layers()).flat_map(|l| model.config.linear_modules(l)).collect();
    progress.set_length(modules.len() as u64);
    // Each module's rows are written as soon as they are chosen.
    let mut writer = MaskWriter::create(out, false)?;
    let mut summary = Vec::with_capacity(modules.len());
    for (module, rows, cols) in modules {
        let stat = by_module.get(module.as_str()).ok_or_else(|| MaskError::Rows {
            path: stats_path.to_path_buf(),
            module: module.clone(),
            expected: format!("statistics of every linear module of {}", model_path.display()),
            found: "none for this module".to_string(),
        })?;
        if stat.scaler_row.len() != cols {
            return Err(MaskError::Rows {
                path: stats_path.to_path_buf(),
                module: module.clone(),
                expected: format!("{cols} input columns, as the model's weight has"),
                found: format!("{} statistics", stat.scaler_row.len()),
            });
        }
        let weight = model.weights.load(&format!("{module}.weight"))?;
        let scores = sparsity::scores(method, &weight.data, rows, cols, Some(&stat.scaler_row)).map_err(|source| MaskError::Kernel {
            path: stats_path.to_path_buf(),
            module: module.clone(),
            source,
        })?;
        drop(weight);
        let module_pattern = match (&layer_patterns, layer_of(&module)) {
            (Some(layers), Some(layer)) => *layers.get(layer as usize).ok_or_else(|| {
                MaskError::Options(format!(
                    "{} has OWL sparsities for {} layers; {module} is past them",
                    stats_path.display(),
                    layers.len()
                ))
            })?,
            _ => pattern,
        };
        let module_scores = [ModuleScores { module, rows, cols, scores }];
        let (rows, module_summary) = build_mask(stats_path, &module_scores, (method, module_pattern), group, &ProgressBar::hidden())?;
        rows.into_iter().try_for_each(|row| writer.push(row))?;
        summary.extend(module_summary);
        progress.inc(1);
    }
    let finish = |info: &MaskInfo, provenance: &Provenance| writer.finish(info, provenance);
    finish_made_mask(finish, summary, &scores_provenance, ("stats", stats_hash), pattern, group, warning)
}

/// Prunes every linear module with SparseGPT from the Hessians artifact
/// that `calibrate --method sparsegpt` wrote (with its block size and
/// dampening) and writes the mask artifact with the kept weights' updated
/// values: the masks and values sequential calibration applied, bit for bit,
/// when the pattern is calibration's. With the OWL profile, each layer's
/// sparsity comes from `stats_path` (the statistics of the same run). One
/// Hessian and one weight are held at a time, besides the mask being built.
pub fn make_mask_from_hessians(
    model_path: &Path,
    hessians_path: &Path,
    stats_path: Option<&Path>,
    (pattern, profile): (Pattern, SparsityProfile),
    out: &Path,
    progress: &ProgressBar,
) -> Result<MakeSummary, MaskError> {
    let reader = artifacts::HessiansReader::open(hessians_path)?;
    let hessians = reader.provenance().clone();
    let model = model::load_model(model_path)?;
    if hessians.model != model.fingerprint {
        return Err(MaskError::Options(format!(
            "{} was gathered on model {}, but {} is model {}: Hessians and weights must be of one model",
            hessians_path.display(),
            hessians.model,
            model_path.display(),
            model.fingerprint
        )));
    }
    let setting = |key: &str| {
        hessians.params.get(key).and_then(Value::as_f64).ok_or_else(|| {
            MaskError::Options(format!("{} has no SparseGPT `{key}` in its params (subprune.params)", hessians_path.display()))
        })
    };
    let (blocksize, percdamp) = (setting("blocksize")? as usize, setting("percdamp")?);
    let options = |pattern| sparsity::sparsegpt::SparseGptOptions { pattern, blocksize, percdamp };
    let layer_patterns = match (profile, stats_path) {
        (SparsityProfile::Uniform, _) => None,
        (_, None) => {
            return Err(MaskError::Options(
                "the OWL profile takes each layer's sparsity from the statistics of the calibrate run: give --stats too".into(),
            ))
        }
        (_, Some(stats_path)) => {
            let (stats, _) = artifacts::read_stats(stats_path)?;
            if stats.inputs.get("samples") != hessians.inputs.get("samples") || stats.model != hessians.model {
                return Err(MaskError::Options(format!(
                    "{} and {} come from different calibrate runs (other samples or model)",
                    stats_path.display(),
                    hessians_path.display()
                )));
            }
            layer_patterns(stats_path, &stats, pattern, profile)?
        }
    };
    let calibrated = hessians.params.get("pattern").and_then(Value::as_str).and_then(|p| p.parse::<Pattern>().ok());
    let sequential = hessians.params.get("oneshot").and_then(Value::as_bool) == Some(false);
    let warning = (sequential && calibrated != Some(pattern)).then(|| {
        format!(
            "warning: {} comes from a sequential SparseGPT calibration with pattern {}; this mask uses {}, so it will not equal              the mask calibrate applied while gathering the Hessians of later layers",
            hessians_path.display(),
            calibrated.map_or_else(|| "?".to_string(), |p| p.to_string()),
            pattern
        )
    });
    let expected: Vec<(String, usize, usize)> = (0..model.config.num_layers()).flat_map(|l| model.config.linear_modules(l)).collect();
    progress.set_length(expected.len() as u64);
    let shapes: BTreeMap<&str, (usize, usize)> = expected.iter().map(|(m, r, c)| (m.as_str(), (*r, *c))).collect();
    let mut done: BTreeMap<String, ModuleSummary> = BTreeMap::new();
    // The Hessians come input by input, layer after layer; the mask lists
    // modules in the model's order, holding one layer's rows at a time.
    let mut writer = LayerOrderedMaskWriter::new(MaskWriter::create(out, true)?, model.config.linear_module_order());
    for row in reader {
        let row = row?;
        let n = row.in_features as usize;
        let hessian = sparsity::sparsegpt::Hessian::from_values(row.full(), n, row.n_samples as usize)
            .map_err(|source| MaskError::Kernel { path: hessians_path.to_path_buf(), module: row.modules[0].clone(), source })?;
        let module_pattern = match &layer_patterns {
            Some(layers) => *layers.get(row.layer as usize).ok_or_else(|| {
                MaskError::Options(format!(
                    "{} has OWL sparsities for {} layers; layer {} is past them",
                    hessians_path.display(),
                    layers.len(),
                    row.layer
                ))
            })?,
            None => pattern,
        };
        for module in &row.modules {
            let Some(&(_, cols)) = shapes.get(module.as_str()) else {
                return Err(MaskError::Rows {
                    path: hessians_path.to_path_buf(),
                    module: module.clone(),
                    expected: format!("a linear module of {}", model_path.display()),
                    found: "a module the model does not prune".into(),
                });
            };
            if cols != n || done.contains_key(module) || row.modules.iter().filter(|m| *m == module).count() > 1 {
                return Err(MaskError::Rows {
                    path: hessians_path.to_path_buf(),
                    module: module.clone(),
                    expected: format!("one Hessian of {cols} inputs"),
                    found: if cols != n { format!("a Hessian of {n} inputs") } else { "a second Hessian".into() },
                });
            }
        }
        // The modules of one input share its factored Hessian and are pruned in parallel.
        let prepared = sparsity::sparsegpt::PreparedHessian::new(&hessian, percdamp)
            .map_err(|e| MaskError::Options(format!("SparseGPT on {} ({}): {e}", row.modules.join(", "), hessians_path.display())))?;
        let pruned: Vec<(Vec<f32>, Vec<bool>)> = row
            .modules
            .par_iter()
            .map(|module| {
                let (rows, cols) = shapes[module.as_str()];
                let weight = model.weights.load(&format!("{module}.weight"))?;
                sparsity::sparsegpt::sparsegpt_f32(&weight.data, rows, cols, &prepared, &options(module_pattern))
                    .map_err(|e| MaskError::Options(format!("SparseGPT on {module} ({}): {e}", hessians_path.display())))
            })
            .collect::<Result<_, _>>()?;
        for (module, (updated, keep)) in row.modules.iter().zip(pruned) {
            let cols = n;
            for (r, (bits, kept)) in sparsity::sparsegpt::kept_rows(&keep, &updated, cols).enumerate() {
                writer.push(MaskRow { module: module.clone(), row: r as u32, in_features: cols as u32, keep: bits, values: Some(kept) })?;
            }
            let pruned = keep.iter().filter(|k| !**k).count() as u64;
            done.insert(
                module.clone(),
                ModuleSummary { module: module.clone(), layer: layer_of(module), total: keep.len() as u64, pruned },
            );
            progress.inc(1);
        }
    }
    if let Some((missing, _, _)) = expected.iter().find(|(m, _, _)| !done.contains_key(m)) {
        return Err(MaskError::Rows {
            path: hessians_path.to_path_buf(),
            module: missing.clone(),
            expected: format!("a Hessian for every linear module of {}", model_path.display()),
            found: "none for this module".into(),
        });
    }
    let summary = expected.iter().map(|(m, _, _)| done.remove(m).expect("checked above")).collect();
    let params = serde_json::json!({"method": sparsity::Method::SparseGpt.as_str(), "hessians_params": hessians.params});
    let provenance = Provenance::new(ArtifactKind::Scores, model.fingerprint.clone(), params, created_by());
    let hash = artifacts::content_hash(hessians_path)?;
    let finish = |info: &MaskInfo, provenance: &Provenance| writer.finish(info, provenance);
    finish_made_mask(finish, summary, &provenance, ("hessians", hash), pattern, Group::Row, warning)
}

/// The pattern of each layer under `profile`: `None` for a uniform profile;
/// for OWL, the layer sparsities the statistics' calibrate run chose
/// (`calibrate --sparsity-profile owl`), which must average `pattern`'s.
fn layer_patterns(
    stats_path: &Path,
    stats: &Provenance,
    pattern: Pattern,
    profile: SparsityProfile,
) -> Result<Option<Vec<Pattern>>, MaskError> {
    if profile == SparsityProfile::Uniform {
        return Ok(None);
    }
    let Pattern::Unstructured { sparsity } = pattern else {
        return Err(MaskError::Options(
            "the OWL sparsity profile spreads an unstructured sparsity (--sparsity) over the layers; N:M is uniform".into(),
        ));
    };
    let recorded = stats.params.get(artifacts::PARAM_LAYER_SPARSITIES).and_then(Value::as_array).ok_or_else(|| {
        MaskError::Options(format!(
            "{} holds no OWL layer sparsities: calibrate with --sparsity-profile owl (and the same --sparsity) to make them",
            stats_path.display()
        ))
    })?;
    let layers: Vec<f64> = recorded.iter().filter_map(Value::as_f64).collect();
    let mean = layers.iter().sum::<f64>() / layers.len().max(1) as f64;
    if layers.len() != recorded.len() || layers.is_empty() || (mean - sparsity).abs() > 0.01 {
        return Err(MaskError::Options(format!(
            "{}: its OWL layer sparsities average {mean:.4}, but this mask asks for --sparsity {sparsity}: calibrate again with it",
            stats_path.display()
        )));
    }
    layers
        .into_iter()
        .map(|s| Pattern::unstructured(s).map_err(|e| MaskError::Options(format!("{}: {e}", stats_path.display()))))
        .collect::<Result<_, _>>()
        .map(Some)
}

/// Storage type of the weights `mask apply` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputDtype {
    /// float32: the weights exactly as loaded (GGUF weights dequantized).
    F32,
    /// float16, rounded to nearest even.
    F16,
    /// bfloat16, rounded to nearest even.
    Bf16,
}

impl OutputDtype {
    /// The safetensors storage type.
    pub fn stored(self) -> StoredDtype {
        match self {
            OutputDtype::F32 => StoredDtype::F32,
            OutputDtype::F16 => StoredDtype::F16,
            OutputDtype::Bf16 => StoredDtype::BF16,
        }
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone)]
pub struct ApplySummary {
    /// Modules the mask covered.
    pub modules: usize,
    /// Weights in the masked modules.
    pub total: u64,
    /// Weights the mask prunes.
    pub masked: u64,
    /// Weights of the masked modules that are zero after masking (pruned ones
    /// plus any that were zero already), counted in f32.
    pub zeros: u64,
}

/// Checks a mask against a model and groups its rows by module.
///
/// Refuses a mask of another model fingerprint, and masked modules that the
/// model lacks or whose shape differs (rows are checked when applied).
pub fn check_mask(
    model: &LoadedModel,
    mask_path: &Path,
    provenance: &Provenance,
    rows: Vec<MaskRow>,
) -> Result<BTreeMap<String, Vec<MaskRow>>, MaskError> {
    if provenance.model != model.fingerprint {
        return Err(MaskError::ModelMismatch {
            mask_path: mask_path.to_path_buf(),
            mask_model: provenance.model.clone(),
            model_path: model.path.clone(),
            model: model.fingerprint.clone(),
        });
    }
    let mut by_module: BTreeMap<String, Vec<MaskRow>> = BTreeMap::new();
    for r in rows {
        by_module.entry(r.module.clone()).or_default().push(r);
    }
    for (module, rows) in &by_module {
        let cols = rows[0].in_features as usize;
        let shape_err = |found: String| MaskError::Shape {
            mask_path: mask_path.to_path_buf(),
            module: module.clone(),
            rows: rows.len(),
            cols,
            model_path: model.path.clone(),
            found,
        };
        match model.weights.shape(&format!("{module}.weight")) {
            None => return Err(shape_err("no such tensor".to_string())),
            Some(shape) if shape != [rows.len(), cols] => return Err(shape_err(format!("shape {shape:?}"))),
            Some(_) => {}
        }
    }
    Ok(by_module)
}

/// Zeroes the weights `rows` prune in `weight` ([out, in], f32), first
/// setting the kept ones to the rows' values where the mask carries them
/// (SparseGPT's updates), and adds to `summary`.
fn apply_rows(weight: &mut [f32], module: &str, rows: &[MaskRow], mask_path: &Path, summary: &mut ApplySummary) -> Result<(), MaskError> {
    let cols = rows[0].in_features as usize;
    for r in rows {
        let Some(values) = &r.values else { continue };
        let start = r.row as usize * cols;
        let Some(target) = weight.get_mut(start..start + cols).filter(|_| r.in_features as usize == cols) else {
            return Err(MaskError::Rows {
                path: mask_path.to_path_buf(),
                module: module.to_string(),
                expected: format!("rows of {cols} inputs within the weight's {} rows", weight.len() / cols.max(1)),
                found: format!("row {} of {} inputs", r.row, r.in_features),
            });
        };
        let kept = (0..cols).filter(|j| r.keep[j / 8] >> (j % 8) & 1 == 1);
        for (j, &v) in kept.zip(values) {
            target[j] = v;
        }
    }
    let packed: Vec<sparsity::PackedRow> =
        rows.iter().map(|r| sparsity::PackedRow { row: r.row, in_features: r.in_features, keep: &r.keep }).collect();
    let counts = sparsity::apply_packed_rows(weight, packed.len(), cols, &packed).map_err(|source| match source {
        sparsity::SparsityError::MaskRows { expected, found } => {
            MaskError::Rows { path: mask_path.to_path_buf(), module: module.to_string(), expected, found }
        }
        source => MaskError::Kernel { path: mask_path.to_path_buf(), module: module.to_string(), source },
    })?;
    summary.masked += counts.masked;
    summary.zeros += counts.zeros;
    summary.total += counts.total;
    Ok(())
}

/// Largest safetensors shard written, in bytes (transformers' default `max_shard_size`).
pub const MAX_SHARD_BYTES: usize = 5_000_000_000;

/// Writes `model` with the weights `masks` prune zeroed, as a Hugging Face
/// checkpoint directory in `dir` (which must exist): config.json
/// (torch_dtype = the weights' storage type), generation_config.json, the
/// weights (one `model.safetensors`, or shards of at most `max_shard_bytes`
/// with `model.safetensors.index.json`), and, when the model has a
/// tokenizer, tokenizer.json and tokenizer_config.json.
///
/// Tensors are read, masked and written one at a time (a fused projection:
/// its parts at a time), so the memory needed is that of the largest tensor,
/// whatever the model's size. `dtype` is the storage type of every weight;
/// `None` keeps each tensor's type in a safetensors source (bf16 stays bf16),
/// and writes float32 for a GGUF source. With `sparse`, every masked matrix
/// is stored in the compressed sparse format ([`model::sparse`]): its keep
/// bits (the mask) and its kept values only.
#[allow(clippy::too_many_arguments)]
pub fn write_hf_dir(
    model: &LoadedModel,
    masks: &BTreeMap<String, Vec<MaskRow>>,
    mask_path: &Path,
    dir: &Path,
    dtype: Option<OutputDtype>,
    sparse: bool,
    max_shard_bytes: usize,
    progress: &ProgressBar,
) -> Result<ApplySummary, MaskError> {
    let stored = |name: &str| -> StoredDtype {
        match (dtype, model.weights.stored_type(name)) {
            (Some(d), _) => d.stored(),
            (None, Some(StoredType::Float(d) | StoredType::Sparse(d))) => d,
            (None, _) => StoredDtype::F32,
        }
    };
    let plan = model::arch::hf_tensors(model.weights.names(), &model.config.arch().fused());
    let shape_of = |parts: &[String]| {
        let shapes: Vec<&[usize]> = parts.iter().map(|p| model.weights.shape(p).expect("planned from the model's names")).collect();
        let mut shape = shapes[0].to_vec();
        shape[0] = shapes.iter().map(|s| s[0]).sum();
        shape
    };
    let is_sparse = |parts: &[String]| sparse && parts.iter().any(|p| p.strip_suffix(".weight").is_some_and(|m| masks.contains_key(m)));
    let mut layouts = Vec::new();
    let mut sparse_shapes = BTreeMap::new();
    for (name, parts) in &plan {
        let shape = shape_of(parts);
        if is_sparse(parts) {
            let keep = keep_bits_of(model, masks, parts, mask_path)?;
            let kept = keep.iter().map(|b| b.count_ones() as usize).sum();
            layouts.push(TensorLayout {
                name: format!("{name}{}", model::sparse::KEEP_SUFFIX),
                dtype: StoredDtype::U8,
                shape: vec![shape[0], shape[1].div_ceil(8)],
            });
            layouts.push(TensorLayout {
                name: format!("{name}{}", model::sparse::VALUES_SUFFIX),
                dtype: stored(&parts[0]),
                shape: vec![kept],
            });
            sparse_shapes.insert(name.clone(), [shape[0], shape[1]]);
        } else {
            layouts.push(TensorLayout { name: name.clone(), dtype: stored(&parts[0]), shape });
        }
    }
    let mut config = model.config.to_hf_json();
    config["torch_dtype"] = Value::from(stored("model.embed_tokens.weight").torch_name());
    model::write_hf_metadata(dir, &config, model.tokenizer.as_ref())?;
    let mut metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    if !sparse_shapes.is_empty() {
        metadata.insert(model::sparse::METADATA_KEY.to_string(), model::sparse::metadata_value(&sparse_shapes));
    }
    let mut writer = ShardedWriter::create(dir, layouts, max_shard_bytes, metadata).map_err(ModelError::from)?;
    let mut summary = ApplySummary { modules: masks.len(), total: 0, masked: 0, zeros: 0 };
    progress.set_length(plan.len() as u64);
    for (name, parts) in &plan {
        let mut data = Vec::new();
        for part in parts {
            let mut tensor = model.weights.load(part)?;
            if let Some(module) = part.strip_suffix(".weight") {
                if let Some(rows) = masks.get(module) {
                    apply_rows(&mut tensor.data, module, rows, mask_path, &mut summary)?;
                }
            }
            if parts.len() == 1 {
                data = tensor.data;
            } else {
                data.extend_from_slice(&tensor.data);
            }
        }
        if is_sparse(parts) {
            let keep = keep_bits_of(model, masks, parts, mask_path)?;
            let cols = shape_of(parts)[1];
            let mut packed = Vec::new();
            for (row, bits) in data.chunks_exact(cols.max(1)).zip(keep.chunks_exact(cols.div_ceil(8).max(1))) {
                model::sparse::pack_row(row, bits, &mut packed);
            }
            writer.write_bytes(&format!("{name}{}", model::sparse::KEEP_SUFFIX), &keep).map_err(ModelError::from)?;
            writer.write(&format!("{name}{}", model::sparse::VALUES_SUFFIX), &packed).map_err(ModelError::from)?;
        } else {
            writer.write(name, &data).map_err(ModelError::from)?;
        }
        progress.inc(1);
    }
    writer.finish().map_err(ModelError::from)?;
    Ok(summary)
}

/// The keep bits of the matrix made of `parts` stacked: each masked part's
/// rows as the mask keeps them, every weight of an unmasked part kept.
/// Bits past the last column are 0, as the sparse format requires.
fn keep_bits_of(
    model: &LoadedModel,
    masks: &BTreeMap<String, Vec<MaskRow>>,
    parts: &[String],
    mask_path: &Path,
) -> Result<Vec<u8>, MaskError> {
    let mut keep = Vec::new();
    for part in parts {
        let &[rows, cols] = model.weights.shape(part).expect("planned from the model's names") else {
            unreachable!("only matrices are masked")
        };
        let row_bytes = cols.div_ceil(8);
        let tail = if cols % 8 == 0 { 0xFF } else { (1u8 << (cols % 8)) - 1 };
        let first = keep.len();
        keep.resize(first + rows * row_bytes, 0xFF);
        if let Some(mask_rows) = part.strip_suffix(".weight").and_then(|m| masks.get(m)) {
            for r in mask_rows {
                if r.row as usize >= rows || r.keep.len() < row_bytes {
                    return Err(MaskError::Rows {
                        path: mask_path.to_path_buf(),
                        module: part.trim_end_matches(".weight").to_string(),
                        expected: format!("rows 0..{rows} of {row_bytes} keep bytes"),
                        found: format!("row {} of {} keep bytes", r.row, r.keep.len()),
                    });
                }
                let at = first + r.row as usize * row_bytes;
                keep[at..at + row_bytes].copy_from_slice(&r.keep[..row_bytes]);
            }
        }
        for row in 0..rows {
            if row_bytes > 0 {
                keep[first + row * row_bytes + row_bytes - 1] &= tail;
            }
        }
    }
    Ok(keep)
}

/// Storage type of the pruned linears in a GGUF written by [`write_gguf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufWeightType {
    /// float32: the masked weights exactly.
    F32,
    /// float16, rounded to nearest even.
    F16,
    /// ggml's Q8_0 blocks (llama.cpp's reference quantization); pruned weights stay exact zeros.
    Q8_0,
}

impl GgufWeightType {
    /// The ggml type.
    pub fn ggml(self) -> model::gguf::GgmlType {
        match self {
            GgufWeightType::F32 => model::gguf::GgmlType::F32,
            GgufWeightType::F16 => model::gguf::GgmlType::F16,
            GgufWeightType::Q8_0 => model::gguf::GgmlType::Q8_0,
        }
    }

    /// llama.cpp's `general.file_type` (`llama_ftype`) of a file mostly of this type.
    fn file_type(self) -> u32 {
        match self {
            GgufWeightType::F32 => 0,
            GgufWeightType::F16 => 1,
            GgufWeightType::Q8_0 => 7,
        }
    }

    /// `values` in this type's blocks.
    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            GgufWeightType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            GgufWeightType::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
            GgufWeightType::Q8_0 => model::gguf::quantize::quantize_q8_0(values),
        }
    }
}

/// Writes `model` (a GGUF file) with the weights `masks` prune zeroed, as a
/// GGUF file at `out` that llama.cpp loads: the source's metadata (tokenizer
/// included) and tensors in the source's order and names; each pruned
/// linear decoded, masked and stored as `ty` with its rows back in
/// llama.cpp's order; every other tensor copied byte for byte. The mask's
/// content hash is recorded as `subprune.mask`.
pub fn write_gguf(
    model: &LoadedModel,
    masks: &BTreeMap<String, Vec<MaskRow>>,
    mask_path: &Path,
    out: &Path,
    ty: GgufWeightType,
    progress: &ProgressBar,
) -> Result<ApplySummary, MaskError> {
    use model::gguf::{GgufValue, GgufWriter};
    let source = model.weights.gguf_file().ok_or_else(|| {
        MaskError::Options(format!(
            "{} is not a GGUF file: --format gguf copies a GGUF source's metadata and tokenizer; write a Hugging Face directory instead (--format hf)",
            model.path.display()
        ))
    })?;
    let mut writer = GgufWriter::new();
    for (key, value) in source.metadata() {
        writer.add_metadata(key, value.clone());
    }
    writer.add_metadata("subprune.mask", GgufValue::String(artifacts::content_hash(mask_path)?));
    // llama.cpp's "mostly" type of the file: the pruned linears' type.
    writer.add_metadata("general.file_type", GgufValue::U32(ty.file_type()));
    let mut summary = ApplySummary { modules: masks.len(), total: 0, masked: 0, zeros: 0 };
    progress.set_length(source.tensors().len() as u64);
    for info in source.tensors() {
        let shape = info.shape();
        let parts: Vec<_> = model
            .weights
            .parts_of(&info.name)
            .into_iter()
            .filter(|p| p.name.strip_suffix(".weight").is_some_and(|m| masks.contains_key(m)))
            .collect();
        if parts.is_empty() {
            let bytes = source.tensor_bytes(&info.name).map_err(ModelError::from)?;
            writer.add_tensor(&info.name, &shape, info.ggml_type, bytes.to_vec());
        } else {
            let cols = shape[1];
            if ty == GgufWeightType::Q8_0 && cols % 32 != 0 {
                return Err(MaskError::Options(format!("{}: {cols} columns are not whole Q8_0 blocks of 32; use --type f16", info.name)));
            }
            // The stored tensor in Hugging Face row order, each masked part zeroed, then back in llama.cpp's.
            let heads = parts[0].interleaved_heads;
            let mut data = source.tensor_f32(&info.name).map_err(ModelError::from)?;
            if let Some(heads) = heads {
                data = model::arch::unpermute_rows(&data, heads, cols);
            }
            for part in &parts {
                let module = part.name.strip_suffix(".weight").expect("filtered above");
                let rows = part.rows.clone().unwrap_or(0..shape[0]);
                apply_rows(&mut data[rows.start * cols..rows.end * cols], module, &masks[module], mask_path, &mut summary)?;
            }
            if let Some(heads) = heads {
                data = model::arch::permute_rows(&data, heads, cols);
            }
            writer.add_tensor(&info.name, &shape, ty.ggml(), ty.encode(&data));
        }
        progress.inc(1);
    }
    writer.write(out).map_err(io_err(out))?;
    Ok(summary)
}

/// Removes a directory tree (or a file) when dropped, unless disarmed.
struct DirGuard {
    path: PathBuf,
    armed: bool,
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = if self.path.is_dir() { fs::remove_dir_all(&self.path) } else { fs::remove_file(&self.path) };
        }
    }
}

/// Whether `dir` exists and holds something (a file that is not a directory counts).
fn occupied(dir: &Path) -> Result<bool, MaskError> {
    match fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(dir)(e)),
        Ok(m) if !m.is_dir() => Ok(true),
        Ok(_) => Ok(fs::read_dir(dir).map_err(io_err(dir))?.next().is_some()),
    }
}

/// Options of [`apply`].
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// The model: Hugging Face directory or GGUF file.
    pub model: PathBuf,
    /// The mask artifact.
    pub mask: PathBuf,
    /// The output directory.
    pub out: PathBuf,
    /// Storage type of the written weights; `None` keeps a safetensors
    /// source's types and writes float32 for a GGUF source.
    pub dtype: Option<OutputDtype>,
    /// Write a GGUF file of a GGUF source (its pruned linears in this type) instead of a Hugging Face directory.
    pub gguf: Option<GgufWeightType>,
    /// Store the masked matrices of the Hugging Face directory in the compressed sparse format ([`model::sparse`]).
    pub sparse: bool,
    /// Replace a non-empty output directory.
    pub force: bool,
}

/// Opens the model and reads the mask, and writes the pruned model as a
/// Hugging Face directory at `opts.out`, tensor by tensor ([`write_hf_dir`]).
///
/// The directory is written under a temp name next to `opts.out` and renamed
/// into place at the end, so a failure leaves no half-written output. A
/// non-empty `opts.out` is refused unless `opts.force`.
pub fn apply(opts: &ApplyOptions, progress: &ProgressBar) -> Result<ApplySummary, MaskError> {
    if occupied(&opts.out)? && !opts.force {
        return Err(MaskError::OutputExists(opts.out.clone()));
    }
    let (provenance, _info, rows) = artifacts::read_mask(&opts.mask)?;
    let loaded = model::load_model(&opts.model)?;
    let masks = check_mask(&loaded, &opts.mask, &provenance, rows)?;

    let name =
        opts.out.file_name().ok_or_else(|| MaskError::Options(format!("--out {} does not end in a directory name", opts.out.display())))?;
    let name = name.to_string_lossy();
    let parent = match opts.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.is_dir() {
        fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    let mut guard = DirGuard { path: tmp.clone(), armed: true };
    let summary = match opts.gguf {
        Some(ty) => write_gguf(&loaded, &masks, &opts.mask, &tmp, ty, progress)?,
        None => {
            fs::create_dir(&tmp).map_err(io_err(&tmp))?;
            write_hf_dir(&loaded, &masks, &opts.mask, &tmp, opts.dtype, opts.sparse, MAX_SHARD_BYTES, progress)?
        }
    };

    match fs::metadata(&opts.out) {
        Ok(m) if m.is_dir() => {
            let old = parent.join(format!(".{name}.old-{}", std::process::id()));
            fs::rename(&opts.out, &old).map_err(io_err(&opts.out))?;
            if let Err(e) = fs::rename(&tmp, &opts.out) {
                let _ = fs::rename(&old, &opts.out);
                return Err(io_err(&opts.out)(e));
            }
            fs::remove_dir_all(&old).map_err(io_err(&old))?;
        }
        Ok(_) => {
            fs::remove_file(&opts.out).map_err(io_err(&opts.out))?;
            fs::rename(&tmp, &opts.out).map_err(io_err(&opts.out))?;
        }
        Err(_) => fs::rename(&tmp, &opts.out).map_err(io_err(&opts.out))?,
    }
    guard.armed = false;
    Ok(summary)
}
