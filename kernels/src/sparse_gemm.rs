//! Products `A B` whose right-hand side is mostly zeros (a pruned linear
//! layer's weight), computed over its nonzero values only and with the bits
//! of [`gemm::matmul`].
//!
//! [`gemm`] sums every output element in chains of fused multiply-adds over
//! fixed stretches of the inner dimension, each stretch summed from zero and
//! then added to the output. A zero weight's multiply-add leaves its chain
//! as it was (up to the sign of a sum that is zero), so chains over the
//! nonzero weights alone, in the same order and the same stretches, give
//! the same values with half the multiply-adds on a 50% pruned layer.
//!
//! The nonzero weights of each output column are listed slice by slice of
//! the inner dimension ([`SparseRhs`]). The left-hand side is packed
//! transposed in blocks of [`BLOCK_ROWS`] rows, so that one weight
//! multiplies a whole line of the block (eight AVX-512 registers) and a
//! slice of [`SLICE`] lines (32 KiB) stays in L1 cache while every column
//! of a chunk passes over it. The kernel is bound by its loads (one
//! register of the block per multiply-add, against one per twelve in
//! [`gemm`]'s): on the 2-core AMD EPYC (Zen 4) machines a 50% pruned layer's
//! product takes 0.65-0.75 of the dense one's time (`cargo xtask bench
//! gemm`); 64-row blocks, or slices of 32, 48 or 96 lines, were slower in
//! `calibrate`.

use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

use crate::gemm::{self, Tile};

/// Rows of the left-hand side one task multiplies, packed as lines of this many values.
pub const BLOCK_ROWS: usize = 128;

/// Lines of the packed left-hand side that every column of a chunk reads in turn.
const SLICE: usize = 64;

/// Output columns whose running sums ([`BLOCK_ROWS`] each) are kept while
/// the slices of one stretch pass (128 KiB, in L2 cache).
const CHUNK_COLS: usize = 256;

/// A stretch of the inner dimension multiplied with one packed slice.
#[derive(Debug, Clone, PartialEq)]
struct Slice {
    /// The steps of the inner dimension it covers.
    steps: Range<usize>,
    /// It starts a stretch of [`gemm`]: its sums start from zero.
    opens: bool,
    /// It ends a stretch: its sums then go to the stretches' totals, or
    /// with them to the output after the last stretch.
    closes: bool,
    /// Its stretch is the first: the sums start the totals.
    first_stretch: bool,
    /// Its stretch is the last: the totals and the sums are the output.
    last_stretch: bool,
}

/// The right-hand side `B = W^T` of products `A B`, for a weight `W` [n, k]
/// (a linear layer's [out, in]): for every slice of the inner dimension and
/// every output column, the nonzero weights in order of their step.
#[derive(Debug, Clone)]
pub struct SparseRhs {
    inner: usize,
    cols: usize,
    slices: Vec<Slice>,
    /// The weights of column `j` in slice `s` are entries
    /// `starts[s * cols + j]..starts[s * cols + j + 1]`.
    starts: Vec<usize>,
    entries: Vec<Entry>,
}

/// One nonzero weight of a column within a slice.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct Entry {
    /// The byte offset of its step's line in the packed slice (step * BLOCK_ROWS * 4).
    offset: u32,
    /// The weight.
    value: f32,
}

