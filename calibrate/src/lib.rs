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

use artifacts::{InputHessian, ModuleStats};
use burn::tensor::{Device, Tensor};
use model::stream::{equal_length_batches, hidden_tensor, hidden_values, BatchRunner};
use model::LinearObserver;
use model::{Decoder, HostTensor, LoadedModel, MaskedWeights, ModelError, ReplacedWeights};
use rayon::prelude::*;
use sparsity::owl::{layer_sparsities, OutlierCount, SparsityProfile};
use sparsity::sparsegpt::{sparsegpt_f32, Hessian, PreparedHessian, SparseGptError, SparseGptOptions};
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
    /// SparseGPT failed on a module.
    #[error("SparseGPT on {module}: {source}")]
    SparseGpt {
        /// The module.
        module: String,
        /// What failed.
        #[source]
        source: SparseGptError,
    },
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
    /// How the layers are pruned (sequential mode): by Wanda's or RIA's
    /// scores, or by SparseGPT (which also gathers the inputs' Hessians).
    pub method: Method,
    /// SparseGPT's column block and dampening (with `method` SparseGPT).
    pub sparsegpt: SparseGptSettings,
    /// How the pattern's sparsity is spread over the layers: uniform, or
    /// OWL's per-layer sparsities from a first, dense pass (unstructured only).
    pub profile: SparsityProfile,
    /// Gather every layer's statistics from the dense model in one pass.
    pub oneshot: bool,
    /// Samples per forward pass: a throughput knob only.
    pub batch: usize,
    /// Precision the hidden states are kept in between layers.
    pub activations: Activations,
}

/// SparseGPT's settings: columns pruned and updated together, and the
/// dampening of the Hessian's diagonal as a fraction of its mean.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SparseGptSettings {
    /// Columns per block (the reference's default: 128).
    pub blocksize: usize,
    /// Dampening fraction (the reference's default: 0.01).
    pub percdamp: f64,
}

impl Default for SparseGptSettings {
    fn default() -> Self {
        SparseGptSettings { blocksize: sparsity::sparsegpt::DEFAULT_BLOCKSIZE, percdamp: sparsity::sparsegpt::DEFAULT_PERCDAMP }
    }
}

impl SparseGptSettings {
    /// SparseGPT's options for `pattern` with these settings.
    pub fn options(self, pattern: Pattern) -> SparseGptOptions {
        SparseGptOptions { pattern, blocksize: self.blocksize, percdamp: self.percdamp }
    }
}

/// Precision of the hidden states kept between decoder layers for every
/// sample. Each layer still computes in f32 (on the values read back) and
/// the statistics still accumulate in f64; f16 and bf16 halve the memory the
/// samples' hidden states take, which with a large model and many samples is
/// most of what calibration holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activations {
    /// f32: the values as computed.
    #[default]
    F32,
    /// IEEE half precision, rounded to nearest even.
    F16,
    /// bfloat16, rounded to nearest even.
    Bf16,
}

impl Activations {
    /// The name used on the command line and in provenance.
    pub fn as_str(self) -> &'static str {
        match self {
            Activations::F32 => "f32",
            Activations::F16 => "f16",
            Activations::Bf16 => "bf16",
        }
    }
}

/// Hidden states of one group of samples as kept between layers.
enum Hidden {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
    Bf16(Vec<half::bf16>),
}

impl Hidden {
    fn keep(values: Vec<f32>, precision: Activations) -> Self {
        match precision {
            Activations::F32 => Hidden::F32(values),
            Activations::F16 => Hidden::F16(values.iter().map(|&v| half::f16::from_f32(v)).collect()),
            Activations::Bf16 => Hidden::Bf16(values.iter().map(|&v| half::bf16::from_f32(v)).collect()),
        }
    }

    fn values(&self) -> std::borrow::Cow<'_, [f32]> {
        match self {
            Hidden::F32(v) => std::borrow::Cow::Borrowed(v),
            Hidden::F16(v) => std::borrow::Cow::Owned(v.iter().map(|h| h.to_f32()).collect()),
            Hidden::Bf16(v) => std::borrow::Cow::Owned(v.iter().map(|h| h.to_f32()).collect()),
        }
    }

    fn into_values(self) -> Vec<f32> {
        match self {
            Hidden::F32(v) => v,
            other => other.values().into_owned(),
        }
    }
}

