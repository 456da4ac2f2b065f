//! What steering by a policy costs per step: `cosine_warmup`'s decide + validate + apply,
//! in µs and as a share of a demo training step (CLIP at the demo size, batch 256, CPU),
//! both measured in this process.
//!
//! Run with `cargo bench -p trainer --bench policy_step` (after `make policies`).

use std::path::Path;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor, nn};
use trainer::data::fashion_mnist::CLASS_NAMES;
use trainer::data::prompts::{CaptionTable, END_ID, PAD_ID, START_ID};
use trainer::engine::KnobState;
use trainer::engine::optimizer::{AdamW, AdamWConfig, OptimizedParam};
use trainer::models::clip::{Clip, ClipConfig, PARAMETER_GROUPS, parameter_group};
use trainer::policy::{
    AugmentationKnob, NonFinite, Observation, ParamGroup, PolicyRuntime, PolicySet, PolicySource, RunSpec,
    SandboxLimits,
};

/// Median time per call of `body`, over `rounds` rounds of `calls` calls.
fn median_per_call(rounds: usize, calls: usize, mut body: impl FnMut()) -> Duration {
    let mut per_call: Vec<Duration> = (0..rounds)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..calls {
                body();
            }
            started.elapsed() / calls as u32
        })
        .collect();
    per_call.sort();
    per_call[rounds / 2]
}

fn policy_step() -> Duration {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/policies/cosine_warmup.wasm");
    assert!(path.exists(), "{} is missing: run `make policies` first", path.display());
    let spec = RunSpec {
        groups: PARAMETER_GROUPS
            .iter()
            .map(|name| ParamGroup { name: name.to_string(), base_lr: 2e-3, param_count: 1000, frozen: false })
            .collect(),
        losses: vec!["contrastive".into()],
        augmentation: vec![AugmentationKnob { name: "flip_prob".into(), min: 0.0, max: 1.0, default: 0.0 }],
        metrics: vec!["val_loss".into()],
        total_steps: 1_000_000,
        steps_per_epoch: 214,
        seed: 0,
        args: vec![],
    };
    let runtime = PolicyRuntime::new(SandboxLimits::default(), None);
    let mut policies = PolicySet::start(&runtime, &[PolicySource { path, args: vec![] }], spec).unwrap();
    let mut knobs = KnobState {
        lrs: vec![2e-3; 4],
        loss_weights: vec![1.0],
        augmentation: vec![0.0],
        grad_clip: None,
        frozen: vec![false; 4],
    };
    let mut step = 0u64;
    median_per_call(15, 20_000, || {
        let observation = Observation {
            step,
            epoch: step / 214,
            losses: vec![3.5],
            total_loss: Some(3.5),
            grad_norm: Some(1.2),
            non_finite: NonFinite::empty(),
            lrs: knobs.lrs.clone(),
            loss_weights: knobs.loss_weights.clone(),
            frozen: knobs.frozen.clone(),
            images_per_second: Some(2500.0),
            logit_scale: Some(14.3),
            evaluation: None,
        };
        let decision = policies.decide(&observation).unwrap();
        knobs.apply(&decision.merged);
        step += 1;
    })
}

fn demo_step() -> Duration {
    tch::manual_seed(0);
    let captions = CaptionTable::new(&CLASS_NAMES);
    let config = ClipConfig::tiny(captions.vocab_size, captions.context_length(), START_ID, END_ID, PAD_ID);
    let var_store = nn::VarStore::new(Device::Cpu);
    let mut model = Clip::new(&var_store.root(), &config);
    let params = var_store
        .variables()
        .into_iter()
        .map(|(name, tensor)| OptimizedParam { group: parameter_group(&name), decay: tensor.dim() >= 2, name, tensor })
        .collect();
    let mut optimizer = AdamW::new(params, AdamWConfig::default());
    let batch = 256;
    let pixels = Tensor::randn([batch, 3, 28, 28], (Kind::Float, Device::Cpu));
    let labels = Tensor::randint(10, [batch], (Kind::Int64, Device::Cpu));
    let templates = Tensor::randint(8, [batch], (Kind::Int64, Device::Cpu));
    let input_ids = captions.ids.index(&[Some(labels), Some(templates)]);
    median_per_call(5, 4, || {
        let loss = model.contrastive_loss(&pixels, &input_ids);
        optimizer.zero_grad();
        loss.backward();
        let norm = optimizer.grad_norm();
        optimizer.step(&[2e-3; 4], &[false; 4]);
        model.clamp_logit_scale();
        let _ = Tensor::stack(&[loss.detach(), norm], 0).to_kind(Kind::Double).double_value(&[0]);
    })
}

fn main() {
    let policy = policy_step();
    let step = demo_step();
    println!("policy step, cosine_warmup (decide + validate + apply): {:.2} µs", policy.as_secs_f64() * 1e6);
    println!("demo training step (CLIP demo size, batch 256, CPU):     {:.1} ms", step.as_secs_f64() * 1e3);
    println!(
        "policy share of a demo step:                             {:.4}%",
        100.0 * policy.as_secs_f64() / step.as_secs_f64()
    );
}
