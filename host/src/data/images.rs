//! Image files to model input: decoded (PNG, JPEG), converted to RGB, centre-cropped to a
//! square and resized to the model's input size, which is the region CLIP's preprocessing
//! keeps (shorter side resized to the size, then a centre crop). Cropping first resizes
//! fewer pixels.

use crate::files::FileError;
use image::imageops::{self, FilterType};
use std::path::Path;

/// The image at `path` as `3 x size x size` RGB bytes, channel-major (the layout of a
/// `(3, size, size)` tensor).
pub fn load_rgb_square(path: &Path, size: u32) -> Result<Vec<u8>, FileError> {
    let reader = image::ImageReader::open(path).map_err(FileError::io(path))?;
    let reader = reader.with_guessed_format().map_err(FileError::io(path))?;
    let decoded = reader.decode().map_err(|err| FileError::format(path, format!("not a readable image: {err}")))?;
    let rgb = decoded.to_rgb8();
    let (width, height) = rgb.dimensions();
    let side = width.min(height);
    if side == 0 {
        return Err(FileError::format(path, format!("the image is {width}x{height} pixels")));
    }
    let square = imageops::crop_imm(&rgb, (width - side) / 2, (height - side) / 2, side, side).to_image();
    let resized = if side == size { square } else { imageops::resize(&square, size, size, FilterType::CatmullRom) };
    let plane = (size * size) as usize;
    let mut channel_major = vec![0u8; 3 * plane];
    for (index, pixel) in resized.pixels().enumerate() {
        for channel in 0..3 {
            channel_major[channel * plane + index] = pixel[channel];
        }
    }
    Ok(channel_major)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

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
