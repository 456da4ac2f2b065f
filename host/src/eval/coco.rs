//! COCO box detection metrics, equal to pycocotools' `COCOeval` with `iouType='bbox'`: the 12
//! numbers of `summarize()` and AP / AP50 per category, the ones open-vocabulary detection
//! papers report for their held-out classes.
//!
//! Written here rather than taken from a crate: the maintained port on crates.io, `hotcoco`
//! (1.3), is a 30k-line toolkit (masks, LVIS, Open Images, dataset tools) on rayon, png,
//! quick-xml and rand, built around COCO dataset objects; boxes in memory need a few hundred
//! lines on std.
//!
//! Every rule follows `cocoeval.py` (its `evaluate`, `evaluateImg`, `accumulate`,
//! `summarize`) and `coco.py`'s `loadRes`, including the numerics: thresholds as
//! `np.linspace` makes them, stable (mergesort) ordering of equal scores, the
//! `np.spacing(1)` in precision, and [`COCO_MISSING`] where there is nothing to measure. One
//! difference: pycocotools records a match as the matched annotation's id, so an annotation
//! with id 0 counts as unmatched there; COCO's ids start at 1, and here a match is a match.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Metric names, in the order of [`CocoSummary::named_values`] (pycocotools' `stats`).
pub const COCO_METRICS: [&str; 12] =
    ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"];

/// The value pycocotools gives a metric without ground truth to measure against: no evaluated
/// category has a ground-truth box (crowds aside) in that area range. Means leave it out.
pub const COCO_MISSING: f64 = -1.0;

/// A ground-truth box as in COCO instances files.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroundTruthBox {
    pub image_id: u64,
    pub category_id: u64,
    /// x, y, width, height.
    pub bbox: [f64; 4],
    /// The annotation's `area` field (for COCO, the segmentation's), which decides the area
    /// range, not the box's width times height.
    pub area: f64,
    pub iscrowd: bool,
}

/// A detection as in a COCO results file (which it reads and writes).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CocoDetection {
    pub image_id: u64,
    pub category_id: u64,
    /// x, y, width, height; its area range is decided by width times height.
    pub bbox: [f64; 4],
    pub score: f64,
}

/// pycocotools' `stats`; a field is [`COCO_MISSING`] where pycocotools gives -1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CocoSummary {
    pub ap: f64,
    pub ap50: f64,
    pub ap75: f64,
    pub ap_small: f64,
    pub ap_medium: f64,
    pub ap_large: f64,
    pub ar1: f64,
    pub ar10: f64,
    pub ar100: f64,
    pub ar_small: f64,
    pub ar_medium: f64,
    pub ar_large: f64,
}

impl CocoSummary {
    /// `(name, value)` in the order of [`COCO_METRICS`].
    pub fn named_values(&self) -> [(&'static str, f64); 12] {
        let values = [
            self.ap,
            self.ap50,
            self.ap75,
            self.ap_small,
            self.ap_medium,
            self.ap_large,
            self.ar1,
            self.ar10,
            self.ar100,
            self.ar_small,
            self.ar_medium,
            self.ar_large,
        ];
        std::array::from_fn(|i| (COCO_METRICS[i], values[i]))
    }
}

/// AP@[.5:.95] and AP@.5 (all areas, 100 detections per image); [`COCO_MISSING`] without
/// ground truth.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AveragePrecision {
    pub ap: f64,
    pub ap50: f64,
}

/// The summary and the per-category AP of one [`coco_evaluation`].
#[derive(Debug, Clone, PartialEq)]
pub struct CocoEvaluation {
    pub summary: CocoSummary,
    /// Per evaluated category, as pycocotools with `params.catIds = [id]`.
    pub per_category: BTreeMap<u64, AveragePrecision>,
    /// Per evaluated category, its detections as matched at IoU .5.
    pub matches: BTreeMap<u64, CategoryMatches>,
}

/// A category's detections as pycocotools matches them at IoU .5 (all areas, 100 per image),
/// highest score first, each a hit or not (those matched to crowds left out), and the
/// ground truth to find: what precision and recall at a score threshold read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CategoryMatches {
    detections: Vec<(f64, bool)>,
    pub ground_truth: usize,
}

