//! Multi-label tagging as a [`Task`] (recognize-anything style): the tagger of
//! [`crate::models::tagger`] trained with up to three loss terms whose magnitudes differ by
//! orders of magnitude, each named to the policies:
//!
//! - `tag`: the asymmetric loss over the multi-hot tags, summed over images and tags
//!   (γ- = 4, γ+ = 0, probability shift 0.05: the ASL paper's multi-label settings);
//! - `align`: CLIP's image-text contrastive loss against the captions;
//! - `distill`: the L1 distance of the student's image embeddings to the frozen teacher's.
//!
//! Data: 2x2 mosaics of Fashion-MNIST (the offline default, tagged with the classes shown),
//! or a JSONL manifest whose lines have `tags` (and optionally `captions`; without them the
//! caption names the tags), or WebDataset shards whose samples' `.json` has them, with a tag
//! vocabulary file, one tag per line.
//!
//! Tags named in `--unseen-tags` are left out of the head's training and evaluated by name
//! alone (`unseen_mAP`): queries from the text tower's embeddings of their prompts, as a
//! user would add a tag after training.
//!
//! Evaluation gives mAP and CP/CR/CF1/OP/OR/OF1 at 0.5 on held-out images, and each loss
//! term's share of the gradient (`grad_share_<loss>`: the norm of its weighted gradient over
//! the sum of those norms, on one held-out batch), which is what loss weighting is about.
//!
//! A batch split into micro-batches (`--accum-steps`) or over processes keeps every term's
//! meaning: `tag` is a sum over images, `distill` each piece's share of the batch mean, and
//! `align` sees the whole global batch (`super::contrastive`).
//!
//! Owns `--losses`, `--tags` and `--unseen-tags`.

mod predict;
pub mod ram;

pub use predict::{PredictRequest, predict};

use super::captioned::{CaptionedTraining, TrainBatch, caption_from_tags};
use super::contrastive::{GlobalPairs, logit_scale_for, placed};
use super::inputs::{
    DataOptions, Inputs, Precision, TaskContext, absolute, check_batch_size, check_tokenizer_fits, describe_weights,
    given_flags, load_model, load_tokenizer,
};
use super::shards::{ShardTraining, TagVocabulary};
use crate::data::PixelNormalizer;
use crate::data::augment;
use crate::data::captioned::{CaptionedSample, DataKind, Needs};
use crate::data::clip_tokenizer::{CONTEXT_LENGTH, ClipTokenizer};
use crate::data::fashion_mnist::{self, CLASS_NAMES, Split};
use crate::data::images::SquareResize;
use crate::data::mosaics::Mosaics;
use crate::data::sampler::EpochSampler;
use crate::distributed::Team;
use crate::engine::{Backward, EngineError, Scores, StepKnobs, StepLosses, Task};
use crate::eval::{TAGGING_METRICS, TagScores, TaggingScores, per_tag_scores, tagging_scores};
use crate::files::FileError;
use crate::models::clip::{self, ClipConfig};
use crate::models::groups::{Group, GroupLayout, Place};
use crate::models::pretrained;
use crate::models::tagger::{self, FIXED, HEAD_PREFIX, TAG_PROMPT, TEACHER_PREFIX, Tagger, TaggerConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind, Tensor, nn};

/// The loss terms a tagging run can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TagLoss {
    Tag,
    Align,
    Distill,
    /// RAM's caption branch: the decoder's loss for the caption given its tags.
    T2t,
}

impl TagLoss {
    /// The CLIP tagger's terms.
    pub const ALL: [TagLoss; 3] = [TagLoss::Tag, TagLoss::Align, TagLoss::Distill];

    pub fn name(self) -> &'static str {
        match self {
            TagLoss::Tag => "tag",
            TagLoss::Align => "align",
            TagLoss::Distill => "distill",
            TagLoss::T2t => "t2t",
        }
    }

    /// Whether this term's gradient reaches the student's variable `name`.
    fn reaches(self, name: &str) -> bool {
        let vision = name.starts_with("vision_model.");
        match self {
            TagLoss::Tag => vision || name.starts_with(HEAD_PREFIX),
            TagLoss::Align => !name.starts_with(HEAD_PREFIX),
            TagLoss::Distill => vision || name.starts_with("visual_projection."),
            TagLoss::T2t => false,
        }
    }

    fn share_metric(self) -> &'static str {
        match self {
            TagLoss::Tag => "grad_share_tag",
            TagLoss::Align => "grad_share_align",
            TagLoss::Distill => "grad_share_distill",
            TagLoss::T2t => "grad_share_t2t",
        }
    }
}

/// The settings of a tagging run: its section of `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaggingConfig {
    #[serde(flatten)]
    pub inputs: Inputs,
    /// The loss terms trained.
    #[serde(default = "all_losses")]
    pub losses: Vec<TagLoss>,
    /// The tag vocabulary of a tagging manifest.
    #[serde(default)]
    pub tags: Option<PathBuf>,
    /// Tags left out of training and evaluated by name alone.
    #[serde(default)]
    pub unseen_tags: Vec<String>,
    /// RAM's frozen CLIP, of `distill`, `align` and new tags' label embeddings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<PathBuf>,
    /// The tag names of a RAM `.pth`, one per line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_tags: Option<PathBuf>,
    /// Descriptions of the tags a RAM checkpoint lacks, for their label embeddings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_descriptions: Option<PathBuf>,
    /// RAM's per-tag thresholds, one per line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<PathBuf>,
    /// The side a RAM's image encoder works at, when not its checkpoint's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<i64>,
    /// bert-base-uncased's tokenizer for RAM's caption branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_tokenizer: Option<PathBuf>,
}

fn all_losses() -> Vec<TagLoss> {
    TagLoss::ALL.to_vec()
}

