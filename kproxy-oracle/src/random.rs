//! Cluster states described by a few choices, for differential tests: a
//! generator (proptest in kproxy-e2e's tests) picks the choices, and
//! [`state_on`] turns them into a [`Scenario`] whose objects are valid for
//! the API server and whose cases (the probes every state gets) have the
//! oracle's verdicts. A sequence of such states, with the same Service
//! names and the same [`NodeChoice`], is a
//! [`Transition`](crate::Transition) of random edits.
//!
//! ```
//! use kproxy_oracle::random::{state, EndpointChoice, ServiceChoice, ServiceKind};
//! use kproxy_oracle::fixtures::EndpointState;
//! let svc = ServiceChoice {
//!     kind: ServiceKind::NodePort,
//!     endpoints: vec![EndpointChoice { local: false, state: EndpointState::Ready, ..Default::default() }],
//!     ..Default::default()
//! };
//! let s = state("one NodePort", &[svc]);
//! assert_eq!(s.services.len(), 1);
//! assert!(!s.cases.is_empty());
//! ```

use std::net::{IpAddr, Ipv4Addr};

use crate::evaluate::{evaluate_for, Dataplane};
use crate::fixtures::{self as fx, service, slice, EndpointState};
use crate::packet::{Origin, Packet, POD_INTERFACE};
use crate::scenarios::{node, outside, pod, Case, Scenario};
use kproxy_core::config::LocalDetector;
use kproxy_core::model::{IpFamily, Protocol};

/// How the node of a walk is configured (the same in every state of the
/// walk: the proxy starts once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeChoice {
    /// The local-traffic detector.
    pub detector: DetectorChoice,
    /// Where NodePorts are served.
    pub node_ports: NodePortChoice,
    /// iptables mode's `localhostNodePorts`.
    pub localhost_node_ports: bool,
}

/// The local-traffic detector of a [`NodeChoice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DetectorChoice {
    /// None (no `clusterCIDR`).
    None,
    /// `ClusterCIDR` over [`fx::POD_CIDR`] (the fixtures' default).
    #[default]
    ClusterCidr,
    /// `NodeCIDR`: the Node's podCIDR, 10.180.0.0/24.
    NodeCidr,
    /// `BridgeInterface`: the pods' bridge.
    BridgeInterface,
    /// `InterfaceNamePrefix`: the bridge's name without its digits.
    InterfaceNamePrefix,
}

/// The `nodePortAddresses` of a [`NodeChoice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NodePortChoice {
    /// `primary`: the node's IP.
    #[default]
    Primary,
    /// Every local address (`0.0.0.0/0`, `::/0`), 127.0.0.1 included
    /// where localhost NodePorts are on.
    EveryAddress,
    /// A range that holds no address of the node: no NodePort anywhere.
    NoAddress,
}

impl NodeChoice {
    /// Sets `s`'s configuration as chosen.
    fn configure(&self, s: &mut Scenario) {
        let c = &mut s.config;
        c.local_detector = match self.detector {
            DetectorChoice::None => LocalDetector::None,
            DetectorChoice::ClusterCidr => c.local_detector.clone(),
            DetectorChoice::NodeCidr => LocalDetector::NodeCidr(vec!["10.180.0.0/24".parse().expect("literal")]),
            DetectorChoice::BridgeInterface => LocalDetector::BridgeInterface(POD_INTERFACE.to_string()),
            DetectorChoice::InterfaceNamePrefix => {
                LocalDetector::InterfaceNamePrefix(POD_INTERFACE.trim_end_matches(|c: char| c.is_ascii_digit()).to_string())
            }
        };
        match self.node_ports {
            NodePortChoice::Primary => {}
            NodePortChoice::EveryAddress => c.node_ports_on_every_address = true,
            NodePortChoice::NoAddress => c.node_port_ips.clear(),
        }
        s.localhost_node_ports = self.localhost_node_ports;
    }

    /// Whether iptables mode serves NodePorts on 127.0.0.1.
    fn localhost_served(&self) -> bool {
        self.localhost_node_ports && self.node_ports == NodePortChoice::EveryAddress
    }
}

