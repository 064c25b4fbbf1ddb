//! Pruning kernels shared by the `calibrate`, `score` and `mask` stages:
//! importance metrics (magnitude, Wanda), the selection of the weights to
//! prune (per output row, per layer, or N:M), the bit packing of masks,
//! OWL's per-layer sparsities ([`owl`]) and SparseGPT's pruning with weight
//! reconstruction ([`sparsegpt`]).
//!
//! Everything here is plain host code on row-major `[out, in]` matrices in
//! Hugging Face layout, so that sequential calibration (which prunes as it
//! goes) and the later `score` + `mask` stages produce bit-identical masks.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;

pub mod owl;
pub mod sparsegpt;

/// Errors of pruning parameters and shapes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SparsityError {
    /// A sparsity ratio outside [0, 1).
    #[error("sparsity must be in [0, 1); found {0}")]
    Ratio(String),
    /// An N:M pattern that is not 0 < N < M.
    #[error("N:M pattern must satisfy 0 < N < M (e.g. 2:4); found {0}")]
    Pattern(String),
    /// Text that is no pattern.
    #[error("unknown pattern `{0}`: expected unstructured-<sparsity> (e.g. unstructured-0.5) or N:M (e.g. 2:4)")]
    UnknownPattern(String),
    /// Data whose length does not match the stated shape.
    #[error("{what}: expected {expected} values, found {found}")]
    Shape {
        /// Which array.
        what: String,
        /// Length implied by the shape.
        expected: usize,
        /// Actual length.
        found: usize,
    },
    /// A row length that is not a multiple of M for an N:M pattern.
    #[error("N:M pattern {n}:{m} needs in_features divisible by {m}; found {cols}")]
    Divisibility {
        /// Weights pruned per group.
        n: usize,
        /// Group size.
        m: usize,
        /// Row length.
        cols: usize,
    },
    /// A method without per-weight scores asked for them.
    #[error(
        "{0} has no per-weight scores: it chooses the weights to prune while it updates the others (use `mask --hessians` for its mask)"
    )]
    NoScores(&'static str),
    /// Packed mask rows that do not cover a matrix row for row.
    #[error("mask rows: expected {expected}; found {found}")]
    MaskRows {
        /// What the matrix needs.
        expected: String,
        /// What the rows hold.
        found: String,
    },
}

/// Importance metric of a weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// |W_ij|.
    Magnitude,
    /// |W_ij| * sqrt(stat_j), stat_j the mean squared norm of input column j (Wanda).
    Wanda,
    /// Relative importance and activations (RIA, Zhang et al. 2024):
    /// (|W_ij| / Σ_i |W_ij| + |W_ij| / Σ_j |W_ij|) * sqrt(stat_j)^a, a = [`RIA_EXPONENT`].
    Ria,
    /// SparseGPT ([`sparsegpt`]): weights chosen block by block from the
    /// inputs' Hessian while the kept ones are updated; it has no scores.
    SparseGpt,
}

/// RIA's exponent of the input norms (the authors' default `a`).
pub const RIA_EXPONENT: f32 = 0.5;

impl Method {
    /// Name used on the command line and in artifact metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Magnitude => "magnitude",
            Method::Wanda => "wanda",
            Method::Ria => "ria",
            Method::SparseGpt => "sparsegpt",
        }
    }

    /// Whether the method's scores need the inputs' statistics.
    pub fn needs_stats(self) -> bool {
        !matches!(self, Method::Magnitude)
    }

    /// Whether the method changes the weights it keeps (so a mask alone does
    /// not give the sub-model: its artifact carries the kept values).
    pub fn updates_weights(self) -> bool {
        matches!(self, Method::SparseGpt)
    }
}

impl FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "magnitude" => Ok(Method::Magnitude),
            "wanda" => Ok(Method::Wanda),
            "ria" => Ok(Method::Ria),
            "sparsegpt" => Ok(Method::SparseGpt),
            other => Err(format!("unknown method `{other}`; expected wanda, ria, sparsegpt or magnitude")),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which weights are pruned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pattern {
    /// A fraction of the weights of each comparison group, lowest scores first.
    Unstructured {
        /// Fraction pruned, in [0, 1).
        sparsity: f64,
    },
    /// In every group of `m` consecutive inputs of a row, the `n` lowest.
    NM {
        /// Pruned per group.
        n: usize,
        /// Group size.
        m: usize,
    },
}