/// The flags only tagging has.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TaggingArgs {
    /// The loss terms of a tagging run, comma-separated; `t2t` is RAM's caption branch
    /// [default: tag,align,distill; a RAM++ or RAM picks its own; --task tagging].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub losses: Option<Vec<TagLoss>>,
    /// Tag vocabulary of a tagging manifest: one tag per line [--task tagging].
    #[arg(long, value_name = "FILE")]
    pub tags: Option<PathBuf>,
    /// Tags the tagging head never trains on, evaluated by name alone (`unseen_mAP`) [--task tagging].
    #[arg(long, value_name = "TAG,...", value_delimiter = ',')]
    pub unseen_tags: Option<Vec<String>>,
    /// The frozen CLIP of a RAM++/RAM --model: a Hugging Face folder (recognize-anything uses
    /// OpenAI's ViT-B/16); needed for `distill`, `align` and tags the checkpoint lacks
    /// [default without it: --losses tag].
    #[arg(long, value_name = "DIR")]
    pub teacher: Option<PathBuf>,
    /// The tag names of a RAM++/RAM/Tag2Text `.pth`, one per line (recognize-anything's
    /// ram/data/ram_tag_list.txt) [default: ram_tag_list.txt beside it; Tag2Text's
    /// tag2text_ori_tag_list.txt].
    #[arg(long, value_name = "FILE")]
    pub model_tags: Option<PathBuf>,
    /// Descriptions of new tags for RAM++/RAM: JSON, tag -> list of descriptions (or RAM++'s
    /// LLM tag-description files); a new tag without them is embedded from prompt templates.
    #[arg(long, value_name = "FILE")]
    pub tag_descriptions: Option<PathBuf>,
    /// Per-tag thresholds of RAM++/RAM, one per line, aligned with the checkpoint's tag list
    /// or with --tags (RAM's ram_tag_list_threshold.txt) [default: 0.68].
    #[arg(long, value_name = "FILE")]
    pub thresholds: Option<PathBuf>,
    /// The side, in pixels, a RAM++/RAM's Swin works at: 224 (window 7) or 384 (window 12) as
    /// recognize-anything's configurations pair them; the checkpoint's relative position
    /// tables are resized to the window as its loader resizes them [default: the checkpoint's].
    #[arg(long, value_name = "PIXELS")]
    pub image_size: Option<i64>,
    /// bert-base-uncased's tokenizer for RAM's caption branch (`t2t`): a folder with its
    /// `vocab.txt` or `tokenizer.json`; `[DEC]` and `[ENC]` are added as RAM adds them.
    #[arg(long, value_name = "DIR")]
    pub text_tokenizer: Option<PathBuf>,
}

impl TaggingArgs {
    pub fn given(&self) -> Vec<&'static str> {
        given_flags([
            ("--losses", self.losses.is_some()),
            ("--tags", self.tags.is_some()),
            ("--unseen-tags", self.unseen_tags.is_some()),
            ("--teacher", self.teacher.is_some()),
            ("--model-tags", self.model_tags.is_some()),
            ("--tag-descriptions", self.tag_descriptions.is_some()),
            ("--thresholds", self.thresholds.is_some()),
            ("--image-size", self.image_size.is_some()),
            ("--text-tokenizer", self.text_tokenizer.is_some()),
        ])
    }

    /// The settings of a tagging run. Its losses by default: all three, but for a RAM
    /// without a teacher, whose only term is then `tag`.
    pub fn config(&self, inputs: Inputs) -> TaggingConfig {
        // A RAM's terms depend on its checkpoint and teacher: it picks them when none are given.
        let default_losses = if inputs.model.as_deref().is_some_and(ram::is_ram) { Vec::new() } else { all_losses() };
        TaggingConfig {
            inputs,
            losses: self.losses.clone().unwrap_or(default_losses),
            tags: self.tags.clone().map(absolute),
            unseen_tags: self.unseen_tags.clone().unwrap_or_default(),
            teacher: self.teacher.clone().map(absolute),
            model_tags: self.model_tags.clone().map(absolute),
            tag_descriptions: self.tag_descriptions.clone().map(absolute),
            thresholds: self.thresholds.clone().map(absolute),
            image_size: self.image_size,
            text_tokenizer: self.text_tokenizer.clone().map(absolute),
        }
    }
}

/// The tagger's parameter groups outside the towers: CLIP's, and the tag head.
const HEADS: [&str; 3] = [clip::HEADS[0], clip::HEADS[1], "tag_head"];
const TAG_HEAD: Place = Place::Head(2);
/// A tag is predicted present when its probability is at least this.
pub const THRESHOLD: f64 = 0.5;
/// The metric of the tags evaluated by name alone.
const UNSEEN_MAP: &str = "unseen_mAP";
const EVAL_BATCH_SIZE: usize = 500;
/// Mosaics of the default data: the training split's tiles make one mosaic per four
/// images; validation and test mosaics come from the held-out and test images.
const VALIDATION_MOSAICS: usize = 1000;
const TEST_MOSAICS: usize = 2500;
/// The default data's mosaics are two tiles wide.
const MOSAIC_SIZE: i64 = 56;

pub struct TaggingTask {
    tagger: Tagger,
    var_store: nn::VarStore,
    config: TaggerConfig,
    groups: GroupLayout,
    losses: Vec<TagLoss>,
    loss_names: Vec<&'static str>,
    metric_names: Vec<&'static str>,
    tokenizer: ClipTokenizer,
    vocabulary: PathBuf,
    normalizer: PixelNormalizer,
    source: TagSource,
    /// Columns of the data's tags the head trains on, and those it never sees
    /// (`--unseen-tags`), on the training device.
    seen: Tensor,
    unseen: Tensor,
    /// Tokenized prompts of the unseen tags.
    unseen_prompts: Tensor,
    unseen_names: Vec<String>,
    /// Tags of the data's vocabulary, seen and unseen: the width of its multi-hot targets.
    data_tags: usize,
    /// The loss weights of the last step, for the gradient shares.
    weights: Vec<f64>,
    accum_steps: u64,
    team: Arc<Team>,
    /// The start-up report: data, tokenizer, weights.
    description: Vec<String>,
    /// The folder the model started from, whose tokenizer and preprocessing files the
    /// saved model keeps.
    started_from: Option<PathBuf>,
    device: Device,
}

/// Where a micro-batch sits in a step's global batch.
struct Piece<'a> {
    index: usize,
    /// Its first row among this rank's.
    offset: i64,
    /// Every rank's image and text embeddings of the step, for `align`, when the step has
    /// several pieces.
    gathered: Option<&'a GlobalPairs>,
    /// Images in the global batch.
    global_rows: i64,
}

/// Images with their multi-hot tags and a caption each.
struct TagBatch {
    /// `(batch, channels, height, width)` in [0, 1] on the training device.
    pixels: Tensor,
    /// `(batch, tags)` multi-hot over the data's whole vocabulary, float, on the training
    /// device.
    targets: Tensor,
    /// `(batch, tokens)` caption ids on the training device.
    input_ids: Tensor,
    /// Each row's sample index: the key of its augmentation draws.
    samples: Vec<i64>,
    skipped: Vec<String>,
    /// Each row's caption as drawn for the step (none from shards, whose captions stay with
    /// their loader).
    captions: Vec<String>,
    /// The tag columns of each row's caption where the data gives captions tags of their
    /// own (recognize-anything's `parse_label_id`); `None`: each row's tags, read from
    /// `targets` only by a task that needs them.
    caption_tags: Option<Vec<Vec<usize>>>,
}

