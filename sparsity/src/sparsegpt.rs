//! SparseGPT (Frantar and Alistarh, 2023): prune a linear layer and update
//! its remaining weights to compensate, from the Hessian of the layer's
//! reconstruction error, `H = 2 XᵀX` over the calibration inputs `X`.
//!
//! This follows the authors' `SparseGPT.fasterprune` (IST-DASLab/sparsegpt,
//! `sparsegpt.py`) step for step, in f64: dead inputs (a zero diagonal) get
//! a unit diagonal and zero weights; the diagonal is dampened by `percdamp`
//! times its mean; the upper Cholesky factor of `H⁻¹` drives column blocks
//! of optimal-brain-surgeon updates. Unstructured masks are chosen per block
//! of columns over all rows (the lowest `w² / [H⁻¹]ⱼⱼ²` of the block, as the
//! reference does), N:M masks per group of M columns, each from the weights
//! as updated so far.

use rayon::prelude::*;

use crate::{Pattern, SparsityError};

/// SparseGPT's default block of columns pruned and updated together.
pub const DEFAULT_BLOCKSIZE: usize = 128;
/// SparseGPT's default dampening, as a fraction of the Hessian's mean diagonal.
pub const DEFAULT_PERCDAMP: f64 = 0.01;

/// The Hessian `2 XᵀX / n` of one linear layer's inputs, accumulated in f64
/// batch by batch as the reference's `add_batch` does (`n` counts sequences).
#[derive(Debug, Clone, PartialEq)]
pub struct Hessian {
    /// Row-major [cols, cols].
    values: Vec<f64>,
    cols: usize,
    sequences: usize,
}

impl Hessian {
    /// An empty Hessian over `cols` inputs.
    pub fn new(cols: usize) -> Self {
        Hessian { values: vec![0.0; cols * cols], cols, sequences: 0 }
    }

    /// Adds the inputs of `sequences` sequences, `x` holding their tokens'
    /// rows ([tokens, cols], f32 as the layer saw them).
    pub fn add_batch(&mut self, x: &[f32], sequences: usize) -> Result<(), SparsityError> {
        let cols = self.cols;
        if cols == 0 || x.len() % cols != 0 {
            return Err(SparsityError::Shape { what: "Hessian inputs".into(), expected: cols, found: x.len() });
        }
        let before = self.sequences as f64;
        self.sequences += sequences;
        let after = self.sequences as f64;
        let keep = before / after;
        let scale = 2.0 / after;
        for v in &mut self.values {
            *v *= keep;
        }
        // H += (√(2/n) x)ᵀ (√(2/n) x), as the reference scales the inputs first.
        let root = scale.sqrt();
        let scaled: Vec<f64> = x.iter().map(|&v| root * f64::from(v)).collect();
        for token in scaled.chunks_exact(cols) {
            for (i, &a) in token.iter().enumerate() {
                if a == 0.0 {
                    continue;
                }
                let row = &mut self.values[i * cols..(i + 1) * cols];
                for (h, &b) in row.iter_mut().zip(token) {
                    *h += a * b;
                }
            }
        }
        Ok(())
    }

    /// The accumulated matrix, row-major [cols, cols].
    pub fn values(&self) -> &[f64] {
        &self.values
    }

    /// Inputs (rows and columns of the matrix).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Sequences accumulated.
    pub fn sequences(&self) -> usize {
        self.sequences
    }

    /// The Hessian `2/n Σₛ XₛᵀXₛ` of `sequences` sequences from the sum of
    /// their Gram matrices `XₛᵀXₛ` ([cols, cols], row-major): what
    /// [`Hessian::add_batch`] gives in exact arithmetic, from products
    /// computed by a fast kernel sequence by sequence.
    pub fn from_gram_sum(mut gram_sum: Vec<f64>, cols: usize, sequences: usize) -> Result<Self, SparsityError> {
        if gram_sum.len() != cols * cols {
            return Err(SparsityError::Shape { what: "Gram matrix".into(), expected: cols * cols, found: gram_sum.len() });
        }
        let scale = 2.0 / sequences.max(1) as f64;
        gram_sum.iter_mut().for_each(|v| *v *= scale);
        Ok(Hessian { values: gram_sum, cols, sequences })
    }

