//! YOLO data sets, as Ultralytics and LabelImg write them: a text file per image with a line
//! `class cx cy w h` per box, centre and size as fractions of the image, and the class names.
//! Two layouts are read:
//!
//! - a `data.yaml` (Ultralytics): `path` (the root, relative to the file's folder; by default
//!   that folder), `train`, `val` and `test` (each a folder of images, a `.txt` list of
//!   images, or a list of either), and `names` (a list, or a map from class number to name);
//! - a folder with `images/` and `labels/` and its classes in `classes.txt` (LabelImg's YOLO
//!   mode), `labels/classes.txt` or `obj.names`, or a `data.yaml` of its own.
//!
//! An image's label file is found as Ultralytics finds it: the last `/images/` of its path
//! becomes `/labels/` and its extension `.txt` (beside the image where the path has no
//! `images` folder). An image without a label file has no boxes. A line of more than four
//! numbers after the class is a polygon (Ultralytics' segments), read as its bounding box.
//!
//! Category ids are the class numbers plus 1, COCO's first id, so that a set converted to
//! COCO keeps the classes' order.

use super::{Category, DetectionSample, DetectionSet, NamedEntry, Part, checked_box, image_size, leave_out, numbered};
use crate::data::captioned::Origin;
use crate::files::FileError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use yaml_rust2::{Yaml, YamlEmitter, YamlLoader};

/// Files of these extensions under an images folder are images.
const IMAGE_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff"];
/// The data file a YOLO folder written by the trainer holds.
pub const DATA_FILE: &str = "data.yaml";
/// Where LabelImg and Darknet keep class names, one per line.
const CLASS_FILES: [&str; 3] = ["classes.txt", "labels/classes.txt", "obj.names"];

/// Whether `folder` is a YOLO folder: `images/` and `labels/` side by side.
pub fn is_yolo_folder(folder: &Path) -> bool {
    folder.join("images").is_dir() && folder.join("labels").is_dir()
}

/// What a data file or folder declares: the class names and the images of each part.
struct Declared {
    /// The file the class names come from.
    names_file: PathBuf,
    names: Vec<String>,
    parts: HashMap<&'static str, Vec<PathBuf>>,
}

/// Whether the set at `path` has images for `part`.
pub fn has_part(path: &Path, part: Part) -> bool {
    declared(path).is_ok_and(|declared| declared.parts.contains_key(part.name()))
}

fn declared(path: &Path) -> Result<Declared, FileError> {
    if path.is_dir() {
        if path.join(DATA_FILE).is_file() {
            return data_file(&path.join(DATA_FILE));
        }
        let names_file = CLASS_FILES.iter().map(|name| path.join(name)).find(|file| file.is_file());
        let names_file = names_file.ok_or_else(|| {
            FileError::format(path, format!("no class names: expected {} or {DATA_FILE}", CLASS_FILES.join(", ")))
        })?;
        let text = std::fs::read_to_string(&names_file).map_err(FileError::io(&names_file))?;
        let names = text.lines().map(str::trim).filter(|name| !name.is_empty()).map(String::from).collect();
        let images = images_under(&path.join("images"))?;
        return Ok(Declared { names_file, names, parts: HashMap::from([(Part::Train.name(), images)]) });
    }
    data_file(path)
}

