//! WebDataset shards for a task that trains on image-caption pairs: each process's stream
//! of samples ([`crate::data::webdataset`]), decoded by worker threads a few steps ahead, and
//! CLIP's held-out evaluation on held-out shards. A step's samples, caption draws and
//! augmentation follow from (seed, step) alone, as for files, so a resumed run reads exactly
//! what the uninterrupted run read; what differs from files is that each process reads
//! shards of its own (a run of 2 processes sees other batches than a run of 1, as with
//! webdataset).
//!
//! Tagging reads the same streams with a tag vocabulary: each sample's `.json` then has its
//! `tags`, checked against the vocabulary as the worker threads read it.

use super::captioned::{EVAL_BATCH_SIZE, HeldOut, HeldOutImage, TrainBatch, caption_draw, caption_from_tags};
use crate::data::clip_tokenizer::ClipTokenizer;
use crate::data::images::{SquareResize, decode_rgb_bytes, rgb_square};
use crate::data::loader::{EVALUATION_KEYS, Loader, ReadItem};
use crate::data::webdataset::{self, Member, SampleEntry, ShardIndex, ShardStream, ShardTable};
use crate::data::{PixelNormalizer, rgb_batch};
use crate::engine::{EngineError, Scores};
use crate::files::FileError;
use crate::models::clip::Clip;
use crate::tasks::inputs::DataOptions;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// Held-out samples read at most, as for files.
const MAX_HELD_OUT: usize = 5000;

/// One sample to read: where it is and how its caption is chosen.
#[derive(Debug, Clone)]
pub struct ShardItem {
    shard: Arc<PathBuf>,
    entry: SampleEntry,
    /// The sample's number across shards: the key of its random draws.
    id: i64,
    /// The epoch whose caption draw it takes; `None`: its first caption.
    epoch: Option<u64>,
}

/// A decoded sample.
#[derive(Debug)]
pub struct LoadedSample {
    id: i64,
    pixels: Vec<u8>,
    token_ids: Vec<i64>,
    captions: Vec<String>,
    /// Its tags' columns in the run's [`TagVocabulary`] (none without one).
    tags: Vec<usize>,
}

/// The tags a tagging run knows, which each sample's tags must be among.
#[derive(Debug)]
pub struct TagVocabulary {
    /// Each tag's column in the multi-hot targets.
    columns: HashMap<String, usize>,
    /// The tags in column order.
    names: Vec<String>,
    /// The file the tags came from, named when a sample has another tag.
    file: PathBuf,
}

impl TagVocabulary {
    /// `tags` in column order, read from `file`.
    pub fn new(tags: &[String], file: &Path) -> Self {
        let columns = tags.iter().enumerate().map(|(column, tag)| (tag.clone(), column)).collect();
        TagVocabulary { columns, names: tags.to_vec(), file: file.to_path_buf() }
    }

    /// The column of `tag`, or why it has none.
    pub fn column(&self, tag: &str) -> Result<usize, String> {
        self.columns.get(tag).copied().ok_or_else(|| format!("unknown tag `{tag}` (not in {})", self.file.display()))
    }

    /// The tag at position `id` of the list, for data that gives tags by position
    /// (recognize-anything's finetune JSON), or why there is none.
    pub fn tag_at(&self, id: i64) -> Result<&str, String> {
        let tag = usize::try_from(id).ok().and_then(|index| self.names.get(index));
        tag.map(String::as_str).ok_or_else(|| {
            format!(
                "tag id {id} is not a position in the {} tags of {}: the ids are of another tag list \
                 (RAM++'s and RAM's has 4585 tags, Tag2Text's 3429)",
                self.names.len(),
                self.file.display()
            )
        })
    }
}

/// What worker threads need to read samples out of shards.
struct ShardReader {
    tokenizer: Arc<ClipTokenizer>,
    context_length: usize,
    square: SquareResize,
    seed: u64,
    tags: Option<Arc<TagVocabulary>>,
}

/// A sample's `.json`: its caption, or captions, and its tags.
#[derive(Deserialize)]
struct SampleJson {
    caption: Option<String>,
    #[serde(default)]
    captions: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
}

impl ReadItem for ShardReader {
    type Item = ShardItem;
    type Loaded = LoadedSample;

