//! Text generation: greedy and sampled decoding (temperature, top-p, seeded
//! per sequence), stop sequences, EOS and a token budget, over batches of
//! left-padded prompts, with or without the model's key/value cache. With
//! the cache, prompts join the batch as earlier rows finish.
//!
//! Results do not depend on batching: a padded row computes what its prompt
//! alone would, and every sequence draws from its own random stream, seeded
//! from (seed, prompt index, sample index). On the CPU this holds bit for
//! bit: prompts are prefilled in parts that keep each one on the side of
//! [`model::FEW_ROWS`] where it would be alone, and decoding steps of up to
//! that many rows multiply row by row (the uncached mode, for comparison,
//! does not split its batches).
//!
//! Prompts that begin with the same tokens (a few-shot prefix, such as
//! GSM8K's eight worked examples) share that prefix's keys and values: it
//! is prefilled once, and each prompt prefills only its rest from a copy of
//! that cache. Every prompt keeps more than [`model::FEW_ROWS`] tokens of
//! its own, so its rest takes the general matmul as its whole prefill
//! would, and each query attends over the same keys in the same order: the
//! same bits as without the sharing.
//!
//! Greedy decoding of a few rows (batch 1, or the last rows of a batch)
//! takes drafts from prompt lookup ([`lookup_draft`]): the tokens that
//! followed the latest earlier occurrence of a row's last few tokens, in its
//! prompt or its own text (code restates signatures and names; answers copy
//! numbers). One step checks every row's draft and keeps the tokens that
//! greedy decoding picks anyway, so a step may yield several tokens per
//! row. Where the model's
//! multi-token steps give each token the bits of one-token steps (the host
//! kernels, [`model::Decoder::multi_token_steps_are_exact`]), the tokens are
//! exactly those of decoding one at a time; elsewhere drafts are not used.

use burn::tensor::TensorData;
use model::tokenizer::Tokenizer;
use model::{Decoder, KvCache, ModelError};

use crate::journal::Finished;
use crate::EvalError;

/// How to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Most tokens generated per sequence (EOS not counted).
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 means greedy (argmax, lowest id on ties).
    pub temperature: f64,
    /// Nucleus sampling: sample among the most probable tokens whose
    /// probabilities first reach this total (1 = all tokens). Ignored when greedy.
    pub top_p: f64,
    /// Seed of the sampling; each sequence gets its own stream from (seed, prompt index, sample index).
    pub seed: u64,
    /// Stop strings: a sequence ends as soon as its text contains one, and its text is cut before it.
    pub stop: Vec<String>,
    /// Reuse keys and values of past positions (true), or recompute the whole sequence at every step (false).
    pub use_cache: bool,
    /// Encode prompts with the tokenizer's special tokens (BOS where the
    /// model adds one). Set false for prompts rendered by a chat template
    /// that already holds them.
    pub add_special_tokens: bool,
    /// Most tokens of a prompt-lookup draft checked per step (see the
    /// module's documentation); 0 turns drafts off. A speed knob: the tokens
    /// do not change.
    pub draft_tokens: usize,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
            use_cache: true,
            add_special_tokens: true,
            draft_tokens: DRAFT_TOKENS,
        }
    }
}

/// Tokens of a prompt-lookup draft checked per step by default: a step of
/// four positions stays in the few-row kernels' registers for every stored
/// encoding (`kernels::encoded::register_rows`); longer drafts decoded no
/// faster (Qwen2.5-Coder-0.5B, HumanEval Python at batch 1).
pub const DRAFT_TOKENS: usize = 3;

/// Most positions (rows times one plus the draft) a step with drafts runs.
const DRAFT_STEP_POSITIONS: usize = 8;

