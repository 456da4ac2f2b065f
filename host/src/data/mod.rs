//! Training and evaluation data: reading datasets from disk, turning images into model
//! input, captions into token ids, and the seeded order in which samples are seen.

pub mod augment;
pub mod bert_tokenizer;
pub mod canvas;
pub mod captioned;
pub mod clip_tokenizer;
pub mod detection;
pub mod fashion_mnist;
pub mod images;
pub mod loader;
pub mod mosaics;
pub mod prompts;
pub mod randaugment;
pub mod sampler;
pub mod webdataset;

use crate::files::FileError;
use images::SquareResize;
use serde::Deserialize;
use std::path::Path;
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

/// Decoded images (`3 x size x size` bytes each, channel-major) as one `(n, 3, size, size)`
/// `u8` tensor on the CPU.
pub fn rgb_batch<'a>(images: impl ExactSizeIterator<Item = &'a [u8]>, size: i64) -> Tensor {
    let count = images.len() as i64;
    let pixels: Vec<u8> = images.flatten().copied().collect();
    Tensor::from_slice(&pixels).view([count, 3, size, size])
}

/// Model input from pixels in [0, 1]: resized to the model's image size, grey repeated to
/// RGB, normalised per channel with the model's mean and standard deviation; with how the
/// model's preprocessing makes image files square.
#[derive(Debug)]
pub struct PixelNormalizer {
    image_size: i64,
    square: SquareResize,
    /// `(1, 3, 1, 1)` on the training device, made once rather than every batch.
    mean: Tensor,
    std: Tensor,
}

/// The image statistics of a Hugging Face `preprocessor_config.json`.
#[derive(Debug, Deserialize)]
struct PreprocessorConfig {
    image_mean: [f32; 3],
    image_std: [f32; 3],
}

impl PixelNormalizer {
    pub fn new(image_size: i64, mean: [f32; 3], std: [f32; 3], device: Device) -> Self {
        let shape = [1, 3, 1, 1];
        PixelNormalizer {
            image_size,
            square: SquareResize::clip(image_size.clamp(1, u32::MAX as i64) as u32),
            mean: Tensor::from_slice(&mean).view(shape).to_device(device),
            std: Tensor::from_slice(&std).view(shape).to_device(device),
        }
    }

    /// CLIP's statistics and preprocessing, or those of the model at `dir`: its
    /// `preprocessor_config.json` (Hugging Face), or an open_clip checkpoint's
    /// `preprocess_cfg`, which also says how images are made square.
    pub fn for_model(dir: Option<&Path>, image_size: i64, device: Device) -> Result<Self, FileError> {
        let square = SquareResize::for_model(dir, image_size)?;
        if let Some(preprocess) =
            dir.map(|dir| crate::models::open_clip::preprocess(dir, image_size)).transpose()?.flatten()
        {
            return Ok(PixelNormalizer {
                square,
                ..PixelNormalizer::new(image_size, preprocess.mean, preprocess.std, device)
            });
        }
        let path = dir.map(|dir| dir.join(PREPROCESSOR_CONFIG)).filter(|path| path.exists());
        let (mean, std) = match path {
            None => (CLIP_MEAN, CLIP_STD),
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(FileError::io(&path))?;
                let config: PreprocessorConfig =
                    serde_json::from_str(&text).map_err(|err| FileError::format(&path, err.to_string()))?;
                if config.image_std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                    return Err(FileError::format(&path, "image_std must be positive"));
                }
                (config.image_mean, config.image_std)
            }
        };
        Ok(PixelNormalizer { square, ..PixelNormalizer::new(image_size, mean, std, device) })
    }

    /// These statistics with image files made squares by `square` instead.
    pub fn with_square(self, square: SquareResize) -> Self {
        PixelNormalizer { square, ..self }
    }

    /// How image files become this model's square input.
    pub fn square(&self) -> SquareResize {
        self.square
    }

    pub fn image_size(&self) -> i64 {
        self.image_size
    }

    /// `(batch, 1 or 3, height, width)` values in [0, 1] to normalised `(batch, 3, size, size)`.
    pub fn normalize(&self, pixels: &Tensor) -> Tensor {
        let size = self.image_size;
        let (height, width) = (pixels.size()[2], pixels.size()[3]);
        let pixels = if height == size && width == size {
            pixels.shallow_clone()
        } else {
            pixels.upsample_bilinear2d([size, size], false, None, None)
        };
        (pixels.expand([-1, 3, size, size], false) - &self.mean) / &self.std
    }
}

/// Where a Hugging Face model folder keeps its image preprocessing.
pub const PREPROCESSOR_CONFIG: &str = "preprocessor_config.json";