    /// A Hessian from its matrix and sequence count (as read back from an artifact).
    pub fn from_values(values: Vec<f64>, cols: usize, sequences: usize) -> Result<Self, SparsityError> {
        if values.len() != cols * cols {
            return Err(SparsityError::Shape { what: "Hessian".into(), expected: cols * cols, found: values.len() });
        }
        Ok(Hessian { values, cols, sequences })
    }
}

/// How SparseGPT prunes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SparseGptOptions {
    /// Which weights are pruned: a fraction per column block, or N of every M inputs of a row.
    pub pattern: Pattern,
    /// Columns pruned and updated together (the lazy-batch width).
    pub blocksize: usize,
    /// Dampening of the diagonal, as a fraction of its mean.
    pub percdamp: f64,
}

impl SparseGptOptions {
    /// The reference's defaults (blocks of 128, 1% dampening) for `pattern`.
    pub fn new(pattern: Pattern) -> Self {
        SparseGptOptions { pattern, blocksize: DEFAULT_BLOCKSIZE, percdamp: DEFAULT_PERCDAMP }
    }
}

/// A pruned and updated weight.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseGptResult {
    /// The weight after pruning and compensation, row-major [rows, cols] (pruned weights are 0).
    pub weight: Vec<f64>,
    /// Which weights are kept, row-major.
    pub keep: Vec<bool>,
    /// The reference's loss estimate: Σ (w - q)² / [H⁻¹]ⱼⱼ² / 2 over every weight.
    pub loss: f64,
}

/// Errors of SparseGPT beyond bad shapes.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SparseGptError {
    /// Shapes or pattern parameters that do not fit.
    #[error(transparent)]
    Shape(#[from] SparsityError),
    /// The dampened Hessian is not positive definite (too few or degenerate inputs).
    #[error("the dampened Hessian is not positive definite (pivot {pivot} is {value}): calibrate with more data or a larger percdamp")]
    NotPositiveDefinite {
        /// The failing pivot.
        pivot: usize,
        /// Its value.
        value: f64,
    },
}

/// [`sparsegpt_prepared`] on an f32 weight, as the stages run it: computed
/// in f64, the updated weight rounded to f32 (what later layers see and
/// what a pruned model holds) and the keep mask.
pub fn sparsegpt_f32(
    weight: &[f32],
    rows: usize,
    cols: usize,
    prepared: &PreparedHessian,
    options: &SparseGptOptions,
) -> Result<(Vec<f32>, Vec<bool>), SparseGptError> {
    let values: Vec<f64> = weight.iter().map(|&v| f64::from(v)).collect();
    let result = sparsegpt_prepared(&values, rows, cols, prepared, options)?;
    Ok((result.weight.iter().map(|&v| v as f32).collect(), result.keep))
}

/// The rows of a pruned and updated `[rows, cols]` weight as a mask artifact
/// stores them: each row's keep flags packed (as [`crate::pack_bits`]) and
/// the updated values of its kept weights, in column order.
pub fn kept_rows<'a>(keep: &'a [bool], updated: &'a [f32], cols: usize) -> impl Iterator<Item = (Vec<u8>, Vec<f32>)> + 'a {
    keep.chunks_exact(cols.max(1)).zip(updated.chunks_exact(cols.max(1))).map(|(bits, values)| {
        let kept = bits.iter().zip(values).filter(|(k, _)| **k).map(|(_, v)| *v).collect();
        (crate::pack_bits(bits), kept)
    })
}

