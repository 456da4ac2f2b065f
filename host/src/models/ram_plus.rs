//! RAM++ (Huang et al. 2023, "Open-Set Image Tagging with Multi-Grained Text Supervision")
//! as recognize-anything's `ram/models/ram_plus.py` defines it, under its state-dict names,
//! so that the released `ram_plus_swin_large_14m.pth` loads as it is:
//!
//! - `visual_encoder`: a [`Swin`]; `image_proj` maps its average token and tokens to 512;
//! - `label_embed`: `tags x descriptions` rows of 512, the teacher CLIP's text embeddings of
//!   each tag's descriptions (frozen in training). Each image weighs a tag's descriptions by
//!   the softmax, over that tag's descriptions, of `exp(reweight_scale)` times their dot
//!   product with the image's normalised average token, and sums them;
//! - `wordvec_proj` then ReLU: the tag queries, of the head's width;
//! - `tagging_head.encoder.layer.N`: [`BertCrossLayer`]s, the tag queries attending to the
//!   image tokens (with the average token first);
//! - `fc`: one logit per tag, the same linear for every tag.
//!
//! Training minimises the three terms `RAM_plus.forward` returns ([`RamPlus::losses`]).
//!
//! What the released model has besides (`class_threshold`, the tag list) is not a tensor of
//! its state dict; the Swin's buffers are, and [`super::swin::BUFFER_SUFFIXES`] names them.

use super::bert::{BertConfig, BertCrossLayer};
use super::clip::Compute;
use super::swin::{Swin, SwinConfig};
use super::tagger::asymmetric_loss;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor, nn, nn::Module};

/// Width of the CLIP embeddings RAM++ works in (`image_proj`'s output, `label_embed`'s rows).
pub const EMBED_DIM: i64 = 512;

/// A RAM++ model's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RamPlusConfig {
    pub vision: SwinConfig,
    pub head: BertConfig,
    /// Tags the model scores, each with `descriptions` rows of `label_embed`.
    pub tags: i64,
    pub descriptions: i64,
}

impl RamPlusConfig {
    /// The released `ram_plus_swin_large_14m`: Swin-L at 384 px, 4585 tags of 51
    /// descriptions each.
    pub fn swin_large_14m() -> Self {
        RamPlusConfig { vision: SwinConfig::large(384), head: BertConfig::query2label(), tags: 4585, descriptions: 51 }
    }
}

#[derive(Debug)]
pub struct RamPlus {
    visual_encoder: Swin,
    image_proj: nn::Linear,
    label_embed: Tensor,
    reweight_scale: Tensor,
    wordvec_proj: nn::Linear,
    tagging_head: Vec<BertCrossLayer>,
    fc: nn::Linear,
    compute: Compute,
    tags: i64,
    descriptions: i64,
}

impl RamPlus {
    /// `config.vision` must pass [`SwinConfig::check`].
    pub fn new(path: &nn::Path, config: &RamPlusConfig) -> Self {
        let hidden = config.head.hidden_size;
        let layers = path / "tagging_head" / "encoder" / "layer";
        RamPlus {
            visual_encoder: Swin::new(&(path / "visual_encoder"), &config.vision),
            image_proj: nn::linear(path / "image_proj", config.vision.num_features(), EMBED_DIM, Default::default()),
            label_embed: path.zeros("label_embed", &[config.tags * config.descriptions, EMBED_DIM]),
            reweight_scale: path.var("reweight_scale", &[], nn::Init::Const((1.0f64 / 0.07).ln())),
            wordvec_proj: nn::linear(path / "wordvec_proj", EMBED_DIM, hidden, Default::default()),
            tagging_head: (0..config.head.num_hidden_layers)
                .map(|layer| BertCrossLayer::new(&layers / layer, &config.head))
                .collect(),
            fc: nn::linear(path / "fc", hidden, 1, Default::default()),
            compute: Compute::default(),
            tags: config.tags,
            descriptions: config.descriptions,
        }
    }

    /// Attention and MLPs computed in `kind`; weights, norms and the residual streams stay
    /// float32.
    pub fn set_compute_kind(&mut self, kind: Kind) {
        self.compute.kind = kind;
        self.visual_encoder.set_compute_kind(kind);
    }

