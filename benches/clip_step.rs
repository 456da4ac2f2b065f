//! CLIP training throughput against PyTorch: the same architecture (the config.json written
//! here is read by `transformers` on the other side), the same batch, AdamW and thread count;
//! forward, contrastive loss, backward, optimizer step. Prints images/s of each and the ratio,
//! at the demo size and at a ViT-B/32-sized configuration.
//!
//! Run with `cargo bench -p trainer --bench clip_step` (after `make` has installed the venv).

mod reference;

use std::time::Instant;
use tch::{Device, Kind, Tensor, nn};
use trainer::engine::optimizer::{AdamW, AdamWConfig, OptimizedParam};
use trainer::models::clip::{Clip, ClipConfig, parameter_group};

struct Case {
    name: &'static str,
    config: ClipConfig,
    batch: i64,
    context: i64,
    steps: usize,
}

fn cases() -> Vec<Case> {
    let demo = ClipConfig::tiny(43, 12, 1, 2, 0);
    let vit_b32 = ClipConfig::default();
    vec![
        Case { name: "demo size (ViT 28px/7, 3x64; text 2x64)", config: demo, batch: 256, context: 12, steps: 20 },
        Case {
            name: "ViT-B/32 size (224px/32, 12x768; text 12x512)",
            config: vit_b32,
            batch: 16,
            context: 77,
            steps: 3,
        },
    ]
}

fn rust_images_per_second(case: &Case) -> f64 {
    tch::manual_seed(0);
    let store = nn::VarStore::new(Device::Cpu);
    let mut model = Clip::new(&store.root(), &case.config);
    let params = store
        .variables()
        .into_iter()
        .map(|(name, tensor)| {
            let decay = tensor.dim() >= 2 && name != "logit_scale";
            OptimizedParam { group: parameter_group(&name), decay, name, tensor }
        })
        .collect();
    let mut optimizer = AdamW::new(params, AdamWConfig { weight_decay: 0.1, ..Default::default() });
    let size = case.config.vision_config.image_size;
    let text = &case.config.text_config;
    let pixels = Tensor::randn([case.batch, 3, size, size], (Kind::Float, Device::Cpu));
    let ids = Tensor::randint_low(1, text.vocab_size - 1, [case.batch, case.context], (Kind::Int64, Device::Cpu));
    let _ = ids.narrow(1, case.context - 1, 1).fill_(text.eos_token_id);
    let mut step = || {
        let loss = model.contrastive_loss(&pixels, &ids);
        optimizer.zero_grad();
        loss.backward();
        optimizer.step(&[1e-3; 4], &[false; 4]);
        model.clamp_logit_scale();
        loss.double_value(&[])
    };
    for _ in 0..2 {
        step();
    }
    let started = Instant::now();
    for _ in 0..case.steps {
        step();
    }
    (case.batch as usize * case.steps) as f64 / started.elapsed().as_secs_f64()
}

fn pytorch_images_per_second(case: &Case, threads: i32) -> Result<f64, String> {
    let reply = reference::run_reference(
        "pytorch_clip_step.py",
        &case.config,
        &[case.batch.to_string(), case.context.to_string(), case.steps.to_string(), threads.to_string()],
    )?;
    reply["images_per_second"].as_f64().ok_or_else(|| "no images_per_second in the reply".into())
}

fn main() {
    let threads = tch::get_num_threads();
    println!("CPU, {threads} threads, PyTorch eager via transformers.CLIPModel vs this trainer");
    for case in cases() {
        let ours = rust_images_per_second(&case);
        match pytorch_images_per_second(&case, threads) {
            Ok(theirs) => println!(
                "{}: batch {}: trainer {ours:.1} img/s, PyTorch {theirs:.1} img/s, ratio {:.2}x",
                case.name,
                case.batch,
                ours / theirs
            ),
            Err(err) => println!("{}: trainer {ours:.1} img/s; PyTorch side failed: {err}", case.name),
        }
    }
}
