//! A training run of a [`Task`], steered by one or more policies, from start or from a
//! checkpoint: the step loop, the policies' observations and decisions, evaluation,
//! checkpoints, and everything the run writes.

use super::best::{BEST_DIR, BestKeeper};
use super::checkpoint::{
    self, Checkpoint, CheckpointContents, LastStep, PendingEvaluation, PolicyRecord, TrainerState,
};
use super::config::{PolicySwap, RUN_FILE, Resume, RunConfig, RunOptions, RunPlan, SavedRun, TrainOutcome};
use super::error::{EngineError, WriteProblem, io_error};
use super::fingerprint::{DataChange, DataFingerprint, DataRecord};
use super::knobs::KnobState;
use super::loss_gradients::LossGradientMeter;
use super::optimizer::{AdamW, AdamWConfig, OptimizedParam, OptimizerSnapshot};
use super::snapshot::{SnapshotPoint, Snapshots};
use super::task::{Backward, Scores, StepKnobs, Task, Visual};
use super::trace::{SavedSpec, decision_records, swap_decision_records};
use crate::distributed::{DistributedError, Team};
use crate::files::{FileError, write_atomically};
use crate::models::groups::Group;
use crate::models::pretrained;
use crate::policy::{
    AugmentationKnob, Depth, Observation, ParamGroup, PolicyError, PolicyInstance, PolicyRuntime, PolicySet,
    PolicySource, Rollback, RollbackSource, RunSpec, SandboxLimits, StepDecision, continues_state,
};
use crate::report::{EventWriter, HistogramSummary, JsonFloat, JsonLines, PLOTS_DIR, Progress, plot_run};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Serialize)]
struct MetricsRecord<'a> {
    step: u64,
    epoch: u64,
    loss: JsonFloat,
    losses: BTreeMap<&'a str, JsonFloat>,
    lr: BTreeMap<&'a str, JsonFloat>,
    grad_norm: JsonFloat,
    logit_scale: JsonFloat,
    images_per_second: JsonFloat,
    /// Samples `--skip-bad-samples` left out of this step's batch.
    #[serde(skip_serializing_if = "is_zero")]
    skipped_samples: u64,
    /// The update was skipped because the loss or gradient norm was not finite.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    skipped: bool,
    /// Each weighted loss term's gradient norm, on steps a policy asked for them.
    #[serde(skip_serializing_if = "Option::is_none")]
    loss_gradients: Option<BTreeMap<&'a str, JsonFloat>>,
}

/// Checks what can be checked before the task is opened (which may read a whole data set):
/// the settings, the device, and that `run_dir` holds no earlier run unless it may be
/// replaced.
pub fn check_new_run(config: &RunConfig, options: &RunOptions) -> Result<(), EngineError> {
    validate_config(config, options)?;
    let run_dir = &options.run_dir;
    // Rank 0 alone owns the run directory (the others may see what it has begun to write).
    if options.team.is_leader() && holds_run(run_dir) && !options.overwrite {
        return Err(EngineError::Config(format!(
            "--run-dir {}: already holds a run; choose another directory, pass --overwrite, or --resume it",
            run_dir.display()
        )));
    }
    Ok(())
}

/// Starts a new run of `task`, whose own settings `task_section` are saved in `run.json`.
/// `data` is the fingerprint of the data it trains on, recorded there too.
pub fn train(
    config: &RunConfig,
    task: Box<dyn Task>,
    task_section: serde_json::Value,
    data: DataFingerprint,
    options: &RunOptions,
) -> Result<TrainOutcome, EngineError> {
    check_new_run(config, options)?;
    if options.team.is_leader() {
        clear_run_dir(&options.run_dir)?;
    }
    let data = DataRecord { fingerprint: data, changes: Vec::new() };
    Run::start(config, task, task_section, data, options, None)?.train(options)
}

/// What a new run of `task` would train, found by opening its policies (which check their
/// arguments) and nothing else: no folder is read or written. `trainer train --dry-run`;
/// the settings were checked with [`validate_config`] before the task was opened.
pub fn plan(config: &RunConfig, task: Box<dyn Task>, options: &RunOptions) -> Result<RunPlan, EngineError> {
    let metrics: Vec<String> = task.metric_names().iter().map(|name| name.to_string()).collect();
    check_best_metric(config, task.metric_names())?;
    let (_, params) = optimized_params(task.as_ref());
    let spec = run_spec(config, task.as_ref(), &params);
    let limits = SandboxLimits { fuel_per_call: config.policy_fuel, ..Default::default() };
    let runtime = PolicyRuntime::new(limits, options.policy_cache.clone());
    PolicySet::start(&runtime, &config.policies, &config.shadow_policies, spec.clone())?;
    Ok(RunPlan {
        groups: spec.groups.iter().map(|group| group.name.clone()).collect(),
        losses: spec.losses,
        metrics,
        steps: config.steps,
        steps_per_epoch: spec.steps_per_epoch,
    })
}

fn check_best_metric(config: &RunConfig, metric_names: &[&str]) -> Result<(), EngineError> {
    match &config.best_metric {
        Some(metric) if !metric_names.contains(&metric.name.as_str()) => Err(EngineError::Config(format!(
            "--best-metric {}: not a metric of this run (choose from {})",
            metric.name,
            metric_names.join(", ")
        ))),
        _ => Ok(()),
    }
}

/// The task's variables in name order (the order every rank broadcasts them in), and those
/// the optimizer steps, each with its group and whether it takes weight decay.
fn optimized_params(task: &dyn Task) -> (Vec<Tensor>, Vec<OptimizedParam>) {
    let mut variables: Vec<(String, Tensor)> = task.var_store().variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    let all_weights = variables.iter().map(|(_, tensor)| tensor.shallow_clone()).collect();
    let params = variables
        .into_iter()
        .filter_map(|(name, tensor)| {
            let group = task.parameter_group(&name)?;
            let decay = tensor.dim() >= 2 && name != "logit_scale";
            Some(OptimizedParam { name, tensor, group, decay })
        })
        .collect();
    (all_weights, params)
}

/// What the policies are told of the run in `init`.
fn run_spec(config: &RunConfig, task: &dyn Task, params: &[OptimizedParam]) -> RunSpec {
    RunSpec {
        groups: task
            .groups()
            .iter()
            .enumerate()
            .map(|(index, group)| ParamGroup {
                name: group.name.clone(),
                base_lr: config.lr,
                param_count: params.iter().filter(|p| p.group == index).map(|p| p.tensor.numel() as u64).sum(),
                frozen: false,
                tower: group.tower.clone(),
                depth: group.depth.map(|(index, count)| Depth { index, count }),
            })
            .collect(),
        losses: task.loss_names().iter().map(|name| name.to_string()).collect(),
        augmentation: task
            .augmentation_knobs()
            .iter()
            .map(|k| AugmentationKnob { name: k.name.into(), min: k.min, max: k.max, default: k.default })
            .collect(),
        metrics: task.metric_names().iter().map(|m| m.to_string()).collect(),
        total_steps: config.steps,
        steps_per_epoch: task.steps_per_epoch(),
        seed: config.seed,
        args: vec![],
    }
}

/// Checks what can be checked before the task of a resumed run is opened: that the run has
/// a checkpoint, that other policies are swapped in only when asked to, and that the data's
/// files are those it started on, unless `--data-changed`.
pub fn check_resume(saved: &SavedRun, options: &RunOptions, resume: &Resume) -> Result<(), EngineError> {
    if let Some(record) = &saved.data
        && !resume.data_changed
        && let Some(change) = record.fingerprint.files_changed()
    {
        return Err(data_changed_error(&options.run_dir, &change));
    }
    if checkpoint::latest(&options.run_dir)?.is_none() {
        return Err(EngineError::Config(format!(
            "--resume {}: the run has no checkpoint to resume from",
            options.run_dir.display()
        )));
    }
    if let Some(policies) = &resume.policies
        && *policies != saved.train.policies
        && !resume.swap_policies
    {
        return Err(EngineError::Config(format!(
            "--resume {}: the run was trained with other policies ({}); pass --swap-policies to continue with the new ones",
            options.run_dir.display(),
            describe_sources(&saved.train.policies)
        )));
    }
    Ok(())
}

