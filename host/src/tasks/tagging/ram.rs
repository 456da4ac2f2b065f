//! recognize-anything's RAM++, RAM and Tag2Text fine-tuned as a tagging run: `--task tagging
//! --model ram_plus_swin_large_14m.pth --teacher DIR`, the model of [`crate::models::ram_plus`]
//! under its own names, trained with the terms of recognize-anything's `finetune.py`, named as
//! every tagging run names them (RAM++'s default `tag`, `align`, `distill`; RAM's `tag`,
//! `distill`, `t2t`; Tag2Text's `tag`, `t2t`; without a teacher, those that need none):
//!
//! - `tag`: the asymmetric loss of the tag logits (gamma- 7, clip 0.05), summed;
//! - `distill`: the mean L1 distance of the average image token to the frozen teacher CLIP's
//!   image features (OpenAI CLIP's `encode_image`, unnormalised);
//! - `align`: the asymmetric loss (gamma- 4) of the head's logits for the captions' teacher
//!   embeddings, each image's own caption the positive, over the global batch: every
//!   caption of every process and micro-batch is a negative of every other image, as one
//!   process on the whole batch computes it (`finetune.py` under DDP sees only its own);
//! - `t2t` (RAM's caption branch, [`crate::models::ram_caption`]): the decoder's loss for the
//!   step's caption of each image given that caption's own tags (`parse_label_id`, or the
//!   image's), tokenized with `--text-tokenizer`, averaged over the caption tokens of the
//!   global batch.
//!
//! Each is additive over images, so a process's share is the sum over its rows (`distill`:
//! its rows' part of the global mean; `t2t`: its tokens' part of the global mean), and the
//! shares summed over processes are the terms of the whole batch.
//!
//! **Tags.** A released `.pth` holds no tag names: they come from `--model-tags FILE`, or a
//! `ram_tag_list.txt` beside the file (recognize-anything's `ram/data/ram_tag_list.txt`).
//! The run's tag list is the data's (`--tags`, or the checkpoint's when not given). A tag the
//! checkpoint has keeps its label embedding, matched by name; a new tag's rows are the
//! teacher's normalised text embeddings of its descriptions (`--tag-descriptions`, RAM++'s
//! LLM tag-description files), as recognize-anything's open-set inference builds them, or of
//! prompt templates when it has none. RAM++ keeps the same number of rows per tag, so a
//! tag's descriptions are repeated in turn to fill them. Thresholds: RAM's per-tag file,
//! 0.68 for a tag without one.
//!
//! Tag2Text's tag queries are learned: a tag it has keeps its query and linear, a new one
//! starts from the model's initialisation, and no teacher is needed; its `tag` trains
//! towards the drawn caption's tags where the data gives them, as `finetune.py` does.
//!
//! `unseen_mAP` scores the tags the checkpoint did not have (and any `--unseen-tags`, which
//! `tag` leaves out), on their own. Both mAPs are recognize-anything's (`get_mAP`): a tag
//! without a positive among the held-out images counts 0.
//!
//! **Augmentation.** The knobs are the trainer's batched crop, flip and jitter plus
//! RandAugment's ops and magnitude ([`augment::KNOBS_WITH_RANDAUGMENT`]), all off until a
//! policy sets them; RAM's training transform is `crop_scale_min=0.2, flip_prob=0.5,
//! randaugment_ops=2, randaugment_magnitude=5`. As in `finetune.py` the teacher sees a view
//! of its own: the same knobs with draws of their own, resized to its 224 px. What differs:
//! that view is cropped from the student's resolution and then resized (RAM crops the file's
//! image to 224 directly), and crops resample bilinearly where RAM's are bicubic. Held-out
//! images are resized to the square as RAM's inference transform does.

use super::{
    Columns, PER_TAG, TagBatch, TagLoss, TagSource, TaggingConfig, TextSide, data_vocabulary, gradient_shares,
    multi_hot, open_source, per_tag_table, predict_split, read_vocabulary, split_unseen, tag_rows, trainable_variables,
};
use crate::data::PixelNormalizer;
use crate::data::augment::{self, KnobSpec};
use crate::data::bert_tokenizer::{BertTokenizer, Padding};
use crate::data::captioned::ram_caption;
use crate::data::clip_tokenizer::{CONTEXT_LENGTH, ClipTokenizer};
use crate::data::images::{Filter, Fit, SquareResize};
use crate::data::sampler::keyed;
use crate::distributed::Team;
use crate::engine::{Backward, EngineError, Scores, StepKnobs, StepLosses, Task};
use crate::eval::{
    CAPTION_METRICS, TAGGING_METRICS, TagScores, TaggingScores, bleu, caption_words, cider_d, per_tag_scores,
    recognize_anything_map,
};
use crate::files::FileError;
use crate::models::bert::IGNORED;
use crate::models::clip::{Clip, ClipConfig};
use crate::models::groups::{Group, GroupLayout, Place};
use crate::models::pretrained::{self, PretrainedError};
use crate::models::pth;
use crate::models::ram_caption::{self, MAX_TOKENS, caption_targets};
use crate::models::ram_plus::{self, EMBED_DIM, RamFamily, RamPlus, RamPlusConfig, TagQueries, tag_loss};
use crate::models::relative_position;
use crate::tasks::inputs::{Precision, TaskContext, load_tokenizer};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind, Reduction, Tensor, nn};

/// The `model_type` of a saved RAM++, RAM and Tag2Text.
pub const RAM_PLUS: &str = "ram_plus";
pub const RAM: &str = "ram";
pub const TAG2TEXT: &str = "tag2text";
/// recognize-anything's checkpoint of a saved model, beside `model.safetensors`.
pub const PTH_FILE: &str = "model.pth";
/// The tag list looked for beside a `.pth` when `--model-tags` is not given: RAM++'s and
/// RAM's, Tag2Text's (recognize-anything's `ram/data/` names).
pub const TAG_LIST_FILE: &str = "ram_tag_list.txt";
pub const TAG2TEXT_TAG_LIST_FILE: &str = "tag2text_ori_tag_list.txt";
/// Tag2Text's thresholds other than the default, by tag (`Tag2Text.__init__`).
const TAG2TEXT_THRESHOLDS: [(&str, f64); 3] = [("person", 0.7), ("man", 0.7), ("woman", 0.7)];
/// Tags Tag2Text leaves out of the tags it captions from, "that may disturb captioning"
/// (`delete_tag_index`).
const TAG2TEXT_UNCAPTIONED: [&str; 7] = ["quarter", "back", "two", "three", "four", "five", "one"];
/// The threshold of a tag without one of its own: RAM++'s inference default.
pub const DEFAULT_THRESHOLD: f64 = 0.68;
/// The prompts a new tag without descriptions is embedded from (CLIP's ImageNet templates).
const TEMPLATES: [&str; 5] = [
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "art of the {}.",
];
const UNSEEN_MAP: &str = "unseen_mAP";
/// `t2t` of the held-out images' first captions.
const HELD_OUT_T2T: &str = "val_t2t";
const GATHER: &str = "the gather of the caption embeddings";

/// A saved RAM++ or RAM: its `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RamTaggerConfig {
    pub model_type: String,
    pub architecture: RamPlusConfig,
    /// The tags, in the order of `label_embed`'s rows and of the logits.
    pub tag_list: Vec<String>,
    /// Each tag's threshold on its probability.
    pub thresholds: Vec<f64>,
    /// Tags whose label embeddings were made from descriptions rather than trained with the
    /// checkpoint: `unseen_mAP` scores them.
    #[serde(default)]
    pub added_tags: Vec<String>,
}

