//! Named behaviour scenarios shared by every backend: a cluster state, a
//! node configuration, and packets with the verdict kube-proxy semantics
//! require. The expectations are written out by hand; the oracle is tested
//! against them, and every backend's tracer and kernel tests run them too.

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::fixtures::{self as fx, service, slice, EndpointState::*};
use crate::evaluate::Dataplane;
use crate::packet::{Origin, Packet, Verdict};
use kproxy_core::config::{LocalDetector, ProxierConfig};
use kproxy_core::model::{IpFamily, Protocol};
use kproxy_core::Proxier;
use kproxy_core::ProxyState;

/// One packet and what must happen to it.
#[derive(Debug, Clone)]
pub struct Case {
    /// What the case checks, in words.
    pub name: &'static str,
    /// The packet.
    pub packet: Packet,
    /// The required verdict (nftables mode).
    pub expected: Verdict,
    /// The verdict in upstream's iptables and IPVS modes, where it differs
    /// from nftables mode.
    pub iptables: Option<Verdict>,
    /// The verdict in upstream's IPVS mode, where its layout makes it
    /// differ from iptables mode (see [`evaluate_for`](crate::evaluate_for)).
    pub ipvs: Option<Verdict>,
}

impl Case {
    /// The verdict `dataplane` must give, as written in the scenario
    /// (userspace mode's is derived: see [`Scenario::verdicts_for`]).
    pub fn expected_for(&self, dataplane: Dataplane) -> &Verdict {
        match (dataplane, &self.iptables, &self.ipvs) {
            (Dataplane::Ipvs, _, Some(v)) => v,
            (Dataplane::Iptables | Dataplane::Ipvs, Some(v), _) => v,
            _ => &self.expected,
        }
    }
}

/// A cluster state, a node configuration and the cases to check.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// A unique snake_case name.
    pub name: &'static str,
    /// The family the proxier serves.
    pub family: IpFamily,
    /// The Services.
    pub services: Vec<Service>,
    /// The EndpointSlices.
    pub slices: Vec<EndpointSlice>,
    /// This node's Node object.
    pub node: Node,
    /// The proxier configuration.
    pub config: ProxierConfig,
    /// The cluster's ServiceCIDRs (both families; empty: none known).
    pub service_cidrs: Vec<IpNet>,
    /// iptables mode's `localhostNodePorts` (IPv4 NodePorts also on
    /// 127.0.0.1 when the NodePort addresses hold loopback). Off in the
    /// shared scenarios; only the verdicts of cases to 127.0.0.1 depend
    /// on it.
    pub localhost_node_ports: bool,
    /// The packets and verdicts.
    pub cases: Vec<Case>,
}

impl Scenario {
    pub(super) fn new(name: &'static str, family: IpFamily) -> Self {
        Scenario {
            name,
            family,
            services: Vec::new(),
            slices: Vec::new(),
            node: fx::node(),
            config: fx::config(family),
            service_cidrs: Vec::new(),
            localhost_node_ports: false,
            cases: Vec::new(),
        }
    }

    pub(super) fn with(mut self, services: Vec<Service>, slices: Vec<EndpointSlice>) -> Self {
        self.services = services;
        self.slices = slices;
        self
    }

    pub(super) fn case(mut self, name: &'static str, packet: Packet, expected: Verdict) -> Self {
        self.cases.push(Case { name, packet, expected, iptables: None, ipvs: None });
        self
    }

    /// A case whose verdict in iptables and IPVS modes differs.
    fn case_modes(mut self, name: &'static str, packet: Packet, nftables: Verdict, iptables: Verdict) -> Self {
        self.cases.push(Case { name, packet, expected: nftables, iptables: Some(iptables), ipvs: None });
        self
    }

    /// Gives the last case its own verdict in IPVS mode.
    pub(super) fn ipvs(mut self, verdict: Verdict) -> Self {
        self.cases.last_mut().expect("a case to amend").ipvs = Some(verdict);
        self
    }

    /// Hands the scenario's Node, its ServiceCIDRs (if any), then its Services and EndpointSlices, to
    /// `proxier` as additions (what a proxier sees at start-up).
    pub fn feed<P: Proxier + ?Sized>(&self, proxier: &mut P) {
        proxier.on_node_update(&self.node);
        if !self.service_cidrs.is_empty() {
            proxier.on_service_cidrs_update(&self.service_cidrs);
        }
        for s in &self.services {
            proxier.on_service_update(None, Some(s));
        }
        for s in &self.slices {
            proxier.on_endpoint_slice_update(s, false);
        }
    }

    /// The applied proxier state this scenario describes.
    pub fn state(&self) -> ProxyState {
        let mut state = ProxyState::new(self.family, fx::NODE_NAME);
        state.on_node(&self.node);
        state.on_service_cidrs(&self.service_cidrs);
        for s in &self.services {
            state.on_service(None, Some(s));
        }
        for s in &self.slices {
            state.on_endpoint_slice(s, false);
        }
        state.apply();
        state
    }

