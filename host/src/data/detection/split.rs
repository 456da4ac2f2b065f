//! `trainer data split`: a detection set divided into train, val and test by fractions, so
//! that every class has about its share of images in each part, and the images of one object
//! or scene (a group) stay in one part, since a view of an object seen in training and
//! another in evaluation overstates the detector.
//!
//! An image has several classes, so the division is Sechidis, Tsoumakas and Vlahavas'
//! iterative stratification (2011) over groups: the class with the fewest images left to
//! place is placed first, each of its groups into the part that still wants most of that
//! class (ties: the part that wants most images, then the first part), and every part's
//! wants shrink by what the group holds. Groups are taken in an order drawn from the seed,
//! so a seed gives one division and another seed another. Images of no class fill the parts
//! that want most images.

use super::write::{Written, write_set};
use super::{Category, DetectionFormat, DetectionSet, Part};
use crate::data::sampler::keyed;
use crate::files::FileError;
use regex::Regex;
use std::collections::HashMap;
use std::path::Path;

/// The parts, in the order of the fractions.
pub const PARTS: [Part; 3] = [Part::Train, Part::Val, Part::Test];

/// How images are grouped: by a field of the COCO image entries (`video_id`), or by what a
/// regular expression matches in the image's path (its first capture group, if it has one).
#[derive(Debug, Clone)]
pub enum Grouping {
    Field(String),
    Pattern(Regex),
}

impl Grouping {
    /// A plain name is a field, anything else a regular expression.
    pub fn parse(text: &str) -> Result<Grouping, String> {
        let is_name = text.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if is_name {
            return Ok(Grouping::Field(text.to_string()));
        }
        Regex::new(text).map(Grouping::Pattern).map_err(|err| format!("not a regular expression: {err}"))
    }
}

/// The group of each sample of `set` read from `data`; `None` for an image in no group,
/// which is a group of its own.
pub fn group_keys(set: &DetectionSet, data: &Path, grouping: &Grouping) -> Result<Vec<Option<String>>, FileError> {
    match grouping {
        Grouping::Pattern(pattern) => Ok(set
            .samples
            .iter()
            .map(|sample| {
                let path = sample.image.to_string_lossy();
                let captures = pattern.captures(&path)?;
                Some(captures.get(1).or_else(|| captures.get(0))?.as_str().to_string())
            })
            .collect()),
        Grouping::Field(field) => {
            if DetectionFormat::of(data) != Some(DetectionFormat::Coco) {
                let problem = format!(
                    "--group {field}: only COCO image entries have fields; group other sets by a regular \
                     expression over the image paths, such as '^(.*)_view\\d+'"
                );
                return Err(FileError::format(data, problem));
            }
            let bytes = std::fs::read(data).map_err(FileError::io(data))?;
            let coco: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|err| FileError::format(data, err.to_string()))?;
            let mut by_id = HashMap::new();
            for image in coco["images"].as_array().into_iter().flatten() {
                let (Some(id), Some(value)) = (image["id"].as_u64(), image.get(field)) else { continue };
                let key = value.as_str().map_or_else(|| value.to_string(), str::to_string);
                by_id.insert(id, key);
            }
            if by_id.is_empty() {
                return Err(FileError::format(data, format!("--group {field}: no image has a field `{field}`")));
            }
            Ok(set.samples.iter().map(|sample| by_id.get(&sample.image_id).cloned()).collect())
        }
    }
}