fn data_changed_error(run_dir: &Path, change: &str) -> EngineError {
    EngineError::Config(format!(
        "--resume {}: {change} since the run started; an exact resume needs the data it started on (pass \
         --data-changed to go on with the data as it is now)",
        run_dir.display()
    ))
}

/// Continues the run saved as `saved` in `options.run_dir` from its latest checkpoint, with
/// `task` opened from the saved task section on the data `data` fingerprints.
pub fn resume(
    saved: SavedRun,
    task: Box<dyn Task>,
    data: DataFingerprint,
    options: &RunOptions,
    resume: &Resume,
) -> Result<TrainOutcome, EngineError> {
    check_resume(&saved, options, resume)?;
    let (checkpoint, passed_over) = checkpoint::load_newest(&options.run_dir)?;
    let mut data_record = DataRecord { fingerprint: data, changes: Vec::new() };
    let mut data_lines = Vec::new();
    match saved.data {
        Some(DataRecord { fingerprint, changes }) => {
            data_record.changes = changes;
            if let Some(change) = fingerprint.change_to(&data_record.fingerprint) {
                if !resume.data_changed {
                    return Err(data_changed_error(&options.run_dir, &change));
                }
                let step = checkpoint.trainer.steps_done;
                data_lines.push(format!(
                    "--data-changed: going on after step {step} although {change}; the rest of the run is not \
                     what an uninterrupted one would train"
                ));
                data_record.changes.push(DataChange { step, change });
            }
        }
        None => data_lines.push("run.json had no record of its data; it records the data as it is now".into()),
    }
    let mut config = saved.train;
    let saved_total = config.steps;
    if let Some(policies) = &resume.policies {
        config.policies = policies.clone();
    }
    if let Some(shadows) = &resume.shadow_policies {
        config.shadow_policies = shadows.clone();
    }
    // Neither changes what the run computes: a user may change them on resume (after a
    // full disk, say).
    config.keep_checkpoints = resume.keep_checkpoints.unwrap_or(config.keep_checkpoints);
    config.max_skipped_steps = resume.max_skipped_steps.unwrap_or(config.max_skipped_steps);
    if let Some(steps) = resume.steps {
        let done = checkpoint.trainer.steps_done;
        if steps < done {
            return Err(EngineError::Config(format!(
                "--steps {steps}: checkpoint {} is already {done} steps in; give at least {done}",
                checkpoint.dir.display()
            )));
        }
        config.steps = steps;
    }
    validate_config(&config, options)?;
    let resumed = Resumed {
        checkpoint,
        swap_policies: resume.swap_policies,
        passed_over,
        saved_total,
        data_lines,
        earlier_swaps: saved.policy_swaps,
    };
    Run::start(&config, task, saved.task, data_record, options, Some(resumed))?.train(options)
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

fn describe_sources(sources: &[PolicySource]) -> String {
    sources.iter().map(PolicySource::to_string).collect::<Vec<_>>().join(", ")
}

/// A checkpoint to continue from, and how.
struct Resumed {
    checkpoint: Checkpoint,
    swap_policies: bool,
    /// Newer checkpoints that did not load, one line each.
    passed_over: Vec<String>,
    /// The length the run had before this resume.
    saved_total: u64,
    /// What to say about its data (changed, or not recorded before).
    data_lines: Vec<String>,
    /// The policy swaps of the run so far, from its run.json.
    earlier_swaps: Vec<PolicySwap>,
}

/// Everything a run holds between steps.
struct Run {
    config: RunConfig,
    run_dir: PathBuf,
    device: Device,
    /// Rank 0 writes the run's files; every rank trains the same replica of the model.
    team: Arc<Team>,
    policies: PolicySet,
    // Keep the runtime (and its deadline ticker) alive as long as the policies.
    _runtime: PolicyRuntime,
    task: Box<dyn Task>,
    optimizer: AdamW,
    group_params: Vec<Vec<Tensor>>,
    best: Option<BestKeeper>,
    state: TrainerState,
    metrics: JsonLines,
    decisions: JsonLines,
    evaluations: JsonLines,
    tensorboard: EventWriter,
    /// TensorBoard tags of the learning rates and evaluation metrics, made once.
    lr_tags: Vec<String>,
    eval_tags: Vec<String>,
    loss_tags: Vec<String>,
    log: std::io::LineWriter<Box<dyn Write>>,
    progress: Progress,
    /// This process's time limit, and when it started training: the elapsed time a resumed
    /// run starts from, and the clock this process adds to it.
    time_limit: Option<std::time::Duration>,
    elapsed_at_start: f64,
    clock: Instant,
    snapshots: Snapshots,
}

impl Run {
    fn start(
        config: &RunConfig,
        task: Box<dyn Task>,
        task_section: serde_json::Value,
        data: DataRecord,
        options: &RunOptions,
        from: Option<Resumed>,
    ) -> Result<Self, EngineError> {
        let run_dir = options.run_dir.clone();
        let device = options.device;
        let team = options.team.clone();
        let leader = team.is_leader();
        let metric_names = task.metric_names().to_vec();
        check_best_metric(config, &metric_names)?;
        let best = match &config.best_metric {
            Some(metric) if leader => Some(BestKeeper::open(&run_dir, metric.clone(), from.is_some())?),
            _ => None,
        };
        let groups: Vec<Group> = task.groups().to_vec();
        let (all_weights, params) = optimized_params(task.as_ref());
        let mut group_params: Vec<Vec<Tensor>> = groups.iter().map(|_| Vec::new()).collect();
        for param in &params {
            group_params[param.group].push(param.tensor.shallow_clone());
        }
        let spec = run_spec(config, task.as_ref(), &params);
        let mut optimizer = AdamW::new(params, AdamWConfig { weight_decay: config.weight_decay, ..Default::default() });
        let saved_spec = SavedSpec::from(&spec);
        let limits = SandboxLimits { fuel_per_call: config.policy_fuel, ..Default::default() };
        let runtime = PolicyRuntime::new(limits, options.policy_cache.clone());
        let mut policies = PolicySet::start(&runtime, &config.policies, &config.shadow_policies, spec)?;
        let mut snapshots = Snapshots::new(config.snapshots);

        let fresh_state = TrainerState::new(KnobState::new(
            vec![config.lr; groups.len()],
            vec![1.0; task.loss_names().len()],
            task.augmentation_knobs().iter().map(|k| k.default).collect(),
            config.policies.len(),
        ));
        let log_path = run_dir.join("run.log");
        let resuming = from.is_some();
        let log_file: Box<dyn Write> = if leader {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(resuming)
                    .write(true)
                    .truncate(!resuming)
                    .open(&log_path)
                    .map_err(io_error(&log_path))?,
            )
        } else {
            Box::new(std::io::sink())
        };
        let mut log = std::io::LineWriter::new(log_file);

        let write_run_record = |policy_swaps: Vec<PolicySwap>| {
            if !leader {
                return Ok(());
            }
            let saved = SavedRun {
                train: config.clone(),
                task: task_section.clone(),
                model: task.model_config(),
                spec: Some(saved_spec.clone()),
                data: Some(data.clone()),
                policy_swaps,
            };
            write_json(&run_dir.join(RUN_FILE), &saved)
        };
        // The swap this resume makes, recorded in decisions.jsonl once it is reopened.
        let mut swap_records = Vec::new();
        let state = match from {
            None => {
                write_run_record(Vec::new())?;
                fresh_state
            }
            Some(Resumed { checkpoint, swap_policies, passed_over, saved_total, data_lines, earlier_swaps }) => {
                for line in data_lines {
                    eprintln!("{line}");
                    let _ = writeln!(log, "{line}");
                }
                for line in passed_over {
                    // Exact either way: the steps after the older checkpoint are trained again.
                    let line = format!("warning: passed over a checkpoint that does not load: {line}");
                    eprintln!("{line}");
                    let _ = writeln!(log, "{line}");
                }
                pretrained::load_weights(task.var_store(), &checkpoint.model_file)?;
                optimizer
                    .load_state(&checkpoint.optimizer)
                    .map_err(|problem| FileError::format(&checkpoint.dir.join(checkpoint::OPTIMIZER_FILE), problem))?;
                for (point, tensors) in checkpoint.trainer.snapshots.iter().zip(&checkpoint.snapshots) {
                    let snapshot = OptimizerSnapshot::from_named(tensors)
                        .map_err(|problem| FileError::format(&checkpoint.dir, format!("a snapshot: {problem}")))?;
                    snapshots.keep(*point, snapshot);
                }
                let kept = restore_policies(&mut policies, &checkpoint, swap_policies, &mut log)?;
                let steps_done = checkpoint.trainer.steps_done;
                // Swaps after the checkpoint resumed from were undone with the steps after it.
                let mut swaps: Vec<PolicySwap> =
                    earlier_swaps.into_iter().filter(|swap| swap.step < steps_done).collect();
                let before: Vec<PolicySource> =
                    checkpoint.policies.iter().filter(|record| !record.shadow).map(|r| r.source.clone()).collect();
                if before != config.policies {
                    let line = format!(
                        "policies swapped at step {steps_done}: {} instead of {}",
                        describe_sources(&config.policies),
                        describe_sources(&before)
                    );
                    let _ = writeln!(log, "{line}");
                    let swapped_in: Vec<(&PolicySource, bool)> = config.policies.iter().zip(kept).collect();
                    swap_records = swap_decision_records(steps_done, &swapped_in);
                    swaps.push(PolicySwap { step: steps_done, from: before, to: config.policies.clone() });
                }
                if saved_total != config.steps {
                    let line = format!(
                        "run length changed from {saved_total} to {} steps at step {}; the policies re-plan from there",
                        config.steps, checkpoint.trainer.steps_done
                    );
                    println!("{line}");
                    let _ = writeln!(log, "{line}");
                }
                // Only now that every policy took its state: what a later resume reads must
                // be what this part of the run trains with.
                write_run_record(swaps)?;
                let _ = writeln!(
                    log,
                    "resumed from {} after step {}",
                    checkpoint.dir.display(),
                    checkpoint.trainer.steps_done
                );
                let mut trainer = checkpoint.trainer;
                if trainer.knobs.fit_policies(config.policies.len()) {
                    let _ = writeln!(log, "the policies changed: every learning-rate multiplier starts again at 1");
                }
                trainer.knobs.fit_augmentation(task.augmentation_knobs());
                if let Some(fault) = &checkpoint.fault {
                    let _ = writeln!(log, "that checkpoint was saved after a fault: {fault}");
                    // Continuing is the user's call (new policies, say): the divergence guard
                    // counts skipped steps afresh rather than stopping at once.
                    trainer.skipped.end_streak();
                }
                trainer
            }
        };
        let (steps_done, steps_elapsed) = (state.steps_done, state.elapsed_seconds);
        let keep = |record: &serde_json::Value| record["step"].as_u64().is_some_and(|step| step < steps_done);
        let keep_evaluations =
            |record: &serde_json::Value| record["step"].as_u64().is_some_and(|step| step <= steps_done);
        let open = |name: &str, keep: &dyn Fn(&serde_json::Value) -> bool| {
            let path = run_dir.join(name);
            match (leader, resuming) {
                (false, _) => Ok(JsonLines::discard(&path)),
                (true, true) => JsonLines::reopen(&path, keep).map_err(io_error(&path)),
                (true, false) => JsonLines::create(&path).map_err(io_error(&path)),
            }
        };
        let metrics = open("metrics.jsonl", &keep)?;
        let mut decisions = open("decisions.jsonl", &keep)?;
        for record in &swap_records {
            decisions.write(record).map_err(io_error(decisions.path()))?;
        }
        let evaluations = open("evaluations.jsonl", &keep_evaluations)?;
        // A resumed run adds a new event file; TensorBoard reads them all.
        let tensorboard = if leader {
            EventWriter::create(&run_dir).map_err(io_error(&run_dir))?
        } else {
            EventWriter::discard(&run_dir)
        };
        // Every replica starts from rank 0's weights (the same checkpoint on resume; rank 0's
        // draw of the random initialisation otherwise).
        team.broadcast_from_leader(&all_weights, "the broadcast of rank 0's weights")?;

        let progress = if leader { Progress::new(config.steps) } else { Progress::silent() };
        progress.set_position(steps_done);
        let mut run = Run {
            config: config.clone(),
            run_dir,
            device,
            team,
            policies,
            _runtime: runtime,
            eval_tags: metric_names.iter().map(|name| format!("eval/{name}")).collect(),
            loss_tags: task.loss_names().iter().map(|name| format!("loss/{name}")).collect(),
            lr_tags: groups.iter().map(|group| format!("lr/{}", group.name)).collect(),
            task,
            optimizer,
            group_params,
            best,
            state,
            metrics,
            decisions,
            evaluations,
            tensorboard,
            log,
            progress,
            time_limit: options.time_limit,
            elapsed_at_start: steps_elapsed,
            clock: Instant::now(),
            snapshots,
        };
        run.apply_freezing(&(0..groups.len()).collect::<Vec<_>>());
        run.report_start();
        Ok(run)
    }

    /// The start-up report: the tokenizer, the policies, and which one owns each knob.
    fn report_start(&mut self) {
        let mut lines = self.task.describe();
        for (source, instance) in self.policies.members_mut() {
            lines.push(format!(
                "policy `{}`: {} (sha256 {})",
                instance.name(),
                source.origin(),
                &instance.sha256()[..12]
            ));
        }
        for (knob, shared, claimers) in self.policies.ownership() {
            let quoted: Vec<String> = claimers.iter().map(|name| format!("`{name}`")).collect();
            let owner = match (shared, quoted.len()) {
                (_, 0) => "trainer default".to_string(),
                (true, _) => format!("the product of {}", quoted.join(" × ")),
                (false, _) => format!("owned by {}", quoted[0]),
            };
            lines.push(format!("  {knob:<15} {owner}"));
        }
        for (source, instance) in self.policies.shadows_mut() {
            lines.push(format!(
                "shadow policy `{}`: {} (sha256 {}): decisions recorded, not applied",
                instance.name(),
                source.origin(),
                &instance.sha256()[..12]
            ));
        }
        let skipped = self.task.skipped_at_start();
        if !skipped.is_empty() {
            lines.push(format!("--skip-bad-samples: left out {} samples (listed in run.log)", skipped.len()));
            for line in skipped {
                let _ = writeln!(self.log, "skipped {line}");
            }
        }
        for line in lines {
            self.say(&line);
        }
        self.forward_policy_logs(None);
    }

    /// PNG plots of the run so far. A failure to plot is reported, not fatal: the run's
    /// results are already written.
    fn plot(&mut self) {
        if let Err(err) = plot_run(&self.run_dir) {
            self.say(&format!("warning: no plots: {err}"));
        }
    }

    fn say(&mut self, line: &str) {
        let _ = writeln!(self.log, "{line}");
        self.progress.println(line);
    }

    fn forward_policy_logs(&mut self, step: Option<u64>) {
        for (policy, line) in self.policies.take_logs() {
            let at = step.map(|s| format!(" step {s}")).unwrap_or_default();
            let text = format!("[policy {policy}{at}] {:?}: {}", line.level, line.message);
            let _ = writeln!(self.log, "{text}");
            if matches!(line.level, crate::policy::LogLevel::Warn | crate::policy::LogLevel::Error) {
                self.progress.println(&text);
            }
        }
    }

    fn train(mut self, options: &RunOptions) -> Result<TrainOutcome, EngineError> {
        self.train_steps(options).map_err(|error| explain_write_failure(&self.run_dir, error))
    }

    fn train_steps(&mut self, options: &RunOptions) -> Result<TrainOutcome, EngineError> {
        let started = Instant::now();
        // SIGINT or SIGTERM (Ctrl-C, a preempted job) ends the step in flight, then the run
        // saves a checkpoint and exits as on --pause-after-steps.
        let interrupted = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(signal, interrupted.clone()).map_err(io_error(Path::new("signal handler")))?;
        }
        while self.state.steps_done < self.config.steps && self.state.stopped_by.is_none() {
            let step = self.state.steps_done;
            let decision = match self.policies.decide(&self.observation()) {
                Ok(decision) => decision,
                Err(error) => {
                    // The others learn of it before they wait on this rank in a collective.
                    let _ = self.agree(step, None, false);
                    return Err(self.policy_fault(error));
                }
            };
            let interrupt = self.agree(step, Some(&decision), interrupted.load(Ordering::Relaxed))?;
            self.forward_policy_logs(Some(step));
            self.record_decisions(step, &decision)?;
            let changed = self.state.knobs.apply(&decision);
            self.apply_freezing(&changed);
            self.state.pending_evaluation = None;
            self.snapshot_and_roll_back(step, &decision)?;

            self.step(step, decision.merged.measure_loss_gradients)?;
            self.state.steps_done = step + 1;
            // The policies saw every non-finite step before this one, so one that stops or
            // acts on the first (early_stopping does) does so before the guard.
            if self.diverged() {
                return Err(self.divergence());
            }
            let done = self.state.steps_done;
            let scheduled = |every: u64| every > 0 && done.is_multiple_of(every);
            if scheduled(self.config.histogram_every) {
                self.write_histograms(done)?;
            }
            if decision.merged.evaluate || scheduled(self.config.eval_every) {
                self.evaluate()?;
            }
            if let Some(stop) = decision.stop {
                // Saved with the state, so a pause here or a failed final/ does not train on.
                self.state.stopped_by = Some(stop);
            }
            // Rank 0's clock decides, through the elapsed time every rank holds.
            let out_of_time = self.seconds_left() == Some(0.0) && done < self.config.steps;
            if out_of_time {
                let limit = self.time_limit.map(|limit| limit.as_secs_f64()).unwrap_or_default();
                self.say(&format!("--time-limit: {limit} s of training reached after step {done}; pausing"));
            }
            let paused = options.pause_after_steps == Some(done) || interrupt || out_of_time;
            // With periodic checkpoints, the last step gets one too (as Hugging Face's Trainer
            // does), so a finished run can be resumed with a longer --steps.
            let last = done == self.config.steps && self.config.checkpoint_every > 0;
            let regular = decision.merged.checkpoint || scheduled(self.config.checkpoint_every) || last;
            if regular || paused {
                if regular {
                    // Before the save, so that the checkpoint names itself: a run resumed
                    // from it rolls back to it, as the uninterrupted run would.
                    self.state.rollback_checkpoint = Some(done);
                }
                let path = self.checkpoint(None)?;
                if paused {
                    self.progress.finish();
                    self.plot();
                    return Ok(self.outcome(started, None, None, Some(path)));
                }
            }
            if let Some((policy, reason)) = &self.state.stopped_by {
                let line = format!("stopped by `{policy}` after step {done}: {reason}");
                self.say(&line);
                break;
            }
        }
        let stopped_by = self.state.stopped_by.clone();
        self.progress.finish();
        if !self.team.is_leader() {
            return Ok(self.outcome(started, None, stopped_by, None));
        }
        let final_dir = self.run_dir.join("final");
        if let Err(error) = self.task.save(&final_dir) {
            // The weights are good, only their copy failed: keep them where a resume finds them.
            let saved = self.checkpoint(Some(format!("final/ could not be written: {error}")));
            if error.write_problem().is_some() {
                // Said by the run's one line for failed writes, which names what is intact.
                return Err(error);
            }
            let saved = match saved {
                Ok(path) => format!("the training state is saved in {}; resume to write final/", path.display()),
                Err(also) => format!("saving the training state failed too: {also}"),
            };
            return Err(EngineError::Config(format!("{error}; {saved}")));
        }
        let scores = self.task.final_evaluation()?;
        let mut record = serde_json::Map::new();
        record.insert("step".into(), self.state.steps_done.into());
        record.extend(scores.record());
        record.insert("skipped_steps".into(), self.state.skipped.total.into());
        let stopped =
            stopped_by.as_ref().map(|(policy, reason)| serde_json::json!({"policy": policy, "reason": reason}));
        record.insert("stopped_by".into(), stopped.into());
        write_json(&self.run_dir.join("eval.json"), &record)?;
        self.write_visuals(self.state.steps_done, &scores.visuals)?;
        self.plot();
        Ok(self.outcome(started, Some(scores), stopped_by, None))
    }

    fn outcome(
        &self,
        started: Instant,
        final_scores: Option<Scores>,
        stopped_by: Option<(String, String)>,
        paused_at: Option<PathBuf>,
    ) -> TrainOutcome {
        TrainOutcome {
            steps_done: self.state.steps_done,
            final_loss: self.state.last.total_loss,
            final_scores,
            train_seconds: started.elapsed().as_secs_f64(),
            stopped_by,
            paused_at,
            skipped_steps: self.state.skipped.total,
        }
    }

    /// Whether the last `--max-skipped-steps` steps all had a non-finite loss or norm.
    fn diverged(&self) -> bool {
        let limit = self.config.max_skipped_steps;
        limit > 0 && self.state.skipped.in_a_row >= limit
    }

    /// Stops a diverged run: no final/ from ruined weights, the state saved as a checkpoint
    /// (updates were skipped, so its weights are those of the last finite update), and one
    /// message naming the first bad step, what it measured and where the state is.
    fn divergence(&mut self) -> EngineError {
        self.progress.finish();
        let skipped = self.state.skipped.clone();
        let previous = checkpoint::latest(&self.run_dir).ok().flatten();
        let mut message = format!(
            "the run diverged: {} steps in a row had a non-finite loss or gradient norm, from step {} (loss {}, \
             gradient norm {}); no final/ is written",
            skipped.in_a_row,
            skipped.first.unwrap_or_default(),
            skipped.first_loss.unwrap_or(f64::NAN),
            skipped.first_grad_norm.unwrap_or(f64::NAN),
        );
        let saved = self.checkpoint(Some(message.clone()));
        match &saved {
            Ok(path) => message.push_str(&format!(
                "; the state after step {} (weights of the last finite update) is in {}",
                self.state.steps_done,
                path.display()
            )),
            Err(err) => message.push_str(&format!("; saving the state failed: {err}")),
        }
        if let Some(previous) = previous.filter(|previous| saved.as_ref().ok() != Some(previous)) {
            message.push_str(&format!("; the checkpoint before it: {}", previous.display()));
        }
        let _ = writeln!(self.log, "error: {message}");
        EngineError::Diverged(message)
    }

    /// Checks, once per step and before any other collective, that every rank holds the
    /// same weights (a fingerprint) and that its policies decided the same (a hash of each
    /// policy's decision), and whether any rank was asked to stop (SIGINT, SIGTERM), which
    /// the result says. `decision` is `None` on the rank
    /// whose policy failed: the others stop too, and rank 0 saves the state.
    fn agree(&mut self, step: u64, decision: Option<&StepDecision>, interrupted: bool) -> Result<bool, EngineError> {
        if self.team.size() == 1 {
            return Ok(interrupted);
        }
        let policy_count = self.policies.members_mut().count();
        let fingerprint = self.optimizer.weights_sum().to_bits() as i64;
        let mut words = vec![i64::from(decision.is_none()), i64::from(interrupted), fingerprint];
        match decision {
            Some(decision) => words.extend(decision.per_policy.iter().map(|(_, decided)| decision_hash(decided))),
            None => words.extend(std::iter::repeat_n(0, policy_count)),
        }
        let ranks = self.team.gather_words(&words, "the check that the ranks' policies agree")?;
        let Some(decision) = decision else { return Ok(false) };
        if let Some(rank) = ranks.iter().position(|words| words[0] == 1) {
            let message =
                format!("rank {rank}: a policy failed at step {step} (that rank's output says which and why)");
            let saved = match self.checkpoint(Some(message.clone())) {
                Ok(path) => format!("; the training state is saved in {}", path.display()),
                Err(err) => format!("; saving the training state failed: {err}"),
            };
            return Err(DistributedError::PeerPolicyFault(format!("{message}{saved}")).into());
        }
        for (rank, theirs) in ranks.iter().enumerate() {
            if theirs[2] != ranks[0][2] {
                return Err(DistributedError::Disagreement(format!(
                    "step {step}: the weights of rank {rank} differ from rank 0's; the replicas have diverged"
                ))
                .into());
            }
            if let Some(index) = (0..policy_count).find(|&i| theirs[3 + i] != ranks[0][3 + i]) {
                return Err(DistributedError::Disagreement(format!(
                    "step {step}: policy `{}` decided differently on rank {rank} than on rank 0 from the same \
                     observation; a policy must be deterministic to train on several processes",
                    decision.per_policy[index].0
                ))
                .into());
            }
        }
        Ok(ranks.iter().any(|words| words[1] == 1))
    }

    fn observation(&self) -> Observation {
        self.state.observation(self.task.epoch_of(self.data_position(self.state.steps_done)), self.seconds_left())
    }

    /// The batch of the data order step `step` trains on.
    fn data_position(&self, step: u64) -> u64 {
        (step as i64 + self.state.data_offset).max(0) as u64
    }

    /// The `snapshot` and `rollback` actions of a step's decision, before the step runs,
    /// each recorded in `decisions.jsonl` with what it kept or restored.
    fn snapshot_and_roll_back(&mut self, step: u64, decision: &StepDecision) -> Result<(), EngineError> {
        let asked_by = |wants: &dyn Fn(&crate::policy::Decision) -> bool| {
            decision.per_policy.iter().find(|(_, decided)| wants(decided)).map(|(name, _)| name.clone())
        };
        if let Some(policy) = asked_by(&|d| d.snapshot) {
            let point = SnapshotPoint { steps_done: step, data_offset: self.state.data_offset };
            let kept = if self.snapshots.capacity() == 0 {
                serde_json::json!("none: --snapshots 0")
            } else {
                self.snapshots.keep(point, self.optimizer.snapshot());
                serde_json::json!(self.snapshots.points().len())
            };
            let record = serde_json::json!({"step": step, "policy": policy, "action": "snapshot", "kept": kept});
            self.decisions.write(&record).map_err(io_error(self.decisions.path()))?;
        }
        let (Some(rollback), Some(policy)) = (decision.merged.rollback, asked_by(&|d| d.rollback.is_some())) else {
            return Ok(());
        };
        let restored = self.roll_back(step, rollback)?;
        let line = format!("step {step}: `{policy}` rolled back: {restored}");
        self.say(&line);
        let record = serde_json::json!({
            "step": step,
            "policy": policy,
            "action": "rollback",
            "restored": restored,
            "skip_batches": rollback.skip_batches,
            "data_position": self.data_position(step),
        });
        self.decisions.write(&record).map_err(io_error(self.decisions.path()))
    }

    /// Restores the newest snapshot (or checkpoint) and moves the data order past
    /// `skip_batches` batches from where it was then; says what was restored.
    fn roll_back(&mut self, step: u64, rollback: Rollback) -> Result<String, EngineError> {
        let from_snapshot = matches!(rollback.source, RollbackSource::Snapshot) && self.snapshots.newest().is_some();
        let point = if from_snapshot {
            let (point, snapshot) = self.snapshots.newest().expect("checked above");
            let point = *point;
            self.optimizer.restore(snapshot).map_err(|problem| EngineError::Config(format!("rollback: {problem}")))?;
            point
        } else {
            let Some(steps_done) = self.state.rollback_checkpoint else {
                return Ok("nothing: no snapshot or checkpoint to return to yet".into());
            };
            let dir = checkpoint::dir_of(&self.run_dir, steps_done);
            let saved = match checkpoint::load(&dir) {
                Ok(saved) => saved,
                Err(error) => return Ok(format!("nothing: checkpoint {} does not load: {error}", dir.display())),
            };
            pretrained::load_weights(self.task.var_store(), &saved.model_file)?;
            self.optimizer
                .load_state(&saved.optimizer)
                .map_err(|problem| FileError::format(&dir.join(checkpoint::OPTIMIZER_FILE), problem))?;
            SnapshotPoint { steps_done, data_offset: saved.trainer.data_offset }
        };
        let position = point.data_position() + rollback.skip_batches as i64;
        self.state.data_offset = position - step as i64;
        // The steps that led here are undone: the divergence guard counts afresh.
        self.state.skipped.end_streak();
        let source = if from_snapshot { "the snapshot" } else { "checkpoint" };
        Ok(format!(
            "{source} taken before step {}; the data order goes on at batch {position} ({} skipped)",
            point.steps_done, rollback.skip_batches
        ))
    }

    /// With a time limit, the seconds this process may still train (rank 0's clock).
    fn seconds_left(&self) -> Option<f64> {
        let limit = self.time_limit?.as_secs_f64();
        Some((limit - (self.state.elapsed_seconds - self.elapsed_at_start)).max(0.0))
    }

    /// One optimizer step on the batch of global step `step`.
    /// One optimizer step on the batch of global step `step`; with `measure_loss_gradients`,
    /// each loss term's gradient is measured on the way.
    fn step(&mut self, step: u64, measure_loss_gradients: bool) -> Result<(), EngineError> {
        let started = Instant::now();
        let position = self.data_position(step);
        let epoch = self.task.epoch_of(position);
        self.optimizer.zero_grad();
        let any_trainable = self.state.knobs.frozen.iter().any(|f| !f);
        let meter = (any_trainable && measure_loss_gradients).then(|| {
            let params = self.optimizer.trainable_params(&self.state.knobs.frozen);
            LossGradientMeter::new(params, self.task.loss_names().len())
        });
        let knobs = StepKnobs {
            augmentation: &self.state.knobs.augmentation,
            loss_weights: &self.state.knobs.loss_weights,
            backward: any_trainable
                .then_some(Backward { weights: &self.state.knobs.loss_weights, meter: meter.as_ref() }),
            total_steps: self.data_position(self.config.steps),
            seed: self.config.seed,
        };
        let measured = self.task.step(position, knobs)?;
        let loss_gradients = meter.map(|meter| meter.finish(step, &self.team)).transpose()?;
        for line in &measured.skipped {
            let _ = writeln!(self.log, "step {step}: skipped {line}");
        }
        if any_trainable {
            // Each rank's gradient is its share of the whole batch's: summed where it is, in
            // the optimizer's flat gradient buffers (per group, weight decay and dtype).
            for group in (0..self.state.knobs.frozen.len()).filter(|&g| !self.state.knobs.frozen[g]) {
                for grads in self.optimizer.group_grads(group) {
                    self.team.sum(&[grads], "the sum of the gradients")?;
                }
            }
        }
        let grad_norm =
            if any_trainable { self.optimizer.grad_norm() } else { Tensor::zeros([], (Kind::Float, self.device)) };
        // The one read-back per step: the policies need these numbers, and a non-finite
        // loss or norm must not reach the weights. The losses and the counts of images
        // trained on and left out are summed over the ranks (each gives its share); the norm
        // and logit scale are rank 0's, so that every rank's policies observe the same bits.
        // The counts are the host's already: joined after the read-back, not uploaded (an
        // upload from the host waits for the device as a read-back does).
        let mut on_device: Vec<Tensor> = measured.raw.iter().map(|t| t.to_kind(Kind::Double)).collect();
        on_device.extend([grad_norm.to_kind(Kind::Double), self.task.logit_scale().to_kind(Kind::Double)]);
        let counts = Tensor::from_slice(&[measured.images as f64, measured.skipped.len() as f64]);
        let readings = Tensor::cat(&[Tensor::stack(&on_device, 0).to_device(Device::Cpu), counts], 0);
        if !self.team.is_leader() {
            let _ = readings.narrow(0, measured.raw.len() as i64, 2).fill_(0.0);
        }
        self.team.sum(&[readings.shallow_clone()], "the sum of the losses")?;
        let readings = Vec::<f64>::try_from(&readings)?;
        let (raw, rest) = readings.split_at(measured.raw.len());
        let [norm, scale, images, skipped_samples] = rest[..] else { unreachable!("four readings after the losses") };
        let total: f64 = raw.iter().zip(&self.state.knobs.loss_weights).map(|(raw, weight)| raw * weight).sum();
        let skipped = !(total.is_finite() && norm.is_finite());
        self.state.skipped.record(step, skipped, total, norm);
        // The rate each group trains at: the owner's times every policy's multiplier.
        let lrs = self.state.knobs.effective_lrs();
        if skipped {
            self.say(&format!("step {step}: loss {total} or gradient norm {norm} is not finite; update skipped"));
        } else if any_trainable {
            if let Some(max_norm) = self.state.knobs.grad_clip {
                let factor = (max_norm / (&grad_norm + 1e-6)).clamp_max(1.0);
                self.optimizer.scale_grads(&factor);
            }
            self.optimizer.step(&lrs, &self.state.knobs.frozen);
            self.task.after_update();
        }
        // Rank 0's clock, so that every rank's policies observe the same values.
        let elapsed = self.elapsed_at_start + self.clock.elapsed().as_secs_f64();
        let clocks = Tensor::from_slice(&[images / started.elapsed().as_secs_f64(), elapsed]);
        self.team.broadcast_from_leader(&[clocks.shallow_clone()], "the broadcast of the throughput")?;
        let [images_per_second, elapsed] = Vec::<f64>::try_from(&clocks)?[..] else {
            unreachable!("two clock readings")
        };
        self.state.elapsed_seconds = elapsed;
        self.state.last = LastStep {
            losses: raw.to_vec(),
            total_loss: Some(total),
            grad_norm: Some(norm),
            logit_scale: Some(scale),
            images_per_second: Some(images_per_second),
            loss_gradients,
        };
        self.metrics
            .write(&MetricsRecord {
                step,
                epoch,
                loss: JsonFloat(total),
                losses: by_name(self.task.loss_names(), raw),
                lr: by_name(&group_names(self.task.groups()), &lrs),
                grad_norm: JsonFloat(norm),
                logit_scale: JsonFloat(scale),
                images_per_second: JsonFloat(images_per_second),
                skipped_samples: skipped_samples as u64,
                skipped,
                loss_gradients: self
                    .state
                    .last
                    .loss_gradients
                    .as_ref()
                    .map(|measured| by_name(self.task.loss_names(), &measured.norms)),
            })
            .map_err(io_error(self.metrics.path()))?;
        let mut scalars = vec![("loss/total", total)];
        scalars.extend(self.loss_tags.iter().map(String::as_str).zip(raw.iter().copied()));
        scalars.extend([
            ("grad_norm", norm),
            ("logit_scale", scale),
            ("throughput/images_per_second", images_per_second),
        ]);
        scalars.extend(self.lr_tags.iter().map(String::as_str).zip(lrs.iter().copied()));
        self.tensorboard.scalars(step, scalars).map_err(io_error(self.tensorboard.path()))?;
        self.progress.update(step + 1, total, lrs[0], images_per_second);
        Ok(())
    }

    fn apply_freezing(&mut self, groups: &[usize]) {
        for &group in groups {
            let trainable = !self.state.knobs.frozen[group];
            for param in &self.group_params[group] {
                let _ = param.set_requires_grad(trainable);
            }
        }
    }

    /// Rank 0 evaluates; the other ranks' policies observe its values.
    fn evaluate(&mut self) -> Result<(), EngineError> {
        let step = self.state.steps_done;
        if !self.team.is_leader() {
            let values = Tensor::zeros([self.task.metric_names().len() as i64], (Kind::Double, Device::Cpu));
            self.team.broadcast_from_leader(&[values.shallow_clone()], "the broadcast of the evaluation")?;
            self.state.pending_evaluation = Some(PendingEvaluation { step, values: Vec::<f64>::try_from(&values)? });
            return Ok(());
        }
        let scores = self.task.evaluate()?;
        let shared = Tensor::from_slice(&scores.values);
        self.team.broadcast_from_leader(&[shared], "the broadcast of the evaluation")?;
        let mut record = serde_json::Map::new();
        record.insert("step".into(), step.into());
        record.extend(scores.to_json());
        self.evaluations.write(&record).map_err(io_error(self.evaluations.path()))?;
        let tensorboard_values = self.eval_tags.iter().map(String::as_str).zip(scores.values.iter().copied());
        self.tensorboard.scalars(step, tensorboard_values).map_err(io_error(self.tensorboard.path()))?;
        self.write_visuals(step, &scores.visuals)?;
        if let Some(best) = &mut self.best
            && let Some(improved) = best.offer(step, &scores, |dir| self.task.save(dir))?
        {
            let line = format!("step {step}: best {} so far, {improved}", best.metric().name);
            let _ = writeln!(self.log, "{line}");
        }
        self.state.pending_evaluation = Some(PendingEvaluation { step, values: scores.values });
        Ok(())
    }

    /// Writes histograms of each group's weights and of the gradients of the step just taken
    /// to TensorBoard (`weights/GROUP`, `gradients/GROUP`); the leader alone, which holds the
    /// same values as every rank.
    fn write_histograms(&mut self, step: u64) -> Result<(), EngineError> {
        if !self.team.is_leader() {
            return Ok(());
        }
        let names: Vec<String> = self.task.groups().iter().map(|group| group.name.clone()).collect();
        for (name, params) in names.iter().zip(&self.group_params) {
            let gradients: Vec<Tensor> = params.iter().map(Tensor::grad).filter(Tensor::defined).collect();
            for (kind, tensors) in [("weights", params), ("gradients", &gradients)] {
                if let Some(histogram) = histogram_of(tensors)? {
                    let tag = format!("{kind}/{name}");
                    self.tensorboard.histogram(step, &tag, &histogram).map_err(io_error(self.tensorboard.path()))?;
                }
            }
        }
        Ok(())
    }

    /// Writes an evaluation's images and curves to TensorBoard, and its images to `plots/`.
    fn write_visuals(&mut self, step: u64, visuals: &[Visual]) -> Result<(), EngineError> {
        for visual in visuals {
            match visual {
                Visual::Image { tag, png, width, height } => {
                    self.tensorboard
                        .image(step, tag, png, *width, *height)
                        .map_err(io_error(self.tensorboard.path()))?;
                    let plots = self.run_dir.join(PLOTS_DIR);
                    std::fs::create_dir_all(&plots).map_err(io_error(&plots))?;
                    write_atomically(&plots.join(format!("{}.png", tag.replace('/', "_"))), png)?;
                }
                Visual::PrCurve { tag, counts } => {
                    self.tensorboard.pr_curve(step, tag, counts).map_err(io_error(self.tensorboard.path()))?;
                }
            }
        }
        Ok(())
    }

    fn record_decisions(&mut self, step: u64, decision: &StepDecision) -> Result<(), EngineError> {
        let knobs: Vec<&str> = self.task.augmentation_knobs().iter().map(|k| k.name).collect();
        let groups = group_names(self.task.groups());
        for record in decision_records(step, decision, &groups, self.task.loss_names(), &knobs) {
            self.decisions.write(&record).map_err(io_error(self.decisions.path()))?;
        }
        Ok(())
    }

    /// Saves a checkpoint of the state after `steps_done` steps, with every policy's state
    /// (none for a policy that trapped: it cannot be entered again).
    fn checkpoint(&mut self, fault: Option<String>) -> Result<PathBuf, EngineError> {
        if !self.team.is_leader() {
            // Rank 0 writes it, from the same state.
            return Ok(checkpoint::dir_of(&self.run_dir, self.state.steps_done));
        }
        let existing = checkpoint::complete_at(&self.run_dir, self.state.steps_done);
        if let (Some(_), Some(existing)) = (&fault, existing) {
            // The regular checkpoint of this step holds the same training state, and every
            // policy's state from before the fault: keep it rather than replace it.
            return Ok(existing);
        }
        let stage = format!("checkpoint after step {}", self.state.steps_done);
        let mut policies = Vec::new();
        for (source, instance) in self.policies.members_mut() {
            let state = if instance.has_trapped() { None } else { Some(instance.save_state(&stage)?) };
            policies.push((policy_record(source, instance, false), state));
        }
        // A shadow that cannot save its state resumes without one; it never fails the run.
        for (source, instance) in self.policies.shadows_mut() {
            policies.push((policy_record(source, instance, true), instance.save_state(&stage).ok()));
        }
        let out_of_turn = fault.is_some();
        self.state.snapshots = self.snapshots.points();
        let path = checkpoint::save(
            &self.run_dir,
            CheckpointContents {
                trainer: &self.state,
                fault,
                model: self.task.var_store(),
                optimizer: self.optimizer.state(),
                policies,
                snapshots: self.snapshots.iter().map(|(_, snapshot)| snapshot.named()).collect(),
            },
        )?;
        let megabytes = checkpoint::size(&path)? as f64 / 1e6;
        let mut line =
            format!("checkpoint after step {}: {} ({megabytes:.1} MB)", self.state.steps_done, path.display());
        // A checkpoint written after a fault, or during non-finite steps (whose weights are
        // those of the last finite update), must not push out the ones from before.
        if !out_of_turn && self.state.skipped.in_a_row == 0 {
            match checkpoint::prune(&self.run_dir, self.config.keep_checkpoints) {
                Ok(deleted) if !deleted.is_empty() => {
                    line.push_str(&format!("; keeping the newest {}", self.config.keep_checkpoints))
                }
                Ok(_) => {}
                // The new checkpoint is complete; an old one left behind costs only disk.
                Err(err) => line.push_str(&format!("; warning: old checkpoints not deleted: {err}")),
            }
        }
        self.say(&line);
        Ok(path)
    }

    /// A policy failed: save what the run has so far, then report both.
    fn policy_fault(&mut self, error: PolicyError) -> EngineError {
        self.progress.finish();
        match self.checkpoint(Some(error.to_string())) {
            Ok(checkpoint) => {
                let _ = writeln!(self.log, "error: {error}; state saved in {}", checkpoint.display());
                EngineError::PolicyFault { error, checkpoint }
            }
            // The original error matters more than the failed save; the earlier checkpoints
            // are untouched either way.
            Err(_) => EngineError::Policy(error),
        }
    }
}

