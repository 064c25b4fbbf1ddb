//! Code-generation tasks scored by running the code: HumanEval-X (Python,
//! C++, Java, JavaScript) and MBPP, with pass@k.
//!
//! HumanEval-X (CodeGeeX): the model completes `prompt`; the program run is
//! `prompt + completion + "\n" + test` (C++: the standard headers of CodeGeeX's
//! harness that the prompt lacks come first). A completion is cut where the
//! function ends: Python at the first of the stop sequences
//! ([`PYTHON_STOPS`]), C++/Java/JavaScript after the brace that closes what the
//! prompt left open (strings and comments skipped).
//!
//! MBPP: the 3-shot prompt of Austin et al. (2021) in the form DeepSeek-Coder's
//! evaluation uses (`Evaluation/MBPP/utils/dataset.py`): tasks 2, 3, 4 as the
//! shots, each `You are an expert Python programmer, and here is your task:
//! {text} Your code should pass these tests:\n\n{tests}\n[BEGIN]\n{code}\n[DONE]\n`
//! (shot code with `\r` removed and tabs as four spaces), then the item's
//! text and tests ending in `[BEGIN]`; the test items are tasks 11..=510.
//! The completion is cut at `[DONE]` and trimmed; the program run is
//! `completion + "\n" + test_setup_code + "\n" + test_list` (one assert a line),
//! as in the original MBPP harness.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use artifacts::records::{read_records, DataFormat};
use serde_json::Value;

use crate::code_instruct::{instruct_source, Protocol};
use crate::sandbox::Language;

/// The stop sequences of Python completions of HumanEval: Codex's
/// (`\nclass`, `\ndef`, `\n#`, `\nif`, `\nprint`) plus the decorator and
/// the closing Markdown fence that bigcode-evaluation-harness adds for
/// instruction-tuned models, which tend to close a code block and explain it.
pub const PYTHON_STOPS: &[&str] = &["\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```"];
/// MBPP's end-of-code marker.
pub const MBPP_DONE: &str = "[DONE]";
/// First and last MBPP test task ids.
pub const MBPP_TEST_IDS: (u64, u64) = (11, 510);
/// MBPP task ids of the three prompt shots.
pub const MBPP_SHOT_IDS: [u64; 3] = [2, 3, 4];
/// Headers CodeGeeX's harness adds to every C++ program when the prompt does not include them.
const CPP_HEADERS: &[&str] = &[
    "#include<stdlib.h>",
    "#include<algorithm>",
    "#include<math.h>",
    "#include<stdio.h>",
    "#include<vector>",
    "#include<string>",
    "#include<climits>",
    "#include<cstring>",
    "#include<iostream>",
    "#include<cassert>",
];

/// A code task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeTask {
    /// HumanEval-X in one language.
    HumanEvalX(Language),
    /// MBPP (Python).
    Mbpp,
}

impl CodeTask {
    /// The language of its programs.
    pub fn language(self) -> Language {
        match self {
            CodeTask::HumanEvalX(l) => l,
            CodeTask::Mbpp => Language::Python,
        }
    }

    /// The task's name in results (`humaneval-x/python`, `mbpp`).
    pub fn name(self) -> String {
        match self {
            CodeTask::HumanEvalX(l) => format!("humaneval-x/{}", l.name()),
            CodeTask::Mbpp => "mbpp".into(),
        }
    }

    /// Stop sequences for generation: where a completion is surely over (for
    /// C++, Java and JavaScript a closing brace in column 0, which the caller
    /// keeps as part of the completion).
    pub fn stop_sequences(self) -> Vec<String> {
        match self {
            CodeTask::HumanEvalX(Language::Python) => PYTHON_STOPS.iter().map(|s| s.to_string()).collect(),
            CodeTask::HumanEvalX(_) => vec!["\n}".to_string()],
            CodeTask::Mbpp => vec![MBPP_DONE.to_string()],
        }
    }
}

/// One problem of a code task.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Index of the record in the data (file order; files of a directory in name order).
    pub item: u64,
    /// The problem's id (`Python/0`, `11`).
    pub task_id: String,
    /// The text the model completes (for MBPP, without the shots).
    pub prompt: String,
    /// The reference solution, as a completion of `prompt`.
    pub canonical: String,
    /// What follows the completion to test it.
    pub test: String,
    /// For MBPP: the task's description and test asserts (to build the shot prompt).
    pub mbpp: Option<MbppText>,
}

