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
    /// `nodePortAddresses` against the node's interfaces; never loopback).
    /// Empty with `node_ports_on_every_address` false: no NodePort is
    /// served at all.
    pub node_port_ips: Vec<IpAddr>,
    /// NodePorts are served on every local address of the family
    /// (`nodePortAddresses` unset or a `/0` range). Backends that can
    /// match "any local address" do (iptables' `addrtype LOCAL`); the
    /// others serve `node_port_ips`, which then lists every address.
    pub node_ports_on_every_address: bool,
}

impl ProxierConfig {
    /// Upstream's defaults for `family`: mark bit 14, no masqueradeAll, no
    /// detector, no node IPs, no NodePort addresses.
    pub fn new(family: IpFamily) -> Self {
        ProxierConfig {
            family,
            masquerade_all: false,
            masquerade_bit: DEFAULT_MASQUERADE_BIT,
            local_detector: LocalDetector::None,
            node_ips: Vec::new(),
            node_port_ips: Vec::new(),
            node_ports_on_every_address: false,
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

/// Which node addresses serve NodePorts (`nodePortAddresses`), with
/// upstream's per-family reading:
/// - an empty list (unset) serves NodePorts on every local address;
/// - `primary` means the node's first IP of each family, as a host range;
/// - each family keeps only its own ranges; a family with none, or with a
///   `/0` range, serves every local address of that family;
/// - otherwise only the local addresses inside a range serve NodePorts,
///   and a list that matches none of them serves none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NodePortAddresses {
    /// The node's primary IP of each family (upstream's default for
    /// nftables mode).
    #[default]
    Primary,
    /// Local addresses inside one of these ranges; every local address
    /// when the list is empty.
    Cidrs(Vec<IpNet>),
}

impl NodePortAddresses {
    /// The ranges that apply to `family`, or `None` for every local
    /// address of that family. `node_ips` are the Node's IPs, primary
    /// first; a loopback node IP does not count.
    pub fn ranges(&self, family: IpFamily, node_ips: &[IpAddr]) -> Option<Vec<IpNet>> {
        let nets: Vec<IpNet> = match self {
            NodePortAddresses::Primary => node_ips
                .iter()
                .copied()
                .filter(|ip| family.contains(*ip) && !ip.is_loopback())
                .take(1)
                .map(IpNet::from)
                .collect(),
            NodePortAddresses::Cidrs(nets) => nets.iter().copied().filter(|n| IpFamily::of_net(n) == family).collect(),
        };
        if nets.is_empty() || nets.iter().any(|n| n.prefix_len() == 0) {
            return None;
        }
        Some(nets)
    }

    /// Whether every local address of `family` serves NodePorts
    /// (upstream's `MatchAll`).
    pub fn matches_all(&self, family: IpFamily, node_ips: &[IpAddr]) -> bool {
        self.ranges(family, node_ips).is_none()
    }

    /// Whether the IPv4 ranges hold a loopback address (upstream's
    /// condition for localhost NodePorts; true when every address
    /// serves).
    pub fn contains_ipv4_loopback(&self, node_ips: &[IpAddr]) -> bool {
        let loopback = IpAddr::from([127, 0, 0, 0]);
        match self.ranges(IpFamily::V4, node_ips) {
            None => true,
            Some(nets) => nets.iter().any(|n| n.addr().is_loopback() || n.contains(&loopback)),
        }
    }

    /// The addresses of `family` among the node's `local_ips` (its
    /// interfaces' addresses) that serve NodePorts, sorted. Loopback
    /// addresses are left out (the iptables backend adds 127.0.0.1 itself
    /// when localhost NodePorts are on), and so are IPv6 link-local ones
    /// when every address serves.
    pub fn resolve(&self, family: IpFamily, node_ips: &[IpAddr], local_ips: &[IpAddr]) -> Vec<IpAddr> {
        let ranges = self.ranges(family, node_ips);
        let mut out: Vec<IpAddr> = local_ips
            .iter()
            .copied()
            .filter(|ip| family.contains(*ip) && !ip.is_loopback())
            .filter(|ip| match &ranges {
                Some(nets) => nets.iter().any(|n| n.contains(ip)),
                // Every address, but IPv6 link-local ones (as upstream's
                // IPVS mode, which lists them too).
                None => !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()),
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Upstream's warning when a non-empty list has no range of `family`,
    /// so that family serves NodePorts on every address.
    pub fn warning(&self, family: IpFamily) -> Option<String> {
        let NodePortAddresses::Cidrs(nets) = self else { return None };
        if nets.is_empty() || nets.iter().any(|n| IpFamily::of_net(n) == family) {
            return None;
        }
        Some(format!("nodePortAddresses contains no {family} range; NodePort connections will be accepted on all local {family} IPs"))
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

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn cidrs(list: &[&str]) -> NodePortAddresses {
        NodePortAddresses::Cidrs(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    #[test]
    fn nodeport_addresses_never_include_loopback() {
        let node = ips(&["192.168.0.2", "10.1.0.1"]);
        let local = [node[0], node[1], "127.0.0.1".parse().unwrap()];
        assert_eq!(NodePortAddresses::Primary.resolve(IpFamily::V4, &node, &local), vec![node[0]]);
        let all = cidrs(&["0.0.0.0/0"]);
        assert_eq!(all.resolve(IpFamily::V4, &node, &local), vec![node[1], node[0]]);
        assert!(all.matches_all(IpFamily::V4, &node));
    }

    #[test]
    fn nodeport_addresses_are_matched_against_the_interfaces() {
        // The Node object lists one address; the interfaces have more.
        let node = ips(&["192.168.0.2"]);
        let local = ips(&["192.168.0.2", "192.168.1.7", "10.9.0.1", "fd00::2", "127.0.0.1", "::1"]);
        let some = cidrs(&["192.168.0.0/16"]);
        assert_eq!(some.resolve(IpFamily::V4, &node, &local), ips(&["192.168.0.2", "192.168.1.7"]));
        assert!(!some.matches_all(IpFamily::V4, &node));
    }

    #[test]
    fn a_list_that_matches_no_address_serves_no_nodeport() {
        let node = ips(&["192.168.0.2"]);
        let local = ips(&["192.168.0.2", "127.0.0.1"]);
        let none = cidrs(&["203.0.113.0/24"]);
        assert!(none.resolve(IpFamily::V4, &node, &local).is_empty());
        assert!(!none.matches_all(IpFamily::V4, &node), "an empty match is not 'every address'");
        assert!(!none.contains_ipv4_loopback(&node));
    }

    #[test]
    fn a_family_without_a_range_serves_every_address_with_a_warning() {
        let node = ips(&["192.168.0.2", "fd00::2"]);
        let local = ips(&["192.168.0.2", "fd00::2", "fd00::9", "::1", "fe80::1"]);
        let v4_only = cidrs(&["192.168.0.0/24"]);
        assert!(v4_only.matches_all(IpFamily::V6, &node));
        assert_eq!(v4_only.resolve(IpFamily::V6, &node, &local), ips(&["fd00::2", "fd00::9"]));
        assert!(v4_only.warning(IpFamily::V6).unwrap().contains("all local IPv6 IPs"));
        assert_eq!(v4_only.warning(IpFamily::V4), None);
        assert_eq!(cidrs(&[]).warning(IpFamily::V6), None, "unset is the documented default");
    }

    #[test]
    fn primary_is_the_first_node_ip_of_each_family() {
        let node = ips(&["192.168.0.2", "192.168.0.3"]);
        let local = ips(&["192.168.0.2", "192.168.0.3", "fd00::2"]);
        let p = NodePortAddresses::Primary;
        assert_eq!(p.resolve(IpFamily::V4, &node, &local), ips(&["192.168.0.2"]));
        // No IPv6 node IP: upstream's `primary` has no IPv6 range, so every
        // IPv6 address serves.
        assert!(p.matches_all(IpFamily::V6, &node));
        assert!(!p.contains_ipv4_loopback(&node));
    }

    #[test]
    fn localhost_nodeports_need_loopback_in_the_ipv4_ranges() {
        let node = ips(&["192.168.0.2"]);
        assert!(cidrs(&[]).contains_ipv4_loopback(&node), "unset");
        assert!(cidrs(&["127.0.0.0/8", "192.168.0.0/24"]).contains_ipv4_loopback(&node));
        assert!(cidrs(&["fd00::/64"]).contains_ipv4_loopback(&node), "no IPv4 range: every IPv4 address");
        assert!(!cidrs(&["192.168.0.0/24"]).contains_ipv4_loopback(&node));
    }

    #[test]
    fn masquerade_mark_is_the_bit() {
        assert_eq!(ProxierConfig::new(IpFamily::V4).masquerade_mark(), 0x4000);
    }
}
