//! Split batches: for every task, a batch split into micro-batches (`--accum-steps`) or over
//! processes (data-parallel training over c10d, Gloo on the CPU) trains the model one process
//! trains on the whole batch. Data-parallel runs are the same however launched (`--nproc`,
//! torchrun, or torchrun's variables set by hand); they resume exactly; a rank that dies or
//! a policy that fails stops the others; a launch that cannot work says why in one line.

mod common;

use common::{assert_error, assert_one_line_error, assert_success, fixture, policy, read_jsonl, stderr};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tch::Tensor;

fn cosine() -> String {
    format!("{}:warmup_steps=2", policy("cosine_warmup").display())
}

/// The arguments of a short contrastive run on Fashion-MNIST into `run_dir`.
fn run_args(run_dir: &Path) -> Vec<String> {
    let args = ["train", "--device", "cpu", "--steps", "8", "--batch-size", "32", "--seed", "1", "--workers", "1"];
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.extend(["--policy".into(), cosine(), "--run-dir".into(), run_dir.display().to_string()]);
    args
}

/// The trainer with one intra-op thread per process, so that the float results of runs with
/// one and with two processes do not depend on how many cores the machine has.
fn command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_trainer"));
    command.env("OMP_NUM_THREADS", "1");
    command
}

fn run(args: &[String], extra: &[&str]) -> Output {
    command().args(args).args(extra).output().expect("the trainer runs")
}

fn weights(run_dir: &Path) -> HashMap<String, Tensor> {
    let file = run_dir.join("final/model.safetensors");
    Tensor::read_safetensors(&file).unwrap_or_else(|err| panic!("{}: {err}", file.display())).into_iter().collect()
}

fn assert_same_weights(a: &Path, b: &Path) {
    let (a, b) = (weights(a), weights(b));
    assert_eq!(a.len(), b.len());
    for (name, tensor) in &a {
        assert!(tensor.equal(&b[name]), "{name} differs");
    }
}

