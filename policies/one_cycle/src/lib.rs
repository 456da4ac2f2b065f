//! `one_cycle`: the one-cycle schedule of PyTorch's OneCycleLR (cosine annealing, two
//! phases), with each group's base learning rate as the peak.
//!
//! `initial = base / div_factor`, `min = initial / final_div_factor`, `e1 = pct_start * T - 1`,
//! `e2 = T - 1`; with `anneal(a, b, p) = b + (a - b) * (1 + cos(pi p)) / 2`:
//! - `step <= e1`: `lr = anneal(initial, base, step / e1)`
//! - after: `lr = anneal(base, min, (step - e1) / (e2 - e1))`
//!
//! Arguments: `pct_start` (default 0.3), `div_factor` (25), `final_div_factor` (1e4).
//! Owns: learning rates.

use trainer_policy_sdk::schedules::cosine_fall;
use trainer_policy_sdk::{Args, Decision, Knobs, Observation, Policy, RunSpec, export_policy};

struct OneCycle {
    base_lrs: Vec<f64>,
    div_factor: f64,
    final_div_factor: f64,
    phase1_end: f64,
    phase2_end: f64,
}

fn anneal(start: f64, end: f64, progress: f64) -> f64 {
    end + (start - end) * cosine_fall(progress)
}

impl Policy for OneCycle {
    fn init(spec: RunSpec) -> Result<Self, String> {
        let args = Args::new(&spec.args, &["pct_start", "div_factor", "final_div_factor"])?;
        let pct_start = args.f64_or("pct_start", 0.3)?;
        if !(0.0..=1.0).contains(&pct_start) {
            return Err(format!("argument `pct_start`: must be within [0, 1], got {pct_start}"));
        }
        let div_factor = args.f64_or("div_factor", 25.0)?;
        let final_div_factor = args.f64_or("final_div_factor", 1e4)?;
        if div_factor <= 0.0 || final_div_factor <= 0.0 {
            return Err("arguments `div_factor` and `final_div_factor` must be > 0".into());
        }
        Ok(Self {
            base_lrs: spec.groups.iter().map(|group| group.base_lr).collect(),
            div_factor,
            final_div_factor,
            phase1_end: pct_start * spec.total_steps as f64 - 1.0,
            phase2_end: spec.total_steps as f64 - 1.0,
        })
    }

    fn knobs(&self) -> Knobs {
        Knobs::LEARNING_RATES
    }

    fn decide(&mut self, observation: Observation) -> Decision {
        let step = observation.step as f64;
        let lrs = self
            .base_lrs
            .iter()
            .map(|&peak| {
                let initial = peak / self.div_factor;
                let min = initial / self.final_div_factor;
                let lr = if step <= self.phase1_end && self.phase1_end > 0.0 {
                    anneal(initial, peak, step / self.phase1_end)
                } else {
                    let start = self.phase1_end.max(0.0);
                    let span = (self.phase2_end - start).max(1.0);
                    anneal(peak, min, (step - start) / span)
                };
                Some(lr)
            })
            .collect();
        Decision { lrs, ..Decision::keep() }
    }
}

export_policy!(OneCycle);
