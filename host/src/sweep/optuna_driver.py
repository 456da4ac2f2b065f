"""The search side of `trainer sweep`: an Optuna study whose trials are `trainer train` runs.

This continues driver_common.py. `trainer sweep` checks the spec, writes it resolved to
RUN/sweep.json and runs the two files with that path. The driver talks to the trainer only through command lines and the files a run
writes: each trial is `trainer train ... --run-dir RUN/trials/NNNN`, its evaluations (read
from evaluations.jsonl as they appear) are the trial's intermediate values, a pruned trial
is sent SIGTERM (the trainer checkpoints and exits), and the objective is read from the run's
evaluations and eval.json. At the end the study is written to RUN/study.json for the trainer
to print and plot.

Exit codes: 0 done, 2 the spec does not start a run (one line on stderr), 130 interrupted.
"""

import contextlib
import fcntl
import shlex
import signal
import threading
import time

import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)

POLL_SECONDS = 0.2
STATES = {
    optuna.trial.TrialState.COMPLETE: "complete",
    optuna.trial.TrialState.PRUNED: "pruned",
    optuna.trial.TrialState.FAIL: "failed",
    optuna.trial.TrialState.RUNNING: "running",
    optuna.trial.TrialState.WAITING: "waiting",
}


def sampler(name, seed):
    return {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "gp": optuna.samplers.GPSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
    }[name](seed=seed)


def pruner(spec):
    name = spec["pruner"]
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec["pruner_startup_trials"], n_warmup_steps=0)
    if name == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=spec["steps"])
    return optuna.pruners.NopPruner()


def storage(spec):
    kind = spec["storage"]["kind"]
    if kind == "memory":
        return None
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(spec["storage"]["path"]))
    return optuna.storages.RDBStorage(spec["storage"]["url"])


def suggest(trial, dimension):
    name, kind = dimension["name"], dimension["kind"]
    if kind == "choice":
        return trial.suggest_categorical(name, dimension["choices"])
    if kind == "int":
        return trial.suggest_int(name, dimension["low"], dimension["high"], log=dimension["log"])
    return trial.suggest_float(name, dimension["low"], dimension["high"], log=dimension["log"])


