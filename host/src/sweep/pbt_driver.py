"""Population-based training for `trainer sweep` (`[search] scheduler = "pbt"`): Ray Tune's
PopulationBasedTraining over a population of `trainer train` runs, one per member.

This continues driver_common.py. Each member is a run folder, RUN/trials/NNNN, trained one
interval at a time with `--pause-after-steps`. After each interval the member reports the
objective (the run evaluates at every interval) with a Ray checkpoint: a snapshot of its
folder at that step, its files copied and its trainer checkpoint linked, which Ray keeps
in RUN/ray. When PBT has a weak member exploit a strong one, Ray restarts the weak member
with the strong one's snapshot and perturbed arguments; the member replaces its folder with
the snapshot and continues with `trainer train --resume --swap-policies --policy ...`, so
its run.json and decisions.jsonl record the switch and `trainer simulate` replays it.
RUN/pbt.jsonl holds the lineage: each member's start, every exploit and any failure.

Exit codes: 0 done, 2 the spec does not start a run (one line on stderr), 130 interrupted.
"""

import ctypes
import fcntl
import glob
import logging
import random
import shutil
import signal
import tempfile
import warnings

import numpy

# Ray's console reporter and its INFO lines would bury the table the trainer prints at the end;
# the lineage is in RUN/pbt.jsonl, Ray's own records in RUN/ray.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Ray reports usage to its makers unless told not to; a trainer does not do that for its users.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
warnings.filterwarnings("ignore", message="Consider boosting PBT performance")

import ray
from ray import tune
from ray.tune.schedulers import PopulationBasedTraining

SNAPSHOT_FILE = "member.json"
# The member's own files, kept when it takes another member's snapshot.
OWN_FILES = {"sweep.log", "run.lock"}
EXPERIMENT = "pbt"
PR_SET_PDEATHSIG = 1


def member_number():
    """The member's number: Ray numbers a tuner's trials in its ids (`<prefix>_00003`), and
    keeps a trial's id when PBT gives it another member's configuration."""
    return int(tune.get_context().get_trial_id().rsplit("_", 1)[-1])


