//! What the standard policies mean, as properties over generated arguments and streams:
//! warmup rises and decay never rises or undercuts the floor; early stopping never stops
//! before patience plus delay; loss balancing evens out stationary losses; staged unfreezing
//! never freezes again what it unfroze; every schedule resumed with a new length goes on from
//! where it stood; `warmup_start=zero` is transformers' cosine schedule; gradient balancing
//! reaches its target shares; layer-wise decay shrinks with depth below the top; the spike
//! guard leaves a calm run alone and rolls back every spike.

mod common;

use common::observation;
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use trainer::check::check_spec;
use trainer::models::groups::GroupBy;
use trainer::policy::{
    Evaluation, LossGradients, Observation, PolicyInstance, PolicyRuntime, PolicySource, SandboxLimits,
};

fn policy_path(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/policies").join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing: run `make policies-all` first", path.display());
    path
}

/// Starts `name` with `args` on the check spec for a run of `total` steps.
fn start(runtime: &PolicyRuntime, name: &str, args: Vec<(String, String)>, total: u64) -> PolicyInstance {
    let source = PolicySource { path: policy_path(name), args: vec![] };
    let mut policy = runtime.load(&source).unwrap();
    policy.init(&check_spec(total, args, GroupBy::Part)).unwrap();
    policy
}

