//! Multiple-choice tasks scored by log-likelihood, as lm-evaluation-harness
//! does: every choice is a `(context, continuation)` request, the context is
//! tokenized alone and the continuation is the rest of the joint encoding,
//! and the prediction is the choice of highest log-likelihood (`acc`) or of
//! highest log-likelihood per character of the choice text (`acc_norm`).
//!
//! Prompts (zero-shot, the harness's task definitions):
//! - PIQA: `Question: {goal}\nAnswer:` + ` {sol}`.
//! - HellaSwag: `preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())` + ` {preprocess(ending)}`.
//! - ARC: `Question: {question}\nAnswer:` + ` {choice}`.
//! - WinoGrande ("partial" scoring): context `sentence[..blank] + option`, continuation ` {rest after the blank}`.
//! - BoolQ: `{passage}\nQuestion: {question}?\nAnswer:` + ` no` / ` yes`.

use std::path::{Path, PathBuf};

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use model::tokenizer::Tokenizer;
use model::Decoder;
use serde_json::Value;

use crate::EvalError;

/// One multiple-choice item: a `(context, continuation)` request per choice,
/// the choice texts whose lengths normalise `acc_norm`, and the gold index.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceItem {
    /// `(context, continuation)` per choice, continuation with its leading delimiter.
    pub requests: Vec<(String, String)>,
    /// The choice texts as the harness's `doc_to_choice` gives them (for
    /// WinoGrande the filled-in contexts); `acc_norm` divides by their length in characters.
    pub choices: Vec<String>,
    /// Index of the correct choice.
    pub gold: usize,
}

/// The multiple-choice tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChoiceTask {
    /// PIQA (physical commonsense, 2 solutions).
    Piqa,
    /// HellaSwag (4 endings).
    Hellaswag,
    /// ARC-Easy.
    ArcEasy,
    /// ARC-Challenge.
    ArcChallenge,
    /// WinoGrande (2 options, partial scoring).
    Winogrande,
    /// BoolQ (yes/no reading comprehension).
    Boolq,
}

impl ChoiceTask {
    /// The task's name on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            ChoiceTask::Piqa => "piqa",
            ChoiceTask::Hellaswag => "hellaswag",
            ChoiceTask::ArcEasy => "arc-easy",
            ChoiceTask::ArcChallenge => "arc-challenge",
            ChoiceTask::Winogrande => "winogrande",
            ChoiceTask::Boolq => "boolq",
        }
    }

    /// Whether the harness reports `acc_norm` for this task (PIQA, HellaSwag,
    /// ARC); WinoGrande and BoolQ report `acc` only.
    pub fn reports_acc_norm(self) -> bool {
        matches!(self, ChoiceTask::Piqa | ChoiceTask::Hellaswag | ChoiceTask::ArcEasy | ChoiceTask::ArcChallenge)
    }

    /// Data files looked for, in order, when `--data` is a directory: the
    /// shared copies' names first, then Hugging Face hub layouts.
    pub fn data_candidates(self) -> &'static [&'static str] {
        match self {
            ChoiceTask::Piqa => &["valid.jsonl", "validation.jsonl", "data/validation-00000-of-00001.parquet", "validation.parquet"],
            ChoiceTask::Hellaswag => {
                &["hellaswag_val.jsonl.gz", "hellaswag_val.jsonl", "data/validation-00000-of-00001.parquet", "validation.parquet"]
            }
            ChoiceTask::ArcEasy => &["arc_easy.jsonl", "ARC-Easy/test-00000-of-00001.parquet", "test.parquet"],
            ChoiceTask::ArcChallenge => &["arc_challenge.jsonl", "ARC-Challenge/test-00000-of-00001.parquet", "test.parquet"],
            ChoiceTask::Winogrande => &["winogrande.jsonl", "winogrande_xl/validation-00000-of-00001.parquet", "validation.parquet"],
            ChoiceTask::Boolq => &["boolq.jsonl.gz", "boolq.jsonl", "data/validation-00000-of-00001.parquet", "validation.parquet"],
        }
    }

    /// Builds the item of one record, accepting the shared (llm-foundry or
    /// original) layout and the Hugging Face layout of the set. `label` is
    /// the gold from a separate labels file (PIQA's `valid-labels.lst`).
    pub fn item(self, record: &Value, label: Option<usize>) -> Result<ChoiceItem, String> {
        match self {
            ChoiceTask::Piqa => piqa_item(record, label),
            ChoiceTask::Hellaswag => hellaswag_item(record),
            ChoiceTask::ArcEasy | ChoiceTask::ArcChallenge => arc_item(record),
            ChoiceTask::Winogrande => winogrande_item(record),
            ChoiceTask::Boolq => boolq_item(record),
        }
    }
}

