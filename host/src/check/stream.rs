//! Generated observation streams: a few numbers (length, curve, plateau, spikes, non-finite
//! values, evaluation steps) that expand into one observation per step, so proptest can
//! shrink a failing stream to a short, readable one.

use crate::policy::{Evaluation, LossGradients, NonFinite, Observation, RunSpec};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

/// Relative magnitudes of the three losses of the check spec: 100x apart, as in taggers.
const MAGNITUDES: [f64; 3] = [100.0, 1.0, 0.01];
/// Gradient norm per unit of each loss: the largest loss does not have the largest gradient,
/// so the shares of the gradient (1 : 0.4 : 0.06) differ from those of the losses.
const GRADIENT_PER_LOSS: [f64; 3] = [0.05, 2.0, 30.0];

#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub len: u64,
    /// The check saves and restores the policy's state after this many steps.
    pub save_at: u64,
    pub start_loss: f64,
    /// Per-step exponential decay of the losses.
    pub decay: f64,
    /// From this step on the losses stay flat.
    pub plateau_from: Option<u64>,
    /// (step, factor): the losses jump by this factor at that step.
    pub spikes: Vec<(u64, f64)>,
    /// (step, kind): 0 a NaN loss, 1 an infinite loss, 2 a NaN gradient norm.
    pub non_finite: Vec<(u64, u8)>,
    /// Steps whose observation carries a new evaluation.
    pub evaluations: Vec<u64>,
}

impl StreamSpec {
    pub fn strategy(total_steps: u64) -> impl Strategy<Value = StreamSpec> {
        let total = total_steps.max(2);
        // Proptest shrinks the parts in order, so the length comes last: a stream can only get
        // short once the save point, plateau and events have moved early.
        (
            0..=total,
            0.1f64..1000.0,
            0.0f64..0.01,
            option::of(0..total),
            vec((0..total, 1.5f64..100.0), 0..4),
            vec((0..total, 0u8..3), 0..3),
            vec(1..total, 0..24),
            1..=total,
        )
            .prop_map(|(save_at, start_loss, decay, plateau_from, spikes, non_finite, evaluations, len)| {
                StreamSpec { len, save_at, start_loss, decay, plateau_from, spikes, non_finite, evaluations }
            })
    }

    /// The smooth part of the curve after `steps` steps.
    fn curve(&self, steps: u64) -> f64 {
        let flat_from = self.plateau_from.map_or(steps, |p| steps.min(p));
        let spike: f64 = self.spikes.iter().filter(|(at, _)| *at == steps).map(|(_, factor)| factor).product();
        self.start_loss * (-self.decay * flat_from as f64).exp() * spike
    }

    /// What the policy sees before step `step`.
    pub fn observation(&self, step: u64, spec: &RunSpec) -> Observation {
        let mut non_finite = NonFinite::empty();
        let (losses, total, grad_norm) = if step == 0 {
            (vec![], None, None)
        } else {
            let value = self.curve(step - 1);
            let mut losses: Vec<f64> = MAGNITUDES.iter().map(|m| value * m).collect();
            let mut grad_norm = value.sqrt();
            for (_, kind) in self.non_finite.iter().filter(|(at, _)| *at == step - 1) {
                match kind {
                    0 => losses[0] = f64::NAN,
                    1 => losses[1] = f64::INFINITY,
                    _ => grad_norm = f64::NAN,
                }
            }
            if losses.iter().any(|l| !l.is_finite()) {
                non_finite |= NonFinite::LOSS;
            }
            if !grad_norm.is_finite() {
                non_finite |= NonFinite::GRAD_NORM;
            }
            let total = losses.iter().sum();
            (losses, Some(total), Some(grad_norm))
        };
        // Gradients of each term, shown at every step (a run shows them when a policy asked).
        let loss_gradients = (step > 0).then(|| {
            let norms: Vec<f64> = losses.iter().zip(GRADIENT_PER_LOSS).map(|(loss, g)| loss.abs() * g).collect();
            let sum: f64 = norms.iter().sum();
            let shares = norms.iter().map(|norm| if sum > 0.0 { norm / sum } else { 0.0 }).collect();
            LossGradients { step: step - 1, norms, shares }
        });
        let evaluation = self.evaluations.contains(&step).then(|| {
            let value = self.curve(step);
            let accuracy = 1.0 - 0.9 * (value / self.start_loss).min(1.0);
            Evaluation { step, values: vec![value, accuracy, (accuracy + 0.1).min(1.0)] }
        });
        Observation {
            step,
            epoch: step / spec.steps_per_epoch.max(1),
            losses,
            total_loss: total,
            grad_norm,
            non_finite,
            lrs: spec.groups.iter().map(|g| g.base_lr).collect(),
            lr_multipliers: vec![1.0; spec.groups.len()],
            loss_weights: vec![1.0; spec.losses.len()],
            frozen: spec.groups.iter().map(|g| g.frozen).collect(),
            images_per_second: Some(1000.0),
            logit_scale: Some(14.3),
            evaluation,
            elapsed_seconds: step as f64 * 0.25,
            seconds_left: None,
            loss_gradients,
        }
    }
}

impl std::fmt::Display for StreamSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} steps, state saved after step {}, losses from {:.4} decaying {:.5}/step",
            self.len,
            self.save_at.min(self.len),
            self.start_loss,
            self.decay
        )?;
        if let Some(at) = self.plateau_from {
            write!(f, ", flat from step {at}")?;
        }
        if !self.spikes.is_empty() {
            write!(f, ", spikes (step, factor) {:?}", self.spikes)?;
        }
        if !self.non_finite.is_empty() {
            let named: Vec<String> = self
                .non_finite
                .iter()
                .map(|(at, kind)| {
                    format!("{} at step {at}", ["NaN loss", "infinite loss", "NaN grad norm"][(*kind as usize).min(2)])
                })
                .collect();
            write!(f, ", {}", named.join(", "))?;
        }
        if !self.evaluations.is_empty() {
            write!(f, ", evaluations at {:?}", self.evaluations)?;
        }
        Ok(())
    }
}