fn policy_record(source: &PolicySource, instance: &PolicyInstance, shadow: bool) -> PolicyRecord {
    PolicyRecord {
        name: instance.name().to_string(),
        source: source.clone(),
        sha256: instance.sha256().to_string(),
        interface: instance.interface_version().qualified(),
        state_file: None,
        shadow,
    }
}

/// Gives each resumed policy its saved state, after checking it is the same component with
/// the same arguments; with `swap_policies`, any other starts fresh, since a state saved
/// under other arguments (a schedule's floor, say) would undo them. Returns, per policy,
/// whether it continues from its saved state.
fn restore_policies(
    policies: &mut PolicySet,
    checkpoint: &Checkpoint,
    swap_policies: bool,
    log: &mut impl Write,
) -> Result<Vec<bool>, EngineError> {
    let (saved_shadows, saved): (Vec<_>, Vec<_>) =
        checkpoint.policies.iter().zip(&checkpoint.policy_states).partition(|(record, _)| record.shadow);
    let members: Vec<_> = policies.members_mut().collect();
    let count = members.len();
    let same_count = count == saved.len();
    let mut kept = Vec::with_capacity(count);
    for (index, (source, instance)) in members.into_iter().enumerate() {
        let (record, state) = match saved.get(index).filter(|_| same_count) {
            Some((record, state)) => (Some(*record), state.as_ref()),
            None => (None, None),
        };
        let same = |record: &PolicyRecord| {
            continues_state(instance, source, &record.name, &record.sha256, &record.source.args)
        };
        match record {
            Some(record) if same(record) => match state {
                Some(state) => {
                    instance.load_state(state)?;
                    kept.push(true);
                    continue;
                }
                None => {
                    let _ = writeln!(
                        log,
                        "policy `{}` had no saved state (it had trapped); it starts fresh",
                        instance.name()
                    );
                }
            },
            _ if swap_policies => {
                let _ = writeln!(log, "policy `{source}` swapped in on resume; it starts fresh");
            }
            Some(record) => {
                return Err(EngineError::Config(format!(
                    "policy `{}` differs from the one in checkpoint {} ({} there, {source} now; sha256 {} there, {} \
                     now); pass --swap-policies to continue with it",
                    instance.name(),
                    checkpoint.dir.display(),
                    record.source,
                    &record.sha256[..12],
                    &instance.sha256()[..12]
                )));
            }
            None => {
                return Err(EngineError::Config(format!(
                    "checkpoint {} holds {} policies, this run has {}; pass --swap-policies to continue with them",
                    checkpoint.dir.display(),
                    saved.len(),
                    count
                )));
            }
        }
        kept.push(false);
    }
    // A shadow continues from the state saved by the same component with the same arguments;
    // any other starts fresh. A shadow's failure here, as anywhere, is a warning.
    let mut unused = saved_shadows;
    for (source, shadow) in policies.shadows_mut() {
        let same = unused.iter().position(|(record, _)| &record.source == source && record.sha256 == shadow.sha256());
        let state = same.map(|index| unused.remove(index)).and_then(|(_, state)| state.as_ref());
        let outcome = match state {
            Some(state) => shadow.load_state(state).map(|()| "continues from its saved state".to_string()),
            None => Ok("starts fresh".to_string()),
        };
        let line = outcome.unwrap_or_else(|error| format!("starts fresh: {error}"));
        let _ = writeln!(log, "shadow policy `{}` {line}", shadow.name());
    }
    Ok(kept)
}

