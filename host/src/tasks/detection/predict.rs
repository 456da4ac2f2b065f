//! `trainer predict` for detectors: a COCO results file (a JSON list of `{"image_id",
//! "category_id", "bbox": [x, y, w, h], "score"}`, boxes in the image's pixels: what
//! pycocotools' `loadRes` reads) for the images `trainer eval` evaluates the same model on.
//! Each patch gives its best query; with `--threshold 0` and the default top-k these are
//! exactly the detections whose COCO AP `trainer eval` reports, so every number can be
//! reproduced with pycocotools.

use super::{DETECTIONS_PER_IMAGE, DetectionTask};
use crate::engine::EngineError;
use crate::files::FileError;
use crate::tasks::TaskConfig;
use crate::tasks::use_model::{EvalRequest, evaluation_settings, load_evaluated_weights};
use std::path::PathBuf;

/// `trainer predict` of a detector: which model and data (as `trainer eval` takes them),
/// which boxes to keep, where to.
#[derive(Debug, Clone)]
pub struct DetectionPredictRequest {
    pub evaluation: EvalRequest,
    pub out: PathBuf,
    /// Boxes scoring at least this are kept.
    pub threshold: f64,
    /// Of those, at most this many per image, the highest scores first.
    pub top_k: usize,
}

/// The default threshold: OWL-ViT's usual one for showing boxes.
pub const DEFAULT_THRESHOLD: f64 = 0.1;

/// Writes the detections to `request.out`; returns how many images and boxes.
pub fn predict(request: &DetectionPredictRequest) -> Result<(usize, usize), EngineError> {
    let (config, context, dir) = evaluation_settings(&request.evaluation)?;
    let TaskConfig::Detection(settings) = config else {
        return Err(EngineError::Config(format!("--model {}: not a detector", dir.display())));
    };
    let mut task = DetectionTask::open(&settings, &context)?;
    load_evaluated_weights(&task.var_store, &context, &dir)?;
    let images = task.final_split().0.len();
    let mut detections = task.final_detections(request.top_k.max(DETECTIONS_PER_IMAGE))?;
    let mut kept_of_image = std::collections::HashMap::new();
    detections.retain(|detection| {
        let kept = kept_of_image.entry(detection.image_id).or_insert(0usize);
        let keep = detection.score >= request.threshold && *kept < request.top_k;
        *kept += keep as usize;
        keep
    });
    let text = serde_json::to_string(&detections).expect("detections serialize");
    std::fs::write(&request.out, text).map_err(FileError::io(&request.out))?;
    Ok((images, detections.len()))
}
