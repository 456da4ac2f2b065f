//! What users do with a trained model: `trainer eval` (the end-of-run evaluation of any
//! saved model, on the run's data or other data) and the inputs `embed` and `predict` share
//! (which images, decoded as training decodes them). A model folder is found as a user
//! names it: a run's `final/`, `best/` or `checkpoints/step-N/` (then the run's own
//! settings say how it was trained and on what), or a Hugging Face folder.

use super::inputs::{Execution, TaskContext, absolute};
use super::{TaskConfig, TaskKind};
use crate::data::captioned::{self, Needs};
use crate::data::images::load_rgb_square;
use crate::data::{PixelNormalizer, fashion_mnist};
use crate::engine::{CHECKPOINTS_DIR, EngineError, RUN_FILE, SavedRun, Scores};
use crate::files::FileError;
use crate::models::owlvit::OwlVariant;
use crate::models::{open_clip, pretrained, tagger};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// `trainer eval`: which model, on which data.
#[derive(Debug, Clone)]
pub struct EvalRequest {
    pub model: PathBuf,
    /// The task to evaluate as; by default the run's, or the folder's kind of model.
    pub task: Option<TaskKind>,
    /// Replace the run's data (or the default data) for this evaluation.
    pub data: Option<PathBuf>,
    pub images: Option<PathBuf>,
    pub val_data: Option<PathBuf>,
    /// Tags of a tagging manifest, for a folder outside a run.
    pub tags: Option<PathBuf>,
    pub skip_bad_samples: bool,
    /// The seed of seeded evaluation data (mosaics); by default the run's.
    pub seed: Option<u64>,
    pub device: Device,
    pub workers: usize,
}

/// The run a model folder belongs to: the folder holding `final/` or `best/`, or
/// `checkpoints/` with `step-N/`.
pub fn run_of(model: &Path) -> Option<PathBuf> {
    let model = &absolute(model.to_path_buf());
    let parent = model.parent()?;
    let run = if parent.file_name()? == CHECKPOINTS_DIR { parent.parent()? } else { parent };
    run.join(RUN_FILE).is_file().then(|| run.to_path_buf())
}

/// The kind of model in `dir`, by its `config.json`: a tagger, a detector or a CLIP.
pub fn kind_of_folder(dir: &Path) -> Result<TaskKind, EngineError> {
    if dir.is_file() && crate::tasks::tagging::ram::is_ram(dir) {
        return Ok(TaskKind::Tagging);
    }
    if open_clip::is_open_clip(dir) {
        return Ok(TaskKind::Clip);
    }
    let config: serde_json::Value = pretrained::read_config(dir)?;
    let detectors = [OwlVariant::OwlVit, OwlVariant::Owlv2].map(OwlVariant::model_type);
    Ok(match config["model_type"].as_str() {
        Some(tagger::MODEL_TYPE) => TaskKind::Tagging,
        _ if crate::tasks::tagging::ram::is_ram_type(&config["model_type"]) => TaskKind::Tagging,
        Some(kind) if detectors.contains(&kind) => TaskKind::Detection,
        _ => TaskKind::Clip,
    })
}

fn refuse_other_task(dir: &Path, found: TaskKind, asked: Option<TaskKind>, whose: &str) -> Result<(), EngineError> {
    match asked {
        Some(asked) if asked != found => Err(EngineError::Config(format!(
            "--model {}: {whose} --task {}, not --task {}",
            dir.display(),
            found.name(),
            asked.name()
        ))),
        _ => Ok(()),
    }
}

/// Evaluates the model of `request` with the metrics and data its training would use at the
/// end of a run, and returns them.
pub fn evaluate(request: &EvalRequest) -> Result<Scores, EngineError> {
    let (config, context, dir) = evaluation_settings(request)?;
    let mut task = config.open(&context)?;
    load_evaluated_weights(task.var_store(), &context, &dir)?;
    task.final_evaluation()
}

