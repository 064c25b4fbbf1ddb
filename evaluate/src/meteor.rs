//! METEOR (Banerjee and Lavie, 2005) of a hypothesis against references.
//!
//! Conventions follow NLTK's `nltk.translate.meteor_score`: both sentences
//! are lower-cased and split on whitespace; unigrams are aligned in stages,
//! exact words first, then equal Porter stems ([`crate::porter`]), then
//! WordNet synonyms when a [`Synonyms`] table is given; `P = m / |hyp|`,
//! `R = m / |ref|`, `Fmean = P R / (alpha P + (1 - alpha) R)`,
//! `penalty = gamma (chunks / m)^beta`, `score = Fmean (1 - penalty)`, with
//! alpha 0.9, beta 3, gamma 0.5; several references give the best score.
//!
//! Where NLTK aligns each stage greedily (from the last word backwards), this
//! follows the paper: within a stage, among the alignments with the most
//! matches, the one with the fewest chunks is taken (searched exhaustively up
//! to a node budget). The two agree whenever no word can match more than one
//! candidate. Synonyms are looked up by exact lemma (NLTK's WordNet also
//! tries morphological base forms, "morphy"); multi-word lemmas are ignored,
//! as in NLTK.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::porter::stem;
use crate::EvalError;

/// METEOR's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeteorParams {
    /// Weight of precision against recall in Fmean.
    pub alpha: f64,
    /// Exponent of the fragmentation penalty.
    pub beta: f64,
    /// Maximum fragmentation penalty.
    pub gamma: f64,
}

impl Default for MeteorParams {
    fn default() -> Self {
        MeteorParams { alpha: 0.9, beta: 3.0, gamma: 0.5 }
    }
}

/// The parts of one sentence's METEOR score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeteorDetail {
    /// Aligned unigrams.
    pub matches: usize,
    /// Runs of matches adjacent and in the same order in both sentences.
    pub chunks: usize,
    /// Hypothesis length in words.
    pub hyp_len: usize,
    /// Reference length in words.
    pub ref_len: usize,
    /// matches / hyp_len.
    pub precision: f64,
    /// matches / ref_len.
    pub recall: f64,
    /// The harmonic mean weighted by alpha.
    pub fmean: f64,
    /// The fragmentation penalty.
    pub penalty: f64,
    /// Fmean * (1 - penalty); 0 without matches.
    pub score: f64,
}

/// Synonym sets: every word maps to the ids of the sets it belongs to.
#[derive(Debug, Clone, Default)]
pub struct Synonyms {
    sets: HashMap<String, Vec<u32>>,
    next_id: u32,
}

impl Synonyms {
    /// Reads WordNet synonyms from `path`: either NLTK's WordNet data
    /// directory (`data.noun`, `data.verb`, `data.adj`, `data.adv` in it or in
    /// `corpora/wordnet/` below it: each synset line's lemmas form one set), or
    /// a plain text file with one synonym set a line, words separated by
    /// commas or whitespace.
    pub fn from_path(path: &Path) -> Result<Synonyms, EvalError> {
        let mut out = Synonyms::default();
        if path.is_dir() {
            let dir = [path.to_path_buf(), path.join("wordnet"), path.join("corpora/wordnet")]
                .into_iter()
                .find(|d| d.join("data.noun").is_file())
                .ok_or_else(|| {
                    EvalError::Input(format!(
                        "{}: expected a WordNet directory with data.noun, data.verb, data.adj, data.adv (NLTK's corpora/wordnet) or a synonym list file",
                        path.display()
                    ))
                })?;
            for pos in ["noun", "verb", "adj", "adv"] {
                let file = dir.join(format!("data.{pos}"));
                if !file.is_file() {
                    continue;
                }
                let text = std::fs::read_to_string(&file).map_err(|e| EvalError::Input(format!("{}: {e}", file.display())))?;
                for (i, line) in text.lines().enumerate() {
                    if line.starts_with("  ") || line.trim().is_empty() {
                        continue;
                    }
                    let words = wordnet_lemmas(line)
                        .ok_or_else(|| EvalError::Input(format!("{}:{}: not a WordNet synset line", file.display(), i + 1)))?;
                    out.add_set(words);
                }
            }
        } else {
            let text = std::fs::read_to_string(path)
                .map_err(|e| EvalError::Input(format!("{}: cannot read the synonym list: {e}", path.display())))?;
            for line in text.lines() {
                out.add_set(line.split(|c: char| c == ',' || c.is_whitespace()).filter(|w| !w.is_empty()).map(str::to_string).collect());
            }
        }
        if out.sets.is_empty() {
            return Err(EvalError::Input(format!("{}: no synonym sets found", path.display())));
        }
        Ok(out)
    }

