//! Reading samples (decoding images, tokenizing captions) in worker threads, ahead of the
//! training loop.
//!
//! The loop submits batches by key (the step number) as early as it likes and takes them in
//! any order; each item's result lands in its own slot, so a batch comes out in the order it
//! was submitted whatever the thread timing, and runs stay reproducible.

use super::captioned::CaptionedSample;
use super::clip_tokenizer::ClipTokenizer;
use super::images::{SquareResize, load_rgb_square};
use crate::files::FileError;
use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// One image to decode and one of its captions to tokenize.
#[derive(Debug, Clone, Copy)]
pub struct Item {
    pub sample: usize,
    pub caption: usize,
}

/// A decoded image (`3 x size x size` bytes, channel-major) and its caption's token ids.
#[derive(Debug)]
pub struct LoadedItem {
    pub sample: usize,
    pub pixels: Vec<u8>,
    pub token_ids: Vec<i64>,
}

/// Batches a task submits ahead of the one it trains on.
pub const PREFETCH_BATCHES: u64 = 3;
/// Keys of evaluation chunks, far above any step number.
pub const EVALUATION_KEYS: u64 = 1 << 62;

/// What worker threads read: one item (an image and what goes with it) at a time.
pub trait ReadItem: Send + Sync + 'static {
    type Item: Clone + Send + 'static;
    type Loaded: Send + 'static;
    fn read(&self, item: &Self::Item) -> Result<Self::Loaded, FileError>;
    /// The file of `item`, named when its decoder panics.
    fn file<'a>(&'a self, item: &'a Self::Item) -> &'a Path;
}

/// What a worker needs to turn an [`Item`] into a [`LoadedItem`].
#[derive(Debug)]
pub struct ItemReader {
    pub samples: Arc<Vec<CaptionedSample>>,
    pub tokenizer: Arc<ClipTokenizer>,
    pub context_length: usize,
    pub square: SquareResize,
}

impl ReadItem for ItemReader {
    type Item = Item;
    type Loaded = LoadedItem;

    fn read(&self, item: &Item) -> Result<LoadedItem, FileError> {
        let sample = &self.samples[item.sample];
        let pixels = load_rgb_square(&sample.image, &self.square).map_err(|err| err.declared_in(&sample.origin))?;
        let token_ids = self.tokenizer.tokenize(&sample.captions[item.caption], self.context_length);
        Ok(LoadedItem { sample: item.sample, pixels, token_ids })
    }

    fn file<'a>(&'a self, item: &'a Item) -> &'a Path {
        &self.samples[item.sample].image
    }
}

struct Job<I> {
    key: u64,
    slot: usize,
    item: I,
}

type Done<L> = (u64, usize, Result<L, FileError>);
/// A batch's results by position, filled as workers finish.
type Slots<L> = Vec<Option<Result<L, FileError>>>;

/// A pool of worker threads with a queue of submitted batches.
pub struct Loader<R: ReadItem> {
    jobs: Option<Sender<Job<R::Item>>>,
    done: Receiver<Done<R::Loaded>>,
    workers: Vec<JoinHandle<()>>,
    /// Submitted batches not yet taken: their slots, filled as workers finish.
    batches: HashMap<u64, Slots<R::Loaded>>,
}

impl<R: ReadItem> Loader<R> {
    pub fn new(reader: R, workers: usize) -> Self {
        let (jobs, job_queue) = channel::<Job<R::Item>>();
        let (finished, done) = channel::<Done<R::Loaded>>();
        let job_queue = Arc::new(Mutex::new(job_queue));
        let reader = Arc::new(reader);
        let workers = (0..workers.max(1))
            .map(|_| {
                let (job_queue, finished, reader) = (job_queue.clone(), finished.clone(), reader.clone());
                std::thread::spawn(move || {
                    loop {
                        // The lock is held only to take a job, not while decoding it.
                        let next = job_queue.lock().map(|queue| queue.recv());
                        let Ok(Ok(job)) = next else { break };
                        // A decoder that panics on a hostile file must not leave its slot empty
                        // (the loop would wait for it forever): it becomes that file's error.
                        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.read(&job.item)))
                            .unwrap_or_else(|_| {
                                Err(FileError::format(reader.file(&job.item), "the image decoder failed on this file"))
                            });
                        if finished.send((job.key, job.slot, result)).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        Loader { jobs: Some(jobs), done, workers, batches: HashMap::new() }
    }

    pub fn is_submitted(&self, key: u64) -> bool {
        self.batches.contains_key(&key)
    }

    /// The steps from `step` to [`PREFETCH_BATCHES`] ahead (within a run of `total_steps`)
    /// not yet submitted: what a task submits before taking `step`.
    pub fn to_prefetch(&self, step: u64, total_steps: u64) -> Vec<u64> {
        let end = (step + 1 + PREFETCH_BATCHES).min(total_steps.max(step + 1));
        (step..end).filter(|&ahead| !self.is_submitted(ahead)).collect()
    }

    /// Queues `items` as batch `key`.
    pub fn submit(&mut self, key: u64, items: &[R::Item]) {
        self.batches.insert(key, items.iter().map(|_| None).collect());
        let jobs = self.jobs.as_ref().expect("jobs close only on drop");
        for (slot, item) in items.iter().enumerate() {
            jobs.send(Job { key, slot, item: item.clone() }).expect("workers live as long as the loader");
        }
    }

    /// Waits for batch `key` (submitted earlier) and returns its results in submission order.
    pub fn take(&mut self, key: u64) -> Vec<Result<R::Loaded, FileError>> {
        assert!(self.is_submitted(key), "batch {key} taken before it was submitted");
        let complete = |slots: &Vec<Option<_>>| slots.iter().all(Option::is_some);
        while !self.batches.get(&key).is_some_and(complete) {
            let (done_key, slot, result) = self.done.recv().expect("workers live as long as the loader");
            if let Some(slots) = self.batches.get_mut(&done_key) {
                slots[slot] = Some(result);
            }
        }
        let slots = self.batches.remove(&key).expect("checked above");
        if key < EVALUATION_KEYS {
            // Training batches outside the prefetch window after `key` will not be taken: a
            // rollback moved the data order. Their memory goes; late results are ignored.
            let ahead = key + 1..=key + PREFETCH_BATCHES;
            self.batches.retain(|batch, _| *batch >= EVALUATION_KEYS || ahead.contains(batch));
        }
        slots.into_iter().map(|slot| slot.expect("complete")).collect()
    }
}

impl<R: ReadItem> Loader<R> {
    /// Batch `key`'s items that read. One that did not stops the run with its error, or
    /// with `skip_bad` is left out and described (one line each, returned beside).
    pub fn take_readable(&mut self, key: u64, skip_bad: bool) -> Result<(Vec<R::Loaded>, Vec<String>), FileError> {
        let mut loaded = Vec::new();
        let mut skipped = Vec::new();
        for result in self.take(key) {
            match result {
                Ok(item) => loaded.push(item),
                Err(err) if skip_bad => skipped.push(err.to_string()),
                Err(err) => return Err(err),
            }
        }
        Ok((loaded, skipped))
    }
}

impl<R: ReadItem> Drop for Loader<R> {
    fn drop(&mut self) {
        self.jobs.take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}
