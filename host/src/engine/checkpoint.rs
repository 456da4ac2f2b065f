//! Checkpoints: everything a run needs to continue bit for bit (weights, optimizer moments,
//! the knob values, what the last step measured, every policy's state with its component's
//! hash). A checkpoint is written to `step-N.tmp/` and renamed to `step-N/` when complete,
//! with SHA-256 checksums of its files verified on load, so a crash mid-write leaves the
//! previous checkpoints intact and a damaged one is refused by name.

use super::error::{EngineError, io_error};
use super::exact;
use super::knobs::KnobState;
use super::loss_gradients::MeasuredGradients;
use super::snapshot::SnapshotPoint;
use crate::files::{FileError, sha256_file};
use crate::policy::PolicySource;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const CHECKPOINTS_DIR: &str = "checkpoints";
const MANIFEST: &str = "manifest.json";
/// The weights in a checkpoint, under the name a model folder gives them, so that
/// `trainer eval` reads a checkpoint as it reads `final/`.
pub const MODEL_FILE: &str = crate::models::pretrained::WEIGHTS_FILE;
pub(super) const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const FORMAT_VERSION: u32 = 1;

/// What the last step measured: the next observation is built from it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LastStep {
    #[serde(with = "exact::list")]
    pub losses: Vec<f64>,
    #[serde(with = "exact::option")]
    pub total_loss: Option<f64>,
    #[serde(with = "exact::option")]
    pub grad_norm: Option<f64>,
    #[serde(with = "exact::option")]
    pub logit_scale: Option<f64>,
    #[serde(with = "exact::option")]
    pub images_per_second: Option<f64>,
    /// Each loss term's gradient, when a policy asked for it at that step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_gradients: Option<MeasuredGradients>,
}

/// An evaluation that finished but has not yet been shown to the policies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingEvaluation {
    pub step: u64,
    #[serde(with = "exact::list")]
    pub values: Vec<f64>,
}

/// Steps whose update was skipped because the loss or gradient norm was not finite.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SkippedSteps {
    pub total: u64,
    /// How many of the last steps in a row were skipped.
    pub in_a_row: u64,
    /// The first of those, with the loss and gradient norm it measured.
    pub first: Option<u64>,
    #[serde(with = "exact::option")]
    pub first_loss: Option<f64>,
    #[serde(with = "exact::option")]
    pub first_grad_norm: Option<f64>,
}

impl SkippedSteps {
    pub fn record(&mut self, step: u64, skipped: bool, loss: f64, grad_norm: f64) {
        if !skipped {
            self.end_streak();
            return;
        }
        self.total += 1;
        if self.in_a_row == 0 {
            (self.first, self.first_loss, self.first_grad_norm) = (Some(step), Some(loss), Some(grad_norm));
        }
        self.in_a_row += 1;
    }

    /// Forgets the current run of skipped steps, keeping the total.
    pub fn end_streak(&mut self) {
        *self = SkippedSteps { total: self.total, ..SkippedSteps::default() };
    }
}

/// The trainer's own state between steps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    pub steps_done: u64,
    pub knobs: KnobState,
    pub last: LastStep,
    pub pending_evaluation: Option<PendingEvaluation>,
    #[serde(default)]
    pub skipped: SkippedSteps,
    /// The policy that stopped the run, and why: the run is over but for final/.
    #[serde(default)]
    pub stopped_by: Option<(String, String)>,
    /// Seconds spent training, over every part of the run.
    #[serde(default)]
    pub elapsed_seconds: f64,
    /// What rollbacks moved the data order by: step `s` trains on batch `s + data_offset`.
    #[serde(default)]
    pub data_offset: i64,
    /// The snapshots kept in memory when this was saved, oldest first; their tensors are the
    /// checkpoint's `snapshot-N.safetensors`.
    #[serde(default)]
    pub snapshots: Vec<SnapshotPoint>,
    /// The newest checkpoint written on schedule or at a policy's request (not for a pause),
    /// by its steps: where a rollback to a checkpoint goes, the same in a resumed run as in
    /// an uninterrupted one.
    #[serde(default)]
    pub rollback_checkpoint: Option<u64>,
}

impl TrainerState {
    /// The state before the first step, with the knobs' starting values.
    pub fn new(knobs: KnobState) -> Self {
        TrainerState {
            steps_done: 0,
            knobs,
            last: LastStep::default(),
            pending_evaluation: None,
            skipped: Default::default(),
            stopped_by: None,
            elapsed_seconds: 0.0,
            data_offset: 0,
            snapshots: Vec::new(),
            rollback_checkpoint: None,
        }
    }
}