impl SparseRhs {
    /// Lists the nonzero values of `w` [n, k] in row-major order. Columns
    /// are listed in parallel, each slice's nonzeros compacted without
    /// branches (a pruned weight's zeros fall at random, where a branch per
    /// value would be mispredicted half the time).
    pub fn from_transposed(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "SparseRhs::from_transposed: the weight is not [{n}, {k}]");
        Self::list(n, k, &|first, count, use_rows| use_rows(&w[first * k..(first + count) * k]))
    }

    /// [`SparseRhs::from_transposed`] of a weight [n, k] that `decode(first,
    /// out)` writes row by row (rows `first..`, filling `out`), decoded
    /// [`LISTED_ROWS`] rows at a time into a per-thread buffer (twice: once
    /// to count the nonzeros, once to list them), so the weight is never
    /// held whole in f32.
    pub fn from_decoded(n: usize, k: usize, decode: &(dyn Fn(usize, &mut [f32]) + Sync)) -> Self {
        Self::list(n, k, &|first, count, use_rows| {
            crate::scratch::with_decoded_rows(count * k, |rows| {
                decode(first, rows);
                use_rows(rows);
            })
        })
    }

    /// The listing of [`SparseRhs::from_transposed`] over weight rows that
    /// `with_rows(first, count, use_rows)` hands to `use_rows` as one slice
    /// [count, k], [`LISTED_ROWS`] rows at a time.
    fn list(n: usize, k: usize, with_rows: &(dyn Fn(usize, usize, &mut dyn FnMut(&[f32])) + Sync)) -> Self {
        let slices = slices(k);
        let chunks = || (0..n.div_ceil(LISTED_ROWS)).into_par_iter().map(|c| (c * LISTED_ROWS, LISTED_ROWS.min(n - c * LISTED_ROWS)));
        // counts[j * slices + s]: the nonzeros of column j in slice s.
        let counts: Vec<usize> = chunks()
            .flat_map_iter(|(first, count)| {
                let mut counts = Vec::with_capacity(count * slices.len());
                with_rows(first, count, &mut |rows| {
                    for column in rows.chunks_exact(k.max(1)).take(count) {
                        counts.extend(
                            slices.iter().map(|slice| column[slice.steps.clone()].iter().map(|&v| usize::from(v != 0.0)).sum::<usize>()),
                        );
                    }
                });
                counts
            })
            .collect();
        let mut starts = Vec::with_capacity(slices.len() * n + 1);
        starts.push(0);
        for s in 0..slices.len() {
            for j in 0..n {
                starts.push(starts[s * n + j] + counts[j * slices.len() + s]);
            }
        }
        let total = starts[slices.len() * n];
        let mut entries: Vec<Entry> = Vec::with_capacity(total);
        let out = SharedEntries(entries.spare_capacity_mut().as_mut_ptr());
        chunks().for_each(|(first, count)| {
            with_rows(first, count, &mut |rows| {
                let mut scratch = [Entry { offset: 0, value: 0.0 }; SLICE + 1];
                for (j, column) in (first..).zip(rows.chunks_exact(k.max(1)).take(count)) {
                    for (s, slice) in slices.iter().enumerate() {
                        let mut kept = 0;
                        for (line, &v) in column[slice.steps.clone()].iter().enumerate() {
                            scratch[kept] = Entry { offset: (line * BLOCK_ROWS * size_of::<f32>()) as u32, value: v };
                            kept += usize::from(v != 0.0);
                        }
                        let start = starts[s * n + j];
                        // A decoder that gave other values the second time would overrun its column's entries.
                        assert_eq!(kept, starts[s * n + j + 1] - start, "weight row {j} changed between its two readings");
                        // SAFETY: column j's entries of slice s go to starts[s * n + j]..starts[s * n + j + 1],
                        // inside the capacity (`total` entries) and written by this column alone.
                        unsafe { std::ptr::copy_nonoverlapping(scratch.as_ptr(), out.at(start).cast::<Entry>(), kept) };
                    }
                }
            })
        });
        // SAFETY: the ranges of all (slice, column) pairs tile 0..total, and each was written above.
        unsafe { entries.set_len(total) };
        SparseRhs { inner: k, cols: n, slices, starts, entries }
    }

    /// The output columns `n`.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `B^T` [n, k] in row-major order (the weight it was built from).
    pub fn transposed(&self) -> Vec<f32> {
        let (k, n) = (self.inner, self.cols);
        let mut out = vec![0.0f32; n * k];
        for (s, slice) in self.slices.iter().enumerate() {
            for (j, row) in out.chunks_exact_mut(k.max(1)).take(n).enumerate() {
                for entry in &self.entries[self.starts[s * n + j]..self.starts[s * n + j + 1]] {
                    row[slice.steps.start + entry.offset as usize / (BLOCK_ROWS * size_of::<f32>())] = entry.value;
                }
            }
        }
        out
    }
}

/// Weight rows that [`SparseRhs::from_decoded`] decodes (and one parallel task lists) at a time.
const LISTED_ROWS: usize = 32;

/// The uninitialized entries of a [`SparseRhs`] being listed, written by
/// columns in parallel at disjoint positions.
struct SharedEntries(*mut MaybeUninit<Entry>);

// SAFETY: every writer writes a range of positions no other writer touches.
unsafe impl Sync for SharedEntries {}

