//! The standard policies written again in Python, JavaScript and C (policies/python, js, c)
//! against the Rust originals: the same decisions (floats bit for bit, stop reasons to the
//! letter), the same state bytes and the same refusals of bad arguments over generated
//! observation streams, then a short real training run and a passing `check-policy` each.

mod common;

use common::{assert_success, policy, train_cpu, trainer};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use trainer::check::{StreamSpec, check_spec};
use trainer::models::groups::GroupBy;
use trainer::policy::{PolicyError, PolicyInstance, PolicyRuntime, PolicySource, PreparedPolicy, SandboxLimits};

const TOTAL_STEPS: u64 = 1000;
const STREAMS: usize = 8;

/// Argument sets that reach every branch: defaults, warmup longer than the run, a floor above
/// a group's base rate, a warmup from zero, patience in steps, a late start, divergence and
/// NaN handling off.
const COSINE_WARMUP_ARGS: &[&[(&str, &str)]] = &[
    &[],
    &[("warmup_steps", "100"), ("min_lr", "1e-5")],
    &[("warmup_steps", "0"), ("min_lr", "3e-4")],
    &[("warmup_steps", "+5000"), ("min_lr", " 2.5E-7 ")],
    &[("warmup_steps", "40"), ("warmup_start", "zero")],
];
const EARLY_STOPPING_ARGS: &[&[(&str, &str)]] = &[
    &[],
    &[("metric", "val_top1"), ("patience", "40"), ("unit", "steps"), ("min_delta", "-0.01"), ("eval_every", "7")],
    &[("patience", "1"), ("start", "300"), ("diverge_factor", "2"), ("stop_on_non_finite", "false")],
    &[("metric", "val_top5"), ("mode", "min"), ("diverge_factor", "0"), ("patience", "2")],
];
/// Arguments each language must refuse with the Rust policy's message.
const BAD_ARGS: &[(&str, &[(&str, &str)])] = &[
    ("cosine_warmup", &[("min_lr", "-1")]),
    ("cosine_warmup", &[("warmup_steps", "1.5")]),
    ("cosine_warmup", &[("warmup", "10")]),
    ("cosine_warmup", &[("min_lr", "1_0")]),
    ("cosine_warmup", &[("min_lr", "inf")]),
    ("cosine_warmup", &[("warmup_start", "later")]),
    ("early_stopping", &[("metric", "accuracy")]),
    ("early_stopping", &[("mode", "up")]),
    ("early_stopping", &[("patience", "-1")]),
    ("early_stopping", &[("stop_on_non_finite", "maybe")]),
    ("early_stopping", &[("min_delta", "0x10")]),
];

fn runtime() -> PolicyRuntime {
    // The cache the `trainer` runs below use: each component compiles once (13-15 s for Python
    // or JavaScript on 2 cores), here or there, and again only when its bytes change.
    PolicyRuntime::new(SandboxLimits::default(), PolicyRuntime::default_cache_dir())
}

fn prepare(runtime: &PolicyRuntime, name: &str) -> PreparedPolicy {
    runtime.prepare(&PolicySource { path: policy(name), args: vec![] }).unwrap_or_else(|err| panic!("{name}: {err}"))
}