fn data_file(path: &Path) -> Result<Declared, FileError> {
    let text = std::fs::read_to_string(path).map_err(FileError::io(path))?;
    let problem = |problem: String| FileError::format(path, problem);
    let documents = YamlLoader::load_from_str(&text).map_err(|err| problem(format!("not YAML: {err}")))?;
    let document = documents.into_iter().next().ok_or_else(|| problem("empty".into()))?;
    let folder = path.parent().unwrap_or(Path::new("."));
    let root = match &document["path"] {
        Yaml::String(root) => folder.join(root),
        Yaml::BadValue | Yaml::Null => folder.to_path_buf(),
        other => return Err(problem(format!("`path` is a folder name, not {other:?}"))),
    };
    let names: Vec<String> = match &document["names"] {
        Yaml::Array(names) => {
            names.iter().enumerate().map(|(i, name)| class_name(name, i)).collect::<Result<_, _>>().map_err(problem)?
        }
        Yaml::Hash(names) => {
            let mut numbered = Vec::with_capacity(names.len());
            for (number, name) in names {
                let number = number.as_i64().ok_or_else(|| problem(format!("`names` key {number:?} is no number")))?;
                numbered.push((number, class_name(name, number as usize).map_err(problem)?));
            }
            numbered.sort_by_key(|(number, _)| *number);
            if numbered.iter().enumerate().any(|(i, (number, _))| *number != i as i64) {
                return Err(problem("`names` must number the classes 0, 1, 2, ... without gaps".into()));
            }
            numbered.into_iter().map(|(_, name)| name).collect()
        }
        _ => return Err(problem("no `names`: the class names, a list or a map from class number to name".into())),
    };
    if let Some(count) = document["nc"].as_i64().filter(|&count| count != names.len() as i64) {
        return Err(problem(format!("`nc` is {count} but `names` has {} classes", names.len())));
    }

    let mut parts = HashMap::new();
    for part in [Part::Train, Part::Val, Part::Test] {
        let sources = match &document[part.name()] {
            Yaml::String(source) => vec![source.as_str()],
            Yaml::Array(sources) => sources.iter().filter_map(Yaml::as_str).collect(),
            _ => continue,
        };
        let mut images = Vec::new();
        for source in sources {
            images.extend(images_of(&root.join(source))?);
        }
        parts.insert(part.name(), images);
    }
    Ok(Declared { names_file: path.to_path_buf(), names, parts })
}

fn class_name(name: &Yaml, number: usize) -> Result<String, String> {
    let name = match name {
        Yaml::String(name) => name.trim().to_string(),
        Yaml::Integer(name) => name.to_string(),
        other => return Err(format!("class {number}'s name is {other:?}, not text")),
    };
    if name.is_empty() {
        return Err(format!("class {number} has an empty name"));
    }
    Ok(name)
}

/// The images a `train`/`val`/`test` entry names: a folder's, or a list file's lines.
fn images_of(source: &Path) -> Result<Vec<PathBuf>, FileError> {
    if source.is_dir() {
        return images_under(source);
    }
    if source.extension().is_some_and(|e| e == "txt") && source.is_file() {
        let list = std::fs::read_to_string(source).map_err(FileError::io(source))?;
        let folder = source.parent().unwrap_or(Path::new("."));
        return Ok(list.lines().map(str::trim).filter(|line| !line.is_empty()).map(|line| folder.join(line)).collect());
    }
    Err(FileError::format(source, "no such folder of images or .txt list of images"))
}

/// The image files under `folder`, at any depth, sorted.
fn images_under(folder: &Path) -> Result<Vec<PathBuf>, FileError> {
    let mut images = Vec::new();
    let mut folders = vec![folder.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).map_err(FileError::io(&folder))? {
            let path = entry.map_err(FileError::io(&folder))?.path();
            if path.is_dir() {
                folders.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|extension| IMAGE_EXTENSIONS.iter().any(|known| extension.eq_ignore_ascii_case(known)))
            {
                images.push(path);
            }
        }
    }
    images.sort();
    Ok(images)
}

/// The label file of `image`, as Ultralytics' `img2label_paths` finds it.
pub fn label_file(image: &Path) -> PathBuf {
    let text = image.to_string_lossy();
    let separator = std::path::MAIN_SEPARATOR;
    let images = format!("{separator}images{separator}");
    let relocated = match text.rfind(&images) {
        Some(at) => format!("{}{separator}labels{separator}{}", &text[..at], &text[at + images.len()..]),
        None => text.into_owned(),
    };
    PathBuf::from(relocated).with_extension("txt")
}

/// Reads `part` of the YOLO set at `path`, a data file or a folder.
pub(super) fn read(path: &Path, part: Part, skip_bad: bool) -> Result<DetectionSet, FileError> {
    let declared = declared(path)?;
    let Some(images) = declared.parts.get(part.name()) else {
        return Err(FileError::format(path, format!("no `{}` images", part.name())));
    };
    if let Some(pair) = declared.names.iter().enumerate().find_map(|(i, name)| {
        declared.names[..i].iter().position(|earlier| earlier == name).map(|earlier| (earlier, i))
    }) {
        let problem = format!("classes {} and {} share the name {:?}", pair.0, pair.1, declared.names[pair.1]);
        return Err(FileError::format(&declared.names_file, problem));
    }
    let mut entries = Vec::with_capacity(images.len());
    let mut skipped = Vec::new();
    for (at, image) in images.iter().enumerate() {
        match entry(image, at as u64 + 1, &declared) {
            Ok(entry) => entries.push(entry),
            Err(problem) => leave_out(problem, skip_bad, &mut skipped)?,
        }
    }
    let categories = (1..).zip(&declared.names).map(|(id, name)| Category { id, name: name.clone() }).collect();
    Ok(numbered(entries, Some(categories), skipped))
}