impl TagBatch {
    /// `batch` with the multi-hot targets of its rows' tag columns, over `tag_count` tags.
    fn of(batch: TrainBatch, rows: &[&[usize]], tag_count: usize) -> Self {
        let targets = multi_hot(rows, tag_count).to_device(batch.pixels.device());
        let TrainBatch { pixels, input_ids, samples, skipped } = batch;
        TagBatch { pixels, targets, input_ids, samples, skipped, captions: Vec::new(), caption_tags: None }
    }
}

/// Where tagged images come from.
enum TagSource {
    Mosaics {
        sampler: EpochSampler,
        train: Mosaics,
        validation: Mosaics,
        test: Mosaics,
    },
    /// A manifest decoded by worker threads; `tags[sample]` are the sample's tag indices.
    Files {
        data: Box<CaptionedTraining>,
        tags: Vec<Vec<usize>>,
        /// `caption_tags[sample][caption]`: each caption's own tag indices, where the data
        /// gives them.
        caption_tags: Vec<Vec<Vec<usize>>>,
        manifest: PathBuf,
        /// Samples that came without captions (theirs name their tags).
        uncaptioned: usize,
    },
    /// WebDataset shards, each sample's tags read with it.
    Shards {
        data: Box<ShardTraining>,
        pattern: PathBuf,
    },
}

impl TagSource {
    /// Every caption of each of the held-out `samples` (as evaluation batches number them),
    /// where the data keeps them all; `None` where it gives one per image.
    fn every_caption(&self, samples: &[i64]) -> Option<Vec<Vec<String>>> {
        match self {
            TagSource::Files { data, .. } => {
                Some(samples.iter().map(|&sample| data.samples()[sample as usize].captions.clone()).collect())
            }
            TagSource::Mosaics { .. } | TagSource::Shards { .. } => None,
        }
    }

    fn steps_per_epoch(&self) -> u64 {
        match self {
            TagSource::Mosaics { sampler, .. } => sampler.steps_per_epoch(),
            TagSource::Files { data, .. } => data.sampler().steps_per_epoch(),
            TagSource::Shards { data, .. } => data.steps_per_epoch(),
        }
    }

    fn train_samples(&self) -> usize {
        match self {
            TagSource::Mosaics { sampler, .. } => sampler.sample_count(),
            TagSource::Files { data, .. } => data.sampler().sample_count(),
            TagSource::Shards { data, .. } => data.train_samples(),
        }
    }

    fn epoch_of(&self, step: u64) -> u64 {
        match self {
            TagSource::Mosaics { sampler, .. } => sampler.epoch_of(step),
            TagSource::Files { data, .. } => data.sampler().epoch_of(step),
            TagSource::Shards { data, .. } => data.epoch_of(step),
        }
    }

    /// Samples the data gives no caption of their own: those of a manifest that has none.
    fn uncaptioned(&self) -> usize {
        match self {
            TagSource::Files { uncaptioned, .. } => *uncaptioned,
            TagSource::Mosaics { .. } | TagSource::Shards { .. } => 0,
        }
    }

    /// The data, as the start-up report names it.
    fn describe_data(&self) -> String {
        match self {
            TagSource::Mosaics { .. } => "2x2 Fashion-MNIST mosaics".to_string(),
            TagSource::Files { manifest, .. } => manifest.display().to_string(),
            TagSource::Shards { pattern, .. } => pattern.display().to_string(),
        }
    }

    fn skipped_at_start(&self) -> &[String] {
        match self {
            TagSource::Mosaics { .. } => &[],
            TagSource::Files { data, .. } => data.skipped_at_start(),
            TagSource::Shards { data, .. } => data.skipped_at_start(),
        }
    }

    fn train_batch(&mut self, step: u64, last_step: u64, text: &TextSide) -> Result<TagBatch, EngineError> {
        match self {
            TagSource::Mosaics { sampler, train, .. } => {
                let samples = sampler.batch(step).to_vec();
                let batch = train.batch(&samples);
                let input_ids = text.tokenize(&batch.captions);
                let (pixels, targets, captions) = (batch.pixels, batch.targets, batch.captions);
                Ok(TagBatch { pixels, targets, input_ids, samples, skipped: Vec::new(), captions, caption_tags: None })
            }
            TagSource::Files { data, tags, caption_tags, .. } => {
                let batch = data.batch(step, last_step)?;
                let rows: Vec<&[usize]> = batch.samples.iter().map(|&s| tags[s as usize].as_slice()).collect();
                let mut own_tags: Vec<Vec<usize>> = rows.iter().map(|row| row.to_vec()).collect();
                let mut tagged = TagBatch::of(batch, &rows, text.tag_count);
                for (row, &sample) in tagged.samples.iter().enumerate() {
                    let sample = sample as usize;
                    let drawn = data.drawn_caption(step, sample);
                    tagged.captions.push(data.samples()[sample].captions[drawn].clone());
                    if let Some(own) = caption_tags[sample].get(drawn) {
                        own_tags[row] = own.clone();
                    }
                }
                tagged.caption_tags = Some(own_tags);
                Ok(tagged)
            }
            TagSource::Shards { data, .. } => {
                let (batch, tags) = data.tagged_batch(step, last_step)?;
                let rows: Vec<&[usize]> = tags.iter().map(Vec::as_slice).collect();
                Ok(TagBatch::of(batch, &rows, text.tag_count))
            }
        }
    }

    /// Images of the evaluation split: validation, or for `final_split` the test split
    /// (files have one held-out split for both).
    fn eval_len(&mut self, final_split: bool) -> Result<usize, EngineError> {
        Ok(match self {
            TagSource::Mosaics { validation, test, .. } => if final_split { test } else { validation }.len(),
            TagSource::Files { data, .. } => data.held_out_images()?.1.len(),
            TagSource::Shards { data, .. } => data.held_out_tagged()?.1.len(),
        })
    }