    fn read(&self, item: &ShardItem) -> Result<LoadedSample, FileError> {
        let SampleEntry { key, image, image_extension, txt, json } = &item.entry;
        let bad = |problem: String| FileError::format(&item.shard, format!("sample `{key}`: {problem}"));
        let image_bytes = webdataset::read_member(&item.shard, *image)?;
        let rgb =
            decode_rgb_bytes(&image_bytes).map_err(|problem| bad(format!("{key}.{image_extension}: {problem}")))?;
        let text = |member: Member, extension: &str| -> Result<String, FileError> {
            let bytes = webdataset::read_member(&item.shard, member)?;
            String::from_utf8(bytes).map_err(|_| bad(format!("{key}.{extension} is not UTF-8")))
        };
        let json = match json {
            Some(member) => Some(
                serde_json::from_str::<SampleJson>(&text(*member, "json")?)
                    .map_err(|err| bad(format!("{key}.json: {err}")))?,
            ),
            None => None,
        };
        // The `.txt` caption first, as open_clip reads it; else the `.json`'s.
        let mut captions: Vec<String> = match (txt, &json) {
            (Some(member), _) => vec![text(*member, "txt")?.trim().to_string()],
            (None, Some(json)) => json.caption.iter().chain(&json.captions).cloned().collect(),
            (None, None) => Vec::new(),
        };
        captions.retain(|caption| !caption.trim().is_empty());
        let tags = match &self.tags {
            None => Vec::new(),
            Some(vocabulary) => {
                let names = match &json {
                    None => return Err(bad(format!("has no {key}.json with its tags"))),
                    Some(json) if json.tags.is_empty() => return Err(bad("has an empty tag list".into())),
                    Some(json) => &json.tags,
                };
                if captions.is_empty() {
                    captions.push(caption_from_tags(names));
                }
                names
                    .iter()
                    .map(|tag| vocabulary.column(tag).map_err(bad))
                    .collect::<Result<Vec<usize>, FileError>>()?
            }
        };
        if captions.is_empty() {
            return Err(bad("has no caption".into()));
        }
        let caption = match item.epoch {
            Some(epoch) => caption_draw(self.seed, epoch, item.id as u64, captions.len()),
            None => 0,
        };
        Ok(LoadedSample {
            id: item.id,
            pixels: rgb_square(&rgb, &self.square),
            token_ids: self.tokenizer.tokenize(&captions[caption], self.context_length),
            captions,
            tags,
        })
    }

    fn file<'a>(&'a self, item: &'a ShardItem) -> &'a Path {
        &item.shard
    }
}

/// How a run reads shards: its flags.
#[derive(Debug, Clone, Copy)]
pub struct StreamOptions {
    /// Samples per epoch (over all processes); by default the training shards' samples.
    pub train_num_samples: Option<u64>,
    pub resampled: bool,
    pub shuffle_buffer: u64,
}

/// Member tables of the shards in use, the least recently used dropped beyond a few.
struct TableCache {
    tables: HashMap<u32, (Arc<ShardTable>, u64)>,
    capacity: usize,
    clock: u64,
}

impl TableCache {
    fn get(&mut self, index: &ShardIndex, shard: u32) -> Result<Arc<ShardTable>, FileError> {
        self.clock += 1;
        if let Some((table, used)) = self.tables.get_mut(&shard) {
            *used = self.clock;
            return Ok(table.clone());
        }
        let path = &index.shards[shard as usize];
        let table = Arc::new(webdataset::scan(path)?);
        let expected = index.counts[shard as usize];
        if table.samples.len() as u64 != expected {
            return Err(FileError::format(
                path,
                format!(
                    "has {} usable samples, not the {expected} counted at start (or recorded in {}); \
                     shards must not change during a run",
                    table.samples.len(),
                    webdataset::SIZES_FILE
                ),
            ));
        }
        if self.tables.len() >= self.capacity
            && let Some(oldest) = self.tables.iter().min_by_key(|(_, (_, used))| *used).map(|(shard, _)| *shard)
        {
            self.tables.remove(&oldest);
        }
        self.tables.insert(shard, (table.clone(), self.clock));
        Ok(table)
    }
}

/// A run's training shards and held-out shards, read by worker threads.
pub struct ShardTraining {
    index: ShardIndex,
    stream: ShardStream,
    tables: TableCache,
    shard_paths: Vec<Arc<PathBuf>>,
    loader: Loader<ShardReader>,
    held_out_shards: Vec<PathBuf>,
    held_out: Option<HeldOut>,
    /// Each held-out image's tags and first caption, in the order of `held_out`'s rows.
    held_out_tags: Vec<Vec<usize>>,
    held_out_captions: Vec<String>,
    steps_per_epoch: u64,
    /// This process's part of each batch.
    process_batch: usize,
    tokenizer: Arc<ClipTokenizer>,
    context_length: usize,
    image_size: i64,
    skipped_at_start: Vec<String>,
    skip_bad: bool,
    device: Device,
}

