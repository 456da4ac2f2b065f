//! Floats that may be NaN or infinite (losses, norms) as Rust's exact text ("0.1", "NaN",
//! "inf"), for the JSON of checkpoints: JSON numbers cannot carry them, and the text parses
//! back bit for bit.

use serde::{Deserialize, Deserializer, Serializer};

pub fn to_text(value: f64) -> String {
    format!("{value:?}")
}

pub fn from_text<E: serde::de::Error>(text: &str) -> Result<f64, E> {
    text.parse::<f64>().map_err(|_| E::custom(format!("`{text}` is not a number")))
}

pub mod option {
    use super::*;
    pub fn serialize<S: Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(value.iter().map(|v| to_text(*v)))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        texts.first().map(|text| from_text(text)).transpose()
    }
}

pub mod list {
    use super::*;
    pub fn serialize<S: Serializer>(values: &[f64], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(values.iter().map(|v| to_text(*v)))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Vec::<String>::deserialize(d)?.iter().map(|text| from_text(text)).collect()
    }
}
