//! Image files to model input: decoded (PNG, JPEG, WebP), converted to RGB and made a
//! square of the model's input size, in one of two ways. Classification and retrieval follow
//! CLIP's preprocessing ([`SquareResize`]: the shorter side resized to the size, bicubic, then
//! a centre crop; or both sides resized, as open_clip's `squash`); the crop is computed in the
//! file's pixels so that only the kept region is resampled, with the same result. Detection
//! must see the whole image, so it resizes the longer side to the size and pads the rest with
//! grey, as OWLv2's preprocessing does, and reports the scale its boxes follow.

use crate::files::FileError;
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::imageops;
use image::{Rgb, RgbImage};
use std::path::Path;

/// How an image becomes the model's square input, as the model's own preprocessing makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SquareResize {
    pub size: u32,
    pub fit: Fit,
    pub filter: Filter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// The shorter side resized to the size (the longer one to `size * longer / shorter`,
    /// truncated, as torchvision and `transformers` compute it), then the centre square kept.
    Shortest(CentreOffset),
    /// Both sides resized to the size: open_clip's `resize_mode: squash`.
    Squash,
}

/// Where the centre crop starts when the margin is odd: `transformers`' `center_crop`
/// floors half the margin, torchvision's `CenterCrop` rounds it half to even.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CentreOffset {
    Floor,
    RoundHalfEven,
}

/// The resampling filter, each as PIL computes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Bicubic,
    Bilinear,
}

impl SquareResize {
    /// `transformers`' `CLIPImageProcessor`: shortest side, bicubic, floored centre offset.
    pub fn clip(size: u32) -> Self {
        SquareResize { size, fit: Fit::Shortest(CentreOffset::Floor), filter: Filter::Bicubic }
    }

    /// The preprocessing of the model at `dir` (an open_clip checkpoint's `preprocess_cfg`),
    /// or [`SquareResize::clip`], for images of `image_size`.
    pub fn for_model(dir: Option<&Path>, image_size: i64) -> Result<Self, FileError> {
        let size = u32::try_from(image_size).map_err(|_| {
            FileError::format(dir.unwrap_or(Path::new("")), format!("image size {image_size} is not usable"))
        })?;
        let preprocess = dir.map(|dir| crate::models::open_clip::preprocess(dir, image_size)).transpose()?.flatten();
        Ok(match preprocess {
            Some(preprocess) => SquareResize { size, fit: preprocess.fit, filter: preprocess.filter },
            None => SquareResize::clip(size),
        })
    }

    /// The region of a `width x height` image that becomes the square, in its pixels
    /// (`[left, top, width, height]`, fractional where the resized image's crop falls
    /// between pixels).
    fn source_region(&self, width: u32, height: u32) -> [f64; 4] {
        let size = self.size as f64;
        let offset = match self.fit {
            Fit::Squash => return [0.0, 0.0, width as f64, height as f64],
            Fit::Shortest(offset) => offset,
        };
        let shorter = width.min(height) as f64;
        let resized = |side: u32| if side == width.min(height) { size } else { (size * side as f64 / shorter).floor() };
        let (resized_width, resized_height) = (resized(width), resized(height));
        let start = |margin: f64| match offset {
            CentreOffset::Floor => (margin / 2.0).floor(),
            CentreOffset::RoundHalfEven => (margin / 2.0).round_ties_even(),
        };
        let (scale_x, scale_y) = (width as f64 / resized_width, height as f64 / resized_height);
        let (left, top) = (start(resized_width - size), start(resized_height - size));
        [left * scale_x, top * scale_y, size * scale_x, size * scale_y]
    }
}

/// The image at `path` as `3 x size x size` RGB bytes, channel-major (the layout of a
/// `(3, size, size)` tensor).
pub fn load_rgb_square(path: &Path, resize: &SquareResize) -> Result<Vec<u8>, FileError> {
    let rgb = decode_rgb(path)?;
    Ok(rgb_square(&rgb, resize))
}

/// `rgb` made the square of `resize`, channel-major.
pub fn rgb_square(rgb: &RgbImage, resize: &SquareResize) -> Vec<u8> {
    let region = resize.source_region(rgb.width(), rgb.height());
    channel_major(&resized(rgb, region, resize.size, resize.size, resize.filter))
}

/// The grey that fills the padding: the middle of the range, 0.5 after scaling.
const PADDING: u8 = 128;

/// An image made a square for detection, and where its pixels went.
#[derive(Debug, Clone)]
pub struct PaddedImage {
    /// `3 x size x size` RGB bytes, channel-major.
    pub pixels: Vec<u8>,
    /// Model pixels per file pixel, horizontally and vertically (they differ by the rounding
    /// of the resized sides): a box in the file's pixels times these is a box in the square.
    pub scale: [f64; 2],
    /// The file's width and height.
    pub size: [u32; 2],
}

