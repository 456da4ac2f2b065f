//! `trainer check-policy`: every standard policy passes; each seeded fault of the hostile
//! fixture fails with the property it breaks and a shrunk, short stream.

mod common;

use common::{STANDARD_POLICIES, assert_success, fixture, policy, stderr, trainer};

#[test]
fn every_standard_policy_passes() {
    // staged_unfreeze needs to be told what to unfreeze; llrd needs groups with depths.
    let sources: Vec<(String, &str)> = STANDARD_POLICIES
        .iter()
        .map(|&name| match name {
            "staged_unfreeze" => (format!("{}:unfreeze=vision@300,unfreeze=text@900", policy(name).display()), "part"),
            "llrd" => (policy(name).display().to_string(), "layer"),
            // The checked runs' losses are tag, align and distill: align stands for t2t.
            "ram_balance" => (format!("{}:caption=align", policy(name).display()), "part"),
            _ => (policy(name).display().to_string(), "part"),
        })
        .collect();
    for (source, group_by) in &sources {
        let output = trainer(&["check-policy", source, "--cases", "24", "--group-by", group_by]);
        assert_success(&output);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("24 streams") && stdout.contains("restores its saved state exactly"), "{stdout}");
    }
}

#[test]
fn seeded_faults_fail_with_a_shrunk_stream() {
    let hostile = fixture("hostile_policy");
    let cases: [(&str, &[&str], &str, u64); 4] = [
        ("hidden_state", &[], "saves and restores its state", 3),
        ("lossy_state", &[], "saves and restores its state", 4),
        ("nan_on_plateau", &[], "decides validly", 6),
        ("fuel_leak", &["--policy-fuel", "2000000"], "never traps", 60),
    ];
    for (mode, extra, property, longest) in cases {
        let source = format!("{}:mode={mode}", hostile.display());
        let mut args = vec!["check-policy", source.as_str()];
        args.extend(extra);
        let output = trainer(&args);
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{mode}: {text}");
        assert!(text.contains(&format!("fails `{property}`")), "{mode}: {text}");
        let steps: u64 = text
            .split("minimal failing stream: ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{mode}: no minimal stream in {text}"));
        assert!(steps <= longest, "{mode}: the stream shrank only to {steps} steps: {text}");
    }
}

#[test]
fn a_policy_that_cannot_start_is_reported() {
    let source = format!("{}:nonsense=1", policy("cosine_warmup").display());
    let output = trainer(&["check-policy", &source]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("unknown argument `nonsense`"), "{}", stderr(&output));
}
