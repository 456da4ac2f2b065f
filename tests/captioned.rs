//! Image-caption data from files: COCO captions and JSONL manifests of real images, decoded
//! by worker threads; retrieval evaluation on a held-out split; `best/`; and the errors (or,
//! with `--skip-bad-samples`, the counts) for missing and corrupt images and malformed JSON.
//!
//! The images are real Fashion-MNIST photographs, composed into 2x2 mosaics and written as
//! PNG and JPEG files; each caption names the four garments and where they are, so captions
//! are nearly unique and retrieval has something to learn.

mod common;

use common::{
    Mosaic, assert_error, assert_one_line_error, assert_success, policy, read_json, read_jsonl, train_cpu,
    write_mosaics,
};
const TILE: u32 = common::MOSAIC_TILE;
use std::path::{Path, PathBuf};

/// A COCO captions file for `images`.
fn write_coco(path: &Path, images: &[Mosaic]) {
    let mut annotations = Vec::new();
    let entries: Vec<serde_json::Value> = images
        .iter()
        .enumerate()
        .map(|(id, Mosaic { file_name, captions, .. })| {
            for caption in captions {
                annotations.push(serde_json::json!({"id": annotations.len(), "image_id": id, "caption": caption}));
            }
            serde_json::json!({"id": id, "file_name": file_name, "width": 2 * TILE, "height": 2 * TILE})
        })
        .collect();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let coco = serde_json::json!({"images": entries, "annotations": annotations});
    std::fs::write(path, serde_json::to_string(&coco).unwrap()).unwrap();
}

/// A JSONL manifest for `images`, image paths relative to its folder.
fn write_manifest(path: &Path, images: &[Mosaic]) {
    let lines: Vec<String> = images
        .iter()
        .map(|mosaic| serde_json::json!({"image": mosaic.file_name, "captions": mosaic.captions}).to_string())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp paths")
}

fn constant(lr: &str) -> Vec<String> {
    vec![format!("{}:lr={lr}", policy("constant").display())]
}

