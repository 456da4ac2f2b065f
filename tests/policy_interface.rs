//! Version 1.1 of the policy interface: components of 1.0 still run unchanged; learning-rate
//! multipliers of several policies compose by product on the owner's rate; `--group-by
//! layer` makes a group of each layer; shadow policies are recorded, never applied.

mod common;

use common::{
    assert_success, fixture, metrics_without_timing, observation, policy, read_json, read_jsonl, stderr, train_cpu,
    workspace,
};
use std::f64::consts::PI;
use std::path::Path;
use trainer::check::check_spec;
use trainer::models::groups::GroupBy;
use trainer::policy::{
    Evaluation, InterfaceVersion, Observation, PolicyInstance, PolicyRuntime, PolicySource, SandboxLimits,
};

fn load(runtime: &PolicyRuntime, path: &Path, args: &[(&str, &str)], total: u64) -> PolicyInstance {
    let mut instance = runtime.load(&PolicySource { path: path.to_path_buf(), args: vec![] }).unwrap();
    let args = args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    instance.init(&check_spec(total, args, GroupBy::Part)).unwrap();
    instance
}

/// The components in `tests/fixtures/policy-1.0.0/` were built against `wit/v1` before 1.1
/// existed; they decide exactly as the same policies built against 1.1.
#[test]
fn components_of_1_0_run_unchanged_and_decide_as_their_1_1_builds() {
    let runtime = PolicyRuntime::new(SandboxLimits::default(), None);
    let old_dir = workspace().join("tests/fixtures/policy-1.0.0");
    for (name, args) in [("cosine_warmup", vec![("warmup_steps", "10")]), ("early_stopping", vec![("patience", "2")])] {
        let mut old = load(&runtime, &old_dir.join(format!("{name}.wasm")), &args, 200);
        let mut new = load(&runtime, &policy(name), &args, 200);
        assert_eq!(old.interface_version(), InterfaceVersion::V1_0, "{name}");
        assert_eq!(new.interface_version(), InterfaceVersion::V1_1, "{name}");
        let mut stopped = false;
        for step in 0..200 {
            // The validation loss stops improving at step 60: early stopping fires.
            let evaluation = (step % 10 == 0 && step > 0)
                .then(|| Evaluation { step, values: vec![1.0 / (step.min(60) as f64), 0.5, 0.7] });
            let loss = 1.0 / (step + 1) as f64;
            let losses = if step == 0 { vec![] } else { vec![loss; 3] };
            let seen = Observation {
                elapsed_seconds: step as f64,
                seconds_left: Some(100.0),
                ..observation(step, losses, evaluation)
            };
            let (old_decision, new_decision) = (old.decide(&seen).unwrap(), new.decide(&seen).unwrap());
            assert_eq!(format!("{old_decision:?}"), format!("{new_decision:?}"), "{name} at step {step}");
            stopped |= old_decision.stop.is_some();
        }
        assert!(name != "early_stopping" || stopped, "the 1.0 early_stopping never stopped");
        assert_eq!(old.save_state("test").unwrap(), new.save_state("test").unwrap(), "{name}: state");
    }
}

/// `warmup + cosine` on `--lr`, as `cosine_warmup` computes it.
fn cosine_warmup(step: u64, base: f64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        base * (step + 1) as f64 / warmup as f64
    } else {
        base * 0.5 * (1.0 + (PI * (step - warmup) as f64 / (total - warmup) as f64).cos())
    }
}

/// The recipe of the README: text tower first with the image tower frozen, then both, image
/// at half the text's rate, warmup and cosine, early stopping, as four policies.
#[test]
fn the_composed_recipe_trains_each_group_at_the_product_of_its_policies() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let policies = [
        format!("{}:warmup_steps=3", policy("cosine_warmup").display()),
        format!("{}:vision=0.5", policy("layerwise").display()),
        format!("{}:unfreeze=vision@4,ramp_steps=3", policy("staged_unfreeze").display()),
        format!("{}:metric=val_loss,patience=5,eval_every=4", policy("early_stopping").display()),
    ];
    let output = train_cpu(&run_dir, &policies, &["--lr", "2e-5", "--steps", "10", "--batch-size", "16"]);
    assert_success(&output);
    let report = std::fs::read_to_string(run_dir.join("run.log")).unwrap();
    assert!(report.contains("lr-multipliers  the product of `layerwise` × `staged_unfreeze`"), "{report}");
    let metrics = read_jsonl(&run_dir.join("metrics.jsonl"));
    assert_eq!(metrics.len(), 10);
    for record in &metrics {
        let step = record["step"].as_u64().unwrap();
        let schedule = cosine_warmup(step, 2e-5, 3, 10);
        let ramp = if step < 4 { 0.0 } else { ((step - 4 + 1) as f64 / 3.0).min(1.0) };
        for (group, expected) in
            [("vision", schedule * 0.5 * ramp), ("text", schedule), ("projection", schedule), ("logit_scale", schedule)]
        {
            let lr = record["lr"][group].as_f64().unwrap();
            assert!((lr - expected).abs() <= 1e-12 * 2e-5, "step {step}, {group}: {lr} vs {expected}");
        }
    }
    let evaluations = read_jsonl(&run_dir.join("evaluations.jsonl"));
    assert_eq!(evaluations.iter().map(|e| e["step"].as_u64().unwrap()).collect::<Vec<_>>(), [4, 8]);
}

