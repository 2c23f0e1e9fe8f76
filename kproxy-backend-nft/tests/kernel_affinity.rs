//! ClientIP affinity in the real kernel: a client sticks to one pod; when
//! that pod's endpoint is removed, the client is balanced to the remaining
//! pod at once, not after the affinity timeout. Needs root.

use std::net::IpAddr;
use std::time::Duration;

use kproxy_backend_nft::kernel::{Kernel, NftKernel};
use kproxy_backend_nft::{NftOptions, NftDataplane};
use kproxy_oracle::fixtures::{self as fx, slice, EndpointState};
use kproxy_oracle::{scenarios, Origin, Packet};
use kproxy_core::{IpFamily, Proxier, SyncRequest};
use kproxy_testkit::{kernel_tests_enabled, probe, Seen, Topology};

fn pods_reached(seen: &[Seen]) -> Vec<IpAddr> {
    seen.iter()
        .map(|s| match s {
            Seen::Answered { pod, .. } => *pod,
            other => panic!("expected an answer, saw {other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_follows_endpoint_removal() {
    if !kernel_tests_enabled("affinity_follows_endpoint_removal") {
        return;
    }
    let scenario = scenarios::all().into_iter().find(|s| s.name == "session_affinity").unwrap();
    let topo = Topology::build(&scenario).unwrap();
    let kernel = NftKernel::in_netns(topo.node.name()).unwrap();
    let mut p = NftDataplane::proxier(fx::NODE_NAME, scenario.config.clone(), kernel, NftOptions::default()).unwrap();
    scenario.feed(&mut p);
    p.sync(SyncRequest { full: true }).await.unwrap();

    let packet = Packet::tcp(Origin::LocalPod, fx::LOCAL_CLIENT_POD.parse().unwrap(), "172.30.0.50".parse().unwrap(), 80);
    let first = tokio::task::block_in_place(|| pods_reached(&probe(&topo, &packet, 6, Duration::from_secs(2)).unwrap()));
    assert!(first.windows(2).all(|w| w[0] == w[1]), "affinity: {first:?}");
    let stuck = first[0];
    let table = p.table().unwrap().to_string();
    let entries = p.kernel_mut().affinity_entries(IpFamily::V4, &table).await.unwrap();
    assert!(entries.iter().any(|(_, ip, _)| *ip == stuck), "the kernel remembered the client's pod: {entries:?}");

    let other = ["10.180.0.10", "10.180.1.10"].iter().map(|s| s.parse::<IpAddr>().unwrap()).find(|ip| *ip != stuck).unwrap();
    let node = if other.to_string().starts_with("10.180.0.") { fx::NODE_NAME } else { fx::OTHER_NODE };
    let remaining = slice("ns1", "svc10", "svc10-a", "IPv4").port("p80", 80, "TCP").endpoint(&other.to_string(), node, EndpointState::Ready).build();
    p.on_endpoint_slice_update(&remaining, false);
    p.sync(SyncRequest::default()).await.unwrap();

    let after = tokio::task::block_in_place(|| pods_reached(&probe(&topo, &packet, 6, Duration::from_secs(2)).unwrap()));
    assert!(after.iter().all(|ip| *ip == other), "after removing {stuck}, connections reached {after:?}");
}

/// Affinity switched off while another Service keeps ClientIP affinity:
/// the client is balanced again at once (kube-proxy's conformance spec
/// "should be able to switch session affinity"), and switched back on it
/// sticks again. The affinity map once kept answering for the Service
/// that had dropped affinity, for as long as any other Service had it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_switched_off_balances_at_once() {
    if !kernel_tests_enabled("affinity_switched_off_balances_at_once") {
        return;
    }
    let scenario = scenarios::all().into_iter().find(|s| s.name == "session_affinity").unwrap();
    let topo = Topology::build(&scenario).unwrap();
    let kernel = NftKernel::in_netns(topo.node.name()).unwrap();
    let mut p = NftDataplane::proxier(fx::NODE_NAME, scenario.config.clone(), kernel, NftOptions::default()).unwrap();
    scenario.feed(&mut p);
    // A second ClientIP Service on the same pods keeps the affinity rules.
    let other = fx::service("ns1", "sticky", &["172.30.0.59"]).port("p80", 80, "TCP", 0).affinity(3600).build();
    p.on_service_update(None, Some(&other));
    let other_slice = slice("ns1", "sticky", "sticky-a", "IPv4")
        .port("p80", 80, "TCP")
        .endpoint("10.180.0.10", fx::NODE_NAME, EndpointState::Ready)
        .endpoint("10.180.1.10", fx::OTHER_NODE, EndpointState::Ready)
        .build();
    p.on_endpoint_slice_update(&other_slice, false);
    p.sync(SyncRequest { full: true }).await.unwrap();

    let packet = Packet::tcp(Origin::LocalPod, fx::LOCAL_CLIENT_POD.parse().unwrap(), "172.30.0.50".parse().unwrap(), 80);
    let reached = |n| tokio::task::block_in_place(|| pods_reached(&probe(&topo, &packet, n, Duration::from_secs(2)).unwrap()));
    let sticky = reached(6);
    assert!(sticky.windows(2).all(|w| w[0] == w[1]), "affinity: {sticky:?}");

    let with = scenario.services[0].clone();
    let mut without = with.clone();
    let spec = without.spec.as_mut().unwrap();
    spec.session_affinity = Some("None".into());
    spec.session_affinity_config = None;
    p.on_service_update(Some(&with), Some(&without));
    p.sync(SyncRequest::default()).await.unwrap();
    // 24 connections all to one of two pods by chance: 2^-23.
    let spread = reached(24);
    assert!(spread.iter().any(|ip| *ip != spread[0]), "affinity still held after it was switched off: {spread:?}");

    p.on_service_update(Some(&without), Some(&with));
    p.sync(SyncRequest::default()).await.unwrap();
    let again = reached(6);
    assert!(again.windows(2).all(|w| w[0] == w[1]), "affinity switched back on: {again:?}");
}
