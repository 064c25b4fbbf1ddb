//! Evaluation stage of subprune: generation ([`generate`], [`chat`]),
//! pass@k of generated code in a sandbox ([`code_tasks`], [`code_instruct`], [`python_sanitize`], [`passk`],
//! [`sandbox`]), multiple-choice tasks ([`choice`]), GSM8K ([`gsm8k`]),
//! translation with METEOR ([`translation`], [`meteor`]), and
//! perplexity as Wanda defines it —
//! text tokenized once without special tokens, cut into non-overlapping
//! windows, each window predicted from its own start, and
//! `ppl = exp(mean token NLL over all predicted tokens)`.

pub mod chat;
pub mod choice;
pub mod code_instruct;
pub mod code_tasks;
pub mod generate;
pub mod gsm8k;
pub mod journal;
pub mod meteor;
pub mod passk;
pub mod porter;
pub mod python_sanitize;
pub mod sandbox;
pub mod translation;

use std::collections::BTreeMap;
use std::path::Path;

use artifacts::ArtifactError;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use model::{Decoder, LoadedModel, ModelError};

/// How to cut a token stream into perplexity windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    /// Tokens per window, BOS included when `bos` is set.
    pub seqlen: usize,
    /// Keep only the first this many windows.
    pub max_windows: Option<usize>,
    /// Start every window with this BOS token followed by `seqlen - 1` text tokens.
    pub bos: Option<u32>,
}

/// Errors of the evaluation library.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Inputs that cannot give a perplexity.
    #[error("{0}")]
    Input(String),
    /// An artifact could not be read.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// A task's data file could not be read.
    #[error(transparent)]
    Records(#[from] artifacts::records::RecordsError),
    /// The tokenizer failed.
    #[error(transparent)]
    Tokenizer(#[from] model::tokenizer::TokenizerError),
    /// A mask that does not fit the model.
    #[error("mask {path} does not fit model {model}: {what}")]
    Mask {
        /// The mask file.
        path: std::path::PathBuf,
        /// The model file.
        model: std::path::PathBuf,
        /// What does not match.
        what: String,
    },
    /// A file of the evaluation's own (such as its generation journal) could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The failure.
        source: std::io::Error,
    },
}

/// Cuts `tokens` into non-overlapping windows as `spec` says. A tail shorter
/// than a window is dropped, as in Wanda's evaluation.
pub fn make_windows(tokens: &[u32], spec: &WindowSpec) -> Result<Vec<Vec<u32>>, EvalError> {
    let text_per_window = match spec.bos {
        Some(_) => spec.seqlen.checked_sub(1).filter(|n| *n > 0),
        None => Some(spec.seqlen).filter(|n| *n > 1),
    }
    .ok_or_else(|| EvalError::Input(format!("seqlen {} is too short: a window needs at least two tokens", spec.seqlen)))?;
    let mut windows: Vec<Vec<u32>> =
        tokens.chunks_exact(text_per_window).map(|chunk| spec.bos.into_iter().chain(chunk.iter().copied()).collect()).collect();
    if let Some(k) = spec.max_windows {
        windows.truncate(k);
    }
    if windows.is_empty() {
        return Err(EvalError::Input(format!(
            "the text has {} tokens, fewer than one window of {text_per_window} text tokens: nothing to evaluate",
            tokens.len()
        )));
    }
    Ok(windows)
}

/// Sum of negative log-likelihoods of one window and the number of predicted tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowNll {
    /// Sum over predicted tokens of -log p(token | prefix), in nats.
    pub nll_sum: f64,
    /// Number of predicted tokens (window length - 1).
    pub tokens: usize,
}

