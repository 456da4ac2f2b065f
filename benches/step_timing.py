"""The timing the PyTorch sides of the training-step benchmarks share: one warm-up step, then
`steps` timed ones, their median printed as the JSON the Rust side reads."""

import json
import statistics
import time


def print_seconds_per_step(step, steps: int) -> None:
    step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    print(json.dumps({"seconds_per_step": statistics.median(times)}))
