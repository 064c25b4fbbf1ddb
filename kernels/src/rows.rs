//! Fused kernels for the element-wise parts of a decoder layer, on f32 rows
//! in host memory: RMSNorm (with the residual add before it), rotary
//! embeddings with the split of a fused q/k/v projection into attention
//! layouts, per-head norms of queries and keys, the causal softmax (with an
//! optional sliding window and logit soft-capping), and SiLU or GELU gating.
//!
//! The forward pass uses them when tensors live in host memory (burn's
//! ndarray backend), where a tensor's data converts to and from a `Vec<f32>`
//! without copying: one pass over memory each, in parallel over rows, instead
//! of the chains of allocating tensor ops they replace (burn's sigmoid alone
//! is four passes with two `exp` and one `log` per element). On other devices
//! the forward pass composes burn tensor ops, with the same results up to
//! float rounding.
//!
//! `exp` is a polynomial (Cephes' `expf`, about 1 ulp) written so that the
//! compiler vectorizes it; loops are compiled three times, for baseline x86-64,
//! for AVX2 and for AVX-512, chosen at run time. No fused multiply-add is
//! used, so all give identical results.

use rayon::prelude::*;

/// Rows handed to one parallel task by the row-wise kernels.
const ROWS_PER_TASK: usize = 16;

/// Lanes of the partial sums of row reductions (one AVX register of f32).
const LANES: usize = 8;

/// `e^x` for finite `x`, clamped to [-87.3, 88] (results from about 1e-38 to 1.6e38).
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to an integer, which the low mantissa bits then hold.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.3).min(88.0);
    let shifted = x * LOG2_E + ROUND;
    let k = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let kf = shifted - ROUND;
    let r = x - kf * LN2_HI - kf * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((k + 127) << 23) as u32)
}

/// Sum of `values`, in `LANES` interleaved partial sums (vectorizable).
#[inline(always)]
fn sum(values: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (a, v) in acc.iter_mut().zip(chunk) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Sum of squares of `values`, in `LANES` interleaved partial sums.
#[inline(always)]
fn sum_sq(values: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for chunk in chunks {
        for (a, v) in acc.iter_mut().zip(chunk) {
            *a += v * v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Maximum of `values` (non-empty), in `2 * LANES` interleaved partial
/// maxima (an AVX-512 register; the maximum is exact whatever the width).
#[inline(always)]
fn max(values: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 2 * LANES];
    let chunks = values.chunks_exact(2 * LANES);
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a = a.max(v);
        }
    }
    acc.iter().fold(tail, |m, &v| m.max(v))
}

/// Defines `$name` running the `#[inline(always)]` function `$body` with the
/// same arguments, compiled for AVX-512 or AVX2 when the CPU has it.
macro_rules! dispatch {
    ($(#[$doc:meta])* fn $name:ident => $body:ident ($($arg:ident : $ty:ty),*)) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU was just found to support AVX-512F.
                    return unsafe { avx512($($arg),*) };
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU was just found to support AVX2.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

#[inline(always)]
fn rms_norm_rows_body(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    for (row, out) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let inv = 1.0 / (sum_sq(row) / width as f32 + eps).sqrt();
        for ((o, &v), &w) in out.iter_mut().zip(row).zip(weight) {
            *o = v * inv * w;
        }
    }
}

dispatch! {
    /// RMSNorm of whole rows of `x` into `out`.
    fn rms_norm_rows => rms_norm_rows_body(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32])
}

#[inline(always)]
fn rms_norm_in_place_body(x: &mut [f32], weight: &[f32], eps: f32) {
    let width = weight.len();
    for row in x.chunks_exact_mut(width) {
        let inv = 1.0 / (sum_sq(row) / width as f32 + eps).sqrt();
        for (v, &w) in row.iter_mut().zip(weight) {
            *v = *v * inv * w;
        }
    }
}

dispatch! {
    /// RMSNorm of whole rows of `x`, in place.
    fn rms_norm_in_place => rms_norm_in_place_body(x: &mut [f32], weight: &[f32], eps: f32)
}

/// RMSNorm of every head vector (`weight.len()` values) of `heads` heads
/// starting at column `first` of each row of `rows` (rows of `width`
/// values), in place: the per-head norm of queries or keys of a fused
/// q/k/v projection (Qwen3, Gemma 3), before the rotary embedding.
pub fn rms_norm_heads(rows: &mut [f32], width: usize, first: usize, heads: usize, weight: &[f32], eps: f32) {
    let span = heads * weight.len();
    rows.par_chunks_mut(width * ROWS_PER_TASK).for_each(|rows| {
        for row in rows.chunks_exact_mut(width) {
            rms_norm_in_place(&mut row[first..first + span], weight, eps);
        }
    });
}

#[inline(always)]
fn add_rms_norm_rows_body(x: &mut [f32], o: &mut [f32], weight: &[f32], eps: f32) {
    let width = weight.len();
    for (row, o) in x.chunks_exact_mut(width).zip(o.chunks_exact_mut(width)) {
        for (v, &a) in row.iter_mut().zip(o.iter()) {
            *v += a;
        }
        let inv = 1.0 / (sum_sq(row) / width as f32 + eps).sqrt();
        for ((o, &v), &w) in o.iter_mut().zip(row.iter()).zip(weight) {
            *o = v * inv * w;
        }
    }
}

dispatch! {
    /// `x += o` and `o = RMSNorm(x)` on whole rows.
    fn add_rms_norm_rows => add_rms_norm_rows_body(x: &mut [f32], o: &mut [f32], weight: &[f32], eps: f32)
}

/// RMSNorm `x / sqrt(mean(x^2) + eps) * weight` of each row of `x` ([rows, weight.len()]).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let width = weight.len();
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(width * ROWS_PER_TASK).zip(x.par_chunks(width * ROWS_PER_TASK)).for_each(|(out, x)| {
        rms_norm_rows(x, weight, eps, out);
    });
    out
}

/// The residual add and the norm after it, in place: `x += o`, then
/// `o = RMSNorm(x)`, rows of width `weight.len()`.
pub fn add_rms_norm(x: &mut [f32], o: &mut [f32], weight: &[f32], eps: f32) {
    let width = weight.len();
    x.par_chunks_mut(width * ROWS_PER_TASK).zip(o.par_chunks_mut(width * ROWS_PER_TASK)).for_each(|(x, o)| {
        add_rms_norm_rows(x, o, weight, eps);
    });
}

dispatch! {
    /// SiLU gating of whole rows (see [`silu_mul`]).
    fn silu_mul_rows => silu_mul_rows_body(gate_up: &[f32], inter: usize, out: &mut [f32])
}

#[inline(always)]
fn silu_mul_rows_body(gate_up: &[f32], inter: usize, out: &mut [f32]) {
    for (row, out) in gate_up.chunks_exact(2 * inter).zip(out.chunks_exact_mut(inter)) {
        let (gate, up) = row.split_at(inter);
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + exp(-g)) * u;
        }
    }
}

