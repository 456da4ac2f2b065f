//! The CLIP tokenizer gives exactly the ids of OpenAI CLIP's tokenizer (as `open_clip`
//! implements it) on a corpus of hard cases: punctuation, numbers, accents, CJK, emoji,
//! HTML entities, curly quotes, ligatures, full-width text, long text, empty strings.

use std::path::Path;
use trainer::data::clip_tokenizer::{CONTEXT_LENGTH, ClipTokenizer, default_bpe_path};

#[test]
fn ids_equal_openai_clip_on_the_golden_corpus() {
    let bpe = default_bpe_path().expect("HOME is set");
    assert!(bpe.exists(), "{} is missing: run `make` once", bpe.display());
    let tokenizer = ClipTokenizer::from_bpe_file(&bpe).unwrap();
    assert_eq!((tokenizer.start_id, tokenizer.end_id, tokenizer.vocab_size()), (49406, 49407, 49408));
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tokenizer/golden.json");
    let cases: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(golden).unwrap()).unwrap();
    assert!(cases.len() >= 20);
    let mut wrong = Vec::new();
    for case in &cases {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<i64> = case["ids"].as_array().unwrap().iter().map(|id| id.as_i64().unwrap()).collect();
        let got = tokenizer.tokenize(text, CONTEXT_LENGTH);
        if got != expected {
            wrong.push(format!("{text:?}\n  got      {got:?}\n  expected {expected:?}"));
        }
    }
    assert!(wrong.is_empty(), "{} of {} differ:\n{}", wrong.len(), cases.len(), wrong.join("\n"));
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
