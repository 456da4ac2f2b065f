//! The training loop and what it steers, for any [`Task`]. One step is:
//! ask the policies -> validate -> apply (learning rates, loss weights, augmentation,
//! clipping, freezing) -> batch -> augment -> forward -> backward -> clip -> optimizer step ->
//! observation for the next decision -> requested actions (evaluate, checkpoint, stop), with
//! snapshots and rollbacks before a step when a policy asks.
//! The loop owns the run directory: metrics, decisions, checkpoints, final weights. What is
//! trained, on which data, with which losses and metrics, is the task's (see `crate::tasks`);
//! nothing here knows one task from another.

mod best;
mod checkpoint;
mod config;
mod error;
mod exact;
mod fingerprint;
mod knobs;
mod loss_gradients;
pub mod optimizer;
mod run;
mod run_lock;
mod simulate;
mod snapshot;
mod task;
mod trace;

pub use best::BEST_DIR;
pub use checkpoint::{CHECKPOINTS_DIR, MODEL_FILE};
pub use config::{
    BestMetric, DEFAULT_KEEP_CHECKPOINTS, DEFAULT_MAX_SKIPPED_STEPS, DEFAULT_SNAPSHOTS, RUN_FILE, Resume, RunConfig,
    RunOptions, RunPlan, SavedRun, TrainOutcome,
};
pub use error::EngineError;
pub use fingerprint::{DataChange, DataFingerprint, DataRecord};
pub use knobs::KnobState;
pub use run::{check_batch_splits, check_new_run, check_resume, plan, resume, train, validate_config, write_json};
pub use run_lock::{LOCK_FILE, RunLock};
pub use simulate::{SimulateOptions, SimulateOutcome, SyntheticCurve, Trace, simulate};
pub use task::{Backward, Scores, StepKnobs, StepLosses, Task, Visual};
