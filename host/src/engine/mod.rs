//! The training loop and what it steers. One step is:
//! ask the policies -> validate -> apply (learning rates, loss weights, augmentation,
//! clipping, freezing) -> batch -> augment -> forward -> backward -> clip -> optimizer step ->
//! observation for the next decision -> requested actions (evaluate, checkpoint, stop).
//! The loop owns the run directory: metrics, decisions, checkpoints, final weights.

mod best;
mod checkpoint;
mod contrastive;
mod data;
mod knobs;
pub mod optimizer;
mod run;
mod simulate;
mod tagging;
mod task;
mod trace;

pub use checkpoint::CHECKPOINTS_DIR;
pub use data::Scores;
pub use knobs::KnobState;
pub use run::{
    BestMetric, EngineError, Precision, Resume, RunOptions, TaskKind, TrainConfig, TrainOutcome, resume, train,
};
pub use simulate::{SimulateOptions, SimulateOutcome, SyntheticCurve, Trace, simulate};
pub use tagging::TagLoss;
