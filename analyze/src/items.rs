//! Per-item scores of task results and bootstrap intervals over items: a
//! score's 95% interval where its results give none, and the paired
//! interval of the difference between two models' scores on the same items
//! (the report's claims compare models this way, never by whether two
//! marginal intervals overlap).

use std::collections::BTreeMap;
use std::path::Path;

use crate::AnalyzeError;

/// Bootstrap resamples of every interval.
pub const RESAMPLES: usize = 2000;

/// Seed of every bootstrap: intervals are deterministic.
const SEED: u64 = 0x5EED_0F_17E35;

/// Each item's score for `metric`, from the items artifact beside a task's
/// results (`artifacts::items_path_for`): the mean over the item's samples
/// of 1 for a correct sample (`pass@1`, `exact_match`, `acc`), of 1 for a
/// right length-normalised choice (`acc_norm`), or of the sentence's METEOR
/// (`meteor`: its score, or `meteor <value>` in its reason as older files
/// have it). `None` when there is no items artifact or it does not give the metric.
pub fn item_scores(results: &Path, metric: &str) -> Result<Option<BTreeMap<u64, f64>>, AnalyzeError> {
    let path = artifacts::items_path_for(results);
    if !path.is_file() {
        return Ok(None);
    }
    let (_, rows) = artifacts::read_items(&path)?;
    let mut sums: BTreeMap<u64, (f64, usize)> = BTreeMap::new();
    for row in rows {
        let score = match metric {
            "pass@1" | "exact_match" | "acc" => row.passed.map(f64::from),
            "acc_norm" => match (&row.pred_norm, &row.gold) {
                (Some(pred), Some(gold)) => Some(f64::from(pred == gold)),
                _ => None,
            },
            "meteor" => {
                row.score.or_else(|| row.reason.as_deref().and_then(|r| r.strip_prefix("meteor ")).and_then(|v| v.trim().parse().ok()))
            }
            _ => None,
        };
        let Some(score) = score else { return Ok(None) };
        let entry = sums.entry(row.item).or_default();
        entry.0 += score;
        entry.1 += 1;
    }
    if sums.is_empty() {
        return Ok(None);
    }
    Ok(Some(sums.into_iter().map(|(item, (sum, n))| (item, sum / n as f64)).collect()))
}

/// splitmix64: the bootstrap's generator.
struct Draws(u64);

impl Draws {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

/// The 2.5th and 97.5th percentiles of the mean of `f` over `n` items
/// resampled with replacement [`RESAMPLES`] times; `None` for fewer than two items.
fn percentile_interval(n: usize, f: impl Fn(usize) -> f64) -> Option<(f64, f64)> {
    if n < 2 {
        return None;
    }
    let mut draws = Draws(SEED);
    let mut means: Vec<f64> = (0..RESAMPLES).map(|_| (0..n).map(|_| f(draws.below(n))).sum::<f64>() / n as f64).collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (RESAMPLES - 1) as f64).round() as usize).min(RESAMPLES - 1)];
    Some((at(0.025), at(0.975)))
}

/// Each window's mean NLL per predicted token, from the items artifact
/// beside a perplexity result (`evaluate ppl --out`); `None` without one.
pub fn window_nlls(results: &Path) -> Result<Option<BTreeMap<u64, f64>>, AnalyzeError> {
    let path = artifacts::items_path_for(results);
    if !path.is_file() {
        return Ok(None);
    }
    let (_, rows) = artifacts::read_items(&path)?;
    Ok(rows.iter().map(|r| r.score.map(|s| (r.item, s))).collect::<Option<BTreeMap<u64, f64>>>().filter(|m| !m.is_empty()))
}

/// 95% percentile-bootstrap interval of the mean of `values`.
pub fn mean_interval(values: &[f64]) -> Option<(f64, f64)> {
    percentile_interval(values.len(), |i| values[i])
}

/// 95% percentile-bootstrap interval of mean(a) - mean(b) over the items
/// both score, resampling items (each item keeps its pair of scores);
/// `None` unless both score the same items, two or more.
pub fn paired_difference_interval(a: &BTreeMap<u64, f64>, b: &BTreeMap<u64, f64>) -> Option<(f64, f64)> {
    if a.len() != b.len() || a.keys().zip(b.keys()).any(|(x, y)| x != y) {
        return None;
    }
    let differences: Vec<f64> = a.values().zip(b.values()).map(|(x, y)| x - y).collect();
    percentile_interval(differences.len(), |i| differences[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_difference_has_a_point_interval_and_a_mixed_one_brackets_its_mean() {
        let a: BTreeMap<u64, f64> = (0..10).map(|i| (i, 1.0)).collect();
        let b: BTreeMap<u64, f64> = (0..10).map(|i| (i, 0.0)).collect();
        assert_eq!(paired_difference_interval(&a, &b), Some((1.0, 1.0)));
        // Half the items differ by 1, half by 0: mean 0.5, the interval around it and within [0, 1].
        let c: BTreeMap<u64, f64> = (0..10).map(|i| (i, f64::from(i % 2 == 0))).collect();
        let (low, high) = paired_difference_interval(&c, &b).unwrap();
        assert!(0.0 <= low && low < 0.5 && 0.5 < high && high <= 1.0, "[{low}, {high}]");
        // A 95% interval of a 50% proportion over 10 items is about +-0.3 (normal: 1.96 * sqrt(0.25 / 10) = 0.31).
        assert!((high - low - 0.62).abs() < 0.2, "[{low}, {high}]");
        // Other items, or one item: no interval.
        let shifted: BTreeMap<u64, f64> = (1..11).map(|i| (i, 0.0)).collect();
        assert_eq!(paired_difference_interval(&a, &shifted), None);
        assert_eq!(mean_interval(&[1.0]), None);
        assert_eq!(mean_interval(&[0.25, 0.25, 0.25]), Some((0.25, 0.25)));
    }
}
