//! The stale-flow rules, case by case and as properties.

use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;

use super::*;
use crate::model::{Endpoint, ServicePortInfo, ServicePortName};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn sock(s: &str) -> SocketAddr {
    s.parse().expect("test socket address")
}

fn flow(protocol: Protocol, dst: &str, reply: &str) -> Flow {
    Flow { protocol, original_source: sock("10.0.0.9:40000"), original_destination: sock(dst), reply_source: sock(reply), zone: 0 }
}

/// A DNS-like cluster: `dns` (UDP 53, NodePort 30053, externalIP
/// 192.0.2.10) with one serving and one not-serving endpoint, `web` (TCP),
/// `empty` (UDP, no endpoints) and `other` (UDP ClusterIP whose port equals
/// dns's NodePort).
fn cluster() -> (ServiceMap, EndpointsMap) {
    let dns = ServicePortName::new("kube-system", "dns", "dns", Protocol::Udp);
    let mut dns_info = ServicePortInfo::cluster_ip(ip("172.30.0.10"), 53, Protocol::Udp);
    dns_info.node_port = Some(30053);
    dns_info.external_ips = vec![ip("192.0.2.10")];
    let web = ServicePortName::new("ns", "web", "http", Protocol::Tcp);
    let empty = ServicePortName::new("ns", "empty", "u", Protocol::Udp);
    let other = ServicePortName::new("ns", "other", "u", Protocol::Udp);
    let services: ServiceMap = [
        (dns.clone(), dns_info),
        (web.clone(), ServicePortInfo::cluster_ip(ip("172.30.0.20"), 80, Protocol::Tcp)),
        (empty, ServicePortInfo::cluster_ip(ip("172.30.0.30"), 53, Protocol::Udp)),
        (other.clone(), ServicePortInfo::cluster_ip(ip("172.30.0.40"), 30053, Protocol::Udp)),
    ]
    .into_iter()
    .collect();
    let mut gone = Endpoint::ready(ip("10.1.0.2"), 5353, false);
    gone.serving = false;
    gone.ready = false;
    let endpoints: EndpointsMap = [
        (dns, vec![Endpoint::ready(ip("10.1.0.1"), 5353, true), gone]),
        (web, vec![Endpoint::ready(ip("10.1.0.5"), 8080, true)]),
        (other, vec![Endpoint::ready(ip("10.1.0.7"), 9000, true)]),
    ]
    .into_iter()
    .collect();
    (services, endpoints)
}

fn filter(deleted: &[&str]) -> StaleFlowFilter {
    let (services, endpoints) = cluster();
    StaleFlowFilter::new(&services, &endpoints, deleted.iter().map(|s| ip(s)))
}

#[test]
fn a_flow_to_a_serving_endpoint_is_kept() {
    let f = filter(&[]);
    assert!(!f.is_stale(&flow(Protocol::Udp, "172.30.0.10:53", "10.1.0.1:5353")));
    assert!(!f.is_stale(&flow(Protocol::Udp, "192.0.2.10:53", "10.1.0.1:5353")), "externalIP");
    assert!(!f.is_stale(&flow(Protocol::Udp, "192.168.50.2:30053", "10.1.0.1:5353")), "NodePort");
}

#[test]
fn a_flow_to_an_endpoint_that_stopped_serving_is_stale() {
    let f = filter(&[]);
    assert!(f.is_stale(&flow(Protocol::Udp, "172.30.0.10:53", "10.1.0.2:5353")));
    assert!(f.is_stale(&flow(Protocol::Udp, "192.0.2.10:53", "10.1.0.2:5353")), "externalIP");
    assert!(f.is_stale(&flow(Protocol::Udp, "192.168.50.2:30053", "10.1.0.2:5353")), "NodePort on any address");
    assert!(f.is_stale(&flow(Protocol::Udp, "172.30.0.10:53", "10.1.0.99:5353")), "an endpoint that is gone");
}

#[test]
fn a_flow_that_was_never_dnated_is_stale_once_the_service_has_endpoints() {
    // Recorded while the service had no endpoints: reply source = the
    // ClusterIP itself.
    assert!(filter(&[]).is_stale(&flow(Protocol::Udp, "172.30.0.10:53", "172.30.0.10:53")));
}

#[test]
fn every_flow_to_a_service_without_serving_endpoints_is_stale() {
    // kubernetes/kubernetes#139628: a client streaming from one source port
    // kept reaching the old pod after the Service dropped to zero
    // endpoints; its entry must go so the next packet meets the REJECT.
    let f = filter(&[]);
    assert!(f.is_stale(&flow(Protocol::Udp, "172.30.0.30:53", "10.1.0.3:53")), "DNATed to the pod that went");
    assert!(f.is_stale(&flow(Protocol::Udp, "172.30.0.30:53", "172.30.0.30:53")), "never DNATed");
    let (services, mut endpoints) = cluster();
    let dns = ServicePortName::new("kube-system", "dns", "dns", Protocol::Udp);
    endpoints.insert(dns, Vec::new());
    let f = StaleFlowFilter::new(&services, &endpoints, []);
    assert!(f.is_stale(&flow(Protocol::Udp, "172.30.0.10:53", "10.1.0.1:5353")), "ClusterIP, after the last endpoint went");
    assert!(f.is_stale(&flow(Protocol::Udp, "192.0.2.10:53", "10.1.0.1:5353")), "externalIP");
    assert!(f.is_stale(&flow(Protocol::Udp, "192.168.50.2:30053", "10.1.0.1:5353")), "NodePort");
    assert!(!f.is_stale(&flow(Protocol::Udp, "172.30.0.40:30053", "10.1.0.7:9000")), "other services keep theirs");
}

