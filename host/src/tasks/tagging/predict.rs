//! `trainer predict` for taggers (the CLIP tagger, RAM++ and RAM): each image's tags with
//! their probabilities, the same probabilities the evaluation scores (sigmoid of the head's
//! logits in float64, images decoded as the held-out images are), at or above each tag's
//! threshold (RAM's own per tag) or the one given, at most the top K; RAM's `tag | tag`
//! string of them; and with a caption branch (RAM, Tag2Text), the caption.

use crate::data::PixelNormalizer;
use crate::engine::EngineError;
use crate::files::FileError;
use crate::models::pretrained;
use crate::models::tagger::{Tagger, TaggerConfig};
use crate::report::JsonLines;
use crate::tasks::TaskKind;
use crate::tasks::inputs::given_flags;
use crate::tasks::tagging::THRESHOLD;
use crate::tasks::tagging::ram;
use crate::tasks::use_model::{ImageSource, for_each_batch, kind_of_folder};
use serde::Serialize;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor, nn};

/// `trainer predict`: which tagger, which images, which tags to keep, where to.
#[derive(Debug, Clone)]
pub struct PredictRequest {
    pub model: PathBuf,
    pub images: ImageSource,
    pub out: PathBuf,
    /// Tags with a probability at least this are kept; `None`: each tag's own threshold.
    pub threshold: Option<f64>,
    /// Of those, at most this many, the most probable first.
    pub top_k: Option<usize>,
    /// For a RAM++ or RAM: the tags to predict and how to embed those it lacks.
    pub open_set: ram::OpenSet,
    pub device: Device,
}

#[derive(Serialize)]
struct PredictedTag<'a> {
    tag: &'a str,
    score: f64,
}

#[derive(Serialize)]
struct Prediction<'a> {
    image: String,
    tags: Vec<PredictedTag<'a>>,
    /// The tags joined by ` | `, as RAM's inference prints them.
    tag_string: String,
    /// RAM's caption from those tags, where it has its caption branch and tokenizer.
    #[serde(skip_serializing_if = "Option::is_none")]
    caption: Option<String>,
}

/// The logits of pixels, with what captions need of the images.
type Score = Box<dyn Fn(&Tensor) -> (Tensor, Option<Tensor>)>;
/// Captions of images from what [`Score`] gave and the tags each kept.
type Caption = Box<dyn Fn(&Tensor, &[Vec<&str>]) -> Option<Vec<String>>>;

/// A saved tagger ready to score images.
struct LoadedTagger {
    tags: Vec<String>,
    thresholds: Vec<f64>,
    normalizer: PixelNormalizer,
    logits: Score,
    captions: Caption,
}

impl LoadedTagger {
    fn load(dir: &std::path::Path, open_set: &ram::OpenSet, device: Device) -> Result<Self, EngineError> {
        if ram::is_ram(dir) {
            let ram = std::rc::Rc::new(ram::open_for_prediction(dir, open_set, device)?);
            let config = &ram.config;
            let (scoring, captioning) = (ram.clone(), ram.clone());
            return Ok(LoadedTagger {
                normalizer: ram::input_normalizer(config.architecture.vision.image_res, device)?,
                tags: config.tag_list.clone(),
                thresholds: config.thresholds.clone(),
                logits: Box::new(move |pixels| {
                    let embeds = scoring.model.image_embeds(pixels);
                    (scoring.model.tag_logits(&embeds), Some(embeds))
                }),
                captions: Box::new(move |embeds, tags| captioning.captions(embeds, tags)),
            });
        }
        ram::refuse_flags(given_flags([
            ("--model-tags", open_set.model_tags.is_some()),
            ("--tags", open_set.tags.is_some()),
            ("--tag-descriptions", open_set.tag_descriptions.is_some()),
            ("--teacher", open_set.teacher.is_some()),
            ("--text-tokenizer", open_set.text_tokenizer.is_some()),
            ("--caption-tags", open_set.caption_tags.is_some()),
        ]))?;
        let path = dir.join(pretrained::CONFIG_FILE);
        let config: TaggerConfig = pretrained::read_config(dir)?;
        if config.tags.is_empty() {
            return Err(FileError::format(&path, "the tagger has no tags").into());
        }
        let var_store = nn::VarStore::new(device);
        let tagger = Tagger::new(&var_store.root(), &config);
        pretrained::load_weights(&var_store, &dir.join(pretrained::WEIGHTS_FILE))?;
        Ok(LoadedTagger {
            normalizer: PixelNormalizer::for_model(Some(dir), config.clip.vision_config.image_size, device)?,
            thresholds: vec![THRESHOLD; config.tags.len()],
            tags: config.tags,
            logits: Box::new(move |pixels| (tagger.forward(pixels).0, None)),
            captions: Box::new(|_, _| None),
        })
    }
}

/// Writes one JSON line per image to `request.out`; returns the number of images.
pub fn predict(request: &PredictRequest) -> Result<usize, EngineError> {
    let dir = &request.model;
    if kind_of_folder(dir)? != TaskKind::Tagging {
        return Err(EngineError::Config(format!(
            "--model {}: not a tagger (predict takes the final/ or best/ of a --task tagging run)",
            dir.display()
        )));
    }
    if let Some(threshold) = request.threshold.filter(|threshold| !(0.0..=1.0).contains(threshold)) {
        return Err(EngineError::Config(format!("--threshold {threshold}: must be within [0, 1]")));
    }
    let tagger = LoadedTagger::load(dir, &request.open_set, request.device)?;
    let files = request.images.files()?;
    let mut out = JsonLines::create(&request.out).map_err(FileError::io(&request.out))?;
    let count = tagger.tags.len();
    for_each_batch(&files, &tagger.normalizer, request.device, request.images.batch_size, |chunk, pixels| {
        let (logits, embeds) = tch::no_grad(|| (tagger.logits)(pixels));
        let probabilities = Vec::<f64>::try_from(logits.sigmoid().to_kind(Kind::Double).flatten(0, -1))?;
        let mut lines = Vec::with_capacity(chunk.len());
        for (file, row) in chunk.iter().zip(probabilities.chunks(count)) {
            let mut tags: Vec<PredictedTag> = (0..count)
                .filter(|&i| row[i] >= request.threshold.unwrap_or(tagger.thresholds[i]))
                .map(|i| PredictedTag { tag: &tagger.tags[i], score: row[i] })
                .collect();
            tags.sort_by(|a, b| b.score.total_cmp(&a.score));
            tags.truncate(request.top_k.unwrap_or(usize::MAX));
            let tag_string = tags.iter().map(|tag| tag.tag).collect::<Vec<_>>().join(" | ");
            lines.push(Prediction { image: file.display().to_string(), tags, tag_string, caption: None });
        }
        // RAM captions each image from the tags it kept, in the order of its tag list as
        // `generate` joins them.
        let kept: Vec<Vec<&str>> = lines
            .iter()
            .map(|line| {
                let mut kept: Vec<&str> = line.tags.iter().map(|tag| tag.tag).collect();
                kept.sort_by_key(|tag| tagger.tags.iter().position(|known| known == tag));
                kept
            })
            .collect();
        if let Some(captions) = embeds.and_then(|embeds| (tagger.captions)(&embeds, &kept)) {
            for (line, caption) in lines.iter_mut().zip(captions) {
                line.caption = Some(caption);
            }
        }
        for line in &lines {
            out.write(line).map_err(FileError::io(&request.out))?;
        }
        Ok(())
    })?;
    Ok(files.len())
}
