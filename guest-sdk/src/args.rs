//! The user's policy arguments (`--policy file.wasm:key=value,...`), read with checks, so
//! that a typo or a bad value fails at start-up with the argument's name.

/// Arguments given to a policy, checked against the names it knows.
#[derive(Debug, Clone)]
pub struct Args {
    pairs: Vec<(String, String)>,
}

impl Args {
    /// Takes the arguments, refusing any name not in `known`.
    pub fn new(pairs: &[(String, String)], known: &[&str]) -> Result<Self, String> {
        if let Some((name, _)) = pairs.iter().find(|(name, _)| !known.contains(&name.as_str())) {
            return Err(format!(
                "unknown argument `{name}` (this policy takes: {})",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            ));
        }
        Ok(Self { pairs: pairs.to_vec() })
    }

    /// The value given for `name` as a number, or `default` when it was not given.
    pub fn f64_or(&self, name: &str, default: f64) -> Result<f64, String> {
        match self.raw(name) {
            None => Ok(default),
            Some(text) => match text.trim().parse::<f64>() {
                Ok(value) if value.is_finite() => Ok(value),
                _ => Err(format!("argument `{name}`: expected a finite number, got `{text}`")),
            },
        }
    }

    /// The value given for `name` as a whole number, or `default` when it was not given.
    pub fn u64_or(&self, name: &str, default: u64) -> Result<u64, String> {
        match self.raw(name) {
            None => Ok(default),
            Some(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("argument `{name}`: expected a non-negative whole number, got `{text}`")),
        }
    }

    /// The value given for `name` as text, or `default`.
    pub fn str_or<'s>(&'s self, name: &str, default: &'s str) -> &'s str {
        self.raw(name).unwrap_or(default)
    }

    /// The value given for `name` as `true`/`false`, or `default`.
    pub fn bool_or(&self, name: &str, default: bool) -> Result<bool, String> {
        match self.raw(name) {
            None => Ok(default),
            Some("true" | "1" | "yes") => Ok(true),
            Some("false" | "0" | "no") => Ok(false),
            Some(text) => Err(format!("argument `{name}`: expected true or false, got `{text}`")),
        }
    }

    /// The value given for `name`, which must be one of `options`; `default` when not given.
    pub fn choice<'s>(&'s self, name: &str, options: &[&'s str], default: &'s str) -> Result<&'s str, String> {
        let value = self.str_or(name, default);
        options
            .iter()
            .find(|option| **option == value)
            .copied()
            .ok_or_else(|| format!("argument `{name}`: expected one of {}, got `{value}`", options.join(", ")))
    }

    /// Every value given for `name`, in order (for arguments that may repeat).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.pairs.iter().filter(|(key, _)| key == name).map(|(_, value)| value.as_str()).collect()
    }

    /// A number given for `name`, if any (for keys the policy discovers, like group names).
    pub fn f64_opt(&self, name: &str) -> Result<Option<f64>, String> {
        self.raw(name).map(|_| self.f64_or(name, 0.0)).transpose()
    }

    fn raw(&self, name: &str) -> Option<&str> {
        // The last occurrence wins, as on a command line.
        self.pairs.iter().rev().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Args;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn unknown_names_are_refused_with_the_known_ones() {
        let err = Args::new(&pairs(&[("warmup", "3")]), &["warmup_steps"]).unwrap_err();
        assert!(err.contains("`warmup`") && err.contains("warmup_steps"), "{err}");
    }

    #[test]
    fn values_parse_with_defaults_and_last_wins() {
        let args = Args::new(&pairs(&[("a", "1"), ("a", "2.5")]), &["a", "b"]).unwrap();
        assert_eq!(args.f64_or("a", 0.0).unwrap(), 2.5);
        assert_eq!(args.u64_or("b", 7).unwrap(), 7);
    }

    #[test]
    fn bad_values_name_the_argument() {
        let args = Args::new(&pairs(&[("a", "x"), ("b", "-1"), ("c", "nan")]), &["a", "b", "c"]).unwrap();
        assert!(args.f64_or("a", 0.0).unwrap_err().contains("`a`"));
        assert!(args.u64_or("b", 0).unwrap_err().contains("`b`"));
        assert!(args.f64_or("c", 0.0).unwrap_err().contains("`c`"));
    }
}
