//! In-process micro-benchmarks under criterion: what a policy costs per call in each
//! language against the same logic as native Rust, a whole policy step (decide, validate,
//! apply) beside a demo training step, the AdamW step over flat buffers, and decoding an
//! image into model input.
//!
//! Run with `cargo bench --workspace --bench micro` (after `make policies-all`); criterion's
//! filters select groups, e.g. `cargo bench --workspace --bench micro -- policy_decide`.

mod clip_training;

use clip_training::clip_and_adamw;
use criterion::{Criterion, criterion_group, criterion_main};
use std::f64::consts::PI;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};
use trainer::check::{StreamSpec, check_spec};
use trainer::data::images::{SquareResize, load_rgb_padded, load_rgb_square};
use trainer::engine::KnobState;
use trainer::models::clip::ClipConfig;
use trainer::models::groups::GroupBy;
use trainer::policy::{Decision, Observation, PolicyRuntime, PolicySet, PolicySource, RunSpec, SandboxLimits};

const LANGUAGES: [(&str, &str); 4] = [
    ("Rust", "cosine_warmup"),
    ("Python", "python_cosine_warmup"),
    ("JavaScript", "js_cosine_warmup"),
    ("C", "c_cosine_warmup"),
];
const TOTAL_STEPS: u64 = 1_000_000;

fn component(file: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/policies").join(format!("{file}.wasm"));
    assert!(path.exists(), "{} is missing: run `make policies-all` first", path.display());
    path
}

/// A smooth loss curve: the observations every policy is shown, one per step.
fn observations(spec: &RunSpec) -> Vec<Observation> {
    let stream = StreamSpec {
        len: TOTAL_STEPS,
        save_at: 0,
        start_loss: 5.0,
        decay: 1e-4,
        plateau_from: None,
        spikes: vec![],
        non_finite: vec![],
        evaluations: vec![],
    };
    (0..10_000).map(|step| stream.observation(step, spec)).collect()
}

/// `cosine_warmup`'s decision as plain Rust, building the same `Decision`: the baseline of
/// the sandbox's and the language runtimes' overhead.
fn native_decide(observation: &Observation, base_lrs: &[f64], warmup: u64) -> Decision {
    let step = observation.step;
    let lr = |base: f64| {
        if step < warmup {
            return (step + 1) as f64 / warmup as f64 * base;
        }
        let progress = ((step - warmup) as f64 / (TOTAL_STEPS - warmup).max(1) as f64).min(1.0);
        base * (0.5 * (1.0 + (PI * progress).cos()))
    };
    Decision { lrs: base_lrs.iter().map(|&base| Some(lr(base))).collect(), ..Decision::keep() }
}

fn policy_decide(c: &mut Criterion) {
    let spec = check_spec(TOTAL_STEPS, vec![], GroupBy::Part);
    let observations = observations(&spec);
    let mut group = c.benchmark_group("policy_decide");
    let base_lrs: Vec<f64> = spec.groups.iter().map(|group| group.base_lr).collect();
    let mut step = 0;
    group.bench_function("native Rust", |b| {
        b.iter(|| {
            step = (step + 1) % observations.len();
            black_box(native_decide(&observations[step], &base_lrs, TOTAL_STEPS / 20))
        })
    });
    let runtime = PolicyRuntime::new(SandboxLimits::default(), None);
    for (language, file) in LANGUAGES {
        let prepared =
            runtime.prepare(&PolicySource { path: component(file), args: vec![] }).expect("the policy compiles");
        let mut instance = runtime.instantiate(&prepared).expect("the policy instantiates");
        instance.init(&spec).expect("the policy accepts the spec");
        // Millions of calls: the JavaScript component, whose heap grows with each, is
        // started again from its state every 18,000 calls or so, a cost its time includes.
        group.bench_function(language, |b| {
            b.iter(|| {
                step = (step + 1) % observations.len();
                black_box(instance.decide(&observations[step]).expect("the policy decides"))
            })
        });
    }
    group.finish();
}

