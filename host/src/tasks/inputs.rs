//! What every task reads: the model folder to start from, the data, and how to read them.
//! One set of flags and one section of `run.json` shared by all tasks, so `--model`,
//! `--data` and `--precision` mean the same thing whatever is trained; and the pieces
//! every task loads them with (tokenizer, weights with a report of what was loaded).

use super::shards::StreamOptions;
use crate::data::clip_tokenizer::{self, ClipTokenizer};
use crate::data::fashion_mnist;
use crate::data::sampler::Shard;
use crate::distributed::Team;
use crate::engine::EngineError;
use crate::models::clip::ClipConfig;
use crate::models::groups::GroupBy;
use crate::models::pretrained::{self, LoadReport, PretrainedError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, nn};

/// How this process runs a task: choices of speed and memory that leave the results as they
/// are, so they are not saved in `run.json` and a resumed run may choose again.
#[derive(Debug, Clone, Copy)]
pub struct Execution {
    /// Threads decoding images.
    pub workers: usize,
    /// Activation checkpointing of the transformer layers.
    pub grad_checkpointing: bool,
}

/// The model and data of a task, as saved in its section of `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inputs {
    /// A model folder to start from; `None`: a small model trained from scratch.
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// The open_clip architecture of a `model` that is a weights file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_arch: Option<String>,
    /// Start the variables `model` lacks from scratch instead of refusing it.
    #[serde(default)]
    pub allow_partial: bool,
    /// The dtype the transformer layers compute in.
    #[serde(default)]
    pub precision: Precision,
    /// A Fashion-MNIST folder, a COCO captions `.json` or a JSONL manifest.
    #[serde(alias = "data_dir")]
    pub data: PathBuf,
    /// The folder image paths are relative to, when not the default.
    #[serde(default)]
    pub images: Option<PathBuf>,
    /// A held-out set of its own, instead of the last images of `data`.
    #[serde(default)]
    pub val_data: Option<PathBuf>,
    /// Leave out unreadable samples (counted and logged) instead of stopping.
    #[serde(default)]
    pub skip_bad_samples: bool,
    /// Micro-batches per optimizer step (per process); the losses still see the whole batch.
    #[serde(default = "one")]
    pub accum_steps: u64,
    /// How the model's parameters are split into groups.
    #[serde(default)]
    pub group_by: GroupBy,
    /// Samples per epoch of WebDataset shards; `None`: the shards' samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_num_samples: Option<u64>,
    /// Shards drawn with replacement rather than dealt out once per pass.
    #[serde(default)]
    pub dataset_resampled: bool,
    /// Samples of a shard stream shuffled together.
    #[serde(default = "default_shuffle_buffer")]
    pub shuffle_buffer: u64,
}

fn one() -> u64 {
    1
}

/// open_clip's sample shuffle buffer (`_SAMPLE_SHUFFLE_SIZE`).
const SHUFFLE_BUFFER: u64 = 5000;

fn default_shuffle_buffer() -> u64 {
    SHUFFLE_BUFFER
}

