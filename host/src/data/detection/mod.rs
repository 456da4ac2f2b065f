//! Detection data sets: COCO instances (`instances_*.json` and an image folder), JSONL
//! manifests (`{"image": ..., "boxes": [[x, y, width, height], ...], "labels": [...]}` per
//! line), Pascal VOC XML folders ([`voc`]) and YOLO data sets ([`yolo`]). Reading one gives
//! the images with their ground-truth boxes, and the categories; each sample remembers where
//! it was declared, so an image that fails to decode later is reported with its manifest
//! line, COCO image id or annotation file. [`write`](mod@write) writes a set in any of the four formats,
//! [`check`] looks for what the reading lets through, [`split`] divides a set.
//!
//! Every box is checked here, before training starts, because a degenerate or misplaced box
//! otherwise surfaces hours later as a NaN matching cost or a wrong mAP. Boxes are
//! `[x, y, width, height]` in pixels of the image; a box may overhang the image by up to a
//! pixel, as COCO boxes touching the border do from rounding, and is clipped to the image.
//!
//! With `skip_bad`, an image with any bad annotation is left out whole rather than without
//! the bad box: an object left unlabelled would be learnt as background, and counted as a
//! false positive in evaluation. A COCO annotation for an image that `images` does not list
//! is left out on its own. Problems of the file as a whole (malformed JSON, an id listed
//! twice, categories sharing a name) stop the reading even with `skip_bad`.
//!
//! COCO crowd annotations are kept, marked `iscrowd`: evaluation needs them, so that a
//! detection on a crowd is not counted as a false positive; training should not learn from
//! them. Pascal VOC's `difficult` objects are read as crowds, since VOC's evaluation ignores
//! them the way COCO's ignores crowds.

pub mod check;
pub mod split;
pub mod voc;
pub mod write;
pub mod yolo;

use super::captioned::{Origin, coco_image_dir, manifest_lines, parent};
use crate::files::FileError;
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// How far, in pixels, a box may overhang the image before it counts as outside it.
const BORDER_TOLERANCE: f64 = 1.0;

/// One image and the objects annotated in it.
#[derive(Debug, Clone)]
pub struct DetectionSample {
    pub image: PathBuf,
    /// The COCO image id, or for a manifest the line number.
    pub image_id: u64,
    pub width: u32,
    pub height: u32,
    /// Empty for an image with nothing to detect in it.
    pub boxes: Vec<GroundTruth>,
    pub origin: Origin,
}

/// One annotated object.
#[derive(Debug, Clone, PartialEq)]
pub struct GroundTruth {
    /// The COCO annotation id, or for a manifest the box's position among all the boxes of
    /// the samples kept, from 1.
    pub annotation_id: u64,
    /// Index into [`DetectionSet::categories`].
    pub category: usize,
    /// `[x, y, width, height]` in pixels, clipped to the image.
    pub bbox: [f64; 4],
    /// COCO's area (of the segmentation, by which evaluation sorts objects into sizes), or
    /// the clipped box's area where the file gives none.
    pub area: f64,
    pub iscrowd: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Category {
    pub id: u64,
    pub name: String,
}

/// The samples of a detection data set, its categories, and what was left out of it.
#[derive(Debug, Clone, Default)]
pub struct DetectionSet {
    pub samples: Vec<DetectionSample>,
    /// Sorted by id, so that class indices do not depend on the order of the file.
    pub categories: Vec<Category>,
    /// One line per image (or COCO annotation without an image) left out under `skip_bad`,
    /// the same line its error would have been.
    pub skipped: Vec<String>,
}

/// The annotation formats a detection data set may come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DetectionFormat {
    /// COCO instances: one `.json` file, images in a folder beside it.
    Coco,
    /// A `.jsonl` manifest, a line per image.
    Jsonl,
    /// Pascal VOC: an XML file per image (LabelImg, CVAT).
    Voc,
    /// YOLO: a text file of normalised boxes per image and a list of class names.
    Yolo,
}

impl DetectionFormat {
    /// The format of the data set at `path`: by its extension for a file (a VOC split list is
    /// a `.txt` in `ImageSets/Main/`), by what it holds for a folder. `None` when it is none
    /// of the four.
    pub fn of(path: &Path) -> Option<DetectionFormat> {
        if path.is_dir() {
            return if voc::is_voc_folder(path) {
                Some(DetectionFormat::Voc)
            } else if yolo::is_yolo_folder(path) {
                Some(DetectionFormat::Yolo)
            } else {
                None
            };
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Some(DetectionFormat::Coco),
            Some("jsonl") => Some(DetectionFormat::Jsonl),
            Some("yaml" | "yml") => Some(DetectionFormat::Yolo),
            Some("txt") if voc::is_split_list(path) => Some(DetectionFormat::Voc),
            _ => None,
        }
    }
}

/// Which part of a data set that holds several (a YOLO `data.yaml`) to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Train,
    Val,
    Test,
}

impl Part {
    pub fn name(self) -> &'static str {
        match self {
            Part::Train => "train",
            Part::Val => "val",
            Part::Test => "test",
        }
    }
}

