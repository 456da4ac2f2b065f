//! The policy host: loads a policy component (a file, or one of the standard policies built
//! into the trainer), checks that it implements the `trainer:policy` world at a supported
//! version, and calls it every step inside a wasmtime sandbox. Every decision is validated
//! before the trainer applies it, and every failure names the policy, the step and the cause.

pub mod builtin;
mod component;
mod compose;
mod source;
mod v1_0;
mod validate;

pub use component::{LogLine, PolicyInstance, PolicyRuntime, PreparedPolicy, SandboxLimits};
pub use compose::{KNOB_NAMES, PolicySet, StepDecision, continues_state, knob_name};
pub use source::PolicySource;
pub use validate::validate_decision;

/// Host bindings of the newest WIT world, under `wit/v1.1`; the trainer's own types.
mod bindings {
    wasmtime::component::bindgen!({
        world: "policy",
        path: "../wit/v1.1",
    });
}

pub use bindings::trainer::policy::host::LogLevel;
pub use bindings::trainer::policy::types::{
    AugmentationKnob, Decision, Depth, Evaluation, GradClip, Knobs, LossGradients, NonFinite, Observation, ParamGroup,
    Rollback, RollbackSource, RunSpec,
};

impl Decision {
    /// A decision that changes nothing and requests nothing.
    pub fn keep() -> Self {
        Decision {
            lrs: vec![],
            lr_multipliers: vec![],
            loss_weights: vec![],
            augmentation: vec![],
            grad_clip: None,
            freeze: vec![],
            evaluate: false,
            checkpoint: false,
            stop: None,
            measure_loss_gradients: false,
            snapshot: false,
            rollback: None,
        }
    }
}

/// The interface package this trainer implements, as components name it in their exports.
pub const INTERFACE_PACKAGE: &str = "trainer:policy";

/// The versions of the interface a component may implement, oldest first. The last is the
/// one the SDKs target; new policies should use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterfaceVersion {
    V1_0,
    V1_1,
}

impl InterfaceVersion {
    pub const ALL: [InterfaceVersion; 2] = [InterfaceVersion::V1_0, InterfaceVersion::V1_1];
    pub const NEWEST: InterfaceVersion = InterfaceVersion::V1_1;

    /// The version as components write it (`1.1.0`).
    pub fn number(self) -> &'static str {
        match self {
            InterfaceVersion::V1_0 => "1.0.0",
            InterfaceVersion::V1_1 => "1.1.0",
        }
    }

    /// `trainer:policy@1.1.0`, as checkpoints record it.
    pub fn qualified(self) -> String {
        format!("{INTERFACE_PACKAGE}@{}", self.number())
    }
}

/// `trainer:policy@1.0.0 or @1.1.0`, for messages.
fn supported_versions() -> String {
    let numbers: Vec<String> = InterfaceVersion::ALL.iter().map(|v| format!("@{}", v.number())).collect();
    format!("{INTERFACE_PACKAGE}{}", numbers.join(" or "))
}

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
         of the {} world (e.g. `wasm-tools component new`)",
        path.display(), InterfaceVersion::NEWEST.qualified()
    )]
    CoreModule { path: std::path::PathBuf },
    #[error("policy file {}: invalid component: {detail}", path.display())]
    Compile { path: std::path::PathBuf, detail: String },
    #[error("policy file {}: exports {found}, but this trainer supports {}", path.display(), supported_versions())]
    UnsupportedVersion { path: std::path::PathBuf, found: String },
    #[error(
        "policy file {}: imports {imports}; a policy may import only {INTERFACE_PACKAGE}/host (no WASI, no other host access)",
        path.display()
    )]
    ForbiddenImports { path: std::path::PathBuf, imports: String },
    #[error("policy file {}: does not implement the {} world: {detail}", path.display(), supported_versions())]
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
