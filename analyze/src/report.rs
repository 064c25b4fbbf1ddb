//! The Markdown report of a run: setup, perplexity with confidence intervals,
//! Jaccard tables, figures and a verdict on the run's two claims.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Component, Path, PathBuf};

use artifacts::{check_same_model, read_jaccard, read_provenance, read_results, JaccardRow, Provenance};
use serde::{Deserialize, Serialize};

use crate::error::io_err;
use crate::figures::{
    draw_curves, existing, is_pair, jaccard_heatmap, mask_diff_figure, metric_heatmap, per_layer_series, task_change_heatmap, task_domain,
    whole_model_distance,
};
use crate::jaccard::LAYER_ROW;
use crate::raster::format_value;
use crate::{AnalyzeError, NamedMask};

/// The manifest `run.json` that `cargo xtask` writes into a run directory.
///
/// All paths are relative to the run directory. Example:
///
/// ```json
/// {"title": "SmolLM2 domain masks",
///  "model": {"name": "smollm2-135m", "path": "models/smollm2", "fingerprint": "sha256:..."},
///  "masks": [{"name": "python-wanda-50", "domain": "python", "source": "python-stdlib",
///             "method": "wanda", "pattern": "unstructured-0.5", "path": "masks/python-wanda-50.parquet"}],
///  "results": [{"mask": "python-wanda-50", "domain": "python", "path": "results/ppl-python-wanda-50-on-python.parquet"},
///              {"mask": null, "domain": "python", "path": "results/ppl-dense-on-python.parquet"}],
///  "jaccard": "jaccard.parquet",
///  "same_domain_pairs": [["python-a-wanda-50", "python-b-wanda-50"]],
///  "figures_dir": "figures"}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    /// The report's title.
    pub title: String,
    /// The model every mask was made for.
    pub model: ModelEntry,
    /// The masks of the run.
    pub masks: Vec<MaskEntry>,
    /// The evaluation results of the run, one file per (mask or dense, evaluation domain).
    pub results: Vec<ResultEntry>,
    /// The task results of the run, one file per (mask or dense, task).
    #[serde(default)]
    pub task_results: Vec<TaskResultEntry>,
    /// The Jaccard artifact comparing the masks (written by `analyze jaccard`);
    /// `null` or absent when the run has fewer than two masks.
    #[serde(default)]
    pub jaccard: Option<PathBuf>,
    /// Pairs of masks calibrated on two sources of the same domain.
    #[serde(default)]
    pub same_domain_pairs: Vec<(String, String)>,
    /// Where the report's figures are written (created if missing).
    #[serde(default = "default_figures_dir")]
    pub figures_dir: PathBuf,
}

/// The module the report's mask-difference figures draw, given the last
/// decoder layer of the masks: the query projection of the middle layer
/// (layer 15 of SmolLM2's 30, layer 9 of Gemma 3 270M's 18), which every
/// decoder of that depth has.
pub fn mask_diff_module(last_layer: u32) -> String {
    format!("model.layers.{}.self_attn.q_proj", (last_layer + 1) / 2)
}

/// The calibration domain of masks made without calibration data (magnitude).
pub const NO_DOMAIN: &str = "none";

fn default_figures_dir() -> PathBuf {
    PathBuf::from("figures")
}

/// The model of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
    /// Short name, e.g. `smollm2-135m`.
    pub name: String,
    /// Where the model was loaded from.
    #[serde(default)]
    pub path: String,
    /// The model fingerprint (`subprune.model` of the artifacts).
    #[serde(default)]
    pub fingerprint: String,
}

/// One mask of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaskEntry {
    /// The mask's name, as used in results and the Jaccard artifact.
    pub name: String,
    /// The calibration domain, e.g. `python`; [`NO_DOMAIN`] (`none`) for a mask made without calibration data.
    pub domain: String,
    /// The calibration source within the domain, e.g. `python-stdlib`.
    #[serde(default)]
    pub source: String,
    /// The scoring method, e.g. `wanda` or `magnitude`.
    pub method: String,
    /// The pattern label, e.g. `unstructured-0.5` or `2:4`.
    pub pattern: String,
    /// The mask artifact.
    pub path: PathBuf,
}

/// One results file of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultEntry {
    /// The mask evaluated; `None` (JSON null) for the dense model.
    pub mask: Option<String>,
    /// The evaluation domain whose held-out set was scored.
    pub domain: String,
    /// The results artifact.
    pub path: PathBuf,
}

/// One task's results file of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResultEntry {
    /// The mask evaluated; `None` (JSON null) for the dense model.
    pub mask: Option<String>,
    /// The task's column name, e.g. `humaneval-x-python`.
    pub task: String,
    /// The metric shown, e.g. `pass@1`.
    pub metric: String,
    /// The results artifact.
    pub path: PathBuf,
    /// The calibration domain the task measures (e.g. `python` for
    /// HumanEval-X Python), for the claim that a domain's own calibration
    /// gives its best task score; absent for a task of no domain.
    #[serde(default)]
    pub domain: Option<String>,
}

/// A metric's value (a perplexity, an accuracy, a pass@1) and its 95% confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// The value.
    pub value: f64,
    /// Lower end of the 95% confidence interval, if known.
    pub ci_low: Option<f64>,
    /// Upper end of the 95% confidence interval, if known.
    pub ci_high: Option<f64>,
}

impl Estimate {
    /// `12.34 [11.90, 12.80]`, or the value alone without an interval.
    pub fn cell(&self) -> String {
        match (self.ci_low, self.ci_high) {
            (Some(l), Some(h)) => format!("{} [{}, {}]", format_value(self.value), format_value(l), format_value(h)),
            _ => format!("{} (no CI)", format_value(self.value)),
        }
    }
}

/// The verdict on one claim instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The claim held on this run.
    Held,
    /// The claim did not hold on this run.
    NotHeld,
    /// The run lacks what the claim needs.
    NotTested,
}