/// `--group-by layer`: one group per layer of each tower, in depth order, whose parameters
/// are exactly that layer's (counted from the saved model's tensors).
#[test]
fn grouping_by_layer_makes_a_group_of_each_layer_with_its_depth() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let policies = [format!("{}:decay=0.5", policy("llrd").display())];
    let output = train_cpu(&run_dir, &policies, &["--steps", "2", "--batch-size", "16", "--group-by", "layer"]);
    assert_success(&output);
    let run = read_json(&run_dir.join("run.json"));
    let groups = run["spec"]["groups"].as_array().unwrap();
    let (vision_blocks, text_blocks) = (
        run["model"]["vision_config"]["num_hidden_layers"].as_u64().unwrap(),
        run["model"]["text_config"]["num_hidden_layers"].as_u64().unwrap(),
    );
    let mut expected: Vec<(String, String, Option<(u64, u64)>, Vec<String>)> = Vec::new();
    for (tower, blocks, model, after) in [
        ("vision", vision_blocks, "vision_model", "post_layernorm"),
        ("text", text_blocks, "text_model", "final_layer_norm"),
    ] {
        let count = blocks + 2;
        expected.push((
            format!("{tower}.embeddings"),
            tower.into(),
            Some((0, count)),
            vec![format!("{model}.embeddings."), format!("{model}.pre_layrnorm.")],
        ));
        for block in 0..blocks {
            let prefix = format!("{model}.encoder.layers.{block}.");
            expected.push((format!("{tower}.{block}"), tower.into(), Some((block + 1, count)), vec![prefix]));
        }
        expected.push((
            format!("{tower}.post"),
            tower.into(),
            Some((count - 1, count)),
            vec![format!("{model}.{after}.")],
        ));
    }
    expected.push((
        "projection".into(),
        "projection".into(),
        None,
        vec!["visual_projection.".into(), "text_projection.".into()],
    ));
    expected.push(("logit_scale".into(), "logit_scale".into(), None, vec!["logit_scale".into()]));
    let tensors = tch::Tensor::read_safetensors(run_dir.join("final/model.safetensors")).unwrap();
    assert_eq!(groups.len(), expected.len(), "{groups:?}");
    let mut counted = 0;
    for (group, (name, tower, depth, prefixes)) in groups.iter().zip(&expected) {
        assert_eq!(group["name"], name.as_str());
        assert_eq!(group["tower"], tower.as_str());
        let saved_depth = group.get("depth").and_then(|d| Some((d[0].as_u64()?, d[1].as_u64()?)));
        assert_eq!(saved_depth, *depth, "{name}");
        let params: i64 = tensors
            .iter()
            .filter(|(tensor, _)| prefixes.iter().any(|prefix| tensor.starts_with(prefix.as_str())))
            .map(|(_, value)| value.numel() as i64)
            .sum();
        assert!(params > 0, "{name} has no parameters");
        assert_eq!(group["param_count"].as_i64().unwrap(), params, "{name}");
        counted += params;
    }
    assert_eq!(counted, tensors.iter().map(|(_, t)| t.numel() as i64).sum::<i64>(), "every tensor is in a group");
    // llrd's multipliers, in the learning rates the run logged: decay^(count - 1 - index).
    let first = &read_jsonl(&run_dir.join("metrics.jsonl"))[0]["lr"];
    let at_embeddings = first["vision.embeddings"].as_f64().unwrap() / first["vision.post"].as_f64().unwrap();
    assert!((at_embeddings - 0.5f64.powi(vision_blocks as i32 + 1)).abs() < 1e-12, "{first}");
}

