//! # kproxy-core
//!
//! The Kubernetes service-proxy model that every kproxy dataplane builds on:
//!
//! - a typed model ([`ServicePortName`], [`ServicePortInfo`], [`Endpoint`],
//!   [`NodeInfo`]) and total conversions from the real API objects
//!   ([`convert`]);
//! - change tracking with upstream's semantics ([`tracker`]) feeding a
//!   [`ServiceMap`] and an [`EndpointsMap`], bundled as [`ProxyState`];
//! - endpoint selection: traffic policies, terminating fallback and topology
//!   hints ([`select_endpoints`]);
//! - which conntrack entries a sync left stale ([`conntrack`]);
//! - the [`Proxier`] contract, the one skeleton every backend uses
//!   ([`skeleton::StateProxier`] over a [`skeleton::Dataplane`]), and the
//!   bounded-frequency [`runner`].
//!
//! The behaviour oracle, the scenarios every backend must pass and the
//! API object fixtures are test equipment, in the `kproxy-oracle` crate.
//!
//! The crate does no I/O: backends own the kernel, the binary owns the API
//! server.

pub mod config;
pub mod conntrack;
pub mod convert;
mod endpoints_map;
mod error;
pub mod model;
mod proxier;
pub mod runner;
mod selection;
mod service_map;
pub mod skeleton;
mod state;
pub mod tracker;
mod vec_map;

pub use config::{InvalidConfig, LocalDetector, NodePortAddresses, ProxierConfig};
pub use endpoints_map::EndpointsMap;
pub use error::{Error, Result};
pub use model::{
    Endpoint, Hints, IpFamily, NamespacedName, NodeInfo, Protocol, ServicePortInfo, ServicePortName, SourceRanges,
};
pub use proxier::{NoLocalEndpoints, Proxier, RuleCount, SyncReport, SyncRequest};
pub use selection::{select_endpoints, topology_mode, SelectedEndpoints, TopologyMode};
pub use service_map::ServiceMap;
pub use state::{HealthCheck, ProxyState, StateChanges};
pub use tracker::{ChangeTracker, EndpointsChangeTracker, ServiceChangeTracker};
pub use vec_map::VecMap;
