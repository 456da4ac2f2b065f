//! What contrastive training reads and evaluates on: Fashion-MNIST (labelled images with
//! templated captions; zero-shot accuracy on the test split) or an image-caption data set
//! (COCO or a JSONL manifest; validation loss and retrieval recall on a held-out split).

use crate::data::captioned::Needs;
use crate::data::clip_tokenizer::ClipTokenizer;
use crate::data::fashion_mnist::{self, CLASS_NAMES, LabelledImages, Split};
use crate::data::images::SquareResize;
use crate::data::prompts::{CaptionTable, TEMPLATES};
use crate::data::sampler::EpochSampler;
use crate::data::{PixelNormalizer, grey_to_unit};
use crate::engine::{EngineError, Scores};
use crate::eval::{VALIDATION_METRICS, validation_metrics, zero_shot_accuracy};
use crate::models::clip::Clip;
use crate::tasks::captioned::{CAPTIONED_METRICS, CaptionedTraining, EVAL_BATCH_SIZE, TrainBatch, caption_draw};
use crate::tasks::inputs::{DataOptions, check_batch_size};
use crate::tasks::shards::ShardTraining;
use std::sync::Arc;
use tch::{Device, Tensor};

pub enum TrainingData {
    Labelled(LabelledData),
    Captioned(Box<CaptionedTraining>),
    Shards(Box<ShardTraining>),
}

impl TrainingData {
    /// Fashion-MNIST from the folder `options.data`; `tokenizer` (with its context length)
    /// makes the captions when the model is a pretrained CLIP, a word-level vocabulary
    /// otherwise.
    pub fn fashion_mnist(
        options: &DataOptions,
        tokenizer: Option<(&ClipTokenizer, usize)>,
    ) -> Result<TrainingData, EngineError> {
        let all_train = fashion_mnist::load(options.data, Split::Train)?;
        let test = fashion_mnist::load(options.data, Split::Test)?;
        let train_count = all_train.len() as i64 - fashion_mnist::VALIDATION_IMAGES;
        check_batch_size(options.batch_size, train_count.max(0) as usize)?;
        let captions = match tokenizer {
            Some((tokenizer, context)) => CaptionTable::with_clip_tokenizer(&CLASS_NAMES, tokenizer, context),
            None => CaptionTable::new(&CLASS_NAMES),
        };
        Ok(TrainingData::Labelled(LabelledData {
            sampler: EpochSampler::new(options.seed, train_count as usize, options.batch_size, options.shard),
            caption_ids: captions.ids.to_device(options.device),
            captions,
            train_images: all_train.images.narrow(0, 0, train_count).to_device(options.device),
            train_labels: all_train.labels.narrow(0, 0, train_count).to_device(options.device),
            validation: all_train.slice(train_count, fashion_mnist::VALIDATION_IMAGES),
            test,
            seed: options.seed,
            device: options.device,
        }))
    }

    /// A COCO captions file or JSONL manifest, with images made square by `square` and
    /// captions tokenized to `context_length`.
    pub fn captioned(
        options: &DataOptions,
        tokenizer: Arc<ClipTokenizer>,
        context_length: usize,
        square: SquareResize,
    ) -> Result<TrainingData, EngineError> {
        let data = CaptionedTraining::open(options, Needs::Captions, |_| Ok(()), tokenizer, context_length, square)?;
        Ok(TrainingData::Captioned(Box::new(data)))
    }

    /// WebDataset shards, with images made square by `square` and captions tokenized to
    /// `context_length`.
    pub fn shards(
        options: &DataOptions,
        tokenizer: Arc<ClipTokenizer>,
        context_length: usize,
        square: SquareResize,
    ) -> Result<TrainingData, EngineError> {
        let data = ShardTraining::open(options, options.stream, tokenizer, context_length, square, None)?;
        Ok(TrainingData::Shards(Box::new(data)))
    }

    pub fn steps_per_epoch(&self) -> u64 {
        match self {
            TrainingData::Labelled(data) => data.sampler.steps_per_epoch(),
            TrainingData::Captioned(data) => data.sampler().steps_per_epoch(),
            TrainingData::Shards(data) => data.steps_per_epoch(),
        }
    }

    pub fn epoch_of(&self, step: u64) -> u64 {
        match self {
            TrainingData::Labelled(data) => data.sampler.epoch_of(step),
            TrainingData::Captioned(data) => data.sampler().epoch_of(step),
            TrainingData::Shards(data) => data.epoch_of(step),
        }
    }

