//! What upstream's IPVS mode does with a packet, where its layout makes it
//! differ from the iptables and nftables modes (see [`crate::evaluate_for`]).
//!
//! Upstream's IPVS proxier (v1.26 on, the layout kproxy's IPVS backend
//! follows):
//! - every virtual server's real servers follow one rule: the Local
//!   policy's endpoints when it has some, otherwise the Cluster policy's
//!   (`syncEndpoint`); an empty virtual server answers with ICMP port
//!   unreachable (`ip_vs_leave`), so "no usable endpoint" is a REJECT,
//!   never a DROP, and there is no short-circuit of ETP=Local traffic
//!   from pods or the node;
//! - `KUBE-IPVS-FILTER` rejects new connections to an address bound on the
//!   dummy interface (a ClusterIP, externalIP or LoadBalancer VIP that is
//!   not a node address) on a port no Service uses there;
//! - LoadBalancer source ranges apply to the node's own connections only
//!   when they are sourced from the VIP (`KUBE-IPVS-OUT-FILTER`): IPVS
//!   takes them before filter OUTPUT;
//! - masquerade comes from the ipset rules: ClusterIP per `masqueradeAll`
//!   and the local detector, externalIPs and LoadBalancer VIPs and
//!   NodePorts unless their policy is Local, and hairpin for local
//!   endpoints only (`KUBE-LOOP-BACK`).

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::packet::{targets, Origin, Packet, Verdict};
use kproxy_core::config::ProxierConfig;
use kproxy_core::model::{ServicePortInfo, ServicePortName};
use kproxy_core::select_endpoints;
use kproxy_core::ProxyState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    ClusterIp,
    External { masquerade: bool },
}

/// The verdict of upstream's IPVS mode for `packet`.
pub(super) fn evaluate_ipvs(state: &ProxyState, config: &ProxierConfig, packet: &Packet) -> Verdict {
    let services = state.services();
    let find = |matches: &dyn Fn(&ServicePortInfo) -> bool| services.iter().find(|(_, s)| s.protocol == packet.protocol && matches(s));
    let (dst, dport) = (packet.dst, packet.dport);
    if let Some((name, svc)) = find(&|s| s.cluster_ip == dst && s.port == dport) {
        return decide(state, config, packet, name, svc, Path::ClusterIp);
    }
    if let Some((name, svc)) = find(&|s| s.external_ips.contains(&dst) && s.port == dport) {
        return decide(state, config, packet, name, svc, Path::External { masquerade: !svc.external_policy_local });
    }
    if let Some((name, svc)) = find(&|s| s.load_balancer_vips.contains(&dst) && s.port == dport) {
        // IPVS takes the node's own connections before filter OUTPUT; only
        // those sourced from the VIP meet KUBE-IPVS-OUT-FILTER.
        let filtered = packet.origin != Origin::Node || packet.src == dst;
        if filtered && !svc.source_allowed(packet.src, &config.node_ips) {
            return Verdict::Drop;
        }
        return decide(state, config, packet, name, svc, Path::External { masquerade: !svc.external_policy_local });
    }
    if config.node_port_ips.contains(&dst) {
        if let Some((name, svc)) = find(&|s| s.node_port == Some(dport)) {
            return decide(state, config, packet, name, svc, Path::External { masquerade: !svc.external_policy_local });
        }
    }
    let health_check_port = services.iter().any(|(_, s)| s.health_check_node_port == Some(dport));
    if bound_addresses(state, config).contains(&dst) && !health_check_port {
        return Verdict::Reject;
    }
    Verdict::NotService
}

/// The addresses upstream binds to `kube-ipvs0` (`KUBE-IPVS-IPS`).
fn bound_addresses(state: &ProxyState, config: &ProxierConfig) -> BTreeSet<IpAddr> {
    let mut out = BTreeSet::new();
    for (_, s) in state.services().iter() {
        out.insert(s.cluster_ip);
        out.extend(s.external_ips.iter().chain(&s.load_balancer_vips).filter(|ip| !config.node_ips.contains(ip) && !config.node_port_ips.contains(ip)));
    }
    out
}

fn decide(state: &ProxyState, config: &ProxierConfig, packet: &Packet, name: &ServicePortName, svc: &ServicePortInfo, path: Path) -> Verdict {
    let selected = select_endpoints(state.endpoints().get(name), svc, state.node());
    let local_only = match path {
        Path::ClusterIp => svc.internal_policy_local,
        Path::External { .. } => svc.external_policy_local,
    };
    let endpoints = if local_only && !selected.local.is_empty() { &selected.local } else { &selected.cluster };
    if endpoints.is_empty() {
        return Verdict::Reject;
    }
    let detector = &config.local_detector;
    let masquerade = match path {
        Path::ClusterIp => config.masquerade_all || (detector.is_implemented() && !detector.is_local(packet.src, packet.iif())),
        Path::External { masquerade } => masquerade,
    };
    // No short-circuit in IPVS mode: hairpin is for local endpoints only.
    Verdict::Forward { targets: targets(endpoints, masquerade, false, packet), affinity_seconds: svc.affinity_timeout_seconds }
}