fn field<'a>(record: &'a Value, name: &str) -> Result<&'a Value, String> {
    record.get(name).filter(|v| !v.is_null()).ok_or_else(|| {
        let found: Vec<&str> = record.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
        format!("expected a field `{name}`; the record has fields {found:?}")
    })
}

fn text_field(record: &Value, name: &str) -> Result<String, String> {
    field(record, name)?.as_str().map(str::to_string).ok_or_else(|| format!("field `{name}` should be a string, found {}", record[name]))
}

fn text_list(record: &Value, name: &str) -> Result<Vec<String>, String> {
    let v = field(record, name)?;
    v.as_array()
        .and_then(|a| a.iter().map(|x| x.as_str().map(str::to_string)).collect::<Option<Vec<_>>>())
        .ok_or_else(|| format!("field `{name}` should be a list of strings, found {v}"))
}

/// A label given as an integer, an integer string or a boolean.
fn index_value(v: &Value, name: &str) -> Result<usize, String> {
    match v {
        Value::Number(n) => n.as_u64().map(|n| n as usize),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(usize::from(*b)),
        _ => None,
    }
    .ok_or_else(|| format!("field `{name}` should be a non-negative integer label, found {v}"))
}

fn check_gold(gold: usize, n: usize) -> Result<usize, String> {
    if gold < n {
        Ok(gold)
    } else {
        Err(format!("the gold label {gold} is out of range for {n} choices"))
    }
}

fn with_space(choices: &[String]) -> Vec<String> {
    choices.iter().map(|c| format!(" {c}")).collect()
}

fn same_context(context: &str, choices: &[String]) -> Vec<(String, String)> {
    with_space(choices).into_iter().map(|c| (context.to_string(), c)).collect()
}

fn piqa_item(record: &Value, label: Option<usize>) -> Result<ChoiceItem, String> {
    let goal = text_field(record, "goal")?;
    let choices = vec![text_field(record, "sol1")?, text_field(record, "sol2")?];
    let gold = match (record.get("label").filter(|v| !v.is_null()), label) {
        (Some(v), _) => index_value(v, "label")?,
        (None, Some(l)) => l,
        (None, None) => return Err("expected a field `label` or a labels file beside the data (valid-labels.lst)".into()),
    };
    let context = format!("Question: {goal}\nAnswer:");
    Ok(ChoiceItem { requests: same_context(&context, &choices), gold: check_gold(gold, 2)?, choices })
}

/// lm-evaluation-harness's HellaSwag `preprocess`: strip, `" [title]"` →
/// `". "`, remove `[...]` tags (not across lines), replace double spaces once.
pub fn hellaswag_preprocess(text: &str) -> String {
    let text = text.trim().replace(" [title]", ". ");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find(|c| c == ']' || c == '\n') {
            Some(close) if after.as_bytes()[close] == b']' => rest = &after[close + 1..],
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

/// Python's `str.capitalize`: the first character upper-cased, the rest lower-cased.
pub fn py_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars.flat_map(char::to_lowercase)).collect(),
        None => String::new(),
    }
}

