//! `warmup_stable_decay` (WSD): linear warmup, a long stable phase at the base rate, then a
//! decay to a floor over the last `decay_steps`.
//!
//! With `w = warmup_steps`, `d = decay_steps`, `T = total_steps`, `floor = min(min_lr, base)`:
//! - `step < w`: `lr = base * (step + 1) / w`
//! - `step < T - d`: `lr = base`
//! - after: `lr = floor + (base - floor) * f(p)`, `p = (step - (T - d)) / d` capped at 1, with
//!   `f(p) = 1 - p` (`shape=linear`), `(1 + cos(pi p)) / 2` (`cosine`) or `1 - sqrt(p)` (`sqrt`)
//!
//! A run resumed at step `r` with a new length `T'` keeps `w` and `d` (as resolved when the
//! run started). If the decay had not begun at `r` and `T' - d >= r`, it begins at `T' - d`;
//! otherwise, with `a` the rate at `r` under the earlier plan, from `r` on
//! `lr = floor + (a - floor) * f(p)`, `p = min(1, (step - r) / max(1, T' - r))`.
//!
//! `warmup_start=zero` starts the warmup at 0 instead (`lr = base * step / w`), as
//! transformers' `get_wsd_schedule` does.
//!
//! Arguments: `warmup_steps` (default 5% of the run), `decay_steps` (default 20%), `min_lr`
//! (default 0), `shape` (`linear`, `cosine`, `sqrt`; default `linear`), `warmup_start`
//! (`one_step` or `zero`, default `one_step`). Owns: learning rates.

use trainer_policy_sdk::plan::{PlannedLength, Restart};
use trainer_policy_sdk::schedules::{WarmupStart, cosine_fall};
use trainer_policy_sdk::state::{StateReader, StateWriter};
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
    warmup_start: WarmupStart,
    decay_steps: u64,
    min_lr: f64,
    shape: Shape,
    length: PlannedLength,
    restart: Option<Restart>,
}

impl Policy for WarmupStableDecay {
    fn init(spec: RunSpec) -> Result<Self, String> {
        let args = Args::new(&spec.args, &["warmup_steps", "decay_steps", "min_lr", "shape", "warmup_start"])?;
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
            warmup_start: WarmupStart::from_args(&args)?,
            decay_steps,
            min_lr,
            shape,
            length: PlannedLength::new(total),
            restart: None,
        })
    }

    fn knobs(&self) -> Knobs {
        Knobs::LEARNING_RATES
    }

    fn decide(&mut self, observation: Observation) -> Decision {
        let step = observation.step;
        if self.length.pending().is_some() {
            let values: Vec<f64> = (0..self.base_lrs.len()).map(|group| self.lr(group, step)).collect();
            let was_decaying = step >= self.decay_start();
            self.length.take_change();
            if was_decaying || step >= self.decay_start() {
                self.restart = Some(Restart { step, values });
            }
        }
        let lrs = (0..self.base_lrs.len()).map(|group| Some(self.lr(group, step))).collect();
        Decision { lrs, ..Decision::keep() }
    }

    fn save_state(&self) -> Vec<u8> {
        let writer = self.length.save(StateWriter::new().u64(self.warmup_steps).u64(self.decay_steps));
        Restart::save(&self.restart, writer).finish()
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), String> {
        let mut reader = StateReader::new(state);
        self.warmup_steps = reader.u64("warmup steps")?;
        self.decay_steps = reader.u64("decay steps")?;
        self.length.load(&mut reader)?;
        self.restart = Restart::load(&mut reader, self.base_lrs.len())?;
        reader.finish()
    }
}

impl WarmupStableDecay {
    /// The first step of the decay as planned (before any restart).
    fn decay_start(&self) -> u64 {
        self.length.total().saturating_sub(self.decay_steps)
    }

    fn lr(&self, group: usize, step: u64) -> f64 {
        let base = self.base_lrs[group];
        if step < self.warmup_steps {
            return base * self.warmup_start.ramp(step, self.warmup_steps);
        }
        let (start, from) = Restart::decay_start(&self.restart, group, (self.decay_start(), base));
        if step < start {
            return base;
        }
        let span = match self.restart {
            Some(_) => self.length.total().saturating_sub(start).max(1),
            None => self.decay_steps,
        };
        let progress = ((step - start) as f64 / span as f64).min(1.0);
        let factor = match self.shape {
            Shape::Linear => 1.0 - progress,
            Shape::Cosine => cosine_fall(progress),
            Shape::Sqrt => 1.0 - progress.sqrt(),
        };
        let floor = self.min_lr.min(base);
        floor + (from - floor) * factor
    }
}

export_policy!(WarmupStableDecay);
