//! # kproxy-agent
//!
//! The runtime around kproxy's backends that an embedder (a CNI, a node
//! agent) reuses instead of rewriting it:
//!
//! - [`kube_source`]: the API server as [`Update`](kproxy_core::runner::Update)s
//!   for a [`SyncRunner`](kproxy_core::runner::SyncRunner): kube watchers
//!   on Services and EndpointSlices with upstream's label selector, this
//!   node's Node and the ServiceCIDRs, relisting after any failure;
//! - [`fanout`]: one proxier and sync runner per IP family, fed the same
//!   updates (a [`kube_source::Sink`]);
//! - [`observer`]: what follows each sync: the conntrack cleanup the
//!   report asks for, and the embedder's hooks (metrics, health checks);
//! - [`selector`]: which objects are this proxy's, from core's label
//!   constants;
//! - [`service_cidrs`]: ServiceCIDR objects as the one list of ranges the
//!   proxiers take.
//!
//! The `kproxy` binary is built on it. The rest of what the binary runs
//! between the API server and the runner (the health servers, settings
//! resolution, a mode → proxier builder) is to move here next (issue 17).

pub mod fanout;
pub mod kube_source;
pub mod observer;
pub mod selector;
pub mod service_cidrs;
