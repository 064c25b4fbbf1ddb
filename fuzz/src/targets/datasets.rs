//! The dataset-reader targets: JSON lines (also read as `.json`) and
//! Parquet data files, through the records reader and through `collect`
//! with the text specs of the project's presets (a field, a nested field,
//! a list field, a list index and a template).

use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field as ArrowField, Schema};
use artifacts::records::read_records;
use datasets::{collect, CollectOptions, TextSpec};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use serde_json::Value;

use super::Outcome;
use crate::mutate::{decimal_fields, mutate_json, Field, Rng};

/// Fields the text specs read, for JSON mutations to add.
const KEYS: &[&str] = &["text", "question", "answer", "translation", "en", "choices", "endings", "split", "code", "prompt"];

/// The text specs `collect` is run with, on every input.
fn specs() -> Vec<TextSpec> {
    let mut out: Vec<TextSpec> =
        ["text", "translation.en", "choices.text", "endings.0"].iter().filter_map(|f| TextSpec::field(f).ok()).collect();
    out.extend(TextSpec::template("{question}\\n{answer} {{literal}}").ok());
    out
}

fn collect_with(path: &Path, spec: TextSpec, split: Option<&str>) -> Result<usize, datasets::DatasetsError> {
    let opts = CollectOptions {
        domain: "python".into(),
        from: vec![path.to_path_buf()],
        text: Some(spec),
        split_filter: split.map(str::to_string),
        heldout_fraction: 0.25,
        max_docs: Some(1000),
        skip_records: 1,
        extensions: Vec::new(),
        include_vendored: false,
        shard: None,
        progress: false,
    };
    collect(&opts).map(|c| c.documents.len())
}

/// Reads the input's records, then collects documents from it with every spec.
fn run_collect(path: &Path) -> Outcome {
    let records = read_records(path);
    let mut collected = 0;
    for (i, spec) in specs().into_iter().enumerate() {
        if collect_with(path, spec, (i == 0).then_some("train")).is_ok() {
            collected += 1;
        }
    }
    match records {
        Ok(_) if collected > 0 => Outcome::ok("collected"),
        Ok(_) => Outcome::ok("records"),
        Err(e) => Outcome::err("records", e),
    }
}

/// JSON lines, read as `.jsonl` and as `.json`.
pub fn run_jsonl(path: &Path) -> Outcome {
    let as_json = path.with_file_name("data.json");
    let outcome = run_collect(path);
    if std::fs::copy(path, &as_json).is_ok() {
        let _ = read_records(&as_json);
        let _ = collect_with(&as_json, TextSpec::field("text").expect("a field name"), None);
    }
    outcome
}

/// A Parquet data file.
pub fn run_parquet(path: &Path) -> Outcome {
    run_collect(path)
}

/// The JSON numbers of the input.
pub fn jsonl_fields(data: &[u8]) -> Vec<Field> {
    decimal_fields(data)
}

/// The Parquet footer and page-header fields.
pub fn parquet_fields(data: &[u8]) -> Vec<Field> {
    crate::thrift::parquet_fields(data)
}

/// The first lines of data sets on this machine (/work/shared/data or
/// $SUBPRUNE_DATA), if present: real records, never committed.
fn real_lines() -> Vec<String> {
    let root = std::env::var_os("SUBPRUNE_DATA").map(std::path::PathBuf::from).unwrap_or_else(|| "/work/shared/data".into());
    let files = ["gsm8k/test.jsonl", "mbpp/mbpp.jsonl", "arc/arc_easy.jsonl", "multi30k-en-de/val.en-de.jsonl", "piqa/valid.jsonl"];
    let mut out = Vec::new();
    for f in files {
        if let Ok(text) = std::fs::read_to_string(root.join(f)) {
            out.push(text.lines().take(3).collect::<Vec<_>>().join("\n") + "\n");
        }
    }
    out
}

