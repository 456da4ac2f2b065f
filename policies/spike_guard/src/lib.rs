//! `spike_guard`: catches a loss or gradient-norm spike and undoes it, as PaLM restarted
//! from before a spike and skipped the batches around it, instead of aborting the run
//! (OLMo-core skips steps beyond 6 standard deviations).
//!
//! It keeps the last `window` finite values of the loss (the sum of the raw loss terms, so
//! that a policy changing the loss weights does not look like a spike) and of the gradient
//! norm. A step is a spike when either value is not finite, or, once `min_window` values are
//! kept, its z-score `(x - mean) / std` over the window exceeds `threshold`. While no spike is
//! seen it asks for a snapshot every `snapshot_every` steps. On a spike seen before step
//! `s`, with the newest snapshot taken before step `t`, it asks for a rollback to that
//! snapshot that skips the `s - t` batches trained since (the spike's among them) and
//! `skip_batches` more; the spike's values do not enter the window. Without a snapshot yet
//! (a spike in the first steps), the trainer falls back to the newest checkpoint, or
//! restores nothing. When the step right after a rollback spikes again, `retries` times in
//! a row, the loss has moved to another level rather than spiked: the window starts afresh
//! from there, with a warning, and training goes on.
//!
//! `action=skip` undoes only the step that spiked: a snapshot before every step (a copy of
//! the weights and both moments, each step) and a rollback of one batch.
//!
//! Arguments: `window` (default 100), `min_window` (default 20), `threshold` (default 6),
//! `action` (`rollback` or `skip`, default `rollback`), `snapshot_every` (default 50; 1 with
//! `skip`), `skip_batches` (default 0), `retries` (default 3). Owns: no knob (snapshots and rollbacks only).

use std::collections::VecDeque;
use trainer_policy_sdk::state::{StateReader, StateWriter};
use trainer_policy_sdk::{
    Args, Decision, Knobs, LogLevel, Observation, Policy, Rollback, RollbackSource, RunSpec, export_policy, log,
};

struct SpikeGuard {
    window: usize,
    min_window: usize,
    threshold: f64,
    snapshot_every: u64,
    skip_batches: u64,
    retries: u64,
    // State.
    losses: VecDeque<f64>,
    norms: VecDeque<f64>,
    /// The step the newest snapshot was asked for before; `None` before the first.
    snapshot_at: Option<u64>,
    /// Rollbacks in a row, each answering a spike right after the one before.
    rollbacks_in_a_row: u64,
}

/// The z-score of `value` over `values`: 0 when they do not vary.
fn z_score(values: &VecDeque<f64>, value: f64) -> f64 {
    let count = values.len() as f64;
    let mean = values.iter().sum::<f64>() / count;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / count;
    if variance > 0.0 { (value - mean) / variance.sqrt() } else { 0.0 }
}

impl SpikeGuard {
    /// Whether the step that `loss` and `norm` measured spiked, and why.
    fn spike(&self, loss: f64, norm: f64) -> Option<String> {
        if !(loss.is_finite() && norm.is_finite()) {
            return Some(format!("loss {loss}, gradient norm {norm}"));
        }
        if self.losses.len() < self.min_window {
            return None;
        }
        let (z_loss, z_norm) = (z_score(&self.losses, loss), z_score(&self.norms, norm));
        (z_loss > self.threshold || z_norm > self.threshold).then(|| {
            format!("loss {loss} (z {z_loss:.1}), gradient norm {norm} (z {z_norm:.1}), threshold {}", self.threshold)
        })
    }

    fn remember(&mut self, loss: f64, norm: f64) {
        for (values, value) in [(&mut self.losses, loss), (&mut self.norms, norm)] {
            values.push_back(value);
            if values.len() > self.window {
                values.pop_front();
            }
        }
    }
}

