//! # kproxy-backend-ipvs
//!
//! kproxy's IPVS dataplane, with upstream kube-proxy's IPVS layout: every
//! ClusterIP, externalIP and LoadBalancer VIP bound to the dummy
//! interface `kube-ipvs0`, one IPVS virtual server per address and port
//! (and per node address for NodePorts), upstream's ipsets and the small
//! iptables ruleset around them for masquerade and filtering.
//!
//! - [`model`]: virtual servers, real servers and the operations between
//!   IPVS tables, as plain data.
//! - [`render`]: the desired virtual servers and dummy-interface
//!   addresses, from the applied state; [`incremental`] keeps them (and
//!   the sets) up to date port by port.
//! - [`diff`]: the operations from the kernel's table to the desired one,
//!   with graceful termination.
//! - [`sets`] and [`rules`]: upstream's ipsets (one `ipset restore` per
//!   sync) and iptables ruleset, in the iptables backend's typed rules.
//! - [`kernel`]: the kernel step behind one trait; [`netlink`] speaks
//!   IPVS over generic netlink.
//! - [`fake`] and [`host`]: an in-memory IPVS table and a whole fake
//!   kernel; `trace` (feature `trace`) walks packets through it.
//! - [`proxier`]: [`IpvsDataplane`] and [`IpvsProxier`], core's
//!   `StateProxier` over it.

pub mod conntable;
pub mod diff;
pub mod fake;
pub mod host;
pub mod incremental;
pub mod kernel;
pub mod model;
pub mod netlink;
pub mod proxier;
pub mod render;
pub mod rules;
pub mod sets;
#[cfg(feature = "trace")]
pub mod trace;

pub use proxier::{IpvsDataplane, IpvsOptions, IpvsProxier};
