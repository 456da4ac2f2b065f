//! Helpers shared by the integration tests: locating the built components, running the
//! real `trainer` binary, reading what a run wrote, the canvas detection data.

#![allow(dead_code)] // Each test file uses its own subset.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use trainer::policy::{Evaluation, NonFinite, Observation};

/// The standard policies, as built into the binary and into `build/policies/`.
pub const STANDARD_POLICIES: [&str; 16] = [
    "aug_curriculum",
    "constant",
    "cosine_warmup",
    "early_stopping",
    "grad_balance",
    "grad_clip",
    "layerwise",
    "llrd",
    "loss_balance",
    "one_cycle",
    "ram_balance",
    "reduce_on_plateau",
    "spike_guard",
    "staged_unfreeze",
    "step_decay",
    "warmup_stable_decay",
];

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ sits in the workspace").to_path_buf()
}

fn built(folder: &str, name: &str) -> PathBuf {
    let path = workspace().join("build").join(folder).join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing: run `make policies-all` (or `make test`) first", path.display());
    path
}

/// A standard policy, as built into `build/policies/`.
pub fn policy(name: &str) -> PathBuf {
    built("policies", name)
}

/// A test fixture policy, as built into `build/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    built("fixtures", name)
}

pub fn trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer")).args(args).output().expect("the trainer binary runs")
}

/// The `trainer` binary run from `dir`, as a user in another folder runs it.
pub fn trainer_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer")).current_dir(dir).args(args).output().expect("the trainer binary runs")
}

/// `trainer train` on the CPU into `run_dir`, with each of `policies` as a `--policy`.
pub fn train_cpu(run_dir: &Path, policies: &[String], extra: &[&str]) -> Output {
    let mut args = vec!["train", "--device", "cpu", "--run-dir", run_dir.to_str().expect("UTF-8 temp paths")];
    for policy in policies {
        args.extend(["--policy", policy.as_str()]);
    }
    args.extend(extra);
    trainer(&args)
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn assert_success(output: &Output) {
    assert!(output.status.success(), "trainer failed: {}", stderr(output));
}

pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect()
}

/// A run's `metrics.jsonl` without its one field that depends on the machine's speed.
pub fn metrics_without_timing(run_dir: &Path) -> Vec<serde_json::Value> {
    let mut records = read_jsonl(&run_dir.join("metrics.jsonl"));
    for record in &mut records {
        record.as_object_mut().unwrap().remove("images_per_second");
    }
    records
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display())))
        .expect("the file is JSON")
}

/// A failed run: the exit code, and an `error:` line containing each of `needles`, with
/// no panic or backtrace.
pub fn assert_error(output: &Output, code: i32, needles: &[&str]) {
    let stderr = stderr(output);
    assert_eq!(output.status.code(), Some(code), "exit code; stderr: {stderr}");
    let line =
        stderr.lines().find(|line| line.starts_with("error: ")).unwrap_or_else(|| panic!("no error line in: {stderr}"));
    for needle in needles {
        assert!(line.contains(needle), "`{needle}` missing from: {line}");
    }
    assert!(!stderr.contains("panicked at") && !stderr.contains("stack backtrace"), "{stderr}");
}

/// A failed start: like [`assert_error`], and the error is the only line on stderr.
pub fn assert_one_line_error(output: &Output, code: i32, needles: &[&str]) {
    assert_error(output, code, needles);
    let stderr = stderr(output);
    let lines = stderr.lines().filter(|line| !line.trim().is_empty()).count();
    assert_eq!(lines, 1, "one line expected, got: {stderr}");
}

/// Runs `tests/fixtures/<script>` with the project's Python (`TRAINER_PYTHON`, which `make`
/// puts in .cargo/config.toml for cargo to pass on).
pub fn python_fixture(script: &str, args: &[&std::ffi::OsStr]) -> Output {
    let python = std::env::var("TRAINER_PYTHON").expect("TRAINER_PYTHON names the project's Python; run `make` once");
    Command::new(python)
        .arg(workspace().join("tests/fixtures").join(script))
        .args(args)
        .output()
        .expect("the project's Python runs")
}

/// Side of one Fashion-MNIST tile in the mosaics [`write_mosaics`] makes.
pub const MOSAIC_TILE: u32 = 28;

/// A 2x2 mosaic of real Fashion-MNIST photographs written as an image file.
#[derive(Debug, Clone)]
pub struct Mosaic {
    pub file_name: String,
    /// Two captions naming the four garments and where they are.
    pub captions: [String; 2],
    /// The classes shown, each once, in class order.
    pub tags: Vec<String>,
}