/// What steering costs per step, and what a step costs: `cosine_warmup`'s decide, validate
/// and apply through the engine's policy set, and a CLIP training step at the demo size
/// (batch 256) with its loss and gradient norm read back, as the engine reads them.
fn policy_and_training_step(c: &mut Criterion) {
    let spec = check_spec(TOTAL_STEPS, vec![], GroupBy::Part);
    let observations = observations(&spec);
    let runtime = PolicyRuntime::new(SandboxLimits::default(), None);
    let source = PolicySource { path: component("cosine_warmup"), args: vec![] };
    let mut policies = PolicySet::start(&runtime, &[source], &[], spec.clone()).expect("the policy starts");
    let mut knobs = KnobState::new(
        spec.groups.iter().map(|group| group.base_lr).collect(),
        vec![1.0; spec.losses.len()],
        spec.augmentation.iter().map(|knob| knob.default).collect(),
        1,
    );
    let mut step = 0;
    c.bench_function("policy_step/cosine_warmup", |b| {
        b.iter(|| {
            step = (step + 1) % observations.len();
            let decision = policies.decide(&observations[step]).expect("the policy decides");
            black_box(knobs.apply(&decision));
        })
    });

    let (mut model, mut optimizer) = clip_and_adamw(&ClipConfig::tiny(43, 12, 1, 2, 0));
    let batch = 256;
    let pixels = Tensor::randn([batch, 3, 28, 28], (Kind::Float, Device::Cpu));
    let ids = Tensor::randint_low(3, 43, [batch, 12], (Kind::Int64, Device::Cpu));
    let _ = ids.narrow(1, 11, 1).fill_(2);
    let mut group = c.benchmark_group("training_step");
    group.sample_size(10);
    group.bench_function("clip demo size, batch 256", |b| {
        b.iter(|| {
            let loss = model.contrastive_loss(&pixels, &ids);
            optimizer.zero_grad();
            loss.backward();
            let norm = optimizer.grad_norm();
            optimizer.step(&[2e-3; 4], &[false; 4]);
            model.clamp_logit_scale();
            black_box(Tensor::stack(&[loss.detach(), norm], 0).to_kind(Kind::Double).double_value(&[0]))
        })
    });
    group.finish();
}

/// One AdamW update (with the gradient norm the engine reads every step), gradients in
/// place, at the demo size and at ViT-B/32's (151M parameters).
fn optimizer_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("optimizer_step");
    group.sample_size(10);
    for (name, config) in [("demo size", ClipConfig::tiny(43, 12, 1, 2, 0)), ("ViT-B/32 size", ClipConfig::default())] {
        let (_model, mut optimizer) = clip_and_adamw(&config);
        for mut grad in (0..4).flat_map(|group| optimizer.group_grads(group)) {
            let _ = grad.normal_(0.0, 1e-3);
        }
        group.bench_function(name, |b| {
            b.iter(|| {
                black_box(optimizer.grad_norm().double_value(&[]));
                optimizer.step(&[1e-5; 4], &[false; 4]);
            })
        });
    }
    group.finish();
}

/// A COCO-sized JPEG (640x480) decoded and made model input: centre-cropped and resized to
/// 224 for CLIP, padded and resized to 768 for OWL-ViT.
fn image_decode(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("photo.jpg");
    let picture = image::RgbImage::from_fn(640, 480, |x, y| {
        let wave = |v: u32, period: f32| (128.0 + 100.0 * (v as f32 / period).sin()) as u8;
        image::Rgb([wave(x, 37.0), wave(y, 23.0), wave(x + y, 51.0) ^ ((x * 31 + y * 17) % 13) as u8])
    });
    picture.save(&path).expect("the JPEG is written");
    let mut group = c.benchmark_group("image_decode");
    group.bench_function("640x480 JPEG to 224 square", |b| {
        b.iter(|| black_box(load_rgb_square(&path, &SquareResize::clip(224))))
    });
    group.bench_function("640x480 JPEG to 768 padded", |b| b.iter(|| black_box(load_rgb_padded(&path, 768))));
    group.finish();
}

criterion_group!(benches, policy_decide, policy_and_training_step, optimizer_step, image_decode);
criterion_main!(benches);