/// Refuses a global batch that does not split evenly over `processes`.
pub fn check_batch_splits(batch_size: usize, processes: usize) -> Result<(), EngineError> {
    if !batch_size.is_multiple_of(processes) {
        return Err(EngineError::Config(format!(
            "--batch-size {batch_size} does not split evenly over {processes} processes: give a multiple of \
             {processes} (it is the global batch; each process takes an equal share)"
        )));
    }
    Ok(())
}

/// Checks the settings alone (the batch split, the policies given, the rates, the device),
/// before anything is read or written.
pub fn validate_config(config: &RunConfig, options: &RunOptions) -> Result<(), EngineError> {
    check_batch_splits(config.batch_size, options.team.size())?;
    if config.policies.is_empty() {
        return Err(EngineError::Config("--policy: give at least one policy".into()));
    }
    if !(config.lr.is_finite() && config.lr >= 0.0) {
        return Err(EngineError::Config(format!("--lr {}: must be a finite number >= 0", config.lr)));
    }
    if !(config.weight_decay.is_finite() && config.weight_decay >= 0.0) {
        return Err(EngineError::Config(format!(
            "--weight-decay {}: must be a finite number >= 0",
            config.weight_decay
        )));
    }
    if let Device::Cuda(index) = options.device {
        let available = tch::Cuda::device_count();
        if index as i64 >= available {
            return Err(EngineError::Config(format!(
                "--device cuda:{index}: libtorch sees {available} CUDA device(s)"
            )));
        }
    }
    Ok(())
}

