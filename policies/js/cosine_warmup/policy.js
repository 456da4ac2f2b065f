// `cosine_warmup` in JavaScript: linear warmup, then cosine decay to a floor, for every group;
// the same arguments and the same decisions as the Rust policy (policies/cosine_warmup).

import { Args, Policy, cosineWarmup, exportPolicy, keep, rustDisplay } from '../trainer_policy.js';

class CosineWarmup extends Policy {
  knobs = { learningRates: true };

  constructor(spec) {
    super();
    const args = new Args(spec.args, ['warmup_steps', 'min_lr']);
    this.minLr = args.f64Or('min_lr', 0.0);
    if (this.minLr < 0.0) throw `argument \`min_lr\`: must be >= 0, got ${rustDisplay(this.minLr)}`;
    this.baseLrs = spec.groups.map((group) => group.baseLr);
    this.warmupSteps = args.u64Or('warmup_steps', spec.totalSteps / 20n);
    this.totalSteps = spec.totalSteps;
  }

  decide(observation) {
    const decision = keep();
    decision.lrs = this.baseLrs.map((base) =>
      cosineWarmup(observation.step, base, this.warmupSteps, this.totalSteps, this.minLr),
    );
    return decision;
  }
}

export const strategy = exportPolicy(CosineWarmup);
