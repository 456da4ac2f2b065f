//! What defines a run as far as the engine is concerned (policies, length, batch, seed,
//! learning rate, schedule of evaluations and checkpoints), how one invocation runs it, and
//! `run.json`, which saves both the engine's settings and the task's own section so that a
//! run can be resumed, replayed or evaluated later.

use super::error::{EngineError, io_error};
use super::fingerprint::DataRecord;
use super::trace::SavedSpec;
use crate::files::FileError;
use crate::policy::PolicySource;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::Device;

pub const RUN_FILE: &str = "run.json";

/// The engine's part of what defines a run; saved in `run.json` and reused as is on resume.
/// What is trained on which data is the task's section, saved beside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    pub policies: Vec<PolicySource>,
    /// Policies run beside `policies`, whose decisions are recorded, never applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadow_policies: Vec<PolicySource>,
    pub steps: u64,
    pub batch_size: usize,
    pub seed: u64,
    /// Base learning rate of every group; the policies scale or replace it.
    pub lr: f64,
    pub weight_decay: f64,
    /// The evaluation metric whose best value is kept in `best/`, with its direction.
    #[serde(default)]
    pub best_metric: Option<BestMetric>,
    /// Evaluate on the validation images every this many steps (0: only when a policy asks).
    pub eval_every: u64,
    /// Save a checkpoint every this many steps (0: only when a policy asks, or on pause).
    pub checkpoint_every: u64,
    /// Write histograms of each group's weights and gradients to TensorBoard every this many
    /// steps (0: never).
    #[serde(default)]
    pub histogram_every: u64,
    /// Fuel budget of one policy call.
    pub policy_fuel: u64,
    /// Stop the run as diverged after this many steps in a row whose update was skipped as
    /// non-finite (0: never).
    #[serde(default = "default_max_skipped_steps")]
    pub max_skipped_steps: u64,
    /// Complete checkpoints kept: older ones are deleted once a new one is written (0: all).
    #[serde(default = "default_keep_checkpoints")]
    pub keep_checkpoints: usize,
    /// Snapshots a policy's `snapshot` action keeps in memory, the newest first out.
    #[serde(default = "default_snapshots")]
    pub snapshots: usize,
}

pub const DEFAULT_SNAPSHOTS: usize = 1;

fn default_snapshots() -> usize {
    DEFAULT_SNAPSHOTS
}

pub const DEFAULT_MAX_SKIPPED_STEPS: u64 = 3;
pub const DEFAULT_KEEP_CHECKPOINTS: usize = 3;

fn default_max_skipped_steps() -> u64 {
    DEFAULT_MAX_SKIPPED_STEPS
}

fn default_keep_checkpoints() -> usize {
    DEFAULT_KEEP_CHECKPOINTS
}

/// How this invocation runs, beyond what defines the run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub run_dir: PathBuf,
    pub device: Device,
    /// Replace an earlier run in `run_dir` instead of refusing to start.
    pub overwrite: bool,
    /// Save a checkpoint and exit once this many steps are done, as on SIGINT or SIGTERM.
    pub pause_after_steps: Option<u64>,
    /// Where compiled policy components are cached.
    pub policy_cache: Option<PathBuf>,
    /// Save a checkpoint and exit, as on a pause, once this process has trained this long;
    /// the policies see the time left.
    pub time_limit: Option<std::time::Duration>,
    /// The processes training together; a team of one for a plain run.
    pub team: std::sync::Arc<crate::distributed::Team>,
}

/// A metric name and whether larger is better, written `name`, `name:max` or `name:min`
/// (without a direction, names containing `loss` are minimised, others maximised).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestMetric {
    pub name: String,
    pub maximize: bool,
}

impl std::str::FromStr for BestMetric {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (name, direction) = match text.rsplit_once(':') {
            Some((name, direction)) => (name, Some(direction)),
            None => (text, None),
        };
        let maximize = match direction {
            None => !name.contains("loss"),
            Some("max") => true,
            Some("min") => false,
            Some(other) => return Err(format!("direction `{other}` is neither max nor min")),
        };
        if name.is_empty() {
            return Err("expected a metric name, e.g. val_i2t_r1 or val_loss:min".into());
        }
        Ok(BestMetric { name: name.to_string(), maximize })
    }
}