/// The largest difference between the two runs' weights, over the weights whose gradient
/// is not zero in exact arithmetic. The key projections' biases are left out: attention is
/// invariant to them, so their gradient is float noise, different for any other order of
/// the same sums, and AdamW turns noise of any size into steps of about the learning rate.
/// (CLIP's `k_proj.bias`, BERT's `key.bias`, and the middle third of Swin's packed
/// `qkv.bias`.)
fn largest_difference(a: &Path, b: &Path) -> f64 {
    let (a, b) = (weights(a), weights(b));
    let without_key_bias = |name: &str, tensor: &Tensor| -> Option<Tensor> {
        if name.ends_with("k_proj.bias") || name.ends_with("key.bias") {
            return None;
        }
        if name.ends_with("qkv.bias") {
            let third = tensor.size()[0] / 3;
            return Some(Tensor::cat(&[tensor.narrow(0, 0, third), tensor.narrow(0, 2 * third, third)], 0));
        }
        Some(tensor.shallow_clone())
    };
    a.iter()
        .filter_map(|(name, tensor)| Some((without_key_bias(name, tensor)?, without_key_bias(name, &b[name])?)))
        .map(|(a, b)| (a - b).abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

/// Trains `args` as one process on whole batches, then split each way of `splits`, and
/// checks that every split run saw the same losses (every term) and gradient norm at every
/// step, to float32 rounding of sums in another order (1e-5 relative: the tagging task's
/// gradient norm, in the thousands, measured 2.1e-6), and ended within `tolerance` of the
/// same weights.
fn assert_splits_train_the_same_model(args: &[&str], splits: &[&[&str]], tolerance: f64) {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    let mut base: Vec<String> = ["train", "--device", "cpu", "--seed", "1", "--workers", "1", "--policy"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    base.push(cosine());
    base.extend(args.iter().map(|a| a.to_string()));
    let with_dir = |dir: &Path| [base.clone(), vec!["--run-dir".into(), dir.display().to_string()]].concat();
    assert_success(&run(&with_dir(&whole), &[]));
    let expected = read_jsonl(&whole.join("metrics.jsonl"));
    for (index, split) in splits.iter().enumerate() {
        let other = dir.path().join(format!("split-{index}"));
        assert_success(&run(&with_dir(&other), split));
        let found = read_jsonl(&other.join("metrics.jsonl"));
        assert_eq!(found.len(), expected.len(), "{split:?}: rank 0 alone writes one line per step");
        for (want, got) in expected.iter().zip(&found) {
            let mut readings: Vec<(&str, f64, f64)> = ["loss", "grad_norm"]
                .iter()
                .map(|key| (*key, want[key].as_f64().unwrap(), got[key].as_f64().unwrap()))
                .collect();
            for (term, value) in want["losses"].as_object().unwrap() {
                readings.push((term, value.as_f64().unwrap(), got["losses"][term].as_f64().unwrap()));
            }
            let step = &want["step"];
            for (name, whole, split_value) in readings {
                let close = (whole - split_value).abs() <= 1e-5 * whole.abs().max(1e-3);
                assert!(close, "{split:?} step {step}: {name} {split_value}, not {whole}");
            }
        }
        let difference = largest_difference(&whole, &other);
        assert!(difference < tolerance, "{split:?}: weights differ by {difference}");
    }
}

#[test]
fn contrastive_training_split_over_processes_and_micro_batches_trains_the_same_model() {
    // Float rounding alone: the sums run in another order. Measured 7.5e-7 after 8 steps at
    // a peak learning rate of 2e-3 (and up to 2.8e-3 on the key biases left out). A loss over
    // each process's own half has another gradient altogether (the contrastive module's
    // test), which would move the weights by about the learning rate.
    let args = ["--steps", "8", "--batch-size", "32"];
    assert_splits_train_the_same_model(&args, &[&["--nproc", "2"], &["--nproc", "2", "--accum-steps", "2"]], 2e-5);
}

#[test]
fn tagging_split_over_processes_and_micro_batches_trains_the_same_model() {
    // Measured 9e-6 with 4 micro-batches after 4 steps (the align term's negatives span them).
    let args = ["--task", "tagging", "--steps", "4", "--batch-size", "16"];
    let splits: [&[&str]; 3] = [&["--nproc", "2"], &["--accum-steps", "4"], &["--nproc", "2", "--accum-steps", "2"]];
    assert_splits_train_the_same_model(&args, &splits, 5e-5);
}

#[test]
fn detection_split_over_processes_and_micro_batches_trains_the_same_model() {
    // Measured 5e-5 after 4 steps, on text-tower weights whose gradient (through the
    // queries) is tiny and which AdamW normalises; losses normalised by the global batch's
    // number of boxes add up over the pieces.
    let args = ["--task", "detection", "--steps", "4", "--batch-size", "8"];
    let splits: [&[&str]; 3] = [&["--nproc", "2"], &["--accum-steps", "3"], &["--nproc", "2", "--accum-steps", "2"]];
    assert_splits_train_the_same_model(&args, &splits, 2e-4);
}

#[test]
fn a_data_parallel_run_resumes_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (whole, part) = (dir.path().join("whole"), dir.path().join("part"));
    // Rank 0 evaluates every 2 steps; the other rank's policies observe its numbers.
    let evaluated = ["--nproc", "2", "--eval-every", "2"];
    assert_success(&run(&run_args(&whole), &evaluated));
    assert_success(&run(&run_args(&part), &[&evaluated[..], &["--pause-after-steps", "3"]].concat()));
    assert!(part.join("checkpoints/step-3").is_dir());
    let resumed =
        command().args(["train", "--resume", part.to_str().unwrap(), "--device", "cpu", "--nproc", "2"]).output();
    assert_success(&resumed.unwrap());
    assert_same_weights(&whole, &part);
    assert_eq!(read_jsonl(&whole.join("evaluations.jsonl")), read_jsonl(&part.join("evaluations.jsonl")));
    assert_eq!(read_jsonl(&whole.join("evaluations.jsonl")).len(), 4);
}

#[test]
fn torchrun_launches_the_same_run_as_nproc() {
    let python = PathBuf::from(std::env::var("TRAINER_PYTHON").expect("TRAINER_PYTHON names the project's Python"));
    let torchrun = python.with_file_name("torchrun");
    let dir = tempfile::tempdir().unwrap();
    let (spawned, launched) = (dir.path().join("nproc"), dir.path().join("torchrun"));
    assert_success(&run(&run_args(&spawned), &["--nproc", "2"]));
    let output = Command::new(&torchrun)
        .env("OMP_NUM_THREADS", "1")
        .args(["--standalone", "--nproc-per-node", "2", "--no-python", env!("CARGO_BIN_EXE_trainer")])
        .args(run_args(&launched))
        .output()
        .expect("torchrun runs");
    assert_success(&output);
    assert_same_weights(&spawned, &launched);
}

#[test]
fn a_policy_fault_stops_every_rank_and_rank_0_saves_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let mut args = run_args(&run_dir);
    let cosine = args.iter().position(|arg| *arg == cosine()).unwrap();
    args[cosine] = format!("{}:mode=nan_lr,at=3", fixture("hostile_policy").display());
    let output = run(&args, &["--nproc", "2"]);
    assert_error(&output, 3, &["hostile_policy", "NaN"]);
    assert!(run_dir.join("checkpoints/step-3/manifest.json").is_file(), "{}", stderr(&output));
}

/// torchrun with one process per node still makes a process group (NCCL's on a GPU, which
/// is how one GPU measures it): a group of one trains exactly as no group.
#[test]
fn a_launch_of_one_process_trains_as_a_plain_run() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, launched) = (dir.path().join("plain"), dir.path().join("launched"));
    assert_success(&run(&run_args(&plain), &[]));
    let mut one = rank(0, free_port(), &run_args(&launched));
    assert_success(&one.env("WORLD_SIZE", "1").output().unwrap());
    assert_same_weights(&plain, &launched);
}