/// Seeds of the JSON-lines target: records for every spec, nested and list
/// fields, nulls, a `split` field, blank lines, a JSON array; and real lines.
pub fn jsonl_seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = [
        "{\"text\": \"def f(x):\\n    return x\", \"split\": \"train\"}\n{\"text\": \"print(1)\", \"split\": \"test\"}\n\n{\"text\": null}\n",
        "{\"question\": \"What is 2+2?\", \"answer\": \"4\"}\n{\"question\": \"1+1\", \"answer\": 2}\n",
        "{\"translation\": {\"en\": \"A dog.\", \"de\": \"Ein Hund.\"}}\n{\"translation\": {\"en\": [\"a\", \"b\"]}}\n",
        "{\"choices\": [{\"text\": \"yes\", \"label\": \"A\"}, {\"text\": \"no\", \"label\": \"B\"}]}\n{\"choices\": {\"text\": [\"x\", \"y\"]}}\n",
        "{\"endings\": [\"first\", \"second\"], \"text\": \"[\\\"a\\\", \\\"b\\\"]\"}\n",
        "[{\"text\": \"one\"}, {\"text\": \"two\"}, {\"text\": 3.5}]",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    out.extend(real_lines().into_iter().map(String::into_bytes));
    out
}

fn write_batch(path: &Path, batch: &RecordBatch) -> Option<Vec<u8>> {
    let file = std::fs::File::create(path).ok()?;
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).ok()?;
    w.write(batch).ok()?;
    w.close().ok()?;
    std::fs::read(path).ok()
}

/// Seeds of the Parquet target: tables of string, number, list and null
/// columns made in code, and the first rows of the real Parquet data set.
pub fn parquet_seeds(scratch: &Path) -> Vec<Vec<u8>> {
    let path = scratch.join("seed.parquet");
    let mut out = Vec::new();
    let text: ArrayRef = Arc::new(StringArray::from(vec![Some("def f():\n  pass"), None, Some("x = 1")]));
    let question: ArrayRef = Arc::new(StringArray::from(vec!["2+2?", "3+3?", "1+0?"]));
    let answer: ArrayRef = Arc::new(Int64Array::from(vec![4, 6, 1]));
    let score: ArrayRef = Arc::new(Float64Array::from(vec![0.5, f64::NAN, -1.0]));
    let mut endings = ListBuilder::new(StringBuilder::new());
    for row in [vec!["a", "b"], vec![], vec!["c"]] {
        for e in row {
            endings.values().append_value(e);
        }
        endings.append(true);
    }
    let endings: ArrayRef = Arc::new(endings.finish());
    let schema = Schema::new(vec![
        ArrowField::new("text", DataType::Utf8, true),
        ArrowField::new("question", DataType::Utf8, false),
        ArrowField::new("answer", DataType::Int64, false),
        ArrowField::new("score", DataType::Float64, false),
        ArrowField::new("endings", endings.data_type().clone(), true),
    ]);
    if let Ok(batch) = RecordBatch::try_new(Arc::new(schema), vec![text, question, answer, score, endings]) {
        out.extend(write_batch(&path, &batch));
    }
    let root = std::env::var_os("SUBPRUNE_DATA").map(std::path::PathBuf::from).unwrap_or_else(|| "/work/shared/data".into());
    let real = root.join("c4-validation-2k/c4_validation_2k.parquet");
    if let Some(batch) = std::fs::File::open(real)
        .ok()
        .and_then(|f| ParquetRecordBatchReaderBuilder::try_new(f).ok())
        .and_then(|b| b.with_batch_size(3).build().ok())
        .and_then(|mut r| r.next())
        .and_then(Result::ok)
    {
        // Cut long texts so the seed stays a few KB.
        let columns: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .map(|c| match c.as_any().downcast_ref::<StringArray>() {
                Some(s) => {
                    Arc::new(StringArray::from_iter(s.iter().map(|v| v.map(|t| t.chars().take(200).collect::<String>())))) as ArrayRef
                }
                None => c.clone(),
            })
            .collect();
        if let Ok(batch) = RecordBatch::try_new(batch.schema(), columns) {
            out.extend(write_batch(&path, &batch));
        }
    }
    out
}

/// A JSON-tree mutation of one line (or of the whole array).
pub fn jsonl_structured(data: &[u8], rng: &mut Rng, _scratch: &Path) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(data).ok()?;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        return None;
    }
    let i = rng.below(lines.len());
    let mut v: Value = serde_json::from_str(&lines[i]).ok()?;
    mutate_json(&mut v, KEYS, rng);
    lines[i] = v.to_string();
    if rng.one_in(4) {
        let copy = lines[i].clone();
        lines.push(copy);
    }
    Some((lines.join("\n") + "\n").into_bytes())
}
