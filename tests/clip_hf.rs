//! CLIP as `transformers` defines it: a checkpoint written by `transformers` (the fixture
//! made by `tests/fixtures/clip/make_fixture.py`) loads and gives the outputs `transformers`
//! computed, float32 or bfloat16, from `model.safetensors` or from a `torch.save`
//! `pytorch_model.bin` read without Python; and the trainer's saved folder loads back into
//! `transformers` with the same outputs. PyTorch files keep views, dtypes and parameters
//! exactly, and one that would run code in Python is refused by name.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};
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
#[test]
fn open_clip_folders_give_open_clips_embeddings_and_fine_tune() {
    let dir = tempfile::tempdir().unwrap();
    let made = common::python_fixture("open_clip/make_model.py", &[dir.path().as_os_str()]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    for name in ["gelu", "quickgelu"] {
        let folder = dir.path().join(name);
        let (config, _, model) = Clip::from_pretrained(&folder, Device::Cpu).unwrap();
        assert_eq!(config.vision_config.hidden_act == Activation::QuickGelu, name == "quickgelu");
        let expected: HashMap<String, Tensor> =
            Tensor::read_safetensors(folder.join("expected.safetensors")).unwrap().into_iter().collect();
        tch::no_grad(|| {
            let images = model.image_embeddings(&expected["pixel_values"]);
            assert_close(&format!("{name} image_embeds"), &images, &expected["image_embeds"]);
            let texts = model.text_embeddings(&expected["input_ids"]);
            assert_close(&format!("{name} text_embeds"), &texts, &expected["text_embeds"]);
        });
    }

    let folder = dir.path().join("gelu");
    let run = dir.path().join("run");
    let constant = common::policy("constant").display().to_string();
    let trained = common::trainer(&[
        "train",
        "--device",
        "cpu",
        "--model",
        folder.to_str().unwrap(),
        "--policy",
        &constant,
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--run-dir",
        run.to_str().unwrap(),
    ]);
    common::assert_success(&trained);
    // final/ in both layouts: open_clip loads it strictly, transformers too, alike.
    let expected = folder.join("expected.safetensors");
    let check =
        common::python_fixture("open_clip/check_saved.py", &[run.join("final").as_os_str(), expected.as_os_str()]);
    assert!(
        check.status.success(),
        "open_clip and transformers disagree on final/:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let config_file = folder.join("open_clip_config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_file).unwrap()).unwrap();
    config["model_cfg"]["vision_cfg"]["timm_model_name"] = "convnext_base".into();
    std::fs::write(&config_file, config.to_string()).unwrap();
    let refused = Clip::from_pretrained(&folder, Device::Cpu).err().expect("refused").to_string();
    assert!(refused.contains("open_clip_config.json") && refused.contains("timm_model_name"), "{refused}");
}
