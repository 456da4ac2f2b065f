//! The error of a run, shared by the engine and the tasks it drives: each variant carries
//! the file, flag, policy or step at fault, so the command line can print one line.

use crate::files::FileError;
use crate::models::pretrained::PretrainedError;
use crate::policy::PolicyError;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("{error}; the training state is saved in {}", checkpoint.display())]
    PolicyFault { error: PolicyError, checkpoint: PathBuf },
    /// Too many steps in a row had a non-finite loss or gradient norm: the weights are
    /// ruined or about to be, so no final model is written.
    #[error("{0}")]
    Diverged(String),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Pretrained(#[from] PretrainedError),
    #[error(transparent)]
    Distributed(#[from] crate::distributed::DistributedError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// For `map_err` on an I/O result about `path`.
pub fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |source| FileError::io(path)(source).into()
}
