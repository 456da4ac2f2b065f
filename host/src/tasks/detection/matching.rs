//! Which prediction answers which ground-truth box, and what each answer costs: the
//! Hungarian matching and the loss terms of DETR-style detection training, which OWL-ViT's
//! fine-tuning follows. Per image, the matching cost of a patch
//! for a box is a weighted sum of a focal-modulated class cost, the L1 distance of the boxes
//! (centre and size) and their negative generalised IoU; the exact minimum-cost assignment
//! gives each ground-truth box its own patch. Every unmatched patch is a negative for every
//! query.

use super::assignment::{AssignmentError, min_cost_assignment};
use crate::models::owlvit::OwlDetector;
use tch::{Kind, Tensor};

/// Weights of the three parts of the matching cost.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MatchCosts {
    pub class: f64,
    pub l1: f64,
    pub giou: f64,
}

/// The sigmoid focal loss's balance of positives (`alpha`) and focusing power (`gamma`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Focal {
    pub alpha: f64,
    pub gamma: f64,
}

/// `(n, 4)` boxes from centre and size to corners `x0, y0, x1, y1`.
pub fn corners(cxcywh: &Tensor) -> Tensor {
    let (centre, size) = (cxcywh.narrow(-1, 0, 2), cxcywh.narrow(-1, 2, 2));
    Tensor::cat(&[&centre - &size / 2.0, &centre + &size / 2.0], -1)
}

/// `(n, m)` generalised IoU of corner boxes `a` `(n, 4)` and `b` `(m, 4)` (Rezatofighi et
/// al. 2019): IoU minus the share of the enclosing box that neither covers.
pub fn generalized_iou(a: &Tensor, b: &Tensor) -> Tensor {
    let area = |boxes: &Tensor| {
        let size = boxes.narrow(-1, 2, 2) - boxes.narrow(-1, 0, 2);
        size.select(-1, 0) * size.select(-1, 1)
    };
    let (a2, b2) = (a.unsqueeze(1), b.unsqueeze(0));
    let overlap = (a2.narrow(-1, 2, 2).minimum(&b2.narrow(-1, 2, 2))
        - a2.narrow(-1, 0, 2).maximum(&b2.narrow(-1, 0, 2)))
    .clamp_min(0.0);
    let intersection = overlap.select(-1, 0) * overlap.select(-1, 1);
    let union = area(a).unsqueeze(1) + area(b).unsqueeze(0) - &intersection;
    let enclosing =
        a2.narrow(-1, 2, 2).maximum(&b2.narrow(-1, 2, 2)) - a2.narrow(-1, 0, 2).minimum(&b2.narrow(-1, 0, 2));
    let enclosing = enclosing.select(-1, 0) * enclosing.select(-1, 1);
    &intersection / &union - (&enclosing - &union) / enclosing
}

/// The patches matched to an image's ground-truth boxes: `(patch, box)` pairs, one per box.
/// `logits` `(patches, queries)`, `boxes` `(patches, 4)` and `target_boxes` `(g, 4)` in
/// centre-size form, `labels` the query of each target box.
pub fn match_image(
    logits: &Tensor,
    boxes: &Tensor,
    target_boxes: &Tensor,
    labels: &Tensor,
    costs: MatchCosts,
    focal: Focal,
) -> Result<Vec<(i64, i64)>, AssignmentError> {
    let targets = target_boxes.size()[0];
    if targets == 0 {
        return Ok(Vec::new());
    }
    let cost = tch::no_grad(|| {
        let p = logits.sigmoid().index_select(1, labels).to_kind(Kind::Double);
        // Deformable DETR's class cost: the focal loss of calling the patch this class, minus
        // that of calling it background.
        let positive = (-(&p + 1e-8).log()) * (-&p + 1.0).pow_tensor_scalar(focal.gamma) * focal.alpha;
        let negative = (-(-&p + (1.0 + 1e-8)).log()) * p.pow_tensor_scalar(focal.gamma) * (1.0 - focal.alpha);
        let class = positive - negative;
        let (boxes, target_boxes) = (boxes.to_kind(Kind::Double), target_boxes.to_kind(Kind::Double));
        let l1 = (boxes.unsqueeze(1) - target_boxes.unsqueeze(0)).abs().sum_dim_intlist(
            [-1i64].as_slice(),
            false,
            Kind::Double,
        );
        let giou = generalized_iou(&corners(&boxes), &corners(&target_boxes));
        (class * costs.class + l1 * costs.l1 - giou * costs.giou).to_device(tch::Device::Cpu).contiguous()
    });
    let patches = cost.size()[0] as usize;
    let values = Vec::<f64>::try_from(cost.flatten(0, -1)).expect("costs are f64");
    let pairs = min_cost_assignment(&values, patches, targets as usize)?;
    Ok(pairs.into_iter().map(|(patch, target)| (patch as i64, target as i64)).collect())
}

