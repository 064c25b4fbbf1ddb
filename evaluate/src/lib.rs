//! Evaluation stage of subprune. For now: perplexity as Wanda defines it —
//! text tokenized once without special tokens, cut into non-overlapping
//! windows, each window predicted from its own start, and
//! `ppl = exp(mean token NLL over all predicted tokens)`.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use model::{Model, ModelError};

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
pub fn token_nlls(model: &Model, windows: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EvalError> {
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
    model: &Model,
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