/// SwiGLU gating `silu(gate) * up` of a fused projection whose rows are
/// `[gate (inter values), up (inter values)]`: rows of `inter` values.
pub fn silu_mul(gate_up: &[f32], inter: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; gate_up.len() / 2];
    out.par_chunks_mut(inter * ROWS_PER_TASK).zip(gate_up.par_chunks(2 * inter * ROWS_PER_TASK)).for_each(|(out, gate_up)| {
        silu_mul_rows(gate_up, inter, out);
    });
    out
}

#[inline(always)]
fn gelu_tanh_mul_rows_body(gate_up: &[f32], inter: usize, out: &mut [f32]) {
    // gelu(g) = 0.5 g (1 + tanh(u)) = g - g / (1 + e^(2u)), u = sqrt(2/pi) (g + 0.044715 g^3).
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for (row, out) in gate_up.chunks_exact(2 * inter).zip(out.chunks_exact_mut(inter)) {
        let (gate, up) = row.split_at(inter);
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            let inner = SQRT_2_OVER_PI * (g + 0.044_715 * g * g * g);
            *o = (g - g / (1.0 + exp(2.0 * inner))) * u;
        }
    }
}

dispatch! {
    /// GELU gating of whole rows (see [`gelu_tanh_mul`]).
    fn gelu_tanh_mul_rows => gelu_tanh_mul_rows_body(gate_up: &[f32], inter: usize, out: &mut [f32])
}

/// GeGLU gating `gelu_tanh(gate) * up` (GELU with the tanh approximation,
/// PyTorch's `approximate="tanh"`) of a fused projection whose rows are
/// `[gate, up]`: rows of `inter` values.
pub fn gelu_tanh_mul(gate_up: &[f32], inter: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; gate_up.len() / 2];
    out.par_chunks_mut(inter * ROWS_PER_TASK).zip(gate_up.par_chunks(2 * inter * ROWS_PER_TASK)).for_each(|(out, gate_up)| {
        gelu_tanh_mul_rows(gate_up, inter, out);
    });
    out
}

/// Shape of the attention of one forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (a divisor of `heads`).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl AttentionShape {
    /// Query heads per key/value head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
}

/// Queries, transposed keys and values of a fused q/k/v projection, with the
/// rotary embedding applied to queries and keys.
pub struct SplitHeads {
    /// Queries [batch, kv_heads, seq * group, head_dim]: within key/value head
    /// g, row `i * group + r` is query head `g * group + r` at position i.
    pub queries: Vec<f32>,
    /// Keys, transposed: [batch, kv_heads, head_dim, seq].
    pub keys_t: Vec<f32>,
    /// Values [batch, kv_heads, seq, head_dim].
    pub values: Vec<f32>,
}

/// Rotary embedding of one head vector `x` at a position whose tables are `cos` and `sin`.
#[inline(always)]
fn rope_into(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = x.len() / 2;
    let (x1, x2) = x.split_at(half);
    let (out1, out2) = out.split_at_mut(half);
    for e in 0..half {
        out1[e] = x1[e] * cos[e] + -x2[e] * sin[e];
        out2[e] = x2[e] * cos[half + e] + x1[e] * sin[half + e];
    }
}

/// Splits rows of a fused projection `[q (heads * head_dim), k (kv_heads *
/// head_dim), v (kv_heads * head_dim)]` ([batch * seq, ...]) into attention
/// layouts, rotating queries and keys with `cos` and `sin` ([seq, head_dim],
/// Hugging Face's `rotate_half` layout).
pub fn split_heads(qkv: &[f32], shape: AttentionShape, cos: &[f32], sin: &[f32]) -> SplitHeads {
    let AttentionShape { batch, seq, heads, kv_heads, head_dim: d } = shape;
    let group = shape.group();
    let width = (heads + 2 * kv_heads) * d;
    let half = d / 2;
    let row = |b: usize, i: usize| &qkv[(b * seq + i) * width..(b * seq + i + 1) * width];

    // One chunk per (batch, kv head, position): the `group` query heads of that position.
    let mut queries = vec![0.0f32; batch * seq * heads * d];
    queries.par_chunks_mut(group * d).enumerate().with_min_len(32).for_each(|(index, out)| {
        let (b, g, i) = (index / (kv_heads * seq), index / seq % kv_heads, index % seq);
        let x = &row(b, i)[g * group * d..(g + 1) * group * d];
        for (x, out) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            rope_into(x, &cos[i * d..(i + 1) * d], &sin[i * d..(i + 1) * d], out);
        }
    });

    // One chunk per (batch, kv head, feature): that feature across positions.
    let mut keys_t = vec![0.0f32; batch * kv_heads * d * seq];
    keys_t.par_chunks_mut(seq).enumerate().with_min_len(8).for_each(|(index, out)| {
        let (b, g, e) = (index / (kv_heads * d), index / d % kv_heads, index % d);
        let (col, partner, sign) = if e < half { (e, e + half, -1.0f32) } else { (e, e - half, 1.0) };
        let base = heads * d + g * d;
        for (i, o) in out.iter_mut().enumerate() {
            let x = row(b, i);
            *o = x[base + col] * cos[i * d + e] + sign * x[base + partner] * sin[i * d + e];
        }
    });

    let mut values = vec![0.0f32; batch * kv_heads * seq * d];
    values.par_chunks_mut(d).enumerate().with_min_len(64).for_each(|(index, out)| {
        let (b, g, i) = (index / (kv_heads * seq), index / seq % kv_heads, index % seq);
        let base = (heads + kv_heads) * d + g * d;
        out.copy_from_slice(&row(b, i)[base..base + d]);
    });
    SplitHeads { queries, keys_t, values }
}