fn entry(image: &Path, image_id: u64, declared: &Declared) -> Result<NamedEntry, FileError> {
    let labels_file = label_file(image);
    let origin = Origin::File(labels_file.clone());
    if !image.is_file() {
        let listed =
            FileError::format(image, format!("image file not found (listed in {})", declared.names_file.display()));
        return Err(listed);
    }
    let (width, height) = image_size(image, &origin)?;
    let text = match std::fs::read_to_string(&labels_file) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(err) => return Err(FileError::io(&labels_file)(err)),
    };
    let (mut boxes, mut labels) = (Vec::new(), Vec::new());
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at_line = |problem: String| FileError::format(&labels_file, format!("line {}: {problem}", number + 1));
        let values: Vec<f64> = line
            .split_whitespace()
            .map(|value| value.parse::<f64>().map_err(|_| at_line(format!("{value:?} is not a number"))))
            .collect::<Result<_, _>>()?;
        let (&class, coordinates) = values.split_first().unwrap_or((&f64::NAN, &[]));
        let name = (class.fract() == 0.0 && class >= 0.0).then(|| declared.names.get(class as usize)).flatten();
        let name = name.ok_or_else(|| {
            let names = declared.names_file.display();
            at_line(format!("class {class} is not one of the {} classes of {names}", declared.names.len()))
        })?;
        let [x, y, w, h] = normalised_box(coordinates).map_err(&at_line)?;
        let (image_width, image_height) = (f64::from(width), f64::from(height));
        let bbox = [x * image_width, y * image_height, w * image_width, h * image_height];
        boxes.push(checked_box(&bbox, width, height).map_err(at_line)?);
        labels.push(name.clone());
    }
    let crowd = vec![false; boxes.len()];
    Ok(NamedEntry { image: image.to_path_buf(), image_id, width, height, boxes, labels, crowd, origin })
}

/// `[x, y, width, height]` as fractions of the image, from a line's numbers after the class:
/// a centre and a size, or a polygon's corners.
fn normalised_box(coordinates: &[f64]) -> Result<[f64; 4], String> {
    match coordinates {
        &[cx, cy, w, h] => Ok([cx - w / 2.0, cy - h / 2.0, w, h]),
        polygon if polygon.len() >= 6 && polygon.len() % 2 == 0 => {
            let (xs, ys) = (polygon.iter().step_by(2), polygon.iter().skip(1).step_by(2));
            let (left, right) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, r), &x| (l.min(x), r.max(x)));
            let (top, bottom) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(t, b), &y| (t.min(y), b.max(y)));
            Ok([left, top, right - left, bottom - top])
        }
        other => Err(format!(
            "a line is `class cx cy width height` (or a polygon, `class x1 y1 x2 y2 x3 y3 ...`), not {} numbers",
            other.len() + 1
        )),
    }
}

/// The label file of `sample`, a line per box; crowds, which YOLO has no flag for, are left
/// out and counted in the second value.
pub(super) fn label_lines(sample: &DetectionSample) -> (String, usize) {
    let (width, height) = (f64::from(sample.width), f64::from(sample.height));
    let mut lines = String::new();
    let mut crowds = 0;
    for truth in &sample.boxes {
        if truth.iscrowd {
            crowds += 1;
            continue;
        }
        let [x, y, w, h] = truth.bbox;
        let (cx, cy) = ((x + w / 2.0) / width, (y + h / 2.0) / height);
        lines.push_str(&format!("{} {cx} {cy} {} {}\n", truth.category, w / width, h / height));
    }
    (lines, crowds)
}

