//! Single-precision matrix products in host memory, with an AVX-512 kernel
//! chosen at run time.
//!
//! The right-hand side is packed once into strips of [`STRIP`] columns
//! ([`PackedRhs`]): a linear layer packs its weight when it is built and
//! reuses it for every product. The left-hand side is packed per call, in
//! blocks of rows that run in parallel.
//!
//! Every output element is a sum of chains of fused multiply-adds over
//! fixed stretches of the inner dimension (at most 384 deep), whatever the
//! number of rows or the threads: a row of the product does not depend on
//! the other rows it is computed with, and the AVX-512 kernel and the
//! portable one give identical results.
//!
//! On the 2-core AMD EPYC (Zen 5) machines this project is built on, the
//! system's OpenBLAS is pinned to its AVX2 (Haswell) kernels by the
//! environment (`OPENBLAS_CORETYPE`), about 95 GFLOP/s a core; this kernel
//! runs at 200-225 GFLOP/s a core on the shapes of a small decoder's layers.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Output columns of one strip of a packed right-hand side (two AVX-512 registers).
pub const STRIP: usize = 32;

/// Rows of the left-hand side a micro-kernel call multiplies at once.
const PANEL_ROWS: usize = 12;

/// Rows of the left-hand side packed and multiplied by one task.
const BLOCK_ROWS: usize = 96;

/// Longest stretch of the inner dimension multiplied at once. Each
/// stretch's products are summed from zero and then added to the output, as
/// blocked BLAS kernels do; that rounding, rather than one chain over the
/// whole depth, keeps sequential 2:4 Wanda on the reference's masks (see
/// `experiments/reference`).
const MAX_INNER_BLOCK: usize = 384;

/// The right-hand side `B` [k, n] of products `A B`, packed into strips of
/// [`STRIP`] columns (the last one padded with zeros), each strip [k, STRIP].
#[derive(Debug, Clone, Default)]
pub struct PackedRhs {
    inner: usize,
    cols: usize,
    values: Vec<f32>,
}

impl PackedRhs {
    /// Packs `B = W^T` for a weight `w` [n, k] in row-major order (a linear
    /// layer's [out, in]), so that `A B` is the layer's `A W^T`.
    pub fn from_transposed(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "PackedRhs::from_transposed: the weight is not [{n}, {k}]");
        Self::from_decoded(n, k, &|first, out| out.copy_from_slice(&w[first * k..first * k + out.len()]))
    }

    /// [`PackedRhs::from_transposed`] of a weight [n, k] that `decode(first,
    /// out)` writes row by row (rows `first..`, filling `out`), packed a
    /// strip at a time: the weight is never held unpacked (a model's
    /// stored layers are packed straight from the file).
    pub fn from_decoded(n: usize, k: usize, decode: &(dyn Fn(usize, &mut [f32]) + Sync)) -> Self {
        let mut packed = PackedRhs::empty();
        packed.pack_decoded(n, k, decode);
        packed
    }

    /// Packs `b` [k, n] in row-major order.
    pub fn from_rows(b: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(b.len(), k * n, "PackedRhs::from_rows: the matrix is not [{k}, {n}]");
        let mut values = vec![0.0f32; n.div_ceil(STRIP) * k * STRIP];
        for (strip, out) in values.chunks_exact_mut(k.max(1) * STRIP).enumerate() {
            let first = strip * STRIP;
            let width = STRIP.min(n - first);
            for (i, out) in out.chunks_exact_mut(STRIP).enumerate() {
                out[..width].copy_from_slice(&b[i * n + first..i * n + first + width]);
            }
        }
        PackedRhs { inner: k, cols: n, values }
    }

    /// An empty packing, to be filled by [`PackedRhs::pack_decoded`].
    const fn empty() -> Self {
        PackedRhs { inner: 0, cols: 0, values: Vec::new() }
    }

    /// Packs `B = W^T` for a weight `W` [n, k] that `decode(first, out)`
    /// writes row by row (rows `first..`, filling `out`), replacing what
    /// this packing held and reusing its storage. Strips are packed in
    /// parallel, each through a per-thread buffer of its [`STRIP`] rows, so
    /// the whole weight is never held unpacked. The values are those of
    /// [`PackedRhs::from_transposed`] on the decoded weight.
    fn pack_decoded(&mut self, n: usize, k: usize, decode: &(dyn Fn(usize, &mut [f32]) + Sync)) {
        let fast = fast_kernel_available();
        self.values.resize(n.div_ceil(STRIP) * k * STRIP, 0.0);
        (self.inner, self.cols) = (k, n);
        if k == 0 {
            return;
        }
        self.values.par_chunks_mut(k * STRIP).enumerate().for_each(|(strip, out)| {
            let first = strip * STRIP;
            let width = STRIP.min(n - first);
            crate::scratch::with_decoded_rows(width * k, |rows| {
                decode(first, rows);
                transpose_into_strip(rows, width, k, out, fast);
            });
        });
    }

    /// The output columns `n`.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `B^T` [n, k] in row-major order (a linear layer's weight [out, in]).
    pub fn transposed(&self) -> Vec<f32> {
        let (k, n) = (self.inner, self.cols);
        let mut out = vec![0.0f32; n * k];
        out.par_chunks_mut(k.max(1)).enumerate().for_each(|(j, row)| {
            let strip = &self.values[j / STRIP * k * STRIP..];
            for (i, v) in row.iter_mut().enumerate() {
                *v = strip[i * STRIP + j % STRIP];
            }
        });
        out
    }
}

