//! Compiling policy components and calling them, one wasmtime store per policy.

use super::bindings;
use super::{Decision, INTERFACE_PACKAGE, INTERFACE_VERSION, LogLevel, Observation, PolicyError, PolicySource, RunSpec};
use std::path::Path;
use wasmtime::component::{Component, HasSelf, Linker, types::ComponentItem};
use wasmtime::{Config, Engine, Store};

/// Most log lines kept from one call, and most characters of one line: a chatty or hostile
/// policy cannot flood the run's log or the trainer's memory.
const MAX_LOG_LINES_PER_CALL: usize = 100;
const MAX_LOG_LINE_CHARS: usize = 1000;

/// A line the policy logged, to be written to the run's log tagged with the policy's name.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

/// What the store holds for the host side of one policy.
struct HostState {
    log: Vec<LogLine>,
}

// The shared types interface has no functions to provide.
impl bindings::trainer::policy::types::Host for HostState {}

impl bindings::trainer::policy::host::Host for HostState {
    fn log(&mut self, level: LogLevel, message: String) {
        if self.log.len() < MAX_LOG_LINES_PER_CALL {
            let message = message.chars().take(MAX_LOG_LINE_CHARS).collect();
            self.log.push(LogLine { level, message });
        }
    }
}

/// Compiles and instantiates policy components. One per run, shared by its policies.
pub struct PolicyRuntime {
    engine: Engine,
    linker: Linker<HostState>,
}

impl PolicyRuntime {
    pub fn new() -> Self {
        let mut config = Config::new();
        // Policies must decide the same on every machine: NaNs get one bit pattern.
        config.cranelift_nan_canonicalization(true);
        let engine = Engine::new(&config).expect("the policy engine's fixed configuration is valid");
        let mut linker = Linker::new(&engine);
        bindings::Policy::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)
            .expect("the host interface is added once to a fresh linker");
        PolicyRuntime { engine, linker }
    }

    /// Reads, checks and instantiates the component named by `source`.
    pub fn load(&self, source: &PolicySource) -> Result<PolicyInstance, PolicyError> {
        let path = source.path.as_path();
        let bytes = std::fs::read(path).map_err(|source| PolicyError::Read { path: path.to_path_buf(), source })?;
        check_header(path, &bytes)?;
        let component = Component::new(&self.engine, &bytes)
            .map_err(|err| PolicyError::Compile { path: path.to_path_buf(), detail: format!("{err:#}") })?;
        self.check_interface_version(path, &component)?;
        let mut store = Store::new(&self.engine, HostState { log: Vec::new() });
        let bindings = bindings::Policy::instantiate(&mut store, &component, &self.linker)
            .map_err(|err| PolicyError::WrongWorld { path: path.to_path_buf(), detail: format!("{err:#}") })?;
        Ok(PolicyInstance { name: source.name(), store, bindings })
    }

    /// Refuses a component that exports the strategy interface at another version, with
    /// both versions in the message (instantiation alone would only say "missing export").
    fn check_interface_version(&self, path: &Path, component: &Component) -> Result<(), PolicyError> {
        let wanted = format!("{INTERFACE_PACKAGE}/strategy@{INTERFACE_VERSION}");
        let prefix = format!("{INTERFACE_PACKAGE}/strategy");
        let exports: Vec<String> = component
            .component_type()
            .exports(&self.engine)
            .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentInstance(_)))
            .map(|(name, _)| name.to_string())
            .collect();
        if exports.contains(&wanted) {
            return Ok(());
        }
        match exports.iter().find(|name| name.starts_with(&prefix)) {
            Some(found) => Err(PolicyError::UnsupportedVersion { path: path.to_path_buf(), found: found.clone() }),
            None => Err(PolicyError::WrongWorld {
                path: path.to_path_buf(),
                detail: format!(
                    "it does not export `{wanted}` (its exports: {})",
                    if exports.is_empty() { "none".to_string() } else { exports.join(", ") }
                ),
            }),
        }
    }
}

impl Default for PolicyRuntime {
    fn default() -> Self {
        Self::new()
    }
}

/// Tells a component from a core module or a file that is not Wasm at all, so the error
/// says which mistake was made.
fn check_header(path: &Path, bytes: &[u8]) -> Result<(), PolicyError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(PolicyError::NotWasm { path: path.to_path_buf() });
    }
    // Bytes 6..8 are the layer: 0 for a core module, 1 for a component.
    if bytes[6..8] == [0, 0] {
        return Err(PolicyError::CoreModule { path: path.to_path_buf() });
    }
    Ok(())
}

/// One live policy: its sandbox and its entry points.
pub struct PolicyInstance {
    name: String,
    store: Store<HostState>,
    bindings: bindings::Policy,
}

impl PolicyInstance {
    /// The policy's name (its file name without `.wasm`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts the policy with the run's fixed facts; its refusal is returned as its message.
    pub fn init(&mut self, spec: &RunSpec) -> Result<(), PolicyError> {
        let outcome = self
            .bindings
            .trainer_policy_strategy()
            .call_init(&mut self.store, spec)
            .map_err(|err| self.trap("init".into(), err))?;
        outcome.map_err(|message| PolicyError::InitRefused { policy: self.name.clone(), message })
    }

    /// The policy's decision for the step `observation.step`, not yet validated.
    pub fn decide(&mut self, observation: &Observation) -> Result<Decision, PolicyError> {
        self.bindings
            .trainer_policy_strategy()
            .call_decide(&mut self.store, observation)
            .map_err(|err| self.trap(format!("step {}", observation.step), err))
    }

    /// Lines the policy logged since the last call to this.
    pub fn take_log(&mut self) -> Vec<LogLine> {
        std::mem::take(&mut self.store.data_mut().log)
    }

    fn trap(&self, stage: String, err: wasmtime::Error) -> PolicyError {
        PolicyError::Trap { policy: self.name.clone(), stage, cause: format!("{err:#}") }
    }
}
