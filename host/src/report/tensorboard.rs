//! A TensorBoard event file (`events.out.tfevents.*`) of scalars, images, histograms and
//! precision-recall curves, written directly: each record is a length, a masked CRC-32C of
//! the length, an `Event` protocol buffer and its masked CRC-32C, as TensorFlow's record
//! format defines. Only the few protobuf fields these summaries need are encoded, so no
//! protobuf library is needed.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// A histogram as TensorBoard's `HistogramProto` holds it: bin `i` counts the values from
/// the previous limit (or `min`) up to `limits[i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSummary {
    pub min: f64,
    pub max: f64,
    pub num: f64,
    pub sum: f64,
    pub sum_squares: f64,
    pub limits: Vec<f64>,
    pub counts: Vec<f64>,
}

/// Counts of a precision-recall curve at each of its thresholds, `i / (n - 1)` of `n`.
#[derive(Debug, Clone, PartialEq)]
pub struct PrCounts {
    pub true_positives: Vec<f64>,
    pub false_positives: Vec<f64>,
    pub false_negatives: Vec<f64>,
}

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
        self.summary(step, &summary)
    }

    /// Writes one event holding the PNG `png` of a `width` x `height` RGB image under `tag`.
    pub fn image(&mut self, step: u64, tag: &str, png: &[u8], width: u32, height: u32) -> std::io::Result<()> {
        let mut image = Vec::new();
        put_int(&mut image, 1, u64::from(height));
        put_int(&mut image, 2, u64::from(width));
        put_int(&mut image, 3, 3);
        put_bytes(&mut image, 4, png);
        let mut entry = Vec::new();
        put_bytes(&mut entry, 1, tag.as_bytes());
        put_bytes(&mut entry, 4, &image);
        self.value(step, &entry)
    }

    /// Writes one event holding `histogram` under `tag`.
    pub fn histogram(&mut self, step: u64, tag: &str, histogram: &HistogramSummary) -> std::io::Result<()> {
        let mut proto = Vec::new();
        put_double(&mut proto, 1, histogram.min);
        put_double(&mut proto, 2, histogram.max);
        put_double(&mut proto, 3, histogram.num);
        put_double(&mut proto, 4, histogram.sum);
        put_double(&mut proto, 5, histogram.sum_squares);
        put_doubles(&mut proto, 6, &histogram.limits);
        put_doubles(&mut proto, 7, &histogram.counts);
        let mut entry = Vec::new();
        put_bytes(&mut entry, 1, tag.as_bytes());
        put_bytes(&mut entry, 5, &proto);
        self.value(step, &entry)
    }

    /// Writes one event holding a precision-recall curve under `tag`, for TensorBoard's
    /// PR-curve plugin: `counts` per threshold `i / (n - 1)` of `n`.
    pub fn pr_curve(&mut self, step: u64, tag: &str, counts: &PrCounts) -> std::io::Result<()> {
        let n = counts.true_positives.len();
        let ratio = |num: f64, den: f64| if den > 0.0 { num / den } else { 0.0 };
        let precision =
            (0..n).map(|i| ratio(counts.true_positives[i], counts.true_positives[i] + counts.false_positives[i]));
        let recall =
            (0..n).map(|i| ratio(counts.true_positives[i], counts.true_positives[i] + counts.false_negatives[i]));
        let rows: Vec<f32> = [&counts.true_positives, &counts.false_positives, &vec![0.0; n], &counts.false_negatives]
            .into_iter()
            .flat_map(|row| row.iter().copied())
            .chain(precision)
            .chain(recall)
            .map(|v| v as f32)
            .collect();
        let mut shape = Vec::new();
        for size in [6, n as u64] {
            let mut dim = Vec::new();
            put_int(&mut dim, 1, size);
            put_bytes(&mut shape, 2, &dim);
        }
        let mut tensor = Vec::new();
        put_int(&mut tensor, 1, 1); // DT_FLOAT
        put_bytes(&mut tensor, 2, &shape);
        put_bytes(&mut tensor, 4, &rows.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
        let mut plugin_content = Vec::new();
        put_int(&mut plugin_content, 2, n as u64);
        let mut plugin = Vec::new();
        put_bytes(&mut plugin, 1, b"pr_curves");
        put_bytes(&mut plugin, 2, &plugin_content);
        let mut metadata = Vec::new();
        put_bytes(&mut metadata, 1, &plugin);
        let mut entry = Vec::new();
        put_bytes(&mut entry, 1, tag.as_bytes());
        put_bytes(&mut entry, 8, &tensor);
        put_bytes(&mut entry, 9, &metadata);
        self.value(step, &entry)
    }

    /// Writes an event of one summary value, already encoded.
    fn value(&mut self, step: u64, value: &[u8]) -> std::io::Result<()> {
        let mut summary = Vec::new();
        put_bytes(&mut summary, 1, value);
        self.summary(step, &summary)
    }

    /// Writes an event of a `Summary`, already encoded, and flushes it.
    fn summary(&mut self, step: u64, summary: &[u8]) -> std::io::Result<()> {
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time());
        put_int(&mut event, 2, step);
        put_bytes(&mut event, 5, summary);
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

/// A packed repeated `double` field.
fn put_doubles(out: &mut Vec<u8>, field: u64, values: &[f64]) {
    let bytes: Vec<u8> = values.iter().flat_map(|value| value.to_le_bytes()).collect();
    put_bytes(out, field, &bytes);
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
