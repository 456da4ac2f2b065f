"""`early_stopping` in Python: stops the run when the monitored metric has not improved for
`patience`, on a NaN or infinite loss or gradient norm, or when the training loss diverges;
the same arguments, decisions, messages and state bytes as the Rust policy
(policies/early_stopping, whose module doc defines them)."""

import math

from trainer_policy import Args, Policy, StateReader, StateWriter, default_mode, export, keep, metric_index, rust_display
from wit_world.imports.types import Knobs

U64 = 1 << 64


class EarlyStopping(Policy):
    knobs = Knobs(0)

    def __init__(self, spec):
        args = Args(
            spec.args,
            ["metric", "mode", "patience", "unit", "min_delta", "start", "eval_every", "stop_on_non_finite",
             "diverge_factor"],
        )
        self.metric_name = args.str_or("metric", spec.metrics[0] if spec.metrics else "")
        self.metric = metric_index(spec, "metric", self.metric_name)
        self.maximize = args.choice("mode", ["min", "max"], default_mode(self.metric_name)) == "max"
        self.patience = args.u64_or("patience", 5)
        self.count_steps = args.choice("unit", ["evaluations", "steps"], "evaluations") == "steps"
        self.min_delta = abs(args.f64_or("min_delta", 0.0))
        self.start = args.u64_or("start", 0)
        self.eval_every = args.u64_or("eval_every", 0)
        self.stop_on_non_finite = args.bool_or("stop_on_non_finite", True)
        self.diverge_factor = args.f64_or("diverge_factor", 10.0)
        self.best = None  # (value, step) of the best evaluation so far
        self.evaluations_without_improvement = 0
        self.lowest_loss = math.inf

    def decide(self, observation):
        decision = keep()
        decision.evaluate = self.eval_every > 0 and (observation.step + 1) % self.eval_every == 0
        decision.stop = self.stop_reason(observation)
        return decision

    def stop_reason(self, observation):
        done = observation.step
        if self.stop_on_non_finite and observation.non_finite:
            return f"non-finite loss or gradient norm before step {done}"
        if done < self.start:
            return None
        loss = observation.total_loss
        if loss is not None and math.isfinite(loss):
            if self.diverge_factor > 0.0 and loss > self.diverge_factor * self.lowest_loss:
                return f"training loss {rust_display(loss)} diverged (lowest {rust_display(self.lowest_loss)})"
            self.lowest_loss = min(self.lowest_loss, loss)
        evaluation = observation.evaluation
        if evaluation is None or self.metric >= len(evaluation.values):
            return None
        value = evaluation.values[self.metric]
        if self.best is None:
            improved = True
        elif self.maximize:
            improved = value > self.best[0] + self.min_delta
        else:
            improved = value < self.best[0] - self.min_delta
        if improved:
            self.best = (value, evaluation.step)
            self.evaluations_without_improvement = 0
            return None
        self.evaluations_without_improvement += 1
        best, best_step = self.best
        if self.count_steps:
            # u64 arithmetic, as in the Rust policy.
            out_of_patience = (evaluation.step - best_step) % U64 >= self.patience
        else:
            out_of_patience = self.evaluations_without_improvement >= self.patience
        if not out_of_patience:
            return None
        return (
            f"{self.metric_name} has not improved on {rust_display(best)} (step {best_step}) "
            f"for {self.evaluations_without_improvement} evaluations"
        )

    def save_state(self):
        best, best_step = self.best or (0.0, 0)
        return (
            StateWriter()
            .bool(self.best is not None)
            .f64(best)
            .u64(best_step)
            .u64(self.evaluations_without_improvement)
            .f64(self.lowest_loss)
            .finish()
        )

    def load_state(self, state):
        reader = StateReader(state)
        has_best = reader.bool("has_best")
        best = (reader.f64("best"), reader.u64("best_step"))
        self.best = best if has_best else None
        self.evaluations_without_improvement = reader.u64("evaluations_without_improvement")
        self.lowest_loss = reader.f64("lowest_loss")
        reader.finish()


Strategy = export(EarlyStopping)
