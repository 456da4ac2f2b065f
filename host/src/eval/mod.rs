//! Evaluation of trained models on held-out data.

mod captioning;
mod coco;
mod multilabel;
mod retrieval;
mod validation;
mod zero_shot;

pub use captioning::{CAPTION_METRICS, bleu, caption_words, cider_d};
pub use coco::{
    AveragePrecision, COCO_METRICS, COCO_MISSING, CategoryMatches, CocoDetection, CocoEvaluation, CocoSummary,
    GroundTruthBox, ThresholdScores, coco_evaluation,
};
pub use multilabel::{
    TAGGING_METRICS, TagScores, TaggingScores, per_tag_scores, recognize_anything_map, tagging_scores,
};
pub use retrieval::{RECALL_AT, RETRIEVAL_METRICS, Recall, recall};
pub use validation::{VALIDATION_METRICS, validation_metrics};
pub use zero_shot::{ZeroShotAccuracy, zero_shot_accuracy};
