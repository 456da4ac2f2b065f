"""`cosine_warmup` in Python: linear warmup, then cosine decay to a floor, for every group,
re-planned when a resumed run changes its length; the same arguments, decisions and state as
the Rust policy (policies/cosine_warmup)."""

from componentize_py_types import Err
from trainer_policy import (
    Args,
    CosineSchedule,
    Policy,
    StateReader,
    StateWriter,
    export,
    keep,
    rust_display,
    warmup_start_zero,
)
from wit_world.imports.types import Knobs


class CosineWarmup(Policy):
    knobs = Knobs.LEARNING_RATES

    def __init__(self, spec):
        args = Args(spec.args, ["warmup_steps", "min_lr", "warmup_start"])
        min_lr = args.f64_or("min_lr", 0.0)
        if min_lr < 0.0:
            raise Err(f"argument `min_lr`: must be >= 0, got {rust_display(min_lr)}")
        warmup_steps = args.u64_or("warmup_steps", spec.total_steps // 20)
        zero_start = warmup_start_zero(args)
        base_lrs = [group.base_lr for group in spec.groups]
        self.schedule = CosineSchedule(base_lrs, warmup_steps, min_lr, spec.total_steps, zero_start)

    def decide(self, observation):
        step = observation.step
        self.schedule.begin_step(step)
        decision = keep()
        decision.lrs = [self.schedule.rate(group, step) for group in range(len(self.schedule.base_lrs))]
        return decision

    def save_state(self):
        return self.schedule.save(StateWriter()).finish()

    def load_state(self, state):
        reader = StateReader(state)
        self.schedule.load(reader)
        reader.finish()


Strategy = export(CosineWarmup)