/// Statistics of every linear module, and the masks applied while calibrating
/// (empty in one-shot mode).
#[derive(Debug, Clone)]
pub struct Calibration {
    /// One entry per linear module, in layer and module order.
    pub stats: Vec<ModuleStats>,
    /// Digest (sha256 of the keep bits packed as in a mask artifact) of the
    /// mask applied internally to each module, by module name: enough to
    /// check it against another mask, at a size that does not grow with the
    /// model (the masks themselves are as many bits as the model has weights).
    pub applied_masks: BTreeMap<String, String>,
    /// Each layer's sparsity under an OWL profile (from the dense model's
    /// statistics); `None` for a uniform profile.
    pub layer_sparsities: Option<Vec<f64>>,
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

/// Sums over each sample's tokens of the squared input columns of one
/// linear input, as one layer run over a group of samples reports them.
struct ObservedSquares {
    /// The modules that read this input.
    modules: Vec<String>,
    /// Input columns.
    in_features: usize,
    /// `[batch, in_features]`: one row of sums per sample of the group.
    per_sample: Vec<f32>,
    /// Each sample's Gram matrix `XᵀX` (SparseGPT), its upper triangle row
    /// by row (`in_features * (in_features + 1) / 2` values per sample),
    /// kept per sample so that the running sum adds the samples in their
    /// order whatever ran in parallel.
    grams: Option<Vec<f64>>,
}

/// Records, for every linear input a layer reports, the sum over each
/// sample's tokens of the square of every input column. Sums are kept per
/// group, so that groups can run in parallel and still be added to the
/// running statistics in sample order.
struct SquaresObserver {
    batch: usize,
    seq: usize,
    grams: bool,
    observed: Vec<ObservedSquares>,
}

impl SquaresObserver {
    fn new(batch: usize, seq: usize, grams: bool) -> Self {
        SquaresObserver { batch, seq, grams, observed: Vec::new() }
    }
}

impl LinearObserver for SquaresObserver {
    fn observe(&mut self, modules: &[String], input: &Tensor<2>) {
        let [_, in_features] = input.dims();
        let per_sample = column_squares(input, self.batch, self.seq);
        let grams = self.grams.then(|| sample_grams(&model::shared_values(input), self.seq, in_features));
        self.observed.push(ObservedSquares { modules: modules.to_vec(), in_features, per_sample, grams });
    }
}

/// Tokens whose products the f32 gemm kernel sums at a time for a Gram
/// matrix; the blocks' sums are added in f64. On SmolLM2, summing whole
/// 512-token samples in f32 put the layer-0 Hessians up to 1.4e-7 of
/// their largest entry from ones summed in f64 from an f64 forward pass
/// (64-token blocks: 2e-8 to 1.2e-7), and SparseGPT's 2:4 mask 10.18% of
/// its bits from the float64 reference's (64-token blocks: 7.97%).
const GRAM_BLOCK_TOKENS: usize = 64;

/// Values of the upper triangle of an `n` x `n` matrix.
fn triangle_len(n: usize) -> usize {
    n * (n + 1) / 2
}

/// Each sample's Gram matrix `XₛᵀXₛ` of `values` [samples * seq, n], its
/// upper triangle row by row ([`triangle_len`] values): the f32 gemm kernel
/// (whose sums do not depend on threads) over blocks of
/// [`GRAM_BLOCK_TOKENS`] tokens, the blocks added in f64 in order.
fn sample_grams(values: &[f32], seq: usize, n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(values.len() / seq.max(1) / n.max(1) * triangle_len(n));
    let mut transposed = vec![0.0f32; n * GRAM_BLOCK_TOKENS];
    for sample in values.chunks_exact(seq * n) {
        let mut gram = vec![0.0f64; triangle_len(n)];
        for block in sample.chunks(GRAM_BLOCK_TOKENS * n) {
            let tokens = block.len() / n;
            let transposed = &mut transposed[..n * tokens];
            for (t, row) in block.chunks_exact(n).enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    transposed[j * tokens + t] = v;
                }
            }
            let rhs = kernels::gemm::PackedRhs::from_rows(block, tokens, n);
            let product = kernels::gemm::matmul(transposed, n, &rhs);
            // Only the upper triangle: the Hessian is made symmetric from it.
            let upper = (0..n).flat_map(|i| &product[i * n + i..(i + 1) * n]);
            for (total, &g) in gram.iter_mut().zip(upper) {
                *total += f64::from(g);
            }
        }
        out.extend(gram);
    }
    out
}

