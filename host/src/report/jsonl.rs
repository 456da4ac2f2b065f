//! Append-only JSON-lines files (`metrics.jsonl`, `decisions.jsonl`). Each record is
//! flushed as a whole line, so a crash loses at most the step in flight and the file
//! stays parseable; [`read_records`] reads them back for plots and simulation.

use crate::files::FileError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fs::File;
use std::io::{LineWriter, Write};
use std::path::{Path, PathBuf};

pub struct JsonLines {
    path: PathBuf,
    writer: LineWriter<Box<dyn Write>>,
}

impl JsonLines {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(JsonLines { path: path.to_path_buf(), writer: LineWriter::new(Box::new(File::create(path)?)) })
    }

    /// Records for `path` that are written nowhere: the records of a data-parallel rank
    /// other than the one that writes the run's files.
    pub fn discard(path: &Path) -> Self {
        JsonLines { path: path.to_path_buf(), writer: LineWriter::new(Box::new(std::io::sink())) }
    }

    /// Reopens the file of an interrupted run, keeping only the records `keep` accepts (those
    /// up to the checkpoint being resumed), and appends after them.
    pub fn reopen(path: &Path, keep: impl Fn(&serde_json::Value) -> bool) -> std::io::Result<Self> {
        let text = if path.exists() { std::fs::read_to_string(path)? } else { String::new() };
        let mut kept = String::new();
        for line in text.lines() {
            // A torn last line (the crash came mid-write) is dropped with the rest.
            if let Ok(record) = serde_json::from_str::<serde_json::Value>(line)
                && keep(&record)
            {
                kept.push_str(line);
                kept.push('\n');
            }
        }
        let staging = path.with_extension("jsonl.tmp");
        std::fs::write(&staging, kept)?;
        std::fs::rename(&staging, path)?;
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        Ok(JsonLines { path: path.to_path_buf(), writer: LineWriter::new(Box::new(file)) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record as one line.
    pub fn write<T: Serialize>(&mut self, record: &T) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        self.writer.write_all(&line)
    }
}

/// The records of a JSON-lines file; an error names the file and the line.
pub fn read_records<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, FileError> {
    let text = std::fs::read_to_string(path).map_err(FileError::io(path))?;
    let line_count = text.lines().count();
    let mut records = Vec::with_capacity(line_count);
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(record) => records.push(record),
            // A last line without its newline is still being written by a live run (or was
            // torn by a crash): read what is complete.
            Err(_) if index + 1 == line_count && !text.ends_with('\n') => break,
            Err(error) => return Err(FileError::format(path, format!("line {}: {}", index + 1, json_problem(&error)))),
        }
    }
    Ok(records)
}

/// serde_json's message with its position as a column only: each line is its own document,
/// so its "line 1" would contradict the line number of the file.
fn json_problem(error: &serde_json::Error) -> String {
    let message = error.to_string();
    let cause = message.rsplit_once(" at line ").map_or(message.as_str(), |(cause, _)| cause);
    format!("column {}: {cause}", error.column())
}
