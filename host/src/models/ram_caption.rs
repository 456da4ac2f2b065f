//! RAM's caption branch (recognize-anything's `ram/models/ram.py`, Tag2Text's alike), under
//! its state-dict names, so that `ram_swin_large_14m.pth` loads whole:
//!
//! - `tag_encoder`: a [`BertTextModel`] (BERT-base of `med_config.json`, its cross-attention
//!   reading the image tokens: RAM's 512-wide embeddings, Tag2Text's Swin tokens) over the
//!   tag string `tag | tag`, padded to 40 tokens, its first token `[ENC]`. `tie_encoder_decoder_weights(tag_encoder,
//!   tagging_head)` makes the cross-attention and feed-forward blocks of its first layers
//!   *the* tagging head's layers, so training either branch trains both;
//! - `text_decoder`: a [`BertLmHead`] over the caption, its first token `[DEC]`, attending
//!   to every token of the tag encoder's output (padding too: RAM passes no mask there);
//! - `t2t`: the decoder's language-model loss (label smoothing 0.1), with the first
//!   [`PROMPT_TOKENS`] tokens and the padding left out, as `RAM.forward` computes it.
//!
//! The state dict also names tied tensors twice (the shared blocks under `tag_encoder.` and
//! `tagging_head.`, the decoder's output weights under `cls.predictions.decoder.` and as the
//! word embeddings) and holds each embedding's `position_ids` buffer: [`aliases`] and
//! [`buffers`] list those, so that a checkpoint's copies are read as the tensor they tie to
//! and a saved state dict is complete for recognize-anything's strict load.
//!
//! A checkpoint's shapes give the text model's widths, depth and vocabulary; its head count
//! they do not, and it is BERT's 64-wide heads ([`HEAD_WIDTH`]), 12 at BERT-base's 768.

use super::bert::{
    BertConfig, BertCrossLayer, BertLmHead, BertTextConfig, BertTextModel, DecoderCache, HEAD_WIDTH, IGNORED,
    language_model_loss,
};
use super::text_generation::{self, Search};
use crate::files::FileError;
use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor, nn};

/// Tokens of `a picture of ` before its `[SEP]` (`[CLS] a picture of`): the targets RAM
/// leaves out at the start of every caption.
pub const PROMPT_TOKENS: i64 = 4;
/// RAM's `max_length` of the tag string and of captions, in tokens.
pub const MAX_TOKENS: i64 = 40;
/// The text captions continue.
pub const PROMPT: &str = "a picture of ";

/// How recognize-anything's inference captions with Tag2Text (`inference_tag2text`, the
/// only `generate` of the three models): 3 beams, 50 tokens at most (`generate`'s own default
/// is 30) and 10 at least, the prompt included, no length penalty nor repetition penalty,
/// ending at `[SEP]`, `eos`.
pub fn caption_search(eos: i64) -> Search {
    Search { beams: 3, max_length: 50, min_length: 10, length_penalty: 1.0, eos }
}
/// The end of the names of the embeddings' position buffers.
pub const POSITION_IDS: &str = "embeddings.position_ids";
const TAG_ENCODER: &str = "tag_encoder";
const TEXT_DECODER: &str = "text_decoder";
/// What the tied blocks of the tag encoder's layers are made of.
const SHARED_BLOCKS: [&str; 3] = ["crossattention", "intermediate", "output"];