impl Pattern {
    /// Unstructured pattern, checking the ratio.
    pub fn unstructured(sparsity: f64) -> Result<Self, SparsityError> {
        if !(0.0..1.0).contains(&sparsity) {
            return Err(SparsityError::Ratio(sparsity.to_string()));
        }
        Ok(Pattern::Unstructured { sparsity })
    }

    /// Parses "N:M", e.g. "2:4".
    pub fn parse_nm(text: &str) -> Result<Self, SparsityError> {
        let bad = || SparsityError::Pattern(text.to_string());
        let (n, m) = text.split_once(':').ok_or_else(bad)?;
        let (n, m): (usize, usize) = (n.trim().parse().map_err(|_| bad())?, m.trim().parse().map_err(|_| bad())?);
        if n == 0 || n >= m {
            return Err(bad());
        }
        Ok(Pattern::NM { n, m })
    }

    /// The short form for file and mask names: `u0.5` or `2of4`.
    pub fn tag(&self) -> String {
        match self {
            Pattern::Unstructured { sparsity } => format!("u{sparsity}"),
            Pattern::NM { n, m } => format!("{n}of{m}"),
        }
    }

    /// Fraction of weights this pattern prunes in a row of `cols` inputs.
    pub fn pruned_per_row(&self, cols: usize) -> usize {
        match self {
            Pattern::Unstructured { sparsity } => (cols as f64 * sparsity) as usize,
            Pattern::NM { n, m } => cols / m * n,
        }
    }
}

/// `unstructured-0.5` or `2:4`: the label in metadata, experiment files and
/// reports, which [`Pattern`]'s `FromStr` reads back.
impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Unstructured { sparsity } => write!(f, "unstructured-{sparsity}"),
            Pattern::NM { n, m } => write!(f, "{n}:{m}"),
        }
    }
}

impl FromStr for Pattern {
    type Err = SparsityError;

    /// Reads `unstructured-<sparsity>` or `N:M`, checking the values.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.strip_prefix("unstructured-") {
            Some(value) => Pattern::unstructured(value.parse().map_err(|_| SparsityError::UnknownPattern(text.to_string()))?),
            None if text.contains(':') => Pattern::parse_nm(text),
            None => Err(SparsityError::UnknownPattern(text.to_string())),
        }
    }
}

impl serde::Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Over which weights scores are compared for unstructured pruning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Group {
    /// Each output row separately (Wanda's default).
    #[default]
    Row,
    /// The whole matrix.
    Layer,
}

impl FromStr for Group {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "row" => Ok(Group::Row),
            "layer" => Ok(Group::Layer),
            other => Err(format!("unknown group `{other}`; expected row or layer")),
        }
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Group::Row => "row",
            Group::Layer => "layer",
        })
    }
}

fn check_len(what: &str, expected: usize, found: usize) -> Result<(), SparsityError> {
    if expected != found {
        return Err(SparsityError::Shape { what: what.to_string(), expected, found });
    }
    Ok(())
}

