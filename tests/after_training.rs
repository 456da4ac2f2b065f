//! What users run after training: `trainer eval` gives the numbers of the run's own
//! end-of-run evaluation; `trainer embed` gives transformers' normalised CLIP features;
//! `trainer predict` gives the tags the evaluation scores; a `--model` folder that lacks
//! tensors is refused by name unless `--allow-partial`, and what was loaded is reported.

mod common;

use common::{assert_one_line_error, assert_success, policy, read_json, read_jsonl, train_cpu, trainer, write_mosaics};
use std::path::{Path, PathBuf};
use tch::Tensor;

fn constant() -> Vec<String> {
    vec![format!("{}:lr=1e-3", policy("constant").display())]
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp paths")
}

/// Every metric of `eval.json` equals `trainer eval --model <model>`'s, bit for bit.
fn assert_eval_reproduces(run: &Path, model: &Path, extra: &[&str]) {
    let out = run.join("eval-again.json");
    let args = [&["eval", "--device", "cpu", "--model", arg(model), "--out", arg(&out)][..], extra].concat();
    assert_success(&trainer(&args));
    let (expected, got) = (read_json(&run.join("eval.json")), read_json(&out));
    // What the run did, not what it measured.
    let about_the_run = ["step", "stopped_by", "skipped_steps"];
    let metrics: Vec<&String> =
        expected.as_object().unwrap().keys().filter(|k| !about_the_run.contains(&k.as_str())).collect();
    assert!(metrics.len() > 2, "{expected}");
    for name in metrics {
        assert_eq!(got[name], expected[name], "{name}: eval.json {expected}, trainer eval {got}");
    }
}

#[test]
fn eval_of_a_caption_run_reproduces_its_held_out_retrieval() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = write_mosaics(&dir.path().join("images"), 0, 30)
        .into_iter()
        .map(|mosaic| serde_json::json!({"image": mosaic.file_name, "captions": mosaic.captions}).to_string())
        .collect();
    let manifest = dir.path().join("images/captions.jsonl");
    std::fs::write(&manifest, lines.join("\n") + "\n").unwrap();
    let run = dir.path().join("run");
    assert_success(&train_cpu(&run, &constant(), &["--data", arg(&manifest), "--steps", "2", "--batch-size", "8"]));
    assert!(read_json(&run.join("eval.json"))["val_i2t_r1"].is_number());
    assert_eval_reproduces(&run, &run.join("final"), &[]);
}

#[test]
fn eval_of_a_clip_run_reproduces_its_end_of_run_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let extra = ["--steps", "2", "--batch-size", "16", "--checkpoint-every", "2", "--accum-steps", "2"];
    assert_success(&train_cpu(&run, &constant(), &extra));
    assert_eval_reproduces(&run, &run.join("final"), &[]);
    // A relative path from inside the run finds the run too.
    let out = run.join("relative.json");
    assert_success(&common::trainer_in(&run, &["eval", "--device", "cpu", "--model", "final", "--out", arg(&out)]));
    assert_eq!(read_json(&out)["zero_shot_top1"], read_json(&run.join("eval.json"))["zero_shot_top1"]);
    // The checkpoint after the last step holds the same weights as final/.
    assert_eval_reproduces(&run, &run.join("checkpoints/step-2"), &[]);

    let output = trainer(&["eval", "--device", "cpu", "--model", arg(&run.join("final")), "--task", "tagging"]);
    assert_one_line_error(&output, 1, &["--model", "--task clip", "not --task tagging"]);
    let output = trainer(&["eval", "--model", arg(&run.join("final")), "--data", arg(&dir.path().join("none.jsonl"))]);
    assert_one_line_error(&output, 1, &["none.jsonl"]);
    let output = trainer(&["eval", "--model", arg(&run.join("final")), "--val-data", arg(&dir.path().join("v.jsonl"))]);
    assert_one_line_error(&output, 1, &["--val-data", "Fashion-MNIST"]);
}

/// A tagging manifest of `count` mosaics from mosaic `first`, in `dir`, and the vocabulary.
fn tagged_manifest(dir: &Path, name: &str, first: usize, count: usize) -> PathBuf {
    let lines: Vec<String> = write_mosaics(dir, first, count)
        .into_iter()
        .map(|mosaic| serde_json::json!({"image": mosaic.file_name, "tags": mosaic.tags}).to_string())
        .collect();
    let manifest = dir.join(name);
    std::fs::write(&manifest, lines.join("\n") + "\n").unwrap();
    manifest
}