/// `error`, or when it is a write into the run folder that failed for a reason outside the
/// trainer (see [`WriteProblem`]), one line naming what was being written, the checkpoints
/// that are complete, and how to go on.
fn explain_write_failure(run_dir: &Path, error: EngineError) -> EngineError {
    let Some((path, problem)) = error.write_problem() else { return error };
    // A file elsewhere (an image that went missing) is the data's problem, said as it is.
    let Ok(relative) = path.strip_prefix(run_dir) else { return error };
    let run = run_dir.display();
    let mut parts = relative.iter().map(|part| part.to_string_lossy());
    let written = match (parts.next(), parts.next()) {
        (Some(first), Some(step)) if first == checkpoint::CHECKPOINTS_DIR => {
            format!("checkpoint {}", step.trim_end_matches(".tmp"))
        }
        (Some(first), _) if first.starts_with("final") => "final/".to_string(),
        (Some(first), _) if first.starts_with(BEST_DIR) => format!("{BEST_DIR}/"),
        _ => relative.display().to_string(),
    };
    if problem == WriteProblem::Vanished && !run_dir.is_dir() {
        return EngineError::WriteFailed(format!(
            "{run} vanished while writing {written}: the run folder was moved or deleted during the run, and \
             nothing of it is left there to resume"
        ));
    }
    let complete = checkpoint::complete_steps(run_dir);
    let names: Vec<String> = complete.iter().map(|step| format!("step-{step}")).collect();
    let kept = match names.len() {
        0 => "no checkpoint was written before".to_string(),
        1 => format!("checkpoint {} is intact", names[0]),
        _ => format!("checkpoints {} are intact", names.join(", ")),
    };
    let fix = match problem {
        WriteProblem::DiskFull | WriteProblem::QuotaExceeded => "free space".to_string(),
        WriteProblem::PermissionDenied | WriteProblem::ReadOnly => format!("make {run} writable"),
        WriteProblem::Vanished => format!("restore what was removed from {run}"),
    };
    let next = if names.is_empty() {
        "start the run again with --overwrite".to_string()
    } else {
        format!("run `trainer train --resume {run}`")
    };
    EngineError::WriteFailed(format!(
        "{} while writing {written} in {run}; {kept}; {fix} and {next}",
        problem.describe()
    ))
}

