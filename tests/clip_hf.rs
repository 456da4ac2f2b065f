//! CLIP as `transformers` defines it: a checkpoint written by `transformers` (the fixture
//! made by `tests/fixtures/clip/make_fixture.py`) loads and gives the outputs `transformers`
//! computed, float32 or bfloat16, from `model.safetensors` or from a `torch.save`
//! `pytorch_model.bin` read without Python; and the trainer's saved folder loads back into
//! `transformers` with the same outputs. PyTorch files keep views, dtypes and parameters
//! exactly, and one that would run code in Python is refused by name. open_clip's
//! checkpoints (hub folders, weights files of a built-in architecture, OpenAI's TorchScript
//! `.pt`) give open_clip's embeddings and preprocessing, and what the trainer saves from them
//! loads back into open_clip.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};
use trainer::data::images::{CentreOffset, Filter, Fit, SquareResize, load_rgb_square};
use trainer::models::clip::Activation;
use trainer::models::clip::Clip;
use trainer::models::{pretrained, pth};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/clip")
}

fn tensors(file: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join(file)).unwrap().into_iter().collect()
}

fn assert_close(name: &str, got: &Tensor, expected: &Tensor) {
    assert_eq!(got.size(), expected.size(), "{name} shape");
    let difference = (got - expected).abs().max().double_value(&[]);
    assert!(difference <= 1e-4, "{name}: max difference {difference}");
}

/// The model's outputs on the fixture inputs against `expected_file`.
fn assert_matches_transformers(model: &Clip, expected_file: &str) {
    let inputs = tensors("tiny-expected.safetensors");
    let expected = tensors(expected_file);
    let (pixels, ids) = (&inputs["pixel_values"], &inputs["input_ids"]);
    tch::no_grad(|| {
        assert_close("image_embeds", &model.image_embeddings(pixels), &expected["image_embeds"]);
        assert_close("text_embeds", &model.text_embeddings(ids), &expected["text_embeds"]);
        assert_close("logits_per_image", &model.logits_per_image(pixels, ids), &expected["logits_per_image"]);
    });
}

#[test]
fn a_transformers_checkpoint_gives_the_same_outputs() {
    let (config, _store, model) = Clip::from_pretrained(&fixtures().join("tiny"), Device::Cpu).unwrap();
    assert_eq!(config.text_config.eos_token_id, 98);
    assert_matches_transformers(&model, "tiny-expected.safetensors");
}

#[test]
fn bfloat16_weights_become_float32_master_weights() {
    let (_, store, model) = Clip::from_pretrained(&fixtures().join("tiny-bf16"), Device::Cpu).unwrap();
    assert!(store.variables().values().all(|v| v.kind() == Kind::Float), "every variable is float32");
    assert_matches_transformers(&model, "tiny-bf16-expected.safetensors");
}