/// Reads the detection data set at `path` (see [`DetectionFormat::of`]); `images` is the
/// folder image paths are relative to (by default the manifest's folder, for COCO the sibling
/// folder named after the split, `annotations/instances_val2017.json` -> `val2017/`, for VOC
/// `JPEGImages/`). A YOLO `data.yaml` gives its `train` images.
pub fn read_detection_set(path: &Path, images: Option<&Path>, skip_bad: bool) -> Result<DetectionSet, FileError> {
    read_detection_part(path, Part::Train, images, skip_bad)
}

/// [`read_detection_set`] for `part` of a set that holds several; a set of one part is read
/// whole whichever is asked for.
pub fn read_detection_part(
    path: &Path,
    part: Part,
    images: Option<&Path>,
    skip_bad: bool,
) -> Result<DetectionSet, FileError> {
    let set = match DetectionFormat::of(path) {
        Some(DetectionFormat::Coco) => read_coco(
            path,
            &images.map(Path::to_path_buf).unwrap_or_else(|| coco_image_dir(path, "instances_")),
            skip_bad,
        )?,
        Some(DetectionFormat::Jsonl) => {
            read_manifest(path, &images.map(Path::to_path_buf).unwrap_or_else(|| parent(path)), skip_bad)?
        }
        Some(DetectionFormat::Voc) => voc::read(path, images, skip_bad)?,
        Some(DetectionFormat::Yolo) => yolo::read(path, part, skip_bad)?,
        None if !path.exists() => return Err(FileError::format(path, "no such file or folder")),
        None => {
            return Err(FileError::format(
                path,
                "not a detection data set: expected a COCO instances .json, a .jsonl manifest, a Pascal VOC \
                 folder (Annotations/ or XML files) or split list (ImageSets/Main/*.txt), or a YOLO data.yaml \
                 or folder (images/ and labels/)",
            ));
        }
    };
    if set.samples.is_empty() {
        return Err(FileError::format(path, "no usable samples"));
    }
    if set.categories.is_empty() {
        return Err(FileError::format(path, "no categories, so nothing to detect"));
    }
    Ok(set)
}

/// Notes `problem` and goes on under `skip_bad`, or stops the reading with it.
fn leave_out(problem: FileError, skip_bad: bool, skipped: &mut Vec<String>) -> Result<(), FileError> {
    if skip_bad {
        skipped.push(problem.to_string());
        Ok(())
    } else {
        Err(problem)
    }
}

/// `bbox`, which should be `[x, y, width, height]`, clipped to a `width` x `height` image,
/// or what is wrong with it.
fn checked_box(bbox: &[f64], width: u32, height: u32) -> Result<[f64; 4], String> {
    let &[x, y, w, h] = bbox else {
        return Err(format!("a box is 4 numbers [x, y, width, height], not {}", bbox.len()));
    };
    let shown = || format!("[{x}, {y}, {w}, {h}]");
    if !bbox.iter().all(|v| v.is_finite()) {
        return Err(format!("box {} has a number that is not finite", shown()));
    }
    if w <= 0.0 || h <= 0.0 {
        return Err(format!("box {} has a width or height that is not positive", shown()));
    }
    let (image_width, image_height) = (f64::from(width), f64::from(height));
    let overhangs = x < -BORDER_TOLERANCE
        || y < -BORDER_TOLERANCE
        || x + w > image_width + BORDER_TOLERANCE
        || y + h > image_height + BORDER_TOLERANCE;
    let (left, top) = (x.max(0.0), y.max(0.0));
    let (right, bottom) = ((x + w).min(image_width), (y + h).min(image_height));
    // A thin box within the tolerance but wholly beyond the border has nothing left once clipped.
    if overhangs || right <= left || bottom <= top {
        return Err(format!("box {} lies outside the {width}x{height} image", shown()));
    }
    Ok([left, top, right - left, bottom - top])
}

#[derive(Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    annotations: Vec<CocoAnnotation>,
    categories: Vec<Category>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
    width: u32,
    height: u32,
}

#[derive(Deserialize)]
struct CocoAnnotation {
    id: u64,
    image_id: u64,
    category_id: u64,
    bbox: Vec<f64>,
    /// Absent from some converted data sets.
    area: Option<f64>,
    #[serde(default)]
    iscrowd: u8,
}

