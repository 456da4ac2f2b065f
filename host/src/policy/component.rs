//! Compiling policy components and calling them, one wasmtime store per policy, each call
//! inside the sandbox's limits: a fuel budget (deterministic), an epoch deadline (a
//! wall-clock backstop), and a memory cap that traps when the policy tries to grow past it.

use super::{
    Decision, INTERFACE_PACKAGE, InterfaceVersion, Knobs, LogLevel, Observation, PolicyError, PolicySource, RunSpec,
};
use super::{bindings, v1_0};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker, types::ComponentItem};
use wasmtime::{Config, Engine, ResourceLimiter, Store};

/// Limits on every call into a policy.
#[derive(Debug, Clone, Copy)]
pub struct SandboxLimits {
    /// Wasm fuel (about one unit per instruction) one call may use.
    pub fuel_per_call: u64,
    /// Wall-clock time one call may take, whatever its fuel.
    pub deadline: Duration,
    /// Linear memory a policy may grow to, in bytes.
    pub memory_bytes: usize,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits { fuel_per_call: 50_000_000, deadline: Duration::from_secs(2), memory_bytes: 64 << 20 }
    }
}

/// Most log lines kept from one call, most kept over a run, and most characters of one
/// line: a chatty or hostile policy can flood neither the run's log nor the memory.
const MAX_LOG_LINES_PER_CALL: usize = 20;
const MAX_LOG_LINES_PER_RUN: u64 = 10_000;
const MAX_LOG_LINE_CHARS: usize = 1000;

/// How often the epoch ticks; deadlines are counted in ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Calls a restarted policy makes before it may be restarted again: a policy that needs most
/// of its memory cap from the start is restarted at most this often, not at every call.
const CALLS_BETWEEN_RESTARTS: u64 = 100;

/// A line the policy logged, to be written to the run's log tagged with the policy's name.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

/// What the store holds for the host side of one policy.
struct HostState {
    memory: MemoryCap,
    log: Vec<LogLine>,
    logged_in_run: u64,
}

/// The sandbox's cap on each linear memory, and the size of the policy's largest one, which
/// the host watches for a policy whose memory grows call after call.
struct MemoryCap {
    cap: usize,
    largest: usize,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.cap || maximum.is_some_and(|maximum| desired > maximum) {
            // A trap, not a failed `memory.grow` the guest could ignore; `describe_trap`
            // recognises the message.
            return Err(wasmtime::Error::msg(format!("forcing trap when growing memory to {desired} bytes")));
        }
        self.largest = self.largest.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(maximum.is_none_or(|maximum| desired <= maximum))
    }
}

// The shared types interfaces have no functions to provide.
impl bindings::trainer::policy::types::Host for HostState {}
impl v1_0::bindings::trainer::policy::types::Host for HostState {}

impl bindings::trainer::policy::host::Host for HostState {
    fn log(&mut self, level: LogLevel, message: String) {
        self.log_line(level, message);
    }
}

impl v1_0::bindings::trainer::policy::host::Host for HostState {
    fn log(&mut self, level: v1_0::bindings::trainer::policy::host::LogLevel, message: String) {
        self.log_line(v1_0::log_level(level), message);
    }
}

impl HostState {
    fn log_line(&mut self, level: LogLevel, message: String) {
        self.logged_in_run += 1;
        if self.logged_in_run == MAX_LOG_LINES_PER_RUN {
            let message = format!("{MAX_LOG_LINES_PER_RUN} lines logged; the rest of this run's lines are dropped");
            self.log.push(LogLine { level: LogLevel::Warn, message });
        } else if self.logged_in_run < MAX_LOG_LINES_PER_RUN && self.log.len() < MAX_LOG_LINES_PER_CALL {
            let message = message.chars().take(MAX_LOG_LINE_CHARS).collect();
            self.log.push(LogLine { level, message });
        }
    }
}

