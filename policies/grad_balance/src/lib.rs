//! `grad_balance`: loss weights that move each term's share of the gradient toward a
//! target share, as GradNorm balances tasks by their gradients rather than by their loss
//! values (a loss a hundred times larger need not pull a hundred times harder).
//!
//! Every `every` steps it asks the trainer to measure the per-loss gradients; from each new
//! measurement (each weighted term's gradient norm `G_i` over the parameters all terms
//! share, and its share `s_i = G_i / sum G`) it updates `w_i <- w_i * (t_i / s_i)^rate`,
//! then rescales so that the weights sum to their count. `G_i` is proportional to `w_i`, so
//! with `rate = 1` one update gives the target shares if the gradients stay as measured;
//! a smaller `rate` moves part of the way, smoothing the noise of one batch. A term with
//! no gradient (`s_i = 0`) or a measurement that is not finite changes nothing. Weights
//! start at 1 and stay within `[1e-4, 1e4]` before the rescaling.
//!
//! Arguments: `<loss>=<target share>` for each loss to aim elsewhere than an equal share
//! (normalised to sum 1; default equal); `every` (default 10, at least 1); `rate` (default
//! 0.5, in (0, 1]). Owns: loss weights.

use trainer_policy_sdk::state::{StateReader, StateWriter};
use trainer_policy_sdk::{Args, Decision, Knobs, Observation, Policy, RunSpec, export_policy};

struct GradBalance {
    targets: Vec<f64>,
    every: u64,
    rate: f64,
    // State.
    weights: Vec<f64>,
    /// The step of the last measurement used; `u64::MAX` before the first.
    measured_at: u64,
}

const WEIGHT_RANGE: (f64, f64) = (1e-4, 1e4);

impl Policy for GradBalance {
    fn init(spec: RunSpec) -> Result<Self, String> {
        let mut known: Vec<&str> = spec.losses.iter().map(String::as_str).collect();
        known.extend(["every", "rate"]);
        let args = Args::new(&spec.args, &known)?;
        let count = spec.losses.len();
        let mut targets = Vec::with_capacity(count);
        for loss in &spec.losses {
            let target = args.f64_or(loss, 1.0 / count as f64)?;
            if target <= 0.0 {
                return Err(format!("argument `{loss}`: target share must be > 0, got {target}"));
            }
            targets.push(target);
        }
        let sum: f64 = targets.iter().sum();
        targets.iter_mut().for_each(|target| *target /= sum);
        let every = args.u64_or("every", 10)?;
        if every == 0 {
            return Err("argument `every`: must be at least 1".into());
        }
        let rate = args.f64_or("rate", 0.5)?;
        if !(rate > 0.0 && rate <= 1.0) {
            return Err(format!("argument `rate`: must be in (0, 1], got {rate}"));
        }
        Ok(Self { targets, every, rate, weights: vec![1.0; count], measured_at: u64::MAX })
    }

    fn knobs(&self) -> Knobs {
        Knobs::LOSS_WEIGHTS
    }

    fn decide(&mut self, observation: Observation) -> Decision {
        if let Some(measured) = &observation.loss_gradients
            && measured.step != self.measured_at
            && measured.shares.len() == self.weights.len()
            && measured.norms.iter().all(|norm| norm.is_finite())
        {
            self.measured_at = measured.step;
            let (low, high) = WEIGHT_RANGE;
            for ((weight, target), share) in self.weights.iter_mut().zip(&self.targets).zip(&measured.shares) {
                if *share > 0.0 {
                    *weight = (*weight * (target / share).powf(self.rate)).clamp(low, high);
                }
            }
            let scale = self.weights.len() as f64 / self.weights.iter().sum::<f64>();
            self.weights.iter_mut().for_each(|weight| *weight *= scale);
        }
        Decision {
            loss_weights: self.weights.iter().map(|&weight| Some(weight)).collect(),
            measure_loss_gradients: observation.step.is_multiple_of(self.every),
            ..Decision::keep()
        }
    }

    fn save_state(&self) -> Vec<u8> {
        StateWriter::new().f64s(&self.weights).u64(self.measured_at).finish()
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), String> {
        let mut reader = StateReader::new(state);
        self.weights = reader.f64s("weights", self.weights.len())?;
        self.measured_at = reader.u64("last measured step")?;
        reader.finish()
    }
}

export_policy!(GradBalance);
