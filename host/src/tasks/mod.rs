//! The kinds of training. Each is a module that owns everything about it: its command-line
//! flags and its section of `run.json`, data wiring, model construction and loading, loss
//! names, parameter groups, evaluation and prediction. The engine drives any of them
//! through [`Task`]; this module names them, opens one from its settings, and connects it to
//! the engine (`train`, `resume`) and to the commands that use a trained model
//! (`eval`, `embed`, `predict` in [`use_model`]).
//!
//! A new kind of training is one folder here and one arm in [`TaskConfig`].

mod captioned;
pub mod clip;
mod contrastive;
pub mod detection;
mod inputs;
pub mod shards;
pub mod tagging;
pub mod use_model;

pub use inputs::{DataOptions, Execution, InputArgs, Inputs, Precision, TaskContext};

use crate::engine::{
    self, DataFingerprint, EngineError, Resume, RunConfig, RunLock, RunOptions, RunPlan, SavedRun, Task, TrainOutcome,
};
use crate::files::FileError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The kinds of training, as `--task` names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// CLIP's image-text contrastive training.
    #[default]
    Clip,
    /// Multi-label tagging with tag, align and distill losses.
    Tagging,
    /// Open-vocabulary detection: OWL-ViT or OWLv2 on COCO-format boxes.
    Detection,
}

/// A task's settings: its section of `run.json`, tagged with its kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TaskConfig {
    Clip(clip::ClipTaskConfig),
    Tagging(tagging::TaggingConfig),
    Detection(detection::DetectionConfig),
}

/// Every task's flags; `--task` says which apply.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TaskArgs {
    #[command(flatten)]
    pub inputs: InputArgs,
    #[command(flatten)]
    pub clip: clip::ClipArgs,
    #[command(flatten)]
    pub tagging: tagging::TaggingArgs,
    #[command(flatten)]
    pub detection: detection::DetectionArgs,
}

impl TaskArgs {
    /// Every flag given, by name.
    pub fn given(&self) -> Vec<&'static str> {
        let mut flags = self.inputs.given();
        flags.extend(self.clip.given());
        flags.extend(self.tagging.given());
        flags.extend(self.detection.given());
        flags
    }

    /// The settings of a `kind` run; a flag of another task is refused by name.
    pub fn config(&self, kind: TaskKind) -> Result<TaskConfig, EngineError> {
        let inputs = self.inputs.inputs();
        let (clip, tagging, detection) = (self.clip.given(), self.tagging.given(), self.detection.given());
        let (config, others) = match kind {
            TaskKind::Clip => (TaskConfig::Clip(self.clip.config(inputs)), [tagging, detection].concat()),
            TaskKind::Tagging => (TaskConfig::Tagging(self.tagging.config(inputs)), [clip, detection].concat()),
            TaskKind::Detection => (TaskConfig::Detection(self.detection.config(inputs)), [clip, tagging].concat()),
        };
        if let Some(flag) = others.first() {
            return Err(EngineError::Config(format!("{flag}: not a flag of --task {}", kind.name())));
        }
        Ok(config)
    }
}

impl TaskKind {
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Clip => "clip",
            TaskKind::Tagging => "tagging",
            TaskKind::Detection => "detection",
        }
    }
}

impl TaskConfig {
    pub fn kind(&self) -> TaskKind {
        match self {
            TaskConfig::Clip(_) => TaskKind::Clip,
            TaskConfig::Tagging(_) => TaskKind::Tagging,
            TaskConfig::Detection(_) => TaskKind::Detection,
        }
    }

    pub fn inputs(&self) -> &Inputs {
        match self {
            TaskConfig::Clip(config) => &config.inputs,
            TaskConfig::Tagging(config) => &config.inputs,
            TaskConfig::Detection(config) => &config.inputs,
        }
    }

    pub fn inputs_mut(&mut self) -> &mut Inputs {
        match self {
            TaskConfig::Clip(config) => &mut config.inputs,
            TaskConfig::Tagging(config) => &mut config.inputs,
            TaskConfig::Detection(config) => &mut config.inputs,
        }
    }

