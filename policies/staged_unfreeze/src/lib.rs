//! `staged_unfreeze`: trains with the named groups frozen, then unfreezes each at its step;
//! its learning rate ramps linearly from 0 to the full rate over `ramp_steps`, so the
//! pretrained weights are not hit by the full rate at once. The ramp is a multiplier on the
//! rate the schedule's policy sets: `--policy cosine_warmup --policy
//! staged_unfreeze:unfreeze=vision@500` ramps the image tower into the cosine.
//!
//! For a group unfrozen at step `s`: frozen, with multiplier 0, before `s`; from `s` on,
//! multiplier `min(1, (step - s + 1) / ramp_steps)`. Other groups: multiplier 1. A group is
//! never frozen again once unfrozen. A name may be a group or a tower (`vision` unfreezes
//! every `vision.N` group of a run with `--group-by layer`).
//!
//! A run resumed with a new length keeps the unfreeze steps and `ramp_steps` as resolved
//! when the run started.
//!
//! Arguments: `unfreeze=<group or tower>@<step>`, repeated (at least one); `ramp_steps`
//! (default 5% of the run, at least 1). Owns: freezing, learning-rate multipliers.

use trainer_policy_sdk::schedules::warmup_ramp;
use trainer_policy_sdk::state::{StateReader, StateWriter};
use trainer_policy_sdk::{Args, Decision, Knobs, Observation, Policy, RunSpec, export_policy, groups};

struct StagedUnfreeze {
    /// Step at which each group is unfrozen; `None` for groups that train from the start.
    unfreeze_at: Vec<Option<u64>>,
    ramp_steps: u64,
}

/// Arguments of the schedule `staged_unfreeze` had before multipliers composed.
const RETIRED: [&str; 3] = ["schedule", "warmup_steps", "min_lr"];

impl Policy for StagedUnfreeze {
    fn init(spec: RunSpec) -> Result<Self, String> {
        if let Some((name, _)) = spec.args.iter().find(|(name, _)| RETIRED.contains(&name.as_str())) {
            return Err(format!(
                "argument `{name}`: staged_unfreeze ramps a multiplier on the rate; give the schedule its own \
                 policy, e.g. --policy cosine_warmup --policy staged_unfreeze:unfreeze=vision@500"
            ));
        }
        let args = Args::new(&spec.args, &["unfreeze", "ramp_steps"])?;
        let mut unfreeze_at = vec![None; spec.groups.len()];
        for entry in args.all("unfreeze") {
            let (name, step) = entry
                .split_once('@')
                .ok_or_else(|| format!("argument `unfreeze`: expected <group>@<step>, got `{entry}`"))?;
            let step =
                step.parse::<u64>().map_err(|_| format!("argument `unfreeze`: `{step}` is not a step number"))?;
            for group in groups::named(&spec, "unfreeze", name)? {
                unfreeze_at[group] = Some(step);
            }
        }
        if unfreeze_at.iter().all(Option::is_none) {
            return Err("argument `unfreeze`: name at least one group, e.g. unfreeze=vision@500".into());
        }
        let ramp_steps = args.u64_or("ramp_steps", spec.total_steps / 20)?.max(1);
        Ok(Self { unfreeze_at, ramp_steps })
    }

    fn knobs(&self) -> Knobs {
        Knobs::LR_MULTIPLIERS | Knobs::FREEZING
    }

    fn decide(&mut self, observation: Observation) -> Decision {
        let step = observation.step;
        let (lr_multipliers, freeze) = self
            .unfreeze_at
            .iter()
            .map(|&unfreeze_at| match unfreeze_at {
                None => (Some(1.0), None),
                Some(at) if step < at => (Some(0.0), (step == 0).then_some(true)),
                Some(at) => (Some(warmup_ramp(step - at, self.ramp_steps)), (step == at).then_some(false)),
            })
            .unzip();
        Decision { lr_multipliers, freeze, ..Decision::keep() }
    }

    fn save_state(&self) -> Vec<u8> {
        StateWriter::new().u64(self.ramp_steps).finish()
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), String> {
        let mut reader = StateReader::new(state);
        self.ramp_steps = reader.u64("ramp steps")?;
        reader.finish()
    }
}

export_policy!(StagedUnfreeze);