/// Precision, recall and F1 of the detections at or above a score threshold; `None` where
/// undefined (no detection, no ground truth).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ThresholdScores {
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    /// Detections at or above the threshold, and the hits among them.
    pub detections: usize,
    pub hits: usize,
}

impl CategoryMatches {
    /// The scores of the detections scoring at least `threshold`.
    pub fn at(&self, threshold: f64) -> ThresholdScores {
        let kept = &self.detections[..self.detections.partition_point(|&(score, _)| score >= threshold)];
        let hits = kept.iter().filter(|&&(_, hit)| hit).count();
        let ratio = |part: usize, whole: usize| (whole > 0).then(|| part as f64 / whole as f64);
        let (precision, recall) = (ratio(hits, kept.len()), ratio(hits, self.ground_truth));
        let f1 = match (precision, recall) {
            (Some(p), Some(r)) if p + r > 0.0 => Some(2.0 * p * r / (p + r)),
            (Some(_), Some(_)) => Some(0.0),
            _ => None,
        };
        ThresholdScores { precision, recall, f1, detections: kept.len(), hits }
    }
}

impl CocoEvaluation {
    /// AP over a subset of the categories (say the classes held out of training), as
    /// pycocotools with `params.catIds = category_ids`: categories without ground truth, and
    /// ids that were not evaluated, are left out.
    pub fn over_categories(&self, category_ids: &[u64]) -> AveragePrecision {
        let mut ids = category_ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let measured: Vec<AveragePrecision> =
            ids.iter().filter_map(|id| self.per_category.get(id)).filter(|ap| ap.ap != COCO_MISSING).copied().collect();
        let mean = |value: fn(&AveragePrecision) -> f64| {
            if measured.is_empty() {
                COCO_MISSING
            } else {
                measured.iter().map(value).sum::<f64>() / measured.len() as f64
            }
        };
        AveragePrecision { ap: mean(|ap| ap.ap), ap50: mean(|ap| ap.ap50) }
    }
}

const IOU_THRESHOLD_COUNT: usize = 10;
const RECALL_THRESHOLD_COUNT: usize = 101;
/// Indices of IoU .5 and .75 among the thresholds.
const IOU_50: usize = 0;
const IOU_75: usize = 5;
/// Detections kept per image and category; recall is also read at the first 1 and 10.
const MAX_DETECTIONS: [usize; 3] = [1, 10, 100];
const AT_1: usize = 0;
const AT_10: usize = 1;
const AT_100: usize = 2;
/// All, small, medium, large, by area; pycocotools includes both ends.
const AREA_RANGES: [(f64, f64); 4] = [(0.0, 1e10), (0.0, 1024.0), (1024.0, 9216.0), (9216.0, 1e10)];
const ALL_AREAS: usize = 0;
const SMALL: usize = 1;
const MEDIUM: usize = 2;
const LARGE: usize = 3;
/// pycocotools' `np.spacing(1)`, which keeps precision defined before any detection counts.
const PRECISION_EPSILON: f64 = f64::EPSILON;

