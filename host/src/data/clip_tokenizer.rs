//! OpenAI CLIP's tokenizer: byte-level BPE over lower-cased, cleaned text, with start and end
//! tokens, context 77 and truncation, giving the ids `open_clip` and OpenAI's `clip` give
//! (checked against golden ids made by `tests/fixtures/tokenizer/make_golden.py`).
//!
//! Cleaning follows `basic_clean` + `whitespace_clean` + lower-casing. Of `ftfy.fix_text`
//! it applies what changes text that is not mojibake: curly quotes made straight, Latin
//! ligatures expanded, full-width characters made normal width, NFC normalisation. HTML
//! entities are unescaped (the named ones CLIP captions use, and numeric ones). Mojibake
//! repair is left out.

use crate::files::FileError;
use flate2::read::GzDecoder;
use regex::Regex;
use serde::Deserialize;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use unicode_normalization::UnicodeNormalization;

/// Where `make` puts OpenAI's BPE merges (from the `open_clip_torch` wheel).
pub fn default_bpe_path() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cache/trainer/open_clip/bpe_simple_vocab_16e6.txt.gz"))
}

pub const CONTEXT_LENGTH: usize = 77;
const START: &str = "<start_of_text>";
const END: &str = "<end_of_text>";
/// The same tokens as Hugging Face's CLIP tokenizers spell them.
const HF_START: &str = "<|startoftext|>";
const HF_END: &str = "<|endoftext|>";

/// The file name of a Hugging Face tokenizer in a model folder.
pub const TOKENIZER_JSON: &str = "tokenizer.json";

/// The parts of a `tokenizer.json` a CLIP tokenizer needs.
#[derive(Deserialize)]
struct TokenizerFile {
    model: TokenizerModel,
    #[serde(default)]
    added_tokens: Vec<AddedToken>,
}

#[derive(Deserialize)]
struct TokenizerModel {
    #[serde(rename = "type")]
    kind: String,
    vocab: HashMap<String, i64>,
    merges: Vec<Merge>,
    end_of_word_suffix: Option<String>,
}

#[derive(Deserialize)]
struct AddedToken {
    id: i64,
    content: String,
}

/// Merges are `"a b"` strings in older files and `["a", "b"]` pairs in newer ones.
#[derive(Deserialize)]
#[serde(untagged)]
enum Merge {
    Pair(String, String),
    Joined(String),
}
/// Merges used by CLIP: the file's lines 1..=48894 (49152 - 256 - 2).
const MERGES: usize = 49152 - 256 - 2;

#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    encoder: HashMap<String, i64>,
    ranks: HashMap<(String, String), usize>,
    byte_encoder: [char; 256],
    pattern: Regex,
    /// The start and end tokens as written in text.
    special: [String; 2],
    /// Whole words that are one token each (`--new-tokens`, or a folder's `tokenizer.json`),
    /// by their cleaned spelling.
    added: HashMap<String, i64>,
    pub start_id: i64,
    pub end_id: i64,
}

/// A word [`ClipTokenizer::add_words`] made one token.
#[derive(Debug, Clone, PartialEq)]
pub struct NewWord {
    pub word: String,
    pub id: i64,
    /// Its ids before, whose embeddings the new one starts as the mean of.
    pub pieces: Vec<i64>,
}

/// GPT-2's reversible map from bytes to printable characters.
fn bytes_to_unicode() -> ([char; 256], Vec<u8>) {
    let mut order: Vec<u8> = (b'!'..=b'~').chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut chars = [' '; 256];
    for &b in &order {
        chars[b as usize] = char::from(b);
    }
    let mut next = 0u32;
    for b in 0..=255u8 {
        if !order.contains(&b) {
            order.push(b);
            chars[b as usize] = char::from_u32(256 + next).expect("below the surrogates");
            next += 1;
        }
    }
    (chars, order)
}