/// How attention scores become logits before the softmax: multiplied by
/// `scale`, then, with a cap, soft-capped to `cap * tanh(x / cap)` (Gemma 2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreScale {
    /// Factor of every score (1 / sqrt(head_dim) for most models).
    pub scale: f32,
    /// Soft cap of the scaled scores, if any.
    pub softcap: Option<f32>,
}

impl ScoreScale {
    /// Scores multiplied by `scale`, without a cap.
    pub fn plain(scale: f32) -> Self {
        ScoreScale { scale, softcap: None }
    }
}

/// Softmax over `row[start..visible]` with the scores turned into logits by
/// `score`; the other entries get probability 0 and their `exp` is never computed.
#[inline(always)]
fn windowed_softmax_row_body(row: &mut [f32], start: usize, visible: usize, score: ScoreScale) {
    let (hidden_before, row) = row.split_at_mut(start);
    hidden_before.fill(0.0);
    match score.softcap {
        None => causal_softmax_row_body(row, visible - start, score.scale),
        Some(cap) => {
            for v in row[..visible - start].iter_mut() {
                *v = (*v * score.scale / cap).tanh() * cap;
            }
            causal_softmax_row_body(row, visible - start, 1.0);
        }
    }
}

#[inline(always)]
fn causal_softmax_row_body(row: &mut [f32], visible: usize, scale: f32) {
    let (row, hidden) = row.split_at_mut(visible);
    let shift = max(row) * scale;
    // The exponentials first, two registers' worth at a time (elementwise, so
    // the width changes no bit), then their sum in `LANES` partial sums.
    let mut chunks = row.chunks_exact_mut(2 * LANES);
    for chunk in &mut chunks {
        for v in chunk.iter_mut() {
            *v = exp(*v * scale - shift);
        }
    }
    for v in chunks.into_remainder() {
        *v = exp(*v * scale - shift);
    }
    let inv = 1.0 / sum(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
    hidden.fill(0.0);
}

dispatch! {
    /// Windowed causal softmax of one row (see [`causal_softmax`]).
    fn windowed_softmax_row => windowed_softmax_row_body(row: &mut [f32], start: usize, visible: usize, score: ScoreScale)
}

/// What the queries of an attention see: every earlier position, or with
/// a `window` only the last `window` positions (the query's own included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Causal {
    /// Sliding window in positions, if any.
    pub window: Option<usize>,
}

impl Causal {
    /// The first key a query at `position` sees (it sees up to `position`).
    pub fn start(&self, position: usize) -> usize {
        self.window.map_or(0, |w| (position + 1).saturating_sub(w))
    }
}

/// In-place softmax of attention scores [blocks, queries * group, keys],
/// turned into logits by `score` first, with causal masking. Within a
/// block, rows are laid out as in [`SplitHeads::queries`] from position
/// `first`: row `k * group + r` is a query at position `first + k`, which
/// sees keys `causal.start(first + k)..=first + k` (at most `keys`); other
/// keys get probability 0 and their `exp` is never computed.
pub fn causal_softmax(scores: &mut [f32], queries: usize, group: usize, keys: usize, first: usize, score: ScoreScale, causal: Causal) {
    scores.par_chunks_mut(keys).enumerate().with_min_len(16).for_each(|(index, row)| {
        let position = first + index % (queries * group) / group;
        let visible = (position + 1).min(keys);
        windowed_softmax_row(row, causal.start(position).min(visible), visible, score);
    });
}

/// Query positions per step of [`causal_attention`]: small enough that steps
/// skip most of the masked half of the scores, large enough for efficient
/// matmuls.
pub const QUERY_BLOCK: usize = 128;

/// Causal self-attention `softmax(logits(q k^T)) v` of [`split_heads`]'
/// output (logits by `score`, keys by `causal`), as the context [batch * seq, heads * head_dim] (head h at columns
/// h * head_dim..). `matmul(a, [batch, m, k], b, [batch, k, n])` multiplies
/// batches of row-major matrices into [batch, m, n].
///
/// Queries go by steps of [`QUERY_BLOCK`] positions, each against the keys
/// up to its last position only, so the scores above the diagonal blocks are
/// neither computed nor stored.
pub fn causal_attention(
    split: &SplitHeads,
    shape: AttentionShape,
    score: ScoreScale,
    causal: Causal,
    mut matmul: impl FnMut(Vec<f32>, [usize; 3], Vec<f32>, [usize; 3]) -> Vec<f32>,
) -> Vec<f32> {
    let AttentionShape { batch, seq, heads, kv_heads, head_dim: d } = shape;
    let (group, blocks) = (shape.group(), batch * kv_heads);
    let mut context = vec![0.0f32; batch * seq * heads * d];
    for first in (0..seq).step_by(QUERY_BLOCK) {
        let last = (first + QUERY_BLOCK).min(seq);
        let (queries, keys) = (last - first, last);
        let rows = queries * group;
        let mut q = Vec::with_capacity(blocks * rows * d);
        let mut k_t = Vec::with_capacity(blocks * d * keys);
        let mut v = Vec::with_capacity(blocks * keys * d);
        for block in 0..blocks {
            q.extend_from_slice(&split.queries[(block * seq + first) * group * d..(block * seq + last) * group * d]);
            for feature in split.keys_t[block * d * seq..(block + 1) * d * seq].chunks_exact(seq) {
                k_t.extend_from_slice(&feature[..keys]);
            }
            v.extend_from_slice(&split.values[block * seq * d..(block * seq + keys) * d]);
        }
        let mut probs = matmul(q, [blocks, rows, d], k_t, [blocks, d, keys]);
        causal_softmax(&mut probs, queries, group, keys, first, score, causal);
        let out = matmul(probs, [blocks, rows, keys], v, [blocks, keys, d]);
        // In block (b, g), row (k, r) is query head g * group + r at position first + k.
        for (block, out) in out.chunks_exact(rows * d).enumerate() {
            let (b, g) = (block / kv_heads, block % kv_heads);
            for (k, heads_out) in out.chunks_exact(group * d).enumerate() {
                let at = (b * seq + first + k) * heads * d + g * group * d;
                context[at..at + group * d].copy_from_slice(heads_out);
            }
        }
    }
    context
}

