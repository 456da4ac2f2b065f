//! What a run's data was when it started, recorded in `run.json`, so that a resume on other
//! data is refused rather than trained on: an exact resume replays the data order and the
//! held-out split, which both follow from the data. Each manifest, annotation or vocabulary
//! file is recorded by size and SHA-256 (a folder given as data, by each of its files);
//! images are not hashed (too many, too large), only counted, through the training samples
//! the task opened; nor are WebDataset shards (`.tar`, often terabytes), recorded by size.

use super::error::EngineError;
use crate::files::{FileError, sha256_file};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The data a run trains and evaluates on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataFingerprint {
    pub files: Vec<FileFingerprint>,
    /// Samples the task trains on, after any it skipped.
    pub train_samples: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileFingerprint {
    pub path: PathBuf,
    pub bytes: u64,
    /// `None` for a WebDataset shard, recorded by size only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// `run.json`'s record of the data: what it is now, and each resume that went on after it
/// changed (`--data-changed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataRecord {
    pub fingerprint: DataFingerprint,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<DataChange>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataChange {
    /// The steps done when the run went on with the changed data.
    pub step: u64,
    pub change: String,
}

impl FileFingerprint {
    /// The fingerprints of `path`, a file, or a folder's files (not its sub-folders).
    fn of(path: &Path) -> Result<Vec<FileFingerprint>, FileError> {
        if !path.is_dir() {
            return Ok(vec![Self::of_file(path)?]);
        }
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).map_err(FileError::io(path))? {
            let entry = entry.map_err(FileError::io(path))?;
            if entry.file_type().map_err(FileError::io(&entry.path()))?.is_file() {
                files.push(Self::of_file(&entry.path())?);
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }

    fn of_file(path: &Path) -> Result<FileFingerprint, FileError> {
        let bytes = std::fs::metadata(path).map_err(FileError::io(path))?.len();
        let shard = path.extension().is_some_and(|extension| extension == "tar");
        let sha256 = if shard { None } else { Some(sha256_file(path)?) };
        Ok(FileFingerprint { path: path.to_path_buf(), bytes, sha256 })
    }

    /// What differs in `now` from this fingerprint of the same file.
    fn change_to(&self, now: &FileFingerprint) -> Option<String> {
        let path = self.path.display();
        if self.bytes != now.bytes {
            Some(format!("{path} changed from {} to {} bytes", self.bytes, now.bytes))
        } else if self.sha256 != now.sha256 {
            Some(format!("{path} changed (same size, other content)"))
        } else {
            None
        }
    }
}

impl DataFingerprint {
    /// The fingerprint of the files `paths` and the training samples a task opened from them.
    pub fn new(paths: &[PathBuf], train_samples: usize) -> Result<DataFingerprint, EngineError> {
        let mut files = Vec::new();
        for path in paths {
            files.extend(FileFingerprint::of(path)?);
        }
        Ok(DataFingerprint { files, train_samples })
    }

    /// The first way the recorded files differ from what they are now (gone, resized,
    /// rewritten), read before the task opens them.
    pub fn files_changed(&self) -> Option<String> {
        self.files.iter().find_map(|file| match FileFingerprint::of_file(&file.path) {
            Ok(now) => file.change_to(&now),
            Err(_) if !file.path.exists() => Some(format!("{} is gone", file.path.display())),
            Err(err) => Some(format!("{err}")),
        })
    }

    /// The first way `now` differs from this fingerprint, as one phrase naming the file.
    pub fn change_to(&self, now: &DataFingerprint) -> Option<String> {
        for file in &self.files {
            match now.files.iter().find(|other| other.path == file.path) {
                Some(other) => {
                    if let Some(change) = file.change_to(other) {
                        return Some(change);
                    }
                }
                None => return Some(format!("{} is no longer part of the data", file.path.display())),
            }
        }
        if let Some(added) = now.files.iter().find(|other| !self.files.iter().any(|file| file.path == other.path)) {
            return Some(format!("{} was added to the data", added.path.display()));
        }
        (self.train_samples != now.train_samples)
            .then(|| format!("the training samples went from {} to {}", self.train_samples, now.train_samples))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_change_is_named_with_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("train.jsonl");
        std::fs::write(&data, "one\ntwo\n").unwrap();
        let before = DataFingerprint::new(&[data.clone()], 2).unwrap();
        assert_eq!(before.files_changed(), None);
        assert_eq!(before.change_to(&before.clone()), None);

        std::fs::write(&data, "one\n").unwrap();
        let change = before.files_changed().unwrap();
        assert!(change.contains("train.jsonl") && change.contains("from 8 to 4 bytes"), "{change}");
        std::fs::write(&data, "one\nTWO\n").unwrap();
        assert!(before.files_changed().unwrap().contains("same size, other content"));
        std::fs::write(&data, "one\ntwo\n").unwrap();
        let fewer = DataFingerprint { train_samples: 1, ..before.clone() };
        assert!(before.change_to(&fewer).unwrap().contains("from 2 to 1"));
        std::fs::remove_file(&data).unwrap();
        assert!(before.files_changed().unwrap().ends_with("train.jsonl is gone"));
    }
}
