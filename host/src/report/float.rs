//! Floats in the run's JSON files, exactly. JSON numbers cannot carry NaN or infinities
//! (serde_json writes all three as `null`), yet a diverging run is when they matter most and
//! `trainer simulate` must replay what the policies saw. Finite values are written as
//! numbers, the others as the strings `"NaN"`, `"inf"` and `"-inf"`; `null`, as files
//! written before this read, is NaN.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// An `f64` that keeps NaN and the infinities through JSON.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JsonFloat(pub f64);

/// The text of a non-finite value; `None` for a finite one.
fn non_finite_text(value: f64) -> Option<&'static str> {
    match value {
        v if v.is_nan() => Some("NaN"),
        f64::INFINITY => Some("inf"),
        f64::NEG_INFINITY => Some("-inf"),
        _ => None,
    }
}

fn parse_non_finite(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

impl Serialize for JsonFloat {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match non_finite_text(self.0) {
            Some(text) => serializer.serialize_str(text),
            None => serializer.serialize_f64(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for JsonFloat {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FloatVisitor;
        impl Visitor<'_> for FloatVisitor {
            type Value = JsonFloat;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str(r#"a number, "NaN", "inf", "-inf" or null"#)
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<JsonFloat, E> {
                Ok(JsonFloat(value))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<JsonFloat, E> {
                Ok(JsonFloat(value as f64))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<JsonFloat, E> {
                Ok(JsonFloat(value as f64))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<JsonFloat, E> {
                parse_non_finite(text).map(JsonFloat).ok_or_else(|| E::invalid_value(de::Unexpected::Str(text), &self))
            }
            fn visit_unit<E: de::Error>(self) -> Result<JsonFloat, E> {
                Ok(JsonFloat(f64::NAN))
            }
        }
        deserializer.deserialize_any(FloatVisitor)
    }
}

/// `value` as a JSON value, exactly.
pub fn float_to_json(value: f64) -> serde_json::Value {
    match non_finite_text(value) {
        Some(text) => text.into(),
        None => serde_json::json!(value),
    }
}

/// The float a JSON value holds: a number, one of the non-finite strings, or `null` (NaN);
/// `None` for anything else (a label, a list).
pub fn float_from_json(value: &serde_json::Value) -> Option<f64> {
    match value {
        serde_json::Value::Number(number) => number.as_f64(),
        serde_json::Value::String(text) => parse_non_finite(text),
        serde_json::Value::Null => Some(f64::NAN),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_round_trips_exactly() {
        for value in [0.1, -3.0, 1e300, f64::MIN_POSITIVE, f64::INFINITY, f64::NEG_INFINITY] {
            let text = serde_json::to_string(&JsonFloat(value)).unwrap();
            assert_eq!(serde_json::from_str::<JsonFloat>(&text).unwrap().0, value, "{text}");
            assert_eq!(float_from_json(&float_to_json(value)), Some(value));
        }
        let text = serde_json::to_string(&JsonFloat(f64::NAN)).unwrap();
        assert_eq!(text, r#""NaN""#);
        assert!(serde_json::from_str::<JsonFloat>(&text).unwrap().0.is_nan());
        assert_eq!(serde_json::to_string(&JsonFloat(f64::NEG_INFINITY)).unwrap(), r#""-inf""#);
    }

    /// serde_json's default parser is a few ulps off for a share of values: `simulate`
    /// replayed other losses than the run's until its exact parsing was turned on.
    #[test]
    fn finite_values_of_every_magnitude_read_back_to_the_last_bit() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let value = f64::from_bits(state >> 2);
            if !value.is_finite() {
                continue;
            }
            let text = serde_json::to_string(&JsonFloat(value)).unwrap();
            assert_eq!(serde_json::from_str::<JsonFloat>(&text).unwrap().0.to_bits(), value.to_bits(), "{text}");
            let line = serde_json::to_string(&float_to_json(value)).unwrap();
            let read: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(float_from_json(&read).map(f64::to_bits), Some(value.to_bits()), "{line}");
        }
    }

    #[test]
    fn null_from_earlier_files_is_nan_and_a_label_is_no_float() {
        assert!(serde_json::from_str::<JsonFloat>("null").unwrap().0.is_nan());
        assert!(serde_json::from_str::<JsonFloat>(r#""held-out""#).is_err());
        assert_eq!(float_from_json(&serde_json::json!("held-out")), None);
    }
}
