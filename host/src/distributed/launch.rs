//! How a process learns its place in a data-parallel run: torchrun's environment variables
//! (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, TORCHELASTIC_USE_AGENT_STORE),
//! the same on one machine or many; and `--nproc N`, which starts N local ranks with those
//! variables itself, as torchrun's standalone mode would, and ends them together.

use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The environment of a data-parallel run is missing or inconsistent.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LaunchError(String);

/// This process's place in a data-parallel run.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub rank: usize,
    /// The rank among those on this machine: the GPU it trains on.
    pub local_rank: usize,
    pub world_size: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun's agent already serves the store at the master address: every rank is a
    /// client of it.
    pub agent_store: bool,
}

impl Launch {
    /// The launch the environment describes; `None` when WORLD_SIZE is not set (one process).
    pub fn from_env() -> Result<Option<Launch>, LaunchError> {
        Self::from_variables(|name| std::env::var(name).ok())
    }

    fn from_variables(variable: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>, LaunchError> {
        let Some(world_size) = variable("WORLD_SIZE") else { return Ok(None) };
        let number = |name: &str, text: &str| {
            text.trim().parse::<usize>().map_err(|_| LaunchError(format!("{name}={text}: not a whole number")))
        };
        let world_size = number("WORLD_SIZE", &world_size)?;
        if world_size == 0 {
            return Err(LaunchError("WORLD_SIZE=0: a run needs at least one process".into()));
        }
        let rank = match variable("RANK") {
            Some(rank) => number("RANK", &rank)?,
            None if world_size == 1 => 0,
            None => return Err(LaunchError(format!("WORLD_SIZE={world_size}: RANK is not set"))),
        };
        if rank >= world_size {
            return Err(LaunchError(format!("RANK={rank} is not below WORLD_SIZE={world_size}")));
        }
        let local_rank = match variable("LOCAL_RANK") {
            Some(local_rank) => number("LOCAL_RANK", &local_rank)?,
            None => rank,
        };
        let required = |name: &str| {
            variable(name).filter(|value| !value.trim().is_empty()).ok_or_else(|| {
                LaunchError(format!(
                    "WORLD_SIZE={world_size}: {name} is not set; torchrun sets it, and a launch by hand must set \
                     MASTER_ADDR and MASTER_PORT on every rank"
                ))
            })
        };
        let port = |port: String| {
            port.trim().parse::<u16>().map_err(|_| LaunchError(format!("MASTER_PORT={port}: not a port number")))
        };
        // One process serves its own store: without a port given, any free one.
        let (master_addr, master_port) = if world_size == 1 {
            (variable("MASTER_ADDR").unwrap_or_default(), variable("MASTER_PORT").map(port).transpose()?.unwrap_or(0))
        } else {
            let master_port = port(required("MASTER_PORT")?)?;
            (required("MASTER_ADDR")?, master_port)
        };
        let agent_store = variable("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|value| value == "True" || value == "1");
        Ok(Some(Launch { rank, local_rank, world_size, master_addr, master_port, agent_store }))
    }

    /// Every rank is on this machine: the master address is a loopback one.
    pub fn on_one_machine(&self) -> bool {
        let address = self.master_addr.trim();
        address.eq_ignore_ascii_case("localhost")
            || address.parse::<std::net::IpAddr>().is_ok_and(|address| address.is_loopback())
    }
}

/// Runs this program again as `nproc` local ranks with `args`, and returns once all have
/// ended: the first failure's status, or success. When a rank fails, the others are given
/// `grace` to stop on their own (their next collective fails), then killed, so a run never
/// hangs on a dead peer. SIGINT or SIGTERM sent to this process is passed on to the ranks as
/// SIGTERM, on which they checkpoint and exit together. `shared` is set in every rank's
/// environment (the launcher's claim on the run folder).
pub fn spawn_local(
    nproc: usize,
    args: &[std::ffi::OsString],
    grace: Duration,
    shared: &[(&str, String)],
) -> Result<ExitStatus, LaunchError> {
    let program =
        std::env::current_exe().map_err(|err| LaunchError(format!("--nproc: cannot find this program: {err}")))?;
    // A free port now; the store of rank 0 binds it a moment later.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|err| LaunchError(format!("--nproc: no free local port for the rendezvous: {err}")))?
        .port();
    // Each rank's libtorch would otherwise start a thread per core: N ranks would share
    // the cores N times over. torchrun sets 1; a share of the cores keeps CPU runs fast.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = std::env::var("OMP_NUM_THREADS").unwrap_or_else(|_| (cores / nproc).max(1).to_string());
    // NCCL's bootstrap listens on the first interface other than loopback unless told
    // otherwise; every rank is here, so it has no reason to listen on the network.
    let nccl_interface = std::env::var("NCCL_SOCKET_IFNAME").unwrap_or_else(|_| "lo".into());
    let mut children: Vec<Child> = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let child = Command::new(&program)
            .args(args)
            .env("OMP_NUM_THREADS", &threads)
            .env("NCCL_SOCKET_IFNAME", &nccl_interface)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env_remove("TORCHELASTIC_USE_AGENT_STORE")
            .envs(shared.iter().map(|(name, value)| (name, value)))
            .spawn();
        match child {
            Ok(child) => children.push(child),
            Err(err) => {
                for child in &mut children {
                    let _ = child.kill();
                }
                return Err(LaunchError(format!("--nproc: cannot start rank {rank}: {err}")));
            }
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|err| LaunchError(format!("--nproc: cannot watch for signals: {err}")))?;
    }
    let mut statuses: Vec<Option<ExitStatus>> = vec![None; nproc];
    let mut first_failure: Option<(Instant, ExitStatus)> = None;
    while statuses.iter().any(Option::is_none) {
        if stop.swap(false, Ordering::Relaxed) {
            for (child, status) in children.iter().zip(&statuses) {
                if status.is_none() {
                    // SAFETY: kill(2) on the pid of a child not yet reaped.
                    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                }
            }
        }
        for (child, status) in children.iter_mut().zip(statuses.iter_mut()) {
            if status.is_none()
                && let Ok(Some(ended)) = child.try_wait()
            {
                *status = Some(ended);
                if !ended.success() && first_failure.is_none() {
                    first_failure = Some((Instant::now(), ended));
                }
            }
        }
        if let Some((since, _)) = first_failure
            && since.elapsed() > grace
        {
            for (child, status) in children.iter_mut().zip(&statuses) {
                if status.is_none() {
                    let _ = child.kill();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(first_failure.map(|(_, status)| status).unwrap_or_else(|| statuses[0].expect("every rank ended")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(variables: &[(&str, &str)]) -> Result<Option<Launch>, LaunchError> {
        Launch::from_variables(|name| variables.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn torchrun_variables_give_the_launch() {
        let found = launch(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ])
        .unwrap();
        let expected = Launch {
            rank: 1,
            local_rank: 1,
            world_size: 2,
            master_addr: "node0".into(),
            master_port: 29500,
            agent_store: true,
        };
        assert_eq!(found, Some(expected.clone()));
        assert!(!expected.on_one_machine(), "a named master may be another machine");
        for local in ["127.0.0.1", "127.0.1.1", "::1", "localhost"] {
            assert!(Launch { master_addr: local.into(), ..expected.clone() }.on_one_machine(), "{local}");
        }
        assert_eq!(launch(&[]).unwrap(), None);
    }

    #[test]
    fn missing_or_wrong_variables_are_named() {
        let message = |variables: &[(&str, &str)]| launch(variables).unwrap_err().to_string();
        assert!(
            message(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1")]).contains("MASTER_ADDR is not set")
        );
        assert!(message(&[("RANK", "2"), ("WORLD_SIZE", "2")]).contains("RANK=2 is not below WORLD_SIZE=2"));
        let bad_port = [("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "a"), ("MASTER_PORT", "x")];
        assert!(message(&bad_port).contains("MASTER_PORT=x"));
    }
}
