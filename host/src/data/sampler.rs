//! The order samples are seen in, and per-sample random choices, as pure functions of
//! (seed, epoch, position): the same seed gives the same run whatever the thread timing,
//! and a run can resume from a step number alone. In a data-parallel run every rank draws
//! the same global batch and takes its own shard of it, so what a step trains on does not
//! depend on the number of processes.

/// SplitMix64: a fast, well-mixed hash of one 64-bit word.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A random word determined by the seed and a few coordinates (epoch, sample index, ...).
pub fn keyed(seed: u64, keys: &[u64]) -> u64 {
    keys.iter().fold(mix(seed), |acc, &key| mix(acc ^ key))
}

/// Which part of each global batch this process trains on: shard `index` of `count` equal
/// consecutive parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The whole batch: a run of one process.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };
}

/// Epoch-wise shuffled batches of a data set, dropping the last partial batch; each sample
/// once an epoch, or [`EpochSampler::repeating`] some.
#[derive(Debug, Clone)]
pub struct EpochSampler {
    seed: u64,
    len: usize,
    batch_size: usize,
    shard: Shard,
    /// Each sample's repeat factor, when samples repeat.
    repeats: Option<Vec<f64>>,
    epoch: Option<(u64, Vec<i64>)>,
}

impl EpochSampler {
    /// `batch_size` (the global batch) must be between 1 and `len`, and a multiple of the
    /// shard count.
    pub fn new(seed: u64, len: usize, batch_size: usize, shard: Shard) -> Self {
        assert!(batch_size >= 1 && batch_size <= len, "batch size {batch_size} for {len} samples");
        assert!(batch_size.is_multiple_of(shard.count), "batch size {batch_size} over {} shards", shard.count);
        EpochSampler { seed, len, batch_size, shard, repeats: None, epoch: None }
    }

    /// Sample `i` seen `repeats[i]` times an epoch in expectation (each at least 1): LVIS's
    /// repeat-factor sampling. An epoch holds `floor(r)` copies of each sample and one more
    /// with probability `r - floor(r)`, drawn by systematic sampling over a keyed order of the
    /// samples, so that every epoch has the same number of whole batches: the fewest copies
    /// any epoch can hold, and a run resumes from its step number alone.
    pub fn repeating(mut self, repeats: Vec<f64>) -> Self {
        assert_eq!(repeats.len(), self.len, "a repeat factor per sample");
        assert!(repeats.iter().all(|&r| r.is_finite() && r >= 1.0), "repeat factors are at least 1");
        let fewest = repeats.iter().map(|r| r.floor() as usize).sum::<usize>()
            + repeats.iter().map(|r| r.fract()).sum::<f64>().floor() as usize;
        self.len = fewest;
        self.repeats = Some(repeats);
        self
    }

    /// Samples it draws from.
    pub fn sample_count(&self) -> usize {
        self.len
    }

    pub fn steps_per_epoch(&self) -> u64 {
        (self.len / self.batch_size) as u64
    }

    /// The epoch that global step `step` falls in.
    pub fn epoch_of(&self, step: u64) -> u64 {
        step / self.steps_per_epoch()
    }

    /// Sample indices of global step `step`: this process's shard of the global batch.
    pub fn batch(&mut self, step: u64) -> &[i64] {
        let epoch = self.epoch_of(step);
        if self.epoch.as_ref().is_none_or(|(current, _)| *current != epoch) {
            self.epoch = Some((epoch, self.permutation(epoch)));
        }
        let (_, order) = self.epoch.as_ref().expect("set just above");
        let shard_size = self.batch_size / self.shard.count;
        let start = (step % self.steps_per_epoch()) as usize * self.batch_size + self.shard.index * shard_size;
        &order[start..start + shard_size]
    }

