//! `early_stopping`: stops the run when the monitored evaluation metric has not improved
//! for `patience`, when a loss or gradient norm is NaN or infinite, or when the training loss
//! diverges. Nothing counts before step `start`.
//!
//! Evaluations at or after `start` are compared with the best so far: an improvement is
//! more than `min_delta` below (`min` mode) or above (`max` mode) it. With `unit=evaluations`
//! the run stops at the `patience`-th evaluation in a row without improvement; with
//! `unit=steps`, at the first evaluation without improvement that comes `patience` or more
//! steps after the best one. Divergence: a training loss above `diverge_factor` times the
//! lowest one seen since `start` (0 turns this off).
//!
//! Arguments: `metric` (default: the run's first metric), `mode` (`min`/`max`; default `min`
//! for names ending in `loss`, else `max`), `patience` (5), `unit` (`evaluations`/`steps`),
//! `min_delta` (0), `start` (0), `eval_every` (request an evaluation every N steps; 0, the
//! default, leaves evaluations to the trainer), `stop_on_non_finite` (true),
//! `diverge_factor` (10). Owns: no knob; requests evaluations and the stop.

use trainer_policy_sdk::metrics::{default_mode, metric_index};
use trainer_policy_sdk::state::{StateReader, StateWriter};
use trainer_policy_sdk::{Args, Decision, Knobs, Observation, Policy, RunSpec, export_policy};

struct EarlyStopping {
    metric: usize,
    metric_name: String,
    maximize: bool,
    patience: u64,
    count_steps: bool,
    min_delta: f64,
    start: u64,
    eval_every: u64,
    stop_on_non_finite: bool,
    diverge_factor: f64,
    // State.
    best: Option<(f64, u64)>,
    evaluations_without_improvement: u64,
    lowest_loss: f64,
}

impl Policy for EarlyStopping {
    fn init(spec: RunSpec) -> Result<Self, String> {
        let args = Args::new(
            &spec.args,
            &[
                "metric",
                "mode",
                "patience",
                "unit",
                "min_delta",
                "start",
                "eval_every",
                "stop_on_non_finite",
                "diverge_factor",
            ],
        )?;
        let first = spec.metrics.first().map(String::as_str).unwrap_or("");
        let metric_name = args.str_or("metric", first).to_string();
        let metric = metric_index(&spec, "metric", &metric_name, &[])?;
        let default_mode = default_mode(&metric_name);
        Ok(Self {
            metric,
            maximize: args.choice("mode", &["min", "max"], default_mode)? == "max",
            metric_name,
            patience: args.u64_or("patience", 5)?,
            count_steps: args.choice("unit", &["evaluations", "steps"], "evaluations")? == "steps",
            min_delta: args.f64_or("min_delta", 0.0)?.abs(),
            start: args.u64_or("start", 0)?,
            eval_every: args.u64_or("eval_every", 0)?,
            stop_on_non_finite: args.bool_or("stop_on_non_finite", true)?,
            diverge_factor: args.f64_or("diverge_factor", 10.0)?,
            best: None,
            evaluations_without_improvement: 0,
            lowest_loss: f64::INFINITY,
        })
    }

    fn knobs(&self) -> Knobs {
        Knobs::empty()
    }

    fn decide(&mut self, observation: Observation) -> Decision {
        let evaluate = self.eval_every > 0 && (observation.step + 1).is_multiple_of(self.eval_every);
        Decision { evaluate, stop: self.stop_reason(&observation), ..Decision::keep() }
    }

    fn save_state(&self) -> Vec<u8> {
        let (best, best_step) = self.best.unwrap_or((0.0, 0));
        StateWriter::new()
            .bool(self.best.is_some())
            .f64(best)
            .u64(best_step)
            .u64(self.evaluations_without_improvement)
            .f64(self.lowest_loss)
            .finish()
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), String> {
        let mut reader = StateReader::new(state);
        let has_best = reader.bool("has_best")?;
        let best = (reader.f64("best")?, reader.u64("best_step")?);
        self.best = has_best.then_some(best);
        self.evaluations_without_improvement = reader.u64("evaluations_without_improvement")?;
        self.lowest_loss = reader.f64("lowest_loss")?;
        reader.finish()
    }
}

impl EarlyStopping {
    fn stop_reason(&mut self, observation: &Observation) -> Option<String> {
        let done = observation.step;
        if self.stop_on_non_finite && !observation.non_finite.is_empty() {
            return Some(format!("non-finite loss or gradient norm before step {done}"));
        }
        if done < self.start {
            return None;
        }
        if let Some(loss) = observation.total_loss.filter(|loss| loss.is_finite()) {
            if self.diverge_factor > 0.0 && loss > self.diverge_factor * self.lowest_loss {
                return Some(format!("training loss {loss} diverged (lowest {})", self.lowest_loss));
            }
            self.lowest_loss = self.lowest_loss.min(loss);
        }
        let evaluation = observation.evaluation.as_ref()?;
        let value = *evaluation.values.get(self.metric)?;
        let improved = match self.best {
            None => true,
            Some((best, _)) if self.maximize => value > best + self.min_delta,
            Some((best, _)) => value < best - self.min_delta,
        };
        if improved {
            self.best = Some((value, evaluation.step));
            self.evaluations_without_improvement = 0;
            return None;
        }
        self.evaluations_without_improvement += 1;
        let (best, best_step) = self.best.expect("set by the first evaluation");
        let out_of_patience = if self.count_steps {
            evaluation.step - best_step >= self.patience
        } else {
            self.evaluations_without_improvement >= self.patience
        };
        out_of_patience.then(|| {
            format!(
                "{} has not improved on {best} (step {best_step}) for {} evaluations",
                self.metric_name, self.evaluations_without_improvement
            )
        })
    }
}

export_policy!(EarlyStopping);