    /// The verdict `dataplane` must give for each case, in order: the
    /// scenario's own for the kernel modes; for userspace mode, the
    /// oracle's ([`evaluate_for`](crate::evaluate_for)), which the
    /// scenarios' own verdicts check in every other mode.
    pub fn verdicts_for(&self, dataplane: Dataplane) -> Vec<Verdict> {
        if dataplane != Dataplane::Userspace {
            return self.cases.iter().map(|c| c.expected_for(dataplane).clone()).collect();
        }
        let state = self.state();
        self.cases.iter().map(|c| crate::evaluate_for(dataplane, &state, &self.config, &c.packet)).collect()
    }
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap_or_else(|_| panic!("bad IP literal {s}"))
}

pub(super) fn pod(dst: &str, port: u16) -> Packet {
    Packet::tcp(Origin::LocalPod, ip(fx::LOCAL_CLIENT_POD), ip(dst), port)
}

pub(super) fn node(dst: &str, port: u16) -> Packet {
    Packet::tcp(Origin::Node, ip(fx::NODE_IP), ip(dst), port)
}

pub(super) fn outside(src: &str, dst: &str, port: u16) -> Packet {
    Packet::tcp(Origin::Outside, ip(src), ip(dst), port)
}

pub(super) fn fwd(endpoints: &[&str], masquerade: bool) -> Verdict {
    Verdict::forward(endpoints, masquerade)
}

/// Every shared scenario.
pub fn all() -> Vec<Scenario> {
    vec![
        cluster_ip(),
        node_port(),
        node_port_addresses_matching_no_address(),
        load_balancer_source_ranges(),
        load_balancer_source_ranges_without_endpoints(),
        external_ip_policy_local(),
        load_balancer_range_holds_node(),
        external_ips(),
        external_policy_local_with_local_endpoints(),
        external_policy_local_without_local_endpoints(),
        internal_policy_local(),
        session_affinity(),
        terminating_fallback(),
        topology_hints(),
        no_endpoints(),
        service_cidrs(),
        hairpin(),
        masquerade_all(),
        no_local_detector(),
        bridge_interface_detector(),
        interface_prefix_detector(),
        node_cidr_detector(),
        dual_stack(IpFamily::V4),
        dual_stack(IpFamily::V6),
    ]
}

fn cluster_ip() -> Scenario {
    Scenario::new("cluster_ip", IpFamily::V4)
        .with(
            vec![service("ns1", "svc1", &["172.30.0.41"]).port("p80", 80, "TCP", 0).port("dns", 53, "UDP", 0).build()],
            vec![slice("ns1", "svc1", "svc1-a", "IPv4")
                .port("p80", 8080, "TCP")
                .port("dns", 5353, "UDP")
                .endpoint("10.180.0.1", fx::NODE_NAME, Ready)
                .endpoint("10.180.1.1", fx::OTHER_NODE, Ready)
                .build()],
        )
        .case("pod to ClusterIP is not masqueraded", pod("172.30.0.41", 80), fwd(&["10.180.0.1:8080", "10.180.1.1:8080"], false))
        .case("node to ClusterIP is masqueraded", node("172.30.0.41", 80), fwd(&["10.180.0.1:8080", "10.180.1.1:8080"], true))
        .case("off-cluster source is masqueraded", outside(fx::ALLOWED_CLIENT, "172.30.0.41", 80), fwd(&["10.180.0.1:8080", "10.180.1.1:8080"], true))
        .case("UDP is load balanced too", pod("172.30.0.41", 53).with_protocol(Protocol::Udp), fwd(&["10.180.0.1:5353", "10.180.1.1:5353"], false))
        .case_modes("unknown port on a ClusterIP is rejected (nftables and IPVS modes)", pod("172.30.0.41", 81), Verdict::Reject, Verdict::NotService)
        // Upstream's KUBE-IPVS-FILTER rejects other ports of bound addresses.
        .ipvs(Verdict::Reject)
        .case_modes(
            "unknown protocol on a ClusterIP is rejected (nftables and IPVS modes)",
            pod("172.30.0.41", 80).with_protocol(Protocol::Udp),
            Verdict::Reject,
            Verdict::NotService,
        )
        .ipvs(Verdict::Reject)
        .case("an address that is no ClusterIP is left alone", pod("172.30.0.99", 80), Verdict::NotService)
}

/// A NodePort Service (ClusterIP 172.30.0.42:80, NodePort 3001) with one
/// endpoint here and one on another node.
fn node_port_objects() -> (Vec<Service>, Vec<EndpointSlice>) {
    (
        vec![service("ns1", "svc2", &["172.30.0.42"]).type_("NodePort").port("p80", 80, "TCP", 3001).build()],
        vec![slice("ns1", "svc2", "svc2-a", "IPv4")
            .port("p80", 80, "TCP")
            .endpoint("10.180.0.2", fx::NODE_NAME, Ready)
            .endpoint("10.180.1.2", fx::OTHER_NODE, Ready)
            .build()],
    )
}