/// Scores of a `[rows, cols]` weight matrix. For Wanda and RIA,
/// `column_stat[j]` is the mean squared L2 norm of input column j; scores
/// are `|W_ij| * sqrt(stat_j)` (Wanda, one f32 rounding per operation, as
/// the references) and `(|W_ij| / Σ_i |W_ij| + |W_ij| / Σ_j |W_ij|) *
/// sqrt(stat_j)^a` (RIA, in f64 rounded once to f32: its sums over a whole
/// row or column round differently in every f32 order).
pub fn scores(method: Method, weight: &[f32], rows: usize, cols: usize, column_stat: Option<&[f32]>) -> Result<Vec<f32>, SparsityError> {
    check_len("weight", rows * cols, weight.len())?;
    match method {
        Method::SparseGpt => Err(SparsityError::NoScores(method.as_str())),
        Method::Magnitude => Ok(weight.iter().map(|w| w.abs()).collect()),
        Method::Ria => {
            let stat = column_stat.ok_or(SparsityError::Shape { what: "ria column statistics".into(), expected: cols, found: 0 })?;
            check_len("column statistics", cols, stat.len())?;
            // In f64, rounded once: the f32 score nearest the exact one, so
            // that near-ties order as in the float64 reference.
            let activation: Vec<f64> = stat.iter().map(|&s| f64::from(s).sqrt().powf(f64::from(RIA_EXPONENT))).collect();
            let mut column_sums = vec![0.0f64; cols];
            for row in weight.chunks_exact(cols.max(1)) {
                for (sum, w) in column_sums.iter_mut().zip(row) {
                    *sum += f64::from(w.abs());
                }
            }
            let mut out = vec![0.0f32; weight.len()];
            if cols > 0 {
                out.par_chunks_mut(cols).zip(weight.par_chunks(cols)).for_each(|(out, row)| {
                    let row_sum: f64 = row.iter().map(|w| f64::from(w.abs())).sum();
                    for (j, (o, w)) in out.iter_mut().zip(row).enumerate() {
                        let w = f64::from(w.abs());
                        *o = ((w / column_sums[j] + w / row_sum) * activation[j]) as f32;
                    }
                });
            }
            Ok(out)
        }
        Method::Wanda => {
            let stat = column_stat.ok_or(SparsityError::Shape { what: "wanda column statistics".into(), expected: cols, found: 0 })?;
            check_len("column statistics", cols, stat.len())?;
            let roots: Vec<f32> = stat.iter().map(|s| s.sqrt()).collect();
            let mut out = vec![0.0f32; weight.len()];
            if cols > 0 {
                out.par_chunks_mut(cols * ROWS_PER_TASK).zip(weight.par_chunks(cols * ROWS_PER_TASK)).for_each(|(out, weight)| {
                    for (out, weight) in out.chunks_exact_mut(cols).zip(weight.chunks_exact(cols)) {
                        for ((o, w), r) in out.iter_mut().zip(weight).zip(&roots) {
                            *o = w.abs() * r;
                        }
                    }
                });
            }
            Ok(out)
        }
    }
}

/// Ascending order of scores with ties in index order (a stable sort); NaN sorts last.
fn ascending(a: &f32, b: &f32) -> Ordering {
    a.partial_cmp(b).unwrap_or_else(|| a.is_nan().cmp(&b.is_nan()))
}

/// Indices of `values` sorted ascending, ties by index: PyTorch's
/// `torch.sort(..., stable=True)`.
pub fn stable_argsort(values: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&i, &j| ascending(&values[i], &values[j]));
    idx
}

/// A key whose unsigned order is [`ascending`]'s order of scores: -0.0 and
/// 0.0 equal, every NaN equal to every other and above +inf.
fn order_key(score: f32) -> u32 {
    let canonical = if score.is_nan() {
        f32::NAN
    } else if score == 0.0 {
        0.0
    } else {
        score
    };
    let bits = canonical.to_bits();
    if bits >> 31 == 1 {
        !bits
    } else {
        bits | 1 << 31
    }
}

/// Marks as pruned (false) the `pruned` lowest scores of `row`, ties to the
/// lower index, as the first `pruned` entries of [`stable_argsort`] would:
/// a selection on keys that order by score, then index. `scratch` is
/// reused between rows; `row` has at most `u32::MAX` entries.
fn prune_lowest(row: &[f32], pruned: usize, keep: &mut [bool], scratch: &mut Vec<u64>) {
    if pruned == 0 {
        return;
    }
    if pruned >= row.len() {
        keep.fill(false);
        return;
    }
    scratch.clear();
    scratch.extend(row.iter().enumerate().map(|(i, &s)| u64::from(order_key(s)) << 32 | i as u64));
    scratch.select_nth_unstable(pruned - 1);
    for &key in &scratch[..pruned] {
        keep[(key & u64::from(u32::MAX)) as usize] = false;
    }
}

/// Rows of a matrix handed to one parallel task of [`keep_mask`] and [`scores`].
const ROWS_PER_TASK: usize = 16;

/// [`prune_lowest`] on every run of `unit` consecutive scores (a whole row,
/// or an N:M group) of a matrix with rows of `cols`, bands of rows in parallel.
fn prune_lowest_per_unit(scores: &[f32], keep: &mut [bool], cols: usize, unit: usize, pruned: usize) {
    keep.par_chunks_mut(cols * ROWS_PER_TASK).zip(scores.par_chunks(cols * ROWS_PER_TASK)).for_each(|(keep, scores)| {
        let mut scratch = Vec::with_capacity(unit);
        for (keep, unit_scores) in keep.chunks_exact_mut(unit).zip(scores.chunks_exact(unit)) {
            prune_lowest(unit_scores, pruned, keep, &mut scratch);
        }
    });
}