/// The part (an index into `fractions`) of each sample of `set`.
pub fn stratified_parts(set: &DetectionSet, groups: &[Option<String>], fractions: &[f64; 3], seed: u64) -> Vec<usize> {
    // Units: the samples of a group, or a sample of no group alone.
    let mut unit_of_key: HashMap<&str, usize> = HashMap::new();
    let mut units: Vec<Vec<usize>> = Vec::new();
    for (sample, key) in groups.iter().enumerate() {
        match key.as_deref() {
            Some(key) => {
                let unit = *unit_of_key.entry(key).or_insert_with(|| {
                    units.push(Vec::new());
                    units.len() - 1
                });
                units[unit].push(sample);
            }
            None => units.push(vec![sample]),
        }
    }
    let classes = set.categories.len();
    // Per unit, how many of its images show each class.
    let unit_counts: Vec<Vec<usize>> = units
        .iter()
        .map(|samples| {
            let mut counts = vec![0; classes];
            for &sample in samples {
                let mut present = vec![false; classes];
                for truth in &set.samples[sample].boxes {
                    present[truth.category] = true;
                }
                for (count, present) in counts.iter_mut().zip(present) {
                    *count += usize::from(present);
                }
            }
            counts
        })
        .collect();

    let total: Vec<usize> = (0..classes).map(|c| unit_counts.iter().map(|counts| counts[c]).sum()).collect();
    let mut placement = Placement {
        wanted: fractions.iter().map(|f| total.iter().map(|&t| f * t as f64).collect()).collect(),
        wanted_images: fractions.iter().map(|f| f * set.samples.len() as f64).collect(),
        left: total,
        part_of_unit: vec![None; units.len()],
    };
    let mut order: Vec<usize> = (0..units.len()).collect();
    order.sort_by_key(|&unit| keyed(seed, &[unit as u64]));
    // The class with the fewest images still to place, the first of equals.
    while let Some(class) = (0..classes).filter(|&c| placement.left[c] > 0).min_by_key(|&c| (placement.left[c], c)) {
        for &unit in &order {
            if placement.part_of_unit[unit].is_none() && unit_counts[unit][class] > 0 {
                let part = placement.most_wanting(Some(class));
                placement.place(unit, part, &unit_counts[unit], units[unit].len());
            }
        }
    }
    for &unit in &order {
        if placement.part_of_unit[unit].is_none() {
            let part = placement.most_wanting(None);
            placement.place(unit, part, &unit_counts[unit], units[unit].len());
        }
    }
    let mut parts = vec![0; set.samples.len()];
    for (unit, samples) in units.iter().enumerate() {
        for &sample in samples {
            parts[sample] = placement.part_of_unit[unit].expect("every unit is placed");
        }
    }
    parts
}

/// What each part still wants while groups are placed.
struct Placement {
    /// Per part, images of each class.
    wanted: Vec<Vec<f64>>,
    /// Per part, images.
    wanted_images: Vec<f64>,
    /// Per class, images not yet placed.
    left: Vec<usize>,
    part_of_unit: Vec<Option<usize>>,
}

impl Placement {
    /// The part wanting most of `class` (or of images), then most images, then the first.
    fn most_wanting(&self, class: Option<usize>) -> usize {
        let of_class = |part: usize| class.map_or(0.0, |class| self.wanted[part][class]);
        (0..self.wanted.len())
            .max_by(|&a, &b| {
                (of_class(a).total_cmp(&of_class(b)))
                    .then(self.wanted_images[a].total_cmp(&self.wanted_images[b]))
                    .then(b.cmp(&a))
            })
            .expect("parts to place into")
    }

    fn place(&mut self, unit: usize, part: usize, counts: &[usize], images: usize) {
        self.part_of_unit[unit] = Some(part);
        for (class, &count) in counts.iter().enumerate() {
            self.wanted[part][class] -= count as f64;
            self.left[class] -= count;
        }
        self.wanted_images[part] -= images as f64;
    }
}

/// `set`'s samples divided by `parts` (as [`stratified_parts`] gives them) into three sets.
pub fn divided(set: &DetectionSet, parts: &[usize]) -> [DetectionSet; 3] {
    let part = |index: usize| DetectionSet {
        samples: set.samples.iter().zip(parts).filter(|&(_, &p)| p == index).map(|(s, _)| s.clone()).collect(),
        categories: set.categories.clone(),
        skipped: Vec::new(),
    };
    [part(0), part(1), part(2)]
}

/// Writes the non-empty parts of `sets` under `out` in `format`.
pub fn write_parts(sets: &[DetectionSet; 3], format: DetectionFormat, out: &Path) -> Result<Vec<Written>, FileError> {
    let mut written = Vec::new();
    for (set, part) in sets.iter().zip(PARTS) {
        if !set.samples.is_empty() {
            written.push(write_set(set, format, out, part)?);
        }
    }
    Ok(written)
}

