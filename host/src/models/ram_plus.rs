//! RAM++ (Huang et al. 2023, "Open-Set Image Tagging with Multi-Grained Text Supervision")
//! as recognize-anything's `ram/models/ram_plus.py` defines it, under its state-dict names,
//! so that the released `ram_plus_swin_large_14m.pth` loads as it is; and RAM's tagging
//! branch (`ram/models/ram.py`, `ram_swin_large_14m.pth`), which is the same but for the
//! label embeddings: one per tag, taken as they are, with no `reweight_scale`; with RAM's
//! caption branch ([`CaptionBranch`]) when the checkpoint has it.
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
//! RAM's caption branch, when built, shares the head's layers ([`CaptionBranch`]).
//!
//! Tag2Text (`ram/models/tag2text.py`, `tag2text_swin_14m.pth`) is the same head over other
//! inputs ([`TagQueries::Learned`]): the Swin's tokens as they are (no `image_proj`), one
//! learned query per tag of the head's width (`label_embed.weight`, an `nn.Embedding`), and
//! a linear of its own per tag (`fc.W`, `fc.b`, Query2Label's `GroupWiseLinear`); with the
//! caption branch of RAM, reading those tokens.
//!
//! A released checkpoint carries no configuration: [`RamPlusConfig::of_checkpoint`] reads
//! the shape from the tensors (the Swin's stages, heads and window, the image size from its
//! shifted-window masks, the head's widths, which of the three models it is), given the
//! number of tags, which the tag list gives; only the head's attention heads are not in any
//! shape, and are Query2Label's 4 in all three.
//!
//! What the released model has besides (`class_threshold`, the tag list) is not a tensor of
//! its state dict; the Swin's buffers are, and [`super::swin::BUFFER_SUFFIXES`] names them.

use super::bert::{BertConfig, BertCrossLayer, BertTextConfig};
use super::clip::Compute;
use super::pretrained::LoadReport;
use super::ram_caption::{self, CaptionBranch};
use super::swin::{BUFFER_SUFFIXES, Swin, SwinConfig};
use super::tagger::asymmetric_loss;
use crate::files::FileError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor, nn, nn::Module};

/// Width of the CLIP embeddings RAM++ works in (`image_proj`'s output, `label_embed`'s rows).
pub const EMBED_DIM: i64 = 512;
/// Tag2Text's learned tag queries, the `weight` of its `label_embed` embedding.
pub const LEARNED_QUERIES: &str = "label_embed.weight";

/// Where the tagging head's tag queries come from, and how its outputs are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TagQueries {
    /// RAM++ and RAM: the image tokens through `image_proj`; CLIP text embeddings of the tags
    /// (`label_embed`) through `wordvec_proj` and ReLU; one linear (`fc`) scores every tag.
    #[default]
    ClipText,
    /// Tag2Text: the image tokens as they are; one learned query per tag
    /// (`label_embed.weight`); a linear per tag (`fc.W`, `fc.b`).
    Learned,
}

/// recognize-anything's three models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamFamily {
    RamPlus,
    Ram,
    Tag2Text,
}

impl RamFamily {
    /// As its paper names it.
    pub fn name(self) -> &'static str {
        match self {
            RamFamily::RamPlus => "RAM++",
            RamFamily::Ram => "RAM",
            RamFamily::Tag2Text => "Tag2Text",
        }
    }
}

/// A RAM++ model's shape (or RAM's, or Tag2Text's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RamPlusConfig {
    pub vision: SwinConfig,
    pub head: BertConfig,
    /// Tags the model scores, each with `descriptions` rows of `label_embed`.
    pub tags: i64,
    pub descriptions: i64,
    /// Whether each image weighs a tag's description rows (RAM++), or the one row of each
    /// tag is its query as it is (RAM).
    pub reweighted: bool,
    #[serde(default)]
    pub queries: TagQueries,
    /// RAM's caption branch: the tag encoder's and the decoder's text model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<BertTextConfig>,
}

impl RamPlusConfig {
    /// The released `ram_plus_swin_large_14m`: Swin-L at 384 px, 4585 tags of 51
    /// descriptions each.
    pub fn swin_large_14m() -> Self {
        let (vision, head) = (SwinConfig::large(384), BertConfig::query2label());
        RamPlusConfig {
            vision,
            head,
            tags: 4585,
            descriptions: 51,
            reweighted: true,
            queries: TagQueries::ClipText,
            text: None,
        }
    }

