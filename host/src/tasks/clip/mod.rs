//! CLIP contrastive training (`--task clip`): a dual encoder (from scratch or a Hugging Face
//! folder) on image-caption pairs, with one loss term, `contrastive`, and the evaluation of
//! its data (zero-shot accuracy on Fashion-MNIST, retrieval recall on caption sets). The
//! contrastive loss sees the whole global batch however it is split, into micro-batches or
//! over processes (see `super::contrastive`).

mod data;
mod embed;

pub use embed::{EmbedRequest, Embedded, embed};

use super::contrastive::contrastive_share;
use super::inputs::{
    DataOptions, Inputs, Precision, TaskContext, check_tokenizer_fits, describe_weights, load_model, load_tokenizer,
};
use crate::data::PixelNormalizer;
use crate::data::augment;
use crate::data::captioned::DataKind;
use crate::data::clip_tokenizer;
use crate::data::images::SquareResize;
use crate::data::prompts::{END_ID, PAD_ID, START_ID};
use crate::distributed::Team;
use crate::engine::{EngineError, Scores, StepKnobs, StepLosses, Task};
use crate::models::clip::{self, Clip, ClipConfig, parameter_groups, parameter_place};
use crate::models::groups::{Group, GroupLayout};
use crate::models::open_clip;
use crate::models::pretrained;
use crate::tasks::TaskKind;
use crate::tasks::use_model::kind_of_folder;
use data::TrainingData;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Kind, Tensor, nn};

/// The name of the only loss term of contrastive training.
const CONTRASTIVE_LOSS: &str = "contrastive";

/// The settings of a contrastive run: its section of `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipTaskConfig {
    #[serde(flatten)]
    pub inputs: Inputs,
    /// The layouts `final/` and `best/` are written in; `None`: the layout of `--model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save_format: Option<SaveFormat>,
}

/// Which checkpoint layouts a CLIP model is saved in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SaveFormat {
    /// `open_clip_config.json` and `open_clip_model.safetensors`, which open_clip loads.
    OpenClip,
    /// `config.json` and `model.safetensors`, which `transformers` loads.
    Hf,
    /// Both, side by side.
    Both,
}

impl SaveFormat {
    pub fn name(self) -> &'static str {
        match self {
            SaveFormat::OpenClip => "open_clip",
            SaveFormat::Hf => "hf",
            SaveFormat::Both => "both",
        }
    }
}

/// The flags only CLIP training has.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClipArgs {
    /// The layout of final/ and best/: `open_clip`, `hf` (Hugging Face) or `both` [default:
    /// the layout of --model; hf from scratch; --task clip].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub save_format: Option<SaveFormat>,
}

impl ClipArgs {
    pub fn given(&self) -> Vec<&'static str> {
        super::inputs::given_flags([("--save-format", self.save_format.is_some())])
    }

    pub fn config(&self, inputs: Inputs) -> ClipTaskConfig {
        ClipTaskConfig { inputs, save_format: self.save_format }
    }
}

impl ClipTaskConfig {
    /// Refuses `data` that a model trained from scratch cannot read: its vocabulary is made
    /// for its own kind of data (Fashion-MNIST's caption words, or CLIP's BPE for the rest).
    pub fn check_vocabulary_reads(&self, data: &Path) -> Result<(), EngineError> {
        let fashion_mnist = |path: &Path| DataKind::of(path).map(|kind| kind == DataKind::FashionMnist);
        if self.inputs.model.is_none() && fashion_mnist(data)? != fashion_mnist(&self.inputs.data)? {
            return Err(EngineError::Config(format!(
                "--data {}: the model was trained from scratch with a vocabulary made for its own kind of data \
                 ({}); evaluate it on data of that kind",
                data.display(),
                self.inputs.data.display()
            )));
        }
        Ok(())
    }
}

pub struct ContrastiveTask {
    model: Clip,
    var_store: nn::VarStore,
    model_config: ClipConfig,
    groups: GroupLayout,
    data: TrainingData,
    normalizer: PixelNormalizer,
    accum_steps: u64,
    team: Arc<Team>,
    /// The start-up report: tokenizer and weights.
    description: Vec<String>,
    /// The folder the model started from, whose tokenizer and preprocessing files the
    /// saved model keeps.
    started_from: Option<PathBuf>,
    /// The layouts it is saved in, and for open_clip's, the configuration written.
    save_format: SaveFormat,
    open_clip_config: Option<serde_json::Value>,
}

