//! What kproxy knows about the node it runs on.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// The label that carries a node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The node this proxier runs on: its name, labels, addresses and pod CIDRs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeInfo {
    /// The node name (the hostname, or `--hostname-override`).
    pub name: String,
    /// The node's labels; the zone label drives topology hints.
    pub labels: BTreeMap<String, String>,
    /// The node's addresses from `status.addresses` (InternalIP first, then
    /// ExternalIP), in the order the API gave them.
    pub ips: Vec<IpAddr>,
    /// `spec.podCIDRs`.
    pub pod_cidrs: Vec<IpNet>,
}

impl NodeInfo {
    /// A node with just a name.
    pub fn named(name: impl Into<String>) -> Self {
        NodeInfo {
            name: name.into(),
            ..NodeInfo::default()
        }
    }

    /// The node's zone, or the empty string when it has no zone label.
    pub fn zone(&self) -> &str {
        self.labels.get(ZONE_LABEL).map(String::as_str).unwrap_or("")
    }
}