/// Queries, keys and values of the new positions of a cached forward step,
/// split from a fused q/k/v projection with the rotary embedding applied.
pub struct NewHeads {
    /// Queries [batch, new, heads, head_dim].
    pub queries: Vec<f32>,
    /// Keys [batch, kv_heads, new, head_dim].
    pub keys: Vec<f32>,
    /// Values [batch, kv_heads, new, head_dim].
    pub values: Vec<f32>,
}

/// Splits rows of a fused projection `[q, k, v]` ([batch * new, ...]) of new
/// positions into [`NewHeads`], rotating queries and keys with per-row
/// tables `cos` and `sin` ([batch * new, head_dim], Hugging Face's
/// `rotate_half` layout).
pub fn split_new_heads(qkv: &[f32], shape: AttentionShape, cos: &[f32], sin: &[f32]) -> NewHeads {
    let AttentionShape { batch, seq: new, heads, kv_heads, head_dim: d } = shape;
    let width = (heads + 2 * kv_heads) * d;
    let mut queries = vec![0.0f32; batch * new * heads * d];
    let mut keys = vec![0.0f32; batch * kv_heads * new * d];
    let mut values = vec![0.0f32; batch * kv_heads * new * d];
    for (row, x) in qkv.chunks_exact(width).enumerate() {
        let (b, i) = (row / new, row % new);
        let (cos, sin) = (&cos[row * d..(row + 1) * d], &sin[row * d..(row + 1) * d]);
        for h in 0..heads {
            rope_into(&x[h * d..(h + 1) * d], cos, sin, &mut queries[(row * heads + h) * d..(row * heads + h + 1) * d]);
        }
        for g in 0..kv_heads {
            let at = ((b * kv_heads + g) * new + i) * d;
            rope_into(&x[(heads + g) * d..(heads + g + 1) * d], cos, sin, &mut keys[at..at + d]);
            values[at..at + d].copy_from_slice(&x[(heads + kv_heads + g) * d..(heads + kv_heads + g + 1) * d]);
        }
    }
    NewHeads { queries, keys, values }
}

#[inline(always)]
fn attend_one_body(q: &[f32], keys: &[f32], values: &[f32], score: ScoreScale, out: &mut [f32]) {
    let d = q.len();
    let mut scores: Vec<f32> = keys.chunks_exact(d).map(|k| dot(q, k)).collect();
    let visible = scores.len();
    windowed_softmax_row_body(&mut scores, 0, visible, score);
    out.fill(0.0);
    for (&p, v) in scores.iter().zip(values.chunks_exact(d)) {
        for (o, &v) in out.iter_mut().zip(v) {
            *o += p * v;
        }
    }
}

/// Dot product of two equally long slices, in `LANES` interleaved partial sums.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

dispatch! {
    /// Softmax-weighted sum of `values` for one query over `keys` (rows of `q.len()`), into `out`.
    fn attend_one => attend_one_body(q: &[f32], keys: &[f32], values: &[f32], score: ScoreScale, out: &mut [f32])
}

/// Attention of new positions over a key/value cache in host memory:
/// `queries` [batch, new, heads, head_dim] (`shape.seq` = new), `keys` and
/// `values` [batch, kv_heads, capacity, head_dim], and for each (row, new
/// position) the range of key slots it sees; scores become logits by
/// `score`. Returns the context [batch *
/// new, heads * head_dim].
pub fn cached_attention(
    queries: &[f32],
    keys: &[f32],
    values: &[f32],
    capacity: usize,
    shape: AttentionShape,
    visible: &[std::ops::Range<usize>],
    score: ScoreScale,
) -> Vec<f32> {
    let AttentionShape { seq: new, heads, kv_heads, head_dim: d, .. } = shape;
    let group = shape.group();
    let mut context = vec![0.0f32; queries.len()];
    context.par_chunks_mut(d).zip(queries.par_chunks(d)).enumerate().with_min_len(4).for_each(|(index, (out, q))| {
        let (row, h) = (index / heads, index % heads);
        let (b, g) = (row / new, h / group);
        let range = &visible[row];
        let base = (b * kv_heads + g) * capacity;
        let slots = (base + range.start) * d..(base + range.end) * d;
        attend_one(q, &keys[slots.clone()], &values[slots], score, out);
    });
    context
}

/// Zeroes the values of a row-major [rows, cols] matrix whose keep bit is 0;
/// `keep` holds each row's bits packed LSB first in `ceil(cols / 8)` bytes.
/// Each value is kept or zeroed by a lane mask rather than a branch (pruned
/// positions fall at random); large matrices are masked in parallel, while
/// the few rows a product decodes at a time are masked on the calling thread.
pub fn apply_keep_bits(data: &mut [f32], cols: usize, keep: &[u8]) {
    if cols == 0 {
        return;
    }
    let row_bytes = cols.div_ceil(8);
    if data.len() < PARALLEL_MASK_VALUES {
        return mask_rows(data, cols, keep);
    }
    let rows_per_task = PARALLEL_MASK_VALUES / cols + 1;
    data.par_chunks_mut(rows_per_task * cols)
        .zip(keep.par_chunks(rows_per_task * row_bytes))
        .for_each(|(rows, keep)| mask_rows(rows, cols, keep));
}

/// Values from which [`apply_keep_bits`] masks in parallel (the values of one task).
const PARALLEL_MASK_VALUES: usize = 1 << 16;

/// For each keep byte, the masks of its eight lanes: all ones where the bit is set.
static KEEP_LANES: [[u32; 8]; 256] = {
    let mut table = [[0u32; 8]; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut lane = 0;
        while lane < 8 {
            table[byte][lane] = if byte >> lane & 1 == 1 { u32::MAX } else { 0 };
            lane += 1;
        }
        byte += 1;
    }
    table
};

/// [`apply_keep_bits`] on one thread.
fn mask_rows(rows: &mut [f32], cols: usize, keep: &[u8]) {
    let row_bytes = cols.div_ceil(8);
    let mask = |values: &mut [f32], byte: u8| {
        for (value, &lane) in values.iter_mut().zip(&KEEP_LANES[usize::from(byte)]) {
            *value = f32::from_bits(value.to_bits() & lane);
        }
    };
    for (row, bits) in rows.chunks_exact_mut(cols).zip(keep.chunks_exact(row_bytes)) {
        let mut eights = row.chunks_exact_mut(8);
        for (values, &byte) in (&mut eights).zip(bits) {
            mask(values, byte);
        }
        let tail = eights.into_remainder();
        if !tail.is_empty() {
            mask(tail, bits[row_bytes - 1]);
        }
    }
}