impl ShardTraining {
    /// The shards of `options.data`, and the held-out ones: `options.val_data`, or the
    /// last training shard; with `tags`, every sample's tags are read and checked.
    pub fn open(
        options: &DataOptions,
        stream_options: StreamOptions,
        tokenizer: Arc<ClipTokenizer>,
        context_length: usize,
        square: SquareResize,
        tags: Option<Arc<TagVocabulary>>,
    ) -> Result<Self, EngineError> {
        let mut train = webdataset::expand(options.data)?;
        let held_out_shards = match options.val_data {
            Some(path) => webdataset::expand(path)?,
            None if train.len() >= 2 => vec![train.pop().expect("two or more")],
            None => {
                return Err(EngineError::Config(format!(
                    "--data {}: one shard, none left to hold out; give held-out shards with --val-data",
                    options.data.display()
                )));
            }
        };
        let index = ShardIndex::build(train, options.workers, options.skip_bad_samples)?;
        let stream = ShardStream::new(
            &index,
            options.seed,
            options.shard,
            stream_options.resampled,
            stream_options.shuffle_buffer,
        )
        .map_err(|problem| EngineError::Config(format!("--data {}: {problem}", options.data.display())))?;
        let epoch_samples = stream_options.train_num_samples.unwrap_or(index.total());
        let steps_per_epoch = epoch_samples / options.batch_size as u64;
        if steps_per_epoch == 0 {
            return Err(EngineError::Config(format!(
                "--batch-size {} is larger than the {epoch_samples} samples of an epoch (--data {}{})",
                options.batch_size,
                options.data.display(),
                if stream_options.train_num_samples.is_some() { ", --train-num-samples" } else { "" }
            )));
        }
        let process_batch = options.batch_size / options.shard.count;
        let reader = ShardReader { tokenizer: tokenizer.clone(), context_length, square, seed: options.seed, tags };
        Ok(ShardTraining {
            shard_paths: index.shards.iter().cloned().map(Arc::new).collect(),
            skipped_at_start: index.problems.clone(),
            tables: TableCache { tables: HashMap::new(), capacity: 64.max(2 * process_batch), clock: 0 },
            index,
            stream,
            loader: Loader::new(reader, options.workers),
            held_out_shards,
            held_out: None,
            held_out_tags: Vec::new(),
            held_out_captions: Vec::new(),
            steps_per_epoch,
            process_batch,
            tokenizer,
            context_length,
            image_size: square.size as i64,
            skip_bad: options.skip_bad_samples,
            device: options.device,
        })
    }

    pub fn steps_per_epoch(&self) -> u64 {
        self.steps_per_epoch
    }

    pub fn epoch_of(&self, step: u64) -> u64 {
        step / self.steps_per_epoch
    }

    /// Usable samples of the training shards.
    pub fn train_samples(&self) -> usize {
        self.index.total() as usize
    }

    /// The start-up report's line on the shards.
    pub fn describe(&self) -> String {
        let counted = if self.index.recorded { format!("from {}", webdataset::SIZES_FILE) } else { "counted".into() };
        format!(
            "data: {} training shards, {} samples ({counted}); steps per epoch: {}; held-out shards: {}",
            self.index.shards.len(),
            self.index.total(),
            self.steps_per_epoch,
            self.held_out_shards.len()
        )
    }

    pub fn skipped_at_start(&self) -> &[String] {
        &self.skipped_at_start
    }

    /// The samples of this process's part of the batch of `step`.
    fn items(&mut self, step: u64) -> Result<Vec<ShardItem>, EngineError> {
        let epoch = self.epoch_of(step);
        let first = step * self.process_batch as u64;
        let mut items = Vec::with_capacity(self.process_batch);
        for position in first..first + self.process_batch as u64 {
            let at = self.stream.at(position);
            let table = self.tables.get(&self.index, at.shard)?;
            items.push(ShardItem {
                shard: self.shard_paths[at.shard as usize].clone(),
                entry: table.samples[at.sample as usize].clone(),
                id: at.id(),
                epoch: Some(epoch),
            });
        }
        Ok(items)
    }