impl ClipTokenizer {
    /// Reads OpenAI's `bpe_simple_vocab_16e6.txt.gz`.
    pub fn from_bpe_file(path: &Path) -> Result<Self, FileError> {
        let mut text = String::new();
        let read = std::fs::File::open(path).and_then(|file| GzDecoder::new(file).read_to_string(&mut text));
        read.map_err(FileError::io(path))?;
        let merges: Vec<(String, String)> = text
            .split('\n')
            .skip(1)
            .take(MERGES)
            .map(|line| {
                let mut parts = line.split_whitespace();
                match (parts.next(), parts.next()) {
                    (Some(a), Some(b)) => Ok((a.to_string(), b.to_string())),
                    _ => Err(FileError::format(path, format!("bad merge line `{line}`"))),
                }
            })
            .collect::<Result<_, _>>()?;
        if merges.len() != MERGES {
            let problem = format!("{} merges, CLIP needs {MERGES}", merges.len());
            return Err(FileError::format(path, problem));
        }
        let (byte_encoder, order) = bytes_to_unicode();
        let mut vocab: Vec<String> = order.iter().map(|&b| byte_encoder[b as usize].to_string()).collect();
        vocab.extend(order.iter().map(|&b| format!("{}</w>", byte_encoder[b as usize])));
        vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        vocab.extend([START.to_string(), END.to_string()]);
        let encoder: HashMap<String, i64> = vocab.into_iter().enumerate().map(|(i, token)| (token, i as i64)).collect();
        Ok(ClipTokenizer::new(encoder, merges, [START.to_string(), END.to_string()]))
    }