/// COCO box metrics of `detections` against `ground_truth` on the given images and categories
/// (pycocotools' `params.imgIds` and `params.catIds`, by default every image and category of
/// the instances file). Images without boxes are fine.
pub fn coco_evaluation(
    image_ids: &[u64],
    category_ids: &[u64],
    ground_truth: &[GroundTruthBox],
    detections: &[CocoDetection],
) -> CocoEvaluation {
    let image_ids = sorted_unique(image_ids);
    let category_ids = sorted_unique(category_ids);
    // Boxes of other categories or images are left out, as pycocotools' getAnnIds does.
    let key = |source, index, category_id, image_id| -> Option<BoxKey> {
        let category = category_ids.binary_search(&category_id).ok()?;
        let image = image_ids.binary_search(&image_id).ok()?;
        Some(BoxKey { category, image, source, index })
    };
    let truth_keys =
        ground_truth.iter().enumerate().filter_map(|(i, g)| key(Source::GroundTruth, i, g.category_id, g.image_id));
    let detection_keys =
        detections.iter().enumerate().filter_map(|(i, d)| key(Source::CocoDetection, i, d.category_id, d.image_id));
    let mut keys: Vec<BoxKey> = truth_keys.chain(detection_keys).collect();
    keys.sort_unstable();
    let thresholds = Thresholds::new();
    let mut categories: Vec<CategoryCurves> = category_ids.iter().map(|_| CategoryCurves::default()).collect();
    let mut matches: Vec<CategoryMatches> = category_ids.iter().map(|_| CategoryMatches::default()).collect();
    for category_keys in keys.chunk_by(|a, b| a.category == b.category) {
        let mut category_evaluation = CategoryEvaluation::default();
        for image_keys in category_keys.chunk_by(|a, b| a.image == b.image) {
            let (truth_keys, detection_keys) =
                image_keys.split_at(image_keys.partition_point(|key| key.source == Source::GroundTruth));
            let image_ground_truth: Vec<&GroundTruthBox> =
                truth_keys.iter().map(|key| &ground_truth[key.index]).collect();
            let image_detections: Vec<&CocoDetection> =
                detection_keys.iter().map(|key| &detections[key.index]).collect();
            category_evaluation.add_image(&image_ground_truth, image_detections, &thresholds);
        }
        let category = category_keys[0].category;
        (categories[category], matches[category]) = category_evaluation.accumulate(&thresholds);
    }
    let per_category =
        category_ids.iter().zip(&categories).map(|(&id, curves)| (id, curves.average_precision())).collect();
    let matches = category_ids.iter().copied().zip(matches).collect();
    CocoEvaluation { summary: summarize(&categories), per_category, matches }
}

fn sorted_unique(ids: &[u64]) -> Vec<u64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    GroundTruth,
    CocoDetection,
}

/// Where a box sits: positions in the sorted category and image ids, and in its input slice.
/// Boxes sort by category, then image (in id order, which breaks ties between equal scores
/// of different images), then input order, which pycocotools keeps within an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct BoxKey {
    category: usize,
    image: usize,
    source: Source,
    index: usize,
}

struct Thresholds {
    iou: [f64; IOU_THRESHOLD_COUNT],
    recall: [f64; RECALL_THRESHOLD_COUNT],
}

impl Thresholds {
    /// As `np.linspace` computes them (start + i * step, the last set to the end), which is
    /// not i / 100: 0.35 comes out as 0.35000000000000003, above a recall of 7 / 20.
    fn new() -> Self {
        let iou_step = (0.95 - 0.5) / (IOU_THRESHOLD_COUNT - 1) as f64;
        let mut iou = std::array::from_fn(|i| 0.5 + i as f64 * iou_step);
        iou[IOU_THRESHOLD_COUNT - 1] = 0.95;
        let recall_step = 1.0 / (RECALL_THRESHOLD_COUNT - 1) as f64;
        let mut recall = std::array::from_fn(|i| i as f64 * recall_step);
        recall[RECALL_THRESHOLD_COUNT - 1] = 1.0;
        Thresholds { iou, recall }
    }
}

/// A detection's part in the precision / recall curve at one IoU threshold and area range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    TruePositive,
    FalsePositive,
    /// Matched to an ignored (crowd or out-of-range) box, or unmatched and itself out of range.
    Ignored,
}

struct EvaluatedDetection {
    score: f64,
    /// Position among its image's detections of the category, by score.
    rank: usize,
    outcomes: [[Outcome; IOU_THRESHOLD_COUNT]; AREA_RANGES.len()],
}

/// One category's detections over the images, and its count of ground truth that is not
/// ignored, per area range.
#[derive(Default)]
struct CategoryEvaluation {
    detections: Vec<EvaluatedDetection>,
    ground_truth_counts: [usize; AREA_RANGES.len()],
}

