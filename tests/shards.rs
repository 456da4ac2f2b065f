//! WebDataset shards written by the `webdataset` package: a CLIP trained on them reaches the
//! zero-shot accuracy of the same images read from a JSONL manifest; a run killed mid-way
//! and resumed ends with the same weights as one never stopped; a damaged shard or image is
//! named by shard and key, or with `--skip-bad-samples` left out and counted. A tagger reads
//! each sample's tags from its `.json` as it reads them from a manifest.

mod common;

use common::{assert_success, read_json};
use std::path::{Path, PathBuf};
use trainer::data::fashion_mnist::{self, CLASS_NAMES, Split};

fn arg(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp paths")
}

/// Fashion-MNIST training images `0..count` as image files (every fifth JPEG) with two
/// captions naming the garment, and the JSONL manifests of the first `train` of them and of
/// the rest.
fn write_garments(dir: &Path, count: usize, train: usize) -> (PathBuf, PathBuf) {
    let data = fashion_mnist::load(Path::new(fashion_mnist::DEFAULT_DIR), Split::Train).unwrap();
    let pixels = Vec::<u8>::try_from(data.images.narrow(0, 0, count as i64).flatten(0, -1)).unwrap();
    let labels = Vec::<i64>::try_from(&data.labels).unwrap();
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let mut lines = Vec::with_capacity(count);
    for index in 0..count {
        let tile = &pixels[index * 784..(index + 1) * 784];
        let image = image::GrayImage::from_raw(28, 28, tile.to_vec()).unwrap();
        let name = if index % 5 == 0 { format!("{index:05}.jpg") } else { format!("{index:05}.png") };
        image.save(images.join(&name)).unwrap();
        let class = CLASS_NAMES[labels[index] as usize];
        let captions = [format!("a photo of a {class}."), format!("a {class}.")];
        lines.push(serde_json::json!({"image": format!("images/{name}"), "captions": captions}).to_string());
    }
    let (train_lines, held_out_lines) = lines.split_at(train);
    let (manifest, held_out) = (dir.join("garments.jsonl"), dir.join("held-out.jsonl"));
    std::fs::write(&manifest, train_lines.join("\n") + "\n").unwrap();
    std::fs::write(&held_out, held_out_lines.join("\n") + "\n").unwrap();
    (manifest, held_out)
}

/// The manifest's samples as shards of `per_shard` in `out`, by the `webdataset` package.
fn write_shards(manifest: &Path, out: &Path, per_shard: usize) {
    let per_shard = per_shard.to_string();
    let made = common::python_fixture(
        "webdataset/write_shards.py",
        &[manifest.as_os_str(), out.as_os_str(), per_shard.as_ref()],
    );
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
}

fn pretrained(dir: &Path) -> PathBuf {
    let model = dir.join("pretrained");
    let made = common::python_fixture("clip/make_model.py", &[model.as_os_str()]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    model
}

/// A run decaying its learning rate to zero, so that it ends on a settled model rather than
/// wherever the last noisy steps left it.
fn train(run: &Path, model: &Path, data: &str, more: &[&str]) -> std::process::Output {
    let cosine = common::policy("cosine_warmup").display().to_string();
    let mut args = vec!["--model", arg(model), "--data", data, "--batch-size", "64", "--lr", "4e-3"];
    args.extend(more);
    common::train_cpu(run, &[cosine], &args)
}

/// Zero-shot top-1 accuracy on Fashion-MNIST's test split.
fn zero_shot_top1(model: &Path) -> f64 {
    let out = model.with_extension("eval.json");
    let fashion = fashion_mnist::DEFAULT_DIR;
    let evaluated =
        common::trainer(&["eval", "--device", "cpu", "--model", arg(model), "--data", fashion, "--out", arg(&out)]);
    assert_success(&evaluated);
    read_json(&out)["zero_shot_top1"].as_f64().unwrap()
}

#[test]
fn shards_train_clip_as_far_as_the_same_images_from_a_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, held_out) = write_garments(dir.path(), 3200, 2800);
    let (shards, held_out_shards) = (dir.path().join("shards"), dir.path().join("held-out"));
    write_shards(&manifest, &shards, 400);
    write_shards(&held_out, &held_out_shards, 400);
    let model = pretrained(dir.path());
    let settings: &[&str] = &["--steps", "400", "--eval-every", "400", "--seed", "3"];

    let from_manifest = dir.path().join("manifest-run");
    let manifest_settings = [settings, &["--val-data", arg(&held_out)]].concat();
    assert_success(&train(&from_manifest, &model, arg(&manifest), &manifest_settings));
    let from_shards = dir.path().join("shard-run");
    let pattern = format!("{}/{{00000..00006}}.tar", shards.display());
    let held_out_pattern = format!("{}/00000.tar", held_out_shards.display());
    let shard_settings = [settings, &["--val-data", &held_out_pattern]].concat();
    let shard_run = train(&from_shards, &model, &pattern, &shard_settings);
    assert_success(&shard_run);
    let report = String::from_utf8_lossy(&shard_run.stdout).to_string() + &common::stderr(&shard_run);
    let data_line = "data: 7 training shards, 2800 samples (counted); steps per epoch: 43; held-out shards: 1";
    assert!(report.contains(data_line), "{report}");
    let eval = read_json(&from_shards.join("eval.json"));
    assert_eq!(eval["images"], 400, "the held-out shard: {eval}");

    let (manifest_top1, shards_top1) =
        (zero_shot_top1(&from_manifest.join("final")), zero_shot_top1(&from_shards.join("final")));
    eprintln!("zero-shot top-1: manifest {manifest_top1}, shards {shards_top1}");
    assert!(manifest_top1 > 0.6, "the manifest run learned: {manifest_top1}");
    // Two runs that see the same images in other orders. Over seeds 3 to 8 the manifest
    // runs average 0.721 (sd 0.014) and the shard runs 0.719 (sd 0.006), within a point;
    // one seed's pair can be 2 points apart (seed 8: 0.732, 0.712), which bounds one run.
    assert!((manifest_top1 - shards_top1).abs() <= 0.025, "manifest {manifest_top1}, shards {shards_top1}");
}

