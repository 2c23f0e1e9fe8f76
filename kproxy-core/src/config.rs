//! The node-level settings every backend needs, resolved for one IP family.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::IpFamily;

/// The default masquerade mark bit (`1 << 14` = `0x4000`).
pub const DEFAULT_MASQUERADE_BIT: u8 = 14;

/// How the proxier tells traffic from this node's pods apart from the rest
/// (upstream's `detectLocalMode`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LocalDetector {
    /// No detector: ClusterIP traffic is never masqueraded for being
    /// off-cluster, and pods get no ETP=Local short-circuit.
    #[default]
    None,
    /// Sources inside the cluster CIDRs (of this family) are pods.
    ClusterCidr(Vec<IpNet>),
    /// Sources inside the node's `spec.podCIDRs` are pods.
    NodeCidr(Vec<IpNet>),
    /// Packets arriving on this bridge interface are from pods.
    BridgeInterface(String),
    /// Packets arriving on an interface with this name prefix are from pods.
    InterfaceNamePrefix(String),
}

impl LocalDetector {
    /// Whether this detector can say anything (upstream's `IsImplemented`).
    pub fn is_implemented(&self) -> bool {
        match self {
            LocalDetector::None => false,
            LocalDetector::ClusterCidr(c) | LocalDetector::NodeCidr(c) => !c.is_empty(),
            LocalDetector::BridgeInterface(i) | LocalDetector::InterfaceNamePrefix(i) => !i.is_empty(),
        }
    }

    /// Whether a packet with source `src`, arriving on interface `iif` (None
    /// for a packet the node itself sent), is from a local pod.
    pub fn is_local(&self, src: IpAddr, iif: Option<&str>) -> bool {
        match self {
            LocalDetector::None => false,
            LocalDetector::ClusterCidr(nets) | LocalDetector::NodeCidr(nets) => {
                nets.iter().any(|n| n.contains(&src))
            }
            LocalDetector::BridgeInterface(name) => iif == Some(name.as_str()),
            LocalDetector::InterfaceNamePrefix(prefix) => {
                iif.is_some_and(|i| !prefix.is_empty() && i.starts_with(prefix.as_str()))
            }
        }
    }
}

/// The per-family settings that shape the dataplane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxierConfig {
    /// The family this proxier serves.
    pub family: IpFamily,
    /// Masquerade all ClusterIP traffic (`masqueradeAll`).
    pub masquerade_all: bool,
    /// The mark bit for masquerading (`masqueradeBit`, 0-31).
    pub masquerade_bit: u8,
    /// How to recognise this node's pods.
    pub local_detector: LocalDetector,
    /// The node's IPs of this family, primary first.
    pub node_ips: Vec<IpAddr>,
    /// The addresses NodePorts are served on (already resolved from
    /// `nodePortAddresses`; never loopback).
    pub node_port_ips: Vec<IpAddr>,
}

impl ProxierConfig {
    /// Upstream's defaults for `family`: mark bit 14, no masqueradeAll, no
    /// detector, no node IPs.
    pub fn new(family: IpFamily) -> Self {
        ProxierConfig {
            family,
            masquerade_all: false,
            masquerade_bit: DEFAULT_MASQUERADE_BIT,
            local_detector: LocalDetector::None,
            node_ips: Vec::new(),
            node_port_ips: Vec::new(),
        }
    }

    /// The masquerade mark (`1 << masquerade_bit`).
    pub fn masquerade_mark(&self) -> u32 {
        1u32 << (self.masquerade_bit.min(31))
    }
}

/// A configuration no backend can program.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidConfig {
    /// An interface name the kernel would not accept, or that could
    /// smuggle text into rules.
    #[error("invalid interface name {0:?} for the local detector (1-15 characters of [A-Za-z0-9_.-])")]
    InterfaceName(String),
    /// The masquerade bit is out of range.
    #[error("masqueradeBit {0} is out of range 0-31")]
    MasqueradeBit(u8),
}