impl RamTaggerConfig {
    /// The model `starting` becomes for `tags` (some perhaps new to it), with their
    /// `thresholds`: the tags it lacks, and those it had added itself, are the added ones.
    fn new(starting: &StartingModel, tags: Vec<String>, thresholds: Vec<f64>) -> Self {
        let architecture = RamPlusConfig { tags: tags.len() as i64, ..starting.architecture.clone() };
        let added = tags.iter().filter(|tag| !starting.tags.contains(tag) || starting.added.contains(tag)).cloned();
        RamTaggerConfig {
            model_type: match architecture.family() {
                RamFamily::RamPlus => RAM_PLUS,
                RamFamily::Ram => RAM,
                RamFamily::Tag2Text => TAG2TEXT,
            }
            .into(),
            added_tags: added.collect(),
            architecture,
            tag_list: tags,
            thresholds,
        }
    }
}

/// Whether `--model` names a RAM++, RAM or Tag2Text: a `.pth` checkpoint of
/// recognize-anything's, or a folder this trainer saved one in.
pub fn is_ram(model: &Path) -> bool {
    if model.is_file() {
        return model.extension().is_some_and(|extension| extension == "pth");
    }
    let config: Result<serde_json::Value, _> = pretrained::read_config(model);
    config.is_ok_and(|config| is_ram_type(&config["model_type"]))
}

/// Whether a `config.json`'s `model_type` is one of recognize-anything's.
pub fn is_ram_type(model_type: &serde_json::Value) -> bool {
    [RAM_PLUS, RAM, TAG2TEXT].iter().any(|kind| model_type == kind)
}

/// Refuses the first of `given`, flags that only a RAM++ or RAM `--model` takes, given
/// with another model.
pub fn refuse_flags(given: Vec<&'static str>) -> Result<(), EngineError> {
    match given.first() {
        Some(flag) => Err(EngineError::Config(format!(
            "{flag}: goes with a RAM++, RAM or Tag2Text --model (a recognize-anything .pth, or a folder saved from one)"
        ))),
        None => Ok(()),
    }
}

/// The model a run starts from, as read from `--model`.
struct StartingModel {
    /// The file the weights were read from.
    file: PathBuf,
    /// Its tensors; empty when the run's own weights replace them (resume, evaluation of a
    /// run's folder).
    tensors: HashMap<String, Tensor>,
    architecture: RamPlusConfig,
    tags: Vec<String>,
    /// The checkpoint's own thresholds by tag (a saved folder's).
    thresholds: HashMap<String, f64>,
    added: Vec<String>,
}

impl StartingModel {
    fn read(model: &Path, model_tags: Option<&Path>, load_weights: bool) -> Result<Self, EngineError> {
        if model.is_dir() {
            let config: RamTaggerConfig = pretrained::read_config(model)?;
            let file = pretrained::weights_in(model);
            let tensors = if load_weights { pretrained::read_tensors(&file)? } else { HashMap::new() };
            let thresholds = config.tag_list.iter().cloned().zip(config.thresholds.iter().copied()).collect();
            return Ok(StartingModel {
                file,
                tensors,
                architecture: config.architecture,
                tags: config.tag_list,
                thresholds,
                added: config.added_tags,
            });
        }
        // The architecture is read from the tensors, so a resumed run reads them too.
        let tensors = pretrained::read_tensors(model)?;
        // recognize-anything's loaders read the head of older checkpoints under this name.
        let tensors: HashMap<String, Tensor> = tensors
            .into_iter()
            .map(|(name, tensor)| match name.strip_prefix("vision_multi.") {
                Some(rest) => (format!("tagging_head.{rest}"), tensor),
                None => (name, tensor),
            })
            .collect();
        let list_name =
            if tensors.contains_key(ram_plus::LEARNED_QUERIES) { TAG2TEXT_TAG_LIST_FILE } else { TAG_LIST_FILE };
        let list = match model_tags {
            Some(list) => list.to_path_buf(),
            None => model.with_file_name(list_name),
        };
        if !list.is_file() {
            return Err(EngineError::Config(format!(
                "--model {}: a .pth holds no tag names; give them with --model-tags FILE (recognize-anything's \
                 ram/data/{list_name}, one tag per line) or put {list_name} beside it",
                model.display()
            )));
        }
        let tags = read_vocabulary(&list)?;
        let architecture = RamPlusConfig::of_checkpoint(model, &tensors, tags.len() as i64)?;
        let tensors = if load_weights { tensors } else { HashMap::new() };
        Ok(StartingModel {
            file: model.to_path_buf(),
            tensors,
            architecture,
            tags,
            thresholds: HashMap::new(),
            added: vec![],
        })
    }
}

/// What open-set prediction with a RAM++ or RAM takes besides the model: the checkpoint's
/// tag names, the tags to predict, descriptions of those it lacks and the teacher that embeds
/// them, as `trainer train` takes them.
#[derive(Debug, Clone, Default)]
pub struct OpenSet {
    pub model_tags: Option<PathBuf>,
    pub tags: Option<PathBuf>,
    pub tag_descriptions: Option<PathBuf>,
    pub teacher: Option<PathBuf>,
    /// BERT's tokenizer for a `.pth`'s captions (a saved folder has its own).
    pub text_tokenizer: Option<PathBuf>,
    /// Tags, comma-separated, to caption every image from instead of those it kept.
    pub caption_tags: Option<String>,
}

/// A RAM ready to tag and caption images.
pub struct PredictingRam {
    pub config: RamTaggerConfig,
    pub model: RamPlus,
    /// With the caption branch, the tokenizer that captions: `None` where there is either
    /// no caption branch or no tokenizer for it.
    pub text_tokenizer: Option<BertTokenizer>,
    /// The tag string every image is captioned from, when a person gave the tags.
    caption_tags: Option<String>,
    /// Owns the model's variables.
    _var_store: nn::VarStore,
}

impl PredictingRam {
    /// The captions of images embedded as `image_embeds`, each from the tags it `kept`
    /// (Tag2Text's leave out those that "may disturb captioning"), or all from the tags a
    /// person gave, as Tag2Text's `generate` writes them (beam search from `a picture of `,
    /// the prompt cut off); `None` without a caption branch and its tokenizer.
    pub fn captions(&self, image_embeds: &Tensor, kept: &[Vec<&str>]) -> Option<Vec<String>> {
        let tokenizer = self.text_tokenizer.as_ref()?;
        let tags: Vec<String> = kept
            .iter()
            .map(|kept| match &self.caption_tags {
                Some(given) => given.clone(),
                None => caption_tag_string(&self.config.architecture, kept),
            })
            .collect();
        write_captions(&self.model, tokenizer, image_embeds, &tags)
    }
}

/// The tags each image keeps, of the `(images, tags)` `logits`: those whose probability is at
/// least their threshold, in tag-list order.
fn kept_tags<'a>(logits: &Tensor, tag_list: &'a [String], thresholds: &[f64]) -> Vec<Vec<&'a str>> {
    let probabilities = logits.sigmoid().to_kind(Kind::Double).to_device(Device::Cpu);
    let rows = Vec::<Vec<f64>>::try_from(&probabilities).expect("logits are (images, tags)");
    rows.iter()
        .map(|row| {
            let kept = row.iter().zip(thresholds).zip(tag_list).filter(|((p, threshold), _)| *p >= *threshold);
            kept.map(|(_, tag)| tag.as_str()).collect()
        })
        .collect()
}

/// The tag string an image is captioned from, of the tags it `kept` (in tag-list order):
/// `tag | tag`, Tag2Text's without the tags that "may disturb captioning".
fn caption_tag_string(architecture: &RamPlusConfig, kept: &[&str]) -> String {
    let tag2text = architecture.queries == TagQueries::Learned;
    let captioned = kept.iter().filter(|tag| !(tag2text && TAG2TEXT_UNCAPTIONED.contains(tag)));
    captioned.copied().collect::<Vec<&str>>().join(" | ")
}

/// Ids and mask of tag strings (`tag | tag`) as RAM's tag encoder reads them: padded to 40
/// tokens, the first `[ENC]`.
fn encode_tag_strings(tokenizer: &BertTokenizer, tags: &[String]) -> (Tensor, Tensor) {
    let (ids, mask) = tokenizer.encode(tags, MAX_TOKENS as usize, Padding::Full);
    let _ = ids.narrow(1, 0, 1).fill_(tokenizer.enc_id());
    (ids, mask)
}