fn spawn_train(run: &Path, args: &[&str]) -> std::process::Child {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"));
    command.args(["train", "--device", "cpu", "--run-dir", arg(run)]).args(args);
    command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().expect("the trainer starts")
}

fn wait_for(path: &Path) {
    let started = std::time::Instant::now();
    while !path.exists() {
        assert!(started.elapsed() < std::time::Duration::from_secs(120), "{} did not appear", path.display());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// 350 garments in shards of 50: six to train on (listed in a `.txt`), the last held out.
fn small_shards(dir: &Path) -> (PathBuf, PathBuf) {
    let (manifest, _) = write_garments(dir, 350, 350);
    let shards = dir.join("shards");
    write_shards(&manifest, &shards, 50);
    let list = dir.join("train.txt");
    std::fs::write(&list, (0..6).map(|shard| format!("shards/{shard:05}.tar\n")).collect::<String>()).unwrap();
    (list, shards.join("00006.tar"))
}

#[test]
fn a_shard_run_killed_and_resumed_ends_as_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let (list, held_out) = small_shards(dir.path());
    let constant = format!("{}:lr=1e-3", common::policy("constant").display());
    // 30 steps of 16 cross a pass over the 300 training samples; blocks of 64 shuffle.
    let args = [
        "--policy",
        &constant,
        "--data",
        arg(&list),
        "--val-data",
        arg(&held_out),
        "--steps",
        "30",
        "--batch-size",
        "16",
        "--shuffle-buffer",
        "64",
        "--train-num-samples",
        "160",
        "--seed",
        "4",
        "--checkpoint-every",
        "3",
        "--eval-every",
        "10",
    ];
    let whole = dir.path().join("whole");
    assert_success(&common::trainer(&[&["train", "--device", "cpu", "--run-dir", arg(&whole)], &args[..]].concat()));

    let killed_run = dir.path().join("killed");
    let mut killed = spawn_train(&killed_run, &args);
    wait_for(&killed_run.join("checkpoints/step-9/manifest.json"));
    let _ = std::process::Command::new("kill").args(["-KILL", &killed.id().to_string()]).status();
    killed.wait().unwrap();
    assert!(!killed_run.join("final").exists(), "killed before the end");
    assert_success(&common::trainer(&["train", "--device", "cpu", "--resume", arg(&killed_run)]));
    for file in ["final/model.safetensors", "eval.json", "evaluations.jsonl"] {
        let read = |run: &Path| std::fs::read(run.join(file)).unwrap();
        assert!(read(&whole) == read(&killed_run), "{file} differs after a kill and resume");
    }
    // --train-num-samples 160 makes epochs of 10 steps.
    let metrics = common::read_jsonl(&whole.join("metrics.jsonl"));
    assert_eq!(metrics[29]["epoch"], 2, "{}", metrics[29]);
}

#[test]
fn damaged_shards_and_images_are_named_by_shard_and_key_or_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, _) = write_garments(dir.path(), 150, 150);
    // Sample 7's image is not an image.
    std::fs::write(dir.path().join("images/00007.png"), b"not a picture").unwrap();
    let shards = dir.path().join("shards");
    write_shards(&manifest, &shards, 50);
    let pattern = format!("{}/{{00000..00002}}.tar", shards.display());
    let constant = format!("{}:lr=1e-3", common::policy("constant").display());
    let train = |run: &str, more: &[&str]| {
        let run = dir.path().join(run);
        // 5 steps of 20: one pass over the 100 training samples, each seen once.
        let base = ["--data", &pattern, "--steps", "5", "--batch-size", "20", "--shuffle-buffer", "8"];
        common::train_cpu(&run, std::slice::from_ref(&constant), &[&base[..], more].concat())
    };
    let first_shard = shards.join("00000.tar");
    common::assert_error(&train("bad-image", &[]), 1, &[arg(&first_shard), "sample `000007`", "000007.png"]);
    let skipped = train("skip-image", &["--skip-bad-samples"]);
    assert_success(&skipped);
    let metrics = common::read_jsonl(&dir.path().join("skip-image/metrics.jsonl"));
    let left_out: u64 = metrics.iter().map(|m| m["skipped_samples"].as_u64().unwrap_or(0)).sum();
    assert_eq!(left_out, 1, "sample 7 is left out of the one batch it is in");

    // A shard cut short is found before training starts.
    let second = shards.join("00001.tar");
    let length = std::fs::metadata(&second).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&second).unwrap();
    file.set_len(length / 2).unwrap();
    common::assert_one_line_error(&train("cut", &[]), 1, &[arg(&second), "damaged shard"]);
    assert_success(&train("cut-skipped", &["--skip-bad-samples"]));
    let log = std::fs::read_to_string(dir.path().join("cut-skipped/run.log")).unwrap();
    assert!(log.contains(arg(&second)) && log.contains("samples before that are kept"), "{log}");
}

