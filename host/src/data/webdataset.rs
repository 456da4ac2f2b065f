//! WebDataset shards: tar files whose members are grouped into samples by key
//! (`000123.jpg`, `000123.txt` are sample `000123`), named as webdataset and open_clip name
//! them (`dir/{00000..00099}.tar`, brace ranges and lists, several patterns joined by `::`,
//! or a text file listing one shard or pattern per line).
//!
//! The order samples are seen in stays a pure function of (seed, position), as for every
//! other data set here (see [`super::sampler`]), so that a resumed or rolled-back run reads
//! exactly what an uninterrupted one reads, while memory stays flat whatever the number of
//! shards:
//! - Each shard's usable samples are counted once at start (its tar headers only, skipping
//!   the contents; or `sizes.json` beside the shards, open_clip's record of them).
//! - Each process reads its own stream: the shards are dealt out over the processes in a
//!   seeded order that changes each pass over the data (with `resampled`, each process draws
//!   shards with replacement instead, as webdataset's `ResampledShards`).
//! - A stream's samples are shuffled within blocks of `shuffle_buffer` consecutive samples
//!   (webdataset's shuffle buffer, made seekable): position `p` is a known sample of a known
//!   shard without reading what came before.
//! - Only the member tables (key, offset, size) of the few shards in use are kept; the
//!   worker threads read each sample's bytes at its offset and decode them.
//!
//! Written here rather than taken from a crate: no Rust WebDataset reader seeks by position,
//! which exact resumption needs; the tar format itself is read by the `tar` crate.

use super::sampler::{Shard, keyed};
use crate::files::FileError;
use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Member extensions read as a sample's image, in order of preference.
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];
/// Separates the shard order and per-block shuffles from other randomness.
const SHARD_ORDER: u64 = 0x005B_A4D0;
const BLOCK_SHUFFLE: u64 = 0x00B1_0C5F;
/// The file open_clip reads shard sizes from: `{"name.tar": samples, ...}`.
pub const SIZES_FILE: &str = "sizes.json";

/// Whether the `--data` value `spec` names WebDataset shards: a `.tar` file or pattern, or
/// a `.txt` list of them.
pub fn is_shards(spec: &Path) -> bool {
    let text = spec.to_string_lossy();
    text.split("::").all(|part| part.ends_with(".tar")) || (text.ends_with(".txt") && spec.is_file())
}

/// The shard files of `spec` in order: its patterns expanded, or the lines of a `.txt`
/// list (relative to the list's folder). Every shard must exist.
pub fn expand(spec: &Path) -> Result<Vec<PathBuf>, FileError> {
    let text = spec.to_string_lossy().to_string();
    let (patterns, base): (Vec<String>, Option<PathBuf>) = if text.ends_with(".txt") {
        let listed = std::fs::read_to_string(spec).map_err(FileError::io(spec))?;
        let lines = listed.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#'));
        (lines.map(str::to_string).collect(), spec.parent().map(Path::to_path_buf))
    } else {
        (text.split("::").map(str::to_string).collect(), None)
    };
    let mut shards = Vec::new();
    for pattern in &patterns {
        for name in expand_braces(pattern).map_err(|problem| FileError::format(spec, problem))? {
            let path = PathBuf::from(&name);
            shards.push(match &base {
                Some(base) if path.is_relative() => base.join(path),
                _ => path,
            });
        }
    }
    if shards.is_empty() {
        return Err(FileError::format(spec, "names no shards"));
    }
    if let Some(missing) = shards.iter().find(|shard| !shard.is_file()) {
        return Err(FileError::format(missing, format!("no such shard (from {})", spec.display())));
    }
    Ok(shards)
}

