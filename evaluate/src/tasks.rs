//! The task subcommands: multiple choice (`piqa`, `hellaswag`, `arc-easy`,
//! `arc-challenge`, `winogrande`, `boolq`), `gsm8k` and `translation`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use artifacts::ItemRow;
use evaluate::choice::{load_choice_items, mean_stderr, predict, request_logliks, resolve_data_file, tokenize_requests, ChoiceTask};
use evaluate::generate::{Generation, GenerationConfig, GenerationRequest};
use evaluate::journal::Journal;
use evaluate::meteor::{meteor, Synonyms};
use evaluate::{gsm8k, translation};
use model::ModelConfig;

use crate::task_cli::{finish_task, generate_journaled, load_task_model, remove_journal, Metric, TaskArgs, TaskModel};

/// What `--data` should name for each task, for the error when it is missing.
fn expected_data(task: ChoiceTask) -> &'static str {
    match task {
        ChoiceTask::Piqa => "the PIQA validation file valid.jsonl (labels in valid-labels.lst beside it) or a ybisk/piqa Parquet/JSONL file with `label`, or a directory holding one (e.g. shared/data/piqa)",
        ChoiceTask::Hellaswag => "the HellaSwag validation file hellaswag_val.jsonl.gz or a Rowan/hellaswag Parquet/JSONL file, or a directory holding one (e.g. shared/data/hellaswag)",
        ChoiceTask::ArcEasy => "arc_easy.jsonl (llm-foundry layout) or an allenai/ai2_arc ARC-Easy Parquet/JSONL file, or a directory holding one (e.g. shared/data/arc)",
        ChoiceTask::ArcChallenge => "arc_challenge.jsonl (llm-foundry layout) or an allenai/ai2_arc ARC-Challenge Parquet/JSONL file, or a directory holding one (e.g. shared/data/arc)",
        ChoiceTask::Winogrande => "winogrande.jsonl (llm-foundry layout) or an allenai/winogrande Parquet/JSONL file, or a directory holding one (e.g. shared/data/winogrande)",
        ChoiceTask::Boolq => "boolq.jsonl.gz (llm-foundry layout) or a google/boolq Parquet/JSONL file, or a directory holding one (e.g. shared/data/boolq)",
    }
}

/// The data path of a task, or an error naming the file or directory it expects.
pub(crate) fn require_data(args: &TaskArgs, task: &str, expected: &str) -> Result<PathBuf> {
    args.data.clone().with_context(|| format!("`evaluate {task}` needs --data: {expected}"))
}

/// The longest sequence the model is configured for.
fn max_len(config: &ModelConfig) -> usize {
    config.max_position_embeddings()
}

/// Runs a multiple-choice task and prints `acc` (and `acc_norm` where the harness reports it).
pub(crate) fn run_choice(task: ChoiceTask, args: TaskArgs) -> Result<()> {
    let data = require_data(&args, task.name(), expected_data(task))?;
    let (file, items) = load_choice_items(task, &data, args.limit)?;
    eprintln!("{}: {} items from {}", task.name(), items.len(), file.display());
    let tm = load_task_model(&args)?;
    let tokenizer = tm.loaded.tokenizer()?;
    let requests: Vec<(String, String)> = items.iter().flat_map(|it| it.requests.iter().cloned()).collect();
    let tokens =
        tokenize_requests(tokenizer, &requests, max_len(&tm.loaded.config)).with_context(|| format!("tokenizing {}", file.display()))?;

    let bar = crate::progress(tokens.len(), args.quiet, task.name());
    let started = Instant::now();
    let logliks = request_logliks(&tm.model, &tokens, args.batch, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    let n_tokens: usize = tokens.iter().map(|t| t.tokens.len()).sum();
    eprintln!(
        "{} requests, {n_tokens} tokens in {:.1} s ({:.0} tokens/s)",
        tokens.len(),
        started.elapsed().as_secs_f64(),
        n_tokens as f64 / started.elapsed().as_secs_f64()
    );

    let mut acc = Vec::with_capacity(items.len());
    let mut acc_norm = Vec::with_capacity(items.len());
    let mut rows = Vec::with_capacity(items.len());
    let mut offset = 0;
    for (i, item) in items.iter().enumerate() {
        let lls = &logliks[offset..offset + item.requests.len()];
        offset += item.requests.len();
        let (pred, pred_norm) = predict(lls, &item.choices);
        acc.push(f64::from(u8::from(pred == item.gold)));
        acc_norm.push(f64::from(u8::from(pred_norm == item.gold)));
        rows.push(ItemRow {
            item: i as u64,
            sample: 0,
            gold: Some(item.gold.to_string()),
            pred: Some(pred.to_string()),
            pred_norm: task.reports_acc_norm().then(|| pred_norm.to_string()),
            generation: None,
            passed: Some(pred == item.gold),
            reason: None,
            choice_logliks: Some(lls.to_vec()),
            score: None,
        });
    }
    let metric = |name: &str, scores: &[f64]| {
        let (value, stderr) = mean_stderr(scores);
        Metric { name: name.to_string(), value, n: scores.len() as u64, stderr, ci: None }
    };
    let mut metrics = vec![metric("acc", &acc)];
    if task.reports_acc_norm() {
        metrics.push(metric("acc_norm", &acc_norm));
    }
    for m in &metrics {
        eprintln!("{} = {:.4} ± {:.4} (n = {})", m.name, m.value, m.stderr.unwrap_or(f64::NAN), m.n);
    }
    let params = serde_json::json!({
        "task": task.name(),
        "limit": args.limit,
        "items": items.len(),
        "num_fewshot": 0,
        "mask": tm.mask.as_ref().map(|(name, _)| name),
    });
    finish_task(&args, &tm, task.name(), &file, params, &metrics, &rows)
}

/// Options of `evaluate gsm8k`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Gsm8kArgs {
    #[command(flatten)]
    task: TaskArgs,
    /// Most tokens generated per question.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
}

