//! `staged_unfreeze`: trains the heads first, with the named groups frozen, then unfreezes
//! each named group at its step; its learning rate ramps linearly from 0 to the schedule's
//! value over `ramp_steps`, so the pretrained weights are not hit by the full rate at once.
//!
//! For a group unfrozen at step `s`: frozen and `lr = 0` before `s`; from `s` on,
//! `lr = schedule(step, base) * min(1, (step - s + 1) / ramp_steps)`. Other groups follow
//! the schedule. The schedule is `constant` (the base rate) or `cosine` (as `cosine_warmup`,
//! with `warmup_steps` and `min_lr`). A group is never frozen again once unfrozen.
//!
//! A run resumed with a new length keeps the unfreeze steps and `ramp_steps` (as resolved
//! when the run started), and re-plans the cosine as `cosine_warmup` does.
//!
//! Arguments: `unfreeze=<group>@<step>`, repeated (at least one); `ramp_steps` (default 5%
//! of the run, at least 1); `schedule` (`constant`/`cosine`, default `constant`);
//! `warmup_steps` (default 0); `min_lr` (default 0). Owns: learning rates, freezing.

use trainer_policy_sdk::plan::CosineSchedule;
use trainer_policy_sdk::schedules::warmup_ramp;
use trainer_policy_sdk::state::{StateReader, StateWriter};
use trainer_policy_sdk::{Args, Decision, Knobs, Observation, Policy, RunSpec, export_policy};

struct StagedUnfreeze {
    base_lrs: Vec<f64>,
    /// Step at which each group is unfrozen; `None` for groups that train from the start.
    unfreeze_at: Vec<Option<u64>>,
    ramp_steps: u64,
    /// `None`: the constant schedule.
    cosine: Option<CosineSchedule>,
}

impl Policy for StagedUnfreeze {
    fn init(spec: RunSpec) -> Result<Self, String> {
        let args = Args::new(&spec.args, &["unfreeze", "ramp_steps", "schedule", "warmup_steps", "min_lr"])?;
        let mut unfreeze_at = vec![None; spec.groups.len()];
        for entry in args.all("unfreeze") {
            let (group, step) = entry
                .split_once('@')
                .ok_or_else(|| format!("argument `unfreeze`: expected <group>@<step>, got `{entry}`"))?;
            let index = spec.groups.iter().position(|g| g.name == group).ok_or_else(|| {
                let names: Vec<&str> = spec.groups.iter().map(|g| g.name.as_str()).collect();
                format!("argument `unfreeze`: no group `{group}` (groups: {})", names.join(", "))
            })?;
            let step =
                step.parse::<u64>().map_err(|_| format!("argument `unfreeze`: `{step}` is not a step number"))?;
            unfreeze_at[index] = Some(step);
        }
        if unfreeze_at.iter().all(Option::is_none) {
            return Err("argument `unfreeze`: name at least one group, e.g. unfreeze=vision@500".into());
        }
        let base_lrs: Vec<f64> = spec.groups.iter().map(|group| group.base_lr).collect();
        let ramp_steps = args.u64_or("ramp_steps", spec.total_steps / 20)?.max(1);
        let warmup_steps = args.u64_or("warmup_steps", 0)?;
        let min_lr = args.f64_or("min_lr", 0.0)?;
        let cosine = (args.choice("schedule", &["constant", "cosine"], "constant")? == "cosine")
            .then(|| CosineSchedule::new(base_lrs.clone(), warmup_steps, min_lr, spec.total_steps));
        Ok(Self { base_lrs, unfreeze_at, ramp_steps, cosine })
    }

    fn knobs(&self) -> Knobs {
        Knobs::LEARNING_RATES | Knobs::FREEZING
    }

    fn decide(&mut self, observation: Observation) -> Decision {
        let step = observation.step;
        let mut lrs = Vec::with_capacity(self.base_lrs.len());
        let mut freeze = Vec::with_capacity(self.base_lrs.len());
        if let Some(schedule) = &mut self.cosine {
            schedule.begin_step(step);
        }
        for (group, (&base, &unfreeze_at)) in self.base_lrs.iter().zip(&self.unfreeze_at).enumerate() {
            let scheduled = self.cosine.as_ref().map_or(base, |schedule| schedule.rate(group, step));
            let (lr, change) = match unfreeze_at {
                None => (scheduled, None),
                Some(at) if step < at => (0.0, (step == 0).then_some(true)),
                Some(at) => (scheduled * warmup_ramp(step - at, self.ramp_steps), (step == at).then_some(false)),
            };
            lrs.push(Some(lr));
            freeze.push(change);
        }
        Decision { lrs, freeze, ..Decision::keep() }
    }

    fn save_state(&self) -> Vec<u8> {
        let writer = StateWriter::new().u64(self.ramp_steps);
        match &self.cosine {
            Some(schedule) => schedule.save(writer),
            None => writer,
        }
        .finish()
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), String> {
        let mut reader = StateReader::new(state);
        self.ramp_steps = reader.u64("ramp steps")?;
        if let Some(schedule) = &mut self.cosine {
            schedule.load(&mut reader)?;
        }
        reader.finish()
    }
}

export_policy!(StagedUnfreeze);