/// Most rows for which [`small_matmul`] beats a general matmul: a matmul
/// library packs the whole weight on every call, which costs more than the
/// product itself when the input has only a few rows (one per sequence in
/// incremental decoding).
pub const SMALL_MATMUL_ROWS: usize = 64;

/// Output columns handed to one parallel task by [`small_matmul`].
const COLUMNS_PER_TASK: usize = 32;

/// Banks of partial sums of the few-row products: how [`small_matmul`] and
/// [`crate::encoded::small_matmul_stored`] (every kernel of both, whatever
/// the weight's encoding) add up a dot product. The values are taken
/// `LANES` at a time ("chunks"); chunk `k` goes to bank `k % BANKS`, in
/// which lane `l` sums value `l` of each of its chunks in order (a fused
/// multiply-add where the CPU has FMA, a multiply and an add otherwise).
/// The banks are then added lane by lane (bank 0 plus bank 1), the lanes
/// added in order from zero, and last the values past the last whole chunk.
/// Two banks of eight are one AVX-512 register of sixteen, so the sparse
/// kernel, whose AVX-512 expansions fill such registers, takes two chunks
/// per multiply-add; the others hold a register of eight per bank.
pub const BANKS: usize = 2;

/// Dot products of rows `x[r]` with weight rows `w[c]` (each `inner` long)
/// for a tile of `R` rows and `C` weight rows, into `out[r][c]`, summed in
/// [`BANKS`]' order whatever the tile.
fn dot_tile<const R: usize, const C: usize>(x: [&[f32]; R], w: [&[f32]; C], out: &mut [[f32; C]; R]) {
    #[cfg(target_arch = "x86_64")]
    {
        if wide_registers() {
            // SAFETY: the CPU was just found to support AVX-512F and VL, AVX2 and FMA.
            unsafe { dot_tile_avx512(x, w, out) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU was just found to support AVX2 and FMA.
            unsafe { dot_tile_avx2(x, w, out) };
            return;
        }
    }
    dot_tile_portable(x, w, out);
}

/// [`dot_tile`] without vector instructions or fused multiply-adds.
fn dot_tile_portable<const R: usize, const C: usize>(x: [&[f32]; R], w: [&[f32]; C], out: &mut [[f32; C]; R]) {
    let inner = w[0].len();
    let body = inner - inner % LANES;
    let mut acc = [[[[0.0f32; LANES]; BANKS]; C]; R];
    for (chunk, at) in (0..body).step_by(LANES).enumerate() {
        let bank = chunk % BANKS;
        for r in 0..R {
            for c in 0..C {
                for l in 0..LANES {
                    acc[r][c][bank][l] += x[r][at + l] * w[c][at + l];
                }
            }
        }
    }
    finish_dot_tile(&x, &w, &acc, body, out);
}

/// Whether the CPU has AVX-512 F and VL (with AVX2 and FMA): thirty-two
/// vector registers, which the few-row products use for taller tiles (and
/// the sparse kernel's sixteen lanes for both banks at once).
pub(crate) fn wide_registers() -> bool {
    #[cfg(test)]
    if AVX2_ONLY.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Tests set this to run the AVX2 kernels where AVX-512 is available too
/// (every kernel gives the same bits, so tests running meanwhile are unaffected).
#[cfg(test)]
pub(crate) static AVX2_ONLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Adds up the banks of partial sums of a tile in [`BANKS`]' order, then
/// the tail after `body`.
#[inline(always)]
fn finish_dot_tile<const R: usize, const C: usize>(
    x: &[&[f32]; R],
    w: &[&[f32]; C],
    acc: &[[[[f32; LANES]; BANKS]; C]; R],
    body: usize,
    out: &mut [[f32; C]; R],
) {
    for r in 0..R {
        for c in 0..C {
            let mut total = 0.0f32;
            for l in 0..LANES {
                total += acc[r][c][0][l] + acc[r][c][1][l];
            }
            for i in body..w[c].len() {
                total += x[r][i] * w[c][i];
            }
            out[r][c] = total;
        }
    }
}

/// [`dot_tile`] with AVX2 registers as the partial sums, one per bank.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_tile_avx2<const R: usize, const C: usize>(x: [&[f32]; R], w: [&[f32]; C], out: &mut [[f32; C]; R]) {
    // SAFETY: this function runs only with AVX2 and FMA.
    unsafe { dot_tile_banks(x, w, out) }
}

/// [`dot_tile_avx2`] compiled with AVX-512's 32 registers, for tiles of
/// twice the products (still of eight-lane vectors: the products are
/// memory-bound, and 512-bit instructions would cost the decoding that
/// feeds [`small_matmul_block`] a port).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
unsafe fn dot_tile_avx512<const R: usize, const C: usize>(x: [&[f32]; R], w: [&[f32]; C], out: &mut [[f32; C]; R]) {
    // SAFETY: this function runs only with AVX2 and FMA (and more).
    unsafe { dot_tile_banks(x, w, out) }
}

/// The body of [`dot_tile_avx2`] and [`dot_tile_avx512`], compiled into each.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dot_tile_banks<const R: usize, const C: usize>(x: [&[f32]; R], w: [&[f32]; C], out: &mut [[f32; C]; R]) {
    use std::arch::x86_64::{__m256, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps, _mm256_storeu_ps};
    const { assert!(LANES == 8 && BANKS == 2) };
    let inner = w[0].len();
    let body = inner - inner % LANES;
    // SAFETY (every intrinsic below): the CPU has AVX2 and FMA (the caller's promise).
    let mut acc: [[[__m256; BANKS]; C]; R] = [[[unsafe { _mm256_setzero_ps() }; BANKS]; C]; R];
    let mut at = 0;
    while at < body {
        for bank in 0..BANKS {
            let chunk = at + bank * LANES;
            if chunk >= body {
                break;
            }
            let mut wv: [__m256; C] = [unsafe { _mm256_setzero_ps() }; C];
            for c in 0..C {
                // SAFETY: chunk + LANES <= body <= w[c].len().
                wv[c] = unsafe { _mm256_loadu_ps(w[c].as_ptr().add(chunk)) };
            }
            for r in 0..R {
                // SAFETY: every x[r] is as long as the weight rows.
                let xv = unsafe { _mm256_loadu_ps(x[r].as_ptr().add(chunk)) };
                for c in 0..C {
                    acc[r][c][bank] = unsafe { _mm256_fmadd_ps(xv, wv[c], acc[r][c][bank]) };
                }
            }
        }
        at += BANKS * LANES;
    }
    let mut lanes = [[[[0.0f32; LANES]; BANKS]; C]; R];
    for r in 0..R {
        for c in 0..C {
            for bank in 0..BANKS {
                // SAFETY: lanes[r][c][bank] holds LANES f32.
                unsafe { _mm256_storeu_ps(lanes[r][c][bank].as_mut_ptr(), acc[r][c][bank]) };
            }
        }
    }
    finish_dot_tile(&x, &w, &lanes, body, out);
}

