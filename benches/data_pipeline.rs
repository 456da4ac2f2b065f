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

mod reference;

use image::{Rgb, RgbImage};
use reference::Ratios;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind};
use trainer::data::images::load_rgb_square;
use trainer::data::{CLIP_MEAN, CLIP_STD, PixelNormalizer, rgb_batch};

const IMAGES: usize = 64;
const BATCH: usize = 32;
const SIZE: u32 = 224;
/// Passes over the folder per round.
const PASSES: usize = 3;

/// A photo-like picture: smooth gradients, a few discs and sensor-like noise, so that it
/// compresses about as a photograph does (flat colour would decode unrealistically fast,
/// pure noise unrealistically slowly).
fn picture(seed: u32) -> RgbImage {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state % 17) as f32 - 8.0
    };
    let discs: Vec<(f32, f32, f32, [f32; 3])> = (0..6)
        .map(|k| {
            let k = (seed * 7 + k) as f32;
            (
                (k * 97.0) % 640.0,
                (k * 61.0) % 480.0,
                30.0 + (k * 13.0) % 90.0,
                [(k * 37.0) % 255.0, (k * 71.0) % 255.0, (k * 23.0) % 255.0],
            )
        })
        .collect();
    RgbImage::from_fn(640, 480, |x, y| {
        let (fx, fy) = (x as f32, y as f32);
        let mut colour = [
            128.0 + 90.0 * (fx / 97.0 + seed as f32).sin(),
            128.0 + 90.0 * (fy / 71.0).cos(),
            128.0 + 60.0 * ((fx + fy) / 151.0).sin(),
        ];
        for (cx, cy, r, disc) in &discs {
            if (fx - cx).powi(2) + (fy - cy).powi(2) < r * r {
                colour = *disc;
            }
        }
        Rgb(colour.map(|c| (c + noise()).clamp(0.0, 255.0) as u8))
    })
}

fn write_images(dir: &Path) -> Vec<PathBuf> {
    (0..IMAGES)
        .map(|index| {
            let path = dir.join(format!("{index:012}.jpg"));
            let file = std::fs::File::create(&path).expect("the bench's folder is writable");
            let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(std::io::BufWriter::new(file), 90);
            encoder.encode_image(&picture(index as u32)).expect("JPEG encoding");
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
            let pixels: Vec<Vec<u8>> =
                chunk.iter().map(|path| load_rgb_square(path, SIZE).expect("the bench's images decode")).collect();
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
