//! Calibration stage of subprune: for every linear module inside each
//! decoder layer, Wanda's statistic — the running mean over calibration
//! samples of the squared L2 norm of each input column — plus the token count.
//!
//! Sequential (the default, as Wanda's reference): the layer-0 inputs are
//! captured once; then, layer by layer, the statistics of the dense layer are
//! gathered, the layer is pruned with the same method and pattern the later
//! `score` + `mask` stages will use, and the pruned layer is re-run to give
//! the next layer its inputs. One-shot: every layer's statistics come from
//! the dense model in one pass.

use std::collections::{BTreeMap, HashMap};

use artifacts::ModuleStats;
use burn::tensor::{Device, Tensor, TensorData};
use model::llama::LinearObserver;
use model::{LoadedModel, ModelError};
use sparsity::{Group, Method, Pattern, SparsityError};

/// Errors of calibration.
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    /// The model failed to build or run.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A pruning kernel refused its input.
    #[error(transparent)]
    Sparsity(#[from] SparsityError),
    /// Samples that cannot be used.
    #[error("{0}")]
    Input(String),
}

/// Options of a calibration run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CalibrateOptions {
    /// Pattern the layers are pruned with as calibration goes (sequential mode).
    pub pattern: Pattern,
    /// Comparison group of unstructured pruning.
    pub group: Group,
    /// Gather every layer's statistics from the dense model in one pass.
    pub oneshot: bool,
    /// Samples per forward pass: a throughput knob only.
    pub batch: usize,
}

/// Statistics of every linear module, and the masks applied while calibrating
/// (empty in one-shot mode).
#[derive(Debug, Clone)]
pub struct Calibration {
    /// One entry per linear module, in layer and module order.
    pub stats: Vec<ModuleStats>,
    /// Keep-masks (true = kept) applied internally, by module name.
    pub applied_masks: BTreeMap<String, Vec<bool>>,
}

/// Running Wanda statistics of one linear module.
#[derive(Debug, Clone)]
struct Accumulator {
    n_samples: u64,
    n_tokens: u64,
    sum_sq: Vec<f64>,
    scaler_row: Vec<f32>,
}

impl Accumulator {
    fn new(in_features: usize) -> Self {
        Accumulator { n_samples: 0, n_tokens: 0, sum_sq: vec![0.0; in_features], scaler_row: vec![0.0; in_features] }
    }

    /// Adds one sample whose column sums of squares are `column_sq`, with
    /// the reference's operations and f32 rounding:
    /// `scaler *= n / (n + 1); scaler += norm(x_j)^2 / (n + 1)`.
    fn add_sample(&mut self, column_sq: &[f32], tokens: usize) {
        let n = self.n_samples;
        let keep = (n as f64 / (n + 1) as f64) as f32;
        let denom = (n + 1) as f32;
        for ((scaler, total), &sq) in self.scaler_row.iter_mut().zip(self.sum_sq.iter_mut()).zip(column_sq) {
            let norm = sq.sqrt();
            *scaler = *scaler * keep + norm * norm / denom;
            *total += f64::from(sq);
        }
        self.n_samples += 1;
        self.n_tokens += tokens as u64;
    }
}

/// Collects the statistics of the linear inputs of one layer for batches of
/// `batch` samples of `seq` tokens.
struct StatsObserver<'a> {
    accumulators: &'a mut HashMap<String, Accumulator>,
    batch: usize,
    seq: usize,
}

impl LinearObserver for StatsObserver<'_> {
    fn observe(&mut self, modules: &[String], input: &Tensor<2>) {
        let [_, in_features] = input.dims();
        let per_sample = input.clone().reshape([self.batch, self.seq, in_features]).powi_scalar(2).sum_dim(1);
        let values: Vec<f32> = per_sample.into_data().try_into_vec().expect("f32 statistics from the device");
        for module in modules {
            let acc = self.accumulators.entry(module.clone()).or_insert_with(|| Accumulator::new(in_features));
            for sample in values.chunks_exact(in_features) {
                acc.add_sample(sample, self.seq);
            }
        }
    }
}

/// The values of a hidden-state tensor.
fn host_values(tensor: Tensor<2>) -> Vec<f32> {
    tensor.into_data().try_into_vec().expect("f32 hidden states from the device")
}