/// Compiles and instantiates policy components. One per run, shared by its policies.
pub struct PolicyRuntime {
    engine: Engine,
    linker: Linker<HostState>,
    limits: SandboxLimits,
    cache_dir: Option<PathBuf>,
    ticker_stop: Arc<AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl PolicyRuntime {
    /// A runtime whose compiled components are cached in `cache_dir` (when given), keyed by
    /// the component's hash and the engine's configuration.
    pub fn new(limits: SandboxLimits, cache_dir: Option<PathBuf>) -> Self {
        let mut config = Config::new();
        // Policies must decide the same on every machine: NaNs get one bit pattern.
        config.cranelift_nan_canonicalization(true);
        config.consume_fuel(true);
        config.epoch_interruption(true);
        // Threads are off: this build of wasmtime has no threads support at all.
        let engine = Engine::new(&config).expect("the policy engine's fixed configuration is valid");
        let mut linker = Linker::new(&engine);
        bindings::Policy::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)
            .expect("the host interface is added once to a fresh linker");
        v1_0::Policy::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)
            .expect("each version's host interface has its own name");
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = ticker_stop.clone();
            std::thread::Builder::new()
                .name("policy-deadline".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .expect("a thread can be started")
        };
        PolicyRuntime { engine, linker, limits, cache_dir, ticker_stop, ticker: Some(ticker) }
    }

    /// Where the trainer caches compiled components between runs: `~/.cache/trainer/components`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/trainer/components"))
    }

    /// Reads, checks, compiles (or takes from the cache) and instantiates `source`.
    pub fn load(&self, source: &PolicySource) -> Result<PolicyInstance, PolicyError> {
        self.instantiate(&self.prepare(source)?)
    }

    /// Reads, checks and compiles (or takes from the cache) the component named by `source`,
    /// ready to be instantiated any number of times.
    pub fn prepare(&self, source: &PolicySource) -> Result<PreparedPolicy, PolicyError> {
        let path = source.path.as_path();
        // A file, or else the built-in policy the path names: resolved here rather than when
        // the command line is parsed, so a saved run naming `cosine_warmup` resumes with the
        // same embedded component.
        let bytes = source.read_component()?;
        check_header(path, &bytes)?;
        let sha256 = hex(&Sha256::digest(&bytes));
        let component = self.compile(path, &bytes, &sha256)?;
        self.check_imports(path, &component)?;
        let version = self.interface_version(path, &component)?;
        Ok(PreparedPolicy { path: path.to_path_buf(), name: source.name(), sha256, component, version })
    }

    /// A fresh instance of a prepared policy, in its own sandbox.
    pub fn instantiate(&self, prepared: &PreparedPolicy) -> Result<PolicyInstance, PolicyError> {
        let origin = Origin {
            engine: self.engine.clone(),
            linker: self.linker.clone(),
            component: prepared.component.clone(),
            path: prepared.path.clone(),
            name: prepared.name.clone(),
            sha256: prepared.sha256.clone(),
            version: prepared.version,
            limits: self.limits,
        };
        PolicyInstance::start(Arc::new(origin))
    }

    fn compile(&self, path: &Path, bytes: &[u8], sha256: &str) -> Result<Component, PolicyError> {
        let compile_error =
            |err: wasmtime::Error| PolicyError::Compile { path: path.to_path_buf(), detail: format!("{err:#}") };
        let Some(cache_dir) = &self.cache_dir else {
            return Component::new(&self.engine, bytes).map_err(compile_error);
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut hasher);
        let cached = cache_dir.join(format!("{sha256}-{:016x}.cwasm", hasher.finish()));
        if cached.exists() {
            // SAFETY: the cache holds only files this function wrote with `precompile_component`
            // of this engine configuration (the file name carries its hash), and wasmtime checks
            // the engine compatibility of the bytes again. A file that fails to load is rebuilt.
            if let Ok(component) = unsafe { Component::deserialize_file(&self.engine, &cached) } {
                return Ok(component);
            }
        }
        let compiled = self.engine.precompile_component(bytes).map_err(compile_error)?;
        // The cache only saves time: failing to write it is not an error for the run.
        let staging = cached.with_extension("tmp");
        if std::fs::create_dir_all(cache_dir).and_then(|_| std::fs::write(&staging, &compiled)).is_ok() {
            let _ = std::fs::rename(&staging, &cached);
        }
        // SAFETY: the bytes were produced just above by this engine.
        unsafe { Component::deserialize(&self.engine, &compiled) }.map_err(compile_error)
    }

    /// Refuses a component that imports anything but the host interface (WASI, say): the
    /// sandbox offers nothing else, and the message should say so rather than "missing".
    fn check_imports(&self, path: &Path, component: &Component) -> Result<(), PolicyError> {
        let allowed: Vec<String> = InterfaceVersion::ALL
            .iter()
            .flat_map(|version| {
                ["host", "types"].map(|name| format!("{INTERFACE_PACKAGE}/{name}@{}", version.number()))
            })
            .collect();
        let component_type = component.component_type();
        let foreign: Vec<&str> = component_type
            .imports(&self.engine)
            .map(|(name, _)| name)
            .filter(|name| !allowed.iter().any(|a| a == name))
            .collect();
        if foreign.is_empty() {
            return Ok(());
        }
        Err(PolicyError::ForbiddenImports { path: path.to_path_buf(), imports: foreign.join(", ") })
    }

    /// The version of the strategy interface the component exports. A component that exports
    /// it at another version is refused with the versions in the message (instantiation
    /// alone would only say "missing export").
    fn interface_version(&self, path: &Path, component: &Component) -> Result<InterfaceVersion, PolicyError> {
        let strategy = |version: &InterfaceVersion| format!("{INTERFACE_PACKAGE}/strategy@{}", version.number());
        let prefix = format!("{INTERFACE_PACKAGE}/strategy");
        let exports: Vec<String> = component
            .component_type()
            .exports(&self.engine)
            .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentInstance(_)))
            .map(|(name, _)| name.to_string())
            .collect();
        if let Some(version) = InterfaceVersion::ALL.into_iter().rev().find(|v| exports.contains(&strategy(v))) {
            return Ok(version);
        }
        let wanted: Vec<String> = InterfaceVersion::ALL.iter().map(strategy).collect();
        let wanted = wanted.join("` or `");
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

