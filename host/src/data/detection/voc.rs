//! Pascal VOC annotations, as LabelImg and CVAT write them: an XML file per image with its
//! `filename`, `size` and an `object` per box (`name`, `difficult`, `bndbox` with `xmin`,
//! `ymin`, `xmax`, `ymax`). Three layouts are read:
//!
//! - a VOC folder: `Annotations/*.xml`, images in `JPEGImages/`;
//! - a split list of one, `ImageSets/Main/train.txt`, an image id per line;
//! - a folder of XML files beside their images, LabelImg's default.
//!
//! The corners are the box's edges in pixels, so its width is `xmax - xmin`, as LabelImg and
//! CVAT read and write them; the VOC devkit's 1-based inclusive pixels (`xmax - xmin + 1`)
//! would shift every box of these tools by a pixel. `difficult` objects become crowds (see
//! the parent module). Categories are the names used, sorted, numbered from 1.

use super::{DetectionSample, DetectionSet, NamedEntry, checked_box, image_size, leave_out, not_found, numbered};
use crate::data::captioned::Origin;
use crate::files::FileError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The folder of annotation files in a VOC folder.
const ANNOTATIONS: &str = "Annotations";
/// The folder of images in a VOC folder.
const IMAGES: &str = "JPEGImages";

/// Whether `folder` holds VOC annotations: an `Annotations/` folder, or XML files of its own.
pub fn is_voc_folder(folder: &Path) -> bool {
    folder.join(ANNOTATIONS).is_dir() || xml_files(folder).is_ok_and(|files| !files.is_empty())
}

/// Whether `path` is a VOC split list, a file in `ImageSets/Main/`.
pub fn is_split_list(path: &Path) -> bool {
    let mut folders = path.ancestors().skip(1).filter_map(|folder| folder.file_name());
    folders.next().is_some_and(|name| name == "Main") && folders.next().is_some_and(|name| name == "ImageSets")
}

/// The XML files directly in `folder`, sorted by name.
fn xml_files(folder: &Path) -> Result<Vec<PathBuf>, FileError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(folder).map_err(FileError::io(folder))? {
        let file = entry.map_err(FileError::io(folder))?.path();
        if file.extension().is_some_and(|e| e.eq_ignore_ascii_case("xml")) && file.is_file() {
            files.push(file);
        }
    }
    files.sort();
    Ok(files)
}

/// The annotation files of the set at `path` and the folder its images are in by default.
fn layout(path: &Path) -> Result<(Vec<PathBuf>, PathBuf), FileError> {
    if is_split_list(path) {
        let root = path.ancestors().nth(3).unwrap_or(Path::new("."));
        let list = std::fs::read_to_string(path).map_err(FileError::io(path))?;
        // A class's list (`aeroplane_train.txt`) has a second column, 1, 0 or -1.
        let ids = list.lines().filter_map(|line| line.split_whitespace().next());
        let files = ids.map(|id| root.join(ANNOTATIONS).join(format!("{id}.xml"))).collect();
        return Ok((files, root.join(IMAGES)));
    }
    if path.join(ANNOTATIONS).is_dir() {
        return Ok((xml_files(&path.join(ANNOTATIONS))?, path.join(IMAGES)));
    }
    Ok((xml_files(path)?, path.to_path_buf()))
}