/// What SparseGPT derives from a Hessian alone, shared by every module that
/// reads the same input (q, k and v; gate and up): the upper Cholesky factor
/// of the dampened inverse, and the dead inputs (zero diagonal) whose
/// weights are zeroed.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedHessian {
    /// Row-major [cols, cols] upper factor `U` of `(H + λI)⁻¹ = UᵀU`.
    hinv: Vec<f64>,
    /// Inputs never seen nonzero.
    dead: Vec<bool>,
    cols: usize,
}

impl PreparedHessian {
    /// Dampens `hessian` by `percdamp` times its mean diagonal (dead inputs
    /// given a unit diagonal first) and factors its inverse.
    pub fn new(hessian: &Hessian, percdamp: f64) -> Result<Self, SparseGptError> {
        let cols = hessian.cols;
        let mut h = hessian.values.clone();
        let mut dead = vec![false; cols];
        for j in 0..cols {
            if h[j * cols + j] == 0.0 {
                h[j * cols + j] = 1.0;
                dead[j] = true;
            }
        }
        let mean_diagonal = (0..cols).map(|j| h[j * cols + j]).sum::<f64>() / cols as f64;
        let damp = percdamp * mean_diagonal;
        for j in 0..cols {
            h[j * cols + j] += damp;
        }
        Ok(PreparedHessian { hinv: upper_cholesky_of_inverse(&h, cols)?, dead, cols })
    }
}

/// Prunes `weight` ([rows, cols], row-major) with SparseGPT given its inputs' Hessian.
pub fn sparsegpt(
    weight: &[f64],
    rows: usize,
    cols: usize,
    hessian: &Hessian,
    options: &SparseGptOptions,
) -> Result<SparseGptResult, SparseGptError> {
    if hessian.cols != cols {
        return Err(SparsityError::Shape { what: "Hessian columns".into(), expected: cols, found: hessian.cols }.into());
    }
    sparsegpt_prepared(weight, rows, cols, &PreparedHessian::new(hessian, options.percdamp)?, options)
}

/// [`sparsegpt`] from a Hessian already prepared with `options.percdamp`.
pub fn sparsegpt_prepared(
    weight: &[f64],
    rows: usize,
    cols: usize,
    prepared: &PreparedHessian,
    options: &SparseGptOptions,
) -> Result<SparseGptResult, SparseGptError> {
    if weight.len() != rows * cols {
        return Err(SparsityError::Shape { what: "weight".into(), expected: rows * cols, found: weight.len() }.into());
    }
    if prepared.cols != cols {
        return Err(SparsityError::Shape { what: "Hessian columns".into(), expected: cols, found: prepared.cols }.into());
    }
    if let Pattern::NM { n, m } = options.pattern {
        if cols % m != 0 {
            return Err(SparsityError::Divisibility { n, m, cols }.into());
        }
    }
    let blocksize = options.blocksize.max(1);
    let mut w = weight.to_vec();
    for (j, _) in prepared.dead.iter().enumerate().filter(|(_, d)| **d) {
        for r in 0..rows {
            w[r * cols + j] = 0.0;
        }
    }
    let hinv = &prepared.hinv;

    let mut pruned = vec![false; rows * cols];
    let mut loss = 0.0;
    for i1 in (0..cols).step_by(blocksize) {
        let i2 = (i1 + blocksize).min(cols);
        let count = i2 - i1;
        let hinv_at = |i: usize, j: usize| hinv[i * cols + j];
        let scaled = |wrow: &[f64], j: usize| {
            let d = hinv_at(j, j);
            wrow[j] * wrow[j] / (d * d)
        };
        // Unstructured: tmp = W1² / diag(Hinv1)² over the whole block, its
        // threshold the sorted value at ⌊numel · sparsity⌋.
        let threshold = match options.pattern {
            Pattern::Unstructured { sparsity } => {
                let mut tmp: Vec<f64> = w.chunks_exact(cols).flat_map(|wrow| (i1..i2).map(move |j| scaled(wrow, j))).collect();
                let at = ((tmp.len() as f64) * sparsity) as usize;
                // The value a full sort would put at `at`.
                Some(*tmp.select_nth_unstable_by(at, f64::total_cmp).1)
            }
            Pattern::NM { .. } => None,
        };
        // Every row on its own from here: the block's columns one by one,
        // each pruned column's error spread over the block's later columns,
        // then W[r, i2:] -= Err1[r] · Hinv[i1:i2, i2:]. Rows run in parallel;
        // the losses are added in row order.
        let losses: Vec<f64> = w
            .par_chunks_mut(cols)
            .zip(pruned.par_chunks_mut(cols))
            .map(|(wrow, prow)| {
                if let Some(threshold) = threshold {
                    for j in i1..i2 {
                        prow[j] = scaled(wrow, j) <= threshold;
                    }
                }
                let mut errors = vec![0.0f64; count];
                let mut row_loss = 0.0;
                for i in 0..count {
                    let col = i1 + i;
                    let d = hinv_at(col, col);
                    if let Pattern::NM { n, m } = options.pattern {
                        if i % m == 0 {
                            let mut group: Vec<(f64, usize)> = (col..col + m).map(|j| (scaled(wrow, j), j)).collect();
                            group.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                            for &(_, j) in &group[..n] {
                                prow[j] = true;
                            }
                        }
                    }
                    let value = wrow[col];
                    let q = if prow[col] { 0.0 } else { value };
                    row_loss += (value - q) * (value - q) / (d * d) / 2.0;
                    let err = (value - q) / d;
                    errors[i] = err;
                    wrow[col] = q;
                    if err != 0.0 {
                        axpy(&mut wrow[col + 1..i2], err, &hinv[col * cols + col + 1..col * cols + i2]);
                    }
                }
                for (i, &err) in errors.iter().enumerate() {
                    if err == 0.0 {
                        continue;
                    }
                    axpy(&mut wrow[i2..], err, &hinv[(i1 + i) * cols + i2..(i1 + i + 1) * cols]);
                }
                row_loss
            })
            .collect();
        loss += losses.iter().sum::<f64>();
    }
    let keep = pruned.iter().map(|&p| !p).collect();
    Ok(SparseGptResult { weight: w, keep, loss })
}

