//! Rotary position embeddings in Hugging Face's `rotate_half` layout: the
//! inverse frequencies of a base and its scaling (linear, Llama 3, explicit
//! per-frequency factors), their cosine and sine tables, and their
//! application to query and key heads.

use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::from_values;

/// Rotary-embedding frequency scaling, as in Hugging Face's `rope_scaling`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Every inverse frequency divided by `factor`.
    Linear {
        /// Division factor.
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        /// Scaling factor of low frequencies.
        factor: f64,
        /// Wavelength bound (in units of the original context) under which frequencies are scaled.
        low_freq_factor: f64,
        /// Wavelength bound over which frequencies are kept.
        high_freq_factor: f64,
        /// Context length the model was trained with.
        original_max_position_embeddings: f64,
    },
    /// Explicit per-frequency divisors (GGUF's `rope_freqs.weight`, written by
    /// llama.cpp's converter for Llama 3 scaling).
    Factors {
        /// One divisor per rotary frequency (head_dim / 2 values).
        factors: Vec<f64>,
    },
    /// LongRoPE (Phi-3): per-frequency divisors, short ones for a forward
    /// within the original context and long ones for a forward reaching
    /// past it, and a factor of every rotary cosine and sine.
    #[serde(rename = "longrope")]
    LongRope {
        /// Divisors within the original context (head_dim / 2 values).
        short_factor: Vec<f64>,
        /// Divisors past it.
        long_factor: Vec<f64>,
        /// The context the model was trained with.
        original_max_position_embeddings: usize,
        /// Factor of every rotary cosine and sine.
        attention_factor: f64,
    },
}

impl RopeScaling {
    /// The factor of every rotary cosine and sine (LongRoPE's; 1 for the others).
    pub fn attention_factor(&self) -> f64 {
        match self {
            RopeScaling::LongRope { attention_factor, .. } => *attention_factor,
            _ => 1.0,
        }
    }

    /// LongRoPE's long frequencies of base `theta` and the length past which
    /// they apply; `None` for the other scalings.
    pub fn long_frequencies(&self, head_dim: usize, theta: f64) -> Option<(usize, Vec<f64>)> {
        let RopeScaling::LongRope { long_factor, original_max_position_embeddings, .. } = self else { return None };
        let long = RopeScaling::Factors { factors: long_factor.clone() };
        Some((*original_max_position_embeddings, inverse_frequencies(head_dim, theta, Some(&long))))
    }
}

/// Inverse rotary frequencies (head_dim / 2 values) of base `theta`, scaled
/// by `scaling`, computed in f64.
pub fn inverse_frequencies(head_dim: usize, theta: f64, scaling: Option<&RopeScaling>) -> Vec<f64> {
    let d = head_dim as f64;
    let base: Vec<f64> = (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f64 / d)).collect();
    match scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
        Some(RopeScaling::Factors { factors }) | Some(RopeScaling::LongRope { short_factor: factors, .. }) => {
            base.iter().zip(factors).map(|(f, s)| f / s).collect()
        }
        Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
            let low_freq_wavelen = original_max_position_embeddings / low_freq_factor;
            let high_freq_wavelen = original_max_position_embeddings / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_freq_wavelen {
                        f
                    } else if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        let smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

/// Cosine and sine values of the rotary embedding for positions 0..len,
/// each [len, head_dim] row-major with the frequencies repeated as in
/// Hugging Face's `rotate_half` layout, both multiplied by `factor`
/// (LongRoPE's attention factor; 1 elsewhere).
pub fn rope_values(inv_freq: &[f64], len: usize, factor: f64) -> (Vec<f32>, Vec<f32>) {
    rope_values_at(inv_freq, &[(0..len).collect()], factor)
}

/// [`rope_values`] as tensors [len, head_dim] on `device`.
pub fn rope_tables(inv_freq: &[f64], len: usize, factor: f64, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let (cos, sin) = rope_values(inv_freq, len, factor);
    let shape = [len, 2 * inv_freq.len()];
    (from_values(cos, shape, device), from_values(sin, shape, device))
}

