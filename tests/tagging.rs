//! Multi-label tagging: the metrics against scikit-learn on fixed predictions, and the
//! tagger trained from `trainer train --task tagging` on the mosaic default (three losses of
//! very different magnitudes, each named to the policies), with its bad inputs.

mod common;

use common::{assert_one_line_error, assert_success, policy, read_json, read_jsonl, train_cpu, write_mosaics};
use std::path::{Path, PathBuf};
use trainer::eval::{TAGGING_METRICS, tagging_scores};

#[test]
fn map_and_precision_recall_match_scikit_learn() {
    let fixture = read_json(&common::workspace().join("tests/fixtures/multilabel/expected.json"));
    let rows = |key: &str| {
        fixture[key].as_array().unwrap().iter().map(|row| row.as_array().unwrap().clone()).collect::<Vec<_>>()
    };
    let scores: Vec<f64> = rows("scores").iter().flatten().map(|v| v.as_f64().unwrap()).collect();
    let targets: Vec<bool> = rows("targets").iter().flatten().map(|v| v.as_i64().unwrap() == 1).collect();
    let tags = fixture["targets"][0].as_array().unwrap().len();
    let got = tagging_scores(&scores, &targets, &vec![fixture["threshold"].as_f64().unwrap(); tags]);
    for (name, value) in TAGGING_METRICS.iter().zip(got.values()) {
        let expected = fixture[*name].as_f64().unwrap();
        assert!((value - expected).abs() < 1e-12, "{name}: {value}, scikit-learn {expected}");
    }
}

fn constant(lr: &str) -> Vec<String> {
    vec![format!("{}:lr={lr}", policy("constant").display())]
}

#[test]
fn the_tagger_trains_on_the_mosaic_default_well_above_the_constant_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let warmup = vec![format!("{}:warmup_steps=20", policy("cosine_warmup").display())];
    let extra = ["--task", "tagging", "--lr", "2e-3", "--steps", "400", "--batch-size", "64", "--eval-every", "400"];
    assert_success(&train_cpu(dir.path(), &warmup, &extra));
    let metrics = read_jsonl(&dir.path().join("metrics.jsonl"));
    let losses = metrics[0]["losses"].as_object().unwrap();
    let names: Vec<&str> = losses.keys().map(String::as_str).collect();
    assert_eq!(names, ["align", "distill", "tag"]);
    // The magnitudes this task is about: the tag loss runs in the hundreds, the others far lower.
    let tag = metrics[0]["losses"]["tag"].as_f64().unwrap();
    assert!(tag > 50.0 * metrics[0]["losses"]["align"].as_f64().unwrap().max(1.0), "{losses:?}");
    // A constant score ranks nothing: its mAP is the tags' mean frequency, 1 - 0.9^4 = 0.34
    // for four tiles of ten balanced classes.
    let eval = read_json(&dir.path().join("eval.json"));
    let map = eval["mAP"].as_f64().unwrap();
    assert!(map > 0.5, "test mAP {map}: {eval}");
    assert_eq!(eval["images"], 2500);
    let shares: f64 = ["grad_share_tag", "grad_share_align", "grad_share_distill"]
        .iter()
        .map(|name| eval[*name].as_f64().unwrap())
        .sum();
    assert!((shares - 1.0).abs() < 1e-9, "gradient shares add up to one: {eval}");
}

#[test]
fn a_loss_switched_off_is_neither_computed_nor_shown_to_policies() {
    let dir = tempfile::tempdir().unwrap();
    let balance = format!("{}:mode=fixed,tag=1", policy("loss_balance").display());
    let policies = [constant("1e-3"), vec![balance]].concat();
    let extra = ["--task", "tagging", "--losses", "tag,distill", "--steps", "2", "--batch-size", "16"];
    assert_success(&train_cpu(dir.path(), &policies, &extra));
    let metrics = read_jsonl(&dir.path().join("metrics.jsonl"));
    let names: Vec<&String> = metrics[1]["losses"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["distill", "tag"]);
    let decisions = read_jsonl(&dir.path().join("decisions.jsonl"));
    let weights = decisions.iter().find(|d| d["policy"] == "loss_balance").unwrap()["loss_weights"].clone();
    assert_eq!(weights.as_object().unwrap().len(), 2, "{weights}");
}

#[test]
fn a_checkpoint_with_another_tag_vocabulary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    assert_success(&train_cpu(&first, &constant("1e-3"), &["--task", "tagging", "--steps", "1", "--batch-size", "8"]));
    let config_path = first.join("final/config.json");
    let mut config = read_json(&config_path);
    config["tags"][3] = "gown".into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let model = first.join("final");
    let extra = ["--task", "tagging", "--model", model.to_str().unwrap(), "--steps", "1"];
    let output = train_cpu(&dir.path().join("second"), &constant("1e-3"), &extra);
    assert_one_line_error(&output, 1, &["--model", "tags differ", "`gown` vs `dress`"]);
}

