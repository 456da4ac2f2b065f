//! An image-caption set read from files (COCO captions or a JSONL manifest) for any task
//! that trains on one: the training samples and a held-out split, decoded by worker threads
//! a few steps ahead of training, and CLIP's held-out evaluation of it (validation loss and
//! retrieval recall). Which samples, which caption and which augmentation a step uses depend
//! only on (seed, epoch, sample index), so prefetching, thread timing and resuming change
//! nothing.

use crate::data::captioned::{self, CaptionedData, CaptionedSample, Needs};
use crate::data::clip_tokenizer::ClipTokenizer;
use crate::data::images::SquareResize;
use crate::data::loader::{EVALUATION_KEYS, Item, ItemReader, Loader};
use crate::data::sampler::{EpochSampler, keyed};
use crate::data::{PixelNormalizer, rgb_batch};
use crate::engine::{EngineError, Scores};
use crate::eval::{RETRIEVAL_METRICS, recall};
use crate::models::clip::Clip;
use crate::tasks::inputs::{DataOptions, check_batch_size, held_out_count};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// Separates the caption draw from other per-sample randomness.
const CAPTION_DRAW: u64 = 0xC4_7104;
pub const EVAL_BATCH_SIZE: usize = 1000;
/// Retrieval needs more than one image to rank.
const MIN_HELD_OUT: usize = 2;

/// The images, captions and random draws of one step.
#[derive(Debug)]
pub struct TrainBatch {
    /// `(batch, channels, height, width)`, values in [0, 1], on the training device.
    pub pixels: Tensor,
    /// `(batch, context)` token ids on the training device.
    pub input_ids: Tensor,
    /// Each row's index in the training set: the key of its augmentation draws.
    pub samples: Vec<i64>,
    /// What `--skip-bad-samples` left out of this batch, one line each.
    pub skipped: Vec<String>,
}

/// The caption of a sample that has tags but no caption.
pub fn caption_from_tags(tags: &[String]) -> String {
    match tags {
        [] => String::new(),
        [only] => format!("a photo of a {only}."),
        [rest @ .., last] => format!("a photo of a {}, and a {last}.", rest.join(", a ")),
    }
}

/// Metric names of an image-caption evaluation.
pub const CAPTIONED_METRICS: [&str; 7] = [
    "val_loss",
    RETRIEVAL_METRICS[0],
    RETRIEVAL_METRICS[1],
    RETRIEVAL_METRICS[2],
    RETRIEVAL_METRICS[3],
    RETRIEVAL_METRICS[4],
    RETRIEVAL_METRICS[5],
];

/// The caption of `sample` drawn for `epoch`.
pub fn caption_draw(seed: u64, epoch: u64, sample: u64, captions: usize) -> usize {
    (keyed(seed, &[CAPTION_DRAW, epoch, sample]) % captions as u64) as usize
}

/// An image-caption set read from files by worker threads.
pub struct CaptionedTraining {
    sampler: EpochSampler,
    /// Training samples, then the held-out ones.
    samples: Arc<Vec<CaptionedSample>>,
    train_count: usize,
    loader: Loader<ItemReader>,
    tokenizer: Arc<ClipTokenizer>,
    context_length: usize,
    /// Side of the decoded images.
    image_size: i64,
    /// Decoded once, at the first evaluation.
    held_out: Option<HeldOut>,
    skipped_at_start: Vec<String>,
    skip_bad: bool,
    seed: u64,
    device: Device,
}

/// A held-out image, decoded, with every caption of it.
pub struct HeldOutImage {
    /// Its index among the data set's samples.
    pub sample: usize,
    /// `3 x size x size` bytes, channel-major.
    pub pixels: Vec<u8>,
    pub captions: Vec<String>,
}

/// The held-out images as `u8` pixels on the CPU, and every caption of them.
pub struct HeldOut {
    pixels: Tensor,
    /// `(captions, context)`.
    caption_ids: Tensor,
    /// For each caption, the row of its image in `pixels`.
    caption_image: Vec<i64>,
    /// Row of each image's first caption, for the validation loss.
    first_caption: Vec<i64>,
    /// The sample index of each image.
    samples: Vec<usize>,
}

impl HeldOut {
    /// The images, `(n, 3, size, size)` `u8` on the CPU.
    pub fn pixels(&self) -> &Tensor {
        &self.pixels
    }

