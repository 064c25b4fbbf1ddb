//! `datasets sample`: token sequences for calibration or perplexity from a
//! documents artifact, tokenized with the model's tokenizer (no special tokens).
//!
//! Three modes:
//! - Wanda (default), as the c4 loader of Wanda's `data.py`: `nsamples` times,
//!   pick a uniformly random document of the split, again while its token count
//!   is at most `seqlen`, then a uniform start `i` in `0..=len - seqlen - 1` and
//!   the window `tokens[i..i + seqlen]`. With `concat`, documents are first
//!   joined in order (with the separator) into groups just longer than
//!   `seqlen`, and the groups are sampled instead: for corpora of short documents.
//! - Whole documents (the paper's variant): `nsamples` distinct documents in a
//!   seeded random order, each cut to its first `seqlen` tokens; empty ones are passed over.
//! - Windows (held-out perplexity): the split's documents in order, their tokens
//!   joined with the tokens of [`DOC_SEPARATOR`] between documents, cut into
//!   non-overlapping windows of `seqlen`, the tail dropped.

use std::collections::HashMap;
use std::path::Path;

use artifacts::{content_hash, read_documents, write_samples, ArtifactKind, Document, Provenance, Sample, SamplesInfo, Split};
use indicatif::ProgressBar;
use serde_json::Value;

use crate::rng::Rng;
use crate::{progress_bar, DatasetsError, CREATED_BY};

/// Text put between documents when they are joined (windows and `concat`).
pub const DOC_SEPARATOR: &str = "\n\n";

/// How sequences are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleMode {
    /// Random windows of random documents longer than seqlen (Wanda's c4 loader).
    Wanda,
    /// Whole random documents, cut to seqlen.
    WholeDocs,
    /// Non-overlapping windows of the documents in order.
    Windows,
}

impl SampleMode {
    /// The mode's name as recorded in params: `wanda`, `whole-docs`, `windows`.
    pub fn as_str(self) -> &'static str {
        match self {
            SampleMode::Wanda => "wanda",
            SampleMode::WholeDocs => "whole-docs",
            SampleMode::Windows => "windows",
        }
    }
}

/// Options of `sample`.
#[derive(Debug, Clone)]
pub struct SampleOptions {
    /// Number of sequences (Wanda and whole-docs modes).
    pub nsamples: usize,
    /// Tokens per sequence (the maximum for whole-docs).
    pub seqlen: usize,
    /// Seed of the generator.
    pub seed: u64,
    /// Which split to draw from.
    pub split: Split,
    /// The mode.
    pub mode: SampleMode,
    /// At most this many windows (windows mode).
    pub max_windows: Option<usize>,
    /// Join short documents into longer ones before Wanda sampling.
    pub concat: bool,
    /// Show progress bars on stderr.
    pub progress: bool,
}

/// One drawn sequence and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drawn {
    /// Index of the (first) document in the list sampled from.
    pub doc: usize,
    /// Offset of the first token within that document's (or group's, or stream's) tokens.
    pub start: usize,
    /// The tokens.
    pub tokens: Vec<u32>,
}

/// A text encoder usable from several threads.
pub type Encoder<'a> = dyn Fn(&str) -> Result<Vec<u32>, DatasetsError> + Sync + 'a;

