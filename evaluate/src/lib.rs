//! Evaluation stage of subprune: generation ([`generate`], [`chat`]),
//! pass@k of generated code in a sandbox ([`code_tasks`], [`passk`],
//! [`sandbox`]), multiple-choice tasks ([`choice`]), GSM8K ([`gsm8k`]),
//! translation with METEOR ([`translation`], [`meteor`]), and
//! perplexity as Wanda defines it —
//! text tokenized once without special tokens, cut into non-overlapping
//! windows, each window predicted from its own start, and
//! `ppl = exp(mean token NLL over all predicted tokens)`.

pub mod chat;
pub mod choice;
pub mod code_tasks;
pub mod generate;
pub mod gsm8k;
pub mod meteor;
pub mod passk;
pub mod porter;
pub mod sandbox;
pub mod translation;

use std::collections::BTreeMap;
use std::path::Path;

use artifacts::{ArtifactError, MaskRow};
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
    let logits = model.forward(windows)?;
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
    let mut start = 0;
    while start < windows.len() {
        let len = windows[start].len();
        if len < 2 {
            return Err(EvalError::Input(format!("window {start} has {len} token(s); at least two are needed to predict one")));
        }
        let mut end = start + 1;
        while end < windows.len() && end - start < batch.max(1) && windows[end].len() == len {
            end += 1;
        }
        for nll in token_nlls(model, &windows[start..end])? {
            out.push(WindowNll { nll_sum: nll.iter().map(|&v| f64::from(v)).sum(), tokens: nll.len() });
        }
        on_window(end - start);
        start = end;
    }
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

/// Reads a mask artifact and zeroes the weights it prunes in `loaded`, so the
/// model is evaluated as the sub-model the mask defines.
///
/// Refuses a mask of another model fingerprint, modules the model lacks or has
/// in another shape, and rows that do not cover a module exactly.
pub fn apply_mask_file(loaded: &mut LoadedModel, mask_path: &Path) -> Result<MaskedCounts, EvalError> {
    let (provenance, _info, rows) = artifacts::read_mask(mask_path)?;
    let mismatch = |what: String| EvalError::Mask { path: mask_path.to_path_buf(), model: loaded.path.clone(), what };
    if provenance.model != loaded.fingerprint {
        return Err(mismatch(format!("the mask was made for model {}, this model is {}", provenance.model, loaded.fingerprint)));
    }
    let mut by_module: BTreeMap<String, Vec<MaskRow>> = BTreeMap::new();
    for r in rows {
        by_module.entry(r.module.clone()).or_default().push(r);
    }
    let mut counts = MaskedCounts { modules: by_module.len(), total: 0, masked: 0 };
    for (module, rows) in &by_module {
        let cols = rows[0].in_features as usize;
        let name = format!("{module}.weight");
        let Some(weight) = loaded.weights.get_mut(&name) else {
            return Err(mismatch(format!("the model has no tensor {name}")));
        };
        if weight.shape != [rows.len(), cols] {
            return Err(mismatch(format!("{name} has shape {:?}, the mask has {} rows of {cols}", weight.shape, rows.len())));
        }
        let packed: Vec<sparsity::PackedRow> =
            rows.iter().map(|r| sparsity::PackedRow { row: r.row, in_features: r.in_features, keep: &r.keep }).collect();
        let applied = sparsity::apply_packed_rows(&mut weight.data, rows.len(), cols, &packed)
            .map_err(|e| mismatch(format!("module {module}: {e}")))?;
        counts.total += applied.total;
        counts.masked += applied.masked;
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