fn holds_run(run_dir: &Path) -> bool {
    run_dir.join(RUN_FILE).exists() || run_dir.join("metrics.jsonl").exists()
}

/// Removes what an earlier run wrote into `run_dir` (only reached with `--overwrite`: see
/// [`check_new_run`]), so no file of it is mistaken for this run's.
fn clear_run_dir(run_dir: &Path) -> Result<(), EngineError> {
    if holds_run(run_dir) {
        for name in [RUN_FILE, "run.log", "metrics.jsonl", "decisions.jsonl", "evaluations.jsonl", "eval.json"] {
            let path = run_dir.join(name);
            if path.exists() {
                std::fs::remove_file(&path).map_err(io_error(&path))?;
            }
        }
        for entry in std::fs::read_dir(run_dir).map_err(io_error(run_dir))?.flatten() {
            if entry.file_name().to_string_lossy().starts_with("events.out.tfevents.") {
                std::fs::remove_file(entry.path()).map_err(io_error(&entry.path()))?;
            }
        }
        for dir in ["final", BEST_DIR, PLOTS_DIR, checkpoint::CHECKPOINTS_DIR] {
            let path = run_dir.join(dir);
            if path.exists() {
                std::fs::remove_dir_all(&path).map_err(io_error(&path))?;
            }
        }
    }
    std::fs::create_dir_all(run_dir).map_err(io_error(run_dir))
}

