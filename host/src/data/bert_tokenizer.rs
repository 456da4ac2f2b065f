//! The WordPiece tokenizer of RAM's and Tag2Text's text models: bert-base-uncased's, with
//! the two special tokens recognize-anything's `init_tokenizer` adds: `[DEC]`, the caption
//! decoder's first token, and `[ENC]`, the tag encoder's. Read with Hugging Face's
//! `tokenizers` crate from a folder's `tokenizer.json`, or from its `vocab.txt` through
//! `BertTokenizer`'s pipeline (lower-cased, accents stripped, split at whitespace and
//! punctuation, Chinese characters apart, `[CLS] ... [SEP]`).

use crate::files::FileError;
use std::path::Path;
use tch::Tensor;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, Model, Tokenizer};

/// The decoder's beginning of a caption (RAM's `bos_token`).
pub const DEC: &str = "[DEC]";
/// The tag encoder's first token.
pub const ENC: &str = "[ENC]";

/// How far texts are padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// To the longest of the batch (RAM's captions).
    Longest,
    /// To the longest allowed (RAM's tag strings).
    Full,
}

pub struct BertTokenizer {
    inner: Tokenizer,
    pad: i64,
    sep: i64,
    dec: i64,
    enc: i64,
}

impl std::fmt::Debug for BertTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BertTokenizer({} tokens)", self.inner.get_vocab_size(true))
    }
}

impl BertTokenizer {
    /// The tokenizer of `dir`: its `tokenizer.json`, or else its `vocab.txt`; `[DEC]` and
    /// `[ENC]` added where it lacks them.
    pub fn from_dir(dir: &Path) -> Result<Self, FileError> {
        let json = dir.join("tokenizer.json");
        let mut inner = if json.is_file() {
            Tokenizer::from_file(&json).map_err(|err| FileError::format(&json, err.to_string()))?
        } else {
            from_vocabulary(&dir.join("vocab.txt"))?
        };
        let added = [DEC, ENC].map(|token| AddedToken::from(token, true));
        inner.add_special_tokens(&added);
        let file = if json.is_file() { json } else { dir.join("vocab.txt") };
        let id = |token: &str| {
            inner
                .token_to_id(token)
                .map(i64::from)
                .ok_or_else(|| FileError::format(&file, format!("no `{token}` token: not a BERT vocabulary")))
        };
        let (pad, sep, dec, enc) = (id("[PAD]")?, id("[SEP]")?, id(DEC)?, id(ENC)?);
        id("[CLS]")?;
        Ok(BertTokenizer { inner, pad, sep, dec, enc })
    }

    /// Ids and attention mask, `(texts, length)` each, of `texts` as RAM tokenizes them:
    /// `[CLS] ... [SEP]`, cut to `max_tokens`, padded with `[PAD]` as `padding` says.
    pub fn encode(&self, texts: &[String], max_tokens: usize, padding: Padding) -> (Tensor, Tensor) {
        let encoded: Vec<Vec<i64>> = texts
            .iter()
            .map(|text| {
                let encoding = self.inner.encode(text.as_str(), true).expect("BERT's pipeline encodes any text");
                let mut ids: Vec<i64> = encoding.get_ids().iter().map(|&id| i64::from(id)).collect();
                // A single text cut as `truncation=True` cuts it: its first tokens, then `[SEP]`.
                if ids.len() > max_tokens {
                    ids.truncate(max_tokens - 1);
                    ids.push(self.sep);
                }
                ids
            })
            .collect();
        let length = match padding {
            Padding::Longest => encoded.iter().map(Vec::len).max().unwrap_or(0),
            Padding::Full => max_tokens,
        };
        let mut ids = Vec::with_capacity(texts.len() * length);
        let mut mask = Vec::with_capacity(texts.len() * length);
        for text in &encoded {
            ids.extend(text.iter().copied().chain(std::iter::repeat(self.pad)).take(length));
            mask.extend((0..length).map(|i| i64::from(i < text.len())));
        }
        let shape = [texts.len() as i64, length as i64];
        (Tensor::from_slice(&ids).view(shape), Tensor::from_slice(&mask).view(shape))
    }

    /// Writes the tokenizer, added tokens included, as `dir/tokenizer.json`, which
    /// [`BertTokenizer::from_dir`] reads back.
    pub fn save(&self, dir: &Path) -> Result<(), FileError> {
        std::fs::create_dir_all(dir).map_err(FileError::io(dir))?;
        let file = dir.join("tokenizer.json");
        self.inner.save(&file, false).map_err(|err| FileError::format(&file, err.to_string()))
    }

    /// `ids` as text, special tokens left out and word pieces joined.
    pub fn decode(&self, ids: &[i64]) -> String {
        let ids: Vec<u32> = ids.iter().map(|&id| id as u32).collect();
        self.inner.decode(&ids, true).unwrap_or_default()
    }

    pub fn dec_id(&self) -> i64 {
        self.dec
    }

    pub fn enc_id(&self) -> i64 {
        self.enc
    }

    /// The end of a caption.
    pub fn sep_id(&self) -> i64 {
        self.sep
    }

    pub fn pad_id(&self) -> i64 {
        self.pad
    }

    /// Tokens, the added ones included.
    pub fn vocab_size(&self) -> i64 {
        self.inner.get_vocab_size(true) as i64
    }
}

/// bert-base-uncased's pipeline over the WordPiece vocabulary `file`.
fn from_vocabulary(file: &Path) -> Result<Tokenizer, FileError> {
    let path = file.to_str().ok_or_else(|| FileError::format(file, "not a UTF-8 path"))?;
    let model = WordPiece::from_file(path)
        .unk_token("[UNK]".into())
        .build()
        .map_err(|err| FileError::format(file, err.to_string()))?;
    let vocabulary = model.get_vocab();
    let id = |token: &str| {
        vocabulary
            .get(token)
            .copied()
            .ok_or_else(|| FileError::format(file, format!("no `{token}` token: not a BERT vocabulary")))
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
        .with_pre_tokenizer(Some(BertPreTokenizer))
        .with_post_processor(Some(BertProcessing::new(("[SEP]".into(), sep), ("[CLS]".into(), cls))))
        .with_decoder(Some(WordPieceDecoder::default()));
    // As `BertTokenizer` has them: special, so decoding leaves them out.
    let special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].map(|token| AddedToken::from(token, true));
    tokenizer.add_special_tokens(&special);
    Ok(tokenizer)
}