fn read_coco(path: &Path, image_dir: &Path, skip_bad: bool) -> Result<DetectionSet, FileError> {
    // From a slice, which serde_json parses several times faster than a reader: train2017's
    // instances are about 450 MB.
    let coco: CocoFile = {
        let bytes = std::fs::read(path).map_err(FileError::io(path))?;
        serde_json::from_slice(&bytes)
            .map_err(|err| FileError::format(path, format!("not a COCO instances file: {err}")))?
    };
    let categories = coco_categories(path, coco.categories)?;
    let category_index: HashMap<u64, usize> = categories.iter().enumerate().map(|(i, c)| (c.id, i)).collect();

    let mut skipped = Vec::new();
    let mut position = HashMap::with_capacity(coco.images.len());
    let mut left_out = vec![false; coco.images.len()];
    for (at, image) in coco.images.iter().enumerate() {
        if position.insert(image.id, at).is_some() {
            return Err(FileError::format(path, format!("image id {} is listed twice in `images`", image.id)));
        }
        if image.width == 0 || image.height == 0 {
            let problem = format!(
                "image id {}: width and height must be positive, not {}x{}",
                image.id, image.width, image.height
            );
            leave_out(FileError::format(path, problem), skip_bad, &mut skipped)?;
            left_out[at] = true;
        }
    }

    let mut boxes: Vec<Vec<GroundTruth>> = vec![Vec::new(); coco.images.len()];
    let mut annotation_ids = HashSet::with_capacity(coco.annotations.len());
    for annotation in &coco.annotations {
        if !annotation_ids.insert(annotation.id) {
            let problem = format!("annotation id {} is listed twice in `annotations`", annotation.id);
            return Err(FileError::format(path, problem));
        }
        let Some(&at) = position.get(&annotation.image_id) else {
            let problem =
                format!("annotation id {}: image id {} is not in `images`", annotation.id, annotation.image_id);
            leave_out(FileError::format(path, problem), skip_bad, &mut skipped)?;
            continue;
        };
        if left_out[at] {
            continue;
        }
        match coco_ground_truth(annotation, &coco.images[at], &category_index) {
            Ok(truth) => boxes[at].push(truth),
            Err(problem) => {
                let (id, image) = (annotation.image_id, &coco.images[at].file_name);
                let problem = format!("annotation id {} (image id {id}, {image}): {problem}", annotation.id);
                leave_out(FileError::format(path, problem), skip_bad, &mut skipped)?;
                left_out[at] = true;
            }
        }
    }

    let mut samples = Vec::with_capacity(coco.images.len());
    for ((image, boxes), left_out) in coco.images.into_iter().zip(boxes).zip(left_out) {
        if left_out {
            continue;
        }
        // `Origin` holds COCO ids signed, as the captions reader reads them.
        let Ok(signed_id) = i64::try_from(image.id) else {
            let problem = format!("image id {} is larger than the largest id taken, {}", image.id, i64::MAX);
            leave_out(FileError::format(path, problem), skip_bad, &mut skipped)?;
            continue;
        };
        let file = image_dir.join(&image.file_name);
        let origin = Origin::CocoImage { annotations: path.to_path_buf(), id: signed_id };
        if !file.is_file() {
            leave_out(not_found(&file, &origin), skip_bad, &mut skipped)?;
            continue;
        }
        samples.push(DetectionSample {
            image: file,
            image_id: image.id,
            width: image.width,
            height: image.height,
            boxes,
            origin,
        });
    }
    Ok(DetectionSet { samples, categories, skipped })
}

fn coco_categories(path: &Path, mut categories: Vec<Category>) -> Result<Vec<Category>, FileError> {
    categories.sort_by_key(|category| category.id);
    if let Some(pair) = categories.windows(2).find(|pair| pair[0].id == pair[1].id) {
        return Err(FileError::format(path, format!("category id {} is listed twice in `categories`", pair[0].id)));
    }
    // The names become the text queries, so each must say something and tell its class apart.
    let mut id_of_name = HashMap::with_capacity(categories.len());
    for category in &categories {
        if category.name.trim().is_empty() {
            return Err(FileError::format(path, format!("category id {} has an empty name", category.id)));
        }
        if let Some(first) = id_of_name.insert(category.name.as_str(), category.id) {
            let problem = format!("category ids {first} and {} share the name {:?}", category.id, category.name);
            return Err(FileError::format(path, problem));
        }
    }
    Ok(categories)
}

fn coco_ground_truth(
    annotation: &CocoAnnotation,
    image: &CocoImage,
    category_index: &HashMap<u64, usize>,
) -> Result<GroundTruth, String> {
    let &category = category_index
        .get(&annotation.category_id)
        .ok_or_else(|| format!("category id {} is not in `categories`", annotation.category_id))?;
    let bbox = checked_box(&annotation.bbox, image.width, image.height)?;
    let area = match annotation.area {
        Some(area) if !(area.is_finite() && area >= 0.0) => {
            return Err(format!("area {area} is not a finite number of at least 0"));
        }
        Some(area) => area,
        None => bbox[2] * bbox[3],
    };
    let iscrowd = match annotation.iscrowd {
        0 => false,
        1 => true,
        other => return Err(format!("iscrowd is 0 or 1, not {other}")),
    };
    Ok(GroundTruth { annotation_id: annotation.id, category, bbox, area, iscrowd })
}

fn not_found(image: &Path, origin: &Origin) -> FileError {
    FileError::format(image, format!("image file not found (declared in {origin})"))
}

#[derive(Deserialize)]
struct ManifestLine {
    image: String,
    boxes: Vec<Vec<f64>>,
    labels: Vec<String>,
}

