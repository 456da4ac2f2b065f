//! Open-vocabulary detection fine-tuning as a [`Task`]: an OWL-ViT or OWLv2 detector
//! ([`crate::models::owlvit`]) trained on COCO-format boxes, with the category names as
//! text queries.
//!
//! Every step the text tower embeds one prompt per category ("a photo of a {name}."), so
//! its learning rate (or its freezing) is the policies' to choose like the vision tower's;
//! every category is a query for every image, absent ones being negatives. Per image, the
//! exact minimum-cost matching ([`matching`]) pairs each ground-truth box with one patch.
//! Loss terms, named to the policies, each normalised by the batch's number of boxes:
//! `class` (sigmoid focal loss over every patch and query), `box_l1` and `box_giou` over
//! the matched patches, and for OWLv2 `objectness` (focal loss of the objectness head, whose
//! features are detached as in `transformers`).
//!
//! Data: COCO instances, a JSONL manifest with boxes, Pascal VOC or YOLO
//! ([`crate::data::detection`]), or the offline default, Fashion-MNIST items on canvases
//! ([`crate::data::canvas`]). A category is asked with its own prompts where `--prompts`
//! gives them ([`queries`]). Crowd boxes are left out of training and kept for evaluation.
//! Images are resized and padded to the model's square with their boxes; the policies' crop
//! and flip move the boxes too.
//!
//! Evaluation: COCO AP and AR exactly as pycocotools computes them, on each patch's best
//! query (its sigmoid score), boxes in the image's pixels. `--unseen-classes` leaves
//! categories out of the training queries; they are still queried at evaluation, and their
//! AP is reported by name alone (`unseen_AP`, `unseen_AP50`). Each evaluation also draws a
//! few held-out images with their boxes, and each class's precision-recall curve, for
//! TensorBoard and `plots/`.
//!
//! A batch split into micro-batches (`--accum-steps`) or over processes keeps the terms'
//! meaning: each piece's terms are normalised by the whole global batch's number of boxes,
//! so they add up to the batch's.
//!
//! Owns `--unseen-classes`, `--focal-alpha`, `--focal-gamma`, `--match-costs`,
//! `--score-threshold`, `--sampling`, `--prompts` and `--new-tokens`.

pub mod assignment;
mod matching;
mod predict;
mod queries;

pub use matching::{BatchTargets, Focal, MatchCosts, detection_losses};
pub use predict::{DEFAULT_THRESHOLD, DetectionPredictRequest, predict};

use super::inputs::{
    DataOptions, Inputs, Precision, TaskContext, describe_weights, given_flags, held_out_count, load_model,
    load_tokenizer,
};
use crate::data::augment::{self, CropFlip};
use crate::data::canvas::{self, CANVAS_SIZE};
use crate::data::captioned::DataKind;
use crate::data::clip_tokenizer::{ClipTokenizer, TOKENIZER_JSON};
use crate::data::detection::{
    Category, DetectionFormat, DetectionSample, DetectionSet, Part, read_detection_part, read_detection_set, yolo,
};
use crate::data::images::load_rgb_padded;
use crate::data::loader::{EVALUATION_KEYS, Loader, ReadItem};
use crate::data::sampler::EpochSampler;
use crate::data::{PixelNormalizer, rgb_batch};
use crate::distributed::Team;
use crate::engine::{Backward, EngineError, Scores, StepKnobs, StepLosses, Task, Visual};
use crate::eval::{COCO_MISSING, CocoDetection, CocoEvaluation, GroundTruthBox, coco_evaluation};
use crate::files::FileError;
use crate::models::clip::Activation;
use crate::models::groups::{Group, GroupLayout};
use crate::models::owlvit::{self, OwlConfig, OwlDetector, OwlVariant};
use crate::models::pretrained;
use crate::report::{DrawnBox, PrCounts, draw_boxes, png_bytes, series_colour, tiled};
use queries::{Queries, default_prompt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind, Tensor, nn};

/// The settings of a detection run: its section of `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectionConfig {
    #[serde(flatten)]
    pub inputs: Inputs,
    /// Categories left out of the training queries, evaluated by name alone.
    #[serde(default)]
    pub unseen_classes: Vec<String>,
    pub focal: Focal,
    pub match_costs: MatchCosts,
    /// The score a box needs to count in the per-class precision, recall and F1.
    #[serde(default = "default_score_threshold")]
    pub score_threshold: f64,
    /// How training images are drawn.
    #[serde(default)]
    pub sampling: Sampling,
    /// Words made one token each (`--new-tokens`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub new_tokens: Vec<String>,
    /// The prompts of the categories that have their own (`--prompts`), by name; the others
    /// are asked with the default prompt.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prompts: BTreeMap<String, Vec<String>>,
}

/// How training images are drawn each epoch.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Sampling {
    /// Each image once.
    #[default]
    Uniform,
    /// LVIS's repeat-factor sampling: a category in a fraction `f` of the training images
    /// has the factor `max(1, sqrt(threshold / f))`, an image the largest of its
    /// categories', and is drawn that many times an epoch in expectation.
    RepeatFactor { threshold: f64 },
}

impl Sampling {
    /// `uniform`, or `repeat-factor:t=T`.
    fn parse(text: &str) -> Result<Self, String> {
        if text == "uniform" {
            return Ok(Sampling::Uniform);
        }
        let threshold = text
            .strip_prefix("repeat-factor")
            .map(|rest| {
                rest.strip_prefix(":t=").map_or(if rest.is_empty() { Some(0.001) } else { None }, |t| t.parse().ok())
            })
            .ok_or_else(|| format!("--sampling {text}: `uniform` or `repeat-factor:t=T` (LVIS's, T=0.001)"))?;
        match threshold {
            Some(t) if t > 0.0 && t <= 1.0 => Ok(Sampling::RepeatFactor { threshold: t }),
            _ => Err(format!("--sampling {text}: the threshold t is a number in (0, 1], e.g. repeat-factor:t=0.001")),
        }
    }