    /// The task these settings describe, with its data and model.
    pub fn open(&self, context: &TaskContext) -> Result<Box<dyn Task>, EngineError> {
        self.inputs().refuse_stream_flags()?;
        Ok(match self {
            TaskConfig::Clip(config) => Box::new(clip::ContrastiveTask::open(config, context)?),
            TaskConfig::Tagging(config) => tagging::open(config, context)?,
            TaskConfig::Detection(config) => Box::new(detection::DetectionTask::open(config, context)?),
        })
    }

    /// These settings made ready to evaluate the model saved in `dir` rather than to train:
    /// no micro-batches (evaluation draws no batches), and the folder's own configuration,
    /// tokenizer and preprocessing in place of the folder the run started from, which
    /// `final/` and `best/` carry a copy of (a checkpoint folder does not).
    pub fn for_evaluation(&mut self, dir: &Path) {
        let inputs = self.inputs_mut();
        inputs.accum_steps = 1;
        let saved_config = [crate::models::pretrained::CONFIG_FILE, crate::models::open_clip::CONFIG_FILE];
        if inputs.model.is_some() && saved_config.iter().any(|name| dir.join(name).is_file()) {
            inputs.model = Some(dir.to_path_buf());
            inputs.model_arch = None;
        }
    }

    /// These settings made to evaluate on `data` instead of their own, with `tags` as its
    /// tag vocabulary for a tagger (none for the mosaics): the held-out set and image folder
    /// belonged to the other data.
    pub fn evaluate_on(&mut self, data: &Path, tags: Option<PathBuf>) -> Result<(), EngineError> {
        if !data.exists() {
            return Err(FileError::format(data, "no such file or folder").into());
        }
        match self {
            TaskConfig::Clip(config) => config.check_vocabulary_reads(data)?,
            TaskConfig::Tagging(config) => config.tags = tags.map(inputs::absolute),
            TaskConfig::Detection(_) => {}
        }
        let inputs = self.inputs_mut();
        inputs.data = data.to_path_buf();
        inputs.val_data = None;
        inputs.images = None;
        if let TaskConfig::Detection(config) = self {
            // Detection evaluates (and predicts on) the whole file, and every category of it;
            // the run's unseen categories belonged to its own data.
            config.inputs.val_data = Some(data.to_path_buf());
            config.unseen_classes.clear();
        }
        Ok(())
    }

    /// The files of the data these settings train and evaluate on (a folder given as data
    /// stands for its files), for the run's data fingerprint; images are counted, not listed.
    pub fn data_files(&self) -> Vec<PathBuf> {
        let inputs = self.inputs();
        // Shards are named by pattern: each shard is a file of the data.
        let files_of = |path: &PathBuf| match crate::data::webdataset::expand(path) {
            Ok(shards) if crate::data::webdataset::is_shards(path) => shards,
            _ => vec![path.clone()],
        };
        let mut files = files_of(&inputs.data);
        files.extend(inputs.val_data.iter().filter(|val| **val != inputs.data).flat_map(files_of));
        if let TaskConfig::Tagging(config) = self {
            files.extend(config.tags.iter().cloned());
        }
        files
    }

    /// The fingerprint of the data of `opened`, a task opened from these settings.
    fn data_fingerprint(&self, opened: &dyn Task) -> Result<DataFingerprint, EngineError> {
        DataFingerprint::new(&self.data_files(), opened.train_samples())
    }

    /// The task section of a saved run.
    pub fn of_saved(saved: &SavedRun, run_dir: &Path) -> Result<TaskConfig, EngineError> {
        serde_json::from_value(saved.task.clone()).map_err(|err| {
            EngineError::Config(format!(
                "{}: the task section is not one this trainer knows: {err}",
                run_dir.join(engine::RUN_FILE).display()
            ))
        })
    }
}