    /// The held-out split of `images` (of side `image_size`), their captions tokenized to
    /// `context_length`.
    pub fn new(
        images: Vec<HeldOutImage>,
        tokenizer: &ClipTokenizer,
        context_length: usize,
        image_size: i64,
    ) -> Result<HeldOut, EngineError> {
        if images.len() < MIN_HELD_OUT {
            return Err(EngineError::Config(
                "the held-out split (--val-data, or the last 5% of --data) has fewer than two readable images".into(),
            ));
        }
        let (mut caption_ids, mut caption_image, mut first_caption) = (Vec::new(), Vec::new(), Vec::new());
        for (row, image) in images.iter().enumerate() {
            first_caption.push(caption_image.len() as i64);
            for caption in &image.captions {
                caption_ids.extend(tokenizer.tokenize(caption, context_length));
                caption_image.push(row as i64);
            }
        }
        Ok(HeldOut {
            pixels: rgb_batch(images.iter().map(|image| image.pixels.as_slice()), image_size),
            caption_ids: Tensor::from_slice(&caption_ids).view([caption_image.len() as i64, -1]),
            caption_image,
            first_caption,
            samples: images.iter().map(|image| image.sample).collect(),
        })
    }

    /// Validation loss (each image with its first caption, in batches of
    /// [`EVAL_BATCH_SIZE`]) and retrieval recall over all held-out captions.
    pub fn evaluate(&self, model: &Clip, normalizer: &PixelNormalizer, device: Device) -> Scores {
        tch::no_grad(|| {
            let count = self.pixels.size()[0];
            let mut image_embeddings = Vec::new();
            for start in (0..count).step_by(EVAL_BATCH_SIZE) {
                let rows = (EVAL_BATCH_SIZE as i64).min(count - start);
                let pixels = self.pixels.narrow(0, start, rows).to_device(device).to_kind(Kind::Float) / 255.0;
                image_embeddings.push(model.image_embeddings(&normalizer.normalize(&pixels)));
            }
            let image_embeddings = Tensor::cat(&image_embeddings, 0);
            let caption_count = self.caption_ids.size()[0];
            let text_embeddings: Vec<Tensor> = (0..caption_count)
                .step_by(EVAL_BATCH_SIZE)
                .map(|start| {
                    let rows = (EVAL_BATCH_SIZE as i64).min(caption_count - start);
                    model.text_embeddings(&self.caption_ids.narrow(0, start, rows).to_device(device))
                })
                .collect();
            let text_embeddings = Tensor::cat(&text_embeddings, 0);
            let first = Tensor::from_slice(&self.first_caption).to_device(device);
            let paired_texts = text_embeddings.index_select(0, &first);
            let scale = model.logit_scale();
            let mut weighted_loss = 0.0;
            for start in (0..count).step_by(EVAL_BATCH_SIZE) {
                let rows = (EVAL_BATCH_SIZE as i64).min(count - start);
                let loss = crate::models::clip::contrastive_loss(
                    &image_embeddings.narrow(0, start, rows),
                    &paired_texts.narrow(0, start, rows),
                    &scale,
                );
                weighted_loss += loss.to_kind(Kind::Double).double_value(&[]) * rows as f64;
            }
            let mut values = vec![weighted_loss / count as f64];
            values.extend(recall(&image_embeddings, &text_embeddings, &self.caption_image).values());
            Scores::new(CAPTIONED_METRICS.to_vec(), values, count as usize, "held-out")
        })
    }
}

impl CaptionedTraining {
    /// The samples of `options.data` (each checked and completed by `prepare`), and the
    /// held-out ones: `options.val_data`, or the last 5% of the data (2 to 5,000 images).
    pub fn open(
        options: &DataOptions,
        needs: Needs,
        mut prepare: impl FnMut(&mut CaptionedSample) -> Result<(), EngineError>,
        tokenizer: Arc<ClipTokenizer>,
        context_length: usize,
        square: SquareResize,
    ) -> Result<Self, EngineError> {
        let mut train = captioned::load(options.data, options.images, options.skip_bad_samples, needs)?;
        let held_out = match options.val_data {
            Some(path) => captioned::load(path, options.images, options.skip_bad_samples, needs)?,
            None => {
                let count = held_out_count(options.data, train.samples.len(), MIN_HELD_OUT, options.batch_size)?;
                let samples = train.samples.split_off(train.samples.len() - count);
                CaptionedData { samples, skipped: Vec::new() }
            }
        };
        check_batch_size(options.batch_size, train.samples.len())?;
        let skipped_at_start = train.skipped.iter().chain(&held_out.skipped).cloned().collect();
        // One loader decodes both sets: held-out samples follow the training ones.
        let train_count = train.samples.len();
        let mut samples = train.samples;
        samples.extend(held_out.samples);
        for sample in &mut samples {
            prepare(sample)?;
        }
        let reader = ItemReader { samples: Arc::new(samples), tokenizer: tokenizer.clone(), context_length, square };
        Ok(CaptionedTraining {
            sampler: EpochSampler::new(options.seed, train_count, options.batch_size, options.shard),
            samples: reader.samples.clone(),
            train_count,
            loader: Loader::new(reader, options.workers),
            tokenizer,
            context_length,
            image_size: square.size as i64,
            held_out: None,
            skipped_at_start,
            skip_bad: options.skip_bad_samples,
            seed: options.seed,
            device: options.device,
        })
    }

