//! Grouped-query self-attention with rotary embeddings: optional per-head
//! norms of queries and keys (Qwen3, Gemma 3), a sliding window, and
//! soft-capped logits (Gemma 2). Three paths share the projections: a whole
//! sequence with the host kernels or with tensor ops, and new positions over
//! a key/value cache.

use std::ops::Range;

use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Device, Tensor, TensorData};

use super::rope::{apply_rope, apply_rope_rows};
use super::{from_values, host_values, soft_cap, LayerKv, Linear, RmsNorm};
use kernels::gemm;
use kernels::{AttentionShape, Causal, ScoreScale};

/// The heads of an attention: query heads, key/value heads (a divisor of
/// the query heads) and the width of one head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadShape {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

/// Rotary tables and visibility of a whole-sequence forward, for one layer.
pub(crate) enum Positions<'a> {
    /// For the host kernels: tables [seq, head_dim] and what each query sees.
    Host { cos: &'a [f32], sin: &'a [f32], causal: Causal },
    /// For tensor ops: tables [seq, head_dim] and the mask of [`attention_mask`].
    Tensor { cos: &'a Tensor<2>, sin: &'a Tensor<2>, mask: &'a Tensor<2, Bool> },
}

/// Rotary tables and visibility of the new positions of a cached step, for one layer.
pub(crate) enum StepPositions<'a> {
    /// For the host kernels: tables [batch * new, head_dim] and the key slots each new slot sees.
    Host { cos: &'a [f32], sin: &'a [f32], visible: &'a [Range<usize>] },
    /// For tensor ops: tables [batch, 1, new, head_dim] and the mask of [`super::KvCache::mask`].
    Tensor { cos: &'a Tensor<4>, sin: &'a Tensor<4>, mask: &'a Tensor<4, Bool> },
}

/// Self-attention with grouped-query heads and rotary embeddings.
#[derive(Debug, Clone)]
pub struct Attention {
    /// Query, key and value projections as one layer: outputs `[q, k, v]` side by side.
    pub qkv_proj: Linear,
    /// Output projection.
    pub o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    shape: HeadShape,
    scale: f64,
    softcap: Option<f64>,
}

impl Attention {
    /// The attention of a fused q/k/v projection and an output projection;
    /// scores are multiplied by `scale`, then soft-capped by `softcap`;
    /// queries and keys are normalised per head by `qk_norms`, if given.
    pub fn new(
        qkv_proj: Linear,
        o_proj: Linear,
        qk_norms: Option<(RmsNorm, RmsNorm)>,
        shape: HeadShape,
        scale: f64,
        softcap: Option<f64>,
    ) -> Self {
        let (q_norm, k_norm) = qk_norms.map_or((None, None), |(q, k)| (Some(q), Some(k)));
        Attention { qkv_proj, o_proj, q_norm, k_norm, shape, scale, softcap }
    }

    fn kernel_shape(&self, batch: usize, seq: usize) -> AttentionShape {
        let HeadShape { heads, kv_heads, head_dim } = self.shape;
        AttentionShape { batch, seq, heads, kv_heads, head_dim }
    }

    fn score(&self) -> ScoreScale {
        ScoreScale { scale: self.scale as f32, softcap: self.softcap.map(|c| c as f32) }
    }

    /// Normalises the query and key heads of fused projection rows in place.
    fn norm_heads_host(&self, qkv: &mut [f32]) {
        let HeadShape { heads, kv_heads, head_dim: d } = self.shape;
        let width = (heads + 2 * kv_heads) * d;
        if let Some(norm) = &self.q_norm {
            kernels::rms_norm_heads(qkv, width, 0, heads, norm.scale_host(), norm.eps() as f32);
        }
        if let Some(norm) = &self.k_norm {
            kernels::rms_norm_heads(qkv, width, heads * d, kv_heads, norm.scale_host(), norm.eps() as f32);
        }
    }

    /// Queries, keys and values [batch, n, seq, head_dim] of the fused
    /// projection `qkv` [batch * seq, ...], queries and keys normalised per
    /// head when the attention has those norms, before the rotary embedding.
    fn split_tensor(&self, qkv: Tensor<2>, b: usize, s: usize) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let HeadShape { heads, kv_heads, head_dim: d } = self.shape;
        let (q_width, kv_width) = (heads * d, kv_heads * d);
        let norm = |t: Tensor<2>, n: usize, norm: &Option<RmsNorm>| match norm {
            Some(norm) => norm.forward(t.reshape([b * s * n, d])).reshape([b * s, n * d]),
            None => t,
        };
        let q = norm(qkv.clone().narrow(1, 0, q_width), heads, &self.q_norm);
        let k = norm(qkv.clone().narrow(1, q_width, kv_width), kv_heads, &self.k_norm);
        let v = qkv.narrow(1, q_width + kv_width, kv_width);
        let split = |t: Tensor<2>, n: usize| t.reshape([b, s, n, d]).swap_dims(1, 2);
        (split(q, heads), split(k, kv_heads), split(v, kv_heads))
    }

    /// Scaled (and soft-capped) attention scores of queries and keys [batch, n, rows, head_dim].
    fn scores(&self, q: Tensor<4>, k: Tensor<4>) -> Tensor<4> {
        let scores = q.matmul(k.swap_dims(2, 3)) * self.scale;
        match self.softcap {
            Some(cap) => soft_cap(scores, cap),
            None => scores,
        }
    }

    /// Attention context [batch * seq, heads * head_dim] of the fused
    /// projection `qkv` [batch * seq, (heads + 2 * kv_heads) * head_dim].
    pub(crate) fn attend(&self, qkv: Tensor<2>, batch: usize, seq: usize, positions: Positions<'_>) -> Tensor<2> {
        let (b, s) = (batch, seq);
        let HeadShape { heads, kv_heads, head_dim: d } = self.shape;
        match positions {
            Positions::Host { cos, sin, causal } => {
                let device = qkv.device();
                let shape = self.kernel_shape(b, s);
                let mut values = host_values(qkv);
                self.norm_heads_host(&mut values);
                let split = kernels::split_heads(&values, shape, cos, sin);
                let matmul = |lhs: Vec<f32>, [batch, m, k]: [usize; 3], rhs: Vec<f32>, [_, _, n]: [usize; 3]| {
                    if gemm::fast_kernel_available() {
                        gemm::batched_matmul(&lhs, &rhs, batch, m, k, n)
                    } else {
                        host_values(from_values(lhs, [batch, m, k], &device).matmul(from_values(rhs, [batch, k, n], &device)))
                    }
                };
                let context = kernels::causal_attention(&split, shape, self.score(), causal, matmul);
                from_values(context, [b * s, heads * d], &device)
            }
            Positions::Tensor { cos, sin, mask } => {
                let (q, k, v) = self.split_tensor(qkv, b, s);
                let q = apply_rope(q, cos, sin);
                let n_rep = heads / kv_heads;
                let k = repeat_kv(apply_rope(k, cos, sin), n_rep);
                let v = repeat_kv(v, n_rep);
                let scores = self.scores(q, k);
                let mask = mask.clone().unsqueeze::<4>().expand([b, heads, s, s]);
                let probs = softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3);
                probs.matmul(v).swap_dims(1, 2).reshape([b * s, heads * d])
            }
        }
    }

    /// Attention context [batch * new, heads * head_dim] of the fused
    /// projection `qkv` [batch * new, ...] of new positions, over the keys and
    /// values in `kv` and the new ones, which are appended to `kv`.
    pub(crate) fn attend_cached(
        &self,
        qkv: Tensor<2>,
        batch: usize,
        seq: usize,
        positions: StepPositions<'_>,
        kv: &mut LayerKv,
    ) -> Tensor<2> {
        let (b, s) = (batch, seq);
        let HeadShape { heads, kv_heads, head_dim: d } = self.shape;
        let (cos, sin, mask) = match positions {
            StepPositions::Host { cos, sin, visible } => {
                let device = qkv.device();
                let shape = self.kernel_shape(b, s);
                let mut values = host_values(qkv);
                self.norm_heads_host(&mut values);
                let new = kernels::split_new_heads(&values, shape, cos, sin);
                let context = kv.attend_host(&new, shape, visible, self.score());
                return from_values(context, [b * s, heads * d], &device);
            }
            StepPositions::Tensor { cos, sin, mask } => {
                kv.move_to_tensors(b, &qkv.device());
                (cos, sin, mask)
            }
        };
        let (q, k, v) = self.split_tensor(qkv, b, s);
        let q = apply_rope_rows(q, cos, sin);
        let k = apply_rope_rows(k, cos, sin);
        let (k, v) = kv.append(k, v);
        let total = k.dims()[2];
        let group = heads / kv_heads;
        // Query head g * group + r at new slot i is row r * s + i of key/value head g.
        let q = q.reshape([b, kv_heads, group * s, d]);
        let scores = self.scores(q, k);
        let mask = mask.clone().expand([b, kv_heads, group * s, total]);
        let probs = softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3);
        probs.matmul(v).reshape([b, heads, s, d]).swap_dims(1, 2).reshape([b * s, heads * d])
    }
}

