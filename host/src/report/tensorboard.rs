//! A TensorBoard event file (`events.out.tfevents.*`) of scalars, images, histograms,
//! precision-recall curves and the HParams dashboard's experiments and sessions, written
//! directly: each record is a length, a masked CRC-32C of
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

/// A hyper-parameter's value, as TensorBoard's HParams dashboard shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum HparamValue {
    Number(f64),
    Text(String),
    Bool(bool),
}

/// The values a hyper-parameter of an experiment ranges over.
#[derive(Debug, Clone, PartialEq)]
pub enum HparamDomain {
    Interval { min: f64, max: f64 },
    Discrete(Vec<HparamValue>),
}

/// How a session (a trial) of an experiment ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SessionStatus {
    Unknown = 0,
    Success = 1,
    Failure = 2,
    Running = 3,
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
        Self::create_named(dir, &format!("{}.{host}.{}", now.as_secs(), std::process::id()))
    }

    /// Creates (or replaces) the event file `events.out.tfevents.{name}` in `dir`: for
    /// summaries written again whole, such as a sweep's hyper-parameters.
    pub fn create_named(dir: &Path, name: &str) -> std::io::Result<Self> {
        let path = dir.join(format!("events.out.tfevents.{name}"));
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
        let mut plugin_content = Vec::new();
        put_int(&mut plugin_content, 2, n as u64);
        self.plugin_tensor(step, tag, &[6, n as u64], &rows, "pr_curves", &plugin_content)
    }

    /// Writes the HParams dashboard's experiment: the hyper-parameters searched, with their
    /// domains where known, and the scalar tags of the metrics to compare sessions by. It
    /// goes in the folder above the sessions' own folders.
    pub fn hparams_experiment(
        &mut self,
        hparams: &[(String, Option<HparamDomain>)],
        metric_tags: &[String],
    ) -> std::io::Result<()> {
        let mut experiment = Vec::new();
        put_double(&mut experiment, 3, wall_time());
        for (name, domain) in hparams {
            let mut info = Vec::new();
            put_bytes(&mut info, 1, name.as_bytes());
            match domain {
                Some(HparamDomain::Interval { min, max }) => {
                    put_int(&mut info, 4, 3); // DATA_TYPE_FLOAT64
                    let mut interval = Vec::new();
                    put_double(&mut interval, 1, *min);
                    put_double(&mut interval, 2, *max);
                    put_bytes(&mut info, 6, &interval);
                }
                Some(HparamDomain::Discrete(values)) => {
                    let mut list = Vec::new();
                    for value in values {
                        put_bytes(&mut list, 1, &protobuf_value(value));
                    }
                    put_bytes(&mut info, 5, &list);
                }
                None => {}
            }
            put_bytes(&mut experiment, 4, &info);
        }
        for tag in metric_tags {
            let mut name = Vec::new();
            put_bytes(&mut name, 2, tag.as_bytes());
            let mut info = Vec::new();
            put_bytes(&mut info, 1, &name);
            put_bytes(&mut experiment, 5, &info);
        }
        self.hparams(EXPERIMENT_FIELD, &experiment)
    }

    /// Writes a session of an experiment (a trial, in its own run folder): its
    /// hyper-parameters' values and how it ended.
    pub fn hparams_session(&mut self, hparams: &[(String, HparamValue)], status: SessionStatus) -> std::io::Result<()> {
        let mut start = Vec::new();
        for (name, value) in hparams {
            let mut entry = Vec::new();
            put_bytes(&mut entry, 1, name.as_bytes());
            put_bytes(&mut entry, 2, &protobuf_value(value));
            put_bytes(&mut start, 1, &entry);
        }
        put_double(&mut start, 5, wall_time());
        self.hparams(SESSION_START_FIELD, &start)?;
        let mut end = Vec::new();
        put_int(&mut end, 1, status as u64);
        put_double(&mut end, 2, wall_time());
        self.hparams(SESSION_END_FIELD, &end)
    }

    /// Writes `message` as field `field` of the HParams plugin's data, under the tag the
    /// plugin reads it from, with an empty float tensor as the value (as TensorBoard's own
    /// `hparams` summaries have).
    fn hparams(&mut self, field: u64, message: &[u8]) -> std::io::Result<()> {
        let tag = match field {
            EXPERIMENT_FIELD => "_hparams_/experiment",
            SESSION_START_FIELD => "_hparams_/session_start_info",
            _ => "_hparams_/session_end_info",
        };
        let mut plugin_content = Vec::new();
        put_bytes(&mut plugin_content, field, message);
        self.plugin_tensor(0, tag, &[0], &[], "hparams", &plugin_content)
    }

    /// Writes one event holding a float tensor of `shape` and `values` under `tag`, for the
    /// plugin `plugin` with its own data `content`.
    fn plugin_tensor(
        &mut self,
        step: u64,
        tag: &str,
        shape: &[u64],
        values: &[f32],
        plugin: &str,
        content: &[u8],
    ) -> std::io::Result<()> {
        let mut dims = Vec::new();
        for &size in shape {
            let mut dim = Vec::new();
            put_int(&mut dim, 1, size);
            put_bytes(&mut dims, 2, &dim);
        }
        let mut tensor = Vec::new();
        put_int(&mut tensor, 1, 1); // DT_FLOAT
        put_bytes(&mut tensor, 2, &dims);
        if !values.is_empty() {
            put_bytes(&mut tensor, 4, &values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
        }
        let mut plugin_data = Vec::new();
        put_bytes(&mut plugin_data, 1, plugin.as_bytes());
        put_bytes(&mut plugin_data, 2, content);
        let mut metadata = Vec::new();
        put_bytes(&mut metadata, 1, &plugin_data);
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
/// Fields of the HParams plugin's `HParamsPluginData`.
const EXPERIMENT_FIELD: u64 = 2;
const SESSION_START_FIELD: u64 = 3;
const SESSION_END_FIELD: u64 = 4;

/// `google.protobuf.Value` of a hyper-parameter's value.
fn protobuf_value(value: &HparamValue) -> Vec<u8> {
    let mut out = Vec::new();
    match value {
        HparamValue::Number(x) => put_double(&mut out, 2, *x),
        HparamValue::Text(text) => put_bytes(&mut out, 3, text.as_bytes()),
        HparamValue::Bool(b) => put_int(&mut out, 4, u64::from(*b)),
    }
    out
}

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
