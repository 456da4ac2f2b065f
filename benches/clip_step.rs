//! CLIP training throughput against PyTorch: the same architecture (the config.json written
//! here is read by `transformers` on the other side), the same batch, AdamW and thread count;
//! forward with the contrastive loss, backward, optimizer step. The two sides alternate over
//! rounds, each round a fresh model, two warm-up steps and timed steps; prints the median
//! images/s of each, the median ratio with its spread, and where a step's time goes on each
//! side, at the demo size and at a ViT-B/32-sized configuration.
//!
//! Run with `cargo bench --workspace --bench clip_step` (after `make` has installed the venv);
//! `TRAINER_BENCH_ROUNDS` sets the number of rounds (default 5), and a word after `--` picks
//! the cases whose name holds it (`-- demo`, `-- ViT`).

mod clip_training;
mod reference;

use clip_training::clip_and_adamw;
use reference::{Ratios, median};
use std::time::Instant;
use tch::{Device, Kind, Tensor};
use trainer::models::clip::ClipConfig;

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
        Case { name: "demo size (ViT 28px/7, 3x64; text 2x64)", config: demo, batch: 256, context: 12, steps: 50 },
        Case {
            name: "ViT-B/32 size (224px/32, 12x768; text 12x512)",
            config: vit_b32,
            batch: 16,
            context: 77,
            steps: 3,
        },
    ]
}

/// Seconds per step spent in each phase, and images per second over the timed steps.
#[derive(Debug, Default, Clone, Copy)]
struct StepTimes {
    forward: f64,
    backward: f64,
    optimizer: f64,
    images_per_second: f64,
}

fn rust_round(case: &Case) -> StepTimes {
    let (mut model, mut optimizer) = clip_and_adamw(&case.config);
    let size = case.config.vision_config.image_size;
    let text = &case.config.text_config;
    let pixels = Tensor::randn([case.batch, 3, size, size], (Kind::Float, Device::Cpu));
    let ids = Tensor::randint_low(1, text.vocab_size - 1, [case.batch, case.context], (Kind::Int64, Device::Cpu));
    let _ = ids.narrow(1, case.context - 1, 1).fill_(text.eos_token_id);
    let mut step = |times: &mut StepTimes| {
        let started = Instant::now();
        let loss = model.contrastive_loss(&pixels, &ids);
        let forward = Instant::now();
        optimizer.zero_grad();
        loss.backward();
        let backward = Instant::now();
        optimizer.step(&[1e-3; 4], &[false; 4]);
        model.clamp_logit_scale();
        loss.double_value(&[]);
        let done = Instant::now();
        times.forward += (forward - started).as_secs_f64();
        times.backward += (backward - forward).as_secs_f64();
        times.optimizer += (done - backward).as_secs_f64();
    };
    let mut warm_up = StepTimes::default();
    for _ in 0..2 {
        step(&mut warm_up);
    }
    let mut times = StepTimes::default();
    let started = Instant::now();
    for _ in 0..case.steps {
        step(&mut times);
    }
    let steps = case.steps as f64;
    StepTimes {
        forward: times.forward / steps,
        backward: times.backward / steps,
        optimizer: times.optimizer / steps,
        images_per_second: case.batch as f64 * steps / started.elapsed().as_secs_f64(),
    }
}

fn pytorch_round(case: &Case, threads: i32) -> Result<StepTimes, String> {
    let reply = reference::run_reference(
        "pytorch_clip_step.py",
        &case.config,
        &[case.batch.to_string(), case.context.to_string(), case.steps.to_string(), threads.to_string()],
    )?;
    let field = |name: &str| reply[name].as_f64().ok_or_else(|| format!("no {name} in the reply {reply}"));
    Ok(StepTimes {
        forward: field("forward")?,
        backward: field("backward")?,
        optimizer: field("optimizer")?,
        images_per_second: field("images_per_second")?,
    })
}

/// `forward a ms, backward b ms, optimizer c ms`: the medians over the rounds.
fn phases(rounds: &[StepTimes]) -> String {
    let ms = |phase: fn(&StepTimes) -> f64| 1e3 * median(&rounds.iter().map(phase).collect::<Vec<_>>());
    format!(
        "forward {:.1} ms, backward {:.1} ms, optimizer {:.1} ms",
        ms(|t| t.forward),
        ms(|t| t.backward),
        ms(|t| t.optimizer)
    )
}

fn main() {
    let threads = tch::get_num_threads();
    let rounds: usize = std::env::var("TRAINER_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    println!(
        "CPU, {threads} threads, {rounds} alternating rounds; PyTorch eager via transformers.CLIPModel vs this trainer"
    );
    let words: Vec<String> = std::env::args().skip(1).filter(|arg| !arg.starts_with("--")).collect();
    let chosen = |case: &Case| words.is_empty() || words.iter().any(|word| case.name.contains(word.as_str()));
    for case in cases().into_iter().filter(chosen) {
        let (mut ratios, mut ours, mut theirs) = (Ratios::default(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let our_round = rust_round(&case);
            ours.push(our_round);
            match pytorch_round(&case, threads) {
                Ok(their_round) => {
                    ratios.push(our_round.images_per_second, their_round.images_per_second);
                    theirs.push(their_round);
                }
                Err(err) => println!("{}: PyTorch side failed: {err}", case.name),
            }
        }
        println!("{}, batch {}:", case.name, case.batch);
        if !ratios.is_empty() {
            println!("  {}", ratios.summary("img/s"));
            println!("  PyTorch per step: {}", phases(&theirs));
        }
        println!("  trainer per step: {}", phases(&ours));
    }
}
