//! A recognize-anything style image tagger: CLIP's image tower, and a tag head whose tag
//! queries are the CLIP text embeddings of the tag names ("a photo of a {tag}."), frozen, so
//! that a tag the head never trained on is recognised through its name alone. Each query
//! attends over the image tokens and one shared classifier scores it.
//!
//! Queries are centred on the mean embedding of the vocabulary (and normalised again): the
//! prompts share every word but the tag, so raw embeddings differ little, most of all from
//! a text tower that has not been trained yet; centring keeps what tells tags apart. The
//! centre is stored with the model, so new tag names go through the same transform.
//!
//! Besides the student CLIP, the model keeps a frozen copy of the CLIP it started from, the
//! teacher of the distillation loss. Variable names: the student's are Hugging Face CLIP's
//! (`vision_model.*`, `text_model.*`, ...), the teacher's the same under `teacher.`, the
//! head's under `tag_head.`.

use super::clip::{Clip, ClipConfig};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// The `model_type` of a tagger's `config.json`.
pub const MODEL_TYPE: &str = "clip_tagger";
pub const TEACHER_PREFIX: &str = "teacher.";
pub const HEAD_PREFIX: &str = "tag_head.";
/// The variables made from the tag names and never trained: the queries and their centre.
pub const FIXED: [&str; 2] = ["tag_head.tag_queries", "tag_head.query_centre"];
/// What each tag name is put into before the text tower embeds it.
pub const TAG_PROMPT: &str = "a photo of a {}.";

/// A tagger's `config.json`: the CLIP it is built on and its tag vocabulary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaggerConfig {
    pub model_type: String,
    pub clip: ClipConfig,
    pub tags: Vec<String>,
    /// Attention heads of the tag head.
    pub head_heads: i64,
}

impl TaggerConfig {
    pub fn new(clip: ClipConfig, tags: Vec<String>) -> Self {
        TaggerConfig { model_type: MODEL_TYPE.to_string(), clip, tags, head_heads: 4 }
    }
}

/// One cross-attention block: tag queries attend over the image tokens, then an MLP, then
/// the classifier shared by all tags.
#[derive(Debug)]
struct TagHead {
    query_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    out_proj: nn::Linear,
    layer_norm: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    classifier: nn::Linear,
    heads: i64,
}

impl TagHead {
    fn new(path: nn::Path, query_dim: i64, token_dim: i64, heads: i64) -> Self {
        let hidden = token_dim;
        let linear = |name: &str, input: i64, output: i64| nn::linear(&path / name, input, output, Default::default());
        TagHead {
            query_proj: linear("query_proj", query_dim, hidden),
            k_proj: linear("k_proj", token_dim, hidden),
            v_proj: linear("v_proj", token_dim, hidden),
            out_proj: linear("out_proj", hidden, hidden),
            layer_norm: nn::layer_norm(&path / "layer_norm", vec![hidden], Default::default()),
            fc1: linear("fc1", hidden, 4 * hidden),
            fc2: linear("fc2", 4 * hidden, hidden),
            classifier: linear("classifier", hidden, 1),
            heads,
        }
    }

    /// Logits `(batch, tags)` for `queries` `(tags, query_dim)` over `tokens`
    /// `(batch, tokens, token_dim)`.
    fn forward(&self, queries: &Tensor, tokens: &Tensor) -> Tensor {
        let (batch, count, _) = tokens.size3().expect("image tokens are (batch, tokens, hidden)");
        let tags = queries.size()[0];
        let query = self.query_proj.forward(queries).unsqueeze(0).expand([batch, tags, -1], false);
        let hidden = query.size()[2];
        let split = |t: Tensor, length: i64| t.view([batch, length, self.heads, hidden / self.heads]).transpose(1, 2);
        let q = split(query.contiguous(), tags);
        let k = split(self.k_proj.forward(tokens), count);
        let v = split(self.v_proj.forward(tokens), count);
        let attended = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, None, false);
        let xs = query + self.out_proj.forward(&attended.transpose(1, 2).reshape([batch, tags, hidden]));
        let xs = &xs + self.fc2.forward(&self.fc1.forward(&self.layer_norm.forward(&xs)).gelu("none"));
        self.classifier.forward(&xs).squeeze_dim(-1)
    }
}

#[derive(Debug)]
pub struct Tagger {
    pub clip: Clip,
    teacher: Clip,
    /// `(tags, projection_dim)`: fixed once made from the tag names.
    tag_queries: Tensor,
    /// `(projection_dim,)`: the vocabulary's mean text embedding, subtracted from queries.
    query_centre: Tensor,
    head: TagHead,
}

impl Tagger {
    pub fn new(root: &nn::Path, config: &TaggerConfig) -> Self {
        let clip = Clip::new(root, &config.clip);
        let teacher = Clip::new(&(root / "teacher"), &config.clip);
        let head_path = root / "tag_head";
        let projection = config.clip.projection_dim;
        let tag_queries = head_path.zeros_no_train("tag_queries", &[config.tags.len() as i64, projection]);
        let query_centre = head_path.zeros_no_train("query_centre", &[projection]);
        let head = TagHead::new(head_path, projection, config.clip.vision_config.hidden_size, config.head_heads);
        Tagger { clip, teacher, tag_queries, query_centre, head }
    }

