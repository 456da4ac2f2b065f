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

/// Epoch-wise shuffled batches of a data set, dropping the last partial batch.
#[derive(Debug, Clone)]
pub struct EpochSampler {
    seed: u64,
    len: usize,
    batch_size: usize,
    shard: Shard,
    epoch: Option<(u64, Vec<i64>)>,
}

impl EpochSampler {
    /// `batch_size` (the global batch) must be between 1 and `len`, and a multiple of the
    /// shard count.
    pub fn new(seed: u64, len: usize, batch_size: usize, shard: Shard) -> Self {
        assert!(batch_size >= 1 && batch_size <= len, "batch size {batch_size} for {len} samples");
        assert!(batch_size.is_multiple_of(shard.count), "batch size {batch_size} over {} shards", shard.count);
        EpochSampler { seed, len, batch_size, shard, epoch: None }
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

    /// Fisher-Yates over the data set, keyed by (seed, epoch).
    fn permutation(&self, epoch: u64) -> Vec<i64> {
        let mut order: Vec<i64> = (0..self.len as i64).collect();
        for i in (1..self.len).rev() {
            let j = (keyed(self.seed, &[epoch, i as u64]) % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        order
    }
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
    fn shards_partition_the_global_batch_in_rank_order() {
        let whole = EpochSampler::new(3, 50, 6, Shard::WHOLE).batch(11).to_vec();
        let shards: Vec<i64> = (0..3)
            .flat_map(|index| EpochSampler::new(3, 50, 6, Shard { index, count: 3 }).batch(11).to_vec())
            .collect();
        assert_eq!(shards, whole);
    }
}