    /// Reads a Hugging Face `tokenizer.json` of CLIP's kind (byte-level BPE with `</w>` word
    /// ends, start and end tokens `<|startoftext|>` and `<|endoftext|>`), so a model folder's
    /// own vocabulary and ids are used.
    pub fn from_tokenizer_json(path: &Path) -> Result<Self, FileError> {
        let text = std::fs::read_to_string(path).map_err(FileError::io(path))?;
        let file: TokenizerFile = serde_json::from_str(&text)
            .map_err(|err| FileError::format(path, format!("not a tokenizer.json: {err}")))?;
        let model = file.model;
        if model.kind != "BPE" || model.end_of_word_suffix.as_deref() != Some("</w>") {
            return Err(FileError::format(path, "not a CLIP tokenizer (expected BPE with `</w>` word ends)"));
        }
        let mut encoder = model.vocab;
        let special = [HF_START, HF_END].map(String::from);
        let (specials, words): (Vec<AddedToken>, Vec<AddedToken>) =
            file.added_tokens.into_iter().partition(|token| special.contains(&token.content));
        encoder.extend(specials.into_iter().map(|token| (token.content, token.id)));
        if let Some(missing) = special.iter().find(|token| !encoder.contains_key(*token)) {
            return Err(FileError::format(path, format!("no `{missing}` token")));
        }
        let merges = model
            .merges
            .into_iter()
            .map(|merge| match merge {
                Merge::Pair(a, b) => Ok((a, b)),
                Merge::Joined(line) => match line.split_once(' ') {
                    Some((a, b)) => Ok((a.to_string(), b.to_string())),
                    None => Err(FileError::format(path, format!("bad merge `{line}`"))),
                },
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Added words stand in the vocabulary too (see `updated_tokenizer_json`); they are
        // matched as whole words, never as BPE pieces.
        for word in &words {
            encoder.remove(&word.content);
        }
        let mut tokenizer = ClipTokenizer::new(encoder, merges, special);
        tokenizer.added = words.into_iter().map(|token| (clean(&token.content), token.id)).collect();
        Ok(tokenizer)
    }

    fn new(encoder: HashMap<String, i64>, merges: Vec<(String, String)>, special: [String; 2]) -> Self {
        let (byte_encoder, _) = bytes_to_unicode();
        let ranks = merges.into_iter().enumerate().map(|(rank, pair)| (pair, rank)).collect();
        let [start, end] = special.each_ref().map(|token| regex::escape(token));
        let pattern = Regex::new(&format!(
            r"(?i){start}|{end}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+"
        ))
        .expect("the pattern is valid");
        ClipTokenizer {
            start_id: encoder[&special[0]],
            end_id: encoder[&special[1]],
            encoder,
            ranks,
            byte_encoder,
            pattern,
            special,
            added: HashMap::new(),
        }
    }

    pub fn vocab_size(&self) -> i64 {
        (self.encoder.len() + self.added.len()) as i64
    }

    /// Makes each of `words` one token, as `transformers`' `add_tokens` with whole-word
    /// tokens does, and returns those it added: a word that is one token already is left as
    /// it is. The new ids come before the end token, which moves to the last id, because
    /// OWL-ViT pools its text at the largest id; `end_id` changes accordingly. A word must
    /// be letters only, so that it is one piece of the text (not split at punctuation).
    pub fn add_words(&mut self, words: &[String]) -> Result<Vec<NewWord>, String> {
        if self.end_id != self.vocab_size() - 1 {
            return Err(format!("the end token (id {}) is not the vocabulary's last id", self.end_id));
        }
        let mut added = Vec::new();
        for word in words {
            let cleaned = clean(word);
            if cleaned.is_empty() || !cleaned.chars().all(char::is_alphabetic) {
                return Err(format!("`{word}`: a new token is one word of letters"));
            }
            let pieces = self.encode(&cleaned);
            if pieces.len() == 1 {
                continue;
            }
            if self.encoder.contains_key(&cleaned) {
                return Err(format!("`{word}` is spelt as a piece of the vocabulary already, which it would replace"));
            }
            let id = self.end_id;
            self.end_id += 1;
            self.added.insert(cleaned.clone(), id);
            added.push(NewWord { word: cleaned, id, pieces });
        }
        self.encoder.insert(self.special[1].clone(), self.end_id);
        Ok(added)
    }

    /// `file` (a folder's `tokenizer.json`, as JSON) with this tokenizer's added words and end
    /// token id: the words as whole-word added tokens, the end token renumbered wherever the
    /// file names its id (vocabulary, added tokens, post-processor, padding). The words enter
    /// the model's vocabulary too, under their ids: the `tokenizers` library numbers an added
    /// token that is not in it after the vocabulary, whatever id the file gives.
    pub fn updated_tokenizer_json(&self, mut file: serde_json::Value) -> serde_json::Value {
        let end = &self.special[1];
        if let Some(vocab) = file.pointer_mut("/model/vocab").and_then(|vocab| vocab.as_object_mut()) {
            vocab.insert(end.clone(), self.end_id.into());
            vocab.extend(self.added.iter().map(|(word, &id)| (word.clone(), id.into())));
        }
        let mut known = std::collections::HashSet::new();
        if let Some(tokens) = file.get_mut("added_tokens").and_then(|tokens| tokens.as_array_mut()) {
            for token in tokens.iter_mut() {
                let content = token["content"].as_str().unwrap_or_default().to_string();
                if &content == end {
                    token["id"] = self.end_id.into();
                }
                known.insert(content);
            }
            let mut words: Vec<(&String, &i64)> =
                self.added.iter().filter(|(word, _)| !known.contains(*word)).collect();
            words.sort_by_key(|(_, id)| **id);
            tokens.extend(words.into_iter().map(|(word, id)| {
                serde_json::json!({"id": id, "content": word, "single_word": true, "lstrip": false, "rstrip": false,
                                   "normalized": true, "special": false})
            }));
        }
        for field in ["sep", "cls"] {
            if let Some(pair) = file.pointer_mut(&format!("/post_processor/{field}"))
                && pair.get(0).and_then(|token| token.as_str()) == Some(end.as_str())
            {
                pair[1] = self.end_id.into();
            }
        }
        if file.pointer("/padding/pad_token").and_then(|token| token.as_str()) == Some(end.as_str()) {
            file["padding"]["pad_id"] = self.end_id.into();
        }
        file
    }

    /// Ids of `text` without start and end tokens.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let text = clean(text);
        let mut ids = Vec::new();
        for piece in self.pattern.find_iter(&text) {
            let piece = piece.as_str();
            if self.special.iter().any(|token| token == piece) {
                ids.push(self.encoder[piece]);
                continue;
            }
            if let Some(&id) = self.added.get(piece) {
                ids.push(id);
                continue;
            }
            let mapped: Vec<String> = piece.bytes().map(|b| self.byte_encoder[b as usize].to_string()).collect();
            ids.extend(self.bpe(mapped).iter().map(|token| self.encoder[token.as_str()]));
        }
        ids
    }

    /// Start, the ids of `text`, end, cut to `context_length` (the last kept id becomes the end
    /// token) and padded with zeros, as `open_clip.tokenize` does.
    pub fn tokenize(&self, text: &str, context_length: usize) -> Vec<i64> {
        let mut ids = vec![self.start_id];
        ids.extend(self.encode(text));
        ids.push(self.end_id);
        if ids.len() > context_length {
            ids.truncate(context_length);
            ids[context_length - 1] = self.end_id;
        }
        ids.resize(context_length, 0);
        ids
    }

    /// Merges the pair of lowest rank until none applies.
    fn bpe(&self, mut word: Vec<String>) -> Vec<String> {
        if let Some(last) = word.last_mut() {
            last.push_str("</w>");
        }
        while word.len() > 1 {
            let best = word
                .windows(2)
                .filter_map(|pair| self.ranks.get(&(pair[0].clone(), pair[1].clone())).map(|&rank| (rank, pair)))
                .min_by_key(|(rank, _)| *rank);
            let Some((_, pair)) = best else { break };
            let (first, second) = (pair[0].clone(), pair[1].clone());
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == first && word[i + 1] == second {
                    merged.push(format!("{first}{second}"));
                    i += 2;
                } else {
                    merged.push(std::mem::take(&mut word[i]));
                    i += 1;
                }
            }
            word = merged;
        }
        word
    }
}

