//! RMSNorm with a learned scale, `x / rms(x) * w`, or `x / rms(x) * (1 + w)`
//! for the families that store the scale as an offset from one (Gemma).

use burn::tensor::{Device, Tensor, TensorData};

use super::{from_values, host_values, Kernels};
use crate::weights::HostTensor;

/// Root-mean-square normalisation of rows with a learned scale.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    scale: Tensor<1>,
    scale_host: Vec<f32>,
    eps: f64,
}

impl RmsNorm {
    /// Builds the norm from its Hugging Face weight `w`: the scale is `w`,
    /// or `offset + w` computed in f32 when `offset` is not zero (Gemma's `1 + w`).
    pub fn from_host(weight: &HostTensor, offset: f32, eps: f64, device: &Device) -> Self {
        let scale_host: Vec<f32> = if offset == 0.0 { weight.data.clone() } else { weight.data.iter().map(|w| offset + w).collect() };
        let scale = Tensor::from_data(TensorData::new(scale_host.clone(), [scale_host.len()]), device);
        RmsNorm { scale, scale_host, eps }
    }

    /// The scale each normalised value is multiplied by, in host memory.
    pub fn scale_host(&self) -> &[f32] {
        &self.scale_host
    }

    /// Epsilon added to the mean square.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// Normalises each row of `x` ([n, width]) with tensor ops.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let mean_sq = x.clone().powi_scalar(2).mean_dim(1);
        let inv = (mean_sq + self.eps).sqrt().recip();
        x * inv * self.scale.clone().unsqueeze::<2>()
    }

    /// Normalises each row of `x` with the given kernels.
    pub fn forward_with(&self, x: Tensor<2>, kernels: Kernels) -> Tensor<2> {
        match kernels {
            Kernels::Host => {
                let (dims, device) = (x.dims(), x.device());
                from_values(kernels::rms_norm(&host_values(x), &self.scale_host, self.eps as f32), dims, &device)
            }
            Kernels::Tensor => self.forward(x),
        }
    }

    /// `(x, norm(x))`.
    pub fn forward_keep(&self, x: Tensor<2>, kernels: Kernels) -> (Tensor<2>, Tensor<2>) {
        match kernels {
            Kernels::Host => {
                let (dims, device) = (x.dims(), x.device());
                let values = host_values(x);
                let normed = kernels::rms_norm(&values, &self.scale_host, self.eps as f32);
                (from_values(values, dims, &device), from_values(normed, dims, &device))
            }
            Kernels::Tensor => (x.clone(), self.forward(x)),
        }
    }

    /// The residual add and this norm: `(x + o, norm(x + o))`.
    pub fn add_forward(&self, x: Tensor<2>, o: Tensor<2>, kernels: Kernels) -> (Tensor<2>, Tensor<2>) {
        match kernels {
            Kernels::Host => {
                let (dims, device) = (x.dims(), x.device());
                let (mut sum, mut normed) = (host_values(x), host_values(o));
                kernels::add_rms_norm(&mut sum, &mut normed, &self.scale_host, self.eps as f32);
                (from_values(sum, dims, &device), from_values(normed, dims, &device))
            }
            Kernels::Tensor => {
                let h = x + o;
                (h.clone(), self.forward(h))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use testkit::cpu;

    #[test]
    fn rms_norm_matches_hand_computation() {
        let device = cpu();
        let norm = RmsNorm::from_host(&HostTensor::new(vec![2], vec![1.0, 2.0]), 0.0, 0.0, &device);
        // rms of (3, 4) = sqrt(12.5) = 3.5355; outputs 3/3.5355 * 1, 4/3.5355 * 2.
        let out = norm
            .forward(Tensor::<2>::from_data(TensorData::new(vec![3.0f32, 4.0], [1, 2]), &device))
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        assert!((out[0] - 0.848_528_1).abs() < 1e-6 && (out[1] - 2.262_741_7).abs() < 1e-6, "{out:?}");
    }

    #[test]
    fn an_offset_scales_by_one_plus_the_weight_on_both_kernels() {
        let device = cpu();
        // Weight (0, 1) with offset 1 scales by (1, 2): the same outputs as above.
        let norm = RmsNorm::from_host(&HostTensor::new(vec![2], vec![0.0, 1.0]), 1.0, 0.0, &device);
        for kernels in [Kernels::Host, Kernels::Tensor] {
            let x = Tensor::<2>::from_data(TensorData::new(vec![3.0f32, 4.0], [1, 2]), &device);
            let out = norm.forward_with(x, kernels).into_data().try_into_vec::<f32>().unwrap();
            assert!((out[0] - 0.848_528_1).abs() < 1e-6 && (out[1] - 2.262_741_7).abs() < 1e-6, "{kernels:?}: {out:?}");
        }
    }
}
