//! The offline default of detection: real Fashion-MNIST photographs placed at random
//! positions and scales on a larger black canvas, one to three per image and never
//! overlapping, each boxed tightly around its pixels. The canvases are written as a COCO
//! instances folder (PNG files and `annotations/instances_<split>.json`) that detection then
//! reads like any user's data, so the default exercises the same reader, checks and
//! evaluation as a user's COCO set.
//!
//! The folder is a pure function of the Fashion-MNIST files and [`LAYOUT`]: it is made once
//! under the cache folder and reused; a new layout gets a new folder.

use super::fashion_mnist::{self, CLASS_NAMES, LabelledImages, Split, VALIDATION_IMAGES};
use super::sampler::keyed;
use crate::files::FileError;
use image::GrayImage;
use image::imageops::{self, FilterType};
use serde_json::json;
use std::path::{Path, PathBuf};

/// Names the generator's version in the folder name.
const LAYOUT: &str = "fashion-canvas-v2";
/// Side of a canvas, in pixels.
pub const CANVAS_SIZE: u32 = 64;
/// Objects per canvas, at most; each canvas has at least one.
const MAX_OBJECTS: u64 = 3;
/// An item's side on the canvas: 28 pixels times a scale in this range.
const SCALES: (f64, f64) = (0.75, 1.5);
/// Pixels at or below this are background when boxing an item.
const BACKGROUND: u8 = 10;
/// Separates the canvas draws from other uses of the seed.
const CANVAS_DRAW: u64 = 0xCA_2FA5;

/// The splits: name, Fashion-MNIST split, first image and image count of the source, and
/// the number of canvases. Validation canvases use the training images held out from
/// classification runs, so no split shares a photograph with another.
const SPLITS: [(&str, Split, i64, i64, usize); 3] = [
    ("train", Split::Train, 0, 60_000 - VALIDATION_IMAGES, 6000),
    ("val", Split::Train, 60_000 - VALIDATION_IMAGES, VALIDATION_IMAGES, 500),
    ("test", Split::Test, 0, 10_000, 1000),
];

/// The canvas folder made from the Fashion-MNIST files in `fashion_dir`, under `cache`;
/// made on first use. Returns the folder.
pub fn canvas_dataset(fashion_dir: &Path, cache: &Path) -> Result<PathBuf, FileError> {
    let folder = cache.join(LAYOUT);
    if folder.join("annotations").is_dir() {
        return Ok(folder);
    }
    std::fs::create_dir_all(cache).map_err(FileError::io(cache))?;
    // Runs starting together each write their own copy; the first rename wins.
    let staging = cache.join(format!("{LAYOUT}.tmp{}", std::process::id()));
    let written = write_splits(fashion_dir, &staging).and_then(|()| match std::fs::rename(&staging, &folder) {
        Ok(()) => Ok(()),
        Err(_) if folder.join("annotations").is_dir() => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(())
        }
        Err(err) => Err(FileError::io(&folder)(err)),
    });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    written.map(|()| folder)
}

/// The annotation file of a split of the canvas folder.
pub fn split_annotations(folder: &Path, split: &str) -> PathBuf {
    folder.join("annotations").join(format!("instances_{split}.json"))
}

fn write_splits(fashion_dir: &Path, folder: &Path) -> Result<(), FileError> {
    let annotations = folder.join("annotations");
    std::fs::create_dir_all(&annotations).map_err(FileError::io(&annotations))?;
    let train = fashion_mnist::load(fashion_dir, Split::Train)?;
    let test = fashion_mnist::load(fashion_dir, Split::Test)?;
    for (index, (name, split, start, count, canvases)) in SPLITS.into_iter().enumerate() {
        let source = if split == Split::Train { &train } else { &test }.slice(start, count);
        let images = folder.join(name);
        std::fs::create_dir_all(&images).map_err(FileError::io(&images))?;
        let instances = write_split(&source, &images, name, canvases, index as u64)?;
        let path = split_annotations(folder, name);
        std::fs::write(&path, instances.to_string()).map_err(FileError::io(&path))?;
    }
    Ok(())
}

/// One item on a canvas: where its 28x28 photograph went, and its tight box.
struct Placed {
    label: usize,
    bbox: [u32; 4],
}