/// `pattern` with each `{a..b}` (numbers, zero-padded to `a`'s width) and `{x,y}` expanded,
/// leftmost first, as webdataset's `braceexpand` does.
fn expand_braces(pattern: &str) -> Result<Vec<String>, String> {
    let Some(open) = pattern.find('{') else { return Ok(vec![pattern.to_string()]) };
    let close = pattern[open..].find('}').map(|at| open + at).ok_or_else(|| format!("`{pattern}`: unclosed {{"))?;
    let (head, inner, tail) = (&pattern[..open], &pattern[open + 1..close], &pattern[close + 1..]);
    let choices: Vec<String> = match inner.split_once("..") {
        Some((from, to)) => {
            let bad = || format!("`{{{inner}}}`: a range is {{first..last}} of whole numbers");
            let (first, last) = (from.parse::<u64>().map_err(|_| bad())?, to.parse::<u64>().map_err(|_| bad())?);
            if last < first {
                return Err(bad());
            }
            let width = from.len();
            (first..=last).map(|number| format!("{number:0width$}")).collect()
        }
        None => inner.split(',').map(str::to_string).collect(),
    };
    let rest = expand_braces(tail)?;
    Ok(choices.iter().flat_map(|choice| rest.iter().map(move |tail| format!("{head}{choice}{tail}"))).collect())
}

/// Where a member's bytes are in its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub offset: u64,
    pub len: u64,
}

/// A usable sample of a shard: its key, its image, and its text, one or both of `.txt` (the
/// caption) and `.json` (`caption` or `captions`, and `tags`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleEntry {
    pub key: String,
    pub image: Member,
    pub image_extension: String,
    pub txt: Option<Member>,
    pub json: Option<Member>,
}

/// A shard's usable samples, and what made it stop early, when something did.
#[derive(Debug, Clone)]
pub struct ShardTable {
    pub samples: Vec<SampleEntry>,
    /// Samples without an image or a text member (open_clip leaves them out too).
    pub incomplete: usize,
    /// A shard cut short or damaged: where reading stopped and why.
    pub damage: Option<String>,
}

/// Reads the tar headers of `shard` (skipping the contents) into its table of samples.
pub fn scan(shard: &Path) -> Result<ShardTable, FileError> {
    let file = std::fs::File::open(shard).map_err(FileError::io(shard))?;
    let mut archive = tar::Archive::new(file);
    let entries = archive.entries_with_seek().map_err(FileError::io(shard))?;
    let mut table = ShardTable { samples: Vec::new(), incomplete: 0, damage: None };
    let mut current: Option<(String, HashMap<String, Member>)> = None;
    // Where the last member's contents end, padded to tar's 512-byte blocks.
    let mut end = 0;
    let finish = |table: &mut ShardTable, sample: Option<(String, HashMap<String, Member>)>| {
        let Some((key, members)) = sample else { return };
        let image = IMAGE_EXTENSIONS.iter().find_map(|ext| members.get(*ext).map(|member| (*ext, *member)));
        let (txt, json) = (members.get("txt").copied(), members.get("json").copied());
        match image {
            Some((extension, image)) if txt.is_some() || json.is_some() => {
                table.samples.push(SampleEntry { key, image, image_extension: extension.to_string(), txt, json })
            }
            _ => table.incomplete += 1,
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                table.damage = Some(format!("unreadable after {} samples: {err}", table.samples.len()));
                current = None;
                break;
            }
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let Ok(path) = entry.path() else { continue };
        let name = path.to_string_lossy().to_string();
        // webdataset's split: the key is all before the first dot of the file name.
        let file_start = name.rfind('/').map_or(0, |slash| slash + 1);
        let Some(dot) = name[file_start..].find('.').map(|dot| file_start + dot) else { continue };
        let (key, extension) = (&name[..dot], name[dot + 1..].to_lowercase());
        if name[file_start..].starts_with("__") {
            continue;
        }
        let member = Member { offset: entry.raw_file_position(), len: entry.size() };
        end = end.max((member.offset + member.len).div_ceil(512) * 512);
        if current.as_ref().is_none_or(|(current_key, _)| current_key != key) {
            finish(&mut table, current.take());
            current = Some((key.to_string(), HashMap::new()));
        }
        current.as_mut().expect("set just above").1.insert(extension, member);
    }
    finish(&mut table, current);
    if table.damage.is_none() {
        // A shard cut short reads as one that ends early: a whole tar file ends with two
        // zero blocks after its last member.
        let length = std::fs::metadata(shard).map_err(FileError::io(shard))?.len();
        if end + 1024 > length {
            let ends = |member: Option<&Member>| member.map_or(0, |member| member.offset + member.len);
            let sample_end = |sample: &SampleEntry| {
                ends(Some(&sample.image)).max(ends(sample.txt.as_ref())).max(ends(sample.json.as_ref()))
            };
            while table.samples.last().is_some_and(|last| sample_end(last) > length) {
                table.samples.pop();
            }
            table.damage = Some(format!("cut short at {length} bytes, after {} whole samples", table.samples.len()));
        }
    }
    Ok(table)
}

