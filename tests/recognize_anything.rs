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
use trainer::models::bert::{BertConfig, BertTextConfig};
use trainer::models::pretrained;
use trainer::models::ram_plus::{self, RamPlus, RamPlusConfig, TagQueries};
use trainer::models::swin::{BUFFER_SUFFIXES, Swin, SwinConfig};
use trainer::models::text_generation::Search;

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

/// Writes `model`'s state dict as recognize-anything saves it, to the fixtures' `name`, and
/// checks with `torch.load(weights_only=True)` that it holds `original`'s tensors, equal in
/// names, dtypes and values. Returns the written file.
fn assert_written_back_as(model: &RamPlus, var_store: &nn::VarStore, original: &Path, name: &str) -> PathBuf {
    let written = fixtures().join(name);
    trainer::models::pth::write_state_dict(&written, "model", &model.state_dict(var_store)).unwrap();
    let compared =
        common::python_fixture("recognize_anything/same_checkpoint.py", &[original.as_os_str(), written.as_os_str()]);
    assert!(compared.status.success(), "{}", String::from_utf8_lossy(&compared.stderr));
    written
}

#[test]
fn ram_plus_reads_recognize_anythings_pth_and_gives_its_logits() {
    let file = fixtures().join("ram_plus.pth");
    let config = RamPlusConfig {
        vision: small_swin(),
        head: small_head(),
        tags: 8,
        descriptions: 3,
        reweighted: true,
        queries: TagQueries::ClipText,
        text: None,
    };
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
    let line = ram_plus::describe_load(&model, &var_store, &report, &tensors);
    let parts = "(image encoder 92, label embeddings 1, tagging head 37); 8 buffers computed here";
    assert!(line.ends_with(parts), "{line}");

    // Written back as recognize-anything saves it: torch.load(weights_only=True) gives the
    // file's tensors, buffers included, equal in names, dtypes and values.
    let written = assert_written_back_as(&model, &var_store, &file, "ram_plus-written.pth");
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

/// The reference RAM's text model: 2 layers 64 wide with one head of BERT's 64, over the
/// fixture's vocabulary and `[DEC]`, `[ENC]`.
fn small_text(vocab_size: i64) -> BertTextConfig {
    let layers = BertConfig {
        hidden_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 1,
        intermediate_size: 128,
        layer_norm_eps: 1e-12,
        encoder_width: 64,
    };
    BertTextConfig { layers, vocab_size, max_position_embeddings: 48 }
}

#[test]
fn ram_loads_whole_from_its_pth_and_its_caption_branch_gives_the_references_t2t() {
    let file = fixtures().join("ram.pth");
    let tensors = pretrained::read_tensors(&file).unwrap();
    let config = RamPlusConfig::of_checkpoint(&file, &tensors, 8).unwrap();
    let vocab_size = tensors["tag_encoder.embeddings.word_embeddings.weight"].size()[0];
    // The tagging head is as wide as the text model, whose first layers it shares.
    let head = BertConfig { hidden_size: 64, intermediate_size: 128, ..small_head() };
    let text = Some(small_text(vocab_size));
    let queries = TagQueries::ClipText;
    let expected =
        RamPlusConfig { vision: small_swin(), head, tags: 8, descriptions: 1, reweighted: false, queries, text };
    assert_eq!(config, expected);
    let var_store = nn::VarStore::new(Device::Cpu);
    let model = RamPlus::new(&var_store.root(), &config);
    let line = load_whole(&model, &var_store, &file, &tensors);
    // Tied: each shared block's 16 tensors in 2 layers, and the decoder's output weights.
    let parts = "(caption branch 85, image encoder 92, label embeddings 1, tagging head 36); 10 buffers computed here; \
                 34 tied to others";
    assert!(line.ends_with(parts), "{line}");

    // Written back whole, tied tensors under each of their names, as recognize-anything's
    // strict load wants them.
    assert_written_back_as(&model, &var_store, &file, "ram-written.pth");

    let pixels = &read(&fixtures().join("ram_plus-expected.safetensors"))["pixel_values"];
    let expected = read(&fixtures().join("ram-expected.safetensors"));
    let logits = tch::no_grad(|| model.logits(pixels));
    let difference = max_difference(&logits, &expected["logits"]);
    assert!(difference <= 1e-4, "logits differ from the reference's by {difference}");

    let caption = model.caption().expect("RAM's checkpoint has its caption branch");
    let embeds = model.image_embeds(pixels);
    let tag_tokens = caption.encode_tags(&expected["tag_ids"], &expected["tag_mask"], &embeds, Kind::Float);
    let difference = max_difference(&tag_tokens, &expected["tag_tokens"]);
    assert!(difference <= 1e-4, "the tag encoder's tokens differ by {difference}");
    let (ids, mask) = (&expected["caption_ids"], &expected["caption_mask"]);
    let logits = caption.caption_logits(ids, mask, &tag_tokens, Kind::Float);
    let difference = max_difference(&logits, &expected["caption_logits"]);
    assert!(difference <= 1e-4, "the decoder's logits differ by {difference}");
    let t2t = caption.t2t_loss(ids, mask, &tag_tokens, Kind::Float, tch::Reduction::Mean);
    let (ours, theirs) = (t2t.double_value(&[]), expected["t2t"].double_value(&[]));
    assert!((ours - theirs).abs() <= 1e-5 * theirs.abs().max(1.0), "t2t: {ours} vs {theirs}");
    t2t.backward();
    let compared = assert_gradients(&var_store, &expected);
    assert_eq!(compared, 5, "a tied head weight, the image encoder, both text models, the output head");

    // Captions as transformers' `generate` writes them, greedy and with beam search, as
    // Tag2Text's `generate` calls it by default.
    let prompt = Vec::<i64>::try_from(expected["prompt_ids"].view([-1])).unwrap();
    let eos = 3;
    let caption_search = Search { beams: 3, max_length: 30, min_length: 5, length_penalty: 1.0, eos };
    for (name, search) in [("greedy", Search { beams: 1, ..caption_search }), ("beam", caption_search)] {
        let ours = caption.generate(&tag_tokens.detach(), &prompt, &search, Kind::Float);
        let theirs = Vec::<Vec<i64>>::try_from(&expected[&format!("captions.{name}")]).unwrap();
        assert_eq!(ours, theirs.iter().map(|ids| ended(ids, prompt.len(), eos)).collect::<Vec<_>>(), "{name}");
    }
}

/// `model`, built for `file`'s `tensors`, loaded from them, tied tensors from each copy.
fn load_whole(model: &RamPlus, var_store: &nn::VarStore, file: &Path, tensors: &HashMap<String, Tensor>) -> String {
    let aliases = model.aliases();
    let variable = |name: &str| Some(trainer::models::ram_caption::canonical_name(name, &aliases));
    let report = pretrained::load_tensors_named(var_store, file, tensors, variable, false).unwrap();
    assert!(report.fresh.is_empty(), "{:?}", report.fresh);
    ram_plus::describe_load(model, var_store, &report, tensors)
}

/// Each gradient `grad.<name>` of `expected` against the variable's; returns how many.
fn assert_gradients(var_store: &nn::VarStore, expected: &HashMap<String, Tensor>) -> usize {
    let variables = var_store.variables();
    let mut compared = 0;
    for (name, gradient) in expected.iter().filter_map(|(name, t)| name.strip_prefix("grad.").map(|n| (n, t))) {
        let difference = max_difference(&variables[name].grad(), gradient);
        let scale = gradient.abs().max().double_value(&[]).max(1.0);
        assert!(difference <= 1e-4 * scale, "the gradient of {name} differs by {difference} (largest {scale})");
        compared += 1;
    }
    compared
}

/// transformers' `generate` pads what follows a caption's end with the end token `eos`:
/// the ids up to and with the first end after the `prompt`.
fn ended(ids: &[i64], prompt: usize, eos: i64) -> Vec<i64> {
    let end = ids[prompt..].iter().position(|&id| id == eos).map_or(ids.len(), |at| prompt + at + 1);
    ids[..end].to_vec()
}

#[test]
fn tag2text_loads_from_its_pth_and_gives_the_references_logits_t2t_and_captions() {
    let file = fixtures().join("tag2text.pth");
    let tensors = pretrained::read_tensors(&file).unwrap();
    let config = RamPlusConfig::of_checkpoint(&file, &tensors, 8).unwrap();
    let vocab_size = tensors["tag_encoder.embeddings.word_embeddings.weight"].size()[0];
    // The head reads the Swin's 64-wide tokens.
    let head = BertConfig { hidden_size: 64, intermediate_size: 128, encoder_width: 64, ..small_head() };
    let text = Some(BertTextConfig { max_position_embeddings: 64, ..small_text(vocab_size) });
    let queries = TagQueries::Learned;
    let expected =
        RamPlusConfig { vision: small_swin(), head, tags: 8, descriptions: 1, reweighted: false, queries, text };
    assert_eq!(config, expected);
    let wrong = RamPlusConfig::of_checkpoint(&file, &tensors, 5).unwrap_err().to_string();
    assert!(wrong.contains("`label_embed.weight` has 8 rows") && wrong.contains("Tag2Text's has 3429"), "{wrong}");
    let var_store = nn::VarStore::new(Device::Cpu);
    let model = RamPlus::new(&var_store.root(), &config);
    let line = load_whole(&model, &var_store, &file, &tensors);
    let parts = "(caption branch 85, image encoder 90, label embeddings 1, tagging head 34); 10 buffers computed here; \
                 34 tied to others";
    assert!(line.ends_with(parts), "{line}");
    assert_written_back_as(&model, &var_store, &file, "tag2text-written.pth");

    let pixels = &read(&fixtures().join("ram_plus-expected.safetensors"))["pixel_values"];
    let inputs = read(&fixtures().join("ram-expected.safetensors"));
    let expected = read(&fixtures().join("tag2text-expected.safetensors"));
    let embeds = model.image_embeds(pixels);
    let logits = model.tag_logits(&embeds);
    let difference = max_difference(&logits, &expected["logits"]);
    assert!(difference <= 1e-4, "logits differ from the reference's by {difference}");
    let tag = ram_plus::tag_loss(&logits, &expected["targets"]);
    let caption = model.caption().expect("Tag2Text's checkpoint has its caption branch");
    let tag_tokens = caption.encode_tags(&inputs["tag_ids"], &inputs["tag_mask"], &embeds, Kind::Float);
    let difference = max_difference(&tag_tokens, &expected["tag_tokens"]);
    assert!(difference <= 1e-4, "the tag encoder's tokens differ by {difference}");
    let (ids, mask) = (&inputs["caption_ids"], &inputs["caption_mask"]);
    let t2t = caption.t2t_loss(ids, mask, &tag_tokens, Kind::Float, tch::Reduction::Mean);
    for (name, term) in [("tag", &tag), ("t2t", &t2t)] {
        let (ours, theirs) = (term.double_value(&[]), expected[name].double_value(&[]));
        assert!((ours - theirs).abs() <= 1e-5 * theirs.abs().max(1.0), "{name}: {ours} vs {theirs}");
    }
    (tag + t2t).backward();
    assert_eq!(assert_gradients(&var_store, &expected), 5, "queries, per-tag linear, head, image, tag encoder");

    // Captions as `inference_tag2text` writes them: 3 beams, 10 to 50 tokens.
    let prompt = Vec::<i64>::try_from(inputs["prompt_ids"].view([-1])).unwrap();
    let eos = 3;
    let ours = caption.generate(
        &tag_tokens.detach(),
        &prompt,
        &trainer::models::ram_caption::caption_search(eos),
        Kind::Float,
    );
    let theirs = Vec::<Vec<i64>>::try_from(&expected["captions.beam"]).unwrap();
    assert_eq!(ours, theirs.iter().map(|ids| ended(ids, prompt.len(), eos)).collect::<Vec<_>>());
    assert!(ours.iter().all(|ids| ids.len() >= 10), "at least 10 tokens: {ours:?}");
}

/// BLEU and CIDEr-D of a set of captions equal pycocoevalcap's on the same words: written
/// cases (a perfect caption, one sharing no 4-gram, one reference or five of unequal
/// lengths, a one-word caption, repeated words) and random captions over a small vocabulary.
#[test]
fn caption_metrics_equal_pycocoevalcaps_bleu_and_cider() {
    use trainer::eval::{bleu, caption_words, cider_d};
    let mut candidates: Vec<String> = [
        "A dress and a coat on a white background.",
        "coat dress a",
        "a man wearing a red coat",
        "Sneakers",
        "a bag a bag a bag a bag",
    ]
    .map(String::from)
    .to_vec();
    let mut references: Vec<Vec<String>> = vec![
        vec!["a dress and a coat on a white background".into()],
        vec!["a dress and a coat".into(), "two garments: a dress, a coat".into()],
        vec![
            "a man in a red coat".into(),
            "a man wearing a coat that is red and a hat".into(),
            "man, red coat".into(),
            "a person wearing a red coat on the street".into(),
            "someone's red coat".into(),
        ],
        vec!["a pair of sneakers".into(), "sneakers on a white background".into()],
        vec!["a bag".into(), "a leather bag with a handle".into()],
    ];
    const WORDS: [&str; 12] = ["a", "the", "dress", "coat", "bag", "red", "on", "and", "of", "white", "man", "shoe"];
    let mut state = 12345u64;
    let mut draw = |below: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as usize % below
    };
    let sentence = |draw: &mut dyn FnMut(usize) -> usize| {
        let length = 1 + draw(12);
        (0..length).map(|_| WORDS[draw(WORDS.len())]).collect::<Vec<_>>().join(" ")
    };
    for _ in 0..40 {
        candidates.push(sentence(&mut draw));
        let count = 1 + draw(5);
        references.push((0..count).map(|_| sentence(&mut draw)).collect());
    }
    let words: Vec<Vec<String>> = candidates.iter().map(|caption| caption_words(caption)).collect();
    let reference_words: Vec<Vec<Vec<String>>> =
        references.iter().map(|captions| captions.iter().map(|caption| caption_words(caption)).collect()).collect();
    let joined = |words: &Vec<String>| words.join(" ");
    let input = serde_json::json!({
        "candidates": words.iter().map(joined).collect::<Vec<_>>(),
        "references": reference_words.iter().map(|refs| refs.iter().map(joined).collect::<Vec<_>>()).collect::<Vec<_>>(),
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("captions.json");
    std::fs::write(&file, input.to_string()).unwrap();
    let scored = common::python_fixture("captioning/coco_caption_scores.py", &[file.as_os_str()]);
    assert!(scored.status.success(), "{}", String::from_utf8_lossy(&scored.stderr));
    let theirs: serde_json::Value = serde_json::from_slice(&scored.stdout).unwrap();
    let close = |ours: f64, theirs: &serde_json::Value| (ours - theirs.as_f64().unwrap()).abs() <= 1e-9;
    let ours = bleu(&words, &reference_words);
    assert!((0..4).all(|order| close(ours[order], &theirs["bleu"][order])), "BLEU {ours:?} vs {}", theirs["bleu"]);
    assert!(ours[3] > 0.0 && ours[3] < 1.0, "{ours:?}");
    let (mean, per_image) = cider_d(&words, &reference_words);
    assert!(close(mean, &theirs["cider"]), "CIDEr {mean} vs {}", theirs["cider"]);
    for (image, score) in per_image.iter().enumerate() {
        assert!(
            close(*score, &theirs["cider_per_image"][image]),
            "image {image}: {score} vs {}",
            theirs["cider_per_image"][image]
        );
    }
}

#[test]
fn the_bert_tokenizer_gives_transformers_ids_from_a_vocabulary_or_a_tokenizer_json() {
    use trainer::data::bert_tokenizer::{BertTokenizer, Padding};
    let dir = fixtures();
    let expected = common::read_json(&dir.join("tokenizer-expected.json"));
    let texts: Vec<String> = serde_json::from_value(expected["texts"].clone()).unwrap();
    let ids: Vec<Vec<i64>> = serde_json::from_value(expected["ids"].clone()).unwrap();
    let decoded: Vec<String> = serde_json::from_value(expected["decoded"].clone()).unwrap();
    let caption = read(&dir.join("ram-expected.safetensors"));
    for folder in ["bert_vocab", "bert_fast"] {
        let tokenizer = BertTokenizer::from_dir(&dir.join(folder)).unwrap();
        assert_eq!(
            (tokenizer.dec_id(), tokenizer.enc_id()),
            (expected["dec"].as_i64().unwrap(), expected["enc"].as_i64().unwrap())
        );
        for ((text, ids), decoded) in texts.iter().zip(&ids).zip(&decoded) {
            let (ours, mask) = tokenizer.encode(std::slice::from_ref(text), 40, Padding::Longest);
            let ours = Vec::<i64>::try_from(ours.view([-1])).unwrap();
            assert_eq!(&ours, ids, "{folder}: {text:?}");
            assert_eq!(mask.sum(Kind::Int64).int64_value(&[]), ids.len() as i64);
            assert_eq!(&tokenizer.decode(&ours), decoded, "{folder}: {text:?}");
        }
        // RAM's tag strings: padded to 40, the first token then made `[ENC]`.
        let tags = ["t-shirt | dress", "sandal | ankle boot | car"].map(String::from);
        let (ours, mask) = tokenizer.encode(&tags, 40, Padding::Full);
        let _ = ours.narrow(1, 0, 1).fill_(tokenizer.enc_id());
        assert!(ours.equal(&caption["tag_ids"]) && mask.equal(&caption["tag_mask"]), "{folder}");
    }
}

/// The fixture RAM++'s eight tags: six garments of the mosaics and two they never show.
const CHECKPOINT_TAGS: [&str; 8] = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "car", "dog"];

/// A folder with the fixture RAM++'s tag list and descriptions of the four garments of the
/// mosaics it lacks.
fn tag_files() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model_tags.txt"), CHECKPOINT_TAGS.join("\n") + "\n").unwrap();
    let descriptions = serde_json::json!([
        {"shirt": ["a shirt with a collar and buttons down the front", "a long-sleeved shirt"]},
        {"sneaker": ["a sneaker, a sports shoe with laces", "a low trainer shoe"]},
        {"bag": ["a handbag with a handle", "a leather bag"]},
        {"ankle boot": ["an ankle boot with a heel", "a short boot that covers the ankle"]},
    ]);
    std::fs::write(dir.path().join("descriptions.json"), descriptions.to_string()).unwrap();
    dir
}