#[test]
fn a_saved_model_loads_back_into_transformers() {
    let (config, store, _) = Clip::from_pretrained(&fixtures().join("tiny"), Device::Cpu).unwrap();
    let out = tempfile::tempdir().unwrap();
    let saved = out.path().join("final");
    pretrained::save(&saved, &store, &config, None).unwrap();
    let check = common::python_fixture("clip/check_roundtrip.py", &[saved.as_os_str()]);
    assert!(
        check.status.success(),
        "transformers disagrees with the saved model:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn a_missing_or_misshapen_tensor_is_named() {
    let (config, store, _) = Clip::from_pretrained(&fixtures().join("tiny"), Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut named: Vec<(String, Tensor)> = store.variables().into_iter().collect();
    named.retain(|(name, _)| name != "logit_scale");
    let file = dir.path().join("model.safetensors");
    Tensor::write_safetensors(&named, &file).unwrap();
    let err = pretrained::load_weights(&store, &file).unwrap_err().to_string();
    assert!(err.contains("model.safetensors") && err.contains("`logit_scale`"), "{err}");

    named.push(("logit_scale".into(), Tensor::zeros([2], (Kind::Float, Device::Cpu))));
    Tensor::write_safetensors(&named, &file).unwrap();
    let err = pretrained::load_weights(&store, &file).unwrap_err().to_string();
    assert!(err.contains("`logit_scale` has shape [2]"), "{err}");
    drop(config);
}

#[test]
fn pytorch_checkpoints_load_without_python_and_code_in_them_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let made = common::python_fixture("pth/make_checkpoints.py", &[dir.path().as_os_str()]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));

    let (_, _, model) = Clip::from_pretrained(&dir.path().join("bin"), Device::Cpu).unwrap();
    assert_matches_transformers(&model, "tiny-expected.safetensors");

    // Views sharing one storage, every common dtype and a Parameter, under `model` beside
    // other values: each as PyTorch made it contiguous.
    let read: HashMap<String, Tensor> =
        pth::read_state_dict(&dir.path().join("views.pth")).unwrap().into_iter().collect();
    let expected: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.path().join("views-expected.safetensors")).unwrap().into_iter().collect();
    assert_eq!(read.len(), expected.len());
    for (name, tensor) in &expected {
        let got = &read[name];
        assert_eq!(got.kind(), tensor.kind(), "{name}");
        assert!(got.equal(tensor), "{name}: {got} against {tensor}");
    }

    let refused = pth::read_state_dict(&dir.path().join("evil.pth")).unwrap_err().to_string();
    assert!(
        refused.contains("evil.pth") && refused.contains(".system`") && refused.contains("weights_only"),
        "{refused}"
    );
    assert!(!dir.path().join("ran").exists(), "nothing ran");
}

/// An open_clip folder (`open_clip_config.json` and its weights, safetensors or
/// `torch.save`), made by `tests/fixtures/open_clip/make_model.py`, gives open_clip's
/// embeddings with GELU and with QuickGELU, and fine-tunes into a `final/` that open_clip
/// and `transformers` both load; a tower the trainer lacks is refused by its field.
/// A model's embeddings of `expected`'s inputs against its `image_embeds`, `text_embeds`.
fn assert_embeds(name: &str, model: &Clip, expected: &HashMap<String, Tensor>, tolerance: f64) {
    tch::no_grad(|| {
        for (what, got) in [
            ("image_embeds", model.image_embeddings(&expected["pixel_values"])),
            ("text_embeds", model.text_embeddings(&expected["input_ids"])),
        ] {
            let difference = (&got - &expected[what]).abs().max().double_value(&[]);
            assert!(difference <= tolerance, "{name} {what}: max difference {difference}");
        }
    });
}

