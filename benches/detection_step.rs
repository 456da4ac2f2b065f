//! One OWL-ViT detection training step against PyTorch: the same architecture (the config
//! written here is read by `transformers` on the other side), the same batch, queries and
//! boxes, the same thread count; queries embedded, image features, class logits and boxes,
//! per-image Hungarian matching (here our solver, there scipy's `linear_sum_assignment`),
//! focal, L1 and GIoU losses, backward, AdamW. The two sides alternate over several rounds;
//! the medians and their ratio are printed, at the default data's size and at
//! owlvit-base-patch32's (768 px).
//!
//! Run with `cargo bench --workspace --bench detection_step` (after `make` has installed the venv).

mod reference;

use reference::{Ratios, median};
use std::time::Instant;
use tch::{Device, Kind, Tensor, nn};
use trainer::engine::optimizer::{AdamW, AdamWConfig, OptimizedParam};
use trainer::models::groups::GroupBy;
use trainer::models::owlvit::{self, OwlConfig, OwlDetector, OwlVariant};
use trainer::tasks::detection::{BatchTargets, Focal, MatchCosts, detection_losses};

const ROUNDS: usize = 3;
const QUERIES: i64 = 10;

struct Case {
    name: &'static str,
    config: OwlConfig,
    batch: i64,
    steps: usize,
}

fn cases() -> Vec<Case> {
    let mut tiny = OwlConfig::defaults(OwlVariant::OwlVit);
    let text = &mut tiny.text_config;
    (text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.num_attention_heads) = (64, 256, 2, 4);
    let vision = &mut tiny.vision_config;
    (vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers, vision.num_attention_heads) =
        (64, 256, 3, 4);
    (vision.image_size, vision.patch_size) = (64, 8);
    tiny.projection_dim = 64;
    vec![
        Case { name: "default data size (64px/8, 3x64; text 2x64)", config: tiny, batch: 32, steps: 10 },
        Case {
            name: "owlvit-base-patch32 size (768px/32, 12x768; text 12x512)",
            config: OwlConfig::defaults(OwlVariant::OwlVit),
            batch: 2,
            steps: 2,
        },
    ]
}

/// Three boxes per image, laid out as the Python side lays them out.
fn targets(batch: i64) -> (Vec<Tensor>, Vec<Tensor>) {
    let fraction = |x: f64| x - x.floor();
    (0..batch)
        .map(|image| {
            let boxes: Vec<f32> = (0..3)
                .flat_map(|k| {
                    let n = (image * 3 + k) as f64;
                    [
                        0.2 + 0.6 * fraction(n * 0.37),
                        0.2 + 0.6 * fraction(n * 0.61),
                        0.1 + 0.2 * fraction(n * 0.13),
                        0.1 + 0.2 * fraction(n * 0.29),
                    ]
                    .map(|v| v as f32)
                })
                .collect();
            let labels: Vec<i64> = (0..3).map(|k| (image + k) % QUERIES).collect();
            (Tensor::from_slice(&boxes).view([3, 4]), Tensor::from_slice(&labels))
        })
        .unzip()
}

fn rust_seconds_per_step(case: &Case) -> f64 {
    tch::manual_seed(0);
    let store = nn::VarStore::new(Device::Cpu);
    let model = OwlDetector::new(&store.root(), &case.config);
    let layout = owlvit::parameter_groups(&case.config, GroupBy::Part, false);
    let params = store
        .variables()
        .into_iter()
        .filter_map(|(name, tensor)| {
            let group = layout.index(owlvit::parameter_place(&name)?)?;
            Some(OptimizedParam { group, decay: tensor.dim() >= 2, name, tensor })
        })
        .collect();
    let mut optimizer = AdamW::new(params, AdamWConfig { weight_decay: 0.1, ..Default::default() });
    let size = case.config.vision_config.image_size;
    let pixels = Tensor::randn([case.batch, 3, size, size], (Kind::Float, Device::Cpu));
    let context = case.config.text_config.max_position_embeddings;
    let ids = Tensor::zeros([QUERIES, context], (Kind::Int64, Device::Cpu));
    let _ = ids.narrow(1, 0, 1).fill_(49406);
    ids.narrow(1, 1, 3).copy_(&Tensor::randint_low(1, 49000, [QUERIES, 3], (Kind::Int64, Device::Cpu)));
    let _ = ids.narrow(1, 4, 1).fill_(49407);
    let (boxes, labels) = targets(case.batch);
    let batch = BatchTargets { boxes: &boxes, labels: &labels };
    let (costs, focal) = (MatchCosts { class: 1.0, l1: 5.0, giou: 2.0 }, Focal { alpha: 0.25, gamma: 2.0 });
    let groups = layout.groups().len();
    let mut step = || {
        let terms = detection_losses(
            &model,
            &pixels,
            &model.query_embeddings(&ids),
            &batch,
            costs,
            focal,
            batch.box_count().max(1) as f64,
        )
        .expect("finite costs");
        let loss = terms.iter().fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |sum, term| sum + term);
        optimizer.zero_grad();
        loss.backward();
        optimizer.step(&vec![1e-4; groups], &vec![false; groups]);
    };
    step();
    let times = (0..case.steps)
        .map(|_| {
            let started = Instant::now();
            step();
            started.elapsed().as_secs_f64()
        })
        .collect::<Vec<_>>();
    median(&times)
}

fn pytorch_seconds_per_step(case: &Case, threads: i32) -> Result<f64, String> {
    let reply = reference::run_reference(
        "pytorch_owlvit_step.py",
        &case.config,
        &[case.batch.to_string(), QUERIES.to_string(), case.steps.to_string(), threads.to_string()],
    )?;
    reply["seconds_per_step"].as_f64().ok_or_else(|| "no seconds_per_step in the reply".into())
}

fn main() {
    let threads = tch::get_num_threads();
    println!("CPU, {threads} threads, {ROUNDS} alternating rounds; PyTorch eager via transformers vs this trainer");
    for case in cases() {
        let (mut ratios, mut ours) = (Ratios::default(), Vec::new());
        for _ in 0..ROUNDS {
            let our_seconds = rust_seconds_per_step(&case);
            ours.push(our_seconds);
            match pytorch_seconds_per_step(&case, threads) {
                Ok(their_seconds) => ratios.push(1.0 / our_seconds, 1.0 / their_seconds),
                Err(err) => println!("{}: PyTorch side failed: {err}", case.name),
            }
        }
        if ratios.is_empty() {
            println!("{}: batch {}: trainer {:.3} s/step", case.name, case.batch, median(&ours));
            continue;
        }
        println!("{}: batch {}, {QUERIES} queries: {}", case.name, case.batch, ratios.summary("steps/s"));
    }
}