/// The parts of an MBPP record the prompt is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct MbppText {
    /// The description.
    pub text: String,
    /// The assert lines.
    pub tests: Vec<String>,
}

/// A code task's data: the problems evaluated and, for MBPP, the prompt shots.
#[derive(Debug, Clone)]
pub struct CodeData {
    /// The file (or directory) read.
    pub path: PathBuf,
    /// The files read.
    pub files: Vec<PathBuf>,
    /// The problems, in data order.
    pub problems: Vec<Problem>,
    /// MBPP's few-shot prefix, when the shot tasks are in the data.
    pub shots: Option<String>,
}

/// What is wrong with a task's data.
#[derive(Debug, thiserror::Error)]
pub enum CodeDataError {
    /// Reading a data file failed.
    #[error(transparent)]
    Records(#[from] artifacts::records::RecordsError),
    /// A record or the data as a whole is not what the task expects.
    #[error("{path}: {what}")]
    Invalid {
        /// The file or directory.
        path: String,
        /// What was expected and found.
        what: String,
    },
}

fn invalid(path: &Path, what: impl Into<String>) -> CodeDataError {
    CodeDataError::Invalid { path: path.display().to_string(), what: what.into() }
}

/// Data files under `dir` (two levels deep), in name order.
fn data_files(dir: &Path, depth: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() && depth > 0 {
            out.extend(data_files(&p, depth - 1));
        } else if p.is_file() && DataFormat::of(&p).is_some() {
            out.push(p);
        }
    }
    out
}

fn string_field(path: &Path, record: &Value, index: usize, names: &[&str]) -> Result<String, CodeDataError> {
    for name in names {
        match record.get(*name) {
            Some(Value::String(s)) => return Ok(s.clone()),
            Some(Value::Number(n)) => return Ok(n.to_string()),
            Some(Value::Null) | None => continue,
            Some(other) => return Err(invalid(path, format!("record {index}: field `{name}` should be text, found {other}"))),
        }
    }
    Err(invalid(path, format!("record {index}: missing field `{}` (fields: {})", names.join("` or `"), field_names(record))))
}

fn field_names(record: &Value) -> String {
    record.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>().join(", ")).unwrap_or_else(|| "not an object".into())
}

/// The HumanEval-X task-id prefix of a language.
fn humaneval_prefix(language: Language) -> &'static str {
    match language {
        Language::Python => "Python/",
        Language::Cpp => "CPP/",
        Language::Java => "Java/",
        Language::JavaScript => "JavaScript/",
    }
}

/// Reads HumanEval-X problems of `language` from `path`: a data file
/// (CodeGeeX's `humaneval_<lang>.jsonl.gz`, or THUDM/humaneval-x's JSONL or
/// Parquet) or a directory holding `humaneval_<lang>.*` or a `<lang>/` folder
/// with one data file.
pub fn read_humaneval_x(path: &Path, language: Language) -> Result<CodeData, CodeDataError> {
    let file = if path.is_dir() { find_humaneval_file(path, language)? } else { path.to_path_buf() };
    if !file.exists() {
        return Err(invalid(
            &file,
            format!("no such file; expected the HumanEval-X {} data (humaneval_{}.jsonl.gz)", language.name(), language.name()),
        ));
    }
    let records = read_records(&file)?;
    let prefix = humaneval_prefix(language);
    let mut problems = Vec::with_capacity(records.len());
    for (i, record) in records.iter().enumerate() {
        let task_id = string_field(&file, record, i, &["task_id"])?;
        if !task_id.starts_with(prefix) {
            return Err(invalid(
                &file,
                format!("record {i} has task_id `{task_id}`, expected one starting with `{prefix}` for --lang {}: is this the file of another language?", language.name()),
            ));
        }
        let prompt = string_field(&file, record, i, &["prompt"])?;
        let canonical = string_field(&file, record, i, &["canonical_solution"])?;
        let test = string_field(&file, record, i, &["test"])?;
        problems.push(Problem { item: i as u64, task_id, prompt, canonical, test, mbpp: None });
    }
    if problems.is_empty() {
        return Err(invalid(&file, "no records; expected the 164 HumanEval-X problems"));
    }
    Ok(CodeData { path: path.to_path_buf(), files: vec![file], problems, shots: None })
}

