//! The command line: `trainer train --policy file.wasm ...`. Parses and checks flags, turns
//! them into a [`TrainConfig`], and maps failures to one-line messages and exit codes.

use crate::data::fashion_mnist;
use crate::engine::{EngineError, TrainConfig, TrainOutcome, train};
use crate::policy::{PolicyError, PolicySource};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tch::Device;

#[derive(Debug, Parser)]
#[command(name = "trainer", version, about = "Fine-tune vision and vision-language models, steered by a WebAssembly policy.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train CLIP on Fashion-MNIST images with templated captions.
    Train(TrainArgs),
}

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Policy component, optionally with arguments: `file.wasm:key=value,key=value`.
    #[arg(long, value_name = "FILE[:ARGS]")]
    pub policy: PolicySource,
    /// Number of optimizer steps.
    #[arg(long, default_value_t = 1000, value_parser = positive_u64, allow_negative_numbers = true)]
    pub steps: u64,
    /// Images per step.
    #[arg(long, default_value_t = 256, value_parser = positive_usize, allow_negative_numbers = true)]
    pub batch_size: usize,
    /// Seed of initialisation, data order and every per-sample random choice.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Base learning rate of every parameter group, before the policy's schedule.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// AdamW weight decay (not applied to biases, norms and the logit scale).
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    /// `auto` (CUDA when libtorch sees a GPU), `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: Device,
    /// Directory for metrics, decisions, weights and evaluation.
    #[arg(long, default_value = "runs/train")]
    pub run_dir: PathBuf,
    /// Directory of the Fashion-MNIST IDX files.
    #[arg(long, default_value = fashion_mnist::DEFAULT_DIR)]
    pub data: PathBuf,
    /// Replace an earlier run in --run-dir instead of refusing to start.
    #[arg(long)]
    pub overwrite: bool,
}

fn positive_u64(text: &str) -> Result<u64, String> {
    match text.parse::<i128>() {
        Ok(value) if value >= 1 && value <= u64::MAX as i128 => Ok(value as u64),
        Ok(_) => Err("must be a positive whole number".into()),
        Err(_) => Err("expected a positive whole number".into()),
    }
}

fn positive_usize(text: &str) -> Result<usize, String> {
    positive_u64(text).and_then(|value| usize::try_from(value).map_err(|_| "too large".into()))
}

fn parse_device(text: &str) -> Result<Device, String> {
    match text {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => match text.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(index)) => Ok(Device::Cuda(index)),
            _ => Err("expected auto, cpu, cuda or cuda:N".into()),
        },
    }
}

/// Exit codes: 0 success, 1 a run that failed, 2 bad command-line usage, 3 a policy that
/// trapped or decided something invalid.
pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_POLICY_FAULT: u8 = 3;

/// Runs the command line given to the process.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if err.use_stderr() => {
            eprintln!("{}", first_paragraph(&err.to_string()));
            return ExitCode::from(EXIT_USAGE);
        }
        Err(help_or_version) => {
            let _ = help_or_version.print();
            return ExitCode::SUCCESS;
        }
    };
    match cli.command {
        Command::Train(args) => match train(&args.into_config()) {
            Ok(outcome) => {
                report_outcome(&outcome);
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {}", one_line(&err));
                ExitCode::from(exit_code(&err))
            }
        },
    }
}

impl TrainArgs {
    fn into_config(self) -> TrainConfig {
        TrainConfig {
            policy: self.policy,
            steps: self.steps,
            batch_size: self.batch_size,
            seed: self.seed,
            lr: self.lr,
            weight_decay: self.weight_decay,
            device: self.device,
            run_dir: self.run_dir,
            data_dir: self.data,
            overwrite: self.overwrite,
        }
    }
}

fn report_outcome(outcome: &TrainOutcome) {
    println!(
        "trained {} steps in {:.1} s, final loss {:.4}",
        outcome.steps, outcome.train_seconds, outcome.final_loss
    );
    println!(
        "zero-shot accuracy on {} test images: top-1 {:.2}%, top-5 {:.2}%",
        outcome.zero_shot.images,
        outcome.zero_shot.top1 * 100.0,
        outcome.zero_shot.top5 * 100.0
    );
}

fn exit_code(err: &EngineError) -> u8 {
    match err {
        EngineError::Policy(PolicyError::Trap { .. } | PolicyError::InvalidDecision { .. }) => EXIT_POLICY_FAULT,
        _ => EXIT_FAILURE,
    }
}

/// The error and its causes on one line.
fn one_line(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text.lines().map(str::trim).filter(|line| !line.is_empty()).collect::<Vec<_>>().join(" ")
}

/// clap's message up to its first blank line (the error, not the usage text), as one line.
fn first_paragraph(message: &str) -> String {
    message.lines().take_while(|line| !line.trim().is_empty()).map(str::trim).collect::<Vec<_>>().join(" ")
}