/// The parts of a VOC annotation file the trainer uses; numbers are read as text, so that a
/// bad one is named with its object.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename = "annotation")]
struct Annotation {
    #[serde(skip_serializing_if = "Option::is_none")]
    folder: Option<String>,
    filename: Option<String>,
    size: Option<Size>,
    #[serde(rename = "object", default)]
    objects: Vec<Object>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Size {
    width: Option<String>,
    height: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    depth: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Object {
    name: Option<String>,
    difficult: Option<String>,
    bndbox: Option<Corners>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Corners {
    xmin: Option<String>,
    ymin: Option<String>,
    xmax: Option<String>,
    ymax: Option<String>,
}

/// Reads the VOC set at `path`; `images` replaces the folder its images are in.
pub(super) fn read(path: &Path, images: Option<&Path>, skip_bad: bool) -> Result<DetectionSet, FileError> {
    let (files, image_dir) = layout(path)?;
    let image_dir = images.map_or(image_dir, Path::to_path_buf);
    let mut entries = Vec::with_capacity(files.len());
    let mut skipped = Vec::new();
    for (at, file) in files.iter().enumerate() {
        match entry(file, &image_dir, at as u64 + 1) {
            Ok(entry) => entries.push(entry),
            Err(problem) => leave_out(problem, skip_bad, &mut skipped)?,
        }
    }
    Ok(numbered(entries, None, skipped))
}

fn entry(file: &Path, image_dir: &Path, image_id: u64) -> Result<NamedEntry, FileError> {
    let text = std::fs::read_to_string(file).map_err(FileError::io(file))?;
    let annotation: Annotation = quick_xml::de::from_str(&text)
        .map_err(|err| FileError::format(file, format!("not a Pascal VOC annotation: {err}")))?;
    let problem = |problem: String| FileError::format(file, problem);
    let name = annotation.filename.as_deref().map(str::trim).filter(|name| !name.is_empty());
    let image = image_dir.join(name.ok_or_else(|| problem("no <filename>, so no image".into()))?);
    let origin = Origin::File(file.to_path_buf());
    if !image.is_file() {
        return Err(not_found(&image, &origin));
    }
    // Some tools write no size, or 0 for one they did not know.
    let declared = annotation.size.as_ref().map(|size| (size.width.as_deref(), size.height.as_deref()));
    let (width, height) = match declared {
        Some((Some(width), Some(height))) => {
            let number = |field: &str, text: &str| {
                parse_number(text)
                    .map(|v| v as u32)
                    .map_err(|_| problem(format!("<size><{field}> {text:?} is not a number")))
            };
            match (number("width", width)?, number("height", height)?) {
                (0, _) | (_, 0) => image_size(&image, &origin)?,
                size => size,
            }
        }
        _ => image_size(&image, &origin)?,
    };

    let (mut boxes, mut labels, mut crowd) = (Vec::new(), Vec::new(), Vec::new());
    for (i, object) in annotation.objects.iter().enumerate() {
        let label = object.name.as_deref().map(str::trim).unwrap_or_default();
        let at_object = |what: String| problem(format!("object {} (`{label}`): {what}", i + 1));
        if label.is_empty() {
            return Err(at_object("no <name>".into()));
        }
        let corners = object.bndbox.as_ref().ok_or_else(|| at_object("no <bndbox>".into()))?;
        let corner = |field: &str, value: &Option<String>| {
            let text = value.as_deref().ok_or_else(|| at_object(format!("no <{field}> in <bndbox>")))?;
            parse_number(text).map_err(|_| at_object(format!("<{field}> {text:?} is not a number")))
        };
        let (xmin, ymin) = (corner("xmin", &corners.xmin)?, corner("ymin", &corners.ymin)?);
        let (xmax, ymax) = (corner("xmax", &corners.xmax)?, corner("ymax", &corners.ymax)?);
        boxes.push(checked_box(&[xmin, ymin, xmax - xmin, ymax - ymin], width, height).map_err(at_object)?);
        labels.push(label.to_string());
        crowd.push(matches!(object.difficult.as_deref().map(str::trim), Some("1" | "true")));
    }
    Ok(NamedEntry { image, image_id, width, height, boxes, labels, crowd, origin })
}

fn parse_number(text: &str) -> Result<f64, std::num::ParseFloatError> {
    text.trim().parse::<f64>()
}

/// `sample` as a VOC annotation file naming its image `filename`; crowds are `difficult`.
pub(super) fn annotation_xml(
    sample: &DetectionSample,
    filename: &str,
    categories: &[super::Category],
) -> Result<String, quick_xml::SeError> {
    let corner = |value: f64| Some(value.to_string());
    let objects = sample.boxes.iter().map(|truth| {
        let [x, y, w, h] = truth.bbox;
        Object {
            name: Some(categories[truth.category].name.clone()),
            difficult: Some(u8::from(truth.iscrowd).to_string()),
            bndbox: Some(Corners { xmin: corner(x), ymin: corner(y), xmax: corner(x + w), ymax: corner(y + h) }),
        }
    });
    let annotation = Annotation {
        folder: Some(IMAGES.into()),
        filename: Some(filename.into()),
        size: Some(Size {
            width: Some(sample.width.to_string()),
            height: Some(sample.height.to_string()),
            depth: Some("3".into()),
        }),
        objects: objects.collect(),
    };
    let mut xml = String::new();
    let mut serializer = quick_xml::se::Serializer::new(&mut xml);
    serializer.indent(' ', 2);
    annotation.serialize(serializer)?;
    xml.push('\n');
    Ok(xml)
}

/// Where [`super::write`] puts a VOC set under `out`: annotation files, images, split lists.
pub(super) fn folders(out: &Path) -> [PathBuf; 3] {
    [out.join(ANNOTATIONS), out.join(IMAGES), out.join("ImageSets/Main")]
}

#[cfg(test)]
mod tests {
    use super::super::read_detection_set;
    use super::super::tests::{png, write};

    /// A LabelImg file: its `path` and `source` unread, corners as LabelImg writes them.
    fn labelimg(filename: &str, size: (u32, u32), objects: &str) -> String {
        format!(
            "<annotation>\n\t<folder>images</folder>\n\t<filename>{filename}</filename>\n\t<path>/home/a/{filename}</path>\n\
             \t<source><database>Unknown</database></source>\n\t<size><width>{}</width><height>{}</height><depth>3</depth></size>\n\
             \t<segmented>0</segmented>\n{objects}</annotation>\n",
            size.0, size.1
        )
    }

    fn object(name: &str, difficult: u8, corners: [&str; 4]) -> String {
        let [xmin, ymin, xmax, ymax] = corners;
        format!(
            "\t<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{difficult}</difficult>\
             <bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>\n"
        )
    }

    #[test]
    fn a_voc_folder_gives_boxes_from_corners_difficult_objects_as_crowds_and_sorted_names() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("VOC2007");
        png(&root.join("JPEGImages/b.jpg.png"), 40, 30);
        png(&root.join("JPEGImages/a.png"), 64, 48);
        let objects = object("zebra", 0, ["10", "20", "30.5", "44"]) + &object("cat", 1, ["0", "0", "64", "48"]);
        write(&root.join("Annotations/a.xml"), &labelimg("a.png", (64, 48), &objects));
        // Size 0: the tool did not know it, so it is read from the image.
        write(&root.join("Annotations/b.xml"), &labelimg("b.jpg.png", (0, 0), &object("cat", 0, ["1", "1", "3", "3"])));
        write(&root.join("ImageSets/Main/val.txt"), "b\n");

        let set = read_detection_set(&root, None, false).unwrap();
        let names: Vec<_> = set.categories.iter().map(|c| (c.id, c.name.as_str())).collect();
        assert_eq!(names, [(1, "cat"), (2, "zebra")]);
        let [a, b] = &set.samples[..] else { panic!("{:?}", set.samples) };
        assert_eq!((a.image.clone(), a.width, a.height), (root.join("JPEGImages/a.png"), 64, 48));
        assert_eq!(a.origin.to_string(), root.join("Annotations/a.xml").display().to_string());
        let boxes: Vec<_> = a.boxes.iter().map(|t| (t.category, t.bbox, t.area, t.iscrowd)).collect();
        assert_eq!(boxes, [(1, [10.0, 20.0, 20.5, 24.0], 492.0, false), (0, [0.0, 0.0, 64.0, 48.0], 3072.0, true)]);
        assert_eq!((b.width, b.height, b.boxes[0].bbox), (40, 30, [1.0, 1.0, 2.0, 2.0]));

        let listed = read_detection_set(&root.join("ImageSets/Main/val.txt"), None, false).unwrap();
        assert_eq!(listed.samples.len(), 1);
        assert_eq!(listed.samples[0].image, root.join("JPEGImages/b.jpg.png"));
    }

    #[test]
    fn labelimgs_xml_beside_the_images_is_read_and_a_bad_object_is_named_with_its_file() {
        let dir = tempfile::tempdir().unwrap();
        png(&dir.path().join("a.png"), 64, 48);
        let objects = object("dog", 0, ["10", "20", "30", "40"]) + &object("cat", 0, ["10", "x", "30", "40"]);
        let xml = write(&dir.path().join("a.xml"), &labelimg("a.png", (64, 48), &objects));
        let err = read_detection_set(dir.path(), None, false).unwrap_err().to_string();
        assert_eq!(err, format!("{}: object 2 (`cat`): <ymin> \"x\" is not a number", xml.display()));

        let outside = object("dog", 0, ["10", "20", "70", "40"]);
        write(&xml, &labelimg("a.png", (64, 48), &outside));
        let err = read_detection_set(dir.path(), None, false).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("{}: object 1 (`dog`): box [10, 20, 60, 20] lies outside the 64x48 image", xml.display())
        );
        write(&xml, &labelimg("gone.png", (64, 48), ""));
        let err = read_detection_set(dir.path(), None, false).unwrap_err().to_string();
        assert!(err.contains("gone.png: image file not found (declared in ") && err.ends_with("a.xml)"), "{err}");
    }
}