/// The sigmoid focal loss (Lin et al. 2017, as torchvision's `sigmoid_focal_loss`) of
/// `logits` against 0/1 `targets` of the same shape, summed.
pub fn sigmoid_focal_loss(logits: &Tensor, targets: &Tensor, focal: Focal) -> Tensor {
    let p = logits.sigmoid();
    let cross_entropy = logits.binary_cross_entropy_with_logits::<Tensor>(targets, None, None, tch::Reduction::None);
    let (p_false, negatives) = (-&p + 1.0, -targets + 1.0);
    let p_true = &p * targets + p_false * &negatives;
    let weight = targets * focal.alpha + negatives * (1.0 - focal.alpha);
    (cross_entropy * (-p_true + 1.0).pow_tensor_scalar(focal.gamma) * weight).sum(Kind::Float)
}

/// A batch's ground truth: per image, `(boxes, 4)` centre-size boxes as fractions of the
/// model's square, and the query index of each.
#[derive(Debug, Clone, Copy)]
pub struct BatchTargets<'a> {
    pub boxes: &'a [Tensor],
    pub labels: &'a [Tensor],
}

impl BatchTargets<'_> {
    /// The number of boxes, over every image.
    pub fn box_count(&self) -> i64 {
        self.labels.iter().map(|labels| labels.size()[0]).sum()
    }
}

