//! The fuzz targets: which reader each runs, its seeds, the fields of its
//! format that mutations rewrite, and its structure-aware mutation.

pub mod answer;
pub mod artifacts;
pub mod config;
pub mod datasets;
pub mod gguf;
pub mod safetensors;
pub mod sparse;

use std::fmt::Display;
use std::path::Path;

use crate::mutate::{Field, Rng};

/// What one run of a reader gave: a label of how far it got (for the
/// statistics) and its error, if any. Errors are the expected outcome of
/// most inputs; only panics, hangs and over-allocations are failures.
pub struct Outcome {
    /// Which step the input reached or failed in.
    pub label: &'static str,
    /// The reader's error message, if it refused the input.
    pub error: Option<String>,
}

impl Outcome {
    /// The reader accepted the input.
    pub fn ok(label: &'static str) -> Self {
        Outcome { label, error: None }
    }

    /// The reader refused the input with `e`.
    pub fn err(label: &'static str, e: impl Display) -> Self {
        Outcome { label, error: Some(e.to_string()) }
    }
}

/// One fuzz target.
pub struct Target {
    /// Its name on the command line.
    pub name: &'static str,
    /// What it reads, for `--list`.
    pub about: &'static str,
    /// The file name the input is written to (readers look at extensions
    /// and directory layouts).
    pub file_name: &'static str,
    /// Seeds made in code (real files where the machine has them); `scratch`
    /// is a directory for the writers.
    pub seeds: fn(scratch: &Path) -> Vec<Vec<u8>>,
    /// The length, count, offset and type fields of an input.
    pub fields: fn(&[u8]) -> Vec<Field>,
    /// A structure-aware mutation (None when the input does not parse
    /// enough for it).
    pub structured: fn(&[u8], &mut Rng, &Path) -> Option<Vec<u8>>,
    /// Runs the reader on the input file.
    pub run: fn(&Path) -> Outcome,
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "gguf",
        about: "GGUF header, metadata and tensor infos; every tensor dequantized; the model config from metadata",
        file_name: "model.gguf",
        seeds: gguf::seeds,
        fields: gguf::fields,
        structured: gguf::structured,
        run: gguf::run,
    },
    Target {
        name: "safetensors",
        about: "a checkpoint's model.safetensors through Hugging Face's safetensors crate; every tensor decoded",
        file_name: "model.safetensors",
        seeds: safetensors::seeds,
        fields: safetensors::fields,
        structured: safetensors::structured,
        run: safetensors::run,
    },
    Target {
        name: "sparse",
        about: "a checkpoint with pruned matrices in the sparse format (keep bits, packed values); every linear decoded and multiplied from its stored form",
        file_name: "model.safetensors",
        seeds: sparse::seeds,
        fields: safetensors::fields,
        structured: sparse::structured,
        run: sparse::run,
    },
    Target {
        name: "config",
        about: "config.json into the model config of every architecture family, written back and read again",
        file_name: "config.json",
        seeds: |_| config::seeds(),
        fields: config::fields,
        structured: config::structured,
        run: config::run,
    },
    Target {
        name: "gguf-tokenizer",
        about: "GGUF tokenizer metadata (byte-level BPE and SentencePiece) into the tokenizer; a short text encoded and decoded",
        file_name: "tokenizer.gguf",
        seeds: gguf::tokenizer_seeds,
        fields: gguf::fields,
        structured: gguf::structured,
        run: gguf::run_tokenizer,
    },
    Target {
        name: "artifacts",
        about: "Parquet artifacts of every kind (documents, samples, stats, scores, mask, hessians, results, items, jaccard) through their readers",
        file_name: "artifact.parquet",
        seeds: artifacts::seeds,
        fields: artifacts::fields,
        structured: artifacts::structured,
        run: artifacts::run,
    },
    Target {
        name: "datasets-jsonl",
        about: "JSON-lines data files (also read as .json) through the records reader and `datasets` collect",
        file_name: "data.jsonl",
        seeds: |_| datasets::jsonl_seeds(),
        fields: datasets::jsonl_fields,
        structured: datasets::jsonl_structured,
        run: datasets::run_jsonl,
    },
    Target {
        name: "datasets-parquet",
        about: "Parquet data files through the records reader and `datasets` collect",
        file_name: "data.parquet",
        seeds: datasets::parquet_seeds,
        fields: datasets::parquet_fields,
        structured: |_, _, _| None,
        run: datasets::run_parquet,
    },
    Target {
        name: "code-answer",
        about: "a model's answer to a code task: its first fenced block, the entry point's definition in each language, evalplus's Python sanitizer",
        file_name: "answer.md",
        seeds: |_| answer::seeds(),
        fields: answer::fields,
        structured: answer::structured,
        run: answer::run,
    },
];

/// The target named `name`.
pub fn find(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// The targets as an indented list, for messages.
pub fn list() -> String {
    TARGETS.iter().map(|t| format!("  {:<17} {}", t.name, t.about)).collect::<Vec<_>>().join("\n")
}