fn args(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// `cosine_warmup:warmup_start=zero` decides what transformers'
/// `get_cosine_schedule_with_warmup` gives (its multiplier times each group's base rate).
#[test]
fn a_zero_start_cosine_is_transformers_schedule() {
    let runtime = PolicyRuntime::new(SandboxLimits::default(), None);
    let (warmup, total) = (12u64, 60u64);
    let pairs = [("warmup_steps", warmup.to_string()), ("warmup_start", "zero".to_string())];
    let mut policy = start(&runtime, "cosine_warmup", args(&pairs), total);
    let spec = check_spec(total, vec![], GroupBy::Part);
    for step in 0..total {
        let multiplier = if step < warmup {
            step as f64 / warmup as f64
        } else {
            let progress = (step - warmup) as f64 / (total - warmup) as f64;
            (0.5 * (1.0 + (std::f64::consts::PI * 0.5 * 2.0 * progress).cos())).max(0.0)
        };
        let lrs = policy.decide(&observation(step, vec![], None)).unwrap().lrs;
        for (lr, group) in lrs.iter().zip(&spec.groups) {
            let expected = group.base_lr * multiplier;
            assert!(
                (lr.unwrap() - expected).abs() <= 1e-16 * group.base_lr.max(1.0),
                "step {step}: {lr:?} vs {expected}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// Each term's gradient per unit of weight stays as drawn (`G_i = w_i g_i`); measured every
    /// few steps, the shares reach the targets, and the weights keep summing to their count.
    #[test]
    fn grad_balance_brings_the_gradient_shares_to_their_targets(
        per_unit in proptest::array::uniform3(1e-3f64..1e3), targets in proptest::array::uniform3(0.05f64..1.0),
        rate in 0.3f64..1.0, every in 1u64..5,
    ) {
        let runtime = PolicyRuntime::new(SandboxLimits::default(), None);
        let names = ["tag", "align", "distill"];
        let mut pairs: Vec<(&str, String)> = names.iter().zip(targets).map(|(name, t)| (*name, t.to_string())).collect();
        pairs.extend([("every", every.to_string()), ("rate", rate.to_string())]);
        let mut policy = start(&runtime, "grad_balance", args(&pairs), 1000);
        let mut weights = [1.0; 3];
        let mut measured = None;
        for step in 0..400 {
            let seen = Observation { loss_gradients: measured.take(), ..observation(step, vec![1.0; 3], None) };
            let decision = policy.decide(&seen).unwrap();
            weights = std::array::from_fn(|i| decision.loss_weights[i].unwrap());
            prop_assert!((weights.iter().sum::<f64>() - 3.0).abs() < 1e-9, "weights {weights:?}");
            if decision.measure_loss_gradients {
                let norms: Vec<f64> = weights.iter().zip(per_unit).map(|(w, g)| w * g).collect();
                let sum: f64 = norms.iter().sum();
                let shares = norms.iter().map(|n| n / sum).collect();
                measured = Some(LossGradients { step, norms, shares });
            }
        }
        let norms: Vec<f64> = weights.iter().zip(per_unit).map(|(w, g)| w * g).collect();
        let (sum, target_sum) = (norms.iter().sum::<f64>(), targets.iter().sum::<f64>());
        for (norm, target) in norms.iter().zip(targets) {
            prop_assert!((norm / sum - target / target_sum).abs() < 1e-3, "shares {norms:?} for targets {targets:?}");
        }
    }

    /// timm's layer decay: a layer's multiplier is the one above it times the decay, the top
    /// layer of each tower and everything outside the towers at 1.
    #[test]
    fn llrd_multiplies_by_the_decay_at_each_layer_down(decay in 0.05f64..1.0) {
        let runtime = PolicyRuntime::new(SandboxLimits::default(), None);
        let source = PolicySource { path: policy_path("llrd"), args: vec![] };
        let mut policy = runtime.load(&source).unwrap();
        let spec = check_spec(100, args(&[("decay", decay.to_string())]), GroupBy::Layer);
        policy.init(&spec).unwrap();
        let multipliers: Vec<f64> = policy.decide(&observation(0, vec![], None)).unwrap().lr_multipliers.iter().map(|m| m.unwrap()).collect();
        for (group, multiplier) in spec.groups.iter().zip(&multipliers) {
            match &group.depth {
                None => prop_assert_eq!(*multiplier, 1.0),
                Some(depth) if depth.index + 1 == depth.count => prop_assert_eq!(*multiplier, 1.0),
                Some(_) => {}
            }
        }
        for pair in spec.groups.windows(2).zip(multipliers.windows(2)) {
            let ([below, above], [low, high]) = pair else { unreachable!() };
            if below.tower == above.tower && below.depth.is_some() && above.depth.is_some() {
                prop_assert!((low - high * decay).abs() <= 1e-12, "{} {low} below {} {high}", below.name, above.name);
            }
        }
    }

    /// A loss falling smoothly with noise below the threshold never triggers a rollback; a
    /// jump of many standard deviations after the warm-up always does, at the next decision,
    /// skipping the batches since the newest snapshot.
    #[test]
    fn spike_guard_leaves_calm_runs_alone_and_rolls_back_each_spike(
        seed in 0u64..1000, spike_at in 40u64..200, snapshot_every in 1u64..30, jump in 50.0f64..1e4,
    ) {
        let runtime = PolicyRuntime::new(SandboxLimits::default(), None);
        let pairs = [("snapshot_every", snapshot_every.to_string()), ("min_window", "20".to_string())];
        let mut policy = start(&runtime, "spike_guard", args(&pairs), 300);
        let mut last_snapshot = None;
        let mut state = seed;
        for step in 0..250u64 {
            // A smooth decay with ±1% noise from a seeded LCG; the spike multiplies it.
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let noise = 1.0 + 0.01 * ((state >> 11) as f64 / (1u64 << 53) as f64 - 0.5);
            let loss = 3.0 * (-(step as f64) / 500.0).exp() * noise * if step == spike_at { jump } else { 1.0 };
            let seen = Observation { grad_norm: Some(1.0), ..observation(step, if step == 0 { vec![] } else { vec![loss / 3.0; 3] }, None) };
            let decision = policy.decide(&seen).unwrap();
            if step == spike_at {
                let rollback = decision.rollback.expect("a rollback after the spike");
                prop_assert_eq!(rollback.skip_batches, step - last_snapshot.unwrap_or(step));
            } else {
                prop_assert!(decision.rollback.is_none(), "rollback at calm step {step}");
            }
            if decision.snapshot {
                last_snapshot = Some(step);
            }
        }
    }
    #[test]
    fn cosine_warmup_rises_then_never_rises_nor_undercuts_its_floor(
        total in 10u64..3000, warmup_share in 0.0f64..0.5, min_lr in 0.0f64..2e-4,
    ) {
        let runtime = PolicyRuntime::new(SandboxLimits::default(), None);
        let warmup = (total as f64 * warmup_share) as u64;
        let mut policy = start(&runtime, "cosine_warmup", args(&[("warmup_steps", warmup.to_string()), ("min_lr", min_lr.to_string())]), total);
        let spec = check_spec(total, vec![], GroupBy::Part);
        let mut previous: Option<Vec<f64>> = None;
        for step in 0..total + 5 {
            let lrs: Vec<f64> = policy.decide(&observation(step, vec![], None)).unwrap().lrs.iter().map(|l| l.unwrap()).collect();
            for (group, (&lr, g)) in lrs.iter().zip(&spec.groups).enumerate() {
                prop_assert!(lr <= g.base_lr * (1.0 + 1e-12), "step {step}: above base");
                if step >= warmup {
                    prop_assert!(lr >= min_lr.min(g.base_lr) * (1.0 - 1e-12), "step {step}: below floor");
                }
                if let Some(previous) = &previous {
                    if step < warmup {
                        prop_assert!(lr > previous[group], "step {step}: warmup must rise");
                    } else if step > warmup {
                        prop_assert!(lr <= previous[group], "step {step}: decay must not rise");
                    }
                }
            }
            previous = Some(lrs);
        }
    }

    #[test]
    fn early_stopping_never_stops_before_patience_plus_delay(
        patience in 1u64..8, delay in 0u64..400, every in 1u64..40, seed in 0u64..1000,
    ) {
        let runtime = PolicyRuntime::new(SandboxLimits::default(), None);
        let total = 1000;
        let mut policy = start(&runtime, "early_stopping", args(&[
            ("metric", "val_loss".into()), ("patience", patience.to_string()), ("start", delay.to_string()),
        ]), total);
        let mut evaluations_after_delay = 0u64;
        for step in 0..total {
            let evaluation = (step > 0 && step % every == 0).then(|| {
                let noise = ((seed * 7919 + step * 104729) % 1000) as f64 / 1000.0;
                Evaluation { step, values: vec![1.0 + noise, 0.5, 0.6] }
            });
            if evaluation.is_some() && step >= delay {
                evaluations_after_delay += 1;
            }
            let stop = policy.decide(&observation(step, vec![1.0, 0.5, 0.1], evaluation)).unwrap().stop;
            if stop.is_some() {
                prop_assert!(step >= delay, "stopped at {step} before the delay {delay}");
                // The first evaluation after the delay sets the best; patience more must follow.
                prop_assert!(evaluations_after_delay > patience, "stopped at {step} after {evaluations_after_delay} evaluations");
                break;
            }
        }
    }

    #[test]
    fn loss_balance_evens_out_stationary_losses(
        magnitudes in prop::array::uniform3(1e-3f64..1e3), beta in 0.5f64..0.99,
    ) {
        let runtime = PolicyRuntime::new(SandboxLimits::default(), None);
        let mut policy = start(&runtime, "loss_balance", args(&[("beta", beta.to_string())]), 2000);
        let mut weights = vec![];
        for step in 0..2000u64 {
            let wiggle = 1.0 + 0.05 * (((step * 31) % 7) as f64 / 7.0 - 0.5);
            let losses: Vec<f64> = if step == 0 { vec![] } else { magnitudes.iter().map(|m| m * wiggle).collect() };
            weights = policy.decide(&observation(step, losses, None)).unwrap().loss_weights;
        }
        let weighted: Vec<f64> = weights.iter().zip(magnitudes).map(|(w, m)| w.unwrap() * m).collect();
        for value in &weighted {
            prop_assert!((value - 1.0).abs() < 0.1, "weighted magnitudes {weighted:?} for {magnitudes:?}");
        }
    }

    #[test]
    fn staged_unfreeze_never_freezes_again_what_it_unfroze(
        vision_at in 0u64..500, text_at in 0u64..500, ramp in 1u64..100,
    ) {
        let runtime = PolicyRuntime::new(SandboxLimits::default(), None);
        let mut policy = start(&runtime, "staged_unfreeze", args(&[
            ("unfreeze", format!("vision@{vision_at}")), ("unfreeze", format!("text@{text_at}")), ("ramp_steps", ramp.to_string()),
        ]), 600);
        let mut unfrozen = [false; 4];
        for step in 0..600 {
            let decision = policy.decide(&observation(step, vec![], None)).unwrap();
            for (group, change) in decision.freeze.iter().enumerate() {
                match change {
                    Some(true) => prop_assert!(!unfrozen[group], "group {group} frozen again at step {step}"),
                    Some(false) => unfrozen[group] = true,
                    None => {}
                }
            }
        }
        prop_assert!(unfrozen[0] && unfrozen[1], "both groups are unfrozen by the end");
    }

    /// `--resume RUN --steps N`: a policy started for the new length and given the state saved
    /// at step `r` decides at `r` what it would have without the change (no jump), whether the
    /// run grows or shrinks. Augmentation may switch off early when a run shrinks past its
    /// `off_at`, so it is held to this only for longer runs.
    #[test]
    fn schedules_resumed_with_a_new_length_go_on_without_a_jump(
        total in 20u64..2000, resume_share in 0.0f64..1.0, length_factor in 0.2f64..3.0, min_lr in 0.0f64..5e-5,
    ) {
        let runtime = PolicyRuntime::new(SandboxLimits::default(), None);
        let resume_at = ((total as f64 * resume_share) as u64).clamp(1, total);
        let new_total = ((total as f64 * length_factor) as u64).max(resume_at);
        let floor = ("min_lr", min_lr.to_string());
        let schedules: [(&str, Vec<(&str, String)>); 6] = [
            ("cosine_warmup", vec![floor.clone()]),
            ("staged_unfreeze", vec![("unfreeze", format!("vision@{}", total / 2))]),
            ("one_cycle", vec![]),
            ("warmup_stable_decay", vec![("shape", "cosine".into()), floor.clone()]),
            ("step_decay", vec![]),
            ("aug_curriculum", vec![]),
        ];
        for (name, pairs) in schedules {
            if name == "aug_curriculum" && new_total < total {
                continue;
            }
            let mut first = start(&runtime, name, args(&pairs), total);
            for step in 0..resume_at {
                first.decide(&observation(step, vec![], None)).unwrap();
            }
            let state = first.save_state(name).unwrap();
            let planned = first.decide(&observation(resume_at, vec![], None)).unwrap();
            let mut resumed = start(&runtime, name, args(&pairs), new_total);
            resumed.load_state(&state).unwrap();
            let replanned = resumed.decide(&observation(resume_at, vec![], None)).unwrap();
            let context = format!("{name}: {total} steps resumed at {resume_at} for {new_total}");
            let values = |decision: &trainer::policy::Decision| -> Vec<f64> {
                decision.lrs.iter().chain(&decision.lr_multipliers).chain(&decision.augmentation).map(|v| v.unwrap()).collect()
            };
            for (&got, &want) in values(&replanned).iter().zip(&values(&planned)) {
                prop_assert!((got - want).abs() <= 1e-12 * want.abs(), "{context}: {got} instead of {want}");
            }
            prop_assert_eq!(replanned.freeze, planned.freeze, "{}", context);
        }
    }
}