/// Options of `evaluate translation`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct TranslationArgs {
    #[command(flatten)]
    task: TaskArgs,
    /// Field of each record holding the source sentence.
    #[arg(long, default_value = "en")]
    source_field: String,
    /// Field of each record holding the reference translation.
    #[arg(long, default_value = "de")]
    target_field: String,
    /// Name of the source language in the prompt.
    #[arg(long, default_value = "English")]
    source_lang: String,
    /// Name of the target language in the prompt.
    #[arg(long, default_value = "German")]
    target_lang: String,
    /// Few-shot examples: the first K pairs of the data file go into every prompt and are not evaluated.
    #[arg(long, default_value_t = 2)]
    shots: usize,
    /// WordNet for METEOR's synonym stage: NLTK's WordNet data directory (data.noun, ...) or a file of synonym sets, one a line; without it, exact and stem matching only.
    #[arg(long)]
    wordnet: Option<PathBuf>,
    /// Most tokens generated per sentence.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
}

/// One greedy continuation of each prompt of a generating task (`name`
/// labels the progress bar), journaled beside `--out`; prompts are encoded
/// without special tokens, as the harness does. Returns the continuations
/// and the journal to remove once the results are written.
fn generate_greedy(
    task: &TaskArgs,
    tm: &TaskModel,
    name: &str,
    prompts: &[String],
    max_new_tokens: usize,
    stop: &[&str],
) -> Result<(Vec<Generation>, Option<Journal>)> {
    let config = GenerationConfig {
        max_new_tokens,
        temperature: 0.0,
        stop: stop.iter().map(|s| s.to_string()).collect(),
        add_special_tokens: false,
        draft_tokens: task.draft_tokens,
        ..GenerationConfig::default()
    };
    let bar = crate::progress(prompts.len(), task.quiet, name);
    let started = Instant::now();
    let request =
        GenerationRequest { model: &tm.model, tokenizer: tm.loaded.tokenizer()?, prompts, samples: 1, config: &config, batch: task.batch };
    let (generations, journal) = generate_journaled(request, &tm.loaded.fingerprint, tm.mask.as_ref(), task.out.as_deref(), &bar)?;
    bar.finish_and_clear();
    eprintln!("generated in {:.1} s", started.elapsed().as_secs_f64());
    Ok((generations.into_iter().flatten().collect(), journal))
}