impl ProxierConfig {
    /// Checks what every backend needs before it writes a rule: an
    /// interface name safe in rule text, and a masquerade bit in range.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if let LocalDetector::BridgeInterface(name) | LocalDetector::InterfaceNamePrefix(name) = &self.local_detector {
            let ok = (1..=15).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !ok {
                return Err(InvalidConfig::InterfaceName(name.clone()));
            }
        }
        if self.masquerade_bit > 31 {
            return Err(InvalidConfig::MasqueradeBit(self.masquerade_bit));
        }
        Ok(())
    }
}

/// Which node addresses serve NodePorts (`nodePortAddresses`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NodePortAddresses {
    /// The node's primary IP of each family (upstream's default for nftables).
    #[default]
    Primary,
    /// Every local address inside one of these CIDRs.
    Cidrs(Vec<IpNet>),
}

impl NodePortAddresses {
    /// The NodePort addresses of `family` among the node's `local_ips`
    /// (`primary` is `node_ips[0]` of that family). Loopback is never used.
    pub fn resolve(&self, family: IpFamily, node_ips: &[IpAddr], local_ips: &[IpAddr]) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = match self {
            NodePortAddresses::Primary => node_ips.iter().copied().filter(|ip| family.contains(*ip)).take(1).collect(),
            NodePortAddresses::Cidrs(nets) => local_ips
                .iter()
                .copied()
                .filter(|ip| family.contains(*ip) && nets.iter().any(|n| n.contains(ip)))
                .collect(),
        };
        out.retain(|ip| !ip.is_loopback());
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_refuses_unsafe_interface_names_and_bits_out_of_range() {
        let mut c = ProxierConfig::new(IpFamily::V4);
        assert!(c.validate().is_ok());
        c.local_detector = LocalDetector::BridgeInterface("cni0".into());
        assert!(c.validate().is_ok());
        for bad in ["", "a\"; drop", "sixteen-chars-xx", "br 0"] {
            c.local_detector = LocalDetector::InterfaceNamePrefix(bad.into());
            assert!(matches!(c.validate(), Err(InvalidConfig::InterfaceName(n)) if n == bad), "{bad:?}");
        }
        c.local_detector = LocalDetector::None;
        c.masquerade_bit = 32;
        assert_eq!(c.validate().unwrap_err().to_string(), "masqueradeBit 32 is out of range 0-31");
    }

    #[test]
    fn detectors_match_upstream_modes() {
        let pod: IpAddr = "10.0.1.5".parse().unwrap();
        let outside: IpAddr = "203.0.113.2".parse().unwrap();
        let cidr = LocalDetector::ClusterCidr(vec!["10.0.0.0/8".parse().unwrap()]);
        assert!(cidr.is_local(pod, None) && !cidr.is_local(outside, Some("eth0")));
        let bridge = LocalDetector::BridgeInterface("cbr0".into());
        assert!(bridge.is_local(outside, Some("cbr0")) && !bridge.is_local(pod, Some("cbr1")));
        let prefix = LocalDetector::InterfaceNamePrefix("veth".into());
        assert!(prefix.is_local(outside, Some("veth123")) && !prefix.is_local(pod, None));
        assert!(!LocalDetector::None.is_local(pod, Some("cbr0")));
        assert!(!LocalDetector::ClusterCidr(vec![]).is_implemented());
    }

    #[test]
    fn nodeport_addresses_never_include_loopback() {
        let node = ["192.168.0.2".parse().unwrap(), "10.1.0.1".parse().unwrap()];
        let local = [node[0], node[1], "127.0.0.1".parse().unwrap()];
        assert_eq!(NodePortAddresses::Primary.resolve(IpFamily::V4, &node, &local), vec![node[0]]);
        let all = NodePortAddresses::Cidrs(vec!["0.0.0.0/0".parse().unwrap()]);
        assert_eq!(all.resolve(IpFamily::V4, &node, &local), vec![node[1], node[0]]);
        assert!(all.resolve(IpFamily::V6, &node, &local).is_empty());
    }

    #[test]
    fn masquerade_mark_is_the_bit() {
        assert_eq!(ProxierConfig::new(IpFamily::V4).masquerade_mark(), 0x4000);
    }
}