    /// The width of the image tokens the head and the tag encoder attend to: `image_proj`'s
    /// 512, or the Swin's own (Tag2Text).
    pub fn image_width(&self) -> i64 {
        match self.queries {
            TagQueries::ClipText => EMBED_DIM,
            TagQueries::Learned => self.vision.num_features(),
        }
    }

    /// Which of recognize-anything's models this is.
    pub fn family(&self) -> RamFamily {
        match (self.queries, self.reweighted) {
            (TagQueries::Learned, _) => RamFamily::Tag2Text,
            (TagQueries::ClipText, true) => RamFamily::RamPlus,
            (TagQueries::ClipText, false) => RamFamily::Ram,
        }
    }

    /// The shape of the RAM++ (or RAM) checkpoint `tensors`, read from `file`, for a tag list
    /// of `tags` tags.
    pub fn of_checkpoint(file: &Path, tensors: &HashMap<String, Tensor>, tags: i64) -> Result<Self, FileError> {
        let bad = |problem: String| FileError::format(file, problem);
        let shape = |name: &str| {
            tensors.get(name).map(Tensor::size).ok_or_else(|| {
                bad(format!("no tensor `{name}`: not a RAM++, RAM or Tag2Text checkpoint of recognize-anything's"))
            })
        };
        // The count of `prefix{N}.` indices among the names.
        let count = |prefix: &str| {
            let indices =
                tensors.keys().filter_map(|name| name.strip_prefix(prefix)?.split('.').next()?.parse::<i64>().ok());
            indices.max().map_or(0, |last| last + 1)
        };
        let patch = shape("visual_encoder.patch_embed.proj.weight")?;
        let stages = count("visual_encoder.layers.");
        let depths: Vec<i64> =
            (0..stages).map(|stage| count(&format!("visual_encoder.layers.{stage}.blocks."))).collect();
        let table =
            |stage: i64| shape(&format!("visual_encoder.layers.{stage}.blocks.0.attn.relative_position_bias_table"));
        let num_heads = (0..stages).map(|stage| Ok(table(stage)?[1])).collect::<Result<Vec<i64>, FileError>>()?;
        let span = (table(0)?[0] as f64).sqrt().round() as i64;
        let window_size = (span + 1) / 2;
        let embed_dim = patch[0];
        let mlp = shape("visual_encoder.layers.0.blocks.0.mlp.fc1.weight")?;
        // The first shifted block's mask holds one row per window of the first stage; without
        // the buffers, RAM's own pairing of window and size.
        let image_res = match tensors.get("visual_encoder.layers.0.blocks.1.attn_mask") {
            Some(mask) => ((mask.size()[0] as f64).sqrt().round() as i64) * window_size * patch[2],
            None if window_size == 12 => 384,
            None => 224,
        };
        let vision = SwinConfig {
            image_res,
            patch_size: patch[2],
            embed_dim,
            depths,
            num_heads,
            window_size,
            mlp_ratio: mlp[0] as f64 / embed_dim as f64,
        };
        vision.check().map_err(|problem| bad(format!("its Swin image encoder: {problem}")))?;
        let layer = "tagging_head.encoder.layer.0";
        let key = shape(&format!("{layer}.crossattention.self.key.weight"))?;
        let head = BertConfig {
            hidden_size: key[0],
            num_hidden_layers: count("tagging_head.encoder.layer."),
            num_attention_heads: BertConfig::query2label().num_attention_heads,
            intermediate_size: shape(&format!("{layer}.intermediate.dense.weight"))?[0],
            layer_norm_eps: BertConfig::query2label().layer_norm_eps,
            encoder_width: key[1],
        };
        let text = ram_caption::text_config_of(file, tensors)?;
        if let Some(text) = &text
            && text.layers.hidden_size != head.hidden_size
        {
            return Err(bad(format!(
                "`tag_encoder` is {} wide and the tagging head {}: RAM ties the head's layers to the encoder's",
                text.layers.hidden_size, head.hidden_size
            )));
        }
        if let Some(learned) = tensors.get(LEARNED_QUERIES) {
            let rows = learned.size()[0];
            if rows != tags {
                return Err(bad(format!(
                    "`{LEARNED_QUERIES}` has {rows} rows and the tag list {tags} tags: the tag list is not this \
                     checkpoint's (Tag2Text's has 3429 tags)"
                )));
            }
            let queries = TagQueries::Learned;
            return Ok(RamPlusConfig { vision, head, tags, descriptions: 1, reweighted: false, queries, text });
        }
        let rows = shape("label_embed")?[0];
        if tags <= 0 || rows % tags != 0 {
            return Err(bad(format!(
                "`label_embed` has {rows} rows, which {tags} tags do not divide: the tag list is not this \
                 checkpoint's (RAM++'s has 4585 tags of 51 descriptions, RAM's 4585 of one)"
            )));
        }
        let (descriptions, reweighted) = (rows / tags, tensors.contains_key("reweight_scale"));
        if !reweighted && descriptions != 1 {
            return Err(bad(format!(
                "`label_embed` has {descriptions} rows per tag but no `reweight_scale` weighs them (RAM has one per tag)"
            )));
        }
        Ok(RamPlusConfig { vision, head, tags, descriptions, reweighted, queries: TagQueries::ClipText, text })
    }
}

