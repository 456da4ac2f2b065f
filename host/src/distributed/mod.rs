//! Data-parallel training over PyTorch's own distributed engine, c10d: the processes a
//! launcher started (torchrun, `trainer train --nproc`, or any that sets torchrun's
//! variables) meet at a TCPStore and form a process group, Gloo on the CPU and NCCL on CUDA
//! (each rank on the GPU of its LOCAL_RANK); [`Team`] is what the rest of the trainer sees
//! of it. A run of one process is a team of one, whose collectives do
//! nothing, so the training loop has one code path for both.
//!
//! The collectives come from the C++ shim in `host/shim/` (see `build.rs`) because c10d has no
//! C API and tch binds none of it; a home-made protocol would not interoperate with the
//! launchers and clusters our users already run.
//!
//! c10d's store authenticates nobody: whoever reaches its port can read and write the
//! rendezvous. A run on one machine (its master a loopback address, as `--nproc` sets it)
//! therefore listens on loopback only; a run over machines needs the network, as torchrun's
//! does, and is meant for a trusted one.

mod ffi;
pub mod launch;

pub use launch::{Launch, LaunchError};

use std::ffi::{CStr, CString, c_char};
use std::ptr::NonNull;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

/// A collective failed: most often because another process of the run stopped.
#[derive(Debug, thiserror::Error)]
pub enum DistributedError {
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("MASTER_ADDR={address} MASTER_PORT={port}: rank {rank} could not join the process group: {message}")]
    Join { address: String, port: u16, rank: usize, message: String },
    /// The ranks of a run disagree: a policy decided differently, or the replicas drifted.
    #[error("{0}")]
    Disagreement(String),
    /// A policy failed on another rank, which says how in its own output.
    #[error("{0}")]
    PeerPolicyFault(String),
    #[error(
        "rank {rank}: {operation} across {size} processes failed ({message}); another process of the run \
         has most likely stopped, and its own output says why"
    )]
    Collective { rank: usize, size: usize, operation: &'static str, message: String },
}

/// The processes training one model together, from this process's side.
#[derive(Debug)]
pub struct Team {
    rank: usize,
    size: usize,
    group: Option<Group>,
    /// Where the collectives run: CPU tensors for Gloo, this rank's GPU for NCCL. Tensors
    /// elsewhere are copied there and back.
    device: Device,
}

impl Team {
    /// A run of one process.
    pub fn solo() -> Team {
        Team { rank: 0, size: 1, group: None, device: Device::Cpu }
    }