thread_local! {
    /// Each thread's packed chunk for [`matmul_decoded`], kept between
    /// products so that no product allocates (and faults in) megabytes.
    static PACKED_CHUNK: std::cell::RefCell<PackedRhs> = const { std::cell::RefCell::new(PackedRhs::empty()) };
}

/// Writes `width` (at most [`STRIP`]) rows of `k` values, `rows` [width, k],
/// transposed into the strip `out` [k, STRIP], its columns past `width`
/// zero; 16 x 16 values at a time through registers when `fast` and the
/// strip is whole.
fn transpose_into_strip(rows: &[f32], width: usize, k: usize, out: &mut [f32], fast: bool) {
    debug_assert!(rows.len() == width * k && out.len() == k * STRIP && width <= STRIP);
    if width < STRIP {
        out.fill(0.0);
    }
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if fast && width == STRIP {
        done = k / 16 * 16;
        // SAFETY: the caller checked that the processor has AVX-512F; the
        // extents are those asserted above, with `done <= k`.
        unsafe { avx512::transpose_into_strip(rows, k, done, out) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = fast;
    for (c, row) in rows.chunks_exact(k).enumerate() {
        for (i, &v) in row.iter().enumerate().skip(done) {
            out[i * STRIP + c] = v;
        }
    }
}

/// Whether this processor runs the AVX-512 kernel; elsewhere [`matmul`]
/// falls back to a portable loop, and callers should prefer a BLAS.
pub fn fast_kernel_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `A B` [m, n] for `a` [m, k] in row-major order; blocks of rows in parallel.
pub fn matmul(a: &[f32], m: usize, rhs: &PackedRhs) -> Vec<f32> {
    matmul_with(a, m, rhs, fast_kernel_available())
}

/// `A W^T` [m, n] for `a` [m, k] and a weight `W` [n, k] (a linear layer's
/// [out, in]) that `decode(first, out)` writes row by row (rows `first..`,
/// filling `out`): `chunk` rows of it at a time are packed
/// ([`PackedRhs::pack_decoded`], into this thread's storage, reused between
/// products) and multiplied into their columns of the product, so the whole
/// weight is never held. Every output column depends only on its own
/// weight row: the values are those of [`matmul`] with the whole weight
/// packed, bit for bit.
pub fn matmul_decoded(a: &[f32], m: usize, (n, k): (usize, usize), chunk: usize, decode: &(dyn Fn(usize, &mut [f32]) + Sync)) -> Vec<f32> {
    assert!(chunk > 0, "gemm::matmul_decoded: chunks of no rows");
    let fast = fast_kernel_available();
    let multiply = |packed: &mut PackedRhs| {
        filled(m * n, |out| {
            for first in (0..n).step_by(chunk) {
                packed.pack_decoded(chunk.min(n - first), k, &|from, values| decode(first + from, values));
                // Columns first..first + packed.cols, every element of which it writes.
                matmul_into(a, m, packed, fast, out, n, first);
            }
        })
    };
    // A product nested in another on this thread gets storage of its own.
    crate::scratch::with_thread_buffer(&PACKED_CHUNK, multiply)
}

/// `A_i B_i` for each of the `batch` pairs of row-major `a` [batch, m, k]
/// and `b` [batch, k, n], as [batch, m, n].
pub fn batched_matmul(a: &[f32], b: &[f32], batch: usize, m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(a.len(), batch * m * k, "batched_matmul: the left side is not [{batch}, {m}, {k}]");
    assert_eq!(b.len(), batch * k * n, "batched_matmul: the right side is not [{batch}, {k}, {n}]");
    let fast = fast_kernel_available();
    filled(batch * m * n, |out| {
        if m * n == 0 {
            return;
        }
        out.par_chunks_mut(m * n).enumerate().for_each(|(i, out)| {
            let rhs = PackedRhs::from_rows(&b[i * k * n..(i + 1) * k * n], k, n);
            matmul_into(&a[i * m * k..(i + 1) * m * k], m, &rhs, fast, out, n, 0);
        });
    })
}

/// A vector of `len` values, every one of which `fill` writes; it is never
/// zeroed first, since the products overwrite whole outputs.
pub(crate) fn filled(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    fill(&mut out.spare_capacity_mut()[..len]);
    // SAFETY: `fill` wrote all `len` values (`matmul_into` overwrites every
    // element of its output, and `batched_matmul` covers the whole vector).
    unsafe { out.set_len(len) };
    out
}

/// [`matmul`] with the kernel chosen by the caller (`fast` only where
/// [`fast_kernel_available`]).
fn matmul_with(a: &[f32], m: usize, rhs: &PackedRhs, fast: bool) -> Vec<f32> {
    filled(m * rhs.cols, |out| matmul_into(a, m, rhs, fast, out, rhs.cols, 0))
}

/// Writes `A B` [m, n] into columns `first..first + n` of `out` [m,
/// stride], every element of which it overwrites (the first stretch of the
/// inner dimension stores, later ones add).
fn matmul_into(a: &[f32], m: usize, rhs: &PackedRhs, fast: bool, out: &mut [MaybeUninit<f32>], stride: usize, first: usize) {
    let (k, n) = (rhs.inner, rhs.cols);
    assert_eq!(a.len(), m * k, "gemm::matmul: the left side is not [{m}, {k}]");
    assert!(
        out.len() == m * stride && first + n <= stride,
        "gemm::matmul: the output is not [{m}, {stride}] with {n} columns from {first}"
    );
    if m * n == 0 {
        return;
    }
    if k == 0 {
        for row in out.chunks_exact_mut(stride) {
            row[first..first + n].fill(MaybeUninit::new(0.0));
        }
        return;
    }
    let blocks = inner_blocks(k);
    out.par_chunks_mut(BLOCK_ROWS * stride).enumerate().for_each(|(block, out)| {
        let first_row = block * BLOCK_ROWS;
        let rows = out.len() / stride;
        PACKED_LHS.with_borrow_mut(|packed| {
            // All stretches of the block's rows are packed first, so that each
            // strip of outputs takes every stretch in turn while its tiles are
            // still in cache (a wide output, like gate and up fused, no
            // longer falls out of cache between stretches).
            let panels = rows.div_ceil(PANEL_ROWS);
            packed.resize(packed.len().max(panels * PANEL_ROWS * k), 0.0);
            for range in &blocks {
                pack_lhs(a, k, first_row, rows, range.clone(), &mut packed[panels * PANEL_ROWS * range.start..], fast);
            }
            for strip in 0..n.div_ceil(STRIP) {
                let cols = STRIP.min(n - strip * STRIP);
                for range in &blocks {
                    let (start, depth) = (range.start, range.len());
                    let b = &rhs.values[strip * k * STRIP + start * STRIP..][..depth * STRIP];
                    let stretch = &packed[panels * PANEL_ROWS * start..];
                    for panel in 0..panels {
                        let panel_rows = PANEL_ROWS.min(rows - panel * PANEL_ROWS);
                        let a = &stretch[panel * PANEL_ROWS * depth..][..PANEL_ROWS * depth];
                        let c = &mut out[panel * PANEL_ROWS * stride + first + strip * STRIP..];
                        let tile = Tile { rows: panel_rows, cols, stride, accumulate: start > 0 };
                        multiply_panel(a, b, c, tile, fast);
                    }
                }
            }
        });
    });
}

thread_local! {
    /// Each thread's buffer for packed rows of the left-hand side, kept
    /// between products so that no block allocates or clears one.
    static PACKED_LHS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The stretches of the inner dimension multiplied at once: at most
/// [`MAX_INNER_BLOCK`] long, a rest shorter than two blocks split in halves
/// (rounded up to 16), as OpenBLAS's level-3 driver splits it.
pub(crate) fn inner_blocks(k: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < k {
        let rest = k - start;
        let len = if rest >= 2 * MAX_INNER_BLOCK {
            MAX_INNER_BLOCK
        } else if rest > MAX_INNER_BLOCK {
            (rest / 2).div_ceil(16) * 16
        } else {
            rest
        };
        out.push(start..start + len);
        start += len;
    }
    out
}

/// Packs rows `first..first + rows`, columns `columns` of `a`
/// (row stride `k`) into panels of [`PANEL_ROWS`] rows, each [columns.len(),
/// PANEL_ROWS], the last one padded with zeros; through registers when `fast`
/// (only where [`fast_kernel_available`]).
fn pack_lhs(a: &[f32], k: usize, first: usize, rows: usize, columns: std::ops::Range<usize>, out: &mut [f32], fast: bool) {
    let (start, depth) = (columns.start, columns.len());
    for (panel, out) in out[..rows.div_ceil(PANEL_ROWS) * PANEL_ROWS * depth].chunks_exact_mut(PANEL_ROWS * depth).enumerate() {
        let panel_rows = PANEL_ROWS.min(rows - panel * PANEL_ROWS);
        let row = |r: usize| {
            let at = (first + panel * PANEL_ROWS + r) * k + start;
            &a[at..at + depth]
        };
        if panel_rows == PANEL_ROWS {
            // Whole panels: one output line of PANEL_ROWS values per step, read
            // from 12 rows; 16 steps at a time through registers with AVX-512.
            let rows: [&[f32]; PANEL_ROWS] = std::array::from_fn(row);
            let mut done = 0;
            #[cfg(target_arch = "x86_64")]
            if fast {
                done = depth / 16 * 16;
                for i in (0..done).step_by(16) {
                    // SAFETY: the caller checked that the processor has AVX-512F; every row holds
                    // `depth` values and the panel `depth * PANEL_ROWS`.
                    unsafe { avx512::pack_steps(&rows, i, &mut out[i * PANEL_ROWS..(i + 16) * PANEL_ROWS]) };
                }
            }
            for (i, out) in out.chunks_exact_mut(PANEL_ROWS).enumerate().skip(done) {
                for (out, row) in out.iter_mut().zip(&rows) {
                    *out = row[i];
                }
            }
        } else {
            out.fill(0.0);
            for r in 0..panel_rows {
                for (i, &v) in row(r).iter().enumerate() {
                    out[i * PANEL_ROWS + r] = v;
                }
            }
        }
    }
}

/// Where a micro-kernel writes: `rows` x `cols` of the output, rows
/// `stride` apart, added to what is there when `accumulate`.
#[derive(Clone, Copy)]
pub(crate) struct Tile {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) stride: usize,
    pub(crate) accumulate: bool,
}

/// `c[tile] (+)= a b` for a packed panel `a` [depth, PANEL_ROWS] and strip
/// `b` [depth, STRIP].
fn multiply_panel(a: &[f32], b: &[f32], c: &mut [MaybeUninit<f32>], tile: Tile, fast: bool) {
    let depth = b.len() / STRIP;
    debug_assert!(a.len() == depth * PANEL_ROWS && tile.rows <= PANEL_ROWS && tile.cols <= STRIP);
    debug_assert!(c.len() >= (tile.rows - 1) * tile.stride + tile.cols);
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: the caller checked that the processor has AVX-512F; the
        // slices hold the extents asserted above, and the masked loads and
        // stores touch only the tile's columns.
        unsafe { avx512::multiply_panel(a, b, c, tile) };
        return;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = fast;
    let mut acc = [[0.0f32; STRIP]; PANEL_ROWS];
    for (a, b) in a.chunks_exact(PANEL_ROWS).zip(b.chunks_exact(STRIP)) {
        for (acc, &a) in acc.iter_mut().zip(a) {
            for (acc, &b) in acc.iter_mut().zip(b) {
                *acc = a.mul_add(b, *acc);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate().take(tile.rows) {
        let c = &mut c[r * tile.stride..r * tile.stride + tile.cols];
        for (c, &acc) in c.iter_mut().zip(acc) {
            if tile.accumulate {
                // SAFETY: a tile accumulates only after the first stretch of
                // the inner dimension has stored every one of its elements.
                unsafe { *c.assume_init_mut() += acc };
            } else {
                c.write(acc);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::{Tile, PANEL_ROWS, STRIP};
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// The 16 x 16 block `x` (16 registers, one row each) transposed: the
    /// 16 columns, one register each.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn transpose16(x: [__m512; 16]) -> [__m512; 16] {
        // Pairs of rows interleaved by 32 bits, then by 64 bits: a 4 x 4
        // transpose within each 128-bit lane of four rows.
        let t: [__m512; 16] = std::array::from_fn(|i| {
            let (a, b) = (x[i / 2 * 2], x[i / 2 * 2 + 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            }
        });
        let u: [__m512; 16] = std::array::from_fn(|i| {
            let (q, j) = (i / 4 * 4, i % 4);
            let (a, b) = (_mm512_castps_pd(t[q + j / 2]), _mm512_castps_pd(t[q + j / 2 + 2]));
            _mm512_castpd_ps(if j % 2 == 0 { _mm512_unpacklo_pd(a, b) } else { _mm512_unpackhi_pd(a, b) })
        });
        // Then the 128-bit lanes: of row groups four apart, then eight apart.
        let v: [__m512; 16] = std::array::from_fn(|i| {
            let (h, j) = (i / 8 * 8, i % 4);
            let (a, b) = (u[h + j], u[h + j + 4]);
            if i % 8 < 4 {
                _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b)
            } else {
                _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b)
            }
        });
        std::array::from_fn(|c| {
            let (a, b) = (v[c % 8], v[c % 8 + 8]);
            if c < 8 {
                _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b)
            } else {
                _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b)
            }
        })
    }

    /// Writes steps `0..steps` (a multiple of 16) of the [`STRIP`] rows
    /// `rows` [STRIP, k] transposed into the strip `out` [k, STRIP], 16 x
    /// 16 values at a time.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_into_strip(rows: &[f32], k: usize, steps: usize, out: &mut [f32]) {
        debug_assert!(rows.len() == STRIP * k && out.len() == k * STRIP && steps <= k && steps % 16 == 0);
        // SAFETY (whole body): the caller guarantees STRIP rows of `k`
        // values and a strip of `k` lines, and `steps <= k`.
        unsafe {
            let (rows, out) = (rows.as_ptr(), out.as_mut_ptr());
            for half in [0, 16] {
                for step in (0..steps).step_by(16) {
                    let x: [__m512; 16] = std::array::from_fn(|r| _mm512_loadu_ps(rows.add((half + r) * k + step)));
                    for (j, column) in transpose16(x).into_iter().enumerate() {
                        _mm512_storeu_ps(out.add((step + j) * STRIP + half), column);
                    }
                }
            }
        }
    }

    /// Packs steps `first..first + 16` of a whole panel's `rows` into `out`
    /// [16, PANEL_ROWS]: the 12 x 16 block, with four zero rows below it,
    /// transposed in registers, and the first 12 values of each of its 16
    /// columns stored.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pack_steps(rows: &[&[f32]; PANEL_ROWS], first: usize, out: &mut [f32]) {
        debug_assert!(out.len() == 16 * PANEL_ROWS && rows.iter().all(|row| row.len() >= first + 16));
        // SAFETY (whole body): the caller guarantees 16 values from `first`
        // in every row, and `out` holds 16 lines of PANEL_ROWS values.
        unsafe {
            let x: [__m512; 16] =
                std::array::from_fn(|r| if r < PANEL_ROWS { _mm512_loadu_ps(rows[r].as_ptr().add(first)) } else { _mm512_setzero_ps() });
            let out = out.as_mut_ptr();
            for (c, column) in transpose16(x).into_iter().enumerate() {
                _mm512_mask_storeu_ps(out.add(c * PANEL_ROWS), (1 << PANEL_ROWS) - 1, column);
            }
        }
    }

    /// The AVX-512 micro-kernel: 12 x 32 accumulators in 24 registers, one
    /// broadcast of `a` and two loads of `b` per 24 fused multiply-adds.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn multiply_panel(a: &[f32], b: &[f32], c: &mut [MaybeUninit<f32>], tile: Tile) {
        let depth = b.len() / STRIP;
        let mask = |from: usize| -> __mmask16 {
            let width = tile.cols.saturating_sub(from).min(16);
            ((1u32 << width) - 1) as __mmask16
        };
        let (low, high) = (mask(0), mask(16));
        let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr().cast::<f32>());
        // SAFETY (whole body): indices stay within the extents the caller
        // asserted: `a` [depth, PANEL_ROWS], `b` [depth, STRIP], and the
        // tile's rows and masked columns of `c`.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; PANEL_ROWS];
            for i in 0..depth {
                let b0 = _mm512_loadu_ps(b.add(i * STRIP));
                let b1 = _mm512_loadu_ps(b.add(i * STRIP + 16));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*a.add(i * PANEL_ROWS + r));
                    acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(x, b1, acc[1]);
                }
            }
            for (r, acc) in acc.iter_mut().enumerate().take(tile.rows) {
                let row = c.add(r * tile.stride);
                if tile.accumulate {
                    acc[0] = _mm512_add_ps(_mm512_maskz_loadu_ps(low, row), acc[0]);
                    acc[1] = _mm512_add_ps(_mm512_maskz_loadu_ps(high, row.add(16)), acc[1]);
                }
                _mm512_mask_storeu_ps(row, low, acc[0]);
                _mm512_mask_storeu_ps(row.add(16), high, acc[1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..len).map(|_| rng.next_f32()).collect()
    }

    #[test]
    fn products_match_an_f64_computation_on_ragged_shapes() {
        // Rows, columns and depth off every block size, and a depth split into inner blocks.
        for &(m, n, k) in &[(1, 1, 1), (13, 33, 7), (97, 70, 641), (200, 31, 1300), (12, 32, 64)] {
            let (a, w) = (random(m * k, 1), random(n * k, 2));
            for fast in [false, fast_kernel_available()] {
                let got = matmul_with(&a, m, &PackedRhs::from_transposed(&w, n, k), fast);
                for (e, &got) in got.iter().enumerate() {
                    let (row, col) = (&a[e / n * k..][..k], &w[e % n * k..][..k]);
                    let want: f64 = row.iter().zip(col).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
                    // The worst-case error of k rounded steps: k * 2^-24 * sum |a_i w_i|.
                    let bound =
                        k as f64 * f64::from(f32::EPSILON) / 2.0 * row.iter().zip(col).map(|(&x, &y)| f64::from(x * y).abs()).sum::<f64>();
                    assert!((f64::from(got) - want).abs() <= bound, "[{m}x{n}x{k}] element {e}: {got} vs {want} (bound {bound})");
                }
            }
        }
    }

    #[test]
    fn each_element_is_a_sum_of_fused_chains_whatever_the_kernel_or_the_rows_beside_it() {
        let (m, n, k) = (150, 45, 700);
        let (a, w) = (random(m * k, 3), random(n * k, 4));
        let rhs = PackedRhs::from_transposed(&w, n, k);
        // Depth 700: stretches 0..352 and 352..700, each one chain, then added.
        assert_eq!(inner_blocks(k), vec![0..352, 352..700]);
        assert_eq!(inner_blocks(1536), vec![0..384, 384..768, 768..1152, 1152..1536]);
        let chain = |e: usize, range: std::ops::Range<usize>| range.fold(0.0f32, |acc, i| a[e / n * k + i].mul_add(w[e % n * k + i], acc));
        let fused: Vec<f32> = (0..m * n).map(|e| chain(e, 0..352) + chain(e, 352..700)).collect();
        assert_eq!(matmul_with(&a, m, &rhs, false), fused);
        assert_eq!(matmul(&a, m, &rhs), fused);
        // A single row, and rows 7..20 on their own, give the same bits.
        assert_eq!(matmul(&a[..k], 1, &rhs), fused[..n]);
        assert_eq!(matmul(&a[7 * k..20 * k], 13, &rhs), fused[7 * n..20 * n]);
    }

    #[test]
    fn both_packings_describe_the_same_matrix() {
        let (k, n) = (37, 70);
        let w = random(n * k, 5);
        let mut b = vec![0.0f32; k * n];
        for j in 0..n {
            for i in 0..k {
                b[i * n + j] = w[j * k + i];
            }
        }
        let (from_w, from_b) = (PackedRhs::from_transposed(&w, n, k), PackedRhs::from_rows(&b, k, n));
        assert_eq!(from_w.values, from_b.values);
        assert_eq!(from_w.transposed(), w);
        // An empty inner dimension gives zeros.
        assert_eq!(batched_matmul(&[], &[], 2, 3, 0, 5), vec![0.0; 2 * 3 * 5]);
        assert_eq!(matmul(&[], 4, &PackedRhs::from_transposed(&[], 40, 0)), vec![0.0; 4 * 40]);
        let a = random(3 * 2 * k, 6);
        let batched = batched_matmul(&a, &[b.clone(), b].concat(), 2, 3, k, n);
        assert_eq!(batched[..3 * n], matmul(&a[..3 * k], 3, &from_w));
        assert_eq!(batched[3 * n..], matmul(&a[3 * k..], 3, &from_w));
    }

    #[test]
    fn a_weight_packed_from_its_decoded_rows_equals_the_whole_weight_packed() {
        // Inner sizes with and without a rest past the 16-step blocks; 70
        // rows leave a partial last strip; the packing is reused, larger then smaller.
        let mut packed = PackedRhs::empty();
        for (n, k) in [(70, 37), (64, 48), (96, 5), (33, 0)] {
            let w = random(n * k, 9);
            let decode = |first: usize, out: &mut [f32]| out.copy_from_slice(&w[first * k..first * k + out.len()]);
            packed.pack_decoded(n, k, &decode);
            let whole = PackedRhs::from_transposed(&w, n, k);
            assert_eq!((packed.inner, packed.cols, &packed.values), (whole.inner, whole.cols, &whole.values), "[{n}, {k}]");
        }
    }

    #[test]
    fn products_of_a_weight_decoded_chunk_by_chunk_are_the_whole_product() {
        // Past one stretch of the inner dimension; rows past a block.
        let (m, k, n) = (BLOCK_ROWS + PANEL_ROWS * 2 + 5, 400, 90);
        let (a, w) = (random(m * k, 3), random(n * k, 4));
        let whole = matmul(&a, m, &PackedRhs::from_transposed(&w, n, k));
        let decode = |first: usize, out: &mut [f32]| out.copy_from_slice(&w[first * k..first * k + out.len()]);
        // Chunks that divide the rows, that leave a rest, and one for all.
        for chunk in [30, 33, 64, 1000] {
            let got = matmul_decoded(&a, m, (n, k), chunk, &decode);
            assert!(got.iter().zip(&whole).all(|(x, y)| x.to_bits() == y.to_bits()), "chunks of {chunk} rows");
        }
    }
}
