//! Reading WebDataset shards for CLIP training against webdataset, per worker: samples of a
//! 640x480 JPEG and a caption, in tar shards made here, read in batches of 32 through
//! decode, resize to 224 px, a random-resized crop of 0.9-1 of the area (open_clip's training
//! crop), normalisation and caption tokenization. Our side is the trainer's own shard stream
//! (worker threads decode, the batch is augmented and normalised as a training step does);
//! the other side is `webdataset.WebDataset` with a shuffle buffer, PIL decoding,
//! torchvision's `RandomResizedCrop`, `ToTensor`, `Normalize`, open_clip's tokenizer and a
//! `DataLoader` with the same number of workers. The two alternate over rounds, with 1 and
//! then 2 workers; prints images/s of each, the median ratio and its spread.
//!
//! Run with `cargo bench --workspace --bench shard_pipeline` (after `make test-setup`);
//! `TRAINER_BENCH_ROUNDS` sets the number of rounds (default 5).

mod photos;
mod reference;

use reference::Ratios;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind};
use trainer::data::clip_tokenizer::{self, ClipTokenizer};
use trainer::data::images::SquareResize;
use trainer::data::sampler::Shard;
use trainer::data::{CLIP_MEAN, CLIP_STD, PixelNormalizer, augment};
use trainer::tasks::DataOptions;
use trainer::tasks::shards::{ShardTraining, StreamOptions};

const SAMPLES_PER_SHARD: usize = 128;
const SHARDS: usize = 5;
const BATCH: usize = 32;
const SIZE: u32 = 224;
/// Batches read per round: one pass over the training shards (all but the last), so neither
/// side starts a second pass and each of webdataset's workers reads whole shards.
const STEPS: u64 = ((SHARDS - 1) * SAMPLES_PER_SHARD / BATCH) as u64;

/// `SHARDS` tar shards of `SAMPLES_PER_SHARD` JPEG-and-caption samples; the last one is the
/// held-out shard our side needs.
fn write_shards(dir: &Path) -> Vec<PathBuf> {
    let mut jpegs = Vec::new();
    for index in 0..16 {
        let mut bytes = Vec::new();
        let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90);
        encoder.encode_image(&photos::photo_like(index)).expect("JPEG encoding");
        jpegs.push(bytes);
    }
    (0..SHARDS)
        .map(|shard| {
            let path = dir.join(format!("{shard:05}.tar"));
            let mut builder = tar::Builder::new(std::fs::File::create(&path).expect("the bench's folder is writable"));
            for sample in 0..SAMPLES_PER_SHARD {
                let key = format!("{:06}", shard * SAMPLES_PER_SHARD + sample);
                let caption = format!("a photo of picture number {sample} with {} discs", sample % 7);
                for (extension, bytes) in [("jpg", &jpegs[sample % jpegs.len()]), ("txt", &caption.into_bytes())] {
                    let mut header = tar::Header::new_gnu();
                    header.set_size(bytes.len() as u64);
                    header.set_mode(0o644);
                    header.set_cksum();
                    builder.append_data(&mut header, format!("{key}.{extension}"), bytes.as_slice()).expect("tar");
                }
            }
            builder.finish().expect("tar");
            path
        })
        .collect()
}

/// Images per second through the trainer's shard stream with `workers` decoding threads.
fn ours(dir: &Path, tokenizer: &Arc<ClipTokenizer>, workers: usize) -> f64 {
    let data = dir.join(format!("{{00000..{:05}}}.tar", SHARDS - 1));
    let options = DataOptions {
        data: &data,
        images: None,
        val_data: None,
        skip_bad_samples: false,
        workers,
        seed: 1,
        batch_size: BATCH,
        shard: Shard::WHOLE,
        device: Device::Cpu,
        stream: StreamOptions { train_num_samples: None, resampled: false, shuffle_buffer: 1000 },
    };
    let started = Instant::now();
    let mut shards =
        ShardTraining::open(&options, options.stream, tokenizer.clone(), 77, SquareResize::clip(SIZE), None)
            .expect("the bench's shards open");
    let normalizer = PixelNormalizer::new(SIZE as i64, CLIP_MEAN, CLIP_STD, Device::Cpu);
    let knobs = [0.9, 0.0, 0.0];
    let mut checksum = 0.0;
    for step in 0..STEPS {
        let batch = shards.batch(step, STEPS).expect("the bench's samples read");
        let input = normalizer.normalize(&augment::augment(&batch.pixels, &batch.samples, 0, 1, &knobs));
        checksum += input.double_value(&[0, 0, 0, 0]) + batch.input_ids.to_kind(Kind::Double).double_value(&[0, 0]);
    }
    assert!(checksum.is_finite());
    (STEPS as usize * BATCH) as f64 / started.elapsed().as_secs_f64()
}

fn theirs(dir: &Path, workers: usize) -> Result<f64, String> {
    let shards = format!("{}/{{00000..{:05}}}.tar", dir.display(), SHARDS - 2);
    let args = [shards, SIZE.to_string(), BATCH.to_string(), STEPS.to_string(), workers.to_string()];
    let reply = reference::run_reference("webdataset_pipeline.py", &serde_json::json!({}), &args)?;
    reply["images_per_second"].as_f64().ok_or_else(|| format!("no images_per_second in the reply {reply}"))
}

fn main() {
    tch::set_num_threads(1);
    let rounds: usize = std::env::var("TRAINER_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    let dir = tempfile::tempdir().expect("a temporary folder");
    write_shards(dir.path());
    let bpe = clip_tokenizer::default_bpe_path().expect("HOME is set");
    let tokenizer = Arc::new(ClipTokenizer::from_bpe_file(&bpe).expect("`make` installed the CLIP vocabulary"));
    println!(
        "{} batches of {BATCH} from {SHARDS} shards of {SAMPLES_PER_SHARD} 640x480 JPEGs and captions, to {SIZE}x{SIZE} \
         cropped, normalised floats and token ids; {rounds} alternating rounds",
        STEPS
    );
    for workers in [1, 2] {
        let mut ratios = Ratios::default();
        for _ in 0..rounds {
            let our_speed = ours(dir.path(), &tokenizer, workers);
            match theirs(dir.path(), workers) {
                Ok(their_speed) => ratios.push(our_speed, their_speed),
                Err(err) => {
                    println!("trainer {our_speed:.1} img/s; webdataset side failed: {err}");
                    break;
                }
            }
        }
        if !ratios.is_empty() {
            println!("{workers} worker(s): {}", ratios.summary("img/s"));
        }
    }
}