    fn eval_batch(
        &mut self,
        final_split: bool,
        start: usize,
        count: usize,
        text: &TextSide,
        device: Device,
    ) -> Result<TagBatch, EngineError> {
        let indices: Vec<i64> = (start as i64..(start + count) as i64).collect();
        match self {
            TagSource::Mosaics { validation, test, .. } => {
                let batch = if final_split { test } else { validation }.batch(&indices);
                let input_ids = text.tokenize(&batch.captions);
                Ok(TagBatch {
                    caption_tags: None,
                    pixels: batch.pixels,
                    targets: batch.targets,
                    input_ids,
                    samples: indices,
                    skipped: vec![],
                    captions: batch.captions,
                })
            }
            TagSource::Files { data, tags, caption_tags, .. } => {
                let (pixels, samples) = data.held_out_images()?;
                let pixels =
                    pixels.narrow(0, start as i64, count as i64).to_device(device).to_kind(Kind::Float) / 255.0;
                let samples = samples[start..start + count].to_vec();
                let rows: Vec<&[usize]> = samples.iter().map(|&s| tags[s].as_slice()).collect();
                let captions: Vec<String> = samples.iter().map(|&s| data.samples()[s].captions[0].clone()).collect();
                let first_caption_tags = samples.iter().zip(&rows).map(|(&s, row)| match caption_tags[s].first() {
                    Some(own) => own.clone(),
                    None => row.to_vec(),
                });
                Ok(TagBatch {
                    pixels,
                    targets: multi_hot(&rows, text.tag_count).to_device(device),
                    input_ids: text.tokenize(&captions),
                    samples: samples.iter().map(|&s| s as i64).collect(),
                    skipped: Vec::new(),
                    caption_tags: Some(first_caption_tags.collect()),
                    captions,
                })
            }
            TagSource::Shards { data, .. } => {
                let (pixels, tags, captions) = data.held_out_tagged()?;
                let pixels =
                    pixels.narrow(0, start as i64, count as i64).to_device(device).to_kind(Kind::Float) / 255.0;
                let rows: Vec<&[usize]> = tags[start..start + count].iter().map(Vec::as_slice).collect();
                Ok(TagBatch {
                    pixels,
                    targets: multi_hot(&rows, text.tag_count).to_device(device),
                    input_ids: text.tokenize(&captions[start..start + count]),
                    samples: indices,
                    skipped: Vec::new(),
                    captions: captions[start..start + count].to_vec(),
                    caption_tags: None,
                })
            }
        }
    }
}

/// Probabilities and targets gathered over evaluation batches, row-major.
#[derive(Default)]
struct Predictions {
    scores: Vec<f64>,
    targets: Vec<bool>,
}

impl Predictions {
    fn add(&mut self, logits: &Tensor, targets: &Tensor) -> Result<(), EngineError> {
        self.scores.extend(Vec::<f64>::try_from(logits.sigmoid().to_kind(Kind::Double).flatten(0, -1))?);
        self.targets.extend(Vec::<f32>::try_from(targets.flatten(0, -1))?.into_iter().map(|t| t > 0.5));
        Ok(())
    }
}

/// The `per_tag` table of `eval.json`: a row per tag, its figures at its threshold.
fn per_tag_table(tags: &[String], scores: &[TagScores]) -> serde_json::Value {
    let rows = tags.iter().zip(scores).map(|(tag, scores)| {
        let mut row = serde_json::to_value(scores).expect("tag scores serialize");
        row["tag"] = tag.as_str().into();
        row
    });
    serde_json::Value::Array(rows.collect())
}

/// The name of the per-tag table in [`Scores::tables`].
pub const PER_TAG: &str = "per_tag";

/// What captions become token ids with, and how many tags the data has.
struct TextSide<'a> {
    tokenizer: &'a ClipTokenizer,
    context: i64,
    tag_count: usize,
    device: Device,
}

impl<'a> TextSide<'a> {
    /// Captions tokenized to at most `context` tokens, targets over `tag_count` tags.
    fn new(tokenizer: &'a ClipTokenizer, context: i64, tag_count: usize, device: Device) -> Self {
        TextSide { tokenizer, context, tag_count, device }
    }

    fn tokenize(&self, texts: &[String]) -> Tensor {
        tokenize(self.tokenizer, texts, self.context).to_device(self.device)
    }
}

/// The tag columns of each row of multi-hot `targets`.
fn tag_rows(targets: &Tensor) -> Vec<Vec<usize>> {
    let rows = Vec::<Vec<f32>>::try_from(targets.to_device(Device::Cpu)).expect("targets are (rows, tags)");
    rows.iter().map(|row| (0..row.len()).filter(|&tag| row[tag] > 0.5).collect()).collect()
}

fn multi_hot(rows: &[&[usize]], tags: usize) -> Tensor {
    let mut values = vec![0f32; rows.len() * tags];
    for (row, indices) in rows.iter().enumerate() {
        for &tag in *indices {
            values[row * tags + tag] = 1.0;
        }
    }
    Tensor::from_slice(&values).view([rows.len() as i64, tags as i64])
}

/// The tags of the data: the ten classes of the mosaic default, or the `--tags` vocabulary
/// of a manifest or shards (`model_tags` when not given, for a model that has its own).
fn data_vocabulary(task: &TaggingConfig, model_tags: Option<&[String]>) -> Result<Vec<String>, EngineError> {
    let data = &task.inputs.data;
    Ok(match (DataKind::of(data)?, &task.tags) {
        (DataKind::FashionMnist, None) => CLASS_NAMES.iter().map(|name| name.to_string()).collect(),
        (DataKind::Manifest | DataKind::RamFinetune | DataKind::Shards, Some(path)) => read_vocabulary(path)?,
        (DataKind::Manifest | DataKind::RamFinetune | DataKind::Shards, None) => match model_tags {
            Some(tags) => tags.to_vec(),
            None => {
                return Err(EngineError::Config(format!(
                    "--data {}: tagged data needs its tag vocabulary, --tags FILE (one tag per line)",
                    data.display()
                )));
            }
        },
        (DataKind::FashionMnist, Some(_)) => {
            return Err(EngineError::Config("--tags: the mosaic default has its own tags, the ten classes".into()));
        }
        (DataKind::Coco, _) => {
            return Err(EngineError::Config(format!(
                "--data {}: tagging reads a JSONL manifest or WebDataset shards with `tags`, recognize-anything's \
                 finetune JSON, or Fashion-MNIST mosaics",
                data.display()
            )));
        }
    })
}

/// The columns of `tags` the head trains on, and those named in `--unseen-tags`, which it
/// never sees in training.
fn split_unseen(tags: &[String], unseen_tags: &[String]) -> Result<(Vec<i64>, Vec<i64>), EngineError> {
    if let Some(unknown) = unseen_tags.iter().find(|tag| !tags.contains(tag)) {
        return Err(EngineError::Config(format!(
            "--unseen-tags: `{unknown}` is not a tag of the data (its tags: {})",
            tags.join(", ")
        )));
    }
    let columns = |unseen: bool| -> Vec<i64> {
        (0..tags.len() as i64).filter(|&i| unseen_tags.contains(&tags[i as usize]) == unseen).collect()
    };
    let (seen, unseen) = (columns(false), columns(true));
    if seen.is_empty() {
        return Err(EngineError::Config("--unseen-tags: every tag is unseen; the head has nothing to learn".into()));
    }
    Ok((seen, unseen))
}

