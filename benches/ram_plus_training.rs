//! The trainer's side of the RAM++ and RAM benchmarks: a seeded RAM++ (or RAM, when the
//! config has a caption branch) with its AdamW (decay on matrices, weight decay 0.05 as
//! `finetune.yaml`; `label_embed` frozen as recognize-anything fine-tunes it), and one
//! training step of its three terms on random inputs, as `pytorch_ram_plus_step.py` makes
//! them on the PyTorch side: RAM++'s `tag`, `distill`, `align`; RAM's `tag`, `distill`,
//! `t2t` (tag strings of 40 tokens, captions of [`CAPTION_TOKENS`]).

use tch::{Device, Kind, Tensor, nn};
use trainer::engine::optimizer::{AdamW, AdamWConfig, OptimizedParam};
use trainer::models::ram_plus::{EMBED_DIM, RamPlus, RamPlusConfig, tag_loss};

/// Tokens of each random caption of RAM's `t2t`.
pub const CAPTION_TOKENS: i64 = 20;

/// A RAM++ or RAM of `config`, its AdamW, and a closure that runs one training step on a
/// random batch of `batch` images.
pub fn ram_plus_training(config: &RamPlusConfig, batch: i64, checkpointing: bool) -> impl FnMut() + use<> {
    tch::manual_seed(0);
    let store = nn::VarStore::new(Device::Cpu);
    let mut model = RamPlus::new(&store.root(), config);
    model.set_grad_checkpointing(checkpointing);
    let params = store
        .variables()
        .into_iter()
        .filter_map(|(name, tensor)| {
            if name == "label_embed" {
                let _ = tensor.set_requires_grad(false);
                return None;
            }
            Some(OptimizedParam { group: 0, decay: tensor.dim() >= 2, name, tensor })
        })
        .collect();
    let mut optimizer = AdamW::new(params, AdamWConfig { weight_decay: 0.05, ..Default::default() });
    let size = config.vision.image_res;
    let options = (Kind::Float, Device::Cpu);
    let pixels = Tensor::randn([batch, 3, size, size], options);
    let targets = Tensor::rand([batch, config.tags], options).lt(0.01).to_kind(Kind::Float);
    let teacher = Tensor::randn([batch, EMBED_DIM], options);
    let captions = Tensor::randn([batch, EMBED_DIM], options);
    let ids = |vocab_size: i64, tokens: i64| Tensor::randint(vocab_size, [batch, tokens], (Kind::Int64, Device::Cpu));
    let text = config.text.as_ref().map(|text| (ids(text.vocab_size, 40), ids(text.vocab_size, CAPTION_TOKENS)));
    move || {
        // The store lives as long as the step does.
        let _ = &store;
        let embeds = model.image_embeds(&pixels);
        let terms = match (&text, model.caption()) {
            (Some((tag_ids, caption_ids)), Some(caption)) => {
                let tag_tokens = caption.encode_tags(tag_ids, &tag_ids.ones_like(), &embeds, Kind::Float);
                let t2t = caption.t2t_loss(
                    caption_ids,
                    &caption_ids.ones_like(),
                    &tag_tokens,
                    Kind::Float,
                    tch::Reduction::Mean,
                );
                [tag_loss(&model.tag_logits(&embeds), &targets), model.distill_loss(&embeds, &teacher), t2t]
            }
            _ => model.losses(&embeds, &targets, &teacher, &captions),
        };
        let loss = terms.iter().fold(Tensor::zeros([], options), |sum, term| sum + term);
        optimizer.zero_grad();
        loss.backward();
        optimizer.step(&[1e-4], &[false]);
    }
}
