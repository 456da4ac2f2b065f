//! The standard policies, run as components in the real sandbox over long observation
//! streams, against reference formulas written here independently of the policies' code.

use std::f64::consts::PI;
use std::path::{Path, PathBuf};
use trainer::check::check_spec;
use trainer::models::groups::GroupBy;
use trainer::policy::{
    AugmentationKnob, Decision, Evaluation, GradClip, Knobs, NonFinite, Observation, ParamGroup, PolicyInstance,
    PolicyRuntime, PolicySource, RunSpec, SandboxLimits,
};

const TOTAL: u64 = 1000;
const BASES: [f64; 4] = [1e-3, 5e-4, 2e-3, 1e-2];
const GROUPS: [&str; 4] = ["vision", "text", "projection", "logit_scale"];
const LOSSES: [&str; 3] = ["tag", "align", "distill"];

fn policy_path(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/policies").join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing: run `make policies-all` (or `make test`) first", path.display());
    path
}

fn spec(args: &[(&str, &str)]) -> RunSpec {
    RunSpec {
        groups: GROUPS
            .iter()
            .zip(BASES)
            .map(|(name, base_lr)| ParamGroup {
                name: name.to_string(),
                base_lr,
                param_count: 1000,
                frozen: false,
                tower: name.to_string(),
                depth: None,
            })
            .collect(),
        losses: LOSSES.iter().map(|l| l.to_string()).collect(),
        augmentation: vec![
            AugmentationKnob { name: "crop_scale_min".into(), min: 0.08, max: 1.0, default: 1.0 },
            AugmentationKnob { name: "flip_prob".into(), min: 0.0, max: 1.0, default: 0.0 },
        ],
        metrics: vec!["val_loss".into(), "val_top1".into()],
        total_steps: TOTAL,
        steps_per_epoch: 100,
        seed: 1,
        args: args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

struct Harness {
    // The runtime drives the deadline clock; it must outlive the instance.
    _runtime: PolicyRuntime,
    policy: PolicyInstance,
    knobs: Knobs,
}

fn start(name: &str, args: &[(&str, &str)]) -> Harness {
    let runtime = PolicyRuntime::new(SandboxLimits::default(), None);
    let source = PolicySource { path: policy_path(name), args: vec![] };
    let mut policy = runtime.load(&source).unwrap();
    let knobs = policy.init(&spec(args)).unwrap();
    Harness { _runtime: runtime, policy, knobs }
}

fn observe(step: u64) -> Observation {
    Observation {
        step,
        epoch: step / 100,
        losses: vec![],
        total_loss: None,
        grad_norm: None,
        non_finite: NonFinite::empty(),
        lrs: BASES.to_vec(),
        lr_multipliers: vec![1.0; 4],
        loss_weights: vec![1.0; 3],
        frozen: vec![false; 4],
        images_per_second: None,
        logit_scale: None,
        evaluation: None,
        elapsed_seconds: 0.0,
        seconds_left: None,
        loss_gradients: None,
    }
}

impl Harness {
    fn decide(&mut self, observation: &Observation) -> Decision {
        self.policy.decide(observation).unwrap()
    }

    /// Each group's learning rate at every step of the run.
    fn lr_stream(&mut self) -> Vec<Vec<f64>> {
        (0..TOTAL)
            .map(|step| self.decide(&observe(step)).lrs.iter().map(|lr| lr.expect("every group set")).collect())
            .collect()
    }
}

/// Asserts that the schedule matches `reference(step, base)` for every group and step.
fn assert_lrs(name: &str, args: &[(&str, &str)], reference: impl Fn(u64, f64) -> f64) {
    let mut harness = start(name, args);
    assert_eq!(harness.knobs, Knobs::LEARNING_RATES);
    for (step, lrs) in harness.lr_stream().iter().enumerate() {
        for (group, (&lr, &base)) in lrs.iter().zip(&BASES).enumerate() {
            let expected = reference(step as u64, base);
            assert!(
                (lr - expected).abs() <= 1e-12 * base.max(expected.abs()),
                "{name} {args:?}: step {step}, group {group}: {lr} vs reference {expected}"
            );
        }
    }
}

fn half_cosine(progress: f64) -> f64 {
    (1.0 + (PI * progress).cos()) / 2.0
}

#[test]
fn constant_holds_the_rate() {
    assert_lrs("constant", &[], |_, base| base);
    assert_lrs("constant", &[("lr", "3e-4")], |_, _| 3e-4);
}

#[test]
fn cosine_warmup_matches_its_formula() {
    let reference = |warmup: u64, floor: f64| {
        move |step: u64, base: f64| {
            if step < warmup {
                base * (step + 1) as f64 / warmup as f64
            } else {
                let floor = floor.min(base);
                floor + (base - floor) * half_cosine(((step - warmup) as f64 / (TOTAL - warmup) as f64).min(1.0))
            }
        }
    };
    assert_lrs("cosine_warmup", &[], reference(50, 0.0));
    assert_lrs("cosine_warmup", &[("warmup_steps", "100"), ("min_lr", "6e-4")], reference(100, 6e-4));
}

#[test]
fn warmup_stable_decay_matches_its_formula() {
    for (shape, fall) in [
        ("linear", (|p: f64| 1.0 - p) as fn(f64) -> f64),
        ("cosine", half_cosine as fn(f64) -> f64),
        ("sqrt", (|p: f64| 1.0 - p.sqrt()) as fn(f64) -> f64),
    ] {
        assert_lrs(
            "warmup_stable_decay",
            &[("warmup_steps", "40"), ("decay_steps", "300"), ("min_lr", "1e-4"), ("shape", shape)],
            |step, base| {
                if step < 40 {
                    base * (step + 1) as f64 / 40.0
                } else if step < 700 {
                    base
                } else {
                    let floor = 1e-4f64.min(base);
                    floor + (base - floor) * fall((step - 700) as f64 / 300.0)
                }
            },
        );
    }
}

#[test]
fn step_decay_matches_step_and_multistep() {
    assert_lrs("step_decay", &[("step_size", "150"), ("gamma", "0.5")], |step, base| {
        base * 0.5f64.powi((step / 150) as i32)
    });
    assert_lrs("step_decay", &[("milestone", "300"), ("milestone", "800"), ("gamma", "0.1")], |step, base| {
        base * 0.1f64.powi((step >= 300) as i32 + (step >= 800) as i32)
    });
}

#[test]
fn one_cycle_matches_pytorch_one_cycle_lr() {
    // torch.optim.lr_scheduler.OneCycleLR(anneal_strategy="cos", three_phase=False).
    let anneal = |start: f64, end: f64, pct: f64| end + (start - end) / 2.0 * ((PI * pct).cos() + 1.0);
    assert_lrs(
        "one_cycle",
        &[("pct_start", "0.25"), ("div_factor", "10"), ("final_div_factor", "100")],
        |step, max_lr| {
            let initial = max_lr / 10.0;
            let min_lr = initial / 100.0;
            let end1 = 0.25 * TOTAL as f64 - 1.0;
            let end2 = TOTAL as f64 - 1.0;
            let step = step as f64;
            if step <= end1 {
                anneal(initial, max_lr, step / end1)
            } else {
                anneal(max_lr, min_lr, (step - end1) / (end2 - end1))
            }
        },
    );
}

#[test]
fn layerwise_sets_a_multiplier_per_group_and_refuses_its_old_schedule() {
    let mut harness = start("layerwise", &[("vision", "0.1"), ("text", "0.2")]);
    assert_eq!(harness.knobs, Knobs::LR_MULTIPLIERS);
    for step in [0, 1, 500, TOTAL - 1] {
        let decision = harness.decide(&observe(step));
        assert_eq!(decision.lr_multipliers, [Some(0.1), Some(0.2), Some(1.0), Some(1.0)], "step {step}");
        assert!(decision.lrs.is_empty());
    }
    let runtime = PolicyRuntime::new(SandboxLimits::default(), None);
    let mut policy = runtime.load(&PolicySource { path: policy_path("layerwise"), args: vec![] }).unwrap();
    let refused = policy.init(&spec(&[("vision", "0.1"), ("warmup_steps", "10")])).unwrap_err().to_string();
    assert!(refused.contains("`warmup_steps`") && refused.contains("--policy cosine_warmup"), "{refused}");
}

/// timm's `param_groups_layer_decay`: with `L = blocks + 1`, the embeddings are layer 0,
/// block `i` layer `i + 1`, the final norm layer `L`, and layer `l` is scaled by
/// `decay^(L - l)`; parts outside the towers keep the full rate.
#[test]
fn llrd_scales_each_layer_by_its_depth_as_timm_does() {
    let runtime = PolicyRuntime::new(SandboxLimits::default(), None);
    let source = PolicySource { path: policy_path("llrd"), args: vec![] };
    let mut policy = runtime.load(&source).unwrap();
    let spec = check_spec(TOTAL, vec![("decay".into(), "0.5".into()), ("text".into(), "0.9".into())], GroupBy::Layer);
    assert_eq!(policy.init(&spec).unwrap(), Knobs::LR_MULTIPLIERS);
    let decision = policy.decide(&observe(0)).unwrap();
    let names: Vec<&str> = spec.groups.iter().map(|g| g.name.as_str()).collect();
    let timm = |decay: f64, layer: i32| decay.powi(3 - layer);
    let expected = [
        ("vision.embeddings", timm(0.5, 0)),
        ("vision.0", timm(0.5, 1)),
        ("vision.1", timm(0.5, 2)),
        ("vision.post", timm(0.5, 3)),
        ("text.embeddings", timm(0.9, 0)),
        ("text.0", timm(0.9, 1)),
        ("text.1", timm(0.9, 2)),
        ("text.post", timm(0.9, 3)),
        ("projection", 1.0),
        ("logit_scale", 1.0),
    ];
    assert_eq!(names, expected.map(|(name, _)| name));
    for ((name, want), got) in expected.iter().zip(&decision.lr_multipliers) {
        assert!((got.unwrap() - want).abs() < 1e-15, "{name}: {got:?} vs {want}");
    }
    // Without depths there is nothing to decay: the run must group by layer.
    let mut policy = runtime.load(&source).unwrap();
    let refused = policy.init(&check_spec(TOTAL, vec![], GroupBy::Part)).unwrap_err().to_string();
    assert!(refused.contains("--group-by layer"), "{refused}");
}

#[test]
fn staged_unfreeze_freezes_first_then_ramps_and_never_refreezes() {
    let mut harness =
        start("staged_unfreeze", &[("unfreeze", "vision@200"), ("unfreeze", "text@500"), ("ramp_steps", "50")]);
    assert_eq!(harness.knobs, Knobs::LR_MULTIPLIERS | Knobs::FREEZING);
    let unfreeze_at = [Some(200u64), Some(500), None, None];
    let mut frozen = [false; 4];
    for step in 0..TOTAL {
        let decision = harness.decide(&observe(step));
        for (group, change) in decision.freeze.iter().enumerate() {
            if let Some(freeze) = change {
                assert!(
                    !(*freeze && unfreeze_at[group].is_some_and(|at| step >= at)),
                    "refroze group {group} at {step}"
                );
                frozen[group] = *freeze;
            }
        }
        for group in 0..4 {
            let (expected_frozen, expected) = match unfreeze_at[group] {
                Some(at) if step < at => (true, 0.0),
                Some(at) => (false, ((step - at + 1) as f64 / 50.0).min(1.0)),
                None => (false, 1.0),
            };
            assert_eq!(frozen[group], expected_frozen, "group {group} at step {step}");
            let multiplier = decision.lr_multipliers[group].unwrap();
            assert!((multiplier - expected).abs() <= 1e-15, "group {group} at step {step}: {multiplier} vs {expected}");
        }
    }
}

#[test]
fn aug_curriculum_ramps_up_then_switches_off() {
    let mut harness = start("aug_curriculum", &[("ramp_steps", "200"), ("off_at", "900"), ("flip_prob", "0.5")]);
    assert_eq!(harness.knobs, Knobs::AUGMENTATION);
    for step in 0..TOTAL {
        let values: Vec<f64> = harness.decide(&observe(step)).augmentation.iter().map(|v| v.unwrap()).collect();
        let strength = if step >= 900 { 0.0 } else { (step as f64 / 200.0).min(1.0) };
        let expected = [1.0 + strength * (0.08 - 1.0), strength * 0.5];
        for (value, expected) in values.iter().zip(expected) {
            assert!((value - expected).abs() <= 1e-15, "step {step}: {value} vs {expected}");
        }
    }
}

#[test]
fn grad_clip_sets_the_max_norm_from_its_start() {
    let mut harness = start("grad_clip", &[("max_norm", "0.5"), ("start", "100")]);
    assert_eq!(harness.knobs, Knobs::GRAD_CLIP);
    for step in 0..TOTAL {
        let decided = harness.decide(&observe(step)).grad_clip;
        let as_expected = match decided {
            Some(GradClip::Off) => step < 100,
            Some(GradClip::MaxNorm(norm)) => step >= 100 && norm == 0.5,
            None => false,
        };
        assert!(as_expected, "step {step}: {decided:?}");
    }
}

/// Raw losses of a stationary run whose three terms differ by 100x, with noise.
fn three_losses(step: u64) -> Vec<f64> {
    let wiggle = ((step * 7919) % 101) as f64 / 100.0 - 0.5;
    vec![200.0 * (1.0 + 0.1 * wiggle), 20.0 * (1.0 - 0.1 * wiggle), 0.5 * (1.0 + 0.05 * wiggle)]
}

#[test]
fn loss_balance_fixed_and_adaptive_match_their_formulas() {
    let mut fixed = start("loss_balance", &[("mode", "fixed"), ("tag", "1"), ("align", "10"), ("distill", "100")]);
    assert_eq!(fixed.knobs, Knobs::LOSS_WEIGHTS);
    let decision = fixed.decide(&observe(5));
    assert_eq!(decision.loss_weights, [Some(1.0), Some(10.0), Some(100.0)]);

    let mut adaptive = start("loss_balance", &[("beta", "0.9"), ("distill", "2")]);
    let mut averages = [0.0f64; 3];
    let base = [1.0, 1.0, 2.0];
    for step in 0..TOTAL {
        let losses = if step == 0 { vec![] } else { three_losses(step - 1) };
        let weights = adaptive.decide(&Observation { losses: losses.clone(), ..observe(step) }).loss_weights;
        for i in 0..3 {
            let expected = if step == 0 {
                base[i]
            } else {
                averages[i] = 0.9 * averages[i] + 0.1 * losses[i].abs();
                base[i] / (averages[i] / (1.0 - 0.9f64.powi(step as i32)))
            };
            let weight = weights[i].unwrap();
            assert!((weight - expected).abs() <= 1e-12 * expected, "step {step}, loss {i}: {weight} vs {expected}");
        }
        if step == TOTAL - 1 {
            // Stationary losses end at the same weighted magnitude (scaled by the base weight).
            let weighted: Vec<f64> = (0..3).map(|i| weights[i].unwrap() * losses[i] / base[i]).collect();
            assert!(weighted.iter().all(|w| (w - 1.0).abs() < 0.1), "weighted magnitudes {weighted:?}");
        }
    }
}

/// recognize-anything's RAM loss, `t2t + tag / (tag / t2t).detach() + distill`, with the
/// ratio of the step before: the weighted total `ram_balance` gives at each step of a stream
/// whose tag loss is 100 times its caption loss, and it follows finetune.py's within the
/// ratio's change over one step.
#[test]
fn ram_balance_rescales_the_tag_loss_to_the_caption_loss_of_the_step_before() {
    let runtime = PolicyRuntime::new(SandboxLimits::default(), None);
    let source = PolicySource { path: policy_path("ram_balance"), args: vec![] };
    let mut policy = runtime.load(&source).unwrap();
    let losses = vec!["tag".to_string(), "distill".to_string(), "t2t".to_string()];
    assert_eq!(policy.init(&RunSpec { losses: losses.clone(), ..spec(&[]) }).unwrap(), Knobs::LOSS_WEIGHTS);
    // Raw tag, distill and t2t of a stream; tag's ratio to t2t drifts.
    let raw = |step: u64| {
        let [tag, distill, _] = three_losses(step)[..] else { unreachable!() };
        [tag * (1.0 + step as f64 / 500.0), distill, tag / 100.0]
    };
    let mut previous_ratio = 1.0;
    for step in 0..200 {
        let observed = if step == 0 { vec![] } else { raw(step - 1).to_vec() };
        let weights = policy.decide(&Observation { losses: observed.clone(), ..observe(step) }).unwrap().loss_weights;
        if let [tag, _, t2t] = observed[..] {
            previous_ratio = t2t / tag;
        }
        assert_eq!(weights, [Some(previous_ratio), Some(1.0), Some(1.0)], "step {step}");
        let [tag, distill, t2t] = raw(step);
        let ours = weights[0].unwrap() * tag + distill + t2t;
        let finetune = t2t + tag / (tag / t2t) + distill;
        let drift = (weights[0].unwrap() * tag - t2t).abs();
        assert!((ours - finetune).abs() <= drift + 1e-12 * finetune, "step {step}: {ours} vs {finetune}");
        assert!(step == 0 || drift < 0.05 * t2t, "step {step}: one step's change of the ratio is small");
    }
    // A run without the named losses is refused by name.
    let mut policy = runtime.load(&source).unwrap();
    let refused = policy.init(&spec(&[])).unwrap_err().to_string();
    assert!(refused.contains("`caption`") && refused.contains("`t2t`"), "{refused}");
}

/// PyTorch's ReduceLROnPlateau (mode min, rel threshold), written out for one group.
struct PlateauReference {
    lr: f64,
    best: f64,
    bad: u64,
    cooldown_left: u64,
}

impl PlateauReference {
    fn step(&mut self, value: f64, factor: f64, patience: u64, threshold: f64, cooldown: u64, min_lr: f64) {
        if value < self.best * (1.0 - threshold) {
            self.best = value;
            self.bad = 0;
        } else {
            self.bad += 1;
        }
        if self.cooldown_left > 0 {
            self.cooldown_left -= 1;
            self.bad = 0;
        }
        if self.bad > patience {
            self.lr = (self.lr * factor).max(min_lr);
            self.cooldown_left = cooldown;
            self.bad = 0;
        }
    }
}

/// A validation loss that improves, plateaus, improves a little, then plateaus for good.
fn plateau_curve(evaluation: u64) -> f64 {
    match evaluation {
        0..20 => 2.0 - 0.05 * evaluation as f64,
        20..45 => 1.0 + 0.0001 * (evaluation % 3) as f64,
        45..60 => 0.9 - 0.01 * (evaluation - 45) as f64,
        _ => 0.75,
    }
}

#[test]
fn reduce_on_plateau_matches_pytorch_on_evaluations() {
    let args = [("metric", "val_loss"), ("factor", "0.5"), ("patience", "4"), ("cooldown", "2"), ("min_lr", "1e-4")];
    let mut harness = start("reduce_on_plateau", &args);
    let mut references: Vec<PlateauReference> =
        BASES.iter().map(|&lr| PlateauReference { lr, best: f64::INFINITY, bad: 0, cooldown_left: 0 }).collect();
    let mut evaluations = 0;
    for step in 0..TOTAL {
        let mut observation = observe(step);
        if step > 0 && step % 10 == 0 {
            let value = plateau_curve(evaluations);
            evaluations += 1;
            observation.evaluation = Some(Evaluation { step, values: vec![value, 0.0] });
            for reference in &mut references {
                reference.step(value, 0.5, 4, 1e-4, 2, 1e-4);
            }
        }
        let lrs = harness.decide(&observation).lrs;
        for (lr, reference) in lrs.iter().zip(&references) {
            assert_eq!(lr.unwrap(), reference.lr, "step {step}");
        }
    }
    assert!(references[0].lr < BASES[0] / 4.0, "the plateaus cut the rate more than once");
}

#[test]
fn reduce_on_plateau_averages_the_training_loss_over_windows() {
    let mut harness = start("reduce_on_plateau", &[("window", "20"), ("patience", "2"), ("factor", "0.1")]);
    let mut reference = PlateauReference { lr: BASES[0], best: f64::INFINITY, bad: 0, cooldown_left: 0 };
    let (mut sum, mut count) = (0.0, 0);
    for step in 0..TOTAL {
        let loss = if step == 0 { None } else { Some(plateau_curve((step - 1) / 20)) };
        if let Some(loss) = loss {
            sum += loss;
            count += 1;
            if count == 20 {
                reference.step(sum / 20.0, 0.1, 2, 1e-4, 0, 0.0);
                (sum, count) = (0.0, 0);
            }
        }
        let lrs = harness.decide(&Observation { total_loss: loss, ..observe(step) }).lrs;
        assert!((lrs[0].unwrap() - reference.lr).abs() <= 1e-18, "step {step}: {:?} vs {}", lrs[0], reference.lr);
    }
}

/// Feeds `early_stopping` an evaluation every 10 steps, both metrics following `curve`, and
/// returns the step whose decision asked to stop.
fn stop_step(args: &[(&str, &str)], curve: impl Fn(u64) -> f64) -> Option<u64> {
    let mut harness = start("early_stopping", args);
    assert_eq!(harness.knobs, Knobs::empty());
    (0..TOTAL).find(|&step| {
        let mut observation = Observation { total_loss: (step > 0).then_some(1.0), ..observe(step) };
        if step > 0 && step % 10 == 0 {
            let value = curve(step / 10 - 1);
            observation.evaluation = Some(Evaluation { step, values: vec![value, value] });
        }
        harness.decide(&observation).stop.is_some()
    })
}

#[test]
fn early_stopping_stops_exactly_when_patience_runs_out() {
    // Evaluations 0..20 improve; from the 20th on, nothing improves. The 20th evaluation is
    // seen by the decision of step 210, so patience 3 runs out at the 22nd: step 230.
    let curve = |evaluation: u64| if evaluation < 20 { 2.0 - 0.05 * evaluation as f64 } else { 1.5 };
    assert_eq!(stop_step(&[("metric", "val_loss"), ("patience", "3")], curve), Some(230));
    assert_eq!(stop_step(&[("metric", "val_loss"), ("patience", "1")], curve), Some(210));
    // Counted in steps: the best was at step 200; 50 steps later is the evaluation at 250.
    assert_eq!(stop_step(&[("metric", "val_loss"), ("patience", "50"), ("unit", "steps")], curve), Some(250));
    // min_delta: improvements of 0.05 do not count when 0.1 is required.
    assert_eq!(stop_step(&[("metric", "val_loss"), ("patience", "2"), ("min_delta", "0.1")], curve), Some(30));
    // An accuracy is maximised by default: a rising curve never stops it, unless told to minimise.
    let rising = |evaluation: u64| 0.01 * evaluation as f64;
    assert_eq!(stop_step(&[("metric", "val_top1"), ("patience", "2")], rising), None);
    assert_eq!(stop_step(&[("metric", "val_top1"), ("patience", "2"), ("mode", "min")], rising), Some(30));
}

#[test]
fn early_stopping_never_stops_before_its_delay() {
    let flat = |_| 1.0;
    for start_step in [0u64, 100, 455, 999] {
        let start_text = start_step.to_string();
        let stopped = stop_step(&[("metric", "val_loss"), ("patience", "2"), ("start", &start_text)], flat);
        match stopped {
            Some(step) => {
                assert!(step >= start_step, "stopped at {step} before the delay {start_step}");
                // The first evaluation at or after the delay sets the best; two more run out.
                assert_eq!(step, start_step.div_ceil(10).max(1) * 10 + 20);
            }
            None => assert!(start_step.div_ceil(10).max(1) * 10 + 20 >= TOTAL),
        }
    }
}

#[test]
fn early_stopping_stops_on_non_finite_and_diverging_loss() {
    let mut harness = start("early_stopping", &[("metric", "val_loss")]);
    assert!(harness.decide(&Observation { total_loss: Some(1.0), ..observe(1) }).stop.is_none());
    let nan = Observation { total_loss: Some(f64::NAN), non_finite: NonFinite::LOSS, ..observe(2) };
    assert!(harness.decide(&nan).stop.unwrap().contains("non-finite"));

    let mut harness = start("early_stopping", &[("metric", "val_loss"), ("diverge_factor", "5")]);
    assert!(harness.decide(&Observation { total_loss: Some(2.0), ..observe(1) }).stop.is_none());
    assert!(harness.decide(&Observation { total_loss: Some(9.0), ..observe(2) }).stop.is_none());
    assert!(harness.decide(&Observation { total_loss: Some(10.5), ..observe(3) }).stop.unwrap().contains("diverged"));
}

#[test]
fn stateful_policies_resume_mid_stream_with_identical_decisions() {
    let cases: [(&str, &[(&str, &str)]); 3] = [
        ("reduce_on_plateau", &[("window", "7"), ("patience", "1")]),
        ("loss_balance", &[]),
        ("early_stopping", &[("metric", "val_loss"), ("patience", "30")]),
    ];
    let stream = |step: u64| Observation {
        losses: if step == 0 { vec![] } else { three_losses(step) },
        total_loss: (step > 0).then(|| plateau_curve(step / 13)),
        evaluation: (step.is_multiple_of(10) && step > 0)
            .then(|| Evaluation { step, values: vec![plateau_curve(step / 10), 0.0] }),
        ..observe(step)
    };
    for (name, args) in cases {
        let mut whole = start(name, args);
        let expected: Vec<String> = (0..TOTAL).map(|step| format!("{:?}", whole.decide(&stream(step)))).collect();
        for cut in [1, 333, 999] {
            let mut first = start(name, args);
            for step in 0..cut {
                first.decide(&stream(step));
            }
            let state = first.policy.save_state("test").unwrap();
            let mut second = start(name, args);
            second.policy.load_state(&state).unwrap();
            for step in cut..TOTAL {
                assert_eq!(
                    format!("{:?}", second.decide(&stream(step))),
                    expected[step as usize],
                    "{name}: cut {cut}, step {step}"
                );
            }
        }
    }
}

#[test]
fn compiled_components_are_cached_and_a_damaged_entry_is_rebuilt() {
    let cache = tempfile::tempdir().unwrap();
    let source = PolicySource { path: policy_path("cosine_warmup"), args: vec![] };
    let cached_files =
        || -> Vec<PathBuf> { std::fs::read_dir(cache.path()).unwrap().map(|entry| entry.unwrap().path()).collect() };
    let load = || {
        let runtime = PolicyRuntime::new(SandboxLimits::default(), Some(cache.path().to_path_buf()));
        let mut policy = runtime.load(&source).unwrap();
        policy.init(&spec(&[])).unwrap();
        policy.decide(&observe(7)).unwrap().lrs
    };
    let expected = load();
    let files = cached_files();
    assert_eq!(files.len(), 1, "one compiled component: {files:?}");
    assert_eq!(files[0].extension().unwrap(), "cwasm");
    let compiled = std::fs::read(&files[0]).unwrap();

    assert_eq!(load(), expected, "the cached component decides the same");
    std::fs::write(&files[0], b"not a compiled component").unwrap();
    assert_eq!(load(), expected, "a damaged entry is compiled again");
    assert_eq!(std::fs::read(&files[0]).unwrap().len(), compiled.len(), "and rewritten");
}