impl SharedEntries {
    /// The position `at`.
    fn at(&self, at: usize) -> *mut MaybeUninit<Entry> {
        // SAFETY (of callers' writes): `at` is within the capacity reserved for the entries.
        self.0.wrapping_add(at)
    }
}

/// The slices of [`gemm`]'s stretches of an inner dimension `k`.
fn slices(k: usize) -> Vec<Slice> {
    let mut out = Vec::new();
    let stretches = gemm::inner_blocks(k);
    for (index, stretch) in stretches.iter().enumerate() {
        for start in stretch.clone().step_by(SLICE) {
            let end = (start + SLICE).min(stretch.end);
            out.push(Slice {
                steps: start..end,
                opens: start == stretch.start,
                closes: end == stretch.end,
                first_stretch: index == 0,
                last_stretch: index + 1 == stretches.len(),
            });
        }
    }
    out
}

/// `A B` [m, n] for `a` [m, k] in row-major order, equal to
/// [`gemm::matmul`] with `B` packed densely; blocks of rows in parallel.
pub fn matmul(a: &[f32], m: usize, rhs: &SparseRhs) -> Vec<f32> {
    matmul_with(a, m, rhs, gemm::fast_kernel_available())
}

/// [`matmul`] with the kernel chosen by the caller (`fast` only where
/// [`gemm::fast_kernel_available`]).
fn matmul_with(a: &[f32], m: usize, rhs: &SparseRhs, fast: bool) -> Vec<f32> {
    let (k, n) = (rhs.inner, rhs.cols);
    assert_eq!(a.len(), m * k, "sparse_gemm::matmul: the left side is not [{m}, {k}]");
    if k == 0 || m * n == 0 {
        return vec![0.0; m * n];
    }
    gemm::filled(m * n, |out| {
        out.par_chunks_mut(BLOCK_ROWS * n).enumerate().for_each(|(block, out)| {
            let rows = out.len() / n;
            BUFFERS.with_borrow_mut(|(packed, sums, totals)| {
                packed.resize(k * BLOCK_ROWS);
                sums.resize(CHUNK_COLS * BLOCK_ROWS);
                totals.resize(CHUNK_COLS * BLOCK_ROWS);
                pack_transposed(&a[block * BLOCK_ROWS * k..][..rows * k], rows, k, packed.as_mut_slice(), fast);
                for chunk in (0..n).step_by(CHUNK_COLS) {
                    let columns = chunk..(chunk + CHUNK_COLS).min(n);
                    for (s, slice) in rhs.slices.iter().enumerate() {
                        let lines = &packed.as_slice()[slice.steps.start * BLOCK_ROWS..slice.steps.end * BLOCK_ROWS];
                        let starts = &rhs.starts[s * n + columns.start..=s * n + columns.end];
                        let running = &mut sums.as_mut_slice()[..columns.len() * BLOCK_ROWS];
                        multiply_columns(lines, &rhs.entries, starts, running, slice.opens, fast);
                        if !slice.closes {
                            continue;
                        }
                        // The stretches' sums are added up as gemm adds them to its
                        // output, ((s1 + s2) + s3) + s4, and written once.
                        let used = columns.len() * BLOCK_ROWS;
                        let tile = Tile { rows, cols: columns.len(), stride: n, accumulate: false };
                        match (slice.first_stretch, slice.last_stretch) {
                            (true, true) => write_sums(&sums.as_slice()[..used], None, &mut out[chunk..], tile, fast),
                            (true, false) => std::mem::swap(sums, totals),
                            (false, false) => add_into(&mut totals.as_mut_slice()[..used], &sums.as_slice()[..used], fast),
                            (false, true) => {
                                write_sums(&sums.as_slice()[..used], Some(&totals.as_slice()[..used]), &mut out[chunk..], tile, fast)
                            }
                        }
                    }
                }
            });
        });
    })
}

thread_local! {
    /// Each thread's packed block of the left-hand side, running sums of a
    /// chunk and their totals over the stretches so far, kept between products.
    static BUFFERS: std::cell::RefCell<(AlignedBuffer, AlignedBuffer, AlignedBuffer)> = std::cell::RefCell::new(Default::default());
}

/// One cache line of f32 values.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
struct CacheLine([f32; 16]);