/// The text model's shape read from a checkpoint's `tag_encoder.*` tensors; `None` when it
/// has none (RAM++, or RAM's tagging branch saved alone).
pub fn text_config_of(file: &Path, tensors: &HashMap<String, Tensor>) -> Result<Option<BertTextConfig>, FileError> {
    let words = format!("{TAG_ENCODER}.embeddings.word_embeddings.weight");
    let Some(words) = tensors.get(&words) else { return Ok(None) };
    let bad = |problem: String| FileError::format(file, problem);
    let shape = |name: &str| {
        tensors
            .get(name)
            .map(Tensor::size)
            .ok_or_else(|| bad(format!("no tensor `{name}`: RAM's caption branch is incomplete")))
    };
    let (vocab_size, hidden_size) = (words.size()[0], words.size()[1]);
    let layer = format!("{TAG_ENCODER}.encoder.layer.0");
    let num_hidden_layers = tensors
        .keys()
        .filter_map(|name| {
            name.strip_prefix(&format!("{TAG_ENCODER}.encoder.layer."))?.split('.').next()?.parse::<i64>().ok()
        })
        .max()
        .map_or(0, |last| last + 1);
    if hidden_size % HEAD_WIDTH != 0 {
        return Err(bad(format!(
            "`tag_encoder` is {hidden_size} wide, not a multiple of BERT's {HEAD_WIDTH}-wide heads"
        )));
    }
    let config = BertTextConfig {
        layers: BertConfig {
            hidden_size,
            num_hidden_layers,
            num_attention_heads: hidden_size / HEAD_WIDTH,
            intermediate_size: shape(&format!("{layer}.intermediate.dense.weight"))?[0],
            layer_norm_eps: 1e-12,
            encoder_width: shape(&format!("{TEXT_DECODER}.bert.encoder.layer.0.crossattention.self.key.weight"))?[1],
        },
        vocab_size,
        max_position_embeddings: shape(&format!("{TAG_ENCODER}.embeddings.position_embeddings.weight"))?[0],
    };
    Ok(Some(config))
}

/// The tag encoder and the caption decoder.
#[derive(Debug)]
pub struct CaptionBranch {
    tag_encoder: BertTextModel,
    text_decoder: BertLmHead,
    config: BertTextConfig,
    tied_layers: usize,
}

impl CaptionBranch {
    /// The branch at `path` (the model's root), its tag encoder's first layers sharing
    /// `head_layers`, the tagging head's, and attending to image tokens `image_width` wide.
    pub fn new(path: &nn::Path, config: &BertTextConfig, head_layers: &[BertCrossLayer], image_width: i64) -> Self {
        // The tag encoder reads the image embeddings; the decoder, the tag encoder's tokens.
        let encoder_config = BertTextConfig {
            layers: BertConfig { encoder_width: image_width, ..config.layers.clone() },
            ..config.clone()
        };
        CaptionBranch {
            tag_encoder: BertTextModel::new(&(path / TAG_ENCODER), &encoder_config, false, head_layers),
            text_decoder: BertLmHead::new(&(path / TEXT_DECODER), config),
            config: config.clone(),
            tied_layers: head_layers.len(),
        }
    }

    /// The tag encoder's tokens, `(batch, tag tokens, hidden)`, of `tag_ids` (their first
    /// token already `[ENC]`) with `tag_mask`, over `image_embeds`.
    pub fn encode_tags(&self, tag_ids: &Tensor, tag_mask: &Tensor, image_embeds: &Tensor, compute: Kind) -> Tensor {
        self.tag_encoder.forward(tag_ids, tag_mask, image_embeds, compute)
    }

    /// The decoder's next-token logits, `(batch, tokens, vocab)`, of `caption_ids` (their
    /// first token `[DEC]`) with `caption_mask`, over the tag encoder's `tag_tokens`.
    pub fn caption_logits(
        &self,
        caption_ids: &Tensor,
        caption_mask: &Tensor,
        tag_tokens: &Tensor,
        compute: Kind,
    ) -> Tensor {
        self.text_decoder.logits(caption_ids, caption_mask, tag_tokens, compute)
    }

    /// `t2t`: the decoder's loss for `caption_ids` with `caption_mask` over `tag_tokens`,
    /// averaged over the counted targets (`Mean`, as RAM) or summed.
    pub fn t2t_loss(
        &self,
        caption_ids: &Tensor,
        caption_mask: &Tensor,
        tag_tokens: &Tensor,
        compute: Kind,
        reduction: tch::Reduction,
    ) -> Tensor {
        let logits = self.caption_logits(caption_ids, caption_mask, tag_tokens, compute);
        language_model_loss(&logits, &caption_targets(caption_ids, caption_mask), reduction)
    }

