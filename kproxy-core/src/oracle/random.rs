//! Cluster states described by a few choices, for differential tests: a
//! generator (proptest in kproxy-e2e's tests) picks the choices, and
//! [`state`] turns them into a [`Scenario`] whose objects are valid for the
//! API server and whose cases (the probes every state gets) have the
//! oracle's verdicts. A sequence of such states, with the same Service
//! names, is a [`Transition`](super::Transition) of random edits.
//!
//! ```
//! use kproxy_core::oracle::random::{state, EndpointChoice, ServiceChoice, ServiceKind};
//! use kproxy_core::oracle::fixtures::EndpointState;
//! let svc = ServiceChoice {
//!     kind: ServiceKind::NodePort,
//!     external_local: true,
//!     internal_local: false,
//!     affinity: false,
//!     external_ip: false,
//!     source_range: false,
//!     udp: false,
//!     endpoints: vec![EndpointChoice { local: false, state: EndpointState::Ready }],
//! };
//! let s = state("one NodePort", &[svc]);
//! assert_eq!(s.services.len(), 1);
//! assert!(!s.cases.is_empty());
//! ```

use super::evaluate::{evaluate_for, Dataplane};
use super::fixtures::{self as fx, service, slice, EndpointState};
use super::scenarios::{node, outside, pod, Case, Scenario};
use crate::model::{IpFamily, Protocol};

/// What kind of Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    /// `type: ClusterIP`.
    ClusterIp,
    /// `type: NodePort`.
    NodePort,
    /// `type: LoadBalancer`, with a VIP in its status.
    LoadBalancer,
}

/// One endpoint of a [`ServiceChoice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointChoice {
    /// On this node (else on another node).
    pub local: bool,
    /// Its conditions.
    pub state: EndpointState,
}

/// One Service of a random state, as a few choices. Choices the API
/// server would refuse are dropped when rendered (`externalTrafficPolicy:
/// Local` on a ClusterIP Service without externalIPs, source ranges on a
/// Service that is not a LoadBalancer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceChoice {
    /// Its type.
    pub kind: ServiceKind,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// ClientIP session affinity.
    pub affinity: bool,
    /// An externalIP.
    pub external_ip: bool,
    /// `loadBalancerSourceRanges` that let [`fx::ALLOWED_CLIENT`] in and
    /// keep [`fx::BLOCKED_CLIENT`] out.
    pub source_range: bool,
    /// Its port is UDP (else TCP); every probe of it is then UDP.
    pub udp: bool,
    /// Its endpoints (at most 6), in one EndpointSlice.
    pub endpoints: Vec<EndpointChoice>,
}

/// The addresses of Service number `k` (at most 12 Services).
struct Addresses {
    name: String,
    cluster_ip: String,
    external_ip: String,
    vip: String,
    node_port: u16,
    health_check_node_port: i32,
}

fn addresses(k: usize) -> Addresses {
    Addresses {
        name: format!("rnd{k}"),
        cluster_ip: format!("172.30.0.{}", 100 + k),
        external_ip: format!("192.168.99.{}", 100 + k),
        vip: format!("1.2.3.{}", 100 + k),
        node_port: 3100 + k as u16,
        health_check_node_port: 3200 + k as i32,
    }
}

fn endpoint_ip(k: usize, i: usize, local: bool) -> String {
    format!("10.180.{}.{}", if local { 0 } else { 1 }, 120 + 6 * k + i)
}