/// The bytes of `member` of `shard`.
pub fn read_member(shard: &Path, member: Member) -> Result<Vec<u8>, FileError> {
    let mut file = std::fs::File::open(shard).map_err(FileError::io(shard))?;
    file.seek(std::io::SeekFrom::Start(member.offset)).map_err(FileError::io(shard))?;
    let mut bytes = vec![0; member.len as usize];
    file.read_exact(&mut bytes).map_err(FileError::io(shard))?;
    Ok(bytes)
}

/// The shards of a data set with their usable sample counts.
#[derive(Debug, Clone)]
pub struct ShardIndex {
    pub shards: Arc<Vec<PathBuf>>,
    pub counts: Vec<u64>,
    /// One line per shard that was damaged or had incomplete samples.
    pub problems: Vec<String>,
    /// Whether the counts are `sizes.json`'s rather than counted in the shards.
    pub recorded: bool,
}

impl ShardIndex {
    /// Counts the usable samples of `shards` with `threads` threads (or takes them from
    /// `sizes.json` beside the first shard, when it names every shard). A damaged shard
    /// stops here by name unless `skip_bad`, which keeps its samples before the damage.
    pub fn build(shards: Vec<PathBuf>, threads: usize, skip_bad: bool) -> Result<ShardIndex, FileError> {
        if let Some(counts) = recorded_sizes(&shards)? {
            return Ok(ShardIndex { shards: Arc::new(shards), counts, problems: Vec::new(), recorded: true });
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<(usize, Result<ShardTable, FileError>)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads.clamp(1, shards.len()))
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let at = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(shard) = shards.get(at) else { break done };
                            done.push((at, scan(shard)));
                        }
                    })
                })
                .collect();
            workers.into_iter().flat_map(|worker| worker.join().expect("scanning does not panic")).collect()
        });
        let mut counts = vec![0; shards.len()];
        let mut problems = Vec::new();
        let mut results = results;
        results.sort_by_key(|(at, _)| *at);
        for (at, result) in results {
            let table = result?;
            let shard = shards[at].display();
            if let Some(damage) = &table.damage {
                if !skip_bad {
                    return Err(FileError::format(&shards[at], format!("damaged shard: {damage}")));
                }
                problems.push(format!("{shard}: {damage}; its {} samples before that are kept", table.samples.len()));
            }
            if table.incomplete > 0 {
                problems.push(format!("{shard}: {} samples without an image or a caption left out", table.incomplete));
            }
            counts[at] = table.samples.len() as u64;
        }
        Ok(ShardIndex { shards: Arc::new(shards), counts, problems, recorded: false })
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// The counts `sizes.json` beside the shards gives, when it names each of them.
fn recorded_sizes(shards: &[PathBuf]) -> Result<Option<Vec<u64>>, FileError> {
    let Some(folder) = shards[0].parent() else { return Ok(None) };
    let file = folder.join(SIZES_FILE);
    if !file.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&file).map_err(FileError::io(&file))?;
    let sizes: HashMap<String, u64> =
        serde_json::from_str(&text).map_err(|err| FileError::format(&file, err.to_string()))?;
    let name = |shard: &PathBuf| shard.file_name().map(|name| name.to_string_lossy().to_string());
    Ok(shards.iter().map(|shard| name(shard).and_then(|name| sizes.get(&name).copied())).collect())
}