/// `out/data.yaml` with `part`'s images at `images` (relative to `out`) and the class names,
/// keeping the other parts an earlier write declared; refuses classes other than those.
pub(super) fn write_data_file(out: &Path, part: Part, images: &str, names: &[String]) -> Result<(), FileError> {
    let path = out.join(DATA_FILE);
    let mut document = yaml_rust2::yaml::Hash::new();
    if path.is_file() {
        let earlier = declared(&path)?;
        if earlier.names != names {
            let problem =
                format!("holds other classes ({}) than these ({})", earlier.names.join(", "), names.join(", "));
            return Err(FileError::format(&path, problem));
        }
        let text = std::fs::read_to_string(&path).map_err(FileError::io(&path))?;
        if let Some(Yaml::Hash(hash)) = YamlLoader::load_from_str(&text).ok().and_then(|d| d.into_iter().next()) {
            document = hash;
        }
    }
    document.insert(Yaml::String("path".into()), Yaml::String(".".into()));
    document.insert(Yaml::String(part.name().into()), Yaml::String(images.into()));
    let numbered = names.iter().enumerate().map(|(i, name)| (Yaml::Integer(i as i64), Yaml::String(name.clone())));
    document.insert(Yaml::String("names".into()), Yaml::Hash(numbered.collect()));
    let mut text = String::new();
    YamlEmitter::new(&mut text)
        .dump(&Yaml::Hash(document))
        .map_err(|err| FileError::format(&path, format!("cannot write YAML: {err}")))?;
    text.push('\n');
    crate::files::write_atomically(&path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{png, write};
    use super::super::{read_detection_part, read_detection_set};
    use super::*;

    #[test]
    fn a_data_yaml_gives_each_part_with_its_classes_in_order_and_polygons_as_boxes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("set");
        png(&root.join("images/train/a.png"), 100, 50);
        png(&root.join("images/train/b.png"), 10, 10);
        png(&root.join("images/val/c.png"), 20, 20);
        write(&root.join("labels/train/a.txt"), "1 0.5 0.5 0.2 0.4\n\n0 0.1 0.2 0.3 0.2 0.2 0.6\n");
        // b.png has no label file: an image without boxes.
        write(&root.join("labels/val/c.txt"), "2 0.25 0.25 0.5 0.5\n");
        let data = write(
            &dir.path().join("data.yaml"),
            "path: set\ntrain: images/train\nval: [images/val]\nnames:\n  0: zebra\n  1: cat\n  2: dog\n",
        );
        let set = read_detection_set(&data, None, false).unwrap();
        let names: Vec<_> = set.categories.iter().map(|c| (c.id, c.name.as_str())).collect();
        assert_eq!(names, [(1, "zebra"), (2, "cat"), (3, "dog")]);
        let [a, b] = &set.samples[..] else { panic!("{:?}", set.samples) };
        let boxes: Vec<_> = a.boxes.iter().map(|t| (t.category, t.bbox.map(|v| (v * 1e9).round() / 1e9))).collect();
        assert_eq!(boxes, [(1, [40.0, 15.0, 20.0, 20.0]), (0, [10.0, 10.0, 20.0, 20.0])]);
        assert!(b.boxes.is_empty());
        assert_eq!(a.origin.to_string(), root.join("labels/train/a.txt").display().to_string());
        assert!(has_part(&data, Part::Val) && !has_part(&data, Part::Test));
        let val = read_detection_part(&data, Part::Val, None, false).unwrap();
        assert_eq!(val.samples[0].boxes[0].bbox, [0.0, 0.0, 10.0, 10.0]);
        let err = read_detection_part(&data, Part::Test, None, false).unwrap_err().to_string();
        assert_eq!(err, format!("{}: no `test` images", data.display()));
    }

    #[test]
    fn a_labelimg_folder_reads_classes_txt_and_a_bad_line_is_named_with_its_label_file() {
        let dir = tempfile::tempdir().unwrap();
        png(&dir.path().join("images/a.png"), 10, 10);
        write(&dir.path().join("classes.txt"), "cat\ndog\n");
        let labels = write(&dir.path().join("labels/a.txt"), "0 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.2 0.2\n");
        assert!(is_yolo_folder(dir.path()));
        let err = read_detection_set(dir.path(), None, false).unwrap_err().to_string();
        let classes = dir.path().join("classes.txt");
        assert_eq!(
            err,
            format!("{}: line 2: class 2 is not one of the 2 classes of {}", labels.display(), classes.display())
        );
        write(&labels, "0 0.5 0.5 0.2\n");
        let err = read_detection_set(dir.path(), None, false).unwrap_err().to_string();
        assert!(err.ends_with("not 4 numbers"), "{err}");
        write(&labels, "1 1.1 0.5 0.2 0.2\n");
        let err = read_detection_set(dir.path(), None, false).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}: line 1: box", labels.display())) && err.contains("outside"), "{err}");
    }
}
