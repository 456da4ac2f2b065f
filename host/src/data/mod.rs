//! Training and evaluation data: reading datasets from disk, turning images into model
//! input, captions into token ids, and the seeded order in which samples are seen.

pub mod augment;
pub mod clip_tokenizer;
pub mod fashion_mnist;
pub mod prompts;
pub mod sampler;

use tch::{Device, Kind, Tensor};

/// Per-channel mean and standard deviation of OpenAI CLIP's image preprocessing, as
/// published (more digits than `f32` keeps).
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];

/// `(batch, height, width)` grey `u8` images as `(batch, 1, height, width)` floats in [0, 1]
/// on `device`.
pub fn grey_to_unit(images: &Tensor, device: Device) -> Tensor {
    images.to_device(device).to_kind(Kind::Float).unsqueeze(1) / 255.0
}

/// Turns `(batch, height, width)` grey `u8` images into normalised `(batch, 3, size, size)`
/// float pixels on `device`, as CLIP's preprocessing does for RGB input.
pub fn grey_to_pixel_values(images: &Tensor, image_size: i64, device: Device) -> Tensor {
    unit_to_pixel_values(&grey_to_unit(images, device), image_size)
}

/// `(batch, 1, height, width)` grey values in [0, 1] to normalised `(batch, 3, size, size)`.
pub fn unit_to_pixel_values(pixels: &Tensor, image_size: i64) -> Tensor {
    let device = pixels.device();
    let (height, width) = (pixels.size()[2], pixels.size()[3]);
    let pixels = if height == image_size && width == image_size {
        pixels.shallow_clone()
    } else {
        pixels.upsample_bilinear2d([image_size, image_size], false, None, None)
    };
    let shape = [1, 3, 1, 1];
    let mean = Tensor::from_slice(&CLIP_MEAN).view(shape).to_device(device);
    let std = Tensor::from_slice(&CLIP_STD).view(shape).to_device(device);
    (pixels.expand([-1, 3, image_size, image_size], false) - mean) / std
}
