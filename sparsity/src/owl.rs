//! Outlier-weighted layer sparsity (OWL, Yin et al. 2024): layers whose
//! Wanda scores hold more outliers keep more of their weights, the layers'
//! sparsities averaging the target.
//!
//! As the authors' `prune_wanda_outlier` (luuyin/OWL, `lib/prune_all.py`):
//! on the dense model, each decoder layer's outlier ratio is the percentage
//! of the Wanda scores of all its linear modules above `M` times their mean;
//! the ratios are scaled to a spread of `2λ` and shifted to average the
//! target density; a layer's sparsity is one minus its density (0.01 where
//! that would not be positive).

use std::fmt;
use std::str::FromStr;

/// OWL's default outlier multiple `M`.
pub const DEFAULT_OUTLIER_MULTIPLE: f64 = 5.0;
/// OWL's default spread `λ` of the layers' densities around the target.
pub const DEFAULT_LAMBDA: f64 = 0.08;

/// How the target sparsity is spread over the decoder layers.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum SparsityProfile {
    /// Every layer at the target sparsity.
    #[default]
    Uniform,
    /// OWL: per-layer sparsities from the layers' outlier ratios.
    Owl {
        /// Scores above this multiple of the layer's mean are outliers (`M`).
        outlier_multiple: f64,
        /// Half the spread of the layers' densities (`λ`).
        lambda: f64,
    },
}

impl SparsityProfile {
    /// OWL with its defaults (`M` = 5, `λ` = 0.08).
    pub fn owl() -> Self {
        SparsityProfile::Owl { outlier_multiple: DEFAULT_OUTLIER_MULTIPLE, lambda: DEFAULT_LAMBDA }
    }

    /// `uniform` or `owl`.
    pub fn as_str(&self) -> &'static str {
        match self {
            SparsityProfile::Uniform => "uniform",
            SparsityProfile::Owl { .. } => "owl",
        }
    }
}

impl FromStr for SparsityProfile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "uniform" => Ok(SparsityProfile::Uniform),
            "owl" => Ok(SparsityProfile::owl()),
            other => Err(format!("unknown sparsity profile `{other}`; expected uniform or owl")),
        }
    }
}

impl fmt::Display for SparsityProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts a layer's scores, module by module, toward its outlier ratio.
#[derive(Debug, Clone, Default)]
pub struct OutlierCount {
    modules: Vec<Vec<f32>>,
}

impl OutlierCount {
    /// An empty layer.
    pub fn new() -> Self {
        OutlierCount::default()
    }

    /// Adds one module's Wanda scores.
    pub fn add(&mut self, scores: Vec<f32>) {
        self.modules.push(scores);
    }

    /// The percentage of the layer's scores above `multiple` times their
    /// mean (the reference's `check_outlier_mean`: the mean and the
    /// threshold in f32, the mean's sum taken in f64).
    pub fn ratio(&self, multiple: f64) -> f64 {
        let total: usize = self.modules.iter().map(Vec::len).sum();
        if total == 0 {
            return 0.0;
        }
        let sum: f64 = self.modules.iter().flatten().map(|&v| f64::from(v)).sum();
        let mean = (sum / total as f64) as f32;
        let threshold = mean * multiple as f32;
        let count = self.modules.iter().flatten().filter(|&&v| v > threshold).count();
        count as f64 / total as f64 * 100.0
    }
}

/// The layers' sparsities from their outlier ratios (percent), averaging
/// `target`: densities `(r - min) / (max - min) · 2λ`, shifted to average
/// `1 - target`; a sparsity that would not be positive becomes 0.01.
pub fn layer_sparsities(outlier_ratios: &[f64], target: f64, lambda: f64) -> Vec<f64> {
    if outlier_ratios.is_empty() {
        return Vec::new();
    }
    let min = outlier_ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = outlier_ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let spread = max - min;
    let scaled: Vec<f64> =
        outlier_ratios.iter().map(|r| if spread > 0.0 { (r - min) * (1.0 / spread * lambda * 2.0) } else { 0.0 }).collect();
    let mean = scaled.iter().sum::<f64>() / scaled.len() as f64;
    scaled
        .iter()
        .map(|d| {
            let sparsity = 1.0 - (d - mean + (1.0 - target));
            if sparsity <= 0.0 {
                0.01
            } else {
                sparsity
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outlier_ratio_counts_scores_above_the_multiple_of_the_layer_mean() {
        // Two modules, ten scores with mean 2: above 3 x 2 = 6 are 7 and 9 -> 20%.
        let mut layer = OutlierCount::new();
        layer.add(vec![0.0, 1.0, 1.0, 0.0, 7.0]);
        layer.add(vec![0.5, 0.5, 1.0, 9.0, 0.0]);
        assert!((layer.ratio(3.0) - 20.0).abs() < 1e-12);
        assert_eq!(layer.ratio(5.0), 0.0);
    }

    #[test]
    fn sparsities_spread_by_two_lambda_and_average_the_target() {
        // Ratios 1, 3, 5: scaled to 0, 0.08, 0.16 (mean 0.08), densities 0.42, 0.5, 0.58.
        let s = layer_sparsities(&[1.0, 3.0, 5.0], 0.5, 0.08);
        for (got, want) in s.iter().zip([0.58, 0.5, 0.42]) {
            assert!((got - want).abs() < 1e-12, "{s:?}");
        }
        assert!((s.iter().sum::<f64>() / 3.0 - 0.5).abs() < 1e-12);
        // Equal ratios: uniform; a density above 1 gives the floor 0.01.
        assert_eq!(layer_sparsities(&[2.0, 2.0], 0.7, 0.08), [0.7, 0.7]);
        assert_eq!(layer_sparsities(&[0.0, 1.0], 0.01, 0.5)[1], 0.01);
        assert_eq!("owl".parse::<SparsityProfile>(), Ok(SparsityProfile::owl()));
    }
}