fn node_port() -> Scenario {
    let (services, slices) = node_port_objects();
    Scenario::new("node_port", IpFamily::V4)
        .with(services, slices)
        .case("outside to NodePort is masqueraded", outside(fx::ALLOWED_CLIENT, fx::NODE_IP, 3001), fwd(&["10.180.0.2:80", "10.180.1.2:80"], true))
        .case("pod to NodePort is masqueraded (Cluster policy)", pod(fx::NODE_IP, 3001), fwd(&["10.180.0.2:80", "10.180.1.2:80"], true))
        .case("ClusterIP still works", pod("172.30.0.42", 80), fwd(&["10.180.0.2:80", "10.180.1.2:80"], false))
        .case("another port on the node is left alone", outside(fx::ALLOWED_CLIENT, fx::NODE_IP, 3002), Verdict::NotService)
        .case("a non-NodePort address is left alone", outside(fx::ALLOWED_CLIENT, "192.168.0.3", 3001), Verdict::NotService)
}

/// `nodePortAddresses` set to ranges that hold no address of the node
/// (say `203.0.113.0/24`): no NodePort is served anywhere, as upstream.
/// (iptables mode once served them on every local address instead.)
fn node_port_addresses_matching_no_address() -> Scenario {
    let (services, slices) = node_port_objects();
    let mut s = Scenario::new("node_port_addresses_matching_no_address", IpFamily::V4)
        .with(services, slices)
        .case("outside to the node IP's NodePort is not served", outside(fx::ALLOWED_CLIENT, fx::NODE_IP, 3001), Verdict::NotService)
        .case("pod to the node IP's NodePort is not served", pod(fx::NODE_IP, 3001), Verdict::NotService)
        .case("the node to its own NodePort is not served", node(fx::NODE_IP, 3001), Verdict::NotService)
        .case("ClusterIP still works", pod("172.30.0.42", 80), fwd(&["10.180.0.2:80", "10.180.1.2:80"], false));
    s.config.node_port_ips = Vec::new();
    s.config.node_ports_on_every_address = false;
    s
}

fn load_balancer_source_ranges() -> Scenario {
    Scenario::new("load_balancer_source_ranges", IpFamily::V4)
        .with(
            vec![service("ns1", "svc3", &["172.30.0.43"])
                .port("p80", 80, "TCP", 3003)
                .load_balancer(&[fx::LB_IP])
                .source_ranges(&[fx::SOURCE_RANGE])
                .build()],
            vec![slice("ns1", "svc3", "svc3-a", "IPv4")
                .port("p80", 80, "TCP")
                .endpoint("10.180.1.3", fx::OTHER_NODE, Ready)
                .build()],
        )
        .case("allowed client reaches the VIP", outside(fx::ALLOWED_CLIENT, fx::LB_IP, 80), fwd(&["10.180.1.3:80"], true))
        .case("blocked client is dropped", outside(fx::BLOCKED_CLIENT, fx::LB_IP, 80), Verdict::Drop)
        .case("a pod outside the ranges is dropped too", pod(fx::LB_IP, 80), Verdict::Drop)
        .case("source ranges never apply to the NodePort", outside(fx::BLOCKED_CLIENT, fx::NODE_IP, 3003), fwd(&["10.180.1.3:80"], true))
        .case("source ranges never apply to the ClusterIP", pod("172.30.0.43", 80), fwd(&["10.180.1.3:80"], false))
        .case(
            "the node reaching the VIP, sourced from the VIP, is dropped when no range holds the node",
            Packet::tcp(Origin::Node, ip(fx::LB_IP), ip(fx::LB_IP), 80),
            Verdict::Drop,
        )
}

/// A LoadBalancer with source ranges and no endpoint. nftables and IPVS
/// modes drop the blocked client (the firewall comes first); upstream's
/// iptables mode has no firewall chain for a Service without endpoints
/// (`usesFWChain` needs `hasEndpoints`), so its no-endpoint REJECT meets
/// every client. Found by the differential test against upstream.
fn load_balancer_source_ranges_without_endpoints() -> Scenario {
    Scenario::new("load_balancer_source_ranges_without_endpoints", IpFamily::V4)
        .with(
            vec![service("ns1", "svc3b", &["172.30.0.44"])
                .port("p80", 80, "TCP", 3004)
                .load_balancer(&[fx::LB_IP_2])
                .source_ranges(&[fx::SOURCE_RANGE])
                .build()],
            Vec::new(),
        )
        .case("allowed client is refused", outside(fx::ALLOWED_CLIENT, fx::LB_IP_2, 80), Verdict::Reject)
        .case_modes("blocked client", outside(fx::BLOCKED_CLIENT, fx::LB_IP_2, 80), Verdict::Drop, Verdict::Reject)
        .ipvs(Verdict::Drop)
}

