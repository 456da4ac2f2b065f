//! `one_cycle`: the one-cycle schedule of PyTorch's OneCycleLR (cosine annealing, two
//! phases), with each group's base learning rate as the peak.
//!
//! `initial = base / div_factor`, `min = initial / final_div_factor`, `e1 = pct_start * T - 1`,
//! `e2 = T - 1`; with `anneal(a, b, p) = b + (a - b) * (1 + cos(pi p)) / 2`:
//! - `step <= e1`: `lr = anneal(initial, base, step / e1)`
//! - after: `lr = anneal(base, min, (step - e1) / (e2 - e1))`
//!
//! A run resumed at step `r` with a new length `T'` keeps `e1` (as resolved when the run
//! started) and ends the second phase at `e2' = T' - 1`: if `r <= e1` nothing else changes;
//! otherwise, with `a` the rate at `r` under the earlier plan, from `r` on
//! `lr = anneal(a, min, (step - r) / max(1, e2' - r))`.
//!
//! Arguments: `pct_start` (default 0.3), `div_factor` (25), `final_div_factor` (1e4).
//! Owns: learning rates.

use trainer_policy_sdk::plan::{PlannedLength, Restart};
use trainer_policy_sdk::schedules::cosine_fall;
use trainer_policy_sdk::state::{StateReader, StateWriter};
use trainer_policy_sdk::{Args, Decision, Knobs, Observation, Policy, RunSpec, export_policy};

struct OneCycle {
    base_lrs: Vec<f64>,
    div_factor: f64,
    final_div_factor: f64,
    phase1_end: f64,
    length: PlannedLength,
    restart: Option<Restart>,
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
            length: PlannedLength::new(spec.total_steps),
            restart: None,
        })
    }

    fn knobs(&self) -> Knobs {
        Knobs::LEARNING_RATES
    }

    fn decide(&mut self, observation: Observation) -> Decision {
        let step = observation.step;
        if self.length.pending().is_some() {
            let values = (0..self.base_lrs.len()).map(|group| self.rate(group, step)).collect();
            self.length.take_change();
            if step as f64 > self.phase1_end {
                self.restart = Some(Restart { step, values });
            }
        }
        let lrs = (0..self.base_lrs.len()).map(|group| Some(self.rate(group, step))).collect();
        Decision { lrs, ..Decision::keep() }
    }

    fn save_state(&self) -> Vec<u8> {
        let writer = self.length.save(StateWriter::new().f64(self.phase1_end));
        Restart::save(&self.restart, writer).finish()
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), String> {
        let mut reader = StateReader::new(state);
        self.phase1_end = reader.f64("phase 1 end")?;
        self.length.load(&mut reader)?;
        self.restart = Restart::load(&mut reader, self.base_lrs.len())?;
        reader.finish()
    }
}

impl OneCycle {
    fn rate(&self, group: usize, step: u64) -> f64 {
        let peak = self.base_lrs[group];
        let initial = peak / self.div_factor;
        let min = initial / self.final_div_factor;
        let phase2_end = self.length.total() as f64 - 1.0;
        let step = step as f64;
        if step <= self.phase1_end && self.phase1_end > 0.0 {
            return anneal(initial, peak, step / self.phase1_end);
        }
        let (start, from) = Restart::decay_start(&self.restart, group, (0, peak));
        let start = if self.restart.is_some() { start as f64 } else { self.phase1_end.max(0.0) };
        let span = (phase2_end - start).max(1.0);
        anneal(from, min, (step - start) / span)
    }
}

export_policy!(OneCycle);