/// The upper Cholesky factor `U` of `A⁻¹` (`A⁻¹ = UᵀU`) for a symmetric
/// positive definite `a` ([n, n], row-major), what the reference gets from
/// `torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(A)),
/// upper=True)`, with one factorization instead of two and no inverse: with
/// `P` the order reversal, `PAP = LLᵀ` gives `A = VVᵀ` for the upper
/// `V = PLP`, so `A⁻¹ = V⁻ᵀV⁻¹` and `V⁻¹ = PL⁻¹P` is upper with a positive
/// diagonal: the (unique) factor. Both steps run on every core; each value
/// is the same whatever the number of threads.
fn upper_cholesky_of_inverse(a: &[f64], n: usize) -> Result<Vec<f64>, SparseGptError> {
    let mut reversed = vec![0.0f64; n * n];
    for (i, row) in reversed.chunks_exact_mut(n.max(1)).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = a[(n - 1 - i) * n + (n - 1 - j)];
        }
    }
    let l = lower_cholesky(&reversed, n).map_err(|e| match e {
        SparseGptError::NotPositiveDefinite { pivot, value } => SparseGptError::NotPositiveDefinite { pivot: n - 1 - pivot, value },
        other => other,
    })?;
    // Column j of L⁻¹ by forward substitution (xⱼ = 1/Lⱼⱼ, xᵢ = -Σₖ Lᵢₖxₖ / Lᵢᵢ
    // over j ≤ k < i), stored as row j of `columns`. The columns are
    // independent; a task takes COLUMN_GROUP of them, so that each row of L
    // it reads from memory serves all of them.
    let mut columns = vec![0.0f64; n * n];
    columns.par_chunks_mut((n * COLUMN_GROUP).max(1)).enumerate().for_each(|(g, group)| {
        let j0 = g * COLUMN_GROUP;
        for (c, x) in group.chunks_exact_mut(n).enumerate() {
            x[j0 + c] = 1.0 / l[(j0 + c) * n + j0 + c];
        }
        for i in j0 + 1..n {
            let row = &l[i * n..i * n + i];
            for (c, x) in group.chunks_exact_mut(n).enumerate() {
                let j = j0 + c;
                if j < i {
                    x[i] = -dot(&row[j..i], &x[j..i]) / l[i * n + i];
                }
            }
        }
    });
    // U = P L⁻¹ P: Uᵢⱼ = (L⁻¹)₍ₙ₋₁₋ᵢ₎₍ₙ₋₁₋ⱼ₎, the column n-1-j's entry n-1-i.
    let mut upper = vec![0.0f64; n * n];
    for (i, row) in upper.chunks_exact_mut(n.max(1)).enumerate() {
        for (j, v) in row.iter_mut().enumerate().skip(i) {
            *v = columns[(n - 1 - j) * n + (n - 1 - i)];
        }
    }
    Ok(upper)
}

