//! The C API of `host/shim/distributed.cpp`. Tensors cross as tch's `at::Tensor*`.

use std::ffi::c_char;
use torch_sys::C_tensor;

#[repr(C)]
pub struct RawGroup {
    _private: [u8; 0],
}

unsafe extern "C" {
    pub fn trainer_dist_group_new(
        master_addr: *const c_char,
        master_port: u16,
        rank: i32,
        world_size: i32,
        agent_store: bool,
        timeout_ms: i64,
        use_nccl: bool,
        listen_fd: i32,
        loopback: bool,
        error: *mut *mut c_char,
    ) -> *mut RawGroup;
    pub fn trainer_dist_group_free(group: *mut RawGroup);
    pub fn trainer_dist_free_error(error: *mut c_char);
    pub fn trainer_dist_all_reduce_sum(group: *mut RawGroup, tensor: *mut C_tensor, error: *mut *mut c_char) -> bool;
    pub fn trainer_dist_all_gather(
        group: *mut RawGroup,
        tensor: *const C_tensor,
        error: *mut *mut c_char,
    ) -> *mut C_tensor;
    pub fn trainer_dist_broadcast(
        group: *mut RawGroup,
        tensor: *mut C_tensor,
        root: i32,
        error: *mut *mut c_char,
    ) -> bool;
}
