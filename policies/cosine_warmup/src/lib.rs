//! `cosine_warmup`: linear warmup, then cosine decay to a floor, for every group.
//!
//! For a group with base learning rate `base`, with `w = warmup_steps`, `T = total_steps`
//! and `floor = min(min_lr, base)`:
//! - during warmup (`step < w`): `lr = base * (step + 1) / w`
//! - after: `lr = floor + (base - floor) * (1 + cos(pi * p)) / 2`, `p = min(1, (step - w) / max(1, T - w))`
//!
//! Arguments: `warmup_steps` (default: 5% of the run), `min_lr` (absolute floor, default 0).
//! Owns: learning rates.

use trainer_policy_sdk::schedules::cosine_warmup;
use trainer_policy_sdk::{Args, Decision, Knobs, Observation, Policy, RunSpec, export_policy};

struct CosineWarmup {
    base_lrs: Vec<f64>,
    warmup_steps: u64,
    total_steps: u64,
    min_lr: f64,
}

impl Policy for CosineWarmup {
    fn init(spec: RunSpec) -> Result<Self, String> {
        let args = Args::new(&spec.args, &["warmup_steps", "min_lr"])?;
        let min_lr = args.f64_or("min_lr", 0.0)?;
        if min_lr < 0.0 {
            return Err(format!("argument `min_lr`: must be >= 0, got {min_lr}"));
        }
        Ok(Self {
            base_lrs: spec.groups.iter().map(|group| group.base_lr).collect(),
            warmup_steps: args.u64_or("warmup_steps", spec.total_steps / 20)?,
            total_steps: spec.total_steps,
            min_lr,
        })
    }

    fn knobs(&self) -> Knobs {
        Knobs::LEARNING_RATES
    }

    fn decide(&mut self, observation: Observation) -> Decision {
        let step = observation.step;
        let lrs = self
            .base_lrs
            .iter()
            .map(|&base| Some(cosine_warmup(step, base, self.warmup_steps, self.total_steps, self.min_lr)))
            .collect();
        Decision { lrs, ..Decision::keep() }
    }
}

export_policy!(CosineWarmup);