/// Runs GSM8K 8-shot chain-of-thought with greedy decoding; prints `exact_match`.
pub(crate) fn run_gsm8k(args: Gsm8kArgs) -> Result<()> {
    let task = &args.task;
    let data = require_data(
        task,
        "gsm8k",
        "the GSM8K test file test.jsonl (fields question, answer) or an openai/gsm8k Parquet/JSONL file, or a directory holding one (e.g. shared/data/gsm8k)",
    )?;
    let file = resolve_data_file(&data, &["test.jsonl", "main/test-00000-of-00001.parquet", "test.parquet"])?;
    let mut records = artifacts::records::read_records(&file)?;
    records.truncate(task.limit.unwrap_or(records.len()));
    let mut questions = Vec::with_capacity(records.len());
    let mut golds = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let field = |f: &str| {
            r.get(f).and_then(|v| v.as_str()).with_context(|| format!("{}: record {i} has no string field `{f}`", file.display()))
        };
        questions.push(gsm8k::prompt(field("question")?));
        let answer = field("answer")?;
        golds.push(
            gsm8k::gold_answer(answer).with_context(|| format!("{}: record {i}: the answer has no `#### <number>`", file.display()))?,
        );
    }
    if questions.is_empty() {
        anyhow::bail!("{}: no questions to evaluate", file.display());
    }
    eprintln!("gsm8k: {} questions from {}", questions.len(), file.display());
    let tm = load_task_model(task)?;
    let (generations, journal) = generate_greedy(task, &tm, "gsm8k", &questions, args.max_new_tokens, &gsm8k::STOP)?;
    let mut scores = Vec::with_capacity(golds.len());
    let mut rows = Vec::with_capacity(golds.len());
    for (i, (g, gold)) in generations.iter().zip(&golds).enumerate() {
        let pred = gsm8k::extract_answer(&g.text);
        let passed = pred.as_deref().is_some_and(|p| gsm8k::answers_match(p, gold));
        scores.push(f64::from(u8::from(passed)));
        rows.push(ItemRow {
            item: i as u64,
            sample: 0,
            gold: Some(gold.clone()),
            pred,
            pred_norm: None,
            generation: Some(g.text.clone()),
            passed: Some(passed),
            reason: Some(g.finish.as_str().to_string()),
            choice_logliks: None,
            score: None,
        });
    }
    let (value, stderr) = mean_stderr(&scores);
    eprintln!("exact_match = {value:.4} ± {:.4} (n = {})", stderr.unwrap_or(f64::NAN), scores.len());
    let metrics = [Metric { name: "exact_match".into(), value, n: scores.len() as u64, stderr, ci: None }];
    let params = serde_json::json!({
        "task": "gsm8k",
        "num_fewshot": gsm8k::EXEMPLARS.len(),
        "limit": task.limit,
        "max_new_tokens": args.max_new_tokens,
        "stop": gsm8k::STOP,
        "decoding": "greedy",
        "mask": tm.mask.as_ref().map(|(name, _)| name),
    });
    finish_task(task, &tm, "gsm8k", &file, params, &metrics, &rows)?;
    remove_journal(journal)
}

/// Runs few-shot translation with greedy decoding; prints `meteor`.
pub(crate) fn run_translation(args: TranslationArgs) -> Result<()> {
    let task = &args.task;
    let data = require_data(
        task,
        "translation",
        "a parallel set: a JSONL/JSON/Parquet file with source and target fields (--source-field, --target-field; default en, de), or a directory holding test.en-de.jsonl (e.g. shared/data/multi30k-en-de)",
    )?;
    let (file, pairs) = translation::load_pairs(&data, &args.source_field, &args.target_field)?;
    if pairs.len() <= args.shots {
        anyhow::bail!("{}: {} pairs, not more than the {} few-shot examples taken from its start", file.display(), pairs.len(), args.shots);
    }
    let (shots, rest) = pairs.split_at(args.shots);
    let rest = &rest[..task.limit.unwrap_or(rest.len()).min(rest.len())];
    let synonyms = match &args.wordnet {
        Some(p) => Some(Synonyms::from_path(p)?),
        None => None,
    };
    let prompts: Vec<String> = rest.iter().map(|p| translation::prompt(&p.source, shots, &args.source_lang, &args.target_lang)).collect();
    eprintln!("translation: {} sentences from {} ({} shots)", rest.len(), file.display(), shots.len());
    let tm = load_task_model(task)?;
    let (generations, journal) = generate_greedy(task, &tm, "translation", &prompts, args.max_new_tokens, &translation::STOP)?;
    let mut scores = Vec::with_capacity(rest.len());
    let mut rows = Vec::with_capacity(rest.len());
    for (i, (g, pair)) in generations.iter().zip(rest).enumerate() {
        let hyp = g.text.trim();
        let score = meteor(&[pair.target.as_str()], hyp, synonyms.as_ref());
        scores.push(score);
        rows.push(ItemRow {
            item: (args.shots + i) as u64,
            sample: 0,
            gold: Some(pair.target.clone()),
            pred: Some(hyp.to_string()),
            pred_norm: None,
            generation: Some(g.text.clone()),
            passed: None,
            reason: Some(format!("meteor {score:.4}")),
            choice_logliks: None,
            score: Some(score),
        });
    }
    let (value, stderr) = mean_stderr(&scores);
    eprintln!("meteor = {value:.4} ± {:.4} (n = {})", stderr.unwrap_or(f64::NAN), scores.len());
    let metrics = [Metric { name: "meteor".into(), value, n: scores.len() as u64, stderr, ci: None }];
    let params = serde_json::json!({
        "task": "translation",
        "source_field": args.source_field,
        "target_field": args.target_field,
        "source_lang": args.source_lang,
        "target_lang": args.target_lang,
        "shots": args.shots,
        "limit": task.limit,
        "max_new_tokens": args.max_new_tokens,
        "wordnet": args.wordnet.as_ref().map(|p| p.display().to_string()),
        "meteor": {"alpha": 0.9, "beta": 3.0, "gamma": 0.5},
        "decoding": "greedy",
        "mask": tm.mask.as_ref().map(|(name, _)| name),
    });
    finish_task(task, &tm, "translation", &file, params, &metrics, &rows)?;
    remove_journal(journal)
}
