//! The oracle: what must happen to a packet, from the desired state alone.

use crate::packet::{targets, Origin, Packet, Verdict};
use kproxy_core::config::ProxierConfig;
use kproxy_core::model::{ServicePortInfo, ServicePortName};
use kproxy_core::select_endpoints;
use kproxy_core::ProxyState;

/// Which of upstream's dataplanes the semantics are those of. They agree
/// except where noted on [`evaluate_for`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dataplane {
    /// `mode: nftables`.
    Nftables,
    /// `mode: iptables`.
    Iptables,
    /// `mode: ipvs`.
    Ipvs,
    /// `mode: userspace` (kube-proxy's old mode, which kproxy keeps as a
    /// backend written outside the library: `kproxy-userspace`).
    Userspace,
}

/// How the packet reached the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    ClusterIp,
    External,
}

/// Says what kube-proxy semantics require for `packet`, given the applied
/// state and the node's configuration. Every backend's tracer, and the real
/// kernel tests, must agree with it on every shared scenario.
///
/// The rules, in order:
/// 1. ClusterIP:port → internal traffic policy; externalIP:port,
///    LoadBalancer VIP:port (after `loadBalancerSourceRanges`, else DROP)
///    and NodePort on a NodePort address → external traffic policy.
/// 2. Another port on a known ClusterIP → REJECT, and any other address
///    of the cluster's ServiceCIDRs → DROP (nftables mode; see
///    [`evaluate_for`]). Anything else → not a service.
/// 3. No usable endpoint anywhere → REJECT; endpoints exist but none local
///    where the policy is Local → DROP. ETP=Local traffic from local pods and
///    from the node itself short-circuits to the cluster endpoints.
/// 4. Masquerade: ClusterIP traffic when `masqueradeAll` or from a non-pod
///    source (needs a local detector); external traffic with Cluster policy;
///    ETP=Local traffic from the node; and hairpin, when the client is the
///    chosen endpoint itself. A hairpin client is a local endpoint, or any
///    endpoint taking the ETP=Local pod short-circuit: a remote pod's
///    ClusterIP traffic is handled by its own node, so only those two can
///    reach this node's rules as their own endpoint.
pub fn evaluate(state: &ProxyState, config: &ProxierConfig, packet: &Packet) -> Verdict {
    evaluate_for(Dataplane::Nftables, state, config, packet)
}

/// [`evaluate`] for `dataplane`. Iptables mode differs from nftables mode
/// in three places: only nftables mode rejects traffic to another port (or
/// protocol) of a known ClusterIP, and drops traffic to the other addresses
/// of the ServiceCIDRs; and iptables mode rejects (not drops) a client that
/// `loadBalancerSourceRanges` leave out when the Service has no endpoint. IPVS mode follows upstream's IPVS
/// layout, which differs more (no ETP=Local short-circuit, Local policies
/// falling back to Cluster endpoints, REJECT where no real server is left,
/// other ports of every bound address rejected); its module documents each.
///
/// Userspace mode decides as nftables mode does, except where a proxy that
/// forwards connections itself differs by nature:
/// - the endpoint sees the node as the source of every connection (each
///   target is masqueraded), under every policy, so
///   `externalTrafficPolicy: Local` preserves no source;
/// - SCTP is not proxied;
/// - like iptables mode, it neither rejects other ports of a known
///   ClusterIP nor drops the rest of the ServiceCIDRs.
pub fn evaluate_for(dataplane: Dataplane, state: &ProxyState, config: &ProxierConfig, packet: &Packet) -> Verdict {
    match dataplane {
        Dataplane::Ipvs => crate::ipvs::evaluate_ipvs(state, config, packet),
        Dataplane::Userspace if packet.protocol == kproxy_core::Protocol::Sctp => Verdict::NotService,
        Dataplane::Userspace => match evaluate_kernel(dataplane, state, config, packet) {
            Verdict::Forward { targets, affinity_seconds } => Verdict::Forward {
                targets: targets.into_iter().map(|t| crate::packet::Target { masquerade: true, ..t }).collect(),
                affinity_seconds,
            },
            other => other,
        },
        _ => evaluate_kernel(dataplane, state, config, packet),
    }
}

/// nftables and iptables modes (and userspace mode's choices).
fn evaluate_kernel(dataplane: Dataplane, state: &ProxyState, config: &ProxierConfig, packet: &Packet) -> Verdict {
    let services = state.services();
    let find = |matches: &dyn Fn(&ServicePortInfo) -> bool| {
        services
            .iter()
            .find(|(_, s)| s.protocol == packet.protocol && matches(s))
    };
    let (dst, dport) = (packet.dst, packet.dport);
    if let Some((name, svc)) = find(&|s| s.cluster_ip == dst && s.port == dport) {
        return decide(state, config, packet, name, svc, Path::ClusterIp);
    }
    if let Some((name, svc)) = find(&|s| s.external_ips.contains(&dst) && s.port == dport) {
        return decide(state, config, packet, name, svc, Path::External);
    }
    if let Some((name, svc)) = find(&|s| s.load_balancer_vips.contains(&dst) && s.port == dport) {
        if !svc.source_allowed(packet.src, &config.node_ips) {
            // Upstream's iptables mode has no firewall chain for a Service
            // without endpoints (`usesFWChain` needs `hasEndpoints`): its
            // no-endpoint REJECT meets the blocked client first.
            if dataplane == Dataplane::Iptables && !select_endpoints(state.endpoints().get(name), svc, state.node()).has_any {
                return Verdict::Reject;
            }
            return Verdict::Drop;
        }
        return decide(state, config, packet, name, svc, Path::External);
    }
    if config.node_port_ips.contains(&dst) {
        if let Some((name, svc)) = find(&|s| s.node_port == Some(dport)) {
            return decide(state, config, packet, name, svc, Path::External);
        }
    }
    if dataplane == Dataplane::Nftables && services.iter().any(|(_, s)| s.cluster_ip == dst) {
        return Verdict::Reject;
    }
    if dataplane == Dataplane::Nftables && state.service_cidrs().iter().any(|n| n.contains(&dst)) {
        return Verdict::Drop;
    }
    Verdict::NotService
}

fn decide(
    state: &ProxyState,
    config: &ProxierConfig,
    packet: &Packet,
    name: &ServicePortName,
    svc: &ServicePortInfo,
    path: Path,
) -> Verdict {
    let selected = select_endpoints(state.endpoints().get(name), svc, state.node());
    if !selected.has_any {
        return Verdict::Reject;
    }
    let detector = &config.local_detector;
    let from_pod = detector.is_implemented() && detector.is_local(packet.src, packet.iif());
    let short_circuit = path == Path::External && svc.external_policy_local && from_pod;
    let (endpoints, masquerade) = match path {
        Path::ClusterIp => {
            let eps = if svc.internal_policy_local { &selected.local } else { &selected.cluster };
            let masq = config.masquerade_all || (detector.is_implemented() && !from_pod);
            (eps, masq)
        }
        Path::External if !svc.external_policy_local => (&selected.cluster, true),
        Path::External if from_pod => (&selected.cluster, false),
        Path::External if packet.origin == Origin::Node => (&selected.cluster, true),
        Path::External => (&selected.local, false),
    };
    if endpoints.is_empty() {
        return Verdict::Drop;
    }
    Verdict::Forward {
        targets: targets(endpoints, masquerade, short_circuit, packet),
        affinity_seconds: svc.affinity_timeout_seconds,
    }
}

