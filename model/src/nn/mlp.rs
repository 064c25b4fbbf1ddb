//! Gated MLPs `down(act(gate(x)) * up(x))`, with SiLU (SwiGLU: Llama, Qwen,
//! Mistral, Phi-3) or GELU with the tanh approximation (GeGLU: Gemma).

use burn::tensor::activation::silu;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::{from_values, host_values, Kernels, Linear};

/// The activation of an MLP's gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// `x * sigmoid(x)`.
    Silu,
    /// GELU with the tanh approximation (PyTorch's `gelu(approximate="tanh")`).
    GeluTanh,
}

/// GELU with the tanh approximation, with tensor ops.
pub(crate) fn gelu_tanh(x: Tensor<2>) -> Tensor<2> {
    let inner = (x.clone() + x.clone().powi_scalar(3) * 0.044_715) * (2.0 / std::f64::consts::PI).sqrt();
    x * (inner.tanh() + 1.0) * 0.5
}

/// A gated MLP.
#[derive(Debug, Clone)]
pub struct Mlp {
    /// Gate and up projections as one layer: outputs `[gate, up]` side by side.
    pub gate_up_proj: Linear,
    /// Down projection.
    pub down_proj: Linear,
    intermediate: usize,
    activation: Activation,
}

impl Mlp {
    /// The MLP of a fused gate/up projection of width `2 * intermediate` and a down projection.
    pub fn new(gate_up_proj: Linear, down_proj: Linear, intermediate: usize, activation: Activation) -> Self {
        Mlp { gate_up_proj, down_proj, intermediate, activation }
    }

    /// `act(gate(x)) * up(x)` [n, intermediate], the input of the down projection.
    pub fn gate(&self, x: Tensor<2>, kernels: Kernels) -> Tensor<2> {
        let gate_up = self.gate_up_proj.forward(x);
        let i = self.intermediate;
        match kernels {
            Kernels::Host => {
                let (device, [n, _]) = (gate_up.device(), gate_up.dims());
                let values = host_values(gate_up);
                let gated = match self.activation {
                    Activation::Silu => kernels::silu_mul(&values, i),
                    Activation::GeluTanh => kernels::gelu_tanh_mul(&values, i),
                };
                from_values(gated, [n, i], &device)
            }
            Kernels::Tensor => {
                let gate = gate_up.clone().narrow(1, 0, i);
                let act = match self.activation {
                    Activation::Silu => silu(gate),
                    Activation::GeluTanh => gelu_tanh(gate),
                };
                act * gate_up.narrow(1, i, i)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn gelu_tanh_matches_the_formula_on_both_kernels() {
        #[allow(deprecated)]
        let device = Device::ndarray();
        let xs = [-3.0f32, -0.5, 0.0, 0.7, 2.5];
        let out = gelu_tanh(Tensor::from_data(TensorData::new(xs.to_vec(), [1, 5]), &device)).into_data().try_into_vec::<f32>().unwrap();
        // The host kernel gates an up half of ones.
        let host = kernels::gelu_tanh_mul(&[xs.to_vec(), vec![1.0; 5]].concat(), 5);
        for ((x, y), h) in xs.iter().zip(out).zip(host) {
            let x = f64::from(*x);
            let want = 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
            assert!((f64::from(y) - want).abs() < 1e-6, "gelu_tanh({x}) = {y}, want {want}");
            assert!((f64::from(h) - want).abs() < 1e-6, "host gelu_tanh({x}) = {h}, want {want}");
        }
    }
}
