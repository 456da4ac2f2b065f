//! What a run records about its policies, in the form `trainer simulate` reads back: the
//! run specification the policies started with (in `run.json`), the observation each step
//! showed them (rebuilt from `metrics.jsonl` and `evaluations.jsonl`), and the lines of
//! `decisions.jsonl`. The run and the simulator share this code, so a simulation of a
//! recorded run makes the very same records.

use super::checkpoint::TrainerState;
use crate::policy::{
    AugmentationKnob, Decision, Depth, Evaluation, GradClip, LossGradients, NonFinite, Observation, ParamGroup,
    PolicySource, RollbackSource, RunSpec, StepDecision,
};
use serde::{Deserialize, Serialize};

/// [`RunSpec`] without the policy arguments (each policy gets its own), as `run.json`
/// keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedSpec {
    pub groups: Vec<SavedGroup>,
    pub losses: Vec<String>,
    pub augmentation: Vec<SavedKnob>,
    pub metrics: Vec<String>,
    pub total_steps: u64,
    pub steps_per_epoch: u64,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedGroup {
    pub name: String,
    pub base_lr: f64,
    pub param_count: u64,
    pub frozen: bool,
    /// `None` in runs from before towers were recorded: the group's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tower: Option<String>,
    /// The group's layer and the tower's count of layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<(u32, u32)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedKnob {
    pub name: String,
    pub min: f64,
    pub max: f64,
    pub default: f64,
}

impl From<&RunSpec> for SavedSpec {
    fn from(spec: &RunSpec) -> Self {
        SavedSpec {
            groups: spec
                .groups
                .iter()
                .map(|g| SavedGroup {
                    name: g.name.clone(),
                    base_lr: g.base_lr,
                    param_count: g.param_count,
                    frozen: g.frozen,
                    tower: Some(g.tower.clone()),
                    depth: g.depth.map(|Depth { index, count }| (index, count)),
                })
                .collect(),
            losses: spec.losses.clone(),
            augmentation: spec
                .augmentation
                .iter()
                .map(|k| SavedKnob { name: k.name.clone(), min: k.min, max: k.max, default: k.default })
                .collect(),
            metrics: spec.metrics.clone(),
            total_steps: spec.total_steps,
            steps_per_epoch: spec.steps_per_epoch,
            seed: spec.seed,
        }
    }
}

impl SavedSpec {
    pub fn to_run_spec(&self) -> RunSpec {
        RunSpec {
            groups: self
                .groups
                .iter()
                .map(|g| ParamGroup {
                    name: g.name.clone(),
                    base_lr: g.base_lr,
                    param_count: g.param_count,
                    frozen: g.frozen,
                    tower: g.tower.clone().unwrap_or_else(|| g.name.clone()),
                    depth: g.depth.map(|(index, count)| Depth { index, count }),
                })
                .collect(),
            losses: self.losses.clone(),
            augmentation: self
                .augmentation
                .iter()
                .map(|k| AugmentationKnob { name: k.name.clone(), min: k.min, max: k.max, default: k.default })
                .collect(),
            metrics: self.metrics.clone(),
            total_steps: self.total_steps,
            steps_per_epoch: self.steps_per_epoch,
            seed: self.seed,
            args: vec![],
        }
    }

    pub fn group_names(&self) -> Vec<&str> {
        self.groups.iter().map(|g| g.name.as_str()).collect()
    }

    pub fn loss_names(&self) -> Vec<&str> {
        self.losses.iter().map(String::as_str).collect()
    }

    pub fn knob_names(&self) -> Vec<&str> {
        self.augmentation.iter().map(|k| k.name.as_str()).collect()
    }
}