/// The running sum of the Gram matrices of one input of a layer (SparseGPT),
/// their upper triangles row by row, as [`sample_grams`] gives them.
struct GramAccumulator {
    modules: Vec<String>,
    in_features: usize,
    sum: Vec<f64>,
    n_samples: u64,
    n_tokens: u64,
}

impl GramAccumulator {
    /// The Hessian `2/n Σ XᵀX`, made exactly symmetric from the upper
    /// triangle (so that it equals what the artifact's triangle gives back).
    fn hessian(self, layer: usize) -> Result<(InputHessian, Hessian), SparsityError> {
        let n = self.in_features;
        let mut row = InputHessian {
            layer: layer as u32,
            modules: self.modules,
            in_features: n as u32,
            n_samples: self.n_samples,
            n_tokens: self.n_tokens,
            upper: self.sum,
        };
        let hessian = Hessian::from_gram_sum(row.full(), n, self.n_samples as usize)?;
        row.upper = InputHessian::upper_of(hessian.values(), n);
        Ok((row, hessian))
    }
}

/// Sums over the tokens of each of `batch` samples of `seq` tokens of the
/// squares of the columns of `input` [batch * seq, in], as [batch, in]. On
/// host memory the sums are taken in f64 and rounded once.
fn column_squares(input: &Tensor<2>, batch: usize, seq: usize) -> Vec<f32> {
    let [_, in_features] = input.dims();
    if model::device::is_host_memory(&input.device()) {
        let values = model::shared_values(input);
        let mut out = Vec::with_capacity(batch * in_features);
        let mut sums = vec![0.0f64; in_features];
        for sample in values.chunks_exact(seq * in_features) {
            sums.fill(0.0);
            for row in sample.chunks_exact(in_features) {
                for (sum, &x) in sums.iter_mut().zip(row) {
                    *sum += f64::from(x) * f64::from(x);
                }
            }
            out.extend(sums.iter().map(|&s| s as f32));
        }
        out
    } else {
        let per_sample = input.clone().reshape([batch, seq, in_features]).powi_scalar(2).sum_dim(1);
        per_sample.into_data().try_into_vec().expect("f32 statistics from the device")
    }
}

/// Adds what each group's run observed to the running statistics, group by
/// group and sample by sample, so that the f32 running mean sees the samples
/// in their order whatever ran in parallel.
fn accumulate(
    accumulators: &mut HashMap<String, Accumulator>,
    grams: &mut BTreeMap<String, GramAccumulator>,
    observed: Vec<(usize, Vec<ObservedSquares>)>,
) {
    for (seq, inputs) in observed {
        for input in inputs {
            if let Some(sample_grams) = &input.grams {
                let n = input.in_features;
                let acc = grams.entry(input.modules[0].clone()).or_insert_with(|| GramAccumulator {
                    modules: input.modules.clone(),
                    in_features: n,
                    sum: vec![0.0; triangle_len(n)],
                    n_samples: 0,
                    n_tokens: 0,
                });
                for gram in sample_grams.chunks_exact(triangle_len(n)) {
                    for (total, &g) in acc.sum.iter_mut().zip(gram) {
                        *total += g;
                    }
                    acc.n_samples += 1;
                    acc.n_tokens += seq as u64;
                }
            }
            for module in input.modules {
                let acc = accumulators.entry(module).or_insert_with(|| Accumulator::new(input.in_features));
                for sample in input.per_sample.chunks_exact(input.in_features) {
                    acc.add_sample(sample, seq);
                }
            }
        }
    }
}

