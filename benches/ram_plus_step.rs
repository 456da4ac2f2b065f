//! One RAM++ (and RAM) training step against PyTorch: the same architecture (the `RamPlusConfig`
//! written here is built on the other side by the reference of the parity tests, timm's
//! Swin and transformers' BERT modules assembled as recognize-anything assembles them), the
//! same batch and thread count; image embeddings, the three loss terms (`tag`, `distill`,
//! `align`), backward and AdamW, with `label_embed` frozen as RAM++ fine-tunes it. Dropout and
//! stochastic depth are off on both sides (the trainer has neither yet). The sides alternate
//! over rounds; prints the median steps per minute of each and their ratio.
//!
//! Run with `cargo bench --workspace --bench ram_plus_step` (after `make test-setup`);
//! `TRAINER_BENCH_ROUNDS` sets the rounds (default 3), and a word after `--` picks the cases
//! whose name holds it (`-- 4585` is the released model's tag count, the slow one on a CPU).

mod ram_plus_training;
mod reference;

use ram_plus_training::ram_plus_training;
use reference::{Ratios, median};
use std::time::Instant;
use trainer::models::bert::{BertConfig, BertTextConfig};
use trainer::models::ram_plus::{RamPlusConfig, TagQueries};
use trainer::models::swin::SwinConfig;

struct Case {
    name: &'static str,
    config: RamPlusConfig,
    batch: i64,
    steps: usize,
}

fn cases() -> Vec<Case> {
    let swin_b = |tags| RamPlusConfig {
        vision: SwinConfig::base(224),
        head: BertConfig::query2label(),
        tags,
        descriptions: 51,
        reweighted: true,
        queries: TagQueries::ClipText,
        text: None,
    };
    // RAM: one label embedding per tag, and the caption branch (BERT-base encoder and decoder).
    let ram =
        RamPlusConfig { descriptions: 1, reweighted: false, text: Some(BertTextConfig::med_config()), ..swin_b(256) };
    vec![
        Case { name: "Swin-B 224, 256 tags x 51 descriptions", config: swin_b(256), batch: 8, steps: 2 },
        Case { name: "Swin-B 224, 4585 tags x 51 descriptions", config: swin_b(4585), batch: 8, steps: 1 },
        Case { name: "RAM Swin-B 224, 256 tags, caption branch", config: ram, batch: 8, steps: 2 },
    ]
}

fn rust_seconds_per_step(case: &Case) -> f64 {
    let mut step = ram_plus_training(&case.config, case.batch, false);
    step();
    let times: Vec<f64> = (0..case.steps)
        .map(|_| {
            let started = Instant::now();
            step();
            started.elapsed().as_secs_f64()
        })
        .collect();
    median(&times)
}

fn pytorch_seconds_per_step(case: &Case, threads: i32) -> Result<f64, String> {
    let args = [case.batch.to_string(), case.steps.to_string(), threads.to_string()];
    let reply = reference::run_reference("pytorch_ram_plus_step.py", &case.config, &args)?;
    reply["seconds_per_step"].as_f64().ok_or_else(|| "no seconds_per_step in the reply".into())
}

fn main() {
    let rounds: usize = std::env::var("TRAINER_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let words: Vec<String> = std::env::args().skip(1).filter(|arg| !arg.starts_with("--")).collect();
    let threads = tch::get_num_threads();
    println!(
        "CPU, {threads} threads, {rounds} alternating rounds; PyTorch eager (timm + transformers) vs this trainer"
    );
    for case in cases().into_iter().filter(|case| words.is_empty() || words.iter().any(|w| case.name.contains(w))) {
        let (mut ratios, mut ours) = (Ratios::default(), Vec::new());
        for _ in 0..rounds {
            let our_seconds = rust_seconds_per_step(&case);
            ours.push(our_seconds);
            match pytorch_seconds_per_step(&case, threads) {
                Ok(their_seconds) => ratios.push(60.0 / our_seconds, 60.0 / their_seconds),
                Err(err) => println!("{}: PyTorch side failed: {err}", case.name),
            }
        }
        if ratios.is_empty() {
            println!("{}: batch {}: trainer {:.3} s/step", case.name, case.batch, median(&ours));
            continue;
        }
        println!("{}: batch {}: {}", case.name, case.batch, ratios.summary("steps/min"));
    }
}
