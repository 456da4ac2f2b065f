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
