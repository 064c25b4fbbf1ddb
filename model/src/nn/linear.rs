//! Linear layers `y = x W^T + b`, with the weight kept where its products
//! run fastest: packed for [`gemm`] (or listed sparse for [`sparse_gemm`]
//! when pruned) on host-memory devices with the fast kernel, transposed on
//! the device otherwise, and read row by row by [`kernels::small_matmul`]
//! for the few rows of a decoding step; on cubecl devices (wgpu) a pruned
//! weight keeps only its kept values ([`DeviceSparse`]).

use std::sync::{Arc, OnceLock};

use burn::tensor::{Device, Tensor, TensorData};

use super::device_sparse::DeviceSparse;
use super::{from_values, host_values, shared_values};
use crate::checkpoint::StoredRows;
use crate::weights::HostTensor;
use kernels::{gemm, sparse_gemm};

/// A linear layer `y = x W^T + b`.
/// It may hold several linear modules reading the same input, their outputs side by side.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor<1>>,
    host_weight: HostWeight,
}

/// How a [`Linear`] keeps its weight for products of many rows.
#[derive(Debug, Clone)]
enum LinearWeight {
    /// Transposed ([in, out]) on the device, for burn's matmul.
    Tensor(Tensor<2>),
    /// Packed in host memory for [`gemm::matmul`]: on host-memory devices
    /// whose processor runs its fast kernel.
    Packed(Arc<gemm::PackedRhs>),
    /// Its nonzero values listed for [`sparse_gemm::matmul`], where it would
    /// be packed but at least [`SPARSE_FROM`] of it is zero (a pruned layer):
    /// the same products, skipping the zeros.
    Sparse(Arc<sparse_gemm::SparseRhs>),
    /// Its nonzero values and keep bits in the memory of a cubecl device
    /// (wgpu), where at least [`SPARSE_FROM`] of it is zero: products read
    /// only the kept weights ([`DeviceSparse`]).
    DeviceSparse(Arc<DeviceSparse>),
    /// In its stored form (f16, bf16 or GGUF blocks in the file's memory
    /// map), on host-memory devices: the few-row product decodes it as it
    /// multiplies ([`kernels::encoded::small_matmul_stored`]); a product of more rows
    /// decodes and packs it a chunk at a time ([`STORED_CHUNK_ROWS`]). Either
    /// way the products are those of the f32 weight, bit for bit, and no f32
    /// copy is kept.
    Stored(Arc<StoredParts>),
}

/// The stored modules of a [`LinearWeight::Stored`], their rows stacked.
#[derive(Debug)]
struct StoredParts {
    parts: Vec<StoredRows>,
    /// First row of every part, and the total.
    starts: Vec<usize>,
    inner: usize,
}

impl StoredParts {
    /// The rows of `parts` stacked in order; they must read inputs of one width.
    fn new(parts: Vec<StoredRows>) -> Self {
        let inner = parts[0].cols();
        let mut starts = vec![0];
        for part in &parts {
            assert_eq!(part.cols(), inner, "stacked modules read the same input");
            starts.push(starts.last().expect("a start") + part.rows());
        }
        StoredParts { parts, starts, inner }
    }

    /// Writes stacked rows `first..first + out.len() / inner` into `out`.
    fn decode(&self, first: usize, out: &mut [f32]) {
        let (mut row, mut done) = (first, 0);
        let count = out.len() / self.inner;
        while done < count {
            let part = self.part_of(row);
            let n = (count - done).min(self.starts[part + 1] - row);
            self.parts[part].decode(row - self.starts[part], &mut out[done * self.inner..(done + n) * self.inner]);
            row += n;
            done += n;
        }
    }

    fn rows(&self) -> usize {
        *self.starts.last().expect("at least one part")
    }

    /// The part holding stacked row `row`.
    fn part_of(&self, row: usize) -> usize {
        self.starts.partition_point(|&s| s <= row) - 1
    }
}

impl kernels::encoded::StoredWeight for StoredParts {
    fn encoding(&self, first: usize, count: usize) -> Option<kernels::encoded::Encoding> {
        let part = self.part_of(first);
        // One part (one encoding) for all the rows asked for.
        (first + count <= self.starts[part + 1]).then(|| self.parts[part].encoding()).flatten()
    }

