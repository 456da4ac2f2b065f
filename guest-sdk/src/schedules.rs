//! Learning-rate schedules shared by the standard policies, as pure functions of the step,
//! so every policy that warms up or decays does it the same way.

use std::f64::consts::PI;

/// Linear warmup to `base` over `warmup` steps (reaching `base` at step `warmup - 1`), then
/// cosine decay to `floor` (capped at `base`) at step `total`.
pub fn cosine_warmup(step: u64, base: f64, warmup: u64, total: u64, floor: f64) -> f64 {
    cosine_warmup_from(step, base, warmup, total, floor, (warmup, base))
}

/// [`cosine_warmup`] whose decay starts at step `decay_start.0` from the rate `decay_start.1`
/// (after a re-plan, see [`crate::plan::Restart`]) instead of at the end of the warmup from
/// `base`.
pub fn cosine_warmup_from(step: u64, base: f64, warmup: u64, total: u64, floor: f64, decay_start: (u64, f64)) -> f64 {
    if step < warmup {
        return warmup_ramp(step, warmup) * base;
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
        assert_eq!(cosine_warmup_from(6, 1.0, 4, 30, 0.1, (6, reached)), reached);
        assert!((cosine_warmup_from(18, 1.0, 4, 30, 0.1, (6, reached)) - (0.1 + (reached - 0.1) / 2.0)).abs() < 1e-15);
        assert!((cosine_warmup_from(30, 1.0, 4, 30, 0.1, (6, reached)) - 0.1).abs() < 1e-15);
    }
}
