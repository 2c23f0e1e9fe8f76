//! # kproxy-oracle
//!
//! The behaviour oracle and the scenario kit shared by every backend: test
//! equipment, kept out of `kproxy-core` so that an embedder's build never
//! compiles it. It uses only `kproxy-core`'s public API. kproxy's own
//! backends use it in their tests and in their tracers (behind their
//! `trace` feature, for `kproxy trace` and `kproxy diagnose`).
//!
//! [`evaluate`] says what kube-proxy semantics require for a packet;
//! [`scenarios::all`] lists named cluster states with hand-written
//! expectations; [`transitions::all`] lists sequences of such states that
//! one running proxier goes through; [`fixtures`] builds the API objects
//! they use, following upstream's test conventions.
//!
//! A backend proves itself by running every scenario through its own rules:
//!
//! ```no_run
//! use kproxy_oracle::{evaluate, scenarios};
//! for scenario in scenarios::all() {
//!     let state = scenario.state();
//!     for case in &scenario.cases {
//!         // A backend would trace `case.packet` through its rendered rules.
//!         assert_eq!(evaluate(&state, &scenario.config, &case.packet), case.expected, "{}", case.name);
//!     }
//! }
//! ```

mod evaluate;
pub mod fixtures;
mod ipvs;
mod packet;
pub mod random;
pub mod scenarios;
pub mod transitions;

pub use evaluate::{evaluate, evaluate_for, Dataplane};
pub use packet::{Origin, Packet, Target, Verdict, OUTSIDE_INTERFACE, POD_INTERFACE};
pub use scenarios::{Case, Scenario};
pub use transitions::Transition;