impl CategoryEvaluation {
    /// pycocotools' `computeIoU` and `evaluateImg` for one image.
    fn add_image(
        &mut self,
        ground_truth: &[&GroundTruthBox],
        mut detections: Vec<&CocoDetection>,
        thresholds: &Thresholds,
    ) {
        detections.sort_by(|a, b| by_score_descending(a.score, b.score));
        detections.truncate(MAX_DETECTIONS[AT_100]);
        let ious: Vec<f64> = detections
            .iter()
            .flat_map(|d| ground_truth.iter().map(move |g| box_iou(&d.bbox, &g.bbox, g.iscrowd)))
            .collect();
        let first = self.detections.len();
        self.detections.extend(detections.iter().enumerate().map(|(rank, d)| EvaluatedDetection {
            score: d.score,
            rank,
            outcomes: [[Outcome::FalsePositive; IOU_THRESHOLD_COUNT]; AREA_RANGES.len()],
        }));
        let evaluated = &mut self.detections[first..];
        for (area_index, &(low, high)) in AREA_RANGES.iter().enumerate() {
            let outside = |area: f64| area < low || area > high;
            let ignored: Vec<bool> = ground_truth.iter().map(|g| g.iscrowd || outside(g.area)).collect();
            self.ground_truth_counts[area_index] += ignored.iter().filter(|&&ignore| !ignore).count();
            // Ignored ground truth last, so that a match to a regular box is found first.
            let mut order: Vec<usize> = (0..ground_truth.len()).collect();
            order.sort_by_key(|&g| ignored[g]);
            for (threshold_index, &threshold) in thresholds.iou.iter().enumerate() {
                let mut taken = vec![false; ground_truth.len()];
                for (d, detection) in detections.iter().enumerate() {
                    let mut best_iou = threshold;
                    let mut best: Option<usize> = None;
                    for &g in &order {
                        if taken[g] && !ground_truth[g].iscrowd {
                            continue;
                        }
                        if best.is_some_and(|m| !ignored[m]) && ignored[g] {
                            break;
                        }
                        let iou = ious[d * ground_truth.len() + g];
                        if iou < best_iou {
                            continue;
                        }
                        best_iou = iou;
                        best = Some(g);
                    }
                    let [_, _, width, height] = detection.bbox;
                    evaluated[d].outcomes[area_index][threshold_index] = match best {
                        Some(g) => {
                            taken[g] = true;
                            if ignored[g] { Outcome::Ignored } else { Outcome::TruePositive }
                        }
                        None if outside(width * height) => Outcome::Ignored,
                        None => Outcome::FalsePositive,
                    };
                }
            }
        }
    }

    /// pycocotools' `accumulate` for one category: precision summed over the recall thresholds
    /// (at 100 detections per image), and recall at 1, 10 and 100, per area range and IoU;
    /// with the detections' matches at IoU .5 over all areas.
    fn accumulate(mut self, thresholds: &Thresholds) -> (CategoryCurves, CategoryMatches) {
        // A stable sort of the detections, which are in image order, as pycocotools' mergesort
        // of the images' lists put end to end; those ranked below N in their image then come
        // in the order pycocotools gives them at N detections per image.
        self.detections.sort_by(|a, b| by_score_descending(a.score, b.score));
        let matched = self.detections.iter().filter_map(|detection| match detection.outcomes[ALL_AREAS][IOU_50] {
            Outcome::TruePositive => Some((detection.score, true)),
            Outcome::FalsePositive => Some((detection.score, false)),
            Outcome::Ignored => None,
        });
        let matches =
            CategoryMatches { detections: matched.collect(), ground_truth: self.ground_truth_counts[ALL_AREAS] };
        let mut recall_points = Vec::new();
        let mut precision_points = Vec::new();
        let areas = std::array::from_fn(|area_index| {
            let ground_truth_count = self.ground_truth_counts[area_index];
            if ground_truth_count == 0 {
                return None;
            }
            let ground_truth_count = ground_truth_count as f64;
            let mut curves = AreaCurves {
                precision_sums: [0.0; IOU_THRESHOLD_COUNT],
                recalls: [[0.0; IOU_THRESHOLD_COUNT]; MAX_DETECTIONS.len()],
            };
            for threshold_index in 0..IOU_THRESHOLD_COUNT {
                recall_points.clear();
                precision_points.clear();
                // Every detection here is among its image's first 100; hits among the first 1
                // and 10 give recall at those limits.
                let mut true_positives_within = [0usize; MAX_DETECTIONS.len()];
                let (mut true_positives, mut false_positives) = (0.0, 0.0);
                for detection in &self.detections {
                    match detection.outcomes[area_index][threshold_index] {
                        Outcome::TruePositive => {
                            true_positives += 1.0;
                            for (count, &limit) in true_positives_within.iter_mut().zip(&MAX_DETECTIONS) {
                                *count += usize::from(detection.rank < limit);
                            }
                        }
                        Outcome::FalsePositive => false_positives += 1.0,
                        Outcome::Ignored => {}
                    }
                    recall_points.push(true_positives / ground_truth_count);
                    precision_points.push(true_positives / (false_positives + true_positives + PRECISION_EPSILON));
                }
                for (recall, count) in curves.recalls.iter_mut().zip(true_positives_within) {
                    recall[threshold_index] = count as f64 / ground_truth_count;
                }
                // The precision envelope: the best precision at this recall or beyond.
                for i in (1..precision_points.len()).rev() {
                    if precision_points[i] > precision_points[i - 1] {
                        precision_points[i - 1] = precision_points[i];
                    }
                }
                // np.searchsorted(side='left'): the first point reaching each recall
                // threshold; thresholds beyond the curve's reach add precision 0.
                let mut point = 0;
                for &recall_threshold in &thresholds.recall {
                    while point < recall_points.len() && recall_points[point] < recall_threshold {
                        point += 1;
                    }
                    match precision_points.get(point) {
                        Some(precision) => curves.precision_sums[threshold_index] += precision,
                        None => break,
                    }
                }
            }
            Some(curves)
        });
        (CategoryCurves { areas }, matches)
    }
}