impl Verdict {
    /// `held`, `did not hold` or `not tested`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Held => "held",
            Verdict::NotHeld => "did not hold",
            Verdict::NotTested => "not tested",
        }
    }
}

/// One checked instance of a claim: what it is about, the verdict, and the sentence with the numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimCheck {
    /// A domain (claim a) or a pair of masks (claim b).
    pub subject: String,
    /// The verdict.
    pub verdict: Verdict,
    /// The explanation with the numbers.
    pub detail: String,
}

/// What [`write_report`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportOutput {
    /// The Markdown text written.
    pub markdown: String,
    /// A short plain-text summary for stdout.
    pub summary: String,
    /// The figures written.
    pub figures: Vec<PathBuf>,
    /// Claim (a), one check per (pattern, evaluation domain).
    pub own_domain_wins: Vec<ClaimCheck>,
    /// Claim (b), one check per same-domain pair.
    pub same_domain_closer: Vec<ClaimCheck>,
    /// Claim (c), one check per (task of a domain, method and pattern).
    pub own_domain_tasks: Vec<ClaimCheck>,
}

/// Reads and checks the manifest `run.json` of a run directory.
pub fn read_manifest(run_dir: &Path) -> Result<RunManifest, AnalyzeError> {
    let path = existing(&run_dir.join("run.json"), "run manifest")?;
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    let m: RunManifest =
        serde_json::from_str(&text).map_err(|e| AnalyzeError::BadManifest { path: path.clone(), reason: e.to_string() })?;
    let bad = |reason: String| AnalyzeError::BadManifest { path: path.clone(), reason };
    let mut names = BTreeSet::new();
    for mask in &m.masks {
        if !names.insert(mask.name.as_str()) {
            return Err(bad(format!("mask name `{}` is listed twice", mask.name)));
        }
    }
    let masks_named = m.results.iter().map(|r| (&r.mask, &r.path)).chain(m.task_results.iter().map(|r| (&r.mask, &r.path)));
    for (mask, path) in masks_named {
        if let Some(name) = mask {
            if !names.contains(name.as_str()) {
                return Err(bad(format!("result {} names mask `{name}`, which is not in `masks`", path.display())));
            }
        }
    }
    for (a, b) in &m.same_domain_pairs {
        for n in [a, b] {
            if !names.contains(n.as_str()) {
                return Err(bad(format!("same_domain_pairs names mask `{n}`, which is not in `masks`")));
            }
        }
    }
    Ok(m)
}

/// The perplexity row of a results file: the only `perplexity` row, or the one whose
/// task names `domain`.
fn perplexity_of(path: &Path, domain: &str) -> Result<Option<Estimate>, AnalyzeError> {
    let (_, rows) = read_results(&existing(path, "results artifact listed in run.json:")?)?;
    let ppl: Vec<_> = rows.into_iter().filter(|r| r.metric == "perplexity").collect();
    let chosen = if ppl.len() == 1 { ppl.first() } else { ppl.iter().find(|r| task_domain(&r.task) == domain).or(ppl.first()) };
    Ok(chosen.map(|r| Estimate { value: r.value, ci_low: r.ci_low, ci_high: r.ci_high }))
}

/// The rows of a results table: the dense model first when it has a
/// result, then every mask with one, in the manifest's order; `evaluated`
/// gives each result's mask (`None` for dense).
fn table_rows<'a>(masks: &[MaskEntry], evaluated: impl Iterator<Item = &'a Option<String>>) -> Vec<Option<String>> {
    let evaluated: Vec<&Option<String>> = evaluated.collect();
    let dense = evaluated.iter().any(|m| m.is_none()).then_some(None);
    dense
        .into_iter()
        .chain(masks.iter().filter(|m| evaluated.iter().any(|e| e.as_ref() == Some(&m.name))).map(|m| Some(m.name.clone())))
        .collect()
}

/// The row of `metric` in a task's results file (the first, if several).
fn metric_of(path: &Path, metric: &str) -> Result<Option<Estimate>, AnalyzeError> {
    let (_, rows) = read_results(&existing(path, "task results artifact listed in run.json:")?)?;
    Ok(rows.iter().find(|r| r.metric == metric).map(|r| Estimate { value: r.value, ci_low: r.ci_low, ci_high: r.ci_high }))
}

/// `target` relative to directory `base` (both are made absolute first).
fn relative(target: &Path, base: &Path) -> PathBuf {
    let abs =
        |p: &Path| p.canonicalize().unwrap_or_else(|_| std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf()));
    let (t, b) = (abs(target), abs(base));
    let tc: Vec<Component> = t.components().collect();
    let bc: Vec<Component> = b.components().collect();
    let common = tc.iter().zip(&bc).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..bc.len() {
        out.push("..");
    }
    for c in &tc[common..] {
        out.push(c.as_os_str());
    }
    out
}

/// A link target in Markdown: forward slashes.
fn link(p: &Path) -> String {
    p.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/")
}

/// A perplexity difference, with the two decimals of the table's values.
fn fmt_gap(gap: f64) -> String {
    if gap.abs() >= 1000.0 {
        format!("{gap:.0}")
    } else {
        format!("{gap:.2}")
    }
}

/// A mask's sparsity from its `subprune.mask.sparsity` metadata, to four decimals.
/// A change against the dense model with its sign: `+0.0123`, `-1.5`.
fn fmt_change(change: f64) -> String {
    let text = format_value(change.abs());
    if change < 0.0 {
        format!("-{text}")
    } else {
        format!("+{text}")
    }
}

fn fmt_sparsity(p: &Provenance) -> String {
    match p.extra.get("sparsity") {
        Some(s) => s.trim().parse::<f64>().map_or_else(|_| s.clone(), |v| format!("{v:.4}")),
        None => "n/a".to_string(),
    }
}

fn fmt_distance(d: Option<f64>) -> String {
    d.map_or_else(|| "n/a".to_string(), |d| format!("{d:.3}"))
}