/// The captions of images embedded as `image_embeds`, each from its tag string of `tags`, as
/// recognize-anything's `inference_tag2text` writes them (beam search from `a picture of `,
/// the prompt cut off); `None` without a caption branch.
fn write_captions(
    model: &RamPlus,
    tokenizer: &BertTokenizer,
    image_embeds: &Tensor,
    tags: &[String],
) -> Option<Vec<String>> {
    let caption = model.caption()?;
    let device = image_embeds.device();
    let (tag_ids, tag_mask) = encode_tag_strings(tokenizer, tags);
    let compute = model.compute_kind();
    let tag_tokens = tch::no_grad(|| {
        caption.encode_tags(&tag_ids.to_device(device), &tag_mask.to_device(device), image_embeds, compute)
    });
    let (prompt, _) = tokenizer.encode(&[ram_caption::PROMPT.to_string()], MAX_TOKENS as usize, Padding::Longest);
    let mut prompt = Vec::<i64>::try_from(prompt.view([-1])).expect("one row of ids");
    prompt[0] = tokenizer.dec_id();
    prompt.pop();
    let search = ram_caption::caption_search(tokenizer.sep_id());
    let generated = caption.generate(&tag_tokens, &prompt, &search, compute);
    let text = |ids: &Vec<i64>| tokenizer.decode(ids).get(ram_caption::PROMPT.len()..).unwrap_or("").to_string();
    Some(generated.iter().map(text).collect())
}

/// A RAM++ or RAM from `model` (a `.pth` or a saved folder) ready to tag images, its tags
/// the checkpoint's or those of `open_set.tags`, new tags embedded as a run embeds them at
/// its start: open-set tagging without training. Returns the model's configuration, the
/// store holding its weights, and the model.
pub fn open_for_prediction(model: &Path, open_set: &OpenSet, device: Device) -> Result<PredictingRam, EngineError> {
    let starting = StartingModel::read(model, open_set.model_tags.as_deref(), true)?;
    let tags = match &open_set.tags {
        Some(path) => read_vocabulary(path)?,
        None => starting.tags.clone(),
    };
    let learned = starting.architecture.queries == TagQueries::Learned;
    if let (true, Some(path), Some(new)) =
        (learned, &open_set.tags, tags.iter().find(|tag| !starting.tags.contains(tag)))
    {
        return Err(EngineError::Config(format!(
            "--tags {}: `{new}` is not among the tags of {}, a Tag2Text, whose tag queries are learned: fine-tune \
             it on data with that tag to add it",
            path.display(),
            model.display()
        )));
    }
    let teacher = open_set.teacher.as_deref().map(|dir| Teacher::open(dir, device)).transpose()?;
    let thresholds = thresholds_of(None, &tags, &starting)?;
    let config = RamTaggerConfig::new(&starting, tags, thresholds);
    let var_store = nn::VarStore::new(device);
    let ram = RamPlus::new(&var_store.root(), &config.architecture);
    let descriptions = open_set.tag_descriptions.as_deref();
    load_starting(&ram, &var_store, &starting, &config.tag_list, descriptions, teacher.as_ref(), false)?;
    let saved = model.join(TEXT_TOKENIZER_DIR);
    let text_tokenizer = match (&open_set.text_tokenizer, ram.caption()) {
        (_, None) => None,
        (Some(dir), Some(_)) => Some(open_text_tokenizer(dir, &config.architecture)?),
        (None, Some(_)) if saved.is_dir() => Some(open_text_tokenizer(&saved, &config.architecture)?),
        (None, Some(_)) => None,
    };
    if let (Some(_), None) = (&open_set.caption_tags, &text_tokenizer) {
        return Err(EngineError::Config(format!(
            "--caption-tags: {} has no caption branch, or no tokenizer for it (--text-tokenizer DIR)",
            model.display()
        )));
    }
    let caption_tags = open_set.caption_tags.as_deref().map(|given| {
        // Tag2Text's inference turns `a,b` into `a | b`.
        given.split(',').map(str::trim).filter(|tag| !tag.is_empty()).collect::<Vec<&str>>().join(" | ")
    });
    Ok(PredictingRam { config, model: ram, text_tokenizer, caption_tags, _var_store: var_store })
}

/// Where a saved RAM keeps the tokenizer of its caption branch.
const TEXT_TOKENIZER_DIR: &str = "text_tokenizer";

/// Loads `starting`'s weights into `model` (built in `var_store` for `tags`): every tensor
/// but `label_embed`, whose rows [`fill_label_embed`] makes; a tensor the file lacks is
/// refused by name unless `allow_partial`. Returns the start-up lines of what was loaded.
fn load_starting(
    model: &RamPlus,
    var_store: &nn::VarStore,
    starting: &StartingModel,
    tags: &[String],
    descriptions: Option<&Path>,
    teacher: Option<&Teacher>,
    allow_partial: bool,
) -> Result<Vec<String>, EngineError> {
    // A tied tensor's copies load into its one variable; the per-tag tensors are filled
    // tag by tag.
    let aliases = model.aliases();
    let per_tag = per_tag_tensors(&starting.architecture);
    let variable = |name: &str| {
        (!per_tag.iter().any(|(per_tag, _)| *per_tag == name)).then(|| ram_caption::canonical_name(name, &aliases))
    };
    let (tensors, resized) = fit_position_tables(var_store, starting)?;
    let report = pretrained::load_tensors_named(var_store, &starting.file, &tensors, variable, allow_partial).map_err(
        |err| match err {
            PretrainedError::Missing { .. } => EngineError::Config(format!(
                "--model {}: {err}; pass --allow-partial to start those from scratch",
                starting.file.display()
            )),
            other => other.into(),
        },
    )?;
    let weights = format!("weights: {}", ram_plus::describe_load(model, var_store, &report, &tensors));
    let descriptions = descriptions.map(read_descriptions).transpose()?;
    let mut lines = vec![weights];
    lines.extend(resized);
    lines.push(match starting.architecture.queries {
        TagQueries::ClipText => fill_label_embed(model, starting, tags, descriptions.as_ref(), teacher)?,
        TagQueries::Learned => fill_learned_queries(var_store, starting, tags)?,
    });
    Ok(lines)
}

/// The starting tensors, each relative position table of a window other than the model's
/// resized to it as recognize-anything's loaders resize them; with a line saying so when
/// any was.
fn fit_position_tables(
    var_store: &nn::VarStore,
    starting: &StartingModel,
) -> Result<(HashMap<String, Tensor>, Option<String>), EngineError> {
    let variables = var_store.variables();
    let mut resized = Vec::new();
    let mut tensors = HashMap::with_capacity(starting.tensors.len());
    for (name, tensor) in &starting.tensors {
        let target = variables.get(name).filter(|_| name.ends_with(".relative_position_bias_table"));
        let tensor = match target {
            Some(variable) if variable.size() != tensor.size() => {
                let window = ((variable.size()[0] as f64).sqrt().round() as i64 + 1) / 2;
                let fitted = relative_position::resize_table(tensor, window)
                    .map_err(|err| FileError::format(&starting.file, format!("`{name}`: {err}")))?;
                resized.push((tensor.size()[0], variable.size()[0]));
                fitted
            }
            _ => tensor.shallow_clone(),
        };
        tensors.insert(name.clone(), tensor);
    }
    let line = resized.first().map(|&(from, to)| {
        let side = |rows: i64| (rows as f64).sqrt().round() as i64;
        format!(
            "relative position tables: {} resized from {}x{} offsets to {}x{} (window {} to {}), as \
             recognize-anything's loader resizes them",
            resized.len(),
            side(from),
            side(from),
            side(to),
            side(to),
            (side(from) + 1) / 2,
            (side(to) + 1) / 2
        )
    });
    Ok((tensors, line))
}