/// `trainer train` of the fixture RAM++ as initialised on the mosaics, its tag list the
/// mosaics' ten garments, with its teacher, after a warmup of 30 steps at `lr`.
fn train_ram_plus(run_dir: &Path, tags: &Path, lr: &str, extra: &[&str]) -> std::process::Output {
    let descriptions = tags.join("descriptions.json");
    let mut args = vec!["--tag-descriptions", descriptions.to_str().unwrap(), "--batch-size", "32", "--seed", "2"];
    args.extend(["--lr", lr]);
    args.extend(extra);
    let warmup = vec![format!("{}:warmup_steps=30", common::policy("cosine_warmup").display())];
    train_fixture(run_dir, "ram_plus-init.pth", tags, &warmup, &args)
}

/// `trainer train --task tagging` of the fixture model `file`, its tags those of `tags`'s
/// `model_tags.txt`, with the fixture teacher, under `policies`.
fn train_fixture(run_dir: &Path, file: &str, tags: &Path, policies: &[String], extra: &[&str]) -> std::process::Output {
    let fixtures = fixtures();
    let (model, teacher, model_tags) = (fixtures.join(file), fixtures.join("teacher"), tags.join("model_tags.txt"));
    let mut args = vec!["--task", "tagging", "--model", model.to_str().unwrap()];
    args.extend(["--model-tags", model_tags.to_str().unwrap(), "--teacher", teacher.to_str().unwrap()]);
    args.extend(extra);
    common::train_cpu(run_dir, policies, &args)
}