/// The image at `path` with its longer side resized to `size` and the rest padded with grey
/// on the right or at the bottom, so every box stays where it was, scaled.
pub fn load_rgb_padded(path: &Path, size: u32) -> Result<PaddedImage, FileError> {
    let rgb = decode_rgb(path)?;
    let (width, height) = rgb.dimensions();
    let longer = width.max(height) as f64;
    let side = |length: u32| ((length as f64 * size as f64 / longer).round() as u32).clamp(1, size);
    let (new_width, new_height) = (side(width), side(height));
    let resized = resized(&rgb, [0.0, 0.0, width as f64, height as f64], new_width, new_height, Filter::Bicubic);
    let mut square = RgbImage::from_pixel(size, size, Rgb([PADDING; 3]));
    imageops::replace(&mut square, &resized, 0, 0);
    let scale = [new_width as f64 / width as f64, new_height as f64 / height as f64];
    Ok(PaddedImage { pixels: channel_major(&square), scale, size: [width, height] })
}

/// The region `[left, top, width, height]` of `rgb` resized to `width x height`, by SIMD
/// kernels computing what PIL's `resize` with that box computes (bicubic: Catmull-Rom,
/// a = -0.5).
fn resized(rgb: &RgbImage, region: [f64; 4], width: u32, height: u32, filter: Filter) -> RgbImage {
    let [left, top, crop_width, crop_height] = region;
    let whole_pixels = region.iter().all(|value| value.fract() == 0.0);
    if whole_pixels && (crop_width, crop_height) == (width as f64, height as f64) {
        return imageops::crop_imm(rgb, left as u32, top as u32, width, height).to_image();
    }
    let source = ImageRef::new(rgb.width(), rgb.height(), rgb.as_raw(), PixelType::U8x3)
        .expect("an RgbImage holds width x height RGB pixels");
    let mut target = Image::new(width, height, PixelType::U8x3);
    let filter = match filter {
        Filter::Bicubic => FilterType::CatmullRom,
        Filter::Bilinear => FilterType::Bilinear,
    };
    let options =
        ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter)).crop(left, top, crop_width, crop_height);
    Resizer::new().resize(&source, &mut target, &options).expect("the region lies inside the image");
    RgbImage::from_raw(width, height, target.into_vec()).expect("the resized buffer holds width x height pixels")
}

fn decode_rgb(path: &Path) -> Result<RgbImage, FileError> {
    let bytes = std::fs::read(path).map_err(FileError::io(path))?;
    decode_rgb_bytes(&bytes).map_err(|problem| FileError::format(path, problem))
}

/// An encoded image (its format found from its bytes) as RGB; the problem, when it is none.
pub fn decode_rgb_bytes(bytes: &[u8]) -> Result<RgbImage, String> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes));
    let reader = reader.with_guessed_format().map_err(|err| err.to_string())?;
    let decoded = reader.decode().map_err(|err| format!("not a readable image: {err}"))?;
    let rgb = decoded.to_rgb8();
    let (width, height) = rgb.dimensions();
    if width.min(height) == 0 {
        return Err(format!("the image is {width}x{height} pixels"));
    }
    Ok(rgb)
}

/// `(3, height, width)` layout: each channel's plane after the other.
fn channel_major(image: &RgbImage) -> Vec<u8> {
    let plane = (image.width() * image.height()) as usize;
    let mut planes = vec![0u8; 3 * plane];
    for (index, pixel) in image.pixels().enumerate() {
        for channel in 0..3 {
            planes[channel * plane + index] = pixel[channel];
        }
    }
    planes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_centre_square_in_channel_major_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wide.png");
        // 6x2: red margins of two columns on each side of a 2x2 green centre.
        let image =
            RgbImage::from_fn(6, 2, |x, _| if (2..4).contains(&x) { Rgb([0, 255, 0]) } else { Rgb([255, 0, 0]) });
        image.save(&path).unwrap();
        let pixels = load_rgb_square(&path, &SquareResize::clip(2)).unwrap();
        assert_eq!(pixels, [0, 0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 0]);
    }

    #[test]
    fn detection_keeps_the_whole_image_and_pads_with_grey() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wide.png");
        // 4x2 white, made 2x2: resized to 2x1, then one grey row below.
        RgbImage::from_pixel(4, 2, Rgb([255, 255, 255])).save(&path).unwrap();
        let padded = load_rgb_padded(&path, 2).unwrap();
        assert_eq!(padded.scale, [0.5, 0.5]);
        assert_eq!(&padded.pixels[..4], [255, 255, PADDING, PADDING]);
    }

    #[test]
    fn corrupt_and_missing_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.jpg");
        std::fs::write(&path, b"\xFF\xD8\xFF\xE0 truncated").unwrap();
        let err = load_rgb_square(&path, &SquareResize::clip(4)).unwrap_err().to_string();
        assert!(err.starts_with(&path.display().to_string()) && err.contains("not a readable image"), "{err}");
        let err = load_rgb_square(&dir.path().join("absent.png"), &SquareResize::clip(4)).unwrap_err().to_string();
        assert!(err.contains("absent.png"), "{err}");
    }
}