/// `whitespace_clean(basic_clean(text)).lower()` of OpenAI CLIP (see the module doc).
pub fn clean(text: &str) -> String {
    let fixed: String = text.chars().flat_map(fix_char).collect::<String>().nfc().collect();
    let unescaped = unescape_html(&unescape_html(&unescape_html(&fixed)));
    unescaped.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// ftfy's per-character fixes: quotes, ligatures, character width.
fn fix_char(ch: char) -> Vec<char> {
    let expand = |s: &str| s.chars().collect();
    match ch {
        '\u{02BC}' | '\u{2018}'..='\u{201B}' => vec!['\''],
        '\u{201C}'..='\u{201F}' => vec!['"'],
        '\u{FB00}' => expand("ff"),
        '\u{FB01}' => expand("fi"),
        '\u{FB02}' => expand("fl"),
        '\u{FB03}' => expand("ffi"),
        '\u{FB04}' => expand("ffl"),
        '\u{FB05}' => expand("\u{017F}t"),
        '\u{FB06}' => expand("st"),
        '\u{0132}' => expand("IJ"),
        '\u{0133}' => expand("ij"),
        '\u{3000}' => vec![' '],
        '\u{FF01}'..='\u{FF5E}' => vec![char::from_u32(ch as u32 - 0xFF01 + 0x21).expect("ASCII")],
        '\u{FF5F}'..='\u{FFEF}' => ch.to_string().nfkc().collect(),
        _ => vec![ch],
    }
}

/// Python's `html.unescape` for numeric references and the common named ones.
fn unescape_html(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let end =
            rest[1..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '#')).map(|i| i + 1).unwrap_or(rest.len());
        let name = &rest[1..end];
        let with_semicolon = rest[end..].starts_with(';');
        let decoded = match name.strip_prefix('#') {
            Some(number) => {
                let value = match number.strip_prefix(['x', 'X']) {
                    Some(hex) => u32::from_str_radix(hex, 16).ok(),
                    None => number.parse::<u32>().ok(),
                };
                value.map(|v| char::from_u32(v).unwrap_or('\u{FFFD}').to_string())
            }
            None => match name {
                "amp" => Some("&".into()),
                "lt" => Some("<".into()),
                "gt" => Some(">".into()),
                "quot" => Some("\"".into()),
                "apos" if with_semicolon => Some("'".into()),
                "nbsp" => Some("\u{A0}".into()),
                _ => None,
            },
        };
        match decoded {
            Some(decoded) => {
                out.push_str(&decoded);
                rest = &rest[end + usize::from(with_semicolon)..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}