/// A tag vocabulary: one tag per line; blank lines and lines starting with `#` are skipped.
pub fn read_vocabulary(path: &Path) -> Result<Vec<String>, FileError> {
    let text = std::fs::read_to_string(path).map_err(FileError::io(path))?;
    let mut tags: Vec<String> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let tag = line.trim();
        if tag.is_empty() || tag.starts_with('#') {
            continue;
        }
        if tags.iter().any(|seen| seen == tag) {
            return Err(FileError::format(path, format!("line {}: tag `{tag}` appears twice", index + 1)));
        }
        tags.push(tag.to_string());
    }
    if tags.is_empty() {
        return Err(FileError::format(path, "no tags"));
    }
    Ok(tags)
}

/// The task of a tagging run: RAM++ or RAM for a `--model` of theirs, otherwise the CLIP
/// tagger.
pub fn open(task: &TaggingConfig, context: &TaskContext) -> Result<Box<dyn Task>, EngineError> {
    if task.inputs.model.as_deref().is_some_and(ram::is_ram) {
        return Ok(Box::new(ram::RamTaggingTask::open(task, context)?));
    }
    ram::refuse_flags(given_flags([
        ("--teacher", task.teacher.is_some()),
        ("--model-tags", task.model_tags.is_some()),
        ("--tag-descriptions", task.tag_descriptions.is_some()),
        ("--thresholds", task.thresholds.is_some()),
        ("--image-size", task.image_size.is_some()),
        ("--text-tokenizer", task.text_tokenizer.is_some()),
        ("--losses t2t", task.losses.contains(&TagLoss::T2t)),
    ]))?;
    Ok(Box::new(TaggingTask::open(task, context)?))
}

impl TaggingTask {
    pub fn open(task: &TaggingConfig, context: &TaskContext) -> Result<Self, EngineError> {
        let config = &task.inputs;
        context.check_micro_batches(config)?;
        let team = context.team.clone();
        let options = &context.data_options(config);
        let device = options.device;
        let losses: Vec<TagLoss> = TagLoss::ALL.into_iter().filter(|loss| task.losses.contains(loss)).collect();
        if losses.is_empty() {
            return Err(EngineError::Config("--losses: give at least one of tag, align, distill".into()));
        }
        let (tokenizer, vocabulary) = load_tokenizer(config.model.as_deref())?;
        let tags = data_vocabulary(task, None)?;
        let (seen_columns, unseen_columns) = split_unseen(&tags, &task.unseen_tags)?;
        let vocabulary_tags = tags.clone();
        let tags: Vec<String> = seen_columns.iter().map(|&i| vocabulary_tags[i as usize].clone()).collect();
        let unseen_names: Vec<String> = unseen_columns.iter().map(|&i| vocabulary_tags[i as usize].clone()).collect();
        let (model_config, from_tagger) = match &config.model {
            Some(dir) => read_model_config(dir, &tags, &tokenizer)?,
            None => {
                let mut clip = ClipConfig::tiny(
                    tokenizer.vocab_size(),
                    CONTEXT_LENGTH as i64,
                    tokenizer.start_id,
                    tokenizer.end_id,
                    0,
                );
                clip.vision_config.image_size = MOSAIC_SIZE;
                (TaggerConfig::new(clip, tags), false)
            }
        };
        let caption_context = model_config.clip.text_config.max_position_embeddings.max(2) as usize;
        let square = SquareResize::for_model(config.model.as_deref(), model_config.clip.vision_config.image_size)?;
        let source = open_source(task, options, &vocabulary_tags, caption_context, square, &tokenizer)?;
        tch::manual_seed(options.seed as i64);
        let var_store = nn::VarStore::new(device);
        let mut tagger = Tagger::new(&var_store.root(), &model_config);
        if config.precision == Precision::Bf16 {
            tagger.clip.set_compute_kind(Kind::BFloat16);
        }
        tagger.clip.set_grad_checkpointing(context.execution.grad_checkpointing);
        let mut description = Vec::new();
        if context.load_weights {
            let report = match &config.model {
                // A tagger: every tensor. A CLIP checkpoint: the student's weights, and the
                // teacher's; the head starts fresh.
                Some(dir) if from_tagger => {
                    Some(load_model(&var_store, dir, |n| Some(n.to_string()), config.allow_partial)?)
                }
                Some(dir) => {
                    let student = |name: &str| (!name.starts_with(HEAD_PREFIX)).then(|| strip_teacher(name));
                    Some(load_model(&var_store, dir, student, config.allow_partial)?)
                }
                None => None,
            };
            description.push(describe_weights(report.as_ref(), var_store.len(), options.seed));
            if !from_tagger {
                let context = model_config.clip.text_config.max_position_embeddings;
                let prompts = prompt_ids(&tokenizer, &model_config.tags, context);
                tagger.initialise_from_clip(&var_store, &prompts.to_device(device));
            }
        }
        let image_size = model_config.clip.vision_config.image_size;
        let normalizer = PixelNormalizer::for_model(config.model.as_deref(), image_size, device)?;
        let loss_names = losses.iter().map(|loss| loss.name()).collect();
        let mut metric_names = TAGGING_METRICS.to_vec();
        metric_names.extend(losses.iter().map(|loss| loss.share_metric()));
        if !unseen_names.is_empty() {
            metric_names.push(UNSEEN_MAP);
        }
        let context = model_config.clip.text_config.max_position_embeddings;
        let unseen_prompts = prompt_ids(&tokenizer, &unseen_names, context).to_device(device);
        Ok(TaggingTask {
            tagger,
            var_store,
            groups: GroupLayout::new(config.group_by, &clip::towers(&model_config.clip), &HEADS),
            config: model_config,
            weights: vec![1.0; losses.len()],
            accum_steps: config.accum_steps,
            team,
            description,
            started_from: config.model.clone(),
            losses,
            loss_names,
            metric_names,
            tokenizer,
            vocabulary,
            normalizer,
            source,
            seen: Tensor::from_slice(&seen_columns).to_device(device),
            unseen: Tensor::from_slice(&unseen_columns).to_device(device),
            unseen_prompts,
            unseen_names,
            data_tags: vocabulary_tags.len(),
            device,
        })
    }