impl TrainerState {
    /// What the policies see before step `steps_done`, in `epoch`, with `seconds_left` under
    /// a time limit.
    pub fn observation(&self, epoch: u64, seconds_left: Option<f64>) -> Observation {
        let last = &self.last;
        let mut non_finite = NonFinite::empty();
        if last.total_loss.is_some_and(|l| !l.is_finite()) || last.losses.iter().any(|l| !l.is_finite()) {
            non_finite |= NonFinite::LOSS;
        }
        if last.grad_norm.is_some_and(|n| !n.is_finite()) {
            non_finite |= NonFinite::GRAD_NORM;
        }
        Observation {
            step: self.steps_done,
            epoch,
            losses: last.losses.clone(),
            total_loss: last.total_loss,
            grad_norm: last.grad_norm,
            non_finite,
            lrs: self.knobs.lrs.clone(),
            lr_multipliers: self.knobs.composed_multipliers(),
            loss_weights: self.knobs.loss_weights.clone(),
            frozen: self.knobs.frozen.clone(),
            images_per_second: last.images_per_second,
            logit_scale: last.logit_scale,
            evaluation: self.pending_evaluation.as_ref().map(|e| Evaluation { step: e.step, values: e.values.clone() }),
            elapsed_seconds: self.elapsed_seconds,
            seconds_left,
            loss_gradients: last.loss_gradients.as_ref().map(|measured| LossGradients {
                step: measured.step,
                norms: measured.norms.clone(),
                shares: measured.shares.clone(),
            }),
        }
    }
}

/// The `decisions.jsonl` lines of step `step`: one per policy, with the fields it set.
pub fn decision_records(
    step: u64,
    decision: &StepDecision,
    groups: &[&str],
    losses: &[&str],
    knobs: &[&str],
) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let shadows = decision.shadows.iter().map(|(policy, decided)| {
        let mut record = decision_record(step, policy, decided, groups, losses, knobs);
        record.insert("shadow".into(), true.into());
        record
    });
    decision
        .per_policy
        .iter()
        .map(|(policy, decided)| decision_record(step, policy, decided, groups, losses, knobs))
        .chain(shadows)
        .collect()
}

fn decision_record(
    step: u64,
    policy: &str,
    decided: &Decision,
    groups: &[&str],
    losses: &[&str],
    knobs: &[&str],
) -> serde_json::Map<String, serde_json::Value> {
    let mut record = serde_json::Map::new();
    record.insert("step".into(), step.into());
    record.insert("policy".into(), policy.into());
    let mut put = |field: &str, names: &[&str], values: Vec<serde_json::Value>| {
        if !values.is_empty() {
            let map: serde_json::Map<String, serde_json::Value> =
                names.iter().map(|name| name.to_string()).zip(values).collect();
            record.insert(field.into(), map.into());
        }
    };
    let json = |v: &Option<f64>| serde_json::json!(v);
    put("lrs", groups, decided.lrs.iter().map(json).collect());
    put("lr_multipliers", groups, decided.lr_multipliers.iter().map(json).collect());
    put("loss_weights", losses, decided.loss_weights.iter().map(json).collect());
    put("augmentation", knobs, decided.augmentation.iter().map(json).collect());
    put("freeze", groups, decided.freeze.iter().map(|v| serde_json::json!(v)).collect());
    match decided.grad_clip {
        Some(GradClip::Off) => drop(record.insert("grad_clip".into(), "off".into())),
        Some(GradClip::MaxNorm(norm)) => drop(record.insert("grad_clip".into(), norm.into())),
        None => {}
    }
    let flags = [
        ("evaluate", decided.evaluate),
        ("checkpoint", decided.checkpoint),
        ("measure_loss_gradients", decided.measure_loss_gradients),
        ("snapshot", decided.snapshot),
    ];
    for (flag, set) in flags {
        if set {
            record.insert(flag.into(), true.into());
        }
    }
    if let Some(reason) = &decided.stop {
        record.insert("stop".into(), reason.as_str().into());
    }
    if let Some(rollback) = &decided.rollback {
        let source = match rollback.source {
            RollbackSource::Snapshot => "snapshot",
            RollbackSource::Checkpoint => "checkpoint",
        };
        record.insert("rollback".into(), serde_json::json!({"source": source, "skip_batches": rollback.skip_batches}));
    }
    record
}

/// The `decisions.jsonl` lines of policies swapped in before step `step` (`--resume
/// --swap-policies`): one per policy of the new set, with its source and whether it
/// continues from its saved state or starts fresh.
pub fn swap_decision_records(step: u64, swapped_in: &[(&PolicySource, bool)]) -> Vec<serde_json::Value> {
    swapped_in
        .iter()
        .map(|(source, kept)| {
            serde_json::json!({
                "step": step,
                "policy": source.name(),
                "action": "swap",
                "source": source.to_string(),
                "state": if *kept { "kept" } else { "fresh" },
            })
        })
        .collect()
}