fn group_names(groups: &[Group]) -> Vec<&str> {
    groups.iter().map(|group| group.name.as_str()).collect()
}

fn by_name<'a>(names: &[&'a str], values: &[f64]) -> BTreeMap<&'a str, JsonFloat> {
    names.iter().copied().zip(values.iter().copied().map(JsonFloat)).collect()
}

/// Bins of the weight and gradient histograms.
const HISTOGRAM_BINS: i64 = 30;

/// The histogram of every value of `tensors` in [`HISTOGRAM_BINS`] bins of equal width, computed
/// where the tensors are; `None` for no values, or for a value that is not finite (a step the
/// divergence guard deals with).
fn histogram_of(tensors: &[Tensor]) -> Result<Option<HistogramSummary>, EngineError> {
    let _no_grad = tch::no_grad_guard();
    let values: Vec<Tensor> =
        tensors.iter().filter(|t| t.numel() > 0).map(|t| t.detach().to_kind(Kind::Float)).collect();
    if values.is_empty() {
        return Ok(None);
    }
    let min = values.iter().map(|t| t.min().double_value(&[])).fold(f64::INFINITY, f64::min);
    let max = values.iter().map(|t| t.max().double_value(&[])).fold(f64::NEG_INFINITY, f64::max);
    if !(min.is_finite() && max.is_finite()) {
        return Ok(None);
    }
    let width = (max - min) / HISTOGRAM_BINS as f64;
    let mut counts = Tensor::zeros([HISTOGRAM_BINS], (Kind::Int64, Device::Cpu));
    let (mut sum, mut sum_squares, mut num) = (0.0, 0.0, 0usize);
    for value in &values {
        let bins = if width > 0.0 {
            ((value - min) / width).floor().clamp(0, HISTOGRAM_BINS - 1).to_kind(Kind::Int64).flatten(0, -1)
        } else {
            Tensor::zeros([value.numel() as i64], (Kind::Int64, value.device()))
        };
        counts += bins.bincount(None::<Tensor>, HISTOGRAM_BINS).to_device(Device::Cpu);
        sum += value.sum(Kind::Double).double_value(&[]);
        sum_squares += value.square().sum(Kind::Double).double_value(&[]);
        num += value.numel();
    }
    let counts: Vec<f64> = Vec::<i64>::try_from(&counts)?.into_iter().map(|count| count as f64).collect();
    let limits = (1..=HISTOGRAM_BINS).map(|i| if i == HISTOGRAM_BINS { max } else { min + width * i as f64 }).collect();
    Ok(Some(HistogramSummary { min, max, num: num as f64, sum, sum_squares, limits, counts }))
}

