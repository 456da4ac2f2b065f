//! `layerwise`: a learning-rate multiplier per group on top of the schedule, e.g. the
//! pretrained towers at a tenth of the heads' rate with `--policy cosine_warmup --policy
//! layerwise:vision=0.1,text=0.1`.
//!
//! `lr_g = rate_g × multiplier_g`, where `rate_g` is what the policy owning the learning
//! rates set (the base rate if none does), times any other policy's multiplier for `g`.
//! A name may be a group or a tower: `vision=0.1` scales every `vision.N` group of a run
//! with `--group-by layer`; a group's own name wins over its tower's.
//!
//! Arguments: `<group or tower>=<multiplier>` for each to scale (default 1, at least 0).
//! Owns: learning-rate multipliers (which any number of policies may set).

use trainer_policy_sdk::{Args, Decision, Knobs, Observation, Policy, RunSpec, export_policy, groups};

struct Layerwise {
    multipliers: Vec<f64>,
}

/// Arguments of the schedule `layerwise` had before multipliers composed.
const RETIRED: [&str; 3] = ["schedule", "warmup_steps", "min_lr"];

impl Policy for Layerwise {
    fn init(spec: RunSpec) -> Result<Self, String> {
        if let Some((name, _)) = spec.args.iter().find(|(name, _)| RETIRED.contains(&name.as_str())) {
            return Err(format!(
                "argument `{name}`: layerwise sets only multipliers; give the schedule its own policy, e.g. \
                 --policy cosine_warmup --policy layerwise:vision=0.1"
            ));
        }
        let known = groups::names(&spec);
        let args = Args::new(&spec.args, &known)?;
        let mut multipliers = vec![1.0; spec.groups.len()];
        // Towers first, then groups, so that a group's own name wins over its tower's.
        let (group_names, tower_names): (Vec<&str>, Vec<&str>) =
            known.iter().partition(|name| spec.groups.iter().any(|group| group.name == **name));
        for name in tower_names.into_iter().chain(group_names) {
            let Some(multiplier) = args.f64_opt(name)? else { continue };
            if multiplier < 0.0 {
                return Err(format!("argument `{name}`: multiplier must be >= 0, got {multiplier}"));
            }
            for group in groups::named(&spec, name, name)? {
                multipliers[group] = multiplier;
            }
        }
        Ok(Self { multipliers })
    }

    fn knobs(&self) -> Knobs {
        Knobs::LR_MULTIPLIERS
    }

    fn decide(&mut self, _observation: Observation) -> Decision {
        Decision { lr_multipliers: self.multipliers.iter().map(|&m| Some(m)).collect(), ..Decision::keep() }
    }
}

export_policy!(Layerwise);
