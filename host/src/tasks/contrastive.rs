//! The contrastive loss over the whole global batch, however it is split: into micro-batches
//! on one process (`--accum-steps`, as open_clip's `--accum-freq`) and into shards over the
//! processes of a data-parallel run. CLIP's loss and the tagging task's `align` term both
//! train through it.
//!
//! With one piece per process, each rank embeds its shard with gradient and gathers every
//! rank's embeddings without. With micro-batches, the embeddings of every piece are made
//! first without gradient and gathered; then each piece goes through the model again with
//! gradient. Either way each piece's live embeddings take their place among the others' for
//! a loss over the global batch, so every negative counts, activations are held for one piece
//! at a time, and each rank's gradient is exactly its share of the global batch's: summed over
//! the ranks (as the training loop does), it is the gradient of one process on the whole
//! batch. A loss over the local shard alone would miss the other shards' negatives and train
//! another model (see the tests).

use crate::distributed::{DistributedError, Team};
use crate::engine::{Backward, EngineError};
use crate::models::clip::{Clip, contrastive_loss};
use tch::Tensor;

const GATHER: &str = "the gather of the contrastive embeddings";

/// Every rank's image and text embeddings of a step, gathered together without gradient (one
/// collective for both).
pub struct GlobalPairs {
    /// `(global rows, image dim + text dim)`.
    all: Tensor,
    image_width: i64,
    /// Where this rank's rows start.
    first_row: i64,
}

impl GlobalPairs {
    /// Gathers this rank's rows of the step (every piece) from every rank.
    pub fn gather(images: &Tensor, texts: &Tensor, team: &Team) -> Result<Self, DistributedError> {
        let local = Tensor::cat(&[images.detach(), texts.detach()], 1);
        let (all, first_row) = team.gather_rows(&local, GATHER)?;
        Ok(GlobalPairs { all, image_width: images.size()[1], first_row })
    }

    /// The global image and text rows with `images` and `texts`, this rank's rows from
    /// `offset` on, live in their place.
    fn with_live(&self, offset: i64, images: &Tensor, texts: &Tensor) -> (Tensor, Tensor) {
        let (start, rows) = (self.first_row + offset, images.size()[0]);
        let total = self.all.size()[0];
        let place = |columns: Tensor, live: &Tensor| {
            let after = total - start - rows;
            Tensor::cat(&[columns.narrow(0, 0, start), live.shallow_clone(), columns.narrow(0, start + rows, after)], 0)
        };
        let text_width = self.all.size()[1] - self.image_width;
        (
            place(self.all.narrow(1, 0, self.image_width), images),
            place(self.all.narrow(1, self.image_width, text_width), texts),
        )
    }
}

/// The global batch's image and text rows with this rank's `images` and `texts` (its rows
/// from `offset` on) live in their place: among rows gathered beforehand (micro-batches),
/// or gathered now (one piece per process).
pub fn placed(
    images: &Tensor,
    texts: &Tensor,
    offset: i64,
    gathered: Option<&GlobalPairs>,
    team: &Team,
) -> Result<(Tensor, Tensor), DistributedError> {
    match gathered {
        Some(pairs) => Ok(pairs.with_live(offset, images, texts)),
        None if team.size() == 1 => Ok((images.shallow_clone(), texts.shallow_clone())),
        None => Ok(GlobalPairs::gather(images, texts, team)?.with_live(offset, images, texts)),
    }
}

/// The logit scale as the loss of micro-batch `piece` sees it: its gradient is counted once
/// over every piece and rank (on rank 0's first piece).
pub fn logit_scale_for(model: &Clip, piece: usize, team: &Team) -> Tensor {
    if piece == 0 && team.is_leader() { model.logit_scale() } else { tch::no_grad(|| model.logit_scale()) }
}