/// Higher scores first, as numpy's `argsort(-scores)`: NaN last, -0.0 equal to 0.0.
fn by_score_descending(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (false, false) if a > b => Ordering::Less,
        (false, false) if a < b => Ordering::Greater,
        (a_is_nan, b_is_nan) => a_is_nan.cmp(&b_is_nan),
    }
}

/// pycocotools' `bbIou` (maskApi.c), term for term: a crowd region's overlap is measured
/// against the detection's area alone, since a crowd box covers many objects.
fn box_iou(detection: &[f64; 4], ground_truth: &[f64; 4], crowd: bool) -> f64 {
    let [dx, dy, dw, dh] = *detection;
    let [gx, gy, gw, gh] = *ground_truth;
    let width = (dw + dx).min(gw + gx) - dx.max(gx);
    if width <= 0.0 {
        return 0.0;
    }
    let height = (dh + dy).min(gh + gy) - dy.max(gy);
    if height <= 0.0 {
        return 0.0;
    }
    let intersection = width * height;
    let detection_area = dw * dh;
    let union = if crowd { detection_area } else { detection_area + gw * gh - intersection };
    intersection / union
}

/// One category's curves per area range; `None` where it has no ground truth to find there.
#[derive(Default)]
struct CategoryCurves {
    areas: [Option<AreaCurves>; AREA_RANGES.len()],
}

struct AreaCurves {
    /// Per IoU threshold, the sum of interpolated precision over the recall thresholds.
    precision_sums: [f64; IOU_THRESHOLD_COUNT],
    /// Per detection limit, then IoU threshold.
    recalls: [[f64; IOU_THRESHOLD_COUNT]; MAX_DETECTIONS.len()],
}

impl CategoryCurves {
    fn average_precision(&self) -> AveragePrecision {
        match &self.areas[ALL_AREAS] {
            None => AveragePrecision { ap: COCO_MISSING, ap50: COCO_MISSING },
            Some(all) => AveragePrecision {
                ap: all.precision_sums.iter().sum::<f64>() / (IOU_THRESHOLD_COUNT * RECALL_THRESHOLD_COUNT) as f64,
                ap50: all.precision_sums[IOU_50] / RECALL_THRESHOLD_COUNT as f64,
            },
        }
    }
}