impl Drop for PolicyRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

/// A compiled, checked policy component, not yet instantiated.
pub struct PreparedPolicy {
    path: PathBuf,
    name: String,
    sha256: String,
    component: Component,
    version: InterfaceVersion,
}

/// What an instance is made from, kept to start it again.
struct Origin {
    engine: Engine,
    linker: Linker<HostState>,
    component: Component,
    path: PathBuf,
    name: String,
    sha256: String,
    version: InterfaceVersion,
    limits: SandboxLimits,
}

/// A component's entry points, at the version it implements.
enum Exports {
    V1_0(v1_0::Policy),
    V1_1(bindings::Policy),
}

/// One live policy: its sandbox and its entry points.
///
/// A policy whose linear memory keeps growing (a leak in its language's runtime: one
/// JavaScript `decide` call leaks about a kilobyte, and a run past 40,000 steps would hit
/// the cap) is started again from its own saved state once it has used half the room it had
/// after `init`: a new sandbox, `init` with the same spec, `load-state`. A policy whose state
/// round-trips exactly (what `trainer check-policy` checks) decides as if nothing happened.
pub struct PolicyInstance {
    origin: Arc<Origin>,
    store: Store<HostState>,
    exports: Option<Exports>,
    limits: SandboxLimits,
    /// Set once a call trapped: the instance may be inconsistent and is never entered again.
    trapped: Option<String>,
    last_fuel_used: u64,
    /// The spec `init` was given, to start the policy again with.
    spec: Option<RunSpec>,
    /// Memory size past which the policy is started again; set by `init`.
    restart_above: usize,
    calls_since_start: u64,
}