    fn rows<'a>(&'a self, first: usize, count: usize, out: &mut Vec<kernels::encoded::StoredRow<'a>>) {
        let (mut row, end) = (first, first + count);
        while row < end {
            let part = self.part_of(row);
            let n = (end - row).min(self.starts[part + 1] - row);
            self.parts[part].rows_into(row - self.starts[part], n, out);
            row += n;
        }
    }

    fn decode(&self, first: usize, out: &mut [f32]) {
        StoredParts::decode(self, first, out)
    }
}

/// The fraction of zeros from which a packed weight is kept sparse instead:
/// at 50% the sparse products take 0.65-0.75 of the dense ones' time
/// (`cargo xtask bench gemm` on Zen 4), so 40% leaves a margin.
const SPARSE_FROM: f64 = 0.4;

/// The biases [out_i] of stacked modules, side by side ([out_f] in all).
fn stacked_bias(biases: Vec<&HostTensor>, out_f: usize, device: &Device) -> Tensor<1> {
    let values: Vec<f32> = biases.iter().flat_map(|b| b.data.iter().copied()).collect();
    Tensor::from_data(TensorData::new(values, [out_f]), device)
}

/// Rows of a stored weight that [`sampled_zeros`] decodes.
const ZERO_SAMPLE_ROWS: usize = 64;

/// The fraction of zeros in [`ZERO_SAMPLE_ROWS`] rows spread evenly over a
/// stored weight: whether [`Linear::packed_from_stored`] keeps it sparse
/// (pruning leaves about the same fraction in every row; the choice changes
/// the speed of the products, not their values).
fn sampled_zeros(stored: &StoredParts) -> f64 {
    let rows = stored.rows();
    let sampled = rows.min(ZERO_SAMPLE_ROWS);
    let mut row = vec![0.0f32; stored.inner];
    let mut zeros = 0usize;
    for i in 0..sampled {
        stored.decode(i * rows / sampled, &mut row);
        zeros += row.iter().filter(|&&v| v == 0.0).count();
    }
    zeros as f64 / (sampled * stored.inner).max(1) as f64
}

/// Rows of a stored weight that a product of many rows decodes, packs and
/// multiplies at a time ([`gemm::matmul_decoded`]): 1024 rows of a
/// 4864-wide weight are 19 MiB, where the whole LM head of a 150k
/// vocabulary would be hundreds. The products are those of the whole
/// weight packed, bit for bit; a pruned weight, which
/// [`Linear::from_host`] multiplies sparse, gives them too, up to the sign
/// of a sum that is zero ([`sparse_gemm`]). It is multiplied dense here: a
/// first version that listed each chunk's nonzeros for the sparse product
/// took 1.7 times the f32 model's time on PIQA with a 50% pruned
/// Qwen2.5-0.5B.
const STORED_CHUNK_ROWS: usize = 1024;

/// The values of a [`Linear`]'s weight ([out, in]) in host memory, copied
/// on first use by [`kernels::small_matmul`] and shared by clones of the layer.
#[derive(Clone, Default)]
struct HostWeight(Arc<OnceLock<Vec<f32>>>);

impl std::fmt::Debug for HostWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.get() {
            Some(values) => write!(f, "HostWeight({} values)", values.len()),
            None => write!(f, "HostWeight(not copied)"),
        }
    }
}

/// Transposes a row-major [rows, cols] matrix into [cols, rows], bands of
/// output rows in parallel.
pub fn transpose_host(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    use rayon::prelude::*;
    const BLOCK: usize = 32;
    assert_eq!(data.len(), rows * cols, "transpose_host: data is not [rows, cols]");
    let mut out = vec![0.0f32; data.len()];
    if data.is_empty() {
        return out;
    }
    // Output rows c0..c0 + BLOCK are input columns c0..c0 + BLOCK.
    out.par_chunks_mut(BLOCK * rows).enumerate().for_each(|(band, out)| {
        let c0 = band * BLOCK;
        let width = out.len() / rows;
        for r0 in (0..rows).step_by(BLOCK) {
            for r in r0..(r0 + BLOCK).min(rows) {
                let row = &data[r * cols + c0..r * cols + c0 + width];
                for (c, &v) in row.iter().enumerate() {
                    out[c * rows + r] = v;
                }
            }
        }
    });
    out
}