    /// Each enabled loss term of the images `pixels` with their `targets` and captions
    /// `input_ids` (with its graph), in the order of `self.losses`: of these images alone, or,
    /// with `piece`, as that piece's part of the step's global batch.
    fn loss_terms(
        &self,
        pixels: &Tensor,
        targets: &Tensor,
        input_ids: &Tensor,
        piece: Option<&Piece>,
    ) -> Result<Vec<Tensor>, EngineError> {
        let (logits, embeddings) = self.tagger.forward(pixels);
        let targets = targets.index_select(1, &self.seen);
        let mut terms = Vec::with_capacity(self.losses.len());
        for loss in &self.losses {
            terms.push(match loss {
                TagLoss::Tag => tagger::asymmetric_loss(&logits, &targets, 0.0, 4.0, 0.05),
                TagLoss::Align => {
                    let texts = self.tagger.clip.text_embeddings(input_ids);
                    match piece {
                        None => clip::contrastive_loss(&embeddings, &texts, &self.tagger.clip.logit_scale()),
                        Some(piece) => {
                            let (images, texts) =
                                placed(&embeddings, &texts, piece.offset, piece.gathered, &self.team)?;
                            let scale = logit_scale_for(&self.tagger.clip, piece.index, &self.team);
                            clip::contrastive_loss(&images, &texts, &scale)
                        }
                    }
                }
                TagLoss::Distill => {
                    let mean = (&embeddings - self.tagger.teacher_embeddings(pixels)).abs().mean(Kind::Float);
                    match piece {
                        None => mean,
                        Some(piece) => mean * (pixels.size()[0] as f64 / piece.global_rows as f64),
                    }
                }
                TagLoss::T2t => unreachable!("the CLIP tagger's terms are those of TagLoss::ALL"),
            });
        }
        Ok(terms)
    }

    /// The step's loss terms as this rank's shares of the global batch's (summed over the
    /// ranks they are the global terms), the batch going through the model in
    /// `--accum-steps` pieces; with `weights`, the gradient of their weighted sum
    /// accumulated into the parameters.
    fn terms_in_pieces(
        &self,
        pixels: &Tensor,
        batch: &TagBatch,
        backward: Option<Backward>,
    ) -> Result<Vec<Tensor>, EngineError> {
        let pieces = self.accum_steps as i64;
        let (pixel_pieces, target_pieces, id_pieces) =
            (pixels.chunk(pieces, 0), batch.targets.chunk(pieces, 0), batch.input_ids.chunk(pieces, 0));
        // The align term sees the global batch: with several pieces, every piece's
        // embeddings are gathered first.
        let gathered = if pixel_pieces.len() > 1 && self.losses.contains(&TagLoss::Align) {
            let (images, texts): (Vec<Tensor>, Vec<Tensor>) = tch::no_grad(|| {
                pixel_pieces
                    .iter()
                    .zip(&id_pieces)
                    .map(|(p, ids)| {
                        (self.tagger.clip.image_tokens_and_embeddings(p).1, self.tagger.clip.text_embeddings(ids))
                    })
                    .unzip()
            });
            Some(GlobalPairs::gather(&Tensor::cat(&images, 0), &Tensor::cat(&texts, 0), &self.team)?)
        } else {
            None
        };
        let global_rows = self.team.total(pixels.size()[0] as f64, "the sum of the batch's images")? as i64;
        let mut shares: Vec<Tensor> = Vec::with_capacity(self.losses.len());
        let mut offset = 0;
        for (index, ((pixels, targets), ids)) in pixel_pieces.iter().zip(&target_pieces).zip(&id_pieces).enumerate() {
            let piece = Piece { index, offset, gathered: gathered.as_ref(), global_rows };
            let terms = self.loss_terms(pixels, targets, ids, Some(&piece))?;
            if let Some(backward) = backward {
                backward.run(&terms)?;
            }
            for (slot, (loss, term)) in self.losses.iter().zip(terms).enumerate() {
                let term = term.detach();
                match (shares.get_mut(slot), loss) {
                    (None, TagLoss::Align) => shares.push(term / self.team.size() as f64),
                    (None, _) => shares.push(term),
                    // Every piece's align term is the loss of the whole global batch.
                    (Some(_), TagLoss::Align) => {}
                    (Some(share), _) => *share += term,
                }
            }
            offset += pixels.size()[0];
        }
        Ok(shares)
    }

    fn context(&self) -> i64 {
        self.config.clip.text_config.max_position_embeddings
    }

    fn evaluate_on(&mut self, final_split: bool) -> Result<Scores, EngineError> {
        // The unseen tags' queries come from the text tower as it is now.
        let unseen_embeddings = tch::no_grad(|| self.tagger.clip.text_embeddings(&self.unseen_prompts));
        let text = TextSide::new(&self.tokenizer, self.context(), self.data_tags, self.device);
        let columns = Columns { seen: &self.seen, unseen: (!self.unseen_names.is_empty()).then_some(&self.unseen) };
        let split = predict_split(&mut self.source, final_split, &text, columns, |batch| {
            let pixels = self.normalizer.normalize(&batch.pixels);
            let unseen = columns.unseen.map(|_| self.tagger.logits_for(&pixels, &unseen_embeddings));
            (self.tagger.forward(&pixels).0, unseen)
        })?;
        let thresholds = vec![THRESHOLD; self.config.tags.len()];
        let per_tag = per_tag_scores(&split.seen.scores, &split.seen.targets, &thresholds);
        let mut values = TaggingScores::of_tags(&per_tag).values();
        values.extend(self.gradient_shares(&split.first_batch)?);
        if !self.unseen_names.is_empty() {
            let thresholds = vec![THRESHOLD; self.unseen_names.len()];
            values.push(tagging_scores(&split.unseen.scores, &split.unseen.targets, &thresholds).map);
        }
        let mut scores = Scores::new(self.metric_names.clone(), values, split.images, split.name);
        scores.tables.insert(PER_TAG.into(), per_tag_table(&self.config.tags, &per_tag));
        Ok(scores)
    }

    /// Each weighted loss term's gradient norm as a share of their sum, on `batch`.
    fn gradient_shares(&self, batch: &TagBatch) -> Result<Vec<f64>, EngineError> {
        let trainable = trainable_variables(self);
        if trainable.is_empty() {
            return Ok(vec![0.0; self.losses.len()]);
        }
        let terms =
            self.loss_terms(&self.normalizer.normalize(&batch.pixels), &batch.targets, &batch.input_ids, None)?;
        gradient_shares(&trainable, &terms, &self.weights)
    }
}

/// Which columns of the data's tags are scored as seen, and as unseen (`None`: no unseen
/// tags).
#[derive(Clone, Copy)]
struct Columns<'a> {
    seen: &'a Tensor,
    unseen: Option<&'a Tensor>,
}

/// The predictions of a model on the evaluation split.
struct SplitPredictions {
    seen: Predictions,
    unseen: Predictions,
    /// The split's first batch: the gradient shares are measured on it.
    first_batch: TagBatch,
    images: usize,
    /// `test` (the mosaics' test split, at the end of a run) or `held-out`.
    name: &'static str,
}