    /// Each of `samples`' repeat factor, with the start-up line saying what it makes of them;
    /// `None` for uniform sampling.
    fn repeat_factors(&self, samples: &[DetectionSample], categories: usize) -> Option<(Vec<f64>, String)> {
        let Sampling::RepeatFactor { threshold } = *self else { return None };
        let shown = |sample: &DetectionSample| -> Vec<usize> {
            let mut shown: Vec<usize> = sample.boxes.iter().filter(|b| !b.iscrowd).map(|b| b.category).collect();
            shown.sort_unstable();
            shown.dedup();
            shown
        };
        let mut images_with = vec![0usize; categories];
        for sample in samples {
            for category in shown(sample) {
                images_with[category] += 1;
            }
        }
        let factor = |category: usize| {
            let fraction = images_with[category] as f64 / samples.len() as f64;
            (threshold / fraction).sqrt().max(1.0)
        };
        let repeats: Vec<f64> =
            samples.iter().map(|sample| shown(sample).into_iter().map(factor).fold(1.0, f64::max)).collect();
        let repeated = repeats.iter().filter(|&&r| r > 1.0).count();
        let largest = repeats.iter().copied().fold(1.0, f64::max);
        let line = format!(
            "sampling: repeat-factor t={threshold}: {repeated} of {} training images repeated, up to {largest:.2}x, \
             {:.0} draws an epoch in expectation",
            samples.len(),
            repeats.iter().sum::<f64>()
        );
        Some((repeats, line))
    }
}

/// The per-class tables' score threshold: the one `trainer predict` keeps boxes at.
const SCORE_THRESHOLD: f64 = 0.1;

fn default_score_threshold() -> f64 {
    SCORE_THRESHOLD
}

/// The flags only detection has.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DetectionArgs {
    /// Categories never used as training queries, evaluated by name alone (`unseen_AP`)
    /// [--task detection].
    #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
    pub unseen_classes: Option<Vec<String>>,
    /// Weight of positives in the focal losses [default: 0.25; --task detection].
    #[arg(long, value_name = "A")]
    pub focal_alpha: Option<f64>,
    /// Focusing power of the focal losses [default: 2; --task detection].
    #[arg(long, value_name = "G")]
    pub focal_gamma: Option<f64>,
    /// Weights of the matching cost's class, L1 and GIoU parts; match them to the loss
    /// weights your policies set (e.g. 2,5,2 for Deformable DETR's) [default: 1,1,1, as the
    /// default loss weights; --task detection].
    #[arg(long, value_name = "CLASS,L1,GIOU", value_delimiter = ',', num_args = 3)]
    pub match_costs: Option<Vec<f64>>,
    /// The score a box needs to count in the per-class precision, recall and F1 of
    /// evaluations (`per_class` in eval.json) [default: 0.1, where `trainer predict` keeps
    /// boxes; --task detection].
    #[arg(long, value_name = "S")]
    pub score_threshold: Option<f64>,
    /// How training images are drawn: `uniform`, or `repeat-factor:t=T`, LVIS's repeat-factor
    /// sampling for rare classes (a class in a fraction f < T of the images repeats its
    /// images sqrt(T / f) times an epoch) [default: uniform; --task detection].
    #[arg(long, value_name = "KIND", value_parser = Sampling::parse)]
    pub sampling: Option<Sampling>,
    /// A JSON file of prompts by category name, each one prompt or a list (synonyms,
    /// descriptions) whose embeddings are averaged into the category's query; categories it
    /// leaves out are asked "a photo of a {name}." [--task detection].
    #[arg(long, value_name = "FILE", value_parser = parse_prompts_file)]
    pub prompts: Option<BTreeMap<String, Vec<String>>>,
    /// A file of words, one a line, each made one token of the text tower's vocabulary: the
    /// token embedding grows by a row per word (starting as the mean of the word's old
    /// pieces), in a parameter group of its own, `new_tokens`; the saved folder holds the
    /// larger vocabulary and the words in its tokenizer.json. Needs --model's
    /// tokenizer.json [--task detection].
    #[arg(long, value_name = "FILE", value_parser = parse_words_file)]
    pub new_tokens: Option<Words>,
}

/// The words of a `--new-tokens` file (one value to clap, where a `Vec` would be many).
#[derive(Debug, Clone)]
pub struct Words(Vec<String>);

fn parse_words_file(path: &str) -> Result<Words, String> {
    let text = std::fs::read_to_string(path).map_err(|err| format!("{path}: {err}"))?;
    let words: Vec<String> = text.lines().map(str::trim).filter(|line| !line.is_empty()).map(String::from).collect();
    if words.is_empty() {
        return Err(format!("{path}: no words"));
    }
    Ok(Words(words))
}

fn parse_prompts_file(path: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    queries::read_prompts(Path::new(path)).map_err(|err| err.to_string())
}

impl DetectionArgs {
    pub fn given(&self) -> Vec<&'static str> {
        given_flags([
            ("--unseen-classes", self.unseen_classes.is_some()),
            ("--focal-alpha", self.focal_alpha.is_some()),
            ("--focal-gamma", self.focal_gamma.is_some()),
            ("--match-costs", self.match_costs.is_some()),
            ("--score-threshold", self.score_threshold.is_some()),
            ("--sampling", self.sampling.is_some()),
            ("--prompts", self.prompts.is_some()),
            ("--new-tokens", self.new_tokens.is_some()),
        ])
    }

    pub fn config(&self, inputs: Inputs) -> DetectionConfig {
        let costs = self.match_costs.clone().unwrap_or_else(|| vec![1.0; 3]);
        DetectionConfig {
            inputs,
            unseen_classes: self.unseen_classes.clone().unwrap_or_default(),
            focal: Focal { alpha: self.focal_alpha.unwrap_or(0.25), gamma: self.focal_gamma.unwrap_or(2.0) },
            match_costs: MatchCosts { class: costs[0], l1: costs[1], giou: costs[2] },
            score_threshold: self.score_threshold.unwrap_or(SCORE_THRESHOLD),
            sampling: self.sampling.unwrap_or_default(),
            prompts: self.prompts.clone().unwrap_or_default(),
            new_tokens: self.new_tokens.clone().map(|words| words.0).unwrap_or_default(),
        }
    }
}

