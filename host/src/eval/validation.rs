//! Mid-run evaluation on the held-out validation images: the contrastive loss and zero-shot
//! accuracy, under the metric names policies see.

use super::zero_shot::zero_shot_accuracy;
use crate::data::fashion_mnist::LabelledImages;
use crate::data::prompts::{CaptionTable, TEMPLATES};
use crate::data::sampler::keyed;
use crate::data::{PixelNormalizer, grey_to_unit};
use crate::models::clip::Clip;
use tch::{Device, Kind, Tensor};

/// Metric names, in the order of [`validation_metrics`]'s values.
pub const VALIDATION_METRICS: [&str; 3] = ["val_loss", "val_zero_shot_top1", "val_zero_shot_top5"];

/// Separates the validation caption draw from the training one.
const VALIDATION_CAPTION_DRAW: u64 = 0x7A1_CA97;

/// Values of [`VALIDATION_METRICS`] for `model` on `data`, in batches of `batch_size`.
pub fn validation_metrics(
    model: &Clip,
    data: &LabelledImages,
    captions: &CaptionTable,
    normalizer: &PixelNormalizer,
    batch_size: usize,
    seed: u64,
    device: Device,
) -> Vec<f64> {
    let loss = tch::no_grad(|| {
        let mut weighted_sum = 0.0;
        for start in (0..data.len()).step_by(batch_size) {
            let count = batch_size.min(data.len() - start);
            let images = data.images.narrow(0, start as i64, count as i64);
            let labels = data.labels.narrow(0, start as i64, count as i64);
            let templates: Vec<i64> = (start..start + count)
                .map(|index| (keyed(seed, &[VALIDATION_CAPTION_DRAW, index as u64]) % TEMPLATES.len() as u64) as i64)
                .collect();
            let input_ids = captions.ids.index(&[Some(labels), Some(Tensor::from_slice(&templates))]).to_device(device);
            let batch_loss = model.contrastive_loss(&normalizer.normalize(&grey_to_unit(&images, device)), &input_ids);
            weighted_sum += batch_loss.to_kind(Kind::Double).double_value(&[]) * count as f64;
        }
        weighted_sum / data.len().max(1) as f64
    });
    let accuracy = zero_shot_accuracy(model, data, captions, normalizer, batch_size, device);
    vec![loss, accuracy.top1, accuracy.top5]
}