fn hellaswag_item(record: &Value) -> Result<ChoiceItem, String> {
    let query = if record.get("ctx_a").is_some_and(|v| !v.is_null()) {
        let ctx = format!("{} {}", text_field(record, "ctx_a")?, py_capitalize(&text_field(record, "ctx_b")?));
        hellaswag_preprocess(&format!("{}: {ctx}", text_field(record, "activity_label")?))
    } else {
        // The shared copy's `ctx` already is `activity_label + ": " + ctx`, preprocessed upstream.
        hellaswag_preprocess(&text_field(record, "ctx")?)
    };
    let choices: Vec<String> = text_list(record, "endings")?.iter().map(|e| hellaswag_preprocess(e)).collect();
    let gold = check_gold(index_value(field(record, "label")?, "label")?, choices.len())?;
    Ok(ChoiceItem { requests: same_context(&query, &choices), choices, gold })
}

fn arc_item(record: &Value) -> Result<ChoiceItem, String> {
    if record.get("query").is_some_and(|v| !v.is_null()) {
        let query = text_field(record, "query")?;
        let choices = text_list(record, "choices")?;
        let gold = check_gold(index_value(field(record, "gold")?, "gold")?, choices.len())?;
        return Ok(ChoiceItem { requests: same_context(&format!("{query}\nAnswer:"), &choices), choices, gold });
    }
    let question = text_field(record, "question")?;
    let c = field(record, "choices")?;
    let choices = text_list(c, "text").map_err(|e| format!("in `choices`: {e}"))?;
    let labels = text_list(c, "label").map_err(|e| format!("in `choices`: {e}"))?;
    let key = text_field(record, "answerKey")?;
    let gold = labels.iter().position(|l| *l == key).ok_or_else(|| format!("answerKey {key:?} is not among the labels {labels:?}"))?;
    Ok(ChoiceItem { requests: same_context(&format!("Question: {question}\nAnswer:"), &choices), choices, gold })
}

fn winogrande_item(record: &Value) -> Result<ChoiceItem, String> {
    let (contexts, continuation, gold) = if record.get("context_options").is_some_and(|v| !v.is_null()) {
        (text_list(record, "context_options")?, text_field(record, "continuation")?, index_value(field(record, "gold")?, "gold")?)
    } else {
        let sentence = text_field(record, "sentence")?;
        let blank = sentence.find('_').ok_or_else(|| format!("the sentence has no blank `_`: {sentence:?}"))?;
        let options = [text_field(record, "option1")?, text_field(record, "option2")?];
        let contexts = options.iter().map(|o| format!("{}{o}", &sentence[..blank])).collect();
        let answer = text_field(record, "answer")?;
        let gold = match answer.trim() {
            "1" => 0,
            "2" => 1,
            other => return Err(format!("field `answer` should be \"1\" or \"2\", found {other:?}")),
        };
        (contexts, sentence[blank + 1..].trim().to_string(), gold)
    };
    let gold = check_gold(gold, contexts.len())?;
    let requests = contexts.iter().map(|c| (c.clone(), format!(" {continuation}"))).collect();
    Ok(ChoiceItem { requests, choices: contexts, gold })
}

fn boolq_item(record: &Value) -> Result<ChoiceItem, String> {
    let context = if record.get("query").is_some_and(|v| !v.is_null()) {
        // llm-foundry keeps `Passage: {passage}\nQuestion: {question}?`; the harness has no `Passage: `.
        let query = text_field(record, "query")?;
        format!("{}\nAnswer:", query.strip_prefix("Passage: ").unwrap_or(&query))
    } else {
        format!("{}\nQuestion: {}?\nAnswer:", text_field(record, "passage")?, text_field(record, "question")?)
    };
    let gold = match ["gold", "answer", "label"].iter().find_map(|k| record.get(*k).filter(|v| !v.is_null()).map(|v| (k, v))) {
        Some((k, v)) => index_value(v, k)?,
        None => return Err("expected a field `answer` (true/false), `label` or `gold`".into()),
    };
    let choices = vec!["no".to_string(), "yes".to_string()];
    Ok(ChoiceItem { requests: same_context(&context, &choices), gold: check_gold(gold, 2)?, choices })
}