/// The keep-mask (true = kept) of a `[rows, cols]` score matrix under `pattern`.
///
/// - Unstructured, [`Group::Row`]: in every row exactly `floor(cols * s)`
///   weights pruned, lowest scores first, ties to the lower column index.
/// - Unstructured, [`Group::Layer`]: `floor(rows * cols * s)` pruned over
///   the whole matrix, ties to the lower flat index.
/// - N:M: in every group of M consecutive inputs of a row, the N lowest
///   pruned, ties to the lower index.
///
/// Rows are selected in parallel; the result does not depend on it.
pub fn keep_mask(scores: &[f32], rows: usize, cols: usize, pattern: Pattern, group: Group) -> Result<Vec<bool>, SparsityError> {
    check_len("scores", rows * cols, scores.len())?;
    let mut keep = vec![true; scores.len()];
    if scores.is_empty() {
        return Ok(keep);
    }
    match pattern {
        Pattern::Unstructured { sparsity } => {
            Pattern::unstructured(sparsity)?;
            match group {
                Group::Row => prune_lowest_per_unit(scores, &mut keep, cols, cols, pattern.pruned_per_row(cols)),
                Group::Layer => {
                    let pruned = (scores.len() as f64 * sparsity) as usize;
                    if u32::try_from(scores.len()).is_ok() {
                        prune_lowest(scores, pruned, &mut keep, &mut Vec::with_capacity(scores.len()));
                    } else {
                        for &i in stable_argsort(scores).iter().take(pruned) {
                            keep[i] = false;
                        }
                    }
                }
            }
        }
        Pattern::NM { n, m } => {
            if n == 0 || n >= m {
                return Err(SparsityError::Pattern(format!("{n}:{m}")));
            }
            if cols % m != 0 {
                return Err(SparsityError::Divisibility { n, m, cols });
            }
            prune_lowest_per_unit(scores, &mut keep, cols, m, n);
        }
    }
    Ok(keep)
}

/// RIA's heuristic channel reallocation for N:M (its authors' `prune_ria`
/// with `--reallocation`, importance `sum`): the input channels sorted by
/// their summed score, ascending, are dealt out in M stripes (stripe `i`
/// takes the `i`-th fraction of the order, every other stripe reversed) so
/// that each group of M holds channels of every importance. Returns
/// `index`: position `k` of the permuted matrix is input channel `index[k]`.
pub fn channel_reallocation(scores: &[f32], rows: usize, cols: usize, m: usize) -> Result<Vec<usize>, SparsityError> {
    check_len("scores", rows * cols, scores.len())?;
    if m == 0 || cols % m != 0 {
        return Err(SparsityError::Divisibility { n: 0, m, cols });
    }
    // Summed in f64, so that near-ties order as in the float64 reference.
    let mut sums = vec![0.0f64; cols];
    for row in scores.chunks_exact(cols.max(1)) {
        for (sum, &v) in sums.iter_mut().zip(row) {
            *sum += f64::from(v);
        }
    }
    let mut sorted: Vec<usize> = (0..cols).collect();
    sorted.sort_by(|&a, &b| sums[a].total_cmp(&sums[b]).then(a.cmp(&b)));
    let stripe = cols / m;
    let mut index = vec![0usize; cols];
    for i in 0..m {
        let chunk = &sorted[i * stripe..(i + 1) * stripe];
        for (g, &channel) in chunk.iter().enumerate() {
            // Odd stripes (the 2nd, 4th, ...) are dealt in reverse order.
            let at = if i % 2 == 0 { g } else { stripe - 1 - g };
            index[at * m + i] = channel;
        }
    }
    Ok(index)
}

/// The N:M keep-mask of RIA with channel reallocation: the N lowest scores
/// of every group of M inputs of a row *after* [`channel_reallocation`],
/// mapped back to the original input order (so the written weights keep
/// their order; permuting their columns by the index makes them N:M).
pub fn keep_mask_reallocated(scores: &[f32], rows: usize, cols: usize, n: usize, m: usize) -> Result<Vec<bool>, SparsityError> {
    let index = channel_reallocation(scores, rows, cols, m)?;
    let mut permuted = vec![0.0f32; scores.len()];
    for (out, row) in permuted.chunks_exact_mut(cols).zip(scores.chunks_exact(cols)) {
        for (o, &channel) in out.iter_mut().zip(&index) {
            *o = row[channel];
        }
    }
    let keep_permuted = keep_mask(&permuted, rows, cols, Pattern::NM { n, m }, Group::Row)?;
    let mut keep = vec![true; scores.len()];
    for (out, row) in keep.chunks_exact_mut(cols).zip(keep_permuted.chunks_exact(cols)) {
        for (&k, &channel) in row.iter().zip(&index) {
            out[channel] = k;
        }
    }
    Ok(keep)
}

