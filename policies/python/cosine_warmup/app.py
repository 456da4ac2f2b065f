"""`cosine_warmup` in Python: linear warmup, then cosine decay to a floor, for every group;
the same arguments and the same decisions as the Rust policy (policies/cosine_warmup)."""

from componentize_py_types import Err
from trainer_policy import Args, Policy, cosine_warmup, export, keep, rust_display
from wit_world.imports.types import Knobs


class CosineWarmup(Policy):
    knobs = Knobs.LEARNING_RATES

    def __init__(self, spec):
        args = Args(spec.args, ["warmup_steps", "min_lr"])
        self.min_lr = args.f64_or("min_lr", 0.0)
        if self.min_lr < 0.0:
            raise Err(f"argument `min_lr`: must be >= 0, got {rust_display(self.min_lr)}")
        self.base_lrs = [group.base_lr for group in spec.groups]
        self.warmup_steps = args.u64_or("warmup_steps", spec.total_steps // 20)
        self.total_steps = spec.total_steps

    def decide(self, observation):
        decision = keep()
        decision.lrs = [
            cosine_warmup(observation.step, base, self.warmup_steps, self.total_steps, self.min_lr)
            for base in self.base_lrs
        ]
        return decision


Strategy = export(CosineWarmup)