/// Starts a new run of the task `task`.
pub fn train(
    run: &RunConfig,
    task: &TaskConfig,
    options: &RunOptions,
    execution: Execution,
) -> Result<TrainOutcome, EngineError> {
    // Settings that cannot work make no folder; a live run there is named before the folder
    // is read or cleared, and the claim is held until the run has ended.
    engine::validate_config(run, options)?;
    let _claim = RunLock::for_run(options, false)?;
    engine::check_new_run(run, options)?;
    let opened = task.open(&TaskContext::of_run(options, execution, run.seed, run.batch_size, true))?;
    let data = task.data_fingerprint(opened.as_ref())?;
    let section = serde_json::to_value(task).expect("task settings serialize");
    engine::train(run, opened, section, data, options)
}

/// What a new run of the task `task` would train: its data, model and policies opened (each
/// policy checking its arguments), nothing written and no run folder read.
pub fn plan(
    run: &RunConfig,
    task: &TaskConfig,
    options: &RunOptions,
    execution: Execution,
) -> Result<RunPlan, EngineError> {
    engine::validate_config(run, options)?;
    let context = TaskContext::of_run(options, execution, run.seed, run.batch_size, true);
    engine::plan(run, task.open(&context)?, options)
}

/// Continues the run in `options.run_dir` with its saved settings.
pub fn resume(options: &RunOptions, resume: &Resume, execution: Execution) -> Result<TrainOutcome, EngineError> {
    let _claim = RunLock::for_run(options, true)?;
    let saved = SavedRun::read(&options.run_dir)?;
    engine::check_resume(&saved, options, resume)?;
    let task = TaskConfig::of_saved(&saved, &options.run_dir)?;
    let context = TaskContext::of_run(options, execution, saved.train.seed, saved.train.batch_size, false);
    let opened = task.open(&context)?;
    let data = task.data_fingerprint(opened.as_ref())?;
    engine::resume(saved, opened, data, options, resume)
}

#[cfg(test)]
mod tests {
    use super::{TaskConfig, TaskKind};
    use crate::engine::SavedRun;
    use std::collections::BTreeMap;
    use std::path::Path;

