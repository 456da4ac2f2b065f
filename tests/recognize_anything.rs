//! recognize-anything's models against independent PyTorch references made by
//! `tests/fixtures/recognize_anything/make_reference.py`: the Swin Transformer image
//! encoder against timm's, renamed to the layout of Microsoft's reference that
//! recognize-anything vendors; RAM++ read from a `.pth` saved as recognize-anything saves
//! it, against the same model assembled from timm's Swin and transformers' BERT modules.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor, nn};
use trainer::models::bert::BertConfig;
use trainer::models::pretrained;
use trainer::models::ram_plus::{self, RamPlus, RamPlusConfig};
use trainer::models::swin::{BUFFER_SUFFIXES, Swin, SwinConfig};

/// The reference's files, made once for the tests of this binary.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("recognize_anything");
        let made = common::python_fixture("recognize_anything/make_reference.py", &[dir.as_os_str()]);
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
        dir
    })
}

/// The reference's Swin: 64 px, stages of 16, 8 and 4 tokens a side, windows of 4.
fn small_swin() -> SwinConfig {
    SwinConfig {
        image_res: 64,
        patch_size: 4,
        embed_dim: 16,
        depths: vec![2, 2, 2],
        num_heads: vec![2, 2, 4],
        window_size: 4,
        mlp_ratio: 4.0,
    }
}

