//! Packets and verdicts: the vocabulary of the oracle and every tracer.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use kproxy_core::model::Protocol;

/// The interface packets from this node's pods arrive on in the fixtures
/// (and in the kernel tests' node namespace).
pub const POD_INTERFACE: &str = "kpbr0";

/// The interface packets from outside the node arrive on in the fixtures.
pub const OUTSIDE_INTERFACE: &str = "kpeth0";

/// Where a packet enters the node's network stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// From a pod on this node, arriving on [`POD_INTERFACE`].
    LocalPod,
    /// Sent by the node itself (a host-network process); its source is a
    /// local address.
    Node,
    /// From outside the node, arriving on [`OUTSIDE_INTERFACE`].
    Outside,
}

/// The first packet of a connection, as the proxy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Packet {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Layer-4 protocol.
    pub protocol: Protocol,
    /// Destination port.
    pub dport: u16,
    /// Where it enters the node.
    pub origin: Origin,
}

impl Packet {
    /// A TCP packet.
    pub fn tcp(origin: Origin, src: IpAddr, dst: IpAddr, dport: u16) -> Self {
        Packet {
            src,
            dst,
            protocol: Protocol::Tcp,
            dport,
            origin,
        }
    }

    /// The same packet with another protocol.
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// The input interface (`None` for a packet the node sends itself).
    pub fn iif(&self) -> Option<&'static str> {
        match self.origin {
            Origin::LocalPod => Some(POD_INTERFACE),
            Origin::Outside => Some(OUTSIDE_INTERFACE),
            Origin::Node => None,
        }
    }
}

impl fmt::Display for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {} from {:?}",
            self.protocol,
            self.src,
            SocketAddr::new(self.dst, self.dport),
            self.origin
        )
    }
}

/// One endpoint a packet may be sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    /// The endpoint's address.
    pub endpoint: SocketAddr,
    /// Whether the packet is masqueraded (SNAT to the node) on the way.
    pub masquerade: bool,
}

/// What the proxy must do with a packet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Not service traffic: the proxy leaves it alone.
    NotService,
    /// Silently dropped (the client times out).
    Drop,
    /// Refused at once (ICMP port unreachable, or TCP RST).
    Reject,
    /// DNATed to one of `targets`, chosen at random.
    Forward {
        /// Every eligible endpoint, sorted, each with its masquerade flag.
        targets: Vec<Target>,
        /// ClientIP affinity timeout in seconds, if affinity applies.
        affinity_seconds: Option<u32>,
    },
}

impl Verdict {
    /// A forward verdict with the same masquerade flag for every endpoint.
    pub fn forward(endpoints: &[&str], masquerade: bool) -> Self {
        let mut targets: Vec<Target> = endpoints
            .iter()
            .map(|e| Target {
                endpoint: e.parse().unwrap_or_else(|_| panic!("bad endpoint literal {e}")),
                masquerade,
            })
            .collect();
        targets.sort();
        Verdict::Forward {
            targets,
            affinity_seconds: None,
        }
    }

    /// The same verdict with ClientIP affinity.
    pub fn with_affinity(self, seconds: u32) -> Self {
        match self {
            Verdict::Forward { targets, .. } => Verdict::Forward {
                targets,
                affinity_seconds: Some(seconds),
            },
            other => other,
        }
    }

    /// The same verdict with one endpoint's masquerade flag forced on
    /// (hairpin: the client is that endpoint).
    pub fn with_hairpin(self, endpoint: &str) -> Self {
        let ep: SocketAddr = endpoint.parse().unwrap_or_else(|_| panic!("bad endpoint literal {endpoint}"));
        match self {
            Verdict::Forward { mut targets, affinity_seconds } => {
                for t in targets.iter_mut().filter(|t| t.endpoint == ep) {
                    t.masquerade = true;
                }
                Verdict::Forward { targets, affinity_seconds }
            }
            other => other,
        }
    }
}

/// The forward targets of `endpoints` for `packet`: each with its
/// masquerade flag (set for every one when `masquerade`, and for a packet
/// that would come back to its own sender), sorted.
pub(super) fn targets(endpoints: &[kproxy_core::model::Endpoint], masquerade: bool, short_circuit: bool, packet: &Packet) -> Vec<Target> {
    let mut out: Vec<Target> = endpoints
        .iter()
        .map(|e| Target {
            endpoint: std::net::SocketAddr::new(e.ip, e.port),
            masquerade: masquerade || (e.ip == packet.src && (e.is_local || short_circuit)),
        })
        .collect();
    out.sort();
    out.dedup();
    out
}