/// Finds the task's data file: `path` itself, or in a directory the first of
/// `candidates` present, else its only data file.
pub fn resolve_data_file(path: &Path, candidates: &[&str]) -> Result<PathBuf, EvalError> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if !path.is_dir() {
        return Err(EvalError::Input(format!(
            "{}: no such file or directory (expected a data file or a directory holding one of {})",
            path.display(),
            candidates.join(", ")
        )));
    }
    if let Some(found) = candidates.iter().map(|c| path.join(c)).find(|p| p.is_file()) {
        return Ok(found);
    }
    let data_files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| EvalError::Input(format!("{}: cannot list the directory: {e}", path.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && artifacts::records::DataFormat::of(p).is_some())
        .collect();
    match data_files.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(EvalError::Input(format!(
            "{}: expected one of {} in the directory, found {} data files; pass the file itself with --data",
            path.display(),
            candidates.join(", "),
            data_files.len()
        ))),
    }
}

/// PIQA's separate labels (`valid.jsonl` → `valid-labels.lst`), one integer a line, if that file exists.
fn piqa_labels(data: &Path) -> Result<Option<Vec<usize>>, EvalError> {
    let name = data.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.split('.').next().unwrap_or_default();
    let labels_path = data.with_file_name(format!("{stem}-labels.lst"));
    if !labels_path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&labels_path).map_err(|e| EvalError::Input(format!("{}: {e}", labels_path.display())))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            l.trim()
                .parse()
                .map_err(|_| EvalError::Input(format!("{}:{}: expected a label 0 or 1, found {l:?}", labels_path.display(), i + 1)))
        })
        .collect::<Result<Vec<usize>, _>>()
        .map(Some)
}