    /// The samples of `step` that decoded, and a line for each one left out.
    fn loaded(&mut self, step: u64, last_step: u64) -> Result<(Vec<LoadedSample>, Vec<String>), EngineError> {
        for ahead in self.loader.to_prefetch(step, last_step) {
            let items = self.items(ahead)?;
            self.loader.submit(ahead, &items);
        }
        let (loaded, skipped) = self.loader.take_readable(step, self.skip_bad)?;
        if loaded.len() < 2 {
            return Err(EngineError::Config(format!(
                "step {step}: only {} readable samples in the batch; contrastive training needs two or more",
                loaded.len()
            )));
        }
        Ok((loaded, skipped))
    }

    pub fn batch(&mut self, step: u64, last_step: u64) -> Result<TrainBatch, EngineError> {
        let (loaded, skipped) = self.loaded(step, last_step)?;
        Ok(self.train_batch(&loaded, skipped))
    }

    /// The batch of `step` and each row's tag columns.
    pub fn tagged_batch(&mut self, step: u64, last_step: u64) -> Result<(TrainBatch, Vec<Vec<usize>>), EngineError> {
        let (loaded, skipped) = self.loaded(step, last_step)?;
        let batch = self.train_batch(&loaded, skipped);
        Ok((batch, loaded.into_iter().map(|sample| sample.tags).collect()))
    }

    fn train_batch(&self, loaded: &[LoadedSample], skipped: Vec<String>) -> TrainBatch {
        let pixels = rgb_batch(loaded.iter().map(|sample| sample.pixels.as_slice()), self.image_size);
        let ids: Vec<i64> = loaded.iter().flat_map(|sample| sample.token_ids.iter().copied()).collect();
        let input_ids = Tensor::from_slice(&ids).view([loaded.len() as i64, -1]);
        TrainBatch {
            pixels: pixels.to_device(self.device).to_kind(Kind::Float) / 255.0,
            input_ids: input_ids.to_device(self.device),
            samples: loaded.iter().map(|sample| sample.id).collect(),
            skipped,
        }
    }

    /// The held-out shards' samples (at most [`MAX_HELD_OUT`]), decoded once.
    fn held_out(&mut self) -> Result<&HeldOut, EngineError> {
        if self.held_out.is_none() {
            let mut items = Vec::new();
            for (number, path) in self.held_out_shards.iter().enumerate() {
                let table = webdataset::scan(path)?;
                if let Some(damage) = table.damage.as_ref().filter(|_| !self.skip_bad) {
                    return Err(FileError::format(path, format!("damaged shard: {damage}")).into());
                }
                let shard = Arc::new(path.clone());
                for (sample, entry) in table.samples.into_iter().enumerate() {
                    let id = ((number as i64) << 32) | sample as i64;
                    items.push(ShardItem { shard: shard.clone(), entry, id, epoch: None });
                }
                if items.len() >= MAX_HELD_OUT {
                    break;
                }
            }
            items.truncate(MAX_HELD_OUT);
            let mut images = Vec::with_capacity(items.len());
            for (chunk, chunk_items) in items.chunks(EVAL_BATCH_SIZE).enumerate() {
                let key = EVALUATION_KEYS + chunk as u64;
                self.loader.submit(key, chunk_items);
                let (loaded, _) = self.loader.take_readable(key, self.skip_bad)?;
                let first = chunk * EVAL_BATCH_SIZE;
                for (row, sample) in loaded.into_iter().enumerate() {
                    self.held_out_tags.push(sample.tags);
                    self.held_out_captions.push(sample.captions[0].clone());
                    images.push(HeldOutImage { sample: first + row, pixels: sample.pixels, captions: sample.captions });
                }
            }
            self.held_out = Some(HeldOut::new(images, &self.tokenizer, self.context_length, self.image_size)?);
        }
        Ok(self.held_out.as_ref().expect("set just above"))
    }

    /// The held-out images, `(n, 3, size, size)` `u8` on the CPU, with each one's tag
    /// columns and first caption.
    pub fn held_out_tagged(&mut self) -> Result<(&Tensor, &[Vec<usize>], &[String]), EngineError> {
        self.held_out()?;
        let held_out = self.held_out.as_ref().expect("read just above");
        Ok((held_out.pixels(), &self.held_out_tags, &self.held_out_captions))
    }

    /// Validation loss and retrieval recall on the held-out shards.
    pub fn evaluate(&mut self, model: &Clip, normalizer: &PixelNormalizer) -> Result<Scores, EngineError> {
        let device = self.device;
        Ok(self.held_out()?.evaluate(model, normalizer, device))
    }
}