/// Where a stream position is: which shard (index into the index's list), which of its
/// usable samples, and the pass over the data it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSample {
    pub shard: u32,
    pub sample: u64,
    pub pass: u64,
}

impl StreamSample {
    /// A number naming this sample across shards (for its per-sample random draws).
    pub fn id(&self) -> i64 {
        ((self.shard as i64) << 32) | self.sample as i64
    }
}

/// One process's stream of samples over the shards of an index.
#[derive(Debug, Clone)]
pub struct ShardStream {
    counts: Vec<u64>,
    seed: u64,
    shard: Shard,
    resampled: bool,
    shuffle_buffer: u64,
    /// The first stream position of each pass computed so far (pass 0 starts at 0).
    pass_starts: Vec<u64>,
    /// The shards of the last pass looked at, and their cumulative sample counts.
    pass: Option<(u64, Vec<u32>, Vec<u64>)>,
    /// The permutation of the last block looked at, by (pass, block).
    block: Option<((u64, u64), Vec<u64>)>,
}

impl ShardStream {
    /// The stream of process `shard.index` of `shard.count`; each needs a shard of its own
    /// unless `resampled`.
    pub fn new(
        index: &ShardIndex,
        seed: u64,
        shard: Shard,
        resampled: bool,
        shuffle_buffer: u64,
    ) -> Result<Self, String> {
        let usable = index.counts.iter().filter(|count| **count > 0).count();
        if usable == 0 {
            return Err("no shard has a usable sample (an image with a .txt or .json caption)".into());
        }
        if !resampled && index.counts.len() < shard.count {
            return Err(format!(
                "{} shards for {} processes: each reads shards of its own (or pass --dataset-resampled)",
                index.counts.len(),
                shard.count
            ));
        }
        let mut stream = ShardStream {
            counts: index.counts.clone(),
            seed,
            shard,
            resampled,
            shuffle_buffer: shuffle_buffer.max(1),
            pass_starts: vec![0],
            pass: None,
            block: None,
        };
        if stream.pass_shards(0).1.last().copied().unwrap_or(0) == 0 {
            return Err(format!("process {} was dealt only shards without usable samples", shard.index));
        }
        Ok(stream)
    }

    /// The shards of pass `pass` of this stream, in reading order, with cumulative counts.
    fn pass_shards(&mut self, pass: u64) -> (&[u32], &[u64]) {
        if self.pass.as_ref().is_none_or(|(current, _, _)| *current != pass) {
            let shards = self.deal(pass);
            let mut cumulative = Vec::with_capacity(shards.len());
            let mut total = 0;
            for &shard in &shards {
                total += self.counts[shard as usize];
                cumulative.push(total);
            }
            self.pass = Some((pass, shards, cumulative));
        }
        let (_, shards, cumulative) = self.pass.as_ref().expect("set just above");
        (shards, cumulative)
    }

