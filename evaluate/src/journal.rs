//! A journal of finished generations, so that an evaluation stopped part way
//! (killed, out of time, Ctrl-C) resumes where it stopped instead of
//! generating everything again.
//!
//! The journal is a JSON-lines file: a header naming the run it belongs to
//! (a key that the caller makes from everything the generations depend on:
//! the program, the model, the mask, the prompts and how to generate), then
//! one line per finished generation, appended and flushed as each finishes.
//! Generation does not depend on batching or order (see
//! [`crate::generate`]), so generations read
//! back from a journal are the ones a fresh run would make. A journal of
//! another run is replaced; a last line cut short by the stop is dropped.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::generate::{FinishReason, Generation};
use crate::EvalError;

/// What the journal's first line says.
const FORMAT: &str = "subprune generation journal v1";

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    key: String,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    prompt: usize,
    sample: usize,
    text: String,
    tokens: Vec<u32>,
    finish: String,
}

/// Finished generations by (prompt index, sample index).
pub type Finished = HashMap<(usize, usize), Generation>;

/// An open journal, appending each generation as it finishes.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Opens the journal at `path` for the run identified by `key`, and
    /// returns it with the generations it already holds: none when there is
    /// no journal or it belongs to another run (it is then started afresh).
    pub fn open(path: &Path, key: &str) -> Result<(Journal, Finished), EvalError> {
        let io = |source| EvalError::Io { what: "generation journal", path: path.to_path_buf(), source };
        let finished = match File::open(path) {
            Ok(file) => read_entries(BufReader::new(file), key).map_err(io)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Finished::new(),
            Err(e) => return Err(io(e)),
        };
        // The results will go beside it: their directory may not exist yet.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        // Rewritten whole, then renamed over the old one: a torn last line
        // is dropped, and a stop during the rewrite leaves the old journal.
        let fresh = path.with_extension("journal-rewrite");
        {
            let mut file = File::create(&fresh).map_err(io)?;
            let header = Header { format: FORMAT.into(), key: key.into() };
            writeln!(file, "{}", serde_json::to_string(&header).expect("a header serializes")).map_err(io)?;
            let mut held: Vec<_> = finished.iter().collect();
            held.sort_by_key(|(id, _)| **id);
            for (&(prompt, sample), generation) in held {
                writeln!(file, "{}", entry_line(prompt, sample, generation)).map_err(io)?;
            }
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&fresh, path).map_err(io)?;
        let file = OpenOptions::new().append(true).open(path).map_err(io)?;
        Ok((Journal { path: path.to_path_buf(), file }, finished))
    }

    /// Appends one finished generation (sample `sample` of prompt `prompt`).
    pub fn record(&mut self, prompt: usize, sample: usize, generation: &Generation) -> Result<(), EvalError> {
        writeln!(self.file, "{}", entry_line(prompt, sample, generation)).and_then(|()| self.file.flush()).map_err(|source| EvalError::Io {
            what: "generation journal",
            path: self.path.clone(),
            source,
        })
    }

    /// Deletes the journal, once the results it served are written.
    pub fn remove(self) -> Result<(), EvalError> {
        std::fs::remove_file(&self.path).map_err(|source| EvalError::Io { what: "removing generation journal", path: self.path, source })
    }
}

fn entry_line(prompt: usize, sample: usize, g: &Generation) -> String {
    let entry = Entry { prompt, sample, text: g.text.clone(), tokens: g.tokens.clone(), finish: g.finish.as_str().into() };
    serde_json::to_string(&entry).expect("an entry serializes")
}

/// The entries of a journal whose header holds `key` (none for another
/// key), up to the first line that does not parse (a write cut short).
fn read_entries(reader: impl BufRead, key: &str) -> std::io::Result<Finished> {
    let mut lines = reader.lines();
    let mut finished = Finished::new();
    let header: Option<Header> = lines.next().transpose()?.and_then(|l| serde_json::from_str(&l).ok());
    if !header.is_some_and(|h| h.format == FORMAT && h.key == key) {
        return Ok(finished);
    }
    for line in lines {
        let Ok(entry) = serde_json::from_str::<Entry>(&line?) else { break };
        let finish = match entry.finish.as_str() {
            "eos" => FinishReason::Eos,
            "stop" => FinishReason::Stop,
            "length" => FinishReason::Length,
            _ => break,
        };
        finished.insert((entry.prompt, entry.sample), Generation { text: entry.text, tokens: entry.tokens, finish });
    }
    Ok(finished)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(text: &str, finish: FinishReason) -> Generation {
        Generation { text: text.into(), tokens: text.bytes().map(u32::from).collect(), finish }
    }

    #[test]
    fn a_journal_gives_back_what_was_recorded_for_its_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.parquet.journal.jsonl");
        let (mut journal, held) = Journal::open(&path, "run A").unwrap();
        assert!(held.is_empty());
        let (a, b) = (generation("def f():\n", FinishReason::Stop), generation("é \"quoted\"\n", FinishReason::Length));
        journal.record(0, 1, &a).unwrap();
        journal.record(3, 0, &b).unwrap();
        drop(journal);
        let (journal, held) = Journal::open(&path, "run A").unwrap();
        assert_eq!(held.len(), 2);
        assert_eq!((&held[&(0, 1)], &held[&(3, 0)]), (&a, &b));
        drop(journal);
        // Another run's journal is started afresh, and stays so.
        let (journal, held) = Journal::open(&path, "run B").unwrap();
        assert!(held.is_empty());
        drop(journal);
        assert!(Journal::open(&path, "run A").unwrap().1.is_empty());
    }

    #[test]
    fn a_journal_makes_the_directory_its_results_will_go_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not/yet/out.parquet.journal.jsonl");
        let (journal, held) = Journal::open(&path, "k").unwrap();
        assert!(held.is_empty() && path.is_file());
        journal.remove().unwrap();
    }

    #[test]
    fn a_line_cut_short_is_dropped_and_removal_deletes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let (mut journal, _) = Journal::open(&path, "k").unwrap();
        journal.record(2, 0, &generation("x = 1", FinishReason::Eos)).unwrap();
        drop(journal);
        // A stop in the middle of writing the next line.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        write!(file, "{{\"prompt\":5,\"sample\":0,\"text\":\"y =").unwrap();
        drop(file);
        let (journal, held) = Journal::open(&path, "k").unwrap();
        assert_eq!(held.keys().copied().collect::<Vec<_>>(), vec![(2, 0)]);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2, "header and the one whole entry");
        journal.remove().unwrap();
        assert!(!path.exists());
    }
}