    /// Adds one synonym set (words lower-cased; multi-word lemmas with `_` dropped).
    pub fn add_set(&mut self, words: Vec<String>) {
        let words: HashSet<String> = words.into_iter().filter(|w| !w.contains('_')).map(|w| w.to_lowercase()).collect();
        if words.len() < 2 {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        for w in words {
            self.sets.entry(w).or_default().push(id);
        }
    }

    /// Whether `a` and `b` share a synonym set.
    pub fn related(&self, a: &str, b: &str) -> bool {
        match (self.sets.get(a), self.sets.get(b)) {
            (Some(x), Some(y)) => x.iter().any(|i| y.contains(i)),
            _ => false,
        }
    }
}

/// The lemmas of a WordNet `data.*` line: `offset lex_filenum ss_type w_cnt
/// (word lex_id){w_cnt} ...`, `w_cnt` in hex, adjective markers like `(a)` removed.
fn wordnet_lemmas(line: &str) -> Option<Vec<String>> {
    let mut f = line.split(' ');
    f.next()?.parse::<u64>().ok()?;
    f.next()?;
    f.next()?;
    let n = usize::from_str_radix(f.next()?, 16).ok()?;
    let mut words = Vec::with_capacity(n);
    for _ in 0..n {
        let w = f.next()?;
        f.next()?;
        words.push(w.split('(').next().unwrap_or(w).to_string());
    }
    Some(words)
}

/// Lower-cased whitespace tokens, NLTK's usual preprocessing.
pub fn tokenize(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_lowercase).collect()
}

/// Number of chunks of an alignment given as (hyp, ref) pairs.
pub fn count_chunks(matches: &[(usize, usize)]) -> usize {
    let mut m = matches.to_vec();
    m.sort_unstable();
    if m.is_empty() {
        return 0;
    }
    1 + m.windows(2).filter(|w| !(w[1].0 == w[0].0 + 1 && w[1].1 == w[0].1 + 1)).count()
}

/// Node budget of the per-stage alignment search.
const SEARCH_BUDGET: usize = 200_000;

struct Search<'a> {
    /// Candidate refs per hypothesis position (empty where matched already or no candidate).
    candidates: &'a [Vec<usize>],
    fixed: &'a [(usize, usize)],
    ref_used: Vec<bool>,
    current: Vec<(usize, usize)>,
    best: Option<(usize, usize, Vec<(usize, usize)>)>,
    nodes: usize,
    /// remaining[i]: hypothesis positions >= i with any candidate.
    remaining: Vec<usize>,
}

impl Search<'_> {
    fn run(&mut self, i: usize) {
        self.nodes += 1;
        if i == self.candidates.len() {
            let mut all = self.fixed.to_vec();
            all.extend_from_slice(&self.current);
            let (m, c) = (self.current.len(), count_chunks(&all));
            if self.best.as_ref().is_none_or(|(bm, bc, _)| m > *bm || (m == *bm && c < *bc)) {
                self.best = Some((m, c, self.current.clone()));
            }
            return;
        }
        if let Some((bm, _, _)) = &self.best {
            if self.current.len() + self.remaining[i] < *bm || self.nodes > SEARCH_BUDGET {
                return;
            }
        }
        // Prefer the candidate continuing the previous hypothesis word's match.
        let prev = self.current.last().filter(|(h, _)| h + 1 == i).or_else(|| self.fixed.iter().find(|(h, _)| h + 1 == i)).copied();
        let mut order: Vec<usize> = self.candidates[i].iter().copied().filter(|&r| !self.ref_used[r]).collect();
        order.sort_by_key(|&r| (prev.is_none_or(|(ph, pr)| !(ph + 1 == i && pr + 1 == r)), r));
        for r in order {
            self.ref_used[r] = true;
            self.current.push((i, r));
            self.run(i + 1);
            self.current.pop();
            self.ref_used[r] = false;
        }
        self.run(i + 1);
    }
}

