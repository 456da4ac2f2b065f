//! Schedules planned over the run's length, kept continuous when a resumed run changes it.
//!
//! `trainer train --resume RUN --steps N` starts the policies with the new `total_steps`, then
//! gives them their saved state. A policy whose schedule depends on the length saves the
//! length it planned for ([`PlannedLength`]); on restore it notices the change, and at the
//! next decision, where the resume step is known, re-plans what is left of its schedule from
//! there ([`Restart`]): a decay goes on from the rate it had reached to its floor at the new
//! end. Nothing jumps at the resume step, and an unchanged length changes nothing.

use crate::schedules::{WarmupStart, cosine_warmup_from};
use crate::state::{StateReader, StateWriter};

/// The run length a schedule is planned for, and a new one waiting for the next decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedLength {
    total: u64,
    pending: Option<u64>,
}

impl PlannedLength {
    /// Planned for the run's `total_steps`, as given to `init`.
    pub fn new(total_steps: u64) -> Self {
        PlannedLength { total: total_steps, pending: None }
    }

    /// The length the schedule is planned for now.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Writes the planned length; while a change waits for its step, the old one, so a
    /// state saved then is restored exactly as the one that was loaded.
    pub fn save(&self, writer: StateWriter) -> StateWriter {
        writer.u64(self.total)
    }

    /// Reads the length the saved schedule was planned for. If the run was started with
    /// another one, that one waits for [`PlannedLength::take_change`].
    pub fn load(&mut self, reader: &mut StateReader) -> Result<(), String> {
        let saved = reader.u64("planned total steps")?;
        let run_total = self.pending.unwrap_or(self.total);
        self.pending = (saved != run_total).then_some(run_total);
        self.total = saved;
        Ok(())
    }

    /// The run's new length, when a change waits for the next decision.
    pub fn pending(&self) -> Option<u64> {
        self.pending
    }

    /// The run's new length, once, at the first decision after a resume that changed it:
    /// re-plan from this step. The old plan is still in force until this is called.
    pub fn take_change(&mut self) -> Option<u64> {
        let new_total = self.pending.take()?;
        self.total = new_total;
        Some(new_total)
    }
}

/// Where a decay was re-planned: from `step` on, group `g` decays from `values[g]`, the rate
/// it had reached under the earlier plan, to its floor at the planned end.
#[derive(Debug, Clone, PartialEq)]
pub struct Restart {
    pub step: u64,
    pub values: Vec<f64>,
}

impl Restart {
    /// Writes an optional restart: a flag, then the step and one value per group.
    pub fn save(restart: &Option<Restart>, writer: StateWriter) -> StateWriter {
        match restart {
            None => writer.bool(false),
            Some(restart) => writer.bool(true).u64(restart.step).f64s(&restart.values),
        }
    }

    /// Reads what [`Restart::save`] wrote, for a run of `groups` groups.
    pub fn load(reader: &mut StateReader, groups: usize) -> Result<Option<Restart>, String> {
        if !reader.bool("restarted")? {
            return Ok(None);
        }
        Ok(Some(Restart { step: reader.u64("restart step")?, values: reader.f64s("restart rates", groups)? }))
    }

    /// The start of group `group`'s decay: the restart when there is one, else `planned`.
    pub fn decay_start(restart: &Option<Restart>, group: usize, planned: (u64, f64)) -> (u64, f64) {
        match restart {
            Some(restart) => (restart.step, restart.values[group]),
            None => planned,
        }
    }
}

/// Linear warmup, then cosine decay to a floor, for every group ([`cosine_warmup_from`]),
/// re-planned when the run's length changes: a change during the warmup only moves the end
/// of the decay; after it, each group decays from the rate it has at the resume step to the
/// floor at the new end.
#[derive(Debug, Clone, PartialEq)]
pub struct CosineSchedule {
    base_lrs: Vec<f64>,
    warmup_steps: u64,
    warmup_start: WarmupStart,
    min_lr: f64,
    length: PlannedLength,
    restart: Option<Restart>,
}

impl CosineSchedule {
    pub fn new(base_lrs: Vec<f64>, warmup_steps: u64, min_lr: f64, total_steps: u64) -> Self {
        CosineSchedule {
            base_lrs,
            warmup_steps,
            warmup_start: WarmupStart::OneStep,
            min_lr,
            length: PlannedLength::new(total_steps),
            restart: None,
        }
    }

    /// This schedule with its warmup starting at `start` (an argument, so not saved state).
    pub fn starting(self, start: WarmupStart) -> Self {
        CosineSchedule { warmup_start: start, ..self }
    }

