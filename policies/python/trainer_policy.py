"""Helpers shared by the Python policies, each mirroring the Rust guest SDK (guest-sdk/) so a
Python policy reads its arguments, keeps its state and formats its messages exactly as the
Rust policy of the same name: same values, same errors, same bytes."""

import math
import struct

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.types import Decision


class Args:
    """The user's policy arguments, checked against the names the policy knows; the last
    occurrence of a name wins, as on a command line."""

    def __init__(self, pairs, known):
        for name, _ in pairs:
            if name not in known:
                takes = ", ".join(known) if known else "none"
                raise Err(f"unknown argument `{name}` (this policy takes: {takes})")
        self.pairs = pairs

    def raw(self, name):
        for key, value in reversed(self.pairs):
            if key == name:
                return value
        return None

    def f64_or(self, name, default):
        text = self.raw(name)
        if text is None:
            return default
        value = parse_f64(text.strip())
        if value is None or not math.isfinite(value):
            raise Err(f"argument `{name}`: expected a finite number, got `{text}`")
        return value

    def u64_or(self, name, default):
        text = self.raw(name)
        if text is None:
            return default
        digits = text.strip()
        digits = digits[1:] if digits.startswith("+") else digits
        # Rust's u64 parser takes ASCII digits only (no sign but `+`, no `_`), below 2^64.
        if not digits or not all("0" <= c <= "9" for c in digits) or int(digits) >= 1 << 64:
            raise Err(f"argument `{name}`: expected a non-negative whole number, got `{text}`")
        return int(digits)

    def str_or(self, name, default):
        text = self.raw(name)
        return default if text is None else text

    def bool_or(self, name, default):
        text = self.raw(name)
        if text is None:
            return default
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no"):
            return False
        raise Err(f"argument `{name}`: expected true or false, got `{text}`")

    def choice(self, name, options, default):
        value = self.str_or(name, default)
        if value not in options:
            raise Err(f"argument `{name}`: expected one of {', '.join(options)}, got `{value}`")
        return value


def parse_f64(text):
    """A number as Rust's `str::parse::<f64>` reads it, or None: Python's float() also takes
    `_` between digits, which Rust refuses."""
    if "_" in text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def metric_index(spec, argument, name):
    """Index of the evaluation metric `name` in the run spec; the error lists the choices."""
    if name in spec.metrics:
        return spec.metrics.index(name)
    raise Err(f"argument `{argument}`: `{name}` is not a metric of this run (metrics: {', '.join(spec.metrics)})")


def default_mode(name):
    """Losses are minimised, everything else maximised."""
    return "min" if name.endswith("loss") else "max"


def warmup_start_zero(args):
    """The `warmup_start` argument: False for `one_step` (the default: the warmup starts at
    `base / w`), True for `zero` (it starts at 0, as transformers' schedules do)."""
    return args.choice("warmup_start", ["one_step", "zero"], "one_step") == "zero"


def cosine_warmup(step, base, warmup, total, floor):
    """Linear warmup to `base`, then cosine decay to `floor`, with the operations of the Rust
    SDK's schedules in the same order, so the results are bit-identical."""
    return cosine_warmup_from(step, base, warmup, False, total, floor, (warmup, base))


def cosine_warmup_from(step, base, warmup, zero_start, total, floor, decay_start):
    """`cosine_warmup` with the warmup starting at 0 when `zero_start`, and whose decay starts
    at step `decay_start[0]` from the rate `decay_start[1]` (after a re-plan) instead of at the
    end of the warmup from `base`."""
    if step < warmup:
        return (step if zero_start else step + 1) / warmup * base
    start, rate = decay_start
    floor = min(floor, base)
    decay_steps = max(total - start, 1)
    progress = min(max(step - start, 0) / decay_steps, 1.0)
    return floor + (rate - floor) * (0.5 * (1.0 + math.cos(math.pi * progress)))