/// The flags of [`Inputs`].
#[derive(Debug, Clone, Default, clap::Args)]
pub struct InputArgs {
    /// The model to fine-tune: a Hugging Face CLIP folder (config.json, model.safetensors),
    /// an open_clip folder (open_clip_config.json), a model this trainer saved (a run's
    /// final/ or best/), or a CLIP weights file: OpenAI's TorchScript `.pt`, or open_clip
    /// weights with --model-arch; without it a small model is trained from scratch.
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// The open_clip architecture of a --model weights file (`.bin`, `.pt`, `.safetensors`):
    /// ViT-B-32, ViT-B-16, ViT-L-14, each also `-quickgelu` [default for OpenAI's `.pt`: from
    /// its tensors].
    #[arg(long, value_name = "NAME")]
    pub model_arch: Option<String>,
    /// Accept a --model folder that lacks some of the model's tensors: those start from
    /// scratch (they are listed at start-up).
    #[arg(long)]
    pub allow_partial: bool,
    /// `bf16`: transformer layers compute in bfloat16 (mixed precision, for GPUs); weights,
    /// optimizer state and the loss stay float32 [default: fp32].
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// Training data: a Fashion-MNIST folder of IDX files, a COCO captions file
    /// (`captions_*.json`), a JSONL manifest (`{"image": ..., "captions": [...]}` per line), or
    /// WebDataset shards (`'shards/{00000..00099}.tar'`, patterns joined by `::`, or a `.txt`
    /// list of shards; samples of `jpg|jpeg|png|webp` with `txt` or `json` captions). For
    /// detection: COCO instances, a JSONL manifest of boxes, a Pascal VOC folder or split list
    /// (`ImageSets/Main/train.txt`), or a YOLO `data.yaml` or folder (`images/`, `labels/`)
    /// [default: /usr/share/datasets/fashion-mnist].
    #[arg(long, value_name = "PATH")]
    pub data: Option<PathBuf>,
    /// Folder the image paths of --data are relative to [default: the manifest's folder; for
    /// COCO `annotations/captions_X.json`, the folder `X/` beside `annotations/`].
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Held-out set (as --data) for evaluation; of a YOLO `data.yaml`, its `val` images
    /// [default: a YOLO data.yaml's `val` images, or the last 5% of --data, at most 5,000
    /// images; of shards, the last shard].
    #[arg(long, value_name = "PATH")]
    pub val_data: Option<PathBuf>,
    /// Leave out missing or unreadable images and malformed manifest lines, counting them in
    /// metrics.jsonl and listing them in run.log, instead of stopping.
    #[arg(long)]
    pub skip_bad_samples: bool,
    /// Split each batch into N micro-batches (less memory); every loss still sees the whole
    /// batch, and the gradient is the whole batch's [default: 1].
    #[arg(long, value_name = "N", value_parser = crate::cli::positive_u64)]
    pub accum_steps: Option<u64>,
    /// `layer`: each layer of each tower is a parameter group of its own (`vision.embeddings`,
    /// `vision.0` …, `vision.post`), for policies that set rates by depth, such as `llrd`
    /// [default: part: one group per tower, projection and head].
    #[arg(long, value_enum, value_name = "HOW")]
    pub group_by: Option<GroupBy>,
    /// Samples per epoch of WebDataset shards, over all processes, as open_clip's flag
    /// [default: every sample of the shards].
    #[arg(long, value_name = "N", value_parser = crate::cli::positive_u64)]
    pub train_num_samples: Option<u64>,
    /// Draw each process's shards with replacement (webdataset's ResampledShards) instead of
    /// dealing every shard out once per pass.
    #[arg(long)]
    pub dataset_resampled: bool,
    /// Samples of a shard stream shuffled together (webdataset's shuffle buffer) [default: 5000].
    #[arg(long, value_name = "N", value_parser = crate::cli::positive_u64)]
    pub shuffle_buffer: Option<u64>,
}

impl Inputs {
    /// Refuses the flags of shard streams for data that is not shards.
    pub fn refuse_stream_flags(&self) -> Result<(), EngineError> {
        if crate::data::webdataset::is_shards(&self.data) {
            return Ok(());
        }
        let inputs = self;
        let given = [
            ("--train-num-samples", inputs.train_num_samples.is_some()),
            ("--dataset-resampled", inputs.dataset_resampled),
            ("--shuffle-buffer", inputs.shuffle_buffer != SHUFFLE_BUFFER),
        ];
        match given.iter().find(|(_, given)| *given) {
            Some((flag, _)) => Err(EngineError::Config(format!(
                "{flag}: goes with WebDataset shards, and --data {} is not shards",
                inputs.data.display()
            ))),
            None => Ok(()),
        }
    }
}

impl InputArgs {
    /// The settings to save, with absolute paths: a run is resumed and evaluated later,
    /// from other folders.
    pub fn inputs(&self) -> Inputs {
        Inputs {
            model: self.model.clone().map(absolute),
            model_arch: self.model_arch.clone(),
            allow_partial: self.allow_partial,
            precision: self.precision.unwrap_or_default(),
            data: absolute(self.data.clone().unwrap_or_else(|| PathBuf::from(fashion_mnist::DEFAULT_DIR))),
            images: self.images.clone().map(absolute),
            val_data: self.val_data.clone().map(absolute),
            skip_bad_samples: self.skip_bad_samples,
            accum_steps: self.accum_steps.unwrap_or(1),
            group_by: self.group_by.unwrap_or_default(),
            train_num_samples: self.train_num_samples,
            dataset_resampled: self.dataset_resampled,
            shuffle_buffer: self.shuffle_buffer.unwrap_or(SHUFFLE_BUFFER),
        }
    }

