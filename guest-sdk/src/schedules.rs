//! Learning-rate schedules shared by the standard policies, as pure functions of the step,
//! so every policy that warms up or decays does it the same way.

use std::f64::consts::PI;

/// Where a linear warmup of `w` steps starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WarmupStart {
    /// At one step's share, `base / w`, reaching `base` at step `w - 1`: no step trains at 0.
    #[default]
    OneStep,
    /// At 0, reaching `base` at step `w`: `base * step / w`, as transformers'
    /// `get_cosine_schedule_with_warmup` and `get_wsd_schedule` do.
    Zero,
}

impl WarmupStart {
    /// The `warmup_start` argument: `one_step` (the default) or `zero`.
    pub fn from_args(args: &crate::Args) -> Result<Self, String> {
        Ok(match args.choice("warmup_start", &["one_step", "zero"], "one_step")? {
            "zero" => WarmupStart::Zero,
            _ => WarmupStart::OneStep,
        })
    }

    /// Fraction of the target reached at `step` of a warmup of `steps` steps; 1 after it.
    pub fn ramp(self, step: u64, steps: u64) -> f64 {
        match self {
            WarmupStart::OneStep => warmup_ramp(step, steps),
            WarmupStart::Zero if step >= steps => 1.0,
            WarmupStart::Zero => step as f64 / steps as f64,
        }
    }
}

/// Linear warmup to `base` over `warmup` steps (reaching `base` at step `warmup - 1`), then
/// cosine decay to `floor` (capped at `base`) at step `total`.
pub fn cosine_warmup(step: u64, base: f64, warmup: u64, total: u64, floor: f64) -> f64 {
    cosine_warmup_from(step, base, (warmup, WarmupStart::OneStep), total, floor, (warmup, base))
}

/// [`cosine_warmup`] with the warmup's start chosen, and whose decay starts at step
/// `decay_start.0` from the rate `decay_start.1` (after a re-plan, see
/// [`crate::plan::Restart`]) instead of at the end of the warmup from `base`.
pub fn cosine_warmup_from(
    step: u64,
    base: f64,
    (warmup, start): (u64, WarmupStart),
    total: u64,
    floor: f64,
    decay_start: (u64, f64),
) -> f64 {
    if step < warmup {
        return start.ramp(step, warmup) * base;
    }
    let (start, from) = decay_start;
    let floor = floor.min(base);
    let decay_steps = total.saturating_sub(start).max(1);
    let progress = (step.saturating_sub(start) as f64 / decay_steps as f64).min(1.0);
    floor + (from - floor) * cosine_fall(progress)
}

/// Fraction of the target reached at `step` of a linear ramp of `steps` steps: (step+1)/steps,
/// 1 after the ramp.
pub fn warmup_ramp(step: u64, steps: u64) -> f64 {
    if step >= steps { 1.0 } else { (step + 1) as f64 / steps as f64 }
}

/// Half a cosine from 1 (progress 0) down to 0 (progress 1).
pub fn cosine_fall(progress: f64) -> f64 {
    0.5 * (1.0 + (PI * progress.clamp(0.0, 1.0)).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay_to_the_floor() {
        assert_eq!(cosine_warmup(0, 1.0, 4, 10, 0.1), 0.25);
        assert_eq!(cosine_warmup(3, 1.0, 4, 10, 0.1), 1.0);
        assert_eq!(cosine_warmup(4, 1.0, 4, 10, 0.1), 1.0);
        assert!((cosine_warmup(10, 1.0, 4, 10, 0.1) - 0.1).abs() < 1e-15);
        assert!((cosine_warmup(50, 1.0, 4, 10, 0.1) - 0.1).abs() < 1e-15);
    }

    #[test]
    fn a_restarted_decay_goes_on_from_its_rate_to_the_floor_at_the_new_end() {
        let reached = cosine_warmup(6, 1.0, 4, 10, 0.1);
        let warmup = (4, WarmupStart::OneStep);
        assert_eq!(cosine_warmup_from(6, 1.0, warmup, 30, 0.1, (6, reached)), reached);
        let halfway = cosine_warmup_from(18, 1.0, warmup, 30, 0.1, (6, reached));
        assert!((halfway - (0.1 + (reached - 0.1) / 2.0)).abs() < 1e-15);
        assert!((cosine_warmup_from(30, 1.0, warmup, 30, 0.1, (6, reached)) - 0.1).abs() < 1e-15);
    }

    /// transformers' `get_cosine_schedule_with_warmup` multiplier, as its source writes it.
    fn transformers_cosine(step: u64, warmup: u64, total: u64) -> f64 {
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
        (0.5 * (1.0 + (PI * 0.5 * 2.0 * progress).cos())).max(0.0)
    }

    #[test]
    fn a_zero_start_is_transformers_cosine_schedule() {
        let base = 3e-4;
        for (warmup, total) in [(10, 100), (1, 7), (0, 50), (25, 25)] {
            for step in 0..total {
                let ours = cosine_warmup_from(step, base, (warmup, WarmupStart::Zero), total, 0.0, (warmup, base));
                let theirs = base * transformers_cosine(step, warmup, total);
                assert!((ours - theirs).abs() <= 1e-16, "step {step} of {total} (warmup {warmup}): {ours} vs {theirs}");
            }
        }
        assert_eq!(WarmupStart::OneStep.ramp(0, 4), 0.25);
        assert_eq!(WarmupStart::Zero.ramp(0, 4), 0.0);
    }
}