/// Per-position negative log-likelihoods of equal-length windows: for each
/// window, -log p(t_{i+1} | t_0..t_i) for i in 0..len-1.
pub fn token_nlls(model: &Decoder, windows: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EvalError> {
    nlls_of_logits(model.forward(windows)?, windows)
}

/// Per-position NLLs of `windows` from their logits [batch, seq, vocab].
fn nlls_of_logits(logits: Tensor<3>, windows: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EvalError> {
    let [batch, seq, _] = logits.dims();
    let logp = log_softmax(logits.narrow(1, 0, seq - 1), 2);
    let targets: Vec<i32> = windows.iter().flat_map(|w| w[1..].iter().map(|&t| t as i32)).collect();
    let targets = Tensor::<3, Int>::from_data(TensorData::new(targets, [batch, seq - 1, 1]), &logp.device());
    let picked = logp.gather(2, targets);
    let values: Vec<f32> = picked
        .into_data()
        .try_into_vec()
        .map_err(|e| EvalError::Input(format!("could not read log-probabilities back from the device: {e:?}")))?;
    Ok(values.chunks(seq - 1).map(|c| c.iter().map(|v| -v).collect()).collect())
}

/// NLL of every window, `batch` windows of equal length at a time;
/// `on_window` is called after each batch with the number of windows done.
pub fn window_nlls(
    model: &Decoder,
    windows: &[Vec<u32>],
    batch: usize,
    mut on_window: impl FnMut(usize),
) -> Result<Vec<WindowNll>, EvalError> {
    let mut out = Vec::with_capacity(windows.len());
    for range in window_batches(windows, batch)? {
        out.extend(token_nlls(model, &windows[range.clone()])?.iter().map(|nll| WindowNll::of(nll)));
        on_window(range.len());
    }
    Ok(out)
}

impl WindowNll {
    /// The sum of a window's per-token NLLs (in f64) and their count.
    fn of(nll: &[f32]) -> Self {
        WindowNll { nll_sum: nll.iter().map(|&v| f64::from(v)).sum(), tokens: nll.len() }
    }
}

/// Runs of at most `batch` consecutive windows of equal length, refusing a
/// window too short to predict a token.
fn window_batches(windows: &[Vec<u32>], batch: usize) -> Result<Vec<std::ops::Range<usize>>, EvalError> {
    if let Some((start, w)) = windows.iter().enumerate().find(|(_, w)| w.len() < 2) {
        return Err(EvalError::Input(format!("window {start} has {} token(s); at least two are needed to predict one", w.len())));
    }
    Ok(model::stream::equal_length_batches(windows, batch))
}

/// [`window_nlls`] with the model read from its checkpoint one decoder layer
/// at a time: every batch of windows goes through layer i before layer i+1
/// is read, so the memory needed is that of one layer (and of the
/// embedding, then the LM head) plus the hidden states of all windows. On a
/// host-memory device the batches of a layer run in parallel, one core each.
/// Gives exactly [`window_nlls`]'s values. `on_step` is called after the
/// embedding, each layer and the head (`num_layers + 2` steps).
pub fn window_nlls_streamed(
    loaded: &LoadedModel,
    device: &burn::tensor::Device,
    windows: &[Vec<u32>],
    batch: usize,
    on_step: impl FnMut(),
) -> Result<Vec<WindowNll>, EvalError> {
    window_nlls_streamed_from(loaded, device, windows, batch, 0, on_step)
}

/// [`window_nlls_streamed`] counting only the predictions made at positions
/// `score_from..` of each window (of its tokens `score_from + 1..`), as
/// llama.cpp's `llama-perplexity` counts only the second half of each chunk.
pub fn window_nlls_streamed_from(
    loaded: &LoadedModel,
    device: &burn::tensor::Device,
    windows: &[Vec<u32>],
    batch: usize,
    score_from: usize,
    mut on_step: impl FnMut(),
) -> Result<Vec<WindowNll>, EvalError> {
    use model::stream::{hidden_tensor, hidden_values, BatchRunner};
    if let Some((i, w)) = windows.iter().enumerate().find(|(_, w)| w.len() < score_from + 2) {
        return Err(EvalError::Input(format!(
            "window {i} has {} tokens; scoring from position {score_from} needs at least {}",
            w.len(),
            score_from + 2
        )));
    }
    let groups = window_batches(windows, batch)?;
    let mut network = Decoder::empty(loaded.config.spec(), device);
    let width = loaded.config.hidden_size();
    network.load_embedding(&loaded.weights)?;
    let mut hidden: Vec<Vec<f32>> =
        groups.iter().map(|g| network.embed(&windows[g.clone()]).map(hidden_values)).collect::<Result<_, _>>()?;
    network.unload_embedding();
    on_step();
    let runner = BatchRunner::new(device, groups.len());
    let contexts: Vec<model::ForwardContext> = groups.iter().map(|g| network.context(g.len(), windows[g.start].len())).collect();
    for layer in 0..loaded.config.num_layers() {
        network.load_layer(&loaded.weights, layer)?;
        hidden = runner.map(std::mem::take(&mut hidden), |index, x| {
            hidden_values(network.layer_forward(layer, hidden_tensor(x, width, device), &contexts[index], None))
        });
        network.unload_layer(layer);
        on_step();
    }
    network.load_head(&loaded.weights)?;
    let mut out = Vec::with_capacity(windows.len());
    for (g, x) in groups.iter().zip(hidden) {
        let (rows, seq) = (g.len(), windows[g.start].len());
        let logits = network.head(hidden_tensor(x, width, device)).reshape([rows, seq, loaded.config.vocab_size()]);
        out.extend(nlls_of_logits(logits, &windows[g.clone()])?.iter().map(|nll| WindowNll::of(&nll[score_from..])));
    }
    on_step();
    Ok(out)
}

/// Perplexity over windows: exp of the mean token NLL over all predicted tokens.
pub fn perplexity(nlls: &[WindowNll]) -> f64 {
    let total: f64 = nlls.iter().map(|w| w.nll_sum).sum();
    let count: usize = nlls.iter().map(|w| w.tokens).sum();
    (total / count as f64).exp()
}

/// What [`apply_mask_file`] pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskedCounts {
    /// Modules the mask covers.
    pub modules: usize,
    /// Weights in those modules.
    pub total: u64,
    /// Weights the mask prunes.
    pub masked: u64,
}

/// Reads a mask artifact and masks `loaded`'s weights with it (they read as
/// zeros from then on), so the model is evaluated as the sub-model the mask
/// defines. A mask that carries its kept weights' updated values (SparseGPT)
/// replaces its modules' weights by them.
///
/// Refuses a mask of another model fingerprint, modules the model lacks or has
/// in another shape, and rows that do not cover a module exactly.
pub fn apply_mask_file(loaded: &mut LoadedModel, mask_path: &Path) -> Result<MaskedCounts, EvalError> {
    let reader = artifacts::MaskReader::open(mask_path)?;
    let reader_has_values = reader.has_values();
    let mismatch = |what: String| EvalError::Mask { path: mask_path.to_path_buf(), model: loaded.path.clone(), what };
    if reader.provenance().model != loaded.fingerprint {
        return Err(mismatch(format!("the mask was made for model {}, this model is {}", reader.provenance().model, loaded.fingerprint)));
    }
    // Rows are read a batch at a time and packed straight into each module's
    // keep bits, so the mask is held once, as bits (as many as the model has weights).
    // Updated values, where the mask has them, are kept as the rows' kept
    // values one after another until the module's dense weight is made.
    let mut modules: BTreeMap<String, (usize, usize, Vec<u8>, Vec<f32>)> = BTreeMap::new();
    let mut current: Option<(String, usize, usize, Vec<u8>, Vec<f32>)> = None;
    let mut finish = |done: Option<(String, usize, usize, Vec<u8>, Vec<f32>)>| -> Result<(), EvalError> {
        let Some((module, rows, cols, keep, values)) = done else { return Ok(()) };
        let name = format!("{module}.weight");
        match loaded.weights.shape(&name) {
            None => return Err(mismatch(format!("the model has no tensor {name}"))),
            Some(shape) if shape != [rows, cols] => {
                return Err(mismatch(format!("{name} has shape {shape:?}, the mask has {rows} rows of {cols}")))
            }
            Some(_) => {}
        }
        if modules.insert(module.clone(), (rows, cols, keep, values)).is_some() {
            return Err(mismatch(format!("module {module}: its rows are not together in the file")));
        }
        Ok(())
    };
    for row in reader {
        let row = row?;
        let continues = matches!(&current, Some((module, ..)) if *module == row.module);
        if !continues {
            finish(current.take())?;
            current = Some((row.module.clone(), 0, row.in_features as usize, Vec::new(), Vec::new()));
        }
        let (module, rows, cols, keep, values) = current.as_mut().expect("set above");
        if row.row as usize != *rows || row.in_features as usize != *cols {
            return Err(mismatch(format!(
                "module {module}: expected row {rows} of {cols} bits; found row {} of {} bits",
                row.row, row.in_features
            )));
        }
        keep.extend_from_slice(&row.keep);
        values.extend(row.values.into_iter().flatten());
        *rows += 1;
    }
    finish(current.take())?;
    let mut counts = MaskedCounts { modules: modules.len(), total: 0, masked: 0 };
    let with_values = reader_has_values;
    for (module, (rows, cols, keep, values)) in modules {
        let total = (rows * cols) as u64;
        let kept: u64 = keep.iter().map(|b| u64::from(b.count_ones())).sum();
        let name = format!("{module}.weight");
        if with_values {
            let mut dense = vec![0.0f32; rows * cols];
            let positions = (0..rows * cols).filter(|i| keep[(i / cols) * cols.div_ceil(8) + (i % cols) / 8] >> (i % cols % 8) & 1 == 1);
            for (i, v) in positions.zip(values) {
                dense[i] = v;
            }
            loaded.weights.set_values(&name, &dense)?;
        } else {
            loaded.weights.set_keep_bits(&name, keep)?;
        }
        counts.total += total;
        counts.masked += total - kept;
    }
    Ok(counts)
}

/// A 95% percentile-bootstrap confidence interval of the perplexity, resampling
/// whole windows with replacement `resamples` times; deterministic for a seed.
///
/// Returns `None` for fewer than two windows, where no interval is meaningful.
pub fn bootstrap_ci(nlls: &[WindowNll], resamples: usize, seed: u64) -> Option<(f64, f64)> {
    if nlls.len() < 2 || resamples == 0 {
        return None;
    }
    let mut state = seed;
    let mut next = || {
        // splitmix64
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let n = nlls.len() as u64;
    let mut values: Vec<f64> = (0..resamples)
        .map(|_| {
            let (mut sum, mut count) = (0.0, 0usize);
            for _ in 0..nlls.len() {
                let w = &nlls[(next() % n) as usize];
                sum += w.nll_sum;
                count += w.tokens;
            }
            (sum / count as f64).exp()
        })
        .collect();
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((q * (resamples - 1) as f64).round() as usize).min(resamples - 1)];
    Some((at(0.025), at(0.975)))
}
