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

use super::{DetectionFormat, DetectionSample, DetectionSet, Part, voc, yolo};
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
    let names = relative_image_names(&set.samples)?;
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
pub fn relative_image_names(samples: &[DetectionSample]) -> Result<Vec<String>, FileError> {
    let folders = samples.iter().map(|sample| sample.image.parent().unwrap_or(Path::new("")));
    let base = folders.reduce(|base, folder| base.ancestors().find(|a| folder.starts_with(a)).unwrap_or(Path::new("")));
    let base = base.unwrap_or(Path::new(""));
    let mut seen = HashSet::with_capacity(samples.len());
    let mut names = Vec::with_capacity(samples.len());
    for sample in samples {
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

#[cfg(test)]
mod tests {
    use super::super::tests::png;
    use super::super::{Category, DetectionSample, GroundTruth, read_detection_part};
    use super::*;
    use crate::data::captioned::Origin;
    use std::collections::BTreeMap;

    /// Three images of other sizes, one without boxes; boxes at fractions of a pixel, one on
    /// the border; category ids out of the order of their names.
    fn three_images(folder: &Path) -> DetectionSet {
        let truth = |annotation_id, category, bbox: [f64; 4]| GroundTruth {
            annotation_id,
            category,
            bbox,
            area: bbox[2] * bbox[3],
            iscrowd: false,
        };
        let sample = |name: &str, image_id, (width, height), boxes| {
            let image = folder.join(name);
            png(&image, width, height);
            DetectionSample { image: image.clone(), image_id, width, height, boxes, origin: Origin::File(image) }
        };
        let samples = vec![
            sample(
                "a.png",
                5,
                (64, 48),
                vec![truth(1, 0, [0.1, 0.2, 30.3, 7.7]), truth(2, 1, [33.0, 17.25, 31.0, 30.75])],
            ),
            sample("b.png", 9, (37, 53), vec![truth(3, 1, [1.0 / 3.0, 2.0 / 7.0, 11.0 / 13.0, 52.0])]),
            sample("c.png", 11, (20, 20), Vec::new()),
        ];
        let categories = vec![Category { id: 3, name: "zebra".into() }, Category { id: 7, name: "cat".into() }];
        DetectionSet { samples, categories, skipped: Vec::new() }
    }

    /// Boxes by image file name: class name, box and crowd flag, in the order written.
    fn by_image(set: &DetectionSet) -> BTreeMap<String, Vec<(String, [f64; 4], bool)>> {
        let name = |sample: &DetectionSample| sample.image.file_name().unwrap().to_string_lossy().into_owned();
        let boxes = |sample: &DetectionSample| {
            let of = |t: &GroundTruth| (set.categories[t.category].name.clone(), t.bbox, t.iscrowd);
            sample.boxes.iter().map(of).collect()
        };
        set.samples.iter().map(|sample| (name(sample), boxes(sample))).collect()
    }

    #[test]
    fn every_box_survives_every_format_and_back_to_a_millionth_of_a_pixel() {
        let dir = tempfile::tempdir().unwrap();
        let source = three_images(&dir.path().join("source"));
        let expected = by_image(&source);
        let mut set = source;
        let formats = [DetectionFormat::Voc, DetectionFormat::Yolo, DetectionFormat::Jsonl, DetectionFormat::Coco];
        for (round, format) in formats.into_iter().cycle().take(8).enumerate() {
            let written = write_set(&set, format, &dir.path().join(round.to_string()), Part::Val).unwrap();
            assert_eq!((written.images, written.boxes, written.crowds_left_out), (3, 3, 0));
            set = read_detection_part(&written.data, Part::Val, None, false).unwrap();
            let read = by_image(&set);
            assert_eq!(read.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "{format:?}");
            for (image, boxes) in &expected {
                let names = |boxes: &[(String, [f64; 4], bool)]| boxes.iter().map(|b| b.0.clone()).collect::<Vec<_>>();
                assert_eq!(names(boxes), names(&read[image]), "{format:?} {image}");
                for (a, b) in boxes.iter().zip(&read[image]) {
                    let off = a.1.iter().zip(&b.1).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
                    assert!(off < 1e-6, "{format:?} {image}: {:?} read back as {:?}", a.1, b.1);
                }
            }
        }
    }

    #[test]
    fn crowds_are_voc_difficult_objects_and_yolo_leaves_them_out_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut set = three_images(&dir.path().join("source"));
        set.samples[0].boxes[1].iscrowd = true;
        let voc = write_set(&set, DetectionFormat::Voc, &dir.path().join("voc"), Part::Train).unwrap();
        let read = read_detection_part(&voc.data, Part::Train, None, false).unwrap();
        let crowds: Vec<bool> = read.samples[0].boxes.iter().map(|t| t.iscrowd).collect();
        assert_eq!(crowds, [false, true]);
        let yolo = write_set(&read, DetectionFormat::Yolo, &dir.path().join("yolo"), Part::Train).unwrap();
        assert_eq!((yolo.boxes, yolo.crowds_left_out), (2, 1));
        let read = read_detection_part(&yolo.data, Part::Train, None, false).unwrap();
        assert_eq!(read.samples[0].boxes.len(), 1);
    }

    #[test]
    fn a_second_write_into_the_same_folder_overwrites_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let set = three_images(&dir.path().join("source"));
        let out = dir.path().join("out");
        write_set(&set, DetectionFormat::Coco, &out, Part::Train).unwrap();
        let file = out.join("annotations/instances_train.json");
        let before = std::fs::read(&file).unwrap();
        let err = write_set(&set, DetectionFormat::Coco, &out, Part::Train).unwrap_err().to_string();
        assert_eq!(err, format!("{}: already exists: nothing is overwritten (choose another --out)", file.display()));
        assert_eq!(std::fs::read(&file).unwrap(), before);

        // Another image under a name already taken is refused; the same image is not.
        let voc = dir.path().join("voc");
        write_set(&set, DetectionFormat::Voc, &voc, Part::Train).unwrap();
        let mut other = three_images(&dir.path().join("other"));
        other.samples.truncate(1);
        let err = write_set(&other, DetectionFormat::Voc, &voc, Part::Val).unwrap_err().to_string();
        let taken = voc.join("JPEGImages/a.png");
        assert!(err.starts_with(&format!("{}: already exists and is not ", taken.display())), "{err}");
        let yolo = dir.path().join("yolo");
        write_set(&set, DetectionFormat::Yolo, &yolo, Part::Train).unwrap();
        write_set(&set, DetectionFormat::Yolo, &yolo, Part::Val).unwrap();
        let text = std::fs::read_to_string(yolo.join("data.yaml")).unwrap();
        assert!(text.contains("train: images/train") && text.contains("val: images/val"), "{text}");
    }
}