/// Everything the report is computed from, read from the run directory.
struct Run {
    dir: PathBuf,
    manifest: RunManifest,
    provenances: Vec<Provenance>,
    /// Evaluation domains, in order of first appearance in `results`.
    domains: Vec<String>,
    /// Calibrations (`None` = dense), in table order.
    calibrations: Vec<Option<String>>,
    /// (calibration, domain, perplexity).
    cells: Vec<(Option<String>, String, Estimate)>,
    /// (calibration, domain, each window's mean NLL), where recorded.
    window_items: Vec<(Option<String>, String, BTreeMap<u64, f64>)>,
    /// Tasks (column, metric), in order of first appearance in `task_results`.
    tasks: Vec<(String, String)>,
    /// Calibrations with task results (`None` = dense), in table order.
    task_rows: Vec<Option<String>>,
    /// (calibration, task, score).
    task_cells: Vec<(Option<String>, String, Estimate)>,
    /// (calibration, task, each item's score), where the items artifact gives them.
    task_items: Vec<(Option<String>, String, BTreeMap<u64, f64>)>,
    jaccard: Vec<JaccardRow>,
    notes: Vec<String>,
}

impl Run {
    fn mask(&self, name: &str) -> Option<&MaskEntry> {
        self.manifest.masks.iter().find(|m| m.name == name)
    }

    fn cell(&self, calibration: Option<&str>, domain: &str) -> Option<Estimate> {
        self.cells.iter().find(|(c, d, _)| c.as_deref() == calibration && d == domain).map(|c| c.2)
    }

    fn task_cell(&self, calibration: Option<&str>, task: &str) -> Option<Estimate> {
        self.task_cells.iter().find(|(c, t, _)| c.as_deref() == calibration && t == task).map(|c| c.2)
    }

    fn distance(&self, a: &str, b: &str) -> Option<f64> {
        whole_model_distance(&self.jaccard, a, b)
    }

    fn read(dir: &Path, missing: Missing) -> Result<Run, AnalyzeError> {
        let manifest = read_manifest(dir)?;
        let mut notes = Vec::new();
        let listed = manifest.results.len() + manifest.task_results.len() + usize::from(manifest.jaccard.is_some());
        let mut absent = 0;
        // Whether to read a listed file: a missing one is skipped (and
        // counted) in a partial report, and read, to fail naming it, otherwise.
        let mut present = |path: &Path| {
            let there = path.exists();
            if !there && missing == Missing::Skip {
                absent += 1;
            }
            there || missing == Missing::Refuse
        };
        let mut provenances = Vec::with_capacity(manifest.masks.len());
        for m in &manifest.masks {
            let path = existing(&dir.join(&m.path), &format!("mask `{}` listed in run.json:", m.name))?;
            provenances.push(read_provenance(&path)?);
        }
        for (k, m) in manifest.masks.iter().enumerate().skip(1) {
            check_same_model(&provenances[0], &dir.join(&manifest.masks[0].path), &provenances[k], &dir.join(&m.path))?;
        }
        if let Some(p) = provenances.first() {
            if !manifest.model.fingerprint.is_empty() && p.model != manifest.model.fingerprint {
                notes.push(format!(
                    "run.json gives the model fingerprint `{}`, but the masks were made for `{}`",
                    manifest.model.fingerprint, p.model
                ));
            }
        }
        let mut domains: Vec<String> = Vec::new();
        let mut cells = Vec::new();
        let mut window_items = Vec::new();
        for r in &manifest.results {
            if !domains.contains(&r.domain) {
                domains.push(r.domain.clone());
            }
            if !present(&dir.join(&r.path)) {
                continue;
            }
            match perplexity_of(&dir.join(&r.path), &r.domain)? {
                Some(p) => {
                    if let Some(windows) = crate::items::window_nlls(&dir.join(&r.path))? {
                        window_items.push((r.mask.clone(), r.domain.clone(), windows));
                    }
                    cells.push((r.mask.clone(), r.domain.clone(), p))
                }
                None => notes.push(format!("{} has no `perplexity` result", r.path.display())),
            }
        }
        let calibrations = table_rows(&manifest.masks, manifest.results.iter().map(|r| &r.mask));
        let mut tasks: Vec<(String, String)> = Vec::new();
        let mut task_cells = Vec::new();
        let mut task_items = Vec::new();
        for r in &manifest.task_results {
            if !tasks.iter().any(|(t, _)| t == &r.task) {
                tasks.push((r.task.clone(), r.metric.clone()));
            }
            let path = dir.join(&r.path);
            if !present(&path) {
                continue;
            }
            match metric_of(&path, &r.metric)? {
                Some(mut score) => {
                    if let Some(items) = crate::items::item_scores(&path, &r.metric)? {
                        let values: Vec<f64> = items.values().copied().collect();
                        let mean = values.iter().sum::<f64>() / values.len() as f64;
                        if (mean - score.value).abs() > 1e-3 {
                            notes.push(format!(
                                "{}: its items' mean {} is not its {} {}; its items are left out",
                                r.path.display(),
                                format_value(mean),
                                r.metric,
                                format_value(score.value)
                            ));
                        } else {
                            if score.ci_low.is_none() {
                                // No interval in the results: a bootstrap over the items.
                                (score.ci_low, score.ci_high) = crate::items::mean_interval(&values).unzip();
                            }
                            task_items.push((r.mask.clone(), r.task.clone(), items));
                        }
                    }
                    task_cells.push((r.mask.clone(), r.task.clone(), score))
                }
                None => notes.push(format!("{} has no `{}` result", r.path.display(), r.metric)),
            }
        }
        let task_rows = table_rows(&manifest.masks, manifest.task_results.iter().map(|r| &r.mask));
        let mut jaccard = Vec::new();
        if let Some(rel) = manifest.jaccard.as_ref().filter(|rel| present(&dir.join(rel))) {
            let path = existing(&dir.join(rel), "Jaccard artifact listed in run.json:")?;
            jaccard = read_jaccard(&path)?.1;
            let in_jaccard = crate::figures::mask_names(&jaccard);
            for m in &manifest.masks {
                if !in_jaccard.contains(&m.name) {
                    notes.push(format!("mask `{}` is not in {}", m.name, rel.display()));
                }
            }
        } else if manifest.jaccard.is_none() && manifest.masks.len() >= 2 {
            notes.push("run.json names no Jaccard artifact: no distances between masks".to_string());
        }
        if absent > 0 {
            notes.insert(
                0,
                format!(
                    "partial report of a run under way: {absent} of the {listed} results (the Jaccard artifact counted as one) \
                     do not exist yet, so their cells read n/a and the claims they would test are not tested"
                ),
            );
        }
        Ok(Run {
            dir: dir.to_path_buf(),
            manifest,
            provenances,
            domains,
            calibrations,
            cells,
            window_items,
            tasks,
            task_rows,
            task_cells,
            task_items,
            jaccard,
            notes,
        })
    }

