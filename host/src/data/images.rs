//! Image files to model input: decoded (PNG, JPEG), converted to RGB and made a square of
//! the model's input size, in one of two ways. Classification and retrieval centre-crop to a
//! square and resize, the region CLIP's preprocessing keeps (shorter side resized to the
//! size, then a centre crop; cropping first resizes fewer pixels). Detection must see the
//! whole image, so it resizes the longer side to the size and pads the rest with grey, as
//! OWLv2's preprocessing does, and reports the scale its boxes follow.

use crate::files::FileError;
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::imageops;
use image::{Rgb, RgbImage};
use std::path::Path;

/// The image at `path` as `3 x size x size` RGB bytes, channel-major (the layout of a
/// `(3, size, size)` tensor).
pub fn load_rgb_square(path: &Path, size: u32) -> Result<Vec<u8>, FileError> {
    let rgb = decode_rgb(path)?;
    let (width, height) = rgb.dimensions();
    let side = width.min(height);
    let square = [(width - side) / 2, (height - side) / 2, side, side];
    Ok(channel_major(&resized(&rgb, square, size, size)))
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
    let resized = resized(&rgb, [0, 0, width, height], new_width, new_height);
    let mut square = RgbImage::from_pixel(size, size, Rgb([PADDING; 3]));
    imageops::replace(&mut square, &resized, 0, 0);
    let scale = [new_width as f64 / width as f64, new_height as f64 / height as f64];
    Ok(PaddedImage { pixels: channel_major(&square), scale, size: [width, height] })
}

/// The region `[left, top, width, height]` of `rgb` resized to `width x height` with a
/// Catmull-Rom filter (bicubic with a = -0.5, PIL's BICUBIC), by SIMD kernels.
fn resized(rgb: &RgbImage, [left, top, crop_width, crop_height]: [u32; 4], width: u32, height: u32) -> RgbImage {
    if (crop_width, crop_height) == (width, height) {
        return imageops::crop_imm(rgb, left, top, width, height).to_image();
    }
    let source = ImageRef::new(rgb.width(), rgb.height(), rgb.as_raw(), PixelType::U8x3)
        .expect("an RgbImage holds width x height RGB pixels");
    let mut target = Image::new(width, height, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom)).crop(
        left as f64,
        top as f64,
        crop_width as f64,
        crop_height as f64,
    );
    Resizer::new().resize(&source, &mut target, &options).expect("the region lies inside the image");
    RgbImage::from_raw(width, height, target.into_vec()).expect("the resized buffer holds width x height pixels")
}

fn decode_rgb(path: &Path) -> Result<RgbImage, FileError> {
    let reader = image::ImageReader::open(path).map_err(FileError::io(path))?;
    let reader = reader.with_guessed_format().map_err(FileError::io(path))?;
    let decoded = reader.decode().map_err(|err| FileError::format(path, format!("not a readable image: {err}")))?;
    let rgb = decoded.to_rgb8();
    let (width, height) = rgb.dimensions();
    if width.min(height) == 0 {
        return Err(FileError::format(path, format!("the image is {width}x{height} pixels")));
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
        let pixels = load_rgb_square(&path, 2).unwrap();
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
        let err = load_rgb_square(&path, 4).unwrap_err().to_string();
        assert!(err.starts_with(&path.display().to_string()) && err.contains("not a readable image"), "{err}");
        let err = load_rgb_square(&dir.path().join("absent.png"), 4).unwrap_err().to_string();
        assert!(err.contains("absent.png"), "{err}");
    }
}
