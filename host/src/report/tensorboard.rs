//! A TensorBoard event file (`events.out.tfevents.*`) of scalars, written directly: each
//! record is a length, a masked CRC-32C of the length, an `Event` protocol buffer and its
//! masked CRC-32C, as TensorFlow's record format defines. Only the few protobuf fields a
//! scalar needs are encoded, so no protobuf library is needed.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub struct EventWriter {
    path: PathBuf,
    writer: BufWriter<Box<dyn Write>>,
}

impl EventWriter {
    /// Creates a new event file in `dir` (TensorBoard reads every event file of a folder).
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let host =
            std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "host".into());
        let path = dir.join(format!("events.out.tfevents.{}.{host}.{}", now.as_secs(), std::process::id()));
        let mut writer = EventWriter { path: path.clone(), writer: BufWriter::new(Box::new(File::create(&path)?)) };
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time());
        put_bytes(&mut event, 3, b"brain.Event:2");
        writer.record(&event)?;
        writer.writer.flush()?;
        Ok(writer)
    }

    /// Events written nowhere, for a data-parallel rank other than the one that writes.
    pub fn discard(dir: &Path) -> Self {
        EventWriter { path: dir.to_path_buf(), writer: BufWriter::new(Box::new(std::io::sink())) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one event holding `scalars` (tag, value) at `step`, and flushes it.
    pub fn scalars<'a>(&mut self, step: u64, scalars: impl IntoIterator<Item = (&'a str, f64)>) -> std::io::Result<()> {
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let mut entry = Vec::new();
            put_bytes(&mut entry, 1, tag.as_bytes());
            put_float(&mut entry, 2, value as f32);
            put_bytes(&mut summary, 1, &entry);
        }
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time());
        put_int(&mut event, 2, step);
        put_bytes(&mut event, 5, &summary);
        self.record(&event)?;
        self.writer.flush()
    }

    fn record(&mut self, data: &[u8]) -> std::io::Result<()> {
        let length = (data.len() as u64).to_le_bytes();
        self.writer.write_all(&length)?;
        self.writer.write_all(&masked_crc32c(&length).to_le_bytes())?;
        self.writer.write_all(data)?;
        self.writer.write_all(&masked_crc32c(data).to_le_bytes())
    }
}

fn wall_time() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A field's key: its number and wire type (0 varint, 1 64-bit, 2 bytes, 5 32-bit).
fn put_key(out: &mut Vec<u8>, field: u64, wire_type: u64) {
    varint(out, (field << 3) | wire_type);
}

fn put_int(out: &mut Vec<u8>, field: u64, value: u64) {
    put_key(out, field, 0);
    varint(out, value);
}

fn put_double(out: &mut Vec<u8>, field: u64, value: f64) {
    put_key(out, field, 1);
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_float(out: &mut Vec<u8>, field: u64, value: f32) {
    put_key(out, field, 5);
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_key(out, field, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// CRC-32C (Castagnoli), bit by bit: records are small and written once per step.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xA282_EAD8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }
}
