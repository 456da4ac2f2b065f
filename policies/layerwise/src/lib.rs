//! `layerwise`: per-group learning-rate multipliers on top of a schedule, e.g. the
//! pretrained towers at 0.1x the heads: `layerwise.wasm:vision=0.1,text=0.1`.
//!
//! `lr_g = multiplier_g * schedule(step, base_g)`, where the schedule is `cosine` (linear
//! warmup over `warmup_steps`, cosine decay to `min_lr`, as `cosine_warmup`) or `constant`.
//!
//! Arguments: one `<group>=<multiplier>` per group to scale (default 1), `schedule`
//! (`cosine`/`constant`, default `cosine`), `warmup_steps` (default 5% of the run), `min_lr`
//! (default 0). Owns: learning rates.

use trainer_policy_sdk::schedules::cosine_warmup;
use trainer_policy_sdk::{Args, Decision, Knobs, Observation, Policy, RunSpec, export_policy};

struct Layerwise {
    base_lrs: Vec<f64>,
    multipliers: Vec<f64>,
    cosine: bool,
    warmup_steps: u64,
    total_steps: u64,
    min_lr: f64,
}

impl Policy for Layerwise {
    fn init(spec: RunSpec) -> Result<Self, String> {
        let mut known: Vec<&str> = spec.groups.iter().map(|group| group.name.as_str()).collect();
        known.extend(["schedule", "warmup_steps", "min_lr"]);
        let args = Args::new(&spec.args, &known)?;
        let mut multipliers = Vec::with_capacity(spec.groups.len());
        for group in &spec.groups {
            let multiplier = args.f64_or(&group.name, 1.0)?;
            if multiplier < 0.0 {
                return Err(format!("argument `{}`: multiplier must be >= 0, got {multiplier}", group.name));
            }
            multipliers.push(multiplier);
        }
        Ok(Self {
            base_lrs: spec.groups.iter().map(|group| group.base_lr).collect(),
            multipliers,
            cosine: args.choice("schedule", &["cosine", "constant"], "cosine")? == "cosine",
            warmup_steps: args.u64_or("warmup_steps", spec.total_steps / 20)?,
            total_steps: spec.total_steps,
            min_lr: args.f64_or("min_lr", 0.0)?,
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
            .zip(&self.multipliers)
            .map(|(&base, &multiplier)| {
                let scheduled = if self.cosine {
                    cosine_warmup(step, base, self.warmup_steps, self.total_steps, self.min_lr)
                } else {
                    base
                };
                Some(multiplier * scheduled)
            })
            .collect();
        Decision { lrs, ..Decision::keep() }
    }
}

export_policy!(Layerwise);