#[test]
fn a_tagger_is_evaluated_again_and_predicts_the_tags_its_evaluation_scores() {
    let dir = tempfile::tempdir().unwrap();
    let train = tagged_manifest(&dir.path().join("images"), "train.jsonl", 0, 40);
    let val = tagged_manifest(&dir.path().join("images"), "val.jsonl", 40, 12);
    let tags = dir.path().join("tags.txt");
    std::fs::write(&tags, trainer::data::fashion_mnist::CLASS_NAMES.join("\n")).unwrap();
    let run = dir.path().join("run");
    let data = ["--task", "tagging", "--data", arg(&train), "--val-data", arg(&val), "--tags", arg(&tags)];
    assert_success(&train_cpu(&run, &constant(), &[&data[..], &["--steps", "3", "--batch-size", "8"]].concat()));
    assert_eval_reproduces(&run, &run.join("final"), &[]);
    // On other data, with that data's tags: here the mosaic default, whose tags are its own.
    let mosaics = dir.path().join("mosaics.json");
    let default = trainer::data::fashion_mnist::DEFAULT_DIR;
    let model = run.join("final");
    let args = ["eval", "--device", "cpu", "--model", arg(&model), "--data", default, "--out", arg(&mosaics)];
    assert_success(&trainer(&args));
    assert_eq!(read_json(&mosaics)["images"], 2500);
    let output = trainer(&["eval", "--model", arg(&model), "--tags", arg(&tags)]);
    assert_one_line_error(&output, 1, &["--tags", "--data"]);

    // Every tag with its score; those at 0.5 or more are the evaluation's positives, so
    // their overall precision and recall against the manifest's tags are OP and OR.
    let predicted = dir.path().join("tags.jsonl");
    let args = ["predict", "--device", "cpu", "--model", arg(&model), "--data", arg(&val)];
    assert_success(&trainer(&[&args[..], &["--threshold", "0", "--out", arg(&predicted)]].concat()));
    let lines = read_jsonl(&predicted);
    let truth = read_jsonl(&val);
    assert_eq!(lines.len(), 12);
    let (mut true_positives, mut predicted_positives, mut positives) = (0usize, 0usize, 0usize);
    for (line, expected) in lines.iter().zip(&truth) {
        assert!(line["image"].as_str().unwrap().ends_with(expected["image"].as_str().unwrap()), "{line}");
        let scores = line["tags"].as_array().unwrap();
        assert_eq!(scores.len(), 10, "threshold 0 keeps every tag: {line}");
        let sorted = scores.windows(2).all(|w| w[0]["score"].as_f64() >= w[1]["score"].as_f64());
        assert!(sorted, "most probable first: {line}");
        let wanted: Vec<&str> = expected["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        positives += wanted.len();
        for tag in scores.iter().filter(|tag| tag["score"].as_f64().unwrap() >= 0.5) {
            predicted_positives += 1;
            true_positives += wanted.contains(&tag["tag"].as_str().unwrap()) as usize;
        }
    }
    let eval = read_json(&run.join("eval.json"));
    let precision = if predicted_positives == 0 { 0.0 } else { true_positives as f64 / predicted_positives as f64 };
    assert!((precision - eval["OP"].as_f64().unwrap()).abs() < 1e-12, "OP {precision} vs {eval}");
    assert!((true_positives as f64 / positives as f64 - eval["OR"].as_f64().unwrap()).abs() < 1e-12, "OR vs {eval}");

    let top = dir.path().join("top.jsonl");
    assert_success(&trainer(&[&args[..], &["--top-k", "2", "--threshold", "0", "--out", arg(&top)]].concat()));
    assert!(read_jsonl(&top).iter().all(|line| line["tags"].as_array().unwrap().len() == 2));
    let output = trainer(&["predict", "--model", arg(&model), "--out", arg(&top)]);
    assert_one_line_error(&output, 1, &["--images DIR or --data FILE"]);
    // A model folder of another task, wherever one is taken.
    let output = train_cpu(&dir.path().join("clip"), &constant(), &["--model", arg(&model)]);
    assert_one_line_error(&output, 1, &["--model", "a tagger", "--task tagging"]);
    let output = trainer(&["embed", "--model", arg(&model), "--images", arg(&dir.path().join("images")), "--out", "x"]);
    assert_one_line_error(&output, 1, &["--model", "a tagger"]);
}

/// A small CLIP with OpenAI CLIP's vocabulary and its tokenizer.json, saved by transformers.
fn transformers_clip(dir: &Path) -> PathBuf {
    let model = dir.join("hf-clip");
    let bpe = trainer::data::clip_tokenizer::default_bpe_path().unwrap();
    let made =
        common::python_fixture("clip/embed_reference.py", &["make".as_ref(), bpe.as_os_str(), model.as_os_str()]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    model
}

#[test]
fn embeddings_equal_transformers_normalised_features() {
    let dir = tempfile::tempdir().unwrap();
    let model = transformers_clip(dir.path());
    // Images at the model's size, so the reference needs no resizing to see the same pixels.
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let mut pixels = Vec::new();
    for index in 0..3u32 {
        let image = image::RgbImage::from_fn(30, 30, |x, y| {
            image::Rgb([(x * 8 + index * 40) as u8, (y * 8) as u8, ((x * y + index * 17) % 256) as u8])
        });
        image.save(images.join(format!("{index}.png"))).unwrap();
        for channel in 0..3 {
            pixels.extend(image.pixels().map(|pixel| pixel[channel]));
        }
    }
    let pixels_file = dir.path().join("pixels.safetensors");
    Tensor::write_safetensors(&[("pixels", Tensor::from_slice(&pixels).view([3, 3, 30, 30]))], &pixels_file).unwrap();
    let texts = dir.path().join("texts.txt");
    std::fs::write(&texts, "a photo of a cat.\n\na red car on a street\nTwo dogs, playing!\n").unwrap();
    let out = dir.path().join("embeddings.safetensors");
    let args = ["embed", "--device", "cpu", "--model", arg(&model), "--images", arg(&images)];
    assert_success(&trainer(&[&args[..], &["--texts", arg(&texts), "--out", arg(&out)]].concat()));
    let check = common::python_fixture(
        "clip/embed_reference.py",
        &["check".as_ref(), model.as_os_str(), pixels_file.as_os_str(), texts.as_os_str(), out.as_os_str()],
    );
    let report = format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    assert!(check.status.success(), "transformers disagrees: {report}");
    assert!(report.contains("image_embeddings") && report.contains("text_embeddings"), "{report}");

    let output =
        trainer(&["embed", "--model", arg(&model), "--images", arg(&dir.path().join("none")), "--out", arg(&out)]);
    assert_one_line_error(&output, 1, &["none"]);
}

#[test]
fn a_partial_model_folder_is_refused_by_name_unless_allowed_and_fresh_tensors_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let model = transformers_clip(dir.path());
    let weights = model.join("model.safetensors");
    let mut tensors = Tensor::read_safetensors(&weights).unwrap();
    tensors.retain(|(name, _)| name != "visual_projection.weight");
    Tensor::write_safetensors(&tensors, &weights).unwrap();
    let extra = ["--model", arg(&model), "--steps", "1", "--batch-size", "4"];
    let output = train_cpu(&dir.path().join("refused"), &constant(), &extra);
    assert_one_line_error(&output, 1, &["--model", "`visual_projection.weight`", "--allow-partial"]);

    let run = dir.path().join("partial");
    assert_success(&train_cpu(&run, &constant(), &[&extra[..], &["--allow-partial"]].concat()));
    let log = std::fs::read_to_string(run.join("run.log")).unwrap();
    let line = log.lines().find(|line| line.starts_with("weights: ")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("model.safetensors") && line.contains("freshly initialised: `visual_projection.weight`"));

    let scratch = dir.path().join("scratch");
    assert_success(&train_cpu(&scratch, &constant(), &["--steps", "1", "--batch-size", "4"]));
    let log = std::fs::read_to_string(scratch.join("run.log")).unwrap();
    assert!(log.contains("weights: none loaded; all"), "{log}");
}