    /// Captions of the images whose tag encoder tokens are `tag_tokens` (`(batch, tag
    /// tokens, hidden)`), continuing `prompt` (ids, `[DEC]` first) as `search` says: each
    /// image's ids, the prompt first, up to and with the end token when there is one.
    /// Captions are cut at the decoder's positions. Each step computes the new token alone,
    /// over the keys and values the steps before kept.
    pub fn generate(&self, tag_tokens: &Tensor, prompt: &[i64], search: &Search, compute: Kind) -> Vec<Vec<i64>> {
        let device = tag_tokens.device();
        let positions = self.config.max_position_embeddings as usize;
        let search = &Search { max_length: search.max_length.min(positions), ..*search };
        let prompts = vec![prompt.to_vec(); tag_tokens.size()[0] as usize];
        let mut cache: Option<DecoderCache> = None;
        tch::no_grad(|| {
            text_generation::generate(&prompts, search, |prefixes| {
                let ids = prefixes.ids.to_device(device);
                // The new token over the kept keys and values; else the whole prefixes over
                // each row's image's tag tokens.
                let (logits, next) = match (&prefixes.extends, cache.take()) {
                    (Some(rows), Some(previous)) => {
                        let kept = previous.rows(&Tensor::from_slice(rows).to_device(device));
                        let new_ids = ids.narrow(1, ids.size()[1] - 1, 1);
                        self.text_decoder.decode(&new_ids, Some(kept), &Tensor::new(), compute)
                    }
                    _ => {
                        let rows_per_image = ids.size()[0] / prefixes.inputs.len() as i64;
                        let images: Vec<i64> = prefixes.inputs.iter().map(|&image| image as i64).collect();
                        let index = Tensor::from_slice(&images).to_device(device).repeat_interleave_self_int(
                            rows_per_image,
                            0,
                            None,
                        );
                        self.text_decoder.decode(&ids, None, &tag_tokens.index_select(0, &index), compute)
                    }
                };
                cache = Some(next);
                logits.log_softmax(-1, Kind::Float)
            })
        })
    }

    /// Names of the checkpoint that are another tensor of this branch, with the name of the
    /// variable they tie to.
    pub fn aliases(&self) -> Vec<(String, String)> {
        let mut aliases = vec![
            (
                format!("{TEXT_DECODER}.cls.predictions.decoder.weight"),
                format!("{TEXT_DECODER}.bert.embeddings.word_embeddings.weight"),
            ),
            (format!("{TEXT_DECODER}.cls.predictions.decoder.bias"), format!("{TEXT_DECODER}.cls.predictions.bias")),
        ];
        for layer in 0..self.tied_layers {
            for block in SHARED_BLOCKS {
                aliases.push((
                    format!("{TAG_ENCODER}.encoder.layer.{layer}.{block}"),
                    format!("tagging_head.encoder.layer.{layer}.{block}"),
                ));
            }
        }
        aliases
    }

    /// The `position_ids` buffers of both embeddings, as the state dict holds them.
    pub fn buffers(&self) -> Vec<(String, Tensor)> {
        let positions =
            Tensor::arange(self.config.max_position_embeddings, (Kind::Int64, tch::Device::Cpu)).unsqueeze(0);
        [format!("{TAG_ENCODER}.{POSITION_IDS}"), format!("{TEXT_DECODER}.bert.{POSITION_IDS}")]
            .into_iter()
            .map(|name| (name, positions.copy()))
            .collect()
    }
}

/// The variable a checkpoint's tensor `name` loads into, given the branch's `aliases`
/// (prefixes of tied blocks, or whole names): the name itself when it is no alias.
pub fn canonical_name(name: &str, aliases: &[(String, String)]) -> String {
    for (alias, canonical) in aliases {
        if name == alias {
            return canonical.clone();
        }
        if let Some(rest) = name.strip_prefix(alias.as_str()).filter(|rest| rest.starts_with('.')) {
            return format!("{canonical}{rest}");
        }
    }
    name.to_string()
}

/// RAM's decoder targets: the caption's ids, with padding and the first [`PROMPT_TOKENS`]
/// positions [`IGNORED`].
pub fn caption_targets(caption_ids: &Tensor, caption_mask: &Tensor) -> Tensor {
    let targets = caption_ids.masked_fill(&caption_mask.eq(0), IGNORED);
    let prompt = PROMPT_TOKENS.min(targets.size()[1]);
    let _ = targets.narrow(1, 0, prompt).fill_(IGNORED);
    targets
}
