//! Append-only JSON-lines files (`metrics.jsonl`, `decisions.jsonl`). Each record is
//! flushed as a whole line, so a crash loses at most the step in flight and the file
//! stays parseable.

use serde::Serialize;
use std::fs::File;
use std::io::{LineWriter, Write};
use std::path::{Path, PathBuf};

pub struct JsonLines {
    path: PathBuf,
    writer: LineWriter<File>,
}

impl JsonLines {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(JsonLines { path: path.to_path_buf(), writer: LineWriter::new(File::create(path)?) })
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
        Ok(JsonLines { path: path.to_path_buf(), writer: LineWriter::new(file) })
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