/// The seed of the teacher's view's augmentation draws: apart from the student's, as
/// `finetune.py` transforms its two views independently.
fn teacher_view_seed(seed: u64) -> u64 {
    keyed(seed, &[TEACHER_VIEW])
}

const TEACHER_VIEW: u64 = 0x7EAC_4E12;

/// The frozen CLIP of `distill` and `align`, and of new tags' label embeddings.
struct Teacher {
    clip: Clip,
    /// Holds the teacher's variables, apart from the student's: never trained, never saved.
    _var_store: nn::VarStore,
    tokenizer: ClipTokenizer,
    context: i64,
    normalizer: PixelNormalizer,
    dir: PathBuf,
    device: Device,
}

impl Teacher {
    fn open(dir: &Path, device: Device) -> Result<Self, EngineError> {
        let (config, var_store, clip): (ClipConfig, _, _) = Clip::from_pretrained(dir, device)?;
        if config.projection_dim != EMBED_DIM {
            return Err(EngineError::Config(format!(
                "--teacher {}: projection_dim is {}; RAM++ and RAM work in {EMBED_DIM}-wide CLIP embeddings \
                 (OpenAI's ViT-B/16 is their teacher)",
                dir.display(),
                config.projection_dim
            )));
        }
        let (tokenizer, _) = load_tokenizer(Some(dir))?;
        let normalizer = PixelNormalizer::for_model(Some(dir), config.vision_config.image_size, device)?;
        let context = config.text_config.max_position_embeddings;
        Ok(Teacher { clip, _var_store: var_store, tokenizer, context, normalizer, dir: dir.to_path_buf(), device })
    }

    /// The normalised text embeddings of `texts`, `(count, 512)`.
    fn embed_texts(&self, texts: &[String]) -> Tensor {
        let ids = super::tokenize(&self.tokenizer, texts, self.context);
        tch::no_grad(|| self.clip.text_embeddings(&ids.to_device(self.device)))
    }
}

/// How RAM's inference makes images its input: both sides resized to `image_res`
/// (torchvision's `Resize((size, size))`, bilinear), normalised with CLIP's statistics.
pub fn input_normalizer(image_res: i64, device: Device) -> Result<PixelNormalizer, EngineError> {
    let square = SquareResize { size: image_res as u32, fit: Fit::Squash, filter: Filter::Bilinear };
    Ok(PixelNormalizer::for_model(None, image_res, device)?.with_square(square))
}

/// A tag's descriptions as a file gives them: `{"tag": ["...", ...], ...}`, or RAM++'s LLM
/// tag-description files, a list of `{"tag": [...]}`.
fn read_descriptions(path: &Path) -> Result<HashMap<String, Vec<String>>, FileError> {
    let text = std::fs::read_to_string(path).map_err(FileError::io(path))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|err| FileError::format(path, err.to_string()))?;
    let entries: Vec<(String, serde_json::Value)> = match value {
        serde_json::Value::Object(map) => map.into_iter().collect(),
        serde_json::Value::Array(items) => {
            let mut entries = Vec::new();
            for (index, item) in items.into_iter().enumerate() {
                match item {
                    serde_json::Value::Object(map) if map.len() == 1 => entries.extend(map),
                    _ => {
                        return Err(FileError::format(path, format!("entry {index}: not an object of one tag")));
                    }
                }
            }
            entries
        }
        _ => return Err(FileError::format(path, "neither an object of tags nor a list of them")),
    };
    let mut descriptions = HashMap::new();
    for (tag, list) in entries {
        let texts: Option<Vec<String>> =
            list.as_array().and_then(|list| list.iter().map(|text| text.as_str().map(str::to_string)).collect());
        match texts {
            Some(texts) if !texts.is_empty() => {
                descriptions.insert(tag, texts);
            }
            _ => return Err(FileError::format(path, format!("`{tag}`: not a non-empty list of strings"))),
        }
    }
    Ok(descriptions)
}

/// Each tag's threshold: `--thresholds FILE` (RAM's format, one number per line, aligned with
/// the checkpoint's tag list or with the run's), else the checkpoint's own, else
/// [`DEFAULT_THRESHOLD`].
fn thresholds_of(file: Option<&Path>, tags: &[String], starting: &StartingModel) -> Result<Vec<f64>, EngineError> {
    let mut by_tag = starting.thresholds.clone();
    // A Tag2Text checkpoint's own, which its code holds rather than a file.
    if starting.thresholds.is_empty() && starting.architecture.queries == TagQueries::Learned {
        by_tag.extend(TAG2TEXT_THRESHOLDS.iter().map(|&(tag, threshold)| (tag.to_string(), threshold)));
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(FileError::io(path))?;
        let lines: Vec<&str> = text.lines().filter(|line| !line.trim().is_empty()).collect();
        let names = if lines.len() == starting.tags.len() {
            &starting.tags
        } else if lines.len() == tags.len() {
            tags
        } else {
            return Err(FileError::format(
                path,
                format!(
                    "{} thresholds, but the checkpoint has {} tags and the run {}",
                    lines.len(),
                    starting.tags.len(),
                    tags.len()
                ),
            )
            .into());
        };
        for (index, (line, tag)) in lines.iter().zip(names).enumerate() {
            let value: f64 = line.trim().parse().map_err(|_| {
                FileError::format(path, format!("line {}: `{}` is not a number", index + 1, line.trim()))
            })?;
            if !(0.0..=1.0).contains(&value) {
                return Err(FileError::format(path, format!("line {}: {value} is not within [0, 1]", index + 1)).into());
            }
            by_tag.insert(tag.clone(), value);
        }
    }
    Ok(tags.iter().map(|tag| by_tag.get(tag).copied().unwrap_or(DEFAULT_THRESHOLD)).collect())
}

/// What the teacher gives one step's images, without gradient.
struct TeacherOutputs {
    /// `(rows, 512)` image features of this process's images, for `distill`.
    image: Option<Tensor>,
    /// The caption embeddings of the global batch `(global rows, 512)`, and the row this
    /// process's first image's caption is at, for `align`.
    captions: Option<(Tensor, i64)>,
}

pub struct RamTaggingTask {
    model: RamPlus,
    var_store: nn::VarStore,
    config: RamTaggerConfig,
    teacher: Option<Teacher>,
    /// Tokenizes the captions (the teacher's tokenizer when there is one).
    tokenizer: ClipTokenizer,
    /// BERT's, for the caption branch's tag strings and captions, when `t2t` trains.
    text_tokenizer: Option<BertTokenizer>,
    context: i64,
    groups: GroupLayout,
    losses: Vec<TagLoss>,
    loss_names: Vec<&'static str>,
    metric_names: Vec<&'static str>,
    normalizer: PixelNormalizer,
    source: TagSource,
    /// Columns `tag` trains on, on the training device; and as positions, with those
    /// `unseen_mAP` scores.
    seen: Tensor,
    seen_columns: Vec<usize>,
    unseen_columns: Vec<usize>,
    weights: Vec<f64>,
    accum_steps: u64,
    team: Arc<Team>,
    description: Vec<String>,
    device: Device,
}

