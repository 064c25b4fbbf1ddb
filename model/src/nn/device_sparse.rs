//! Pruned linear weights on cubecl devices (wgpu): the keep bits and the
//! kept values in device memory, multiplied by a kernel that reads only
//! them, the GPU counterpart of the CPU's packed-row kernels.
//!
//! Layout in device memory, for a weight of `out` rows and `inner` columns:
//! - `keep`: u32 [out, words], `words = ceil(inner / 32)`; bit `j % 32` of
//!   word `j / 32` of row `o` is set where weight (o, j) is nonzero;
//! - `values`: f32 [nnz], the nonzero weights in row-major order;
//! - `chunk_starts`: u32 [out, chunks], `chunks = ceil(words / CHUNK_WORDS)`:
//!   the index in `values` of the first value of every chunk of
//!   `CHUNK_WORDS` keep words, so that the lanes working on a chunk start
//!   it without counting the bits before it.
//!
//! Both kernels give one lane to each of 32 columns: lane `l` of a group of
//! 32 reads keep word `w` (the same word for all, a broadcast), and where
//! its bit is set it reads value `start + popcount(bits below l)` and
//! column `32 w + l` of x. The kept values of a word sit side by side in
//! `values`, so a group's reads are contiguous (coalesced), and its lanes
//! take the same path whatever the bits, with no loop over set bits.
//!
//! A product of a few rows (decoding) runs [`sparse_rows_kernel`]: a group
//! of lanes per output feature (four to a cube) and a cube per tile of input
//! rows; each group walks its row and sums its lanes' partial products in
//! shared memory, as a dense GEMV gives a warp to a row. A product of more
//! rows (prefill, calibration) widens the weight into a transient dense
//! tensor ([`expand_kernel`], a group of lanes per row and chunk) for burn's
//! tiled matmul, which reuses every weight for many rows; the widened copy
//! lives for that one product, and the products are burn's matmul of the
//! weight with zeros (on lavapipe, sequential calibration of SmolLM2 gives
//! the same masks as with the dense weight, bit for bit). A few rows'
//! products equal them up to the order of the f32 additions.

use burn::backend::Cube;
use burn::tensor::{DType, Device, Shape, Tensor};
use burn_cubecl::cubecl;
use burn_cubecl::CubeDevice;
use cubecl::client::Client;
use cubecl::prelude::*;
use cubecl::server::Handle;

/// Keep words per chunk: the granularity of `chunk_starts`, and the columns
/// (`32 * CHUNK_WORDS`) one group of lanes widens in [`expand_kernel`].
const CHUNK_WORDS: usize = 8;
/// Lanes per group: one per bit of a keep word.
const LANES: usize = 32;
/// Units (threads) per cube: [`UNITS`] / [`LANES`] groups of lanes.
const UNITS: usize = 128;
/// Input rows per cube of the row kernel, at most.
const TILE: usize = 8;
/// Cubes along one dimension of a launch; larger counts spread over a
/// second dimension (Vulkan guarantees 65535).
const MAX_CUBES_PER_DIM: usize = 32768;

/// `y[r, o] = Σ_j x[r, j] · W[o, j]` over the kept `j` of row `o`, for the
/// `tile` input rows of this cube: a group of 32 lanes per output row, the
/// cube's groups on consecutive rows. Rows past `rows` read row `rows - 1`
/// and write nothing.
#[cube(launch_unchecked)]
fn sparse_rows_kernel(
    values: &[f32],
    keep: &[u32],
    chunk_starts: &[u32],
    x: &[f32],
    y: &mut [f32],
    rows: usize,
    inner: usize,
    out_features: usize,
    words: usize,
    chunks: usize,
    #[comptime] tile: usize,
    #[comptime] units: usize,
) {
    let cube = CUBE_POS_X as usize + CUBE_POS_Y as usize * CUBE_COUNT_X as usize;
    let unit = UNIT_POS as usize;
    let group = unit / 32;
    let lane = UNIT_POS % 32;
    let o = cube * (units / 32) + group;
    // Rows past the matrix compute row 0 again and write nothing: every unit reaches the barriers.
    let row_of_w = select(o < out_features, o, 0);
    let below = (1u32 << lane) - 1;
    let mut acc = Array::<f32>::new(tile);
    #[unroll]
    for r in 0..tile {
        acc[r] = 0.0;
    }
    let first_row = CUBE_POS_Z as usize * tile;
    let mut start = chunk_starts[row_of_w * chunks] as usize;
    for w in 0..words {
        let bits = keep[row_of_w * words + w];
        if (bits >> lane) & 1 == 1 {
            let v = values[start + u32::count_ones(bits & below) as usize];
            let j = w * 32 + lane as usize;
            #[unroll]
            for r in 0..tile {
                acc[r] += v * x[usize::min(first_row + r, rows - 1) * inner + j];
            }
        }
        start += u32::count_ones(bits) as usize;
    }
    let mut partial = Shared::<[f32]>::new_slice(tile * units);
    #[unroll]
    for r in 0..tile {
        partial[r * units + unit] = acc[r];
    }
    sync_cube();
    // Halving strides within each group, unrolled: a runtime loop around
    // barriers fails SPIR-V verification.
    #[unroll]
    for step in 0..5 {
        let stride = 16u32 >> step;
        if lane < stride {
            #[unroll]
            for r in 0..tile {
                let sum = partial[r * units + unit] + partial[r * units + unit + stride as usize];
                partial[r * units + unit] = sum;
            }
        }
        sync_cube();
    }
    if lane < tile as u32 && o < out_features {
        let row = first_row + lane as usize;
        if row < rows {
            y[row * out_features + o] = partial[lane as usize * units + group * 32];
        }
    }
}