/// Reads the items of `task` from its data file (see [`resolve_data_file`]),
/// at most `limit` of them, in file order.
pub fn load_choice_items(task: ChoiceTask, data: &Path, limit: Option<usize>) -> Result<(PathBuf, Vec<ChoiceItem>), EvalError> {
    let file = resolve_data_file(data, task.data_candidates())?;
    let records = artifacts::records::read_records(&file)?;
    let labels = if task == ChoiceTask::Piqa { piqa_labels(&file)? } else { None };
    if let Some(l) = &labels {
        if l.len() != records.len() {
            return Err(EvalError::Input(format!(
                "{}: {} records but its labels file has {} labels",
                file.display(),
                records.len(),
                l.len()
            )));
        }
    }
    let n = limit.map_or(records.len(), |k| k.min(records.len()));
    let items = records[..n]
        .iter()
        .enumerate()
        .map(|(i, r)| {
            task.item(r, labels.as_ref().map(|l| l[i]))
                .map_err(|e| EvalError::Input(format!("{}: record {i} is not a {} item: {e}", file.display(), task.name())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if items.is_empty() {
        return Err(EvalError::Input(format!("{}: no items to evaluate", file.display())));
    }
    Ok((file, items))
}

/// The harness's `_encode_pair`: trailing spaces of the context move to the
/// continuation, the context is encoded alone and the continuation tokens
/// are what the joint encoding has beyond the context's length. An empty
/// context is replaced by `prefix` (BOS, else EOS), as the harness does.
pub fn encode_pair(
    tokenizer: &Tokenizer,
    context: &str,
    continuation: &str,
    prefix: Option<u32>,
) -> Result<(Vec<u32>, Vec<u32>), EvalError> {
    if context.is_empty() {
        let prefix =
            prefix.ok_or_else(|| EvalError::Input("an empty context needs a BOS or EOS token; the tokenizer has neither".into()))?;
        return Ok((vec![prefix], tokenizer.encode(continuation, false)?));
    }
    let trimmed = context.trim_end();
    let (context, continuation) = (trimmed, format!("{}{continuation}", &context[trimmed.len()..]));
    let whole = tokenizer.encode(&format!("{context}{continuation}"), false)?;
    let context_enc = tokenizer.encode(context, false)?;
    let cont = whole.get(context_enc.len()..).unwrap_or_default().to_vec();
    Ok((context_enc, cont))
}

/// A tokenized request: the full sequence and how many trailing tokens are the continuation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// Context then continuation tokens, left-truncated to fit the model.
    pub tokens: Vec<u32>,
    /// Number of continuation tokens at the end of `tokens`.
    pub continuation: usize,
}

/// Tokenizes `(context, continuation)` requests as the harness does and
/// left-truncates each to `max_len + 1` tokens (the model sees at most
/// `max_len`; the last token is only a target).
pub fn tokenize_requests(tokenizer: &Tokenizer, requests: &[(String, String)], max_len: usize) -> Result<Vec<TokenRequest>, EvalError> {
    let prefix = tokenizer.bos_id().or(tokenizer.eos_id());
    requests
        .iter()
        .map(|(ctx, cont)| {
            let (c, k) = encode_pair(tokenizer, ctx, cont, prefix)?;
            if k.is_empty() {
                return Err(EvalError::Input(format!("the continuation {cont:?} of context {ctx:?} has no tokens of its own")));
            }
            if k.len() > max_len {
                return Err(EvalError::Input(format!("the continuation {cont:?} has {} tokens, more than the model's {max_len}", k.len())));
            }
            let mut tokens = c;
            tokens.extend_from_slice(&k);
            let start = tokens.len().saturating_sub(max_len + 1);
            Ok(TokenRequest { tokens: tokens[start..].to_vec(), continuation: k.len() })
        })
        .collect()
}

/// Log-likelihood of each request's continuation given its context: sum of
/// log p(token | prefix) over the continuation tokens. The LM head runs
/// only on the positions that predict a continuation token.
///
/// Requests whose context other requests share (an item's choices) and is
/// at least as long as their continuations (BoolQ's passage, an ARC
/// question) share one pass over it: contexts run `batch` at a time,
/// left-padded to the longest, into a key/value cache whose rows are then
/// copied out to each request, and the continuations (all but their last
/// token) run after it. The others (short contexts, as PIQA's, or contexts
/// of their own, as WinoGrande's) run whole, `batch` at a time, sorted by
/// length and right-padded (causal attention keeps the padding out of the
/// real positions). `on_done` is called with the number of requests
/// finished after each batch.
pub fn request_logliks(
    model: &Decoder,
    requests: &[TokenRequest],
    batch: usize,
    mut on_done: impl FnMut(usize),
) -> Result<Vec<f64>, EvalError> {
    if let Some(r) = requests.iter().find(|r| r.continuation == 0 || r.continuation >= r.tokens.len()) {
        return Err(EvalError::Input(format!(
            "a request needs at least a context token and a continuation token; found {} tokens of which {} continue",
            r.tokens.len(),
            r.continuation
        )));
    }
    let batch = batch.max(1);
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of: std::collections::HashMap<&[u32], usize> = std::collections::HashMap::new();
    for (i, r) in requests.iter().enumerate() {
        let g = *group_of.entry(r.context()).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    let worth_sharing =
        |g: &Vec<usize>| g.len() > 1 && g.iter().all(|&i| requests[i].continuation <= requests[i].tokens.len() - requests[i].continuation);
    let (mut shared, whole): (Vec<Vec<usize>>, Vec<Vec<usize>>) = groups.into_iter().partition(worth_sharing);
    let mut out = vec![0.0; requests.len()];
    let mut whole: Vec<usize> = whole.into_iter().flatten().collect();
    whole.sort_by_key(|&i| (std::cmp::Reverse(requests[i].tokens.len()), i));
    for chunk in whole.chunks(batch) {
        for (&i, loglik) in chunk.iter().zip(whole_logliks(model, requests, chunk)?) {
            out[i] = loglik;
        }
        on_done(chunk.len());
    }
    // Longest contexts first, so that a batch's rows have similar lengths.
    shared.sort_by_key(|g| (std::cmp::Reverse(requests[g[0]].context().len()), g[0]));
    for chunk in shared.chunks(batch) {
        let members: Vec<(usize, usize)> = chunk.iter().enumerate().flat_map(|(row, g)| g.iter().map(move |&i| (row, i))).collect();
        for (&(_, i), loglik) in members.iter().zip(shared_logliks(model, requests, chunk, &members)?) {
            out[i] = loglik;
        }
        on_done(members.len());
    }
    Ok(out)
}

impl TokenRequest {
    /// The context tokens (all before the continuation).
    fn context(&self) -> &[u32] {
        &self.tokens[..self.tokens.len() - self.continuation]
    }

    /// The continuation tokens.
    fn continuation_tokens(&self) -> &[u32] {
        &self.tokens[self.tokens.len() - self.continuation..]
    }
}

/// Log-likelihoods of `chunk`'s requests, each run whole, right-padded to the longest.
fn whole_logliks(model: &Decoder, requests: &[TokenRequest], chunk: &[usize]) -> Result<Vec<f64>, EvalError> {
    let longest = chunk.iter().map(|&i| requests[i].tokens.len()).max().unwrap_or(0);
    let padded: Vec<Vec<u32>> = chunk
        .iter()
        .map(|&i| {
            let mut t = requests[i].tokens.clone();
            t.resize(longest, 0);
            t
        })
        .collect();
    let hidden = model.forward_hidden(&padded)?;
    // Position p predicts token p + 1.
    let (mut rows, mut targets) = (Vec::new(), Vec::new());
    for (b, &i) in chunk.iter().enumerate() {
        let r = &requests[i];
        let end = r.tokens.len() - 1;
        rows.extend((end - r.continuation..end).map(|p| b * longest + p));
        targets.extend_from_slice(r.continuation_tokens());
    }
    let logprobs = target_logprobs(model, hidden, &rows, &targets)?;
    Ok(sums(chunk.iter().map(|&i| requests[i].continuation), logprobs))
}

/// Log-likelihoods of the requests `members` ((context row, request)) of
/// `chunk`'s groups: each group's context once, then every continuation
/// after a copy of its context's cache rows.
fn shared_logliks(
    model: &Decoder,
    requests: &[TokenRequest],
    chunk: &[Vec<usize>],
    members: &[(usize, usize)],
) -> Result<Vec<f64>, EvalError> {
    let context = |g: &Vec<usize>| requests[g[0]].context();
    let longest = chunk.iter().map(|g| context(g).len()).max().unwrap_or(0);
    let padding: Vec<usize> = chunk.iter().map(|g| longest - context(g).len()).collect();
    // Padding slots hold the row's first token: any valid id does, none is attended to.
    let contexts: Vec<Vec<u32>> = chunk
        .iter()
        .zip(&padding)
        .map(|(g, &p)| std::iter::repeat_n(context(g)[0], p).chain(context(g).iter().copied()).collect())
        .collect();
    let mut cache = model.new_padded_cache(padding);
    let context_hidden = model.forward_cached_hidden(&contexts, &mut cache, model.kernels())?;
    // Each request's continuation but its last token, which is only predicted.
    let steps = members.iter().map(|&(_, i)| requests[i].continuation - 1).max().unwrap_or(0);
    // Rows of the concatenated hidden states (the contexts', then the
    // continuations') predicting each continuation token, in request order:
    // the context's last position, then the continuation's own positions.
    let context_rows = chunk.len() * longest;
    let (mut rows, mut targets) = (Vec::new(), Vec::new());
    for (member, &(row, i)) in members.iter().enumerate() {
        let continuation = requests[i].continuation_tokens();
        rows.push(row * longest + longest - 1);
        rows.extend((1..continuation.len()).map(|j| context_rows + member * steps + j - 1));
        targets.extend_from_slice(continuation);
    }
    let hidden = if steps > 0 {
        cache.select_rows(&members.iter().map(|&(row, _)| row).collect::<Vec<_>>());
        let continuations: Vec<Vec<u32>> = members
            .iter()
            .map(|&(_, i)| {
                let continuation = requests[i].continuation_tokens();
                let mut t = continuation[..continuation.len() - 1].to_vec();
                t.resize(steps, 0);
                t
            })
            .collect();
        let continuation_hidden = model.forward_cached_hidden(&continuations, &mut cache, model.kernels())?;
        Tensor::cat(vec![context_hidden, continuation_hidden], 0)
    } else {
        context_hidden
    };
    let logprobs = target_logprobs(model, hidden, &rows, &targets)?;
    Ok(sums(members.iter().map(|&(_, i)| requests[i].continuation), logprobs))
}

/// log p(target | the position's prefix) of each chosen row of `hidden`
/// (the LM head runs on those rows only).
fn target_logprobs(model: &Decoder, hidden: Tensor<2>, rows: &[usize], targets: &[u32]) -> Result<Vec<f32>, EvalError> {
    let device = hidden.device();
    let [_, width] = hidden.dims();
    let n = rows.len();
    let rows: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
    let chosen = hidden.select(0, Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), &device));
    let mut out = Vec::with_capacity(n);
    // The logits a few hundred rows at a time: a batch's continuations over
    // a 150k vocabulary would otherwise take a gigabyte, several times over
    // in the log-softmax.
    for range in head_chunks(n) {
        let targets: Vec<i32> = targets[range.clone()].iter().map(|&t| t as i32).collect();
        let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [range.len(), 1]), &device);
        let logits = model.head(chosen.clone().slice([range, 0..width]));
        let picked: Vec<f32> = log_softmax(logits, 1)
            .gather(1, targets)
            .into_data()
            .try_into_vec()
            .map_err(|e| EvalError::Input(format!("could not read log-probabilities back from the device: {e:?}")))?;
        out.extend(picked);
    }
    Ok(out)
}

