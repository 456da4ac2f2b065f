//! Peak memory of a CLIP training step at ViT-B/32 size on the CPU, with and without
//! activation checkpointing (`--grad-checkpointing`), against PyTorch eager on the same
//! model: forward with the contrastive loss, backward and the AdamW step. Each case runs in
//! a process of its own, since a process's peak resident memory only grows; the printed
//! figures are that peak before the first step (weights, gradients, AdamW's moments) and
//! after two steps, and their difference, what the steps themselves add.
//!
//! Also the released RAM++ (Swin-L at 384 px, 4585 tags of 51 descriptions) for one training
//! step of its three terms, with and without checkpointing of the Swin blocks.
//!
//! Run with `cargo bench --workspace --bench memory` (after `make` has installed the venv);
//! `-- clip` or `-- ram` runs one of the two; `TRAINER_MEMORY_RAM_BATCH` sets RAM++'s batch
//! (default 2: a step of the large model takes minutes on a CPU).

// Only the PyTorch side is used here, not the rounds and their statistics.
mod clip_training;
mod ram_plus_training;
#[allow(dead_code)]
mod reference;

use clip_training::clip_and_adamw;
use ram_plus_training::ram_plus_training;
use std::process::Command;
use tch::{Device, Kind, Tensor};
use trainer::models::clip::ClipConfig;
use trainer::models::ram_plus::RamPlusConfig;

const BATCH: i64 = 32;
const CONTEXT: i64 = 77;
/// Set in the child processes: the case to run.
const CASE_VARIABLE: &str = "TRAINER_MEMORY_CASE";

/// The process's peak resident memory so far, in MiB.
fn peak_mib() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    usage.ru_maxrss as f64 / 1024.0
}

/// Two training steps; prints the peak before and after them.
fn child(checkpointing: bool) {
    let config = ClipConfig::default();
    let (mut model, mut optimizer) = clip_and_adamw(&config);
    model.set_grad_checkpointing(checkpointing);
    let size = config.vision_config.image_size;
    let pixels = Tensor::randn([BATCH, 3, size, size], (Kind::Float, Device::Cpu));
    let ids = Tensor::randint_low(1, config.text_config.vocab_size - 1, [BATCH, CONTEXT], (Kind::Int64, Device::Cpu));
    let _ = ids.narrow(1, CONTEXT - 1, 1).fill_(config.text_config.eos_token_id);
    let before = peak_mib();
    for _ in 0..2 {
        let loss = model.contrastive_loss(&pixels, &ids);
        optimizer.zero_grad();
        loss.backward();
        optimizer.step(&[1e-5; 4], &[false; 4]);
        loss.double_value(&[]);
    }
    println!("{before} {}", peak_mib());
}

/// One RAM++ training step; prints the peak before and after it.
fn ram_plus_child(checkpointing: bool) {
    let batch = std::env::var("TRAINER_MEMORY_RAM_BATCH").ok().and_then(|b| b.parse().ok()).unwrap_or(2);
    let mut step = ram_plus_training(&RamPlusConfig::swin_large_14m(), batch, checkpointing);
    let before = peak_mib();
    step();
    println!("{before} {}", peak_mib());
}

/// (peak before the steps, peak after them) of a child process running `case`.
fn measure(case: &str) -> (f64, f64) {
    let output = Command::new(std::env::current_exe().expect("the bench knows its path"))
        .env(CASE_VARIABLE, case)
        .output()
        .expect("the bench starts itself");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout);
    let figures: Vec<f64> = text.split_whitespace().filter_map(|word| word.parse().ok()).collect();
    (figures[0], figures[1])
}

fn main() {
    match std::env::var(CASE_VARIABLE).as_deref() {
        Ok("plain") => return child(false),
        Ok("checkpointed") => return child(true),
        Ok("ram_plus_plain") => return ram_plus_child(false),
        Ok("ram_plus_checkpointed") => return ram_plus_child(true),
        _ => {}
    }
    let words: Vec<String> = std::env::args().skip(1).filter(|arg| !arg.starts_with("--")).collect();
    let wanted = |word: &str| words.is_empty() || words.iter().any(|w| w == word);
    if wanted("clip") {
        clip_memory();
    }
    if wanted("ram") {
        ram_plus_memory();
    }
}

fn row(name: &str, (before, after): (f64, f64)) -> f64 {
    println!("{name:<34} {before:>14.0} {after:>14.0} {:>14.0}", after - before);
    after - before
}

fn ram_plus_memory() {
    let batch = std::env::var("TRAINER_MEMORY_RAM_BATCH").unwrap_or_else(|_| "2".into());
    println!("RAM++ Swin-L 384, 4585 tags x 51, batch {batch}, CPU; peak resident memory in MiB");
    println!("{:<34} {:>14} {:>14} {:>14}", "", "before step", "after 1 step", "step adds");
    let plain = row("trainer", measure("ram_plus_plain"));
    let checkpointed = row("trainer --grad-checkpointing", measure("ram_plus_checkpointed"));
    println!("checkpointing leaves {:.0}% of what the step adds", 100.0 * checkpointed / plain);
}

fn clip_memory() {
    println!("ViT-B/32 size CLIP, batch {BATCH}, context {CONTEXT}, CPU; peak resident memory in MiB");
    println!("{:<34} {:>14} {:>14} {:>14}", "", "before steps", "after 2 steps", "steps add");
    let plain = row("trainer", measure("plain"));
    let checkpointed = row("trainer --grad-checkpointing", measure("checkpointed"));
    let args = [BATCH.to_string(), CONTEXT.to_string(), "2".into(), tch::get_num_threads().to_string()];
    match reference::run_reference("pytorch_clip_step.py", &ClipConfig::default(), &args) {
        Ok(reply) => {
            let field = |name: &str| reply[name].as_f64().unwrap_or(f64::NAN);
            row("PyTorch eager (transformers)", (field("peak_mib_before_steps"), field("peak_mib")));
        }
        Err(err) => println!("PyTorch side failed: {err}"),
    }
    println!("checkpointing leaves {:.0}% of what the steps add", 100.0 * checkpointed / plain);
}
