//! # kproxy-backend-iptables
//!
//! kproxy's iptables dataplane, with upstream kube-proxy's layout: the
//! `KUBE-SERVICES`, `KUBE-NODEPORTS`, `KUBE-EXTERNAL-SERVICES`,
//! `KUBE-PROXY-FIREWALL`, `KUBE-FORWARD`, `KUBE-POSTROUTING` and
//! `KUBE-MARK-MASQ` chains, and per-service `KUBE-SVC-`/`KUBE-SVL-`/
//! `KUBE-EXT-`/`KUBE-FW-` and per-endpoint `KUBE-SEP-` chains named with
//! upstream's hash ([`names`]), so `iptables -t nat -L KUBE-SERVICES` reads
//! as operators expect.
//!
//! - [`rule`]: the typed rule model, rendered to and parsed from
//!   `iptables-restore` arguments.
//! - [`render`]: the desired rules, per service port, re-rendered only for
//!   Services that changed.
//! - [`restore`]: full and partial `iptables-restore --noflush` input.
//! - [`fake`]: an in-memory iptables that reads that input with the
//!   kernel's checks; `trace` (feature `trace`) walks packets through it.
//! - [`kernel`]: the kernel step (`iptables-restore`, `iptables-save`) and
//!   the choice between `iptables-legacy` and `iptables-nft`.
//! - [`proxier`]: [`IptablesDataplane`] (partial syncs, drift repair) and
//!   [`IptablesProxier`], core's `StateProxier` over it.

pub mod fake;
pub mod kernel;
pub mod names;
pub mod proxier;
pub mod render;
pub mod restore;
pub mod rule;
#[cfg(feature = "trace")]
pub mod trace;

pub use render::{render, Renderer, Ruleset, Table};
pub use proxier::{IptablesDataplane, IptablesOptions, IptablesProxier};