/// A ClusterIP Service with an externalIP and `externalTrafficPolicy:
/// Local`: upstream counts it as externally accessible, so the policy
/// holds on the externalIP (local endpoints only, the client's source
/// kept). Found by the differential test against upstream.
fn external_ip_policy_local() -> Scenario {
    Scenario::new("external_ip_policy_local", IpFamily::V4)
        .with(
            vec![service("ns1", "svc3c", &["172.30.0.45"]).port("p80", 80, "TCP", 0).external_ips(&["192.168.99.45"]).external_policy_local(0).build()],
            vec![slice("ns1", "svc3c", "svc3c-a", "IPv4")
                .port("p80", 80, "TCP")
                .endpoint("10.180.0.45", fx::NODE_NAME, Ready)
                .endpoint("10.180.1.45", fx::OTHER_NODE, Ready)
                .build()],
        )
        .case("the externalIP: the local endpoint, source kept", outside(fx::ALLOWED_CLIENT, "192.168.99.45", 80), fwd(&["10.180.0.45:80"], false))
        .case("the ClusterIP: every endpoint", pod("172.30.0.45", 80), fwd(&["10.180.0.45:80", "10.180.1.45:80"], false))
}

fn load_balancer_range_holds_node() -> Scenario {
    Scenario::new("load_balancer_range_holds_node", IpFamily::V4)
        .with(
            vec![service("ns1", "svc4", &["172.30.0.44"])
                .port("p80", 80, "TCP", 3004)
                .load_balancer(&[fx::LB_IP_2])
                .source_ranges(&["192.168.0.0/24"])
                .build()],
            vec![slice("ns1", "svc4", "svc4-a", "IPv4")
                .port("p80", 80, "TCP")
                .endpoint("10.180.1.4", fx::OTHER_NODE, Ready)
                .build()],
        )
        .case("the node itself is in range", node(fx::LB_IP_2, 80), fwd(&["10.180.1.4:80"], true))
        .case(
            "the node reaching its own VIP, sourced from the VIP, is allowed when a range holds the node",
            Packet::tcp(Origin::Node, ip(fx::LB_IP_2), ip(fx::LB_IP_2), 80),
            fwd(&["10.180.1.4:80"], true),
        )
        .case("anyone else is dropped", outside(fx::ALLOWED_CLIENT, fx::LB_IP_2, 80), Verdict::Drop)
}

fn external_ips() -> Scenario {
    Scenario::new("external_ips", IpFamily::V4)
        .with(
            vec![service("ns1", "svc5", &["172.30.0.45"]).port("p80", 80, "TCP", 0).external_ips(&["192.168.99.11"]).build()],
            vec![slice("ns1", "svc5", "svc5-a", "IPv4")
                .port("p80", 80, "TCP")
                .endpoint("10.180.0.5", fx::NODE_NAME, Ready)
                .build()],
        )
        .case("outside to externalIP is masqueraded", outside(fx::ALLOWED_CLIENT, "192.168.99.11", 80), fwd(&["10.180.0.5:80"], true))
        .case("pod to externalIP is masqueraded (Cluster policy)", pod("192.168.99.11", 80), fwd(&["10.180.0.5:80"], true))
        .case("another port on the externalIP is left alone", outside(fx::ALLOWED_CLIENT, "192.168.99.11", 81), Verdict::NotService)
        .ipvs(Verdict::Reject)
}

fn etp_local_service(name: &str, cluster_ip: &str, node_port: i32) -> Service {
    service("ns1", name, &[cluster_ip])
        .port("p80", 80, "TCP", node_port)
        .load_balancer(&[fx::LB_IP])
        .external_policy_local(30_000)
        .build()
}

fn external_policy_local_with_local_endpoints() -> Scenario {
    Scenario::new("external_policy_local_with_local_endpoints", IpFamily::V4)
        .with(
            vec![etp_local_service("svc6", "172.30.0.46", 3006)],
            vec![slice("ns1", "svc6", "svc6-a", "IPv4")
                .port("p80", 80, "TCP")
                .endpoint("10.180.0.6", fx::NODE_NAME, Ready)
                .endpoint("10.180.1.6", fx::OTHER_NODE, Ready)
                .build()],
        )
        .case("outside to VIP keeps the source, local endpoint only", outside(fx::ALLOWED_CLIENT, fx::LB_IP, 80), fwd(&["10.180.0.6:80"], false))
        .case("outside to NodePort keeps the source, local endpoint only", outside(fx::ALLOWED_CLIENT, fx::NODE_IP, 3006), fwd(&["10.180.0.6:80"], false))
        .case("pods short-circuit to all endpoints", pod(fx::LB_IP, 80), fwd(&["10.180.0.6:80", "10.180.1.6:80"], false))
        // IPVS mode has no short-circuit: one virtual server, local endpoints.
        .ipvs(fwd(&["10.180.0.6:80"], false))
        .case("the node short-circuits with masquerade", node(fx::LB_IP, 80), fwd(&["10.180.0.6:80", "10.180.1.6:80"], true))
        .ipvs(fwd(&["10.180.0.6:80"], false))
        .case(
            "an endpoint on another node short-circuited back to itself is masqueraded (hairpin)",
            Packet::tcp(Origin::LocalPod, ip("10.180.1.6"), ip(fx::LB_IP), 80),
            fwd(&["10.180.0.6:80", "10.180.1.6:80"], false).with_hairpin("10.180.1.6:80"),
        )
        .ipvs(fwd(&["10.180.0.6:80"], false))
        .case("ClusterIP uses every endpoint", pod("172.30.0.46", 80), fwd(&["10.180.0.6:80", "10.180.1.6:80"], false))
}

