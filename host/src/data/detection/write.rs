//! Writes a detection set in any of the four formats, in the layout `--data` reads back as it
//! is, images included: each image is hard-linked into the layout (copied where a link
//! cannot be made, across file systems), since YOLO finds labels by the images' paths and
//! VOC keeps images in `JPEGImages/`.
//!
//! Layouts, for a part `P` (train, val or test) under `out`:
//! - COCO: `annotations/instances_P.json`, images in `P/`;
//! - JSONL: `P.jsonl`, images in `images/`;
//! - VOC: `Annotations/*.xml`, `JPEGImages/`, `ImageSets/Main/P.txt`;
//! - YOLO: `images/P/`, `labels/P/`, and `data.yaml` naming every part written.
//!
//! Coordinates are written with every digit of the `f64` (YOLO's fractions too), so a box
//! survives a round trip through any format to far better than 1e-6 of a pixel. Crowds are
//! written as COCO's `iscrowd` and VOC's `difficult`; JSONL and YOLO have no such flag and
//! leave them out, which [`Written`] counts. Nothing already in `out` is overwritten: an
//! annotation file there, or an image file that is not the same file, is refused; only
//! YOLO's `data.yaml` is added to, one part at a time.

use super::{DetectionFormat, DetectionSet, Part, voc, yolo};
use crate::files::{FileError, write_atomically};
use serde_json::json;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// What [`write_set`] wrote.
#[derive(Debug)]
pub struct Written {
    /// What to give `--data` to read the part back.
    pub data: PathBuf,
    pub images: usize,
    pub boxes: usize,
    /// Crowd boxes the format has no flag for, left out.
    pub crowds_left_out: usize,
}

/// Writes `set` as `part` of a `format` data set under `out`.
pub fn write_set(set: &DetectionSet, format: DetectionFormat, out: &Path, part: Part) -> Result<Written, FileError> {
    let names = relative_names(set)?;
    let boxes = set.samples.iter().map(|sample| sample.boxes.len()).sum();
    let mut crowds_left_out = 0;
    let data = match format {
        DetectionFormat::Coco => {
            let images_dir = out.join(part.name());
            let mut images = Vec::with_capacity(set.samples.len());
            let mut annotations = Vec::with_capacity(boxes);
            for (sample, name) in set.samples.iter().zip(&names) {
                place_image(&sample.image, &images_dir.join(name))?;
                images.push(
                    json!({"id": sample.image_id, "file_name": name, "width": sample.width, "height": sample.height}),
                );
                annotations.extend(sample.boxes.iter().map(|truth| {
                    json!({
                        "id": truth.annotation_id,
                        "image_id": sample.image_id,
                        "category_id": set.categories[truth.category].id,
                        "bbox": truth.bbox,
                        "area": truth.area,
                        "iscrowd": u8::from(truth.iscrowd),
                    })
                }));
            }
            let categories: Vec<_> = set.categories.iter().map(|c| json!({"id": c.id, "name": c.name})).collect();
            let file = out.join("annotations").join(format!("instances_{}.json", part.name()));
            let coco = json!({"images": images, "annotations": annotations, "categories": categories});
            write_text(&file, &serde_json::to_string(&coco).expect("JSON values serialize"))?;
            file
        }
        DetectionFormat::Jsonl => {
            let mut lines = String::new();
            for (sample, name) in set.samples.iter().zip(&names) {
                let image = format!("images/{name}");
                place_image(&sample.image, &out.join(&image))?;
                let kept: Vec<_> = sample.boxes.iter().filter(|truth| !truth.iscrowd).collect();
                crowds_left_out += sample.boxes.len() - kept.len();
                let labels: Vec<&str> = kept.iter().map(|truth| set.categories[truth.category].name.as_str()).collect();
                let bboxes: Vec<[f64; 4]> = kept.iter().map(|truth| truth.bbox).collect();
                lines.push_str(&json!({"image": image, "boxes": bboxes, "labels": labels}).to_string());
                lines.push('\n');
            }
            let file = out.join(format!("{}.jsonl", part.name()));
            write_text(&file, &lines)?;
            file
        }
        DetectionFormat::Voc => {
            let [annotations, images, lists] = voc::folders(out);
            let mut ids = String::new();
            for (sample, name) in set.samples.iter().zip(&names) {
                // VOC names every file of an image by one id, so the folders are flattened into it.
                let flat = name.replace('/', "_");
                let id = Path::new(&flat).with_extension("").to_string_lossy().into_owned();
                place_image(&sample.image, &images.join(&flat))?;
                let xml = voc::annotation_xml(sample, &flat, &set.categories)
                    .map_err(|err| FileError::format(&annotations.join(&id), format!("cannot write XML: {err}")))?;
                write_text(&annotations.join(format!("{id}.xml")), &xml)?;
                ids.push_str(&id);
                ids.push('\n');
            }
            let list = lists.join(format!("{}.txt", part.name()));
            write_text(&list, &ids)?;
            list
        }
        DetectionFormat::Yolo => {
            let (images, labels) = (out.join("images").join(part.name()), out.join("labels").join(part.name()));
            for (sample, name) in set.samples.iter().zip(&names) {
                place_image(&sample.image, &images.join(name))?;
                let (lines, crowds) = yolo::label_lines(sample);
                crowds_left_out += crowds;
                write_text(&labels.join(name).with_extension("txt"), &lines)?;
            }
            let names: Vec<String> = set.categories.iter().map(|category| category.name.clone()).collect();
            yolo::write_data_file(out, part, &format!("images/{}", part.name()), &names)?;
            out.join(yolo::DATA_FILE)
        }
    };
    Ok(Written { data, images: set.samples.len(), boxes: boxes - crowds_left_out, crowds_left_out })
}