/// The per-class table of the three parts: images showing each class in each part, and the
/// part's share of them.
pub fn class_table(sets: &[DetectionSet; 3], categories: &[Category]) -> String {
    let images_with = |set: &DetectionSet, class: usize| {
        set.samples.iter().filter(|sample| sample.boxes.iter().any(|truth| truth.category == class)).count()
    };
    let mut rows: Vec<(String, [usize; 3])> = categories
        .iter()
        .enumerate()
        .map(|(class, category)| (category.name.clone(), [0, 1, 2].map(|part| images_with(&sets[part], class))))
        .collect();
    rows.push(("(all images)".into(), [0, 1, 2].map(|part| sets[part].samples.len())));
    let width = rows.iter().map(|(name, _)| name.chars().count()).max().unwrap_or(0);
    let mut text = format!("{:<width$}  {:>14}  {:>14}  {:>14}\n", "class", "train", "val", "test");
    for (name, counts) in rows {
        let all = counts.iter().sum::<usize>().max(1) as f64;
        let cells = counts.map(|count| format!("{count} ({:.0}%)", 100.0 * count as f64 / all));
        text.push_str(&format!("{name:<width$}  {:>14}  {:>14}  {:>14}\n", cells[0], cells[1], cells[2]));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::super::{DetectionSample, GroundTruth};
    use super::*;
    use crate::data::captioned::Origin;
    use crate::data::sampler::mix;

    /// 600 images of 8 classes, common to rare, 1 to 3 per image, seen in groups of 1 to 4
    /// views named `object{N}_view{M}.png`.
    fn grouped_set() -> DetectionSet {
        let mut samples = Vec::new();
        let (mut object, mut view) = (0, 0);
        for i in 0..600u64 {
            if view == 0 || mix(i ^ 0x5eed).is_multiple_of(3) {
                (object, view) = (object + 1, 0);
            }
            view += 1;
            // Classes of one object stay the same across its views.
            let classes: Vec<usize> =
                (0..8).filter(|&c| mix(object * 31 + c as u64) % 100 < [60, 40, 30, 20, 12, 8, 5, 3][c]).collect();
            let boxes = classes
                .iter()
                .map(|&category| GroundTruth {
                    annotation_id: 0,
                    category,
                    bbox: [0.0, 0.0, 4.0, 4.0],
                    area: 16.0,
                    iscrowd: false,
                })
                .collect();
            let image = PathBuf::from(format!("/data/object{object}_view{view}.png"));
            samples.push(DetectionSample {
                image: image.clone(),
                image_id: i + 1,
                width: 8,
                height: 8,
                boxes,
                origin: Origin::File(image),
            });
        }
        let categories = (0..8).map(|id| Category { id: id + 1, name: format!("class{id}") }).collect();
        DetectionSet { samples, categories, skipped: Vec::new() }
    }

    use std::path::PathBuf;

    #[test]
    fn every_class_keeps_its_share_in_each_part_and_no_group_is_split() {
        let set = grouped_set();
        let grouping = Grouping::parse(r"/(object\d+)_view").unwrap();
        let groups = group_keys(&set, Path::new("set.jsonl"), &grouping).unwrap();
        let fractions = [0.7, 0.15, 0.15];
        let parts = stratified_parts(&set, &groups, &fractions, 0);

        let mut part_of_group: HashMap<&str, usize> = HashMap::new();
        for (key, &part) in groups.iter().zip(&parts) {
            let key = key.as_deref().expect("every image is in a group");
            assert_eq!(*part_of_group.entry(key).or_insert(part), part, "group {key} is split");
        }
        let sets = divided(&set, &parts);
        for class in 0..8 {
            let with =
                |set: &DetectionSet| set.samples.iter().filter(|s| s.boxes.iter().any(|t| t.category == class)).count();
            let counts = sets.each_ref().map(with);
            let all: usize = counts.iter().sum();
            // Groups of up to 4 images place whole: a class of N images can miss its share
            // by a group or two.
            for (count, fraction) in counts.iter().zip(fractions) {
                let off = (*count as f64 - fraction * all as f64).abs();
                assert!(off <= 8.0, "class {class}: {counts:?} of {all} for {fractions:?}");
            }
        }
        let sizes = sets.each_ref().map(|set| set.samples.len());
        assert!(sizes.iter().zip(fractions).all(|(&n, f)| (n as f64 - f * 600.0).abs() <= 12.0), "{sizes:?}");

        assert_eq!(stratified_parts(&set, &groups, &fractions, 0), parts, "one seed, one division");
        assert_ne!(stratified_parts(&set, &groups, &fractions, 1), parts, "another seed, another division");
        let table = class_table(&sets, &set.categories);
        assert!(table.lines().next().unwrap().contains("train") && table.contains("(all images)"), "{table}");
    }

    #[test]
    fn a_name_is_a_field_only_coco_images_have_and_anything_else_a_pattern() {
        assert!(matches!(Grouping::parse("video_id"), Ok(Grouping::Field(name)) if name == "video_id"));
        assert!(matches!(Grouping::parse(r"^(\w+)_"), Ok(Grouping::Pattern(_))));
        assert!(Grouping::parse("(unclosed").unwrap_err().starts_with("not a regular expression"));
        let err = group_keys(&grouped_set(), Path::new("set.jsonl"), &Grouping::Field("video_id".into())).unwrap_err();
        assert!(
            err.to_string().starts_with("set.jsonl: --group video_id: only COCO image entries have fields"),
            "{err}"
        );
    }
}