/// The keep-mask `method` selects from its `scores`: [`keep_mask`], except
/// RIA's N:M masks, which come after its channel reallocation
/// ([`keep_mask_reallocated`]) as its authors prune N:M.
pub fn select(
    method: Method,
    scores: &[f32],
    rows: usize,
    cols: usize,
    pattern: Pattern,
    group: Group,
) -> Result<Vec<bool>, SparsityError> {
    match (method, pattern) {
        (Method::Ria, Pattern::NM { n, m }) if n > 0 && n < m => keep_mask_reallocated(scores, rows, cols, n, m),
        _ => keep_mask(scores, rows, cols, pattern, group),
    }
}

/// Packs a row of keep flags into bytes, least significant bit first, the
/// last byte zero-padded.
pub fn pack_bits(keep: &[bool]) -> Vec<u8> {
    keep.chunks(8).map(|flags| flags.iter().enumerate().fold(0u8, |byte, (bit, &k)| byte | u8::from(k) << bit)).collect()
}

/// Unpacks `len` keep flags packed by [`pack_bits`]; `None` if `bytes` is
/// not exactly `ceil(len / 8)` long or padding bits are set.
pub fn unpack_bits(bytes: &[u8], len: usize) -> Option<Vec<bool>> {
    if bytes.len() != len.div_ceil(8) {
        return None;
    }
    if len % 8 != 0 && bytes[bytes.len() - 1] >> (len % 8) != 0 {
        return None;
    }
    Some((0..len).map(|i| bytes[i / 8] >> (i % 8) & 1 == 1).collect())
}

/// Zeroes the weights whose keep flag is false.
pub fn apply_mask(weight: &mut [f32], keep: &[bool]) -> Result<(), SparsityError> {
    check_len("mask", weight.len(), keep.len())?;
    for (w, &k) in weight.iter_mut().zip(keep) {
        // A select rather than a branch: keep flags are close to random.
        *w = if k { *w } else { 0.0 };
    }
    Ok(())
}

/// One output row of a mask as a mask artifact stores it: packed keep bits.
#[derive(Debug, Clone, Copy)]
pub struct PackedRow<'a> {
    /// Output row index.
    pub row: u32,
    /// Number of input columns (bits).
    pub in_features: u32,
    /// Keep flags packed by [`pack_bits`].
    pub keep: &'a [u8],
}

/// What [`apply_packed_rows`] did to a matrix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppliedCounts {
    /// Weights in the matrix.
    pub total: u64,
    /// Weights the mask prunes.
    pub masked: u64,
    /// Weights that are zero afterwards (pruned ones plus any zero already).
    pub zeros: u64,
}