fn find_humaneval_file(dir: &Path, language: Language) -> Result<PathBuf, CodeDataError> {
    let all = data_files(dir, 3);
    let lang = language.name();
    let named: Vec<&PathBuf> = all
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().to_lowercase().starts_with(&format!("humaneval_{lang}."))))
        .collect();
    if named.len() == 1 {
        return Ok(named[0].clone());
    }
    let in_folder: Vec<&PathBuf> =
        all.iter().filter(|p| p.strip_prefix(dir).is_ok_and(|r| r.components().any(|c| c.as_os_str() == lang))).collect();
    if in_folder.len() == 1 {
        return Ok(in_folder[0].clone());
    }
    Err(invalid(
        dir,
        format!(
            "expected one HumanEval-X {lang} data file in this directory (humaneval_{lang}.jsonl.gz, or one data file under a `{lang}/` folder); found {}",
            if all.is_empty() { "no data files".to_string() } else { all.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ") }
        ),
    ))
}

fn mbpp_tests(path: &Path, record: &Value, index: usize) -> Result<Vec<String>, CodeDataError> {
    for name in ["test_list", "test"] {
        if let Some(v) = record.get(name) {
            let list = v
                .as_array()
                .ok_or_else(|| invalid(path, format!("record {index}: field `{name}` should be a list of asserts, found {v}")))?;
            return list
                .iter()
                .map(|t| {
                    t.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| invalid(path, format!("record {index}: `{name}` holds {t}, expected text")))
                })
                .collect();
        }
    }
    Err(invalid(path, format!("record {index}: missing field `test_list` (fields: {})", field_names(record))))
}

fn shot(text: &str, tests: &[String], code: &str) -> String {
    format!(
        "You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:\n\n{}\n[BEGIN]\n{}\n[DONE]\n",
        tests.join("\n"),
        code.replace('\r', "").replace('\t', "    ")
    )
}

/// Reads MBPP from `path`: the original `mbpp.jsonl` (google-research), the
/// Hugging Face `google-research-datasets/mbpp` Parquet files (a file, or a
/// directory whose data files are read together, e.g. `full/` with its
/// train/test/validation/prompt splits), or the sanitized set (`prompt` for
/// `text`). The test items are task ids 11..=510; tasks 2, 3, 4 make the shots.
pub fn read_mbpp(path: &Path) -> Result<CodeData, CodeDataError> {
    let files = if path.is_dir() { data_files(path, 2) } else { vec![path.to_path_buf()] };
    if files.is_empty() {
        return Err(invalid(
            path,
            "no data files in this directory; expected mbpp.jsonl or the google-research-datasets/mbpp Parquet files",
        ));
    }
    if !path.exists() {
        return Err(invalid(path, "no such file; expected the MBPP data (mbpp.jsonl)"));
    }
    let mut by_id: BTreeMap<u64, (u64, String, Vec<String>, String, String)> = BTreeMap::new();
    let mut item = 0u64;
    for file in &files {
        for (i, record) in read_records(file)?.iter().enumerate() {
            let id_text = string_field(file, record, i, &["task_id"])?;
            let id: u64 = id_text.parse().map_err(|_| invalid(file, format!("record {i}: task_id `{id_text}` is not a number")))?;
            let text = string_field(file, record, i, &["text", "prompt"])?;
            let code = string_field(file, record, i, &["code"])?;
            let tests = mbpp_tests(file, record, i)?;
            let setup = match record.get("test_setup_code") {
                Some(Value::String(s)) => s.clone(),
                _ => String::new(),
            };
            by_id.entry(id).or_insert((item, text, tests, code, setup));
            item += 1;
        }
    }
    let shots = MBPP_SHOT_IDS
        .iter()
        .map(|id| by_id.get(id).map(|(_, text, tests, code, _)| shot(text, tests, code)))
        .collect::<Option<Vec<_>>>()
        .map(|s| s.concat());
    let mut problems = Vec::new();
    for (&id, (item, text, tests, code, setup)) in &by_id {
        if id < MBPP_TEST_IDS.0 || id > MBPP_TEST_IDS.1 {
            continue;
        }
        let prompt = format!(
            "You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:\n\n{}\n[BEGIN]\n",
            tests.join("\n")
        );
        let test = format!("{setup}\n{}\n", tests.join("\n"));
        problems.push(Problem {
            item: *item,
            task_id: id.to_string(),
            prompt,
            canonical: code.clone(),
            test,
            mbpp: Some(MbppText { text: text.clone(), tests: tests.clone() }),
        });
    }
    problems.sort_by_key(|p| p.item);
    if problems.is_empty() {
        return Err(invalid(
            path,
            format!(
                "no MBPP test items (task ids {}..={}) found; expected mbpp.jsonl or the test split of google-research-datasets/mbpp",
                MBPP_TEST_IDS.0, MBPP_TEST_IDS.1
            ),
        ));
    }
    Ok(CodeData { path: path.to_path_buf(), files, problems, shots })
}