thread_local! {
    static DRAFTED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Tokens that generation on this thread has taken from prompt-lookup
/// drafts so far (each checked in a step with the token before it): how
/// much the drafts saved, for logs and tests.
pub fn drafted_tokens_on_this_thread() -> usize {
    DRAFTED.with(|n| n.get())
}

/// Longest and shortest run of last tokens that prompt lookup looks up.
const LOOKUP_NGRAMS: std::ops::RangeInclusive<usize> = 2..=3;

/// Prompt lookup: the tokens (at most `max`) that followed the latest
/// earlier occurrence of the last tokens of `prompt` then `generated`,
/// trying the longest run of [`LOOKUP_NGRAMS`] first; empty where none recurs.
pub fn lookup_draft(prompt: &[u32], generated: &[u32], max: usize) -> Vec<u32> {
    let context: Vec<u32> = prompt.iter().chain(generated).copied().collect();
    let len = context.len();
    for n in LOOKUP_NGRAMS.rev() {
        if len <= n || max == 0 {
            continue;
        }
        let last = &context[len - n..];
        if let Some(start) = (0..len - n).rev().find(|&i| &context[i..i + n] == last) {
            let from = start + n;
            return context[from..(from + max).min(len)].to_vec();
        }
    }
    Vec::new()
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced its end-of-sequence token.
    Eos,
    /// The text reached one of the stop strings.
    Stop,
    /// `max_new_tokens` tokens were generated.
    Length,
}

impl FinishReason {
    /// Lower-case name: eos, stop or length.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// One generated continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The decoded continuation, cut before the first stop string.
    pub text: String,
    /// The generated token ids (EOS excluded; with a stop string, up to the
    /// token that completed it).
    pub tokens: Vec<u32>,
    /// Why generation ended.
    pub finish: FinishReason,
}

/// Generates one continuation per prompt (sample index 0 of each), in the
/// prompts' order. `batch` rows run together (a throughput knob; results do
/// not depend on it); `progress` is called with the number of continuations
/// finished (one) each time one finishes.
pub fn generate(
    model: &Decoder,
    tokenizer: &Tokenizer,
    prompts: &[String],
    config: &GenerationConfig,
    batch: usize,
    progress: impl FnMut(usize),
) -> Result<Vec<Generation>, EvalError> {
    let request = GenerationRequest { model, tokenizer, prompts, samples: 1, config, batch };
    let mut out = request.run(progress)?;
    Ok(out.iter_mut().map(|samples| samples.remove(0)).collect())
}

/// `samples` continuations of each of `prompts` (e.g. 10 for pass@10),
/// generated on `model` as `config` says, `batch` rows at a time (a
/// throughput knob; results do not depend on it).
#[derive(Clone, Copy)]
pub struct GenerationRequest<'a> {
    /// The model that generates.
    pub model: &'a Decoder,
    /// The model's tokenizer: encodes the prompts and decodes the continuations.
    pub tokenizer: &'a Tokenizer,
    /// The prompts, as text.
    pub prompts: &'a [String],
    /// Continuations per prompt.
    pub samples: usize,
    /// How to generate.
    pub config: &'a GenerationConfig,
    /// Rows decoded together.
    pub batch: usize,
}

impl GenerationRequest<'_> {
    /// Generates every continuation: result `[p][j]` is sample j of prompt
    /// p, drawn from the stream seeded by (config.seed, p, j) (greedy
    /// decoding gives equal samples). `progress` is called with one as each
    /// continuation finishes.
    pub fn run(&self, mut progress: impl FnMut(usize)) -> Result<Vec<Vec<Generation>>, EvalError> {
        self.resume(&Finished::new(), |_, _, _| {
            progress(1);
            Ok(())
        })
    }

    /// [`Self::run`] that takes the continuations already in `finished` (by
    /// prompt and sample index, e.g. read back from a
    /// [`crate::journal::Journal`]) as they are, generates the others, and
    /// calls `on_finish(prompt, sample, generation)` as each of those finishes.
    pub fn resume(
        &self,
        finished: &Finished,
        mut on_finish: impl FnMut(usize, usize, &Generation) -> Result<(), EvalError>,
    ) -> Result<Vec<Vec<Generation>>, EvalError> {
        let (config, n) = (self.config, self.samples);
        let mut jobs = Vec::new();
        let mut ids = Vec::new();
        for (p, prompt) in self.prompts.iter().enumerate() {
            let tokens = self.tokenizer.encode(prompt, config.add_special_tokens).map_err(ModelError::from)?;
            if tokens.is_empty() {
                return Err(EvalError::Input(format!("prompt {p} encodes to no tokens: generation needs at least one prompt token")));
            }
            for j in (0..n).filter(|&j| !finished.contains_key(&(p, j))) {
                jobs.push(Job { prompt: tokens.clone(), seed: sequence_seed(config.seed, p, j) });
                ids.push((p, j));
            }
        }
        let generated = run_jobs(self.model, self.tokenizer, jobs, config, self.batch, |job, generation| {
            on_finish(ids[job].0, ids[job].1, generation)
        })?;
        let mut fresh: Finished = ids.into_iter().zip(generated).collect();
        Ok((0..self.prompts.len())
            .map(|p| (0..n).map(|j| fresh.remove(&(p, j)).unwrap_or_else(|| finished[&(p, j)].clone())).collect())
            .collect())
    }
}

/// Generates one continuation per already tokenized prompt (sample index 0
/// of each), in order: [`generate`] without the encoding step.
pub fn generate_tokens(
    model: &Decoder,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    batch: usize,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Generation>, EvalError> {
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(EvalError::Input(format!("prompt {i} has no tokens: generation needs at least one prompt token")));
    }
    let jobs = prompts.iter().enumerate().map(|(p, t)| Job { prompt: t.clone(), seed: sequence_seed(config.seed, p, 0) }).collect();
    run_jobs(model, tokenizer, jobs, config, batch, |_, _| {
        progress(1);
        Ok(())
    })
}

