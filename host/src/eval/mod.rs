//! Evaluation of trained models on held-out data.

mod validation;
mod zero_shot;

pub use validation::{VALIDATION_METRICS, validation_metrics};
pub use zero_shot::{ZeroShotAccuracy, zero_shot_accuracy};
