//! `trainer data check`: what is wrong with a detection set, found before a run rather than
//! in it. Errors are what training refuses (each image the reading leaves out, with its
//! first problem: boxes outside the image or of no size, unknown categories, missing
//! images) and what it would only meet mid-run (an image that does not decode, or whose
//! size is not the one its annotations were drawn on). Warnings are what trains but is
//! likely a labelling slip: boxes under a few pixels, two boxes of one class on one object
//! (IoU above 0.95), images without boxes, classes without boxes. The report also counts
//! each class and sizes the boxes, as a table and two histograms.

use super::{DetectionSet, GroundTruth, Part, read_detection_part};
use crate::files::FileError;
use crate::report::BarChart;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The thresholds of the warnings.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// A box narrower or lower than this many pixels is too small to be an object.
    pub min_box: f64,
    /// Two boxes of one class overlapping more than this are one object labelled twice.
    pub duplicate_iou: f64,
    /// Threads decoding images.
    pub workers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found, named by the check that found it.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub check: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassCount {
    pub class: String,
    pub id: u64,
    pub boxes: usize,
    pub images: usize,
}

/// Counts of boxes per bin: bin `i` holds values from `edges[i]` up to `edges[i + 1]`.
#[derive(Debug, Clone, Serialize)]
pub struct Histogram {
    pub edges: Vec<f64>,
    pub counts: Vec<usize>,
}

/// What `check.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub data: PathBuf,
    pub images: usize,
    pub boxes: usize,
    pub errors: usize,
    pub warnings: usize,
    pub findings: Vec<Finding>,
    pub classes: Vec<ClassCount>,
    /// Boxes of the most frequent class over those of the rarest class that has any.
    pub imbalance_ratio: Option<f64>,
    /// Box sizes as the square root of their area, in pixels.
    pub box_sizes: Histogram,
    /// Width over height.
    pub aspect_ratios: Histogram,
}

/// Bin edges of the box sizes, in pixels (COCO's small and large are under 32 and over 96).
const SIZE_EDGES: [f64; 11] = [0.0, 4.0, 8.0, 16.0, 32.0, 64.0, 96.0, 128.0, 256.0, 512.0, f64::INFINITY];
const ASPECT_EDGES: [f64; 9] = [0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, f64::INFINITY];

/// Checks `part` of the detection set at `path`. A problem of the file as a whole (one the
/// reading stops at even when skipping) is returned as the error.
pub fn check_set(
    path: &Path,
    part: Part,
    images: Option<&Path>,
    options: &CheckOptions,
) -> Result<CheckReport, FileError> {
    let set = read_detection_part(path, part, images, true)?;
    let mut findings: Vec<Finding> =
        set.skipped.iter().map(|line| finding(Severity::Error, "refused", line.clone())).collect();
    findings.extend(decoding(&set, options.workers));
    findings.extend(labelling(&set, options));

    let mut classes: Vec<ClassCount> = set
        .categories
        .iter()
        .map(|category| ClassCount { class: category.name.clone(), id: category.id, boxes: 0, images: 0 })
        .collect();
    for sample in &set.samples {
        let mut present = vec![false; classes.len()];
        for truth in &sample.boxes {
            classes[truth.category].boxes += 1;
            present[truth.category] = true;
        }
        for (count, present) in classes.iter_mut().zip(present) {
            count.images += usize::from(present);
        }
    }
    for class in classes.iter().filter(|class| class.boxes == 0) {
        let message = format!("{}: class `{}` (id {}) has no boxes", path.display(), class.class, class.id);
        findings.push(finding(Severity::Warning, "class_without_boxes", message));
    }
    let counts = classes.iter().map(|class| class.boxes).filter(|&boxes| boxes > 0);
    let imbalance_ratio = counts.clone().max().zip(counts.min()).map(|(most, least)| most as f64 / least as f64);

    let boxes: Vec<&GroundTruth> = set.samples.iter().flat_map(|sample| &sample.boxes).collect();
    let box_sizes = histogram(&SIZE_EDGES, boxes.iter().map(|truth| (truth.bbox[2] * truth.bbox[3]).sqrt()));
    let aspect_ratios = histogram(&ASPECT_EDGES, boxes.iter().map(|truth| truth.bbox[2] / truth.bbox[3]));
    let count = |severity| findings.iter().filter(|finding| finding.severity == severity).count();
    Ok(CheckReport {
        data: path.to_path_buf(),
        images: set.samples.len(),
        boxes: boxes.len(),
        errors: count(Severity::Error),
        warnings: count(Severity::Warning),
        findings,
        classes,
        imbalance_ratio,
        box_sizes,
        aspect_ratios,
    })
}

