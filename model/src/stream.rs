//! What the stages that run a model one decoder layer at a time share:
//! equal-length batches of sequences, their hidden states kept as host
//! values between layers, and the runner that takes every batch through a
//! layer (in parallel, one core each, where tensors live in host memory).

use std::ops::Range;

use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;

use crate::device::{is_host_memory, BlasThreads};

/// Runs of at most `batch` consecutive sequences of equal length: the
/// batches a layer-by-layer run takes through each layer.
pub fn equal_length_batches(sequences: &[Vec<u32>], batch: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < sequences.len() {
        let mut end = start + 1;
        while end < sequences.len() && end - start < batch.max(1) && sequences[end].len() == sequences[start].len() {
            end += 1;
        }
        out.push(start..end);
        start = end;
    }
    out
}

/// The values of a hidden-state tensor [rows, width].
pub fn hidden_values(tensor: Tensor<2>) -> Vec<f32> {
    tensor.into_data().try_into_vec().expect("f32 hidden states from the device")
}

/// A hidden-state tensor [values.len() / width, width] on `device`.
pub fn hidden_tensor(values: Vec<f32>, width: usize, device: &Device) -> Tensor<2> {
    let rows = values.len() / width;
    Tensor::from_data(TensorData::new(values, [rows, width]), device)
}

/// Takes every batch through one piece of work (a layer): in parallel on a
/// host-memory device with several batches, each matmul then on one thread
/// (independent work per core instead of BLAS threads that synchronise, and
/// spin, at every small matmul); one after another elsewhere.
pub struct BatchRunner {
    parallel: bool,
    _threads: Option<BlasThreads>,
}

impl BatchRunner {
    /// A runner for `batches` batches on `device`; holds the BLAS thread cap while it lives.
    pub fn new(device: &Device, batches: usize) -> Self {
        let parallel = is_host_memory(device) && batches > 1;
        let threads = parallel.then(|| BlasThreads::limit(rayon::current_num_threads() / batches));
        BatchRunner { parallel, _threads: threads }
    }

    /// `work(index, item)` for every batch's item, results in batch order.
    pub fn map<I: Send, T: Send>(&self, items: Vec<I>, work: impl Fn(usize, I) -> T + Sync) -> Vec<T> {
        if self.parallel {
            items.into_par_iter().enumerate().map(|(index, item)| work(index, item)).collect()
        } else {
            items.into_iter().enumerate().map(|(index, item)| work(index, item)).collect()
        }
    }
}