    /// The flags given, by name.
    pub fn given(&self) -> Vec<&'static str> {
        given_flags([
            ("--model", self.model.is_some()),
            ("--model-arch", self.model_arch.is_some()),
            ("--allow-partial", self.allow_partial),
            ("--precision", self.precision.is_some()),
            ("--data", self.data.is_some()),
            ("--images", self.images.is_some()),
            ("--val-data", self.val_data.is_some()),
            ("--skip-bad-samples", self.skip_bad_samples),
            ("--accum-steps", self.accum_steps.is_some()),
            ("--group-by", self.group_by.is_some()),
            ("--train-num-samples", self.train_num_samples.is_some()),
            ("--dataset-resampled", self.dataset_resampled),
            ("--shuffle-buffer", self.shuffle_buffer.is_some()),
        ])
    }
}

/// The flags of `flags` (name, whether given) that were given.
pub fn given_flags<const N: usize>(flags: [(&'static str, bool); N]) -> Vec<&'static str> {
    flags.into_iter().filter_map(|(flag, given)| given.then_some(flag)).collect()
}

/// `path` made absolute against the current folder (without resolving links); as given
/// when that fails.
pub fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

/// What the transformer layers compute in; weights, optimizer state, layer norms and the
/// loss are float32 either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    /// bfloat16 through explicit casts (mixed precision), for GPUs with bfloat16 units.
    Bf16,
}

/// How a task is opened: for which run settings, on which device, and whether the weights
/// of `--model` are loaded (a resumed run, or an evaluation of a saved model, loads its own
/// instead).
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub device: Device,
    /// The processes training together, for the shard of each batch and the collectives
    /// of cross-sample losses.
    pub team: Arc<Team>,
    pub execution: Execution,
    pub seed: u64,
    pub batch_size: usize,
    pub load_weights: bool,
}

impl TaskContext {
    /// The context of a run with `options`; `load_weights` is false where a checkpoint
    /// will replace the weights (a resume).
    pub fn of_run(
        options: &crate::engine::RunOptions,
        execution: Execution,
        seed: u64,
        batch_size: usize,
        load_weights: bool,
    ) -> Self {
        TaskContext { device: options.device, team: options.team.clone(), execution, seed, batch_size, load_weights }
    }

    pub fn data_options<'a>(&self, inputs: &'a Inputs) -> DataOptions<'a> {
        DataOptions {
            data: &inputs.data,
            images: inputs.images.as_deref(),
            val_data: inputs.val_data.as_deref(),
            skip_bad_samples: inputs.skip_bad_samples,
            workers: self.execution.workers,
            seed: self.seed,
            batch_size: self.batch_size,
            shard: Shard { index: self.team.rank(), count: self.team.size() },
            device: self.device,
            stream: StreamOptions {
                train_num_samples: inputs.train_num_samples,
                resampled: inputs.dataset_resampled,
                shuffle_buffer: inputs.shuffle_buffer,
            },
        }
    }

    /// Refuses --accum-steps that would leave a micro-batch of this process without images.
    pub fn check_micro_batches(&self, inputs: &Inputs) -> Result<(), EngineError> {
        let shard = self.batch_size / self.team.size();
        if inputs.accum_steps > shard as u64 {
            return Err(EngineError::Config(format!(
                "--accum-steps {} is more than the {shard} images each process takes of --batch-size {}: each \
                 micro-batch needs an image",
                inputs.accum_steps, self.batch_size
            )));
        }
        Ok(())
    }
}

/// Where the data comes from and how to read it.
#[derive(Debug, Clone)]
pub struct DataOptions<'a> {
    pub data: &'a Path,
    /// The image folder of a COCO file or manifest, when not the default.
    pub images: Option<&'a Path>,
    /// A separate held-out set (COCO or manifest) instead of the data's last images.
    pub val_data: Option<&'a Path>,
    pub skip_bad_samples: bool,
    pub workers: usize,
    pub seed: u64,
    pub batch_size: usize,
    /// This process's part of each batch.
    pub shard: Shard,
    pub device: Device,
    /// How WebDataset shards are streamed.
    pub stream: StreamOptions,
}

