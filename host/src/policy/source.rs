//! A policy as the user names it on the command line: a component file
//! (`path/to/file.wasm`) or the name of a built-in policy (`cosine_warmup`), optionally
//! followed by `:key=value,key=value` arguments for the policy.
//!
//! The text is kept as given (`path`) and resolved to a file or a built-in only when the
//! component is read, so a run's saved `run.json` and checkpoints name policies exactly as
//! the user did, and resuming one finds the same component again.

use super::{PolicyError, builtin};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicySource {
    /// A component file, or the name of a built-in policy.
    pub path: PathBuf,
    /// Arguments in the order given; the policy decides what they mean.
    pub args: Vec<(String, String)>,
}

impl PolicySource {
    /// The policy's name in messages and logs: the file name without `.wasm`, which for a
    /// built-in policy is its name.
    pub fn name(&self) -> String {
        self.path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }

    /// The built-in policy this source may stand for: a bare file name (no folder) with no
    /// extension or `.wasm`, such as `cosine_warmup` or `cosine_warmup.wasm`. Whether there
    /// is a built-in policy of that name is not checked here.
    fn builtin_name(&self) -> Option<&str> {
        let mut components = self.path.components();
        let (Some(Component::Normal(_)), None) = (components.next(), components.next()) else {
            return None;
        };
        match self.path.extension() {
            None => self.path.to_str(),
            Some(extension) if extension == "wasm" => self.path.file_stem()?.to_str(),
            Some(_) => None,
        }
    }

    /// Where the component comes from, for the start-up report: the file's path, or
    /// `built-in` for a standard policy named without a file.
    pub fn origin(&self) -> String {
        match self.builtin_name().and_then(builtin::find) {
            Some(_) if !self.path.is_file() => "built-in".to_string(),
            _ => self.path.display().to_string(),
        }
    }

    /// The component's bytes: the file at `path` when there is one, so a user's file wins
    /// over a built-in policy of the same name; else the built-in policy `path` names.
    pub fn read_component(&self) -> Result<Cow<'static, [u8]>, PolicyError> {
        let read_file = |path: &Path| -> Result<Cow<'static, [u8]>, PolicyError> {
            std::fs::read(path).map(Cow::Owned).map_err(|source| PolicyError::Read { path: path.to_path_buf(), source })
        };
        if self.path.is_file() {
            return read_file(&self.path);
        }
        match self.builtin_name() {
            Some(name) => match builtin::find(name) {
                Some(policy) => policy.component().map(Cow::Borrowed),
                // `x.wasm` reads as a file the user expected to be there.
                None if self.path.extension().is_some() => read_file(&self.path),
                None => Err(PolicyError::UnknownPolicy { given: self.path.display().to_string() }),
            },
            None => read_file(&self.path),
        }
    }
}

/// The source as `--policy` takes it: `path:key=value,key=value`, which parses back to it.
impl std::fmt::Display for PolicySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path.display())?;
        for (index, (key, value)) in self.args.iter().enumerate() {
            write!(f, "{}{key}={value}", if index == 0 { ':' } else { ',' })?;
        }
        Ok(())
    }
}

