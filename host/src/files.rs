//! The error of a file that cannot be read or understood. Every loader in the crate
//! (data sets, tokenizer vocabularies, model folders) reports through it, so each message
//! starts with the file at fault. Also the SHA-256 of a file, by which checkpoints and a
//! run's data are verified.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {problem}", path.display())]
    Format { path: PathBuf, problem: String },
}

impl FileError {
    /// For `map_err` on an I/O result about `path`.
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
        move |source| FileError::Io { path: path.to_path_buf(), source }
    }

    pub fn format(path: &Path, problem: impl Into<String>) -> FileError {
        FileError::Format { path: path.to_path_buf(), problem: problem.into() }
    }

    /// A problem with a data set's file, saying where the data set declared it (a
    /// manifest line, a COCO image id); a plain I/O error already names the file.
    pub fn declared_in(self, origin: &impl std::fmt::Display) -> FileError {
        match self {
            FileError::Format { path, problem } => {
                FileError::Format { path, problem: format!("{problem} (declared in {origin})") }
            }
            io => io,
        }
    }
}

/// The SHA-256 of the file at `path` in lower-case hex, read in pieces (an annotation file
/// may be gigabytes).
pub fn sha256_file(path: &Path) -> Result<String, FileError> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path).map_err(FileError::io(path))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(FileError::io(path))?;
    Ok(hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Writes `bytes` under a temporary name beside `path`, then renames it to `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let Some(name) = path.file_name() else {
        return Err(FileError::format(path, "not a file name"));
    };
    let mut staging_name = name.to_os_string();
    staging_name.push(".tmp");
    let staging = path.with_file_name(staging_name);
    std::fs::write(&staging, bytes).map_err(FileError::io(&staging))?;
    std::fs::rename(&staging, path).map_err(FileError::io(path))
}
