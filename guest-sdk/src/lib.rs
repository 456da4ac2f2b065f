//! Write a training policy for `trainer` in Rust.
//!
//! A policy is a type implementing [`Policy`], registered with [`export_policy!`] and built
//! for `wasm32-unknown-unknown`, then wrapped into a component of the `trainer:policy` world.
//! The trainer creates it once per run from the [`RunSpec`] and asks it for a [`Decision`]
//! every step. Everything here runs inside the sandbox: the only way out is [`log`].
//!
//! ```ignore
//! use trainer_policy_sdk::{export_policy, Decision, Knobs, Observation, Policy, RunSpec};
//!
//! struct Halve;
//!
//! impl Policy for Halve {
//!     fn init(_spec: RunSpec) -> Result<Self, String> { Ok(Halve) }
//!     fn knobs(&self) -> Knobs { Knobs::LEARNING_RATES }
//!     fn decide(&mut self, obs: Observation) -> Decision {
//!         Decision { lrs: obs.lrs.iter().map(|lr| Some(lr * 0.5)).collect(), ..Decision::keep() }
//!     }
//! }
//!
//! export_policy!(Halve);
//! ```
//!
//! A policy whose decisions depend on what it has seen must implement
//! [`Policy::save_state`] and [`Policy::load_state`] (see [`state`]), so that a resumed run
//! decides exactly as an uninterrupted one. A schedule planned over the run's length
//! keeps that length in its state (see [`plan`]), so a run resumed with a new `--steps`
//! re-plans from the resume step instead of jumping.

// The bindings' generated code names this crate by its absolute path.
extern crate self as trainer_policy_sdk;

mod args;
pub mod groups;
pub mod metrics;
pub mod plan;
pub mod schedules;
pub mod state;

pub use args::Args;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "policy",
        path: "../wit/v1.1",
        pub_export_macro: true,
        export_macro_name: "__export_component",
        default_bindings_module: "::trainer_policy_sdk::bindings",
        runtime_path: "::trainer_policy_sdk::__wit_bindgen::rt",
    });
}

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

pub use bindings::trainer::policy::host::LogLevel;
pub use bindings::trainer::policy::types::{
    AugmentationKnob, Decision, Depth, Evaluation, GradClip, Knobs, LossGradients, NonFinite, Observation, ParamGroup,
    Rollback, RollbackSource, RunSpec,
};

impl Decision {
    /// A decision that changes nothing and requests nothing.
    pub fn keep() -> Self {
        Decision {
            lrs: Vec::new(),
            lr_multipliers: Vec::new(),
            loss_weights: Vec::new(),
            augmentation: Vec::new(),
            grad_clip: None,
            freeze: Vec::new(),
            evaluate: false,
            checkpoint: false,
            stop: None,
            measure_loss_gradients: false,
            snapshot: false,
            rollback: None,
        }
    }
}

/// A training strategy. One value lives for the whole run, inside the sandbox.
pub trait Policy: Sized + 'static {
    /// Builds the policy from the run's fixed facts and the user's arguments. The error
    /// message is shown to the user as is, so name the argument at fault.
    fn init(spec: RunSpec) -> Result<Self, String>;

    /// The kinds of knob this policy sets; the trainer refuses decisions outside them and
    /// refuses to run two policies that claim the same kind.
    fn knobs(&self) -> Knobs;

    /// Decides the step `observation.step`, which is about to run.
    fn decide(&mut self, observation: Observation) -> Decision;

    /// Everything `decide` depends on beyond the run spec. Stateless policies keep the
    /// default (no bytes).
    fn save_state(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Restores what [`Policy::save_state`] returned, right after `init`.
    fn load_state(&mut self, state: &[u8]) -> Result<(), String> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(format!("this policy keeps no state, but was given {} bytes", state.len()))
        }
    }
}

/// Writes a line to the run's log, tagged with the policy's name.
pub fn log(level: LogLevel, message: &str) {
    bindings::trainer::policy::host::log(level, message);
}

/// Registers `$policy` (a type implementing [`Policy`]) as the component's strategy.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        const _: () = {
            struct Export;

            ::std::thread_local! {
                static POLICY: ::std::cell::RefCell<::std::option::Option<$policy>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            impl $crate::bindings::exports::trainer::policy::strategy::Guest for Export {
                fn init(spec: $crate::RunSpec) -> ::std::result::Result<$crate::Knobs, ::std::string::String> {
                    $crate::__private::init(&POLICY, spec)
                }

                fn decide(observation: $crate::Observation) -> $crate::Decision {
                    $crate::__private::with(&POLICY, |policy| policy.decide(observation))
                }

                fn save_state() -> ::std::vec::Vec<u8> {
                    $crate::__private::with(&POLICY, |policy| policy.save_state())
                }

                fn load_state(state: ::std::vec::Vec<u8>) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::with(&POLICY, |policy| policy.load_state(&state))
                }
            }

    $crate::bindings::__export_component!(Export with_types_in $crate::bindings);
        };
    };
}

#[doc(hidden)]
pub mod __private {
    use super::{Knobs, Policy, RunSpec};
    use std::cell::RefCell;
    use std::thread::LocalKey;

    pub type Slot<P> = LocalKey<RefCell<Option<P>>>;

    pub fn init<P: Policy>(slot: &'static Slot<P>, spec: RunSpec) -> Result<Knobs, String> {
        let policy = P::init(spec)?;
        let knobs = policy.knobs();
        slot.with_borrow_mut(|current| *current = Some(policy));
        Ok(knobs)
    }

    pub fn with<P: Policy, R>(slot: &'static Slot<P>, call: impl FnOnce(&mut P) -> R) -> R {
        slot.with_borrow_mut(|current| match current {
            Some(policy) => call(policy),
            // The host always calls `init` first; reaching this is a host bug, and a trap
            // is the only honest answer.
            None => panic!("policy called before init"),
        })
    }
}