/// Held-out images drawn with their boxes at each evaluation, and the most boxes drawn on one.
const IMAGES_DRAWN: usize = 4;
const BOXES_DRAWN: usize = 20;
/// Ground-truth boxes are drawn in lime, which no class's colour is.
const TRUTH_COLOUR: [u8; 3] = [0, 255, 0];
/// Thresholds of the PR curves in TensorBoard, 0 to 1.
const PR_THRESHOLDS: usize = 51;

const LOSSES: [&str; 4] = ["class", "box_l1", "box_giou", "objectness"];
/// Metric names: COCO's twelve on the held-out images, then the unseen categories' AP.
const VAL_METRICS: [&str; 12] = [
    "val_AP",
    "val_AP50",
    "val_AP75",
    "val_APs",
    "val_APm",
    "val_APl",
    "val_AR1",
    "val_AR10",
    "val_AR100",
    "val_ARs",
    "val_ARm",
    "val_ARl",
];
const UNSEEN_METRICS: [&str; 2] = ["unseen_AP", "unseen_AP50"];
/// The name of the per-class table in [`Scores::tables`].
pub const PER_CLASS: &str = "per_class";
/// The probability a model trained from scratch starts giving every patch and query: the
/// focal loss's prior initialisation (RetinaNet's), without which the first steps' gradient,
/// summed over every negative, swamps Adam's moment estimates for hundreds of steps.
const CLASS_PRIOR: f64 = 0.01;
/// Detections kept per image for evaluation: COCO's largest `maxDets`.
pub const DETECTIONS_PER_IMAGE: usize = 100;
const EVAL_BATCH_SIZE: usize = 64;

/// Decodes one sample's image, made the model's square.
struct DetectionReader {
    samples: Arc<Vec<DetectionSample>>,
    image_size: u32,
}

/// A decoded image and the scale its boxes follow.
struct LoadedImage {
    sample: usize,
    pixels: Vec<u8>,
    scale: [f64; 2],
}

impl ReadItem for DetectionReader {
    type Item = usize;
    type Loaded = LoadedImage;

    fn read(&self, &sample: &usize) -> Result<LoadedImage, FileError> {
        let declared = &self.samples[sample];
        let padded =
            load_rgb_padded(&declared.image, self.image_size).map_err(|err| err.declared_in(&declared.origin))?;
        Ok(LoadedImage { sample, pixels: padded.pixels, scale: padded.scale })
    }

    fn file<'a>(&'a self, &sample: &'a usize) -> &'a Path {
        &self.samples[sample].image
    }
}

/// A box `[x, y, w, h]` in the image's pixels as corners `[x0, y0, x1, y1]` in fractions of
/// the model's square of side `size`, the image scaled by `scale` (and padded after it).
fn to_model_square([x, y, w, h]: [f64; 4], [sx, sy]: [f64; 2], size: f64) -> [f64; 4] {
    [x * sx / size, y * sy / size, (x + w) * sx / size, (y + h) * sy / size]
}

/// The inverse for predictions: centre and size in fractions of the square to `[x, y, w, h]`
/// in the image's pixels.
fn to_image_pixels([cx, cy, w, h]: [f64; 4], [sx, sy]: [f64; 2], size: f64) -> [f64; 4] {
    let [cx, cy, w, h] = [cx * size, cy * size, w * size, h * size];
    [(cx - w / 2.0) / sx, (cy - h / 2.0) / sy, w / sx, h / sy]
}

/// Where the images of each part of the run are, as ranges of the sample list.
struct Splits {
    train: Range<usize>,
    held_out: Range<usize>,
    /// The end-of-run evaluation's images when the data has a test split of its own.
    test: Option<Range<usize>>,
}

pub struct DetectionTask {
    model: OwlDetector,
    var_store: nn::VarStore,
    config: OwlConfig,
    settings: DetectionConfig,
    groups: GroupLayout,
    loss_names: Vec<&'static str>,
    metric_names: Vec<&'static str>,
    samples: Arc<Vec<DetectionSample>>,
    splits: Splits,
    categories: Vec<Category>,
    /// Categories queried in training (indices into `categories`), and those left unseen.
    seen: Vec<usize>,
    unseen: Vec<usize>,
    /// The queries of every category, and of those queried in training.
    queries: Queries,
    seen_queries: Queries,
    /// With the words `--new-tokens` added, which a saved `tokenizer.json` is given.
    tokenizer: ClipTokenizer,
    sampler: EpochSampler,
    loader: Loader<DetectionReader>,
    normalizer: PixelNormalizer,
    image_size: i64,
    skip_bad: bool,
    skipped_at_start: Vec<String>,
    description: Vec<String>,
    started_from: Option<PathBuf>,
    team: Arc<Team>,
    device: Device,
}

/// A small OWL-ViT for the 64x64 canvases, trained from scratch on a CPU in minutes.
fn tiny_config(tokenizer: &ClipTokenizer) -> OwlConfig {
    let mut config = OwlConfig::defaults(OwlVariant::OwlVit);
    let text = &mut config.text_config;
    text.vocab_size = tokenizer.vocab_size();
    (text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.num_attention_heads) = (64, 256, 2, 4);
    (text.bos_token_id, text.eos_token_id) = (tokenizer.start_id, tokenizer.end_id);
    let vision = &mut config.vision_config;
    (vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers, vision.num_attention_heads) =
        (64, 256, 3, 4);
    (vision.image_size, vision.patch_size, vision.hidden_act) = (CANVAS_SIZE as i64, 8, Activation::QuickGelu);
    config.projection_dim = 64;
    config
}

/// A run's boxes: training samples first, then the held-out ones, then a test split if any.
struct DetectionData {
    samples: Vec<DetectionSample>,
    splits: Splits,
    categories: Vec<Category>,
    /// What `--skip-bad-samples` left out, one line each.
    skipped: Vec<String>,
    /// The start-up report's line about the data.
    description: String,
}