/// Writes the kept values into the zeroed dense weight `w` [out, inner]:
/// a group of 32 lanes per (row, chunk).
#[cube(launch_unchecked)]
fn expand_kernel(
    values: &[f32],
    keep: &[u32],
    chunk_starts: &[u32],
    w: &mut [f32],
    out_features: usize,
    inner: usize,
    words: usize,
    chunks: usize,
    #[comptime] chunk_words: usize,
) {
    let task = ABSOLUTE_POS / 32;
    if task >= out_features * chunks {
        terminate!();
    }
    let lane = (ABSOLUTE_POS % 32) as u32;
    let below = (1u32 << lane) - 1;
    let o = task / chunks;
    let chunk = task % chunks;
    let mut start = chunk_starts[task] as usize;
    let first_word = chunk * chunk_words;
    let end_word = usize::min(first_word + chunk_words, words);
    for word in first_word..end_word {
        let bits = keep[o * words + word];
        if (bits >> lane) & 1 == 1 {
            w[o * inner + word * 32 + lane as usize] = values[start + u32::count_ones(bits & below) as usize];
        }
        start += u32::count_ones(bits) as usize;
    }
}

/// A pruned weight [out, inner] in device memory as keep bits and kept values.
pub struct DeviceSparse {
    client: Client,
    device: CubeDevice,
    /// The same device as burn names it.
    burn_device: Device,
    values: Handle,
    keep: Handle,
    chunk_starts: Handle,
    nnz: usize,
    out_features: usize,
    inner: usize,
}

impl std::fmt::Debug for DeviceSparse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceSparse([{}, {}], {} kept)", self.out_features, self.inner, self.nnz)
    }
}

/// The keep words, the nonzero values and the chunk starts of a row-major
/// [out, inner] matrix, in [`DeviceSparse`]'s layout.
fn sparse_layout(weight: &[f32], out_features: usize, inner: usize) -> (Vec<u32>, Vec<f32>, Vec<u32>) {
    assert_eq!(weight.len(), out_features * inner, "sparse_layout: weight is not [out, inner]");
    let words = inner.div_ceil(32);
    let chunks = words.div_ceil(CHUNK_WORDS);
    let mut keep = vec![0u32; out_features * words];
    let mut values = Vec::new();
    let mut chunk_starts = Vec::with_capacity(out_features * chunks);
    for (o, row) in weight.chunks_exact(inner.max(1)).take(out_features).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            if j % (32 * CHUNK_WORDS) == 0 {
                chunk_starts.push(u32::try_from(values.len()).expect("fewer than 2^32 kept weights in one matrix"));
            }
            if v != 0.0 {
                keep[o * words + j / 32] |= 1 << (j % 32);
                values.push(v);
            }
        }
    }
    (keep, values, chunk_starts)
}

impl DeviceSparse {
    /// Uploads the nonzero weights of the row-major [out, inner] `weight`
    /// to `device`, a cubecl device (see [`DeviceSparse::supports`]).
    pub fn from_rows(weight: &[f32], out_features: usize, inner: usize, burn_device: &Device) -> Self {
        let probe = crate::device::cube_tensor(burn_device).expect("DeviceSparse needs a cubecl device");
        let (client, device) = (probe.client.clone(), probe.device.clone());
        let (keep, values, chunk_starts) = sparse_layout(weight, out_features, inner);
        let nnz = values.len();
        // A buffer of no bytes is refused by some drivers: an all-zero matrix keeps one unread value.
        let values = if values.is_empty() { vec![0.0] } else { values };
        DeviceSparse {
            values: client.create_from_slice(f32::as_bytes(&values)),
            keep: client.create_from_slice(u32::as_bytes(&keep)),
            chunk_starts: client.create_from_slice(u32::as_bytes(&chunk_starts)),
            client,
            device,
            burn_device: burn_device.clone(),
            nnz,
            out_features,
            inner,
        }
    }

