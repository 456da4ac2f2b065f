//! Fine-tuning a Hugging Face CLIP folder with `trainer train --model`: the captions go
//! through OpenAI CLIP's tokenizer, the weights load from `model.safetensors`, and the
//! result is a folder `transformers` loads.

mod common;

use common::{assert_error, assert_success, policy, read_json, read_jsonl, train_cpu};
use std::path::Path;

fn run_python(script: &str, folder: &Path) -> std::process::Output {
    common::python_fixture(&format!("clip/{script}"), &[folder.as_os_str()])
}

#[test]
fn a_transformers_clip_fine_tunes_and_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("pretrained");
    let made = run_python("make_model.py", &model);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));

    let run = dir.path().join("run");
    let model_arg = model.to_str().unwrap();
    let policies = [format!("{}:lr=1e-3", policy("constant").display())];
    let extra = ["--model", model_arg, "--steps", "40", "--batch-size", "32", "--seed", "1"];
    assert_success(&train_cpu(&run, &policies, &extra));

    let losses: Vec<f64> = read_jsonl(&run.join("metrics.jsonl")).iter().map(|r| r["loss"].as_f64().unwrap()).collect();
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    assert!(mean(&losses[30..]) < mean(&losses[..10]), "the loss falls: {losses:?}");
    let config = read_json(&run.join("final/config.json"));
    assert_eq!(config["text_config"]["vocab_size"], 49408);
    assert_eq!(config["vision_config"]["image_size"], 28);
    let loaded = run_python("forward.py", &run.join("final"));
    assert!(
        loaded.status.success(),
        "transformers cannot load the result: {}",
        String::from_utf8_lossy(&loaded.stderr)
    );
}

#[test]
fn a_model_folder_without_a_config_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let policies = [policy("constant").display().to_string()];
    let output =
        train_cpu(&dir.path().join("run"), &policies, &["--model", dir.path().to_str().unwrap(), "--steps", "1"]);
    assert_error(&output, 1, &["config.json", "No such file"]);
}

#[test]
fn a_model_whose_vocabulary_does_not_fit_clips_tokenizer_is_refused() {
    let tiny = common::workspace().join("tests/fixtures/clip/tiny");
    let dir = tempfile::tempdir().unwrap();
    let policies = [policy("constant").display().to_string()];
    let output = train_cpu(dir.path(), &policies, &["--model", tiny.to_str().unwrap(), "--steps", "1"]);
    assert_error(&output, 1, &["--model", "vocab_size 99", "does not fit"]);
}