class CosineSchedule:
    """Linear warmup, then cosine decay to a floor, for every group, re-planned when a resumed
    run changes its length, as the Rust SDK's `plan::CosineSchedule` (same state bytes)."""

    def __init__(self, base_lrs, warmup_steps, min_lr, total_steps, zero_start=False):
        self.base_lrs = base_lrs
        self.warmup_steps = warmup_steps
        self.zero_start = zero_start
        self.min_lr = min_lr
        self.total_steps = total_steps
        # A new length waiting for the next decision, where the resume step is known.
        self.pending_total = None
        # (step, rate per group): where the decay was re-planned.
        self.restart = None

    def begin_step(self, step):
        if self.pending_total is None:
            return
        values = [self.rate(group, step) for group in range(len(self.base_lrs))]
        self.total_steps, self.pending_total = self.pending_total, None
        if step >= self.warmup_steps:
            self.restart = (step, values)

    def rate(self, group, step):
        base = self.base_lrs[group]
        start = (self.restart[0], self.restart[1][group]) if self.restart else (self.warmup_steps, base)
        return cosine_warmup_from(
            step, base, self.warmup_steps, self.zero_start, self.total_steps, self.min_lr, start
        )

    def save(self, writer):
        writer.u64(self.warmup_steps).u64(self.total_steps)
        if self.restart is None:
            return writer.bool(False)
        return writer.bool(True).u64(self.restart[0]).f64s(self.restart[1])

    def load(self, reader):
        self.warmup_steps = reader.u64("warmup steps")
        saved = reader.u64("planned total steps")
        run_total = self.total_steps if self.pending_total is None else self.pending_total
        self.pending_total = run_total if saved != run_total else None
        self.total_steps = saved
        self.restart = None
        if reader.bool("restarted"):
            self.restart = (reader.u64("restart step"), reader.f64s("restart rates", len(self.base_lrs)))


def rust_display(value):
    """`value` as Rust's `{}` prints an f64: the shortest digits that read back to it, always
    positional (no exponent), no `.0` on whole numbers, `inf` and `NaN`."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    mantissa, _, exponent = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    # Position of the decimal point relative to the start of `digits`.
    point = len(whole) + int(exponent or 0) - (len(whole + fraction) - len(digits))
    digits = digits.rstrip("0")
    if not digits:
        return sign + "0"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


class StateWriter:
    """State bytes in the Rust SDK's encoding: little-endian, floats bit for bit."""

    def __init__(self):
        self.parts = []

    def f64(self, value):
        self.parts.append(struct.pack("<d", value))
        return self

    def u64(self, value):
        self.parts.append(struct.pack("<Q", value))
        return self

    def bool(self, value):
        self.parts.append(b"\x01" if value else b"\x00")
        return self

    def f64s(self, values):
        self.u64(len(values))
        for value in values:
            self.f64(value)
        return self

    def finish(self):
        return b"".join(self.parts)


class StateReader:
    """Reads what StateWriter wrote, in order; every error says what was missing."""

    def __init__(self, data):
        self.data = bytes(data)
        self.at = 0

    def take(self, size, what):
        if len(self.data) - self.at < size:
            raise Err(f"state ends before `{what}`")
        self.at += size
        return self.data[self.at - size : self.at]

    def f64(self, what):
        return struct.unpack("<d", self.take(8, what))[0]

    def u64(self, what):
        return struct.unpack("<Q", self.take(8, what))[0]

    def bool(self, what):
        byte = self.take(1, what)[0]
        if byte > 1:
            raise Err(f"`{what}`: {byte} is not a boolean")
        return byte == 1

    def f64s(self, what, expected):
        count = self.u64(what)
        if count != expected:
            raise Err(f"`{what}`: state has {count} values, this run needs {expected}")
        return [self.f64(what) for _ in range(count)]

    def finish(self):
        left = len(self.data) - self.at
        if left:
            raise Err(f"{left} unexpected bytes at the end of the state")


def keep():
    """A decision that changes nothing and requests nothing."""
    return Decision(
        lrs=[], lr_multipliers=[], loss_weights=[], augmentation=[], grad_clip=None, freeze=[], evaluate=False,
        checkpoint=False, stop=None, measure_loss_gradients=False, snapshot=False, rollback=None,
    )


class Policy:
    """Base of a policy: `__init__(spec)` reads the run spec and arguments (raising `Err` to
    refuse them), `knobs` names the kinds of knob it sets, `decide(observation)` returns a
    Decision. This default keeps no state."""

    def save_state(self):
        return b""

    def load_state(self, state):
        if state:
            raise Err(f"this policy keeps no state, but was given {len(state)} bytes")


def export(policy_class):
    """The `Strategy` class componentize-py exports, over one instance of `policy_class` kept
    for the whole run: componentize-py makes a new `Strategy` object for every call, so the
    policy lives here instead, like the Rust SDK's `export_policy!`."""
    run = {}

    class Strategy(exports.Strategy):
        def init(self, spec):
            run["policy"] = policy_class(spec)
            return run["policy"].knobs

        def decide(self, observation):
            return run["policy"].decide(observation)

        def save_state(self):
            return run["policy"].save_state()

        def load_state(self, state):
            run["policy"].load_state(state)

    return Strategy