fn read_data(options: &DataOptions) -> Result<DetectionData, EngineError> {
    let skip = options.skip_bad_samples;
    let format = DetectionFormat::of(options.data);
    // A VOC split list is a `.txt` and a VOC or YOLO set a folder, which as data of other
    // tasks are shards and Fashion-MNIST.
    if format.is_none() && DataKind::of(options.data)? == DataKind::Shards {
        return Err(EngineError::Config(format!(
            "--data {}: detection reads COCO box annotations, not WebDataset shards",
            options.data.display()
        )));
    }
    if format.is_none() && DataKind::of(options.data)? == DataKind::FashionMnist {
        options.refuse_file_flags_for_fashion_mnist()?;
        let cache = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/trainer/datasets"));
        let cache =
            cache.ok_or_else(|| EngineError::Config("HOME is not set: no folder for the canvas data".into()))?;
        let folder = canvas::canvas_dataset(options.data, &cache)?;
        let mut parts = Vec::new();
        for split in ["train", "val", "test"] {
            parts.push(read_detection_set(&canvas::split_annotations(&folder, split), None, skip)?);
        }
        let description = format!(
            "data: Fashion-MNIST items on {CANVAS_SIZE}x{CANVAS_SIZE} canvases, a COCO folder made once at {}",
            folder.display()
        );
        let (train, val, test) = (parts[0].samples.len(), parts[1].samples.len(), parts[2].samples.len());
        let splits =
            Splits { train: 0..train, held_out: train..train + val, test: Some(train + val..train + val + test) };
        let categories = parts[0].categories.clone();
        let skipped: Vec<String> = parts.iter().flat_map(|part| part.skipped.clone()).collect();
        let samples = parts.into_iter().flat_map(|part| part.samples).collect();
        return Ok(DetectionData { samples, splits, categories, skipped, description });
    }
    let mut train = read_detection_set(options.data, options.images, skip)?;
    let (held_out, line) = match options.val_data {
        Some(path) => {
            let mut held_out = read_detection_part(path, Part::Val, options.images, skip)?;
            onto_categories(&mut held_out, &train.categories, path)?;
            let line = format!("data: {} (held out: {})", options.data.display(), path.display());
            (held_out, line)
        }
        None if format == Some(DetectionFormat::Yolo) && yolo::has_part(options.data, Part::Val) => {
            let mut held_out = read_detection_part(options.data, Part::Val, options.images, skip)?;
            onto_categories(&mut held_out, &train.categories, options.data)?;
            (held_out, format!("data: {} (held out: its `val` images)", options.data.display()))
        }
        None => {
            let count = held_out_count(options.data, train.samples.len(), 1, options.batch_size)?;
            let rest = train.samples.split_off(train.samples.len() - count);
            let line = format!("data: {} (the last {count} images held out)", options.data.display());
            let categories = train.categories.clone();
            (DetectionSet { samples: rest, categories, skipped: Vec::new() }, line)
        }
    };
    let (train_count, held_count) = (train.samples.len(), held_out.samples.len());
    let splits = Splits { train: 0..train_count, held_out: train_count..train_count + held_count, test: None };
    let mut skipped = train.skipped;
    skipped.extend(held_out.skipped);
    let mut samples = train.samples;
    samples.extend(held_out.samples);
    Ok(DetectionData { samples, splits, categories: train.categories, skipped, description: line })
}

/// Renumbers `set`'s boxes onto `categories` by name (a held-out manifest names only the
/// categories it shows; a held-out COCO file may number them otherwise), refusing a name
/// the training data does not have.
fn onto_categories(set: &mut DetectionSet, categories: &[Category], path: &Path) -> Result<(), EngineError> {
    let mut index = Vec::with_capacity(set.categories.len());
    for category in &set.categories {
        let Some(position) = categories.iter().position(|known| known.name == category.name) else {
            let names: Vec<&str> = categories.iter().map(|c| c.name.as_str()).collect();
            let problem = format!("category `{}` is not one of --data's ({})", category.name, names.join(", "));
            return Err(FileError::format(path, problem).into());
        };
        index.push(position);
    }
    for truth in set.samples.iter_mut().flat_map(|sample| sample.boxes.iter_mut()) {
        truth.category = index[truth.category];
    }
    set.categories = categories.to_vec();
    Ok(())
}