/// The loss terms of one batch, with their graphs: `class`, `box_l1`, `box_giou`, and for
/// OWLv2 `objectness`, each divided by `box_count`: the number of boxes (at least 1) of the
/// whole batch these images are part of, so that the terms of its pieces add up to the
/// batch's. `pixels` are normalised model input; `queries` `(queries, dim)` the query
/// embeddings with their graph, so that the text tower trains too.
pub fn detection_losses(
    model: &OwlDetector,
    pixels: &Tensor,
    queries: &Tensor,
    targets: &BatchTargets,
    costs: MatchCosts,
    focal: Focal,
    box_count: f64,
) -> Result<Vec<Tensor>, AssignmentError> {
    let device = pixels.device();
    let features = model.image_features(pixels);
    let logits = model.class_logits(&features, queries, None);
    let predicted = model.pred_boxes(&features);
    let objectness = model.objectness_logits(&features);
    let finite = logits.isfinite().all().logical_and(&predicted.isfinite().all());
    if finite.int64_value(&[]) == 0 {
        // Nothing to match: NaN terms, so the trainer skips the step as non-finite and its
        // divergence guard counts it, as for any other loss.
        let terms = if objectness.is_some() { 4 } else { 3 };
        return Ok((0..terms).map(|_| logits.sum(Kind::Float) * f64::NAN).collect());
    }
    let class_targets = Tensor::zeros_like(&logits);
    let one = Tensor::from(1f32).to_device(device);
    let mut matched_patches = Vec::new();
    let (mut matched_predictions, mut matched_targets) = (Vec::new(), Vec::new());
    for (image, (boxes, labels)) in targets.boxes.iter().zip(targets.labels).enumerate() {
        let image = image as i64;
        let pairs = match_image(&logits.get(image), &predicted.get(image), boxes, labels, costs, focal)?;
        if pairs.is_empty() {
            continue;
        }
        let patches = Tensor::from_slice(&pairs.iter().map(|p| p.0).collect::<Vec<_>>()).to_device(device);
        let order = Tensor::from_slice(&pairs.iter().map(|p| p.1).collect::<Vec<_>>()).to_device(device);
        let matched_labels = labels.index_select(0, &order);
        // `get` is a view: the ones land in the batch's targets.
        let _ = class_targets.get(image).index_put_(&[Some(&patches), Some(&matched_labels)], &one, false);
        matched_predictions.push(predicted.get(image).index_select(0, &patches));
        matched_targets.push(boxes.index_select(0, &order));
        matched_patches.push((image, patches));
    }
    let class = sigmoid_focal_loss(&logits, &class_targets, focal) / box_count;
    let (box_l1, box_giou) = if matched_predictions.is_empty() {
        // No boxes in the batch: zero, with a graph, so the weighted sum still backpropagates.
        let zero = predicted.sum(Kind::Float) * 0.0;
        (zero.shallow_clone(), zero)
    } else {
        let predictions = Tensor::cat(&matched_predictions, 0);
        let boxes = Tensor::cat(&matched_targets, 0);
        let l1 = (&predictions - &boxes).abs().sum(Kind::Float) / box_count;
        let giou = generalized_iou(&corners(&predictions), &corners(&boxes)).diagonal(0, 0, 1);
        (l1, (-giou + 1.0).sum(Kind::Float) / box_count)
    };
    let mut terms = vec![class, box_l1, box_giou];
    if let Some(objectness) = objectness {
        let objects = Tensor::zeros_like(&objectness);
        for (image, patches) in &matched_patches {
            let _ = objects.get(*image).index_fill_(0, patches, 1.0);
        }
        terms.push(sigmoid_focal_loss(&objectness, &objects, focal) / box_count);
    }
    Ok(terms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn tensor(values: &[f32], rows: i64) -> Tensor {
        Tensor::from_slice(values).view([rows, -1])
    }

    #[test]
    fn generalized_iou_of_known_pairs() {
        let a = tensor(&[0.0, 0.0, 2.0, 2.0], 1);
        let b = tensor(&[1.0, 1.0, 3.0, 3.0, 0.0, 0.0, 2.0, 2.0, 3.0, 0.0, 4.0, 1.0], 3);
        let giou = Vec::<f32>::try_from(generalized_iou(&a, &b).flatten(0, -1)).unwrap();
        // Overlap 1 of union 7 in a 3x3 enclosure; identical; disjoint, 3 of the 8 units of
        // the enclosure uncovered.
        let expected = [1.0 / 7.0 - 2.0 / 9.0, 1.0, 0.0 - (8.0 - 5.0) / 8.0];
        for (got, want) in giou.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{giou:?}");
        }
    }

    #[test]
    fn each_box_gets_the_patch_that_fits_it_best_overall() {
        // Patch 1 fits box 0 best and patch 2 box 1; patch 0 fits nothing.
        let boxes = tensor(&[0.9, 0.9, 0.1, 0.1, 0.3, 0.3, 0.2, 0.2, 0.7, 0.6, 0.2, 0.3], 3);
        let targets = tensor(&[0.3, 0.3, 0.2, 0.2, 0.7, 0.6, 0.2, 0.3], 2);
        let logits = Tensor::zeros([3, 2], (Kind::Float, Device::Cpu));
        let labels = Tensor::from_slice(&[0i64, 1]);
        let costs = MatchCosts { class: 1.0, l1: 5.0, giou: 2.0 };
        let focal = Focal { alpha: 0.25, gamma: 2.0 };
        assert_eq!(match_image(&logits, &boxes, &targets, &labels, costs, focal).unwrap(), [(1, 0), (2, 1)]);
        let none = Tensor::zeros([0, 4], (Kind::Float, Device::Cpu));
        let no_labels = Tensor::zeros([0], (Kind::Int64, Device::Cpu));
        assert!(match_image(&logits, &boxes, &none, &no_labels, costs, focal).unwrap().is_empty());
    }

    #[test]
    fn focal_loss_is_cross_entropy_when_unfocused_and_balanced() {
        let logits = tensor(&[0.3, -1.2, 2.0, 0.0], 2);
        let targets = tensor(&[1.0, 0.0, 0.0, 1.0], 2);
        let plain = logits.binary_cross_entropy_with_logits::<Tensor>(&targets, None, None, tch::Reduction::Sum);
        let unfocused = sigmoid_focal_loss(&logits, &targets, Focal { alpha: 0.5, gamma: 0.0 }) * 2.0;
        assert!((plain - &unfocused).abs().double_value(&[]) < 1e-6);
        let focused = sigmoid_focal_loss(&logits, &targets, Focal { alpha: 0.5, gamma: 2.0 }) * 2.0;
        assert!(focused.double_value(&[]) < unfocused.double_value(&[]), "every example weighs less, easy ones most");
    }
}
