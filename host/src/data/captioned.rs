//! Image-caption data sets: COCO captions (`captions_*.json` and an image folder), JSONL
//! manifests (`{"image": ..., "captions": [...], "tags": [...]}` per line; tags for
//! tagging runs), and recognize-anything's finetune JSON (a list of `{"image_path": ...,
//! "caption": [...], "union_label_id": [...], "parse_label_id": [[...], ...]}`, tags as ids
//! into a tag list that the file does not carry). Reading one gives the list of
//! samples, each remembering where it was declared, so an image that fails to decode later
//! is reported with its manifest line or COCO image id.
//!
//! Missing image files are found here, before training starts, rather than hours into a run.
//! With `skip_bad` a missing image, a malformed manifest line or a sample without captions
//! is left out and counted instead of stopping the run.

use crate::files::FileError;
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// One image, its captions and its tags.
#[derive(Debug, Clone)]
pub struct CaptionedSample {
    pub image: PathBuf,
    pub captions: Vec<String>,
    pub tags: Vec<String>,
    /// Tags given as positions in a tag list (recognize-anything's finetune JSON), checked
    /// against the list by the task that has it.
    pub tag_ids: Vec<i64>,
    /// Each caption's own tags as such positions (the finetune JSON's `parse_label_id`):
    /// RAM's tag encoder reads them with the caption. Empty when the data gives none.
    pub caption_tag_ids: Vec<Vec<i64>>,
    pub origin: Origin,
}

/// What every sample must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    Captions,
    Tags,
    /// Only the image: a model is applied to it, not trained on it.
    Images,
}

/// Where a sample was declared.
#[derive(Debug, Clone)]
pub enum Origin {
    ManifestLine {
        manifest: PathBuf,
        line: usize,
    },
    CocoImage {
        annotations: PathBuf,
        id: i64,
    },
    /// Entry `index` (from 0) of a JSON list.
    ListEntry {
        file: PathBuf,
        index: usize,
    },
    /// A file of its own: a Pascal VOC XML file, a YOLO label file.
    File(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::ManifestLine { manifest, line } => write!(f, "{} line {line}", manifest.display()),
            Origin::CocoImage { annotations, id } => write!(f, "{} image id {id}", annotations.display()),
            Origin::ListEntry { file, index } => write!(f, "{} entry {index}", file.display()),
            Origin::File(file) => write!(f, "{}", file.display()),
        }
    }
}

/// The samples of a data set, and what was left out of it.
#[derive(Debug, Clone, Default)]
pub struct CaptionedData {
    pub samples: Vec<CaptionedSample>,
    /// One line per sample left out under `skip_bad`, saying what and why.
    pub skipped: Vec<String>,
}

/// The kinds of data set a path can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// A folder of Fashion-MNIST IDX files.
    FashionMnist,
    /// A COCO captions file (`.json`).
    Coco,
    /// A JSONL manifest (`.jsonl`).
    Manifest,
    /// recognize-anything's finetune JSON: a `.json` holding a list.
    RamFinetune,
    /// WebDataset shards: a `.tar` pattern or a `.txt` list of shards.
    Shards,
}

impl DataKind {
    pub fn of(path: &Path) -> Result<DataKind, FileError> {
        if super::webdataset::is_shards(path) {
            return Ok(DataKind::Shards);
        }
        if path.is_dir() {
            return Ok(DataKind::FashionMnist);
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") if starts_a_list(path)? => Ok(DataKind::RamFinetune),
            Some("json") => Ok(DataKind::Coco),
            Some("jsonl") => Ok(DataKind::Manifest),
            _ if !path.exists() => Err(FileError::format(path, "no such file or folder")),
            _ => Err(FileError::format(
                path,
                "not a data set: expected a Fashion-MNIST folder, a COCO captions .json, a .jsonl manifest or \
                 WebDataset shards (.tar, a {first..last}.tar pattern or a .txt list)",
            )),
        }
    }
}

/// Whether the JSON file at `path` holds a list (its first character past white space is
/// `[`), as recognize-anything's finetune files do, rather than COCO's object.
fn starts_a_list(path: &Path) -> Result<bool, FileError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(FileError::io(path))?;
    for byte in std::io::BufReader::new(file).bytes() {
        let byte = byte.map_err(FileError::io(path))?;
        if !byte.is_ascii_whitespace() {
            return Ok(byte == b'[');
        }
    }
    Ok(false)
}