impl DetectionTask {
    pub fn open(task: &DetectionConfig, context: &TaskContext) -> Result<Self, EngineError> {
        let inputs = &task.inputs;
        context.check_micro_batches(inputs)?;
        let options = &context.data_options(inputs);
        let device = options.device;
        check_settings(task)?;
        let DetectionData { samples, splits, categories, skipped: skipped_at_start, description: data_line } =
            read_data(options)?;
        let names: Vec<&str> = categories.iter().map(|c| c.name.as_str()).collect();
        if let Some(unknown) = task.prompts.keys().find(|name| !names.contains(&name.as_str())) {
            return Err(EngineError::Config(format!(
                "--prompts: `{unknown}` is not a category of the data (its categories: {})",
                names.join(", ")
            )));
        }
        if let Some(unknown) = task.unseen_classes.iter().find(|name| !names.contains(&name.as_str())) {
            return Err(EngineError::Config(format!(
                "--unseen-classes: `{unknown}` is not a category of the data (its categories: {})",
                names.join(", ")
            )));
        }
        let (seen, unseen): (Vec<usize>, Vec<usize>) =
            (0..categories.len()).partition(|&i| !task.unseen_classes.contains(&categories[i].name));
        if seen.is_empty() {
            return Err(EngineError::Config("--unseen-classes: every category is unseen; nothing to train on".into()));
        }
        if splits.train.len() < context.batch_size {
            return Err(EngineError::Config(format!(
                "--batch-size {} is larger than the training images ({})",
                context.batch_size,
                splits.train.len()
            )));
        }
        let (mut tokenizer, vocabulary) = load_tokenizer(inputs.model.as_deref())?;
        let mut config = match &inputs.model {
            Some(dir) => OwlConfig::read(dir)?,
            None => tiny_config(&tokenizer),
        };
        if tokenizer.vocab_size() > config.text_config.vocab_size {
            return Err(EngineError::Config(format!(
                "--model: text_config.vocab_size {} is smaller than the tokenizer's vocabulary ({}, {})",
                config.text_config.vocab_size,
                tokenizer.vocab_size(),
                vocabulary.display()
            )));
        }
        let first_new_id = tokenizer.end_id;
        let new_words = if task.new_tokens.is_empty() {
            Vec::new()
        } else {
            if !vocabulary.ends_with(TOKENIZER_JSON) {
                return Err(EngineError::Config(format!(
                    "--new-tokens: the tokenizer ({}) is no {TOKENIZER_JSON} of a --model folder, where the new \
                     words are saved",
                    vocabulary.display()
                )));
            }
            tokenizer
                .add_words(&task.new_tokens)
                .map_err(|problem| EngineError::Config(format!("--new-tokens: {problem}")))?
        };
        tch::manual_seed(options.seed as i64);
        let var_store = nn::VarStore::new(device);
        let mut model = OwlDetector::new(&var_store.root(), &config);
        if inputs.model.is_none() {
            model.set_class_prior(CLASS_PRIOR);
        }
        if inputs.precision == Precision::Bf16 {
            model.set_compute_kind(Kind::BFloat16);
        }
        model.set_grad_checkpointing(context.execution.grad_checkpointing);
        let mut description = vec![data_line];
        if context.load_weights {
            let report = match &inputs.model {
                Some(dir) => Some(load_model(&var_store, dir, |name| Some(name.to_string()), inputs.allow_partial)?),
                None => None,
            };
            description.push(describe_weights(report.as_ref(), var_store.len(), options.seed));
        }
        description.push(format!("tokenizer: {}", vocabulary.display()));
        if !task.new_tokens.is_empty() {
            let pieces: Vec<Vec<i64>> = new_words.iter().map(|new| new.pieces.clone()).collect();
            if !new_words.is_empty() {
                model.insert_tokens(&var_store.root(), &config, first_new_id, &pieces);
            }
            let words: Vec<String> = new_words.iter().map(|new| format!("{} {}", new.word, new.id)).collect();
            let known = task.new_tokens.len() - new_words.len();
            description.push(format!(
                "new tokens: {} ({}), each starting as the mean of its pieces, group `{}`; {known} already one \
                 token; end token now {}",
                new_words.len(),
                words.join(", "),
                owlvit::NEW_TOKENS,
                tokenizer.end_id
            ));
            // What the saved folder declares: the larger vocabulary, the end token last.
            config.text_config.vocab_size = tokenizer.vocab_size();
            config.text_config.eos_token_id = tokenizer.end_id;
        }
        let seen_names: Vec<&str> = seen.iter().map(|&i| names[i]).collect();
        description.push(format!("queries: {} ({})", seen_names.len(), seen_names.join(", ")));
        if !unseen.is_empty() {
            let unseen_names: Vec<&str> = unseen.iter().map(|&i| names[i]).collect();
            description.push(format!("unseen, evaluated by name alone: {}", unseen_names.join(", ")));
        }
        let context_length = config.text_config.max_position_embeddings as usize;
        let prompts: Vec<Vec<String>> = names
            .iter()
            .map(|name| task.prompts.get(*name).cloned().unwrap_or_else(|| vec![default_prompt(name)]))
            .collect();
        let ensembles = prompts.iter().filter(|list| list.len() > 1).count();
        if !task.prompts.is_empty() {
            description.push(format!(
                "prompts: {} categories asked with prompts of their own, {ensembles} with several averaged",
                task.prompts.len()
            ));
        }
        let queries = Queries::new(&prompts, &tokenizer, context_length, device);
        let seen_prompts: Vec<Vec<String>> = seen.iter().map(|&i| prompts[i].clone()).collect();
        let seen_queries = Queries::new(&seen_prompts, &tokenizer, context_length, device);
        let image_size = config.vision_config.image_size;
        let normalizer = PixelNormalizer::for_model(inputs.model.as_deref(), image_size, device)?;
        let samples = Arc::new(samples);
        let reader = DetectionReader { samples: samples.clone(), image_size: image_size as u32 };
        let variant = config.variant();
        let loss_count = if variant == OwlVariant::Owlv2 { 4 } else { 3 };
        let mut metric_names = VAL_METRICS.to_vec();
        if !unseen.is_empty() {
            metric_names.extend(UNSEEN_METRICS);
        }
        let mut sampler = EpochSampler::new(options.seed, splits.train.len(), options.batch_size, options.shard);
        if let Some((repeats, line)) = task.sampling.repeat_factors(&samples[splits.train.clone()], categories.len()) {
            sampler = sampler.repeating(repeats);
            description.push(line);
        }
        Ok(DetectionTask {
            model,
            var_store,
            settings: task.clone(),
            groups: owlvit::parameter_groups(&config, task.inputs.group_by, !new_words.is_empty()),
            loss_names: LOSSES[..loss_count].to_vec(),
            metric_names,
            sampler,
            loader: Loader::new(reader, options.workers),
            samples,
            splits,
            categories,
            seen,
            unseen,
            queries,
            seen_queries,
            tokenizer,
            normalizer,
            image_size,
            skip_bad: options.skip_bad_samples,
            skipped_at_start,
            description,
            started_from: inputs.model.clone(),
            config,
            team: context.team.clone(),
            device,
        })
    }

    /// Batch `key`'s images decoded, as `(n, 3, size, size)` `u8` on the CPU, with each one's
    /// sample index and scale; undecodable ones stop the run or, with `--skip-bad-samples`,
    /// are described and left out.
    fn load(&mut self, key: u64) -> Result<(Tensor, Vec<LoadedImage>, Vec<String>), EngineError> {
        let (loaded, skipped) = self.loader.take_readable(key, self.skip_bad)?;
        let pixels = rgb_batch(loaded.iter().map(|image| image.pixels.as_slice()), self.image_size);
        Ok((pixels, loaded, skipped))
    }

    /// The training targets of `image`: boxes (centre and size as fractions of the model's
    /// square, after the crop and flip) and their query indices; crowds and unseen
    /// categories are left out.
    fn targets(&self, image: &LoadedImage, crop: Option<&CropFlip>) -> (Vec<f32>, Vec<i64>) {
        let size = self.image_size as f64;
        let (mut boxes, mut labels) = (Vec::new(), Vec::new());
        for truth in self.samples[image.sample].boxes.iter().filter(|truth| !truth.iscrowd) {
            let Some(query) = self.seen.iter().position(|&category| category == truth.category) else { continue };
            let xyxy = to_model_square(truth.bbox, image.scale, size);
            let Some([x0, y0, x1, y1]) = crop.map_or(Some(xyxy), |crop| crop.move_box(xyxy)) else { continue };
            if x1 <= x0 || y1 <= y0 {
                continue;
            }
            boxes.extend([(x0 + x1) / 2.0, (y0 + y1) / 2.0, x1 - x0, y1 - y0].map(|v| v as f32));
            labels.push(query as i64);
        }
        (boxes, labels)
    }