fn read(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

fn max_difference(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn swin_gives_timms_tokens_under_the_reference_names() {
    let dir = fixtures();
    let config = small_swin();
    config.check().unwrap();
    let mut var_store = nn::VarStore::new(Device::Cpu);
    let mut swin = Swin::new(&var_store.root(), &config);
    let weights = read(&dir.join("swin.safetensors"));
    let ours: BTreeSet<String> = var_store.variables().into_keys().collect();
    let theirs: BTreeSet<String> = weights.keys().cloned().collect();
    assert_eq!(ours, theirs, "the reference's parameter names");
    var_store.load(dir.join("swin.safetensors")).unwrap();
    let expected = read(&dir.join("swin-expected.safetensors"));
    let pixels = &expected["pixel_values"];

    let tokens = tch::no_grad(|| swin.forward(pixels));
    assert_eq!(tokens.size(), expected["tokens"].size());
    let difference = max_difference(&tokens, &expected["tokens"]);
    assert!(difference <= 1e-5, "tokens differ from timm's by {difference}");

    // Checkpointed blocks give the same gradients; bfloat16 stays near float32.
    let qkv = var_store.variables()["layers.0.blocks.1.attn.qkv.weight"].shallow_clone();
    // A checkpointed block's backward accumulates into the parameters' gradients.
    let gradient = |swin: &Swin| {
        swin.forward(pixels).pow_tensor_scalar(2).sum(Kind::Float).backward();
        let gradient = qkv.grad().copy();
        let _ = qkv.grad().zero_();
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

/// The reference's tagging head: 2 layers 32 wide, 4 heads, over 512-wide image embeddings.
fn small_head() -> BertConfig {
    BertConfig {
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 64,
        layer_norm_eps: 1e-12,
        encoder_width: 512,
    }
}

#[test]
fn ram_plus_reads_recognize_anythings_pth_and_gives_its_logits() {
    let file = fixtures().join("ram_plus.pth");
    let config = RamPlusConfig { vision: small_swin(), head: small_head(), tags: 8, descriptions: 3, reweighted: true };
    // The shape is read from the tensors, given the number of tags.
    let tensors = pretrained::read_tensors(&file).unwrap();
    assert_eq!(RamPlusConfig::of_checkpoint(&file, &tensors, 8).unwrap(), config);
    let wrong = RamPlusConfig::of_checkpoint(&file, &tensors, 5).unwrap_err().to_string();
    assert!(wrong.contains("`label_embed` has 24 rows") && wrong.contains("tag list"), "{wrong}");

    let var_store = nn::VarStore::new(Device::Cpu);
    let model = RamPlus::new(&var_store.root(), &config);
    // Every parameter from the file; what is left over is the Swin's buffers.
    let report = pretrained::load_tensors_named(&var_store, &file, &tensors, |n| Some(n.to_string()), false).unwrap();
    assert!(report.fresh.is_empty(), "{:?}", report.fresh);
    let buffers = tensors.keys().filter(|name| BUFFER_SUFFIXES.iter().any(|suffix| name.ends_with(suffix))).count();
    assert_eq!((report.loaded, report.unused), (var_store.len(), buffers), "6 index buffers, 2 masks");
    assert_eq!(buffers, 8);
    let line = ram_plus::describe_load(&var_store, &report, &tensors);
    let parts = "(image encoder 92, label embeddings 1, tagging head 37); 8 Swin buffers computed here";
    assert!(line.ends_with(parts), "{line}");

    // Written back as recognize-anything saves it: torch.load(weights_only=True) gives the
    // file's tensors, buffers included, equal in names, dtypes and values.
    let written = fixtures().join("ram_plus-written.pth");
    trainer::models::pth::write_state_dict(&written, "model", &model.state_dict(&var_store)).unwrap();
    let compared =
        common::python_fixture("recognize_anything/same_checkpoint.py", &[file.as_os_str(), written.as_os_str()]);
    assert!(compared.status.success(), "{}", String::from_utf8_lossy(&compared.stderr));
    let read_back = pretrained::read_tensors(&written).unwrap();
    assert_eq!(read_back.len(), tensors.len());
    assert!(read_back.iter().all(|(name, tensor)| tensor.equal(&tensors[name])), "our reader reads it back");

    let expected = read(&fixtures().join("ram_plus-expected.safetensors"));
    let logits = tch::no_grad(|| model.logits(&expected["pixel_values"]));
    assert_eq!(logits.size(), [2, 8]);
    let difference = max_difference(&logits, &expected["logits"]);
    assert!(difference <= 1e-4, "logits differ from the reference's by {difference}");

    let embeds = model.image_embeds(&expected["pixel_values"]);
    let terms = model.losses(&embeds, &expected["targets"], &expected["teacher_image"], &expected["captions"]);
    for (name, term) in ["tag", "distill", "align"].iter().zip(&terms) {
        let (ours, theirs) = (term.double_value(&[]), expected[*name].double_value(&[]));
        assert!((ours - theirs).abs() <= 1e-5 * theirs.abs().max(1.0), "{name}: {ours} vs {theirs}");
    }
    terms.iter().fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |sum, term| sum + term).backward();
    let variables = var_store.variables();
    for (name, gradient) in expected.iter().filter_map(|(name, t)| name.strip_prefix("grad.").map(|n| (n, t))) {
        let difference = max_difference(&variables[name].grad(), gradient);
        let scale = gradient.abs().max().double_value(&[]).max(1.0);
        assert!(difference <= 1e-4 * scale, "the gradient of {name} differs by {difference} (largest {scale})");
    }
}

#[test]
fn rams_tagging_branch_loads_from_its_pth_with_the_caption_branch_reported_unused() {
    let file = fixtures().join("ram.pth");
    let tensors = pretrained::read_tensors(&file).unwrap();
    let config = RamPlusConfig::of_checkpoint(&file, &tensors, 8).unwrap();
    let expected =
        RamPlusConfig { vision: small_swin(), head: small_head(), tags: 8, descriptions: 1, reweighted: false };
    assert_eq!(config, expected);
    let var_store = nn::VarStore::new(Device::Cpu);
    let model = RamPlus::new(&var_store.root(), &config);
    let report = pretrained::load_tensors_named(&var_store, &file, &tensors, |n| Some(n.to_string()), false).unwrap();
    let line = ram_plus::describe_load(&var_store, &report, &tensors);
    assert!(line.ends_with("8 Swin buffers computed here; unused: 1 `tag_encoder.*`, 2 `text_decoder.*`"), "{line}");

    let pixels = &read(&fixtures().join("ram_plus-expected.safetensors"))["pixel_values"];
    let logits = tch::no_grad(|| model.logits(pixels));
    let difference = max_difference(&logits, &read(&fixtures().join("ram-expected.safetensors"))["logits"]);
    assert!(difference <= 1e-4, "logits differ from the reference's by {difference}");
}