#[test]
fn tcp_and_strangers_are_left_alone() {
    let f = filter(&[]);
    assert!(!f.is_stale(&flow(Protocol::Tcp, "172.30.0.20:80", "10.9.9.9:8080")), "TCP");
    assert!(!f.is_stale(&flow(Protocol::Udp, "172.30.0.20:80", "10.9.9.9:8080")), "UDP to a TCP-only port");
    assert!(!f.is_stale(&flow(Protocol::Udp, "203.0.113.1:53", "203.0.113.1:53")), "not a service");
    assert!(!f.is_stale(&flow(Protocol::Udp, "203.0.113.1:30053", "203.0.113.1:30053")), "another host's port that equals a NodePort");
}

#[test]
fn a_clusterip_port_equal_to_a_nodeport_is_judged_as_the_clusterip() {
    let f = filter(&[]);
    assert!(!f.is_stale(&flow(Protocol::Udp, "172.30.0.40:30053", "10.1.0.7:9000")));
    assert!(f.is_stale(&flow(Protocol::Udp, "172.30.0.40:30053", "10.1.0.1:5353")));
}

#[test]
fn flows_to_a_deleted_clusterip_are_stale_unless_it_is_in_use_again() {
    let f = filter(&["172.30.0.99", "172.30.0.30"]);
    assert!(f.is_stale(&flow(Protocol::Udp, "172.30.0.99:53", "10.1.0.3:53")));
    assert!(f.is_stale(&flow(Protocol::Sctp, "172.30.0.99:7", "10.1.0.3:7")));
    assert!(!f.is_stale(&flow(Protocol::Tcp, "172.30.0.99:53", "10.1.0.3:53")), "TCP");
    assert!(f.is_stale(&flow(Protocol::Udp, "172.30.0.30:53", "10.1.0.3:53")), "re-used by `empty`, which has no endpoint");
    assert!(!f.deleted.contains(&ip("172.30.0.30")), "judged as `empty`'s, not as deleted");
}

#[test]
fn an_empty_filter_says_so() {
    assert!(StaleFlowFilter::new(&ServiceMap::new(), &EndpointsMap::new(), []).is_empty());
    assert!(!filter(&[]).is_empty());
    let (services, _) = cluster();
    assert!(!StaleFlowFilter::new(&services, &EndpointsMap::new(), []).is_empty(), "UDP services without endpoints still have flows to end");
    let tcp_only: ServiceMap = services.iter().filter(|(n, _)| n.protocol == Protocol::Tcp).map(|(n, i)| (n.clone(), i.clone())).collect();
    assert!(StaleFlowFilter::new(&tcp_only, &EndpointsMap::new(), []).is_empty(), "TCP only");
}

fn arb_protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp), Just(Protocol::Sctp)]
}

proptest! {
    /// A flow DNATed to a serving endpoint of the service it was sent to
    /// is never stale; one DNATed elsewhere is stale exactly for UDP/SCTP.
    #[test]
    fn stale_iff_reply_source_is_not_serving(
        protocol in arb_protocol(),
        services in proptest::collection::btree_map(1u8..=250, (1u16..=65535, proptest::collection::btree_set(1u8..=250, 1..4)), 1..8),
        pick in any::<prop::sample::Index>(),
        stranger in 251u8..=254,
    ) {
        let mut smap = ServiceMap::new();
        let mut emap = EndpointsMap::new();
        for (svc, (port, eps)) in &services {
            let name = ServicePortName::new("ns", format!("s{svc}"), "p", protocol);
            smap.insert(name.clone(), ServicePortInfo::cluster_ip(IpAddr::from([172, 30, 0, *svc]), *port, protocol));
            emap.insert(name, eps.iter().map(|e| Endpoint::ready(IpAddr::from([10, 1, *svc, *e]), 8000, false)).collect::<Vec<_>>());
        }
        let f = StaleFlowFilter::new(&smap, &emap, []);
        let (svc, (port, eps)) = pick.get(&services.iter().collect::<Vec<_>>()).to_owned();
        let dst = SocketAddr::new(IpAddr::from([172, 30, 0, *svc]), *port);
        for e in eps.iter() {
            let good = Flow { protocol, original_source: sock("10.0.0.9:1"), original_destination: dst, reply_source: SocketAddr::new(IpAddr::from([10, 1, *svc, *e]), 8000), zone: 0 };
            prop_assert!(!f.is_stale(&good));
        }
        let bad = Flow { protocol, original_source: sock("10.0.0.9:1"), original_destination: dst, reply_source: SocketAddr::new(IpAddr::from([10, 1, *svc, stranger]), 8000), zone: 0 };
        prop_assert_eq!(f.is_stale(&bad), protocol.needs_conntrack_cleanup());
    }
}