/// Repeats each of the `kv_heads` heads of x [batch, kv_heads, seq, d]
/// `n_rep` times, so that query head h reads key/value head h / n_rep.
pub fn repeat_kv(x: Tensor<4>, n_rep: usize) -> Tensor<4> {
    if n_rep == 1 {
        return x;
    }
    let [b, kv, s, d] = x.dims();
    x.unsqueeze_dim::<5>(2).expand([b, kv, n_rep, s, d]).reshape([b, kv * n_rep, s, d])
}

/// Boolean mask [seq, seq], true where query i may not see key j: j after i,
/// or, with a window, j at or before i - window.
pub fn attention_mask(seq: usize, window: Option<usize>, device: &Device) -> Tensor<2, Bool> {
    let values: Vec<bool> = (0..seq).flat_map(|i| (0..seq).map(move |j| j > i || window.is_some_and(|w| i >= j + w))).collect();
    Tensor::from_data(TensorData::new(values, [seq, seq]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    use testkit::cpu;

    #[test]
    fn repeat_kv_maps_query_head_h_to_kv_head_h_over_rep() {
        let device = cpu();
        // Two kv heads whose every value is its head index.
        let x = Tensor::<4>::from_data(TensorData::new(vec![0.0f32, 0.0, 1.0, 1.0], [1, 2, 1, 2]), &device);
        let out = repeat_kv(x, 3).into_data().try_into_vec::<f32>().unwrap();
        assert_eq!(out, vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn causal_mask_hides_future_positions() {
        let mask = attention_mask(3, None, &cpu()).into_data().try_into_vec::<bool>().unwrap();
        assert_eq!(mask, vec![false, true, true, false, false, true, false, false, false]);
    }

    #[test]
    fn sliding_mask_keeps_the_window_including_the_query() {
        let mask = attention_mask(4, Some(2), &cpu()).into_data().try_into_vec::<bool>().unwrap();
        // Query i sees keys i-1 and i only.
        let want = [false, true, true, true, false, false, true, true, true, false, false, true, true, true, false, false];
        assert_eq!(mask, want);
    }
}