/// Reads the data set at `path`; `images` is the folder image paths are relative to (by
/// default the manifest's folder, or for COCO the sibling folder named after the split,
/// `annotations/captions_train2017.json` -> `train2017/`).
pub fn load(path: &Path, images: Option<&Path>, skip_bad: bool, needs: Needs) -> Result<CaptionedData, FileError> {
    let mut data = match DataKind::of(path)? {
        DataKind::Coco => {
            read_coco(path, images.map(Path::to_path_buf).unwrap_or_else(|| coco_image_dir(path, "captions_")))?
        }
        DataKind::Manifest => {
            let base = images.map(Path::to_path_buf).unwrap_or_else(|| parent(path));
            read_manifest(path, &base, skip_bad)?
        }
        DataKind::RamFinetune => {
            let base = images.map(Path::to_path_buf).unwrap_or_else(|| parent(path));
            read_ram_finetune(path, &base, skip_bad)?
        }
        DataKind::FashionMnist => {
            return Err(FileError::format(path, "a Fashion-MNIST folder has no captions to read here"));
        }
        DataKind::Shards => return Err(FileError::format(path, "WebDataset shards are read as a stream, not here")),
    };
    let mut kept = Vec::with_capacity(data.samples.len());
    for sample in data.samples {
        let problem = if needs == Needs::Captions && sample.captions.is_empty() {
            Some("has no captions")
        } else if needs == Needs::Tags && sample.tags.is_empty() && sample.tag_ids.is_empty() {
            Some("has an empty tag list")
        } else if !sample.image.is_file() {
            Some("image file not found")
        } else {
            None
        };
        match problem {
            None => kept.push(sample),
            Some(problem) if skip_bad => {
                data.skipped.push(format!("{}: {problem} ({})", sample.image.display(), sample.origin))
            }
            Some(problem) => {
                return Err(FileError::format(&sample.image, format!("{problem} (declared in {})", sample.origin)));
            }
        }
    }
    data.samples = kept;
    if data.samples.is_empty() {
        return Err(FileError::format(path, "no usable samples"));
    }
    Ok(data)
}

/// The non-blank lines of a JSONL manifest, each with its line number (from 1).
pub(super) fn manifest_lines(
    path: &Path,
) -> Result<impl Iterator<Item = Result<(usize, String), FileError>> + '_, FileError> {
    let file = std::fs::File::open(path).map_err(FileError::io(path))?;
    let lines = std::io::BufReader::new(file).lines().enumerate();
    Ok(lines.filter_map(move |(index, line)| match line {
        Ok(line) if line.trim().is_empty() => None,
        Ok(line) => Some(Ok((index + 1, line))),
        Err(err) => Some(Err(FileError::io(path)(err))),
    }))
}

pub(super) fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Where COCO keeps the images of `annotations/<prefix><split>.json`: the folder `<split>/`
/// beside `annotations/`, or inside it; the file's own folder when the name does not say.
pub(super) fn coco_image_dir(annotations: &Path, prefix: &str) -> PathBuf {
    let split = annotations.file_stem().and_then(|s| s.to_str()).and_then(|s| s.strip_prefix(prefix));
    let folder = parent(annotations);
    match split {
        Some(split) => {
            let beside = parent(&folder).join(split);
            if beside.is_dir() { beside } else { folder.join(split) }
        }
        None => folder,
    }
}