    /// Each patch's best query as a COCO detection, at most `per_image` per image (the
    /// highest scores first), boxes in the image's pixels, for the images of `range`.
    fn detections(&mut self, range: Range<usize>, per_image: usize) -> Result<Vec<CocoDetection>, EngineError> {
        let queries = tch::no_grad(|| self.queries.embed(&self.model));
        let mut detections = Vec::new();
        let indices: Vec<usize> = range.collect();
        let chunks: Vec<&[usize]> = indices.chunks(EVAL_BATCH_SIZE).collect();
        for chunk in 0..chunks.len() {
            // The next chunk decodes while this one runs through the model.
            for (ahead, samples) in chunks.iter().enumerate().skip(chunk).take(2) {
                let key = EVALUATION_KEYS + ahead as u64;
                if !self.loader.is_submitted(key) {
                    self.loader.submit(key, samples);
                }
            }
            let key = EVALUATION_KEYS + chunk as u64;
            let (pixels, loaded, _) = self.load(key)?;
            if loaded.is_empty() {
                continue;
            }
            let (scores, classes, boxes) = tch::no_grad(|| {
                let pixels = self.normalizer.normalize(&(pixels.to_device(self.device).to_kind(Kind::Float) / 255.0));
                let features = self.model.image_features(&pixels);
                let (scores, classes) = self.model.class_logits(&features, &queries, None).sigmoid().max_dim(-1, false);
                (scores, classes, self.model.pred_boxes(&features))
            });
            let scores = Vec::<f32>::try_from(scores.to_device(Device::Cpu).flatten(0, -1))?;
            let classes = Vec::<i64>::try_from(classes.to_device(Device::Cpu).flatten(0, -1))?;
            let boxes = Vec::<f32>::try_from(boxes.to_device(Device::Cpu).flatten(0, -1))?;
            let patches = scores.len() / loaded.len();
            for (row, image) in loaded.iter().enumerate() {
                let sample = &self.samples[image.sample];
                let mut order: Vec<usize> = (row * patches..(row + 1) * patches).collect();
                order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
                let size = self.image_size as f64;
                for &patch in order.iter().take(per_image) {
                    let cxcywh = [0, 1, 2, 3].map(|k| boxes[patch * 4 + k] as f64);
                    detections.push(CocoDetection {
                        image_id: sample.image_id,
                        category_id: self.categories[classes[patch] as usize].id,
                        bbox: to_image_pixels(cxcywh, image.scale, size),
                        score: scores[patch] as f64,
                    });
                }
            }
        }
        Ok(detections)
    }

    /// The images of the end-of-run evaluation: the data's test split, or the held-out images.
    fn final_split(&self) -> (Range<usize>, &'static str) {
        match &self.splits.test {
            Some(test) => (test.clone(), "test"),
            None => (self.splits.held_out.clone(), "held-out"),
        }
    }

    /// The detections of the end-of-run evaluation, at most `per_image` per image.
    pub fn final_detections(&mut self, per_image: usize) -> Result<Vec<CocoDetection>, EngineError> {
        self.detections(self.final_split().0, per_image)
    }

    /// COCO evaluation of the model on the images of `range`, and the detections evaluated.
    fn coco_on(&mut self, range: Range<usize>) -> Result<(CocoEvaluation, Vec<CocoDetection>), EngineError> {
        let detections = self.detections(range.clone(), DETECTIONS_PER_IMAGE)?;
        let samples = &self.samples[range];
        let image_ids: Vec<u64> = samples.iter().map(|sample| sample.image_id).collect();
        let category_ids: Vec<u64> = self.categories.iter().map(|category| category.id).collect();
        let truth: Vec<GroundTruthBox> = samples
            .iter()
            .flat_map(|sample| {
                sample.boxes.iter().map(|truth| GroundTruthBox {
                    image_id: sample.image_id,
                    category_id: self.categories[truth.category].id,
                    bbox: truth.bbox,
                    area: truth.area,
                    iscrowd: truth.iscrowd,
                })
            })
            .collect();
        Ok((coco_evaluation(&image_ids, &category_ids, &truth, &detections), detections))
    }

    fn scores_on(&mut self, range: Range<usize>, split: &'static str) -> Result<Scores, EngineError> {
        let images = range.len();
        let (evaluation, detections) = self.coco_on(range.clone())?;
        let mut values: Vec<f64> = evaluation.summary.named_values().iter().map(|(_, value)| *value).collect();
        if !self.unseen.is_empty() {
            let ids: Vec<u64> = self.unseen.iter().map(|&i| self.categories[i].id).collect();
            let unseen = evaluation.over_categories(&ids);
            values.extend([unseen.ap, unseen.ap50]);
        }
        let mut scores = Scores::new(self.metric_names.clone(), values, images, split);
        scores.tables.insert(PER_CLASS.into(), self.per_class_table(&evaluation));
        scores.visuals = self.drawn_detections(range, split, &detections).into_iter().collect();
        scores.visuals.extend(self.pr_curves(&evaluation));
        Ok(scores)
    }

