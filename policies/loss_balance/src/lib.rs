//! `loss_balance`: weights for runs with several losses whose magnitudes differ (a tag loss
//! in the hundreds next to a distillation loss below one).
//!
//! - `mode=fixed`: `weight_i = w_i`, the given weights.
//! - `mode=adaptive`: each loss is scaled toward `target` from a running average of its
//!   magnitude: `m_i <- beta * m_i + (1 - beta) * |loss_i|` (bias-corrected as in Adam:
//!   `m_i / (1 - beta^n_i)` after `n_i` finite values), and
//!   `weight_i = min(max_weight, w_i * target / corrected m_i)`. Non-finite values are
//!   skipped; before a loss has a value its weight is `w_i`.
//!
//! Arguments: `mode` (`fixed`/`adaptive`, default `adaptive`), one `<loss>=<weight>` per loss
//! (`w_i`, default 1), `beta` (0.99), `target` (1.0), `max_weight` (1e6). Owns: loss weights.

use trainer_policy_sdk::state::{StateReader, StateWriter};
use trainer_policy_sdk::{Args, Decision, Knobs, Observation, Policy, RunSpec, export_policy};

struct LossBalance {
    base_weights: Vec<f64>,
    adaptive: bool,
    beta: f64,
    target: f64,
    max_weight: f64,
    // State.
    averages: Vec<f64>,
    counts: Vec<u64>,
}

impl Policy for LossBalance {
    fn init(spec: RunSpec) -> Result<Self, String> {
        let mut known: Vec<&str> = spec.losses.iter().map(String::as_str).collect();
        known.extend(["mode", "beta", "target", "max_weight"]);
        let args = Args::new(&spec.args, &known)?;
        let mut base_weights = Vec::with_capacity(spec.losses.len());
        for loss in &spec.losses {
            let weight = args.f64_or(loss, 1.0)?;
            if weight < 0.0 {
                return Err(format!("argument `{loss}`: weight must be >= 0, got {weight}"));
            }
            base_weights.push(weight);
        }
        let beta = args.f64_or("beta", 0.99)?;
        if !(0.0..1.0).contains(&beta) {
            return Err(format!("argument `beta`: must be within [0, 1), got {beta}"));
        }
        let target = args.f64_or("target", 1.0)?;
        let max_weight = args.f64_or("max_weight", 1e6)?;
        if target <= 0.0 || max_weight <= 0.0 {
            return Err("arguments `target` and `max_weight` must be > 0".into());
        }
        let count = spec.losses.len();
        Ok(Self {
            base_weights,
            adaptive: args.choice("mode", &["fixed", "adaptive"], "adaptive")? == "adaptive",
            beta,
            target,
            max_weight,
            averages: vec![0.0; count],
            counts: vec![0; count],
        })
    }

    fn knobs(&self) -> Knobs {
        Knobs::LOSS_WEIGHTS
    }

    fn decide(&mut self, observation: Observation) -> Decision {
        if !self.adaptive {
            return Decision {
                loss_weights: self.base_weights.iter().copied().map(Some).collect(),
                ..Decision::keep()
            };
        }
        for ((average, count), loss) in self.averages.iter_mut().zip(&mut self.counts).zip(&observation.losses) {
            if loss.is_finite() {
                *average = self.beta * *average + (1.0 - self.beta) * loss.abs();
                *count += 1;
            }
        }
        let weights = self
            .base_weights
            .iter()
            .zip(self.averages.iter().zip(&self.counts))
            .map(|(&base, (&average, &count))| {
                if count == 0 {
                    return Some(base);
                }
                let magnitude = average / (1.0 - self.beta.powi(count.min(i32::MAX as u64) as i32));
                let weight = if magnitude > 0.0 { base * self.target / magnitude } else { self.max_weight };
                Some(weight.min(self.max_weight))
            })
            .collect();
        Decision { loss_weights: weights, ..Decision::keep() }
    }

    fn save_state(&self) -> Vec<u8> {
        let counts: Vec<f64> = self.counts.iter().map(|&c| c as f64).collect();
        StateWriter::new().f64s(&self.averages).f64s(&counts).finish()
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), String> {
        let mut reader = StateReader::new(state);
        self.averages = reader.f64s("averages", self.averages.len())?;
        self.counts = reader.f64s("counts", self.counts.len())?.into_iter().map(|c| c as u64).collect();
        reader.finish()
    }
}

export_policy!(LossBalance);