/// The seed of sample `sample` of prompt `prompt` under `seed`.
pub fn sequence_seed(seed: u64, prompt: usize, sample: usize) -> u64 {
    let mut s = SampleRng::new(seed);
    let a = s.next_u64() ^ (prompt as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut s = SampleRng::new(a);
    s.next_u64() ^ (sample as u64).wrapping_mul(0x8CB9_2BA7_2F3D_8DD7)
}

/// SplitMix64: a small, fast, seedable random stream.
#[derive(Debug, Clone)]
pub struct SampleRng(u64);

impl SampleRng {
    /// A stream seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SampleRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Index of the largest logit (the lowest index among equal maxima).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best
}

/// Softmax of `logits / temperature` in f64.
pub fn softmax_with_temperature(logits: &[f32], temperature: f64) -> Vec<f64> {
    let scaled: Vec<f64> = logits.iter().map(|&v| f64::from(v) / temperature).collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = scaled.iter().map(|v| (v - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / total).collect()
}

/// Tokens sorted first by [`top_p_set`]; only when they do not reach the
/// threshold is the whole vocabulary sorted.
const NUCLEUS_CANDIDATES: usize = 512;

/// The nucleus of `probs`: token ids by decreasing probability (lower id
/// first on ties) up to and including the first at which the running total
/// reaches `top_p`; all ids when `top_p >= 1`.
pub fn top_p_set(probs: &[f64], top_p: f64) -> Vec<usize> {
    // Most probable first, ties by id: a strict total order, so the first k
    // of a partial selection are exactly the first k of a full sort.
    let before = |&a: &usize, &b: &usize| probs[b].total_cmp(&probs[a]).then(a.cmp(&b));
    let mut order: Vec<usize> = (0..probs.len()).collect();
    if top_p < 1.0 && order.len() > NUCLEUS_CANDIDATES {
        order.select_nth_unstable_by(NUCLEUS_CANDIDATES - 1, before);
        order.truncate(NUCLEUS_CANDIDATES);
        order.sort_by(before);
        let mut total = 0.0;
        if let Some(keep) = order.iter().position(|&i| {
            total += probs[i];
            total >= top_p
        }) {
            order.truncate(keep + 1);
            return order;
        }
        order = (0..probs.len()).collect();
    }
    order.sort_by(before);
    if top_p >= 1.0 {
        return order;
    }
    let mut total = 0.0;
    let mut keep = 0;
    for &i in &order {
        total += probs[i];
        keep += 1;
        if total >= top_p {
            break;
        }
    }
    order.truncate(keep.max(1));
    order
}

/// Picks the next token from `logits`: argmax when `temperature` is 0,
/// else a draw from the temperature softmax restricted to the top-p
/// nucleus and renormalised.
pub fn sample_token(logits: &[f32], temperature: f64, top_p: f64, rng: &mut SampleRng) -> usize {
    if temperature <= 0.0 {
        return argmax(logits);
    }
    let probs = softmax_with_temperature(logits, temperature);
    let kept = top_p_set(&probs, top_p);
    let total: f64 = kept.iter().map(|&i| probs[i]).sum();
    let mut u = rng.next_f64() * total;
    for &i in &kept {
        u -= probs[i];
        if u < 0.0 {
            return i;
        }
    }
    *kept.last().expect("a nucleus holds at least one token")
}

/// Byte offset of the earliest stop string in `text`, if any.
pub fn find_stop(text: &str, stop: &[String]) -> Option<usize> {
    stop.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min()
}

struct Job {
    prompt: Vec<u32>,
    seed: u64,
}

/// The decoding state of one row.
struct Row {
    /// Index of the row's job.
    job: usize,
    tokens: Vec<u32>,
    rng: SampleRng,
    done: Option<Generation>,
}

impl Row {
    fn new(job: usize, seed: u64) -> Self {
        Row { job, tokens: Vec::new(), rng: SampleRng::new(seed), done: None }
    }

    /// Picks the row's next token from `logits` and records whether that
    /// ends it (EOS, a stop string, or the token budget).
    fn take_token(&mut self, logits: &[f32], tokenizer: &Tokenizer, eos: Option<u32>, config: &GenerationConfig) -> Result<(), EvalError> {
        let token = sample_token(logits, config.temperature, config.top_p, &mut self.rng) as u32;
        if Some(token) == eos {
            self.done = Some(finish(tokenizer, &self.tokens, FinishReason::Eos)?);
            return Ok(());
        }
        self.tokens.push(token);
        let text = tokenizer.decode(&self.tokens).map_err(ModelError::from)?;
        if let Some(at) = find_stop(&text, &config.stop) {
            self.done = Some(Generation { text: text[..at].to_string(), tokens: self.tokens.clone(), finish: FinishReason::Stop });
        } else if self.tokens.len() >= config.max_new_tokens {
            self.done = Some(Generation { text, tokens: self.tokens.clone(), finish: FinishReason::Length });
        }
        Ok(())
    }
}

fn check_config(config: &GenerationConfig) -> Result<(), EvalError> {
    if !(config.temperature >= 0.0 && config.temperature.is_finite()) {
        return Err(EvalError::Input(format!("expected a temperature >= 0 (0 = greedy); found {}", config.temperature)));
    }
    if !(config.top_p > 0.0 && config.top_p <= 1.0) {
        return Err(EvalError::Input(format!("expected top_p in (0, 1]; found {}", config.top_p)));
    }
    Ok(())
}

fn run_jobs(
    model: &Decoder,
    tokenizer: &Tokenizer,
    jobs: Vec<Job>,
    config: &GenerationConfig,
    batch: usize,
    mut on_finish: impl FnMut(usize, &Generation) -> Result<(), EvalError>,
) -> Result<Vec<Generation>, EvalError> {
    check_config(config)?;
    if batch == 0 {
        return Err(EvalError::Input("expected a batch size of at least 1; found 0".into()));
    }
    if config.max_new_tokens == 0 {
        let empty = Generation { text: String::new(), tokens: Vec::new(), finish: FinishReason::Length };
        for job in 0..jobs.len() {
            on_finish(job, &empty)?;
        }
        return Ok(vec![empty; jobs.len()]);
    }
    // Longest prompts first, so that rows of a batch have similar lengths.
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(jobs[i].prompt.len()));
    let mut results: Vec<Option<Generation>> = vec![None; jobs.len()];
    let prefix = if config.use_cache { SharedPrefix::of(model, &jobs)? } else { None };
    let decoding = Decoding { model, tokenizer, config, jobs: &jobs, prefix };
    if config.use_cache {
        decoding.continuously(&order, batch, &mut results, &mut on_finish)?;
    } else {
        for chunk in order.chunks(batch) {
            decoding.recomputing(chunk, &mut results, &mut on_finish)?;
        }
    }
    Ok(results.into_iter().map(|g| g.expect("every job ran")).collect())
}

/// Logits of the last token of each row of `sequences` as host rows; the
/// rows follow what `cache` holds (its padding included) and are appended to it.
fn last_logits(model: &Decoder, sequences: &[Vec<u32>], cache: &mut KvCache) -> Result<Vec<Vec<f32>>, EvalError> {
    let logits = model.forward_cached_last(sequences, cache)?;
    let vocab = logits.dims()[1];
    logit_rows(logits.into_data(), vocab)
}

/// Logits read back from the device, as host rows of `vocab` values.
fn logit_rows(logits: TensorData, vocab: usize) -> Result<Vec<Vec<f32>>, EvalError> {
    let values = logits.try_into_vec::<f32>().map_err(|e| EvalError::Input(format!("reading logits: {e:?}")))?;
    Ok(values.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
}

/// Fewest tokens a prefix of every prompt must have to be shared: below
/// this, its own forward and a forward per prompt cost more than the
/// tokens it saves.
pub const MIN_SHARED_PREFIX: usize = 128;

/// How many tokens at the start of every prompt generation shares: the
/// prompts' common prefix, shortened so that every prompt keeps more than
/// [`model::FEW_ROWS`] tokens of its own; 0 where that leaves fewer than
/// [`MIN_SHARED_PREFIX`] or the prompts are all one.
pub fn shared_prefix_tokens(prompts: &[&[u32]]) -> usize {
    let Some(first) = prompts.first() else { return 0 };
    if prompts.iter().all(|p| p == first) {
        return 0;
    }
    let common = prompts[1..].iter().map(|p| first.iter().zip(p.iter()).take_while(|(a, b)| a == b).count()).min().unwrap_or(0);
    let shortest = prompts.iter().map(|p| p.len()).min().unwrap_or(0);
    let len = common.min(shortest.saturating_sub(model::FEW_ROWS + 1));
    if len < MIN_SHARED_PREFIX {
        0
    } else {
        len
    }
}

/// The keys and values of the tokens that begin every prompt of a generation, computed once.
struct SharedPrefix {
    /// Tokens in the prefix.
    len: usize,
    /// Its cache: one row, no padding.
    cache: KvCache,
}

impl SharedPrefix {
    /// The prefix of [`shared_prefix_tokens`] tokens, prefilled; `None` where there is none.
    fn of(model: &Decoder, jobs: &[Job]) -> Result<Option<Self>, EvalError> {
        let prompts: Vec<&[u32]> = jobs.iter().map(|j| j.prompt.as_slice()).collect();
        let len = shared_prefix_tokens(&prompts);
        if len == 0 {
            return Ok(None);
        }
        let mut cache = model.new_padded_cache(vec![0]);
        last_logits(model, &[prompts[0][..len].to_vec()], &mut cache)?;
        Ok(Some(SharedPrefix { len, cache }))
    }

    /// The cache and last-token logits of the prompts of `group`: each
    /// distinct prompt's rest prefilled on a copy of the prefix's cache, the
    /// rows then joined (left-padded to one length) and copied out to every
    /// row that repeats a prompt.
    fn prefill(&self, model: &Decoder, jobs: &[Job], group: &[usize]) -> Result<(KvCache, Vec<Vec<f32>>), EvalError> {
        let mut distinct: Vec<usize> = Vec::new();
        let mut source = Vec::with_capacity(group.len());
        for &j in group {
            match distinct.iter().position(|&d| jobs[d].prompt == jobs[j].prompt) {
                Some(at) => source.push(at),
                None => {
                    source.push(distinct.len());
                    distinct.push(j);
                }
            }
        }
        let mut joined: Option<KvCache> = None;
        let mut logits = Vec::with_capacity(distinct.len());
        for &j in &distinct {
            let mut cache = self.cache.clone();
            logits.extend(last_logits(model, &[jobs[j].prompt[self.len..].to_vec()], &mut cache)?);
            match joined.as_mut() {
                None => joined = Some(cache),
                Some(all) => all.append_rows(cache)?,
            }
        }
        let mut cache = joined.expect("a group holds at least one job");
        if distinct.len() == group.len() {
            return Ok((cache, logits));
        }
        cache.select_rows(&source);
        Ok((cache, source.iter().map(|&u| logits[u].clone()).collect()))
    }
}

/// The prompts of `group` left-padded to one length, and each row's padding.
fn padded_prompts(jobs: &[Job], group: &[usize]) -> (Vec<Vec<u32>>, Vec<usize>) {
    let longest = group.iter().map(|&j| jobs[j].prompt.len()).max().unwrap_or(0);
    let padding: Vec<usize> = group.iter().map(|&j| longest - jobs[j].prompt.len()).collect();
    // Padding slots hold the row's first token: any valid id does, none is attended to.
    let sequences = group
        .iter()
        .zip(&padding)
        .map(|(&j, &p)| std::iter::repeat_n(jobs[j].prompt[0], p).chain(jobs[j].prompt.iter().copied()).collect())
        .collect();
    (sequences, padding)
}

/// The jobs of `group` (longest prompts first) in the parts that are
/// prefilled together: the prompts longer than [`model::FEW_ROWS`] in one,
/// and the shorter ones in parts of at most that many rows, padding
/// included. A short prompt's prefill then takes the few-row kernels, as it
/// would alone, and a long one's the general matmul, as it would alone, so
/// every prompt's prefill has the same bits in any batch.
fn prefill_parts(jobs: &[Job], group: &[usize]) -> Vec<Vec<usize>> {
    let (long, short): (Vec<usize>, Vec<usize>) = group.iter().partition(|&&j| jobs[j].prompt.len() > model::FEW_ROWS);
    let mut parts: Vec<Vec<usize>> = Vec::new();
    if !long.is_empty() {
        parts.push(long);
    }
    for j in short {
        // Sorted longest first: a part's first prompt is its longest.
        match parts
            .last_mut()
            .filter(|p| jobs[p[0]].prompt.len() <= model::FEW_ROWS && (p.len() + 1) * jobs[p[0]].prompt.len() <= model::FEW_ROWS)
        {
            Some(part) => part.push(j),
            None => parts.push(vec![j]),
        }
    }
    parts
}

/// The cache and last-token logits of padded rows, each distinct row
/// computed once (the samples of one prompt share its prefill) and the
/// cache's rows then copied out to every row.
fn prefill_shared(model: &Decoder, sequences: &[Vec<u32>], padding: &[usize]) -> Result<(KvCache, Vec<Vec<f32>>), EvalError> {
    // Rows are padded to one length, so equal prompts are equal rows with equal padding.
    let mut distinct: Vec<usize> = Vec::new();
    let mut source = Vec::with_capacity(sequences.len());
    for (row, s) in sequences.iter().enumerate() {
        match distinct.iter().position(|&d| &sequences[d] == s) {
            Some(at) => source.push(at),
            None => {
                source.push(distinct.len());
                distinct.push(row);
            }
        }
    }
    let unique: Vec<Vec<u32>> = distinct.iter().map(|&d| sequences[d].clone()).collect();
    let unique_padding: Vec<usize> = distinct.iter().map(|&d| padding[d]).collect();
    let mut cache = model.new_padded_cache(unique_padding);
    let logits = last_logits(model, &unique, &mut cache)?;
    if distinct.len() == sequences.len() {
        return Ok((cache, logits));
    }
    cache.select_rows(&source);
    let logits = source.iter().map(|&u| logits[u].clone()).collect();
    Ok((cache, logits))
}

/// Rows decoding together through one cache, each with the logits of its next token.
struct Running {
    rows: Vec<Row>,
    cache: KvCache,
    logits: Vec<Vec<f32>>,
}

/// What every row of a generation shares: the model, its tokenizer, how to
/// generate, and the jobs (each row is one job).
struct Decoding<'a> {
    model: &'a Decoder,
    tokenizer: &'a Tokenizer,
    config: &'a GenerationConfig,
    jobs: &'a [Job],
    /// The prefix every prompt shares, prefilled once (with the cache only).
    prefix: Option<SharedPrefix>,
}

impl Decoding<'_> {
    /// Decodes the jobs in `order` with the cache, up to `batch` rows at a
    /// time: as rows finish, the next jobs' prompts are prefilled and their
    /// rows join the batch already decoding (continuous batching), so the batch
    /// stays nearly full while jobs remain instead of waiting for its longest
    /// answer.
    fn continuously(
        &self,
        order: &[usize],
        batch: usize,
        results: &mut [Option<Generation>],
        on_finish: &mut impl FnMut(usize, &Generation) -> Result<(), EvalError>,
    ) -> Result<(), EvalError> {
        let (model, tokenizer, config, jobs) = (self.model, self.tokenizer, self.config, self.jobs);
        let eos = tokenizer.eos_id();
        let mut pending = order.iter().copied();
        let mut running: Option<Running> = None;
        loop {
            let free = batch - running.as_ref().map_or(0, |r| r.rows.len());
            // A prefill costs a pass over every weight besides its tokens, so
            // rows join in groups: once half the batch (or all of it) is free.
            let admit = if 2 * free >= batch { free } else { 0 };
            let group: Vec<usize> = pending.by_ref().take(admit).collect();
            let parts = match &self.prefix {
                Some(_) if group.is_empty() => Vec::new(),
                Some(_) => vec![group],
                None => prefill_parts(jobs, &group),
            };
            for part in parts {
                let (cache, logits) = match &self.prefix {
                    Some(prefix) => prefix.prefill(model, jobs, &part)?,
                    None => {
                        let (sequences, padding) = padded_prompts(jobs, &part);
                        prefill_shared(model, &sequences, &padding)?
                    }
                };
                let rows: Vec<Row> = part.iter().map(|&j| Row::new(j, jobs[j].seed)).collect();
                match running.as_mut() {
                    None => running = Some(Running { rows, cache, logits }),
                    Some(r) => {
                        r.cache.append_rows(cache)?;
                        r.rows.extend(rows);
                        r.logits.extend(logits);
                    }
                }
            }
            let Some(r) = running.as_mut() else { return Ok(()) };
            for (row, logits) in r.rows.iter_mut().zip(&r.logits) {
                if row.done.is_none() {
                    row.take_token(logits, tokenizer, eos, config)?;
                }
            }
            let keep: Vec<usize> = (0..r.rows.len()).filter(|&i| r.rows[i].done.is_none()).collect();
            if keep.len() < r.rows.len() {
                let rows = std::mem::take(&mut r.rows);
                for row in rows {
                    match row.done {
                        Some(generation) => {
                            on_finish(row.job, &generation)?;
                            results[row.job] = Some(generation);
                        }
                        None => r.rows.push(row),
                    }
                }
                if r.rows.is_empty() {
                    running = None;
                    continue;
                }
                r.cache.select_rows(&keep);
                r.cache.trim_padding();
            }
            let drafts = self.drafts(&r.rows);
            if drafts.is_empty() {
                let step: Vec<Vec<u32>> = r.rows.iter().map(|row| vec![*row.tokens.last().expect("a running row has a token")]).collect();
                r.logits = last_logits(model, &step, &mut r.cache)?;
            } else {
                r.logits = self.check_drafts(&mut r.rows, &mut r.cache, drafts)?;
            }
        }
    }

    /// Each row's prompt-lookup draft, all of one length (a row's own draft
    /// padded with its last token, which is checked like any draft token),
    /// or none: where decoding is not greedy, where the model's multi-token
    /// steps are not exact, or where no row has a draft. A step checks at
    /// most [`DRAFT_STEP_POSITIONS`] positions, so drafts shorten as rows
    /// grow and stop past a few rows, where a step of one token per row is
    /// already as cheap per token.
    fn drafts(&self, rows: &[Row]) -> Vec<Vec<u32>> {
        let longest = (DRAFT_STEP_POSITIONS / rows.len()).saturating_sub(1).min(self.config.draft_tokens);
        if longest == 0 || self.config.temperature > 0.0 || !self.model.multi_token_steps_are_exact() {
            return Vec::new();
        }
        let drafts: Vec<Vec<u32>> = rows.iter().map(|row| lookup_draft(&self.jobs[row.job].prompt, &row.tokens, longest)).collect();
        let Some(length) = drafts.iter().map(Vec::len).max().filter(|&n| n > 0) else { return Vec::new() };
        drafts
            .into_iter()
            .zip(rows)
            .map(|(mut draft, row)| {
                draft.resize(length, *row.tokens.last().expect("a running row has a token"));
                draft
            })
            .collect()
    }

    /// Runs each row's last token and its draft after it in one step and
    /// takes the draft's tokens while greedy decoding picks them (each from
    /// the logits one-token steps would give), up to where the row
    /// finishes. The cache keeps, per row, the slots of the tokens run whose
    /// next token is known; returns each row's logits of the last of them,
    /// from which its next token is picked.
    fn check_drafts(&self, rows: &mut [Row], cache: &mut KvCache, drafts: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, EvalError> {
        let length = drafts[0].len();
        let fed: Vec<Vec<u32>> = rows
            .iter()
            .zip(&drafts)
            .map(|(row, draft)| {
                std::iter::once(*row.tokens.last().expect("a running row has a token")).chain(draft.iter().copied()).collect()
            })
            .collect();
        let logits = self.model.forward_cached(&fed, cache)?;
        let vocab = logits.dims()[2];
        let logits = logit_rows(logits.into_data(), vocab)?;
        let position = |r: usize, i: usize| &logits[r * (length + 1) + i];
        let (mut dropped, mut next) = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
        for (r, (row, draft)) in rows.iter_mut().zip(&drafts).enumerate() {
            let mut kept = 0;
            while kept < length && row.done.is_none() && argmax(position(r, kept)) == draft[kept] as usize {
                row.take_token(position(r, kept), self.tokenizer, self.tokenizer.eos_id(), self.config)?;
                kept += 1;
            }
            DRAFTED.with(|n| n.set(n.get() + kept));
            dropped.push(length - kept);
            next.push(position(r, kept).to_vec());
        }
        cache.drop_last(&dropped)?;
        Ok(next)
    }

    /// Decodes the jobs `group` together without the cache: every step runs
    /// each row's whole sequence again (slow; for comparison with the cache).
    fn recomputing(
        &self,
        group: &[usize],
        results: &mut [Option<Generation>],
        on_finish: &mut impl FnMut(usize, &Generation) -> Result<(), EvalError>,
    ) -> Result<(), EvalError> {
        let (model, tokenizer, config, jobs) = (self.model, self.tokenizer, self.config, self.jobs);
        let eos = tokenizer.eos_id();
        let (mut sequences, mut padding) = padded_prompts(jobs, group);
        let mut rows: Vec<Row> = group.iter().map(|&j| Row::new(j, jobs[j].seed)).collect();
        let mut logits = last_logits(model, &sequences, &mut model.new_padded_cache(padding.clone()))?;
        loop {
            for (row, logits) in rows.iter_mut().zip(&logits) {
                row.take_token(logits, tokenizer, eos, config)?;
            }
            let keep: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].done.is_none()).collect();
            sequences = keep.iter().map(|&i| std::mem::take(&mut sequences[i])).collect();
            padding = keep.iter().map(|&i| padding[i]).collect();
            let mut running = Vec::with_capacity(keep.len());
            for row in rows {
                match row.done {
                    Some(generation) => {
                        on_finish(row.job, &generation)?;
                        results[row.job] = Some(generation);
                    }
                    None => running.push(row),
                }
            }
            rows = running;
            if rows.is_empty() {
                return Ok(());
            }
            for (s, row) in sequences.iter_mut().zip(&rows) {
                s.push(*row.tokens.last().expect("a running row has a token"));
            }
            logits = last_logits(model, &sequences, &mut model.new_padded_cache(padding.clone()))?;
        }
    }
}