    /// The first [`IMAGES_DRAWN`] images of `range` side by side, each with its ground truth
    /// (in [`TRUTH_COLOUR`], labelled `GT`) and the detections scoring at least the run's score threshold (in
    /// their class's colour, with their scores); `None` when none of them can be read.
    fn drawn_detections(&self, range: Range<usize>, split: &str, detections: &[CocoDetection]) -> Option<Visual> {
        let class_of = |id: u64| self.categories.iter().position(|category| category.id == id);
        let mut drawn = Vec::new();
        for sample in &self.samples[range.start..range.end.min(range.start + IMAGES_DRAWN)] {
            // A picture is no reason to stop a run: an image that cannot be read is not drawn.
            let Ok(image) = image::open(&sample.image) else { continue };
            let truth = sample.boxes.iter().map(|truth| DrawnBox {
                bbox: truth.bbox,
                label: format!("GT {}", self.categories[truth.category].name),
                colour: TRUTH_COLOUR,
            });
            let mut found: Vec<&CocoDetection> = detections
                .iter()
                .filter(|d| d.image_id == sample.image_id && d.score >= self.settings.score_threshold)
                .collect();
            found.sort_by(|a, b| b.score.total_cmp(&a.score));
            let found = found.into_iter().take(BOXES_DRAWN).filter_map(|detection| {
                let class = class_of(detection.category_id)?;
                let label = format!("{} {:.2}", self.categories[class].name, detection.score);
                Some(DrawnBox { bbox: detection.bbox, label, colour: series_colour(class) })
            });
            drawn.push(draw_boxes(&image.to_rgb8(), &truth.chain(found).collect::<Vec<_>>()).ok()?);
        }
        if drawn.is_empty() {
            return None;
        }
        let sheet = tiled(&drawn, 2);
        let png = png_bytes(&sheet).ok()?;
        Some(Visual::Image { tag: format!("detections/{split}"), png, width: sheet.width(), height: sheet.height() })
    }

    /// Each class's precision-recall curve at IoU .5 (pycocotools' matches), for the classes
    /// with ground truth or detections.
    fn pr_curves(&self, evaluation: &CocoEvaluation) -> Vec<Visual> {
        let mut curves = Vec::new();
        for category in &self.categories {
            let Some(matches) = evaluation.matches.get(&category.id) else { continue };
            let at: Vec<_> = (0..PR_THRESHOLDS).map(|i| matches.at(i as f64 / (PR_THRESHOLDS - 1) as f64)).collect();
            if matches.ground_truth == 0 && at[0].detections == 0 {
                continue;
            }
            let counts = PrCounts {
                true_positives: at.iter().map(|scores| scores.hits as f64).collect(),
                false_positives: at.iter().map(|scores| (scores.detections - scores.hits) as f64).collect(),
                false_negatives: at.iter().map(|scores| (matches.ground_truth - scores.hits) as f64).collect(),
            };
            curves.push(Visual::PrCurve { tag: format!("pr_curve/{}", category.name), counts });
        }
        curves
    }

    /// Each category's AP and AP50 (pycocotools' per category), and its precision, recall and
    /// F1 at IoU .5 of the boxes scoring at least the run's score threshold; `null` where a
    /// figure is undefined (no ground truth, no box kept).
    fn per_class_table(&self, evaluation: &CocoEvaluation) -> serde_json::Value {
        let threshold = self.settings.score_threshold;
        let defined = |value: f64| (value != COCO_MISSING).then_some(value);
        let rows = self.categories.iter().map(|category| {
            let ap = evaluation.per_category.get(&category.id);
            let matches = evaluation.matches.get(&category.id).cloned().unwrap_or_default();
            let at = matches.at(threshold);
            serde_json::json!({
                "class": category.name,
                "category_id": category.id,
                "ap": ap.and_then(|ap| defined(ap.ap)),
                "ap50": ap.and_then(|ap| defined(ap.ap50)),
                "precision": at.precision,
                "recall": at.recall,
                "f1": at.f1,
                "ground_truth": matches.ground_truth,
                "detections": at.detections,
                "score_threshold": threshold,
            })
        });
        serde_json::Value::Array(rows.collect())
    }

    /// Each loss term of one batch (with its graph), in the order of the loss names.
    /// The step's loss terms as this rank's shares of the global batch's (each normalised by
    /// the global batch's number of boxes, so that they add up over pieces and ranks), the
    /// batch going through the model in `--accum-steps` pieces; with `weights`, the gradient
    /// of their weighted sum accumulated into the parameters.
    fn terms_in_pieces(
        &self,
        pixels: &Tensor,
        boxes: &[Tensor],
        labels: &[Tensor],
        backward: Option<Backward>,
    ) -> Result<Vec<Tensor>, EngineError> {
        let local_boxes = BatchTargets { boxes, labels }.box_count() as f64;
        let box_count = self.team.total(local_boxes, "the sum of the batch's box counts")?.max(1.0);
        let (costs, focal) = (self.settings.match_costs, self.settings.focal);
        let rows = boxes.len();
        let piece_rows = rows.div_ceil(self.settings.inputs.accum_steps as usize);
        let mut shares: Vec<Tensor> = Vec::new();
        for start in (0..rows).step_by(piece_rows) {
            let end = (start + piece_rows).min(rows);
            let targets = BatchTargets { boxes: &boxes[start..end], labels: &labels[start..end] };
            let pixels = pixels.narrow(0, start as i64, (end - start) as i64);
            let terms = detection_losses(
                &self.model,
                &pixels,
                &self.seen_queries.embed(&self.model),
                &targets,
                costs,
                focal,
                box_count,
            )
            .map_err(|err| EngineError::Config(format!("matching: {err}")))?;
            if let Some(backward) = backward {
                backward.run(&terms)?;
            }
            if shares.is_empty() {
                shares = terms.iter().map(Tensor::detach).collect();
            } else {
                for (share, term) in shares.iter_mut().zip(&terms) {
                    *share += term.detach();
                }
            }
        }
        Ok(shares)
    }
}

fn check_settings(task: &DetectionConfig) -> Result<(), EngineError> {
    let Focal { alpha, gamma } = task.focal;
    if !(0.0..=1.0).contains(&alpha) {
        return Err(EngineError::Config(format!("--focal-alpha {alpha}: must be within [0, 1]")));
    }
    if !(gamma.is_finite() && gamma >= 0.0) {
        return Err(EngineError::Config(format!("--focal-gamma {gamma}: must be a finite number >= 0")));
    }
    let threshold = task.score_threshold;
    if !(0.0..=1.0).contains(&threshold) {
        return Err(EngineError::Config(format!("--score-threshold {threshold}: must be within [0, 1]")));
    }
    let MatchCosts { class, l1, giou } = task.match_costs;
    if [class, l1, giou].iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
        return Err(EngineError::Config(format!(
            "--match-costs {class},{l1},{giou}: weights must be finite numbers >= 0"
        )));
    }
    Ok(())
}

