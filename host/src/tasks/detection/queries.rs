//! The text queries of a detection run: each category asked with one prompt ("a photo of a
//! {name}.") or with several (`--prompts`: synonyms, descriptions, the usual prompt
//! ensemble), whose L2-normalised embeddings are averaged and normalised again into the
//! category's one query, as CLIP's zero-shot classifiers average their templates.

use crate::data::clip_tokenizer::ClipTokenizer;
use crate::files::FileError;
use crate::models::clip::normalize;
use crate::models::owlvit::OwlDetector;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Tensor};

/// The prompt a category name is asked with when `--prompts` gives it none.
pub fn default_prompt(name: &str) -> String {
    format!("a photo of a {name}.")
}

/// Reads a `--prompts` file: a JSON object from category name to a prompt or a list of them.
pub fn read_prompts(path: &Path) -> Result<BTreeMap<String, Vec<String>>, FileError> {
    let text = std::fs::read_to_string(path).map_err(FileError::io(path))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|err| FileError::format(path, format!("not JSON: {err}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| FileError::format(path, "expected an object: category name -> a prompt or a list of prompts"))?;
    let mut prompts = BTreeMap::new();
    for (name, given) in object {
        let list: Vec<String> = match given {
            serde_json::Value::String(prompt) => vec![prompt.clone()],
            serde_json::Value::Array(items) => {
                items.iter().filter_map(|item| item.as_str().map(String::from)).collect()
            }
            _ => Vec::new(),
        };
        let complete = matches!(given, serde_json::Value::String(_))
            || given.as_array().is_some_and(|items| items.len() == list.len() && !list.is_empty());
        if !complete || list.iter().any(|prompt| prompt.trim().is_empty()) {
            let problem = format!("`{name}`: a prompt, or a list of one or more prompts, none empty");
            return Err(FileError::format(path, problem));
        }
        prompts.insert(name.clone(), list);
    }
    Ok(prompts)
}

/// Tokenised prompts and the category each asks for.
pub struct Queries {
    /// `(prompts, context)` token ids.
    ids: Tensor,
    /// The category of each prompt, `(prompts,)`; `None` when each category has one prompt,
    /// in order.
    category_of_prompt: Option<Tensor>,
    categories: i64,
}

impl Queries {
    /// Each of `prompts` (a list per category, in the order of the categories) tokenised.
    pub fn new(prompts: &[Vec<String>], tokenizer: &ClipTokenizer, context_length: usize, device: Device) -> Self {
        let ids: Vec<i64> =
            prompts.iter().flatten().flat_map(|prompt| tokenizer.tokenize(prompt, context_length)).collect();
        let count = prompts.iter().map(Vec::len).sum::<usize>() as i64;
        let ids = Tensor::from_slice(&ids).view([count, -1]).to_device(device);
        let category_of_prompt = (count != prompts.len() as i64).then(|| {
            let owners: Vec<i64> =
                prompts.iter().enumerate().flat_map(|(category, list)| vec![category as i64; list.len()]).collect();
            Tensor::from_slice(&owners).to_device(device)
        });
        Queries { ids, category_of_prompt, categories: prompts.len() as i64 }
    }

    /// `(categories, dim)` L2-normalised query embeddings, with their graph.
    pub fn embed(&self, model: &OwlDetector) -> Tensor {
        let embeddings = model.query_embeddings(&self.ids);
        let Some(owners) = &self.category_of_prompt else { return embeddings };
        let dim = embeddings.size()[1];
        let sums = Tensor::zeros([self.categories, dim], (embeddings.kind(), embeddings.device())).index_add(
            0,
            owners,
            &embeddings,
        );
        // The mean's direction is the sum's.
        normalize(&sums)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::owlvit::tests::tiny_config;
    use tch::{Kind, nn};

    #[test]
    fn a_categorys_query_is_the_normalised_mean_of_its_prompts_normalised_embeddings() {
        tch::manual_seed(5);
        let store = nn::VarStore::new(Device::Cpu);
        let model = OwlDetector::new(&store.root(), &tiny_config());
        let ids = Tensor::from_slice(&[1i64, 5, 49, 0, 1, 7, 8, 49, 1, 9, 49, 0]).view([3, 4]);
        let single = model.query_embeddings(&ids);
        // Category 0 is asked with prompts 0 and 1, category 1 with prompt 2.
        let owners = Tensor::from_slice(&[0i64, 0, 1]);
        let queries = Queries { ids: ids.shallow_clone(), category_of_prompt: Some(owners), categories: 2 };
        let embedded = queries.embed(&model);
        let mean = (single.get(0) + single.get(1)) / 2.0;
        let expected = Tensor::stack(&[&mean / mean.norm(), single.get(2)], 0);
        assert!(embedded.allclose(&expected, 1e-6, 1e-6, false), "{embedded} {expected}");
        let norms = embedded.norm_scalaropt_dim(2, [-1], false);
        assert!(norms.allclose(&Tensor::ones([2], (Kind::Float, Device::Cpu)), 1e-6, 1e-6, false));
        // One prompt a category: the prompts' own embeddings, untouched.
        let one_each = Queries { ids: ids.shallow_clone(), category_of_prompt: None, categories: 3 };
        assert!(one_each.embed(&model).equal(&single));
    }

    #[test]
    fn a_prompts_file_maps_names_to_one_or_more_prompts_and_bad_entries_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prompts.json");
        std::fs::write(&path, r#"{"sneaker": ["a photo of a sneaker.", "a trainer shoe"], "bag": "a handbag"}"#)
            .unwrap();
        let prompts = read_prompts(&path).unwrap();
        assert_eq!(prompts["sneaker"], ["a photo of a sneaker.", "a trainer shoe"]);
        assert_eq!(prompts["bag"], ["a handbag"]);
        for bad in [r#"{"bag": []}"#, r#"{"bag": [1]}"#, r#"{"bag": " "}"#, r#"{"bag": 3}"#] {
            std::fs::write(&path, bad).unwrap();
            let err = read_prompts(&path).unwrap_err().to_string();
            assert_eq!(
                err,
                format!("{}: `bag`: a prompt, or a list of one or more prompts, none empty", path.display())
            );
        }
        std::fs::write(&path, "[]").unwrap();
        assert!(read_prompts(&path).unwrap_err().to_string().contains("expected an object"));
    }
}