fn finding(severity: Severity, check: &'static str, message: String) -> Finding {
    Finding { severity, check, message }
}

/// Decodes every image, on `workers` threads: one that does not decode, or not to the size
/// its annotations declare, is an error.
fn decoding(set: &DetectionSet, workers: usize) -> Vec<Finding> {
    let chunk = set.samples.len().div_ceil(workers.max(1)).max(1);
    std::thread::scope(|scope| {
        let threads: Vec<_> = set
            .samples
            .chunks(chunk)
            .map(|samples| {
                scope.spawn(move || {
                    let mut findings = Vec::new();
                    for sample in samples {
                        let at = format!("{}: (declared in {})", sample.image.display(), sample.origin);
                        match image::ImageReader::open(&sample.image).and_then(|r| r.with_guessed_format()) {
                            Err(err) => {
                                findings.push(finding(Severity::Error, "unreadable_image", format!("{at} {err}")))
                            }
                            Ok(reader) => match reader.decode() {
                                Err(err) => {
                                    let message = format!("{at} does not decode: {err}");
                                    findings.push(finding(Severity::Error, "unreadable_image", message));
                                }
                                Ok(image) if (image.width(), image.height()) != (sample.width, sample.height) => {
                                    let message = format!(
                                        "{at} is {}x{}, but its annotations are for {}x{}",
                                        image.width(),
                                        image.height(),
                                        sample.width,
                                        sample.height
                                    );
                                    findings.push(finding(Severity::Error, "image_size", message));
                                }
                                Ok(_) => {}
                            },
                        }
                    }
                    findings
                })
            })
            .collect();
        threads.into_iter().flat_map(|thread| thread.join().expect("decoding threads do not panic")).collect()
    })
}

/// The warnings about boxes and images that read well but look mislabelled.
fn labelling(set: &DetectionSet, options: &CheckOptions) -> Vec<Finding> {
    let mut findings = Vec::new();
    for sample in &set.samples {
        let at = format!("{} (declared in {})", sample.image.display(), sample.origin);
        if sample.boxes.is_empty() {
            findings.push(finding(Severity::Warning, "image_without_boxes", format!("{at}: no boxes")));
        }
        let name = |truth: &GroundTruth| &set.categories[truth.category].name;
        for (i, truth) in sample.boxes.iter().enumerate() {
            let [_, _, w, h] = truth.bbox;
            if w < options.min_box || h < options.min_box {
                let message = format!(
                    "{at}: annotation {} (`{}`) is {w}x{h} pixels, under {min}x{min}",
                    truth.annotation_id,
                    name(truth),
                    min = options.min_box
                );
                findings.push(finding(Severity::Warning, "small_box", message));
            }
            for other in &sample.boxes[i + 1..] {
                let overlap = iou(&truth.bbox, &other.bbox);
                if other.category == truth.category && overlap > options.duplicate_iou {
                    let message = format!(
                        "{at}: annotations {} and {} (`{}`) overlap with IoU {overlap:.3}: one object labelled twice?",
                        truth.annotation_id,
                        other.annotation_id,
                        name(truth)
                    );
                    findings.push(finding(Severity::Warning, "duplicate_box", message));
                }
            }
        }
    }
    findings
}