/// The start-up report's account of loading `tensors` (of `report.file`) into `model`,
/// built in `var_store`: the tensors each part took, the buffers (computed here, not
/// loaded), the names of tied tensors, and what else of the file went unused, by the first
/// part of its names.
pub fn describe_load(
    model: &RamPlus,
    var_store: &nn::VarStore,
    report: &LoadReport,
    tensors: &HashMap<String, Tensor>,
) -> String {
    let variables = var_store.variables();
    let parts = tally(variables.keys().filter(|name| !report.fresh.contains(name)).map(|name| part_of(name)));
    let loaded: Vec<String> = parts.iter().map(|(part, count)| format!("{part} {count}")).collect();
    let mut line = format!("{} tensors from {} ({})", report.loaded, report.file.display(), loaded.join(", "));
    let is_buffer =
        |name: &String| BUFFER_SUFFIXES.iter().chain(&[ram_caption::POSITION_IDS]).any(|suffix| name.ends_with(suffix));
    let buffers = tensors.keys().filter(|name| is_buffer(name)).count();
    if buffers > 0 {
        line.push_str(&format!("; {buffers} buffers computed here"));
    }
    let aliases = model.aliases();
    let tied = tensors.keys().filter(|name| ram_caption::canonical_name(name, &aliases) != **name).count();
    if tied > 0 {
        line.push_str(&format!("; {tied} tied to others"));
    }
    let unused_names = tensors
        .keys()
        .filter(|name| !variables.contains_key(&ram_caption::canonical_name(name, &aliases)) && !is_buffer(name));
    let unused = tally(unused_names.map(|name| name.split('.').next().unwrap_or(name)));
    if !unused.is_empty() {
        let listed: Vec<String> = unused.iter().map(|(part, count)| format!("{count} `{part}.*`")).collect();
        line.push_str(&format!("; unused: {}", listed.join(", ")));
    }
    line
}

/// How often each of `keys` occurs, sorted by key.
fn tally<'a>(keys: impl Iterator<Item = &'a str>) -> Vec<(&'a str, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for key in keys {
        *counts.entry(key).or_insert(0) += 1;
    }
    counts.into_iter().collect()
}

/// The part of RAM's tag encoder and caption decoder.
pub const CAPTION_BRANCH: &str = "caption branch";

/// The part of RAM++ the tensor `name` belongs to, as the start-up report names it.
pub fn part_of(name: &str) -> &'static str {
    const PARTS: [(&str, &str); 9] = [
        ("visual_encoder.", "image encoder"),
        ("image_proj.", "image encoder"),
        ("label_embed", "label embeddings"),
        ("tagging_head.", "tagging head"),
        ("wordvec_proj.", "tagging head"),
        ("fc.", "tagging head"),
        ("reweight_scale", "tagging head"),
        ("tag_encoder.", CAPTION_BRANCH),
        ("text_decoder.", CAPTION_BRANCH),
    ];
    PARTS.iter().find(|(prefix, _)| name.starts_with(prefix)).map_or("other", |(_, part)| part)
}