#[test]
fn ram_plus_fine_tunes_on_a_custom_tag_list_with_new_tags_made_from_descriptions() {
    let tags = tag_files();
    let (untrained, tuned) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let before = train_ram_plus(untrained.path(), tags.path(), "0", &["--steps", "1"]);
    common::assert_success(&before);
    let started = String::from_utf8_lossy(&before.stdout).into_owned() + &common::stderr(&before);
    assert!(
        started.contains("label embeddings: 6 tags from the checkpoint; 4 from their descriptions"),
        "the start-up report says where each tag's embeddings came from: {started}"
    );
    // Open-set tagging without training: the checkpoint with the new tags embedded from
    // their descriptions scores images as the run above saved it (at learning rate 0).
    let images = tempfile::tempdir().unwrap();
    common::write_mosaics(images.path(), 0, 3);
    let predict = |model: &Path, extra: &[&str]| -> Vec<serde_json::Value> {
        let out = images.path().join("tags.jsonl");
        let (model, dir) = (model.to_str().unwrap(), images.path().to_str().unwrap());
        let args = ["predict", "--model", model, "--images", dir, "--out", out.to_str().unwrap(), "--threshold", "0"];
        common::assert_success(&common::trainer(&[&args[..], &["--device", "cpu"], extra].concat()));
        common::read_jsonl(&out)
    };
    let (fixtures, garments) = (fixtures(), tags.path().join("garments.txt"));
    std::fs::write(&garments, trainer::data::fashion_mnist::CLASS_NAMES.join("\n")).unwrap();
    let (model_tags, descriptions) = (tags.path().join("model_tags.txt"), tags.path().join("descriptions.json"));
    let teacher = fixtures.join("teacher");
    let open_set = [
        "--model-tags",
        model_tags.to_str().unwrap(),
        "--tags",
        garments.to_str().unwrap(),
        "--tag-descriptions",
        descriptions.to_str().unwrap(),
        "--teacher",
        teacher.to_str().unwrap(),
    ];
    let from_pth = predict(&fixtures.join("ram_plus-init.pth"), &open_set);
    assert_eq!(from_pth.len(), 3);
    assert_eq!(from_pth[0]["tags"].as_array().unwrap().len(), 10, "every garment, new ones too");
    assert_eq!(from_pth, predict(&untrained.path().join("final"), &[]));

    let after = train_ram_plus(tuned.path(), tags.path(), "1e-3", &["--steps", "300"]);
    common::assert_success(&after);
    let metrics = common::read_jsonl(&tuned.path().join("metrics.jsonl"));
    let names: Vec<&String> = metrics[0]["losses"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["align", "distill", "tag"]);
    let (before, after) =
        (common::read_json(&untrained.path().join("eval.json")), common::read_json(&tuned.path().join("eval.json")));
    for metric in ["mAP", "unseen_mAP"] {
        let (was, is) = (before[metric].as_f64().unwrap(), after[metric].as_f64().unwrap());
        // Measured: 0.35 untrained (the tags' mean frequency: nothing ranked), 0.74 after.
        assert!(is > was + 0.2, "{metric}: {was} untrained, {is} fine-tuned");
    }
    let final_dir = tuned.path().join("final");
    let config = common::read_json(&final_dir.join("config.json"));
    assert_eq!(config["model_type"], "ram_plus");
    assert_eq!(config["added_tags"], serde_json::json!(["shirt", "sneaker", "bag", "ankle boot"]));
    assert_eq!(config["thresholds"][0], 0.68);
    let checked = common::python_fixture("recognize_anything/check_saved.py", &[final_dir.as_os_str()]);
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));

    // Each tag's figures, and thresholds calibrated on the same images: no tag's F1 is lower
    // at its F1-best threshold than at 0.68.
    let per_tag = after["per_tag"].as_array().unwrap();
    assert!(tuned.path().join("plots/per_tag_ap.png").is_file(), "the chart of the best and worst tags");
    let tags: Vec<&str> = per_tag.iter().map(|row| row["tag"].as_str().unwrap()).collect();
    assert_eq!(tags, trainer::data::fashion_mnist::CLASS_NAMES);
    assert!(per_tag.iter().all(|row| row["support"].as_u64().unwrap() > 0 && row["ap"].as_f64().is_some()));
    let thresholds = tuned.path().join("thresholds.txt");
    let model = final_dir.to_str().unwrap();
    let calibrate =
        ["eval", "--model", model, "--device", "cpu", "--calibrate-thresholds", thresholds.to_str().unwrap()];
    common::assert_success(&common::trainer(&calibrate));
    let calibrated: Vec<f64> =
        std::fs::read_to_string(&thresholds).unwrap().lines().map(|line| line.parse().unwrap()).collect();
    assert_eq!(calibrated.len(), 10);
    let mut config = common::read_json(&final_dir.join("config.json"));
    config["thresholds"] = serde_json::json!(calibrated);
    std::fs::write(final_dir.join("config.json"), config.to_string()).unwrap();
    let out = tuned.path().join("calibrated.json");
    let evaluated = common::trainer(&["eval", "--model", model, "--device", "cpu", "--out", out.to_str().unwrap()]);
    common::assert_success(&evaluated);
    let recalibrated = common::read_json(&out);
    for (before, now) in per_tag.iter().zip(recalibrated["per_tag"].as_array().unwrap()) {
        let (was, is) = (before["f1"].as_f64().unwrap(), now["f1"].as_f64().unwrap());
        assert!(is >= was, "{}: F1 {was} at 0.68, {is} at its calibrated threshold", before["tag"]);
    }
    assert!(recalibrated["CF1"].as_f64().unwrap() > after["CF1"].as_f64().unwrap());
}