/// The manifest of `mosaics` (their tags; every other one without captions) in `dir`.
fn tagged_manifest(dir: &Path, name: &str, mosaics: &[common::Mosaic]) -> PathBuf {
    let lines: Vec<String> = mosaics
        .iter()
        .enumerate()
        .map(|(index, mosaic)| {
            let captions = if index % 2 == 0 { mosaic.captions.to_vec() } else { Vec::new() };
            serde_json::json!({"image": mosaic.file_name, "tags": mosaic.tags, "captions": captions}).to_string()
        })
        .collect();
    let manifest = dir.join(name);
    std::fs::write(&manifest, lines.join("\n") + "\n").unwrap();
    manifest
}

#[test]
fn a_tagger_reads_the_tags_of_shards_as_those_of_the_same_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let mut mosaics = common::write_mosaics(dir.path(), 0, 48);
    let vocabulary = dir.path().join("tags.txt");
    std::fs::write(&vocabulary, CLASS_NAMES.join("\n") + "\n").unwrap();
    let held_out = tagged_manifest(dir.path(), "held-out.jsonl", &mosaics[32..]);
    let train_manifest = tagged_manifest(dir.path(), "train.jsonl", &mosaics[..32]);
    let (shards, held_out_shards) = (dir.path().join("shards"), dir.path().join("held-out"));
    write_shards(&train_manifest, &shards, 16);
    write_shards(&held_out, &held_out_shards, 16);
    let held_out_shard = held_out_shards.join("00000.tar");
    let pattern = format!("{}/{{00000..00001}}.tar", shards.display());
    // Learning rate 0: both runs evaluate the same model; one step of all 32 training images
    // sums the same tag loss whatever their order.
    let still = format!("{}:lr=0", common::policy("constant").display());
    let train = |run: &str, data: &str, val_data: &Path| {
        let args = [
            "--task",
            "tagging",
            "--losses",
            "tag",
            "--tags",
            arg(&vocabulary),
            "--data",
            data,
            "--val-data",
            arg(val_data),
            "--steps",
            "1",
            "--batch-size",
            "32",
        ];
        common::train_cpu(&dir.path().join(run), std::slice::from_ref(&still), &args)
    };
    assert_success(&train("manifest", arg(&train_manifest), &held_out));
    let shard_run = train("shards", &pattern, &held_out_shard);
    assert_success(&shard_run);
    let report = String::from_utf8_lossy(&shard_run.stdout).to_string() + &common::stderr(&shard_run);
    assert!(report.contains("data: 2 training shards, 32 samples (counted); steps per epoch: 1"), "{report}");
    let (manifest_eval, shards_eval) =
        (read_json(&dir.path().join("manifest/eval.json")), read_json(&dir.path().join("shards/eval.json")));
    assert_eq!(shards_eval["images"], 16, "{shards_eval}");
    for metric in trainer::eval::TAGGING_METRICS {
        let value = |eval: &serde_json::Value| eval[metric].as_f64().unwrap_or_else(|| panic!("{metric} in {eval}"));
        assert_eq!(value(&manifest_eval), value(&shards_eval), "{metric}: {manifest_eval} vs {shards_eval}");
    }
    let tag_loss = |run: &str| {
        common::read_jsonl(&dir.path().join(run).join("metrics.jsonl"))[0]["losses"]["tag"].as_f64().unwrap()
    };
    let (manifest_loss, shards_loss) = (tag_loss("manifest"), tag_loss("shards"));
    assert!((manifest_loss - shards_loss).abs() <= 1e-5 * manifest_loss, "tag loss {manifest_loss} vs {shards_loss}");

    // A tag the vocabulary lacks is named with its shard and sample.
    mosaics[3].tags.push("handbag".into());
    let bad_manifest = tagged_manifest(dir.path(), "bad.jsonl", &mosaics[..32]);
    let bad_shards = dir.path().join("bad-shards");
    write_shards(&bad_manifest, &bad_shards, 16);
    let bad_pattern = format!("{}/{{00000..00001}}.tar", bad_shards.display());
    let output = train("bad", &bad_pattern, &held_out_shard);
    common::assert_error(&output, 1, &[arg(&bad_shards.join("00000.tar")), "sample `000003`", "unknown tag `handbag`"]);
}
