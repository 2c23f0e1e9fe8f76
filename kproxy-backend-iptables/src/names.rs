//! Chain names: upstream's fixed chains, and the per-service and
//! per-endpoint chains named with upstream's hash, so `iptables -t nat -L
//! KUBE-SERVICES` reads the same as with kube-proxy and the chain of a
//! given service port is the one an operator's runbook expects.

use kproxy_core::{Endpoint, Protocol, ServicePortName};
use sha2::{Digest, Sha256};

/// nat and filter: the entry chain for service traffic.
pub const SERVICES: &str = "KUBE-SERVICES";
/// The nfacct counter of forwarded packets dropped as INVALID (upstream's
/// name; exported as `kubeproxy_iptables_ct_state_invalid_dropped_packets_total`).
pub const NFACCT_INVALID_DROPPED: &str = "ct_state_invalid_dropped_pkts";
/// The nfacct counter of packets accepted on localhost NodePorts
/// (`kubeproxy_iptables_localhost_nodeports_accepted_packets_total`).
pub const NFACCT_LOCALHOST_NODEPORTS: &str = "localhost_nps_accepted_pkts";
/// filter: traffic to externalIPs, LoadBalancer IPs and NodePorts that
/// must be dropped or rejected.
pub const EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
/// nat: NodePort dispatch; filter: health-check NodePorts.
pub const NODEPORTS: &str = "KUBE-NODEPORTS";
/// filter: LoadBalancer source-range drops.
pub const PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
/// filter: accepts forwarded service traffic.
pub const FORWARD: &str = "KUBE-FORWARD";
/// nat: masquerades marked traffic.
pub const POSTROUTING: &str = "KUBE-POSTROUTING";
/// nat: sets the masquerade mark.
pub const MARK_MASQ: &str = "KUBE-MARK-MASQ";
/// filter: the localnet safeguard of localhost NodePorts (a chain kubelet
/// also writes, so cleanup removes it only where no kubelet manages
/// iptables).
pub const FIREWALL: &str = "KUBE-FIREWALL";
/// An empty chain in every table kproxy uses; if it is gone, someone
/// flushed the tables and everything is rewritten.
pub const CANARY: &str = "KUBE-PROXY-CANARY";
/// The chain kubelet keeps in its tables while it manages iptables.
pub const KUBELET_CANARY: &str = "KUBE-KUBELET-CANARY";

/// The prefixes of the chains that belong to one service port or endpoint.
pub const SERVICE_CHAIN_PREFIXES: [&str; 5] = ["KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-"];

/// Whether `chain` is one kproxy (or kube-proxy) owns.
pub fn is_owned(chain: &str) -> bool {
    chain.starts_with("KUBE-")
}

/// The first 16 characters of base32(sha256(`input`)), upstream's hash.
fn hash16(input: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(input.as_bytes());
    // 16 base32 characters are 80 bits: the first 10 bytes.
    let mut out = String::with_capacity(16);
    let mut bits: u64 = 0;
    let mut have = 0;
    for &byte in &digest[..10] {
        bits = (bits << 8) | u64::from(byte);
        have += 8;
        while have >= 5 {
            have -= 5;
            out.push(char::from(ALPHABET[((bits >> have) & 31) as usize]));
        }
    }
    out
}

fn port_proto(name: &ServicePortName) -> String {
    format!("{name}{}", protocol(name.protocol))
}

/// The protocol as iptables and upstream's hash spell it.
pub fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// `KUBE-SVC-…`: load-balances to every usable endpoint (Cluster policy).
pub fn service_chain(name: &ServicePortName) -> String {
    format!("KUBE-SVC-{}", hash16(&port_proto(name)))
}

/// `KUBE-SVL-…`: load-balances to this node's endpoints (Local policy).
pub fn local_chain(name: &ServicePortName) -> String {
    format!("KUBE-SVL-{}", hash16(&port_proto(name)))
}

/// `KUBE-EXT-…`: external traffic (NodePort, externalIPs, LoadBalancer).
pub fn external_chain(name: &ServicePortName) -> String {
    format!("KUBE-EXT-{}", hash16(&port_proto(name)))
}

/// `KUBE-FW-…`: LoadBalancer source ranges.
pub fn firewall_chain(name: &ServicePortName) -> String {
    format!("KUBE-FW-{}", hash16(&port_proto(name)))
}

/// `KUBE-SEP-…`: DNAT to one endpoint.
pub fn endpoint_chain(name: &ServicePortName, endpoint: &Endpoint) -> String {
    format!("KUBE-SEP-{}", hash16(&format!("{}{}", port_proto(name), endpoint.addr())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(ns: &str, svc: &str, port: &str, protocol: Protocol) -> ServicePortName {
        ServicePortName::new(ns, svc, port, protocol)
    }

    #[test]
    fn upstreams_golden_vectors() {
        let p80 = port("ns1", "svc1", "p80", Protocol::Tcp);
        assert_eq!(service_chain(&p80), "KUBE-SVC-XPGD46QRK7WJZT7O");
        let ep = Endpoint::ready("10.180.0.1".parse().unwrap(), 80, true);
        assert_eq!(endpoint_chain(&p80, &ep), "KUBE-SEP-SXIVWICOYRO3J4NJ");
    }

    #[test]
    fn the_kinds_share_the_hash_and_the_protocol_is_part_of_it() {
        let tcp = port("ns1", "svc1", "p80", Protocol::Tcp);
        let udp = port("ns1", "svc1", "p80", Protocol::Udp);
        let hash = &service_chain(&tcp)["KUBE-SVC-".len()..];
        for chain in [local_chain(&tcp), external_chain(&tcp), firewall_chain(&tcp)] {
            assert!(chain.ends_with(hash), "{chain}");
            assert!(chain.len() <= 28, "iptables allows 28 characters: {chain}");
        }
        assert_ne!(service_chain(&tcp), service_chain(&udp));
    }
}