impl Linear {
    /// Builds the layer from a Hugging Face weight [out, in] and optional bias [out].
    pub fn from_host(weight: &HostTensor, bias: Option<&HostTensor>, device: &Device) -> Self {
        Self::concat_from_host(&[(weight, bias)], device)
    }

    /// Builds one layer computing several linear modules of the same input,
    /// their outputs concatenated in the order given: Hugging Face weights
    /// [out_i, in] and biases [out_i] (all present or all absent). One wide
    /// matmul instead of several narrow ones.
    pub fn concat_from_host(parts: &[(&HostTensor, Option<&HostTensor>)], device: &Device) -> Self {
        Self::concat_from_host_packed(parts, device, crate::device::is_host_memory(device) && gemm::fast_kernel_available())
    }

    /// [`Linear::concat_from_host`], the weight packed for [`gemm::matmul`]
    /// when `packed` (host-memory devices only) and a device tensor otherwise.
    fn concat_from_host_packed(parts: &[(&HostTensor, Option<&HostTensor>)], device: &Device, packed: bool) -> Self {
        let in_f = parts[0].0.shape[1];
        let out_f: usize = parts.iter().map(|(w, _)| w.shape[0]).sum();
        let stacked: std::borrow::Cow<'_, [f32]> = match parts {
            [(w, _)] => std::borrow::Cow::Borrowed(&w.data),
            _ => std::borrow::Cow::Owned(parts.iter().flat_map(|(w, _)| w.data.iter().copied()).collect()),
        };
        let zeros = stacked.iter().filter(|&&v| v == 0.0).count();
        let weight = if packed && zeros > 0 && zeros as f64 >= SPARSE_FROM * stacked.len() as f64 {
            LinearWeight::Sparse(Arc::new(sparse_gemm::SparseRhs::from_transposed(&stacked, out_f, in_f)))
        } else if packed {
            LinearWeight::Packed(Arc::new(gemm::PackedRhs::from_transposed(&stacked, out_f, in_f)))
        } else if zeros > 0 && zeros as f64 >= SPARSE_FROM * stacked.len() as f64 && DeviceSparse::supports(device) {
            LinearWeight::DeviceSparse(Arc::new(DeviceSparse::from_rows(&stacked, out_f, in_f, device)))
        } else {
            LinearWeight::Tensor(Tensor::from_data(TensorData::new(transpose_host(&stacked, out_f, in_f), [in_f, out_f]), device))
        };
        let bias = parts.iter().map(|(_, b)| *b).collect::<Option<Vec<_>>>().map(|biases| stacked_bias(biases, out_f, device));
        Linear { weight, bias, host_weight: HostWeight::default() }
    }

    /// [`Linear::concat_from_host`] of stored modules (their rows stacked
    /// in the order given, with optional biases [out_i], all present or all
    /// absent), packed for [`gemm::matmul`] strip by strip straight from the
    /// file, or listed sparse for [`sparse_gemm::matmul`] a few rows at a
    /// time where a sample of its rows is [`SPARSE_FROM`] zero or more (a
    /// pruned weight): the values are the same, but no f32 copy of the
    /// modules, nor of them stacked, is ever made (streaming a model's
    /// layers built three per weight, and faulted in 4 KiB pages, most of
    /// its time). The file's pages are released once read
    /// ([`StoredRows::release`]). On another device or processor the
    /// modules are decoded whole and built by `concat_from_host`.
    pub fn packed_from_stored(parts: Vec<StoredRows>, biases: Option<Vec<&HostTensor>>, device: &Device) -> Self {
        let stored = StoredParts::new(parts);
        if !(crate::device::is_host_memory(device) && gemm::fast_kernel_available()) {
            let decoded: Vec<HostTensor> = stored
                .parts
                .iter()
                .map(|p| {
                    let values = p.decode_all();
                    p.release();
                    HostTensor::new(vec![p.rows(), p.cols()], values)
                })
                .collect();
            let parts: Vec<(&HostTensor, Option<&HostTensor>)> = match &biases {
                Some(biases) => decoded.iter().zip(biases).map(|(w, b)| (w, Some(*b))).collect(),
                None => decoded.iter().map(|w| (w, None)).collect(),
            };
            return Self::concat_from_host(&parts, device);
        }
        let (out_f, inner) = (stored.rows(), stored.inner);
        let decode = |first: usize, out: &mut [f32]| stored.decode(first, out);
        let weight = if sampled_zeros(&stored) >= SPARSE_FROM {
            LinearWeight::Sparse(Arc::new(sparse_gemm::SparseRhs::from_decoded(out_f, inner, &decode)))
        } else {
            LinearWeight::Packed(Arc::new(gemm::PackedRhs::from_decoded(out_f, inner, &decode)))
        };
        stored.parts.iter().for_each(StoredRows::release);
        let bias = biases.map(|biases| stacked_bias(biases, out_f, device));
        Linear { weight, bias, host_weight: HostWeight::default() }
    }

    /// Builds the layer over weights kept in their stored form (see
    /// [`LinearWeight::Stored`]): the modules' rows stacked in the order
    /// given, with optional biases [out_i] (all present or all absent).
    /// Host-memory devices only.
    pub fn from_stored(parts: Vec<StoredRows>, biases: Option<Vec<&HostTensor>>, device: &Device) -> Self {
        assert!(crate::device::is_host_memory(device), "stored weights are read on host-memory devices only");
        let stored = StoredParts::new(parts);
        let bias = biases.map(|biases| stacked_bias(biases, stored.rows(), device));
        Linear { weight: LinearWeight::Stored(Arc::new(stored)), bias, host_weight: HostWeight::default() }
    }

    /// Output features (of all the modules the layer holds).
    pub fn out_features(&self) -> usize {
        match &self.weight {
            LinearWeight::Tensor(weight_t) => weight_t.dims()[1],
            LinearWeight::Packed(packed) => packed.cols(),
            LinearWeight::Sparse(sparse) => sparse.cols(),
            LinearWeight::Stored(stored) => stored.rows(),
            LinearWeight::DeviceSparse(sparse) => sparse.out_features(),
        }
    }

    /// Applies the layer to rows of `x` ([n, in] -> [n, out]). A few rows in
    /// host memory (incremental decoding) go through
    /// [`kernels::small_matmul`], more through [`gemm::matmul`] where the
    /// weight is packed for it, the rest through burn's matmul.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let [rows, _] = x.dims();
        let device = x.device();
        let y = if let LinearWeight::Stored(stored) = &self.weight {
            let cols = stored.rows();
            if rows <= kernels::SMALL_MATMUL_ROWS {
                from_values(kernels::encoded::small_matmul_stored(&host_values(x), rows, cols, stored.as_ref()), [rows, cols], &device)
            } else if gemm::fast_kernel_available() {
                let decode = |first: usize, out: &mut [f32]| stored.decode(first, out);
                let y = gemm::matmul_decoded(&host_values(x), rows, (cols, stored.inner), STORED_CHUNK_ROWS, &decode);
                from_values(y, [rows, cols], &device)
            } else {
                let mut values = vec![0.0f32; cols * stored.inner];
                stored.decode(0, &mut values);
                let transient = Self::concat_from_host(&[(&HostTensor::new(vec![cols, stored.inner], values), None)], &device);
                transient.forward(x)
            }
        } else if rows <= kernels::SMALL_MATMUL_ROWS && crate::device::is_host_memory(&device) {
            // Copied outside the cell's initialization: the copy runs on
            // rayon's pool, which may hand this thread another sequence's
            // step through the same layer while it waits, and a step that
            // waited on the cell's initialization here would wait on itself.
            // Two steps may then both copy it; the first copy is kept.
            let weight = match self.host_weight.0.get() {
                Some(weight) => weight,
                None => {
                    let copy = match &self.weight {
                        LinearWeight::Tensor(weight_t) => {
                            let [inner, cols] = weight_t.dims();
                            transpose_host(&shared_values(weight_t), inner, cols)
                        }
                        LinearWeight::Packed(packed) => packed.transposed(),
                        LinearWeight::Sparse(sparse) => sparse.transposed(),
                        LinearWeight::Stored(_) => unreachable!("stored weights take the branch above"),
                        LinearWeight::DeviceSparse(_) => unreachable!("device-sparse weights live on cubecl devices"),
                    };
                    let _ = self.host_weight.0.set(copy);
                    self.host_weight.0.get().expect("set just now")
                }
            };
            let cols = self.out_features();
            from_values(kernels::small_matmul(&host_values(x), rows, weight, cols), [rows, cols], &device)
        } else {
            match &self.weight {
                LinearWeight::Tensor(weight_t) => x.matmul(weight_t.clone()),
                LinearWeight::Packed(packed) => from_values(gemm::matmul(&host_values(x), rows, packed), [rows, packed.cols()], &device),
                LinearWeight::Sparse(sparse) => {
                    from_values(sparse_gemm::matmul(&host_values(x), rows, sparse), [rows, sparse.cols()], &device)
                }
                LinearWeight::DeviceSparse(sparse) => sparse.matmul(x),
                LinearWeight::Stored(_) => unreachable!("stored weights take the branch above"),
            }
        };
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze::<2>(),
            None => y,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use testkit::cpu;

    #[test]
    fn packed_and_tensor_weights_give_the_same_products() {
        let mut rng = testkit::Rng::new(11);
        let mut host = |shape: Vec<usize>| {
            let data = (0..shape.iter().product::<usize>()).map(|_| rng.next_f32()).collect();
            HostTensor { shape, data }
        };
        let (w1, w2, b1, b2) = (host(vec![40, 70]), host(vec![9, 70]), host(vec![40]), host(vec![9]));
        let parts = [(&w1, Some(&b1)), (&w2, Some(&b2))];
        let (packed, tensor) =
            (Linear::concat_from_host_packed(&parts, &cpu(), true), Linear::concat_from_host_packed(&parts, &cpu(), false));
        assert_eq!((packed.out_features(), tensor.out_features()), (49, 49));
        // Past the small-matmul rows (gemm vs burn's matmul) and within them (both small_matmul).
        for rows in [kernels::SMALL_MATMUL_ROWS + 37, 3] {
            let x = host(vec![rows, 70]);
            let input = || from_values(x.data.clone(), [rows, 70], &cpu());
            let (a, b) = (host_values(packed.forward(input())), host_values(tensor.forward(input())));
            for (e, (a, b)) in a.iter().zip(&b).enumerate() {
                let (r, c) = (e / 49, e % 49);
                let (w, bias) =
                    if c < 40 { (&w1.data[c * 70..][..70], b1.data[c]) } else { (&w2.data[(c - 40) * 70..][..70], b2.data[c - 40]) };
                let want: f64 =
                    x.data[r * 70..][..70].iter().zip(w).map(|(&x, &w)| f64::from(x) * f64::from(w)).sum::<f64>() + f64::from(bias);
                assert!((f64::from(*a) - want).abs() < 1e-4 && (a - b).abs() < 1e-4, "rows {rows}, element {e}: {a} / {b} vs {want}");
            }
        }
    }

    #[test]
    fn products_of_a_weight_decoded_chunk_by_chunk_equal_the_whole_packed_weights() {
        if !gemm::fast_kernel_available() {
            return;
        }
        let mut rng = testkit::Rng::new(5);
        let (n, inner, rows) = (77, 45, kernels::SMALL_MATMUL_ROWS + 29);
        let x: Vec<f32> = (0..rows * inner).map(|_| rng.next_f32() - 0.5).collect();
        // A dense weight, and one with 60% zeros (which the whole layer multiplies sparse).
        let dense: Vec<f32> = (0..n * inner).map(|_| rng.next_f32() - 0.5).collect();
        let pruned: Vec<f32> = dense.iter().map(|&v| if rng.next_f32() < 0.6 { 0.0 } else { v }).collect();
        for weight in [dense, pruned] {
            let whole = Linear::from_host(&HostTensor::new(vec![n, inner], weight.clone()), None, &cpu());
            let want = host_values(whole.forward(from_values(x.clone(), [rows, inner], &cpu())));
            let decode = |first: usize, out: &mut [f32]| out.copy_from_slice(&weight[first * inner..first * inner + out.len()]);
            // Chunks that divide the rows, that leave a rest, and one chunk for all.
            for chunk in [7, 32, 50, n, 1024] {
                let got = gemm::matmul_decoded(&x, rows, (n, inner), chunk, &decode);
                assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "chunks of {chunk} rows differ");
            }
        }
    }

    #[test]
    fn transpose_host_swaps_rows_and_columns() {
        assert_eq!(transpose_host(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }
}
