//! `trainer`: a fine-tuning trainer for vision and vision-language models on libtorch,
//! whose training strategy is a sandboxed WebAssembly policy chosen at run time.
//!
//! - [`policy`]: the wasmtime host that loads policies and checks their decisions
//! - [`engine`]: the training loop, parameter groups, the optimizer
//! - [`models`]: model definitions with Hugging Face names
//! - [`data`]: data sets, captions, sampling
//! - [`eval`]: evaluation
//! - [`report`]: metrics files and progress display
//! - [`cli`]: the command line

pub mod cli;
pub mod data;
pub mod engine;
pub mod eval;
pub mod models;
pub mod policy;
pub mod report;
