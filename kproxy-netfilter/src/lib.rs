//! # kproxy-netfilter
//!
//! Netfilter over netlink, shared by kproxy's dataplanes:
//!
//! - [`wire`]: the nfnetlink message format (headers, attributes, dumps,
//!   acknowledgements) over a [`wire::NfSocket`];
//! - [`conntrack`]: dumping conntrack entries and deleting, in batches,
//!   the ones a [`StaleFlowFilter`](kproxy_core::conntrack::StaleFlowFilter)
//!   calls stale — upstream's UDP cleanup after each sync;
//! - [`nft_rules`]: digests of nf_tables chains' rules (what iptables-nft
//!   wrote), to find rules changed from outside without `iptables-save`;
//! - [`nfacct`]: named packet counters (`-m nfacct`), which upstream's
//!   iptables mode exports as metrics;
//! - [`genl`]: generic netlink over a [`genl::GenlSocket`]: families by
//!   name, batches of acknowledged requests, dumps (IPVS speaks it);
//! - [`ipset`]: ipsets over netlink ([`Ipset`]): sets created, filled,
//!   swapped and destroyed without running `ipset` (IPVS mode);
//! - [`rtnl`]: route netlink, for IPVS mode's dummy interface and the
//!   service addresses bound to it ([`Rtnl`]).
//!
//! Everything here talks to the kernel of the calling thread's network
//! namespace, or of a named one (`/run/netns/NAME`) for tests.

pub mod conntrack;
pub mod genl;
pub mod ipset;
pub mod nfacct;
pub mod nft_rules;
pub mod rtnl;
pub mod wire;

pub use conntrack::{CleanReport, Conntrack};
pub use ipset::Ipset;
pub use nfacct::Nfacct;
pub use rtnl::Rtnl;
pub use wire::{NetlinkError, NfSocket};
