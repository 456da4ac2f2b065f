//! recognize-anything's models against independent PyTorch references: the Swin Transformer
//! image encoder against timm's, renamed to the layout of Microsoft's reference that
//! recognize-anything vendors (`tests/fixtures/swin/make_reference.py`).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use tch::{Device, Kind, Tensor, nn};
use trainer::models::swin::{Swin, SwinConfig};

fn read(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

fn max_difference(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn swin_gives_timms_tokens_under_the_reference_names() {
    let dir = tempfile::tempdir().unwrap();
    let made = common::python_fixture("swin/make_reference.py", &[dir.path().as_os_str()]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let config = SwinConfig {
        image_res: 64,
        patch_size: 4,
        embed_dim: 16,
        depths: vec![2, 2, 2],
        num_heads: vec![2, 2, 4],
        window_size: 4,
        mlp_ratio: 4.0,
    };
    config.check().unwrap();
    let mut var_store = nn::VarStore::new(Device::Cpu);
    let mut swin = Swin::new(&var_store.root(), &config);
    let weights = read(&dir.path().join("swin.safetensors"));
    let ours: BTreeSet<String> = var_store.variables().into_keys().collect();
    let theirs: BTreeSet<String> = weights.keys().cloned().collect();
    assert_eq!(ours, theirs, "the reference's parameter names");
    var_store.load(dir.path().join("swin.safetensors")).unwrap();
    let expected = read(&dir.path().join("expected.safetensors"));
    let pixels = &expected["pixel_values"];

    let tokens = tch::no_grad(|| swin.forward(pixels));
    assert_eq!(tokens.size(), expected["tokens"].size());
    let difference = max_difference(&tokens, &expected["tokens"]);
    assert!(difference <= 1e-5, "tokens differ from timm's by {difference}");

    // Checkpointed blocks give the same gradients; bfloat16 stays near float32.
    let qkv = var_store.variables()["layers.0.blocks.1.attn.qkv.weight"].shallow_clone();
    // A checkpointed block's backward accumulates into the parameters' gradients.
    let mut gradient = |swin: &Swin| {
        swin.forward(pixels).pow_tensor_scalar(2).sum(Kind::Float).backward();
        let gradient = qkv.grad().copy();
        qkv.grad().zero_();
        gradient
    };
    let plain = gradient(&swin);
    swin.set_grad_checkpointing(true);
    let checkpointed = gradient(&swin);
    assert!(max_difference(&plain, &checkpointed) <= 1e-6 * plain.abs().max().double_value(&[]).max(1.0));
    swin.set_grad_checkpointing(false);
    swin.set_compute_kind(Kind::BFloat16);
    let mixed = tch::no_grad(|| swin.forward(pixels));
    assert_eq!(mixed.kind(), Kind::Float);
    let error = max_difference(&mixed, &expected["tokens"]);
    assert!(error < 0.05 * expected["tokens"].abs().max().double_value(&[]), "bfloat16 tokens differ by {error}");
}