class Sweep:
    def __init__(self, spec):
        self.spec = spec
        self.run_dir = spec["run_dir"]
        self.metric = spec["metric"]
        self.maximize = spec["maximize"]
        kept = storage(spec)

        def study(sampler):
            return optuna.create_study(
                study_name=spec["study"],
                storage=kept,
                sampler=sampler,
                pruner=pruner(spec),
                direction="maximize" if self.maximize else "minimize",
                load_if_exists=True,
            )

        # A process joining a study (or continuing one) draws from a seed of its own, so that
        # two processes on one study do not propose the same arguments; a new study with
        # one process is reproducible from the spec's seed.
        joined = len(study(optuna.samplers.RandomSampler()).get_trials(deepcopy=False))
        self.study = study(sampler(spec["sampler"], spec["seed"] + joined))
        self.stopping = threading.Event()
        self.failures = []
        self.children = {}
        self.children_lock = threading.Lock()
        self.ask_lock_path = os.path.join(self.run_dir, "trials", ".ask.lock")

    @contextlib.contextmanager
    def claim(self):
        """Held while counting the study's trials and asking for a new one, so that sweep
        processes sharing one file storage start no more than the budget between them."""
        with open(self.ask_lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def run(self, resume):
        os.makedirs(os.path.join(self.run_dir, "trials"), exist_ok=True)
        if not resume:
            dry_run_check(self.spec)
        workers = [threading.Thread(target=self.worker, args=(resume,)) for _ in range(self.spec["parallel"])]
        for worker in workers:
            worker.start()
        try:
            while any(worker.is_alive() for worker in workers):
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            self.stop()
            for worker in workers:
                worker.join()
            self.write_study()
            return 130
        self.write_study()
        if self.failures:
            # The driver itself failed (the storage, say), not a trial: the traceback says where.
            raise self.failures[0]
        return 0

    def stop(self):
        self.stopping.set()
        with self.children_lock:
            for child in self.children.values():
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)

    def next_trial(self, resume):
        """A trial to run and the steps it has reported already: first one an interrupted
        sweep left (with `resume`), then a new one while the budget lasts; `None` when there
        is none."""
        with self.claim():
            trials = self.study.get_trials(deepcopy=False)
            if resume:
                for frozen in trials:
                    if frozen.state == optuna.trial.TrialState.RUNNING and frozen.user_attrs.get("interrupted"):
                        self.study._storage.set_trial_user_attr(frozen._trial_id, "interrupted", False)
                        trial = optuna.trial.Trial(self.study, frozen._trial_id)
                        return trial, set(frozen.intermediate_values)
            if len(trials) >= self.spec["trials"]:
                return None, None
            return self.study.ask(), None

    def worker(self, resume):
        try:
            while not self.stopping.is_set():
                trial, reported = self.next_trial(resume)
                if trial is None:
                    return
                self.run_trial(trial, reported)
        except Exception as failure:
            self.failures.append(failure)
            self.stop()

    def run_trial(self, trial, reported):
        """Runs `trial`, or continues it from its checkpoint when it has `reported` steps."""
        continued = reported is not None
        run_dir = trial_dir(self.spec, trial.number)
        if continued:
            line = [self.spec["trainer"], "train", "--resume", run_dir] + self.spec["resume_args"]
        else:
            params = {d["name"]: suggest(trial, d) for d in self.spec["space"]}
            line = command(self.spec, params, run_dir)
            trial.set_user_attr("command", shlex.join(line))
            trial.set_user_attr("run_dir", run_dir)
        if self.spec["trial_seconds"]:
            line += ["--time-limit", f"{self.spec['trial_seconds']}s"]
        os.makedirs(run_dir, exist_ok=True)
        log_path = os.path.join(run_dir, "sweep.log")
        with open(log_path, "a") as log:
            child = subprocess.Popen(line, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        with self.children_lock:
            self.children[trial.number] = child
        reported, pruned = reported or set(), False
        evaluations_path = os.path.join(run_dir, "evaluations.jsonl")
        while True:
            code = child.poll()
            for evaluation in read_jsonl(evaluations_path):
                step, value = evaluation.get("step"), evaluation.get(self.metric)
                if step in reported or not finite(value):
                    continue
                reported.add(step)
                trial.report(value, step)
                if not pruned and trial.should_prune():
                    pruned = True
                    trial.set_user_attr("cause", f"pruned at step {step}")
                    with contextlib.suppress(ProcessLookupError):
                        child.send_signal(signal.SIGTERM)
            if code is not None:
                break
            time.sleep(POLL_SECONDS)
        with self.children_lock:
            del self.children[trial.number]
        self.finish(trial, code, pruned, run_dir, log_path)

    def finish(self, trial, code, pruned, run_dir, log_path):
        steps = steps_done(run_dir)
        trial.set_user_attr("steps", steps)
        final = read_json(os.path.join(run_dir, "eval.json"))
        if self.stopping.is_set() and code == 0 and final is None and not pruned:
            # Ctrl-C: the run checkpointed; `trainer sweep --resume` continues it.
            trial.set_user_attr("interrupted", True)
            return
        if pruned:
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return
        if code != 0:
            with open(log_path, errors="replace") as log:
                trial.set_user_attr("cause", f"exit code {code}: {last_error(log.read())}")
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        if final is None:
            trial.set_user_attr("cause", f"time limit reached at step {steps}; resumable")
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return
        value = objective_value(self.spec, run_dir, final)
        if value is None:
            trial.set_user_attr("cause", f"no finite `{self.metric}` in the run's evaluations")
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        self.study.tell(trial, value)

    def write_study(self):
        trials = []
        for frozen in self.study.get_trials(deepcopy=False):
            attrs = frozen.user_attrs
            state = STATES.get(frozen.state, str(frozen.state))
            if state == "running" and attrs.get("interrupted"):
                state = "interrupted"
            trials.append(
                {
                    "number": frozen.number,
                    "state": state,
                    "value": frozen.value,
                    "params": frozen.params,
                    "intermediate": sorted(frozen.intermediate_values.items()),
                    "steps": attrs.get("steps"),
                    "run_dir": attrs.get("run_dir"),
                    "command": attrs.get("command"),
                    "cause": attrs.get("cause"),
                }
            )
        importances = {}
        complete = [t for t in trials if t["state"] == "complete"]
        if len(complete) >= 2 and self.spec["space"]:
            # PED-ANOVA: how much each argument matters to reaching the best trials' values.
            # Optuna's own, needing no scikit-learn (which its default, fANOVA, does), and
            # deterministic.
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            importances = optuna.importance.get_param_importances(self.study, evaluator=evaluator)
        study = {
            "metric": self.metric,
            "maximize": self.maximize,
            "trials": trials,
            "importances": [[name, value] for name, value in importances.items()],
        }
        write_json(os.path.join(self.run_dir, "study.json"), study)


if __name__ == "__main__":
    sys.exit(run_main(lambda spec, resume: Sweep(spec).run(resume)))
