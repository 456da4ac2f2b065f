//! Evaluation of trained models on held-out data.

mod zero_shot;

pub use zero_shot::{ZeroShotAccuracy, zero_shot_accuracy};