fn external_policy_local_without_local_endpoints() -> Scenario {
    Scenario::new("external_policy_local_without_local_endpoints", IpFamily::V4)
        .with(
            vec![etp_local_service("svc7", "172.30.0.47", 3007)],
            vec![slice("ns1", "svc7", "svc7-a", "IPv4")
                .port("p80", 80, "TCP")
                .endpoint("10.180.1.7", fx::OTHER_NODE, Ready)
                .build()],
        )
        .case("outside to VIP is dropped", outside(fx::ALLOWED_CLIENT, fx::LB_IP, 80), Verdict::Drop)
        // IPVS mode falls back to the Cluster endpoints, source kept.
        .ipvs(fwd(&["10.180.1.7:80"], false))
        .case("outside to NodePort is dropped", outside(fx::ALLOWED_CLIENT, fx::NODE_IP, 3007), Verdict::Drop)
        .ipvs(fwd(&["10.180.1.7:80"], false))
        .case("pods still short-circuit", pod(fx::LB_IP, 80), fwd(&["10.180.1.7:80"], false))
        .case("the node still short-circuits", node(fx::NODE_IP, 3007), fwd(&["10.180.1.7:80"], true))
        .ipvs(fwd(&["10.180.1.7:80"], false))
        .case("ClusterIP is unaffected", pod("172.30.0.47", 80), fwd(&["10.180.1.7:80"], false))
}

fn internal_policy_local() -> Scenario {
    Scenario::new("internal_policy_local", IpFamily::V4)
        .with(
            vec![
                service("ns1", "svc8", &["172.30.0.48"]).port("p80", 80, "TCP", 0).internal_policy_local().build(),
                service("ns1", "svc9", &["172.30.0.49"]).port("p80", 80, "TCP", 0).internal_policy_local().build(),
            ],
            vec![
                slice("ns1", "svc8", "svc8-a", "IPv4")
                    .port("p80", 80, "TCP")
                    .endpoint("10.180.0.8", fx::NODE_NAME, Ready)
                    .endpoint("10.180.1.8", fx::OTHER_NODE, Ready)
                    .build(),
                slice("ns1", "svc9", "svc9-a", "IPv4")
                    .port("p80", 80, "TCP")
                    .endpoint("10.180.1.9", fx::OTHER_NODE, Ready)
                    .build(),
            ],
        )
        .case("only the local endpoint serves ClusterIP traffic", pod("172.30.0.48", 80), fwd(&["10.180.0.8:80"], false))
        .case("no local endpoint: dropped, not rejected", pod("172.30.0.49", 80), Verdict::Drop)
        // IPVS mode: an empty virtual server answers ICMP port unreachable.
        .ipvs(Verdict::Reject)
}

fn session_affinity() -> Scenario {
    Scenario::new("session_affinity", IpFamily::V4)
        .with(
            vec![service("ns1", "svc10", &["172.30.0.50"]).port("p80", 80, "TCP", 3010).type_("NodePort").affinity(3600).build()],
            vec![slice("ns1", "svc10", "svc10-a", "IPv4")
                .port("p80", 80, "TCP")
                .endpoint("10.180.0.10", fx::NODE_NAME, Ready)
                .endpoint("10.180.1.10", fx::OTHER_NODE, Ready)
                .build()],
        )
        .case("ClusterIP traffic is sticky", pod("172.30.0.50", 80), fwd(&["10.180.0.10:80", "10.180.1.10:80"], false).with_affinity(3600))
        .case("NodePort traffic is sticky", outside(fx::ALLOWED_CLIENT, fx::NODE_IP, 3010), fwd(&["10.180.0.10:80", "10.180.1.10:80"], true).with_affinity(3600))
}

