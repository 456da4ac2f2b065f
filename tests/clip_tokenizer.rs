//! The CLIP tokenizer gives exactly the ids of OpenAI CLIP's tokenizer (as `open_clip`
//! implements it) on a corpus of hard cases: punctuation, numbers, accents, CJK, emoji,
//! HTML entities, curly quotes, ligatures, full-width text, long text, empty strings; read
//! from open_clip's BPE file or from a Hugging Face `tokenizer.json`.

mod common;

use std::path::Path;
use trainer::data::clip_tokenizer::{CONTEXT_LENGTH, ClipTokenizer, default_bpe_path};

/// Every golden case `tokenizer` gets wrong, described; cases containing `skip` are left out.
fn golden_mismatches(tokenizer: &ClipTokenizer, skip: Option<&str>) -> Vec<String> {
    let golden = common::workspace().join("tests/fixtures/tokenizer/golden.json");
    let cases: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(golden).unwrap()).unwrap();
    assert!(cases.len() >= 20);
    let mut wrong = Vec::new();
    for case in &cases {
        let text = case["text"].as_str().unwrap();
        if skip.is_some_and(|skip| text.contains(skip)) {
            continue;
        }
        let expected: Vec<i64> = case["ids"].as_array().unwrap().iter().map(|id| id.as_i64().unwrap()).collect();
        let got = tokenizer.tokenize(text, CONTEXT_LENGTH);
        if got != expected {
            wrong.push(format!("{text:?}\n  got      {got:?}\n  expected {expected:?}"));
        }
    }
    wrong
}

#[test]
fn ids_equal_openai_clip_on_the_golden_corpus() {
    let bpe = default_bpe_path().expect("HOME is set");
    assert!(bpe.exists(), "{} is missing: run `make` once", bpe.display());
    let tokenizer = ClipTokenizer::from_bpe_file(&bpe).unwrap();
    assert_eq!((tokenizer.start_id, tokenizer.end_id, tokenizer.vocab_size()), (49406, 49407, 49408));
    let wrong = golden_mismatches(&tokenizer, None);
    assert!(wrong.is_empty(), "{} differ:\n{}", wrong.len(), wrong.join("\n"));
}

#[test]
fn a_hugging_face_tokenizer_json_gives_the_same_ids() {
    let dir = tempfile::tempdir().unwrap();
    let bpe = default_bpe_path().expect("HOME is set");
    let made = common::python_fixture("tokenizer/make_tokenizer_json.py", &[bpe.as_os_str(), dir.path().as_os_str()]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let tokenizer = ClipTokenizer::from_tokenizer_json(&dir.path().join("tokenizer.json")).unwrap();
    assert_eq!((tokenizer.start_id, tokenizer.end_id, tokenizer.vocab_size()), (49406, 49407, 49408));
    // The one difference is by design: Hugging Face spells the special tokens
    // `<|startoftext|>`, so open_clip's spelling in text is ordinary text there.
    let wrong = golden_mismatches(&tokenizer, Some("<start_of_text>"));
    assert!(wrong.is_empty(), "{} differ:\n{}", wrong.len(), wrong.join("\n"));
    let ids = tokenizer.tokenize("<|startoftext|>a cat<|endoftext|>", 8);
    assert_eq!(ids, [49406, 49406, 320, 2368, 49407, 49407, 0, 0]);
}

#[test]
fn a_tokenizer_json_of_another_kind_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    let word_piece = r#"{"model": {"type": "WordPiece", "vocab": {"a": 0}, "merges": []}, "added_tokens": []}"#;
    std::fs::write(&path, word_piece).unwrap();
    let err = ClipTokenizer::from_tokenizer_json(&path).unwrap_err().to_string();
    assert!(err.starts_with(&path.display().to_string()) && err.contains("not a CLIP tokenizer"), "{err}");
    std::fs::write(&path, "{").unwrap();
    let err = ClipTokenizer::from_tokenizer_json(&path).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json") && err.contains("not a tokenizer.json"), "{err}");
}

#[test]
fn long_text_is_cut_with_the_end_token_last() {
    let tokenizer = ClipTokenizer::from_bpe_file(&default_bpe_path().unwrap()).unwrap();
    let ids = tokenizer.tokenize(&"word ".repeat(200), CONTEXT_LENGTH);
    assert_eq!(ids.len(), CONTEXT_LENGTH);
    assert_eq!(ids[0], tokenizer.start_id);
    assert_eq!(ids[CONTEXT_LENGTH - 1], tokenizer.end_id);
}

#[test]
fn a_missing_or_damaged_vocabulary_is_named() {
    let err = ClipTokenizer::from_bpe_file(Path::new("/nonexistent/bpe.txt.gz")).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/bpe.txt.gz"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bpe.txt.gz");
    std::fs::write(&path, b"not gzip").unwrap();
    assert!(ClipTokenizer::from_bpe_file(&path).unwrap_err().to_string().contains("bpe.txt.gz"));
}

/// Words added as tokens are whole words with ids before the end token, which moves last;
/// the rest of the text tokenizes as before; a word of other characters, or one already a
/// token, is refused or left out.
#[test]
fn added_words_are_whole_word_tokens_before_the_end_token() {
    let mut tokenizer = ClipTokenizer::from_bpe_file(&default_bpe_path().expect("HOME is set")).unwrap();
    let before = tokenizer.encode("florbexes on a dog");
    let words = ["Florbex", "dog", "quandrel"].map(String::from);
    let added = tokenizer.add_words(&words).unwrap();
    let ids: Vec<(&str, i64)> = added.iter().map(|new| (new.word.as_str(), new.id)).collect();
    assert_eq!(ids, [("florbex", 49407), ("quandrel", 49408)]);
    assert!(added.iter().all(|new| new.pieces.len() > 1 && new.pieces.iter().all(|&id| id < 49406)));
    assert_eq!((tokenizer.end_id, tokenizer.vocab_size()), (49409, 49410));
    // A whole word only: "florbexes" keeps its pieces.
    assert_eq!(tokenizer.encode("florbexes on a dog"), before);
    let ids = tokenizer.tokenize("a FLORBEX, a quandrel.", 10);
    assert_eq!(&ids[..8], [49406, 320, 49407, 267, 320, 49408, 269, 49409]);
    assert!(
        tokenizer
            .add_words(&["x-ray".to_string()])
            .unwrap_err()
            .contains("`x-ray`: a new token is one word of letters")
    );
}