fn finish(tokenizer: &Tokenizer, tokens: &[u32], reason: FinishReason) -> Result<Generation, EvalError> {
    let text = tokenizer.decode(tokens).map_err(ModelError::from)?;
    Ok(Generation { text, tokens: tokens.to_vec(), finish: reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_prefix_leaves_every_prompt_more_than_few_rows_of_its_own() {
        let prefix: Vec<u32> = (0..300).collect();
        let with = |rest: &[u32]| prefix.iter().chain(rest).copied().collect::<Vec<u32>>();
        let long_rest: Vec<u32> = (1000..1000 + model::FEW_ROWS as u32 + 40).collect();
        let short_rest: Vec<u32> = vec![7, 8, 9];
        let (a, b, c) = (with(&long_rest), with(&long_rest[1..]), with(&short_rest));
        // Two prompts that part after 300 tokens, both with more than FEW_ROWS of their own: all 300.
        assert_eq!(shared_prefix_tokens(&[&a, &b]), 300);
        // One keeps 3 tokens of its own: the prefix stops FEW_ROWS + 1 tokens before its end.
        assert_eq!(shared_prefix_tokens(&[&a, &c]), 303 - model::FEW_ROWS - 1);
        // Too short to pay, one prompt repeated, or none: nothing.
        assert_eq!(shared_prefix_tokens(&[&a[..MIN_SHARED_PREFIX + model::FEW_ROWS], &b]), 0);
        assert_eq!(shared_prefix_tokens(&[&a, &a]), 0);
        assert_eq!(shared_prefix_tokens(&[]), 0);
    }

    #[test]
    fn long_prompts_prefill_together_and_short_ones_in_parts_of_few_rows() {
        assert_eq!(model::FEW_ROWS, 64, "the hand-made parts below assume 64");
        let jobs: Vec<Job> = [200, 70, 30, 20, 20, 9, 5].iter().map(|&n| Job { prompt: vec![1; n], seed: 0 }).collect();
        let group: Vec<usize> = (0..jobs.len()).collect();
        // 2 x 30 rows fit in 64, 3 x 30 do not; 3 x 20 do.
        assert_eq!(prefill_parts(&jobs, &group), vec![vec![0, 1], vec![2, 3], vec![4, 5, 6]]);
        assert_eq!(prefill_parts(&jobs, &[5, 6]), vec![vec![5, 6]]);
        assert_eq!(prefill_parts(&jobs, &[1]), vec![vec![1]]);
        assert!(prefill_parts(&jobs, &[]).is_empty());
    }

    #[test]
    fn temperature_scales_logits_before_the_softmax() {
        // Logits (0, ln 2): probabilities 1/3, 2/3; at T = 0.5 the logits double: 1/5, 4/5.
        let logits = [0.0f32, std::f32::consts::LN_2];
        let p = softmax_with_temperature(&logits, 1.0);
        assert!((p[0] - 1.0 / 3.0).abs() < 1e-7 && (p[1] - 2.0 / 3.0).abs() < 1e-7, "{p:?}");
        let p = softmax_with_temperature(&logits, 0.5);
        assert!((p[0] - 0.2).abs() < 1e-7 && (p[1] - 0.8).abs() < 1e-7, "{p:?}");
    }

    #[test]
    fn top_p_keeps_the_smallest_prefix_reaching_the_threshold() {
        let probs = [0.1, 0.5, 0.2, 0.2];
        // Descending: 1 (0.5), 2 (0.2), 3 (0.2, tie broken by id), 0 (0.1).
        assert_eq!(top_p_set(&probs, 0.5), vec![1]);
        assert_eq!(top_p_set(&probs, 0.6), vec![1, 2]);
        assert_eq!(top_p_set(&probs, 0.75), vec![1, 2, 3]);
        assert_eq!(top_p_set(&probs, 0.95), vec![1, 2, 3, 0]);
        assert_eq!(top_p_set(&probs, 1.0), vec![1, 2, 3, 0]);
        assert_eq!(top_p_set(&probs, 1e-9), vec![1]);
    }

    #[test]
    fn top_p_of_a_large_vocabulary_equals_the_full_sort() {
        let mut rng = SampleRng::new(4);
        // Many ties (values on a coarse grid) and a long tail.
        let raw: Vec<f64> = (0..5000).map(|_| (rng.next_f64() * 40.0).floor().powi(3)).collect();
        let total: f64 = raw.iter().sum();
        let probs: Vec<f64> = raw.iter().map(|r| r / total).collect();
        let mut full: Vec<usize> = (0..probs.len()).collect();
        full.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        for top_p in [0.01, 0.3, 0.9, 0.999_999] {
            let mut running = 0.0;
            let keep = full.iter().position(|&i| {
                running += probs[i];
                running >= top_p
            });
            let want = &full[..keep.map_or(full.len(), |k| k + 1)];
            assert_eq!(top_p_set(&probs, top_p), want, "top_p {top_p}");
        }
    }

    #[test]
    fn draws_follow_the_renormalised_nucleus() {
        // ln of (0.5, 0.3, 0.2, tiny): top-p 0.7 keeps ids 0 and 1, renormalised to 0.625 and 0.375.
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln(), -30.0];
        let mut rng = SampleRng::new(1);
        let mut counts = [0usize; 4];
        let n = 40_000;
        for _ in 0..n {
            counts[sample_token(&logits, 1.0, 0.7, &mut rng)] += 1;
        }
        assert_eq!(counts[2] + counts[3], 0, "{counts:?}");
        let f0 = counts[0] as f64 / n as f64;
        // Standard error sqrt(0.625 * 0.375 / 40000) = 0.0024; allow 5 of them.
        assert!((f0 - 0.625).abs() < 0.012, "frequency of id 0: {f0}");
    }

    #[test]
    fn temperature_zero_is_argmax_with_the_lowest_id_on_ties() {
        let mut rng = SampleRng::new(3);
        assert_eq!(sample_token(&[0.1, 2.0, -1.0, 2.0], 0.0, 0.5, &mut rng), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY, -5.0]), 1);
    }

    #[test]
    fn streams_depend_on_seed_prompt_and_sample_only() {
        let draw = |seed| {
            let mut r = SampleRng::new(seed);
            (0..4).map(|_| r.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draw(sequence_seed(5, 2, 3)), draw(sequence_seed(5, 2, 3)));
        let seeds = [sequence_seed(5, 2, 3), sequence_seed(5, 3, 2), sequence_seed(6, 2, 3), sequence_seed(5, 2, 4)];
        for (i, a) in seeds.iter().enumerate() {
            for b in &seeds[i + 1..] {
                assert_ne!(a, b);
            }
        }
        let u = SampleRng::new(9).next_f64();
        assert!((0.0..1.0).contains(&u));
    }

    #[test]
    fn prompt_lookup_proposes_what_followed_the_latest_earlier_run_of_the_last_tokens() {
        // The last three tokens (7, 8, 9) occurred at 1..4 and were followed by 4, 5.
        assert_eq!(lookup_draft(&[1, 7, 8, 9, 4, 5, 6], &[7, 8, 9], 3), vec![4, 5, 6]);
        assert_eq!(lookup_draft(&[1, 7, 8, 9, 4, 5, 6], &[7, 8, 9], 2), vec![4, 5]);
        // The latest occurrence wins; a draft stops at the context's end.
        assert_eq!(lookup_draft(&[7, 8, 1, 2, 7, 8, 3], &[7, 8], 3), vec![3, 7, 8]);
        assert_eq!(lookup_draft(&[5, 7, 8, 6], &[7, 8], 3), vec![6, 7, 8]);
        // Three tokens are tried before two: (2, 7, 8) is followed by 9, though (7, 8) last recurred before 6.
        assert_eq!(lookup_draft(&[2, 7, 8, 9, 0, 7, 8, 6, 4], &[2, 7, 8], 1), vec![9]);
        // A run of one token is not looked up; nothing recurs, or no room.
        assert!(lookup_draft(&[4, 1, 2, 3], &[4], 3).is_empty());
        assert!(lookup_draft(&[1, 2, 3, 4], &[5, 6], 3).is_empty());
        assert!(lookup_draft(&[7, 8, 9, 7, 8], &[], 0).is_empty());
        assert!(lookup_draft(&[7], &[], 3).is_empty());
    }

    #[test]
    fn the_earliest_stop_string_wins() {
        let stop = vec!["\n\n".to_string(), "def ".to_string(), String::new()];
        assert_eq!(find_stop("x = 1\ndef f():\n\n", &stop), Some(6));
        assert_eq!(find_stop("x = 1\n\ndef f():", &stop), Some(5));
        assert_eq!(find_stop("x = 1", &stop), None);
    }
}
