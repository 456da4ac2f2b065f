//! `trainer`: a fine-tuning trainer for vision and vision-language models on libtorch,
//! whose training strategy is a sandboxed WebAssembly policy chosen at run time.
//!
//! - [`policy`] is the wasmtime host that loads policies and checks their decisions
//! - [`engine`] holds the generic training loop, parameter groups, the optimizer, checkpoints
//! - [`tasks`] holds the kinds of training (CLIP, tagging), each with its data, model,
//!   losses and evaluation, and the commands that use a trained model
//! - [`models`] defines models with Hugging Face names
//! - [`data`] reads data sets, makes captions, augments, samples
//! - [`eval`] evaluates
//! - [`report`] writes metrics files and shows progress
//! - [`check`] is the property-based conformance check of a policy
//! - [`cli`] is the command line

pub mod check;
pub mod cli;
pub mod data;
pub mod distributed;
pub mod engine;
pub mod eval;
pub mod files;
pub mod models;
pub mod policy;
pub mod report;
pub mod sweep;
pub mod tasks;
