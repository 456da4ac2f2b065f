//! Helpers shared by the integration tests: locating the built components, running the
//! real `trainer` binary, reading what a run wrote.

#![allow(dead_code)] // Each test file uses its own subset.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
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