impl CodeData {
    /// The full prompt the model completes for `problem` (for MBPP with the shots);
    /// an error when MBPP's shot tasks are not in the data.
    pub fn generation_prompt(&self, problem: &Problem) -> Result<String, CodeDataError> {
        match &problem.mbpp {
            None => Ok(problem.prompt.clone()),
            Some(_) => {
                let shots = self.shots.as_ref().ok_or_else(|| {
                    invalid(
                        &self.path,
                        format!(
                            "the 3-shot prompt needs MBPP tasks {:?}, which are not in this data; pass mbpp.jsonl or a directory with the `prompt` split as well",
                            MBPP_SHOT_IDS
                        ),
                    )
                })?;
                Ok(format!("{shots}{}", problem.prompt))
            }
        }
    }
}

/// Cuts a raw completion where the function (or MBPP's code) ends.
pub fn postprocess(task: CodeTask, prompt: &str, completion: &str) -> String {
    match task {
        CodeTask::Mbpp => completion.split(MBPP_DONE).next().unwrap_or("").trim().to_string(),
        CodeTask::HumanEvalX(Language::Python) => {
            let end = PYTHON_STOPS.iter().filter_map(|s| completion.find(s)).min().unwrap_or(completion.len());
            completion[..end].to_string()
        }
        CodeTask::HumanEvalX(language) => cut_at_closing_brace(prompt, completion, language == Language::JavaScript),
    }
}

/// Scanner state of C-like source: inside a string, a comment, or code.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Lex {
    Code,
    LineComment,
    BlockComment,
    Str(u8),
}

/// Scans one step of C-like source at `bytes[i]`: updates the scanner
/// state and the depth of code braces, and returns how many bytes it read.
/// `backticks`: JavaScript's template strings are strings too.
pub(crate) fn lex_step(bytes: &[u8], i: usize, state: &mut Lex, depth: &mut i64, backticks: bool) -> usize {
    let c = bytes[i];
    let next = bytes.get(i + 1).copied();
    match *state {
        Lex::Code => match c {
            b'/' if next == Some(b'/') => {
                *state = Lex::LineComment;
                return 2;
            }
            b'/' if next == Some(b'*') => {
                *state = Lex::BlockComment;
                return 2;
            }
            b'"' | b'\'' => *state = Lex::Str(c),
            b'`' if backticks => *state = Lex::Str(c),
            b'{' => *depth += 1,
            b'}' => *depth -= 1,
            _ => {}
        },
        Lex::LineComment => {
            if c == b'\n' {
                *state = Lex::Code;
            }
        }
        Lex::BlockComment => {
            if c == b'*' && next == Some(b'/') {
                *state = Lex::Code;
                return 2;
            }
        }
        Lex::Str(q) => {
            if c == b'\\' {
                return 2;
            }
            if c == q || (c == b'\n' && q != b'`') {
                *state = Lex::Code;
            }
        }
    }
    1
}

/// Keeps `completion` up to the `}` that closes every brace `prompt` left open.
fn cut_at_closing_brace(prompt: &str, completion: &str, backticks: bool) -> String {
    let mut state = Lex::Code;
    let mut depth: i64 = 0;
    let p = prompt.as_bytes();
    let mut i = 0;
    while i < p.len() {
        i += lex_step(p, i, &mut state, &mut depth, backticks);
    }
    if depth <= 0 {
        return completion.to_string();
    }
    let b = completion.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let was_code = state == Lex::Code && b[i] == b'}';
        i += lex_step(b, i, &mut state, &mut depth, backticks);
        if was_code && depth == 0 {
            return completion[..i].to_string();
        }
    }
    completion.to_string()
}

/// The whole program that tests `completion` of `problem`.
pub fn program(task: CodeTask, problem: &Problem, completion: &str) -> String {
    match task {
        CodeTask::Mbpp => with_tests(task, problem, completion, ""),
        CodeTask::HumanEvalX(_) => with_tests(task, problem, &format!("{}{completion}", problem.prompt), &problem.prompt),
    }
}

/// The whole program that tests `source`, a solution complete in itself
/// (as the instruct protocol's answers are): the same harness as [`program`].
pub fn program_of_source(task: CodeTask, problem: &Problem, source: &str) -> String {
    with_tests(task, problem, source, source)
}

