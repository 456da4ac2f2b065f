//! CLIP contrastive training as a [`Task`]: a dual encoder (from scratch or a Hugging Face
//! folder) on image-caption pairs, with one loss term, `contrastive`, and the evaluation of
//! its data (zero-shot accuracy on Fashion-MNIST, retrieval recall on caption sets).

use super::data::{DataOptions, Scores, TrainingData};
use super::run::{EngineError, Precision, TrainConfig};
use super::task::{StepKnobs, StepLosses, Task};
use crate::data::PixelNormalizer;
use crate::data::augment;
use crate::data::captioned::DataKind;
use crate::data::clip_tokenizer::{self, ClipTokenizer};
use crate::data::prompts::{END_ID, PAD_ID, START_ID};
use crate::models::clip::{Clip, ClipConfig, PARAMETER_GROUPS, parameter_group};
use crate::models::pretrained;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Kind, Tensor, nn};

/// The name of the only loss term of contrastive training.
const CONTRASTIVE_LOSS: &str = "contrastive";

pub struct ContrastiveTask {
    model: Clip,
    var_store: nn::VarStore,
    model_config: ClipConfig,
    data: TrainingData,
    normalizer: PixelNormalizer,
    accum_steps: u64,
    /// The tokenizer's vocabulary file; `None` for the word-level vocabulary.
    vocabulary: Option<PathBuf>,
}

impl ContrastiveTask {
    /// The data of `config` and a CLIP for it; weights from `config.model` when
    /// `load_weights` (a resumed run takes them from its checkpoint instead).
    pub fn open(config: &TrainConfig, options: &DataOptions, load_weights: bool) -> Result<Self, EngineError> {
        let (data, model_config, vocabulary) = open_data(config, options)?;
        let normalizer =
            PixelNormalizer::for_model(config.model.as_deref(), model_config.vision_config.image_size, options.device)?;
        tch::manual_seed(config.seed as i64);
        let var_store = nn::VarStore::new(options.device);
        let mut model = Clip::new(&var_store.root(), &model_config);
        if config.precision == Precision::Bf16 {
            model.set_compute_kind(Kind::BFloat16);
        }
        if let (Some(dir), true) = (&config.model, load_weights) {
            pretrained::load_weights(&var_store, &dir.join(pretrained::WEIGHTS_FILE))?;
        }
        Ok(ContrastiveTask {
            model,
            var_store,
            model_config,
            data,
            normalizer,
            accum_steps: config.accum_steps,
            vocabulary,
        })
    }
}

impl Task for ContrastiveTask {
    fn groups(&self) -> &[&'static str] {
        &PARAMETER_GROUPS
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
        Some(parameter_group(name))
    }

    fn steps_per_epoch(&self) -> u64 {
        self.data.steps_per_epoch()
    }

    fn epoch_of(&self, step: u64) -> u64 {
        self.data.epoch_of(step)
    }

    fn describe(&self) -> Vec<String> {
        self.vocabulary.iter().map(|path| format!("captions tokenized with {}", path.display())).collect()
    }

    fn skipped_at_start(&self) -> &[String] {
        self.data.skipped_at_start()
    }

    fn step(&mut self, step: u64, knobs: StepKnobs) -> Result<StepLosses, EngineError> {
        let epoch = self.data.epoch_of(step);
        let batch = self.data.batch(step, knobs.total_steps)?;
        let unit = augment::augment(&batch.pixels, &batch.samples, epoch, knobs.seed, knobs.augmentation);
        let pixel_values = self.normalizer.normalize(&unit);
        let raw = if knobs.backward {
            self.model.contrastive_backward(&pixel_values, &batch.input_ids, knobs.loss_weights[0], self.accum_steps)
        } else {
            tch::no_grad(|| self.model.contrastive_loss(&pixel_values, &batch.input_ids))
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

    fn save(&self, dir: &Path) -> Result<(), EngineError> {
        Ok(pretrained::save(dir, &self.var_store, &self.model_config)?)
    }

    fn model_config(&self) -> serde_json::Value {
        serde_json::to_value(&self.model_config).expect("model configs serialize")
    }
}

/// The data set of `config`, the configuration of the model to train on it (the
/// pretrained CLIP's, or a small CLIP sized to the captions' vocabulary), and the tokenizer
/// vocabulary file the captions use (none: the word-level one).
fn open_data(
    config: &TrainConfig,
    options: &DataOptions,
) -> Result<(TrainingData, ClipConfig, Option<PathBuf>), EngineError> {
    let kind = DataKind::of(&config.data)?;
    let pretrained: Option<ClipConfig> = config.model.as_deref().map(pretrained::read_config).transpose()?;
    if kind == DataKind::FashionMnist && pretrained.is_none() {
        // Templated captions from scratch: a word-level vocabulary of exactly their words.
        let data = TrainingData::fashion_mnist(options, None)?;
        let TrainingData::Labelled(labelled) = &data else { unreachable!("made just above") };
        let captions = labelled.captions();
        let model_config = ClipConfig::tiny(captions.vocab_size, captions.context_length(), START_ID, END_ID, PAD_ID);
        return Ok((data, model_config, None));
    }
    let (tokenizer, vocabulary) = load_tokenizer(config.model.as_deref())?;
    let model_config = match (pretrained, &config.model) {
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
        DataKind::Coco | DataKind::Manifest => {
            TrainingData::captioned(options, Arc::new(tokenizer), context, model_config.vision_config.image_size)?
        }
    };
    Ok((data, model_config, Some(vocabulary)))
}

/// The tokenizer of the model folder (`tokenizer.json`) when it has one, otherwise OpenAI
/// CLIP's, installed by `make`; with the file it was read from.
pub(super) fn load_tokenizer(model: Option<&Path>) -> Result<(ClipTokenizer, PathBuf), EngineError> {
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

pub(super) fn check_tokenizer_fits(
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