impl RamTaggingTask {
    pub fn open(task: &TaggingConfig, context: &TaskContext) -> Result<Self, EngineError> {
        let inputs = &task.inputs;
        context.check_micro_batches(inputs)?;
        let options = &context.data_options(inputs);
        let device = options.device;
        let model_path = inputs.model.as_deref().ok_or_else(|| EngineError::Config("RAM needs --model".into()))?;
        let starting = StartingModel::read(model_path, task.model_tags.as_deref(), context.load_weights)?;
        let tags = data_vocabulary(task, Some(&starting.tags))?;
        let (seen_columns, unseen_by_flag) = split_unseen(&tags, &task.unseen_tags)?;
        let new_tags: Vec<String> = tags.iter().filter(|tag| !starting.tags.contains(tag)).cloned().collect();
        let thresholds = thresholds_of(task.thresholds.as_deref(), &tags, &starting)?;
        let mut config = RamTaggerConfig::new(&starting, tags, thresholds);
        if let Some(size) = task.image_size {
            let vision = &mut config.architecture.vision;
            *vision = vision
                .at_resolution(size)
                .map_err(|problem| EngineError::Config(format!("--image-size {size}: {problem}")))?;
        }
        let tags = &config.tag_list;
        let unseen_columns: Vec<i64> = (0..tags.len() as i64)
            .filter(|&i| unseen_by_flag.contains(&i) || config.added_tags.contains(&tags[i as usize]))
            .collect();
        let has_caption_branch = config.architecture.text.is_some();
        let tag2text = config.architecture.queries == TagQueries::Learned;
        let losses = run_losses(task, has_caption_branch);
        if tag2text && task.teacher.is_some() {
            return Err(EngineError::Config(format!(
                "--teacher: {} is a Tag2Text, which learns from no CLIP teacher (its terms are tag and t2t)",
                model_path.display()
            )));
        }
        if tag2text && let Some(loss) = losses.iter().find(|loss| matches!(loss, TagLoss::Align | TagLoss::Distill)) {
            return Err(EngineError::Config(format!(
                "--losses {}: {} is a Tag2Text, which has no CLIP embeddings to align or distil (its terms are tag \
                 and t2t)",
                loss.name(),
                model_path.display()
            )));
        }
        if losses.contains(&TagLoss::T2t) && !has_caption_branch {
            return Err(EngineError::Config(format!(
                "--losses t2t: {} has no caption branch (`tag_encoder`, `text_decoder`): RAM's and Tag2Text's \
                 checkpoints have one, RAM++'s do not",
                model_path.display()
            )));
        }
        let text_tokenizer = match (losses.contains(&TagLoss::T2t), &task.text_tokenizer) {
            (false, _) => None,
            (true, Some(dir)) => Some(open_text_tokenizer(dir, &config.architecture)?),
            (true, None) => {
                return Err(EngineError::Config(
                    "--text-tokenizer DIR: bert-base-uncased's tokenizer (its vocab.txt or tokenizer.json) is needed \
                     for the `t2t` loss of RAM's caption branch; or leave t2t out of --losses"
                        .into(),
                ));
            }
        };
        let mut needs = Vec::new();
        for loss in [TagLoss::Distill, TagLoss::Align] {
            if losses.contains(&loss) {
                needs.push(format!("the `{}` loss", loss.name()));
            }
        }
        if context.load_weights && !new_tags.is_empty() && !tag2text {
            needs.push(format!("the label embeddings of tags the checkpoint lacks (`{}`)", new_tags[0]));
        }
        let teacher = match (&task.teacher, needs.is_empty()) {
            (Some(dir), _) => Some(Teacher::open(dir, device)?),
            (None, true) => None,
            (None, false) => {
                return Err(EngineError::Config(format!(
                    "--teacher DIR: a Hugging Face CLIP folder (RAM++ was trained with OpenAI's ViT-B/16) is needed \
                     for {}; or train `tag` alone with --losses tag",
                    needs.join(" and ")
                )));
            }
        };
        let (tokenizer, context_length) = match &teacher {
            Some(teacher) => (teacher.tokenizer.clone(), teacher.context),
            None => (load_tokenizer(None)?.0, CONTEXT_LENGTH as i64),
        };
        let normalizer = input_normalizer(config.architecture.vision.image_res, device)?;
        let source = open_source(task, options, tags, context_length as usize, normalizer.square(), &tokenizer)?;
        let mut description = Vec::new();
        // RAM's tagging-branch fine-tune: data without captions trains `tag` and `distill`.
        let mut losses = losses;
        if matches!(source, TagSource::Shards { .. }) && losses.contains(&TagLoss::T2t) {
            return Err(EngineError::Config(format!(
                "--losses t2t: {} is WebDataset shards, whose loader keeps the captions RAM's caption branch reads; \
                 train t2t from a manifest or recognize-anything's finetune JSON",
                inputs.data.display()
            )));
        }
        if source.uncaptioned() > 0 && losses.contains(&TagLoss::Align) {
            losses.retain(|loss| *loss != TagLoss::Align);
            if losses.is_empty() {
                return Err(EngineError::Config(format!(
                    "--losses align: {} samples of {} have no captions to align with",
                    source.uncaptioned(),
                    inputs.data.display()
                )));
            }
            description.push(format!(
                "align left out: {} samples of {} have no captions",
                source.uncaptioned(),
                inputs.data.display()
            ));
        }
        tch::manual_seed(options.seed as i64);
        let var_store = nn::VarStore::new(device);
        let mut model = RamPlus::new(&var_store.root(), &config.architecture);
        if inputs.precision == Precision::Bf16 {
            model.set_compute_kind(Kind::BFloat16);
        }
        model.set_grad_checkpointing(context.execution.grad_checkpointing);
        if context.load_weights {
            let descriptions = task.tag_descriptions.as_deref();
            let teacher = teacher.as_ref();
            let lines =
                load_starting(&model, &var_store, &starting, tags, descriptions, teacher, inputs.allow_partial)?;
            description.extend(lines);
        } else {
            description.push("weights: the run's own, from its checkpoint or saved folder".into());
        }
        let loss_names = losses.iter().map(|loss| loss.name()).collect();
        let mut metric_names = TAGGING_METRICS.to_vec();
        metric_names.extend(losses.iter().map(|loss| loss.share_metric()));
        if !unseen_columns.is_empty() {
            metric_names.push(UNSEEN_MAP);
        }
        if losses.contains(&TagLoss::T2t) {
            metric_names.push(HELD_OUT_T2T);
            metric_names.extend(CAPTION_METRICS);
        }
        let blocks = config.architecture.vision.block_count();
        Ok(RamTaggingTask {
            model,
            var_store,
            teacher,
            tokenizer,
            text_tokenizer,
            context: context_length,
            groups: GroupLayout::new(inputs.group_by, &[("vision", blocks)], &["projection", "tag_head", "caption"]),
            weights: vec![1.0; losses.len()],
            losses,
            loss_names,
            metric_names,
            normalizer,
            source,
            seen: Tensor::from_slice(&seen_columns).to_device(device),
            seen_columns: seen_columns.iter().map(|&i| i as usize).collect(),
            unseen_columns: unseen_columns.iter().map(|&i| i as usize).collect(),
            accum_steps: inputs.accum_steps,
            team: context.team.clone(),
            description,
            config,
            device,
        })
    }

    /// The teacher's image features of `unit` (pixels in [0, 1], its own view) and
    /// caption embeddings of `input_ids`, as the run's losses need them; the captions of
    /// every process when `gather`.
    fn teacher_outputs(&self, unit: &Tensor, input_ids: &Tensor, gather: bool) -> Result<TeacherOutputs, EngineError> {
        let Some(teacher) = &self.teacher else { return Ok(TeacherOutputs { image: None, captions: None }) };
        tch::no_grad(|| -> Result<TeacherOutputs, EngineError> {
            let image = self
                .losses
                .contains(&TagLoss::Distill)
                .then(|| teacher.clip.image_features(&teacher.normalizer.normalize(unit)));
            let captions = if self.losses.contains(&TagLoss::Align) {
                let local = teacher.clip.text_embeddings(input_ids);
                Some(if gather { self.team.gather_rows(&local, GATHER)? } else { (local, 0) })
            } else {
                None
            };
            Ok(TeacherOutputs { image, captions })
        })
    }

