//! The image pipeline against PIL and torchvision, per core: decode a COCO-like JPEG
//! (640x480, made here), crop and resize to 224 px as CLIP's preprocessing does, and
//! normalise into a float batch. Our side is the loader's own code (`load_rgb_square`, then
//! the batch's normalisation); the other side is `Image.open(...).convert("RGB")`,
//! `Resize(224, BICUBIC)`, `CenterCrop(224)`, `ToTensor()`, `Normalize(...)` and a stack,
//! one thread each. The two alternate over rounds; prints images/s per core of each, the
//! median ratio and its spread.
//!
//! Run with `cargo bench --workspace --bench data_pipeline` (after `make` has installed the
//! venv); `TRAINER_BENCH_ROUNDS` sets the number of rounds (default 5).

mod photos;
mod reference;

use reference::Ratios;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind};
use trainer::data::images::{SquareResize, load_rgb_square};
use trainer::data::{CLIP_MEAN, CLIP_STD, PixelNormalizer, rgb_batch};

const IMAGES: usize = 64;
const BATCH: usize = 32;
const SIZE: u32 = 224;
/// Passes over the folder per round.
const PASSES: usize = 3;

fn write_images(dir: &Path) -> Vec<PathBuf> {
    (0..IMAGES)
        .map(|index| {
            let path = dir.join(format!("{index:012}.jpg"));
            let file = std::fs::File::create(&path).expect("the bench's folder is writable");
            let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(std::io::BufWriter::new(file), 90);
            encoder.encode_image(&photos::photo_like(index as u32)).expect("JPEG encoding");
            path
        })
        .collect()
}

/// Images per second through the trainer's pipeline on one thread.
fn ours(paths: &[PathBuf]) -> f64 {
    let normalizer = PixelNormalizer::new(SIZE as i64, CLIP_MEAN, CLIP_STD, Device::Cpu);
    let started = Instant::now();
    let mut checksum = 0.0;
    for _ in 0..PASSES {
        for chunk in paths.chunks(BATCH) {
            let pixels: Vec<Vec<u8>> = chunk
                .iter()
                .map(|path| load_rgb_square(path, &SquareResize::clip(SIZE)).expect("the bench's images decode"))
                .collect();
            let batch = rgb_batch(pixels.iter().map(Vec::as_slice), SIZE as i64);
            let input = normalizer.normalize(&(batch.to_kind(Kind::Float) / 255.0));
            checksum += input.double_value(&[0, 0, 0, 0]);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    assert!(checksum.is_finite());
    (PASSES * paths.len()) as f64 / seconds
}

fn theirs(dir: &Path) -> Result<f64, String> {
    let args = [dir.display().to_string(), SIZE.to_string(), BATCH.to_string(), PASSES.to_string()];
    let reply = reference::run_reference("pil_pipeline.py", &serde_json::json!({}), &args)?;
    reply["images_per_second"].as_f64().ok_or_else(|| format!("no images_per_second in the reply {reply}"))
}

fn main() {
    tch::set_num_threads(1);
    let rounds: usize = std::env::var("TRAINER_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    let dir = tempfile::tempdir().expect("a temporary folder");
    let paths = write_images(dir.path());
    let bytes: u64 = paths.iter().map(|p| std::fs::metadata(p).map_or(0, |m| m.len())).sum();
    println!(
        "{IMAGES} JPEGs of 640x480 ({} kB on average) to {SIZE}x{SIZE} normalised floats, one thread each, {rounds} alternating rounds",
        bytes / 1000 / IMAGES as u64
    );
    let mut ratios = Ratios::default();
    for _ in 0..rounds {
        let our_speed = ours(&paths);
        match theirs(dir.path()) {
            Ok(their_speed) => ratios.push(our_speed, their_speed),
            Err(err) => {
                println!("trainer {our_speed:.1} img/s; PIL side failed: {err}");
                break;
            }
        }
    }
    if !ratios.is_empty() {
        println!("per core: {}", ratios.summary("img/s"));
    }
}