/// Every batch of the evaluation split (`final_split`: the one the end of a run is scored
/// on) through `logits`, which gives a batch's logits of its seen tags and of its unseen ones,
/// without gradient.
fn predict_split(
    source: &mut TagSource,
    final_split: bool,
    text: &TextSide,
    columns: Columns,
    mut logits: impl FnMut(&TagBatch) -> (Tensor, Option<Tensor>),
) -> Result<SplitPredictions, EngineError> {
    let images = source.eval_len(final_split)?;
    let (mut seen, mut unseen, mut first_batch) = (Predictions::default(), Predictions::default(), None);
    for start in (0..images).step_by(EVAL_BATCH_SIZE) {
        let count = EVAL_BATCH_SIZE.min(images - start);
        let batch = source.eval_batch(final_split, start, count, text, text.device)?;
        let (seen_logits, unseen_logits) = tch::no_grad(|| logits(&batch));
        seen.add(&seen_logits, &batch.targets.index_select(1, columns.seen))?;
        if let (Some(logits), Some(unseen_columns)) = (unseen_logits, columns.unseen) {
            unseen.add(&logits, &batch.targets.index_select(1, unseen_columns))?;
        }
        first_batch.get_or_insert(batch);
    }
    let first_batch = first_batch.ok_or_else(|| {
        EngineError::Config("the evaluation split (--val-data, or the held-out part of --data) has no images".into())
    })?;
    let name = if final_split && matches!(source, TagSource::Mosaics { .. }) { "test" } else { "held-out" };
    Ok(SplitPredictions { seen, unseen, first_batch, images, name })
}

/// The variables of `task` that a policy trains, in the order of their names (the sums of
/// [`gradient_shares`] then add up in the same order every time).
fn trainable_variables(task: &dyn Task) -> Vec<Tensor> {
    let mut trainable: Vec<(String, Tensor)> = task
        .var_store()
        .variables()
        .into_iter()
        .filter(|(name, tensor)| tensor.requires_grad() && task.parameter_group(name).is_some())
        .collect();
    trainable.sort_by(|a, b| a.0.cmp(&b.0));
    trainable.into_iter().map(|(_, tensor)| tensor).collect()
}

/// Each of `terms` times its weight: its gradient's norm over `trainable`, as a share of
/// the sum of those norms.
fn gradient_shares(trainable: &[Tensor], terms: &[Tensor], weights: &[f64]) -> Result<Vec<f64>, EngineError> {
    let mut norms = Vec::new();
    for (term, weight) in terms.iter().zip(weights) {
        let grads = Tensor::f_run_backward(&[term * *weight], trainable, true, false)?;
        let squares: f64 = grads
            .iter()
            .filter(|grad| grad.defined())
            .map(|grad| grad.to_kind(Kind::Double).square().sum(Kind::Double).double_value(&[]))
            .sum();
        norms.push(squares.sqrt());
    }
    let total: f64 = norms.iter().sum();
    Ok(norms.iter().map(|norm| if total > 0.0 { norm / total } else { 0.0 }).collect())
}

/// The mosaic default, or the manifest of `config.data` with its tags checked against the
/// vocabulary (an unknown tag names its manifest line); captions tokenized to `context`
/// tokens, images made squares by `square`.
fn open_source(
    task: &TaggingConfig,
    options: &DataOptions,
    vocabulary_tags: &[String],
    context: usize,
    square: SquareResize,
    tokenizer: &ClipTokenizer,
) -> Result<TagSource, EngineError> {
    let data = options.data;
    if DataKind::of(data)? == DataKind::FashionMnist {
        options.refuse_file_flags_for_fashion_mnist()?;
        let all_train = fashion_mnist::load(data, Split::Train)?;
        let test_tiles = fashion_mnist::load(data, Split::Test)?;
        let train_tiles = all_train.len() as i64 - fashion_mnist::VALIDATION_IMAGES;
        let (seed, device) = (options.seed, options.device);
        let train = Mosaics::new(&all_train.slice(0, train_tiles), train_tiles as usize / 4, 0, seed, device);
        let held_out = all_train.slice(train_tiles, fashion_mnist::VALIDATION_IMAGES);
        let validation = Mosaics::new(&held_out, VALIDATION_MOSAICS, 1, seed, device);
        let test = Mosaics::new(&test_tiles, TEST_MOSAICS, 2, seed, device);
        check_batch_size(options.batch_size, train.len())?;
        let sampler = EpochSampler::new(seed, train.len(), options.batch_size, options.shard);
        return Ok(TagSource::Mosaics { sampler, train, validation, test });
    }
    let vocabulary = task.tags.as_deref().unwrap_or(Path::new("the tag list of --model"));
    let tokenizer = Arc::new(tokenizer.clone());
    let columns = Arc::new(TagVocabulary::new(vocabulary_tags, vocabulary));
    if DataKind::of(data)? == DataKind::Shards {
        let data = ShardTraining::open(options, options.stream, tokenizer, context, square, Some(columns))?;
        return Ok(TagSource::Shards { data: Box::new(data), pattern: options.data.to_path_buf() });
    }
    let (mut tags, mut caption_tags, mut uncaptioned) = (Vec::new(), Vec::new(), 0);
    let check = |sample: &mut CaptionedSample| -> Result<(), EngineError> {
        let in_sample = |problem: String| EngineError::Config(format!("{}: {problem}", sample.origin));
        let named = |ids: &[i64]| {
            let named = ids.iter().map(|&id| columns.tag_at(id).map(str::to_string));
            named.collect::<Result<Vec<String>, String>>().map_err(in_sample)
        };
        let own: Vec<Vec<String>> = sample.caption_tag_ids.iter().map(|ids| named(ids)).collect::<Result<_, _>>()?;
        sample.tags.extend(named(&sample.tag_ids)?);
        let column = |tag: &String| {
            columns.column(tag).map_err(|problem| EngineError::Config(format!("{}: {problem}", sample.origin)))
        };
        let indices = sample.tags.iter().map(column).collect::<Result<Vec<usize>, _>>()?;
        tags.push(indices);
        let mut own_columns =
            own.iter().map(|tags| tags.iter().map(column).collect()).collect::<Result<Vec<Vec<usize>>, _>>()?;
        own_columns.iter_mut().for_each(|columns| columns.sort_unstable());
        caption_tags.push(own_columns);
        if sample.captions.is_empty() {
            uncaptioned += 1;
            sample.captions.push(caption_from_tags(&sample.tags));
        }
        Ok(())
    };
    let data = CaptionedTraining::open(options, Needs::Tags, check, tokenizer, context, square)?;
    let manifest = options.data.to_path_buf();
    Ok(TagSource::Files { data: Box::new(data), tags, caption_tags, manifest, uncaptioned })
}