/// [`small_matmul`] of the weight rows in `w` into columns `first..first +
/// w.len() / inner` of `out`, whose rows are `stride` long: tiles of two rows
/// and four weight rows where the CPU has AVX-512's 32 registers, two and two
/// otherwise (sixteen registers hold a bank per product of four; the tiling
/// changes no bit).
pub(crate) fn small_matmul_block(x: &[f32], rows: usize, w: &[f32], out: &mut [f32], stride: usize, first: usize) {
    if wide_registers() {
        small_matmul_tiles::<4>(x, rows, w, out, stride, first)
    } else {
        small_matmul_tiles::<2>(x, rows, w, out, stride, first)
    }
}

/// [`small_matmul_block`] in tiles of up to two rows and `C` weight rows.
fn small_matmul_tiles<const C: usize>(x: &[f32], rows: usize, w: &[f32], out: &mut [f32], stride: usize, first: usize) {
    let inner = x.len() / rows;
    let width = w.len() / inner;
    let x_row = |r: usize| &x[r * inner..(r + 1) * inner];
    let w_rows = |c0: usize| -> [&[f32]; C] { std::array::from_fn(|c| &w[(c0 + c) * inner..(c0 + c + 1) * inner]) };
    let at = |r: usize, c: usize| r * stride + first + c;
    let mut c0 = 0;
    while c0 < width {
        let cols = C.min(width - c0);
        let mut r0 = 0;
        while r0 < rows {
            if cols == C && rows - r0 >= 2 {
                let mut tile = [[0.0f32; C]; 2];
                dot_tile([x_row(r0), x_row(r0 + 1)], w_rows(c0), &mut tile);
                for (r, tile) in tile.iter().enumerate() {
                    out[at(r0 + r, c0)..at(r0 + r, c0 + C)].copy_from_slice(tile);
                }
                r0 += 2;
            } else if cols == C {
                let mut tile = [[0.0f32; C]; 1];
                dot_tile([x_row(r0)], w_rows(c0), &mut tile);
                out[at(r0, c0)..at(r0, c0 + C)].copy_from_slice(&tile[0]);
                r0 += 1;
            } else {
                for c in c0..c0 + cols {
                    let mut tile = [[0.0f32; 1]; 1];
                    dot_tile([x_row(r0)], [&w[c * inner..(c + 1) * inner]], &mut tile);
                    out[at(r0, c)] = tile[0][0];
                }
                r0 += 1;
            }
        }
        c0 += cols;
    }
}

/// `x w^T` for a few rows `x` ([rows, inner]) and a weight `w` ([cols,
/// inner], Hugging Face's layout): dot products read each weight row once,
/// contiguously, for all rows of `x`, without packing; parallel over blocks
/// of weight rows. Each output is summed in the same order whatever `rows`
/// is, so a sequence's results do not depend on what else is in the batch.
pub fn small_matmul(x: &[f32], rows: usize, w: &[f32], cols: usize) -> Vec<f32> {
    let inner = x.len() / rows;
    assert_eq!(w.len(), inner * cols, "small_matmul: the weight is not [{cols}, {inner}]");
    small_matmul_tasks(rows, cols, |first, out| {
        small_matmul_block(x, rows, &w[first * inner..(first + out.len() / rows) * inner], out, out.len() / rows, 0)
    })
}

