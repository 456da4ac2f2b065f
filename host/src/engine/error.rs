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
    /// A file of the run could not be written for a reason the user must fix (a full disk,
    /// a folder made read-only or removed): what was being written, what is intact, and how
    /// to go on.
    #[error("{0}")]
    WriteFailed(String),
}

/// Why a write failed, when it is something outside the trainer that the user can fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteProblem {
    DiskFull,
    QuotaExceeded,
    PermissionDenied,
    ReadOnly,
    Vanished,
}

impl WriteProblem {
    fn of(kind: std::io::ErrorKind) -> Option<WriteProblem> {
        use std::io::ErrorKind;
        Some(match kind {
            ErrorKind::StorageFull => WriteProblem::DiskFull,
            ErrorKind::QuotaExceeded => WriteProblem::QuotaExceeded,
            ErrorKind::PermissionDenied => WriteProblem::PermissionDenied,
            ErrorKind::ReadOnlyFilesystem => WriteProblem::ReadOnly,
            ErrorKind::NotFound => WriteProblem::Vanished,
            _ => return None,
        })
    }

    pub fn describe(self) -> &'static str {
        match self {
            WriteProblem::DiskFull => "disk full",
            WriteProblem::QuotaExceeded => "disk quota exceeded",
            WriteProblem::PermissionDenied => "permission denied",
            WriteProblem::ReadOnly => "read-only file system",
            WriteProblem::Vanished => "a folder vanished",
        }
    }
}

impl EngineError {
    /// The file a failed write was writing and why it failed, when the failure is one of
    /// [`WriteProblem`]; libtorch's safetensors writer keeps the I/O error inside its own.
    pub fn write_problem(&self) -> Option<(PathBuf, WriteProblem)> {
        fn of_tch(error: &tch::TchError, path: Option<&Path>) -> Option<(PathBuf, WriteProblem)> {
            match error {
                tch::TchError::SafeTensorError { path, err: safetensors::SafeTensorError::IoError(io) } => {
                    Some((PathBuf::from(path), WriteProblem::of(io.kind())?))
                }
                tch::TchError::Io(io) => Some((path?.to_path_buf(), WriteProblem::of(io.kind())?)),
                _ => None,
            }
        }
        fn of_file(error: &FileError) -> Option<(PathBuf, WriteProblem)> {
            match error {
                FileError::Io { path, source } => Some((path.clone(), WriteProblem::of(source.kind())?)),
                FileError::Format { .. } => None,
            }
        }
        match self {
            EngineError::File(error) | EngineError::Pretrained(PretrainedError::File(error)) => of_file(error),
            EngineError::Torch(error) => of_tch(error, None),
            EngineError::Pretrained(PretrainedError::Torch { path, source }) => of_tch(source, Some(path)),
            _ => None,
        }
    }
}

/// For `map_err` on an I/O result about `path`.
pub fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |source| FileError::io(path)(source).into()
}