/// Writes `value` as pretty JSON to `path` (run records, evaluation results).
/// Writes `value` to `path` through a temporary file and a rename, so a crash or a full
/// disk leaves the previous record whole.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), EngineError> {
    let text = serde_json::to_string_pretty(value).expect("run records serialize");
    let staged = path.with_extension("json.tmp");
    let written = std::fs::write(&staged, text + "\n").and_then(|()| std::fs::rename(&staged, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    written.map_err(io_error(path))
}

/// 64 bits of a SHA-256 of a decision's every field (floats by their exact shortest form).
fn decision_hash(decision: &crate::policy::Decision) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{decision:?}").as_bytes());
    i64::from_le_bytes(digest[..8].try_into().expect("a SHA-256 has 32 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(path: &Path, kind: std::io::ErrorKind) -> EngineError {
        io_error(path)(kind.into())
    }

    #[test]
    fn a_failed_write_in_the_run_folder_names_what_is_intact_and_a_failed_read_elsewhere_stays_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir_all(run.join("checkpoints/step-2")).unwrap();
        std::fs::write(run.join("checkpoints/step-2/manifest.json"), "{}").unwrap();
        let full = io(&run.join("checkpoints/step-4.tmp/optimizer.safetensors"), std::io::ErrorKind::StorageFull);
        let said = explain_write_failure(&run, full).to_string();
        let expected = format!(
            "disk full while writing checkpoint step-4 in {0}; checkpoint step-2 is intact; free space and run \
             `trainer train --resume {0}`",
            run.display()
        );
        assert_eq!(said, expected);
        let denied = explain_write_failure(
            &run,
            io(&run.join("final.tmp/model.safetensors"), std::io::ErrorKind::PermissionDenied),
        );
        assert!(denied.to_string().starts_with("permission denied while writing final/"), "{denied}");

        let image = dir.path().join("images/0001.png");
        let missing = explain_write_failure(&run, io(&image, std::io::ErrorKind::NotFound));
        assert!(matches!(missing, EngineError::File(_)), "a data file's error is kept: {missing}");
    }
}