    /// Whether tensors on `device` are cubecl tensors this kernel reads.
    pub fn supports(device: &Device) -> bool {
        crate::device::cube_tensor(device).is_some()
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Kept (nonzero) weights.
    pub fn nnz(&self) -> usize {
        self.nnz
    }

    fn words(&self) -> usize {
        self.inner.div_ceil(32)
    }

    fn chunks(&self) -> usize {
        self.words().div_ceil(CHUNK_WORDS)
    }

    fn arg(handle: &Handle, len: usize) -> BufferArg {
        // SAFETY: `len` is the element count the handle was created with.
        unsafe { BufferArg::from_raw_parts(handle.clone(), len) }
    }

    /// `x W^T` for `x` [rows, inner] on this weight's device.
    pub fn matmul(&self, x: Tensor<2>) -> Tensor<2> {
        let [rows, inner] = x.dims();
        assert_eq!(inner, self.inner, "DeviceSparse::matmul: x has {inner} columns, the weight {}", self.inner);
        if rows > kernels::SMALL_MATMUL_ROWS {
            return x.matmul(self.dense().transpose());
        }
        let x = burn_cubecl::kernel::into_contiguous(x.try_into_primitive::<Cube>().expect("x on the weight's cubecl device"));
        assert_eq!(x.dtype, DType::F32, "DeviceSparse::matmul: f32 activations");
        let y = burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
            self.client.clone(),
            self.device.clone(),
            Shape::new([rows, self.out_features]),
            DType::F32,
        );
        if rows > 0 && self.out_features > 0 {
            let (cubes_x, cubes_y) = spread(self.out_features.div_ceil(UNITS / LANES));
            // Fewer rows than a tile take a narrower kernel (compiled once per width).
            let tile = rows.next_power_of_two().min(TILE);
            let tiles = rows.div_ceil(tile);
            // SAFETY: every index the kernel reads is in bounds by the layout of `sparse_layout`
            // (values through chunk starts and keep bits, x through `rows` and `inner`), and it
            // writes y only at rows < `rows`, columns < `out_features`.
            unsafe {
                sparse_rows_kernel::launch_unchecked(
                    &self.client,
                    CubeCount::Static(cubes_x as u32, cubes_y as u32, tiles as u32),
                    CubeDim::new_1d(UNITS as u32),
                    Self::arg(&self.values, self.nnz.max(1)),
                    Self::arg(&self.keep, self.out_features * self.words()),
                    Self::arg(&self.chunk_starts, self.out_features * self.chunks()),
                    x.into_buffer_arg(),
                    y.clone().into_buffer_arg(),
                    rows,
                    self.inner,
                    self.out_features,
                    self.words(),
                    self.chunks(),
                    tile,
                    UNITS,
                );
            }
        }
        Tensor::from_primitive::<Cube>(y)
    }

    /// The weight with zeros ([out, inner]), as a new device tensor.
    pub fn dense(&self) -> Tensor<2> {
        let w = Tensor::<2>::zeros([self.out_features, self.inner], &self.burn_device);
        let w = w.try_into_primitive::<Cube>().expect("a cubecl tensor");
        assert!(w.is_contiguous(), "a fresh zeros tensor is contiguous");
        let tasks = self.out_features * self.chunks();
        if tasks > 0 {
            let (cubes_x, cubes_y) = spread((tasks * LANES).div_ceil(UNITS));
            // SAFETY: as in `matmul`; the lanes of (row o, chunk) write only
            // row o of w, at columns whose keep bits are set (< inner).
            unsafe {
                expand_kernel::launch_unchecked(
                    &self.client,
                    CubeCount::Static(cubes_x as u32, cubes_y as u32, 1),
                    CubeDim::new_1d(UNITS as u32),
                    Self::arg(&self.values, self.nnz.max(1)),
                    Self::arg(&self.keep, self.out_features * self.words()),
                    Self::arg(&self.chunk_starts, tasks),
                    w.clone().into_buffer_arg(),
                    self.out_features,
                    self.inner,
                    self.words(),
                    self.chunks(),
                    CHUNK_WORDS,
                );
            }
        }
        Tensor::from_primitive::<Cube>(w)
    }
}