    /// Cross-domain pairs of masks of one method and pattern (calibration domain `none`
    /// excluded) present in the Jaccard artifact, with their distances.
    fn cross_pairs(&self) -> Vec<(String, String, f64)> {
        let masks = &self.manifest.masks;
        let mut out = Vec::new();
        for (i, a) in masks.iter().enumerate() {
            for b in &masks[i + 1..] {
                let comparable = a.method == b.method && a.pattern == b.pattern && a.domain != NO_DOMAIN && b.domain != NO_DOMAIN;
                if a.domain != b.domain && comparable {
                    if let Some(d) = self.jaccard.iter().find(|r| r.module == crate::jaccard::MODEL_ROW && is_pair(r, &a.name, &b.name)) {
                        out.push((a.name.clone(), b.name.clone(), d.jaccard_distance));
                    }
                }
            }
        }
        out
    }

    /// Claim (a), per wanda pattern and evaluation domain.
    fn claim_own_domain(&self) -> Vec<ClaimCheck> {
        let wanda: Vec<&MaskEntry> = self.manifest.masks.iter().filter(|m| m.method.eq_ignore_ascii_case("wanda")).collect();
        let mut patterns: Vec<&str> = Vec::new();
        for m in &wanda {
            if !patterns.contains(&m.pattern.as_str()) {
                patterns.push(&m.pattern);
            }
        }
        let mut out = Vec::new();
        for pattern in &patterns {
            for domain in &self.domains {
                let subject = format!("{domain} ({pattern})");
                let scored: Vec<(&MaskEntry, Estimate)> = wanda
                    .iter()
                    .filter(|m| m.pattern == *pattern)
                    .filter_map(|m| self.cell(Some(&m.name), domain).map(|p| (*m, p)))
                    .collect();
                let best = |own: bool| {
                    scored.iter().filter(|(m, _)| (m.domain == *domain) == own).min_by(|x, y| x.1.value.total_cmp(&y.1.value)).copied()
                };
                let (Some((om, op)), Some((xm, xp))) = (best(true), best(false)) else {
                    let why = if scored.iter().any(|(m, _)| m.domain == *domain) {
                        "no wanda mask of another domain was evaluated on it"
                    } else {
                        "no wanda mask calibrated on this domain was evaluated on it"
                    };
                    out.push(ClaimCheck { subject, verdict: Verdict::NotTested, detail: why.to_string() });
                    continue;
                };
                let overlap = match (self.window_scores(Some(&om.name), domain), self.window_scores(Some(&xm.name), domain)) {
                    (Some(own), Some(other)) => match crate::items::paired_difference_interval(own, other) {
                        // Windows have one length, so a perplexity ratio is exp of the mean NLL difference.
                        Some((low, high)) => {
                            let separated =
                                if low > 0.0 || high < 0.0 { "excludes 1" } else { "includes 1: this run does not separate them" };
                            format!(
                                "; own / other perplexity paired over the same {} windows: 95% interval [{:.3}, {:.3}], which {separated}",
                                own.len(),
                                low.exp(),
                                high.exp()
                            )
                        }
                        None => "; no paired interval (the two were not scored on the same windows)".to_string(),
                    },
                    _ => "; no paired interval (per-window NLLs not recorded)".to_string(),
                };
                let (verdict, detail) = if op.value < xp.value {
                    let gap = xp.value - op.value;
                    (
                        Verdict::Held,
                        format!(
                            "`{}` (own calibration) wins with {}, against {} for the best other-domain mask `{}` ({}): lower by {} ({:.1}%){overlap}",
                            om.name,
                            op.cell(),
                            xp.cell(),
                            xm.name,
                            xm.domain,
                            fmt_gap(gap),
                            100.0 * gap / xp.value
                        ),
                    )
                } else {
                    let gap = op.value - xp.value;
                    (
                        Verdict::NotHeld,
                        format!(
                            "`{}` (calibrated on {}) wins with {}, against {} for the best own-domain mask `{}`: lower by {} ({:.1}%){overlap}",
                            xm.name,
                            xm.domain,
                            xp.cell(),
                            op.cell(),
                            om.name,
                            fmt_gap(gap),
                            100.0 * gap / op.value
                        ),
                    )
                };
                out.push(ClaimCheck { subject, verdict, detail });
            }
        }
        out
    }

    fn window_scores(&self, calibration: Option<&str>, domain: &str) -> Option<&BTreeMap<u64, f64>> {
        self.window_items.iter().find(|(c, d, _)| c.as_deref() == calibration && d == domain).map(|c| &c.2)
    }

    fn task_item_scores(&self, calibration: Option<&str>, task: &str) -> Option<&BTreeMap<u64, f64>> {
        self.task_items.iter().find(|(c, t, _)| c.as_deref() == calibration && t == task).map(|c| &c.2)
    }

