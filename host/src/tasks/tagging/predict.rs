//! `trainer predict` for taggers: each image's tags with their probabilities, the same
//! probabilities the evaluation scores (sigmoid of the head's logits in float64, images
//! decoded as the held-out images are), above a threshold and at most the top K.

use crate::data::PixelNormalizer;
use crate::engine::EngineError;
use crate::files::FileError;
use crate::models::pretrained;
use crate::models::tagger::{Tagger, TaggerConfig};
use crate::report::JsonLines;
use crate::tasks::TaskKind;
use crate::tasks::use_model::{ImageSource, for_each_batch, kind_of_folder};
use serde::Serialize;
use std::path::PathBuf;
use tch::{Device, Kind, nn};

/// `trainer predict`: which tagger, which images, which tags to keep, where to.
#[derive(Debug, Clone)]
pub struct PredictRequest {
    pub model: PathBuf,
    pub images: ImageSource,
    pub out: PathBuf,
    /// Tags with a probability at least this are kept.
    pub threshold: f64,
    /// Of those, at most this many, the most probable first.
    pub top_k: Option<usize>,
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
    if !(0.0..=1.0).contains(&request.threshold) {
        return Err(EngineError::Config(format!("--threshold {}: must be within [0, 1]", request.threshold)));
    }
    let config: TaggerConfig = pretrained::read_config(dir)?;
    if config.tags.is_empty() {
        let path = dir.join(pretrained::CONFIG_FILE);
        return Err(FileError::format(&path, "the tagger has no tags").into());
    }
    let var_store = nn::VarStore::new(request.device);
    let tagger = Tagger::new(&var_store.root(), &config);
    pretrained::load_weights(&var_store, &dir.join(pretrained::WEIGHTS_FILE))?;
    let normalizer = PixelNormalizer::for_model(Some(dir), config.clip.vision_config.image_size, request.device)?;
    let files = request.images.files()?;
    let mut out = JsonLines::create(&request.out).map_err(FileError::io(&request.out))?;
    for_each_batch(&files, &normalizer, request.device, request.images.batch_size, |chunk, pixels| {
        let probabilities = tagger.forward(pixels).0.sigmoid().to_kind(Kind::Double);
        let probabilities = Vec::<f64>::try_from(probabilities.flatten(0, -1))?;
        for (file, row) in chunk.iter().zip(probabilities.chunks(config.tags.len())) {
            let mut tags: Vec<PredictedTag> = config
                .tags
                .iter()
                .zip(row)
                .filter(|(_, score)| **score >= request.threshold)
                .map(|(tag, score)| PredictedTag { tag, score: *score })
                .collect();
            tags.sort_by(|a, b| b.score.total_cmp(&a.score));
            tags.truncate(request.top_k.unwrap_or(usize::MAX));
            let line = Prediction { image: file.display().to_string(), tags };
            out.write(&line).map_err(FileError::io(&request.out))?;
        }
        Ok(())
    })?;
    Ok(files.len())
}
