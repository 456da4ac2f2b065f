//! The values the policies steer, as the trainer holds them between steps, and how a
//! (validated) decision changes them.

use crate::policy::{Decision, GradClip};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnobState {
    /// Learning rate per parameter group.
    pub lrs: Vec<f64>,
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
    /// Applies `decision`; returns the groups whose frozen state changed.
    pub fn apply(&mut self, decision: &Decision) -> Vec<usize> {
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
        let mut knobs = KnobState {
            lrs: vec![1.0, 2.0],
            loss_weights: vec![1.0],
            augmentation: vec![0.0],
            grad_clip: Some(1.0),
            frozen: vec![false, false],
        };
        let decision = Decision {
            lrs: vec![None, Some(3.0)],
            augmentation: vec![Some(0.5)],
            grad_clip: Some(GradClip::Off),
            freeze: vec![Some(true), Some(false)],
            ..Decision::keep()
        };
        assert_eq!(knobs.apply(&decision), vec![0]);
        assert_eq!(knobs.lrs, [1.0, 3.0]);
        assert_eq!(knobs.loss_weights, [1.0]);
        assert_eq!(knobs.augmentation, [0.5]);
        assert_eq!(knobs.grad_clip, None);
        assert_eq!(knobs.frozen, [true, false]);
    }
}