/// A free local port, for a rendezvous.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Rank `rank` of 2, launched by hand with torchrun's variables.
fn rank(rank: usize, port: u16, args: &[String]) -> Command {
    let mut command = command();
    command
        .args(args)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string());
    command
}

/// `args` with `--steps` large enough that the run is stopped before its end.
fn endless(mut args: Vec<String>) -> Vec<String> {
    let steps = args.iter().position(|a| a == "--steps").unwrap() + 1;
    args[steps] = "100000".into();
    args
}

/// Waits until the run in `run_dir` has written `lines` lines of metrics.
fn wait_for_steps(run_dir: &Path, lines: usize) {
    let metrics = run_dir.join("metrics.jsonl");
    let started = Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |text| text.lines().count()) < lines {
        assert!(started.elapsed() < Duration::from_secs(120), "the run did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The processes whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // After the command name in parentheses: the state, then the parent's pid.
        let after_name = &stat[stat.rfind(')').unwrap() + 1..];
        if after_name.split_whitespace().nth(1) == Some(&parent.to_string()) {
            found.push(pid);
        }
    }
    found
}

/// The local addresses (as /proc/net/tcp{,6} write them) of the listening TCP sockets of
/// the processes `pids`.
fn listening_addresses(pids: &[u32]) -> Vec<String> {
    let mut inodes = Vec::new();
    for pid in pids {
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
            let target = std::fs::read_link(fd.path()).map(|t| t.display().to_string()).unwrap_or_default();
            if let Some(inode) = target.strip_prefix("socket:[").and_then(|rest| rest.strip_suffix(']')) {
                inodes.push(inode.to_string());
            }
        }
    }
    let mut addresses = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap().lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Field 3 is the state (0A: listening), field 9 the socket's inode.
            if fields[3] == "0A" && inodes.iter().any(|inode| inode == fields[9]) {
                addresses.push(fields[1].to_string());
            }
        }
    }
    addresses
}