fn read(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

fn train_two_steps(model: &Path, run: &Path, more: &[&str]) {
    let constant = common::policy("constant").display().to_string();
    let mut args = vec!["train", "--device", "cpu", "--model", model.to_str().unwrap(), "--policy", &constant];
    args.extend(["--steps", "2", "--batch-size", "8", "--run-dir", run.to_str().unwrap()]);
    args.extend(more);
    common::assert_success(&common::trainer(&args));
}

/// open_clip loads each saved folder strictly, with embeddings of its inputs equal to
/// transformers' (a folder in both layouts) or to the trainer's (`ours`).
fn assert_open_clip_loads(folders: &[(&Path, &Path, Option<&Path>)]) {
    let mut args = Vec::new();
    for (saved, inputs, ours) in folders {
        args.extend([saved.as_os_str(), inputs.as_os_str(), ours.map_or("-".as_ref(), Path::as_os_str)]);
    }
    let check = common::python_fixture("open_clip/check_saved.py", &args);
    assert!(
        check.status.success(),
        "open_clip disagrees:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn open_clip_checkpoints_give_open_clips_embeddings_and_fine_tune() {
    let dir = tempfile::tempdir().unwrap();
    let made = common::python_fixture("open_clip/make_model.py", &[dir.path().as_os_str()]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    for name in ["gelu", "quickgelu"] {
        let folder = dir.path().join(name);
        let (config, _, model) = Clip::from_pretrained(&folder, Device::Cpu).unwrap();
        assert_eq!(config.vision_config.hidden_act == Activation::QuickGelu, name == "quickgelu");
        assert_embeds(name, &model, &read(&folder.join("expected.safetensors")), 1e-5);
    }
    // OpenAI's TorchScript layout: the architecture (QuickGELU) from the tensors alone.
    let openai = dir.path().join("openai.pt");
    let (config, _, model) = Clip::from_pretrained(&openai, Device::Cpu).unwrap();
    assert_eq!((config.vision_config.hidden_act, config.vision_config.image_size), (Activation::QuickGelu, 28));
    assert_embeds("openai.pt", &model, &read(&dir.path().join("openai/expected.safetensors")), 1e-5);
    // A weights file with a built-in architecture's name.
    let vit = dir.path().join("vit-b-32.safetensors");
    let refused = Clip::from_checkpoint(&vit, None, Device::Cpu).err().expect("no architecture").to_string();
    assert!(refused.contains("--model-arch") && refused.contains("ViT-B-32"), "{refused}");
    let (_, _, model) = Clip::from_checkpoint(&vit, Some("ViT-B-32"), Device::Cpu).unwrap();
    assert_embeds("ViT-B-32", &model, &read(&dir.path().join("vit-b-32-expected.safetensors")), 1e-5);
    drop(model);

    // Images made square as open_clip's evaluation transform and transformers' processor make them.
    let preprocessed = read(&dir.path().join("preprocess.safetensors"));
    for (source, offset) in [("open_clip", CentreOffset::RoundHalfEven), ("hf", CentreOffset::Floor)] {
        let square = SquareResize { size: 28, fit: Fit::Shortest(offset), filter: Filter::Bicubic };
        for name in ["97x61", "64x131", "50x50", "45x81"] {
            let ours = load_rgb_square(&dir.path().join(format!("images/{name}.png")), &square).unwrap();
            let ours = Tensor::from_slice(&ours).view([3, 28, 28]).to_kind(Kind::Int);
            let difference = (ours - preprocessed[&format!("{source}/{name}")].to_kind(Kind::Int)).abs();
            let largest = difference.max().int64_value(&[]);
            assert!(largest <= 1, "{source} {name}: pixels differ by up to {largest}");
        }
    }

    // From a folder, saved in both layouts: open_clip and transformers load final/ alike.
    let both = dir.path().join("run");
    train_two_steps(&dir.path().join("gelu"), &both, &["--save-format", "both"]);

    // From OpenAI's .pt, saved as it came (open_clip's layout): open_clip's embeddings of
    // final/ are the trainer's.
    let run = dir.path().join("run-openai");
    train_two_steps(&openai, &run, &[]);
    let final_dir = run.join("final");
    assert!(!final_dir.join("config.json").exists(), "only open_clip's layout by default");
    let inputs = dir.path().join("openai/expected.safetensors");
    let (_, _, tuned) = Clip::from_pretrained(&final_dir, Device::Cpu).unwrap();
    let expected = read(&inputs);
    let ours: Vec<(String, Tensor)> = tch::no_grad(|| {
        vec![
            ("image_embeds".into(), tuned.image_embeddings(&expected["pixel_values"])),
            ("text_embeds".into(), tuned.text_embeddings(&expected["input_ids"])),
        ]
    });
    let ours_file = dir.path().join("ours.safetensors");
    Tensor::write_safetensors(&ours, &ours_file).unwrap();
    let gelu_inputs = dir.path().join("gelu/expected.safetensors");
    assert_open_clip_loads(&[(&both.join("final"), &gelu_inputs, None), (&final_dir, &inputs, Some(&ours_file))]);
    let evaluated = common::trainer(&["eval", "--device", "cpu", "--model", final_dir.to_str().unwrap()]);
    common::assert_success(&evaluated);

    let folder = dir.path().join("gelu");
    let config_file = folder.join("open_clip_config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_file).unwrap()).unwrap();
    config["model_cfg"]["vision_cfg"]["timm_model_name"] = "convnext_base".into();
    std::fs::write(&config_file, config.to_string()).unwrap();
    let refused = Clip::from_pretrained(&folder, Device::Cpu).err().expect("refused").to_string();
    assert!(refused.contains("open_clip_config.json") && refused.contains("timm_model_name"), "{refused}");
}