/// A growable buffer of f32 values that starts on a cache line, so that
/// whole-register loads of 64-byte-aligned parts of it never straddle two.
#[derive(Debug, Clone, Default)]
struct AlignedBuffer {
    lines: Vec<CacheLine>,
    len: usize,
}

impl AlignedBuffer {
    /// Makes the buffer hold `len` values; its storage only ever grows.
    fn resize(&mut self, len: usize) {
        if self.lines.len() * 16 < len {
            self.lines.resize(len.div_ceil(16), CacheLine::default());
        }
        self.len = len;
    }

    /// The values.
    fn as_slice(&self) -> &[f32] {
        // SAFETY: the lines hold `lines.len() * 16 >= len` contiguous f32 values.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<f32>(), self.len) }
    }

    /// The values, to write.
    fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as in `as_slice`, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<f32>(), self.len) }
    }
}

/// Packs `a` [rows, k] (rows <= BLOCK_ROWS) transposed into `packed`
/// [k, BLOCK_ROWS], the lines' values past `rows` zero.
fn pack_transposed(a: &[f32], rows: usize, k: usize, packed: &mut [f32], fast: bool) {
    debug_assert!(rows <= BLOCK_ROWS && a.len() == rows * k && packed.len() == k * BLOCK_ROWS);
    let (mut full_rows, mut full_steps) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if fast {
        (full_rows, full_steps) = (rows / 16 * 16, k / 16 * 16);
        // SAFETY: the caller checked that the processor has AVX-512F; the
        // extents are those asserted above.
        unsafe { avx512::pack_transposed(a, full_rows, k, full_steps, packed) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = fast;
    for (i, line) in packed.chunks_exact_mut(BLOCK_ROWS).enumerate() {
        let first = if i < full_steps { full_rows } else { 0 };
        for (r, v) in line.iter_mut().enumerate().skip(first) {
            *v = if r < rows { a[r * k + i] } else { 0.0 };
        }
    }
}

/// Continues the running sums `sums` [columns, BLOCK_ROWS] of a chunk of
/// output columns, column `c` with `entries[starts[c]..starts[c + 1]]`
/// (weights of the packed `lines`); the sums start from zero when `opens`.
fn multiply_columns(lines: &[f32], entries: &[Entry], starts: &[usize], sums: &mut [f32], opens: bool, fast: bool) {
    debug_assert!(sums.len() == (starts.len() - 1) * BLOCK_ROWS && starts.is_sorted());
    debug_assert!(entries[starts[0]..starts[starts.len() - 1]]
        .iter()
        .all(|e| e.offset as usize / size_of::<f32>() + BLOCK_ROWS <= lines.len()));
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: the caller checked that the processor has AVX-512F; every
        // entry's offset addresses a whole line of `lines` (asserted above,
        // and so built by `SparseRhs::from_transposed`).
        unsafe { avx512::multiply_columns(lines, entries, starts, sums, opens) };
        return;
    }
    for (sum, range) in sums.chunks_exact_mut(BLOCK_ROWS).zip(starts.windows(2)) {
        if opens {
            sum.fill(0.0);
        }
        for entry in &entries[range[0]..range[1]] {
            let line = &lines[entry.offset as usize / size_of::<f32>()..][..BLOCK_ROWS];
            for (s, &x) in sum.iter_mut().zip(line) {
                *s = x.mul_add(entry.value, *s);
            }
        }
    }
}

/// `totals += sums`, elementwise.
fn add_into(totals: &mut [f32], sums: &[f32], fast: bool) {
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: the caller checked that the processor has AVX-512F.
        unsafe { avx512::add_into(totals, sums) };
        return;
    }
    for (total, &sum) in totals.iter_mut().zip(sums) {
        *total += sum;
    }
}

