//! `warmup_stable_decay` (WSD): linear warmup, a long stable phase at the base rate, then a
//! decay to a floor over the last `decay_steps`.
//!
//! With `w = warmup_steps`, `d = decay_steps`, `T = total_steps`, `floor = min(min_lr, base)`:
//! - `step < w`: `lr = base * (step + 1) / w`
//! - `step < T - d`: `lr = base`
//! - after: `lr = floor + (base - floor) * f(p)`, `p = (step - (T - d)) / d` capped at 1, with
//!   `f(p) = 1 - p` (`shape=linear`), `(1 + cos(pi p)) / 2` (`cosine`) or `1 - sqrt(p)` (`sqrt`)
//!
//! Arguments: `warmup_steps` (default 5% of the run), `decay_steps` (default 20%), `min_lr`
//! (default 0), `shape` (`linear`, `cosine`, `sqrt`; default `linear`). Owns: learning rates.

use trainer_policy_sdk::schedules::{cosine_fall, warmup_ramp};
use trainer_policy_sdk::{Args, Decision, Knobs, Observation, Policy, RunSpec, export_policy};

#[derive(Clone, Copy)]
enum Shape {
    Linear,
    Cosine,
    Sqrt,
}

struct WarmupStableDecay {
    base_lrs: Vec<f64>,
    warmup_steps: u64,
    decay_start: u64,
    decay_steps: u64,
    min_lr: f64,
    shape: Shape,
}

impl Policy for WarmupStableDecay {
    fn init(spec: RunSpec) -> Result<Self, String> {
        let args = Args::new(&spec.args, &["warmup_steps", "decay_steps", "min_lr", "shape"])?;
        let total = spec.total_steps;
        let warmup_steps = args.u64_or("warmup_steps", total / 20)?;
        let decay_steps = args.u64_or("decay_steps", total / 5)?.max(1);
        if warmup_steps + decay_steps > total {
            return Err(format!(
                "warmup_steps ({warmup_steps}) + decay_steps ({decay_steps}) exceed the run ({total} steps)"
            ));
        }
        let shape = match args.choice("shape", &["linear", "cosine", "sqrt"], "linear")? {
            "cosine" => Shape::Cosine,
            "sqrt" => Shape::Sqrt,
            _ => Shape::Linear,
        };
        let min_lr = args.f64_or("min_lr", 0.0)?;
        if min_lr < 0.0 {
            return Err(format!("argument `min_lr`: must be >= 0, got {min_lr}"));
        }
        Ok(Self {
            base_lrs: spec.groups.iter().map(|group| group.base_lr).collect(),
            warmup_steps,
            decay_start: total - decay_steps,
            decay_steps,
            min_lr,
            shape,
        })
    }

    fn knobs(&self) -> Knobs {
        Knobs::LEARNING_RATES
    }

    fn decide(&mut self, observation: Observation) -> Decision {
        let lrs = self.base_lrs.iter().map(|&base| Some(self.lr(base, observation.step))).collect();
        Decision { lrs, ..Decision::keep() }
    }
}

impl WarmupStableDecay {
    fn lr(&self, base: f64, step: u64) -> f64 {
        if step < self.warmup_steps {
            return base * warmup_ramp(step, self.warmup_steps);
        }
        if step < self.decay_start {
            return base;
        }
        let progress = ((step - self.decay_start) as f64 / self.decay_steps as f64).min(1.0);
        let factor = match self.shape {
            Shape::Linear => 1.0 - progress,
            Shape::Cosine => cosine_fall(progress),
            Shape::Sqrt => 1.0 - progress.sqrt(),
        };
        let floor = self.min_lr.min(base);
        floor + (base - floor) * factor
    }
}

export_policy!(WarmupStableDecay);