fn strip_teacher(name: &str) -> String {
    name.strip_prefix(TEACHER_PREFIX).unwrap_or(name).to_string()
}

/// `texts` tokenized and padded to the longest of them (at most `context`): with causal
/// attention and pooling at the end token, padding after it changes nothing, so cutting it
/// only saves work.
fn tokenize(tokenizer: &ClipTokenizer, texts: &[String], context: i64) -> Tensor {
    let rows: Vec<Vec<i64>> = texts.iter().map(|text| tokenizer.tokenize(text, context as usize)).collect();
    let longest = rows.iter().map(|row| row.iter().rposition(|&id| id != 0).map_or(1, |last| last + 1)).max();
    let width = longest.unwrap_or(1);
    let ids: Vec<i64> = rows.iter().flat_map(|row| row[..width].iter().copied()).collect();
    Tensor::from_slice(&ids).view([texts.len() as i64, width as i64])
}

/// The prompt of each tag, tokenized: what the tag queries are made from.
fn prompt_ids(tokenizer: &ClipTokenizer, tags: &[String], context: i64) -> Tensor {
    let prompts: Vec<String> = tags.iter().map(|tag| TAG_PROMPT.replace("{}", tag)).collect();
    tokenize(tokenizer, &prompts, context)
}

/// The tagger configuration for `--model DIR`: a tagger's own (its tags must be `tags`),
/// or a new tagger on a CLIP checkpoint; and whether it was a tagger.
fn read_model_config(
    dir: &Path,
    tags: &[String],
    tokenizer: &ClipTokenizer,
) -> Result<(TaggerConfig, bool), EngineError> {
    let path = dir.join(pretrained::CONFIG_FILE);
    let value: serde_json::Value = pretrained::read_config(dir)?;
    let config = if value["model_type"] == tagger::MODEL_TYPE {
        let config: TaggerConfig =
            serde_json::from_value(value).map_err(|err| FileError::format(&path, err.to_string()))?;
        if config.tags != tags {
            let first =
                config.tags.iter().zip(tags).position(|(a, b)| a != b).unwrap_or(config.tags.len().min(tags.len()));
            return Err(EngineError::Config(format!(
                "--model {}: the checkpoint's {} tags differ from the data's {} (first at position {first}: `{}` vs `{}`)",
                dir.display(),
                config.tags.len(),
                tags.len(),
                config.tags.get(first).map(String::as_str).unwrap_or("(none)"),
                tags.get(first).map(String::as_str).unwrap_or("(none)"),
            )));
        }
        (config, true)
    } else {
        let clip: ClipConfig =
            serde_json::from_value(value).map_err(|err| FileError::format(&path, err.to_string()))?;
        (TaggerConfig::new(clip, tags.to_vec()), false)
    };
    check_tokenizer_fits(&config.0.clip, tokenizer, dir)?;
    Ok(config)
}

impl Task for TaggingTask {
    fn groups(&self) -> &[Group] {
        self.groups.groups()
    }

    fn loss_names(&self) -> &[&'static str] {
        &self.loss_names
    }

    fn metric_names(&self) -> &[&'static str] {
        &self.metric_names
    }

    fn var_store(&self) -> &nn::VarStore {
        &self.var_store
    }

    /// Parameters that none of the run's losses reach (the text tower without `align`, the
    /// head without `tag`) are not trained: they keep their weights, as they would without
    /// a gradient.
    fn parameter_group(&self, name: &str) -> Option<usize> {
        let trained = self.losses.iter().any(|loss| loss.reaches(name));
        if name.starts_with(TEACHER_PREFIX) || FIXED.contains(&name) || !trained {
            None
        } else if name.starts_with(HEAD_PREFIX) {
            self.groups.index(TAG_HEAD)
        } else {
            self.groups.index(clip::parameter_place(name))
        }
    }

    fn steps_per_epoch(&self) -> u64 {
        self.source.steps_per_epoch()
    }

    fn train_samples(&self) -> usize {
        self.source.train_samples()
    }

    fn epoch_of(&self, step: u64) -> u64 {
        self.source.epoch_of(step)
    }

    fn describe(&self) -> Vec<String> {
        let data = self.source.describe_data();
        let unseen = if self.unseen_names.is_empty() {
            String::new()
        } else {
            format!("; {} evaluated by name only", self.unseen_names.join(", "))
        };
        let mut lines = vec![
            format!(
                "tagging {} tags with losses {} on {data}{unseen}",
                self.config.tags.len(),
                self.loss_names.join(", ")
            ),
            format!("captions and tag names tokenized with {}", self.vocabulary.display()),
        ];
        if let TagSource::Shards { data, .. } = &self.source {
            lines.push(data.describe());
        }
        lines.extend(self.description.iter().cloned());
        lines
    }

    fn skipped_at_start(&self) -> &[String] {
        self.source.skipped_at_start()
    }

    fn step(&mut self, step: u64, knobs: StepKnobs) -> Result<StepLosses, EngineError> {
        let epoch = self.source.epoch_of(step);
        let text = TextSide::new(&self.tokenizer, self.context(), self.data_tags, self.device);
        let batch = self.source.train_batch(step, knobs.total_steps, &text)?;
        let unit = augment::augment(&batch.pixels, &batch.samples, epoch, knobs.seed, knobs.augmentation);
        let pixels = self.normalizer.normalize(&unit);
        self.weights = knobs.loss_weights.to_vec();
        let terms = if let Some(backward) = knobs.backward {
            self.terms_in_pieces(&pixels, &batch, Some(backward))?
        } else {
            tch::no_grad(|| self.terms_in_pieces(&pixels, &batch, None))?
        };
        let images = batch.samples.len();
        Ok(StepLosses { raw: terms, images, skipped: batch.skipped })
    }

    fn logit_scale(&self) -> Tensor {
        tch::no_grad(|| self.tagger.clip.logit_scale())
    }

    fn after_update(&mut self) {
        self.tagger.clip.clamp_logit_scale();
    }

    fn evaluate(&mut self) -> Result<Scores, EngineError> {
        self.evaluate_on(false)
    }

    fn final_evaluation(&mut self) -> Result<Scores, EngineError> {
        self.evaluate_on(true)
    }

    fn save(&self, dir: &Path) -> Result<(), EngineError> {
        Ok(pretrained::save(dir, &self.var_store, &self.config, self.started_from.as_deref())?)
    }

    fn model_config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("model configs serialize")
    }
}
