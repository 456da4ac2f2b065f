//! `layerwise`: per-group learning-rate multipliers on top of a schedule, e.g. the
//! pretrained towers at 0.1x the heads: `layerwise.wasm:vision=0.1,text=0.1`.
//!
//! `lr_g = multiplier_g * schedule(step, base_g)`, where the schedule is `cosine` (linear
//! warmup over `warmup_steps`, cosine decay to `min_lr`, as `cosine_warmup`) or `constant`.
//!
//! A run resumed with a new length re-plans the cosine as `cosine_warmup` does.
//!
//! Arguments: one `<group>=<multiplier>` per group to scale (default 1), `schedule`
//! (`cosine`/`constant`, default `cosine`), `warmup_steps` (default 5% of the run), `min_lr`
//! (default 0). Owns: learning rates.

use trainer_policy_sdk::plan::CosineSchedule;
use trainer_policy_sdk::state::{StateReader, StateWriter};
use trainer_policy_sdk::{Args, Decision, Knobs, Observation, Policy, RunSpec, export_policy};

struct Layerwise {
    base_lrs: Vec<f64>,
    multipliers: Vec<f64>,
    /// `None`: the constant schedule.
    cosine: Option<CosineSchedule>,
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
        let base_lrs: Vec<f64> = spec.groups.iter().map(|group| group.base_lr).collect();
        let warmup_steps = args.u64_or("warmup_steps", spec.total_steps / 20)?;
        let min_lr = args.f64_or("min_lr", 0.0)?;
        let cosine = (args.choice("schedule", &["cosine", "constant"], "cosine")? == "cosine")
            .then(|| CosineSchedule::new(base_lrs.clone(), warmup_steps, min_lr, spec.total_steps));
        Ok(Self { base_lrs, multipliers, cosine })
    }

    fn knobs(&self) -> Knobs {
        Knobs::LEARNING_RATES
    }

    fn decide(&mut self, observation: Observation) -> Decision {
        let step = observation.step;
        if let Some(schedule) = &mut self.cosine {
            schedule.begin_step(step);
        }
        let lrs = self
            .base_lrs
            .iter()
            .zip(&self.multipliers)
            .enumerate()
            .map(|(group, (&base, &multiplier))| {
                let scheduled = self.cosine.as_ref().map_or(base, |schedule| schedule.rate(group, step));
                Some(multiplier * scheduled)
            })
            .collect();
        Decision { lrs, ..Decision::keep() }
    }

    fn save_state(&self) -> Vec<u8> {
        self.cosine.as_ref().map_or_else(Vec::new, |schedule| schedule.save(StateWriter::new()).finish())
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), String> {
        let mut reader = StateReader::new(state);
        if let Some(schedule) = &mut self.cosine {
            schedule.load(&mut reader)?;
        }
        reader.finish()
    }
}

export_policy!(Layerwise);
