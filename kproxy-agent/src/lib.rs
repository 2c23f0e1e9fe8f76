//! # kproxy-agent
//!
//! The runtime around kproxy's backends that an embedder (a CNI, a node
//! agent) reuses instead of rewriting it:
//!
//! - [`kube_source`]: the API server as [`Update`](kproxy_core::runner::Update)s
//!   for a [`SyncRunner`](kproxy_core::runner::SyncRunner): kube watchers
//!   on Services and EndpointSlices with upstream's label selector, this
//!   node's Node and the ServiceCIDRs, relisting after any failure;
//! - [`manifests_source`]: a directory of manifests as the cluster
//!   (standalone mode), which no bad or half-written file can break,
//!   followed on file events;
//! - [`fanout`]: one proxier and sync runner per IP family, fed the same
//!   updates (a [`kube_source::Sink`]);
//! - [`observer`]: what follows each sync: the conntrack cleanup the
//!   report asks for, and the embedder's hooks (metrics, health checks);
//! - [`health`]: the proxy health server's answer and the health-check
//!   NodePorts of `externalTrafficPolicy: Local` Services, as upstream's;
//! - [`http`]: the small HTTP server they run on (bind retries as
//!   upstream's);
//! - [`backend`]: a proxy mode's options resolved per IP family as
//!   upstream resolves them, and a builder from the mode to a
//!   `Box<dyn Proxier>` on this host's kernel;
//! - [`interfaces`]: this network namespace's addresses, which
//!   `nodePortAddresses` is matched against;
//! - [`selector`]: which objects are this proxy's, from core's label
//!   constants;
//! - [`service_cidrs`]: ServiceCIDR objects as the one list of ranges the
//!   proxiers take.
//!
//! The `kproxy` binary is built on it; what stays in the binary is
//! kube-proxy's command line, configuration file and metrics.

pub mod backend;
pub mod fanout;
pub mod health;
pub mod http;
pub mod interfaces;
pub mod kube_source;
pub mod manifests_source;
pub mod observer;
pub mod selector;
pub mod service_cidrs;