impl PolicyInstance {
    fn start(origin: Arc<Origin>) -> Result<Self, PolicyError> {
        let memory = MemoryCap { cap: origin.limits.memory_bytes, largest: 0 };
        let mut store = Store::new(&origin.engine, HostState { memory, log: Vec::new(), logged_in_run: 0 });
        store.limiter(|state| &mut state.memory);
        store.epoch_deadline_trap();
        let mut instance = PolicyInstance {
            store,
            exports: None,
            limits: origin.limits,
            trapped: None,
            last_fuel_used: 0,
            spec: None,
            restart_above: usize::MAX,
            calls_since_start: 0,
            origin,
        };
        instance.prepare_call();
        let origin = &instance.origin;
        let (store, component, linker) = (&mut instance.store, &origin.component, &origin.linker);
        let exports = match origin.version {
            InterfaceVersion::V1_0 => v1_0::Policy::instantiate(store, component, linker).map(Exports::V1_0),
            InterfaceVersion::V1_1 => bindings::Policy::instantiate(store, component, linker).map(Exports::V1_1),
        }
        .map_err(|err| PolicyError::WrongWorld { path: origin.path.clone(), detail: format!("{err:#}") })?;
        instance.exports = Some(exports);
        Ok(instance)
    }

    /// The policy's name (its file name without `.wasm`, or the built-in policy's name).
    pub fn name(&self) -> &str {
        &self.origin.name
    }

    /// SHA-256 of the component (file or built-in), stored with checkpoints.
    pub fn sha256(&self) -> &str {
        &self.origin.sha256
    }

    /// The interface version the component implements.
    pub fn interface_version(&self) -> InterfaceVersion {
        self.origin.version
    }

    /// Fuel the last call used.
    pub fn last_fuel_used(&self) -> u64 {
        self.last_fuel_used
    }

    /// Starts the policy with the run's fixed facts; returns the kinds of knob it claims.
    pub fn init(&mut self, spec: &RunSpec) -> Result<Knobs, PolicyError> {
        let outcome = self.call("init".into(), |exports, store| match exports {
            Exports::V1_0(old) => {
                let claimed = old.trainer_policy_strategy().call_init(store, &spec.into())?;
                Ok(claimed.map(v1_0::knobs))
            }
            Exports::V1_1(new) => new.trainer_policy_strategy().call_init(store, spec),
        })?;
        let claimed =
            outcome.map_err(|message| PolicyError::InitRefused { policy: self.name().to_string(), message })?;
        self.spec = Some(spec.clone());
        let started_with = self.store.data().memory.largest;
        self.restart_above = started_with + (self.limits.memory_bytes.saturating_sub(started_with)) / 2;
        Ok(claimed)
    }

    /// The policy's decision for the step `observation.step`, not yet validated.
    pub fn decide(&mut self, observation: &Observation) -> Result<Decision, PolicyError> {
        let decision = self.call(format!("step {}", observation.step), |exports, store| match exports {
            Exports::V1_0(old) => Ok(old.trainer_policy_strategy().call_decide(store, &observation.into())?.into()),
            Exports::V1_1(new) => new.trainer_policy_strategy().call_decide(store, observation),
        })?;
        self.calls_since_start += 1;
        if self.calls_since_start >= CALLS_BETWEEN_RESTARTS && self.store.data().memory.largest > self.restart_above {
            self.restart(observation.step)?;
        }
        Ok(decision)
    }

