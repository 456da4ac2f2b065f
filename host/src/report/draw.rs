//! Boxes drawn onto images, with their labels: what `trainer predict --draw` writes and what
//! a detection run's evaluations show in TensorBoard and `plots/`. Images smaller than
//! [`DISPLAY_SIZE`] are enlarged first, so that a label stays legible on a 64-pixel canvas;
//! text uses the same embedded font as the plots.

use super::plot::{FONT, register_font};
use image::RgbImage;
use image::imageops::FilterType;
use plotters::prelude::*;

/// Images are drawn with their longer side at least this many pixels.
pub const DISPLAY_SIZE: u32 = 384;
const LABEL_HEIGHT: i32 = 15;

/// A box to draw: `[x, y, width, height]` in the image's pixels, its label and colour.
#[derive(Debug, Clone, PartialEq)]
pub struct DrawnBox {
    pub bbox: [f64; 4],
    pub label: String,
    pub colour: [u8; 3],
}

/// `image` (enlarged to `DISPLAY_SIZE` pixels where smaller) with `boxes` drawn on it: a 2-pixel
/// outline and the label on a band of the box's colour above it (inside it at the top edge).
pub fn draw_boxes(image: &RgbImage, boxes: &[DrawnBox]) -> Result<RgbImage, String> {
    let longer = image.width().max(image.height()).max(1);
    let scale = (f64::from(DISPLAY_SIZE) / f64::from(longer)).max(1.0);
    let (width, height) = ((f64::from(image.width()) * scale) as u32, (f64::from(image.height()) * scale) as u32);
    let mut canvas =
        if scale > 1.0 { image::imageops::resize(image, width, height, FilterType::Triangle) } else { image.clone() };
    register_font()?;
    {
        let area = BitMapBackend::with_buffer(canvas.as_mut(), (width, height)).into_drawing_area();
        let describe = |err: DrawingAreaErrorKind<_>| err.to_string();
        for drawn in boxes {
            let [x, y, w, h] = drawn.bbox.map(|v| v * scale);
            let (left, top, right, bottom) = (x as i32, y as i32, (x + w) as i32, (y + h) as i32);
            let [r, g, b] = drawn.colour;
            let colour = RGBColor(r, g, b);
            area.draw(&Rectangle::new([(left, top), (right, bottom)], colour.stroke_width(2))).map_err(describe)?;
            if drawn.label.is_empty() {
                continue;
            }
            // Black text on light colours, white on dark ones.
            let light = 0.299 * f64::from(r) + 0.587 * f64::from(g) + 0.114 * f64::from(b) > 150.0;
            let style = (FONT, 13).into_font().color(if light { &BLACK } else { &WHITE });
            let (text_width, _) = area.estimate_text_size(&drawn.label, &style).map_err(describe)?;
            let band_top = if top >= LABEL_HEIGHT { top - LABEL_HEIGHT } else { top };
            let band = [(left, band_top), (left + text_width as i32 + 6, band_top + LABEL_HEIGHT)];
            area.draw(&Rectangle::new(band, colour.filled())).map_err(describe)?;
            area.draw(&Text::new(drawn.label.clone(), (left + 3, band_top + 1), style)).map_err(describe)?;
        }
        area.present().map_err(describe)?;
    }
    Ok(canvas)
}

/// `images` side by side in rows of `columns`, on white, each cell as large as the largest.
pub fn tiled(images: &[RgbImage], columns: usize) -> RgbImage {
    let columns = columns.clamp(1, images.len().max(1));
    let rows = images.len().div_ceil(columns).max(1);
    let cell_width = images.iter().map(RgbImage::width).max().unwrap_or(1);
    let cell_height = images.iter().map(RgbImage::height).max().unwrap_or(1);
    let gap = 4;
    let mut sheet = RgbImage::from_pixel(
        columns as u32 * (cell_width + gap) - gap,
        rows as u32 * (cell_height + gap) - gap,
        image::Rgb([255, 255, 255]),
    );
    for (at, image) in images.iter().enumerate() {
        let (column, row) = ((at % columns) as u32, (at / columns) as u32);
        image::imageops::replace(
            &mut sheet,
            image,
            i64::from(column * (cell_width + gap)),
            i64::from(row * (cell_height + gap)),
        );
    }
    sheet
}

/// `image` as PNG bytes.
pub fn png_bytes(image: &RgbImage) -> Result<Vec<u8>, image::ImageError> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Png)?;
    Ok(bytes.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_image_is_enlarged_and_its_box_outlined_in_its_colour_with_a_label() {
        let image = RgbImage::from_pixel(64, 32, image::Rgb([128, 128, 128]));
        let drawn = DrawnBox { bbox: [8.0, 8.0, 16.0, 16.0], label: "dog 0.9".into(), colour: [255, 0, 0] };
        let out = draw_boxes(&image, &[drawn]).unwrap();
        assert_eq!((out.width(), out.height()), (384, 192));
        // Scaled by 6: the left edge is at x = 48, the inside untouched.
        assert_eq!(out.get_pixel(48, 100).0, [255, 0, 0]);
        assert_eq!(out.get_pixel(100, 100).0, [128, 128, 128]);
        // The label's band stands above the box.
        assert_eq!(out.get_pixel(50, 48 - 2).0, [255, 0, 0]);
        let sheet = tiled(&[out.clone(), out], 2);
        assert_eq!((sheet.width(), sheet.height()), (2 * 384 + 4, 192));
        assert!(png_bytes(&sheet).unwrap().starts_with(b"\x89PNG"));
    }
}