/// Writes `count` mosaics starting at mosaic `first` into `dir` (every fifth as JPEG, the
/// others PNG); mosaic `i` shows training images `4i` to `4i + 3`.
pub fn write_mosaics(dir: &Path, first: usize, count: usize) -> Vec<Mosaic> {
    use trainer::data::fashion_mnist::{self, CLASS_NAMES, Split};
    const TILE: u32 = MOSAIC_TILE;
    let data = fashion_mnist::load(Path::new(fashion_mnist::DEFAULT_DIR), Split::Train).unwrap();
    let pixels = Vec::<u8>::try_from(data.images.flatten(0, -1)).unwrap();
    let labels = Vec::<i64>::try_from(&data.labels).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    (first..first + count)
        .map(|mosaic| {
            let tiles: Vec<usize> = (0..4).map(|corner| mosaic * 4 + corner).collect();
            let image = image::GrayImage::from_fn(2 * TILE, 2 * TILE, |x, y| {
                let tile = tiles[(y / TILE * 2 + x / TILE) as usize];
                let offset = tile * (TILE * TILE) as usize + ((y % TILE) * TILE + x % TILE) as usize;
                image::Luma([pixels[offset]])
            });
            let (file_name, format) = if mosaic % 5 == 0 {
                (format!("{mosaic:06}.jpg"), image::ImageFormat::Jpeg)
            } else {
                (format!("{mosaic:06}.png"), image::ImageFormat::Png)
            };
            image.save_with_format(dir.join(&file_name), format).unwrap();
            let classes = [0, 1, 2, 3].map(|corner| labels[tiles[corner]] as usize);
            let [a, b, c, d] = classes.map(|class| CLASS_NAMES[class]);
            let captions = [
                format!("a {a} at the top left, a {b} at the top right, a {c} at the bottom left and a {d} at the bottom right."),
                format!("top row: {a} and {b}. bottom row: {c} and {d}."),
            ];
            let mut shown = classes.to_vec();
            shown.sort();
            shown.dedup();
            Mosaic { file_name, captions, tags: shown.into_iter().map(|class| CLASS_NAMES[class].to_string()).collect() }
        })
        .collect()
}

/// What a policy sees before `step` on the check spec's four groups and three losses:
/// `losses` (the previous step's, empty at step 0) and their sum, a gradient norm of 1, the
/// groups at the check spec's base rates, and `evaluation`.
pub fn observation(step: u64, losses: Vec<f64>, evaluation: Option<Evaluation>) -> Observation {
    let total = (!losses.is_empty()).then(|| losses.iter().sum());
    Observation {
        step,
        epoch: 0,
        losses,
        total_loss: total,
        grad_norm: Some(1.0),
        non_finite: NonFinite::empty(),
        lrs: vec![1e-4, 1e-4, 1e-3, 1e-3],
        lr_multipliers: vec![1.0; 4],
        loss_weights: vec![1.0; 3],
        frozen: vec![false; 4],
        images_per_second: None,
        logit_scale: None,
        evaluation,
        elapsed_seconds: 0.0,
        seconds_left: None,
        loss_gradients: None,
    }
}

/// The canvas data's COCO folder, which the trainer makes under the cache on first use and
/// names in its start-up report (read here from a one-step run, once per test binary).
pub fn canvas_folder() -> PathBuf {
    static FOLDER: OnceLock<PathBuf> = OnceLock::new();
    FOLDER
        .get_or_init(|| {
            let run = tempfile::tempdir().unwrap();
            let constant = [policy("constant").display().to_string()];
            let output =
                train_cpu(run.path(), &constant, &["--task", "detection", "--steps", "1", "--batch-size", "2"]);
            assert_success(&output);
            // The start-up report goes to stderr, beside the progress.
            let report = stderr(&output);
            let (_, after) = report.split_once("a COCO folder made once at ").expect("the report names the folder");
            PathBuf::from(after.lines().next().unwrap().trim())
        })
        .clone()
}

pub fn annotations(split: &str) -> PathBuf {
    canvas_folder().join(format!("annotations/instances_{split}.json"))
}

/// A COCO file of `count` canvas validation images from `first`, their boxes and the
/// categories, at `dir/{name}.json`; its images are in the canvas folder's `val/`.
pub fn canvas_subset(dir: &Path, name: &str, first: usize, count: usize) -> PathBuf {
    let mut coco = read_json(&annotations("val"));
    let images: Vec<serde_json::Value> = coco["images"].as_array().unwrap()[first..first + count].to_vec();
    let ids: Vec<&serde_json::Value> = images.iter().map(|image| &image["id"]).collect();
    let boxes: Vec<serde_json::Value> =
        coco["annotations"].as_array().unwrap().iter().filter(|a| ids.contains(&&a["image_id"])).cloned().collect();
    coco["images"] = images.into();
    coco["annotations"] = boxes.into();
    let path = dir.join(format!("{name}.json"));
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&path, coco.to_string()).unwrap();
    path
}

/// A detector trained from scratch on the canvas data (400 steps), shared by the tests that
/// need one that has learnt something (6.7% AP50 on the canvas test images): its run
/// folder, made once per test binary.
pub fn canvas_detector() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        // A folder of each test binary's own, so that no two write one detector at once.
        let run = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("canvas-detector-{}", env!("CARGO_CRATE_NAME")));
        let cosine = [format!("{}:warmup_steps=40", policy("cosine_warmup").display())];
        let args = ["--task", "detection", "--batch-size", "32", "--seed", "2", "--steps", "400", "--lr", "2e-3"];
        assert_success(&train_cpu(&run, &cosine, &[&args[..], &["--overwrite"]].concat()));
        run
    })
}
