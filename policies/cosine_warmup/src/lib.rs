//! `cosine_warmup`: linear warmup, then cosine decay to a floor, for every group.
//!
//! For a group with base learning rate `base`, with `w = warmup_steps`, `T = total_steps`
//! and `floor = min(min_lr, base)`:
//! - during warmup (`step < w`): `lr = base * (step + 1) / w`
//! - after: `lr = floor + (base - floor) * (1 + cos(pi * p)) / 2`, `p = (step - w) / max(1, T - w)`
//!
//! Arguments: `warmup_steps` (default: 5% of the run), `min_lr` (absolute floor, default 0).

use trainer_policy_sdk::{export_policy, Args, Decision, Observation, Policy, RunSpec};

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

    fn decide(&mut self, observation: Observation) -> Decision {
        let lrs = self.base_lrs.iter().map(|&base| Some(self.lr(base, observation.step))).collect();
        Decision { lrs }
    }
}

impl CosineWarmup {
    fn lr(&self, base: f64, step: u64) -> f64 {
        if step < self.warmup_steps {
            return base * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let floor = self.min_lr.min(base);
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        floor + (base - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

export_policy!(CosineWarmup);
