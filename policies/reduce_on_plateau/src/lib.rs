//! `reduce_on_plateau`: PyTorch's ReduceLROnPlateau. Each check compares the monitored value
//! with the best so far; after more than `patience` checks without improvement every group's
//! learning rate is multiplied by `factor` (not below `min_lr`), then `cooldown` checks pass
//! before bad checks count again.
//!
//! A check is each evaluation, when `metric` names an evaluation metric, or the mean training
//! loss over each `window` steps when `metric=loss`. Improvement is relative: below
//! `best * (1 - threshold)` in `min` mode, above `best * (1 + threshold)` in `max` mode.
//!
//! Arguments: `metric` (default `loss`), `mode` (`min`/`max`; default `max` for evaluation
//! metrics not ending in `loss`, else `min`), `factor` (0.1), `patience` (10), `threshold`
//! (1e-4), `cooldown` (0), `min_lr` (0), `window` (steps per epoch). Owns: learning rates.

use trainer_policy_sdk::metrics::{default_mode, metric_index};
use trainer_policy_sdk::state::{StateReader, StateWriter};
use trainer_policy_sdk::{Args, Decision, Knobs, Observation, Policy, RunSpec, export_policy};

enum Monitor {
    TrainingLoss { window: u64 },
    Metric { index: usize },
}

struct ReduceOnPlateau {
    monitor: Monitor,
    maximize: bool,
    factor: f64,
    patience: u64,
    threshold: f64,
    cooldown: u64,
    min_lr: f64,
    // State.
    lrs: Vec<f64>,
    best: f64,
    bad_checks: u64,
    cooldown_left: u64,
    window_sum: f64,
    window_count: u64,
}

impl Policy for ReduceOnPlateau {
    fn init(spec: RunSpec) -> Result<Self, String> {
        let args = Args::new(
            &spec.args,
            &["metric", "mode", "factor", "patience", "threshold", "cooldown", "min_lr", "window"],
        )?;
        let metric = args.str_or("metric", "loss");
        let monitor = if metric == "loss" {
            let window = args.u64_or("window", spec.steps_per_epoch.max(1))?.max(1);
            Monitor::TrainingLoss { window }
        } else {
            let index = metric_index(&spec, "metric", metric, &["loss"])?;
            Monitor::Metric { index }
        };
        let default_mode = default_mode(metric);
        let maximize = args.choice("mode", &["min", "max"], default_mode)? == "max";
        let factor = args.f64_or("factor", 0.1)?;
        if !(0.0..1.0).contains(&factor) {
            return Err(format!("argument `factor`: must be within [0, 1), got {factor}"));
        }
        Ok(Self {
            monitor,
            maximize,
            factor,
            patience: args.u64_or("patience", 10)?,
            threshold: args.f64_or("threshold", 1e-4)?,
            cooldown: args.u64_or("cooldown", 0)?,
            min_lr: args.f64_or("min_lr", 0.0)?,
            lrs: spec.groups.iter().map(|group| group.base_lr).collect(),
            best: if maximize { f64::NEG_INFINITY } else { f64::INFINITY },
            bad_checks: 0,
            cooldown_left: 0,
            window_sum: 0.0,
            window_count: 0,
        })
    }

    fn knobs(&self) -> Knobs {
        Knobs::LEARNING_RATES
    }

    fn decide(&mut self, observation: Observation) -> Decision {
        if let Some(value) = self.next_check(&observation) {
            self.check(value);
        }
        Decision { lrs: self.lrs.iter().copied().map(Some).collect(), ..Decision::keep() }
    }

    fn save_state(&self) -> Vec<u8> {
        StateWriter::new()
            .f64s(&self.lrs)
            .f64(self.best)
            .u64(self.bad_checks)
            .u64(self.cooldown_left)
            .f64(self.window_sum)
            .u64(self.window_count)
            .finish()
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), String> {
        let mut reader = StateReader::new(state);
        self.lrs = reader.f64s("lrs", self.lrs.len())?;
        self.best = reader.f64("best")?;
        self.bad_checks = reader.u64("bad_checks")?;
        self.cooldown_left = reader.u64("cooldown_left")?;
        self.window_sum = reader.f64("window_sum")?;
        self.window_count = reader.u64("window_count")?;
        reader.finish()
    }
}

impl ReduceOnPlateau {
    /// The monitored value, when this observation completes a check.
    fn next_check(&mut self, observation: &Observation) -> Option<f64> {
        match self.monitor {
            Monitor::Metric { index } => observation.evaluation.as_ref().and_then(|e| e.values.get(index).copied()),
            Monitor::TrainingLoss { window } => {
                let loss = observation.total_loss.filter(|loss| loss.is_finite())?;
                self.window_sum += loss;
                self.window_count += 1;
                if self.window_count < window {
                    return None;
                }
                let mean = self.window_sum / self.window_count as f64;
                self.window_sum = 0.0;
                self.window_count = 0;
                Some(mean)
            }
        }
    }

    fn check(&mut self, value: f64) {
        let improved = if self.maximize {
            value > self.best * (1.0 + self.threshold)
        } else {
            value < self.best * (1.0 - self.threshold)
        };
        if improved {
            self.best = value;
            self.bad_checks = 0;
        } else {
            self.bad_checks += 1;
        }
        if self.cooldown_left > 0 {
            self.cooldown_left -= 1;
            self.bad_checks = 0;
        }
        if self.bad_checks > self.patience {
            for lr in &mut self.lrs {
                *lr = (*lr * self.factor).max(self.min_lr);
            }
            self.cooldown_left = self.cooldown;
            self.bad_checks = 0;
        }
    }
}

export_policy!(ReduceOnPlateau);
