//! The in-memory snapshots a policy's `snapshot` action keeps and its `rollback` restores:
//! the optimizer's buffers (every trained weight, both moments, the step counts) and where
//! the run was in the data order, the newest `--snapshots` of them. Checkpoints carry them
//! too, so a run resumed from a checkpoint rolls back to a snapshot taken before the pause
//! exactly as the uninterrupted run does.

use super::optimizer::OptimizerSnapshot;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// When a snapshot was taken: before step `steps_done`, with the data order's offset then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPoint {
    pub steps_done: u64,
    pub data_offset: i64,
}

impl SnapshotPoint {
    /// The position in the data order of the step the snapshot was taken before.
    pub fn data_position(&self) -> i64 {
        self.steps_done as i64 + self.data_offset
    }
}

/// The newest snapshots, oldest first.
pub struct Snapshots {
    capacity: usize,
    kept: VecDeque<(SnapshotPoint, OptimizerSnapshot)>,
}

impl Snapshots {
    /// Room for `capacity` snapshots (0: the `snapshot` action keeps none).
    pub fn new(capacity: usize) -> Self {
        Snapshots { capacity, kept: VecDeque::with_capacity(capacity) }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Keeps `snapshot`, dropping the oldest beyond the capacity.
    pub fn keep(&mut self, point: SnapshotPoint, snapshot: OptimizerSnapshot) {
        if self.capacity == 0 {
            return;
        }
        self.kept.push_back((point, snapshot));
        while self.kept.len() > self.capacity {
            self.kept.pop_front();
        }
    }

    pub fn newest(&self) -> Option<&(SnapshotPoint, OptimizerSnapshot)> {
        self.kept.back()
    }

    /// The snapshots, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &(SnapshotPoint, OptimizerSnapshot)> {
        self.kept.iter()
    }

    pub fn points(&self) -> Vec<SnapshotPoint> {
        self.kept.iter().map(|(point, _)| *point).collect()
    }
}