fn args(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn start(runtime: &PolicyRuntime, prepared: &PreparedPolicy, pairs: &[(&str, &str)]) -> PolicyInstance {
    let mut instance = runtime.instantiate(prepared).unwrap();
    instance
        .init(&check_spec(TOTAL_STEPS, args(pairs), GroupBy::Part))
        .unwrap_or_else(|err| panic!("{pairs:?}: {err}"));
    instance
}

/// The same generated streams for every language.
fn streams() -> Vec<StreamSpec> {
    let mut runner = TestRunner::deterministic();
    let strategy = StreamSpec::strategy(TOTAL_STEPS);
    (0..STREAMS).map(|_| strategy.new_tree(&mut runner).unwrap().current()).collect()
}

/// Drives `language`'s version of `name` and the Rust one over the same streams, comparing
/// every decision (Debug text: floats to the last bit, -0 apart from 0) and the state bytes at
/// the stream's save point and at its end. At the save point both are resumed, as
/// `--resume --steps` does, into a run of another length (longer or shorter by stream), so the
/// re-planning is compared too.
fn assert_same_decisions(language: &str, name: &str, arg_sets: &[&[(&str, &str)]]) {
    let runtime = runtime();
    let rust = prepare(&runtime, name);
    let other = prepare(&runtime, &format!("{language}_{name}"));
    let spec = check_spec(TOTAL_STEPS, vec![], GroupBy::Part);
    for pairs in arg_sets {
        for (index, stream) in streams().iter().enumerate() {
            let (mut expected, mut actual) = (start(&runtime, &rust, pairs), start(&runtime, &other, pairs));
            let context = format!("{language}_{name} {pairs:?}, stream {index} ({stream})");
            for step in 0..stream.len {
                let observation = stream.observation(step, &spec);
                let want = format!("{:?}", expected.decide(&observation).unwrap());
                let got = format!("{:?}", actual.decide(&observation).unwrap());
                assert_eq!(got, want, "{context}: step {step}");
                if step + 1 == stream.save_at || step + 1 == stream.len {
                    let state = expected.save_state("test").unwrap();
                    assert_eq!(actual.save_state("test").unwrap(), state, "{context}: state after step {step}");
                    if step + 1 == stream.save_at {
                        let new_length = if index % 2 == 0 { TOTAL_STEPS * 2 } else { stream.save_at + 7 };
                        expected = resume(&runtime, &rust, pairs, new_length, &state);
                        actual = resume(&runtime, &other, pairs, new_length, &state);
                    }
                }
            }
        }
    }
}

/// A fresh instance started for a run of `total_steps` and given `state`.
fn resume(
    runtime: &PolicyRuntime,
    prepared: &PreparedPolicy,
    pairs: &[(&str, &str)],
    total_steps: u64,
    state: &[u8],
) -> PolicyInstance {
    let mut instance = runtime.instantiate(prepared).unwrap();
    instance.init(&check_spec(total_steps, args(pairs), GroupBy::Part)).unwrap();
    instance.load_state(state).unwrap_or_else(|err| panic!("{pairs:?}, resumed for {total_steps} steps: {err}"));
    instance
}

fn init_refusal(runtime: &PolicyRuntime, prepared: &PreparedPolicy, pairs: &[(&str, &str)]) -> String {
    let mut instance = runtime.instantiate(prepared).unwrap();
    match instance.init(&check_spec(TOTAL_STEPS, args(pairs), GroupBy::Part)) {
        Err(PolicyError::InitRefused { message, .. }) => message,
        other => panic!("{pairs:?} should be refused, got {other:?}"),
    }
}

fn assert_same_refusals(language: &str) {
    let runtime = runtime();
    for (name, pairs) in BAD_ARGS {
        let rust = init_refusal(&runtime, &prepare(&runtime, name), pairs);
        let other = init_refusal(&runtime, &prepare(&runtime, &format!("{language}_{name}")), pairs);
        assert_eq!(other, rust, "{language}_{name} {pairs:?}");
    }
}

fn assert_same_behaviour(language: &str) {
    assert_same_decisions(language, "cosine_warmup", COSINE_WARMUP_ARGS);
    assert_same_decisions(language, "early_stopping", EARLY_STOPPING_ARGS);
    assert_same_refusals(language);
}

/// A short CPU training run steered by both of `language`'s policies, and `check-policy`
/// passing each of them.
fn assert_trains_and_checks(language: &str) {
    let run_dir = tempfile::tempdir().unwrap();
    let cosine = format!("{}:warmup_steps=2", policy(&format!("{language}_cosine_warmup")).display());
    let stopping = format!("{}:eval_every=2", policy(&format!("{language}_early_stopping")).display());
    let output = train_cpu(run_dir.path(), &[cosine, stopping], &["--steps", "3", "--batch-size", "16"]);
    assert_success(&output);
    let decisions = common::read_jsonl(&run_dir.path().join("decisions.jsonl"));
    assert!(decisions.len() >= 6, "two policies over three steps: {decisions:?}");
    for name in ["cosine_warmup", "early_stopping"] {
        let path = policy(&format!("{language}_{name}"));
        let output = trainer(&["check-policy", path.to_str().unwrap(), "--cases", "8", "--steps", "500"]);
        assert_success(&output);
    }
}

#[test]
fn python_decides_as_rust() {
    assert_same_behaviour("python");
}

#[test]
fn javascript_decides_as_rust() {
    assert_same_behaviour("js");
}

#[test]
fn c_decides_as_rust() {
    assert_same_behaviour("c");
}

#[test]
fn python_trains_and_passes_the_check() {
    assert_trains_and_checks("python");
}

#[test]
fn javascript_trains_and_passes_the_check() {
    assert_trains_and_checks("js");
}

#[test]
fn c_trains_and_passes_the_check() {
    assert_trains_and_checks("c");
}