/// A policy as recorded in a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub name: String,
    pub source: PolicySource,
    pub sha256: String,
    pub interface: String,
    /// `None` when the policy had trapped and its state could not be read.
    pub state_file: Option<String>,
    /// A shadow policy (`--shadow-policy`), whose decisions were recorded, not applied.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    /// Why this checkpoint was written out of turn (a policy fault), if it was.
    fault: Option<String>,
    trainer: TrainerState,
    policies: Vec<PolicyRecord>,
    /// SHA-256 of each file of the checkpoint.
    checksums: BTreeMap<String, String>,
}

/// A checkpoint read back and verified.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub fault: Option<String>,
    pub trainer: TrainerState,
    pub policies: Vec<PolicyRecord>,
    /// Policy states, aligned with `policies`.
    pub policy_states: Vec<Option<Vec<u8>>>,
    /// The tensors of each of `trainer.snapshots`.
    pub snapshots: Vec<HashMap<String, Tensor>>,
    pub model_file: PathBuf,
    pub optimizer: HashMap<String, Tensor>,
}

/// What to write in a checkpoint.
pub struct CheckpointContents<'a> {
    pub trainer: &'a TrainerState,
    pub fault: Option<String>,
    pub model: &'a tch::nn::VarStore,
    pub optimizer: Vec<(String, Tensor)>,
    /// Each policy's record (with `state_file` filled in here) and state.
    pub policies: Vec<(PolicyRecord, Option<Vec<u8>>)>,
    /// The tensors of each of `trainer.snapshots`, oldest first.
    pub snapshots: Vec<Vec<(String, Tensor)>>,
}

fn snapshot_file(index: usize) -> String {
    format!("snapshot-{index}.safetensors")
}

/// The folder of the checkpoint after `steps_done` steps.
pub fn dir_of(run_dir: &Path, steps_done: u64) -> PathBuf {
    run_dir.join(CHECKPOINTS_DIR).join(format!("step-{steps_done}"))
}

/// Writes `run_dir/checkpoints/step-N/` atomically; returns its path. A write that fails
/// removes what it staged: on a full disk, that is the room the next attempt needs.
pub fn save(run_dir: &Path, contents: CheckpointContents) -> Result<PathBuf, EngineError> {
    let target = dir_of(run_dir, contents.trainer.steps_done);
    let staging = target.with_extension("tmp");
    if !run_dir.is_dir() {
        // Making the staging folder would make the run folder again, empty but for this.
        return Err(io_error(&staging)(std::io::ErrorKind::NotFound.into()));
    }
    let saved = write_staged(&staging, &target, contents);
    if saved.is_err() && staging.is_dir() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    saved
}

fn write_staged(staging: &Path, target: &Path, contents: CheckpointContents) -> Result<PathBuf, EngineError> {
    if staging.exists() {
        std::fs::remove_dir_all(staging).map_err(io_error(staging))?;
    }
    std::fs::create_dir_all(staging).map_err(io_error(staging))?;
    contents.model.save(staging.join(MODEL_FILE))?;
    Tensor::write_safetensors(&contents.optimizer, staging.join(OPTIMIZER_FILE))?;
    let mut files = vec![MODEL_FILE.to_string(), OPTIMIZER_FILE.to_string()];
    for (index, tensors) in contents.snapshots.iter().enumerate() {
        let file = snapshot_file(index);
        Tensor::write_safetensors(tensors, staging.join(&file))?;
        files.push(file);
    }
    let mut policies = Vec::with_capacity(contents.policies.len());
    for (index, (mut record, state)) in contents.policies.into_iter().enumerate() {
        record.state_file = match state {
            Some(bytes) => {
                let file = format!("policy-{index}-{}.state", record.name);
                let path = staging.join(&file);
                std::fs::write(&path, bytes).map_err(io_error(&path))?;
                files.push(file.clone());
                Some(file)
            }
            None => None,
        };
        policies.push(record);
    }
    let mut checksums = BTreeMap::new();
    for file in files {
        let digest = sha256_file(&staging.join(&file))?;
        checksums.insert(file, digest);
    }
    let manifest = Manifest {
        format: FORMAT_VERSION,
        fault: contents.fault,
        trainer: contents.trainer.clone(),
        policies,
        checksums,
    };
    let manifest_path = staging.join(MANIFEST);
    let text = serde_json::to_string_pretty(&manifest).expect("manifests serialize");
    std::fs::write(&manifest_path, text + "\n").map_err(io_error(&manifest_path))?;
    if target.exists() {
        std::fs::remove_dir_all(target).map_err(io_error(target))?;
    }
    std::fs::rename(staging, target).map_err(io_error(target))?;
    Ok(target.to_path_buf())
}