/// Rows of the LM head's output computed at a time by [`target_logprobs`].
const HEAD_ROWS: usize = 256;

/// The stretches of `n` rows whose logits are computed together: of
/// [`HEAD_ROWS`], a rest of [`model::FEW_ROWS`] rows or fewer joined to the
/// stretch before it. So every stretch takes the product the whole would
/// (few-row products differ from the others in their last bits), and each
/// row's log-probabilities are those of all rows at once, bit for bit.
fn head_chunks(n: usize) -> Vec<std::ops::Range<usize>> {
    let mut chunks: Vec<std::ops::Range<usize>> = (0..n).step_by(HEAD_ROWS).map(|start| start..(start + HEAD_ROWS).min(n)).collect();
    if chunks.len() > 1 && chunks.last().is_some_and(|last| last.len() <= model::FEW_ROWS) {
        let rest = chunks.pop().expect("more than one");
        chunks.last_mut().expect("one left").end = rest.end;
    }
    chunks
}

/// Consecutive runs of `values` of the given lengths, each summed in f64.
fn sums(lengths: impl Iterator<Item = usize>, values: Vec<f32>) -> Vec<f64> {
    let mut values = values.into_iter();
    lengths.map(|n| values.by_ref().take(n).map(f64::from).sum()).collect()
}