    /// Fisher-Yates over the epoch's samples, keyed by (seed, epoch).
    fn permutation(&self, epoch: u64) -> Vec<i64> {
        let mut order: Vec<i64> = match &self.repeats {
            None => (0..self.len as i64).collect(),
            Some(repeats) => repeated(repeats, keyed(self.seed, &[epoch, REPEATS])),
        };
        for i in (1..order.len()).rev() {
            let j = (keyed(self.seed, &[epoch, i as u64]) % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        order
    }
}

/// The key of an epoch's draw of which samples repeat once more.
const REPEATS: u64 = 0x05E9_EA75;

/// Each sample `floor(r)` times, and once more where systematic sampling picks it: the
/// samples in an order keyed by `key`, their fractions `r - floor(r)` laid end to end, and
/// one point in each unit from a keyed offset, so that sample `i` gets its extra copy with
/// probability exactly its fraction.
fn repeated(repeats: &[f64], key: u64) -> Vec<i64> {
    let mut order: Vec<usize> = (0..repeats.len()).collect();
    order.sort_by_key(|&i| keyed(key, &[i as u64]));
    // Uniform in [0, 1), apart from the order's draws.
    let offset = (keyed(key, &[u64::MAX]) >> 11) as f64 / (1u64 << 53) as f64;
    let mut samples: Vec<i64> = Vec::new();
    let mut laid = 0.0;
    for i in order {
        let (whole, fraction) = (repeats[i].floor(), repeats[i].fract());
        samples.extend(std::iter::repeat_n(i as i64, whole as usize));
        // A point offset + k falls in [laid, laid + fraction).
        if (laid + fraction - offset).ceil() > (laid - offset).ceil() {
            samples.push(i as i64);
        }
        laid += fraction;
    }
    samples
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_visits_each_sample_once() {
        let mut sampler = EpochSampler::new(7, 10, 3, Shard::WHOLE);
        assert_eq!(sampler.steps_per_epoch(), 3);
        let mut seen: Vec<i64> = (0..3).flat_map(|step| sampler.batch(step).to_vec()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 9);
    }

    #[test]
    fn order_depends_on_seed_and_epoch_only() {
        let mut a = EpochSampler::new(1, 100, 10, Shard::WHOLE);
        let mut b = EpochSampler::new(1, 100, 10, Shard::WHOLE);
        let later = b.batch(25).to_vec(); // b starts mid-run, as a resumed run does
        assert_eq!(a.batch(25), later.as_slice());
        let first_epoch = a.batch(5).to_vec();
        assert_ne!(first_epoch, a.batch(15), "epochs are shuffled differently");
        assert_ne!(
            EpochSampler::new(2, 100, 10, Shard::WHOLE).batch(0),
            EpochSampler::new(1, 100, 10, Shard::WHOLE).batch(0)
        );
    }

    #[test]
    fn repeated_samples_come_as_often_as_their_factor_every_epoch_of_one_length() {
        let repeats = [1.0, 1.0, 2.5, 1.25, 4.0, 1.0, 1.75, 1.0];
        let mut sampler = EpochSampler::new(5, 8, 4, Shard::WHOLE).repeating(repeats.to_vec());
        // floor: 1+1+2+1+4+1+1+1 = 12, fractions 1.5: 13 copies at least, 3 batches.
        assert_eq!(sampler.steps_per_epoch(), 3);
        let epochs = 4000;
        let mut counts = [0usize; 8];
        for step in 0..epochs * 3 {
            for &i in sampler.batch(step) {
                counts[i as usize] += 1;
            }
        }
        // Whole batches drop a copy or two an epoch: each sample's share of what is drawn
        // is its factor's share of their sum.
        let total: f64 = repeats.iter().sum();
        let drawn = counts.iter().sum::<usize>() as f64;
        for (i, &count) in counts.iter().enumerate() {
            let (share, expected) = (count as f64 / drawn, repeats[i] / total);
            assert!((share - expected).abs() < 0.01, "sample {i}: {share} of the draws, expected {expected}");
        }
        // A resumed sampler gives the same batches from a step number alone.
        let mut resumed = EpochSampler::new(5, 8, 4, Shard::WHOLE).repeating(repeats.to_vec());
        assert_eq!(resumed.batch(7001).to_vec(), sampler.batch(7001).to_vec());
    }

    #[test]
    fn systematic_sampling_gives_each_extra_copy_its_probability() {
        let repeats = [1.1, 1.9, 1.5, 1.0, 2.3];
        let mut extra = [0usize; 5];
        let draws = 20000;
        for key in 0..draws {
            let samples = repeated(&repeats, mix(key));
            for (i, &r) in repeats.iter().enumerate() {
                let copies = samples.iter().filter(|&&s| s == i as i64).count();
                assert!(copies == r.floor() as usize || copies == r.floor() as usize + 1);
                extra[i] += copies - r.floor() as usize;
            }
        }
        for (i, &r) in repeats.iter().enumerate() {
            let rate = extra[i] as f64 / draws as f64;
            assert!((rate - r.fract()).abs() < 0.015, "sample {i}: {rate} against {}", r.fract());
        }
    }

    #[test]
    fn shards_partition_the_global_batch_in_rank_order() {
        let whole = EpochSampler::new(3, 50, 6, Shard::WHOLE).batch(11).to_vec();
        let shards: Vec<i64> = (0..3)
            .flat_map(|index| EpochSampler::new(3, 50, 6, Shard { index, count: 3 }).batch(11).to_vec())
            .collect();
        assert_eq!(shards, whole);
    }
}