impl FromStr for PolicySource {
    type Err = PolicyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // Arguments follow the first `.wasm:`, so a path may itself contain colons; a name
        // without `.wasm` (a built-in policy) ends at the first colon.
        let (path, args) = match text.find(".wasm:") {
            Some(at) => (&text[..at + ".wasm".len()], &text[at + ".wasm:".len()..]),
            None if !text.contains(".wasm") => text.split_once(':').unwrap_or((text, "")),
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

    fn parse(text: &str) -> PolicySource {
        text.parse().unwrap()
    }

    fn pairs(args: &[(&str, &str)]) -> Vec<(String, String)> {
        args.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
    }

    #[test]
    fn arguments_follow_the_wasm_file() {
        let source = parse("dir:x/cosine_warmup.wasm:warmup_steps=500, min_lr=1e-6");
        assert_eq!(source.path, PathBuf::from("dir:x/cosine_warmup.wasm"));
        assert_eq!(source.args, pairs(&[("warmup_steps", "500"), ("min_lr", "1e-6")]));
        assert_eq!(source.name(), "cosine_warmup");
    }

    #[test]
    fn a_plain_path_has_no_arguments() {
        let source = parse("policies/constant.wasm");
        assert!(source.args.is_empty());
    }

    #[test]
    fn a_path_in_a_folder_keeps_its_arguments() {
        let source = parse("dir/x.wasm:a=1");
        assert_eq!(source.path, PathBuf::from("dir/x.wasm"));
        assert_eq!(source.args, pairs(&[("a", "1")]));
        assert_eq!(source.builtin_name(), None, "a path with a folder is always a file");
    }

    #[test]
    fn arguments_follow_the_first_colon_of_a_name() {
        let source = parse("cosine_warmup:warmup_steps=5");
        assert_eq!(source.path, PathBuf::from("cosine_warmup"));
        assert_eq!(source.args, pairs(&[("warmup_steps", "5")]));
        assert_eq!(source.name(), "cosine_warmup");
        assert_eq!(source.builtin_name(), Some("cosine_warmup"));
    }

    #[test]
    fn a_source_prints_as_the_text_it_parses_from() {
        for text in ["constant", "constant:lr=0.001", "dir/x.wasm:a=1,b=two"] {
            assert_eq!(parse(text).to_string(), text);
            assert_eq!(parse(&parse(text).to_string()), parse(text));
        }
    }

    #[test]
    fn a_name_without_arguments() {
        for text in ["constant", "constant:"] {
            let source = parse(text);
            assert_eq!(source.path, PathBuf::from("constant"), "{text}");
            assert!(source.args.is_empty(), "{text}");
        }
    }

    #[test]
    fn a_bare_wasm_file_name_may_stand_for_a_built_in_policy() {
        assert_eq!(parse("cosine_warmup.wasm:min_lr=0").builtin_name(), Some("cosine_warmup"));
        assert_eq!(parse("./cosine_warmup.wasm").builtin_name(), None);
        assert_eq!(parse("cosine_warmup.bin").builtin_name(), None);
    }

    #[test]
    fn an_argument_without_a_value_is_named() {
        for text in ["p.wasm:warmup", "constant:warmup"] {
            let err = text.parse::<PolicySource>().unwrap_err().to_string();
            assert!(err.contains("`warmup`") && err.contains("key=value"), "{err}");
        }
    }

    #[test]
    fn a_name_reads_the_built_in_component() {
        let Some(builtin) = builtin::find("constant") else { panic!("`constant` is built in") };
        let Ok(embedded) = builtin.component() else { return }; // Not built yet: nothing to compare.
        let bytes = parse("constant:lr=0.1").read_component().unwrap();
        assert_eq!(&bytes[..], embedded);
        assert_eq!(&parse("constant.wasm").read_component().unwrap()[..], embedded);
    }

    #[test]
    fn a_file_wins_over_the_built_in_policy_of_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("constant.wasm");
        std::fs::write(&file, b"a user's own bytes").unwrap();
        let source = PolicySource { path: file, args: vec![] };
        assert_eq!(&source.read_component().unwrap()[..], b"a user's own bytes");
    }

    #[test]
    fn an_unknown_name_lists_the_built_in_policies() {
        let err = parse("cosine_warmpu:warmup_steps=5").read_component().unwrap_err().to_string();
        assert!(err.contains("`cosine_warmpu`") && err.contains("cosine_warmup, early_stopping"), "{err}");
        let err = parse("cosine_warmpu.wasm").read_component().unwrap_err().to_string();
        assert!(err.contains("cosine_warmpu.wasm") && err.contains("cosine_warmup, early_stopping"), "{err}");
    }
}