    /// Activation checkpointing of the Swin blocks.
    pub fn set_grad_checkpointing(&mut self, on: bool) {
        self.visual_encoder.set_grad_checkpointing(on);
    }

    /// `image_proj` of the encoder's output: `(batch, 1 + tokens, 512)`, the average token
    /// first.
    pub fn image_embeds(&self, pixel_values: &Tensor) -> Tensor {
        self.image_proj.forward(&self.visual_encoder.forward(pixel_values))
    }

    /// Each image's tag queries: its mix of each tag's description embeddings through
    /// `wordvec_proj` and ReLU, `(batch, tags, hidden)`.
    fn tag_queries(&self, image_embeds: &Tensor) -> Tensor {
        let average = image_embeds.select(1, 0);
        let average = &average / average.norm_scalaropt_dim(2, [-1i64].as_slice(), true);
        let similarity = average.matmul(&self.label_embed.tr()) * self.reweight_scale.exp();
        let (batch, tags, descriptions) = (average.size()[0], self.tags, self.descriptions);
        let weights = similarity.view([batch, tags, descriptions]).softmax(-1, Kind::Float);
        let rows = self.label_embed.view([tags, descriptions, EMBED_DIM]);
        let mixed = Tensor::einsum("btd,tdc->btc", &[weights, rows], None::<i64>);
        self.wordvec_proj.forward(&mixed).relu()
    }

    /// `(batch, tags)` logits of `queries` (`(batch or 1, count, hidden)`: the tag queries,
    /// or any other queries of the head's width) over the image tokens.
    fn head_logits(&self, queries: &Tensor, image_embeds: &Tensor) -> Tensor {
        let queries = queries.expand([image_embeds.size()[0], -1, -1], false);
        let hidden = self
            .tagging_head
            .iter()
            .fold(queries, |hidden, layer| layer.forward(&hidden, image_embeds, self.compute.kind));
        self.fc.forward(&hidden).squeeze_dim(-1)
    }

    /// The tag logits of images already embedded: `(batch, tags)`.
    pub fn tag_logits(&self, image_embeds: &Tensor) -> Tensor {
        self.head_logits(&self.tag_queries(image_embeds), image_embeds)
    }

    /// The tag logits of `pixel_values` (normalised, `image_res` square): `(batch, tags)`.
    pub fn logits(&self, pixel_values: &Tensor) -> Tensor {
        self.tag_logits(&self.image_embeds(pixel_values))
    }

    /// The head's logit of each image for each of `texts` (`(count, 512)` CLIP text
    /// embeddings, e.g. the batch's captions), queried through `wordvec_proj` and ReLU as
    /// tags are: `(batch, count)`.
    pub fn alignment_logits(&self, image_embeds: &Tensor, texts: &Tensor) -> Tensor {
        let queries = self.wordvec_proj.forward(&texts.to_kind(Kind::Float)).relu().unsqueeze(0);
        self.head_logits(&queries, image_embeds)
    }

    /// RAM++'s loss terms for images embedded as `image_embeds`: `tag`, the asymmetric loss
    /// (gamma- 7, clip 0.05) of the tag logits against the multi-hot `targets`, summed;
    /// `distill`, the mean L1 distance of the (unnormalised) average token to the teacher
    /// CLIP's image features `teacher_image`; `align`, the asymmetric loss (gamma- 4) of each
    /// image's logits for the batch's caption embeddings `captions`, its own caption the one
    /// positive.
    pub fn losses(
        &self,
        image_embeds: &Tensor,
        targets: &Tensor,
        teacher_image: &Tensor,
        captions: &Tensor,
    ) -> [Tensor; 3] {
        let tag = asymmetric_loss(&self.tag_logits(image_embeds), targets, 0.0, 7.0, 0.05);
        let average = image_embeds.select(1, 0);
        let distill = average.l1_loss(&teacher_image.to_kind(Kind::Float), tch::Reduction::Mean);
        let alignment = self.alignment_logits(image_embeds, captions);
        let (batch, count) = (alignment.size()[0], alignment.size()[1]);
        let own = Tensor::eye_m(batch, count, (Kind::Float, alignment.device()));
        let align = asymmetric_loss(&alignment, &own, 0.0, 4.0, 0.05);
        [tag, distill, align]
    }
}