#[derive(Deserialize)]
struct ManifestLine {
    image: String,
    #[serde(default)]
    captions: Vec<String>,
    caption: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

fn read_manifest(path: &Path, base: &Path, skip_bad: bool) -> Result<CaptionedData, FileError> {
    let mut data = CaptionedData::default();
    for line in manifest_lines(path)? {
        let (line_number, line) = line?;
        match serde_json::from_str::<ManifestLine>(&line) {
            Ok(entry) => {
                let mut captions = entry.captions;
                captions.extend(entry.caption);
                data.samples.push(CaptionedSample {
                    image: base.join(entry.image),
                    captions,
                    tags: entry.tags,
                    tag_ids: Vec::new(),
                    caption_tag_ids: Vec::new(),
                    origin: Origin::ManifestLine { manifest: path.to_path_buf(), line: line_number },
                });
            }
            Err(err) if skip_bad => data.skipped.push(format!("{} line {line_number}: {err}", path.display())),
            Err(err) => return Err(FileError::format(path, format!("line {line_number}: {err}"))),
        }
    }
    Ok(data)
}

/// An entry of recognize-anything's finetune JSON.
#[derive(Deserialize)]
struct RamFinetuneEntry {
    image_path: String,
    #[serde(default)]
    caption: Vec<String>,
    /// The image's tags; without them, the union of its captions' parsed tags.
    union_label_id: Option<Vec<i64>>,
    #[serde(default)]
    parse_label_id: Vec<Vec<i64>>,
}

/// Reads recognize-anything's finetune JSON: each entry's captions cleaned as its
/// `pre_caption(caption, 30)` cleans them, its tags the ids of `union_label_id`.
fn read_ram_finetune(path: &Path, base: &Path, skip_bad: bool) -> Result<CaptionedData, FileError> {
    let file = std::fs::File::open(path).map_err(FileError::io(path))?;
    let entries: Vec<serde_json::Value> = serde_json::from_reader(std::io::BufReader::new(file))
        .map_err(|err| FileError::format(path, format!("not a JSON list: {err}")))?;
    let mut data = CaptionedData::default();
    for (index, entry) in entries.into_iter().enumerate() {
        let origin = Origin::ListEntry { file: path.to_path_buf(), index };
        let entry = match serde_json::from_value::<RamFinetuneEntry>(entry) {
            Ok(entry) => entry,
            Err(err) if skip_bad => {
                data.skipped.push(format!("{origin}: {err}"));
                continue;
            }
            Err(err) => return Err(FileError::format(path, format!("entry {index}: {err}"))),
        };
        if !entry.parse_label_id.is_empty() && entry.parse_label_id.len() != entry.caption.len() {
            let problem = format!(
                "{} captions but {} lists in `parse_label_id` (one per caption)",
                entry.caption.len(),
                entry.parse_label_id.len()
            );
            if skip_bad {
                data.skipped.push(format!("{origin}: {problem}"));
                continue;
            }
            return Err(FileError::format(path, format!("entry {index}: {problem}")));
        }
        let mut tag_ids = entry.union_label_id.unwrap_or_else(|| entry.parse_label_id.concat());
        tag_ids.sort_unstable();
        tag_ids.dedup();
        data.samples.push(CaptionedSample {
            image: base.join(entry.image_path),
            captions: entry.caption.iter().map(|caption| ram_caption(caption, 30)).collect(),
            tags: Vec::new(),
            tag_ids,
            caption_tag_ids: entry.parse_label_id,
            origin,
        });
    }
    Ok(data)
}

/// A caption as recognize-anything's `pre_caption` cleans it: lower case, `.!"()*#:;~` made
/// spaces, runs of white space made one space, at most `max_words` words.
pub fn ram_caption(caption: &str, max_words: usize) -> String {
    let lowered = caption.to_lowercase();
    let spaced: String = lowered.chars().map(|c| if ".!\"()*#:;~".contains(c) { ' ' } else { c }).collect();
    let mut collapsed = String::with_capacity(spaced.len());
    let mut run = String::new();
    for c in spaced.chars() {
        if c.is_whitespace() {
            run.push(c);
            continue;
        }
        // A single white-space character stays as it is; two or more become one space.
        collapsed.push_str(if run.chars().count() >= 2 { " " } else { run.as_str() });
        run.clear();
        collapsed.push(c);
    }
    collapsed.push_str(if run.chars().count() >= 2 { " " } else { run.as_str() });
    let trimmed = collapsed.trim_end_matches('\n').trim_matches(' ');
    let words: Vec<&str> = trimmed.split(' ').collect();
    if words.len() > max_words { words[..max_words].join(" ") } else { trimmed.to_string() }
}

#[derive(Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    annotations: Vec<CocoCaption>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: i64,
    file_name: String,
}

#[derive(Deserialize)]
struct CocoCaption {
    image_id: i64,
    caption: String,
}