/// Zeroes the pruned weights of a row-major `[rows, cols]` matrix from its
/// packed mask rows, given in any order.
///
/// The rows must be exactly `0..rows`, each with `cols` bits; anything else is
/// refused before a weight is touched.
pub fn apply_packed_rows(weight: &mut [f32], rows: usize, cols: usize, packed: &[PackedRow]) -> Result<AppliedCounts, SparsityError> {
    check_len("weight", rows * cols, weight.len())?;
    let bad = |expected: String, found: String| SparsityError::MaskRows { expected, found };
    if packed.len() != rows {
        return Err(bad(format!("{rows} rows"), format!("{} rows", packed.len())));
    }
    let mut order: Vec<&PackedRow> = packed.iter().collect();
    order.sort_by_key(|r| r.row);
    let mut unpacked = Vec::with_capacity(rows);
    for (i, r) in order.iter().enumerate() {
        if r.row as usize != i {
            return Err(bad(format!("one row for each output row 0..{rows}"), format!("row {} at position {i}", r.row)));
        }
        if r.in_features as usize != cols {
            return Err(bad(format!("in_features {cols} in every row"), format!("{} in row {}", r.in_features, r.row)));
        }
        let keep = unpack_bits(r.keep, cols).ok_or_else(|| {
            bad(format!("{} bytes of packed bits, padding zero", cols.div_ceil(8)), format!("{} bytes in row {}", r.keep.len(), r.row))
        })?;
        unpacked.push(keep);
    }
    let mut counts = AppliedCounts { total: (rows * cols) as u64, ..AppliedCounts::default() };
    for (i, keep) in unpacked.iter().enumerate() {
        let w = &mut weight[i * cols..(i + 1) * cols];
        apply_mask(w, keep)?;
        counts.masked += keep.iter().filter(|k| !**k).count() as u64;
        counts.zeros += w.iter().filter(|v| **v == 0.0).count() as u64;
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ria_channel_reallocation_deals_channels_in_zigzag_stripes() {
        // One row whose scores are its column sums, 1..8: direct 2:4 keeps
        // 3 + 4 + 7 + 8 = 22; after reallocation the groups are
        // {c0, c3, c4, c7} and {c1, c2, c5, c6} (index by hand from the
        // authors' `index[ii-1::m] = sorted[...]`, even stripes flipped), which
        // keep c4..c7: 26.
        let scores = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        assert_eq!(channel_reallocation(&scores, 1, 8, 4).unwrap(), [0, 3, 4, 7, 1, 2, 5, 6]);
        let keep = keep_mask_reallocated(&scores, 1, 8, 2, 4).unwrap();
        assert_eq!(keep, [false, false, false, false, true, true, true, true]);
        let direct = keep_mask(&scores, 1, 8, Pattern::NM { n: 2, m: 4 }, Group::Row).unwrap();
        assert_eq!(direct, [false, false, true, true, false, false, true, true]);
        // Sums over rows decide the order: a second row moves c0 to the top.
        let two = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        assert_eq!(channel_reallocation(&two, 2, 8, 4).unwrap(), [1, 4, 5, 0, 2, 3, 6, 7]);
        let keep = keep_mask_reallocated(&two, 2, 8, 2, 4).unwrap();
        for row in keep.chunks(8) {
            let index = [1, 4, 5, 0, 2, 3, 6, 7];
            for group in index.chunks(4) {
                assert_eq!(group.iter().filter(|&&c| !row[c]).count(), 2, "2 of each permuted group pruned");
            }
        }
        assert_eq!(
            select(Method::Ria, &scores, 1, 8, Pattern::NM { n: 2, m: 4 }, Group::Row).unwrap(),
            [false, false, false, false, true, true, true, true]
        );
        assert_eq!(select(Method::Wanda, &scores, 1, 8, Pattern::NM { n: 2, m: 4 }, Group::Row).unwrap(), direct);
        assert!(channel_reallocation(&scores, 1, 8, 3).is_err());
    }

    #[test]
    fn ria_scores_add_the_weight_s_share_of_its_column_and_of_its_row_times_the_input_norm_to_the_half() {
        // |W| = [[1, 3], [2, 2]]: column sums 3, 5; row sums 4, 4. Stats [16, 1]
        // -> sqrt(stat)^0.5 = [2, 1].
        let got = scores(Method::Ria, &[1.0, -3.0, -2.0, 2.0], 2, 2, Some(&[16.0, 1.0])).unwrap();
        // Each score is the exact value rounded once to f32.
        let want: [f64; 4] =
            [(1.0 / 3.0 + 1.0 / 4.0) * 2.0, (3.0 / 5.0 + 3.0 / 4.0) * 1.0, (2.0 / 3.0 + 2.0 / 4.0) * 2.0, (2.0 / 5.0 + 2.0 / 4.0) * 1.0];
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.to_bits(), (w as f32).to_bits(), "{got:?} vs {want:?}");
        }
        assert!(scores(Method::Ria, &[1.0, 2.0], 1, 2, None).is_err(), "RIA needs the statistics");
        assert_eq!("ria".parse::<Method>(), Ok(Method::Ria));
        assert!(Method::Ria.needs_stats() && !Method::Magnitude.needs_stats());
    }

    #[test]
    fn patterns_read_back_what_they_write() {
        for text in ["unstructured-0.5", "unstructured-0.55", "2:4", "4:8"] {
            let pattern: Pattern = text.parse().unwrap();
            assert_eq!(pattern.to_string(), text);
        }
        assert_eq!("unstructured-0.5".parse::<Pattern>().unwrap().tag(), "u0.5");
        assert_eq!("2:4".parse::<Pattern>().unwrap().tag(), "2of4");
        assert_eq!("unstructured-1.5".parse::<Pattern>(), Err(SparsityError::Ratio("1.5".into())));
        assert_eq!("4:2".parse::<Pattern>(), Err(SparsityError::Pattern("4:2".into())));
        assert!(matches!("half".parse::<Pattern>(), Err(SparsityError::UnknownPattern(t)) if t == "half"));
        assert!("unstructured-x".parse::<Pattern>().unwrap_err().to_string().contains("expected unstructured-<sparsity>"));
    }

    #[test]
    fn wanda_scores_scale_magnitudes_by_root_column_statistic() {
        // |W| = [[1, 2], [3, 4]] (signs dropped), stats [4, 9] -> roots [2, 3].
        let s = scores(Method::Wanda, &[-1.0, 2.0, 3.0, -4.0], 2, 2, Some(&[4.0, 9.0])).unwrap();
        assert_eq!(s, vec![2.0, 6.0, 6.0, 12.0]);
        let m = scores(Method::Magnitude, &[-1.0, 2.0, 3.0, -4.0], 2, 2, None).unwrap();
        assert_eq!(m, vec![1.0, 2.0, 3.0, 4.0]);
        assert!(scores(Method::Wanda, &[1.0, 2.0], 1, 2, Some(&[1.0])).is_err());
    }

    #[test]
    fn row_pruning_removes_exactly_floor_cols_times_s_per_row() {
        let s = [5.0, 1.0, 4.0, 2.0, 3.0, /* row 2 */ 0.5, 0.4, 0.3, 0.2, 0.1];
        let keep = keep_mask(&s, 2, 5, Pattern::unstructured(0.5).unwrap(), Group::Row).unwrap();
        // floor(5 * 0.5) = 2 per row: row 1 drops 1.0 and 2.0, row 2 drops 0.1 and 0.2.
        assert_eq!(keep, vec![true, false, true, false, true, true, true, true, false, false]);
    }

    #[test]
    fn ties_prune_the_lower_column_first() {
        let keep = keep_mask(&[1.0, 1.0, 1.0, 1.0], 1, 4, Pattern::unstructured(0.5).unwrap(), Group::Row).unwrap();
        assert_eq!(keep, vec![false, false, true, true]);
        let keep = keep_mask(&[2.0, 1.0, 1.0, 1.0], 1, 4, Pattern::NM { n: 2, m: 4 }, Group::Row).unwrap();
        assert_eq!(keep, vec![true, false, false, true]);
    }

    #[test]
    fn layer_group_compares_across_rows() {
        let keep = keep_mask(&[1.0, 2.0, 3.0, 4.0, 0.1, 0.2], 3, 2, Pattern::unstructured(0.5).unwrap(), Group::Layer).unwrap();
        assert_eq!(keep, vec![false, true, true, true, false, false]);
    }

    #[test]
    fn n_m_prunes_n_in_every_group_of_m() {
        let s = [4.0, 3.0, 2.0, 1.0, 1.0, 2.0, 3.0, 4.0];
        let keep = keep_mask(&s, 1, 8, Pattern::parse_nm("2:4").unwrap(), Group::Row).unwrap();
        assert_eq!(keep, vec![true, true, false, false, false, false, true, true]);
        assert!(keep_mask(&s, 1, 8, Pattern::NM { n: 2, m: 3 }, Group::Row).is_err());
        assert!(Pattern::parse_nm("4:4").is_err() && Pattern::parse_nm("x").is_err());
    }

    /// The selection as its definition states it: a stable ascending sort
    /// of each row (or group), the first ones pruned.
    fn keep_by_stable_sort(scores: &[f32], rows: usize, cols: usize, pattern: Pattern, group: Group) -> Vec<bool> {
        let mut keep = vec![true; scores.len()];
        let (unit, pruned) = match (pattern, group) {
            (Pattern::Unstructured { .. }, Group::Row) => (cols, pattern.pruned_per_row(cols)),
            (Pattern::Unstructured { sparsity }, Group::Layer) => (rows * cols, (scores.len() as f64 * sparsity) as usize),
            (Pattern::NM { n, m }, _) => (m, n),
        };
        for (start, chunk) in (0..scores.len()).step_by(unit).zip(scores.chunks(unit)) {
            for &i in stable_argsort(chunk).iter().take(pruned) {
                keep[start + i] = false;
            }
        }
        keep
    }

    #[test]
    fn selection_equals_a_stable_sort_on_scores_full_of_ties_and_nans() {
        // Scores drawn from 7 values (and NaN), so most comparisons are ties.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (rows, cols) = (37, 48);
        // Negative scores, both zeros and both NaN signs too: the keys must
        // order them as the comparison of a sort does.
        let scores: Vec<f32> = (0..rows * cols)
            .map(|_| match next() % 60 {
                0 => f32::NAN,
                1 => -f32::NAN,
                2 => -0.0,
                3 => f32::INFINITY,
                _ => (next() % 7) as f32 * 0.25 - 0.5,
            })
            .collect();
        let patterns = [
            (Pattern::unstructured(0.5).unwrap(), Group::Row),
            (Pattern::unstructured(0.3).unwrap(), Group::Row),
            (Pattern::unstructured(0.0).unwrap(), Group::Row),
            (Pattern::unstructured(0.6).unwrap(), Group::Layer),
            (Pattern::NM { n: 2, m: 4 }, Group::Row),
            (Pattern::NM { n: 5, m: 8 }, Group::Row),
            (Pattern::NM { n: 1, m: 3 }, Group::Row),
        ];
        for (pattern, group) in patterns {
            let want = keep_by_stable_sort(&scores, rows, cols, pattern, group);
            let got = keep_mask(&scores, rows, cols, pattern, group).unwrap();
            assert_eq!(got, want, "{} by {group}", pattern);
            let pruned = got.iter().filter(|k| !**k).count();
            let expected = match (pattern, group) {
                (Pattern::Unstructured { sparsity }, Group::Layer) => (rows as f64 * cols as f64 * sparsity) as usize,
                _ => rows * pattern.pruned_per_row(cols),
            };
            assert_eq!(pruned, expected, "{} by {group}", pattern);
        }
    }

    #[test]
    fn bits_pack_lsb_first_with_zero_padding() {
        let keep = [true, false, false, false, false, false, false, false, false, true];
        assert_eq!(pack_bits(&keep), vec![0b0000_0001, 0b0000_0010]);
        assert_eq!(unpack_bits(&[0b0000_0001, 0b0000_0010], 10).unwrap(), keep.to_vec());
        assert_eq!(unpack_bits(&[0b0000_0001, 0b0000_0110], 10), None, "padding bit set");
        assert_eq!(unpack_bits(&[0b0000_0001], 10), None, "too short");
    }

    #[test]
    fn sparsity_outside_unit_interval_is_refused() {
        assert!(Pattern::unstructured(1.0).is_err());
        assert!(Pattern::unstructured(-0.1).is_err());
        assert!(Pattern::unstructured(0.0).is_ok());
    }

    #[test]
    fn packed_rows_zero_exactly_the_pruned_weights() {
        // 2x3 matrix, row 1 listed first; keep row0 = [1,0,1] -> 0b101, row1 = [0,1,1] -> 0b110.
        let mut w = vec![1.0, 2.0, 3.0, 4.0, 0.0, 6.0];
        let rows = [PackedRow { row: 1, in_features: 3, keep: &[0b110] }, PackedRow { row: 0, in_features: 3, keep: &[0b101] }];
        let counts = apply_packed_rows(&mut w, 2, 3, &rows).unwrap();
        assert_eq!(w, vec![1.0, 0.0, 3.0, 0.0, 0.0, 6.0]);
        // masked: one per row; zeros: the two pruned plus the 0.0 already there.
        assert_eq!(counts, AppliedCounts { total: 6, masked: 2, zeros: 3 });
    }

    #[test]
    fn packed_rows_refuse_gaps_and_wrong_widths_untouched() {
        let mut w = vec![1.0; 6];
        let gap = [PackedRow { row: 0, in_features: 3, keep: &[0] }, PackedRow { row: 2, in_features: 3, keep: &[0] }];
        assert!(matches!(apply_packed_rows(&mut w, 2, 3, &gap), Err(SparsityError::MaskRows { .. })));
        let wide = [PackedRow { row: 0, in_features: 4, keep: &[0] }, PackedRow { row: 1, in_features: 3, keep: &[0] }];
        assert!(matches!(apply_packed_rows(&mut w, 2, 3, &wide), Err(SparsityError::MaskRows { .. })));
        let padded = [PackedRow { row: 0, in_features: 3, keep: &[0b1000] }, PackedRow { row: 1, in_features: 3, keep: &[0] }];
        assert!(matches!(apply_packed_rows(&mut w, 2, 3, &padded), Err(SparsityError::MaskRows { .. })));
        assert_eq!(w, vec![1.0; 6]);
    }
}