/// What kind of Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServiceKind {
    /// `type: ClusterIP`.
    #[default]
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
    /// A zone hint: `Some(true)` for this node's zone, `Some(false)` for
    /// the other zone.
    pub zone_hint: Option<bool>,
    /// A node hint: `Some(true)` for this node, `Some(false)` for the
    /// other node.
    pub node_hint: Option<bool>,
}

impl Default for EndpointChoice {
    /// A ready endpoint on this node, without hints.
    fn default() -> Self {
        EndpointChoice { local: true, state: EndpointState::Ready, zone_hint: None, node_hint: None }
    }
}

/// One Service of a random state, as a few choices. Choices the API
/// server would refuse are dropped when rendered (`externalTrafficPolicy:
/// Local` on a ClusterIP Service without externalIPs, source ranges on a
/// Service that is not a LoadBalancer).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
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
    /// `trafficDistribution: PreferClose` (what makes the EndpointSlice
    /// controller write zone hints; here the choices write them).
    pub traffic_distribution: bool,
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

/// [`state_on`] a node with the fixtures' configuration.
///
/// # Panics
/// As [`state_on`].
pub fn state(name: &'static str, services: &[ServiceChoice]) -> Scenario {
    state_on(name, &NodeChoice::default(), services)
}

/// The cluster state `services` describe (Service `k` is `ns1/rndK`) on a
/// node configured as `node` says, with a case for each of its frontends:
/// the ClusterIP from a local pod and from the node; the NodePort from an
/// allowed outside client, from a pod on another node, from the node, and
/// on 127.0.0.1 from the node; the externalIP and the LB VIP from an
/// allowed outside client, and the VIP from a blocked one. Each case's
/// verdicts, per dataplane, are the oracle's; 127.0.0.1 serves NodePorts
/// only in iptables mode with localhost NodePorts on and every address
/// serving (IPVS mode's verdict there is the oracle's "not a service",
/// which no test compares with upstream: the differential test runs
/// nftables and iptables modes).
///
/// # Panics
/// With more than 12 Services or more than 6 endpoints in one.
pub fn state_on(name: &'static str, node_choice: &NodeChoice, services: &[ServiceChoice]) -> Scenario {
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
        if choice.traffic_distribution {
            b = b.traffic_distribution("PreferClose");
        }
        if choice.source_range && choice.kind == ServiceKind::LoadBalancer {
            b = b.source_ranges(&[fx::SOURCE_RANGE]);
        }
        svcs.push(b.build());
        let mut sb = slice("ns1", &a.name, &format!("{}-a", a.name), "IPv4").port("p80", 80, proto_name);
        for (i, ep) in choice.endpoints.iter().enumerate() {
            let node = if ep.local { fx::NODE_NAME } else { fx::OTHER_NODE };
            sb = sb.endpoint(&endpoint_ip(k, i, ep.local), node, ep.state);
            let pick = |this: bool, here: &'static str, there: &'static str| if this { here } else { there };
            let zones: Vec<&str> = ep.zone_hint.map(|z| pick(z, fx::NODE_ZONE, fx::OTHER_ZONE)).into_iter().collect();
            let nodes: Vec<&str> = ep.node_hint.map(|n| pick(n, fx::NODE_NAME, fx::OTHER_NODE)).into_iter().collect();
            if !zones.is_empty() || !nodes.is_empty() {
                sb = sb.hints(&zones, &nodes);
            }
        }
        slices.push(sb.build());

        let mut probes = vec![("a ClusterIP from a local pod", pod(&a.cluster_ip, 80)), ("a ClusterIP from the node", node(&a.cluster_ip, 80))];
        if external {
            probes.push(("a NodePort from outside", outside(fx::ALLOWED_CLIENT, fx::NODE_IP, a.node_port)));
            probes.push(("a NodePort from a pod on another node", outside(fx::REMOTE_CLIENT_POD, fx::NODE_IP, a.node_port)));
            probes.push(("a NodePort from the node", node(fx::NODE_IP, a.node_port)));
            let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
            probes.push(("a NodePort on 127.0.0.1 from the node", Packet::tcp(Origin::Node, loopback, loopback, a.node_port)));
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
    node_choice.configure(&mut s);
    let state = s.state();
    // Localhost NodePorts: iptables mode serves 127.0.0.1 as one more
    // NodePort address.
    let mut with_loopback = s.config.clone();
    with_loopback.node_port_ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    for (what, packet) in packets {
        let verdict = |d: Dataplane| {
            let config = if d == Dataplane::Iptables && packet.dst.is_loopback() && node_choice.localhost_served() { &with_loopback } else { &s.config };
            evaluate_for(d, &state, config, &packet)
        };
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
    use crate::Verdict;

    fn choice(kind: ServiceKind) -> ServiceChoice {
        ServiceChoice { kind, endpoints: vec![EndpointChoice::default()], ..Default::default() }
    }

    fn case<'a>(s: &'a Scenario, name: &str) -> &'a Case {
        s.cases.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no case {name:?} in {:?}", s.cases))
    }

    #[test]
    fn localhost_node_ports_are_served_only_in_iptables_mode_on_every_address() {
        let np = choice(ServiceKind::NodePort);
        let lo = "a NodePort on 127.0.0.1 from the node";
        let every = NodeChoice { node_ports: NodePortChoice::EveryAddress, localhost_node_ports: true, ..Default::default() };
        let s = state_on("lo", &every, std::slice::from_ref(&np));
        assert!(s.config.node_ports_on_every_address && s.localhost_node_ports);
        let c = case(&s, lo);
        assert_eq!(c.expected, Verdict::NotService, "nftables mode never serves 127.0.0.1");
        assert_eq!(c.expected_for(Dataplane::Iptables), &Verdict::forward(&["10.180.0.120:80"], true));
        assert_eq!(c.expected_for(Dataplane::Ipvs), &Verdict::NotService);
        for node in [NodeChoice { localhost_node_ports: true, ..Default::default() }, NodeChoice { node_ports: NodePortChoice::EveryAddress, ..Default::default() }] {
            let s = state_on("lo", &node, std::slice::from_ref(&np));
            assert_eq!(case(&s, lo).expected_for(Dataplane::Iptables), &Verdict::NotService, "{node:?}");
        }
        let none = state_on("none", &NodeChoice { node_ports: NodePortChoice::NoAddress, ..Default::default() }, &[np]);
        assert_eq!(case(&none, "a NodePort from outside").expected, Verdict::NotService);
    }

    #[test]
    fn a_remote_pod_counts_as_a_pod_only_for_the_cluster_cidr_detector() {
        let mut np = choice(ServiceKind::NodePort);
        np.external_local = true;
        np.endpoints = vec![EndpointChoice { local: false, ..Default::default() }];
        let remote = "a NodePort from a pod on another node";
        // ClusterCIDR: a pod, so ETP=Local short-circuits to the remote endpoint.
        let s = state_on("cidr", &NodeChoice::default(), &[np.clone()]);
        assert_eq!(case(&s, remote).expected, Verdict::forward(&["10.180.1.120:80"], false));
        // NodeCIDR or an interface: not this node's pod, so no local endpoint, DROP.
        for detector in [DetectorChoice::NodeCidr, DetectorChoice::BridgeInterface, DetectorChoice::None] {
            let s = state_on("other", &NodeChoice { detector, ..Default::default() }, &[np.clone()]);
            assert_eq!(case(&s, remote).expected, Verdict::Drop, "{detector:?}");
        }
    }

    #[test]
    fn zone_hints_narrow_the_cluster_endpoints_when_every_endpoint_has_one() {
        let here = EndpointChoice { local: false, zone_hint: Some(true), ..Default::default() };
        let there = EndpointChoice { local: false, zone_hint: Some(false), ..Default::default() };
        let mut svc = choice(ServiceKind::ClusterIp);
        svc.traffic_distribution = true;
        svc.endpoints = vec![here, there];
        let s = state("hints", &[svc.clone()]);
        assert_eq!(s.services[0].spec.as_ref().unwrap().traffic_distribution.as_deref(), Some("PreferClose"));
        assert_eq!(s.cases[0].expected, Verdict::forward(&["10.180.1.120:80"], false));
        // One endpoint without a hint: hints are ignored.
        svc.endpoints.push(EndpointChoice { local: false, ..Default::default() });
        let s = state("partial", &[svc]);
        assert_eq!(s.cases[0].expected, Verdict::forward(&["10.180.1.120:80", "10.180.1.121:80", "10.180.1.122:80"], false));
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
        assert_eq!(s.cases.len(), 2 + 9);
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
