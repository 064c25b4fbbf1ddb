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
                tmp.sort_by(f64::total_cmp);
                Some(tmp[at])
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
                        for j in col + 1..i2 {
                            wrow[j] -= err * hinv_at(col, j);
                        }
                    }
                }
                for (i, &err) in errors.iter().enumerate() {
                    if err == 0.0 {
                        continue;
                    }
                    let hrow = &hinv[(i1 + i) * cols + i2..(i1 + i + 1) * cols];
                    for (wv, &hv) in wrow[i2..].iter_mut().zip(hrow) {
                        *wv -= err * hv;
                    }
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
    // over j ≤ k < i), stored as row j of `columns`; the columns are independent.
    let mut columns = vec![0.0f64; n * n];
    columns.par_chunks_mut(n.max(1)).enumerate().for_each(|(j, x)| {
        x[j] = 1.0 / l[j * n + j];
        for i in j + 1..n {
            x[i] = -dot(&l[i * n + j..i * n + i], &x[j..i]) / l[i * n + i];
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

/// `Σ aₖ bₖ` in eight interleaved partial sums added pairwise at the end: a
/// fixed order (so results are reproducible), and one the compiler turns
/// into vector instructions, unlike a single chain of additions.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (a8.remainder(), b8.remainder());
    for (x, y) in a8.zip(b8) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ra.iter().zip(rb).enumerate() {
        lanes[l] += x * y;
    }
    ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))
}

/// The lower Cholesky factor `L` of a symmetric positive definite `a`
/// (`A = LLᵀ`), column by column (Crout): `Lⱼⱼ = √(Aⱼⱼ - Lⱼ·Lⱼ)`, then the
/// rows below it in parallel, `Lᵢⱼ = (Aᵢⱼ - Lᵢ·Lⱼ) / Lⱼⱼ` over the first j
/// entries of rows i and j.
fn lower_cholesky(a: &[f64], n: usize) -> Result<Vec<f64>, SparseGptError> {
    let mut l = vec![0.0f64; n * n];
    for j in 0..n {
        let (head, tail) = l.split_at_mut((j + 1) * n);
        let row_j = &mut head[j * n..];
        let s = a[j * n + j] - dot(&row_j[..j], &row_j[..j]);
        if s <= 0.0 || !s.is_finite() {
            return Err(SparseGptError::NotPositiveDefinite { pivot: j, value: s });
        }
        let d = s.sqrt();
        row_j[j] = d;
        let row_j = &head[j * n..j * n + j];
        tail.par_chunks_mut(n).with_min_len(16).enumerate().for_each(|(k, row_i)| {
            let i = j + 1 + k;
            row_i[j] = (a[i * n + j] - dot(&row_i[..j], row_j)) / d;
        });
    }
    Ok(l)
}

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
