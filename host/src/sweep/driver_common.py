"""What the two search drivers of `trainer sweep` share: the trials' command lines and the
run files they read. The binary runs a driver as this file followed by the driver's own
(`optuna_driver.py` or `pbt_driver.py`), so the drivers use these names without importing.
"""

import json
import math
import os
import subprocess
import sys


class SpecError(Exception):
    """The spec cannot start a run; the message is the one line the user reads."""


def trial_arguments(spec, params):
    """The `--policy` arguments and the flags of a trial with `params` (name -> value)."""
    steps = spec["steps"]

    def text(dimension, value):
        if dimension.get("of_steps"):
            # Halves round up, as the trainer's own rounding does (Python's round() goes to even).
            return str(math.floor(value * steps + 0.5))
        return json.dumps(value) if not isinstance(value, str) else value

    dimensions = {d["name"]: d for d in spec["space"]}
    flags = list(spec["args"])
    policies = [(p["source"], dict(p["args"])) for p in spec["policies"]]
    for name, value in params.items():
        dimension = dimensions[name]
        if name.startswith("--"):
            flags += [name, text(dimension, value)]
        else:
            policy, argument = name.split(":", 1)
            index = next(i for i, p in enumerate(spec["policies"]) if p["name"] == policy)
            policies[index][1][argument] = text(dimension, value)
    policy_line = []
    for source, args in policies:
        given = ",".join(f"{k}={v}" for k, v in args.items())
        policy_line += ["--policy", f"{source}:{given}" if given else source]
    return policy_line, flags


def command(spec, params, run_dir):
    """The `trainer train` command line of a trial with `params` in `run_dir`."""
    policy_line, flags = trial_arguments(spec, params)
    return [spec["trainer"], "train"] + policy_line + flags + ["--run-dir", run_dir]


def trial_dir(spec, number):
    """The run folder of trial (or member) `number`."""
    return os.path.join(spec["run_dir"], "trials", f"{number:04d}")


def read_jsonl(path):
    try:
        with open(path) as file:
            return [json.loads(line) for line in file if line.strip()]
    except FileNotFoundError:
        return []


def read_json(path):
    try:
        with open(path) as file:
            return json.load(file)
    except FileNotFoundError:
        return None


def last_error(text):
    """The trainer's own one-line error in its output `text`, or the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [""])[-1]


def finite(value):
    return isinstance(value, (int, float)) and math.isfinite(value)


def steps_done(run_dir):
    """Steps trained: metrics.jsonl numbers its lines from step 0."""
    metrics = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    return metrics[-1]["step"] + 1 if metrics else 0


def objective_value(spec, run_dir, final):
    """A finished run's objective: the best of its evaluations and its final one (`final`,
    from eval.json), or the final one with `value = "last"`; `None` if none is finite."""
    values = [e.get(spec["metric"]) for e in read_jsonl(os.path.join(run_dir, "evaluations.jsonl"))]
    values.append(final.get(spec["metric"]))
    values = [value for value in values if finite(value)]
    if not values:
        return None
    if spec["value"] == "last":
        return values[-1]
    return max(values) if spec["maximize"] else min(values)


def dry_run_check(spec):
    """Starts nothing: a dry run of the trials' command, with every dimension at its low end
    and then its high end, opens the data, the model and the policies, and the objective
    must be among the metrics the run reports."""
    for end in ("low", "high"):
        params = {}
        for dimension in spec["space"]:
            if dimension["kind"] == "choice":
                params[dimension["name"]] = dimension["choices"][0 if end == "low" else -1]
            else:
                params[dimension["name"]] = dimension[end]
        line = command(spec, params, os.path.join(spec["run_dir"], "trials", "dry-run")) + ["--dry-run"]
        done = subprocess.run(line, capture_output=True, text=True)
        if done.returncode != 0:
            error = last_error(done.stderr).removeprefix("error: ") or f"exit code {done.returncode}"
            raise SpecError(f"{spec['spec_file']}: the trials' command does not start ({end} ends): {error}")
        plan = json.loads(done.stdout)
        if spec["metric"] not in plan["metrics"]:
            raise SpecError(
                f"{spec['spec_file']}: [objective] metric `{spec['metric']}`: the run reports "
                f"{', '.join(plan['metrics']) or 'no metric'}"
            )


def write_json(path, value):
    """Writes `value` to `path` whole or not at all, for the trainer to read at any time."""
    with open(path + ".tmp", "w") as file:
        json.dump(value, file, indent=1)
    os.replace(path + ".tmp", path)


def run_main(drive):
    """Runs `drive(spec, resume)` on the spec at argv[1]; its return value is the exit code,
    2 with one line on stderr for a spec that does not start a run."""
    with open(sys.argv[1]) as file:
        spec = json.load(file)
    resume = len(sys.argv) > 2 and sys.argv[2] == "--resume"
    try:
        return drive(spec, resume)
    except SpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