/// Stores the running sums `sums` [cols, BLOCK_ROWS] of a chunk of columns,
/// plus `totals` of the same shape if given, transposed into `out` (from the
/// chunk's first column of the block's first row). Each output element is
/// written once, so the tile never accumulates.
fn write_sums(sums: &[f32], totals: Option<&[f32]>, out: &mut [MaybeUninit<f32>], tile: Tile, fast: bool) {
    debug_assert!(sums.len() == tile.cols * BLOCK_ROWS && totals.is_none_or(|t| t.len() == sums.len()) && tile.rows <= BLOCK_ROWS);
    debug_assert!(!tile.accumulate);
    debug_assert!(out.len() >= (tile.rows - 1) * tile.stride + tile.cols);
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: the caller checked that the processor has AVX-512F; the
        // masked stores touch only the tile (asserted above).
        unsafe { avx512::write_sums(sums, totals, out, tile) };
        return;
    }
    for (c, column) in sums.chunks_exact(BLOCK_ROWS).enumerate() {
        for (r, &s) in column.iter().enumerate().take(tile.rows) {
            out[r * tile.stride + c].write(totals.map_or(s, |t| t[c * BLOCK_ROWS + r] + s));
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Entry, Tile, BLOCK_ROWS};
    use crate::gemm::avx512::transpose16;
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// Packs the first `rows` (a multiple of 16) rows and `steps` (a
    /// multiple of 16) columns of `a` [.., k] transposed into `packed`
    /// [k, BLOCK_ROWS], 16 x 16 values at a time through registers.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pack_transposed(a: &[f32], rows: usize, k: usize, steps: usize, packed: &mut [f32]) {
        debug_assert!(a.len() >= rows * k && packed.len() >= steps * BLOCK_ROWS && steps <= k);
        let (a, packed) = (a.as_ptr(), packed.as_mut_ptr());
        // SAFETY (whole body): the caller guarantees the extents above.
        unsafe {
            for r in (0..rows).step_by(16) {
                for i in (0..steps).step_by(16) {
                    let columns = transpose16(std::array::from_fn(|row| _mm512_loadu_ps(a.add((r + row) * k + i))));
                    for (step, column) in columns.into_iter().enumerate() {
                        _mm512_storeu_ps(packed.add((i + step) * BLOCK_ROWS + r), column);
                    }
                }
            }
        }
    }

    /// The AVX-512 kernel of `multiply_columns`: two columns at a time,
    /// each column's BLOCK_ROWS sums in BLOCK_ROWS / 16 registers, as many
    /// loads and fused multiply-adds per weight.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn multiply_columns(lines: &[f32], entries: &[Entry], starts: &[usize], sums: &mut [f32], opens: bool) {
        const VECTORS: usize = BLOCK_ROWS / 16;
        let (base, entries, sums) = (lines.as_ptr().cast::<u8>(), entries.as_ptr(), sums.as_mut_ptr());
        // SAFETY (whole body): every entry's offset addresses a whole line of
        // `lines`, `starts` are entry indices, and `sums` holds BLOCK_ROWS
        // values per column (the caller's contract).
        unsafe {
            let load = |column: usize| -> [__m512; VECTORS] {
                std::array::from_fn(|v| if opens { _mm512_setzero_ps() } else { _mm512_loadu_ps(sums.add(column * BLOCK_ROWS + 16 * v)) })
            };
            let store = |column: usize, acc: [__m512; VECTORS]| {
                for (v, acc) in acc.into_iter().enumerate() {
                    _mm512_storeu_ps(sums.add(column * BLOCK_ROWS + 16 * v), acc);
                }
            };
            macro_rules! step {
                ($acc:ident, $at:expr) => {{
                    let entry: Entry = *entries.add($at);
                    let (w, line) = (_mm512_set1_ps(entry.value), base.add(entry.offset as usize).cast::<f32>());
                    for (v, acc) in $acc.iter_mut().enumerate() {
                        *acc = _mm512_fmadd_ps(_mm512_load_ps(line.add(16 * v)), w, *acc);
                    }
                }};
            }
            let columns = starts.len() - 1;
            let mut c = 0;
            while c + 2 <= columns {
                let (mut first, mut second) = (load(c), load(c + 1));
                let (one, two) = (starts[c]..starts[c + 1], starts[c + 1]..starts[c + 2]);
                let common = one.len().min(two.len());
                for t in 0..common {
                    step!(first, one.start + t);
                    step!(second, two.start + t);
                }
                for at in one.start + common..one.end {
                    step!(first, at);
                }
                for at in two.start + common..two.end {
                    step!(second, at);
                }
                store(c, first);
                store(c + 1, second);
                c += 2;
            }
            if c < columns {
                let mut acc = load(c);
                for at in starts[c]..starts[c + 1] {
                    step!(acc, at);
                }
                store(c, acc);
            }
        }
    }

    /// `add_into`, compiled for AVX-512.
    #[target_feature(enable = "avx512f")]
    pub(super) fn add_into(totals: &mut [f32], sums: &[f32]) {
        for (total, &sum) in totals.iter_mut().zip(sums) {
            *total += sum;
        }
    }

    /// The AVX-512 kernel of `write_sums`: 16 columns by 16 rows at a time,
    /// transposed in registers.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn write_sums(sums: &[f32], totals: Option<&[f32]>, out: &mut [MaybeUninit<f32>], tile: Tile) {
        let (sums, totals, out) = (sums.as_ptr(), totals.map(<[f32]>::as_ptr), out.as_mut_ptr().cast::<f32>());
        // SAFETY (whole body): `sums` (and `totals`) hold [tile.cols, BLOCK_ROWS] values,
        // and the masked stores stay within the tile's rows and
        // columns of `out` (the caller's contract).
        unsafe {
            for c in (0..tile.cols).step_by(16) {
                let width = (tile.cols - c).min(16);
                let mask = ((1u32 << width) - 1) as __mmask16;
                for r in (0..tile.rows).step_by(16) {
                    let rows = transpose16(std::array::from_fn(|column| {
                        if column < width {
                            let at = (c + column) * BLOCK_ROWS + r;
                            let sum = _mm512_loadu_ps(sums.add(at));
                            totals.map_or(sum, |totals| _mm512_add_ps(_mm512_loadu_ps(totals.add(at)), sum))
                        } else {
                            _mm512_setzero_ps()
                        }
                    }));
                    for (row, values) in rows.into_iter().enumerate().take(tile.rows - r) {
                        _mm512_mask_storeu_ps(out.add((r + row) * tile.stride + c), mask, values);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::PackedRhs;
    use crate::rng::Rng;

    /// A weight [n, k] with about `zeros` of its values zero.
    fn pruned(n: usize, k: usize, zeros: f32, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..n * k).map(|_| (rng.next_f32(), rng.next_f32())).map(|(v, p)| if (p + 1.0) / 2.0 < zeros { 0.0 } else { v }).collect()
    }

    #[test]
    fn products_equal_the_dense_kernels_on_ragged_shapes_and_sparsities() {
        // Rows off the block size, columns off a register and a chunk, and
        // depths of one slice, several slices and several stretches.
        for &(m, n, k) in &[(1, 1, 1), (13, 33, 7), (64, 16, 64), (97, 270, 641), (150, 45, 1300), (600, 17, 100)] {
            for zeros in [0.0, 0.5, 0.9, 1.0] {
                let (a, w) = (pruned(m, k, 0.0, 1), pruned(n, k, zeros, 2));
                let dense = gemm::matmul(&a, m, &PackedRhs::from_transposed(&w, n, k));
                let sparse = SparseRhs::from_transposed(&w, n, k);
                assert_eq!(sparse.transposed(), w, "[{m}x{n}x{k}] at {zeros}: the listed weights");
                // Listed from rows decoded a few at a time: the same listing.
                let decoded = SparseRhs::from_decoded(n, k, &|first, out| out.copy_from_slice(&w[first * k..first * k + out.len()]));
                assert_eq!((&decoded.starts, decoded.transposed()), (&sparse.starts, w.clone()), "[{m}x{n}x{k}] at {zeros}: decoded rows");
                for fast in [false, gemm::fast_kernel_available()] {
                    let got = matmul_with(&a, m, &sparse, fast);
                    // Equal as numbers: a chain that skips every weight can be -0 where the dense one is +0.
                    assert!(got == dense, "[{m}x{n}x{k}] at {zeros} (fast {fast}): the products differ from the dense kernel's");
                }
            }
        }
    }

    #[test]
    fn slices_cover_the_stretches_in_order() {
        let slices = slices(700);
        // Stretches 0..352 and 352..700, each in slices of at most 64 steps.
        assert_eq!(slices.len(), 6 + 6);
        let slice = |steps, opens, closes, first_stretch| Slice { steps, opens, closes, first_stretch, last_stretch: !first_stretch };
        assert_eq!(slices[0], slice(0..64, true, false, true));
        assert_eq!(slices[5], slice(320..352, false, true, true));
        assert_eq!(slices[6], slice(352..416, true, false, false));
        assert_eq!(slices[11], slice(672..700, false, true, false));
        assert!(slices.windows(2).all(|pair| pair[0].steps.end == pair[1].steps.start));
    }
}
