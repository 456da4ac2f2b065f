//! Captions for labelled images: each class name put into prompt templates ("a photo of a
//! {}."), and a word-level tokenizer over exactly the words those captions use, with
//! CLIP's layout of start token, words, end token, padding.

use super::clip_tokenizer::ClipTokenizer;
use std::collections::BTreeMap;
use tch::Tensor;

/// Prompt templates; `{}` stands for the class name. Training draws one per sample;
/// zero-shot evaluation averages the embeddings of all of them, as CLIP does.
pub const TEMPLATES: [&str; 8] = [
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a cropped photo of the {}.",
];

pub const PAD_ID: i64 = 0;
pub const START_ID: i64 = 1;
pub const END_ID: i64 = 2;

/// Splits lower-cased text into words and single punctuation marks.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for ch in text.to_lowercase().chars() {
        if ch.is_alphanumeric() {
            word.push(ch);
            continue;
        }
        if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        if !ch.is_whitespace() {
            out.push(ch.to_string());
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Word-level tokenizer whose vocabulary is the words of a fixed set of captions.
#[derive(Debug, Clone)]
pub struct PromptTokenizer {
    vocab: BTreeMap<String, i64>,
    context_length: usize,
}

impl PromptTokenizer {
    /// Builds the vocabulary of `captions`; the context fits the longest one.
    pub fn fit<'a>(captions: impl IntoIterator<Item = &'a str>) -> Self {
        let mut vocab = BTreeMap::new();
        let mut longest = 0;
        for caption in captions {
            let caption_words = words(caption);
            longest = longest.max(caption_words.len());
            for word in caption_words {
                let next = END_ID + 1 + vocab.len() as i64;
                vocab.entry(word).or_insert(next);
            }
        }
        PromptTokenizer { vocab, context_length: longest + 2 }
    }

    pub fn vocab_size(&self) -> i64 {
        END_ID + 1 + self.vocab.len() as i64
    }

    pub fn context_length(&self) -> i64 {
        self.context_length as i64
    }

    /// Ids of `text`: start, words, end, then padding to the context length. `None` when
    /// a word is not in the vocabulary or the text does not fit.
    pub fn encode(&self, text: &str) -> Option<Vec<i64>> {
        let mut ids = vec![START_ID];
        for word in words(text) {
            ids.push(*self.vocab.get(&word)?);
        }
        ids.push(END_ID);
        if ids.len() > self.context_length {
            return None;
        }
        ids.resize(self.context_length, PAD_ID);
        Some(ids)
    }
}

/// Token ids of every (class, template) caption: `(classes, templates, context)`.
#[derive(Debug)]
pub struct CaptionTable {
    /// `(classes, templates, context)`, `i64`, on the CPU.
    pub ids: Tensor,
    /// Size of the vocabulary the ids come from.
    pub vocab_size: i64,
}

fn captions(class_names: &[&str]) -> Vec<String> {
    class_names.iter().flat_map(|name| TEMPLATES.iter().map(move |template| template.replace("{}", name))).collect()
}

impl CaptionTable {
    /// Captions tokenized with a word-level vocabulary fitted to them (for models trained
    /// from scratch).
    pub fn new(class_names: &[&str]) -> Self {
        let captions = captions(class_names);
        let tokenizer = PromptTokenizer::fit(captions.iter().map(String::as_str));
        let ids: Vec<i64> = captions
            .iter()
            .flat_map(|caption| tokenizer.encode(caption).expect("the vocabulary was fitted on these captions"))
            .collect();
        let shape = [class_names.len() as i64, TEMPLATES.len() as i64, tokenizer.context_length()];
        CaptionTable { ids: Tensor::from_slice(&ids).view(shape), vocab_size: tokenizer.vocab_size() }
    }

    /// Captions tokenized as OpenAI CLIP does, cut to the longest caption (at most
    /// `max_context` tokens), for pretrained CLIP models.
    pub fn with_clip_tokenizer(class_names: &[&str], tokenizer: &ClipTokenizer, max_context: usize) -> Self {
        let captions = captions(class_names);
        let longest = captions.iter().map(|caption| tokenizer.encode(caption).len() + 2).max().unwrap_or(2);
        let context = longest.min(max_context);
        let ids: Vec<i64> = captions.iter().flat_map(|caption| tokenizer.tokenize(caption, context)).collect();
        let shape = [class_names.len() as i64, TEMPLATES.len() as i64, context as i64];
        CaptionTable { ids: Tensor::from_slice(&ids).view(shape), vocab_size: tokenizer.vocab_size() }
    }

    /// Tokens per caption.
    pub fn context_length(&self) -> i64 {
        self.ids.size()[2]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_encode_with_start_end_and_padding() {
        let tokenizer = PromptTokenizer::fit(["a photo of a t-shirt.", "a bag"]);
        let ids = tokenizer.encode("A bag").unwrap();
        assert_eq!(ids.len(), 10); // "a photo of a t - shirt ." is 8 tokens, plus start and end.
        assert_eq!(ids[0], START_ID);
        assert_eq!(ids[3], END_ID);
        assert!(ids[4..].iter().all(|&id| id == PAD_ID));
        assert_eq!(tokenizer.encode("a photo of a t-shirt.").unwrap()[1], ids[1]);
    }

    #[test]
    fn unknown_words_and_overlong_text_are_refused() {
        let tokenizer = PromptTokenizer::fit(["a bag"]);
        assert!(tokenizer.encode("a shoe").is_none());
        assert!(tokenizer.encode("a bag a bag").is_none());
    }

    #[test]
    fn table_holds_every_class_and_template() {
        let table = CaptionTable::new(&["bag", "ankle boot"]);
        assert_eq!(table.ids.size(), [2, TEMPLATES.len() as i64, table.context_length()]);
    }
}
