//! The claim a training process holds on its run folder, so that two runs never write into
//! one folder: an exclusive `flock` on `RUN/run.lock`, taken before anything in the folder
//! is read or changed and held until the run ends. The kernel releases it when the holder
//! dies, so a run killed with kill -9 leaves nothing to clean up. The file says who holds
//! it (pid, host, since when), for the message that refuses a second run.
//!
//! Ranks of one `--nproc` run share their launcher's claim: the launcher leaves the locked
//! descriptor open across exec and names it in [`INHERITED_FD`]; a rank that finds it
//! refers to the same lock file holds the same lock (flock locks belong to the open file,
//! which the children share).
//!
//! On network file systems `flock` may not exclude processes on other machines (NFS
//! emulates it with byte-range locks, which need a lock daemon; CIFS, FUSE and Lustre
//! without `-o flock` vary or refuse). What can be detected there is: the file system's
//! kind, said in a warning; a lock call the file system refuses, said and then done
//! without; and a holder on another host that is still alive, which keeps the file's time
//! fresh every [`HEARTBEAT`]: a claim that finds such a holder is refused although its own
//! lock succeeded.

use super::config::{RUN_FILE, RunOptions};
use super::error::{EngineError, io_error};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

pub const LOCK_FILE: &str = "run.lock";
/// The descriptor of a launcher's claim, in the environment of the ranks it starts.
pub const INHERITED_FD: &str = "TRAINER_RUN_LOCK_FD";
/// How often a holder refreshes the lock file's time.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// A holder on another host whose heartbeat is older than this is taken to be gone.
const HEARTBEAT_STALE: Duration = Duration::from_secs(3 * HEARTBEAT.as_secs());

/// Who holds a run folder, as its lock file says.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    /// RFC 3339, UTC.
    pub since: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "pid {} on {} since {}", self.pid, self.host, self.since)
    }
}

/// The claim on a run folder, released when dropped.
pub struct RunLock {
    path: PathBuf,
    file: File,
    /// The heartbeat of the process that wrote the holder record, which clears the record on
    /// release (a rank sharing its launcher's claim has none); dropping it stops the beat.
    heartbeat: Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl RunLock {
    /// Claims `run_dir` (made if missing) for this process tree, or refuses in one line
    /// naming the folder and its holder, touching nothing. What it cannot be sure of (a
    /// network file system, a refused lock call) is said on stderr.
    pub fn claim(run_dir: &Path) -> Result<RunLock, EngineError> {
        std::fs::create_dir_all(run_dir).map_err(io_error(run_dir))?;
        let path = run_dir.join(LOCK_FILE);
        if let Some(lock) = Self::inherited(&path)? {
            return Ok(lock);
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error(&path))?;
        if let Some(kind) = network_file_system(run_dir) {
            eprintln!(
                "warning: {} is on {kind}, where locks may not keep a run on another machine out; the \
                 trainer also refuses a holder whose heartbeat in {LOCK_FILE} is fresh",
                run_dir.display()
            );
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder =
                    read_holder(&mut file).map_or_else(|| "another process".to_string(), |holder| holder.to_string());
                return Err(in_use(run_dir, &holder));
            }
            Err(TryLockError::Error(err)) => eprintln!(
                "warning: {}: the file system refuses locks ({err}); only the heartbeat keeps a second run out",
                path.display()
            ),
        }
        let host = host_name();
        if let Some(holder) = read_holder(&mut file)
            && holder.host != host
            && let Some(age) = heartbeat_age(&file)
            && age < HEARTBEAT_STALE
        {
            let holder = format!(
                "{holder}, whose heartbeat is {}s old; this file system did not share the lock between the \
                 machines",
                age.as_secs()
            );
            return Err(in_use(run_dir, &holder));
        }
        let holder = Holder {
            pid: std::process::id(),
            host,
            since: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        };
        let record = serde_json::to_string(&holder).expect("holders serialize") + "\n";
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(record.as_bytes()))
            .map_err(io_error(&path))?;
        let heartbeat = start_heartbeat(file.try_clone().map_err(io_error(&path))?);
        Ok(RunLock { path, file, heartbeat: Some(heartbeat) })
    }

    /// The claim of `trainer train` (`resuming`: `--resume`) on `run_dir`; none for a
    /// resume of a folder without `run.json`, whose reading says what is wrong without the
    /// claim making the folder.
    pub fn for_command(run_dir: &Path, resuming: bool) -> Result<Option<RunLock>, EngineError> {
        if resuming && !run_dir.join(RUN_FILE).is_file() {
            return Ok(None);
        }
        RunLock::claim(run_dir).map(Some)
    }

    /// The claim of a run with `options`, taken by rank 0 (the others write nothing in the
    /// folder).
    pub fn for_run(options: &RunOptions, resuming: bool) -> Result<Option<RunLock>, EngineError> {
        if !options.team.is_leader() {
            return Ok(None);
        }
        RunLock::for_command(&options.run_dir, resuming)
    }

    /// The launcher's claim, when this process is one of its ranks.
    fn inherited(path: &Path) -> Result<Option<RunLock>, EngineError> {
        let Some(fd) = std::env::var(INHERITED_FD).ok().and_then(|fd| fd.parse::<i32>().ok()) else {
            return Ok(None);
        };
        let Ok(expected) = std::fs::metadata(path) else { return Ok(None) };
        use std::os::unix::fs::MetadataExt;
        // SAFETY: fstat on a descriptor number only reads; a closed one fails.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut stat) } != 0
            || stat.st_dev != expected.dev() as libc::dev_t
            || stat.st_ino != expected.ino() as libc::ino_t
        {
            return Ok(None);
        }
        // SAFETY: the descriptor is open, refers to the lock file, and nothing else in this
        // process owns it (the launcher left it open for exactly this).
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // The same open file as the launcher's: the lock it holds is this one.
        file.try_lock().map_err(|_| in_use(path.parent().unwrap_or(path), "another process"))?;
        Ok(Some(RunLock { path: path.to_path_buf(), file, heartbeat: None }))
    }

    /// The environment variable that lets child processes share this claim; the
    /// descriptor is kept open across their exec.
    pub fn share_with_children(&self) -> Result<(&'static str, String), EngineError> {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_raw_fd();
        // SAFETY: fcntl on our own open descriptor.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
            return Err(io_error(&self.path)(std::io::Error::last_os_error()));
        }
        Ok((INHERITED_FD, fd.to_string()))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.heartbeat.take() {
            drop(stop);
            let _ = thread.join();
            // No holder is named once the run has ended; the lock goes with the file.
            let _ = self.file.set_len(0);
        }
    }
}