impl Policy for SpikeGuard {
    fn init(spec: RunSpec) -> Result<Self, String> {
        let known = ["window", "min_window", "threshold", "action", "snapshot_every", "skip_batches", "retries"];
        let args = Args::new(&spec.args, &known)?;
        let window = args.u64_or("window", 100)? as usize;
        let min_window = args.u64_or("min_window", 20)? as usize;
        if min_window < 2 || window < min_window {
            return Err(format!(
                "arguments `window` {window} and `min_window` {min_window}: need 2 <= min_window <= window"
            ));
        }
        let threshold = args.f64_or("threshold", 6.0)?;
        if threshold <= 0.0 {
            return Err(format!("argument `threshold`: must be > 0, got {threshold}"));
        }
        let skip = args.choice("action", &["rollback", "skip"], "rollback")? == "skip";
        let snapshot_every = args.u64_or("snapshot_every", if skip { 1 } else { 50 })?;
        if snapshot_every == 0 {
            return Err("argument `snapshot_every`: must be at least 1".into());
        }
        Ok(Self {
            window,
            min_window,
            threshold,
            snapshot_every,
            skip_batches: args.u64_or("skip_batches", 0)?,
            retries: args.u64_or("retries", 3)?,
            losses: VecDeque::with_capacity(window),
            norms: VecDeque::with_capacity(window),
            snapshot_at: None,
            rollbacks_in_a_row: 0,
        })
    }

    fn knobs(&self) -> Knobs {
        Knobs::empty()
    }

    fn decide(&mut self, observation: Observation) -> Decision {
        let step = observation.step;
        if let Some(norm) = observation.grad_norm
            && !observation.losses.is_empty()
        {
            let loss: f64 = observation.losses.iter().sum();
            match self.spike(loss, norm) {
                Some(why) if self.rollbacks_in_a_row < self.retries => {
                    self.rollbacks_in_a_row += 1;
                    let skip_batches = self.snapshot_at.map_or(0, |at| step - at) + self.skip_batches;
                    let message =
                        format!("spike before step {step}: {why}; rolling back, skipping {skip_batches} batches");
                    log(LogLevel::Warn, &message);
                    let rollback = Rollback { source: RollbackSource::Snapshot, skip_batches };
                    return Decision { rollback: Some(rollback), ..Decision::keep() };
                }
                Some(why) => {
                    let message = format!(
                        "spike before step {step} again after {} rollbacks: {why}; taking it as the loss's new level",
                        self.retries
                    );
                    log(LogLevel::Warn, &message);
                    self.losses.clear();
                    self.norms.clear();
                    self.rollbacks_in_a_row = 0;
                }
                None => self.rollbacks_in_a_row = 0,
            }
            if loss.is_finite() && norm.is_finite() {
                self.remember(loss, norm);
            }
        }
        let snapshot = step.is_multiple_of(self.snapshot_every);
        if snapshot {
            self.snapshot_at = Some(step);
        }
        Decision { snapshot, ..Decision::keep() }
    }

    fn save_state(&self) -> Vec<u8> {
        let losses: Vec<f64> = self.losses.iter().copied().collect();
        let norms: Vec<f64> = self.norms.iter().copied().collect();
        StateWriter::new()
            .u64(losses.len() as u64)
            .f64s(&losses)
            .f64s(&norms)
            .bool(self.snapshot_at.is_some())
            .u64(self.snapshot_at.unwrap_or(0))
            .u64(self.rollbacks_in_a_row)
            .finish()
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), String> {
        let mut reader = StateReader::new(state);
        let kept = reader.u64("values kept")? as usize;
        if kept > self.window {
            return Err(format!("the state keeps {kept} values, the window is {}", self.window));
        }
        self.losses = reader.f64s("losses", kept)?.into();
        self.norms = reader.f64s("gradient norms", kept)?.into();
        let snapshot_taken = reader.bool("whether a snapshot was taken")?;
        let at = reader.u64("the snapshot's step")?;
        self.snapshot_at = snapshot_taken.then_some(at);
        self.rollbacks_in_a_row = reader.u64("rollbacks in a row")?;
        reader.finish()
    }
}

export_policy!(SpikeGuard);