impl ContrastiveTask {
    /// The data of `config` and a CLIP for it; weights from `config.inputs.model` when
    /// `context.load_weights`.
    pub fn open(config: &ClipTaskConfig, context: &TaskContext) -> Result<Self, EngineError> {
        let inputs = &config.inputs;
        context.check_micro_batches(inputs)?;
        let open_clip_config = match &inputs.model {
            Some(path) if open_clip::is_open_clip(path) => {
                Some(open_clip::config_json(path, inputs.model_arch.as_deref())?)
            }
            _ => None,
        };
        let default_format = if open_clip_config.is_some() { SaveFormat::OpenClip } else { SaveFormat::Hf };
        let save_format = config.save_format.unwrap_or(default_format);
        let (data, model_config, vocabulary) = open_data(inputs, &context.data_options(inputs))?;
        // A model that did not come in open_clip's layout is checked to fit it now, not at
        // the end of the run.
        let open_clip_config = match open_clip_config {
            None if save_format != SaveFormat::Hf => Some(open_clip::config_of(&model_config).map_err(|why| {
                EngineError::Config(format!(
                    "--save-format {}: the model cannot be saved for open_clip: {why}",
                    save_format.name()
                ))
            })?),
            config => config,
        };
        let normalizer =
            PixelNormalizer::for_model(inputs.model.as_deref(), model_config.vision_config.image_size, context.device)?;
        tch::manual_seed(context.seed as i64);
        let var_store = nn::VarStore::new(context.device);
        let mut model = Clip::new(&var_store.root(), &model_config);
        if inputs.precision == Precision::Bf16 {
            model.set_compute_kind(Kind::BFloat16);
        }
        model.set_grad_checkpointing(context.execution.grad_checkpointing);
        let mut description: Vec<String> = data.describe().into_iter().collect();
        description.extend(vocabulary.iter().map(|path| format!("captions tokenized with {}", path.display())));
        if context.load_weights {
            let report = match &inputs.model {
                Some(dir) => Some(load_model(&var_store, dir, |name| Some(name.to_string()), inputs.allow_partial)?),
                None => None,
            };
            description.push(describe_weights(report.as_ref(), var_store.len(), context.seed));
        }
        Ok(ContrastiveTask {
            model,
            var_store,
            groups: parameter_groups(&model_config, inputs.group_by),
            model_config,
            data,
            normalizer,
            accum_steps: inputs.accum_steps,
            team: context.team.clone(),
            description,
            started_from: inputs.model.clone(),
            save_format,
            open_clip_config,
        })
    }
}

impl Task for ContrastiveTask {
    fn groups(&self) -> &[Group] {
        self.groups.groups()
    }

    fn loss_names(&self) -> &[&'static str] {
        &[CONTRASTIVE_LOSS]
    }

    fn metric_names(&self) -> &[&'static str] {
        self.data.metric_names()
    }

    fn var_store(&self) -> &nn::VarStore {
        &self.var_store
    }

    fn parameter_group(&self, name: &str) -> Option<usize> {
        self.groups.index(parameter_place(name))
    }

    fn steps_per_epoch(&self) -> u64 {
        self.data.steps_per_epoch()
    }

    fn train_samples(&self) -> usize {
        self.data.train_samples()
    }

    fn epoch_of(&self, step: u64) -> u64 {
        self.data.epoch_of(step)
    }

    fn describe(&self) -> Vec<String> {
        self.description.clone()
    }

    fn skipped_at_start(&self) -> &[String] {
        self.data.skipped_at_start()
    }

    fn step(&mut self, step: u64, knobs: StepKnobs) -> Result<StepLosses, EngineError> {
        let epoch = self.data.epoch_of(step);
        let batch = self.data.batch(step, knobs.total_steps)?;
        let unit = augment::augment(&batch.pixels, &batch.samples, epoch, knobs.seed, knobs.augmentation);
        let pixel_values = self.normalizer.normalize(&unit);
        let (micro_batches, team) = (self.accum_steps, &self.team);
        let raw = if let Some(backward) = knobs.backward {
            contrastive_share(&self.model, &pixel_values, &batch.input_ids, micro_batches, team, Some(backward))?
        } else {
            tch::no_grad(|| contrastive_share(&self.model, &pixel_values, &batch.input_ids, micro_batches, team, None))?
        };
        Ok(StepLosses { raw: vec![raw], images: batch.samples.len(), skipped: batch.skipped })
    }

