//! One backend of one service port.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// One endpoint of a service port, merged from the Service's EndpointSlices.
///
/// Conditions carry upstream's defaults for absent values: `ready` and
/// `serving` default to true, `terminating` to false.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// The endpoint's IP (of the proxier's family).
    pub ip: IpAddr,
    /// The target port.
    pub port: u16,
    /// `conditions.ready`.
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
    /// Whether the endpoint runs on this node (`nodeName` equals the node's).
    pub is_local: bool,
    /// `hints.forZones[].name`.
    pub zone_hints: BTreeSet<String>,
    /// `hints.forNodes[].name`.
    pub node_hints: BTreeSet<String>,
}

impl Endpoint {
    /// A ready, serving, non-terminating endpoint with no hints.
    pub fn ready(ip: IpAddr, port: u16, is_local: bool) -> Self {
        Endpoint {
            ip,
            port,
            ready: true,
            serving: true,
            terminating: false,
            is_local,
            zone_hints: BTreeSet::new(),
            node_hints: BTreeSet::new(),
        }
    }

    /// The endpoint's `IP:port` address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// Serving but terminating: usable only as a fallback.
    pub fn is_serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr())
    }
}
