//! `best/`: the weights of the evaluation with the best value of a chosen metric, in the
//! Hugging Face layout of `final/`, with `best.json` saying which step and value. Replaced
//! through a temporary folder and a rename, so a crash never leaves a half-written `best/`.

use super::config::BestMetric;
use super::error::{EngineError, io_error};
use super::task::Scores;
use crate::files::FileError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const BEST_DIR: &str = "best";
const RECORD_FILE: &str = "best.json";

#[derive(Debug, Serialize, Deserialize)]
struct BestRecord {
    metric: String,
    maximize: bool,
    value: f64,
    step: u64,
}

/// Keeps `best/` up to date as evaluations come in.
#[derive(Debug)]
pub struct BestKeeper {
    dir: PathBuf,
    metric: BestMetric,
    best: Option<f64>,
}

impl BestKeeper {
    /// On resume, the best value so far is read back from `best/best.json`.
    pub fn open(run_dir: &Path, metric: BestMetric, resuming: bool) -> Result<Self, EngineError> {
        let dir = run_dir.join(BEST_DIR);
        let record_path = dir.join(RECORD_FILE);
        let best = if resuming && record_path.exists() {
            let text = std::fs::read_to_string(&record_path).map_err(io_error(&record_path))?;
            let record: BestRecord =
                serde_json::from_str(&text).map_err(|err| FileError::format(&record_path, err.to_string()))?;
            (record.metric == metric.name && record.maximize == metric.maximize).then_some(record.value)
        } else {
            None
        };
        Ok(BestKeeper { dir, metric, best })
    }

    pub fn metric(&self) -> &BestMetric {
        &self.metric
    }

    /// Saves the model as `best/` when `scores` improve on the best value so far; returns a
    /// description of the improvement.
    pub fn offer(
        &mut self,
        step: u64,
        scores: &Scores,
        save: impl FnOnce(&Path) -> Result<(), EngineError>,
    ) -> Result<Option<String>, EngineError> {
        let Some(value) = scores.names.iter().position(|name| *name == self.metric.name).map(|i| scores.values[i])
        else {
            return Ok(None);
        };
        let better = |best: f64| if self.metric.maximize { value > best } else { value < best };
        if !value.is_finite() || self.best.is_some_and(|best| !better(best)) {
            return Ok(None);
        }
        // Not `best.tmp`: that is where model saving stages its own files.
        let staging = self.dir.with_extension("new");
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(io_error(&staging))?;
        }
        save(&staging)?;
        let record = BestRecord { metric: self.metric.name.clone(), maximize: self.metric.maximize, value, step };
        let record_path = staging.join(RECORD_FILE);
        let text = serde_json::to_string_pretty(&record).expect("records serialize");
        std::fs::write(&record_path, text + "\n").map_err(io_error(&record_path))?;
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).map_err(io_error(&self.dir))?;
        }
        std::fs::rename(&staging, &self.dir).map_err(io_error(&self.dir))?;
        let previous = self.best.replace(value).map(|best| format!(" (was {best})")).unwrap_or_default();
        Ok(Some(format!("{value}{previous}, saved in {}", self.dir.display())))
    }
}
