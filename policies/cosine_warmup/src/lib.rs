//! `cosine_warmup`: linear warmup, then cosine decay to a floor, for every group.
//!
//! For a group with base learning rate `base`, with `w = warmup_steps`, `T = total_steps`
//! and `floor = min(min_lr, base)`:
//! - during warmup (`step < w`): `lr = base * (step + 1) / w`
//! - after: `lr = floor + (base - floor) * (1 + cos(pi * p)) / 2`, `p = min(1, (step - w) / max(1, T - w))`
//!
//! A run resumed at step `r` with a new length `T'` (`--resume RUN --steps T'`) keeps `w`
//! (as resolved when the run started) and re-plans the decay: if `r < w` it ends at `T'`
//! instead of `T`; otherwise, with `a` the rate at `r` under the earlier plan, from `r` on
//! `lr = floor + (a - floor) * (1 + cos(pi * p)) / 2`, `p = min(1, (step - r) / max(1, T' - r))`.
//! A finished run extended this way stays at the floor.
//!
//! `warmup_start=zero` starts the warmup at 0 instead: `lr = base * step / w`, which is
//! transformers' `get_cosine_schedule_with_warmup` exactly (with `min_lr` 0); after the warmup
//! the two agree either way.
//!
//! Arguments: `warmup_steps` (default: 5% of the run), `min_lr` (absolute floor, default 0),
//! `warmup_start` (`one_step` or `zero`, default `one_step`). Owns: learning rates.

use trainer_policy_sdk::plan::CosineSchedule;
use trainer_policy_sdk::schedules::WarmupStart;
use trainer_policy_sdk::state::{StateReader, StateWriter};
use trainer_policy_sdk::{Args, Decision, Knobs, Observation, Policy, RunSpec, export_policy};

struct CosineWarmup {
    schedule: CosineSchedule,
    groups: usize,
}

impl Policy for CosineWarmup {
    fn init(spec: RunSpec) -> Result<Self, String> {
        let args = Args::new(&spec.args, &["warmup_steps", "min_lr", "warmup_start"])?;
        let min_lr = args.f64_or("min_lr", 0.0)?;
        if min_lr < 0.0 {
            return Err(format!("argument `min_lr`: must be >= 0, got {min_lr}"));
        }
        let warmup_steps = args.u64_or("warmup_steps", spec.total_steps / 20)?;
        let start = WarmupStart::from_args(&args)?;
        let base_lrs: Vec<f64> = spec.groups.iter().map(|group| group.base_lr).collect();
        Ok(Self {
            groups: base_lrs.len(),
            schedule: CosineSchedule::new(base_lrs, warmup_steps, min_lr, spec.total_steps).starting(start),
        })
    }

    fn knobs(&self) -> Knobs {
        Knobs::LEARNING_RATES
    }

    fn decide(&mut self, observation: Observation) -> Decision {
        let step = observation.step;
        self.schedule.begin_step(step);
        let lrs = (0..self.groups).map(|group| Some(self.schedule.rate(group, step))).collect();
        Decision { lrs, ..Decision::keep() }
    }

    fn save_state(&self) -> Vec<u8> {
        self.schedule.save(StateWriter::new()).finish()
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), String> {
        let mut reader = StateReader::new(state);
        self.schedule.load(&mut reader)?;
        reader.finish()
    }
}

export_policy!(CosineWarmup);
