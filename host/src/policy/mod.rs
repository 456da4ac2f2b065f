//! The policy host: loads a policy component (a file, or one of the standard policies built
//! into the trainer), checks that it implements the `trainer:policy` world at a supported
//! version, and calls it every step inside a wasmtime sandbox. Every decision is validated
//! before the trainer applies it, and every failure names the policy, the step and the cause.

pub mod builtin;
mod component;
mod compose;
mod source;
mod validate;

pub use component::{LogLine, PolicyInstance, PolicyRuntime, PreparedPolicy, SandboxLimits};
pub use compose::{KNOB_NAMES, PolicySet, StepDecision, knob_name};
pub use source::PolicySource;
pub use validate::validate_decision;

/// Host bindings of the WIT world under `wit/v1`.
mod bindings {
    wasmtime::component::bindgen!({
        world: "policy",
        path: "../wit/v1",
    });
}

pub use bindings::trainer::policy::host::LogLevel;
pub use bindings::trainer::policy::types::{
    AugmentationKnob, Decision, Evaluation, GradClip, Knobs, NonFinite, Observation, ParamGroup, RunSpec,
};

impl Decision {
    /// A decision that changes nothing and requests nothing.
    pub fn keep() -> Self {
        Decision {
            lrs: vec![],
            loss_weights: vec![],
            augmentation: vec![],
            grad_clip: None,
            freeze: vec![],
            evaluate: false,
            checkpoint: false,
            stop: None,
        }
    }
}

/// The interface package this trainer implements, as components name it in their exports.
pub const INTERFACE_PACKAGE: &str = "trainer:policy";
pub const INTERFACE_VERSION: &str = "1.0.0";

/// Why a policy could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy file {}: {source}{}", path.display(), builtin_hint(source))]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policy file {}: not a WebAssembly file (it does not start with the `\\0asm` magic bytes)", path.display())]
    NotWasm { path: std::path::PathBuf },
    #[error(
        "policy file {}: a core WebAssembly module, not a component; wrap it into a component \
         of the {INTERFACE_PACKAGE}@{INTERFACE_VERSION} world (e.g. `wasm-tools component new`)",
        path.display()
    )]
    CoreModule { path: std::path::PathBuf },
    #[error("policy file {}: invalid component: {detail}", path.display())]
    Compile { path: std::path::PathBuf, detail: String },
    #[error("policy file {}: exports {found}, but this trainer supports {INTERFACE_PACKAGE}@{INTERFACE_VERSION}", path.display())]
    UnsupportedVersion { path: std::path::PathBuf, found: String },
    #[error(
        "policy file {}: imports {imports}; a policy may import only {INTERFACE_PACKAGE}/host (no WASI, no other host access)",
        path.display()
    )]
    ForbiddenImports { path: std::path::PathBuf, imports: String },
    #[error("policy file {}: does not implement the {INTERFACE_PACKAGE}@{INTERFACE_VERSION} world: {detail}", path.display())]
    WrongWorld { path: std::path::PathBuf, detail: String },
    #[error("policy `{given}`: neither a file nor a built-in policy (built-in: {})", builtin::names())]
    UnknownPolicy { given: String },
    #[error(
        "built-in policy `{name}` is missing from this trainer: build/policies/{name}.wasm did not exist when it \
         was built; run `make policies`, then rebuild the trainer"
    )]
    NotBuilt { name: String },
    #[error("policy argument `{argument}`: {problem}")]
    BadArgument { argument: String, problem: String },
    #[error("policy `{policy}` refused to start: {message}")]
    InitRefused { policy: String, message: String },
    #[error("policy `{policy}` refused its saved state: {message}")]
    StateRefused { policy: String, message: String },
    #[error("policies `{first}` and `{second}` both claim the {knob} knob; compose policies that set different knobs")]
    KnobConflict { knob: &'static str, first: String, second: String },
    #[error("policy `{policy}` trapped at {stage}: {cause}")]
    Trap { policy: String, stage: String, cause: String },
    #[error("policy `{policy}` at step {step}: invalid decision: {field}: {problem}")]
    InvalidDecision { policy: String, step: u64, field: String, problem: String },
}

/// For a policy file that does not exist: the built-in policies, one of which may have been meant.
fn builtin_hint(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => format!(" (built-in policies: {})", builtin::names()),
        _ => String::new(),
    }
}
