//! The hook through which calibration sees the input of every linear module.

use burn::tensor::Tensor;

/// Receives the input of every linear module during a forward pass, e.g. to
/// accumulate calibration statistics.
pub trait LinearObserver {
    /// Called with `input` [tokens, in_features], the input rows shared by
    /// the linear `modules` (Hugging Face names without `.weight`; q, k and v
    /// share one input, as do gate and up).
    fn observe(&mut self, modules: &[String], input: &Tensor<2>);
}

/// Reports `x` as the input of the modules `names` of the layer `prefix`
/// (`model.layers.L`) to `observer`, if there is one.
pub(crate) fn observe(observer: &mut Option<&mut dyn LinearObserver>, prefix: &str, names: &[&str], x: &Tensor<2>) {
    if let Some(obs) = observer.as_deref_mut() {
        let modules: Vec<String> = names.iter().map(|name| format!("{prefix}.{name}")).collect();
        obs.observe(&modules, x);
    }
}