def append_lineage(spec, record):
    path = os.path.join(spec["run_dir"], "pbt.jsonl")
    with open(path, "a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        file.write(json.dumps(record) + "\n")


def die_with_parent():
    # The trainer checkpoints on SIGTERM: sent when the Ray worker running it ends, as it
    # does when the sweep is interrupted.
    ctypes.CDLL("libc.so.6").prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def snapshot(folder, step, number, params, into):
    """Fills `into` with the member's folder as it is after `step`: its files copied, and
    its checkpoint at `step` linked (checkpoint files are written once and never changed)."""
    checkpoint = os.path.join("checkpoints", f"step-{step}")
    for root, dirs, files in os.walk(folder):
        relative = os.path.relpath(root, folder)
        if relative == "checkpoints":
            dirs[:] = [d for d in dirs if d == f"step-{step}"]
        for name in files:
            path = os.path.join(relative, name)
            if relative == "." and name in OWN_FILES:
                continue
            target = os.path.join(into, path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if path.startswith(checkpoint + os.sep):
                os.link(os.path.join(root, name), target)
            else:
                shutil.copy2(os.path.join(root, name), target)
    write_json(os.path.join(into, SNAPSHOT_FILE), {"member": number, "step": step, "params": params})


def adopt(snapshot_dir, folder):
    """Replaces the member's run in `folder` with the one in `snapshot_dir`: built beside it
    and renamed into place, so an interruption leaves one run or the other, never a mix."""
    incoming, outgoing = folder + ".incoming", folder + ".outgoing"
    for leftover in (incoming, outgoing):
        shutil.rmtree(leftover, ignore_errors=True)

    def link_or_copy(source, target):
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)

    for root, _, files in os.walk(snapshot_dir):
        relative = os.path.relpath(root, snapshot_dir)
        for name in files:
            if relative == "." and name == SNAPSHOT_FILE:
                continue
            target = os.path.join(incoming, relative, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            inside_checkpoints = relative.split(os.sep)[0] == "checkpoints"
            (link_or_copy if inside_checkpoints else shutil.copy2)(os.path.join(root, name), target)
    for name in OWN_FILES:
        if os.path.exists(os.path.join(folder, name)):
            shutil.copy2(os.path.join(folder, name), os.path.join(incoming, name))
    os.rename(folder, outgoing)
    os.rename(incoming, folder)
    shutil.rmtree(outgoing)


def objective(spec, folder, step):
    """The objective at `step`: the evaluation the run made then, or its final one."""
    if finished(folder):
        final = read_json(os.path.join(folder, "eval.json"))
        if final is not None and finite(final.get(spec["metric"])):
            return final[spec["metric"]]
    for evaluation in reversed(read_jsonl(os.path.join(folder, "evaluations.jsonl"))):
        if evaluation.get("step") == step and finite(evaluation.get(spec["metric"])):
            return evaluation[spec["metric"]]
    return None


def has_checkpoint(folder):
    return bool(glob.glob(os.path.join(folder, "checkpoints", "step-*")))


def finished(folder):
    """Whether the member's run ended (its last step, or a policy's stop): it has a final
    evaluation."""
    return os.path.exists(os.path.join(folder, "eval.json"))


def report(spec, number, params, folder, step):
    """Reports the member's objective at `step`, with a snapshot unless the run ended."""
    value = objective(spec, folder, step)
    if value is None:
        failure = f"no finite `{spec['metric']}` evaluated at step {step}"
        append_lineage(spec, {"member": number, "step": step, "failed": failure})
        raise RuntimeError(f"member {number}: {failure}")
    result = {"step": spec["steps"] if finished(folder) else step, "objective": value}
    if finished(folder):
        tune.report(result)
        return
    with tempfile.TemporaryDirectory(dir=os.path.join(spec["run_dir"], "trials")) as taken:
        snapshot(folder, step, number, params, taken)
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(taken))


def train_member(config, spec, environment):
    """One member of the population, run by Ray: trains interval by interval, reporting
    each with a snapshot, until its run ends."""
    number = member_number()
    folder = trial_dir(spec, number)
    params = config["params"]
    interval = spec["pbt"]["interval"]
    checkpoint = tune.get_checkpoint()
    line = [spec["trainer"], "train", "--resume", folder, "--swap-policies"] + trial_arguments(spec, params)[0]
    line += spec["resume_args"]
    if checkpoint is not None:
        with checkpoint.as_directory() as taken:
            donor = read_json(os.path.join(taken, SNAPSHOT_FILE))
            if donor["member"] != number:
                adopt(taken, folder)
                append_lineage(
                    spec,
                    {"member": number, "step": donor["step"], "from": donor["member"], "from_params": donor["params"],
                     "params": params},
                )
    elif has_checkpoint(folder):
        # A continued sweep: the member goes on from its folder, first reporting where it is
        # when that is where the population is compared.
        step = steps_done(folder)
        if finished(folder) or step % interval == 0:
            report(spec, number, params, folder, step)
            if finished(folder):
                return
    else:
        # A new member, or one stopped before its first checkpoint: it starts from the beginning.
        append_lineage(spec, {"member": number, "step": 0, "params": params})
        line = command(spec, params, folder) + ["--overwrite"]
    # CUDA_VISIBLE_DEVICES is Ray's choice of this member's GPUs; the rest is the sweep's own
    # environment, not the worker's (Ray sets a thread count of its own there).
    child_environment = dict(environment)
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        child_environment["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    while True:
        pause = (steps_done(folder) // interval + 1) * interval
        # The last interval ends the run as any run ends: its final evaluation and weights.
        until = ["--pause-after-steps", str(pause)] if pause < spec["steps"] else []
        os.makedirs(folder, exist_ok=True)
        log_path = os.path.join(folder, "sweep.log")
        with open(log_path, "a") as log:
            code = subprocess.call(
                line + until, stdout=log, stderr=subprocess.STDOUT, env=child_environment, preexec_fn=die_with_parent
            )
        step = steps_done(folder)
        if code != 0:
            with open(log_path, errors="replace") as log:
                failure = f"exit code {code}: {last_error(log.read())}"
            append_lineage(spec, {"member": number, "step": step, "failed": failure})
            raise RuntimeError(f"member {number}: {failure}")
        if step < pause and not finished(folder):
            raise RuntimeError(f"member {number}: stopped at step {step}; `trainer sweep --resume` continues it")
        report(spec, number, params, folder, step)
        if finished(folder):
            return
        line = [spec["trainer"], "train", "--resume", folder] + spec["resume_args"]


def draw(dimension, rng):
    """A value of `dimension` drawn with `rng` (a `random.Random`, or the module itself)."""
    if dimension["kind"] == "choice":
        return rng.choice(dimension["choices"])
    low, high = dimension["low"], dimension["high"]
    value = math.exp(rng.uniform(math.log(low), math.log(high))) if dimension["log"] else rng.uniform(low, high)
    return round(value) if dimension["kind"] == "int" else value


def mutation(dimension):
    """How PBT resamples a dimension: a list for choices (a step left or right, or any),
    otherwise a function drawing from the range with the generator PBT itself draws from."""
    if dimension["kind"] == "choice":
        return list(dimension["choices"])
    return lambda: draw(dimension, random)


def initial_population(spec):
    """Each member's starting arguments, drawn from the space with the spec's seed."""
    rng = random.Random(spec["seed"])
    return [{d["name"]: draw(d, rng) for d in spec["space"]} for _ in range(spec["pbt"]["population"])]


def within_range(spec):
    """Keeps a perturbed argument in its range: PBT multiplies by 0.8 or 1.2 without bounds."""
    dimensions = {d["name"]: d for d in spec["space"] if d["kind"] != "choice"}

    def clamp(config):
        for name, dimension in dimensions.items():
            value = config["params"][name]
            config["params"][name] = min(max(value, dimension["low"]), dimension["high"])
        return config

    return clamp


def drive(spec, resume):
    settings = spec["pbt"]
    os.makedirs(os.path.join(spec["run_dir"], "trials"), exist_ok=True)
    if not resume:
        dry_run_check(spec)
    # PBT draws from Python's and NumPy's global generators; seeded, a sweep whose members
    # report in the same order (synchronous PBT) makes the same choices.
    random.seed(spec["seed"])
    numpy.random.seed(spec["seed"] % 2**32)
    address = settings.get("address")
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    else:
        # As many members train at once as there are CPUs: every member exists from the
        # start (PENDING until its turn), so synchronous PBT compares the whole population.
        ray.init(num_cpus=spec["parallel"] * settings["cpus_per_member"], include_dashboard=False,
                 log_to_driver=False, logging_level=logging.ERROR)
    logging.getLogger("ray.tune").setLevel(logging.ERROR)
    # Members continued from their folders are first compared once all reach the step the
    # furthest one reports at; until then PBT leaves them be.
    comparisons = [0]
    for number in range(settings["population"]):
        folder = trial_dir(spec, number)
        if has_checkpoint(folder) and not finished(folder):
            comparisons.append(math.ceil(steps_done(folder) / settings["interval"]) * settings["interval"])
    scheduler = PopulationBasedTraining(
        time_attr="step",
        burn_in_period=max(comparisons),
        perturbation_interval=settings["interval"],
        hyperparam_mutations={"params": {d["name"]: mutation(d) for d in spec["space"]}},
        quantile_fraction=settings["quantile"],
        resample_probability=settings["resample_probability"],
        custom_explore_fn=within_range(spec),
        synch=True,
    )
    resources = {"cpu": settings["cpus_per_member"], "gpu": settings["gpus_per_member"]}
    environment = dict(os.environ)
    trainable = tune.with_resources(
        tune.with_parameters(train_member, spec=spec, environment=environment),
        resources,
    )
    storage = os.path.join(spec["run_dir"], "ray")
    # A continued sweep is a new Ray experiment whose members go on from their folders, with
    # the arguments their lineage reached: Ray's own restore does not bring synchronous PBT
    # back to a consistent state.
    attempt = len(glob.glob(os.path.join(storage, f"{EXPERIMENT}*")))
    lineage = schedules(spec)
    population = [
        lineage[number][-1][1] if number in lineage else params
        for number, params in enumerate(initial_population(spec))
    ]
    tuner = tune.Tuner(
        trainable,
        param_space={"params": tune.grid_search(population)},
        # A member's Ray worker is kept between its intervals and reused for the next member
        # to run, rather than started anew each time.
        tune_config=tune.TuneConfig(scheduler=scheduler, metric="objective",
                                    mode="max" if spec["maximize"] else "min", num_samples=1, reuse_actors=True),
        run_config=tune.RunConfig(
            storage_path=storage,
            name=EXPERIMENT if attempt == 0 else f"{EXPERIMENT}-{attempt}",
            verbose=0,
            # A finished member stops before PBT sees its last result, which would
            # otherwise send it back to an earlier checkpoint.
            stop={"step": spec["steps"]},
            checkpoint_config=tune.CheckpointConfig(num_to_keep=3),
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    tuner.fit()
    members = study(spec)
    write_json(os.path.join(spec["run_dir"], "study.json"), members)
    if any(member["state"] == "interrupted" for member in members["trials"]):
        return 130
    # Ray's copies of the members' checkpoints serve only a sweep still to be continued.
    for copy in glob.glob(os.path.join(storage, "*", "*", "checkpoint_*")):
        shutil.rmtree(copy)
    return 0


def schedules(spec):
    """Each member's arguments from each step on, from the lineage: a member that exploits
    another keeps that one's schedule before the step it took over at."""
    members = {}
    for record in read_jsonl(os.path.join(spec["run_dir"], "pbt.jsonl")):
        if "params" not in record:
            continue
        before = [] if "from" not in record else [
            entry for entry in members.get(record["from"], []) if entry[0] < record["step"]
        ]
        members[record["member"]] = before + [[record["step"], record["params"]]]
    return members


def study(spec):
    """The members as the trainer reports trials, from their folders and the lineage: the
    arguments they ended with, objective, state, the evaluations at each interval and the
    schedule of arguments."""
    lineage = schedules(spec)
    failures = {}
    for record in read_jsonl(os.path.join(spec["run_dir"], "pbt.jsonl")):
        failures.pop(record["member"], None)
        if "failed" in record:
            failures[record["member"]] = record["failed"]
    trials = []
    for number in range(spec["pbt"]["population"]):
        folder = trial_dir(spec, number)
        steps = steps_done(folder)
        final = read_json(os.path.join(folder, "eval.json"))
        value = objective_value(spec, folder, final) if final is not None else None
        if value is not None:
            state, cause = "complete", None
        elif number in failures:
            state, cause = "failed", failures[number]
        else:
            state, cause = "interrupted", None
        evaluations = read_jsonl(os.path.join(folder, "evaluations.jsonl"))
        trials.append(
            {
                "number": number,
                "state": state,
                "value": value,
                "params": lineage[number][-1][1] if number in lineage else {},
                "intermediate": [[e["step"], e[spec["metric"]]] for e in evaluations if finite(e.get(spec["metric"]))],
                "steps": steps,
                "run_dir": folder,
                "command": None,
                "cause": cause,
                "schedule": lineage.get(number, []),
            }
        )
    return {"metric": spec["metric"], "maximize": spec["maximize"], "trials": trials, "importances": []}


if __name__ == "__main__":
    sys.exit(run_main(drive))
