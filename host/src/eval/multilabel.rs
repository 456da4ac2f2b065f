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

/// One tag's figures at its threshold.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct TagScores {
    /// Average precision; `None` without a positive sample, where it is undefined.
    pub ap: Option<f64>,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Samples that have the tag.
    pub support: usize,
    /// The threshold at which the tag's F1 is highest on these samples (the lowest such,
    /// 1 when no threshold finds a positive).
    pub f1_best_threshold: f64,
    #[serde(skip)]
    true_positive: usize,
    #[serde(skip)]
    predicted: usize,
}

/// Each tag's figures for `samples x tags` predictions (`scores`, row-major) against
/// multi-hot `targets`; a prediction is positive when its score is at least its tag's of
/// `thresholds` (RAM keeps a threshold per tag).
pub fn per_tag_scores(scores: &[f64], targets: &[bool], thresholds: &[f64]) -> Vec<TagScores> {
    assert_eq!(scores.len(), targets.len(), "one score per target");
    let tags = thresholds.len();
    let samples = scores.len().checked_div(tags).unwrap_or(0);
    let column = |tag: usize| (0..samples).map(move |sample| sample * tags + tag);
    thresholds
        .iter()
        .enumerate()
        .map(|(tag, &threshold)| {
            let pairs: Vec<(f64, bool)> = column(tag).map(|i| (scores[i], targets[i])).collect();
            let support = pairs.iter().filter(|(_, target)| *target).count();
            let predicted = pairs.iter().filter(|(score, _)| *score >= threshold).count();
            let true_positive = pairs.iter().filter(|(score, target)| *target && *score >= threshold).count();
            let (precision, recall) = (ratio(true_positive, predicted), ratio(true_positive, support));
            TagScores {
                ap: (support > 0).then(|| average_precision(pairs.clone())),
                precision,
                recall,
                f1: f1(precision, recall),
                support,
                f1_best_threshold: f1_best_threshold(pairs),
                true_positive,
                predicted,
            }
        })
        .collect()
}

/// Scores of `samples x tags` predictions against multi-hot `targets` at each tag's of
/// `thresholds`. Tags without a positive sample are left out of mAP, where average
/// precision is undefined.
pub fn tagging_scores(scores: &[f64], targets: &[bool], thresholds: &[f64]) -> TaggingScores {
    TaggingScores::of_tags(&per_tag_scores(scores, targets, thresholds))
}

impl TaggingScores {
    /// The scores of the tags whose figures `per_tag` holds, each at its own threshold: the
    /// per-tag means (mAP over the tags with a positive, CP, CR) and the counts over all of
    /// them (OP, OR).
    pub fn of_tags(per_tag: &[TagScores]) -> TaggingScores {
        let mean =
            |values: Vec<f64>| if values.is_empty() { 0.0 } else { values.iter().sum::<f64>() / values.len() as f64 };
        let (cp, cr) =
            (mean(per_tag.iter().map(|t| t.precision).collect()), mean(per_tag.iter().map(|t| t.recall).collect()));
        let total = |count: fn(&TagScores) -> usize| per_tag.iter().map(count).sum::<usize>();
        let all_true_positive = total(|t| t.true_positive);
        let (op, or) =
            (ratio(all_true_positive, total(|t| t.predicted)), ratio(all_true_positive, total(|t| t.support)));
        let map = mean(per_tag.iter().filter_map(|t| t.ap).collect());
        TaggingScores { map, cp, cr, cf1: f1(cp, cr), op, or, of1: f1(op, or) }
    }
}

/// mAP as recognize-anything's `get_mAP` computes it: the mean over every tag, a tag without
/// a positive counting 0 (its average precision divides by the positives plus 1e-8).
/// Its average precision (precision at each positive, in score order) is this one wherever
/// scores differ; among equal scores it follows the order numpy's unstable `argsort` leaves
/// them in, which no rule reproduces, so they enter together here, as in scikit-learn.
pub fn recognize_anything_map(per_tag: &[TagScores]) -> f64 {
    if per_tag.is_empty() {
        return 0.0;
    }
    per_tag.iter().map(|tag| tag.ap.unwrap_or(0.0)).sum::<f64>() / per_tag.len() as f64
}

/// The threshold at which predicting `pairs`' scores at or above it as positive has the
/// highest F1 (the lowest such score: ties keep more positives); 1 when none is positive.
fn f1_best_threshold(mut pairs: Vec<(f64, bool)>) -> f64 {
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let positives = pairs.iter().filter(|(_, target)| *target).count();
    let (mut best, mut best_f1, mut true_positive) = (1.0, 0.0, 0);
    let mut index = 0;
    while index < pairs.len() {
        let threshold = pairs[index].0;
        while index < pairs.len() && pairs[index].0 == threshold {
            true_positive += usize::from(pairs[index].1);
            index += 1;
        }
        let score = f1(ratio(true_positive, index), ratio(true_positive, positives));
        if score > best_f1 {
            (best, best_f1) = (threshold, score);
        }
    }
    best
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

    #[test]
    fn the_f1_best_threshold_is_the_lowest_score_of_the_best_cut() {
        // Cutting at 0.8 keeps two positives of three with no negative: F1 0.8; at 0.3
        // all three positives and two negatives: F1 0.75.
        let pairs = vec![(0.9, true), (0.8, true), (0.6, false), (0.5, false), (0.3, true), (0.1, false)];
        assert_eq!(f1_best_threshold(pairs), 0.8);
        assert_eq!(f1_best_threshold(vec![(0.4, false)]), 1.0);
        let table = per_tag_scores(&[0.9, 0.2, 0.4, 0.7], &[true, false, false, true], &[0.5, 0.5]);
        assert_eq!((table[0].support, table[0].precision, table[0].recall), (1, 1.0, 1.0));
        assert_eq!((table[1].ap, table[1].f1, table[1].f1_best_threshold), (Some(1.0), 1.0, 0.7));
    }
}