    fn logit_scale(&self) -> Tensor {
        tch::no_grad(|| self.model.logit_scale())
    }

    fn after_update(&mut self) {
        self.model.clamp_logit_scale();
    }

    fn evaluate(&mut self) -> Result<Scores, EngineError> {
        self.data.evaluate(&self.model, &self.normalizer)
    }

    fn final_evaluation(&mut self) -> Result<Scores, EngineError> {
        self.data.final_evaluation(&self.model, &self.normalizer)
    }

    /// `final/` and `best/` in the layouts of `--save-format`: open_clip's with the
    /// configuration of the checkpoint the run started from (a run from scratch or from a
    /// Hugging Face folder writes its own as `model_cfg`).
    fn save(&self, dir: &Path) -> Result<(), EngineError> {
        let source = self.started_from.as_deref().filter(|path| path.is_dir());
        let write_open_clip = |staging: &Path| {
            let config = self.open_clip_config.as_ref().expect("set at opening for the formats that write it");
            open_clip::write_folder(staging, &self.var_store, config)
        };
        let saved = match self.save_format {
            SaveFormat::Hf => pretrained::save(dir, &self.var_store, &self.model_config, source),
            SaveFormat::Both => {
                pretrained::save_with(dir, &self.var_store, &self.model_config, source, write_open_clip)
            }
            SaveFormat::OpenClip => pretrained::save_staged(dir, |staging| {
                write_open_clip(staging)?;
                pretrained::copy_companions(staging, source)
            }),
        };
        Ok(saved?)
    }

    fn model_config(&self) -> serde_json::Value {
        serde_json::to_value(&self.model_config).expect("model configs serialize")
    }
}

/// The data set of `config`, the configuration of the model to train on it (the
/// pretrained CLIP's, or a small CLIP sized to the captions' vocabulary), and the tokenizer
/// vocabulary file the captions use (none: the word-level one).
fn open_data(
    inputs: &Inputs,
    options: &DataOptions,
) -> Result<(TrainingData, ClipConfig, Option<PathBuf>), EngineError> {
    let kind = DataKind::of(&inputs.data)?;
    if let Some(dir) = &inputs.model
        && kind_of_folder(dir)? == TaskKind::Tagging
    {
        return Err(EngineError::Config(format!(
            "--model {}: a tagger, not a CLIP model; fine-tune it with --task tagging",
            dir.display()
        )));
    }
    let arch = inputs.model_arch.as_deref();
    let pretrained: Option<ClipConfig> =
        inputs.model.as_deref().map(|path| clip::read_model_config(path, arch)).transpose()?;
    if kind == DataKind::FashionMnist {
        options.refuse_file_flags_for_fashion_mnist()?;
    }
    if kind == DataKind::FashionMnist && pretrained.is_none() {
        // Templated captions from scratch: a word-level vocabulary of exactly their words.
        let data = TrainingData::fashion_mnist(options, None)?;
        let TrainingData::Labelled(labelled) = &data else { unreachable!("made just above") };
        let captions = labelled.captions();
        let model_config = ClipConfig::tiny(captions.vocab_size, captions.context_length(), START_ID, END_ID, PAD_ID);
        return Ok((data, model_config, None));
    }
    let (tokenizer, vocabulary) = load_tokenizer(inputs.model.as_deref())?;
    let model_config = match (pretrained, &inputs.model) {
        (Some(model_config), Some(dir)) => {
            check_tokenizer_fits(&model_config, &tokenizer, dir)?;
            model_config
        }
        _ => ClipConfig::tiny(
            tokenizer.vocab_size(),
            clip_tokenizer::CONTEXT_LENGTH as i64,
            tokenizer.start_id,
            tokenizer.end_id,
            0,
        ),
    };
    let context = model_config.text_config.max_position_embeddings.max(2) as usize;
    let data = match kind {
        DataKind::FashionMnist => TrainingData::fashion_mnist(options, Some((&tokenizer, context)))?,
        DataKind::Shards => {
            let square = SquareResize::for_model(inputs.model.as_deref(), model_config.vision_config.image_size)?;
            TrainingData::shards(options, Arc::new(tokenizer), context, square)?
        }
        DataKind::Coco | DataKind::Manifest | DataKind::RamFinetune => {
            let square = SquareResize::for_model(inputs.model.as_deref(), model_config.vision_config.image_size)?;
            TrainingData::captioned(options, Arc::new(tokenizer), context, square)?
        }
    };
    Ok((data, model_config, Some(vocabulary)))
}