/// The digest [`Calibration::applied_masks`] holds for a keep-mask (true = kept).
pub fn mask_digest(keep: &[bool]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(sparsity::pack_bits(keep))))
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
    calibrate_layers(loaded, device, samples, options, &mut on_layer, &mut |_| {}, &mut |_, _, _, _| {})
}

/// [`calibrate`] with SparseGPT (`options.method`), handing each input's
/// Hessian to `on_hessian` as its layer is done (layer by layer, in module
/// name order), so that the Hessians are written without being held, and
/// (sequential mode) each module's name, input count, keep flags and
/// updated weight (`[out, in]`, row-major) to `on_pruned` as it is pruned: the mask and
/// values `mask --hessians` would compute again from the Hessians.
pub fn calibrate_with_hessians(
    loaded: &LoadedModel,
    device: &Device,
    samples: &[Vec<u32>],
    options: &CalibrateOptions,
    mut on_layer: impl FnMut(usize),
    mut on_hessian: impl FnMut(InputHessian),
    mut on_pruned: impl FnMut(&str, usize, &[bool], &[f32]),
) -> Result<Calibration, CalibrateError> {
    if options.method != Method::SparseGpt {
        return Err(CalibrateError::Input(format!("Hessians are gathered for SparseGPT; the method is {}", options.method)));
    }
    calibrate_layers(loaded, device, samples, options, &mut on_layer, &mut on_hessian, &mut on_pruned)
}

