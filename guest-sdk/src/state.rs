//! A small, exact binary encoding for policy state: numbers are stored bit for bit, so a
//! policy restored from a checkpoint decides exactly as it would have without the pause.

/// Builds a state blob, field by field.
#[derive(Debug, Default)]
pub struct StateWriter {
    bytes: Vec<u8>,
}

impl StateWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn f64(mut self, value: f64) -> Self {
        self.bytes.extend_from_slice(&value.to_bits().to_le_bytes());
        self
    }

    pub fn u64(mut self, value: u64) -> Self {
        self.bytes.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub fn bool(mut self, value: bool) -> Self {
        self.bytes.push(value as u8);
        self
    }

    pub fn f64s(self, values: &[f64]) -> Self {
        values.iter().fold(self.u64(values.len() as u64), |writer, &value| writer.f64(value))
    }

    pub fn finish(self) -> Vec<u8> {
        self.bytes
    }
}

/// Reads a state blob in the order it was written; every read says what was missing.
#[derive(Debug)]
pub struct StateReader<'a> {
    bytes: &'a [u8],
}

impl<'a> StateReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        StateReader { bytes }
    }

    fn take<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        if self.bytes.len() < N {
            return Err(format!("state ends before `{what}`"));
        }
        let (head, rest) = self.bytes.split_at(N);
        self.bytes = rest;
        Ok(head.try_into().expect("split at N"))
    }

    pub fn f64(&mut self, what: &str) -> Result<f64, String> {
        self.take::<8>(what).map(|b| f64::from_bits(u64::from_le_bytes(b)))
    }

    pub fn u64(&mut self, what: &str) -> Result<u64, String> {
        self.take::<8>(what).map(u64::from_le_bytes)
    }

    pub fn bool(&mut self, what: &str) -> Result<bool, String> {
        match self.take::<1>(what)? {
            [0] => Ok(false),
            [1] => Ok(true),
            [other] => Err(format!("`{what}`: {other} is not a boolean")),
        }
    }

    /// A list of `expected` numbers (the count is checked against the run).
    pub fn f64s(&mut self, what: &str, expected: usize) -> Result<Vec<f64>, String> {
        let count = self.u64(what)? as usize;
        if count != expected {
            return Err(format!("`{what}`: state has {count} values, this run needs {expected}"));
        }
        (0..count).map(|_| self.f64(what)).collect()
    }

    /// Fails if bytes are left over: a state from another policy or version.
    pub fn finish(self) -> Result<(), String> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(format!("{} unexpected bytes at the end of the state", self.bytes.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_bit_for_bit() {
        let bytes = StateWriter::new().f64(0.1 + 0.2).u64(7).bool(true).f64s(&[f64::MIN_POSITIVE, -0.0]).finish();
        let mut reader = StateReader::new(&bytes);
        assert_eq!(reader.f64("a").unwrap().to_bits(), (0.1f64 + 0.2).to_bits());
        assert_eq!(reader.u64("b").unwrap(), 7);
        assert!(reader.bool("c").unwrap());
        let list = reader.f64s("d", 2).unwrap();
        assert_eq!(list[1].to_bits(), (-0.0f64).to_bits());
        reader.finish().unwrap();
    }

    #[test]
    fn short_or_long_states_are_refused() {
        let bytes = StateWriter::new().u64(1).finish();
        assert!(StateReader::new(&bytes[..4]).u64("count").unwrap_err().contains("`count`"));
        let mut reader = StateReader::new(&bytes);
        assert!(reader.f64s("weights", 3).unwrap_err().contains("needs 3"));
        assert!(StateReader::new(&bytes).finish().is_err());
    }
}