/// Tokenizes `texts` on all cores in contiguous chunks, in order.
pub fn tokenize_all(texts: &[&str], encode: &Encoder<'_>, bar: &ProgressBar) -> Result<Vec<Vec<u32>>, DatasetsError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(texts.len().max(1));
    let chunk = texts.len().div_ceil(threads).max(1);
    let results: Vec<Result<Vec<Vec<u32>>, DatasetsError>> = std::thread::scope(|s| {
        let handles: Vec<_> = texts
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|t| {
                            let r = encode(t);
                            bar.inc(1);
                            r
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("tokenizer thread panicked")).collect()
    });
    let mut out = Vec::with_capacity(texts.len());
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

/// Wanda's sampling over `n` documents whose tokens `fetch(i)` gives; each
/// document is fetched (tokenized) at most once, when first picked.
///
/// `path` and `split` name the source in errors.
#[allow(clippy::too_many_arguments)]
pub fn sample_wanda(
    n: usize,
    fetch: &mut dyn FnMut(usize) -> Result<Vec<u32>, DatasetsError>,
    nsamples: usize,
    seqlen: usize,
    seed: u64,
    path: &Path,
    split: Split,
    bar: &ProgressBar,
) -> Result<Vec<Drawn>, DatasetsError> {
    if n == 0 {
        return Err(DatasetsError::EmptySplit { path: path.to_path_buf(), split: split.to_string(), total: 0 });
    }
    let mut rng = Rng::new(seed);
    let mut cache: HashMap<usize, Vec<u32>> = HashMap::new();
    let mut longest = 0usize;
    let mut any_long = false;
    let mut out = Vec::with_capacity(nsamples);
    for _ in 0..nsamples {
        let doc = loop {
            let i = rng.randint(0, n - 1);
            if let std::collections::hash_map::Entry::Vacant(slot) = cache.entry(i) {
                let toks = fetch(i)?;
                longest = longest.max(toks.len());
                any_long |= toks.len() > seqlen;
                slot.insert(toks);
            }
            if cache[&i].len() > seqlen {
                break i;
            }
            if cache.len() == n && !any_long {
                return Err(DatasetsError::NoLongDocument { path: path.to_path_buf(), split: split.to_string(), seqlen, docs: n, longest });
            }
        };
        let toks = &cache[&doc];
        let start = rng.randint(0, toks.len() - seqlen - 1);
        out.push(Drawn { doc, start, tokens: toks[start..start + seqlen].to_vec() });
        bar.inc(1);
    }
    Ok(out)
}

/// Joins tokenized documents in order, with `sep` between them, into groups
/// longer than `seqlen` tokens; a last group that stays too short is dropped.
/// Returns each group's first document index and its tokens.
pub fn concat_groups(docs: &[Vec<u32>], sep: &[u32], seqlen: usize) -> Vec<(usize, Vec<u32>)> {
    let mut groups = Vec::new();
    let mut current: Vec<u32> = Vec::new();
    let mut first = 0;
    for (i, d) in docs.iter().enumerate() {
        if current.is_empty() {
            first = i;
        } else {
            current.extend_from_slice(sep);
        }
        current.extend_from_slice(d);
        if current.len() > seqlen {
            groups.push((first, std::mem::take(&mut current)));
        }
    }
    groups
}

/// Whole documents in a seeded random order, each cut to `seqlen` tokens,
/// `nsamples` of them without replacement (documents that tokenize to nothing are passed over).
#[allow(clippy::too_many_arguments)]
pub fn sample_whole_docs(
    texts: &[&str],
    encode: &Encoder<'_>,
    nsamples: usize,
    seqlen: usize,
    seed: u64,
    path: &Path,
    split: Split,
    bar: &ProgressBar,
) -> Result<Vec<Drawn>, DatasetsError> {
    let too_few =
        |available| DatasetsError::TooFewDocuments { path: path.to_path_buf(), split: split.to_string(), asked: nsamples, available };
    if nsamples > texts.len() {
        return Err(too_few(texts.len()));
    }
    let mut order: Vec<usize> = (0..texts.len()).collect();
    let mut rng = Rng::new(seed);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.randint(0, i));
    }
    let mut out = Vec::with_capacity(nsamples);
    let mut pos = 0;
    while out.len() < nsamples && pos < order.len() {
        let need = nsamples - out.len();
        let block: Vec<usize> = order[pos..(pos + need).min(order.len())].to_vec();
        pos += block.len();
        let block_texts: Vec<&str> = block.iter().map(|&i| texts[i]).collect();
        for (doc, mut toks) in block.into_iter().zip(tokenize_all(&block_texts, encode, bar)?) {
            if toks.is_empty() {
                continue;
            }
            toks.truncate(seqlen);
            out.push(Drawn { doc, start: 0, tokens: toks });
        }
    }
    if out.len() < nsamples {
        return Err(too_few(out.len()));
    }
    Ok(out)
}

/// Non-overlapping windows of `seqlen` over the documents' tokens joined in
/// order with `sep`; at most `max_windows`. `Drawn::doc` is the document the
/// window starts in and `Drawn::start` the window's offset in the joined stream.
#[allow(clippy::too_many_arguments)]
pub fn sample_windows(
    texts: &[&str],
    encode: &Encoder<'_>,
    sep: &[u32],
    seqlen: usize,
    max_windows: Option<usize>,
    path: &Path,
    split: Split,
    bar: &ProgressBar,
) -> Result<Vec<Drawn>, DatasetsError> {
    const BLOCK: usize = 256;
    let want_tokens = max_windows.map(|w| w.saturating_mul(seqlen));
    let mut stream: Vec<u32> = Vec::new();
    let mut doc_starts: Vec<(usize, usize)> = Vec::new();
    for (b, block) in texts.chunks(BLOCK).enumerate() {
        if want_tokens.is_some_and(|w| stream.len() >= w) {
            break;
        }
        for (k, toks) in tokenize_all(block, encode, bar)?.into_iter().enumerate() {
            if !stream.is_empty() {
                stream.extend_from_slice(sep);
            }
            doc_starts.push((stream.len(), b * BLOCK + k));
            stream.extend(toks);
        }
    }
    let mut n = stream.len() / seqlen.max(1);
    if let Some(m) = max_windows {
        n = n.min(m);
    }
    if n == 0 || seqlen == 0 {
        return Err(DatasetsError::NoWindow { path: path.to_path_buf(), split: split.to_string(), tokens: stream.len(), seqlen });
    }
    let doc_at = |offset: usize| {
        let k = doc_starts.partition_point(|&(s, _)| s <= offset);
        doc_starts[k.saturating_sub(1)].1
    };
    Ok((0..n)
        .map(|w| Drawn { doc: doc_at(w * seqlen), start: w * seqlen, tokens: stream[w * seqlen..(w + 1) * seqlen].to_vec() })
        .collect())
}