/// Cubes `(x, y)` with `x * y >= count`, `x` at most [`MAX_CUBES_PER_DIM`].
fn spread(count: usize) -> (usize, usize) {
    let x = count.min(MAX_CUBES_PER_DIM);
    (x, count.div_ceil(x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{select_device, DeviceChoice};

    #[test]
    fn the_layout_lists_keep_bits_values_and_chunk_starts_row_by_row() {
        // 2 x 300: row 0 keeps columns 0, 33 and 299; row 1 keeps 256 and 257.
        let mut weight = vec![0.0f32; 600];
        (weight[0], weight[33], weight[299]) = (1.0, 2.0, 3.0);
        (weight[300 + 256], weight[300 + 257]) = (4.0, 5.0);
        let (keep, values, starts) = sparse_layout(&weight, 2, 300);
        // 10 words a row; word 9 of row 0 holds column 299 = 9 * 32 + 11.
        let mut want_keep = vec![0u32; 20];
        (want_keep[0], want_keep[1], want_keep[9]) = (1, 2, 1 << 11);
        want_keep[10 + 8] = 0b11;
        assert_eq!(keep, want_keep);
        assert_eq!(values, [1.0, 2.0, 3.0, 4.0, 5.0]);
        // Two chunks of 256 columns a row: row 0's second starts at its third value, row 1's chunks at 3 and 3.
        assert_eq!(starts, [0, 2, 3, 3]);
    }

    /// `x W^T` in f64.
    fn reference(x: &[f32], rows: usize, weight: &[f32], out: usize, inner: usize) -> Vec<f64> {
        let mut y = vec![0.0f64; rows * out];
        for r in 0..rows {
            for o in 0..out {
                y[r * out + o] = (0..inner).map(|j| f64::from(x[r * inner + j]) * f64::from(weight[o * inner + j])).sum::<f64>();
            }
        }
        y
    }

    #[test]
    fn products_on_wgpu_equal_those_of_the_weight_with_zeros() {
        let device = select_device(DeviceChoice::Wgpu).unwrap().device;
        let mut rng = testkit::Rng::new(5);
        // Columns past one chunk and not a multiple of 32; one row empty, one full.
        let (out, inner) = (37, 600);
        let mut weight: Vec<f32> = (0..out * inner).map(|_| if rng.next_f32() < 0.6 { 0.0 } else { rng.next_f32() - 0.5 }).collect();
        weight[3 * inner..4 * inner].fill(0.0);
        for (j, v) in weight[5 * inner..6 * inner].iter_mut().enumerate() {
            *v = 0.25 + j as f32 * 1e-3;
        }
        let sparse = DeviceSparse::from_rows(&weight, out, inner, &device);
        assert_eq!(sparse.nnz(), weight.iter().filter(|&&v| v != 0.0).count());
        // One row, a partial tile, more than a tile, and past the row kernel (the widened weight).
        for rows in [1, 3, 9, kernels::SMALL_MATMUL_ROWS + 6] {
            let x: Vec<f32> = (0..rows * inner).map(|_| rng.next_f32() - 0.5).collect();
            let y = sparse.matmul(Tensor::from_data(burn::tensor::TensorData::new(x.clone(), [rows, inner]), &device));
            assert_eq!(y.dims(), [rows, out]);
            let y = y.into_data().try_into_vec::<f32>().unwrap();
            let want = reference(&x, rows, &weight, out, inner);
            for (e, (&got, &want)) in y.iter().zip(&want).enumerate() {
                assert!((f64::from(got) - want).abs() <= 1e-5 * (1.0 + want.abs()), "rows {rows}, element {e}: {got} vs {want}");
            }
            assert!(y.chunks(out).all(|row| row[3] == 0.0), "the empty weight row gives zeros");
        }
    }

    #[test]
    fn launches_of_more_cubes_than_one_dimension_takes_cover_every_row() {
        let device = select_device(DeviceChoice::Wgpu).unwrap().device;
        let mut rng = testkit::Rng::new(6);
        // 140,000 rows: 35,000 cubes of the row kernel and of the expansion, past MAX_CUBES_PER_DIM.
        let (out, inner) = (140_000, 40);
        let weight: Vec<f32> = (0..out * inner).map(|_| if rng.next_f32() < 0.5 { 0.0 } else { rng.next_f32() - 0.5 }).collect();
        let sparse = DeviceSparse::from_rows(&weight, out, inner, &device);
        assert!(out.div_ceil(UNITS / LANES) > MAX_CUBES_PER_DIM && (out * sparse.chunks() * LANES).div_ceil(UNITS) > MAX_CUBES_PER_DIM);
        for rows in [1, kernels::SMALL_MATMUL_ROWS + 1] {
            let x: Vec<f32> = (0..rows * inner).map(|_| rng.next_f32() - 0.5).collect();
            let y = sparse.matmul(Tensor::from_data(burn::tensor::TensorData::new(x.clone(), [rows, inner]), &device));
            let y = y.into_data().try_into_vec::<f32>().unwrap();
            let want = reference(&x, rows, &weight, out, inner);
            let worst = y.iter().zip(&want).map(|(&got, &want)| (f64::from(got) - want).abs()).fold(0.0, f64::max);
            assert!(worst <= 1e-5, "rows {rows}: max |wgpu - reference| = {worst}");
        }
    }
}