    /// Joins the process group `launch` describes for training on `device` (NCCL for a
    /// GPU, Gloo otherwise), waiting at most `timeout` for the others (also the limit on
    /// any one collective). A launch of one process without a master address trains alone.
    pub fn join(launch: &Launch, timeout: Duration, device: Device) -> Result<Team, DistributedError> {
        if launch.world_size == 1 && launch.master_addr.is_empty() {
            return Ok(Team::solo());
        }
        let join_error = |message: String| DistributedError::Join {
            address: launch.master_addr.clone(),
            port: launch.master_port,
            rank: launch.rank,
            message,
        };
        let address =
            CString::new(launch.master_addr.as_str()).map_err(|_| join_error("a NUL byte in MASTER_ADDR".into()))?;
        // A run whose master is this machine's loopback address has every rank here: its
        // store and Gloo listen there only, since c10d's store has no authentication.
        let loopback = launch.on_one_machine();
        let listen_fd = if loopback && launch.rank == 0 && !launch.agent_store {
            let listener = std::net::TcpListener::bind((launch.master_addr.as_str(), launch.master_port))
                .map_err(|err| join_error(format!("cannot listen for the other ranks: {err}")))?;
            // The store takes the socket over and closes it.
            std::os::fd::IntoRawFd::into_raw_fd(listener)
        } else {
            -1
        };
        let mut error: *mut c_char = std::ptr::null_mut();
        // SAFETY: the strings outlive the call; `error` is set only on failure.
        let raw = unsafe {
            ffi::trainer_dist_group_new(
                address.as_ptr(),
                launch.master_port,
                launch.rank as i32,
                launch.world_size as i32,
                launch.agent_store,
                timeout.as_millis().min(i64::MAX as u128) as i64,
                device.is_cuda(),
                listen_fd,
                loopback,
                &mut error,
            )
        };
        match NonNull::new(raw) {
            Some(raw) => Ok(Team { rank: launch.rank, size: launch.world_size, group: Some(Group(raw)), device }),
            None => Err(join_error(take_message(error))),
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Rank 0, the one process that writes the run's files.
    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }

    /// Sums each tensor over the ranks, in place. Tensors travel in one flat buffer per
    /// kind (dtype), not one collective each; a buffer that is one contiguous tensor already
    /// (the optimizer's gradient buffers) is summed where it is.
    pub fn sum(&self, tensors: &[Tensor], operation: &'static str) -> Result<(), DistributedError> {
        self.flat(tensors, operation, |group, flat, error| unsafe {
            ffi::trainer_dist_all_reduce_sum(group, flat.as_mut_ptr(), error)
        })
    }

    /// Rank 0's values of the tensors on every rank, in place, in flat buffers as [`Team::sum`].
    pub fn broadcast_from_leader(&self, tensors: &[Tensor], operation: &'static str) -> Result<(), DistributedError> {
        self.flat(tensors, operation, |group, flat, error| unsafe {
            ffi::trainer_dist_broadcast(group, flat.as_mut_ptr(), 0, error)
        })
    }

    /// Every rank's rows of `tensor` (rows of the same shape; their number may differ, as
    /// when a rank skipped an unreadable sample), concatenated in rank order, and the row
    /// where this rank's start; `tensor` itself for a team of one.
    pub fn gather_rows(&self, tensor: &Tensor, operation: &'static str) -> Result<(Tensor, i64), DistributedError> {
        if self.group.is_none() {
            return Ok((tensor.shallow_clone(), 0));
        }
        let rows = tensor.size()[0];
        let counts: Vec<i64> = self.gather_words(&[rows], operation)?.into_iter().map(|words| words[0]).collect();
        let own_start = counts[..self.rank].iter().sum();
        let most = counts.iter().copied().max().unwrap_or(rows);
        if counts.iter().all(|&count| count == most) {
            return Ok((self.gather_equal(tensor, operation)?, own_start));
        }
        // Collectives move equal shapes: pad to the longest, then keep each rank's own rows.
        let mut padding = tensor.size();
        padding[0] = most - rows;
        let padded = Tensor::cat(
            &[tensor.shallow_clone(), Tensor::zeros(padding.as_slice(), (tensor.kind(), tensor.device()))],
            0,
        );
        let all = self.gather_equal(&padded, operation)?;
        let kept: Vec<Tensor> =
            counts.iter().enumerate().map(|(rank, &count)| all.narrow(0, rank as i64 * most, count)).collect();
        Ok((Tensor::cat(&kept, 0), own_start))
    }

    /// Each rank's `words`, in rank order (for checks that every rank agrees).
    pub fn gather_words(&self, words: &[i64], operation: &'static str) -> Result<Vec<Vec<i64>>, DistributedError> {
        let gathered = self.gather_equal(&Tensor::from_slice(words).view([1, -1]), operation)?;
        let flat = Vec::<i64>::try_from(gathered.flatten(0, -1))
            .map_err(|err| self.collective_error(operation, err.to_string()))?;
        Ok(flat.chunks(words.len().max(1)).map(<[i64]>::to_vec).collect())
    }

    /// The sum of `value` over the ranks (counts of images or boxes).
    pub fn total(&self, value: f64, operation: &'static str) -> Result<f64, DistributedError> {
        let sum = Tensor::from_slice(&[value]);
        self.sum(&[sum.shallow_clone()], operation)?;
        Ok(sum.double_value(&[0]))
    }

    /// Every rank's `tensor`, all of one shape, concatenated along dim 0 in rank order.
    fn gather_equal(&self, tensor: &Tensor, operation: &'static str) -> Result<Tensor, DistributedError> {
        let Some(group) = &self.group else { return Ok(tensor.shallow_clone()) };
        let input = tensor.to_device(self.device);
        let mut error: *mut c_char = std::ptr::null_mut();
        // SAFETY: the group and tensor are alive; a non-null result is a new `at::Tensor*`
        // that the returned Tensor owns and frees.
        let gathered = unsafe { ffi::trainer_dist_all_gather(group.0.as_ptr(), input.as_ptr(), &mut error) };
        if gathered.is_null() {
            return Err(self.collective_error(operation, take_message(error)));
        }
        Ok(unsafe { Tensor::from_ptr(gathered) }.to_device(tensor.device()))
    }

    fn flat(
        &self,
        tensors: &[Tensor],
        operation: &'static str,
        collective: impl Fn(*mut ffi::RawGroup, &mut Tensor, *mut *mut c_char) -> bool,
    ) -> Result<(), DistributedError> {
        let Some(group) = &self.group else { return Ok(()) };
        let mut kinds: Vec<Kind> = Vec::new();
        for tensor in tensors {
            if !kinds.contains(&tensor.kind()) {
                kinds.push(tensor.kind());
            }
        }
        for kind in kinds {
            let members: Vec<&Tensor> = tensors.iter().filter(|t| t.kind() == kind).collect();
            let in_place = members.len() == 1 && members[0].is_contiguous() && members[0].device() == self.device;
            let mut flat = if in_place {
                members[0].shallow_clone()
            } else {
                let pieces: Vec<Tensor> = members.iter().map(|t| t.reshape([-1]).to_device(self.device)).collect();
                Tensor::cat(&pieces, 0)
            };
            let mut error: *mut c_char = std::ptr::null_mut();
            if !collective(group.0.as_ptr(), &mut flat, &mut error) {
                return Err(self.collective_error(operation, take_message(error)));
            }
            if in_place {
                continue;
            }
            let mut offset = 0;
            for tensor in members {
                let count = tensor.numel() as i64;
                tch::no_grad(|| tensor.shallow_clone().copy_(&flat.narrow(0, offset, count).view_as(tensor)));
                offset += count;
            }
        }
        Ok(())
    }

    fn collective_error(&self, operation: &'static str, message: String) -> DistributedError {
        DistributedError::Collective { rank: self.rank, size: self.size, operation, message }
    }
}

/// An owned c10d process group of the shim.
#[derive(Debug)]
struct Group(NonNull<ffi::RawGroup>);

// SAFETY: c10d process groups are made to be called from any thread (their work runs on
// their own threads); the pointer is freed once, on drop.
unsafe impl Send for Group {}
unsafe impl Sync for Group {}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: made by trainer_dist_group_new, freed only here.
        unsafe { ffi::trainer_dist_group_free(self.0.as_ptr()) }
    }
}

/// The message of a failed shim call, freed after copying.
fn take_message(error: *mut c_char) -> String {
    if error.is_null() {
        return "no message".into();
    }
    // SAFETY: the shim hands over a NUL-terminated malloc'd string, ours to free.
    let message = unsafe { CStr::from_ptr(error) }.to_string_lossy().trim().to_string();
    unsafe { ffi::trainer_dist_free_error(error) };
    message
}