/// Writes `count` canvases into `images` and returns their COCO instances.
fn write_split(
    source: &LabelledImages,
    images: &Path,
    name: &str,
    count: usize,
    split: u64,
) -> Result<serde_json::Value, FileError> {
    let pixels = Vec::<u8>::try_from(source.images.flatten(0, -1)).expect("Fashion-MNIST images are u8");
    let labels = Vec::<i64>::try_from(&source.labels).expect("labels are i64");
    let (mut image_records, mut annotations) = (Vec::new(), Vec::new());
    for canvas_index in 0..count as u64 {
        let draw = |k: u64| keyed(0, &[CANVAS_DRAW, split, canvas_index, k]);
        let unit = |k: u64| (draw(k) >> 11) as f64 / (1u64 << 53) as f64;
        let mut canvas = GrayImage::new(CANVAS_SIZE, CANVAS_SIZE);
        let mut placed: Vec<Placed> = Vec::new();
        let wanted = 1 + draw(0) % MAX_OBJECTS;
        // Up to ten tries per object to find a free place; crowded canvases keep fewer.
        for attempt in 0..wanted * 10 {
            if placed.len() as u64 == wanted {
                break;
            }
            let k = 1 + attempt * 4;
            let item = (draw(k) % labels.len() as u64) as usize;
            let side = (28.0 * (SCALES.0 + (SCALES.1 - SCALES.0) * unit(k + 1))).round() as u32;
            let room = CANVAS_SIZE - side;
            let (x, y) = ((unit(k + 2) * (room + 1) as f64) as u32, (unit(k + 3) * (room + 1) as f64) as u32);
            let photo = GrayImage::from_raw(28, 28, pixels[item * 784..(item + 1) * 784].to_vec())
                .expect("a Fashion-MNIST image is 28x28");
            let photo = imageops::resize(&photo, side, side, FilterType::Triangle);
            let Some([left, top, width, height]) = tight_box(&photo) else { continue };
            let bbox = [x + left, y + top, width, height];
            if placed.iter().any(|other| overlap(&other.bbox, &bbox)) {
                continue;
            }
            // The brighter pixel wins, so a photograph's black margin never covers another item.
            for (px, py, pixel) in photo.enumerate_pixels() {
                let under = canvas.get_pixel_mut(x + px, y + py);
                under[0] = under[0].max(pixel[0]);
            }
            placed.push(Placed { label: labels[item] as usize, bbox });
        }
        let image_id = canvas_index + 1;
        let file_name = format!("{image_id:06}.png");
        let path = images.join(&file_name);
        canvas.save(&path).map_err(|err| FileError::format(&path, err.to_string()))?;
        image_records
            .push(json!({"id": image_id, "file_name": file_name, "width": CANVAS_SIZE, "height": CANVAS_SIZE}));
        for item in placed {
            let [x, y, w, h] = item.bbox;
            annotations.push(json!({
                "id": annotations.len() + 1, "image_id": image_id, "category_id": item.label + 1,
                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
            }));
        }
    }
    let categories: Vec<_> =
        CLASS_NAMES.iter().enumerate().map(|(i, name)| json!({"id": i + 1, "name": name})).collect();
    Ok(json!({
        "info": {"description": format!("Fashion-MNIST items on {CANVAS_SIZE}x{CANVAS_SIZE} canvases ({name})")},
        "images": image_records, "annotations": annotations, "categories": categories,
    }))
}

/// `[left, top, width, height]` of the pixels above [`BACKGROUND`]; `None` for a blank image.
fn tight_box(photo: &GrayImage) -> Option<[u32; 4]> {
    let on: Vec<(u32, u32)> =
        photo.enumerate_pixels().filter(|(_, _, p)| p[0] > BACKGROUND).map(|(x, y, _)| (x, y)).collect();
    let left = on.iter().map(|p| p.0).min()?;
    let right = on.iter().map(|p| p.0).max()?;
    let top = on.iter().map(|p| p.1).min()?;
    let bottom = on.iter().map(|p| p.1).max()?;
    Some([left, top, right - left + 1, bottom - top + 1])
}

/// Whether two `[x, y, w, h]` boxes share a pixel.
fn overlap(a: &[u32; 4], b: &[u32; 4]) -> bool {
    a[0] < b[0] + b[2] && b[0] < a[0] + a[2] && a[1] < b[1] + b[3] && b[1] < a[1] + a[3]
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Luma;

    #[test]
    fn tight_boxes_hug_the_pixels_and_overlap_is_exact() {
        let mut photo = GrayImage::new(6, 5);
        photo.put_pixel(1, 2, Luma([200]));
        photo.put_pixel(4, 3, Luma([30]));
        photo.put_pixel(0, 0, Luma([BACKGROUND]));
        assert_eq!(tight_box(&photo), Some([1, 2, 4, 2]));
        assert_eq!(tight_box(&GrayImage::new(3, 3)), None);
        assert!(overlap(&[0, 0, 4, 4], &[3, 3, 2, 2]));
        assert!(!overlap(&[0, 0, 4, 4], &[4, 0, 2, 2]), "touching is not overlapping");
    }
}