/// SIGTERM to the launcher checkpoints every rank. While the run trains: its ranks listen on
/// loopback only (the store of rank 0, Gloo's pairs), and the folder they share is refused
/// to another run.
#[test]
fn sigterm_to_nproc_checkpoints_and_ends_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let launcher = command().args(endless(run_args(&run_dir))).args(["--nproc", "2"]).stderr(Stdio::piped()).spawn();
    let launcher = launcher.unwrap();
    wait_for_steps(&run_dir, 2);

    let ranks = children(launcher.id());
    assert_eq!(ranks.len(), 2, "two ranks under the launcher");
    let addresses = listening_addresses(&ranks);
    assert!(!addresses.is_empty(), "rank 0 serves the store");
    const IPV4_LOOPBACK: &str = "0100007F:";
    const IPV6_LOOPBACK: &str = "00000000000000000000000001000000:";
    for address in &addresses {
        assert!(address.starts_with(IPV4_LOOPBACK) || address.starts_with(IPV6_LOOPBACK), "listens on {address}");
    }
    let second = run(&run_args(&run_dir), &["--overwrite"]);
    assert_one_line_error(&second, 1, &[&format!("in use by pid {}", launcher.id()), "run.lock"]);

    let sent = Command::new("kill").args(["-TERM", &launcher.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let output = launcher.wait_with_output().unwrap();
    assert_success(&output);
    let checkpoints: Vec<_> = std::fs::read_dir(run_dir.join("checkpoints")).unwrap().collect();
    assert_eq!(checkpoints.len(), 1, "one checkpoint, written by rank 0 when both ranks stopped");
}

#[test]
fn a_killed_rank_stops_the_other_with_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let args = endless(run_args(&run_dir));
    let port = free_port();
    let mut leader = rank(0, port, &args).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let mut follower = rank(1, port, &args).stderr(Stdio::null()).stdout(Stdio::null()).spawn().unwrap();
    wait_for_steps(&run_dir, 2);
    follower.kill().unwrap();
    let killed = Instant::now();
    let _ = follower.wait();
    while leader.try_wait().unwrap().is_none() {
        assert!(killed.elapsed() < Duration::from_secs(60), "rank 0 still runs 60 s after rank 1 was killed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = leader.wait_with_output().unwrap();
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("error: rank 0:"), "{message}");
    assert!(message.contains("another process of the run has most likely stopped"), "{message}");
}

#[test]
fn launches_that_cannot_work_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let args = run_args(&dir.path().join("run"));
    let mut without_master = command();
    without_master.args(&args).env("RANK", "0").env("WORLD_SIZE", "2").env("MASTER_PORT", "29500");
    let output = without_master.env_remove("MASTER_ADDR").output().unwrap();
    assert_one_line_error(&output, 1, &["WORLD_SIZE=2", "MASTER_ADDR is not set"]);

    // Nobody serves the store at this port: rank 1 gives up after --dist-timeout.
    let port = free_port();
    let output = rank(1, port, &args).args(["--dist-timeout", "2"]).output().unwrap();
    assert_one_line_error(&output, 1, &[&format!("MASTER_ADDR=127.0.0.1 MASTER_PORT={port}"), "rank 1 could not join"]);

    let output = run(&args, &["--nproc", "3"]);
    assert_one_line_error(&output, 1, &["--batch-size 32 does not split evenly over 3 processes"]);
}

#[test]
fn ram_plus_and_ram_split_over_processes_and_micro_batches_train_the_same_model() {
    // recognize-anything's RAM++ (a small random one) with its teacher: `align` ranks every
    // caption of the global batch against every image, whichever process or piece holds it.
    let fixtures = Path::new(env!("CARGO_TARGET_TMPDIR")).join("recognize_anything-split");
    let made = common::python_fixture("recognize_anything/make_reference.py", &[fixtures.as_os_str()]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let tags = fixtures.join("model_tags.txt");
    let garments = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker"];
    std::fs::write(&tags, garments.join("\n")).unwrap();
    let (model, teacher) = (fixtures.join("ram_plus.pth"), fixtures.join("teacher"));
    let args = [
        "--task",
        "tagging",
        "--model",
        model.to_str().unwrap(),
        "--model-tags",
        tags.to_str().unwrap(),
        "--teacher",
        teacher.to_str().unwrap(),
        "--steps",
        "4",
        "--batch-size",
        "16",
    ];
    // Measured 3e-7 after 4 steps, both with 2 processes and with 4 micro-batches.
    let splits: [&[&str]; 3] = [&["--nproc", "2"], &["--accum-steps", "4"], &["--nproc", "2", "--accum-steps", "2"]];
    assert_splits_train_the_same_model(&args, &splits, 5e-6);

    // RAM with its caption branch: `t2t` averages over the caption tokens of the global
    // batch, whichever process or piece holds them.
    let (model, vocabulary) = (fixtures.join("ram.pth"), fixtures.join("bert_vocab"));
    let mut args = args.to_vec();
    args[3] = model.to_str().unwrap();
    args.extend(["--text-tokenizer", vocabulary.to_str().unwrap()]);
    assert_splits_train_the_same_model(&args, &[&["--nproc", "2", "--accum-steps", "2"]], 5e-6);
}
