//! # kproxy-testkit
//!
//! The kernel test harness every kproxy backend shares. A test builds a
//! [`Topology`] from one of kproxy-core's shared scenarios (a node namespace
//! with pods on a bridge and an outside client, none linked to the host's
//! namespace), programs the node namespace with its backend, and calls
//! [`check_scenario`], which sends real TCP and UDP traffic for every case
//! and compares what the pods saw with the case's verdict. Everything is
//! removed when the topology is dropped, also on panic.
//!
//! Kernel tests call [`kernel_tests_enabled`] first: without root they skip
//! with a message, but under `CI=true` they must run.
//!
//! It also holds what the backends' other tests and benchmarks share:
//! random cluster [`events`], [`hostile`] names, golden files
//! ([`check_golden`]) and the benchmarks' synthetic cluster ([`bench`]).

pub mod bench;
mod check;
pub mod events;
mod golden;
pub mod hostile;
mod netns;
mod topology;

pub use golden::check_golden;
pub use check::{check_case, check_every_scenario, check_every_transition, check_scenario, check_scenario_for, check_transition, probe, Seen};
pub use netns::{kernel_tests_enabled, missing_tools, root_tests_enabled, run, skipped, Netns};
pub use topology::{Topology, KPT};