/// A shadow sees what the policies see; its decisions go to decisions.jsonl marked
/// `shadow`, never to the weights; one that fails is dropped with a warning; a resumed run
/// continues its shadows from their saved state.
#[test]
fn shadow_policies_are_recorded_never_applied_and_dropped_when_they_fail() {
    let dir = tempfile::tempdir().unwrap();
    let policies = [format!("{}:warmup_steps=2", policy("cosine_warmup").display())];
    let common = ["--steps", "6", "--batch-size", "16", "--seed", "5"];
    let plain = dir.path().join("plain");
    assert_success(&train_cpu(&plain, &policies, &common));

    let shadows = [
        format!("{}:lr=0.5", policy("constant").display()),
        format!("{}:mode=nan_lr,at=2", fixture("hostile_policy").display()),
        format!("{}:mode=memory_bomb,at=3", fixture("hostile_policy").display()),
    ];
    let mut with_shadows: Vec<&str> = common.to_vec();
    for shadow in &shadows {
        with_shadows.extend(["--shadow-policy", shadow.as_str()]);
    }
    let shadowed = dir.path().join("shadowed");
    let output = train_cpu(&shadowed, &policies, &with_shadows);
    assert_success(&output);
    let weights = |run: &Path| std::fs::read(run.join("final/model.safetensors")).unwrap();
    assert!(weights(&plain) == weights(&shadowed), "a shadow changed the weights");
    assert_eq!(read_jsonl(&plain.join("metrics.jsonl")).len(), 6);

    let warnings = stderr(&output) + &String::from_utf8_lossy(&output.stdout);
    assert_eq!(warnings.matches("shadow policy dropped").count(), 2, "{warnings}");
    assert!(warnings.contains("lrs[vision]") && warnings.contains("memory cap"), "{warnings}");
    let decisions = read_jsonl(&shadowed.join("decisions.jsonl"));
    let shadow_steps = |name: &str| -> Vec<u64> {
        decisions
            .iter()
            .filter(|d| d["shadow"] == true && d["policy"] == name)
            .map(|d| d["step"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(shadow_steps("constant"), [0, 1, 2, 3, 4, 5]);
    // The NaN one decided steps 0 and 1, the memory bomb 0 to 2: each until it failed.
    assert_eq!(shadow_steps("hostile_policy"), [0, 0, 1, 1, 2]);
    assert!(decisions.iter().filter(|d| d["shadow"] == true).all(|d| d["policy"] != "cosine_warmup"));
    let real: Vec<&serde_json::Value> = decisions.iter().filter(|d| d.get("shadow").is_none()).collect();
    assert_eq!(real, read_jsonl(&plain.join("decisions.jsonl")).iter().collect::<Vec<_>>());

    // Paused after step 3 and resumed: the shadow that survived goes on from its state.
    let paused = dir.path().join("paused");
    let mut pausing = with_shadows.clone();
    pausing.extend(["--pause-after-steps", "3"]);
    assert_success(&train_cpu(&paused, &policies, &pausing));
    let resumed = common::trainer(&["train", "--resume", paused.to_str().unwrap(), "--device", "cpu"]);
    assert_success(&resumed);
    assert_eq!(read_jsonl(&paused.join("decisions.jsonl")), decisions);
    assert!(weights(&paused) == weights(&plain));
}

/// A policy snapshots before step 2 and rolls back before step 4 with no batch skipped:
/// step 4 then trains from the very weights and on the very batch of step 2, so its loss
/// and gradient norm are step 2's to the bit. Paused between the snapshot and the rollback,
/// or after it, and resumed, the run ends as the uninterrupted one.
#[test]
fn a_rollback_restores_its_snapshot_bit_for_bit_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let policies = [
        format!("{}:warmup_steps=2", policy("cosine_warmup").display()),
        format!("{}:mode=rollback,at=2", fixture("hostile_policy").display()),
    ];
    let common = ["--steps", "8", "--batch-size", "16", "--seed", "2"];
    let whole = dir.path().join("whole");
    assert_success(&train_cpu(&whole, &policies, &common));
    let metrics = metrics_without_timing(&whole);
    for field in ["loss", "grad_norm"] {
        assert_eq!(metrics[4][field], metrics[2][field], "step 4 repeats step 2: {field}");
        assert_ne!(metrics[5][field], metrics[3][field], "step 5 trains on at a lower rate");
    }
    let decisions = read_jsonl(&whole.join("decisions.jsonl"));
    let actions: Vec<(u64, &str)> =
        decisions.iter().filter_map(|d| Some((d["step"].as_u64()?, d.get("action")?.as_str()?))).collect();
    assert_eq!(actions, [(2, "snapshot"), (4, "rollback")]);
    let rollback = decisions.iter().find(|d| d["action"] == "rollback").unwrap();
    assert_eq!(rollback["data_position"], 2);
    assert!(rollback["restored"].as_str().unwrap().contains("before step 2"), "{rollback}");

    let weights = |run: &Path| std::fs::read(run.join("final/model.safetensors")).unwrap();
    for pause in ["3", "5"] {
        let paused = dir.path().join(format!("paused-{pause}"));
        let mut args = common.to_vec();
        args.extend(["--pause-after-steps", pause]);
        assert_success(&train_cpu(&paused, &policies, &args));
        let resumed = common::trainer(&["train", "--resume", paused.to_str().unwrap(), "--device", "cpu"]);
        assert_success(&resumed);
        assert!(weights(&paused) == weights(&whole), "paused after {pause}: other weights");
        assert_eq!(metrics_without_timing(&paused), metrics, "paused after {pause}");
        assert_eq!(read_jsonl(&paused.join("decisions.jsonl")), decisions, "paused after {pause}");
    }
}

/// A rollback to the newest checkpoint: with checkpoints every 2 steps, a rollback before
/// step 5 returns to the one after 4 steps, so step 5 repeats step 4 to the bit.
#[test]
fn a_rollback_to_a_checkpoint_restores_it_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let policies = [
        format!("{}:warmup_steps=2", policy("cosine_warmup").display()),
        format!("{}:mode=rollback,at=3,source=checkpoint", fixture("hostile_policy").display()),
    ];
    let args = ["--steps", "7", "--batch-size", "16", "--checkpoint-every", "2"];
    assert_success(&train_cpu(&run_dir, &policies, &args));
    let metrics = metrics_without_timing(&run_dir);
    for field in ["loss", "grad_norm"] {
        assert_eq!(metrics[5][field], metrics[4][field], "step 5 repeats step 4: {field}");
    }
    let decisions = read_jsonl(&run_dir.join("decisions.jsonl"));
    let rollback = decisions.iter().find(|d| d["action"] == "rollback").unwrap();
    assert_eq!((rollback["step"].as_u64(), rollback["data_position"].as_u64()), (Some(5), Some(4)));
    assert!(rollback["restored"].as_str().unwrap().starts_with("checkpoint taken before step 4"), "{rollback}");
}

/// `grad_balance` asks for the per-loss gradients every other step: they are measured on
/// those steps alone, logged by loss, and the weights it sets follow them.
#[test]
fn per_loss_gradients_are_measured_on_the_steps_a_policy_asks() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let policies = [format!("{}:every=2", policy("grad_balance").display())];
    let output = train_cpu(&run_dir, &policies, &["--task", "tagging", "--steps", "5", "--batch-size", "16"]);
    assert_success(&output);
    let metrics = read_jsonl(&run_dir.join("metrics.jsonl"));
    let measured: Vec<u64> =
        metrics.iter().filter(|m| m.get("loss_gradients").is_some()).map(|m| m["step"].as_u64().unwrap()).collect();
    assert_eq!(measured, [0, 2, 4]);
    for name in ["tag", "align", "distill"] {
        assert!(metrics[2]["loss_gradients"][name].as_f64().is_some_and(|norm| norm.is_finite() && norm >= 0.0));
    }
    let weights: Vec<serde_json::Value> =
        read_jsonl(&run_dir.join("decisions.jsonl")).into_iter().map(|d| d["loss_weights"].clone()).collect();
    assert_eq!(weights[0], serde_json::json!({"tag": 1.0, "align": 1.0, "distill": 1.0}));
    assert_ne!(weights[1], weights[0], "step 0's measurement moves the weights at step 1");
    assert_eq!(weights[2], weights[1], "step 1 measured nothing");
    assert_ne!(weights[3], weights[2], "step 2's measurement moves them again");
}

