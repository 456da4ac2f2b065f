//! The training loop and what it steers. One step is:
//! ask the policy -> validate -> apply (learning rates) -> batch -> forward -> backward ->
//! optimizer step -> observation for the next decision. The loop owns the run directory:
//! metrics, decisions, final weights and the evaluation.

pub mod optimizer;
mod run;

pub use run::{EngineError, TrainConfig, TrainOutcome, train};