/// The cluster state `services` describe (Service `k` is `ns1/rndK`), with
/// a case for each of its frontends: the ClusterIP from a local pod and
/// from the node, the NodePort, the externalIP and the LB VIP from an
/// allowed outside client, and the VIP from a blocked one. Each case's
/// verdicts, per dataplane, are the oracle's.
///
/// # Panics
/// With more than 12 Services or more than 6 endpoints in one.
pub fn state(name: &'static str, services: &[ServiceChoice]) -> Scenario {
    assert!(services.len() <= 12, "at most 12 Services");
    let mut svcs = Vec::new();
    let mut slices = Vec::new();
    let mut packets = Vec::new();
    for (k, choice) in services.iter().enumerate() {
        assert!(choice.endpoints.len() <= 6, "at most 6 endpoints per Service");
        let a = addresses(k);
        let external = choice.kind != ServiceKind::ClusterIp;
        let node_port = if external { i32::from(a.node_port) } else { 0 };
        let (protocol, proto_name) = if choice.udp { (Protocol::Udp, "UDP") } else { (Protocol::Tcp, "TCP") };
        let mut b = service("ns1", &a.name, &[&a.cluster_ip]).port("p80", 80, proto_name, node_port);
        match choice.kind {
            ServiceKind::ClusterIp => {}
            ServiceKind::NodePort => b = b.type_("NodePort"),
            ServiceKind::LoadBalancer => b = b.load_balancer(&[&a.vip]),
        }
        if choice.external_ip {
            b = b.external_ips(&[&a.external_ip]);
        }
        if choice.external_local && (external || choice.external_ip) {
            let hc = if choice.kind == ServiceKind::LoadBalancer { a.health_check_node_port } else { 0 };
            b = b.external_policy_local(hc);
        }
        if choice.internal_local {
            b = b.internal_policy_local();
        }
        if choice.affinity {
            b = b.affinity(10800);
        }
        if choice.source_range && choice.kind == ServiceKind::LoadBalancer {
            b = b.source_ranges(&[fx::SOURCE_RANGE]);
        }
        svcs.push(b.build());
        let mut sb = slice("ns1", &a.name, &format!("{}-a", a.name), "IPv4").port("p80", 80, proto_name);
        for (i, ep) in choice.endpoints.iter().enumerate() {
            let node = if ep.local { fx::NODE_NAME } else { fx::OTHER_NODE };
            sb = sb.endpoint(&endpoint_ip(k, i, ep.local), node, ep.state);
        }
        slices.push(sb.build());

        let mut probes = vec![("a ClusterIP from a local pod", pod(&a.cluster_ip, 80)), ("a ClusterIP from the node", node(&a.cluster_ip, 80))];
        if external {
            probes.push(("a NodePort from outside", outside(fx::ALLOWED_CLIENT, fx::NODE_IP, a.node_port)));
        }
        if choice.external_ip {
            probes.push(("an externalIP from outside", outside(fx::ALLOWED_CLIENT, &a.external_ip, 80)));
        }
        if choice.kind == ServiceKind::LoadBalancer {
            probes.push(("an LB VIP from an allowed client", outside(fx::ALLOWED_CLIENT, &a.vip, 80)));
            probes.push(("an LB VIP from a blocked client", outside(fx::BLOCKED_CLIENT, &a.vip, 80)));
        }
        packets.extend(probes.into_iter().map(|(what, p)| (what, p.with_protocol(protocol))));
    }
    let mut s = Scenario::new(name, IpFamily::V4).with(svcs, slices);
    let state = s.state();
    for (what, packet) in packets {
        let verdict = |d: Dataplane| evaluate_for(d, &state, &s.config, &packet);
        let expected = verdict(Dataplane::Nftables);
        let iptables = verdict(Dataplane::Iptables);
        let ipvs = verdict(Dataplane::Ipvs);
        let ipvs = (ipvs != iptables).then_some(ipvs);
        let iptables = (iptables != expected).then_some(iptables);
        s.cases.push(Case { name: what, packet, expected, iptables, ipvs });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::Verdict;

    fn choice(kind: ServiceKind) -> ServiceChoice {
        ServiceChoice {
            kind,
            external_local: false,
            internal_local: false,
            affinity: false,
            external_ip: false,
            source_range: false,
            udp: false,
            endpoints: vec![EndpointChoice { local: true, state: EndpointState::Ready }],
        }
    }

    #[test]
    fn a_udp_service_is_probed_with_udp() {
        let mut np = choice(ServiceKind::NodePort);
        np.udp = true;
        let s = state("udp", &[np]);
        assert_eq!(s.services[0].spec.as_ref().unwrap().ports.as_ref().unwrap()[0].protocol.as_deref(), Some("UDP"));
        assert!(s.cases.iter().all(|c| c.packet.protocol == Protocol::Udp), "{:?}", s.cases);
        assert!(matches!(s.cases[0].expected, Verdict::Forward { .. }));
    }

    #[test]
    fn every_frontend_gets_a_case_with_the_oracles_verdict() {
        let mut lb = choice(ServiceKind::LoadBalancer);
        lb.source_range = true;
        lb.external_ip = true;
        let s = state("lb", &[choice(ServiceKind::ClusterIp), lb]);
        assert_eq!(s.cases.len(), 2 + 6);
        let blocked = s.cases.iter().find(|c| c.name == "an LB VIP from a blocked client").unwrap();
        assert_eq!(blocked.expected, Verdict::Drop);
        let first = &s.cases[0];
        assert_eq!(first.expected, Verdict::forward(&["10.180.0.120:80"], false));
    }

    #[test]
    fn choices_the_api_server_refuses_are_dropped() {
        let mut c = choice(ServiceKind::ClusterIp);
        c.external_local = true;
        c.source_range = true;
        let s = state("refused", &[c]);
        let spec = s.services[0].spec.as_ref().unwrap();
        assert_eq!(spec.external_traffic_policy, None);
        assert_eq!(spec.load_balancer_source_ranges, None);
        let mut np = choice(ServiceKind::NodePort);
        np.external_local = true;
        let s = state("np", &[np]);
        let spec = s.services[0].spec.as_ref().unwrap();
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(spec.health_check_node_port, None, "only LoadBalancers have one");
    }
}
