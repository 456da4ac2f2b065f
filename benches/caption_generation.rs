//! Captions per second of beam search against transformers' `generate` on the same decoder:
//! RAM's and Tag2Text's text decoder (`med_config.json`'s BERT-base with cross-attention),
//! captioning images from random tag-encoder tokens (40 per image) as `inference_tag2text`
//! does (3 beams from `[DEC] a picture of`). Every caption is held to one length (its
//! minimum is its maximum), so both sides take the same steps whatever the weights; the
//! weights are each side's own random ones. Both keep a cache of keys and values
//! (transformers' `generate` by default). The sides alternate over rounds; prints the median
//! captions per second of each and their ratio.
//!
//! Run with `cargo bench --workspace --bench caption_generation` (after `make test-setup`);
//! `TRAINER_BENCH_ROUNDS` sets the rounds (default 3).

mod reference;

use reference::{Ratios, median};
use std::time::Instant;
use tch::{Device, Kind, Tensor, nn};
use trainer::models::bert::BertTextConfig;
use trainer::models::ram_caption::CaptionBranch;
use trainer::models::text_generation::Search;

/// bert-base-uncased's `[SEP]`, the end of a caption, and the prompt's ids.
const SEP: i64 = 102;
const PROMPT: [i64; 4] = [30522, 1037, 3861, 1997];
const TAG_TOKENS: i64 = 40;

struct Case {
    name: &'static str,
    images: i64,
    length: usize,
}

const CASES: [Case; 2] = [
    Case { name: "8 images, 20 tokens", images: 8, length: 20 },
    Case { name: "8 images, 30 tokens", images: 8, length: 30 },
];

fn our_seconds(branch: &CaptionBranch, case: &Case) -> f64 {
    let tag_tokens = Tensor::randn([case.images, TAG_TOKENS, 768], (Kind::Float, Device::Cpu));
    let search = Search { beams: 3, max_length: case.length, min_length: case.length, length_penalty: 1.0, eos: SEP };
    let started = Instant::now();
    let captions = branch.generate(&tag_tokens, &PROMPT, &search, Kind::Float);
    let seconds = started.elapsed().as_secs_f64();
    assert!(captions.iter().all(|ids| ids.len() == case.length), "every caption is {} tokens", case.length);
    seconds
}

fn their_seconds(text: &BertTextConfig, case: &Case, threads: i32) -> Result<f64, String> {
    let args = [case.images.to_string(), case.length.to_string(), threads.to_string()];
    let reply = reference::run_reference("transformers_caption_generation.py", text, &args)?;
    reply["seconds"].as_f64().ok_or_else(|| "no seconds in the reply".into())
}

fn main() {
    let rounds: usize = std::env::var("TRAINER_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let threads = tch::get_num_threads();
    println!("CPU, {threads} threads, {rounds} alternating rounds; transformers' generate vs this trainer");
    tch::manual_seed(0);
    let text = BertTextConfig::med_config();
    let store = nn::VarStore::new(Device::Cpu);
    let branch = CaptionBranch::new(&store.root(), &text, &[], text.layers.hidden_size);
    for case in &CASES {
        // One warm-up of each side.
        our_seconds(&branch, case);
        let (mut ratios, mut ours) = (Ratios::default(), Vec::new());
        for _ in 0..rounds {
            let seconds = our_seconds(&branch, case);
            ours.push(seconds);
            match their_seconds(&text, case, threads) {
                Ok(theirs) => ratios.push(case.images as f64 / seconds, case.images as f64 / theirs),
                Err(err) => println!("{}: transformers side failed: {err}", case.name),
            }
        }
        if ratios.is_empty() {
            println!("{}: trainer {:.2} captions/s", case.name, case.images as f64 / median(&ours));
            continue;
        }
        println!("{}: {}", case.name, ratios.summary("captions/s"));
    }
}