/// Groups consecutive samples of equal length into batches of at most `batch`.
fn batches(samples: &[Vec<u32>], batch: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < samples.len() {
        let mut end = start + 1;
        while end < samples.len() && end - start < batch.max(1) && samples[end].len() == samples[start].len() {
            end += 1;
        }
        out.push(start..end);
        start = end;
    }
    out
}

/// The Wanda statistics of `loaded` on `samples`, pruning as it goes unless
/// `options.oneshot`. `on_layer` is called after each layer with its index.
pub fn calibrate(
    loaded: &LoadedModel,
    device: &Device,
    samples: &[Vec<u32>],
    options: &CalibrateOptions,
    mut on_layer: impl FnMut(usize),
) -> Result<Calibration, CalibrateError> {
    if samples.is_empty() || samples.iter().any(Vec::is_empty) {
        return Err(CalibrateError::Input("expected at least one non-empty calibration sample".into()));
    }
    let config = &loaded.config;
    let mut network = loaded.build(device)?;
    let mut weights = loaded.weights.clone();
    let groups = batches(samples, options.batch);
    // Hidden states between layers are kept as host values, and each pass gets
    // a tensor of its own: on the CPU backend a layer then reads its input
    // without a copy, and re-running the pruned layer needs the input again.
    let width = config.hidden_size();
    let mut hidden: Vec<Vec<f32>> = groups.iter().map(|g| network.embed(&samples[g.clone()]).map(host_values)).collect::<Result<_, _>>()?;
    let tensor = |values: Vec<f32>| {
        let rows = values.len() / width;
        Tensor::<2>::from_data(TensorData::new(values, [rows, width]), device)
    };
    let mut contexts = HashMap::new();
    for g in &groups {
        let key = (g.len(), samples[g.start].len());
        contexts.entry(key).or_insert_with(|| network.context(key.0, key.1));
    }

    let mut stats = Vec::new();
    let mut applied_masks = BTreeMap::new();
    for layer in 0..config.num_layers() {
        let mut accumulators = HashMap::new();
        let mut outputs = Vec::with_capacity(hidden.len());
        if options.oneshot {
            for (g, x) in groups.iter().zip(hidden.drain(..)) {
                let key = (g.len(), samples[g.start].len());
                let mut observer = StatsObserver { accumulators: &mut accumulators, batch: key.0, seq: key.1 };
                outputs.push(host_values(network.layer_forward(layer, tensor(x), &contexts[&key], Some(&mut observer))));
            }
        } else {
            for (g, x) in groups.iter().zip(&hidden) {
                let key = (g.len(), samples[g.start].len());
                let mut observer = StatsObserver { accumulators: &mut accumulators, batch: key.0, seq: key.1 };
                // The dense layer's output is not needed: the pruned layer is run for the next one.
                network.layer_observe_inputs(layer, tensor(x.clone()), &contexts[&key], &mut observer);
            }
        }
        for (module, out_features, in_features) in config.linear_modules(layer) {
            let acc = accumulators.remove(&module).ok_or_else(|| CalibrateError::Input(format!("no input was observed for {module}")))?;
            if !options.oneshot {
                let name = format!("{module}.weight");
                let weight = weights.get_mut(&name).ok_or_else(|| CalibrateError::Input(format!("the model has no weight {name}")))?;
                let scores = sparsity::scores(Method::Wanda, &weight.data, out_features, in_features, Some(&acc.scaler_row))?;
                let keep = sparsity::keep_mask(&scores, out_features, in_features, options.pattern, options.group)?;
                sparsity::apply_mask(&mut weight.data, &keep)?;
                applied_masks.insert(module.clone(), keep);
            }
            stats.push(ModuleStats {
                layer: layer as u32,
                module,
                in_features: in_features as u32,
                n_tokens: acc.n_tokens,
                n_samples: acc.n_samples,
                sum_sq: acc.sum_sq.iter().map(|&v| v as f32).collect(),
                scaler_row: acc.scaler_row,
            });
        }
        // The last layer's pruned output feeds nothing that calibration measures.
        if !options.oneshot && layer + 1 < config.num_layers() {
            network.rebuild_layer(&weights, layer)?;
            for (g, x) in groups.iter().zip(hidden.drain(..)) {
                let key = (g.len(), samples[g.start].len());
                outputs.push(host_values(network.layer_forward(layer, tensor(x), &contexts[&key], None)));
            }
        }
        hidden = outputs;
        on_layer(layer);
    }
    Ok(Calibration { stats, applied_masks })
}