/// `source` followed by the task's tests (C++: after the standard headers
/// of CodeGeeX's harness that `included` does not already hold).
fn with_tests(task: CodeTask, problem: &Problem, source: &str, included: &str) -> String {
    match task {
        CodeTask::Mbpp => format!("{source}\n{}", problem.test),
        CodeTask::HumanEvalX(Language::Cpp) => {
            let headers: String = CPP_HEADERS.iter().filter(|h| !included.contains(*h)).map(|h| format!("{h}\n")).collect();
            format!("{headers}{source}\n{}", problem.test)
        }
        CodeTask::HumanEvalX(_) => format!("{source}\n{}\n", problem.test),
    }
}

/// The scores of a code task run.
#[derive(Debug, Clone)]
pub struct CodeScores {
    /// Per problem: (samples, samples that passed).
    pub counts: Vec<(usize, usize)>,
    /// pass@k for each k asked that is at most every problem's sample count: (k, mean, standard error).
    pub pass_at: Vec<(usize, f64, f64)>,
    /// One row per sample: item, sample, gold (the reference solution),
    /// generation (the text the model wrote), pred (the source that ran,
    /// before the tests), passed, reason.
    pub rows: Vec<artifacts::ItemRow>,
}

/// Runs every completion of every problem in `sandbox` and computes pass@k
/// for each of `ks`. `completions[i]` are the raw completions of `problems[i]`
/// (under [`Protocol::Instruct`], the model's whole answers): each is cut
/// with [`postprocess`] (answers: made into source with [`instruct_source`])
/// before it runs. `done` is called after each program.
pub fn score(
    task: CodeTask,
    protocol: Protocol,
    problems: &[Problem],
    completions: &[Vec<String>],
    sandbox: &crate::sandbox::Sandbox,
    ks: &[usize],
    done: &(dyn Fn() + Sync),
) -> Result<CodeScores, crate::sandbox::SandboxError> {
    let language = task.language();
    let mut cut: Vec<(usize, u32, String, String)> = Vec::new();
    let mut programs = Vec::new();
    for (p, (problem, samples)) in problems.iter().zip(completions).enumerate() {
        for (s, raw) in samples.iter().enumerate() {
            let (completion, source) = match protocol {
                Protocol::Completion => {
                    let completion = postprocess(task, &problem.prompt, raw);
                    let source = program(task, problem, &completion);
                    (completion, source)
                }
                Protocol::Instruct => {
                    let code = instruct_source(task, problem, raw);
                    let source = program_of_source(task, problem, &code);
                    (code, source)
                }
            };
            programs.push((language, source));
            cut.push((p, s as u32, raw.clone(), completion));
        }
    }
    let outcomes = sandbox.run_all(&programs, done);
    let mut counts: Vec<(usize, usize)> = completions.iter().map(|c| (c.len(), 0)).collect();
    let mut rows = Vec::with_capacity(cut.len());
    for ((p, s, raw, completion), outcome) in cut.into_iter().zip(outcomes) {
        let outcome = outcome?;
        if outcome.passed {
            counts[p].1 += 1;
        }
        rows.push(artifacts::ItemRow {
            item: problems[p].item,
            sample: s,
            gold: Some(problems[p].canonical.clone()),
            pred: Some(completion),
            generation: Some(raw),
            passed: Some(outcome.passed),
            reason: Some(outcome.reason),
            ..Default::default()
        });
    }
    let pass_at = ks.iter().filter_map(|&k| crate::passk::mean_pass_at_k(&counts, k).map(|(m, se)| (k, m, se))).collect();
    Ok(CodeScores { counts, pass_at, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brace_cut_skips_comments_and_strings() {
        let prompt = "/* f({1, 2}) */\nint f(int x){\n";
        let completion = "    const char* s = \"}\"; // }\n    return x;\n}\nint main(){}\n";
        assert_eq!(cut_at_closing_brace(prompt, completion, false), "    const char* s = \"}\"; // }\n    return x;\n}");
        let java_prompt = "class Solution {\n    public int f() {\n";
        assert_eq!(cut_at_closing_brace(java_prompt, "        return 1;\n    }\n}\nclass X {}", false), "        return 1;\n    }\n}");
    }

    #[test]
    fn python_and_mbpp_cuts() {
        assert_eq!(postprocess(CodeTask::HumanEvalX(Language::Python), "", "    return 1\n\ndef g():\n    pass"), "    return 1\n");
        assert_eq!(postprocess(CodeTask::Mbpp, "", "\ndef f():\n    return 1\n[DONE]\nmore"), "def f():\n    return 1");
    }
}