/// Each sample's image path relative to the deepest folder holding them all, with `/`
/// between folders, so that images of several folders keep apart; an image listed twice is
/// refused.
fn relative_names(set: &DetectionSet) -> Result<Vec<String>, FileError> {
    let folders = set.samples.iter().map(|sample| sample.image.parent().unwrap_or(Path::new("")));
    let base = folders.reduce(|base, folder| base.ancestors().find(|a| folder.starts_with(a)).unwrap_or(Path::new("")));
    let base = base.unwrap_or(Path::new(""));
    let mut seen = HashSet::with_capacity(set.samples.len());
    let mut names = Vec::with_capacity(set.samples.len());
    for sample in &set.samples {
        let relative = sample.image.strip_prefix(base).unwrap_or(&sample.image);
        let name: Vec<String> = relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        let name = name.join("/");
        if !seen.insert(name.clone()) {
            let problem = format!("the image is listed twice (declared in {})", sample.origin);
            return Err(FileError::format(&sample.image, problem));
        }
        names.push(name);
    }
    Ok(names)
}

/// Puts `image` at `target`: a hard link, or a copy where none can be made. A file already
/// at `target` must be `image` itself (a link an earlier write made).
fn place_image(image: &Path, target: &Path) -> Result<(), FileError> {
    if let Ok(existing) = std::fs::metadata(target) {
        let source = std::fs::metadata(image).map_err(FileError::io(image))?;
        use std::os::unix::fs::MetadataExt;
        if (existing.dev(), existing.ino()) == (source.dev(), source.ino()) {
            return Ok(());
        }
        let problem = format!("already exists and is not {}: nothing is overwritten", image.display());
        return Err(FileError::format(target, problem));
    }
    create_parent(target)?;
    if std::fs::hard_link(image, target).is_err() {
        std::fs::copy(image, target).map_err(FileError::io(target))?;
    }
    Ok(())
}

fn create_parent(file: &Path) -> Result<(), FileError> {
    let folder = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder).map_err(FileError::io(folder))
}

/// Writes a new annotation file; one already there is refused, as an earlier conversion's.
fn write_text(file: &Path, text: &str) -> Result<(), FileError> {
    if file.exists() {
        return Err(FileError::format(file, "already exists: nothing is overwritten (choose another --out)"));
    }
    create_parent(file)?;
    write_atomically(file, text.as_bytes())
}