    /// The run's loss terms of `pixels` (normalised) with their `targets`, with graph: the
    /// teacher's `image` features of these rows, the global `captions` with the row of this
    /// piece's first own caption, `share`, these rows' part of the global batch, and `text`,
    /// the caption branch's inputs of these rows with the global batch's count of caption
    /// tokens.
    fn loss_terms(
        &self,
        pixels: &Tensor,
        targets: &Tensor,
        image: Option<&Tensor>,
        captions: Option<(&Tensor, i64)>,
        share: f64,
        text: Option<(&CaptionInputs, f64)>,
    ) -> Vec<Tensor> {
        let embeds = self.model.image_embeds(pixels);
        let teacher_gives = "a run with this loss has a teacher, which gives its inputs";
        self.losses
            .iter()
            .map(|loss| match loss {
                TagLoss::Tag => {
                    let logits = self.model.tag_logits(&embeds).index_select(1, &self.seen);
                    tag_loss(&logits, &targets.index_select(1, &self.seen))
                }
                TagLoss::Distill => {
                    let image = image.expect(teacher_gives);
                    self.model.distill_loss(&embeds, image) * share
                }
                TagLoss::Align => {
                    let captions = captions.expect(teacher_gives);
                    let (captions, first_caption) = captions;
                    self.model.align_loss(&embeds, captions, first_caption)
                }
                TagLoss::T2t => {
                    let (inputs, counted) = text.expect("a run with t2t tokenizes its captions");
                    inputs.t2t_sum(&self.model, &embeds) / counted
                }
            })
            .collect()
    }

    /// What `tag` trains each row of `batch` towards: its image's tags; Tag2Text's, as
    /// `finetune.py` trains it, are those of the row's caption where the data gives captions
    /// tags of their own (`parse_label_id`).
    fn tag_targets(&self, batch: &TagBatch) -> Tensor {
        match &batch.caption_tags {
            Some(rows) if self.config.architecture.queries == TagQueries::Learned => {
                let rows: Vec<&[usize]> = rows.iter().map(Vec::as_slice).collect();
                multi_hot(&rows, self.config.tag_list.len()).to_device(self.device)
            }
            _ => batch.targets.shallow_clone(),
        }
    }

    /// The caption branch's inputs of `batch`, when `t2t` trains.
    fn caption_inputs(&self, batch: &TagBatch) -> Option<CaptionInputs> {
        let tokenizer = self.text_tokenizer.as_ref()?;
        Some(CaptionInputs::of(batch, &self.config.tag_list, tokenizer, self.device))
    }

    /// The step's terms as this process's shares, the batch in `--accum-steps` pieces; with
    /// `backward`, the gradient of their weighted sum accumulated into the parameters.
    fn terms_in_pieces(
        &self,
        pixels: &Tensor,
        batch: &TagBatch,
        teacher: &TeacherOutputs,
        backward: Option<Backward>,
    ) -> Result<Vec<Tensor>, EngineError> {
        let pieces = self.accum_steps as i64;
        let global_rows = self.team.total(pixels.size()[0] as f64, "the sum of the batch's images")?;
        let images = teacher.image.as_ref().map(|image| image.chunk(pieces, 0));
        let (captions, first_row) = match &teacher.captions {
            Some((captions, first_row)) => (Some(captions), *first_row),
            None => (None, 0),
        };
        let text = self.caption_inputs(batch);
        // t2t averages over the global batch's counted tokens, as one process on it would.
        let counted = match &text {
            Some(text) => self.team.total(text.counted(), "the sum of the batch's caption tokens")?,
            None => 1.0,
        };
        let text_pieces = text.as_ref().map(|text| text.chunk(pieces));
        let mut shares: Vec<Tensor> = Vec::with_capacity(self.losses.len());
        let mut offset = 0;
        let targets = self.tag_targets(batch);
        for (index, (pixels, targets)) in pixels.chunk(pieces, 0).iter().zip(targets.chunk(pieces, 0)).enumerate() {
            let rows = pixels.size()[0];
            let image = images.as_ref().map(|images| &images[index]);
            let share = rows as f64 / global_rows;
            let text = text_pieces.as_ref().map(|pieces| (&pieces[index], counted));
            let captions = captions.map(|captions| (captions, first_row + offset));
            let terms = self.loss_terms(pixels, &targets, image, captions, share, text);
            if let Some(backward) = backward {
                backward.run(&terms)?;
            }
            for (slot, term) in terms.into_iter().enumerate() {
                match shares.get_mut(slot) {
                    Some(sum) => *sum += term.detach(),
                    None => shares.push(term.detach()),
                }
            }
            offset += rows;
        }
        Ok(shares)
    }

    /// Scores every tag at once, then the trained ones (`mAP`, ...) and those new to the
    /// checkpoint (`unseen_mAP`) apart; `eval.json` gets the per-tag table of them all.
    fn evaluate_on(&mut self, final_split: bool) -> Result<Scores, EngineError> {
        let tag_count = self.config.tag_list.len();
        let text = TextSide::new(&self.tokenizer, self.context, tag_count, self.device);
        let every_tag = Tensor::arange(tag_count as i64, (Kind::Int64, self.device));
        let columns = Columns { seen: &every_tag, unseen: None };
        let (mut t2t_sum, mut t2t_counted) = (0.0, 0.0);
        // Each held-out image's caption from the tags it kept, with its sample and first caption.
        let (mut written, mut samples, mut first_captions) = (Vec::new(), Vec::new(), Vec::new());
        let split = predict_split(&mut self.source, final_split, &text, columns, |batch| {
            let embeds = self.model.image_embeds(&self.normalizer.normalize(&batch.pixels));
            let logits = self.model.tag_logits(&embeds);
            if let Some(tokenizer) = &self.text_tokenizer {
                let inputs = CaptionInputs::of(batch, &self.config.tag_list, tokenizer, self.device);
                t2t_sum += inputs.t2t_sum(&self.model, &embeds).double_value(&[]);
                t2t_counted += inputs.counted();
                let kept = kept_tags(&logits, &self.config.tag_list, &self.config.thresholds);
                let tags: Vec<String> =
                    kept.iter().map(|kept| caption_tag_string(&self.config.architecture, kept)).collect();
                written.extend(write_captions(&self.model, tokenizer, &embeds, &tags).unwrap_or_default());
                samples.extend(batch.samples.iter().copied());
                first_captions.extend(batch.captions.iter().cloned());
            }
            (logits, None)
        })?;
        let all = &split.seen;
        let per_tag = per_tag_scores(&all.scores, &all.targets, &self.config.thresholds);
        let of_columns = |columns: &[usize]| -> Vec<TagScores> { columns.iter().map(|&i| per_tag[i]).collect() };
        let seen = of_columns(&self.seen_columns);
        let mut measured = TaggingScores::of_tags(&seen);
        measured.map = recognize_anything_map(&seen);
        let mut values = measured.values();
        values.extend(self.gradient_shares(&split.first_batch)?);
        if !self.unseen_columns.is_empty() {
            values.push(recognize_anything_map(&of_columns(&self.unseen_columns)));
        }
        if self.losses.contains(&TagLoss::T2t) {
            values.push(t2t_sum / t2t_counted.max(1.0));
            let references = self
                .source
                .every_caption(&samples)
                .unwrap_or_else(|| first_captions.into_iter().map(|caption| vec![caption]).collect());
            let words: Vec<Vec<String>> = written.iter().map(|caption| caption_words(caption)).collect();
            let reference_words: Vec<Vec<Vec<String>>> = references
                .iter()
                .map(|captions| captions.iter().map(|caption| caption_words(caption)).collect())
                .collect();
            values.push(bleu(&words, &reference_words)[3]);
            values.push(cider_d(&words, &reference_words).0);
        }
        let mut scores = Scores::new(self.metric_names.clone(), values, split.images, split.name);
        scores.tables.insert(PER_TAG.into(), per_tag_table(&self.config.tag_list, &per_tag));
        Ok(scores)
    }

    fn gradient_shares(&self, batch: &TagBatch) -> Result<Vec<f64>, EngineError> {
        let trainable = trainable_variables(self);
        if trainable.is_empty() {
            return Ok(vec![0.0; self.losses.len()]);
        }
        let teacher = self.teacher_outputs(&batch.pixels, &batch.input_ids, false)?;
        let pixels = self.normalizer.normalize(&batch.pixels);
        let captions = teacher.captions.as_ref().map(|(captions, _)| captions);
        let text = self.caption_inputs(batch);
        let text = text.as_ref().map(|text| (text, text.counted()));
        let captions = captions.map(|captions| (captions, 0));
        let targets = self.tag_targets(batch);
        let terms = self.loss_terms(&pixels, &targets, teacher.image.as_ref(), captions, 1.0, text);
        gradient_shares(&trainable, &terms, &self.weights)
    }
}

