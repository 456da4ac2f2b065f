//! `trainer sweep`: hyper-parameter search over `trainer train`'s flags and its policies'
//! arguments, each trial an ordinary run folder (`RUN/trials/0007/`) that `eval`, `predict`,
//! `simulate` and `--resume` take as it is.
//!
//! The search is Optuna's, not one of our own: its samplers (TPE, random, Gaussian process,
//! CMA-ES), pruners and storages are what users know, and a journal file or a database lets
//! several sweep processes, on one machine or many, share a study without a scheduler of
//! ours. Population-based training is Ray Tune's `PopulationBasedTraining` in the same way,
//! its members continuing from each other's checkpoints with `--resume --swap-policies`.
//! The binary carries the small Python drivers (`optuna_driver.py`, `pbt_driver.py`, each
//! after `driver_common.py`) and runs one with a Python that has its library; the drivers
//! talk to the trainer only through command lines and the files runs write. This module
//! checks the spec before any trial starts, runs the driver, and reports the study it
//! leaves ([`results`]).

pub mod results;
pub mod spec;

use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use thiserror::Error;

use crate::files::{FileError, write_atomically};
pub use results::{Study, TrialRecord};
pub use spec::{SpecError, Storage, Sweep, TrainFlags, read_spec};

/// The drivers, run as `python -c` so the binary needs no file beside it.
const OPTUNA_DRIVER: &str = concat!(include_str!("driver_common.py"), include_str!("optuna_driver.py"));
const PBT_DRIVER: &str = concat!(include_str!("driver_common.py"), include_str!("pbt_driver.py"));

/// The resolved spec in a sweep's folder, which `--resume` reads back.
pub const SWEEP_FILE: &str = "sweep.json";

/// The Optuna release the driver is written against, which `make` installs.
pub const OPTUNA_VERSION: &str = "5.1.0";

/// The Ray release the population-based driver is written against, which `make` installs.
pub const RAY_VERSION: &str = "2.60.0";

#[derive(Debug, Error)]
pub enum SweepError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{0}")]
    Refused(String),
    /// The driver has said why on stderr, in one line.
    #[error("the search driver stopped: {0}")]
    Driver(String),
}

/// What `trainer sweep` is asked to do.
pub struct SweepRequest {
    /// The spec of a new sweep; `None` continues the one in `run_dir`.
    pub spec: Option<PathBuf>,
    pub run_dir: PathBuf,
    pub python: PathBuf,
}

/// How the driver ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SweepEnd {
    /// The budget is spent (by this process and any other on the study).
    Done,
    /// Stopped by Ctrl-C or SIGTERM: trials in flight checkpointed, to be resumed.
    Interrupted,
    /// The spec does not start a run; the driver has printed why.
    SpecRefused,
}

/// Runs (or continues) a sweep to its end or an interruption, and gives the sweep run; the
/// study is then in `RUN/study.json` unless the spec was refused.
pub fn run_sweep(request: &SweepRequest, flags: &dyn TrainFlags) -> Result<(SweepEnd, Sweep), SweepError> {
    let run_dir = &request.run_dir;
    let sweep_file = run_dir.join(SWEEP_FILE);
    let resume = request.spec.is_none();
    let sweep = match &request.spec {
        Some(spec) => {
            if sweep_file.exists() {
                return Err(SweepError::Refused(format!(
                    "--run-dir {}: already holds a sweep; continue it with `trainer sweep --resume {}` or choose \
                     another folder",
                    run_dir.display(),
                    run_dir.display()
                )));
            }
            let cwd = std::env::current_dir().map_err(FileError::io(Path::new(".")))?;
            let trainer = std::env::current_exe().map_err(FileError::io(Path::new("trainer")))?;
            let absolute_run_dir = cwd.join(run_dir);
            let sweep = read_spec(spec, &absolute_run_dir, &trainer, &cwd, flags)?;
            check_python(&request.python, &sweep)?;
            std::fs::create_dir_all(&absolute_run_dir).map_err(FileError::io(&absolute_run_dir))?;
            write_json(&sweep_file, &sweep)?;
            sweep
        }
        None => {
            let text = std::fs::read(&sweep_file).map_err(FileError::io(&sweep_file))?;
            let sweep: Sweep =
                serde_json::from_slice(&text).map_err(|err| FileError::format(&sweep_file, err.to_string()))?;
            if sweep.storage == Storage::Memory {
                return Err(SweepError::Refused(format!(
                    "--resume {}: the study was kept in memory (`storage = \"memory\"`) and ended with its process",
                    run_dir.display()
                )));
            }
            check_python(&request.python, &sweep)?;
            sweep
        }
    };
    let end = run_driver(&request.python, &sweep, &sweep_file, resume)?;
    Ok((end, sweep))
}

/// Runs the driver in its own process group, so that Ctrl-C at a terminal reaches it once,
/// from here, and the trials (in their own groups) only through it.
fn run_driver(python: &Path, sweep: &Sweep, sweep_file: &Path, resume: bool) -> Result<SweepEnd, SweepError> {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(python);
    let driver = if sweep.pbt.is_some() { PBT_DRIVER } else { OPTUNA_DRIVER };
    command.arg("-c").arg(driver).arg(sweep_file).current_dir(&sweep.cwd).stdin(Stdio::null()).process_group(0);
    if resume {
        command.arg("--resume");
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, interrupted.clone()).map_err(FileError::io(Path::new("signal handler")))?;
    }
    let mut driver = command.spawn().map_err(FileError::io(python))?;
    let mut passed_on = false;
    let status = loop {
        if let Some(status) = driver.try_wait().map_err(FileError::io(python))? {
            break status;
        }
        if interrupted.load(Ordering::Relaxed) && !passed_on {
            // SAFETY: kill(2) on the child's pid, which has not been reaped (try_wait above).
            unsafe { libc::kill(driver.id() as libc::pid_t, libc::SIGINT) };
            passed_on = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    match status.code() {
        Some(0) => Ok(SweepEnd::Done),
        Some(2) => Ok(SweepEnd::SpecRefused),
        Some(130) => Ok(SweepEnd::Interrupted),
        code => Err(SweepError::Driver(match code {
            Some(code) => format!("exit code {code} (its traceback is above)"),
            None => "killed by a signal".into(),
        })),
    }
}

/// Refuses, in one line, a Python that cannot import the sweep's library.
fn check_python(python: &Path, sweep: &Sweep) -> Result<(), SweepError> {
    let (module, library, version) = match sweep.pbt {
        Some(_) => ("ray.tune", "ray[tune]", RAY_VERSION),
        None => ("optuna", "optuna", OPTUNA_VERSION),
    };
    let output = Command::new(python).args(["-c", &format!("import {module}")]).output();
    let problem = match output {
        Ok(output) if output.status.success() => return Ok(()),
        Ok(output) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            stderr.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("no output").trim().to_string()
        }
        Err(err) => err.to_string(),
    };
    Err(SweepError::Refused(format!(
        "--python {}: cannot import {module} ({problem}); `make sweep-setup` installs {library} {version} into the \
         trainer's Python, or `pip install '{library}=={version}'` into yours",
        python.display()
    )))
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), FileError> {
    let text = serde_json::to_string_pretty(value).expect("the sweep's records serialize");
    write_atomically(path, text.as_bytes())
}