/// [`calibrate`], its callbacks trait objects (OWL's dense pass calls it again).
fn calibrate_layers(
    loaded: &LoadedModel,
    device: &Device,
    samples: &[Vec<u32>],
    options: &CalibrateOptions,
    on_layer: &mut dyn FnMut(usize),
    on_hessian: &mut dyn FnMut(InputHessian),
    on_pruned: &mut dyn FnMut(&str, usize, &[bool], &[f32]),
) -> Result<Calibration, CalibrateError> {
    if samples.is_empty() || samples.iter().any(Vec::is_empty) {
        return Err(CalibrateError::Input("expected at least one non-empty calibration sample".into()));
    }
    let layer_sparsities = match (options.profile, options.pattern) {
        (SparsityProfile::Uniform, _) => None,
        (SparsityProfile::Owl { outlier_multiple, lambda }, Pattern::Unstructured { sparsity }) => {
            // OWL's first pass: the dense model's statistics give each layer's outlier ratio.
            let dense_options = CalibrateOptions { oneshot: true, profile: SparsityProfile::Uniform, method: Method::Wanda, ..*options };
            let dense = calibrate_layers(loaded, device, samples, &dense_options, &mut |_| {}, &mut |_| {}, &mut |_, _, _, _| {})?;
            let ratios = outlier_ratios(loaded, &dense.stats, outlier_multiple)?;
            let sparsities = layer_sparsities(&ratios, sparsity, lambda);
            if options.oneshot && !options.method.updates_weights() {
                return Ok(Calibration { layer_sparsities: Some(sparsities), ..dense });
            }
            Some(sparsities)
        }
        (SparsityProfile::Owl { .. }, Pattern::NM { .. }) => {
            return Err(CalibrateError::Input(
                "the OWL sparsity profile spreads an unstructured sparsity over the layers; N:M patterns are uniform".into(),
            ))
        }
    };
    let config = &loaded.config;
    // One decoder layer is resident at a time: the model is read from its
    // checkpoint layer by layer, so calibration needs the memory of one layer
    // and of the hidden states, whatever the model's size.
    let mut network = Decoder::empty(config.spec(), device);
    network.load_embedding(&loaded.weights)?;
    let groups = equal_length_batches(samples, options.batch);
    // Hidden states between layers are kept as host values, and each pass gets
    // a tensor of its own: on the CPU backend a layer then reads its input
    // without a copy, and re-running the pruned layer needs the input again.
    let width = config.hidden_size();
    let precision = options.activations;
    let mut hidden: Vec<Hidden> = groups
        .iter()
        .map(|g| network.embed(&samples[g.clone()]).map(|t| Hidden::keep(hidden_values(t), precision)))
        .collect::<Result<_, _>>()?;
    let tensor = |values: Vec<f32>| hidden_tensor(values, width, device);
    network.unload_embedding();
    let mut contexts = HashMap::new();
    for g in &groups {
        let key = (g.len(), samples[g.start].len());
        contexts.entry(key).or_insert_with(|| network.context(key.0, key.1));
    }

    // On the cpu device the groups run in parallel, one core each.
    let runner = BatchRunner::new(device, groups.len());
    let shape = |index: usize| (groups[index].len(), samples[groups[index].start].len());

    let mut stats = Vec::new();
    let mut applied_masks = BTreeMap::new();
    let grams = options.method.updates_weights();
    for layer in 0..config.num_layers() {
        network.load_layer(&loaded.weights, layer)?;
        let mut accumulators = HashMap::new();
        let mut gram_sums = BTreeMap::new();
        let observed: Vec<(usize, Vec<ObservedSquares>)>;
        let mut outputs = Vec::new();
        if options.oneshot {
            let runs = runner.map(std::mem::take(&mut hidden), |index, x| {
                let (batch, seq) = shape(index);
                let mut observer = SquaresObserver::new(batch, seq, grams);
                let out =
                    hidden_values(network.layer_forward(layer, tensor(x.into_values()), &contexts[&(batch, seq)], Some(&mut observer)));
                (Hidden::keep(out, precision), (seq, observer.observed))
            });
            (outputs, observed) = runs.into_iter().unzip();
        } else {
            observed = runner.map(hidden.iter().collect(), |index, x: &Hidden| {
                let (batch, seq) = shape(index);
                let mut observer = SquaresObserver::new(batch, seq, grams);
                // The dense layer's output is not needed: the pruned layer is run for the next one.
                network.layer_observe_inputs(layer, tensor(x.values().into_owned()), &contexts[&(batch, seq)], &mut observer);
                (seq, observer.observed)
            });
        }
        accumulate(&mut accumulators, &mut gram_sums, observed);
        // The dense layer is freed; each module's weight is read again, alone,
        // to choose its mask, and the pruned layer is built from the
        // checkpoint with the masks applied as it is read: the layer is never
        // held twice.
        let mut keep_bits = BTreeMap::new();
        let mut replaced = BTreeMap::new();
        if !options.oneshot {
            network.unload_layer(layer);
        }
        let layer_pattern = match &layer_sparsities {
            Some(layers) => Pattern::unstructured(layers[layer])?,
            None => options.pattern,
        };
        for (_, acc) in std::mem::take(&mut gram_sums) {
            let (row, hessian) = acc.hessian(layer)?;
            if !options.oneshot {
                // The modules of one input share its factored Hessian and are pruned in parallel.
                let prepared = PreparedHessian::new(&hessian, options.sparsegpt.percdamp)
                    .map_err(|source| CalibrateError::SparseGpt { module: row.modules.join(", "), source })?;
                let pruned: Vec<(HostTensor, Vec<bool>)> = row
                    .modules
                    .par_iter()
                    .map(|module| sparsegpt_module(loaded, module, &prepared, options.sparsegpt.options(layer_pattern)))
                    .collect::<Result<_, _>>()?;
                for (module, (weight, keep)) in row.modules.iter().zip(pruned) {
                    on_pruned(module, weight.shape[1], &keep, &weight.data);
                    applied_masks.insert(module.clone(), mask_digest(&keep));
                    replaced.insert(format!("{module}.weight"), weight);
                }
            }
            on_hessian(row);
        }
        for (module, out_features, in_features) in config.linear_modules(layer) {
            let acc = accumulators.remove(&module).ok_or_else(|| CalibrateError::Input(format!("no input was observed for {module}")))?;
            if !options.oneshot && !grams {
                let name = format!("{module}.weight");
                let weight = loaded.weights.load(&name)?;
                let scores = sparsity::scores(options.method, &weight.data, out_features, in_features, Some(&acc.scaler_row))?;
                drop(weight);
                let keep = sparsity::select(options.method, &scores, out_features, in_features, layer_pattern, options.group)?;
                applied_masks.insert(module.clone(), mask_digest(&keep));
                keep_bits.insert(name, keep.chunks(in_features.max(1)).flat_map(sparsity::pack_bits).collect::<Vec<u8>>());
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
            if grams {
                network.load_layer(&ReplacedWeights::new(&loaded.weights, replaced), layer)?;
            } else {
                network.load_layer(&MaskedWeights::new(&loaded.weights, keep_bits), layer)?;
            }
            outputs = runner.map(std::mem::take(&mut hidden), |index, x| {
                Hidden::keep(
                    hidden_values(network.layer_forward(layer, tensor(x.into_values()), &contexts[&shape(index)], None)),
                    precision,
                )
            });
        }
        network.unload_layer(layer);
        hidden = outputs;
        on_layer(layer);
    }
    Ok(Calibration { stats, applied_masks, layer_sparsities })
}

/// Prunes and updates `module` with SparseGPT from its input's Hessian:
/// the updated weight (as later layers and `mask apply` see it) and the keep mask.
fn sparsegpt_module(
    loaded: &LoadedModel,
    module: &str,
    prepared: &PreparedHessian,
    options: SparseGptOptions,
) -> Result<(HostTensor, Vec<bool>), CalibrateError> {
    let weight = loaded.weights.load(&format!("{module}.weight"))?;
    let &[rows, cols] = weight.shape.as_slice() else {
        return Err(CalibrateError::Input(format!("{module}.weight has shape {:?}; expected a matrix", weight.shape)));
    };
    let (updated, keep) = sparsegpt_f32(&weight.data, rows, cols, prepared, &options)
        .map_err(|source| CalibrateError::SparseGpt { module: module.to_string(), source })?;
    Ok((HostTensor::new(vec![rows, cols], updated), keep))
}

/// Each layer's OWL outlier ratio: the share of the Wanda scores of all its
/// linear modules (from `stats` and the weights) above `multiple` times their mean.
fn outlier_ratios(loaded: &LoadedModel, stats: &[ModuleStats], multiple: f64) -> Result<Vec<f64>, CalibrateError> {
    let config = &loaded.config;
    let mut ratios = Vec::with_capacity(config.num_layers());
    for layer in 0..config.num_layers() {
        let mut count = OutlierCount::new();
        for (module, rows, cols) in config.linear_modules(layer) {
            let stat =
                stats.iter().find(|s| s.module == module).ok_or_else(|| CalibrateError::Input(format!("no statistics for {module}")))?;
            let weight = loaded.weights.load(&format!("{module}.weight"))?;
            count.add(sparsity::scores(Method::Wanda, &weight.data, rows, cols, Some(&stat.scaler_row))?);
        }
        ratios.push(count.ratio(multiple));
    }
    Ok(ratios)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_grams_are_the_upper_triangles_of_each_sample_s_gram_matrix_row_by_row() {
        // Two samples of 150 tokens: blocks of 64, 64 and 22 tokens each.
        let (seq, n) = (150, 5);
        let mut rng = kernels::rng::Rng::new(7);
        let values: Vec<f32> = (0..2 * seq * n).map(|_| rng.next_f32() * 4.0 - 2.0).collect();
        let grams = sample_grams(&values, seq, n);
        assert_eq!(grams.len(), 2 * n * (n + 1) / 2);
        for (sample, gram) in values.chunks_exact(seq * n).zip(grams.chunks_exact(n * (n + 1) / 2)) {
            let mut got = gram.iter();
            for i in 0..n {
                for j in i..n {
                    let exact: f64 = sample.chunks_exact(n).map(|x| f64::from(x[i]) * f64::from(x[j])).sum();
                    let got = *got.next().expect("a value per upper entry");
                    assert!((got - exact).abs() <= 1e-6 * exact.abs().max(1.0), "({i}, {j}): {got} against {exact}");
                }
            }
        }
    }
}