impl Task for DetectionTask {
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

    fn parameter_group(&self, name: &str) -> Option<usize> {
        if name.ends_with(".embeddings.new_token_embedding") {
            return Some(self.groups.groups().len() - 1);
        }
        self.groups.index(owlvit::parameter_place(name)?)
    }

    fn steps_per_epoch(&self) -> u64 {
        self.sampler.steps_per_epoch()
    }

    fn train_samples(&self) -> usize {
        self.sampler.sample_count()
    }

    fn epoch_of(&self, step: u64) -> u64 {
        self.sampler.epoch_of(step)
    }

    fn describe(&self) -> Vec<String> {
        self.description.clone()
    }

    fn skipped_at_start(&self) -> &[String] {
        &self.skipped_at_start
    }

    fn step(&mut self, step: u64, knobs: StepKnobs) -> Result<StepLosses, EngineError> {
        for ahead in self.loader.to_prefetch(step, knobs.total_steps) {
            let samples: Vec<usize> =
                self.sampler.batch(ahead).iter().map(|&i| self.splits.train.start + i as usize).collect();
            self.loader.submit(ahead, &samples);
        }
        let (pixels, loaded, skipped) = self.load(step)?;
        if loaded.is_empty() {
            return Err(EngineError::Config(format!("step {step}: no readable image in the batch")));
        }
        let epoch = self.sampler.epoch_of(step);
        let keys: Vec<i64> = loaded.iter().map(|image| image.sample as i64).collect();
        let crops = augment::crops_and_flips(&keys, epoch, knobs.seed, knobs.augmentation);
        let (mut boxes, mut labels) = (Vec::new(), Vec::new());
        for (row, image) in loaded.iter().enumerate() {
            let (image_boxes, image_labels) = self.targets(image, crops.as_ref().map(|crops| &crops[row]));
            boxes.push(Tensor::from_slice(&image_boxes).view([-1, 4]).to_device(self.device));
            labels.push(Tensor::from_slice(&image_labels).to_device(self.device));
        }
        let pixels = pixels.to_device(self.device).to_kind(Kind::Float) / 255.0;
        let pixels = augment::augment(&pixels, &keys, epoch, knobs.seed, knobs.augmentation);
        let pixels = self.normalizer.normalize(&pixels);
        let terms = if let Some(backward) = knobs.backward {
            self.terms_in_pieces(&pixels, &boxes, &labels, Some(backward))?
        } else {
            tch::no_grad(|| self.terms_in_pieces(&pixels, &boxes, &labels, None))?
        };
        Ok(StepLosses { raw: terms, images: loaded.len(), skipped })
    }

    fn logit_scale(&self) -> Tensor {
        self.model.logit_scale()
    }

    fn after_update(&mut self) {}

    fn evaluate(&mut self) -> Result<Scores, EngineError> {
        self.scores_on(self.splits.held_out.clone(), "held-out")
    }

    fn final_evaluation(&mut self) -> Result<Scores, EngineError> {
        let (range, split) = self.final_split();
        self.scores_on(range, split)
    }

    /// Writes the model under Hugging Face's names; with words added to the vocabulary, their
    /// rows merged into the token embedding and the words into `tokenizer.json`, so the folder
    /// is a model of the larger vocabulary.
    fn save(&self, dir: &Path) -> Result<(), EngineError> {
        let Some(merged) = self.model.merged_token_embedding() else {
            return Ok(pretrained::save(dir, &self.var_store, &self.config, self.started_from.as_deref())?);
        };
        let source = self.started_from.as_deref();
        Ok(pretrained::save_with(dir, &self.var_store, &self.config, source, |staging| {
            let mut tensors: Vec<(String, Tensor)> = self
                .var_store
                .variables()
                .into_iter()
                .filter(|(name, _)| !name.ends_with(".embeddings.new_token_embedding"))
                .map(|(name, tensor)| {
                    let tensor = if name.ends_with(".embeddings.token_embedding.weight") {
                        merged.shallow_clone()
                    } else {
                        tensor
                    };
                    (name, tensor)
                })
                .collect();
            tensors.sort_by(|a, b| a.0.cmp(&b.0));
            let weights = staging.join(pretrained::WEIGHTS_FILE);
            Tensor::write_safetensors(&tensors, &weights)
                .map_err(|source| pretrained::PretrainedError::Torch { path: weights, source })?;
            let tokenizer = staging.join(TOKENIZER_JSON);
            let text = std::fs::read_to_string(&tokenizer).map_err(FileError::io(&tokenizer))?;
            let file = serde_json::from_str(&text).map_err(|err| FileError::format(&tokenizer, err.to_string()))?;
            let updated = serde_json::to_string(&self.tokenizer.updated_tokenizer_json(file)).expect("JSON serializes");
            Ok(crate::files::write_atomically(&tokenizer, updated.as_bytes())?)
        })?)
    }

    fn model_config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("model configs serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A box of a 100x50 image made a 64-pixel square (scale 0.64, padded below) and back:
    /// what a perfect prediction of it becomes in the image's pixels.
    #[test]
    fn boxes_go_to_the_square_and_come_back_to_the_image() {
        let (bbox, scale, size) = ([10.0, 5.0, 30.0, 40.0], [0.64, 0.64], 64.0);
        let [x0, y0, x1, y1] = to_model_square(bbox, scale, size);
        assert!((x0 - 0.1).abs() < 1e-12 && (y1 - 0.45).abs() < 1e-12, "{x0} {y1}");
        let centred = [(x0 + x1) / 2.0, (y0 + y1) / 2.0, x1 - x0, y1 - y0];
        let back = to_image_pixels(centred, scale, size);
        for (got, want) in back.iter().zip(bbox) {
            assert!((got - want).abs() < 1e-9, "{back:?}");
        }
        // Rounded sides give each axis its own scale.
        let uneven = to_image_pixels([0.5, 0.5, 0.5, 0.5], [0.5, 0.25], 8.0);
        assert_eq!(uneven, [4.0, 8.0, 8.0, 16.0]);
    }
}