/// Where the tag queries come from ([`TagQueries`]).
#[derive(Debug)]
enum Queries {
    ClipText {
        label_embed: Tensor,
        /// RAM++'s temperature of the description weights; RAM has none.
        reweight_scale: Option<Tensor>,
        wordvec_proj: nn::Linear,
    },
    Learned {
        label_embed: Tensor,
    },
}

/// How the head's outputs become one logit per tag.
#[derive(Debug)]
enum TagScorer {
    /// One linear for every tag (RAM++, RAM).
    Shared(nn::Linear),
    /// A linear per tag: `(1, tags, hidden)` weights and `(1, tags)` biases (Tag2Text).
    PerTag { weight: Tensor, bias: Tensor },
}

#[derive(Debug)]
pub struct RamPlus {
    visual_encoder: Swin,
    /// RAM++'s and RAM's; Tag2Text's head reads the Swin's tokens as they are.
    image_proj: Option<nn::Linear>,
    queries: Queries,
    tagging_head: Vec<BertCrossLayer>,
    fc: TagScorer,
    caption: Option<CaptionBranch>,
    compute: Compute,
    tags: i64,
    descriptions: i64,
}

impl RamPlus {
    /// `config.vision` must pass [`SwinConfig::check`].
    pub fn new(path: &nn::Path, config: &RamPlusConfig) -> Self {
        let hidden = config.head.hidden_size;
        let layers = path / "tagging_head" / "encoder" / "layer";
        let tagging_head: Vec<BertCrossLayer> = (0..config.head.num_hidden_layers)
            .map(|layer| BertCrossLayer::new(&layers / layer, &config.head))
            .collect();
        let (image_proj, queries, fc) = match config.queries {
            TagQueries::ClipText => {
                let proj = nn::linear(path / "image_proj", config.vision.num_features(), EMBED_DIM, Default::default());
                let queries = Queries::ClipText {
                    label_embed: path.zeros("label_embed", &[config.tags * config.descriptions, EMBED_DIM]),
                    reweight_scale: config
                        .reweighted
                        .then(|| path.var("reweight_scale", &[], nn::Init::Const((1.0f64 / 0.07).ln()))),
                    wordvec_proj: nn::linear(path / "wordvec_proj", EMBED_DIM, hidden, Default::default()),
                };
                (Some(proj), queries, TagScorer::Shared(nn::linear(path / "fc", hidden, 1, Default::default())))
            }
            TagQueries::Learned => {
                // nn.Embedding's and GroupWiseLinear's initialisations.
                let label_embed = (path / "label_embed").var(
                    "weight",
                    &[config.tags, hidden],
                    nn::Init::Randn { mean: 0.0, stdev: 1.0 },
                );
                let bound = 1.0 / (hidden as f64).sqrt();
                let uniform = nn::Init::Uniform { lo: -bound, up: bound };
                let fc = path / "fc";
                let scorer = TagScorer::PerTag {
                    weight: fc.var("W", &[1, config.tags, hidden], uniform),
                    bias: fc.var("b", &[1, config.tags], uniform),
                };
                (None, Queries::Learned { label_embed }, scorer)
            }
        };
        let image_width = config.image_width();
        RamPlus {
            visual_encoder: Swin::new(&(path / "visual_encoder"), &config.vision),
            image_proj,
            queries,
            caption: config.text.as_ref().map(|text| CaptionBranch::new(path, text, &tagging_head, image_width)),
            tagging_head,
            fc,
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

    /// The kind attention and MLPs compute in.
    pub fn compute_kind(&self) -> Kind {
        self.compute.kind
    }

    /// Activation checkpointing of the Swin blocks.
    pub fn set_grad_checkpointing(&mut self, on: bool) {
        self.visual_encoder.set_grad_checkpointing(on);
    }

    /// Every tensor of recognize-anything's state dict of this model, by name: the
    /// variables of `var_store` (the one the model was built in), the buffers, and the tied
    /// tensors under each of their names.
    pub fn state_dict(&self, var_store: &nn::VarStore) -> Vec<(String, Tensor)> {
        let variables = var_store.variables();
        let mut tensors: Vec<(String, Tensor)> =
            variables.iter().map(|(name, t)| (name.clone(), t.shallow_clone())).collect();
        let buffers = self.visual_encoder.buffers().into_iter();
        tensors.extend(buffers.map(|(name, buffer)| (format!("visual_encoder.{name}"), buffer)));
        if let Some(caption) = &self.caption {
            tensors.extend(caption.buffers());
            let aliases = caption.aliases();
            for (name, tensor) in &variables {
                for (alias, canonical) in &aliases {
                    if let Some(rest) =
                        name.strip_prefix(canonical.as_str()).filter(|rest| rest.is_empty() || rest.starts_with('.'))
                    {
                        tensors.push((format!("{alias}{rest}"), tensor.shallow_clone()));
                    }
                }
            }
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        tensors
    }

    /// Names a checkpoint of this model gives tied tensors, with the variable each ties to.
    pub fn aliases(&self) -> Vec<(String, String)> {
        self.caption.as_ref().map(CaptionBranch::aliases).unwrap_or_default()
    }

    /// RAM's caption branch, when the model has it.
    pub fn caption(&self) -> Option<&CaptionBranch> {
        self.caption.as_ref()
    }

    /// The image tokens the head attends to, `(batch, 1 + tokens, width)`, the average token
    /// first: `image_proj` of the encoder's output (512 wide), or the output as it is
    /// (Tag2Text).
    pub fn image_embeds(&self, pixel_values: &Tensor) -> Tensor {
        let tokens = self.visual_encoder.forward(pixel_values);
        match &self.image_proj {
            Some(proj) => proj.forward(&tokens),
            None => tokens,
        }
    }

    /// Each image's tag queries, `(batch or 1, tags, hidden)`: RAM++'s mix of each tag's
    /// description embeddings through `wordvec_proj` and ReLU; RAM's and Tag2Text's are the
    /// same for every image.
    fn tag_queries(&self, image_embeds: &Tensor) -> Tensor {
        let (label_embed, reweight_scale, wordvec_proj) = match &self.queries {
            Queries::Learned { label_embed } => return label_embed.unsqueeze(0),
            Queries::ClipText { label_embed, reweight_scale: None, wordvec_proj } => {
                return wordvec_proj.forward(label_embed).relu().unsqueeze(0);
            }
            Queries::ClipText { label_embed, reweight_scale: Some(scale), wordvec_proj } => {
                (label_embed, scale, wordvec_proj)
            }
        };
        let average = image_embeds.select(1, 0);
        let average = &average / average.norm_scalaropt_dim(2, [-1i64].as_slice(), true);
        let similarity = average.matmul(&label_embed.tr()) * reweight_scale.exp();
        let (batch, tags, descriptions) = (average.size()[0], self.tags, self.descriptions);
        let weights = similarity.view([batch, tags, descriptions]).softmax(-1, Kind::Float);
        let rows = label_embed.view([tags, descriptions, EMBED_DIM]);
        let mixed = Tensor::einsum("btd,tdc->btc", &[weights, rows], None::<i64>);
        wordvec_proj.forward(&mixed).relu()
    }

    /// The head's outputs for `queries` (`(batch or 1, count, hidden)`) over the image
    /// tokens: `(batch, count, hidden)`.
    fn head_outputs(&self, queries: &Tensor, image_embeds: &Tensor) -> Tensor {
        let queries = queries.expand([image_embeds.size()[0], -1, -1], false);
        self.tagging_head.iter().fold(queries, |hidden, layer| layer.forward(&hidden, image_embeds, self.compute.kind))
    }

    /// The tag logits of images already embedded: `(batch, tags)`.
    pub fn tag_logits(&self, image_embeds: &Tensor) -> Tensor {
        let outputs = self.head_outputs(&self.tag_queries(image_embeds), image_embeds);
        match &self.fc {
            TagScorer::Shared(fc) => fc.forward(&outputs).squeeze_dim(-1),
            TagScorer::PerTag { weight, bias } => (outputs * weight).sum_dim_intlist(-1, false, Kind::Float) + bias,
        }
    }

    /// The tag logits of `pixel_values` (normalised, `image_res` square): `(batch, tags)`.
    pub fn logits(&self, pixel_values: &Tensor) -> Tensor {
        self.tag_logits(&self.image_embeds(pixel_values))
    }

    /// The head's logit of each image for each of `texts` (`(count, 512)` CLIP text
    /// embeddings, e.g. the batch's captions), queried through `wordvec_proj` and ReLU as
    /// tags are: `(batch, count)`. RAM++'s and RAM's: Tag2Text queries no CLIP embeddings.
    pub fn alignment_logits(&self, image_embeds: &Tensor, texts: &Tensor) -> Tensor {
        let (Queries::ClipText { wordvec_proj, .. }, TagScorer::Shared(fc)) = (&self.queries, &self.fc) else {
            panic!("alignment is RAM++'s and RAM's: Tag2Text has no CLIP text queries");
        };
        let queries = wordvec_proj.forward(&texts.to_kind(Kind::Float)).relu().unsqueeze(0);
        fc.forward(&self.head_outputs(&queries, image_embeds)).squeeze_dim(-1)
    }

    /// RAM++'s loss terms for images embedded as `image_embeds`: `tag`, the asymmetric loss
    /// of the tag logits against the multi-hot `targets` ([`tag_loss`]); `distill`
    /// ([`RamPlus::distill_loss`]); `align`, with the batch's caption embeddings `captions`,
    /// each image's own caption at its own row ([`RamPlus::align_loss`]).
    pub fn losses(
        &self,
        image_embeds: &Tensor,
        targets: &Tensor,
        teacher_image: &Tensor,
        captions: &Tensor,
    ) -> [Tensor; 3] {
        let tag = tag_loss(&self.tag_logits(image_embeds), targets);
        [tag, self.distill_loss(image_embeds, teacher_image), self.align_loss(image_embeds, captions, 0)]
    }

    /// `distill`: the mean L1 distance of the (unnormalised) average token to the teacher
    /// CLIP's image features `teacher_image`.
    pub fn distill_loss(&self, image_embeds: &Tensor, teacher_image: &Tensor) -> Tensor {
        image_embeds.select(1, 0).l1_loss(&teacher_image.to_kind(Kind::Float), tch::Reduction::Mean)
    }

    /// `align`: the asymmetric loss (gamma- 4, clip 0.05) of each image's logits for the
    /// caption embeddings `captions` (`(count, 512)`), summed; image `k`'s own caption is
    /// row `first_own + k` of `captions`, every other row a negative.
    pub fn align_loss(&self, image_embeds: &Tensor, captions: &Tensor, first_own: i64) -> Tensor {
        let alignment = self.alignment_logits(image_embeds, captions);
        let (rows, count) = (alignment.size()[0], alignment.size()[1]);
        let own = Tensor::arange_start(first_own, first_own + rows, (Kind::Int64, alignment.device()));
        let own = own.one_hot(count).to_kind(Kind::Float);
        asymmetric_loss(&alignment, &own, 0.0, 4.0, 0.05)
    }

    /// The label embeddings: `(tags x descriptions, 512)`, a tag's rows consecutive; or
    /// Tag2Text's learned queries, `(tags, hidden)`.
    pub fn label_embed(&self) -> &Tensor {
        match &self.queries {
            Queries::ClipText { label_embed, .. } | Queries::Learned { label_embed } => label_embed,
        }
    }

    /// exp(`reweight_scale`), RAM++'s inverse temperature of the description weights; 1 for
    /// RAM and Tag2Text, which weigh none.
    pub fn description_scale(&self) -> Tensor {
        match &self.queries {
            Queries::ClipText { reweight_scale: Some(scale), .. } => scale.exp(),
            _ => Tensor::ones([], (Kind::Float, self.label_embed().device())),
        }
    }
}

/// `tag`: the asymmetric loss (gamma- 7, gamma+ 0, clip 0.05) of tag `logits` against the
/// multi-hot `targets`, summed over images and tags, as RAM++ and RAM train their tagging head.
pub fn tag_loss(logits: &Tensor, targets: &Tensor) -> Tensor {
    asymmetric_loss(logits, targets, 0.0, 7.0, 0.05)
}