/// Intersection over union of two `[x, y, width, height]` boxes.
fn iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let width = (a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0]);
    let height = (a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1]);
    let intersection = width.max(0.0) * height.max(0.0);
    intersection / (a[2] * a[3] + b[2] * b[3] - intersection)
}

fn histogram(edges: &[f64], values: impl Iterator<Item = f64>) -> Histogram {
    let mut counts = vec![0; edges.len() - 1];
    for value in values {
        let bin = edges[1..].iter().position(|&upper| value < upper).unwrap_or(counts.len() - 1);
        counts[bin] += 1;
    }
    Histogram { edges: edges.to_vec(), counts }
}

/// Writes `check.json`, `box_sizes.png` and `aspect_ratios.png` into `out`; returns the files.
pub fn write_report(report: &CheckReport, out: &Path) -> Result<Vec<PathBuf>, FileError> {
    std::fs::create_dir_all(out).map_err(FileError::io(out))?;
    let json = out.join("check.json");
    let text = serde_json::to_string_pretty(report).expect("check reports serialize") + "\n";
    crate::files::write_atomically(&json, text.as_bytes())?;
    let mut written = vec![json];
    let charts = [
        ("box_sizes.png", "box sizes (square root of the area, pixels)", &report.box_sizes),
        ("aspect_ratios.png", "box aspect ratios (width / height)", &report.aspect_ratios),
    ];
    for (file, title, histogram) in charts {
        let bars = histogram
            .edges
            .windows(2)
            .zip(&histogram.counts)
            .map(|(edge, &count)| {
                let label =
                    if edge[1].is_finite() { format!("{} to {}", edge[0], edge[1]) } else { format!("{}+", edge[0]) };
                (label, count as f64)
            })
            .collect();
        let path = out.join(file);
        BarChart { title: title.into(), x_label: "boxes".into(), bars }
            .write_png(&path)
            .map_err(|err| FileError::format(&path, err.to_string()))?;
        written.push(path);
    }
    Ok(written)
}