    /// Pass `pass`'s shards for this process: its share of a seeded permutation, or draws
    /// with replacement.
    fn deal(&self, pass: u64) -> Vec<u32> {
        let count = self.counts.len();
        let Shard { index, count: processes } = self.shard;
        if self.resampled {
            let draws = count.div_ceil(processes);
            return (0..draws)
                .map(|draw| (keyed(self.seed, &[SHARD_ORDER, pass, index as u64, draw as u64]) % count as u64) as u32)
                .collect();
        }
        let mut order: Vec<u32> = (0..count as u32).collect();
        for i in (1..count).rev() {
            let j = (keyed(self.seed, &[SHARD_ORDER, pass, i as u64]) % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        order.into_iter().skip(index).step_by(processes).collect()
    }

    fn pass_length(&mut self, pass: u64) -> u64 {
        self.pass_shards(pass).1.last().copied().unwrap_or(0)
    }

    /// The sample at stream position `position`.
    pub fn at(&mut self, position: u64) -> StreamSample {
        // A pass may deal this process only empty shards: it then has no positions.
        while *self.pass_starts.last().expect("pass 0 starts at 0") <= position {
            let pass = self.pass_starts.len() as u64 - 1;
            let end = self.pass_starts[pass as usize] + self.pass_length(pass);
            self.pass_starts.push(end);
        }
        let pass = self.pass_starts.partition_point(|start| *start <= position) as u64 - 1;
        let offset = position - self.pass_starts[pass as usize];
        let length = self.pass_length(pass);
        let block = offset / self.shuffle_buffer;
        let block_start = block * self.shuffle_buffer;
        let block_length = self.shuffle_buffer.min(length - block_start);
        let within = self.block_permutation(pass, block, block_length, offset - block_start);
        let (shards, cumulative) = self.pass_shards(pass);
        let in_pass = block_start + within;
        let which = cumulative.partition_point(|end| *end <= in_pass);
        let before = if which == 0 { 0 } else { cumulative[which - 1] };
        StreamSample { shard: shards[which], sample: in_pass - before, pass }
    }

    /// Where the sample at `slot` of a shuffled block of `length` comes from in the block:
    /// its entry in a seeded Fisher-Yates permutation of the block, kept for the next
    /// positions of the same block.
    fn block_permutation(&mut self, pass: u64, block: u64, length: u64, slot: u64) -> u64 {
        if self.block.as_ref().is_none_or(|(cached, _)| *cached != (pass, block)) {
            let index = self.shard.index as u64;
            let mut order: Vec<u64> = (0..length).collect();
            for i in (1..length).rev() {
                let j = (keyed(self.seed, &[BLOCK_SHUFFLE, pass, index, block, i]) % (i + 1)) as usize;
                order.swap(i as usize, j);
            }
            self.block = Some(((pass, block), order));
        }
        self.block.as_ref().expect("set just above").1[slot as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_expand_as_webdataset_expands_them() {
        assert_eq!(expand_braces("a/{008..011}.tar").unwrap(), ["a/008.tar", "a/009.tar", "a/010.tar", "a/011.tar"]);
        assert_eq!(expand_braces("{x,y}-{0..1}.tar").unwrap(), ["x-0.tar", "x-1.tar", "y-0.tar", "y-1.tar"]);
        assert!(expand_braces("{3..1}.tar").is_err() && expand_braces("{1..2.tar").is_err());
    }

    fn index(counts: &[u64]) -> ShardIndex {
        let shards = (0..counts.len()).map(|i| PathBuf::from(format!("{i}.tar"))).collect();
        ShardIndex { shards: Arc::new(shards), counts: counts.to_vec(), problems: Vec::new(), recorded: false }
    }

    #[test]
    fn a_pass_visits_each_sample_once_and_positions_are_seekable() {
        let index = index(&[5, 0, 7, 3]);
        let mut stream = ShardStream::new(&index, 9, Shard::WHOLE, false, 4).unwrap();
        let mut seen: Vec<(u32, u64)> = (0..15).map(|p| stream.at(p)).map(|s| (s.shard, s.sample)).collect();
        let mut fresh = ShardStream::new(&index, 9, Shard::WHOLE, false, 4).unwrap();
        assert_eq!(fresh.at(11), stream.at(11), "a position is the same sample whatever came before");
        assert_eq!(stream.at(15).pass, 1);
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 15);
    }

    #[test]
    fn processes_read_shards_of_their_own() {
        let index = index(&[4, 4, 4, 4]);
        let shards_of = |rank| {
            let mut stream = ShardStream::new(&index, 1, Shard { index: rank, count: 2 }, false, 3).unwrap();
            let mut shards: Vec<u32> = (0..8).map(|p| stream.at(p).shard).collect();
            shards.sort();
            shards.dedup();
            shards
        };
        let (first, second) = (shards_of(0), shards_of(1));
        assert_eq!(first.len() + second.len(), 4);
        assert!(first.iter().all(|shard| !second.contains(shard)));
        assert!(ShardStream::new(&index, 1, Shard { index: 0, count: 5 }, false, 3).is_err());
        assert!(ShardStream::new(&index, 1, Shard { index: 4, count: 5 }, true, 3).is_ok());
    }
}