/// `Σ aₖ bₖ` in 32 interleaved partial sums added pairwise at the end: a
/// fixed order (so results are reproducible), and one the compiler turns
/// into vector instructions, unlike a single chain of additions.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    match wide_vectors() {
        // SAFETY: the CPU has the features the function is compiled for.
        #[cfg(target_arch = "x86_64")]
        Wide::Avx512 => unsafe { dot_avx512(a, b) },
        #[cfg(target_arch = "x86_64")]
        Wide::Avx2 => unsafe { dot_avx2(a, b) },
        Wide::Baseline => dot_lanes(a, b),
    }
}

/// `w -= c · h`, element by element.
fn axpy(w: &mut [f64], c: f64, h: &[f64]) {
    match wide_vectors() {
        // SAFETY: the CPU has the features the function is compiled for.
        #[cfg(target_arch = "x86_64")]
        Wide::Avx512 => unsafe { axpy_avx512(w, c, h) },
        #[cfg(target_arch = "x86_64")]
        Wide::Avx2 => unsafe { axpy_avx2(w, c, h) },
        Wide::Baseline => axpy_lanes(w, c, h),
    }
}

/// The widest vectors this CPU has for [`dot`] and [`axpy`]. Every width
/// runs the same unfused multiplications and additions in the same order,
/// so the results are the same bits on every x86-64 processor.
#[derive(Clone, Copy)]
enum Wide {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Baseline,
}