/// The report for a person: the findings, then the class table.
pub fn summary(report: &CheckReport) -> String {
    let mut text = String::new();
    for finding in &report.findings {
        let severity = if finding.severity == Severity::Error { "error" } else { "warning" };
        text.push_str(&format!("{severity} [{}]: {}\n", finding.check, finding.message));
    }
    let width = report.classes.iter().map(|class| class.class.chars().count()).max().unwrap_or(0).max(5);
    text.push_str(&format!("{:<width$}  {:>8}  {:>8}\n", "class", "boxes", "images"));
    for class in &report.classes {
        text.push_str(&format!("{:<width$}  {:>8}  {:>8}\n", class.class, class.boxes, class.images));
    }
    let ratio = report.imbalance_ratio.map_or_else(|| "-".into(), |ratio| format!("{ratio:.1}"));
    text.push_str(&format!(
        "{}: {} images, {} boxes, {} classes (imbalance {ratio}x); {} errors, {} warnings\n",
        report.data.display(),
        report.images,
        report.boxes,
        report.classes.len(),
        report.errors,
        report.warnings
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::super::tests::{png, write};
    use super::*;

    /// A COCO set with one planted defect per image but the first, and a class without
    /// boxes; returns its path.
    fn planted(dir: &Path) -> PathBuf {
        let images = dir.join("images");
        for name in ["good", "outside", "flat", "unknown", "tiny", "twice", "empty"] {
            png(&images.join(format!("{name}.png")), 64, 48);
        }
        png(&images.join("resized.png"), 32, 24);
        write(&images.join("garbage.png"), "not a PNG");
        let names = ["good", "outside", "flat", "unknown", "missing", "garbage", "resized", "tiny", "twice", "empty"];
        let entries: Vec<String> = (1..)
            .zip(names)
            .map(|(id, name)| format!(r#"{{"id": {id}, "file_name": "{name}.png", "width": 64, "height": 48}}"#))
            .collect();
        let boxes = [
            (1, 1, [10.0, 10.0, 20.0, 20.0]),
            (1, 2, [12.0, 12.0, 20.0, 20.0]),
            (2, 1, [60.0, 10.0, 20.0, 20.0]),
            (3, 1, [5.0, 5.0, 0.0, 4.0]),
            (4, 99, [5.0, 5.0, 4.0, 4.0]),
            (5, 1, [5.0, 5.0, 4.0, 4.0]),
            (6, 1, [5.0, 5.0, 4.0, 4.0]),
            (7, 1, [5.0, 5.0, 4.0, 4.0]),
            (8, 2, [5.0, 5.0, 2.0, 2.5]),
            (9, 1, [10.0, 10.0, 20.0, 20.0]),
            (9, 1, [10.0, 10.0, 20.0, 20.2]),
            (9, 2, [10.0, 10.0, 20.0, 20.0]),
        ];
        let annotations: Vec<String> = (1..)
            .zip(boxes)
            .map(|(id, (image, category, bbox))| {
                format!(r#"{{"id": {id}, "image_id": {image}, "category_id": {category}, "bbox": {bbox:?}}}"#)
            })
            .collect();
        let categories = r#"[{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "owl"}]"#;
        let coco = format!(
            r#"{{"images": [{}], "annotations": [{}], "categories": {categories}}}"#,
            entries.join(", "),
            annotations.join(", ")
        );
        write(&dir.join("instances.json"), &coco)
    }

    #[test]
    fn each_planted_defect_is_found_once_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = planted(dir.path());
        let options = CheckOptions { min_box: 3.0, duplicate_iou: 0.95, workers: 2 };
        let report = check_set(&path, Part::Train, Some(&dir.path().join("images")), &options).unwrap();
        let mut found: Vec<(&str, Severity, String)> = report
            .findings
            .iter()
            .map(|finding| {
                let names =
                    ["outside", "flat", "unknown", "missing", "garbage", "resized", "tiny", "twice", "empty", "owl"];
                let named = names.iter().filter(|name| {
                    finding.message.contains(&format!("{name}.png")) || finding.message.contains(&format!("`{name}`"))
                });
                let named: Vec<&&str> = named.collect();
                assert_eq!(named.len(), 1, "{finding:?}");
                (*named[0], finding.severity, finding.check.to_string())
            })
            .collect();
        found.sort();
        let expected = [
            ("empty", Severity::Warning, "image_without_boxes"),
            ("flat", Severity::Error, "refused"),
            ("garbage", Severity::Error, "unreadable_image"),
            ("missing", Severity::Error, "refused"),
            ("outside", Severity::Error, "refused"),
            ("owl", Severity::Warning, "class_without_boxes"),
            ("resized", Severity::Error, "image_size"),
            ("tiny", Severity::Warning, "small_box"),
            ("twice", Severity::Warning, "duplicate_box"),
            ("unknown", Severity::Error, "refused"),
        ];
        let expected: Vec<_> =
            expected.iter().map(|&(name, severity, check)| (name, severity, check.to_string())).collect();
        assert_eq!(found, expected);
        assert_eq!((report.errors, report.warnings), (6, 4));

        // The images kept: good (2 boxes), garbage, resized, tiny, twice (3), empty.
        assert_eq!((report.images, report.boxes), (6, 8));
        let counts: Vec<_> = report.classes.iter().map(|c| (c.class.as_str(), c.boxes, c.images)).collect();
        assert_eq!(counts, [("cat", 5, 4), ("dog", 3, 3), ("owl", 0, 0)]);
        assert_eq!(report.imbalance_ratio, Some(5.0 / 3.0));
        assert_eq!(report.box_sizes.counts, [1, 2, 0, 5, 0, 0, 0, 0, 0, 0]);

        let written = write_report(&report, &dir.path().join("check")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&written[0]).unwrap()).unwrap();
        assert_eq!(json["errors"], 6);
        assert!(written[1..].iter().all(|png| image::open(png).is_ok()));
    }
}