/// What `sample` wrote.
#[derive(Debug, Clone)]
pub struct SampleSummary {
    /// Sequences written.
    pub samples: usize,
    /// Tokens written in all.
    pub tokens: usize,
    /// Documents in the split sampled from.
    pub split_docs: usize,
    /// Content hash of the written file.
    pub hash: String,
}

/// Draws sequences from the documents of `opts.split` (pure: no files).
pub fn draw(documents: &[&Document], encode: &Encoder<'_>, opts: &SampleOptions, path: &Path) -> Result<Vec<Drawn>, DatasetsError> {
    if opts.seqlen == 0 {
        return Err(DatasetsError::BadOption {
            option: "--seqlen".into(),
            message: "expected a positive number of tokens, found 0".into(),
        });
    }
    let texts: Vec<&str> = documents.iter().map(|d| d.text.as_str()).collect();
    let total = match opts.mode {
        SampleMode::Windows => texts.len() as u64,
        SampleMode::WholeDocs => opts.nsamples as u64,
        SampleMode::Wanda if opts.concat => texts.len() as u64,
        SampleMode::Wanda => opts.nsamples as u64,
    };
    let bar = progress_bar(opts.progress, total, if opts.mode == SampleMode::Wanda && !opts.concat { "sampling" } else { "tokenizing" });
    let sep = || encode(DOC_SEPARATOR);
    let drawn = match opts.mode {
        SampleMode::Wanda if opts.concat => {
            let docs = tokenize_all(&texts, encode, &bar)?;
            let groups = concat_groups(&docs, &sep()?, opts.seqlen);
            if groups.is_empty() {
                let tokens = docs.iter().map(Vec::len).sum::<usize>();
                return Err(DatasetsError::NoWindow {
                    path: path.to_path_buf(),
                    split: opts.split.to_string(),
                    tokens,
                    seqlen: opts.seqlen + 1,
                });
            }
            let mut fetch = |i: usize| Ok(groups[i].1.clone());
            let hidden = ProgressBar::hidden();
            let mut drawn = sample_wanda(groups.len(), &mut fetch, opts.nsamples, opts.seqlen, opts.seed, path, opts.split, &hidden)?;
            for d in &mut drawn {
                d.doc = groups[d.doc].0;
            }
            drawn
        }
        SampleMode::Wanda => {
            sample_wanda(texts.len(), &mut |i| encode(texts[i]), opts.nsamples, opts.seqlen, opts.seed, path, opts.split, &bar)?
        }
        SampleMode::WholeDocs => sample_whole_docs(&texts, encode, opts.nsamples, opts.seqlen, opts.seed, path, opts.split, &bar)?,
        SampleMode::Windows => sample_windows(&texts, encode, &sep()?, opts.seqlen, opts.max_windows, path, opts.split, &bar)?,
    };
    bar.finish_and_clear();
    Ok(drawn)
}

/// Reads `documents_path`, loads the tokenizer of `model_path`, draws
/// sequences per `opts` and writes them as a samples artifact to `out`, with
/// `params` as its recorded options.
pub fn sample(
    documents_path: &Path,
    model_path: &Path,
    opts: &SampleOptions,
    out: &Path,
    params: Value,
) -> Result<SampleSummary, DatasetsError> {
    let (_, documents) = read_documents(documents_path)?;
    let total = documents.len();
    let chosen: Vec<&Document> = documents.iter().filter(|d| d.split == opts.split).collect();
    if chosen.is_empty() {
        return Err(DatasetsError::EmptySplit { path: documents_path.to_path_buf(), split: opts.split.to_string(), total });
    }
    let loaded = model::load_model(model_path)?;
    let tokenizer = loaded.tokenizer()?;
    let encode = |t: &str| -> Result<Vec<u32>, DatasetsError> { Ok(tokenizer.encode(t, false)?) };
    let drawn = draw(&chosen, &encode, opts, documents_path)?;
    let samples: Vec<Sample> = drawn
        .into_iter()
        .enumerate()
        .map(|(i, d)| Sample { sample_id: i as u64, domain: chosen[d.doc].domain.clone(), tokens: d.tokens })
        .collect();
    let info = SamplesInfo {
        tokenizer_hash: tokenizer.fingerprint(),
        seqlen: opts.seqlen,
        seed: (opts.mode != SampleMode::Windows).then_some(opts.seed),
    };
    let provenance = Provenance::new(ArtifactKind::Samples, loaded.fingerprint.clone(), params, CREATED_BY)
        .with_input("documents", content_hash(documents_path)?);
    let hash = write_samples(out, &samples, &info, &provenance)?;
    Ok(SampleSummary { samples: samples.len(), tokens: samples.iter().map(|s| s.tokens.len()).sum(), split_docs: chosen.len(), hash })
}
