// `cosine_warmup` in JavaScript: linear warmup, then cosine decay to a floor, for every group,
// re-planned when a resumed run changes its length; the same arguments, decisions and state as
// the Rust policy (policies/cosine_warmup).

import {
  Args,
  CosineSchedule,
  Policy,
  StateReader,
  StateWriter,
  exportPolicy,
  keep,
  rustDisplay,
  warmupStartZero,
} from '../trainer_policy.js';

class CosineWarmup extends Policy {
  knobs = { learningRates: true };

  constructor(spec) {
    super();
    const args = new Args(spec.args, ['warmup_steps', 'min_lr', 'warmup_start']);
    const minLr = args.f64Or('min_lr', 0.0);
    if (minLr < 0.0) throw `argument \`min_lr\`: must be >= 0, got ${rustDisplay(minLr)}`;
    const warmupSteps = args.u64Or('warmup_steps', spec.totalSteps / 20n);
    const zeroStart = warmupStartZero(args);
    const baseLrs = spec.groups.map((group) => group.baseLr);
    this.schedule = new CosineSchedule(baseLrs, warmupSteps, minLr, spec.totalSteps, zeroStart);
  }

  decide(observation) {
    this.schedule.beginStep(observation.step);
    const decision = keep();
    decision.lrs = this.schedule.baseLrs.map((_, group) => this.schedule.rate(group, observation.step));
    return decision;
  }

  saveState() {
    return this.schedule.save(new StateWriter()).finish();
  }

  loadState(state) {
    const reader = new StateReader(state);
    this.schedule.load(reader);
    reader.finish();
  }
}

export const strategy = exportPolicy(CosineWarmup);