/// Which policies a resumed run continues with.
#[derive(Debug, Clone)]
pub struct Resume {
    /// Policies given on the command line to replace the saved ones; refused unless
    /// `swap_policies`.
    pub policies: Option<Vec<PolicySource>>,
    pub swap_policies: bool,
    /// Shadow policies to run from here on instead of the saved ones, when given; they
    /// decide nothing, so they may change freely.
    pub shadow_policies: Option<Vec<PolicySource>>,
    /// A new length for the run (`--steps`): the policies are started with it and then
    /// given their saved state, so they re-plan their schedules from the resume step.
    pub steps: Option<u64>,
    /// `--keep-checkpoints` and `--max-skipped-steps` for the rest of the run, when given.
    pub keep_checkpoints: Option<usize>,
    pub max_skipped_steps: Option<u64>,
    /// Go on although the data differs from what the run started on (`--data-changed`).
    pub data_changed: bool,
}

/// `run.json`: the engine's settings, the task's section (opaque to the engine), the
/// model's configuration and what the policies were started with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedRun {
    pub train: RunConfig,
    /// The task's own settings, with its `kind`.
    #[serde(default)]
    pub task: serde_json::Value,
    pub model: serde_json::Value,
    /// What the policies were started with; `trainer simulate` replays runs from it.
    #[serde(default)]
    pub spec: Option<SavedSpec>,
    /// The data it trains on; absent in runs saved before the trainer recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataRecord>,
    /// Each change of policies on `--resume --swap-policies`, oldest first; `train.policies`
    /// are those of the last. `trainer simulate` replays the run through them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_swaps: Vec<PolicySwap>,
}

/// From step `step` on, the run trained with the policies `to` instead of `from` (a policy
/// named in both with the same arguments kept its state; any other started fresh).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicySwap {
    pub step: u64,
    pub from: Vec<PolicySource>,
    pub to: Vec<PolicySource>,
}

impl SavedRun {
    /// Reads `run_dir/run.json`. Runs written before tasks had a section of their own kept
    /// the task's settings inside `train`, with the kind as `train.task` (absent: `clip`);
    /// those become the task section here.
    pub fn read(run_dir: &Path) -> Result<SavedRun, EngineError> {
        let path = run_dir.join(RUN_FILE);
        let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
        let not_a_run = |err: serde_json::Error| FileError::format(&path, format!("not a run configuration: {err}"));
        let mut value: serde_json::Value = serde_json::from_str(&text).map_err(not_a_run)?;
        if value.get("task").is_none_or(serde_json::Value::is_null)
            && let Some(train) = value.get("train").and_then(serde_json::Value::as_object)
        {
            let mut task = train.clone();
            let kind = task.remove("task").unwrap_or_else(|| "clip".into());
            task.insert("kind".into(), kind);
            value["task"] = task.into();
        }
        Ok(serde_json::from_value(value).map_err(not_a_run)?)
    }

    /// The policies the run started with: before its first swap, if it had one.
    pub fn first_policies(&self) -> &[PolicySource] {
        self.policy_swaps.first().map_or(&self.train.policies, |swap| &swap.from)
    }
}

/// What a run would train, as `trainer train --dry-run` prints it: the names a policy and a
/// sweep refer to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunPlan {
    pub groups: Vec<String>,
    pub losses: Vec<String>,
    pub metrics: Vec<String>,
    pub steps: u64,
    pub steps_per_epoch: u64,
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
pub struct TrainOutcome {
    pub steps_done: u64,
    pub final_loss: Option<f64>,
    /// The end-of-run evaluation; `None` when the run paused before the end.
    pub final_scores: Option<super::Scores>,
    pub train_seconds: f64,
    /// The policy that stopped the run early, and its reason.
    pub stopped_by: Option<(String, String)>,
    /// The checkpoint written on pause.
    pub paused_at: Option<PathBuf>,
    /// Steps whose update was skipped because the loss or gradient norm was not finite.
    pub skipped_steps: u64,
}
