//! Caption metrics as the COCO caption evaluation computes them (`pycocoevalcap`, the
//! scorers behind the tables of BLIP, Tag2Text and most captioning papers), named as it
//! names them: `Bleu_4` and `CIDEr` (which is CIDEr-D).
//!
//! - **BLEU** is of the whole set: each image's clipped n-gram matches and candidate n-grams
//!   are summed over the images, the precisions of orders 1 to 4 multiplied and their 4th
//!   root taken, then the brevity penalty of the summed candidate length against the summed
//!   reference lengths, each image's the reference length closest to its candidate's
//!   (`option="closest"`, the shorter of two as close). pycocoevalcap's guards (1e-15 added
//!   to matches, 1e-9 to counts) keep an order without n-grams from dividing by zero.
//! - **CIDEr-D**: each image's candidate and references as tf-idf vectors of their 1- to
//!   4-grams, the document frequencies counted over the references of the evaluated images
//!   (an n-gram in none weighs `ln(images)`); per order, the sum over the candidate's n-grams
//!   of `min(candidate, reference) x reference` over the product of the norms (CIDEr-D's
//!   clipping), times `exp(-delta^2 / (2 x 6^2))` with `delta` the difference of the two
//!   sentences' bigram counts (pycocoevalcap counts lengths so); averaged over the orders
//!   and the references, times 10, and the mean over the images.
//!
//! Both take captions already split into words ([`caption_words`]). pycocoevalcap splits
//! them with Stanford CoreNLP's Java PTB tokenizer, lower-cased, and drops its punctuation
//! tokens; [`caption_words`] does the same for plain text (lower case, punctuation dropped,
//! clitics such as `'s` and `n't` split off as that tokenizer splits them) without Java.
//! Written here: no crate implements either metric as pycocoevalcap does.

use std::collections::HashMap;

/// The metric names of the captions of an evaluation.
pub const CAPTION_METRICS: [&str; 2] = ["Bleu_4", "CIDEr"];

/// The highest n-gram order of both metrics.
const ORDERS: usize = 4;
/// CIDEr-D's sigma of the length penalty.
const CIDER_SIGMA: f64 = 6.0;

/// `text` lower-cased and split into words as the COCO caption evaluation's tokenizer
/// splits them, its punctuation dropped.
pub fn caption_words(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut words = Vec::new();
    // Sentence punctuation separates words; hyphens and slashes inside a word stay.
    for piece in lower.split(|c: char| c.is_whitespace() || ".,!?;:\"()[]{}`".contains(c)) {
        let piece = piece.trim_matches(|c: char| c == '-' || c == '\'' || c == '/');
        if piece.is_empty() {
            continue;
        }
        if let Some(stem) = piece.strip_suffix("n't").filter(|stem| !stem.is_empty()) {
            words.push(stem.to_string());
            words.push("n't".to_string());
        } else if let Some(at) = piece.find('\'').filter(|&at| at > 0) {
            words.push(piece[..at].to_string());
            words.push(piece[at..].to_string());
        } else {
            words.push(piece.to_string());
        }
    }
    words
}

type NGram<'a> = &'a [String];

/// The counts of each n-gram of orders 1 to 4 of `words`.
fn ngram_counts(words: &[String]) -> HashMap<NGram<'_>, usize> {
    let mut counts = HashMap::new();
    for order in 1..=ORDERS {
        for gram in words.windows(order) {
            *counts.entry(gram).or_insert(0) += 1;
        }
    }
    counts
}

/// BLEU-1 to BLEU-4 of `candidates` (one caption's words per image) against `references`
/// (each image's captions' words), over the whole set.
pub fn bleu(candidates: &[Vec<String>], references: &[Vec<Vec<String>>]) -> [f64; ORDERS] {
    const TINY: f64 = 1e-15;
    const SMALL: f64 = 1e-9;
    let (mut matches, mut guesses) = ([0usize; ORDERS], [0usize; ORDERS]);
    let (mut candidate_length, mut reference_length) = (0usize, 0usize);
    for (candidate, references) in candidates.iter().zip(references) {
        let mut most: HashMap<NGram, usize> = HashMap::new();
        for reference in references {
            for (gram, count) in ngram_counts(reference) {
                let entry = most.entry(gram).or_insert(0);
                *entry = (*entry).max(count);
            }
        }
        for (gram, count) in ngram_counts(candidate) {
            matches[gram.len() - 1] += count.min(most.get(gram).copied().unwrap_or(0));
        }
        for (order, guess) in guesses.iter_mut().enumerate() {
            *guess += (candidate.len() + 1).saturating_sub(order + 1);
        }
        candidate_length += candidate.len();
        let closest = references
            .iter()
            .map(|reference| (reference.len().abs_diff(candidate.len()), reference.len()))
            .min()
            .map_or(0, |(_, length)| length);
        reference_length += closest;
    }
    let ratio = (candidate_length as f64 + TINY) / (reference_length as f64 + SMALL);
    let penalty = if ratio < 1.0 { (1.0 - 1.0 / ratio).exp() } else { 1.0 };
    let mut product = 1.0;
    let mut scores = [0.0; ORDERS];
    for order in 0..ORDERS {
        product *= (matches[order] as f64 + TINY) / (guesses[order] as f64 + SMALL);
        scores[order] = product.powf(1.0 / (order + 1) as f64) * penalty;
    }
    scores
}