/// A tagging manifest of 40 mosaics in `dir`, after the lines `bad` (numbered from 1), and
/// the vocabulary file of the ten classes.
fn tagged_manifest(dir: &Path, bad: &[&str]) -> (PathBuf, PathBuf) {
    let mut lines: Vec<String> = bad.iter().map(|line| line.to_string()).collect();
    for (index, mosaic) in write_mosaics(dir, 0, 40).into_iter().enumerate() {
        // Every other line has no captions: the tags make one.
        let captions = if index % 2 == 0 { mosaic.captions.to_vec() } else { Vec::new() };
        lines.push(
            serde_json::json!({"image": mosaic.file_name, "tags": mosaic.tags, "captions": captions}).to_string(),
        );
    }
    let manifest = dir.join("tagged.jsonl");
    std::fs::write(&manifest, lines.join("\n") + "\n").unwrap();
    let vocabulary = dir.join("tags.txt");
    std::fs::write(
        &vocabulary,
        format!("# Fashion-MNIST classes\n{}\n", trainer::data::fashion_mnist::CLASS_NAMES.join("\n")),
    )
    .unwrap();
    (manifest, vocabulary)
}

fn train_manifest(dir: &Path, manifest: &Path, vocabulary: &Path) -> std::process::Output {
    let extra = ["--task", "tagging", "--data", manifest.to_str().unwrap(), "--tags", vocabulary.to_str().unwrap()];
    train_cpu(&dir.join("run"), &constant("1e-3"), &[&extra[..], &["--steps", "3", "--batch-size", "8"]].concat())
}

#[test]
fn a_tagged_manifest_trains_and_is_evaluated_on_its_held_out_images() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, vocabulary) = tagged_manifest(dir.path(), &[]);
    assert_success(&train_manifest(dir.path(), &manifest, &vocabulary));
    let eval = read_json(&dir.path().join("run/eval.json"));
    assert_eq!(eval["images"], 2, "5% of 40 images, at least two");
    assert!(eval["mAP"].as_f64().unwrap() > 0.0, "{eval}");
}

#[test]
fn an_unknown_tag_or_an_empty_tag_list_is_named_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let unknown = r#"{"image": "000001.png", "tags": ["bag", "handbag"]}"#;
    let (manifest, vocabulary) = tagged_manifest(dir.path(), &[unknown]);
    let output = train_manifest(dir.path(), &manifest, &vocabulary);
    assert_one_line_error(&output, 1, &["tagged.jsonl line 1", "unknown tag `handbag`", "tags.txt"]);

    let (manifest, vocabulary) = tagged_manifest(dir.path(), &[r#"{"image": "000001.png", "tags": []}"#]);
    let output = train_manifest(dir.path(), &manifest, &vocabulary);
    assert_one_line_error(&output, 1, &["000001.png", "empty tag list", "tagged.jsonl line 1"]);

    let output = train_cpu(
        &dir.path().join("run"),
        &constant("1e-3"),
        &["--task", "tagging", "--data", manifest.to_str().unwrap()],
    );
    assert_one_line_error(&output, 1, &["--tags FILE"]);
}

#[path = "../benches/loss_balance.rs"]
mod loss_balance;

#[test]
fn the_loss_balancing_benchmark_runs_at_a_small_size() {
    let dir = tempfile::tempdir().unwrap();
    let rows = loss_balance::compare(6, 16, &[0], dir.path());
    loss_balance::print_table(&rows);
    assert_eq!(rows.len(), 4);
    for row in &rows {
        assert!((0.0..=1.0).contains(&row.mean()) && row.spread() == 0.0, "{row:?}");
        assert!((row.shares.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{row:?}");
    }
    let (median, low, high) = loss_balance::measurement_cost(4, 16, 1, dir.path());
    assert!(median > 0.0 && low <= median && median <= high, "{median} {low} {high}");
    let png = std::fs::read(dir.path().join("loss_curves.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG of the loss curves");
}

#[test]
fn unseen_tags_are_left_out_of_training_and_evaluated_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--task", "tagging", "--unseen-tags", "bag,sandal", "--steps", "4", "--batch-size", "16"];
    assert_success(&train_cpu(dir.path(), &constant("1e-3"), &extra));
    let tags = read_json(&dir.path().join("final/config.json"))["tags"].clone();
    let tags: Vec<&str> = tags.as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(tags.len(), 8);
    assert!(!tags.contains(&"bag") && !tags.contains(&"sandal"), "{tags:?}");
    let unseen = read_json(&dir.path().join("eval.json"))["unseen_mAP"].as_f64().expect("eval.json has unseen_mAP");
    assert!((0.0..=1.0).contains(&unseen));

    let output =
        train_cpu(&dir.path().join("bad"), &constant("1e-3"), &["--task", "tagging", "--unseen-tags", "handbag"]);
    assert_one_line_error(&output, 1, &["--unseen-tags", "`handbag`"]);
}