    /// Takes a change of the run's length at `step`, the step about to be decided; call it
    /// before [`CosineSchedule::rate`] at every decision.
    pub fn begin_step(&mut self, step: u64) {
        if self.length.pending().is_none() {
            return;
        }
        let values = (0..self.base_lrs.len()).map(|group| self.rate(group, step)).collect();
        self.length.take_change();
        if step >= self.warmup_steps {
            self.restart = Some(Restart { step, values });
        }
    }

    /// Group `group`'s rate at `step`.
    pub fn rate(&self, group: usize, step: u64) -> f64 {
        let base = self.base_lrs[group];
        let start = Restart::decay_start(&self.restart, group, (self.warmup_steps, base));
        let warmup = (self.warmup_steps, self.warmup_start);
        cosine_warmup_from(step, base, warmup, self.length.total(), self.min_lr, start)
    }

    /// Writes the warmup length (resolved when the run started), the planned length and the
    /// restart.
    pub fn save(&self, writer: StateWriter) -> StateWriter {
        Restart::save(&self.restart, self.length.save(writer.u64(self.warmup_steps)))
    }

    pub fn load(&mut self, reader: &mut StateReader) -> Result<(), String> {
        self.warmup_steps = reader.u64("warmup steps")?;
        self.length.load(reader)?;
        self.restart = Restart::load(reader, self.base_lrs.len())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(length: &PlannedLength, run_total: u64) -> PlannedLength {
        let bytes = length.save(StateWriter::new()).finish();
        let mut restored = PlannedLength::new(run_total);
        let mut reader = StateReader::new(&bytes);
        restored.load(&mut reader).unwrap();
        reader.finish().unwrap();
        restored
    }

    #[test]
    fn an_unchanged_length_has_no_change() {
        let mut restored = round_trip(&PlannedLength::new(100), 100);
        assert_eq!(restored.take_change(), None);
        assert_eq!(restored.total(), 100);
    }

    #[test]
    fn a_new_length_waits_for_the_next_decision_and_comes_once() {
        let mut restored = round_trip(&PlannedLength::new(100), 250);
        assert_eq!(restored.total(), 100, "the old plan holds until the change is taken");
        assert_eq!(round_trip(&restored, 250), restored, "saved while waiting, restored the same");
        assert_eq!(restored.take_change(), Some(250));
        assert_eq!(restored.total(), 250);
        assert_eq!(restored.take_change(), None);
    }

    /// The schedule of a run planned for `planned` steps, resumed at `resume` with `total`.
    fn resumed(planned: u64, resume: u64, total: u64) -> CosineSchedule {
        let first = CosineSchedule::new(vec![1.0, 0.1], 4, 0.01, planned);
        let bytes = first.save(StateWriter::new()).finish();
        let mut schedule = CosineSchedule::new(vec![1.0, 0.1], 10, 0.01, total);
        let mut reader = StateReader::new(&bytes);
        schedule.load(&mut reader).unwrap();
        reader.finish().unwrap();
        schedule.begin_step(resume);
        schedule
    }

    #[test]
    fn a_cosine_resumed_with_a_new_length_continues_from_its_rate_to_the_new_end() {
        let planned = CosineSchedule::new(vec![1.0, 0.1], 4, 0.01, 20);
        let schedule = resumed(20, 8, 50);
        for group in 0..2 {
            assert_eq!(schedule.rate(group, 8), planned.rate(group, 8), "no jump at the resume step");
            let floor = [0.01, 0.01][group];
            let at_8 = planned.rate(group, 8);
            let halfway = floor + (at_8 - floor) * 0.5;
            assert!((schedule.rate(group, 29) - halfway).abs() < 1e-15, "half the decay at the middle of 8..50");
            assert!((schedule.rate(group, 50) - floor).abs() < 1e-15);
        }
    }

    #[test]
    fn a_change_during_warmup_keeps_the_warmup_and_moves_the_end() {
        let schedule = resumed(20, 2, 40);
        assert_eq!(schedule, {
            let mut expected = CosineSchedule::new(vec![1.0, 0.1], 4, 0.01, 40);
            expected.begin_step(2);
            expected
        });
    }

    #[test]
    fn an_unchanged_length_resumes_the_same_plan() {
        let planned = CosineSchedule::new(vec![1.0, 0.1], 4, 0.01, 20);
        assert_eq!(resumed(20, 8, 20), planned);
    }

    #[test]
    fn restarts_round_trip() {
        for restart in [None, Some(Restart { step: 7, values: vec![0.5, 1e-3] })] {
            let bytes = Restart::save(&restart, StateWriter::new()).finish();
            let mut reader = StateReader::new(&bytes);
            assert_eq!(Restart::load(&mut reader, 2).unwrap(), restart);
            reader.finish().unwrap();
        }
    }
}