/// pycocotools' `summarize`: each number is the mean of its entries over the categories with
/// ground truth in its area range, and over the IoU (and recall) thresholds.
fn summarize(categories: &[CategoryCurves]) -> CocoSummary {
    let mean = |area_index: usize, entries_per_category: usize, sum: &dyn Fn(&AreaCurves) -> f64| {
        let measured: Vec<&AreaCurves> = categories.iter().filter_map(|c| c.areas[area_index].as_ref()).collect();
        if measured.is_empty() {
            COCO_MISSING
        } else {
            measured.iter().map(|curves| sum(curves)).sum::<f64>() / (measured.len() * entries_per_category) as f64
        }
    };
    let curve_points = IOU_THRESHOLD_COUNT * RECALL_THRESHOLD_COUNT;
    let average_precision = |area_index| mean(area_index, curve_points, &|c| c.precision_sums.iter().sum());
    let average_recall =
        |area_index, max_index: usize| mean(area_index, IOU_THRESHOLD_COUNT, &|c| c.recalls[max_index].iter().sum());
    CocoSummary {
        ap: average_precision(ALL_AREAS),
        ap50: mean(ALL_AREAS, RECALL_THRESHOLD_COUNT, &|c| c.precision_sums[IOU_50]),
        ap75: mean(ALL_AREAS, RECALL_THRESHOLD_COUNT, &|c| c.precision_sums[IOU_75]),
        ap_small: average_precision(SMALL),
        ap_medium: average_precision(MEDIUM),
        ap_large: average_precision(LARGE),
        ar1: average_recall(ALL_AREAS, AT_1),
        ar10: average_recall(ALL_AREAS, AT_10),
        ar100: average_recall(ALL_AREAS, AT_100),
        ar_small: average_recall(SMALL, AT_100),
        ar_medium: average_recall(MEDIUM, AT_100),
        ar_large: average_recall(LARGE, AT_100),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Instances {
        images: Vec<Identified>,
        annotations: Vec<Annotation>,
        categories: Vec<Identified>,
    }

    #[derive(Deserialize)]
    struct Identified {
        id: u64,
    }

    #[derive(Deserialize)]
    struct Annotation {
        image_id: u64,
        category_id: u64,
        bbox: [f64; 4],
        area: f64,
        iscrowd: u8,
    }

    #[derive(Deserialize)]
    struct Expected {
        stats: BTreeMap<String, f64>,
        per_category: BTreeMap<u64, ExpectedAveragePrecision>,
        unseen: ExpectedSubset,
    }

    #[derive(Deserialize)]
    struct ExpectedAveragePrecision {
        #[serde(rename = "AP")]
        ap: f64,
        #[serde(rename = "AP50")]
        ap50: f64,
    }

    #[derive(Deserialize)]
    struct ExpectedSubset {
        category_ids: Vec<u64>,
        #[serde(flatten)]
        average_precision: ExpectedAveragePrecision,
    }

    /// Summation order aside (numpy sums pairwise), the arithmetic is pycocotools'.
    const TOLERANCE: f64 = 1e-12;

    #[test]
    fn matches_pycocotools_on_the_fixture() {
        let instances: Instances =
            serde_json::from_str(include_str!("../../../tests/fixtures/detection/coco_eval/instances.json")).unwrap();
        let detections: Vec<CocoDetection> =
            serde_json::from_str(include_str!("../../../tests/fixtures/detection/coco_eval/detections.json")).unwrap();
        let expected: Expected =
            serde_json::from_str(include_str!("../../../tests/fixtures/detection/coco_eval/expected.json")).unwrap();
        let ground_truth: Vec<GroundTruthBox> = instances
            .annotations
            .iter()
            .map(|a| GroundTruthBox {
                image_id: a.image_id,
                category_id: a.category_id,
                bbox: a.bbox,
                area: a.area,
                iscrowd: a.iscrowd != 0,
            })
            .collect();
        let image_ids: Vec<u64> = instances.images.iter().map(|i| i.id).collect();
        let category_ids: Vec<u64> = instances.categories.iter().map(|c| c.id).collect();
        let evaluation = coco_evaluation(&image_ids, &category_ids, &ground_truth, &detections);

        for (name, value) in evaluation.summary.named_values() {
            let reference = expected.stats[name];
            assert!((value - reference).abs() <= TOLERANCE, "{name}: {value} against pycocotools' {reference}");
        }
        assert_eq!(evaluation.per_category.len(), expected.per_category.len());
        for (id, reference) in &expected.per_category {
            let ap = evaluation.per_category[id];
            assert!((ap.ap - reference.ap).abs() <= TOLERANCE, "category {id}: AP {} against {}", ap.ap, reference.ap);
            assert!(
                (ap.ap50 - reference.ap50).abs() <= TOLERANCE,
                "category {id}: AP50 {} against {}",
                ap.ap50,
                reference.ap50
            );
        }
        let unseen = evaluation.over_categories(&expected.unseen.category_ids);
        assert!((unseen.ap - expected.unseen.average_precision.ap).abs() <= TOLERANCE);
        assert!((unseen.ap50 - expected.unseen.average_precision.ap50).abs() <= TOLERANCE);
    }

    fn ground_truth_box(image_id: u64, category_id: u64, bbox: [f64; 4]) -> GroundTruthBox {
        GroundTruthBox { image_id, category_id, bbox, area: bbox[2] * bbox[3], iscrowd: false }
    }

    fn detection(truth: &GroundTruthBox, score: f64) -> CocoDetection {
        CocoDetection { image_id: truth.image_id, category_id: truth.category_id, bbox: truth.bbox, score }
    }

    /// On each of two images, one small, one medium and one large box of each of two categories.
    fn boxes_of_every_size() -> Vec<GroundTruthBox> {
        let mut boxes = Vec::new();
        for image_id in [3, 8] {
            for category_id in [1, 2] {
                let offset = 300.0 * category_id as f64;
                boxes.push(ground_truth_box(image_id, category_id, [offset, 0.0, 20.0, 10.0]));
                boxes.push(ground_truth_box(image_id, category_id, [offset, 50.0, 40.0, 50.0]));
                boxes.push(ground_truth_box(image_id, category_id, [offset, 200.0, 150.0, 100.0]));
            }
        }
        boxes
    }

    #[test]
    fn perfect_detections_score_one() {
        let truth = boxes_of_every_size();
        let detections: Vec<CocoDetection> =
            truth.iter().enumerate().map(|(i, g)| detection(g, 0.5 + 0.01 * i as f64)).collect();
        let evaluation = coco_evaluation(&[3, 8], &[1, 2], &truth, &detections);
        for (name, value) in evaluation.summary.named_values() {
            // One box in three is found with a single detection per image.
            let expected = if name == "AR1" { 1.0 / 3.0 } else { 1.0 };
            assert!((value - expected).abs() < 1e-12, "{name}: {value}");
        }
        assert!(
            evaluation.per_category.values().all(|ap| (ap.ap - 1.0).abs() < 1e-12 && (ap.ap50 - 1.0).abs() < 1e-12)
        );
    }

    #[test]
    fn no_detections_score_zero() {
        let evaluation = coco_evaluation(&[3, 8, 9], &[1, 2], &boxes_of_every_size(), &[]);
        assert!(evaluation.summary.named_values().iter().all(|&(_, value)| value == 0.0));
        assert!(evaluation.per_category.values().all(|ap| ap.ap == 0.0 && ap.ap50 == 0.0));
    }

    #[test]
    fn categories_without_ground_truth_are_left_out() {
        let truth = [ground_truth_box(1, 1, [0.0, 0.0, 40.0, 40.0])];
        let stray = CocoDetection { image_id: 1, category_id: 2, bbox: [100.0, 100.0, 10.0, 10.0], score: 0.9 };
        let evaluation = coco_evaluation(&[1], &[1, 2], &truth, &[detection(&truth[0], 0.8), stray]);
        // A lone hit has precision 1 / (1 + np.spacing(1)), one ulp short of 1.
        let one = |value: f64| (value - 1.0).abs() < 1e-12;
        assert!(one(evaluation.summary.ap));
        assert_eq!(evaluation.per_category[&2], AveragePrecision { ap: COCO_MISSING, ap50: COCO_MISSING });
        assert_eq!(evaluation.over_categories(&[2, 5]).ap, COCO_MISSING);
        assert!(one(evaluation.over_categories(&[1, 2]).ap));
        // Only a medium box: no small or large one to find.
        let summary = evaluation.summary;
        assert_eq!([summary.ap_small, summary.ap_large, summary.ar_small, summary.ar_large], [COCO_MISSING; 4]);
        assert!(one(summary.ap_medium));
    }

    #[test]
    fn a_false_positive_ranked_first_halves_precision() {
        let truth = [ground_truth_box(1, 1, [0.0, 0.0, 40.0, 40.0])];
        let miss = CocoDetection { image_id: 1, category_id: 1, bbox: [100.0, 100.0, 40.0, 40.0], score: 0.9 };
        let evaluation = coco_evaluation(&[1], &[1], &truth, &[miss, detection(&truth[0], 0.8)]);
        assert_eq!(evaluation.summary.ap, 0.5);
        assert_eq!(evaluation.summary.ar1, 0.0);
        assert_eq!(evaluation.summary.ar10, 1.0);
    }

    #[test]
    fn detections_inside_a_crowd_are_neither_hits_nor_misses() {
        let person = ground_truth_box(1, 1, [10.0, 10.0, 30.0, 60.0]);
        let crowd = GroundTruthBox { iscrowd: true, ..ground_truth_box(1, 1, [100.0, 0.0, 400.0, 200.0]) };
        // Two detections inside the crowd region, ranked above the one true positive.
        let in_crowd = |x: f64| CocoDetection { image_id: 1, category_id: 1, bbox: [x, 20.0, 30.0, 60.0], score: 0.9 };
        let detections = [in_crowd(150.0), in_crowd(300.0), detection(&person, 0.5)];
        let evaluation = coco_evaluation(&[1], &[1], &[person, crowd], &detections);
        assert!((evaluation.summary.ap - 1.0).abs() < 1e-12);
    }

    #[test]
    fn recall_thresholds_are_numpys() {
        // 20 boxes; by score: 7 found, a miss, an eighth found. At recall 0.35 pycocotools reads
        // past the seventh hit (7/20 is below its threshold 0.35000000000000003), to precision 8/9.
        let truth: Vec<GroundTruthBox> =
            (0..20).map(|i| ground_truth_box(1, 1, [50.0 * i as f64, 0.0, 40.0, 40.0])).collect();
        let mut detections: Vec<CocoDetection> = (0..7).map(|i| detection(&truth[i], 0.99 - 0.01 * i as f64)).collect();
        detections.push(CocoDetection { image_id: 1, category_id: 1, bbox: [0.0, 500.0, 40.0, 40.0], score: 0.9 });
        detections.push(detection(&truth[7], 0.8));
        let ap = coco_evaluation(&[1], &[1], &truth, &detections).summary.ap;
        // Recall 0 to 0.34 at precision 1, 0.35 to 0.40 at 8/9, beyond at 0.
        assert!((ap - (35.0 + 6.0 * 8.0 / 9.0) / 101.0).abs() < 1e-15, "{ap}");
    }

    #[test]
    fn odd_boxes_do_not_panic() {
        let truth = [ground_truth_box(1, 1, [5.0, 5.0, 0.0, 10.0]), ground_truth_box(1, 1, [5.0, 5.0, -3.0, 10.0])];
        let detections = [
            CocoDetection { image_id: 1, category_id: 1, bbox: [5.0, 5.0, 0.0, 10.0], score: f64::NAN },
            CocoDetection { image_id: 1, category_id: 1, bbox: [5.0, 5.0, 10.0, 10.0], score: -0.0 },
            CocoDetection { image_id: 1, category_id: 1, bbox: [f64::NAN; 4], score: 0.0 },
            CocoDetection { image_id: 7, category_id: 1, bbox: [5.0, 5.0, 10.0, 10.0], score: 0.3 },
        ];
        let evaluation = coco_evaluation(&[1, 1], &[1], &truth, &detections);
        assert!(evaluation.summary.named_values().iter().all(|(_, value)| (COCO_MISSING..=1.0).contains(value)));
        assert_eq!(coco_evaluation(&[], &[], &truth, &detections).summary.ap, COCO_MISSING);
    }
}