fn wide_vectors() -> Wide {
    #[cfg(target_arch = "x86_64")]
    {
        static WIDE: std::sync::OnceLock<Wide> = std::sync::OnceLock::new();
        *WIDE.get_or_init(|| {
            if is_x86_feature_detected!("avx512f") {
                Wide::Avx512
            } else if is_x86_feature_detected!("avx2") {
                Wide::Avx2
            } else {
                Wide::Baseline
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    Wide::Baseline
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dot_avx512(a: &[f64], b: &[f64]) -> f64 {
    dot_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_avx2(a: &[f64], b: &[f64]) -> f64 {
    dot_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn axpy_avx512(w: &mut [f64], c: f64, h: &[f64]) {
    axpy_lanes(w, c, h)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn axpy_avx2(w: &mut [f64], c: f64, h: &[f64]) {
    axpy_lanes(w, c, h)
}

#[inline(always)]
fn dot_lanes(a: &[f64], b: &[f64]) -> f64 {
    // 32 partial sums: four independent chains of eight lanes, so the
    // additions' latency does not bound the speed.
    let mut lanes = [0.0f64; 32];
    let (a32, b32) = (a.chunks_exact(32), b.chunks_exact(32));
    let (ra, rb) = (a32.remainder(), b32.remainder());
    for (x, y) in a32.zip(b32) {
        for l in 0..32 {
            lanes[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ra.iter().zip(rb).enumerate() {
        lanes[l] += x * y;
    }
    let mut width = 16;
    while width > 0 {
        for l in 0..width {
            lanes[l] += lanes[l + width];
        }
        width /= 2;
    }
    lanes[0]
}

#[inline(always)]
fn axpy_lanes(w: &mut [f64], c: f64, h: &[f64]) {
    for (wv, &hv) in w.iter_mut().zip(h) {
        *wv -= c * hv;
    }
}

/// The lower Cholesky factor `L` of a symmetric positive definite `a`
/// (`A = LLᵀ`): `Lⱼⱼ = √(Aⱼⱼ - Lⱼ·Lⱼ)` and `Lᵢⱼ = (Aᵢⱼ - Lᵢ·Lⱼ) / Lⱼⱼ`, the
/// dot products over the first j entries of rows i and j.
fn lower_cholesky(a: &[f64], n: usize) -> Result<Vec<f64>, SparseGptError> {
    let mut l = vec![0.0f64; n * n];
    // Panels of COLUMN_GROUP columns: the panel's own rows first, one by one;
    // then every later row, in parallel, takes the panel's columns in order,
    // reading its own row once for all of them.
    for j0 in (0..n).step_by(COLUMN_GROUP) {
        let j1 = (j0 + COLUMN_GROUP).min(n);
        for j in j0..j1 {
            let (head, tail) = l.split_at_mut(j * n);
            let row_j = &mut tail[..n];
            for k in j0..j {
                row_j[k] = (a[j * n + k] - dot(&row_j[..k], &head[k * n..k * n + k])) / head[k * n + k];
            }
            let s = a[j * n + j] - dot(&row_j[..j], &row_j[..j]);
            if s <= 0.0 || !s.is_finite() {
                return Err(SparseGptError::NotPositiveDefinite { pivot: j, value: s });
            }
            row_j[j] = s.sqrt();
        }
        let (head, tail) = l.split_at_mut(j1 * n);
        let panel = &head[j0 * n..];
        tail.par_chunks_mut(n).enumerate().for_each(|(k, row_i)| {
            let i = j1 + k;
            for j in j0..j1 {
                let row_j = &panel[(j - j0) * n..(j - j0) * n + j + 1];
                row_i[j] = (a[i * n + j] - dot(&row_i[..j], &row_j[..j])) / row_j[j];
            }
        });
    }
    Ok(l)
}

/// Columns a task of the factorization and of the inverse handles together.
const COLUMN_GROUP: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
        let mut c = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                c[i * n + j] = (0..n).map(|k| a[i * n + k] * b[k * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn wide_vectors_give_the_bits_of_the_baseline_lanes() {
        // Odd lengths exercise the remainders; values of mixed magnitude make
        // any change of summation order visible in the last bits.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        };
        for len in [0, 1, 7, 8, 9, 63, 64, 65, 1000, 1537] {
            let a: Vec<f64> = (0..len).map(|i| next() * 10f64.powi((i % 7) as i32 - 3)).collect();
            let b: Vec<f64> = (0..len).map(|_| next()).collect();
            assert_eq!(dot(&a, &b).to_bits(), dot_lanes(&a, &b).to_bits(), "dot of {len}");
            let (mut wide, mut base) = (a.clone(), a.clone());
            axpy(&mut wide, 0.3, &b);
            axpy_lanes(&mut base, 0.3, &b);
            assert!(wide.iter().zip(&base).all(|(x, y)| x.to_bits() == y.to_bits()), "axpy of {len}");
        }
    }

    #[test]
    fn the_upper_factor_of_the_inverse_multiplies_back_to_the_inverse() {
        // A = [[4, 2, 0], [2, 5, 1], [0, 1, 3]]: UᵀU · A = I.
        let a = [4.0, 2.0, 0.0, 2.0, 5.0, 1.0, 0.0, 1.0, 3.0];
        let u = upper_cholesky_of_inverse(&a, 3).unwrap();
        for i in 0..3 {
            for j in 0..i {
                assert_eq!(u[i * 3 + j], 0.0, "U is upper triangular");
            }
        }
        let mut ut = vec![0.0; 9];
        for i in 0..3 {
            for j in 0..3 {
                ut[i * 3 + j] = u[j * 3 + i];
            }
        }
        let identity = matmul(&matmul(&ut, &u, 3), &a, 3);
        for i in 0..3 {
            for j in 0..3 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((identity[i * 3 + j] - want).abs() < 1e-12, "{identity:?}");
            }
        }
        let not_pd = [1.0, 2.0, 2.0, 1.0];
        // Factored from the last input back, the failing pivot is input 0:
        // 1 - 2²/1 = -3.
        assert!(matches!(
            upper_cholesky_of_inverse(&not_pd, 2),
            Err(SparseGptError::NotPositiveDefinite { pivot: 0, value }) if value == -3.0
        ));
    }

    #[test]
    fn the_hessian_is_twice_the_mean_outer_product_over_sequences() {
        // Two batches: one sequence of tokens (1, 2), (0, 1); one of (2, 0).
        let mut h = Hessian::new(2);
        h.add_batch(&[1.0, 2.0, 0.0, 1.0], 1).unwrap();
        h.add_batch(&[2.0, 0.0], 1).unwrap();
        // Σ xxᵀ = [[1+0+4, 2+0+0], [2+0+0, 4+1+0]] = [[5, 2], [2, 5]]; H = 2/2 · that.
        for (got, want) in h.values().iter().zip([5.0, 2.0, 2.0, 5.0]) {
            assert!((got - want).abs() < 1e-12, "{:?}", h.values());
        }
        assert_eq!(h.sequences(), 2);
    }

    #[test]
    fn with_a_diagonal_hessian_it_prunes_by_scaled_magnitude_and_updates_nothing() {
        // H = diag(1, 4, 9, 16) (no dampening): Hinv's upper factor is diag(1, 1/2, 1/3, 1/4),
        // so tmp = w² · h_jj and the off-diagonal updates vanish.
        let h = Hessian::from_values(vec![1.0, 0.0, 0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 0.0, 16.0], 4, 1).unwrap();
        let weight = [4.0, 1.5, 1.0, 0.5, -1.0, 3.0, 0.2, 1.0];
        let options = SparseGptOptions { pattern: Pattern::NM { n: 2, m: 4 }, blocksize: 128, percdamp: 0.0 };
        let out = sparsegpt(&weight, 2, 4, &h, &options).unwrap();
        // Row 0: tmp = 16, 9, 9, 4 -> prune the two lowest: cols 3 and (tie 1, 2) the lower index 1.
        // Row 1: tmp = 1, 36, 0.36, 16 -> prune cols 2 and 0.
        assert_eq!(out.keep, [true, false, true, false, false, true, false, true]);
        assert_eq!(out.weight, [4.0, 0.0, 1.0, 0.0, 0.0, 3.0, 0.0, 1.0]);
        // loss = Σ pruned tmp / 2 = (9 + 4 + 1 + 0.36) / 2.
        assert!((out.loss - 7.18).abs() < 1e-12, "{}", out.loss);
    }

    #[test]
    fn pruning_one_weight_moves_its_error_onto_the_correlated_input() {
        // Two perfectly correlated inputs (x₀ = x₁) made definite by dampening:
        // pruning w₀ must push its value onto w₁ (almost all of it), which
        // keeps the layer's output on the calibration inputs.
        let mut h = Hessian::new(2);
        h.add_batch(&[1.0, 1.0, -2.0, -2.0, 0.5, 0.5], 1).unwrap();
        let options = SparseGptOptions { pattern: Pattern::NM { n: 1, m: 2 }, blocksize: 128, percdamp: 0.01 };
        let out = sparsegpt(&[0.3, 1.0], 1, 2, &h, &options).unwrap();
        assert_eq!(out.keep, [false, true]);
        assert!((out.weight[1] - 1.3).abs() < 0.01, "{:?}", out.weight);
    }
}