fn terminating_fallback() -> Scenario {
    Scenario::new("terminating_fallback", IpFamily::V4)
        .with(
            vec![
                service("ns1", "svc11", &["172.30.0.51"]).port("p80", 80, "TCP", 0).build(),
                service("ns1", "svc12", &["172.30.0.52"]).port("p80", 80, "TCP", 0).build(),
                etp_local_service("svc13", "172.30.0.53", 3013),
            ],
            vec![
                slice("ns1", "svc11", "svc11-a", "IPv4")
                    .port("p80", 80, "TCP")
                    .endpoint("10.180.1.11", fx::OTHER_NODE, ServingTerminating)
                    .endpoint("10.180.1.12", fx::OTHER_NODE, Terminating)
                    .endpoint("10.180.1.13", fx::OTHER_NODE, NotReady)
                    .build(),
                slice("ns1", "svc12", "svc12-a", "IPv4")
                    .port("p80", 80, "TCP")
                    .endpoint("10.180.1.14", fx::OTHER_NODE, Ready)
                    .endpoint("10.180.1.15", fx::OTHER_NODE, ServingTerminating)
                    .build(),
                slice("ns1", "svc13", "svc13-a", "IPv4")
                    .port("p80", 80, "TCP")
                    .endpoint("10.180.0.16", fx::NODE_NAME, ServingTerminating)
                    .endpoint("10.180.1.16", fx::OTHER_NODE, Ready)
                    .build(),
            ],
        )
        .case("no ready endpoint: serving terminating ones serve", pod("172.30.0.51", 80), fwd(&["10.180.1.11:80"], false))
        .case("ready endpoints win over terminating ones", pod("172.30.0.52", 80), fwd(&["10.180.1.14:80"], false))
        .case("ETP Local falls back to the local terminating endpoint", outside(fx::ALLOWED_CLIENT, fx::LB_IP, 80), fwd(&["10.180.0.16:80"], false))
        .case("cluster traffic uses the remote ready endpoint", pod("172.30.0.53", 80), fwd(&["10.180.1.16:80"], false))
}

fn topology_hints() -> Scenario {
    let svc = |name: &str, ip: &str| service("ns1", name, &[ip]).port("p80", 80, "TCP", 0).build();
    Scenario::new("topology_hints", IpFamily::V4)
        .with(
            vec![svc("svc14", "172.30.0.54"), svc("svc15", "172.30.0.55"), svc("svc16", "172.30.0.56"), svc("svc17", "172.30.0.57")],
            vec![
                slice("ns1", "svc14", "svc14-a", "IPv4")
                    .port("p80", 80, "TCP")
                    .endpoint("10.180.0.17", fx::NODE_NAME, Ready)
                    .hints(&[fx::NODE_ZONE], &[])
                    .endpoint("10.180.1.17", fx::OTHER_NODE, Ready)
                    .hints(&[fx::OTHER_ZONE], &[])
                    .build(),
                slice("ns1", "svc15", "svc15-a", "IPv4")
                    .port("p80", 80, "TCP")
                    .endpoint("10.180.0.18", fx::NODE_NAME, Ready)
                    .hints(&[fx::NODE_ZONE], &[])
                    .endpoint("10.180.1.18", fx::OTHER_NODE, Ready)
                    .build(),
                slice("ns1", "svc16", "svc16-a", "IPv4")
                    .port("p80", 80, "TCP")
                    .endpoint("10.180.0.19", fx::NODE_NAME, Ready)
                    .hints(&[fx::NODE_ZONE], &[fx::NODE_NAME])
                    .endpoint("10.180.1.19", fx::OTHER_NODE, Ready)
                    .hints(&[fx::NODE_ZONE], &[fx::OTHER_NODE])
                    .build(),
                slice("ns1", "svc17", "svc17-a", "IPv4")
                    .port("p80", 80, "TCP")
                    .endpoint("10.180.0.20", fx::NODE_NAME, Ready)
                    .hints(&[fx::OTHER_ZONE], &[])
                    .endpoint("10.180.1.20", fx::OTHER_NODE, Ready)
                    .hints(&[fx::OTHER_ZONE], &[])
                    .build(),
            ],
        )
        .case("zone hints keep traffic in the zone", pod("172.30.0.54", 80), fwd(&["10.180.0.17:80"], false))
        .case("one endpoint without a hint disables hints", pod("172.30.0.55", 80), fwd(&["10.180.0.18:80", "10.180.1.18:80"], false))
        .case("node hints win over zone hints", pod("172.30.0.56", 80), fwd(&["10.180.0.19:80"], false))
        .case("no hint for this zone disables hints", pod("172.30.0.57", 80), fwd(&["10.180.0.20:80", "10.180.1.20:80"], false))
}

fn no_endpoints() -> Scenario {
    Scenario::new("no_endpoints", IpFamily::V4)
        .with(
            vec![
                service("ns1", "svc18", &["172.30.0.58"])
                    .type_("NodePort")
                    .port("p80", 80, "TCP", 3018)
                    .port("dns", 53, "UDP", 0)
                    .build(),
                service("ns1", "svc19", &["172.30.0.59"]).port("p80", 80, "TCP", 0).build(),
            ],
            vec![slice("ns1", "svc19", "svc19-a", "IPv4")
                .port("p80", 80, "TCP")
                .endpoint("10.180.1.21", fx::OTHER_NODE, Terminating)
                .build()],
        )
        .case("TCP to a ClusterIP without endpoints is rejected", pod("172.30.0.58", 80), Verdict::Reject)
        .case("UDP to a ClusterIP without endpoints is rejected", pod("172.30.0.58", 53).with_protocol(Protocol::Udp), Verdict::Reject)
        .case("NodePort without endpoints is rejected", outside(fx::ALLOWED_CLIENT, fx::NODE_IP, 3018), Verdict::Reject)
        .case("only non-serving endpoints count as none", pod("172.30.0.59", 80), Verdict::Reject)
}

