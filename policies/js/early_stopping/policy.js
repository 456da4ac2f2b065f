// `early_stopping` in JavaScript: stops the run when the monitored metric has not improved for
// `patience`, on a NaN or infinite loss or gradient norm, or when the training loss diverges;
// the same arguments, decisions, messages and state bytes as the Rust policy
// (policies/early_stopping, whose module doc defines them).

import {
  Args,
  Policy,
  StateReader,
  StateWriter,
  defaultMode,
  exportPolicy,
  keep,
  metricIndex,
  rustDisplay,
} from '../trainer_policy.js';

const U64 = 1n << 64n;

class EarlyStopping extends Policy {
  knobs = {};

  constructor(spec) {
    super();
    const args = new Args(spec.args, [
      'metric',
      'mode',
      'patience',
      'unit',
      'min_delta',
      'start',
      'eval_every',
      'stop_on_non_finite',
      'diverge_factor',
    ]);
    this.metricName = args.strOr('metric', spec.metrics.length ? spec.metrics[0] : '');
    this.metric = metricIndex(spec, 'metric', this.metricName);
    this.maximize = args.choice('mode', ['min', 'max'], defaultMode(this.metricName)) === 'max';
    this.patience = args.u64Or('patience', 5n);
    this.countSteps = args.choice('unit', ['evaluations', 'steps'], 'evaluations') === 'steps';
    this.minDelta = Math.abs(args.f64Or('min_delta', 0.0));
    this.start = args.u64Or('start', 0n);
    this.evalEvery = args.u64Or('eval_every', 0n);
    this.stopOnNonFinite = args.boolOr('stop_on_non_finite', true);
    this.divergeFactor = args.f64Or('diverge_factor', 10.0);
    this.best = undefined; // [value, step] of the best evaluation so far
    this.evaluationsWithoutImprovement = 0n;
    this.lowestLoss = Infinity;
  }

  decide(observation) {
    const decision = keep();
    decision.evaluate = this.evalEvery > 0n && (observation.step + 1n) % this.evalEvery === 0n;
    decision.stop = this.stopReason(observation);
    return decision;
  }

  stopReason(observation) {
    const done = observation.step;
    const nonFinite = observation.nonFinite;
    if (this.stopOnNonFinite && (nonFinite.loss || nonFinite.gradNorm)) {
      return `non-finite loss or gradient norm before step ${done}`;
    }
    if (done < this.start) return undefined;
    const loss = observation.totalLoss;
    if (loss !== undefined && loss !== null && Number.isFinite(loss)) {
      if (this.divergeFactor > 0.0 && loss > this.divergeFactor * this.lowestLoss) {
        return `training loss ${rustDisplay(loss)} diverged (lowest ${rustDisplay(this.lowestLoss)})`;
      }
      this.lowestLoss = Math.min(this.lowestLoss, loss);
    }
    const evaluation = observation.evaluation;
    if (!evaluation || this.metric >= evaluation.values.length) return undefined;
    const value = evaluation.values[this.metric];
    let improved;
    if (this.best === undefined) improved = true;
    else if (this.maximize) improved = value > this.best[0] + this.minDelta;
    else improved = value < this.best[0] - this.minDelta;
    if (improved) {
      this.best = [value, evaluation.step];
      this.evaluationsWithoutImprovement = 0n;
      return undefined;
    }
    this.evaluationsWithoutImprovement += 1n;
    const [best, bestStep] = this.best;
    // u64 arithmetic, as in the Rust policy.
    const outOfPatience = this.countSteps
      ? (((evaluation.step - bestStep) % U64) + U64) % U64 >= this.patience
      : this.evaluationsWithoutImprovement >= this.patience;
    if (!outOfPatience) return undefined;
    return (
      `${this.metricName} has not improved on ${rustDisplay(best)} (step ${bestStep}) ` +
      `for ${this.evaluationsWithoutImprovement} evaluations`
    );
  }

  saveState() {
    const [best, bestStep] = this.best ?? [0.0, 0n];
    return new StateWriter()
      .bool(this.best !== undefined)
      .f64(best)
      .u64(bestStep)
      .u64(this.evaluationsWithoutImprovement)
      .f64(this.lowestLoss)
      .finish();
  }

  loadState(state) {
    const reader = new StateReader(state);
    const hasBest = reader.bool('has_best');
    const best = [reader.f64('best'), reader.u64('best_step')];
    this.best = hasBest ? best : undefined;
    this.evaluationsWithoutImprovement = reader.u64('evaluations_without_improvement');
    this.lowestLoss = reader.f64('lowest_loss');
    reader.finish();
  }
}

export const strategy = exportPolicy(EarlyStopping);