/// A `transformers` CLIP with OpenAI's vocabulary for 56x56 images, as a user's starting point.
fn pretrained(dir: &Path) -> PathBuf {
    let model = dir.join("pretrained");
    let made = common::python_fixture("clip/make_model.py", &[model.as_os_str(), "56".as_ref()]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    model
}

#[test]
fn fine_tuning_on_a_coco_folder_improves_held_out_recall() {
    let dir = tempfile::tempdir().unwrap();
    let coco = dir.path().join("coco");
    let train_images = write_mosaics(&coco.join("train2017"), 0, 800);
    let val_images = write_mosaics(&coco.join("val2017"), 800, 100);
    let (train_file, val_file) =
        (coco.join("annotations/captions_train2017.json"), coco.join("annotations/captions_val2017.json"));
    write_coco(&train_file, &train_images);
    write_coco(&val_file, &val_images);
    let model = pretrained(dir.path());
    // A model folder from the hub carries its tokenizer; the run must use it.
    let bpe = trainer::data::clip_tokenizer::default_bpe_path().unwrap();
    let made = common::python_fixture("tokenizer/make_tokenizer_json.py", &[bpe.as_os_str(), model.as_os_str()]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let data = [
        "--model",
        arg(&model),
        "--data",
        arg(&train_file),
        "--val-data",
        arg(&val_file),
        "--batch-size",
        "64",
        "--seed",
        "2",
    ];

    // With a zero learning rate the weights stay as they were: the baseline.
    let before = dir.path().join("before");
    let one_step: &[&str] = &["--steps", "1"];
    assert_success(&train_cpu(&before, &constant("0"), &[&data[..], one_step].concat()));
    let baseline = read_json(&before.join("eval.json"));

    let after = dir.path().join("after");
    let extra: &[&str] =
        &["--steps", "300", "--eval-every", "100", "--accum-steps", "2", "--best-metric", "val_i2t_r1"];
    assert_success(&train_cpu(&after, &constant("2e-3"), &[&data[..], extra].concat()));
    let log = std::fs::read_to_string(after.join("run.log")).unwrap();
    assert!(log.contains(&format!("captions tokenized with {}", model.join("tokenizer.json").display())), "{log}");
    let tuned = read_json(&after.join("eval.json"));
    assert_eq!(tuned["images"], 100);
    for metric in ["val_i2t_r1", "val_t2i_r1"] {
        let (was, now) = (baseline[metric].as_f64().unwrap(), tuned[metric].as_f64().unwrap());
        assert!(now > was + 0.08, "{metric}: {was} before, {now} after fine-tuning");
    }
    for metric in ["val_i2t_r5", "val_i2t_r10", "val_t2i_r5", "val_t2i_r10", "val_loss"] {
        assert!(tuned[metric].is_number(), "eval.json has {metric}: {tuned}");
    }

    // best/ holds the evaluation with the highest image->text recall@1, loadable as a model.
    let evaluations = read_jsonl(&after.join("evaluations.jsonl"));
    assert_eq!(evaluations.len(), 3);
    let best = evaluations.iter().map(|e| e["val_i2t_r1"].as_f64().unwrap()).fold(f64::MIN, f64::max);
    let record = read_json(&after.join("best/best.json"));
    assert_eq!(record["value"].as_f64().unwrap(), best);
    assert!(after.join("best/model.safetensors").exists() && after.join("best/config.json").exists());
}

#[test]
fn a_jsonl_manifest_trains_from_scratch_with_its_own_held_out_split() {
    let dir = tempfile::tempdir().unwrap();
    let images = write_mosaics(&dir.path().join("images"), 0, 120);
    let manifest = dir.path().join("data.jsonl");
    let relative: Vec<Mosaic> =
        images.into_iter().map(|m| Mosaic { file_name: format!("images/{}", m.file_name), ..m }).collect();
    write_manifest(&manifest, &relative);
    let run = dir.path().join("run");
    let extra = ["--data", arg(&manifest), "--steps", "3", "--batch-size", "16", "--eval-every", "3", "--workers", "3"];
    assert_success(&train_cpu(&run, &constant("1e-3"), &extra));
    // 5% of 120 images are held out.
    assert_eq!(read_json(&run.join("eval.json"))["images"], 6);
    assert_eq!(read_jsonl(&run.join("metrics.jsonl")).len(), 3);
}

/// A manifest in `dir` of the lines `bad` (numbered from 1), then ten good mosaics.
fn manifest_with(dir: &Path, bad: &[&str]) -> PathBuf {
    let images = write_mosaics(dir, 0, 10);
    let manifest = dir.join("data.jsonl");
    write_manifest(&manifest, &images);
    let good = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, bad.iter().map(|line| format!("{line}\n")).collect::<String>() + &good).unwrap();
    manifest
}

fn train_on(manifest: &Path, run: &Path, more: &[&str]) -> std::process::Output {
    let base: &[&str] = &["--data", arg(manifest)];
    let extra = [base, more].concat();
    train_cpu(run, &constant("1e-3"), &extra)
}

#[test]
fn a_missing_image_is_named_with_its_manifest_line_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest_with(dir.path(), &[r#"{"image": "gone.png", "captions": ["a bag"]}"#]);
    let output = train_on(&manifest, &dir.path().join("run"), &["--batch-size", "8", "--steps", "2"]);
    assert_one_line_error(&output, 1, &["gone.png", "not found", "data.jsonl line 1"]);
}

#[test]
fn malformed_json_is_named_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest_with(dir.path(), &[r#"{"image": "000001.png", "captions": ["a bag""#]);
    let output = train_on(&manifest, &dir.path().join("run"), &["--batch-size", "8", "--steps", "2"]);
    assert_one_line_error(&output, 1, &["data.jsonl", "line 1"]);

    let coco = dir.path().join("captions_val.json");
    let unknown_image =
        r#"{"images": [{"id": 1, "file_name": "000001.png"}], "annotations": [{"image_id": 2, "caption": "x"}]}"#;
    std::fs::write(&coco, unknown_image).unwrap();
    let output = train_on(&coco, &dir.path().join("run2"), &["--images", arg(dir.path())]);
    assert_one_line_error(&output, 1, &["captions_val.json", "image id 2"]);
    std::fs::write(&coco, "{\"images\": [").unwrap();
    let output = train_on(&coco, &dir.path().join("run3"), &[]);
    assert_one_line_error(&output, 1, &["captions_val.json", "not a COCO captions file"]);
}

#[test]
fn a_corrupt_image_stops_the_run_by_name_or_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = r#"{"image": "corrupt.png", "captions": ["a torn photo"]}"#;
    // A PNG signature and nothing else: the file is there, the image is not.
    let write_corrupt = |dir: &Path| std::fs::write(dir.join("corrupt.png"), b"\x89PNG\r\n\x1a\n").unwrap();

    // Eleven samples, two held out: every batch of nine holds the corrupt image.
    let strict = dir.path().join("strict");
    let manifest = manifest_with(&strict, &[corrupt]);
    write_corrupt(&strict);
    let output = train_on(&manifest, &strict.join("run"), &["--batch-size", "9", "--steps", "2"]);
    assert_error(&output, 1, &["corrupt.png", "not a readable image", "data.jsonl line 1"]);

    // The malformed line is left out at the start; the corrupt image is left out of each of
    // the six batches.
    let lenient = dir.path().join("lenient");
    let manifest = manifest_with(&lenient, &[corrupt, r#"{"image": 7}"#]);
    write_corrupt(&lenient);
    let run = lenient.join("run");
    let output = train_on(&manifest, &run, &["--skip-bad-samples", "--steps", "6", "--batch-size", "9"]);
    assert_success(&output);
    let log = std::fs::read_to_string(run.join("run.log")).unwrap();
    assert!(log.contains("left out 1 samples") && log.contains("data.jsonl line 2"), "{log}");
    assert!(log.contains("corrupt.png") && log.contains("data.jsonl line 1"), "{log}");
    let metrics = read_jsonl(&run.join("metrics.jsonl"));
    let skipped: u64 = metrics.iter().filter_map(|r| r["skipped_samples"].as_u64()).sum();
    assert_eq!(skipped, 6, "metrics.jsonl counts the corrupt image in each step");
}

/// With two processes, a corrupt image skipped by one rank leaves that rank's share one
/// image short: the global batch is the same as one process's, and so is the training.
#[test]
fn a_sample_skipped_by_one_process_leaves_the_global_batch_as_one_process_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest_with(dir.path(), &[r#"{"image": "corrupt.png", "captions": ["a torn photo"]}"#]);
    std::fs::write(dir.path().join("corrupt.png"), b"\x89PNG\r\n\x1a\n").unwrap();
    let args = ["--skip-bad-samples", "--steps", "4", "--batch-size", "8", "--workers", "1"];
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    assert_success(&train_on(&manifest, &one, &args));
    assert_success(&train_on(&manifest, &two, &[&args[..], &["--nproc", "2"]].concat()));
    let (single, parallel) = (read_jsonl(&one.join("metrics.jsonl")), read_jsonl(&two.join("metrics.jsonl")));
    let skipped: u64 = single.iter().filter_map(|r| r["skipped_samples"].as_u64()).sum();
    assert!(skipped > 0, "the corrupt image is in some batch");
    for (a, b) in single.iter().zip(&parallel) {
        assert_eq!(a["skipped_samples"], b["skipped_samples"], "step {}", a["step"]);
        let (a, b) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-5 * a, "loss {b} with two processes, {a} with one");
    }
}

/// A resume on a manifest that changed since the run started is refused, naming the file
/// and what changed; with `--data-changed` it goes on, saying so in run.log and run.json.
#[test]
fn a_resume_on_changed_data_is_refused_unless_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let images = write_mosaics(dir.path(), 0, 40);
    let manifest = dir.path().join("data.jsonl");
    write_manifest(&manifest, &images);
    let run = dir.path().join("run");
    assert_success(&train_on(&manifest, &run, &["--batch-size", "8", "--steps", "4", "--pause-after-steps", "2"]));
    let started_on = read_json(&run.join("run.json"))["data"]["fingerprint"].clone();
    assert_eq!(started_on["files"][0]["path"], arg(&manifest), "{started_on}");
    let bytes_before = std::fs::metadata(&manifest).unwrap().len();
    write_manifest(&manifest, &images[..32]);
    let bytes_after = std::fs::metadata(&manifest).unwrap().len();

    let resume =
        |extra: &[&str]| common::trainer(&[&["train", "--device", "cpu", "--resume", arg(&run)], extra].concat());
    let changed = format!("{} changed from {bytes_before} to {bytes_after} bytes", arg(&manifest));
    assert_one_line_error(&resume(&[]), 1, &[&changed, "--data-changed"]);
    assert_success(&resume(&["--data-changed"]));
    let record = read_json(&run.join("run.json"))["data"].clone();
    assert_eq!(record["changes"][0]["step"], 2, "{record}");
    assert!(record["changes"][0]["change"].as_str().unwrap().contains(&changed), "{record}");
    assert!(record["fingerprint"]["train_samples"].as_u64() < started_on["train_samples"].as_u64(), "{record}");
    let log = std::fs::read_to_string(run.join("run.log")).unwrap();
    assert!(log.contains("--data-changed: going on after step 2"), "{log}");
}