/// An image whose boxes are labelled by class name (a manifest line, a VOC file, a YOLO
/// label file) and passed their checks; the labels are not yet numbered, since the categories
/// are known only once every image is read.
struct NamedEntry {
    image: PathBuf,
    image_id: u64,
    width: u32,
    height: u32,
    boxes: Vec<[f64; 4]>,
    labels: Vec<String>,
    /// Per box: ignored by evaluation and training (VOC's `difficult`).
    crowd: Vec<bool>,
    origin: Origin,
}

fn read_manifest(path: &Path, base: &Path, skip_bad: bool) -> Result<DetectionSet, FileError> {
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    for line in manifest_lines(path)? {
        let (line_number, line) = line?;
        match manifest_entry(path, base, line_number, &line) {
            Ok(entry) => entries.push(entry),
            Err(problem) => leave_out(problem, skip_bad, &mut skipped)?,
        }
    }
    Ok(numbered(entries, None, skipped))
}

/// The set of `entries`, their labels numbered onto `categories`, or when none are given
/// onto the sorted names the entries use: only kept samples name categories then, since a
/// class seen only on left-out lines has no example. Every label must be in `categories`.
fn numbered(entries: Vec<NamedEntry>, categories: Option<Vec<Category>>, skipped: Vec<String>) -> DetectionSet {
    let categories = categories.unwrap_or_else(|| {
        let names: BTreeSet<&str> = entries.iter().flat_map(|entry| entry.labels.iter().map(String::as_str)).collect();
        (1..).zip(names).map(|(id, name)| Category { id, name: name.to_string() }).collect()
    });
    let category_index: HashMap<&str, usize> =
        categories.iter().enumerate().map(|(i, category)| (category.name.as_str(), i)).collect();

    let mut annotation_id = 0;
    let mut samples = Vec::with_capacity(entries.len());
    for entry in entries {
        let mut boxes = Vec::with_capacity(entry.boxes.len());
        for ((bbox, label), iscrowd) in entry.boxes.into_iter().zip(&entry.labels).zip(entry.crowd) {
            annotation_id += 1;
            boxes.push(GroundTruth {
                annotation_id,
                category: category_index[label.as_str()],
                bbox,
                area: bbox[2] * bbox[3],
                iscrowd,
            });
        }
        samples.push(DetectionSample {
            image: entry.image,
            image_id: entry.image_id,
            width: entry.width,
            height: entry.height,
            boxes,
            origin: entry.origin,
        });
    }
    DetectionSet { samples, categories, skipped }
}

fn manifest_entry(path: &Path, base: &Path, line: usize, text: &str) -> Result<NamedEntry, FileError> {
    let at_line = |problem: String| FileError::format(path, format!("line {line}: {problem}"));
    let parsed: ManifestLine = serde_json::from_str(text).map_err(|err| at_line(err.to_string()))?;
    if parsed.boxes.len() != parsed.labels.len() {
        return Err(at_line(format!("{} boxes but {} labels", parsed.boxes.len(), parsed.labels.len())));
    }
    if let Some(i) = parsed.labels.iter().position(|label| label.trim().is_empty()) {
        return Err(at_line(format!("labels[{i}] is empty")));
    }
    let image = base.join(&parsed.image);
    let origin = Origin::ManifestLine { manifest: path.to_path_buf(), line };
    if !image.is_file() {
        return Err(not_found(&image, &origin));
    }
    let (width, height) = image_size(&image, &origin)?;
    let boxes = parsed
        .boxes
        .iter()
        .enumerate()
        .map(|(i, bbox)| checked_box(bbox, width, height).map_err(|problem| at_line(format!("boxes[{i}]: {problem}"))))
        .collect::<Result<_, _>>()?;
    let crowd = vec![false; parsed.labels.len()];
    Ok(NamedEntry { image, image_id: line as u64, width, height, boxes, labels: parsed.labels, crowd, origin })
}