    pub fn sampler(&self) -> &EpochSampler {
        &self.sampler
    }

    /// Training samples, then the held-out ones; batches name them by index.
    pub fn samples(&self) -> &[CaptionedSample] {
        &self.samples
    }

    pub fn skipped_at_start(&self) -> &[String] {
        &self.skipped_at_start
    }

    /// The held-out images that decoded, `(n, 3, size, size)` `u8` on the CPU, and the
    /// sample index of each.
    pub fn held_out_images(&mut self) -> Result<(&Tensor, &[usize]), EngineError> {
        let held_out = self.held_out()?;
        Ok((&held_out.pixels, &held_out.samples))
    }

    /// Which of its captions `sample` trains with at `step`.
    pub fn drawn_caption(&self, step: u64, sample: usize) -> usize {
        let epoch = self.sampler.epoch_of(step);
        caption_draw(self.seed, epoch, sample as u64, self.samples[sample].captions.len())
    }

    fn items(&mut self, step: u64) -> Vec<Item> {
        let epoch = self.sampler.epoch_of(step);
        let seed = self.seed;
        let samples = &self.samples;
        self.sampler
            .batch(step)
            .iter()
            .map(|&index| {
                let sample = index as usize;
                let caption = caption_draw(seed, epoch, index as u64, samples[sample].captions.len());
                Item { sample, caption }
            })
            .collect()
    }

    pub fn batch(&mut self, step: u64, last_step: u64) -> Result<TrainBatch, EngineError> {
        for ahead in self.loader.to_prefetch(step, last_step) {
            let items = self.items(ahead);
            self.loader.submit(ahead, &items);
        }
        let (loaded, skipped) = self.loader.take_readable(step, self.skip_bad)?;
        if loaded.len() < 2 {
            return Err(EngineError::Config(format!(
                "step {step}: only {} readable images in the batch; contrastive training needs two or more",
                loaded.len()
            )));
        }
        let pixels = rgb_batch(loaded.iter().map(|item| item.pixels.as_slice()), self.image_size);
        let ids: Vec<i64> = loaded.iter().flat_map(|item| item.token_ids.iter().copied()).collect();
        let input_ids = Tensor::from_slice(&ids).view([loaded.len() as i64, -1]);
        Ok(TrainBatch {
            pixels: pixels.to_device(self.device).to_kind(Kind::Float) / 255.0,
            input_ids: input_ids.to_device(self.device),
            samples: loaded.iter().map(|item| item.sample as i64).collect(),
            skipped,
        })
    }

    /// Decodes the held-out images and tokenizes all their captions, once.
    fn held_out(&mut self) -> Result<&HeldOut, EngineError> {
        if self.held_out.is_none() {
            let samples: Vec<usize> = (self.train_count..self.samples.len()).collect();
            let mut images = Vec::with_capacity(samples.len());
            for (chunk, indices) in samples.chunks(EVAL_BATCH_SIZE).enumerate() {
                let key = EVALUATION_KEYS + chunk as u64;
                let items: Vec<Item> = indices.iter().map(|&sample| Item { sample, caption: 0 }).collect();
                self.loader.submit(key, &items);
                let (loaded, _) = self.loader.take_readable(key, self.skip_bad)?;
                images.extend(loaded.into_iter().map(|item| HeldOutImage {
                    sample: item.sample,
                    captions: self.samples[item.sample].captions.clone(),
                    pixels: item.pixels,
                }));
            }
            self.held_out = Some(HeldOut::new(images, &self.tokenizer, self.context_length, self.image_size)?);
        }
        Ok(self.held_out.as_ref().expect("set just above"))
    }

    /// Validation loss and retrieval recall on the held-out split (see [`HeldOut::evaluate`]).
    pub fn evaluate(&mut self, model: &Clip, normalizer: &PixelNormalizer) -> Result<Scores, EngineError> {
        let device = self.device;
        Ok(self.held_out()?.evaluate(model, normalizer, device))
    }
}