    /// Samples it trains on.
    pub fn train_samples(&self) -> usize {
        match self {
            TrainingData::Labelled(data) => data.sampler.sample_count(),
            TrainingData::Captioned(data) => data.sampler().sample_count(),
            TrainingData::Shards(data) => data.train_samples(),
        }
    }

    /// Names of the metrics [`TrainingData::evaluate`] gives, as policies see them.
    pub fn metric_names(&self) -> &'static [&'static str] {
        match self {
            TrainingData::Labelled(_) => &VALIDATION_METRICS,
            TrainingData::Captioned(_) | TrainingData::Shards(_) => &CAPTIONED_METRICS,
        }
    }

    /// A line for the start-up report on data that is not named elsewhere (shards).
    pub fn describe(&self) -> Option<String> {
        match self {
            TrainingData::Shards(data) => Some(data.describe()),
            TrainingData::Labelled(_) | TrainingData::Captioned(_) => None,
        }
    }

    /// Samples left out before training started, under `--skip-bad-samples`.
    pub fn skipped_at_start(&self) -> &[String] {
        match self {
            TrainingData::Labelled(_) => &[],
            TrainingData::Captioned(data) => data.skipped_at_start(),
            TrainingData::Shards(data) => data.skipped_at_start(),
        }
    }

    /// The batch of global step `step`; `last_step` bounds how far ahead it decodes.
    pub fn batch(&mut self, step: u64, last_step: u64) -> Result<TrainBatch, EngineError> {
        match self {
            TrainingData::Labelled(data) => Ok(data.batch(step)),
            TrainingData::Captioned(data) => data.batch(step, last_step),
            TrainingData::Shards(data) => data.batch(step, last_step),
        }
    }

    /// Mid-run evaluation on the held-out images.
    pub fn evaluate(&mut self, model: &Clip, normalizer: &PixelNormalizer) -> Result<Scores, EngineError> {
        match self {
            TrainingData::Labelled(data) => {
                let values = validation_metrics(
                    model,
                    &data.validation,
                    &data.captions,
                    normalizer,
                    EVAL_BATCH_SIZE,
                    data.seed,
                    data.device,
                );
                Ok(Scores::new(VALIDATION_METRICS.to_vec(), values, data.validation.len(), "held-out"))
            }
            TrainingData::Captioned(data) => data.evaluate(model, normalizer),
            TrainingData::Shards(data) => data.evaluate(model, normalizer),
        }
    }

    /// The end-of-run evaluation: zero-shot accuracy on Fashion-MNIST's test split, or the
    /// held-out evaluation of an image-caption set.
    pub fn final_evaluation(&mut self, model: &Clip, normalizer: &PixelNormalizer) -> Result<Scores, EngineError> {
        match self {
            TrainingData::Labelled(data) => {
                let accuracy =
                    zero_shot_accuracy(model, &data.test, &data.captions, normalizer, EVAL_BATCH_SIZE, data.device);
                let values = vec![accuracy.top1, accuracy.top5];
                Ok(Scores::new(vec!["zero_shot_top1", "zero_shot_top5"], values, accuracy.images, "test"))
            }
            TrainingData::Captioned(data) => data.evaluate(model, normalizer),
            TrainingData::Shards(data) => data.evaluate(model, normalizer),
        }
    }
}

/// Fashion-MNIST held on the training device, with every caption pre-tokenized.
pub struct LabelledData {
    sampler: EpochSampler,
    captions: CaptionTable,
    /// `captions.ids` on the training device.
    caption_ids: Tensor,
    train_images: Tensor,
    train_labels: Tensor,
    validation: LabelledImages,
    test: LabelledImages,
    seed: u64,
    device: Device,
}

impl LabelledData {
    pub fn captions(&self) -> &CaptionTable {
        &self.captions
    }

    fn batch(&mut self, step: u64) -> TrainBatch {
        let epoch = self.sampler.epoch_of(step);
        let samples = self.sampler.batch(step).to_vec();
        let templates: Vec<i64> =
            samples.iter().map(|&index| caption_draw(self.seed, epoch, index as u64, TEMPLATES.len()) as i64).collect();
        let rows = Tensor::from_slice(&samples).to_device(self.device);
        let templates = Tensor::from_slice(&templates).to_device(self.device);
        let labels = self.train_labels.index_select(0, &rows);
        TrainBatch {
            pixels: grey_to_unit(&self.train_images.index_select(0, &rows), self.device),
            input_ids: self.caption_ids.index(&[Some(labels), Some(templates)]),
            samples,
            skipped: Vec::new(),
        }
    }
}