/// Aligns one stage: the most matches among `pairs(h, r)` of still unmatched
/// words, with the fewest chunks together with `fixed`.
fn align_stage(hyp: &[String], refs: &[String], fixed: &[(usize, usize)], pairs: impl Fn(&str, &str) -> bool) -> Vec<(usize, usize)> {
    let hyp_done: HashSet<usize> = fixed.iter().map(|m| m.0).collect();
    let ref_done: HashSet<usize> = fixed.iter().map(|m| m.1).collect();
    let candidates: Vec<Vec<usize>> = (0..hyp.len())
        .map(|h| {
            if hyp_done.contains(&h) {
                return Vec::new();
            }
            (0..refs.len()).filter(|r| !ref_done.contains(r) && pairs(&hyp[h], &refs[*r])).collect()
        })
        .collect();
    let mut remaining = vec![0; hyp.len() + 1];
    for i in (0..hyp.len()).rev() {
        remaining[i] = remaining[i + 1] + usize::from(!candidates[i].is_empty());
    }
    if remaining[0] == 0 {
        return Vec::new();
    }
    let mut s =
        Search { candidates: &candidates, fixed, ref_used: vec![false; refs.len()], current: Vec::new(), best: None, nodes: 0, remaining };
    s.run(0);
    s.best.map(|b| b.2).unwrap_or_default()
}

/// METEOR of one hypothesis against one reference (both raw text).
pub fn meteor_detail(reference: &str, hypothesis: &str, synonyms: Option<&Synonyms>, params: MeteorParams) -> MeteorDetail {
    let (hyp, refs) = (tokenize(hypothesis), tokenize(reference));
    let mut matches = align_stage(&hyp, &refs, &[], |a, b| a == b);
    let stems_h: Vec<String> = hyp.iter().map(|w| stem(w)).collect();
    let stems_r: Vec<String> = refs.iter().map(|w| stem(w)).collect();
    let stem_stage = align_stage(&stems_h, &stems_r, &matches, |a, b| a == b);
    matches.extend(stem_stage);
    if let Some(syn) = synonyms {
        let stage = align_stage(&hyp, &refs, &matches, |a, b| syn.related(a, b));
        matches.extend(stage);
    }
    let m = matches.len();
    let chunks = count_chunks(&matches);
    let (hyp_len, ref_len) = (hyp.len(), refs.len());
    if m == 0 {
        return MeteorDetail { matches: 0, chunks: 0, hyp_len, ref_len, precision: 0.0, recall: 0.0, fmean: 0.0, penalty: 0.0, score: 0.0 };
    }
    let precision = m as f64 / hyp_len as f64;
    let recall = m as f64 / ref_len as f64;
    let fmean = precision * recall / (params.alpha * precision + (1.0 - params.alpha) * recall);
    let penalty = params.gamma * (chunks as f64 / m as f64).powf(params.beta);
    MeteorDetail { matches: m, chunks, hyp_len, ref_len, precision, recall, fmean, penalty, score: fmean * (1.0 - penalty) }
}

/// METEOR of a hypothesis against several references: the best single-reference score.
pub fn meteor(references: &[&str], hypothesis: &str, synonyms: Option<&Synonyms>) -> f64 {
    references.iter().map(|r| meteor_detail(r, hypothesis, synonyms, MeteorParams::default()).score).fold(0.0, f64::max)
}