    /// Claim (c), per task of a domain: the best mask calibrated on the
    /// task's domain against the best mask of another domain (same method
    /// and pattern), with the paired bootstrap interval of the difference
    /// over the items both were scored on.
    fn claim_own_domain_tasks(&self) -> Vec<ClaimCheck> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for entry in &self.manifest.task_results {
            let Some(domain) = &entry.domain else { continue };
            if !seen.insert((entry.task.clone(), domain.clone())) {
                continue;
            }
            let lower_is_better = entry.metric == "perplexity";
            let better = |x: f64, y: f64| if lower_is_better { x < y } else { x > y };
            let mut groups: Vec<(&str, &str)> = Vec::new();
            for m in &self.manifest.masks {
                if m.domain == *domain && !groups.contains(&(m.method.as_str(), m.pattern.as_str())) {
                    groups.push((&m.method, &m.pattern));
                }
            }
            let subject_of = |method: &str, pattern: &str| format!("{} on {domain} ({method}, {pattern})", entry.task);
            if groups.is_empty() {
                out.push(ClaimCheck {
                    subject: format!("{} on {domain}", entry.task),
                    verdict: Verdict::NotTested,
                    detail: format!("no mask was calibrated on {domain}"),
                });
            }
            for (method, pattern) in groups {
                let scored: Vec<(&MaskEntry, Estimate)> = self
                    .manifest
                    .masks
                    .iter()
                    .filter(|m| m.method == method && m.pattern == pattern && m.domain != NO_DOMAIN)
                    .filter_map(|m| self.task_cell(Some(&m.name), &entry.task).map(|e| (m, e)))
                    .collect();
                let best = |own: bool| {
                    scored.iter().filter(|(m, _)| (m.domain == *domain) == own).fold(None::<(&MaskEntry, Estimate)>, |b, &(m, e)| match b {
                        Some((_, be)) if !better(e.value, be.value) => b,
                        _ => Some((m, e)),
                    })
                };
                let subject = subject_of(method, pattern);
                let (Some((om, oe)), Some((xm, xe))) = (best(true), best(false)) else {
                    out.push(ClaimCheck {
                        subject,
                        verdict: Verdict::NotTested,
                        detail: "no mask of another domain was scored on it".into(),
                    });
                    continue;
                };
                let difference = oe.value - xe.value;
                let paired = match (self.task_item_scores(Some(&om.name), &entry.task), self.task_item_scores(Some(&xm.name), &entry.task))
                {
                    (Some(a), Some(b)) => crate::items::paired_difference_interval(a, b).map(|(low, high)| (low, high, a.len())),
                    _ => None,
                };
                let interval = match paired {
                    Some((low, high, n)) => {
                        let separated = if low > 0.0 || high < 0.0 { "excludes 0" } else { "includes 0: this run does not separate them" };
                        format!(
                            "; paired 95% interval of the difference over the same {n} items [{}, {}], which {separated}",
                            fmt_change(low),
                            fmt_change(high)
                        )
                    }
                    None => "; no paired interval (the items of the two results are not both recorded)".to_string(),
                };
                let held = !better(xe.value, oe.value);
                let relation = if better(oe.value, xe.value) {
                    "beats"
                } else if held {
                    "ties"
                } else {
                    "loses to"
                };
                let detail = format!(
                    "own-domain `{}` {} {relation} `{}` ({}) {}: difference {}{interval}",
                    om.name,
                    oe.cell(),
                    xm.name,
                    xm.domain,
                    xe.cell(),
                    fmt_change(difference)
                );
                out.push(ClaimCheck { subject, verdict: if held { Verdict::Held } else { Verdict::NotHeld }, detail });
            }
        }
        out
    }

    /// The closest cross-domain mask (same method and pattern) to either mask of a same-domain pair.
    fn nearest_cross(&self, a: &MaskEntry, b: &MaskEntry) -> Option<(String, String, f64)> {
        let mut best: Option<(String, String, f64)> = None;
        for m in [a, b] {
            for x in &self.manifest.masks {
                if x.domain == m.domain || x.domain == NO_DOMAIN || x.method != m.method || x.pattern != m.pattern {
                    continue;
                }
                if let Some(d) = self.distance(&m.name, &x.name) {
                    if best.as_ref().is_none_or(|b| d < b.2) {
                        best = Some((m.name.clone(), x.name.clone(), d));
                    }
                }
            }
        }
        best
    }

    /// Claim (b), per same-domain pair.
    fn claim_same_domain(&self) -> Vec<ClaimCheck> {
        let mut out = Vec::new();
        for (a, b) in &self.manifest.same_domain_pairs {
            let subject = format!("{a} vs {b}");
            let (Some(ma), Some(mb)) = (self.mask(a), self.mask(b)) else { continue };
            let same = self.distance(a, b);
            let cross = self.nearest_cross(ma, mb);
            let (Some(d), Some((cx, cy, c))) = (same, cross) else {
                let why = if same.is_none() {
                    format!("the Jaccard artifact has no whole-model distance for {a} vs {b}")
                } else {
                    "no cross-domain mask of the same method and pattern to compare with".to_string()
                };
                out.push(ClaimCheck { subject, verdict: Verdict::NotTested, detail: why });
                continue;
            };
            let verdict = if d < c { Verdict::Held } else { Verdict::NotHeld };
            let relation = if d < c { "closer" } else { "not closer" };
            let detail = format!(
                "same-domain ({}) distance {d:.3} against the smallest cross-domain distance {c:.3} (`{cx}` vs `{cy}`): {relation}, by {:.3}",
                ma.domain,
                (c - d).abs()
            );
            out.push(ClaimCheck { subject, verdict, detail });
        }
        out
    }
}

fn count(checks: &[ClaimCheck]) -> (usize, usize) {
    let tested = checks.iter().filter(|c| c.verdict != Verdict::NotTested).count();
    (checks.iter().filter(|c| c.verdict == Verdict::Held).count(), tested)
}

/// Renders the figures of a run into its figures directory, renders the Markdown
/// report to `out` (figures linked by paths relative to `out`), and returns it with a
/// short summary.
///
/// Every file the manifest names must exist; the error names the one missing.
pub fn write_report(run_dir: &Path, out: &Path) -> Result<ReportOutput, AnalyzeError> {
    write_report_of(run_dir, out, Missing::Refuse)
}

