//! Conntrack cleanup against a real kernel, in a private network namespace:
//! entries are listed as they are, and exactly the stale ones are deleted.
//! Needs root (skips without, must run in CI).

use std::net::{IpAddr, SocketAddr};

use kproxy_core::conntrack::{Flow, StaleFlowFilter};
use kproxy_core::{Endpoint, EndpointsMap, IpFamily, Protocol, ServiceMap, ServicePortInfo, ServicePortName};
use kproxy_netfilter::Conntrack;
use kproxy_testkit::{kernel_tests_enabled, Netns};

fn flow(protocol: Protocol, client: u16, dst: &str, reply: &str) -> Flow {
    Flow {
        protocol,
        original_source: SocketAddr::new("10.0.0.9".parse().unwrap(), client),
        original_destination: dst.parse().unwrap(),
        reply_source: reply.parse().unwrap(),
        zone: 0,
    }
}

#[test]
fn clean_deletes_exactly_the_stale_entries() {
    if !kernel_tests_enabled("clean_deletes_exactly_the_stale_entries") {
        return;
    }
    let ns = Netns::new("ct").unwrap();
    let mut ct = Conntrack::open_in_netns(ns.name()).unwrap();
    let keep = [
        flow(Protocol::Udp, 1000, "172.30.0.10:53", "10.1.0.1:5353"),
        flow(Protocol::Tcp, 1001, "172.30.0.10:53", "10.1.0.2:5353"),
        flow(Protocol::Udp, 1002, "203.0.113.1:53", "203.0.113.1:53"),
    ];
    let stale = [flow(Protocol::Udp, 2000, "172.30.0.10:53", "10.1.0.2:5353"), flow(Protocol::Udp, 2001, "172.30.0.10:53", "172.30.0.10:53")];
    ct.insert(&keep, 300).unwrap();
    ct.insert(&stale, 300).unwrap();
    let mut listed = ct.flows(IpFamily::V4).unwrap();
    listed.sort();
    let mut all: Vec<Flow> = keep.iter().chain(&stale).copied().collect();
    all.sort();
    assert_eq!(listed, all, "entries list as they were made");

    let name = ServicePortName::new("kube-system", "dns", "dns", Protocol::Udp);
    let services: ServiceMap = [(name.clone(), ServicePortInfo::cluster_ip("172.30.0.10".parse().unwrap(), 53, Protocol::Udp))].into_iter().collect();
    let endpoints: EndpointsMap = [(name, vec![Endpoint::ready("10.1.0.1".parse::<IpAddr>().unwrap(), 5353, true)])].into_iter().collect();
    let filter = StaleFlowFilter::new(&services, &endpoints, []);
    let report = ct.clean(IpFamily::V4, &filter).unwrap();
    assert_eq!((report.examined, report.stale, report.deleted), (5, 2, 2));
    let mut left = ct.flows(IpFamily::V4).unwrap();
    left.sort();
    let mut kept = keep.to_vec();
    kept.sort();
    assert_eq!(left, kept);
    // Deleting what is already gone is not an error.
    assert_eq!(ct.delete(&stale).unwrap(), 0);
}