/// The cluster's ServiceCIDRs are known (`networking.k8s.io/v1`
/// ServiceCIDR objects; the e2e cluster's default one is
/// `172.30.0.0/16,fd00:172:30::/112`). nftables mode drops traffic to an
/// address of those ranges that no Service holds, so it never leaks out of
/// the node (upstream's `cluster-ips-check`); iptables and IPVS modes
/// leave it alone. The topology puts a responder beyond the node on each
/// such address, so a leak is seen, not assumed.
fn service_cidrs() -> Scenario {
    let mut s = Scenario::new("service_cidrs", IpFamily::V4).with(
        vec![
            service("ns1", "svc40", &["172.30.0.70"]).port("p80", 80, "TCP", 0).build(),
            service("ns1", "svc41", &["172.30.0.71"]).port("p80", 80, "TCP", 0).build(),
        ],
        vec![slice("ns1", "svc40", "svc40-a", "IPv4").port("p80", 80, "TCP").endpoint("10.180.0.40", fx::NODE_NAME, Ready).build()],
    );
    s.service_cidrs = vec![net("172.30.0.0/16"), net("fd00:172:30::/112")];
    s.case("a ClusterIP in the range still works", pod("172.30.0.70", 80), fwd(&["10.180.0.40:80"], false))
        .case("a ClusterIP without endpoints is still rejected", pod("172.30.0.71", 80), Verdict::Reject)
        .case_modes("another port on a ClusterIP is still rejected (nftables and IPVS modes)", pod("172.30.0.70", 81), Verdict::Reject, Verdict::NotService)
        .ipvs(Verdict::Reject)
        .case_modes("a pod's traffic to an unallocated address of the range is dropped (nftables mode)", pod("172.30.0.99", 80), Verdict::Drop, Verdict::NotService)
        .case_modes("the node's own traffic to it is dropped too (nftables mode)", node("172.30.0.99", 80), Verdict::Drop, Verdict::NotService)
        .case("an address outside every range is left alone", pod("172.31.0.99", 80), Verdict::NotService)
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap_or_else(|_| panic!("bad CIDR literal {s}"))
}

fn hairpin() -> Scenario {
    Scenario::new("hairpin", IpFamily::V4)
        .with(
            vec![service("ns1", "svc20", &["172.30.0.60"]).port("p80", 80, "TCP", 0).build()],
            vec![slice("ns1", "svc20", "svc20-a", "IPv4")
                .port("p80", 80, "TCP")
                .endpoint("10.180.0.22", fx::NODE_NAME, Ready)
                .endpoint("10.180.0.23", fx::NODE_NAME, Ready)
                .build()],
        )
        .case(
            "an endpoint reaching itself is masqueraded",
            Packet::tcp(Origin::LocalPod, ip("10.180.0.22"), ip("172.30.0.60"), 80),
            fwd(&["10.180.0.22:80", "10.180.0.23:80"], false).with_hairpin("10.180.0.22:80"),
        )
}

fn masquerade_all() -> Scenario {
    let mut s = Scenario::new("masquerade_all", IpFamily::V4)
        .with(
            vec![service("ns1", "svc21", &["172.30.0.61"]).port("p80", 80, "TCP", 3021).load_balancer(&[fx::LB_IP]).external_policy_local(30_021).build()],
            vec![slice("ns1", "svc21", "svc21-a", "IPv4")
                .port("p80", 80, "TCP")
                .endpoint("10.180.0.24", fx::NODE_NAME, Ready)
                .build()],
        )
        .case("pods are masqueraded too", pod("172.30.0.61", 80), fwd(&["10.180.0.24:80"], true))
        .case("masqueradeAll does not touch ETP Local external traffic", outside(fx::ALLOWED_CLIENT, fx::LB_IP, 80), fwd(&["10.180.0.24:80"], false));
    s.config.masquerade_all = true;
    s
}

fn no_local_detector() -> Scenario {
    let mut s = Scenario::new("no_local_detector", IpFamily::V4)
        .with(
            vec![etp_local_service("svc22", "172.30.0.62", 3022)],
            vec![slice("ns1", "svc22", "svc22-a", "IPv4")
                .port("p80", 80, "TCP")
                .endpoint("10.180.0.25", fx::NODE_NAME, Ready)
                .endpoint("10.180.1.25", fx::OTHER_NODE, Ready)
                .build()],
        )
        .case("without a detector ClusterIP traffic is never masqueraded", outside(fx::ALLOWED_CLIENT, "172.30.0.62", 80), fwd(&["10.180.0.25:80", "10.180.1.25:80"], false))
        .case("without a detector pods get no short-circuit", pod(fx::LB_IP, 80), fwd(&["10.180.0.25:80"], false));
    s.config.local_detector = LocalDetector::None;
    s
}