/// The width and height in `image`'s header (nothing is decoded).
fn image_size(image: &Path, origin: &Origin) -> Result<(u32, u32), FileError> {
    image::image_dimensions(image)
        .map_err(|err| FileError::format(image, format!("cannot read the image size: {err} (declared in {origin})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }

    pub(super) fn png(path: &Path, width: u32, height: u32) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::new(width, height).save(path).unwrap();
    }

    pub(super) fn write(path: &Path, text: &str) -> PathBuf {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        path.to_path_buf()
    }

    /// `dir/annotations/instances_val2017.json` with `annotations`, images 7 (`a.jpg`) and
    /// 9 (`b.jpg`) of 640x480 in `dir/val2017`, and categories 18 "dog" and 1 "person".
    fn coco(dir: &Path, annotations: &str) -> PathBuf {
        touch(&dir.join("val2017/a.jpg"));
        touch(&dir.join("val2017/b.jpg"));
        let json = format!(
            r#"{{"images": [{{"id": 7, "file_name": "a.jpg", "width": 640, "height": 480}},
                            {{"id": 9, "file_name": "b.jpg", "width": 640, "height": 480}}],
                "categories": [{{"id": 18, "name": "dog", "supercategory": "animal"}},
                               {{"id": 1, "name": "person", "supercategory": "person"}}],
                "annotations": [{annotations}]}}"#
        );
        write(&dir.join("annotations/instances_val2017.json"), &json)
    }

    #[test]
    fn coco_boxes_are_grouped_by_image_with_categories_sorted_by_id_and_crowds_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = coco(
            dir.path(),
            r#"{"id": 1, "image_id": 9, "category_id": 18, "bbox": [10, 20, 30, 40], "area": 900.5, "iscrowd": 0},
               {"id": 2, "image_id": 9, "category_id": 1, "bbox": [600, 440, 40.5, 40.5], "area": 1500, "iscrowd": 1},
               {"id": 3, "image_id": 7, "category_id": 1, "bbox": [-0.5, 0, 10, 10]}"#,
        );
        let set = read_detection_set(&path, None, false).unwrap();
        let names: Vec<_> = set.categories.iter().map(|c| (c.id, c.name.as_str())).collect();
        assert_eq!(names, [(1, "person"), (18, "dog")]);
        assert!(set.skipped.is_empty());

        let [a, b] = &set.samples[..] else { panic!("{:?}", set.samples) };
        assert_eq!((a.image_id, a.width, a.height), (7, 640, 480));
        assert_eq!(b.image, dir.path().join("val2017/b.jpg"));
        assert_eq!(b.origin.to_string(), format!("{} image id 9", path.display()));
        let clipped_at_the_left =
            GroundTruth { annotation_id: 3, category: 0, bbox: [0.0, 0.0, 9.5, 10.0], area: 95.0, iscrowd: false };
        assert_eq!(a.boxes, [clipped_at_the_left]);
        let dog =
            GroundTruth { annotation_id: 1, category: 1, bbox: [10.0, 20.0, 30.0, 40.0], area: 900.5, iscrowd: false };
        let crowd_clipped_at_the_corner = GroundTruth {
            annotation_id: 2,
            category: 0,
            bbox: [600.0, 440.0, 40.0, 40.0],
            area: 1500.0,
            iscrowd: true,
        };
        assert_eq!(b.boxes, [dog, crowd_clipped_at_the_corner]);
    }

    #[test]
    fn a_coco_image_without_annotations_is_kept_with_no_boxes() {
        let dir = tempfile::tempdir().unwrap();
        let path = coco(dir.path(), r#"{"id": 1, "image_id": 9, "category_id": 1, "bbox": [1, 1, 2, 2], "area": 4}"#);
        let set = read_detection_set(&path, None, false).unwrap();
        assert_eq!(set.samples.len(), 2);
        assert!(set.samples[0].boxes.is_empty());
        assert_eq!(set.samples[1].boxes.len(), 1);
    }

    #[test]
    fn each_bad_coco_annotation_is_named_and_skipping_leaves_its_image_out() {
        let cases = [
            (
                r#""image_id": 7, "category_id": 1, "bbox": [10, 10, 0, 5]"#,
                "(image id 7, a.jpg): box [10, 10, 0, 5] has a width or height that is not positive",
            ),
            (
                r#""image_id": 7, "category_id": 1, "bbox": [10, 10, 5, -2]"#,
                "(image id 7, a.jpg): box [10, 10, 5, -2] has a width or height that is not positive",
            ),
            (
                r#""image_id": 7, "category_id": 1, "bbox": [630, 10, 20, 5]"#,
                "(image id 7, a.jpg): box [630, 10, 20, 5] lies outside the 640x480 image",
            ),
            (
                r#""image_id": 7, "category_id": 1, "bbox": [10, -3, 20, 5]"#,
                "(image id 7, a.jpg): box [10, -3, 20, 5] lies outside the 640x480 image",
            ),
            (
                r#""image_id": 7, "category_id": 1, "bbox": [640.5, 10, 0.25, 5]"#,
                "(image id 7, a.jpg): box [640.5, 10, 0.25, 5] lies outside the 640x480 image",
            ),
            (
                r#""image_id": 7, "category_id": 1, "bbox": [1, 2, 3]"#,
                "(image id 7, a.jpg): a box is 4 numbers [x, y, width, height], not 3",
            ),
            (
                r#""image_id": 7, "category_id": 99, "bbox": [1, 2, 3, 4]"#,
                "(image id 7, a.jpg): category id 99 is not in `categories`",
            ),
            (
                r#""image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 2"#,
                "(image id 7, a.jpg): iscrowd is 0 or 1, not 2",
            ),
            (
                r#""image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4], "area": -1"#,
                "(image id 7, a.jpg): area -1 is not a finite number of at least 0",
            ),
        ];
        for (fields, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            let good = r#"{"id": 4, "image_id": 7, "category_id": 18, "bbox": [1, 2, 3, 4]}"#;
            let path = coco(dir.path(), &format!(r#"{good}, {{"id": 5, {fields}}}"#));
            let err = read_detection_set(&path, None, false).unwrap_err().to_string();
            assert_eq!(err, format!("{}: annotation id 5 {expected}", path.display()));

            let set = read_detection_set(&path, None, true).unwrap();
            assert_eq!(set.skipped, [err]);
            let kept: Vec<_> = set.samples.iter().map(|sample| sample.image_id).collect();
            assert_eq!(kept, [9]);
        }
    }

    #[test]
    fn a_coco_annotation_for_an_unlisted_image_is_named_and_skipped_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = coco(
            dir.path(),
            r#"{"id": 4, "image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4]},
               {"id": 5, "image_id": 8, "category_id": 1, "bbox": [1, 2, 3, 4]}"#,
        );
        let err = read_detection_set(&path, None, false).unwrap_err().to_string();
        assert_eq!(err, format!("{}: annotation id 5: image id 8 is not in `images`", path.display()));

        let set = read_detection_set(&path, None, true).unwrap();
        assert_eq!(set.skipped, [err]);
        assert_eq!(set.samples.len(), 2);
        assert_eq!(set.samples[0].boxes.len(), 1);
    }

    #[test]
    fn an_image_with_several_bad_annotations_is_left_out_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = coco(
            dir.path(),
            r#"{"id": 4, "image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4]},
               {"id": 5, "image_id": 7, "category_id": 1, "bbox": [1, 2, 0, 4]},
               {"id": 6, "image_id": 7, "category_id": 42, "bbox": [1, 2, 3, 4]},
               {"id": 7, "image_id": 9, "category_id": 1, "bbox": [1, 2, 3, 4]}"#,
        );
        let set = read_detection_set(&path, None, true).unwrap();
        assert_eq!(set.skipped.len(), 1, "{:?}", set.skipped);
        assert!(set.skipped[0].contains("annotation id 5"), "{:?}", set.skipped);
        assert_eq!(set.samples.len(), 1);
        assert_eq!(set.samples[0].boxes[0].annotation_id, 7);
    }

    #[test]
    fn a_missing_coco_image_names_the_image_and_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = coco(dir.path(), r#"{"id": 4, "image_id": 9, "category_id": 1, "bbox": [1, 2, 3, 4]}"#);
        std::fs::remove_file(dir.path().join("val2017/a.jpg")).unwrap();
        let err = read_detection_set(&path, None, false).unwrap_err().to_string();
        let image = dir.path().join("val2017/a.jpg");
        assert_eq!(
            err,
            format!("{}: image file not found (declared in {} image id 7)", image.display(), path.display())
        );

        let set = read_detection_set(&path, None, true).unwrap();
        assert_eq!(set.skipped, [err]);
        assert_eq!(set.samples.len(), 1);
    }

    #[test]
    fn a_coco_image_without_a_size_is_named() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("images/a.jpg"));
        touch(&dir.path().join("images/b.jpg"));
        let json = r#"{"images": [{"id": 7, "file_name": "a.jpg", "width": 0, "height": 480},
                                  {"id": 9, "file_name": "b.jpg", "width": 640, "height": 480}],
                       "categories": [{"id": 1, "name": "person"}],
                       "annotations": [{"id": 4, "image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4]}]}"#;
        let path = write(&dir.path().join("instances.json"), json);
        let images = dir.path().join("images");
        let err = read_detection_set(&path, Some(&images), false).unwrap_err().to_string();
        assert_eq!(err, format!("{}: image id 7: width and height must be positive, not 0x480", path.display()));

        let set = read_detection_set(&path, Some(&images), true).unwrap();
        assert_eq!(set.skipped, [err]);
        assert_eq!(set.samples[0].image, images.join("b.jpg"));
    }

    #[test]
    fn a_coco_image_id_beyond_what_origins_hold_is_named() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("a.jpg"));
        let json = r#"{"images": [{"id": 9223372036854775808, "file_name": "a.jpg", "width": 640, "height": 480}],
                       "categories": [{"id": 1, "name": "person"}], "annotations": []}"#;
        let path = write(&dir.path().join("instances.json"), json);
        let err = read_detection_set(&path, Some(dir.path()), false).unwrap_err().to_string();
        let expected = "image id 9223372036854775808 is larger than the largest id taken, 9223372036854775807";
        assert_eq!(err, format!("{}: {expected}", path.display()));
    }

    #[test]
    fn problems_of_the_whole_coco_file_stop_the_reading_even_when_skipping() {
        let image = r#"{"id": 7, "file_name": "a.jpg", "width": 640, "height": 480}"#;
        let person = r#"{"id": 1, "name": "person"}"#;
        let box_of = |id: u64| format!(r#"{{"id": {id}, "image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4]}}"#);
        let file = |images: &str, categories: &str, annotations: &str| {
            format!(r#"{{"images": [{images}], "categories": [{categories}], "annotations": [{annotations}]}}"#)
        };
        let cases = [
            (
                file(&format!("{image}, {image}"), person, &box_of(4)),
                "image id 7 is listed twice in `images`".to_string(),
            ),
            (
                file(image, &format!("{person}, {person}"), &box_of(4)),
                "category id 1 is listed twice in `categories`".into(),
            ),
            (
                file(image, &format!(r#"{person}, {{"id": 3, "name": "person"}}"#), &box_of(4)),
                r#"category ids 1 and 3 share the name "person""#.into(),
            ),
            (file(image, r#"{"id": 1, "name": " "}"#, &box_of(4)), "category id 1 has an empty name".into()),
            (
                file(image, person, &format!("{}, {}", box_of(4), box_of(4))),
                "annotation id 4 is listed twice in `annotations`".into(),
            ),
            (
                r#"{"images": [], "annotations": [{"image_id": 7, "caption": "a dog"}]}"#.into(),
                "not a COCO instances file: missing field `id`".into(),
            ),
            (
                r#"{"images": [], "annotations": []}"#.into(),
                "not a COCO instances file: missing field `categories`".into(),
            ),
            (r#"{"images": ["#.into(), "not a COCO instances file: EOF while parsing".into()),
            (
                file(r#"{"id": -7, "file_name": "a.jpg", "width": 640, "height": 480}"#, person, ""),
                "not a COCO instances file: invalid value: integer `-7`, expected u64".into(),
            ),
        ];
        for (json, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            touch(&dir.path().join("a.jpg"));
            let path = write(&dir.path().join("instances.json"), &json);
            let err = read_detection_set(&path, Some(dir.path()), true).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{}: {expected}", path.display())), "{err}");
        }
    }

    /// `line` as the second line of `dir/data.jsonl`, after a good one; `dir/a.png` is 64x48.
    fn manifest_with(dir: &Path, line: &str) -> PathBuf {
        png(&dir.join("a.png"), 64, 48);
        let good = r#"{"image": "a.png", "boxes": [[1, 2, 3, 4]], "labels": ["cat"]}"#;
        write(&dir.join("data.jsonl"), &format!("{good}\n{line}\n"))
    }

    #[test]
    fn manifest_boxes_get_sorted_categories_line_ids_and_sizes_from_the_image() {
        let dir = tempfile::tempdir().unwrap();
        png(&dir.path().join("a.png"), 64, 48);
        png(&dir.path().join("sub/b.png"), 32, 16);
        let text = r#"{"image": "a.png", "boxes": [[1, 2, 10, 20], [0, 0, 64.5, 48]], "labels": ["zebra", "cat"]}

{"image": "sub/b.png", "boxes": [], "labels": []}
{"image": "a.png", "boxes": [[5, 5, 5, 5]], "labels": ["cat"]}
"#;
        let path = write(&dir.path().join("data.jsonl"), text);
        let set = read_detection_set(&path, None, false).unwrap();
        assert_eq!(set.categories, [Category { id: 1, name: "cat".into() }, Category { id: 2, name: "zebra".into() }]);
        let [a, b, c] = &set.samples[..] else { panic!("{:?}", set.samples) };
        assert_eq!((a.image_id, a.width, a.height), (1, 64, 48));
        let zebra =
            GroundTruth { annotation_id: 1, category: 1, bbox: [1.0, 2.0, 10.0, 20.0], area: 200.0, iscrowd: false };
        let clipped_cat =
            GroundTruth { annotation_id: 2, category: 0, bbox: [0.0, 0.0, 64.0, 48.0], area: 3072.0, iscrowd: false };
        assert_eq!(a.boxes, [zebra, clipped_cat]);
        assert_eq!((b.image_id, b.width, b.height), (3, 32, 16));
        assert_eq!(b.image, dir.path().join("sub/b.png"));
        assert!(b.boxes.is_empty());
        assert_eq!(b.origin.to_string(), format!("{} line 3", path.display()));
        assert_eq!(c.image_id, 4);
        assert_eq!((c.boxes[0].annotation_id, c.boxes[0].category), (3, 0));
    }

    #[test]
    fn each_bad_manifest_line_is_named() {
        let cases = [
            (
                r#"{"image": "a.png", "boxes": [[1, 2, 3, 4], [1, 2, 3, 4]], "labels": ["cat"]}"#,
                "line 2: 2 boxes but 1 labels",
            ),
            (r#"{"image": "a.png", "boxes": [[1, 2, 3, 4]], "labels": [""]}"#, "line 2: labels[0] is empty"),
            (
                r#"{"image": "a.png", "boxes": [[1, 2, 3, 4], [60, 0, 10, 10]], "labels": ["cat", "dog"]}"#,
                "line 2: boxes[1]: box [60, 0, 10, 10] lies outside the 64x48 image",
            ),
            (
                r#"{"image": "a.png", "boxes": [[1, 2, 0, 4]], "labels": ["cat"]}"#,
                "line 2: boxes[0]: box [1, 2, 0, 4] has a width or height that is not positive",
            ),
            (
                r#"{"image": "a.png", "boxes": [[1, 2, 4]], "labels": ["cat"]}"#,
                "line 2: boxes[0]: a box is 4 numbers [x, y, width, height], not 3",
            ),
            (r#"{"image": "a.png", "boxes": [[1e999, 2, 3, 4]], "labels": ["cat"]}"#, "line 2: number out of range"),
            (r#"{"image": "a.png", "labels": []}"#, "line 2: missing field `boxes`"),
            (r#"{"image": "a.png", "boxes": [[1, 2, 3, 4]"#, "line 2: EOF while parsing"),
        ];
        for (line, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = manifest_with(dir.path(), line);
            let err = read_detection_set(&path, None, false).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{}: {expected}", path.display())), "{err}");
        }
    }

    #[test]
    fn a_manifest_image_that_is_missing_or_unreadable_names_the_image_and_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = manifest_with(dir.path(), r#"{"image": "gone.png", "boxes": [], "labels": []}"#);
        let err = read_detection_set(&path, None, false).unwrap_err().to_string();
        let gone = dir.path().join("gone.png");
        assert_eq!(err, format!("{}: image file not found (declared in {} line 2)", gone.display(), path.display()));

        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("text.png"), "not an image");
        let path = manifest_with(dir.path(), r#"{"image": "text.png", "boxes": [], "labels": []}"#);
        let err = read_detection_set(&path, None, false).unwrap_err().to_string();
        let text = dir.path().join("text.png");
        assert!(err.starts_with(&format!("{}: cannot read the image size: ", text.display())), "{err}");
        assert!(err.ends_with(&format!("(declared in {} line 2)", path.display())), "{err}");
    }

    #[test]
    fn skipping_manifest_lines_counts_them_and_their_labels_name_no_category() {
        let dir = tempfile::tempdir().unwrap();
        png(&dir.path().join("a.png"), 64, 48);
        let text = r#"{"image": "a.png", "boxes": [[1, 2, 3, 4]], "labels": ["cat"]}
{"image": "a.png", "boxes": [[1, 2, 3, 4]], "labels": ["ghost", "ghost"]}
{"image": "gone.png", "boxes": [[1, 2, 3, 4]], "labels": ["ghost"]}
{"image": "a.png", "boxes": [[100, 2, 3, 4]], "labels": ["ghost"]}
{"image": "a.png", "boxes": [[1, 2, 3, 4]], "labels": ["ghost"]
{"image": "a.png", "boxes": [[1, 2, 3, 4]], "labels": ["dog"]}
"#;
        let path = write(&dir.path().join("data.jsonl"), text);
        let set = read_detection_set(&path, None, true).unwrap();
        assert_eq!(set.skipped.len(), 4, "{:?}", set.skipped);
        assert!(set.skipped[1].contains("gone.png") && set.skipped[1].contains("line 3"), "{:?}", set.skipped);
        let names: Vec<_> = set.categories.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["cat", "dog"]);
        let ids: Vec<_> = set.samples.iter().map(|s| (s.image_id, s.boxes[0].annotation_id)).collect();
        assert_eq!(ids, [(1, 1), (6, 2)]);
    }

    #[test]
    fn an_images_folder_given_replaces_the_manifests_folder() {
        let dir = tempfile::tempdir().unwrap();
        png(&dir.path().join("pictures/a.png"), 8, 8);
        let line = r#"{"image": "a.png", "boxes": [[0, 0, 8, 8]], "labels": ["cat"]}"#;
        let path = write(&dir.path().join("lists/data.jsonl"), line);
        let pictures = dir.path().join("pictures");
        let set = read_detection_set(&path, Some(&pictures), false).unwrap();
        assert_eq!(set.samples[0].image, pictures.join("a.png"));
    }

    #[test]
    fn a_data_set_must_have_samples_and_categories_and_a_known_kind() {
        let dir = tempfile::tempdir().unwrap();
        png(&dir.path().join("a.png"), 8, 8);
        let path = write(&dir.path().join("data.jsonl"), "{\"image\": \"a.png\", \"boxes\": [], \"labels\": []}\n");
        let err = read_detection_set(&path, None, false).unwrap_err().to_string();
        assert_eq!(err, format!("{}: no categories, so nothing to detect", path.display()));

        let path = write(&dir.path().join("empty.jsonl"), "\n");
        let err = read_detection_set(&path, None, false).unwrap_err().to_string();
        assert_eq!(err, format!("{}: no usable samples", path.display()));

        let path = write(&dir.path().join("boxes.csv"), "");
        let err = read_detection_set(&path, None, false).unwrap_err().to_string();
        assert!(err.ends_with("or a YOLO data.yaml or folder (images/ and labels/)"), "{err}");

        let err = read_detection_set(&dir.path().join("gone.txt"), None, false).unwrap_err().to_string();
        assert!(err.ends_with("gone.txt: no such file or folder"), "{err}");
        let err = read_detection_set(&dir.path().join("gone.json"), None, false).unwrap_err().to_string();
        assert!(err.starts_with(&dir.path().join("gone.json").display().to_string()), "{err}");
    }

    #[test]
    fn a_box_with_a_number_that_is_not_finite_is_refused() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let err = checked_box(&[1.0, bad, 3.0, 4.0], 10, 10).unwrap_err();
            assert!(err.ends_with("has a number that is not finite"), "{err}");
        }
        assert_eq!(checked_box(&[1.0, 2.0, 3.0, 4.0], 10, 10), Ok([1.0, 2.0, 3.0, 4.0]));
    }
}
