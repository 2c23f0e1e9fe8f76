//! # kproxy-backend-nft
//!
//! kproxy's nftables dataplane. [`NftDataplane`] renders and programs the
//! kernel; [`NftProxier`], core's `StateProxier` over it, is the
//! [`kproxy_core::Proxier`] (built with [`NftDataplane::proxier`]).
//!
//! - [`render`] turns the desired state into a typed [`model::Ruleset`]:
//!   pure and deterministic.
//! - The layout has no per-service chains. Services live only in sets and
//!   maps; a handful of fixed chains dispatch through verdict maps, and one
//!   `dnat ... numgen random mod N map @slots-N` rule per distinct endpoint
//!   count load-balances. So the kernel's work grows with the number of
//!   elements, not chains, and no object name is ever derived from a
//!   Kubernetes name (nothing a user writes can reach the rule text).
//! - [`Renderer`] re-renders only the Services that changed and journals
//!   the element changes, which become a [`transaction::Transaction`].
//! - [`kernel::NftKernel`] applies transactions: set elements as atomic
//!   netlink batches, structure with `nft -f`; it lists over netlink.
//!   [`fake::FakeKernel`] applies them in memory with nft's reference checks.
//! - `trace::trace` (feature `trace`) walks a packet through a ruleset and
//!   answers in the vocabulary of the `kproxy-oracle` oracle, so every
//!   shared scenario can be checked against the rules themselves;
//!   `trace::explain` also gives the rules each way went through.
//! - [`listing::parse`] reads a live table (`nft -j list table`) back into
//!   the typed model, for `kproxy trace` on the kernel's own rules.
//!
//! ```no_run
//! use kproxy_backend_nft::{kernel::NftKernel, NftDataplane, NftOptions};
//! use kproxy_core::{IpFamily, ProxierConfig};
//!
//! let kernel = NftKernel::new().expect("a netlink socket (needs CAP_NET_ADMIN)");
//! let proxier = NftDataplane::proxier("node-a", ProxierConfig::new(IpFamily::V4), kernel, NftOptions::default());
//! assert!(proxier.is_ok());
//! ```

pub mod fake;
pub mod kernel;
pub mod listing;
pub mod model;
pub mod names;
mod proxier;
mod render;
pub mod text;
#[cfg(feature = "trace")]
pub mod trace;
pub mod transaction;

pub use proxier::{ConfigError, NftDataplane, NftOptions, NftProxier};
pub use render::{render, Journal, Rendered, Renderer, Structure};