fn bridge_interface_detector() -> Scenario {
    let mut s = Scenario::new("bridge_interface_detector", IpFamily::V4)
        .with(
            vec![service("ns1", "svc23", &["172.30.0.63"]).port("p80", 80, "TCP", 0).build()],
            vec![slice("ns1", "svc23", "svc23-a", "IPv4")
                .port("p80", 80, "TCP")
                .endpoint("10.180.1.26", fx::OTHER_NODE, Ready)
                .build()],
        )
        .case("traffic from the pod bridge is not masqueraded", pod("172.30.0.63", 80), fwd(&["10.180.1.26:80"], false))
        .case(
            "a pod-range source arriving elsewhere is masqueraded",
            Packet::tcp(Origin::Outside, ip("10.99.0.1"), ip("172.30.0.63"), 80),
            fwd(&["10.180.1.26:80"], true),
        );
    s.config.local_detector = LocalDetector::BridgeInterface(crate::packet::POD_INTERFACE.to_string());
    s
}

fn interface_prefix_detector() -> Scenario {
    let mut s = Scenario::new("interface_prefix_detector", IpFamily::V4)
        .with(
            vec![service("ns1", "svc26", &["172.30.0.66"]).port("p80", 80, "TCP", 0).build()],
            vec![slice("ns1", "svc26", "svc26-a", "IPv4")
                .port("p80", 80, "TCP")
                .endpoint("10.180.1.29", fx::OTHER_NODE, Ready)
                .build()],
        )
        .case("traffic from an interface with the prefix is not masqueraded", pod("172.30.0.66", 80), fwd(&["10.180.1.29:80"], false))
        .case(
            "traffic from another interface is masqueraded",
            Packet::tcp(Origin::Outside, ip("10.99.0.2"), ip("172.30.0.66"), 80),
            fwd(&["10.180.1.29:80"], true),
        );
    let prefix = crate::packet::POD_INTERFACE.trim_end_matches(|c: char| c.is_ascii_digit());
    s.config.local_detector = LocalDetector::InterfaceNamePrefix(prefix.to_string());
    s
}

fn node_cidr_detector() -> Scenario {
    let mut s = Scenario::new("node_cidr_detector", IpFamily::V4)
        .with(
            vec![service("ns1", "svc27", &["172.30.0.67"]).port("p80", 80, "TCP", 0).build()],
            vec![slice("ns1", "svc27", "svc27-a", "IPv4")
                .port("p80", 80, "TCP")
                .endpoint("10.180.0.30", fx::NODE_NAME, Ready)
                .build()],
        )
        .case("a pod inside the node's pod CIDR is not masqueraded", pod("172.30.0.67", 80), fwd(&["10.180.0.30:80"], false))
        .case(
            "a cluster source outside the node's pod CIDR is masqueraded",
            Packet::tcp(Origin::Outside, ip("10.99.0.3"), ip("172.30.0.67"), 80),
            fwd(&["10.180.0.30:80"], true),
        );
    s.config.local_detector = LocalDetector::NodeCidr(vec!["10.180.0.0/24".parse().expect("fixture literal")]);
    s
}

fn dual_stack(family: IpFamily) -> Scenario {
    let name = match family {
        IpFamily::V4 => "dual_stack_v4",
        IpFamily::V6 => "dual_stack_v6",
    };
    let s = Scenario::new(name, family).with(
        vec![
            service("ns1", "svc24", &["172.30.0.64", "fd00:172:30::64"]).port("p80", 80, "TCP", 3024).type_("NodePort").build(),
            service("ns1", "svc25", &["fd00:172:30::65"]).port("p80", 80, "TCP", 0).build(),
        ],
        vec![
            slice("ns1", "svc24", "svc24-v4", "IPv4").port("p80", 80, "TCP").endpoint("10.180.0.27", fx::NODE_NAME, Ready).build(),
            slice("ns1", "svc24", "svc24-v6", "IPv6").port("p80", 80, "TCP").endpoint("fd00:10:180::27", fx::NODE_NAME, Ready).build(),
            slice("ns1", "svc25", "svc25-v6", "IPv6").port("p80", 80, "TCP").endpoint("fd00:10:180::28", fx::NODE_NAME, Ready).build(),
        ],
    );
    match family {
        IpFamily::V4 => s
            .case("IPv4 ClusterIP reaches the IPv4 endpoint", pod("172.30.0.64", 80), fwd(&["10.180.0.27:80"], false))
            .case("IPv4 NodePort", outside(fx::ALLOWED_CLIENT, fx::NODE_IP, 3024), fwd(&["10.180.0.27:80"], true)),
        IpFamily::V6 => {
            let pod6 = |dst: &str, port| Packet::tcp(Origin::LocalPod, ip("fd00:10:180::100"), ip(dst), port);
            s.case("IPv6 ClusterIP reaches the IPv6 endpoint", pod6("fd00:172:30::64", 80), fwd(&["[fd00:10:180::27]:80"], false))
                .case("IPv6-only service", pod6("fd00:172:30::65", 80), fwd(&["[fd00:10:180::28]:80"], false))
                .case(
                    "IPv6 NodePort",
                    Packet::tcp(Origin::Outside, ip("2001:db8:ffff::2"), ip(fx::NODE_IP_V6), 3024),
                    fwd(&["[fd00:10:180::27]:80"], true),
                )
        }
    }
}