/// The task loop of [`small_matmul`]: `block(first, out)` writes the
/// products of weight rows `first..first + out.len() / rows` into `out`
/// ([rows, out.len() / rows]).
pub(crate) fn small_matmul_tasks<F>(rows: usize, cols: usize, block: F) -> Vec<f32>
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let blocks: Vec<Vec<f32>> = (0..cols.div_ceil(COLUMNS_PER_TASK))
        .into_par_iter()
        .map(|task| {
            let first = task * COLUMNS_PER_TASK;
            let count = COLUMNS_PER_TASK.min(cols - first);
            let mut out = vec![0.0f32; rows * count];
            block(first, &mut out);
            out
        })
        .collect();
    let mut out = vec![0.0f32; rows * cols];
    for (task, values) in blocks.iter().enumerate() {
        let first = task * COLUMNS_PER_TASK;
        let width = values.len() / rows;
        for (r, values) in values.chunks_exact(width).enumerate() {
            out[r * cols + first..r * cols + first + width].copy_from_slice(values);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_bits_zero_exactly_the_pruned_values_of_ragged_rows() {
        // 37 columns (not a multiple of 8) with enough rows for several
        // parallel tasks, and a few rows masked on the calling thread.
        let mut state = 7u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        for (rows, cols) in [(4000usize, 37usize), (3, 37), (5, 64), (2, 5)] {
            let row_bytes = cols.div_ceil(8);
            let specials = [-0.0f32, f32::NAN, f32::INFINITY, 1.5];
            let data: Vec<f32> = (0..rows * cols).map(|i| if i % 11 == 0 { specials[i / 11 % 4] } else { next() as f32 - 2e9 }).collect();
            let keep: Vec<u8> = (0..rows * row_bytes).map(|_| next() as u8).collect();
            let mut masked = data.clone();
            apply_keep_bits(&mut masked, cols, &keep);
            for (i, (&before, &after)) in data.iter().zip(&masked).enumerate() {
                let (row, col) = (i / cols, i % cols);
                let kept = keep[row * row_bytes + col / 8] >> (col % 8) & 1 == 1;
                let expected = if kept { before } else { 0.0 };
                assert_eq!(after.to_bits(), expected.to_bits(), "[{rows}, {cols}] row {row} col {col}");
            }
        }
    }

    #[test]
    fn exp_is_within_two_ulp_of_std() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (f64::from(exp(x)), f64::from(x).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_3;
        }
        assert!(worst < 2.5e-7, "max relative error {worst}");
        assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn causal_softmax_matches_a_direct_computation() {
        // seq 3, two query heads per kv head: rows (i, r) = (0,0) (0,1) (1,0) (1,1) (2,0) (2,1).
        let mut rng = crate::rng::Rng::new(9);
        let scores: Vec<f32> = (0..18).map(|_| rng.next_f32() * 4.0).collect();
        let mut got = scores.clone();
        causal_softmax(&mut got, 3, 2, 3, 0, ScoreScale::plain(0.5), Causal { window: None });
        for (row, (got, x)) in got.chunks(3).zip(scores.chunks(3)).enumerate() {
            let visible = row / 2 + 1;
            let e: Vec<f64> = x[..visible].iter().map(|&v| (f64::from(v) * 0.5).exp()).collect();
            let total: f64 = e.iter().sum();
            for j in 0..3 {
                let want = if j < visible { e[j] / total } else { 0.0 };
                assert!((f64::from(got[j]) - want).abs() < 1e-6, "row {row}: {got:?}");
            }
        }
    }

    #[test]
    fn windowed_soft_capped_softmax_matches_a_direct_computation() {
        // seq 5, one query head per kv head, window 2, scale 0.5, cap 1.5.
        let mut rng = crate::rng::Rng::new(4);
        let scores: Vec<f32> = (0..25).map(|_| rng.next_f32() * 8.0 - 4.0).collect();
        let mut got = scores.clone();
        let score = ScoreScale { scale: 0.5, softcap: Some(1.5) };
        causal_softmax(&mut got, 5, 1, 5, 0, score, Causal { window: Some(2) });
        for (i, (got, x)) in got.chunks(5).zip(scores.chunks(5)).enumerate() {
            let first = i.saturating_sub(1);
            let logit = |v: f32| (f64::from(v) * 0.5 / 1.5).tanh() * 1.5;
            let total: f64 = x[first..=i].iter().map(|&v| logit(v).exp()).sum();
            for j in 0..5 {
                let want = if (first..=i).contains(&j) { logit(x[j]).exp() / total } else { 0.0 };
                assert!((f64::from(got[j]) - want).abs() < 1e-6, "row {i}: {got:?}");
            }
        }
    }

    #[test]
    fn head_norms_normalise_each_head_of_the_chosen_span_only() {
        // Rows of [q head 0, q head 1, k head, v head], heads of width 2.
        let mut rows = vec![3.0f32, 4.0, 1.0, 0.0, 6.0, 8.0, 5.0, 5.0];
        rms_norm_heads(&mut rows, 8, 0, 2, &[1.0, 2.0], 0.0);
        rms_norm_heads(&mut rows, 8, 4, 1, &[1.0, 1.0], 0.0);
        // rms(3, 4) = sqrt(12.5), rms(1, 0) = sqrt(0.5), rms(6, 8) = sqrt(50); the v head is left alone.
        let want = [3.0 / 12.5f32.sqrt(), 8.0 / 12.5f32.sqrt(), 2.0f32.sqrt(), 0.0, 6.0 / 50f32.sqrt(), 8.0 / 50f32.sqrt(), 5.0, 5.0];
        for (got, want) in rows.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{rows:?}");
        }
    }

    /// Row-major batched matmul [batch, m, k] x [batch, k, n].
    fn naive_matmul(a: Vec<f32>, [batch, m, k]: [usize; 3], b: Vec<f32>, [_, _, n]: [usize; 3]) -> Vec<f32> {
        let mut out = vec![0.0f32; batch * m * n];
        for t in 0..batch {
            for i in 0..m {
                for j in 0..n {
                    out[(t * m + i) * n + j] = (0..k).map(|l| a[(t * m + i) * k + l] * b[(t * k + l) * n + j]).sum();
                }
            }
        }
        out
    }

    #[test]
    fn causal_attention_matches_a_direct_computation() {
        // Two sequences longer than a query block, 4 query heads on 2 kv heads.
        let shape = AttentionShape { batch: 2, seq: QUERY_BLOCK + 5, heads: 4, kv_heads: 2, head_dim: 4 };
        let (s, d, width) = (shape.seq, shape.head_dim, (shape.heads + 2 * shape.kv_heads) * shape.head_dim);
        let mut rng = crate::rng::Rng::new(3);
        let qkv: Vec<f32> = (0..shape.batch * s * width).map(|_| rng.next_f32()).collect();
        let (cos, sin): (Vec<f32>, Vec<f32>) = (0..s * d).map(|i| ((i as f32 * 0.1).cos(), (i as f32 * 0.1).sin())).unzip();
        let split = split_heads(&qkv, shape, &cos, &sin);
        let got = causal_attention(&split, shape, ScoreScale::plain(0.5), Causal { window: None }, naive_matmul);
        let rope = |x: &[f32], i: usize| -> Vec<f64> {
            (0..d)
                .map(|e| {
                    let rot = if e < d / 2 { -x[e + d / 2] } else { x[e - d / 2] };
                    f64::from(x[e]) * f64::from(cos[i * d + e]) + f64::from(rot) * f64::from(sin[i * d + e])
                })
                .collect()
        };
        for b in 0..shape.batch {
            for h in 0..shape.heads {
                let g = h / shape.group();
                let row = |i: usize| &qkv[(b * s + i) * width..(b * s + i + 1) * width];
                for i in 0..s {
                    let q = rope(&row(i)[h * d..(h + 1) * d], i);
                    let weights: Vec<f64> = (0..=i)
                        .map(|j| {
                            let k = rope(&row(j)[(shape.heads + g) * d..(shape.heads + g + 1) * d], j);
                            (q.iter().zip(&k).map(|(a, b)| a * b).sum::<f64>() * 0.5).exp()
                        })
                        .collect();
                    let total: f64 = weights.iter().sum();
                    for e in 0..d {
                        let v = (shape.heads + shape.kv_heads + g) * d + e;
                        let want: f64 = (0..=i).map(|j| weights[j] / total * f64::from(row(j)[v])).sum();
                        let have = f64::from(got[(b * s + i) * shape.heads * d + h * d + e]);
                        assert!((have - want).abs() < 1e-5, "sequence {b}, head {h}, position {i}: {have} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn small_matmul_matches_a_direct_computation_and_ignores_the_batch() {
        // Weight rows not a multiple of a task's block or a tile, an inner
        // size with a tail; one and several rows of input.
        let (inner, cols) = (37, 2 * COLUMNS_PER_TASK + 7);
        let mut rng = crate::rng::Rng::new(5);
        let w: Vec<f32> = (0..cols * inner).map(|_| rng.next_f32() - 0.5).collect();
        let x: Vec<f32> = (0..SMALL_MATMUL_ROWS * inner).map(|_| rng.next_f32() - 0.5).collect();
        let all = small_matmul(&x, SMALL_MATMUL_ROWS, &w, cols);
        for r in 0..SMALL_MATMUL_ROWS {
            let alone = small_matmul(&x[r * inner..(r + 1) * inner], 1, &w, cols);
            assert_eq!(alone, all[r * cols..(r + 1) * cols], "row {r} alone differs from row {r} in the batch");
            for c in 0..cols {
                let want: f64 = (0..inner).map(|i| f64::from(x[r * inner + i]) * f64::from(w[c * inner + i])).sum();
                let have = f64::from(all[r * cols + c]);
                assert!((have - want).abs() < 1e-5, "({r}, {c}): {have} vs {want}");
            }
        }
        let three = small_matmul(&x[..3 * inner], 3, &w, cols);
        assert_eq!(three, all[..3 * cols]);
    }

    /// A dot product summed as [`BANKS`] documents, with `banks` banks
    /// (fused multiply-adds where `fused`), from the definition.
    fn dot_in_banks(x: &[f32], w: &[f32], banks: usize, fused: bool) -> f32 {
        let body = x.len() - x.len() % LANES;
        let mut acc = vec![[0.0f32; LANES]; banks];
        for (chunk, at) in (0..body).step_by(LANES).enumerate() {
            for l in 0..LANES {
                let a = &mut acc[chunk % banks][l];
                *a = if fused { x[at + l].mul_add(w[at + l], *a) } else { *a + x[at + l] * w[at + l] };
            }
        }
        let mut total = 0.0f32;
        for l in 0..LANES {
            total += acc.iter().skip(1).fold(acc[0][l], |sum, bank| sum + bank[l]);
        }
        for i in body..x.len() {
            total += x[i] * w[i];
        }
        total
    }

    #[test]
    fn few_row_products_are_summed_in_two_banks_bit_for_bit() {
        // Lengths with no whole chunk, an odd and an even number of chunks,
        // with and without a tail; values of mixed sign and magnitude so that
        // the order of the additions shows in the last bits.
        let mut rng = crate::rng::Rng::new(11);
        let mut order_matters = false;
        for inner in [5usize, 8, 16, 24, 37, 40, 64, 83, 4096] {
            let cols = 9;
            let w: Vec<f32> = (0..cols * inner).map(|_| (rng.next_f32() - 0.5) * 2f32.powi((rng.next_f32() * 12.0) as i32)).collect();
            for rows in [1usize, 2, 3] {
                let x: Vec<f32> = (0..rows * inner).map(|_| rng.next_f32() - 0.5).collect();
                #[cfg(target_arch = "x86_64")]
                let fused = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
                #[cfg(not(target_arch = "x86_64"))]
                let fused = false;
                for avx2_only in [false, true] {
                    AVX2_ONLY.store(avx2_only, std::sync::atomic::Ordering::Relaxed);
                    let got = small_matmul(&x, rows, &w, cols);
                    for r in 0..rows {
                        for c in 0..cols {
                            let (xr, wc) = (&x[r * inner..(r + 1) * inner], &w[c * inner..(c + 1) * inner]);
                            let want = dot_in_banks(xr, wc, BANKS, fused);
                            assert_eq!(
                                got[r * cols + c].to_bits(),
                                want.to_bits(),
                                "inner {inner}, row {r}, col {c}, AVX2 only: {avx2_only}"
                            );
                            order_matters |= dot_in_banks(xr, wc, 1, fused).to_bits() != want.to_bits();
                        }
                    }
                }
                AVX2_ONLY.store(false, std::sync::atomic::Ordering::Relaxed);
                // The portable kernel, which the CPUs without AVX2 and FMA run.
                for r in 0..rows {
                    let mut tile = [[0.0f32; 1]; 1];
                    dot_tile_portable([&x[r * inner..(r + 1) * inner]], [&w[..inner]], &mut tile);
                    assert_eq!(
                        tile[0][0].to_bits(),
                        dot_in_banks(&x[r * inner..(r + 1) * inner], &w[..inner], BANKS, false).to_bits(),
                        "portable, inner {inner}"
                    );
                }
            }
        }
        assert!(order_matters, "no product told two banks from one: the test could not see a wrong order");
    }

    #[test]
    fn silu_mul_gates_the_up_half() {
        let gate_up = [1.0f32, -2.0, 0.5, 3.0, 0.0, 30.0, -30.0, 1.0];
        let out = silu_mul(&gate_up, 2);
        let silu = |x: f64| x / (1.0 + (-x).exp());
        let want = [silu(1.0) * 0.5, silu(-2.0) * 3.0, silu(0.0) * -30.0, silu(30.0) * 1.0];
        for (g, w) in out.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-6 * w.abs().max(1.0), "{out:?} vs {want:?}");
        }
    }

    #[test]
    fn add_rms_norm_adds_then_normalises() {
        let mut x = vec![1.0f32, 2.0, 0.0, 0.0];
        let mut o = vec![2.0f32, 2.0, 1.0, 0.0];
        add_rms_norm(&mut x, &mut o, &[1.0, 2.0], 0.0);
        assert_eq!(x, vec![3.0, 4.0, 1.0, 0.0]);
        // rms of (3, 4) is sqrt(12.5); of (1, 0) sqrt(0.5).
        let want = [3.0 / 12.5f32.sqrt(), 8.0 / 12.5f32.sqrt(), 2.0f32.sqrt(), 0.0];
        for (got, want) in o.iter().zip(want).chain(rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0).iter().zip(want)) {
            assert!((got - want).abs() < 1e-6, "{o:?}");
        }
    }
}
