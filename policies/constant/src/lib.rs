//! `constant`: every group keeps one learning rate for the whole run.
//!
//! Arguments: `lr` (default: each group's base learning rate). Owns: learning rates.

use trainer_policy_sdk::{Args, Decision, Knobs, Observation, Policy, RunSpec, export_policy};

struct Constant {
    lrs: Vec<f64>,
}

impl Policy for Constant {
    fn init(spec: RunSpec) -> Result<Self, String> {
        let args = Args::new(&spec.args, &["lr"])?;
        let mut lrs = Vec::with_capacity(spec.groups.len());
        for group in &spec.groups {
            let lr = args.f64_or("lr", group.base_lr)?;
            if lr < 0.0 {
                return Err(format!("argument `lr`: must be >= 0, got {lr}"));
            }
            lrs.push(lr);
        }
        Ok(Self { lrs })
    }

    fn knobs(&self) -> Knobs {
        Knobs::LEARNING_RATES
    }

    fn decide(&mut self, _observation: Observation) -> Decision {
        Decision { lrs: self.lrs.iter().copied().map(Some).collect(), ..Decision::keep() }
    }
}

export_policy!(Constant);
