//! Activation checkpointing (`--grad-checkpointing`): a transformer block's forward keeps
//! only its input, and backward runs the block again to rebuild what it needs, as PyTorch's
//! `torch.utils.checkpoint` and open_clip's `--grad-checkpointing` do. The autograd function
//! lives in the C++ shim (`host/shim/checkpoint.cpp`): tch cannot define one, so the shim
//! calls back into Rust for the block's forward.

use std::ffi::{CStr, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use tch::Tensor;
use torch_sys::C_tensor;

type Block = Box<dyn Fn(&Tensor) -> Tensor + Send>;
type BlockForward = unsafe extern "C" fn(block: *mut c_void, input: *const C_tensor) -> *mut C_tensor;
type BlockDrop = unsafe extern "C" fn(block: *mut c_void);

unsafe extern "C" {
    fn trainer_checkpoint(
        input: *const C_tensor,
        block: *mut c_void,
        forward: BlockForward,
        drop: BlockDrop,
        error: *mut *mut c_char,
    ) -> *mut C_tensor;
    fn trainer_grad_enabled() -> bool;
}

/// Whether autograd records operations on this thread (false under `tch::no_grad`).
pub fn grad_enabled() -> bool {
    // SAFETY: reads a thread-local flag.
    unsafe { trainer_grad_enabled() }
}

/// `block(input)` with its activations dropped after the forward and rebuilt in backward.
/// The gradients that reach the block's parameters and its input are those of the plain
/// call. `block` must compute the same function each time (no dropout): backward reruns it.
/// It is called once now and once from backward, which may run on autograd's device thread.
pub fn checkpointed(input: &Tensor, block: impl Fn(&Tensor) -> Tensor + Send + 'static) -> Tensor {
    // Parameters inside the block may need gradients when the input does not (frozen
    // embeddings): an input that requires grad makes the graph reach the block.
    let input = if input.requires_grad() { input.shallow_clone() } else { input.detach().requires_grad_(true) };
    let block: Box<Block> = Box::new(Box::new(block));
    let mut error = std::ptr::null_mut();
    // SAFETY: `input` is a live tensor; the shim owns `block` from here on and frees it
    // through `drop_block`, once.
    let output =
        unsafe { trainer_checkpoint(input.as_ptr(), Box::into_raw(block).cast(), run_block, drop_block, &mut error) };
    if output.is_null() {
        // SAFETY: on failure the shim sets `error` to a malloc'ed C string.
        let message = unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned();
        unsafe { libc::free(error.cast()) };
        panic!("checkpointed block: {message}");
    }
    // SAFETY: the shim returns a tensor allocated with `new`, as tch's own are.
    unsafe { Tensor::from_ptr(output) }
}

unsafe extern "C" fn run_block(block: *mut c_void, input: *const C_tensor) -> *mut C_tensor {
    // SAFETY: `block` is the `Box<Block>` made in `checkpointed`, alive until `drop_block`;
    // `input` is borrowed for the call, so it is not freed here.
    let block = unsafe { &*block.cast::<Block>() };
    let input = std::mem::ManuallyDrop::new(unsafe { Tensor::from_ptr(input.cast_mut()) });
    match catch_unwind(AssertUnwindSafe(|| block(&input))) {
        Ok(mut output) => {
            let raw = output.as_mut_ptr();
            std::mem::forget(output);
            raw
        }
        Err(_) => std::ptr::null_mut(),
    }
}

unsafe extern "C" fn drop_block(block: *mut c_void) {
    // SAFETY: called once, by the shim, for the box made in `checkpointed`.
    drop(unsafe { Box::from_raw(block.cast::<Block>()) });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tch::{Device, Kind};

    #[test]
    fn backward_runs_the_block_again_and_reaches_its_weights_and_input() {
        let weight = Tensor::randn([3, 3], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let input = Tensor::randn([2, 3], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let calls = Arc::new(AtomicUsize::new(0));
        let (counted, held) = (Arc::clone(&calls), weight.shallow_clone());
        let output = checkpointed(&input, move |xs| {
            counted.fetch_add(1, Ordering::SeqCst);
            xs.matmul(&held).tanh()
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        output.sum(Kind::Double).backward();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "backward rebuilt the block's activations");
        let (weight_grad, input_grad) = (weight.grad().copy(), input.grad().copy());
        let _ = weight.grad().zero_();
        let _ = input.grad().zero_();
        input.matmul(&weight).tanh().sum(Kind::Double).backward();
        assert!(weight_grad.allclose(&weight.grad(), 1e-12, 1e-12, false));
        assert!(input_grad.allclose(&input.grad(), 1e-12, 1e-12, false));
    }

    #[test]
    fn a_failing_block_is_reported() {
        let input = Tensor::ones([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let failed = std::panic::catch_unwind(|| checkpointed(&input, |_| panic!("bad block")));
        let message = *failed.expect_err("the failure reaches the caller").downcast::<String>().unwrap();
        assert!(message.contains("checkpointed block failed"), "{message}");
    }
}
