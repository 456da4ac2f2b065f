//! `step_decay`: multiplies every group's learning rate by `gamma` every `step_size` steps
//! (PyTorch's StepLR), or at each listed milestone (MultiStepLR).
//!
//! `lr = base * gamma^k`, with `k = step / step_size` (integer division), or `k` the number of
//! milestones `<= step`.
//!
//! A run resumed with a new length keeps `step_size` as resolved when the run started, and
//! the milestones.
//!
//! Arguments: `gamma` (default 0.1); either `step_size` (default a third of the run) or
//! `milestone`, repeated (`milestone=300,milestone=600`). Owns: learning rates.

use trainer_policy_sdk::state::{StateReader, StateWriter};
use trainer_policy_sdk::{Args, Decision, Knobs, Observation, Policy, RunSpec, export_policy};

enum Decay {
    Every(u64),
    Milestones(Vec<u64>),
}

struct StepDecay {
    base_lrs: Vec<f64>,
    gamma: f64,
    decay: Decay,
}

impl Policy for StepDecay {
    fn init(spec: RunSpec) -> Result<Self, String> {
        let args = Args::new(&spec.args, &["gamma", "step_size", "milestone"])?;
        let gamma = args.f64_or("gamma", 0.1)?;
        if gamma < 0.0 {
            return Err(format!("argument `gamma`: must be >= 0, got {gamma}"));
        }
        let milestones = args
            .all("milestone")
            .iter()
            .map(|text| {
                text.parse::<u64>().map_err(|_| format!("argument `milestone`: expected a step number, got `{text}`"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let decay = if milestones.is_empty() {
            let step_size = args.u64_or("step_size", (spec.total_steps / 3).max(1))?;
            if step_size == 0 {
                return Err("argument `step_size`: must be at least 1".into());
            }
            Decay::Every(step_size)
        } else if args.all("step_size").is_empty() {
            Decay::Milestones(milestones)
        } else {
            return Err("give either `step_size` or `milestone`, not both".into());
        };
        Ok(Self { base_lrs: spec.groups.iter().map(|group| group.base_lr).collect(), gamma, decay })
    }

    fn knobs(&self) -> Knobs {
        Knobs::LEARNING_RATES
    }

    fn decide(&mut self, observation: Observation) -> Decision {
        let step = observation.step;
        let decays = match &self.decay {
            Decay::Every(size) => step / size,
            Decay::Milestones(milestones) => milestones.iter().filter(|&&m| m <= step).count() as u64,
        };
        let factor = self.gamma.powi(decays.min(i32::MAX as u64) as i32);
        Decision { lrs: self.base_lrs.iter().map(|base| Some(base * factor)).collect(), ..Decision::keep() }
    }

    // `step_size` defaults to a third of the run: kept as resolved when the run started.
    fn save_state(&self) -> Vec<u8> {
        match self.decay {
            Decay::Every(size) => StateWriter::new().u64(size).finish(),
            Decay::Milestones(_) => Vec::new(),
        }
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), String> {
        let mut reader = StateReader::new(state);
        if let Decay::Every(size) = &mut self.decay {
            *size = reader.u64("step size")?;
        }
        reader.finish()
    }
}

export_policy!(StepDecay);