/// The complete checkpoints of a run (`step-N/` with a manifest), oldest first.
fn complete(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>, EngineError> {
    let root = run_dir.join(CHECKPOINTS_DIR);
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&root).map_err(io_error(&root))? {
        let path = entry.map_err(io_error(&root))?.path();
        let step = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("step-"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(step) = step
            && path.join(MANIFEST).exists()
        {
            found.push((step, path));
        }
    }
    found.sort();
    Ok(found)
}

/// The steps of the complete checkpoints of a run, oldest first; none when they cannot be
/// listed.
pub fn complete_steps(run_dir: &Path) -> Vec<u64> {
    complete(run_dir).map(|found| found.into_iter().map(|(step, _)| step).collect()).unwrap_or_default()
}

/// The complete checkpoint after `steps_done` steps, if there is one.
pub fn complete_at(run_dir: &Path, steps_done: u64) -> Option<PathBuf> {
    let dir = run_dir.join(CHECKPOINTS_DIR).join(format!("step-{steps_done}"));
    dir.join(MANIFEST).is_file().then_some(dir)
}

/// The most recent complete checkpoint of a run, if any.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>, EngineError> {
    Ok(complete(run_dir)?.pop().map(|(_, path)| path))
}

/// Deletes the oldest complete checkpoints beyond the newest `keep` (0: keeps all); returns
/// the folders deleted. The newest is never among them: a resume continues from it.
pub fn prune(run_dir: &Path, keep: usize) -> Result<Vec<PathBuf>, EngineError> {
    let found = complete(run_dir)?;
    if keep == 0 || found.len() <= keep {
        return Ok(Vec::new());
    }
    let old: Vec<PathBuf> = found[..found.len() - keep].iter().map(|(_, path)| path.clone()).collect();
    for path in &old {
        std::fs::remove_dir_all(path).map_err(io_error(path))?;
    }
    Ok(old)
}

/// Bytes the files of the checkpoint `dir` take.
pub fn size(dir: &Path) -> Result<u64, EngineError> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        total += entry.metadata().map_err(io_error(&entry.path()))?.len();
    }
    Ok(total)
}

/// The newest checkpoint of a run that loads and verifies, and a line for each newer one
/// that did not (damaged, say), which a resume passes over; the newest's error when none
/// loads.
pub fn load_newest(run_dir: &Path) -> Result<(Checkpoint, Vec<String>), EngineError> {
    let mut passed_over = Vec::new();
    let mut first_error = None;
    for (_, dir) in complete(run_dir)?.into_iter().rev() {
        match load(&dir) {
            Ok(checkpoint) => return Ok((checkpoint, passed_over)),
            Err(err) => {
                passed_over.push(format!("{}: {err}", dir.display()));
                first_error.get_or_insert(err);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| {
        EngineError::Config(format!("--resume {}: the run has no checkpoint to resume from", run_dir.display()))
    }))
}

/// Reads and verifies the checkpoint in `dir`.
pub fn load(dir: &Path) -> Result<Checkpoint, EngineError> {
    let manifest_path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&manifest_path).map_err(io_error(&manifest_path))?;
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|err| FileError::format(&manifest_path, err.to_string()))?;
    if manifest.format != FORMAT_VERSION {
        let problem = format!("checkpoint format {} is not the supported {FORMAT_VERSION}", manifest.format);
        return Err(FileError::format(&manifest_path, problem).into());
    }
    for (file, expected) in &manifest.checksums {
        let path = dir.join(file);
        let actual = sha256_file(&path)?;
        if &actual != expected {
            return Err(FileError::format(&path, "checksum mismatch: the file is damaged").into());
        }
    }
    let policy_states = manifest
        .policies
        .iter()
        .map(|record| {
            record
                .state_file
                .as_ref()
                .map(|file| std::fs::read(dir.join(file)).map_err(io_error(&dir.join(file))))
                .transpose()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let optimizer = Tensor::read_safetensors(dir.join(OPTIMIZER_FILE))?.into_iter().collect();
    let snapshots = (0..manifest.trainer.snapshots.len())
        .map(|index| Ok(Tensor::read_safetensors(dir.join(snapshot_file(index)))?.into_iter().collect()))
        .collect::<Result<Vec<_>, EngineError>>()?;
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        fault: manifest.fault,
        trainer: manifest.trainer,
        policies: manifest.policies,
        policy_states,
        snapshots,
        model_file: dir.join(MODEL_FILE),
        optimizer,
    })
}