/// Applies the rotary embedding to x [batch, heads, seq, head_dim].
pub fn apply_rope(x: Tensor<4>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<4> {
    let [_, _, seq, head_dim] = x.dims();
    let half = head_dim / 2;
    let cos = cos.clone().narrow(0, 0, seq).unsqueeze::<4>();
    let sin = sin.clone().narrow(0, 0, seq).unsqueeze::<4>();
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos + rotated * sin
}

/// Applies the rotary embedding to x [batch, heads, seq, head_dim] with
/// per-row tables `cos` and `sin` [batch, 1, seq, head_dim].
pub fn apply_rope_rows(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let head_dim = x.dims()[3];
    let half = head_dim / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

/// Cosine and sine tables [batch, 1, seq, head_dim] of the rotary embedding
/// at the given positions ([batch][seq]), in Hugging Face's `rotate_half` layout.
pub fn rope_tables_at(inv_freq: &[f64], positions: &[Vec<usize>], factor: f64, device: &Device) -> (Tensor<4>, Tensor<4>) {
    let (batch, seq, d) = (positions.len(), positions.first().map_or(0, Vec::len), 2 * inv_freq.len());
    let (cos, sin) = rope_values_at(inv_freq, positions, factor);
    (from_values(cos, [batch, 1, seq, d], device), from_values(sin, [batch, 1, seq, d], device))
}

/// The values of [`rope_tables_at`], [batch * seq, head_dim] row-major, multiplied by `factor`.
pub fn rope_values_at(inv_freq: &[f64], positions: &[Vec<usize>], factor: f64) -> (Vec<f32>, Vec<f32>) {
    let d = 2 * inv_freq.len();
    let count = positions.iter().map(Vec::len).sum::<usize>();
    let mut cos = Vec::with_capacity(count * d);
    let mut sin = Vec::with_capacity(count * d);
    for &pos in positions.iter().flatten() {
        for _ in 0..2 {
            for f in inv_freq {
                let angle = pos as f64 * f;
                cos.push((angle.cos() * factor) as f32);
                sin.push((angle.sin() * factor) as f32);
            }
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    use testkit::cpu;

    #[test]
    fn rope_rotates_pairs_half_a_head_apart() {
        let device = cpu();
        // head_dim 4, theta 10000: inverse frequencies 1 and 10000^(-1/2) = 0.01.
        let inv_freq = [1.0, 0.01];
        let (cos, sin) = rope_tables(&inv_freq, 2, 1.0, &device);
        let x = Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0], [1, 1, 2, 4]), &device);
        let out = apply_rope(x, &cos, &sin).into_data().try_into_vec::<f32>().unwrap();
        // Position 0 is unchanged; position 1 rotates (x0, x2) by 1 rad and (x1, x3) by 0.01 rad:
        // cos1 - 3 sin1, 2 cos.01 - 4 sin.01, 3 cos1 + sin1, 4 cos.01 + 2 sin.01.
        let expected = [1.0, 2.0, 3.0, 4.0, -1.984_110_7, 1.959_900_7, 2.462_377_9, 4.019_799_7];
        for (got, want) in out.iter().zip(expected) {
            assert!((got - want).abs() < 1e-5, "{out:?} vs {expected:?}");
        }
    }

    #[test]
    fn inverse_frequencies_follow_rope_theta_and_scaling() {
        let mut theta = 10000.0;
        let mut scaling = None;
        let inverse = |theta: f64, scaling: &Option<RopeScaling>| inverse_frequencies(4, theta, scaling.as_ref());
        assert_eq!(inverse(theta, &scaling), vec![1.0, 0.01]);
        scaling = Some(RopeScaling::Linear { factor: 4.0 });
        assert_eq!(inverse(theta, &scaling), vec![0.25, 0.0025]);
        // Llama 3 scaling with original context 100, low/high factors 1 and 4:
        // wavelengths 2pi (< 25, kept) and 200pi (> 100, divided by factor 8).
        scaling =
            Some(RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 100.0 });
        assert_eq!(inverse(theta, &scaling), vec![1.0, 0.01 / 8.0]);
        // A medium wavelength (2pi/0.1 = 62.8, between 25 and 100) is smoothed:
        // smooth = (100/62.83 - 1) / 3 = 0.19718, f = (1 - s) * 0.1 / 8 + s * 0.1.
        theta = 100.0;
        let f = inverse(theta, &scaling)[1];
        let s = (100.0 / (2.0 * std::f64::consts::PI / 0.1) - 1.0) / 3.0;
        assert!((f - ((1.0 - s) * 0.1 / 8.0 + s * 0.1)).abs() < 1e-15);
        assert!((f - 0.029_753_5).abs() < 1e-7, "{f}");
    }
}
