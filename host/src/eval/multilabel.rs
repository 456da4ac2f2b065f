//! Multi-label tagging metrics as tagging papers (ML-GCN, ASL, RAM) report them: mAP (the
//! mean over tags of average precision, as scikit-learn's `average_precision_score`
//! computes it, ties included), and precision / recall / F1 at a threshold, per tag then
//! averaged (CP, CR, CF1) and over all (image, tag) pairs (OP, OR, OF1).

/// Metric names, in the order of [`TaggingScores::values`].
pub const TAGGING_METRICS: [&str; 7] = ["mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"];

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaggingScores {
    pub map: f64,
    pub cp: f64,
    pub cr: f64,
    pub cf1: f64,
    pub op: f64,
    pub or: f64,
    pub of1: f64,
}

impl TaggingScores {
    /// Values in the order of [`TAGGING_METRICS`].
    pub fn values(&self) -> Vec<f64> {
        vec![self.map, self.cp, self.cr, self.cf1, self.op, self.or, self.of1]
    }
}

/// Scores of `samples x tags` predictions (`scores`, row-major) against multi-hot `targets`;
/// a prediction is positive when its score is at least its tag's of `thresholds` (RAM keeps
/// a threshold per tag). Tags without a positive sample are left out of mAP, where average
/// precision is undefined.
pub fn tagging_scores(scores: &[f64], targets: &[bool], thresholds: &[f64]) -> TaggingScores {
    assert_eq!(scores.len(), targets.len(), "one score per target");
    let tags = thresholds.len();
    let samples = scores.len().checked_div(tags).unwrap_or(0);
    let column = |tag: usize| (0..samples).map(move |sample| sample * tags + tag);
    let mut precisions = Vec::new();
    let mut recalls = Vec::new();
    let mut average_precisions = Vec::new();
    let (mut all_true_positive, mut all_predicted, mut all_positive) = (0usize, 0usize, 0usize);
    for (tag, &threshold) in thresholds.iter().enumerate() {
        let pairs: Vec<(f64, bool)> = column(tag).map(|i| (scores[i], targets[i])).collect();
        let positive = pairs.iter().filter(|(_, target)| *target).count();
        let predicted = pairs.iter().filter(|(score, _)| *score >= threshold).count();
        let true_positive = pairs.iter().filter(|(score, target)| *target && *score >= threshold).count();
        precisions.push(ratio(true_positive, predicted));
        recalls.push(ratio(true_positive, positive));
        all_true_positive += true_positive;
        all_predicted += predicted;
        all_positive += positive;
        if positive > 0 {
            average_precisions.push(average_precision(pairs));
        }
    }
    let mean = |values: &[f64]| if values.is_empty() { 0.0 } else { values.iter().sum::<f64>() / values.len() as f64 };
    let (cp, cr) = (mean(&precisions), mean(&recalls));
    let (op, or) = (ratio(all_true_positive, all_predicted), ratio(all_true_positive, all_positive));
    TaggingScores { map: mean(&average_precisions), cp, cr, cf1: f1(cp, cr), op, or, of1: f1(op, or) }
}

fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
}

fn f1(precision: f64, recall: f64) -> f64 {
    if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) }
}

/// Σ (R_n - R_{n-1}) P_n over the distinct score thresholds, highest first: samples with
/// equal scores enter together, as in scikit-learn.
fn average_precision(mut pairs: Vec<(f64, bool)>) -> f64 {
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let positives = pairs.iter().filter(|(_, target)| *target).count() as f64;
    let (mut true_positive, mut seen, mut recall, mut sum) = (0.0, 0.0, 0.0, 0.0);
    let mut index = 0;
    while index < pairs.len() {
        let threshold = pairs[index].0;
        while index < pairs.len() && pairs[index].0 == threshold {
            true_positive += f64::from(u8::from(pairs[index].1));
            seen += 1.0;
            index += 1;
        }
        let new_recall = true_positive / positives;
        sum += (new_recall - recall) * (true_positive / seen);
        recall = new_recall;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_ranking_scores_one_and_ties_share_a_threshold() {
        let scores = [0.9, 0.8, 0.1, 0.2];
        let targets = [true, true, false, false];
        assert_eq!(tagging_scores(&scores, &targets, &[0.5]).map, 1.0);
        // Two samples tied at the top, one positive: precision 1/2 at recall 1.
        assert_eq!(average_precision(vec![(0.7, true), (0.7, false)]), 0.5);
    }
}