impl DataOptions<'_> {
    /// Refuses `--val-data` and `--images` for Fashion-MNIST (or mosaics made from it),
    /// which has held-out images of its own and no image files: silently ignoring them
    /// would report numbers on other images than the user named.
    pub fn refuse_file_flags_for_fashion_mnist(&self) -> Result<(), EngineError> {
        let given = [("--val-data", self.val_data), ("--images", self.images)];
        match given.iter().find(|(_, path)| path.is_some()) {
            Some((flag, _)) => Err(EngineError::Config(format!(
                "{flag}: {} is Fashion-MNIST, which holds out its own images; give a COCO file or manifest as --data",
                self.data.display()
            ))),
            None => Ok(()),
        }
    }
}

/// How many of a data set's `len` usable samples a run without `--val-data` holds out for
/// evaluation, from its end: 5% (at most 5,000 images, the size of COCO's usual test split),
/// at least `minimum`. Refused when what is left would not fill a batch.
pub fn held_out_count(data: &Path, len: usize, minimum: usize, batch_size: usize) -> Result<usize, EngineError> {
    let count = ((len as f64 * 0.05).ceil() as usize).clamp(minimum, 5000);
    if len < count + batch_size {
        return Err(EngineError::Config(format!(
            "{}: {len} usable samples; holding out {count} for evaluation leaves fewer than --batch-size {batch_size}",
            data.display()
        )));
    }
    Ok(count)
}

pub fn check_batch_size(batch_size: usize, available: usize) -> Result<(), EngineError> {
    if batch_size > available {
        return Err(EngineError::Config(format!(
            "--batch-size {batch_size} is larger than the training images ({available})"
        )));
    }
    Ok(())
}

/// The tokenizer of the model folder (`tokenizer.json`) when it has one, otherwise OpenAI
/// CLIP's, installed by `make`; with the file it was read from.
pub fn load_tokenizer(model: Option<&Path>) -> Result<(ClipTokenizer, PathBuf), EngineError> {
    if let Some(path) = model.map(|dir| dir.join(clip_tokenizer::TOKENIZER_JSON)).filter(|path| path.exists()) {
        return Ok((ClipTokenizer::from_tokenizer_json(&path)?, path));
    }
    let bpe = clip_tokenizer::default_bpe_path().ok_or_else(|| {
        EngineError::Config("HOME is not set, so the CLIP tokenizer's vocabulary cannot be found".into())
    })?;
    let tokenizer = ClipTokenizer::from_bpe_file(&bpe)
        .map_err(|err| EngineError::Config(format!("CLIP tokenizer: {err} (run `make` once to install it)")))?;
    Ok((tokenizer, bpe))
}

pub fn check_tokenizer_fits(
    model_config: &ClipConfig,
    tokenizer: &ClipTokenizer,
    dir: &Path,
) -> Result<(), EngineError> {
    let text = &model_config.text_config;
    // eos_token_id 2 is the legacy value of configs whose pooling takes the largest id.
    if tokenizer.vocab_size() > text.vocab_size || text.eos_token_id != tokenizer.end_id && text.eos_token_id != 2 {
        return Err(EngineError::Config(format!(
            "--model {}: text_config (vocab_size {}, eos_token_id {}) does not fit the tokenizer \
             (vocab {}, end token {})",
            dir.display(),
            text.vocab_size,
            text.eos_token_id,
            tokenizer.vocab_size(),
            tokenizer.end_id
        )));
    }
    Ok(())
}

/// Loads `inputs.model`'s weights into `var_store`, `file_name` mapping each variable to
/// its tensor in the folder's weights (`None`: a part the folder is not expected to have,
/// such as a new head). A folder lacking tensors is refused by name unless
/// `--allow-partial` was given.
pub fn load_model(
    var_store: &nn::VarStore,
    dir: &Path,
    file_name: impl Fn(&str) -> Option<String>,
    allow_partial: bool,
) -> Result<LoadReport, EngineError> {
    pretrained::load_folder_named(var_store, dir, file_name, allow_partial).map_err(|err| match err {
        PretrainedError::Missing { .. } => EngineError::Config(format!(
            "--model {}: {err}; pass --allow-partial to start those from scratch",
            dir.display()
        )),
        other => other.into(),
    })
}

/// The start-up line of a model's weights: what `--model` provided, or that the whole
/// model starts from the seed.
pub fn describe_weights(report: Option<&LoadReport>, variables: usize, seed: u64) -> String {
    match report {
        Some(report) => format!("weights: {}", report.describe()),
        None => format!("weights: none loaded; all {variables} tensors initialised from seed {seed}"),
    }
}
