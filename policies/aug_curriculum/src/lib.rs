//! `aug_curriculum`: augmentation that ramps up from off to full strength, then switches
//! off for the last part of training, so the model ends on clean data.
//!
//! Strength `s = min(1, step / ramp_steps)` before `off_at`, and 0 from `off_at` on. Each
//! knob moves from its default (off) toward its target: `value = default + s * (target -
//! default)`. A knob's target is given as `<knob>=<value>`, or else is the end of its range
//! farthest from its default.
//!
//! A run resumed at step `r` with a new length `T'` keeps `ramp_steps` (as resolved when the
//! run started); if augmentation is still on at `r`, `off_at` keeps its distance from the end
//! (`off_at + T' - T`), otherwise it stays off.
//!
//! Arguments: one `<knob>=<target>` per knob to set (optional), `ramp_steps` (default 30% of
//! the run), `off_at` (default 90% of the run). Owns: augmentation.

use trainer_policy_sdk::plan::PlannedLength;
use trainer_policy_sdk::state::{StateReader, StateWriter};
use trainer_policy_sdk::{Args, Decision, Knobs, Observation, Policy, RunSpec, export_policy};

struct AugCurriculum {
    defaults: Vec<f64>,
    targets: Vec<f64>,
    ramp_steps: u64,
    off_at: u64,
    length: PlannedLength,
}

impl Policy for AugCurriculum {
    fn init(spec: RunSpec) -> Result<Self, String> {
        let mut known: Vec<&str> = spec.augmentation.iter().map(|knob| knob.name.as_str()).collect();
        known.extend(["ramp_steps", "off_at"]);
        let args = Args::new(&spec.args, &known)?;
        let mut targets = Vec::with_capacity(spec.augmentation.len());
        for knob in &spec.augmentation {
            let farthest =
                if (knob.max - knob.default).abs() >= (knob.default - knob.min).abs() { knob.max } else { knob.min };
            let target = args.f64_or(&knob.name, farthest)?;
            if !(knob.min..=knob.max).contains(&target) {
                return Err(format!("argument `{}`: {target} is outside [{}, {}]", knob.name, knob.min, knob.max));
            }
            targets.push(target);
        }
        Ok(Self {
            defaults: spec.augmentation.iter().map(|knob| knob.default).collect(),
            targets,
            ramp_steps: args.u64_or("ramp_steps", spec.total_steps * 3 / 10)?,
            off_at: args.u64_or("off_at", spec.total_steps * 9 / 10)?,
            length: PlannedLength::new(spec.total_steps),
        })
    }

    fn knobs(&self) -> Knobs {
        Knobs::AUGMENTATION
    }

    fn decide(&mut self, observation: Observation) -> Decision {
        let step = observation.step;
        let planned = self.length.total();
        if let Some(total) = self.length.take_change()
            && step < self.off_at
        {
            self.off_at = (self.off_at + total).saturating_sub(planned);
        }
        let strength = if step >= self.off_at {
            0.0
        } else if self.ramp_steps == 0 {
            1.0
        } else {
            (step as f64 / self.ramp_steps as f64).min(1.0)
        };
        let augmentation = self
            .defaults
            .iter()
            .zip(&self.targets)
            // Clamped so that rounding never steps outside the segment (and the knob's range).
            .map(|(&default, &target)| {
                Some((default + strength * (target - default)).clamp(default.min(target), default.max(target)))
            })
            .collect();
        Decision { augmentation, ..Decision::keep() }
    }

    fn save_state(&self) -> Vec<u8> {
        self.length.save(StateWriter::new().u64(self.ramp_steps).u64(self.off_at)).finish()
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), String> {
        let mut reader = StateReader::new(state);
        self.ramp_steps = reader.u64("ramp steps")?;
        self.off_at = reader.u64("off_at")?;
        self.length.load(&mut reader)?;
        reader.finish()
    }
}

export_policy!(AugCurriculum);