/// The predictions of one item: by raw log-likelihood and by log-likelihood
/// per character of the choice text; ties go to the first (numpy's argmax).
pub fn predict(logliks: &[f64], choices: &[String]) -> (usize, usize) {
    let argmax = |v: &mut dyn Iterator<Item = f64>| {
        let mut best: Option<(usize, f64)> = None;
        for (i, x) in v.enumerate() {
            if best.is_none_or(|(_, b)| x > b) {
                best = Some((i, x));
            }
        }
        best.map_or(0, |(i, _)| i)
    };
    let pred = argmax(&mut logliks.iter().copied());
    let pred_norm = argmax(&mut logliks.iter().zip(choices).map(|(l, c)| l / c.chars().count() as f64));
    (pred, pred_norm)
}

/// Mean of 0/1 scores and the harness's standard error of the mean
/// (sample standard deviation with n - 1, over sqrt(n)); `None` below two items.
pub fn mean_stderr(scores: &[f64]) -> (f64, Option<f64>) {
    let n = scores.len() as f64;
    let mean = scores.iter().sum::<f64>() / n;
    if scores.len() < 2 {
        return (mean, None);
    }
    let var = scores.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, Some((var / n).sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_chunks_cover_the_rows_in_order_and_never_leave_a_few_row_rest() {
        for n in [0, 1, model::FEW_ROWS, HEAD_ROWS, HEAD_ROWS + 1, HEAD_ROWS + model::FEW_ROWS, HEAD_ROWS + model::FEW_ROWS + 1, 1000] {
            let chunks = head_chunks(n);
            let mut next = 0;
            for chunk in &chunks {
                assert_eq!(chunk.start, next, "{n} rows: {chunks:?}");
                next = chunk.end;
                assert!(chunk.len() <= HEAD_ROWS + model::FEW_ROWS, "{n} rows: {chunks:?}");
                // Few rows only where all the rows are few.
                assert!(chunk.len() > model::FEW_ROWS || chunks.len() == 1, "{n} rows: {chunks:?}");
            }
            assert_eq!(next, n);
        }
        assert_eq!(head_chunks(HEAD_ROWS + 10), vec![0..HEAD_ROWS + 10]);
        assert_eq!(head_chunks(HEAD_ROWS + 100), vec![0..HEAD_ROWS, HEAD_ROWS..HEAD_ROWS + 100]);
    }

    #[test]
    fn log_probabilities_of_rows_taken_in_chunks_equal_those_of_all_rows_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        testkit::write_gguf(&path, &testkit::TINY, &testkit::tiny_weights(&testkit::TINY, 3), model::gguf::GgmlType::Q8_0);
        let loaded = model::load_model(&path).unwrap();
        // Both forms of the model: f32 and stored.
        for network in [loaded.build(&testkit::cpu()).unwrap(), loaded.build_stored(&testkit::cpu()).unwrap()] {
            let n = HEAD_ROWS * 2 + 40;
            let mut rng = testkit::Rng::new(4);
            let hidden: Vec<f32> = (0..n * testkit::TINY.hidden).map(|_| rng.next_f32() - 0.5).collect();
            let hidden = Tensor::<2>::from_data(TensorData::new(hidden, [n, testkit::TINY.hidden]), &testkit::cpu());
            let rows: Vec<usize> = (0..n).rev().collect();
            let targets: Vec<u32> = (0..n).map(|i| (i * 7 % testkit::TINY.vocab) as u32).collect();
            let chunked = target_logprobs(&network, hidden.clone(), &rows, &targets).unwrap();
            assert_eq!(head_chunks(n).len(), 2);
            // All rows through the head at once, as before the chunks.
            let index: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
            let chosen = hidden.select(0, Tensor::<1, Int>::from_data(TensorData::new(index, [n]), &testkit::cpu()));
            let logprobs: Vec<f32> = log_softmax(network.head(chosen), 1).into_data().try_into_vec().unwrap();
            for (i, (&got, &t)) in chunked.iter().zip(&targets).enumerate() {
                assert_eq!(got.to_bits(), logprobs[i * testkit::TINY.vocab + t as usize].to_bits(), "row {i}");
            }
        }
    }
}
