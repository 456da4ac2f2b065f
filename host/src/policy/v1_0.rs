//! Components of `trainer:policy@1.0.0`, which run unchanged. The trainer works in 1.1's
//! types; a 1.0 policy is given the spec and observations without what 1.1 added, and its
//! decisions come back with 1.1's new fields unset. 1.1 only adds fields, flags and cases,
//! so nothing a 1.0 policy says or sees changes meaning.

use super::{Decision, Evaluation, GradClip, Knobs, NonFinite, Observation, RunSpec};

pub(super) mod bindings {
    wasmtime::component::bindgen!({
        world: "policy",
        path: "../wit/v1",
    });
}

pub(super) use bindings::Policy;
use bindings::trainer::policy::host::LogLevel as OldLogLevel;
use bindings::trainer::policy::types as old;

impl From<&RunSpec> for old::RunSpec {
    fn from(spec: &RunSpec) -> Self {
        old::RunSpec {
            groups: spec
                .groups
                .iter()
                .map(|group| old::ParamGroup {
                    name: group.name.clone(),
                    base_lr: group.base_lr,
                    param_count: group.param_count,
                    frozen: group.frozen,
                })
                .collect(),
            losses: spec.losses.clone(),
            augmentation: spec
                .augmentation
                .iter()
                .map(|knob| old::AugmentationKnob {
                    name: knob.name.clone(),
                    min: knob.min,
                    max: knob.max,
                    default: knob.default,
                })
                .collect(),
            metrics: spec.metrics.clone(),
            total_steps: spec.total_steps,
            steps_per_epoch: spec.steps_per_epoch,
            seed: spec.seed,
            args: spec.args.clone(),
        }
    }
}

impl From<&Observation> for old::Observation {
    fn from(observation: &Observation) -> Self {
        let mut non_finite = old::NonFinite::empty();
        if observation.non_finite.contains(NonFinite::LOSS) {
            non_finite |= old::NonFinite::LOSS;
        }
        if observation.non_finite.contains(NonFinite::GRAD_NORM) {
            non_finite |= old::NonFinite::GRAD_NORM;
        }
        old::Observation {
            step: observation.step,
            epoch: observation.epoch,
            losses: observation.losses.clone(),
            total_loss: observation.total_loss,
            grad_norm: observation.grad_norm,
            non_finite,
            lrs: observation.lrs.clone(),
            loss_weights: observation.loss_weights.clone(),
            frozen: observation.frozen.clone(),
            images_per_second: observation.images_per_second,
            logit_scale: observation.logit_scale,
            evaluation: observation
                .evaluation
                .as_ref()
                .map(|Evaluation { step, values }| old::Evaluation { step: *step, values: values.clone() }),
        }
    }
}

impl From<old::Decision> for Decision {
    fn from(decision: old::Decision) -> Self {
        Decision {
            lrs: decision.lrs,
            loss_weights: decision.loss_weights,
            augmentation: decision.augmentation,
            grad_clip: decision.grad_clip.map(|clip| match clip {
                old::GradClip::Off => GradClip::Off,
                old::GradClip::MaxNorm(norm) => GradClip::MaxNorm(norm),
            }),
            freeze: decision.freeze,
            evaluate: decision.evaluate,
            checkpoint: decision.checkpoint,
            stop: decision.stop,
            ..Decision::keep()
        }
    }
}

/// The 1.1 flags of the kinds a 1.0 policy claimed (1.1 kept 1.0's and added one).
pub(super) fn knobs(claimed: old::Knobs) -> Knobs {
    [
        (old::Knobs::LEARNING_RATES, Knobs::LEARNING_RATES),
        (old::Knobs::LOSS_WEIGHTS, Knobs::LOSS_WEIGHTS),
        (old::Knobs::AUGMENTATION, Knobs::AUGMENTATION),
        (old::Knobs::GRAD_CLIP, Knobs::GRAD_CLIP),
        (old::Knobs::FREEZING, Knobs::FREEZING),
    ]
    .into_iter()
    .filter(|(old, _)| claimed.contains(*old))
    .fold(Knobs::empty(), |knobs, (_, new)| knobs | new)
}

/// 1.1's log level of a 1.0 policy's log line.
pub(super) fn log_level(level: OldLogLevel) -> super::LogLevel {
    match level {
        OldLogLevel::Debug => super::LogLevel::Debug,
        OldLogLevel::Info => super::LogLevel::Info,
        OldLogLevel::Warn => super::LogLevel::Warn,
        OldLogLevel::Error => super::LogLevel::Error,
    }
}