#[test]
fn a_ram_plus_run_paused_and_resumed_ends_bit_identical_and_predicts_with_its_thresholds() {
    let tags = tag_files();
    let (whole, part) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = ["--steps", "6", "--eval-every", "3", "--accum-steps", "2"];
    common::assert_success(&train_ram_plus(whole.path(), tags.path(), "1e-3", &args));
    let paused = [&args[..], &["--pause-after-steps", "4"]].concat();
    common::assert_success(&train_ram_plus(part.path(), tags.path(), "1e-3", &paused));
    let resumed = common::trainer(&["train", "--resume", part.path().to_str().unwrap(), "--device", "cpu"]);
    common::assert_success(&resumed);
    for file in ["final/model.safetensors", "final/model.pth", "evaluations.jsonl", "eval.json"] {
        let read = |dir: &Path| std::fs::read(dir.join(file)).unwrap();
        assert!(read(whole.path()) == read(part.path()), "{file} differs after a pause at step 4");
    }

    // Every tag at its own threshold (0.68 but one), and the `tag | tag` string of RAM.
    let final_dir = whole.path().join("final");
    let config_path = final_dir.join("config.json");
    let mut config = common::read_json(&config_path);
    config["thresholds"][1] = serde_json::json!(0.0);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let images = tempfile::tempdir().unwrap();
    common::write_mosaics(images.path(), 0, 2);
    let out = images.path().join("tags.jsonl");
    let predicted = common::trainer(&[
        "predict",
        "--model",
        final_dir.to_str().unwrap(),
        "--images",
        images.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    common::assert_success(&predicted);
    let lines = common::read_jsonl(&out);
    assert_eq!(lines.len(), 2);
    for line in &lines {
        let tags = line["tags"].as_array().unwrap();
        assert!(tags.iter().any(|tag| tag["tag"] == "trouser"), "a threshold of 0 keeps `trouser`: {line}");
        let kept = |tag: &serde_json::Value| tag["tag"] == "trouser" || tag["score"].as_f64().unwrap() >= 0.68;
        assert!(tags.iter().all(kept), "the others at 0.68: {line}");
        let names: Vec<&str> = tags.iter().map(|tag| tag["tag"].as_str().unwrap()).collect();
        assert_eq!(line["tag_string"], names.join(" | "));
    }
}

#[test]
fn a_pth_without_tag_names_or_a_loss_without_its_teacher_is_refused_in_one_line() {
    let model = fixtures().join("ram_plus.pth");
    let run = tempfile::tempdir().unwrap();
    let model_arg = model.to_str().unwrap();
    let constant = vec![common::policy("constant").display().to_string()];
    let no_names =
        common::train_cpu(run.path(), &constant, &["--task", "tagging", "--model", model_arg, "--steps", "1"]);
    common::assert_one_line_error(&no_names, 1, &["ram_plus.pth", "--model-tags", "ram_tag_list.txt"]);
    let tags = tag_files();
    let model_tags = tags.path().join("model_tags.txt");
    let args = ["--task", "tagging", "--model", model_arg, "--model-tags", model_tags.to_str().unwrap()];
    let no_teacher = common::train_cpu(run.path(), &constant, &[&args[..], &["--losses", "tag,distill"]].concat());
    common::assert_one_line_error(&no_teacher, 1, &["--teacher", "the `distill` loss", "`shirt`"]);
}

/// `count` mosaics in `dir` described by recognize-anything's finetune JSON, `finetune.json`
/// (each caption's tags in `parse_label_id`: all four garments for the first, the first
/// garment for the second), and by a manifest of the same images and tags, `tagged.jsonl`,
/// with the mosaics' ten garments as the run's tag list `run_tags.txt`. Returns the JSON's
/// entries.
fn write_finetune_json(dir: &Path, count: usize) -> Vec<serde_json::Value> {
    use trainer::data::fashion_mnist::CLASS_NAMES;
    std::fs::write(dir.join("run_tags.txt"), CLASS_NAMES.join("\n")).unwrap();
    let (mut lines, mut entries) = (Vec::new(), Vec::new());
    for mosaic in common::write_mosaics(dir, 0, count) {
        let ids: Vec<usize> =
            mosaic.tags.iter().map(|tag| CLASS_NAMES.iter().position(|c| c == tag).unwrap()).collect();
        lines.push(serde_json::json!({"image": mosaic.file_name, "tags": mosaic.tags}).to_string());
        let parsed = vec![ids.clone(), ids[..1].to_vec()];
        entries.push(serde_json::json!({"image_path": mosaic.file_name, "caption": mosaic.captions,
            "union_label_id": ids, "parse_label_id": parsed}));
    }
    std::fs::write(dir.join("tagged.jsonl"), lines.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("finetune.json"), serde_json::Value::Array(entries.clone()).to_string()).unwrap();
    entries
}

#[test]
fn recognize_anythings_finetune_json_trains_as_the_same_manifest_and_its_ids_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let tags = tag_files();
    let mut entries = write_finetune_json(dir.path(), 40);
    let (run_tags, manifest) = (dir.path().join("run_tags.txt"), dir.path().join("tagged.jsonl"));
    let finetune = dir.path().join("finetune.json");
    let train = |run: &Path, data: &Path, losses: &[&str]| {
        let args = ["--data", data.to_str().unwrap(), "--tags", run_tags.to_str().unwrap()];
        let rest = ["--steps", "3", "--eval-every", "3", "--workers", "1"];
        train_ram_plus(run, tags.path(), "1e-3", &[&args[..], &rest, losses].concat())
    };
    let (from_manifest, from_finetune) = (dir.path().join("manifest-run"), dir.path().join("finetune-run"));
    // Without captions, RAM's tagging-branch fine-tune: `tag` and `distill` alone.
    let uncaptioned = train(&from_manifest, &manifest, &[]);
    common::assert_success(&uncaptioned);
    let report = String::from_utf8_lossy(&uncaptioned.stdout).into_owned() + &common::stderr(&uncaptioned);
    assert!(report.contains("align left out") && report.contains("losses tag, distill"), "{report}");
    common::assert_success(&train(&from_finetune, &finetune, &["--losses", "tag,distill"]));
    let losses = |run: &Path| -> Vec<serde_json::Value> {
        common::read_jsonl(&run.join("metrics.jsonl")).into_iter().map(|line| line["losses"].clone()).collect()
    };
    assert_eq!(losses(&from_manifest), losses(&from_finetune));
    assert_eq!(
        common::read_json(&from_manifest.join("eval.json")),
        common::read_json(&from_finetune.join("eval.json"))
    );

    // RAM on the same file: its default terms with a teacher are `tag`, `distill` and `t2t`,
    // the caption decoder's loss for each drawn caption given its own parsed tags; it falls.
    let ram_run = dir.path().join("ram-run");
    let vocabulary = fixtures().join("bert_vocab");
    let args = [
        ["--data", finetune.to_str().unwrap(), "--tags", run_tags.to_str().unwrap()],
        ["--text-tokenizer", vocabulary.to_str().unwrap(), "--steps", "20"],
        ["--lr", "1e-3", "--batch-size", "8"],
    ]
    .concat();
    let constant = [common::policy("constant").display().to_string()];
    let trained = train_fixture(&ram_run, "ram.pth", tags.path(), &constant, &args);
    common::assert_success(&trained);
    let report = String::from_utf8_lossy(&trained.stdout).into_owned() + &common::stderr(&trained);
    assert!(report.contains("losses tag, distill, t2t"), "{report}");
    let t2t: Vec<f64> = losses(&ram_run).iter().map(|losses| losses["t2t"].as_f64().unwrap()).collect();
    let mean = |values: &[f64]| values.iter().sum::<f64>() / values.len() as f64;
    assert!(t2t.len() == 20 && mean(&t2t[15..]) < 0.8 * mean(&t2t[..5]), "t2t falls: {t2t:?}");
    // And on the held-out images' captions, against the same model untrained.
    let untrained_run = dir.path().join("ram-untrained");
    let untrained = [&args[..args.len() - 6], &["--steps", "1", "--lr", "0", "--batch-size", "8"]].concat();
    common::assert_success(&train_fixture(&untrained_run, "ram.pth", tags.path(), &constant, &untrained));
    let held_out = |run: &Path| common::read_json(&run.join("eval.json"))["val_t2t"].as_f64().unwrap();
    let (trained, untrained) = (held_out(&ram_run), held_out(&untrained_run));
    assert!(trained < 0.9 * untrained, "val_t2t {trained} vs untrained {untrained}");
    // Its folder captions images from the tags it predicts (or none), with its own tokenizer.
    let images = tempfile::tempdir().unwrap();
    common::write_mosaics(images.path(), 100, 3);
    let captions = |threshold: &str| -> Vec<String> {
        let (model, out) = (ram_run.join("final"), images.path().join("predicted.jsonl"));
        let args = ["predict", "--model", model.to_str().unwrap(), "--images", images.path().to_str().unwrap()];
        let rest = ["--out", out.to_str().unwrap(), "--threshold", threshold, "--device", "cpu"];
        common::assert_success(&common::trainer(&[&args[..], &rest].concat()));
        common::read_jsonl(&out).iter().map(|line| line["caption"].as_str().unwrap().to_string()).collect()
    };
    let with_tags = captions("0.5");
    assert_eq!(with_tags.len(), 3);
    assert_eq!(with_tags, captions("0.5"), "beam search is deterministic");
    assert_eq!(captions("1").len(), 3, "an image with no tag kept is captioned from an empty tag string");

    // An id past the tag list: the file was written for another list.
    entries[3]["union_label_id"] = serde_json::json!([2, 12]);
    std::fs::write(&finetune, serde_json::Value::Array(entries).to_string()).unwrap();
    let refused = train(&dir.path().join("refused"), &finetune, &[]);
    common::assert_one_line_error(&refused, 1, &["finetune.json entry 3", "tag id 12", "10 tags of", "run_tags.txt"]);
}

/// Tag2Text fine-tuned on tags of its own, as recognize-anything's tracker advises (the
/// queries and linears of new tags initialised afresh, those it has kept), with its terms
/// `tag` and `t2t`; then captioning from the tags a person gives.
#[test]
fn tag2text_fine_tunes_on_tags_of_its_own_and_captions_from_a_persons_tags() {
    use trainer::data::fashion_mnist::CLASS_NAMES;
    let (dir, tags) = (tempfile::tempdir().unwrap(), tag_files());
    write_finetune_json(dir.path(), 24);
    let (model, model_tags) = (fixtures().join("tag2text.pth"), tags.path().join("model_tags.txt"));
    let (finetune, run_tags) = (dir.path().join("finetune.json"), dir.path().join("run_tags.txt"));
    let vocabulary = fixtures().join("bert_vocab");
    let constant = [common::policy("constant").display().to_string()];
    let train = |run: &Path, rest: &[&str]| {
        let args = [
            ["--task", "tagging", "--model", model.to_str().unwrap()],
            ["--model-tags", model_tags.to_str().unwrap(), "--data", finetune.to_str().unwrap()],
            ["--tags", run_tags.to_str().unwrap(), "--text-tokenizer", vocabulary.to_str().unwrap()],
        ]
        .concat();
        common::train_cpu(run, &constant, &[&args[..], &["--batch-size", "8", "--workers", "1"], rest].concat())
    };
    let untrained = dir.path().join("untrained");
    let loaded = train(&untrained, &["--steps", "1", "--lr", "0"]);
    common::assert_success(&loaded);
    let report = String::from_utf8_lossy(&loaded.stdout).into_owned() + &common::stderr(&loaded);
    let lines = ["tagging 10 tags with Tag2Text", "losses tag, t2t", "6 tags from the checkpoint; 4 new"];
    assert!(lines.iter().all(|line| report.contains(line)), "{report}");
    let original = pretrained::read_tensors(&model).unwrap();
    let saved = pretrained::read_tensors(&untrained.join("final/model.pth")).unwrap();
    let names = |tensors: &HashMap<String, Tensor>| tensors.keys().cloned().collect::<BTreeSet<String>>();
    assert_eq!(names(&saved), names(&original), "every name recognize-anything's strict load wants");
    assert_eq!(saved["label_embed.weight"].size(), [10, 64]);
    for (row, tag) in CLASS_NAMES.iter().enumerate() {
        let known = CHECKPOINT_TAGS.iter().position(|known| known == tag);
        let query = |tensors: &HashMap<String, Tensor>, row: usize| tensors["label_embed.weight"].get(row as i64);
        let linear = |tensors: &HashMap<String, Tensor>, row: usize| tensors["fc.W"].select(1, row as i64);
        match known {
            Some(known) => assert!(
                query(&saved, row).equal(&query(&original, known))
                    && linear(&saved, row).equal(&linear(&original, known)),
                "`{tag}` keeps its query and linear"
            ),
            None => assert!(
                !CHECKPOINT_TAGS
                    .iter()
                    .enumerate()
                    .any(|(known, _)| query(&saved, row).equal(&query(&original, known)))
            ),
        }
    }

    // Both terms fall; `tag` trains towards each drawn caption's own tags. The mosaics'
    // captions name their garments and where they are.
    let trained = dir.path().join("trained");
    common::assert_success(&train(&trained, &["--steps", "60", "--lr", "2e-3"]));
    let history = common::read_jsonl(&trained.join("metrics.jsonl"));
    let mean = |term: &str, steps: std::ops::Range<usize>| {
        steps.clone().map(|step| history[step]["losses"][term].as_f64().unwrap()).sum::<f64>() / steps.len() as f64
    };
    for term in ["tag", "t2t"] {
        assert!(mean(term, 56..60) < 0.8 * mean(term, 0..4), "{term} falls: {history:?}");
    }
    let held_out = |run: &Path| common::read_json(&run.join("eval.json"))["val_t2t"].as_f64().unwrap();
    assert!(held_out(&trained) < held_out(&untrained));
    // The held-out captions, scored as the COCO caption evaluation scores them.
    let score = |run: &Path, metric: &str| common::read_json(&run.join("eval.json"))[metric].as_f64().unwrap();
    assert!(score(&trained, "CIDEr") > score(&untrained, "CIDEr") + 0.1);
    assert!((0.0..=1.0).contains(&score(&trained, "Bleu_4")));

    // Trained, captions name the garments of their mosaic more often.
    let images = tempfile::tempdir().unwrap();
    let mosaics = common::write_mosaics(images.path(), 100, 8);
    let named = |run: &Path| -> usize {
        let (model, out) = (run.join("final"), images.path().join("captions.jsonl"));
        let args = ["predict", "--model", model.to_str().unwrap(), "--images", images.path().to_str().unwrap()];
        common::assert_success(&common::trainer(
            &[&args[..], &["--out", out.to_str().unwrap(), "--device", "cpu"]].concat(),
        ));
        let lines = common::read_jsonl(&out);
        let named = mosaics.iter().zip(&lines).map(|(mosaic, line)| {
            let caption = line["caption"].as_str().unwrap();
            mosaic.tags.iter().filter(|garment| caption.contains(garment.as_str())).count()
        });
        named.sum()
    };
    let (before, after) = (named(&untrained), named(&trained));
    assert!(after > before + 2, "garments named: {after} trained, {before} untrained");

    // Captions from given tags are the captions of those tags kept: `dress,coat` is what an
    // image keeping exactly those two would be captioned from.
    let predict = |extra: &[&str]| -> Vec<serde_json::Value> {
        let (model, out) = (trained.join("final"), images.path().join("predicted.jsonl"));
        let args = ["predict", "--model", model.to_str().unwrap(), "--images", images.path().to_str().unwrap()];
        let rest = ["--out", out.to_str().unwrap(), "--device", "cpu"];
        common::assert_success(&common::trainer(&[&args[..], &rest, extra].concat()));
        common::read_jsonl(&out)
    };
    let given = predict(&["--caption-tags", "dress, coat"]);
    let mut kept_file = images.path().join("two_tags.txt");
    std::fs::write(&kept_file, "dress\ncoat\n").unwrap();
    let kept = predict(&["--tags", kept_file.to_str().unwrap(), "--threshold", "0"]);
    assert!(kept.iter().all(|line| line["tags"].as_array().unwrap().len() == 2), "both kept: {kept:?}");
    let captions = |lines: &[serde_json::Value]| lines.iter().map(|line| line["caption"].clone()).collect::<Vec<_>>();
    assert_eq!(captions(&given), captions(&kept));
    assert!(captions(&given).iter().all(|caption| caption.as_str().is_some_and(|text| !text.is_empty())));

    // Tags Tag2Text never learned, and a teacher it has no use for, are refused in one line.
    kept_file = images.path().join("new_tag.txt");
    std::fs::write(&kept_file, "dress\nzebra\n").unwrap();
    let (model_dir, out) = (trained.join("final"), images.path().join("refused.jsonl"));
    let args = ["predict", "--model", model_dir.to_str().unwrap(), "--images", images.path().to_str().unwrap()];
    let refused = common::trainer(
        &[&args[..], &["--out", out.to_str().unwrap(), "--tags", kept_file.to_str().unwrap()]].concat(),
    );
    common::assert_one_line_error(&refused, 1, &["new_tag.txt", "`zebra`", "Tag2Text"]);
    let teacher = fixtures().join("teacher");
    let refused = train(&dir.path().join("refused"), &["--teacher", teacher.to_str().unwrap()]);
    common::assert_one_line_error(&refused, 1, &["--teacher", "tag2text.pth", "Tag2Text"]);
}

#[test]
fn relative_position_tables_resize_as_recognize_anythings_loader_resizes_them() {
    use trainer::models::relative_position::resize_table;
    let expected = read(&fixtures().join("relative_position-expected.safetensors"));
    for (source, window, resized) in [("source.7", 12, "resized.7.12"), ("source.12", 7, "resized.12.7")] {
        let ours = resize_table(&expected[source], window).unwrap();
        let difference = max_difference(&ours, &expected[resized]);
        assert!(difference <= 1e-5, "{resized}: {difference} from SciPy's spline");
    }
}

/// The fixture's RAM++ (64 px, window 4) trained at 224 px, so window 7, with RAM's training
/// transform: its tables resized as recognize-anything's loader resizes them, the
/// RandAugment knobs in the policies' hands.
#[test]
fn a_ram_plus_at_another_image_size_starts_from_resized_tables_and_trains_with_rams_transform() {
    use trainer::data::fashion_mnist::CLASS_NAMES;
    let tags = tag_files();
    let run = tempfile::tempdir().unwrap();
    // Eight images to train and evaluate on: evaluating 2500 at 224 px takes minutes here.
    let data = tempfile::tempdir().unwrap();
    let lines: Vec<String> = common::write_mosaics(data.path(), 0, 8)
        .into_iter()
        .map(|mosaic| serde_json::json!({"image": mosaic.file_name, "tags": mosaic.tags}).to_string())
        .collect();
    let (manifest, run_tags) = (data.path().join("tagged.jsonl"), data.path().join("run_tags.txt"));
    std::fs::write(&manifest, lines.join("\n") + "\n").unwrap();
    std::fs::write(&run_tags, CLASS_NAMES.join("\n")).unwrap();
    let transform = format!(
        "{}:crop_scale_min=0.2,flip_prob=0.5,color_jitter=0,randaugment_ops=2,randaugment_magnitude=5,ramp_steps=0",
        common::policy("aug_curriculum").display()
    );
    let args = [
        "--image-size",
        "224",
        "--data",
        manifest.to_str().unwrap(),
        "--val-data",
        manifest.to_str().unwrap(),
        "--tags",
        run_tags.to_str().unwrap(),
        "--batch-size",
        "4",
        "--steps",
        "2",
        "--lr",
        "0",
    ];
    let policies = [format!("{}", common::policy("constant").display()), transform];
    let output = train_fixture(run.path(), "ram_plus-init.pth", tags.path(), &policies, &args);
    common::assert_success(&output);
    let report = String::from_utf8_lossy(&output.stdout).into_owned() + &common::stderr(&output);
    assert!(
        report.contains("at 224 px") && report.contains("6 resized from 7x7 offsets to 13x13 (window 4 to 7)"),
        "{report}"
    );
    let saved = read(&run.path().join("final/model.safetensors"));
    let expected = read(&fixtures().join("relative_position-expected.safetensors"));
    let mut compared = 0;
    for (name, table) in &expected {
        let Some(name) = name.strip_prefix("ram_plus.224.") else { continue };
        let difference = max_difference(&saved[name], table);
        assert!(difference <= 1e-5, "{name}: {difference} from the reference's resized table");
        compared += 1;
    }
    assert_eq!(compared, 6);
    let decisions = common::read_jsonl(&run.path().join("decisions.jsonl"));
    let augmentation = decisions.iter().find_map(|d| d.get("augmentation")).expect("the transform is decided");
    assert_eq!(augmentation["randaugment_ops"], 2.0);
    assert_eq!(augmentation["randaugment_magnitude"], 5.0);
}

/// RAM's tagging branch fine-tuned (with weight decay): the caption branch is saved whole
/// with it, as it was but for the blocks it shares with the trained head.
#[test]
fn a_ram_run_trains_the_tagging_branch_and_saves_the_caption_branch_with_it() {
    use trainer::models::ram_caption::canonical_name;
    let (tags, run) = (tag_files(), tempfile::tempdir().unwrap());
    let args = ["--losses", "tag", "--batch-size", "8", "--steps", "2", "--lr", "1e-2", "--weight-decay", "0.1"];
    let constant = [common::policy("constant").display().to_string()];
    common::assert_success(&train_fixture(run.path(), "ram.pth", tags.path(), &constant, &args));
    let model = fixtures().join("ram.pth");
    let original = pretrained::read_tensors(&model).unwrap();
    let saved = pretrained::read_tensors(&run.path().join("final/model.pth")).unwrap();
    let names = |tensors: &HashMap<String, Tensor>| tensors.keys().cloned().collect::<BTreeSet<String>>();
    assert_eq!(names(&saved), names(&original), "every name recognize-anything's strict load wants");
    let var_store = nn::VarStore::new(Device::Cpu);
    let config = RamPlusConfig::of_checkpoint(&model, &original, 8).unwrap();
    let aliases = RamPlus::new(&var_store.root(), &config).aliases();
    let mut trained_ties = 0;
    for name in original.keys().filter(|name| name.starts_with("tag_encoder.") || name.starts_with("text_decoder.")) {
        let canonical = canonical_name(name, &aliases);
        assert!(saved[name].equal(&saved[&canonical]), "{name} is saved as the tensor it ties to");
        if canonical.starts_with("tagging_head.") {
            trained_ties += usize::from(!saved[name].equal(&original[name]));
        } else {
            assert!(saved[name].equal(&original[name]), "{name} is not trained by `tag`");
        }
    }
    assert!(trained_ties > 0, "the shared blocks train with the head");
}