    /// Sets the tag queries to the text embeddings of `prompt_ids` (one tokenized prompt
    /// per tag) and the teacher to the student's current weights: the state a tagger
    /// starts training from.
    pub fn initialise_from_clip(&mut self, var_store: &nn::VarStore, prompt_ids: &Tensor) {
        tch::no_grad(|| {
            let embeddings = self.clip.text_embeddings(prompt_ids);
            self.query_centre.copy_(&embeddings.mean_dim(0, false, Kind::Float));
            self.tag_queries.copy_(&self.queries_for(&embeddings));
            let variables = var_store.variables();
            for (name, teacher) in &variables {
                if let Some(student) = name.strip_prefix(TEACHER_PREFIX) {
                    let mut teacher = teacher.shallow_clone();
                    teacher.copy_(&variables[student]);
                }
            }
        });
    }

    /// Tag logits `(batch, tags)`, and the student's normalised image embeddings, from one
    /// pass of the image tower.
    pub fn forward(&self, pixel_values: &Tensor) -> (Tensor, Tensor) {
        let (tokens, embeddings) = self.clip.image_tokens_and_embeddings(pixel_values);
        (self.head.forward(&self.tag_queries, &tokens.to_kind(Kind::Float)), embeddings)
    }

    /// Logits for tags whose prompts' text embeddings are `embeddings` instead of the
    /// trained vocabulary: open-set recognition of tags the head never saw.
    pub fn logits_for(&self, pixel_values: &Tensor, embeddings: &Tensor) -> Tensor {
        let (tokens, _) = self.clip.image_tokens_and_embeddings(pixel_values);
        self.head.forward(&self.queries_for(embeddings), &tokens.to_kind(Kind::Float))
    }

    fn queries_for(&self, embeddings: &Tensor) -> Tensor {
        let centred = embeddings - &self.query_centre;
        &centred / centred.norm_scalaropt_dim(2.0, [-1], true).clamp_min(1e-12)
    }

    /// The frozen teacher's normalised image embeddings.
    pub fn teacher_embeddings(&self, pixel_values: &Tensor) -> Tensor {
        tch::no_grad(|| self.teacher.image_embeddings(pixel_values))
    }
}

/// The asymmetric loss of Ridnik et al. (ASL) as RAM trains its tag head with it: negatives
/// with probability shifted by `clip` and focused with `gamma_neg`, positives with
/// `gamma_pos`, summed over images and tags (which is why this loss runs in the hundreds).
/// The focusing weight carries no gradient, as in recognize-anything's copy of ASL
/// (`disable_torch_grad_focal_loss=True`, its default there).
pub fn asymmetric_loss(logits: &Tensor, targets: &Tensor, gamma_pos: f64, gamma_neg: f64, clip: f64) -> Tensor {
    const EPS: f64 = 1e-8;
    let probability = logits.sigmoid();
    let negatives: Tensor = 1.0 - targets;
    let negative: Tensor = (probability.neg() + (1.0 + clip)).clamp_max(1.0);
    let log_likelihood = targets * probability.clamp_min(EPS).log() + &negatives * negative.clamp_min(EPS).log();
    let p_true = &probability * targets + &negative * &negatives;
    let gamma = targets * gamma_pos + &negatives * gamma_neg;
    let focus = (p_true.neg() + 1.0).pow(&gamma).detach();
    -(log_likelihood * focus).sum(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn asymmetric_loss_is_binary_cross_entropy_without_focusing_or_shift() {
        let logits = Tensor::from_slice(&[2.0f32, -1.0, 0.5, -3.0]).view([2, 2]);
        let targets = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
        let asl = asymmetric_loss(&logits, &targets, 0.0, 0.0, 0.0).double_value(&[]);
        let bce = logits.binary_cross_entropy_with_logits::<Tensor>(&targets, None, None, tch::Reduction::Sum);
        assert!((asl - bce.double_value(&[])).abs() < 1e-5, "{asl} vs {bce}");
        // Focusing and the shift only ever lower the loss of negatives.
        assert!(asymmetric_loss(&logits, &targets, 0.0, 4.0, 0.05).double_value(&[]) < asl);
    }

    #[test]
    fn queries_come_from_the_tag_names_and_the_teacher_from_the_student() {
        tch::manual_seed(1);
        let clip = ClipConfig::tiny(20, 6, 1, 19, 0);
        let config = TaggerConfig::new(clip, vec!["a".into(), "b".into(), "c".into()]);
        let var_store = nn::VarStore::new(Device::Cpu);
        let mut tagger = Tagger::new(&var_store.root(), &config);
        let prompts = Tensor::from_slice(&[1i64, 4, 19, 0, 0, 0, 1, 5, 19, 0, 0, 0, 1, 6, 19, 0, 0, 0]).view([3, 6]);
        tagger.initialise_from_clip(&var_store, &prompts);
        let pixels = Tensor::randn([2, 3, 28, 28], (Kind::Float, Device::Cpu));
        let (logits, student) = tagger.forward(&pixels);
        assert_eq!(logits.size(), [2, 3]);
        let teacher = tagger.teacher_embeddings(&pixels);
        assert!((&student - &teacher).abs().max().double_value(&[]) < 1e-6, "the teacher starts as the student");
        // Two of the three tags asked again by name: the same logits.
        let again = tagger.logits_for(&pixels, &tagger.clip.text_embeddings(&prompts.narrow(0, 1, 2)));
        assert!((again - logits.narrow(1, 1, 2)).abs().max().double_value(&[]) < 1e-5);
        let variables = var_store.variables();
        assert!(FIXED.iter().all(|name| !variables[*name].requires_grad()), "the queries are frozen");
    }
}
