//! The task subcommands: multiple choice (`piqa`, `hellaswag`, `arc-easy`,
//! `arc-challenge`, `winogrande`, `boolq`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use artifacts::ItemRow;
use evaluate::choice::{load_choice_items, mean_stderr, predict, request_logliks, tokenize_requests, ChoiceTask};
use model::ModelConfig;

use crate::task_cli::{finish_task, load_task_model, Metric, TaskArgs};

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
    match config {
        ModelConfig::Llama(c) => c.max_position_embeddings,
    }
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