fn in_use(run_dir: &Path, holder: &str) -> EngineError {
    EngineError::Config(format!(
        "{}: in use by {holder} ({LOCK_FILE}); wait for that run to end, or stop it and --resume it",
        run_dir.display()
    ))
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.trim()).ok()
}

fn heartbeat_age(file: &File) -> Option<Duration> {
    SystemTime::now().duration_since(file.metadata().ok()?.modified().ok()?).ok()
}

/// Refreshes the lock file's time every [`HEARTBEAT`] until the sender is dropped.
fn start_heartbeat(file: File) -> (mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(HEARTBEAT) {
            let _ = file.set_modified(SystemTime::now());
        }
    });
    (stop, thread)
}

fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is writable for its length; the result is NUL-terminated within it.
    if unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } != 0 {
        return "an unknown host".into();
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

/// The kind of network file system `dir` is on, by its magic number (statfs(2)).
fn network_file_system(dir: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs writes into the zeroed struct; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(match stat.f_type as u64 {
        0x6969 => "NFS",
        0xFF53_4D42 | 0xFE53_4D42 | 0x517B => "SMB/CIFS",
        0x6573_5546 => "a FUSE file system",
        0x00C3_6400 => "CephFS",
        0x0BD0_0BD0 => "Lustre",
        0x4750_4653 => "GPFS",
        0x0102_1997 => "9P",
        0x1983_0326 => "BeeGFS",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_is_refused_naming_the_holder_and_a_released_one_is_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::claim(dir.path()).unwrap();
        let refused = RunLock::claim(dir.path()).err().expect("a second claim is refused").to_string();
        assert!(refused.contains(&format!("pid {}", std::process::id())), "{refused}");
        assert!(refused.contains(&host_name()) && refused.contains(LOCK_FILE), "{refused}");
        drop(first);
        assert_eq!(std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap(), "", "no holder named once released");
        RunLock::claim(dir.path()).expect("a released folder is claimed again");
    }

    #[test]
    fn a_live_holder_on_another_host_is_refused_though_the_lock_itself_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let record = |host: &str| {
            let holder = Holder { pid: 7, host: host.into(), since: "2026-01-01T00:00:00Z".into() };
            std::fs::write(dir.path().join(LOCK_FILE), serde_json::to_string(&holder).unwrap()).unwrap();
        };
        record("node-b");
        let refused = RunLock::claim(dir.path()).err().expect("refused").to_string();
        assert!(refused.contains("pid 7 on node-b") && refused.contains("heartbeat"), "{refused}");
        // A dead holder on this host (kill -9) or a stale one elsewhere does not keep it.
        record(&host_name());
        drop(RunLock::claim(dir.path()).expect("a holder on this host without the lock is gone"));
        record("node-b");
        let file = File::options().write(true).open(dir.path().join(LOCK_FILE)).unwrap();
        file.set_modified(SystemTime::now() - 2 * HEARTBEAT_STALE).unwrap();
        RunLock::claim(dir.path()).expect("a stale holder elsewhere is gone");
    }
}