/// The task settings and context that evaluate the model of `request`, and its folder: the
/// run's settings for a folder of a run (its weights are then loaded after opening, see
/// [`load_evaluated_weights`]), the folder's kind of model otherwise.
pub fn evaluation_settings(request: &EvalRequest) -> Result<(TaskConfig, TaskContext, PathBuf), EngineError> {
    let dir = absolute(request.model.clone());
    if !pretrained::weights_in(&dir).is_file() && !open_clip::is_open_clip(&dir) {
        return Err(EngineError::Config(format!(
            "--model {}: no {} or {} (expected a run's final/, best/, checkpoints/step-N/, or a Hugging Face \
             folder)",
            dir.display(),
            pretrained::WEIGHTS_FILE,
            pretrained::PYTORCH_WEIGHTS_FILE
        )));
    }
    let in_run = run_of(&dir);
    let (mut config, seed, load_weights) = match &in_run {
        Some(run) => {
            let saved = SavedRun::read(run)?;
            let mut config = TaskConfig::of_saved(&saved, run)?;
            refuse_other_task(&dir, config.kind(), request.task, "was trained by a run of")?;
            if request.data.is_none() && request.tags.is_some() {
                return Err(EngineError::Config("--tags: goes with --data; the run's data has its tags".into()));
            }
            config.for_evaluation(&dir);
            (config, saved.train.seed, false)
        }
        None => {
            let kind = kind_of_folder(&dir)?;
            refuse_other_task(&dir, kind, request.task, "holds a model of")?;
            let mut args = super::TaskArgs::default();
            args.inputs.model = Some(dir.clone());
            args.tagging.tags = request.tags.clone();
            (args.config(kind)?, 0, true)
        }
    };
    if let Some(data) = &request.data {
        config.evaluate_on(data, request.tags.clone())?;
    }
    let inputs = config.inputs_mut();
    inputs.images = request.images.clone().or(inputs.images.take());
    inputs.val_data = request.val_data.clone().or(inputs.val_data.take());
    inputs.skip_bad_samples |= request.skip_bad_samples;
    let context = TaskContext {
        device: request.device,
        team: std::sync::Arc::new(crate::distributed::Team::solo()),
        execution: Execution { workers: request.workers, grad_checkpointing: false },
        seed: request.seed.unwrap_or(seed),
        // Evaluation draws no batches; the smallest size passes every check.
        batch_size: 1,
        load_weights,
    };
    Ok((config, context, dir))
}

/// Loads the weights of `dir` into a task opened with `context`, unless opening loaded them.
pub fn load_evaluated_weights(
    var_store: &tch::nn::VarStore,
    context: &TaskContext,
    dir: &Path,
) -> Result<(), EngineError> {
    if !context.load_weights {
        pretrained::load_folder_named(var_store, dir, |name| Some(name.to_string()), false)?;
    }
    Ok(())
}

/// The images a model is applied to: a folder's PNG and JPEG files (sorted by name), or
/// the images of a COCO file or manifest.
#[derive(Debug, Clone, Default)]
pub struct ImageSource {
    pub folder: Option<PathBuf>,
    pub data: Option<PathBuf>,
    /// The folder the image paths of `data` are relative to, when not the default.
    pub images_of_data: Option<PathBuf>,
    /// Images per forward pass.
    pub batch_size: usize,
}

impl ImageSource {
    pub fn is_given(&self) -> bool {
        self.folder.is_some() || self.data.is_some()
    }

    /// The image files, in the order their results are written.
    pub fn files(&self) -> Result<Vec<PathBuf>, EngineError> {
        match (&self.folder, &self.data) {
            (Some(dir), None) => {
                let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                    .map_err(FileError::io(dir))?
                    .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                    .filter(|path| {
                        let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
                        matches!(extension.as_deref(), Some("png" | "jpg" | "jpeg"))
                    })
                    .collect();
                files.sort();
                if files.is_empty() {
                    return Err(FileError::format(dir, "no PNG or JPEG files").into());
                }
                Ok(files)
            }
            (None, Some(path)) => {
                if path.is_dir() || path == Path::new(fashion_mnist::DEFAULT_DIR) {
                    return Err(EngineError::Config(format!(
                        "--data {}: give image files: a COCO file, a JSONL manifest, or --images DIR",
                        path.display()
                    )));
                }
                let loaded = captioned::load(path, self.images_of_data.as_deref(), false, Needs::Images)?;
                Ok(loaded.samples.into_iter().map(|sample| sample.image).collect())
            }
            _ => Err(EngineError::Config("give the images: --images DIR or --data FILE".into())),
        }
    }
}

/// `files` decoded as training decodes them (centre crop, resize to `normalizer`'s size),
/// normalised, in batches of `batch_size`, each handed to `consume` with its files.
pub fn for_each_batch(
    files: &[PathBuf],
    normalizer: &PixelNormalizer,
    device: Device,
    batch_size: usize,
    mut consume: impl FnMut(&[PathBuf], &Tensor) -> Result<(), EngineError>,
) -> Result<(), EngineError> {
    let size = normalizer.image_size();
    let square = normalizer.square();
    for chunk in files.chunks(batch_size) {
        let mut pixels = Vec::with_capacity(chunk.len() * (3 * size * size) as usize);
        for file in chunk {
            pixels.extend(load_rgb_square(file, &square)?);
        }
        let batch = Tensor::from_slice(&pixels).view([chunk.len() as i64, 3, size, size]);
        let unit = batch.to_device(device).to_kind(Kind::Float) / 255.0;
        tch::no_grad(|| consume(chunk, &normalizer.normalize(&unit)))?;
    }
    Ok(())
}