fn read_coco(path: &Path, image_dir: PathBuf) -> Result<CaptionedData, FileError> {
    let file = std::fs::File::open(path).map_err(FileError::io(path))?;
    let coco: CocoFile = serde_json::from_reader(std::io::BufReader::new(file))
        .map_err(|err| FileError::format(path, format!("not a COCO captions file: {err}")))?;
    let position: HashMap<i64, usize> = coco.images.iter().enumerate().map(|(i, image)| (image.id, i)).collect();
    let mut captions: Vec<Vec<String>> = vec![Vec::new(); coco.images.len()];
    for annotation in coco.annotations {
        let Some(&at) = position.get(&annotation.image_id) else {
            let problem = format!("a caption refers to image id {}, which `images` does not list", annotation.image_id);
            return Err(FileError::format(path, problem));
        };
        captions[at].push(annotation.caption);
    }
    let samples = coco
        .images
        .into_iter()
        .zip(captions)
        .map(|(image, captions)| CaptionedSample {
            image: image_dir.join(&image.file_name),
            captions,
            tags: Vec::new(),
            tag_ids: Vec::new(),
            caption_tag_ids: Vec::new(),
            origin: Origin::CocoImage { annotations: path.to_path_buf(), id: image.id },
        })
        .collect();
    Ok(CaptionedData { samples, skipped: Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_are_cleaned_as_recognize_anything_cleans_them() {
        assert_eq!(ram_caption("A Man (riding) a horse.  Fast!", 30), "a man riding a horse fast");
        assert_eq!(ram_caption("one two three four", 2), "one two");
        assert_eq!(ram_caption("tab\there", 30), "tab\there");
    }

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }

    #[test]
    fn coco_captions_are_grouped_by_image_and_found_beside_the_annotations() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("val2017/1.jpg"));
        touch(&dir.path().join("val2017/2.jpg"));
        let annotations = dir.path().join("annotations/captions_val2017.json");
        std::fs::create_dir_all(annotations.parent().unwrap()).unwrap();
        let json = r#"{"images": [{"id": 7, "file_name": "1.jpg"}, {"id": 9, "file_name": "2.jpg"}],
            "annotations": [{"image_id": 9, "caption": "b"}, {"image_id": 7, "caption": "a"},
                            {"image_id": 9, "caption": "c"}]}"#;
        std::fs::write(&annotations, json).unwrap();
        let data = load(&annotations, None, false, Needs::Captions).unwrap();
        assert_eq!(data.samples.len(), 2);
        assert_eq!(data.samples[1].image, dir.path().join("val2017/2.jpg"));
        assert_eq!(data.samples[1].captions, ["b", "c"]);
        assert_eq!(data.samples[0].origin.to_string(), format!("{} image id 7", annotations.display()));
    }

    #[test]
    fn manifest_errors_name_the_line_and_skipping_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("a.png"));
        let manifest = dir.path().join("data.jsonl");
        let text = "{\"image\": \"a.png\", \"captions\": [\"x\"]}\n\n{\"image\": \"a.png\", \"captions\": [\"x\"\n\
                    {\"image\": \"gone.png\", \"caption\": \"y\"}\n{\"image\": \"a.png\", \"captions\": []}\n";
        std::fs::write(&manifest, text).unwrap();
        let err = load(&manifest, None, false, Needs::Captions).unwrap_err().to_string();
        assert!(err.starts_with(&manifest.display().to_string()) && err.contains("line 3"), "{err}");

        let data = load(&manifest, None, true, Needs::Captions).unwrap();
        assert_eq!(data.samples.len(), 1);
        assert_eq!(data.skipped.len(), 3, "{:?}", data.skipped);
        assert!(data.skipped.iter().any(|s| s.contains("gone.png") && s.contains("line 4")), "{:?}", data.skipped);
    }

    #[test]
    fn a_missing_image_names_the_image_and_where_it_was_declared() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("data.jsonl");
        std::fs::write(&manifest, "{\"image\": \"gone.png\", \"captions\": [\"x\"]}\n").unwrap();
        let err = load(&manifest, None, false, Needs::Captions).unwrap_err().to_string();
        assert!(err.contains("gone.png") && err.contains("not found") && err.contains("data.jsonl line 1"), "{err}");
    }
}