/// CLIP's contrastive loss of the global batch, as this rank's share (loss / ranks); with
/// `backward`, the gradient of its weight times this rank's share accumulated into the
/// parameters.
pub fn contrastive_share(
    model: &Clip,
    pixel_values: &Tensor,
    input_ids: &Tensor,
    micro_batches: u64,
    team: &Team,
    backward: Option<Backward>,
) -> Result<Tensor, EngineError> {
    let pixel_pieces = pixel_values.chunk(micro_batches as i64, 0);
    let id_pieces = input_ids.chunk(micro_batches as i64, 0);
    let gathered = if pixel_pieces.len() > 1 {
        let (images, texts): (Vec<Tensor>, Vec<Tensor>) = tch::no_grad(|| {
            pixel_pieces
                .iter()
                .zip(&id_pieces)
                .map(|(p, i)| (model.image_embeddings(p), model.text_embeddings(i)))
                .unzip()
        });
        Some(GlobalPairs::gather(&Tensor::cat(&images, 0), &Tensor::cat(&texts, 0), team)?)
    } else {
        None
    };
    let mut offset = 0;
    let mut whole_batch_loss = None;
    for (piece, (pixels, ids)) in pixel_pieces.iter().zip(&id_pieces).enumerate() {
        let (images, texts) = (model.image_embeddings(pixels), model.text_embeddings(ids));
        let (images, texts) = placed(&images, &texts, offset, gathered.as_ref(), team)?;
        let loss = contrastive_loss(&images, &texts, &logit_scale_for(model, piece, team));
        if let Some(backward) = backward {
            backward.run(std::slice::from_ref(&loss))?;
        }
        whole_batch_loss.get_or_insert_with(|| loss.detach() / team.size() as f64);
        offset += pixels.size()[0];
    }
    Ok(whole_batch_loss.expect("a batch has at least one piece"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::clip::ClipConfig;
    use tch::{Device, Kind, nn};

    fn weighted(weights: &'static [f64]) -> Backward<'static> {
        Backward { weights, meter: None }
    }

    /// Every parameter's gradient, by name, after `backward`.
    fn gradients(var_store: &nn::VarStore) -> Vec<(String, Tensor)> {
        let mut grads: Vec<(String, Tensor)> =
            var_store.variables().into_iter().map(|(name, var)| (name, var.grad().copy())).collect();
        grads.sort_by(|a, b| a.0.cmp(&b.0));
        grads
    }

    /// A tiny CLIP and a batch of 12 image-caption pairs for it.
    fn model_and_batch() -> (nn::VarStore, Clip, Tensor, Tensor) {
        tch::manual_seed(5);
        let (vocab, context, batch) = (20, 6, 12);
        let config = ClipConfig::tiny(vocab, context, 1, vocab - 1, 0);
        let var_store = nn::VarStore::new(Device::Cpu);
        let model = Clip::new(&var_store.root(), &config);
        let pixels = Tensor::randn([batch, 3, 28, 28], (Kind::Float, Device::Cpu));
        // Start token, three words, the end token (the largest id), padding.
        let words = Tensor::randint_low(2, vocab - 1, [batch, 3], (Kind::Int64, Device::Cpu));
        let column = |id: i64| Tensor::full([batch, 1], id, (Kind::Int64, Device::Cpu));
        let ids = Tensor::cat(&[column(1), words, column(vocab - 1), column(0)], 1);
        (var_store, model, pixels, ids)
    }

    fn zero_grads(var_store: &nn::VarStore) {
        for (_, mut var) in var_store.variables() {
            var.zero_grad();
        }
    }

    /// Why the data-parallel loss gathers: the mean of the losses over each half of the
    /// batch (what each of two processes would compute without the others' embeddings)
    /// has another gradient than the loss over the whole batch, by far more than float
    /// rounding (the data-parallel test holds the gathered form to 2e-5 on the weights).
    #[test]
    fn a_loss_over_each_shard_alone_has_another_gradient() {
        let (var_store, model, pixels, ids) = model_and_batch();
        let _loss = contrastive_share(&model, &pixels, &ids, 1, &Team::solo(), Some(weighted(&[1.0]))).unwrap();
        let whole = gradients(&var_store);
        zero_grads(&var_store);
        for (pixels, ids) in pixels.chunk(2, 0).iter().zip(ids.chunk(2, 0)) {
            (model.contrastive_loss(pixels, &ids) * 0.5).backward();
        }
        let largest = whole
            .iter()
            .zip(gradients(&var_store))
            .map(|((_, want), (_, got))| {
                ((want - &got).abs().max() / want.abs().max().clamp_min(1e-2)).double_value(&[])
            })
            .fold(0.0, f64::max);
        assert!(largest > 0.05, "the shard-local gradient is within {largest} of the whole batch's");
    }

    #[test]
    fn accumulated_micro_batches_give_the_whole_batch_gradient() {
        let (var_store, model, pixels, ids) = model_and_batch();
        let solo = Team::solo();
        let whole = contrastive_share(&model, &pixels, &ids, 1, &solo, Some(weighted(&[2.0]))).unwrap();
        let expected = gradients(&var_store);
        zero_grads(&var_store);
        let accumulated = contrastive_share(&model, &pixels, &ids, 4, &solo, Some(weighted(&[2.0]))).unwrap();
        assert!((whole.double_value(&[]) - accumulated.double_value(&[])).abs() < 1e-5);
        for ((name, want), (_, got)) in expected.iter().zip(gradients(&var_store)) {
            let error = (want - &got).abs().max().double_value(&[]);
            // Gradients that are zero in exact arithmetic (the key bias) are float noise here,
            // which depends on the reduction order: measured up to 1.1e-7, so such gradients
            // are held to 1e-6.
            let scale = want.abs().max().double_value(&[]).max(1e-2);
            assert!(error <= 1e-4 * scale, "{name}: gradient differs by {error} (largest {scale})");
        }
    }
}