/// `--time-limit`: the run pauses with a checkpoint once it has trained that long, and a
/// resume finishes it.
#[test]
fn a_time_limit_pauses_the_run_with_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let policies = [policy("cosine_warmup").display().to_string()];
    let output = train_cpu(&run_dir, &policies, &["--steps", "50", "--batch-size", "16", "--time-limit", "0s"]);
    assert_success(&output);
    let said = String::from_utf8_lossy(&output.stdout).into_owned() + &stderr(&output);
    assert!(said.contains("--time-limit: 0 s of training reached after step 1; pausing"), "{said}");
    assert_eq!(read_jsonl(&run_dir.join("metrics.jsonl")).len(), 1);
    assert!(run_dir.join("checkpoints/step-1").is_dir());
    let resumed = common::trainer(&["train", "--resume", run_dir.to_str().unwrap(), "--device", "cpu"]);
    assert_success(&resumed);
    assert_eq!(read_jsonl(&run_dir.join("metrics.jsonl")).len(), 50);
    let elapsed = read_json(&run_dir.join("checkpoints/step-1/manifest.json"))["trainer"]["elapsed_seconds"].clone();
    assert!(elapsed.as_f64().is_some_and(|seconds| seconds > 0.0), "{elapsed}");
    let output = common::trainer(&["train", "--policy", "constant", "--time-limit", "2x"]);
    assert!(stderr(&output).contains("`2x`: expected seconds or a duration such as 2h30m"), "{}", stderr(&output));
}