/// A sentence's tf-idf vector per order, with its norms and its bigram count.
struct TfIdf<'a> {
    weights: [HashMap<NGram<'a>, f64>; ORDERS],
    norms: [f64; ORDERS],
    length: f64,
}

impl<'a> TfIdf<'a> {
    fn of(words: &'a [String], frequency: &HashMap<NGram<'a>, f64>, log_images: f64) -> Self {
        let mut weights: [HashMap<NGram, f64>; ORDERS] = Default::default();
        let mut norms = [0.0; ORDERS];
        let mut length = 0.0;
        for (gram, count) in ngram_counts(words) {
            let order = gram.len() - 1;
            let idf = log_images - frequency.get(gram).copied().unwrap_or(0.0).max(1.0).ln();
            let weight = count as f64 * idf;
            weights[order].insert(gram, weight);
            norms[order] += weight * weight;
            if order == 1 {
                length += count as f64;
            }
        }
        TfIdf { weights, norms: norms.map(f64::sqrt), length }
    }

    /// CIDEr-D's similarity of this candidate to `reference`, per order.
    fn similarity(&self, reference: &TfIdf) -> [f64; ORDERS] {
        let delta = self.length - reference.length;
        let penalty = (-(delta * delta) / (2.0 * CIDER_SIGMA * CIDER_SIGMA)).exp();
        std::array::from_fn(|order| {
            let mut value: f64 = self.weights[order]
                .iter()
                .map(|(gram, &weight)| {
                    let theirs = reference.weights[order].get(gram).copied().unwrap_or(0.0);
                    weight.min(theirs) * theirs
                })
                .sum();
            if self.norms[order] != 0.0 && reference.norms[order] != 0.0 {
                value /= self.norms[order] * reference.norms[order];
            }
            value * penalty
        })
    }
}

/// CIDEr-D of `candidates` against `references`: the mean over the images, and each image's.
pub fn cider_d(candidates: &[Vec<String>], references: &[Vec<Vec<String>>]) -> (f64, Vec<f64>) {
    let mut frequency: HashMap<NGram, f64> = HashMap::new();
    for references in references {
        let mut grams: Vec<NGram> =
            references.iter().flat_map(|reference| ngram_counts(reference).into_keys()).collect();
        grams.sort();
        grams.dedup();
        for gram in grams {
            *frequency.entry(gram).or_insert(0.0) += 1.0;
        }
    }
    let log_images = (references.len() as f64).ln();
    let scores: Vec<f64> = candidates
        .iter()
        .zip(references)
        .map(|(candidate, references)| {
            let candidate = TfIdf::of(candidate, &frequency, log_images);
            let mut sum = [0.0; ORDERS];
            for reference in references {
                let similarity = candidate.similarity(&TfIdf::of(reference, &frequency, log_images));
                for (total, value) in sum.iter_mut().zip(similarity) {
                    *total += value;
                }
            }
            sum.iter().sum::<f64>() / ORDERS as f64 / references.len().max(1) as f64 * 10.0
        })
        .collect();
    let mean = if scores.is_empty() { 0.0 } else { scores.iter().sum::<f64>() / scores.len() as f64 };
    (mean, scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        caption_words(text)
    }

    #[test]
    fn captions_split_into_the_words_the_coco_evaluation_scores() {
        assert_eq!(words("A Dog's T-shirt, on the grass."), ["a", "dog", "'s", "t-shirt", "on", "the", "grass"]);
        assert_eq!(words("It isn't  (really) there!"), ["it", "is", "n't", "really", "there"]);
    }

    #[test]
    fn a_caption_equal_to_its_reference_scores_bleu_one_and_others_less() {
        let reference = vec![vec![words("a dress and a coat on a white background")]];
        let same = bleu(&[words("a dress and a coat on a white background")], &reference);
        assert!(same.iter().all(|&score| (score - 1.0).abs() < 1e-9), "{same:?}");
        // Every n-gram found but 5 words of 9: the brevity penalty exp(1 - 9/5) alone.
        let short = bleu(&[words("a dress and a coat")], &reference);
        assert!(short.iter().all(|&score| (score - (-0.8f64).exp()).abs() < 1e-9), "{short:?}");
        // No 4-gram in common: almost 0.
        let scrambled = bleu(&[words("coat a dress white a on background and a")], &reference);
        assert!(scrambled[3] < 1e-3, "{scrambled:?}");
    }
}
