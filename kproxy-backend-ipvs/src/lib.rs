//! # kproxy-backend-ipvs
//!
//! kproxy's IPVS dataplane (work in progress, issue 7).
//!
//! - [`model`]: virtual servers, real servers and the operations between
//!   IPVS tables, as plain data.
//! - [`render`]: the desired virtual servers and dummy-interface
//!   addresses, from the applied state.
//! - [`diff`]: the operations from the kernel's table to the desired one,
//!   with graceful termination.
//! - [`fake`]: an in-memory IPVS table applying those operations.
//! - [`sets`] and [`rules`]: upstream's ipsets (one `ipset restore` per
//!   sync) and the small iptables ruleset around IPVS, in the iptables
//!   backend's typed rules.
//! - [`netlink`]: the kernel step for IPVS, over generic netlink.

pub mod diff;
pub mod fake;
pub mod model;
pub mod netlink;
pub mod render;
pub mod rules;
pub mod sets;
