//! Image-text retrieval recall, as COCO retrieval is reported: image -> text recall@K counts
//! an image as found when any of its own captions ranks in the top K of all captions; text ->
//! image recall@K counts a caption when its image ranks in the top K of all images.

use tch::{Kind, Tensor};

/// The K of recall@K.
pub const RECALL_AT: [i64; 3] = [1, 5, 10];

/// Metric names, in the order of [`Recall::values`].
pub const RETRIEVAL_METRICS: [&str; 6] =
    ["val_i2t_r1", "val_i2t_r5", "val_i2t_r10", "val_t2i_r1", "val_t2i_r5", "val_t2i_r10"];

/// Rows of similarities computed at once, bounding memory for large evaluation sets.
const CHUNK: i64 = 1024;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recall {
    pub image_to_text: [f64; 3],
    pub text_to_image: [f64; 3],
}

impl Recall {
    /// Values in the order of [`RETRIEVAL_METRICS`].
    pub fn values(&self) -> Vec<f64> {
        self.image_to_text.iter().chain(&self.text_to_image).copied().collect()
    }
}

/// Recall@{1,5,10} between `images` (`(n, d)`) and `texts` (`(m, d)`) embeddings, where text
/// `j` describes image `text_image[j]`. Embeddings are compared by dot product (normalise
/// them first for cosine similarity).
pub fn recall(images: &Tensor, texts: &Tensor, text_image: &[i64]) -> Recall {
    tch::no_grad(|| {
        let device = images.device();
        let text_image = Tensor::from_slice(text_image).to_device(device);
        let image_count = images.size()[0];
        let image_ids = Tensor::arange(image_count, (Kind::Int64, device));
        // Top-K images of each caption are image ids already; top-K captions of each image
        // map to image ids through `text_image`.
        let image_to_text = hits(images, texts, &image_ids, |best| text_image.index_select(0, &best.flatten(0, -1)));
        let text_to_image = hits(texts, images, &text_image, |best| best.flatten(0, -1));
        Recall { image_to_text, text_to_image }
    })
}

/// For each query row, whether its own image id is among the ids of its top 1, 5, 10
/// candidates; the fraction of hits for each K.
fn hits(queries: &Tensor, candidates: &Tensor, query_ids: &Tensor, to_ids: impl Fn(&Tensor) -> Tensor) -> [f64; 3] {
    let count = queries.size()[0];
    let deepest = RECALL_AT[2].min(candidates.size()[0]);
    let mut found = [0i64; 3];
    for start in (0..count).step_by(CHUNK as usize) {
        let rows = CHUNK.min(count - start);
        let scores = queries.narrow(0, start, rows).matmul(&candidates.tr());
        let (_, best) = scores.topk(deepest, -1, true, true);
        let ids = to_ids(&best).view([rows, deepest]);
        let matches = ids.eq_tensor(&query_ids.narrow(0, start, rows).unsqueeze(1));
        for (slot, &k) in RECALL_AT.iter().enumerate() {
            let within = matches.narrow(1, 0, k.min(deepest)).any_dim(1, false);
            found[slot] += within.sum(Kind::Int64).int64_value(&[]);
        }
    }
    found.map(|f| f as f64 / count.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recall by brute force: rank every candidate for every query.
    fn brute_force(images: &[Vec<f32>], texts: &[Vec<f32>], text_image: &[i64], k: usize) -> (f64, f64) {
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        let top = |query: &[f32], candidates: &[Vec<f32>]| {
            let mut order: Vec<usize> = (0..candidates.len()).collect();
            order.sort_by(|&a, &b| dot(query, &candidates[b]).total_cmp(&dot(query, &candidates[a])));
            order.truncate(k);
            order
        };
        let i2t = (0..images.len())
            .filter(|&i| top(&images[i], texts).iter().any(|&t| text_image[t] == i as i64))
            .count() as f64
            / images.len() as f64;
        let t2i = (0..texts.len()).filter(|&t| top(&texts[t], images).contains(&(text_image[t] as usize))).count()
            as f64
            / texts.len() as f64;
        (i2t, t2i)
    }

    #[test]
    fn matches_ranking_every_candidate() {
        tch::manual_seed(3);
        let (n, per_image, d) = (30, 2, 8);
        let images = Tensor::randn([n, d], (Kind::Float, tch::Device::Cpu));
        // Captions are noisy copies of their image, so recall is neither 0 nor 1.
        let text_image: Vec<i64> = (0..n * per_image).map(|j| j / per_image).collect();
        let texts = images.index_select(0, &Tensor::from_slice(&text_image))
            + Tensor::randn([n * per_image, d], (Kind::Float, tch::Device::Cpu)) * 1.5;
        let to_rows = |t: &Tensor| Vec::<Vec<f32>>::try_from(t).unwrap();
        let result = recall(&images, &texts, &text_image);
        for (slot, &k) in RECALL_AT.iter().enumerate() {
            let (i2t, t2i) = brute_force(&to_rows(&images), &to_rows(&texts), &text_image, k as usize);
            assert!((result.image_to_text[slot] - i2t).abs() < 1e-9, "i2t@{k}: {result:?} vs {i2t}");
            assert!((result.text_to_image[slot] - t2i).abs() < 1e-9, "t2i@{k}: {result:?} vs {t2i}");
        }
        assert!(result.image_to_text[0] > 0.0 && result.text_to_image[0] < 1.0, "{result:?}");
    }

    #[test]
    fn identical_embeddings_give_full_recall() {
        let images = Tensor::eye(4, (Kind::Float, tch::Device::Cpu));
        let result = recall(&images, &images, &[0, 1, 2, 3]);
        assert_eq!(result.values(), [1.0; 6]);
    }
}
