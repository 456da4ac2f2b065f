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
RUN/pbt.jsonl holds the lineage: each member's start and every exploit.

Exit codes: 0 done, 2 the spec does not start a run (one line on stderr), 130 interrupted.
"""

import ctypes
import fcntl
import random
import shutil
import signal
import tempfile

import glob
import logging
import warnings

import numpy

# Ray's console reporter and its INFO lines would bury the table the trainer prints at the end;
# the lineage is in RUN/pbt.jsonl, Ray's own records in RUN/ray.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
warnings.filterwarnings("ignore", message="Consider boosting PBT performance")

import ray
from ray import tune
from ray.tune.schedulers import PopulationBasedTraining

SNAPSHOT_FILE = "member.json"
# The member's own files, kept when it takes another member's snapshot.
OWN_FILES = {"sweep.log", "run.lock"}
EXPERIMENT = "pbt"
PR_SET_PDEATHSIG = 1


def trial_dir(spec, number):
    return os.path.join(spec["run_dir"], "trials", f"{number:04d}")


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
    """Replaces the member's run in `folder` with the one in `snapshot_dir`."""
    for name in os.listdir(folder):
        if name in OWN_FILES:
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)

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
            target = os.path.join(folder, relative, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            inside_checkpoints = relative.split(os.sep)[0] == "checkpoints"
            (link_or_copy if inside_checkpoints else shutil.copy2)(os.path.join(root, name), target)


def objective(spec, folder, step):
    """The objective at `step`: the evaluation the run made then, or its final one."""
    if step >= spec["steps"]:
        final = read_json(os.path.join(folder, "eval.json"))
        if final is not None and finite(final.get(spec["metric"])):
            return final[spec["metric"]]
    for evaluation in reversed(read_jsonl(os.path.join(folder, "evaluations.jsonl"))):
        if evaluation.get("step") == step and finite(evaluation.get(spec["metric"])):
            return evaluation[spec["metric"]]
    return None


def train_member(config, spec, environment):
    """One member of the population, run by Ray: trains interval by interval, reporting
    each with a snapshot, until the run's last step."""
    number = member_number()
    folder = trial_dir(spec, number)
    params = config["params"]
    os.makedirs(folder, exist_ok=True)
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        append_lineage(spec, {"member": number, "step": 0, "params": params})
        line = command(spec, params, folder)
    else:
        with checkpoint.as_directory() as taken:
            donor = read_json(os.path.join(taken, SNAPSHOT_FILE))
            if donor["member"] != number:
                adopt(taken, folder)
                append_lineage(
                    spec,
                    {"member": number, "step": donor["step"], "from": donor["member"], "from_params": donor["params"],
                     "params": params},
                )
        line = [spec["trainer"], "train", "--resume", folder, "--swap-policies"] + trial_arguments(spec, params)[0]
    interval = spec["pbt"]["interval"]
    # CUDA_VISIBLE_DEVICES is Ray's choice of this member's GPUs; the rest is the sweep's own
    # environment, not the worker's (Ray sets a thread count of its own there).
    child_environment = dict(environment)
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        child_environment["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    while True:
        step = steps_done(folder)
        if step >= spec["steps"]:
            value = objective(spec, folder, step)
            tune.report({"step": step, "objective": value if value is not None else math.nan})
            return
        pause = (step // interval + 1) * interval
        # The last interval ends the run as any run ends: its final evaluation and weights.
        until = ["--pause-after-steps", str(pause)] if pause < spec["steps"] else []
        log_path = os.path.join(folder, "sweep.log")
        with open(log_path, "a") as log:
            code = subprocess.call(
                line + until,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_environment,
                preexec_fn=die_with_parent,
            )
        if code != 0:
            with open(log_path, errors="replace") as log:
                raise RuntimeError(f"member {number}: exit code {code}: {last_error(log.read())}")
        step = steps_done(folder)
        value = objective(spec, folder, step)
        if value is None:
            raise RuntimeError(f"member {number}: no finite `{spec['metric']}` evaluated at step {step}")
        result = {"step": step, "objective": value}
        if step < spec["steps"]:
            with tempfile.TemporaryDirectory(dir=os.path.join(spec["run_dir"], "trials")) as taken:
                snapshot(folder, step, number, params, taken)
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(taken))
        else:
            tune.report(result)
            return
        line = [spec["trainer"], "train", "--resume", folder]


def mutation(dimension):
    """How PBT resamples a dimension: a list for choices (a step left or right, or any),
    otherwise a function drawing from the range."""
    if dimension["kind"] == "choice":
        return list(dimension["choices"])
    low, high, log = dimension["low"], dimension["high"], dimension["log"]

    def draw():
        value = math.exp(random.uniform(math.log(low), math.log(high))) if log else random.uniform(low, high)
        return round(value) if dimension["kind"] == "int" else value

    return draw


def initial_population(spec):
    """Each member's starting arguments, drawn from the space with the spec's seed."""
    rng = random.Random(spec["seed"])
    members = []
    for _ in range(spec["pbt"]["population"]):
        params = {}
        for dimension in spec["space"]:
            if dimension["kind"] == "choice":
                params[dimension["name"]] = rng.choice(dimension["choices"])
                continue
            low, high = dimension["low"], dimension["high"]
            if dimension["log"]:
                value = math.exp(rng.uniform(math.log(low), math.log(high)))
            else:
                value = rng.uniform(low, high)
            params[dimension["name"]] = round(value) if dimension["kind"] == "int" else value
        members.append({"params": params})
    return members


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
    scheduler = PopulationBasedTraining(
        time_attr="step",
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
    experiment = os.path.join(storage, EXPERIMENT)
    if resume and tune.Tuner.can_restore(experiment):
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"params": tune.grid_search([m["params"] for m in initial_population(spec)])},
            tune_config=tune.TuneConfig(scheduler=scheduler, metric="objective",
                                        mode="max" if spec["maximize"] else "min", num_samples=1),
            run_config=tune.RunConfig(
                storage_path=storage,
                name=EXPERIMENT,
                verbose=0,
                # A finished member stops before PBT sees its last result, which would
                # otherwise send it back to an earlier checkpoint.
                stop={"step": spec["steps"]},
                checkpoint_config=tune.CheckpointConfig(num_to_keep=3),
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
    grid = tuner.fit()
    write_json(os.path.join(spec["run_dir"], "study.json"), study(spec, grid))
    members = [steps_done(trial_dir(spec, n)) for n in range(settings["population"])]
    if all(steps >= spec["steps"] for steps in members):
        # Ray's copies of the members' checkpoints serve only a sweep still to be continued.
        for copy in glob.glob(os.path.join(experiment, "*", "checkpoint_*")):
            shutil.rmtree(copy)
        return 0
    # A member that failed is recorded with its cause; the others went on to the end.
    return 0 if any_errors(grid) else 130


def any_errors(grid):
    return any(result.error is not None for result in grid)


def schedules(spec):
    """Each member's arguments from each step on, from the lineage: a member that exploits
    another keeps that one's schedule before the step it took over at."""
    members = {}
    for record in read_jsonl(os.path.join(spec["run_dir"], "pbt.jsonl")):
        before = [] if "from" not in record else [
            entry for entry in members.get(record["from"], []) if entry[0] < record["step"]
        ]
        members[record["member"]] = before + [[record["step"], record["params"]]]
    return members


def study(spec, grid):
    """The members as the trainer reports trials: final arguments, objective, state, the
    values reported at each interval and the schedule of arguments."""
    lineage = schedules(spec)
    trials = []
    for result in grid:
        number = int(result.metrics.get("trial_id", "0").rsplit("_", 1)[-1]) if result.metrics else None
        if number is None:
            continue
        folder = trial_dir(spec, number)
        history = result.metrics_dataframe
        intermediate = []
        if history is not None and "step" in history:
            intermediate = [[int(s), float(v)] for s, v in zip(history["step"], history["objective"]) if finite(v)]
        steps = steps_done(folder)
        value = result.metrics.get("objective") if result.error is None and steps >= spec["steps"] else None
        cause = None
        if result.error is not None:
            cause = str(result.error).strip().splitlines()[-1]
        trials.append(
            {
                "number": number,
                "state": "complete" if value is not None and finite(value) else (
                    "failed" if result.error is not None else "interrupted"),
                "value": value if value is not None and finite(value) else None,
                "params": result.config["params"],
                "intermediate": intermediate,
                "steps": steps,
                "run_dir": folder,
                "command": None,
                "cause": cause,
                "schedule": lineage.get(number, []),
            }
        )
    trials.sort(key=lambda t: t["number"])
    return {"metric": spec["metric"], "maximize": spec["maximize"], "trials": trials, "importances": []}


if __name__ == "__main__":
    sys.exit(run_main(drive))