/// Sets the label embeddings of `model` for `tags`: the rows of a tag `starting` has, and
/// for a new tag the teacher's normalised embeddings of its descriptions (or of prompt
/// templates), repeated in turn to fill its rows. Returns the start-up line saying which.
fn fill_label_embed(
    model: &RamPlus,
    starting: &StartingModel,
    tags: &[String],
    descriptions: Option<&HashMap<String, Vec<String>>>,
    teacher: Option<&Teacher>,
) -> Result<String, EngineError> {
    let rows_per_tag = starting.architecture.descriptions;
    let source = starting.tensors.get("label_embed").map(|rows| rows.view([-1, rows_per_tag, EMBED_DIM]));
    let (mut kept, mut described, mut templated) = (0, Vec::new(), Vec::new());
    let mut blocks = Vec::with_capacity(tags.len());
    for tag in tags {
        let known = starting.tags.iter().position(|known| known == tag);
        let block = match (known, &source) {
            (Some(index), Some(source)) => {
                kept += 1;
                source.get(index as i64).to_kind(Kind::Float)
            }
            _ => {
                let teacher = teacher.ok_or_else(|| {
                    EngineError::Config(format!(
                        "--teacher DIR: `{tag}` has no label embedding in {}, and only the teacher can make one",
                        starting.file.display()
                    ))
                })?;
                let texts: Vec<String> = match descriptions.and_then(|all| all.get(tag)) {
                    Some(texts) => {
                        described.push(tag.as_str());
                        texts.clone()
                    }
                    None => {
                        templated.push(tag.as_str());
                        TEMPLATES.iter().map(|template| template.replace("{}", tag)).collect()
                    }
                };
                let cycled: Vec<String> = texts.iter().cycle().take(rows_per_tag as usize).cloned().collect();
                teacher.embed_texts(&cycled).to_device(Device::Cpu)
            }
        };
        blocks.push(block);
    }
    let rows = Tensor::stack(&blocks, 0).view([-1, EMBED_DIM]);
    tch::no_grad(|| model.label_embed().shallow_clone().copy_(&rows.to_device(model.label_embed().device())));
    let mut line = format!("label embeddings: {kept} tags from the checkpoint");
    if !described.is_empty() {
        line.push_str(&format!("; {} from their descriptions: {}", described.len(), described.join(", ")));
    }
    if !templated.is_empty() {
        line.push_str(&format!(
            "; {} without descriptions, from prompt templates (give them with --tag-descriptions): {}",
            templated.len(),
            templated.join(", ")
        ));
    }
    Ok(line)
}

/// The tensors of a model that hold a slice per tag, with the axis of the tags: RAM++'s and
/// RAM's label embeddings (RAM++'s hold a block of rows per tag); Tag2Text's queries and its
/// per-tag linear.
fn per_tag_tensors(architecture: &RamPlusConfig) -> Vec<(&'static str, i64)> {
    match architecture.queries {
        TagQueries::ClipText => vec![("label_embed", 0)],
        TagQueries::Learned => vec![(ram_plus::LEARNED_QUERIES, 0), ("fc.W", 1), ("fc.b", 1)],
    }
}

/// Sets Tag2Text's per-tag tensors in `var_store` for `tags`: a tag `starting` has keeps
/// its query and its linear; a new one keeps the model's initialisation (an `nn.Embedding`'s
/// and `GroupWiseLinear`'s), as recognize-anything's tracker advises for fine-tuning Tag2Text
/// on tags of one's own. Returns the start-up line saying which.
fn fill_learned_queries(
    var_store: &nn::VarStore,
    starting: &StartingModel,
    tags: &[String],
) -> Result<String, FileError> {
    let variables = var_store.variables();
    let known: Vec<(i64, i64)> = tags
        .iter()
        .enumerate()
        .filter_map(|(row, tag)| Some((row as i64, starting.tags.iter().position(|known| known == tag)? as i64)))
        .collect();
    let new: Vec<&str> = tags.iter().filter(|tag| !starting.tags.contains(tag)).map(String::as_str).collect();
    if !starting.tensors.is_empty() && !known.is_empty() {
        let (rows, sources): (Vec<i64>, Vec<i64>) = known.iter().copied().unzip();
        for (name, axis) in per_tag_tensors(&starting.architecture) {
            let source = starting.tensors.get(name).ok_or_else(|| {
                FileError::format(&starting.file, format!("no tensor `{name}`: Tag2Text's per-tag linear is missing"))
            })?;
            let variable = &variables[name];
            let device = variable.device();
            let taken = source.index_select(axis, &Tensor::from_slice(&sources)).to_kind(Kind::Float);
            tch::no_grad(|| {
                let _ = variable.shallow_clone().index_copy_(
                    axis,
                    &Tensor::from_slice(&rows).to_device(device),
                    &taken.to_device(device),
                );
            });
        }
    }
    let mut line = format!("tag queries and per-tag linears: {} tags from the checkpoint", known.len());
    if !new.is_empty() {
        line.push_str(&format!("; {} new, initialised as Tag2Text initialises them: {}", new.len(), new.join(", ")));
    }
    Ok(line)
}

/// The run's terms: those of `--losses`, or the model's defaults, as recognize-anything's
/// `finetune.py` trains it: RAM++ `tag`, `align`, `distill`; RAM `tag`, `distill`, `t2t`;
/// Tag2Text `tag`, `t2t`; `align` and `distill` only with a teacher.
fn run_losses(task: &TaggingConfig, has_caption_branch: bool) -> Vec<TagLoss> {
    const ORDER: [TagLoss; 4] = [TagLoss::Tag, TagLoss::Align, TagLoss::Distill, TagLoss::T2t];
    if !task.losses.is_empty() {
        return ORDER.into_iter().filter(|loss| task.losses.contains(loss)).collect();
    }
    let teacher = task.teacher.is_some();
    ORDER
        .into_iter()
        .filter(|loss| match loss {
            TagLoss::Tag => true,
            TagLoss::Align => teacher && !has_caption_branch,
            TagLoss::Distill => teacher,
            TagLoss::T2t => has_caption_branch,
        })
        .collect()
}

/// The BERT tokenizer of `dir`, checked against the caption branch's vocabulary.
fn open_text_tokenizer(dir: &Path, architecture: &RamPlusConfig) -> Result<BertTokenizer, EngineError> {
    let tokenizer = BertTokenizer::from_dir(dir)?;
    let wanted = architecture.text.as_ref().map_or(0, |text| text.vocab_size);
    if tokenizer.vocab_size() != wanted {
        return Err(EngineError::Config(format!(
            "--text-tokenizer {}: {} tokens with [DEC] and [ENC], where the caption branch has {wanted} \
             (bert-base-uncased's 30522 and RAM's two)",
            dir.display(),
            tokenizer.vocab_size()
        )));
    }
    Ok(tokenizer)
}

/// A batch's tag strings and captions as `RAM.forward` tokenizes them: each caption's tags
/// `tag | tag` in tag-list order, padded to 40 tokens, `[ENC]` first; the caption cleaned by
/// `pre_caption`, padded to the longest, `[DEC]` first.
struct CaptionInputs {
    tag_ids: Tensor,
    tag_mask: Tensor,
    caption_ids: Tensor,
    caption_mask: Tensor,
}

