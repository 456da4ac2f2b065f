//! `trainer predict` for detectors: a COCO results file (a JSON list of `{"image_id",
//! "category_id", "bbox": [x, y, w, h], "score"}`, boxes in the image's pixels: what
//! pycocotools' `loadRes` reads) for the images `trainer eval` evaluates the same model on.
//! Each patch gives its best query; with `--threshold 0` and the default top-k these are
//! exactly the detections whose COCO AP `trainer eval` reports, so every number can be
//! reproduced with pycocotools. `--draw` also writes each image with its boxes drawn.

use super::{DETECTIONS_PER_IMAGE, DetectionTask};
use crate::data::detection::write::relative_image_names;
use crate::engine::EngineError;
use crate::eval::CocoDetection;
use crate::files::FileError;
use crate::report::{DrawnBox, draw_boxes, series_colour};
use crate::tasks::TaskConfig;
use crate::tasks::use_model::{EvalRequest, evaluation_settings, load_evaluated_weights};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

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
    /// A folder for the images with the boxes kept drawn on them.
    pub draw: Option<PathBuf>,
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
    if let Some(folder) = &request.draw {
        draw_all(&task, &detections, folder)?;
    }
    Ok((images, detections.len()))
}

/// Each image of the final split with its `detections` drawn, as a PNG under `folder`.
fn draw_all(task: &DetectionTask, detections: &[CocoDetection], folder: &Path) -> Result<(), EngineError> {
    let samples = &task.samples[task.final_split().0];
    let names = relative_image_names(samples)?;
    let mut of_image: HashMap<u64, Vec<&CocoDetection>> = HashMap::new();
    for detection in detections {
        of_image.entry(detection.image_id).or_default().push(detection);
    }
    for (sample, name) in samples.iter().zip(names) {
        let image = image::open(&sample.image).map_err(|err| FileError::format(&sample.image, err.to_string()))?;
        let boxes: Vec<DrawnBox> = of_image
            .get(&sample.image_id)
            .into_iter()
            .flatten()
            .filter_map(|detection| {
                let class = task.categories.iter().position(|category| category.id == detection.category_id)?;
                let label = format!("{} {:.2}", task.categories[class].name, detection.score);
                Some(DrawnBox { bbox: detection.bbox, label, colour: series_colour(class) })
            })
            .collect();
        let drawn = draw_boxes(&image.to_rgb8(), &boxes).map_err(|err| FileError::format(&sample.image, err))?;
        let path = folder.join(name).with_extension("png");
        let parent = path.parent().unwrap_or(folder);
        std::fs::create_dir_all(parent).map_err(FileError::io(parent))?;
        drawn.save(&path).map_err(|err| FileError::format(&path, err.to_string()))?;
    }
    Ok(())
}
