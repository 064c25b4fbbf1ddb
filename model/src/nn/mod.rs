//! The layers every decoder is made of, one implementation each: linear
//! layers (device tensors, packed or sparse host weights), RMSNorm, rotary
//! embeddings, grouped-query attention (full, windowed, soft-capped; host,
//! tensor and cached paths), gated MLPs, the key/value cache, and the
//! observer that sees every linear input.
//!
//! Each layer computes either with the fused host kernels of
//! [`kernels`] (tensors in host memory, [`Kernels::Host`]) or with
//! composed burn tensor ops (every device, [`Kernels::Tensor`]); the results
//! agree up to float rounding.

pub mod attention;
pub mod cache;
pub mod device_sparse;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod observer;
pub mod rope;

use burn::tensor::{Device, Tensor, TensorData};

pub use attention::{Attention, HeadShape};
pub use cache::{HostKv, KvCache, LayerKv};
pub use linear::{transpose_host, Linear};
pub use mlp::{Activation, Mlp};
pub use norm::RmsNorm;
pub use observer::LinearObserver;
pub use rope::RopeScaling;

/// How the element-wise parts of a forward pass (norms, rotary embedding,
/// softmax, gating) are computed; the results are the same either way, up
/// to float rounding. (Matmuls are chosen by [`Linear`] and the attention:
/// [`kernels::gemm`] on host memory with AVX-512, burn's elsewhere.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// The fused kernels of [`kernels`] on the tensors' values: for
    /// devices whose tensors live in host memory, where that costs no copy.
    Host,
    /// Composed burn tensor ops: for every device.
    Tensor,
}

impl Kernels {
    /// [`Kernels::Host`] for devices whose tensors live in host memory, else [`Kernels::Tensor`].
    pub fn for_device(device: &Device) -> Self {
        if crate::device::is_host_memory(device) {
            Kernels::Host
        } else {
            Kernels::Tensor
        }
    }
}

/// The f32 values of a tensor; without a copy when it lives in host memory and nothing else holds it.
pub(crate) fn host_values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor.into_data().try_into_vec::<f32>().expect("f32 activations")
}

/// The f32 values of a tensor that something else still holds. The values
/// come from a fresh tensor, which moves them out in one piece: converting
/// the shared one would copy them element by element (on the cpu device,
/// many times slower).
pub fn shared_values<const D: usize>(tensor: &Tensor<D>) -> Vec<f32> {
    host_values(tensor.clone().mul_scalar(1.0))
}

/// A tensor of `shape` holding `values`.
pub(crate) fn from_values<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// `cap * tanh(x / cap)`.
pub(crate) fn soft_cap<const D: usize>(x: Tensor<D>, cap: f64) -> Tensor<D> {
    (x / cap).tanh() * cap
}
