//! Translation task data and prompt: parallel pairs from a JSONL/JSON/Parquet
//! file (Multi30k en→de by default field names) and a plain few-shot prompt:
//!
//! ```text
//! Translate English to German.
//!
//! English: {source of shot 1}
//! German: {target of shot 1}
//!
//! English: {source}
//! German:
//! ```
//!
//! The output is the generation up to the first newline, scored by METEOR
//! against the reference ([`crate::meteor`]).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::choice::resolve_data_file;
use crate::EvalError;

/// Data files looked for in a `--data` directory (the shared Multi30k copy's names).
pub const DATA_CANDIDATES: [&str; 2] = ["test.en-de.jsonl", "val.en-de.jsonl"];

/// Where a translation's generation stops.
pub const STOP: [&str; 1] = ["\n"];

/// One source sentence and its reference translation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// Source text.
    pub source: String,
    /// Reference translation.
    pub target: String,
}

/// Reads the pairs of `data` (a file or a directory with one of [`DATA_CANDIDATES`]),
/// taking the fields `source_field` and `target_field` of each record.
pub fn load_pairs(data: &Path, source_field: &str, target_field: &str) -> Result<(PathBuf, Vec<Pair>), EvalError> {
    let file = resolve_data_file(data, &DATA_CANDIDATES)?;
    let records = artifacts::records::read_records(&file)?;
    let text = |r: &Value, f: &str, i: usize| {
        r.get(f).and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
            let found: Vec<&str> = r.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
            EvalError::Input(format!(
                "{}: record {i} has no string field `{f}` (fields: {found:?}); name the fields with --source-field / --target-field",
                file.display()
            ))
        })
    };
    let pairs = records
        .iter()
        .enumerate()
        .map(|(i, r)| Ok(Pair { source: text(r, source_field, i)?, target: text(r, target_field, i)? }))
        .collect::<Result<Vec<_>, EvalError>>()?;
    if pairs.is_empty() {
        return Err(EvalError::Input(format!("{}: no sentence pairs", file.display())));
    }
    Ok((file, pairs))
}

/// The few-shot translation prompt of `source`.
pub fn prompt(source: &str, shots: &[Pair], source_lang: &str, target_lang: &str) -> String {
    let mut p = format!("Translate {source_lang} to {target_lang}.\n\n");
    for s in shots {
        p.push_str(&format!("{source_lang}: {}\n{target_lang}: {}\n\n", s.source, s.target));
    }
    p.push_str(&format!("{source_lang}: {source}\n{target_lang}:"));
    p
}