    /// Starts the policy again in a fresh sandbox from its saved state (see the type's doc).
    fn restart(&mut self, step: u64) -> Result<(), PolicyError> {
        let spec = self.spec.clone().expect("a policy decides only after init");
        let state = self.save_state("before a restart")?;
        let mut fresh = PolicyInstance::start(Arc::clone(&self.origin))?;
        fresh.init(&spec)?;
        fresh.load_state(&state)?;
        let (grown, cap) = (self.store.data().memory.largest >> 20, self.limits.memory_bytes >> 20);
        let message = format!(
            "its memory grew to {grown} MiB of its {cap} MiB cap by step {step}: started again from its saved state"
        );
        let host = self.store.data_mut();
        let log = std::mem::take(&mut host.log);
        let logged_in_run = host.logged_in_run;
        let fresh_host = fresh.store.data_mut();
        fresh_host.log = log;
        fresh_host.log.push(LogLine { level: LogLevel::Warn, message });
        fresh_host.logged_in_run = logged_in_run;
        *self = fresh;
        Ok(())
    }

    /// The policy's state, for a checkpoint.
    pub fn save_state(&mut self, stage: &str) -> Result<Vec<u8>, PolicyError> {
        self.call(format!("save-state ({stage})"), |exports, store| match exports {
            Exports::V1_0(old) => old.trainer_policy_strategy().call_save_state(store),
            Exports::V1_1(new) => new.trainer_policy_strategy().call_save_state(store),
        })
    }

    /// Restores a state from a checkpoint, right after `init`.
    pub fn load_state(&mut self, state: &[u8]) -> Result<(), PolicyError> {
        let outcome = self.call("load-state".into(), |exports, store| match exports {
            Exports::V1_0(old) => old.trainer_policy_strategy().call_load_state(store, state),
            Exports::V1_1(new) => new.trainer_policy_strategy().call_load_state(store, state),
        })?;
        outcome.map_err(|message| PolicyError::StateRefused { policy: self.name().to_string(), message })
    }

    /// Lines the policy logged since the last call to this.
    pub fn take_log(&mut self) -> Vec<LogLine> {
        std::mem::take(&mut self.store.data_mut().log)
    }

    /// Whether a call trapped (the instance is then closed for good).
    pub fn has_trapped(&self) -> bool {
        self.trapped.is_some()
    }

    fn prepare_call(&mut self) {
        self.store.set_fuel(self.limits.fuel_per_call).expect("fuel is enabled in the engine");
        let ticks = (self.limits.deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        self.store.set_epoch_deadline(ticks);
    }

    fn call<T>(
        &mut self,
        stage: String,
        call: impl FnOnce(&Exports, &mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<T, PolicyError> {
        if let Some(earlier) = &self.trapped {
            return Err(PolicyError::Trap {
                policy: self.origin.name.clone(),
                stage,
                cause: format!("the policy trapped earlier ({earlier}) and cannot be entered again"),
            });
        }
        self.prepare_call();
        let exports = self.exports.as_ref().expect("instances are returned only once instantiated");
        let outcome = call(exports, &mut self.store);
        self.last_fuel_used = self.limits.fuel_per_call - self.store.get_fuel().unwrap_or(0);
        outcome.map_err(|err| {
            let cause = describe_trap(&err, &self.limits);
            self.trapped = Some(format!("{stage}: {cause}"));
            PolicyError::Trap { policy: self.origin.name.clone(), stage, cause }
        })
    }
}

/// Names the limit a trap hit, in the user's terms, or the trap itself.
fn describe_trap(err: &wasmtime::Error, limits: &SandboxLimits) -> String {
    let full = format!("{err:#}");
    match err.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => {
            format!("ran out of fuel ({} units per call; raise it with --policy-fuel)", limits.fuel_per_call)
        }
        Some(wasmtime::Trap::Interrupt) => {
            format!("exceeded its wall-clock deadline of {:?} per call", limits.deadline)
        }
        Some(wasmtime::Trap::UnreachableCodeReached) => "it panicked (wasm `unreachable` executed)".to_string(),
        Some(trap) => trap.to_string(),
        None if full.contains("forcing trap when growing memory") => {
            format!("exceeded its memory cap of {} MiB", limits.memory_bytes >> 20)
        }
        None => full.lines().next().unwrap_or_default().to_string(),
    }
}
