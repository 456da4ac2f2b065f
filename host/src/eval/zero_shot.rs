//! Zero-shot classification, as CLIP evaluates it: each class is represented by the mean of
//! the normalised text embeddings of its prompts, and an image is assigned the class whose
//! embedding is closest.

use crate::data::fashion_mnist::LabelledImages;
use crate::data::prompts::CaptionTable;
use crate::data::{PixelNormalizer, grey_to_unit};
use crate::models::clip::Clip;
use serde::Serialize;
use tch::{Device, Kind};

#[derive(Debug, Clone, Copy, Serialize)]
pub struct ZeroShotAccuracy {
    pub top1: f64,
    pub top5: f64,
    pub images: usize,
}

pub fn zero_shot_accuracy(
    model: &Clip,
    data: &LabelledImages,
    captions: &CaptionTable,
    normalizer: &PixelNormalizer,
    batch_size: usize,
    device: Device,
) -> ZeroShotAccuracy {
    tch::no_grad(|| {
        let [classes, templates, context] = captions.ids.size()[..] else {
            unreachable!("caption tables are (classes, templates, context)")
        };
        let prompts = captions.ids.view([classes * templates, context]).to_device(device);
        let class_embeddings =
            model.text_embeddings(&prompts).view([classes, templates, -1]).mean_dim(1, false, Kind::Float);
        let class_embeddings = &class_embeddings / class_embeddings.norm_scalaropt_dim(2.0, [-1], true);
        let k = classes.min(5);
        let (mut top1, mut top5) = (0i64, 0i64);
        for start in (0..data.len()).step_by(batch_size) {
            let count = batch_size.min(data.len() - start) as i64;
            let images = data.images.narrow(0, start as i64, count);
            let labels = data.labels.narrow(0, start as i64, count).to_device(device).unsqueeze(1);
            let logits = model
                .image_embeddings(&normalizer.normalize(&grey_to_unit(&images, device)))
                .matmul(&class_embeddings.tr());
            let (_, best) = logits.topk(k, -1, true, true);
            let hits = best.eq_tensor(&labels);
            top1 += hits.narrow(1, 0, 1).sum(Kind::Int64).int64_value(&[]);
            top5 += hits.sum(Kind::Int64).int64_value(&[]);
        }
        let total = data.len().max(1) as f64;
        ZeroShotAccuracy { top1: top1 as f64 / total, top5: top5 as f64 / total, images: data.len() }
    })
}
