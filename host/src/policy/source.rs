//! A policy as the user names it on the command line: `path/to/file.wasm`, optionally
//! followed by `:key=value,key=value` arguments for the policy.

use super::PolicyError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicySource {
    pub path: PathBuf,
    /// Arguments in the order given; the policy decides what they mean.
    pub args: Vec<(String, String)>,
}

impl PolicySource {
    /// The policy's name in messages and logs: the file name without `.wasm`.
    pub fn name(&self) -> String {
        self.path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }
}

impl FromStr for PolicySource {
    type Err = PolicyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // Arguments follow the first `.wasm:`, so a path may itself contain colons.
        let (path, args) = match text.find(".wasm:") {
            Some(at) => (&text[..at + ".wasm".len()], &text[at + ".wasm:".len()..]),
            None => (text, ""),
        };
        let args = args
            .split(',')
            .filter(|item| !item.trim().is_empty())
            .map(|item| match item.split_once('=') {
                Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_string(), value.trim().to_string())),
                _ => Err(PolicyError::BadArgument { argument: item.to_string(), problem: "expected key=value".into() }),
            })
            .collect::<Result<_, _>>()?;
        Ok(PolicySource { path: PathBuf::from(path), args })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_follow_the_wasm_file() {
        let source: PolicySource = "dir:x/cosine_warmup.wasm:warmup_steps=500, min_lr=1e-6".parse().unwrap();
        assert_eq!(source.path, PathBuf::from("dir:x/cosine_warmup.wasm"));
        assert_eq!(source.args, [("warmup_steps".into(), "500".into()), ("min_lr".into(), "1e-6".into())]);
        assert_eq!(source.name(), "cosine_warmup");
    }

    #[test]
    fn a_plain_path_has_no_arguments() {
        let source: PolicySource = "policies/constant.wasm".parse().unwrap();
        assert!(source.args.is_empty());
    }

    #[test]
    fn an_argument_without_a_value_is_named() {
        let err = "p.wasm:warmup".parse::<PolicySource>().unwrap_err().to_string();
        assert!(err.contains("`warmup`") && err.contains("key=value"), "{err}");
    }
}