    /// `run.json` as runs wrote it before tasks had a section of their own.
    fn earlier_layout(task: Option<&str>) -> String {
        let kind = task.map(|kind| format!(r#""task": "{kind}","#)).unwrap_or_default();
        format!(
            r#"{{"train": {{"policies": [{{"path": "p.wasm", "args": []}}], {kind} "losses": ["tag", "distill"],
                "tags": null, "unseen_tags": ["bag"], "model": null, "steps": 3, "batch_size": 8, "seed": 4,
                "lr": 0.001, "weight_decay": 0.1, "data_dir": "/data", "images": null, "val_data": null,
                "skip_bad_samples": true, "accum_steps": 2, "best_metric": null, "precision": "bf16",
                "eval_every": 0, "checkpoint_every": 0, "policy_fuel": 50000000}},
               "model": {{}}, "spec": null}}"#
        )
    }

    fn read(text: &str) -> TaskConfig {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("run.json"), text).unwrap();
        let saved = SavedRun::read(dir.path()).unwrap();
        assert_eq!(saved.train.seed, 4);
        TaskConfig::of_saved(&saved, dir.path()).unwrap()
    }

    #[test]
    fn runs_saved_before_task_sections_keep_their_task_settings() {
        let TaskConfig::Tagging(tagging) = read(&earlier_layout(Some("tagging"))) else { panic!("a tagging run") };
        assert_eq!(tagging.losses, [super::tagging::TagLoss::Tag, super::tagging::TagLoss::Distill]);
        assert_eq!(tagging.unseen_tags, ["bag"]);
        assert_eq!(tagging.inputs.data, Path::new("/data"));
        assert!(tagging.inputs.skip_bad_samples);
        let clip = read(&earlier_layout(None));
        assert_eq!(clip.kind(), TaskKind::Clip, "runs from before tagging were contrastive");
        let TaskConfig::Clip(clip) = clip else { unreachable!() };
        assert_eq!((clip.inputs.accum_steps, clip.inputs.precision), (2, super::Precision::Bf16));
    }

    #[test]
    fn a_task_section_round_trips_through_run_json() {
        let config = read(&earlier_layout(Some("tagging")));
        let saved = serde_json::json!({"train": serde_json::from_str::<serde_json::Value>(&earlier_layout(None))
            .unwrap()["train"], "task": config, "model": {}});
        assert_eq!(saved["task"]["kind"], "tagging");
        assert_eq!(read(&saved.to_string()), config);
    }

    /// The optimizer updates every parameter of a trained group (its flat buffers cannot
    /// tell a parameter that took no part in the loss from one whose gradient is zero), so a
    /// task leaves the parameters its losses do not reach out of its groups, and only those:
    /// checked on one step of each task, and of each tagging loss on its own.
    #[test]
    fn every_grouped_parameter_takes_part_in_the_losses() {
        use super::tagging::TagLoss;
        use super::{TaskArgs, TaskContext};
        use crate::engine::StepKnobs;
        let cases: [(TaskKind, Option<Vec<TagLoss>>); 6] = [
            (TaskKind::Clip, None),
            (TaskKind::Detection, None),
            (TaskKind::Tagging, None),
            (TaskKind::Tagging, Some(vec![TagLoss::Tag])),
            (TaskKind::Tagging, Some(vec![TagLoss::Align])),
            (TaskKind::Tagging, Some(vec![TagLoss::Distill])),
        ];
        for (kind, losses) in cases {
            let mut args = TaskArgs::default();
            args.tagging.losses = losses.clone();
            let context = TaskContext {
                device: tch::Device::Cpu,
                team: std::sync::Arc::new(crate::distributed::Team::solo()),
                execution: super::Execution { workers: 1, grad_checkpointing: false },
                seed: 0,
                batch_size: 8,
                load_weights: true,
            };
            let mut task = args.config(kind).unwrap().open(&context).unwrap();
            let augmentation: Vec<f64> = task.augmentation_knobs().iter().map(|knob| knob.default).collect();
            let weights = vec![1.0; task.loss_names().len()];
            let knobs = StepKnobs {
                augmentation: &augmentation,
                loss_weights: &weights,
                backward: Some(crate::engine::Backward { weights: &weights, meter: None }),
                total_steps: 1,
                seed: 0,
            };
            task.step(0, knobs).unwrap();
            for (name, variable) in task.var_store().variables() {
                let (grouped, reached) = (task.parameter_group(&name).is_some(), variable.grad().defined());
                assert!(!grouped || reached, "{kind:?} {losses:?}: `{name}` takes no part in the losses");
                assert!(grouped || !reached, "{kind:?} {losses:?}: `{name}` has a gradient but is not trained");
            }
        }
    }

    /// The engine's files, each with the sibling modules it names through `super::`.
    fn engine_files() -> BTreeMap<String, (String, Vec<String>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine");
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let mut uses: Vec<String> = text
                .split("super::")
                .skip(1)
                .map(|rest| rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect())
                .filter(|used: &String| !used.is_empty() && used != &name)
                .collect();
            uses.sort();
            uses.dedup();
            files.insert(name, (text, uses));
        }
        files
    }

    #[test]
    fn no_engine_file_imports_a_task() {
        for (name, (text, _)) in engine_files() {
            for task_path in ["crate::tasks::", "use crate::tasks", "super::super::tasks"] {
                assert!(!text.contains(task_path), "engine/{name}.rs names `{task_path}`");
            }
        }
    }

    #[test]
    fn the_engine_files_import_each_other_without_a_circle() {
        let files = engine_files();
        // Depth-first from each file: reaching the start again is a circle.
        for start in files.keys().filter(|name| *name != "mod") {
            let mut stack = vec![vec![start.clone()]];
            while let Some(path) = stack.pop() {
                let last = path.last().unwrap();
                for next in files.get(last).map(|(_, uses)| uses.as_slice()).unwrap_or_default() {
                    assert!(
                        next != start,
                        "engine files import each other in a circle: {} -> {next}",
                        path.join(" -> ")
                    );
                    if !path.contains(next) && next != "mod" {
                        stack.push([path.clone(), vec![next.clone()]].concat());
                    }
                }
            }
        }
    }
}
