//! The values the policies steer, as the trainer holds them between steps, and how a
//! (validated) decision changes them. A group trains at its learning rate, set by the one
//! policy owning the rates, times the product of every policy's multiplier for it.

use crate::data::augment::KnobSpec;
use crate::policy::{Decision, GradClip, StepDecision};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnobState {
    /// Learning rate per parameter group, as the owner of the rates set it.
    pub lrs: Vec<f64>,
    /// Each policy's learning-rate multiplier per group, in the policies' order (all 1 for
    /// a policy that sets none).
    #[serde(default)]
    pub lr_multipliers: Vec<Vec<f64>>,
    /// Weight per loss term.
    pub loss_weights: Vec<f64>,
    /// Value per augmentation knob.
    pub augmentation: Vec<f64>,
    /// Maximum global gradient norm; `None`: no clipping.
    pub grad_clip: Option<f64>,
    /// Frozen state per parameter group.
    pub frozen: Vec<bool>,
}

impl KnobState {
    /// The knobs before any decision: `lrs` per group, `loss_weights` per loss, and
    /// multipliers of 1 for each of `policies`.
    pub fn new(lrs: Vec<f64>, loss_weights: Vec<f64>, augmentation: Vec<f64>, policies: usize) -> Self {
        let groups = lrs.len();
        KnobState {
            lrs,
            lr_multipliers: vec![vec![1.0; groups]; policies],
            loss_weights,
            augmentation,
            grad_clip: None,
            frozen: vec![false; groups],
        }
    }

    /// Multipliers for `policies` policies: kept when the count matches (the same policies,
    /// resumed), all 1 otherwise (policies swapped in on resume start fresh). Returns
    /// whether they were reset.
    pub fn fit_policies(&mut self, policies: usize) -> bool {
        if self.lr_multipliers.len() == policies {
            return false;
        }
        self.lr_multipliers = vec![vec![1.0; self.lrs.len()]; policies];
        true
    }

    /// Values for `knobs`: those of a run from before the task offered its last knobs get
    /// the new ones' defaults.
    pub fn fit_augmentation(&mut self, knobs: &[KnobSpec]) {
        let known = self.augmentation.len().min(knobs.len());
        self.augmentation.extend(knobs[known..].iter().map(|knob| knob.default));
    }

    /// The product of every policy's multiplier, per group, in the policies' order.
    pub fn composed_multipliers(&self) -> Vec<f64> {
        (0..self.lrs.len()).map(|group| self.lr_multipliers.iter().map(|m| m[group]).product()).collect()
    }

    /// The rate each group trains at.
    pub fn effective_lrs(&self) -> Vec<f64> {
        self.lrs.iter().zip(self.composed_multipliers()).map(|(lr, multiplier)| lr * multiplier).collect()
    }

    /// Applies a step's decisions; returns the groups whose frozen state changed.
    pub fn apply(&mut self, step: &StepDecision) -> Vec<usize> {
        for ((_, decided), multipliers) in step.per_policy.iter().zip(&mut self.lr_multipliers) {
            keep_or_set(multipliers, &decided.lr_multipliers);
        }
        self.apply_merged(&step.merged)
    }

    fn apply_merged(&mut self, decision: &Decision) -> Vec<usize> {
        keep_or_set(&mut self.lrs, &decision.lrs);
        keep_or_set(&mut self.loss_weights, &decision.loss_weights);
        keep_or_set(&mut self.augmentation, &decision.augmentation);
        match decision.grad_clip {
            Some(GradClip::Off) => self.grad_clip = None,
            Some(GradClip::MaxNorm(norm)) => self.grad_clip = Some(norm),
            None => {}
        }
        let before = self.frozen.clone();
        keep_or_set(&mut self.frozen, &decision.freeze);
        (0..self.frozen.len()).filter(|&g| before[g] != self.frozen[g]).collect()
    }
}

fn keep_or_set<T: Copy>(current: &mut [T], decided: &[Option<T>]) {
    for (value, decided) in current.iter_mut().zip(decided) {
        if let Some(decided) = decided {
            *value = *decided;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_keeps_and_some_sets() {
        let mut knobs = KnobState { grad_clip: Some(1.0), ..KnobState::new(vec![1.0, 2.0], vec![1.0], vec![0.0], 1) };
        let decision = Decision {
            lrs: vec![None, Some(3.0)],
            augmentation: vec![Some(0.5)],
            grad_clip: Some(GradClip::Off),
            freeze: vec![Some(true), Some(false)],
            ..Decision::keep()
        };
        assert_eq!(knobs.apply_merged(&decision), vec![0]);
        assert_eq!(knobs.lrs, [1.0, 3.0]);
        assert_eq!(knobs.loss_weights, [1.0]);
        assert_eq!(knobs.augmentation, [0.5]);
        assert_eq!(knobs.grad_clip, None);
        assert_eq!(knobs.frozen, [true, false]);
    }

    #[test]
    fn multipliers_of_every_policy_compose_by_product() {
        let mut knobs = KnobState::new(vec![1e-3, 2e-3], vec![1.0], vec![], 3);
        let decided = |lr_multipliers: Vec<Option<f64>>| Decision { lr_multipliers, ..Decision::keep() };
        let step = StepDecision {
            merged: Decision { lrs: vec![Some(4e-3), None], ..Decision::keep() },
            per_policy: vec![
                ("schedule".into(), decided(vec![])),
                ("layerwise".into(), decided(vec![Some(0.5), None])),
                ("ramp".into(), decided(vec![Some(0.25), Some(0.0)])),
            ],
            stop: None,
            shadows: vec![],
        };
        knobs.apply(&step);
        assert_eq!(knobs.lrs, [4e-3, 2e-3]);
        assert_eq!(knobs.composed_multipliers(), [0.125, 0.0]);
        assert_eq!(knobs.effective_lrs(), [4e-3 * 0.125, 0.0]);
        // `none` keeps a policy's multiplier; the others' stay as they were.
        let step = StepDecision {
            merged: Decision::keep(),
            per_policy: vec![
                ("schedule".into(), decided(vec![])),
                ("layerwise".into(), decided(vec![None, None])),
                ("ramp".into(), decided(vec![Some(1.0), Some(1.0)])),
            ],
            stop: None,
            shadows: vec![],
        };
        knobs.apply(&step);
        assert_eq!(knobs.composed_multipliers(), [0.5, 1.0]);
        assert!(!knobs.fit_policies(3));
        assert!(knobs.fit_policies(2));
        assert_eq!(knobs.composed_multipliers(), [1.0, 1.0]);
    }
}