/// [`write_report`] of a run still under way: results and the Jaccard
/// artifact that do not exist yet are left out (their cells read `n/a`, and
/// the claims they would test are not tested), and a note at the top counts
/// them. The masks must exist.
pub fn write_partial_report(run_dir: &Path, out: &Path) -> Result<ReportOutput, AnalyzeError> {
    write_report_of(run_dir, out, Missing::Skip)
}

/// What a report does with results its manifest names that do not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missing {
    /// Fails, naming the file.
    Refuse,
    /// Leaves them out and says how many.
    Skip,
}

fn write_report_of(run_dir: &Path, out: &Path, missing: Missing) -> Result<ReportOutput, AnalyzeError> {
    let run = Run::read(run_dir, missing)?;
    let m = &run.manifest;
    let mut notes = run.notes.clone();
    let fig_dir = run.dir.join(&m.figures_dir);
    fs::create_dir_all(&fig_dir).map_err(io_err(&fig_dir))?;
    let out_dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&out_dir).map_err(io_err(&out_dir))?;

    let mask_names: Vec<String> = m.masks.iter().map(|x| x.name.clone()).collect();
    let in_jaccard = crate::figures::mask_names(&run.jaccard);
    let jaccard_names: Vec<String> = mask_names.iter().filter(|n| in_jaccard.contains(n)).cloned().collect();
    let mut cross = run.cross_pairs();
    cross.sort_by(|x, y| x.2.total_cmp(&y.2));
    let own = run.claim_own_domain();
    let closer = run.claim_same_domain();
    let own_tasks = run.claim_own_domain_tasks();

    let mut layer_pairs: Vec<(String, String)> =
        m.same_domain_pairs.iter().filter(|(a, b)| run.distance(a, b).is_some()).cloned().collect();
    let push_pair = |p: (String, String), list: &mut Vec<(String, String)>| {
        if !list.iter().any(|(a, b)| (*a == p.0 && *b == p.1) || (*a == p.1 && *b == p.0)) {
            list.push(p);
        }
    };
    let n_same = layer_pairs.len();
    for (a, b) in &m.same_domain_pairs {
        if let (Some(ma), Some(mb)) = (run.mask(a), run.mask(b)) {
            if let Some((x, y, _)) = run.nearest_cross(ma, mb) {
                if layer_pairs.len() < n_same + 4 {
                    push_pair((x, y), &mut layer_pairs);
                }
            }
        }
    }
    for (a, b, _) in cross.first().into_iter().chain(cross.last()) {
        if layer_pairs.len() < n_same + 4 {
            push_pair((a.clone(), b.clone()), &mut layer_pairs);
        }
    }

    let mut figures: Vec<(String, PathBuf)> = Vec::new();
    if !run.cells.is_empty() {
        let rows: Vec<String> = run.calibrations.iter().map(|c| c.clone().unwrap_or_else(|| "dense".to_string())).collect();
        let values =
            run.calibrations.iter().map(|c| run.domains.iter().map(|d| run.cell(c.as_deref(), d).map(|p| p.value)).collect()).collect();
        let path = fig_dir.join("perplexity-heatmap.png");
        metric_heatmap("perplexity", rows, run.domains.clone(), values).draw().save_png(&path)?;
        figures.push(("Perplexity by calibration (rows) and evaluation domain (columns)".to_string(), path));
    }
    let scored: Vec<&(String, String)> = run.tasks.iter().filter(|(_, metric)| metric != "perplexity").collect();
    let sub_models: Vec<&String> = run.task_rows.iter().flatten().collect();
    if !scored.is_empty() && !sub_models.is_empty() && run.task_rows.contains(&None) {
        let change = |mask: &str, task: &str| Some(run.task_cell(Some(mask), task)?.value - run.task_cell(None, task)?.value);
        let values = sub_models.iter().map(|m| scored.iter().map(|(t, _)| change(m, t)).collect()).collect();
        let rows = sub_models.iter().map(|m| run.mask(m).map_or_else(|| m.to_string(), |e| format!("{m} ({})", e.domain))).collect();
        let path = fig_dir.join("task-change-heatmap.png");
        task_change_heatmap(rows, scored.iter().map(|(t, m)| format!("{t} {m}")).collect(), values).draw().save_png(&path)?;
        figures.push((
            "Change of each task's score against the dense model, by calibration source (rows) and task (columns)".to_string(),
            path,
        ));
    }
    if !jaccard_names.is_empty() {
        let path = fig_dir.join("jaccard-matrix.png");
        jaccard_heatmap(&run.jaccard, &jaccard_names).draw().save_png(&path)?;
        figures.push(("Whole-model Jaccard distance between masks".to_string(), path));
    }
    let has_layers = run.jaccard.iter().any(|r| r.module == LAYER_ROW);
    if has_layers && !layer_pairs.is_empty() {
        let series = per_layer_series(&run.jaccard, Some(&layer_pairs))?;
        let path = fig_dir.join("jaccard-curves.png");
        draw_curves(&series, "Per-layer Jaccard distance of pruned weights", 1000, 560).save_png(&path)?;
        figures.push(("Per-layer Jaccard distance: same-domain pairs and selected cross-domain pairs".to_string(), path));
    }
    let layers: BTreeSet<u32> = run.jaccard.iter().filter(|r| r.module == LAYER_ROW).filter_map(|r| r.layer).collect();
    if let Some(&last) = layers.iter().next_back() {
        let module = mask_diff_module(last);
        let mut diffs: Vec<(&str, String, String)> = Vec::new();
        if let Some((a, b)) = m.same_domain_pairs.first() {
            diffs.push(("same-domain", a.clone(), b.clone()));
        }
        if let Some((a, b, _)) = cross.last() {
            diffs.push(("cross-domain", a.clone(), b.clone()));
        }
        for (kind, a, b) in diffs {
            let named = |n: &str| run.mask(n).map(|e| NamedMask { name: n.to_string(), path: run.dir.join(&e.path) });
            let (Some(na), Some(nb)) = (named(&a), named(&b)) else { continue };
            let path = fig_dir.join(format!("mask-diff-{kind}.png"));
            match mask_diff_figure(&na, &nb, &module, &path, 1024) {
                Ok(_) => figures.push((format!("Pruned weights of `{module}`, {kind} pair {a} vs {b}"), path)),
                Err(AnalyzeError::BadModule { detail, .. }) => notes.push(format!("no {kind} mask-diff figure: `{module}`: {detail}")),
                Err(e) => return Err(e),
            }
        }
    }

    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "# {}\n", m.title);
    let _ = writeln!(w, "Run directory `{}`; written by subprune-analyze {}.\n", run.dir.display(), env!("CARGO_PKG_VERSION"));
    let _ = writeln!(w, "## Setup\n");
    let fingerprint = run.provenances.first().map_or(m.model.fingerprint.as_str(), |p| p.model.as_str());
    let uniq = |f: &dyn Fn(&MaskEntry) -> String| {
        let mut v: Vec<String> = Vec::new();
        for x in &m.masks {
            let s = f(x);
            if !v.contains(&s) {
                v.push(s);
            }
        }
        v.join(", ")
    };
    let sparsity = |k: usize| fmt_sparsity(&run.provenances[k]);
    let sparsities = {
        let mut v: Vec<String> = Vec::new();
        for (k, x) in m.masks.iter().enumerate() {
            let s = format!("{} ({})", sparsity(k), x.pattern);
            if !v.contains(&s) {
                v.push(s);
            }
        }
        v.join(", ")
    };
    let mut all_domains: Vec<String> = Vec::new();
    for d in m.masks.iter().map(|x| &x.domain).chain(&run.domains) {
        if !all_domains.contains(d) {
            all_domains.push(d.clone());
        }
    }
    let _ = writeln!(w, "| | |\n|---|---|");
    let _ = writeln!(w, "| Model | {} (`{}`), fingerprint `{}` |", m.model.name, m.model.path, fingerprint);
    let _ = writeln!(w, "| Domains | {} |", all_domains.join(", "));
    let _ = writeln!(w, "| Methods | {} |", uniq(&|x| x.method.clone()));
    let _ = writeln!(w, "| Sparsities (pattern) | {sparsities} |");
    let _ = writeln!(w, "| Masks | {} |\n", m.masks.len());
    let _ = writeln!(w, "| mask | domain | source | method | pattern | sparsity | file |\n|---|---|---|---|---|---|---|");
    for (k, x) in m.masks.iter().enumerate() {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | `{}` |",
            x.name,
            x.domain,
            x.source,
            x.method,
            x.pattern,
            sparsity(k),
            x.path.display()
        );
    }

    if !run.domains.is_empty() {
        let _ = writeln!(w, "\n## Perplexity: calibration x evaluation domain\n");
        let _ = writeln!(
            w,
            "Perplexity on each domain's held-out set (lower is better), with its 95% confidence interval in brackets; `n/a`: no result.\n"
        );
        let _ = writeln!(w, "| calibration | {} |", run.domains.join(" | "));
        let _ = writeln!(w, "|---|{}", "---|".repeat(run.domains.len()));
        for c in &run.calibrations {
            let label = match c {
                None => "dense".to_string(),
                Some(n) => run.mask(n).map_or_else(|| n.clone(), |e| format!("{n} ({})", e.domain)),
            };
            let cells: Vec<String> =
                run.domains.iter().map(|d| run.cell(c.as_deref(), d).map_or_else(|| "n/a".to_string(), |p| p.cell())).collect();
            let _ = writeln!(w, "| {label} | {} |", cells.join(" | "));
        }
    }

    if !run.tasks.is_empty() {
        let _ = writeln!(w, "\n## Task scores: calibration source x task\n");
        let _ = writeln!(
            w,
            "Each task's score (perplexity: lower is better; every other metric: higher is better) with its 95% confidence interval in brackets, and its change against the dense model; `n/a`: no result.\n"
        );
        let heads: Vec<String> = run.tasks.iter().map(|(t, m)| format!("{t} ({m})")).collect();
        let _ = writeln!(w, "| calibration | {} |", heads.join(" | "));
        let _ = writeln!(w, "|---|{}", "---|".repeat(heads.len()));
        for c in &run.task_rows {
            let label = match c {
                None => "dense".to_string(),
                Some(n) => run.mask(n).map_or_else(|| n.clone(), |e| format!("{n} ({})", e.domain)),
            };
            let cells: Vec<String> = run
                .tasks
                .iter()
                .map(|(t, _)| match (run.task_cell(c.as_deref(), t), run.task_cell(None, t)) {
                    (None, _) => "n/a".to_string(),
                    (Some(score), Some(dense)) if c.is_some() => format!("{} ({})", score.cell(), fmt_change(score.value - dense.value)),
                    (Some(score), _) => score.cell(),
                })
                .collect();
            let _ = writeln!(w, "| {label} | {} |", cells.join(" | "));
        }
    }

    let _ = writeln!(w, "\n## Jaccard distance of pruned weights\n");
    let _ = writeln!(w, "Distance = 1 - |pruned by both| / |pruned by either| (0: the same weights pruned; 1: no weight pruned by both; 0 when neither prunes anything).\n");
    let _ = writeln!(w, "### Whole model\n");
    if jaccard_names.is_empty() {
        let _ = writeln!(w, "No distances: the run has no Jaccard artifact (yet).");
    } else {
        let _ = writeln!(w, "| | {} |", jaccard_names.join(" | "));
        let _ = writeln!(w, "|---|{}", "---|".repeat(jaccard_names.len()));
    }
    for a in &jaccard_names {
        let cells: Vec<String> =
            jaccard_names.iter().map(|b| if a == b { "0".to_string() } else { fmt_distance(run.distance(a, b)) }).collect();
        let _ = writeln!(w, "| {a} | {} |", cells.join(" | "));
    }
    if has_layers && !layer_pairs.is_empty() {
        let _ = writeln!(w, "\n### Per layer\n");
        let _ = writeln!(
            w,
            "Same-domain pairs first, then cross-domain pairs (the nearest to each same-domain pair, the closest and the most distant).\n"
        );
        let heads: Vec<String> = layer_pairs.iter().map(|(a, b)| format!("{a} vs {b}")).collect();
        let _ = writeln!(w, "| layer | {} |", heads.join(" | "));
        let _ = writeln!(w, "|---|{}", "---|".repeat(heads.len()));
        for l in &layers {
            let cells: Vec<String> = layer_pairs
                .iter()
                .map(|(a, b)| {
                    fmt_distance(
                        run.jaccard
                            .iter()
                            .find(|r| r.module == LAYER_ROW && r.layer == Some(*l) && is_pair(r, a, b))
                            .map(|r| r.jaccard_distance),
                    )
                })
                .collect();
            let _ = writeln!(w, "| {l} | {} |", cells.join(" | "));
        }
    }

    let _ = writeln!(w, "\n## Figures\n");
    let mut figure_paths = Vec::new();
    for (caption, path) in &figures {
        let _ = writeln!(w, "![{caption}]({})\n\n*{caption}.*\n", link(&relative(path, &out_dir)));
        figure_paths.push(path.clone());
    }

    let _ = writeln!(w, "## Claims\n");
    let (held_a, tested_a) = count(&own);
    let _ = writeln!(w, "### (a) Each domain's own calibration gives the lowest perplexity on that domain\n");
    let _ = writeln!(w, "Among wanda masks of one pattern, the best own-domain mask against the best mask calibrated on another domain.\n");
    for c in &own {
        let _ = writeln!(w, "- **{}**: {}. {}.", c.subject, c.verdict.as_str(), c.detail);
    }
    let _ = writeln!(w, "\nClaim (a) held on {held_a} of {tested_a} tested domains.\n");
    let (held_b, tested_b) = count(&closer);
    let _ = writeln!(w, "### (b) Masks from two sources of one domain are closer than masks of different domains\n");
    let _ = writeln!(w, "Whole-model Jaccard distance of each same-domain pair against the smallest distance from either of its masks to a mask of another domain (same method and pattern).\n");
    for c in &closer {
        let _ = writeln!(w, "- **{}**: {}. {}.", c.subject, c.verdict.as_str(), c.detail);
    }
    let _ = writeln!(w, "\nClaim (b) held for {held_b} of {tested_b} tested pairs.");
    let (held_c, tested_c) = count(&own_tasks);
    if !own_tasks.is_empty() {
        let _ = writeln!(w, "\n### (c) Each domain's own calibration gives its best task score\n");
        let _ = writeln!(
            w,
            "For each task of a domain, the best mask calibrated on that domain against the best mask of another domain (same method and pattern); a tie counts as held. The interval is a paired bootstrap of the difference over the items both were scored on ({} resamples).\n",
            crate::items::RESAMPLES
        );
        for c in &own_tasks {
            let _ = writeln!(w, "- **{}**: {}. {}.", c.subject, c.verdict.as_str(), c.detail);
        }
        let _ = writeln!(w, "\nClaim (c) held on {held_c} of {tested_c} tested tasks.");
    }
    if !notes.is_empty() {
        let _ = writeln!(w, "\n## Notes\n");
        for n in &notes {
            let _ = writeln!(w, "- {n}");
        }
    }

    let tmp = out_dir.join(format!(
        ".{}.tmp-{}",
        out.file_name().map_or_else(|| "report.md".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    fs::write(&tmp, &md).map_err(io_err(&tmp))?;
    fs::rename(&tmp, out).map_err(io_err(out))?;

    let mut summary = String::new();
    let label_w = run.calibrations.iter().map(|c| c.as_deref().unwrap_or("dense").len()).max().unwrap_or(5).max(11);
    let _ = write!(summary, "{:<label_w$}", "calibration");
    for d in &run.domains {
        let _ = write!(summary, "  {:>12}", d);
    }
    summary.push('\n');
    for c in &run.calibrations {
        let _ = write!(summary, "{:<label_w$}", c.as_deref().unwrap_or("dense"));
        for d in &run.domains {
            let _ = write!(summary, "  {:>12}", run.cell(c.as_deref(), d).map_or_else(|| "n/a".to_string(), |p| format_value(p.value)));
        }
        summary.push('\n');
    }
    let list =
        |checks: &[ClaimCheck]| checks.iter().map(|c| format!("{}: {}", c.subject, c.verdict.as_str())).collect::<Vec<_>>().join("; ");
    let _ = writeln!(summary, "claim (a) own-domain calibration wins: held on {held_a} of {tested_a} ({})", list(&own));
    let _ = writeln!(summary, "claim (b) same-domain masks closer: held for {held_b} of {tested_b} ({})", list(&closer));
    if !own_tasks.is_empty() {
        let _ = writeln!(summary, "claim (c) own-domain calibration gives the best task score: held on {held_c} of {tested_c}");
    }
    Ok(ReportOutput {
        markdown: md,
        summary,
        figures: figure_paths,
        own_domain_wins: own,
        same_domain_closer: closer,
        own_domain_tasks: own_tasks,
    })
}

#[cfg(test)]
mod tests {
    use super::mask_diff_module;

    #[test]
    fn mask_diff_figures_draw_a_layer_every_demo_model_has() {
        // SmolLM2-135M has layers 0..=29, Gemma 3 270M 0..=17, a one-layer model only 0.
        assert_eq!(mask_diff_module(29), "model.layers.15.self_attn.q_proj");
        assert_eq!(mask_diff_module(17), "model.layers.9.self_attn.q_proj");
        assert_eq!(mask_diff_module(0), "model.layers.0.self_attn.q_proj");
    }
}