impl CaptionInputs {
    fn of(batch: &TagBatch, tag_list: &[String], tokenizer: &BertTokenizer, device: Device) -> Self {
        let rows = batch.caption_tags.clone().unwrap_or_else(|| tag_rows(&batch.targets));
        let tag_strings: Vec<String> = rows
            .iter()
            .map(|columns| columns.iter().map(|&column| tag_list[column].as_str()).collect::<Vec<_>>().join(" | "))
            .collect();
        let captions: Vec<String> = batch.captions.iter().map(|caption| ram_caption(caption, 30)).collect();
        let (tag_ids, tag_mask) = encode_tag_strings(tokenizer, &tag_strings);
        let (caption_ids, caption_mask) = tokenizer.encode(&captions, MAX_TOKENS as usize, Padding::Longest);
        let _ = caption_ids.narrow(1, 0, 1).fill_(tokenizer.dec_id());
        CaptionInputs {
            tag_ids: tag_ids.to_device(device),
            tag_mask: tag_mask.to_device(device),
            caption_ids: caption_ids.to_device(device),
            caption_mask: caption_mask.to_device(device),
        }
    }

    /// `t2t` of these inputs over `model`'s images embedded as `embeds`, summed over the
    /// counted tokens.
    fn t2t_sum(&self, model: &RamPlus, embeds: &Tensor) -> Tensor {
        let caption = model.caption().expect("a run with t2t has a caption branch");
        let compute = model.compute_kind();
        let tag_tokens = caption.encode_tags(&self.tag_ids, &self.tag_mask, embeds, compute);
        caption.t2t_loss(&self.caption_ids, &self.caption_mask, &tag_tokens, compute, Reduction::Sum)
    }

    /// The targets `t2t` counts.
    fn counted(&self) -> f64 {
        let targets = caption_targets(&self.caption_ids, &self.caption_mask);
        targets.narrow(1, 1, targets.size()[1] - 1).ne(IGNORED).sum(Kind::Int64).int64_value(&[]) as f64
    }

    fn chunk(&self, pieces: i64) -> Vec<CaptionInputs> {
        let chunks = |tensor: &Tensor| tensor.chunk(pieces, 0);
        let (tag_ids, tag_mask) = (chunks(&self.tag_ids), chunks(&self.tag_mask));
        let (caption_ids, caption_mask) = (chunks(&self.caption_ids), chunks(&self.caption_mask));
        tag_ids
            .into_iter()
            .zip(tag_mask)
            .zip(caption_ids.into_iter().zip(caption_mask))
            .map(|((tag_ids, tag_mask), (caption_ids, caption_mask))| CaptionInputs {
                tag_ids,
                tag_mask,
                caption_ids,
                caption_mask,
            })
            .collect()
    }
}

impl Task for RamTaggingTask {
    fn groups(&self) -> &[Group] {
        self.groups.groups()
    }

    fn loss_names(&self) -> &[&'static str] {
        &self.loss_names
    }

    fn metric_names(&self) -> &[&'static str] {
        &self.metric_names
    }

    fn augmentation_knobs(&self) -> &'static [KnobSpec] {
        &augment::KNOBS_WITH_RANDAUGMENT
    }

    fn var_store(&self) -> &nn::VarStore {
        &self.var_store
    }

    /// RAM++'s and RAM's `label_embed` is frozen, as in recognize-anything (`finetune.py`'s
    /// `label_embed.requires_grad = False` leaves Tag2Text's, a module, trained); a part no
    /// loss of the run reaches is not trained (the head under `distill` alone, the caption
    /// branch without `t2t`, which reaches it only through the layers it shares with the
    /// head).
    fn parameter_group(&self, name: &str) -> Option<usize> {
        let in_image_encoder = name.starts_with("visual_encoder.") || name.starts_with("image_proj.");
        let in_caption_branch = ram_plus::part_of(name) == ram_plus::CAPTION_BRANCH;
        let reached = self.losses.iter().any(|loss| match loss {
            TagLoss::Tag => !in_caption_branch,
            TagLoss::Align => !in_caption_branch && name != "reweight_scale",
            TagLoss::Distill => in_image_encoder,
            // Through the image embeddings, and the head's layers the tag encoder shares.
            TagLoss::T2t => in_caption_branch || in_image_encoder || name.starts_with("tagging_head."),
        });
        if name == "label_embed" || !reached {
            return None;
        }
        let place = match name.strip_prefix("visual_encoder.") {
            Some(inside) => Place::Tower(0, self.config.architecture.vision.tower_part(inside)),
            None if name.starts_with("image_proj.") => Place::Head(0),
            None if in_caption_branch => Place::Head(2),
            None => Place::Head(1),
        };
        self.groups.index(place)
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
        let architecture = &self.config.architecture;
        let vision = &architecture.vision;
        let mut lines = vec![format!(
            "tagging {} tags with {} (Swin {} wide at {} px, {} label embeddings per tag) and losses {} on {}",
            self.config.tag_list.len(),
            architecture.family().name(),
            vision.embed_dim,
            vision.image_res,
            architecture.descriptions,
            self.loss_names.join(", "),
            self.source.describe_data(),
        )];
        match &self.teacher {
            Some(teacher) => {
                lines.push(format!("teacher: {} (frozen; captions tokenized with it)", teacher.dir.display()))
            }
            None => lines.push("teacher: none".into()),
        }
        if let TagSource::Shards { data, .. } = &self.source {
            lines.push(data.describe());
        }
        lines.extend(self.description.iter().cloned());
        let custom = self.config.thresholds.iter().filter(|&&t| t != DEFAULT_THRESHOLD).count();
        lines.push(format!("thresholds: {custom} tags with their own, the others {DEFAULT_THRESHOLD}"));
        lines
    }

    fn skipped_at_start(&self) -> &[String] {
        self.source.skipped_at_start()
    }

    fn step(&mut self, step: u64, knobs: StepKnobs) -> Result<StepLosses, EngineError> {
        let epoch = self.source.epoch_of(step);
        let text = TextSide::new(&self.tokenizer, self.context, self.config.tag_list.len(), self.device);
        let batch = self.source.train_batch(step, knobs.total_steps, &text)?;
        let unit = augment::augment(&batch.pixels, &batch.samples, epoch, knobs.seed, knobs.augmentation);
        let teacher_view = match self.losses.contains(&TagLoss::Distill) {
            true => augment::augment(
                &batch.pixels,
                &batch.samples,
                epoch,
                teacher_view_seed(knobs.seed),
                knobs.augmentation,
            ),
            false => unit.shallow_clone(),
        };
        let teacher = self.teacher_outputs(&teacher_view, &batch.input_ids, true)?;
        let pixels = self.normalizer.normalize(&unit);
        self.weights = knobs.loss_weights.to_vec();
        let terms = match knobs.backward {
            Some(backward) => self.terms_in_pieces(&pixels, &batch, &teacher, Some(backward))?,
            None => tch::no_grad(|| self.terms_in_pieces(&pixels, &batch, &teacher, None))?,
        };
        Ok(StepLosses { raw: terms, images: batch.samples.len(), skipped: batch.skipped })
    }

    /// RAM++ has no contrastive logit scale; its nearest, exp(`reweight_scale`), is shown.
    fn logit_scale(&self) -> Tensor {
        tch::no_grad(|| self.model.description_scale())
    }

    fn after_update(&mut self) {}

    fn evaluate(&mut self) -> Result<Scores, EngineError> {
        self.evaluate_on(false)
    }

    fn final_evaluation(&mut self) -> Result<Scores, EngineError> {
        self.evaluate_on(true)
    }

    /// `config.json`, `model.safetensors`, and `model.pth` as recognize-anything saves its
    /// models (`{"model": state_dict}`, the Swin's buffers included), which its loaders read.
    /// With the caption branch's tokenizer in `text_tokenizer/`, for its captions.
    fn save(&self, dir: &Path) -> Result<(), EngineError> {
        let state = self.model.state_dict(&self.var_store);
        Ok(pretrained::save_with(dir, &self.var_store, &self.config, None, |staging| {
            if let Some(tokenizer) = &self.text_tokenizer {
                tokenizer.save(&staging.join(TEXT_TOKENIZER_DIR))?;
            }
            Ok(pth::write_state_dict(&staging.join(PTH_FILE), "model", &state)?)
        })?)
    }

    fn model_config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("model configs serialize")
    }
}
