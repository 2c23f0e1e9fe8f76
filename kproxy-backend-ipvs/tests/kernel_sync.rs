//! The IPVS proxier's syncs on a real IPVS kernel (inside the VM of
//! scripts/ipvs-vm.sh, in private namespaces): Services arriving one
//! partial sync at a time carry real traffic; a removed real server with
//! an open connection stays at weight 0, the connection keeps working and
//! new ones go elsewhere; a virtual server deleted from outside comes back
//! on the next full sync; a cold sync of hundreds of Services (whose
//! addresses are bound on a thread of their own) and their removal leave
//! every address and set entry in place when the sync returns. Built only
//! with the `vm-tests` feature.

use std::net::IpAddr;
use std::time::Duration;

use kproxy_backend_iptables::kernel::{Flavour, IptablesCli};
use kproxy_backend_ipvs::kernel::IpvsHost;
use kproxy_backend_ipvs::model::{Op, RsKey, VsKey};
use kproxy_backend_ipvs::netlink::IpvsSocket;
use kproxy_backend_ipvs::{IpvsOptions, IpvsProxier, IpvsDataplane};
use kproxy_oracle::fixtures::{self as fx, slice, EndpointState::Ready};
use kproxy_oracle::{scenarios, Dataplane, Scenario, Verdict};
use kproxy_core::{Protocol, Proxier, SyncRequest};
use kproxy_testkit::{check_case, check_scenario_for, kernel_tests_enabled, Topology, KPT};

const PARTIAL: SyncRequest = SyncRequest { full: false };

fn proxier(topo: &Topology, s: &Scenario) -> IpvsProxier<IpvsHost> {
    let ns = topo.node.name();
    let kernel = IpvsHost::new(Some(ns), IptablesCli::new(Flavour::Legacy, Some(ns)));
    IpvsDataplane::proxier(fx::NODE_NAME, s.config.clone(), kernel, IpvsOptions::default()).expect("valid config")
}

fn scenario(name: &str) -> Scenario {
    scenarios::all().into_iter().find(|s| s.name == name).expect("a scenario")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_arriving_one_partial_sync_at_a_time_carry_traffic() {
    if !kernel_tests_enabled("services_arriving_one_partial_sync_at_a_time_carry_traffic") {
        return;
    }
    let mut failures = Vec::new();
    for name in ["cluster_ip", "node_port", "load_balancer_source_ranges", "external_policy_local_with_local_endpoints", "dual_stack_v6"] {
        let s = scenario(name);
        let topo = Topology::build(&s).unwrap();
        let mut p = proxier(&topo, &s);
        p.on_node_update(&s.node);
        p.sync(SyncRequest { full: true }).await.unwrap();
        for slice in &s.slices {
            p.on_endpoint_slice_update(slice, false);
        }
        for svc in &s.services {
            p.on_service_update(None, Some(svc));
            let report = p.sync(PARTIAL).await.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!report.full && !p.stats().rules_written, "{name}: not a partial sync");
        }
        failures.extend(tokio::task::block_in_place(|| check_scenario_for(&topo, &s, Dataplane::Ipvs)));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_real_server_drains_its_open_connection() {
    if !kernel_tests_enabled("a_removed_real_server_drains_its_open_connection") {
        return;
    }
    let s = scenario("cluster_ip");
    let mut topo = Topology::build(&s).unwrap();
    let mut p = proxier(&topo, &s);
    s.feed(&mut p);
    p.sync(SyncRequest { full: true }).await.unwrap();
    let vip = VsKey { protocol: Protocol::Tcp, addr: "172.30.0.41".parse().unwrap(), port: 80 };

    // One long-lived connection through the ClusterIP.
    let client: IpAddr = fx::LOCAL_CLIENT_POD.parse().unwrap();
    // It lasts long enough for the steps below even under emulation, where
    // the client alone can take seconds to start.
    let args = ["python3", KPT, "hold", "--src", fx::LOCAL_CLIENT_POD, "--dst", "172.30.0.41", "--port", "80", "--seconds", "20"];
    let held = topo.pods.get_mut(&client).unwrap().spawn(&args).unwrap();
    let mut socket = IpvsSocket::open_in_netns(topo.node.name()).unwrap();
    // Wait (generously) for IPVS to count the connection on a real server.
    let mut dests = socket.destinations(&vip).unwrap();
    for _ in 0..300 {
        if dests.iter().any(|d| d.active > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        dests = socket.destinations(&vip).unwrap();
    }
    let busy = dests.iter().find(|d| d.active > 0).unwrap_or_else(|| panic!("no real server has the connection after 30 s: {dests:?}")).server.key;
    let other = dests.iter().map(|d| d.server.key).find(|k| *k != busy).unwrap();

    // The endpoint behind the connection goes away.
    let on_node = |k: &RsKey| if k.addr.to_string().starts_with("10.180.0.") { fx::NODE_NAME } else { fx::OTHER_NODE };
    let remaining = slice("ns1", "svc1", "svc1-a", "IPv4")
        .port("p80", 8080, "TCP")
        .port("dns", 5353, "UDP")
        .endpoint(&other.addr.to_string(), on_node(&other), Ready)
        .build();
    p.on_endpoint_slice_update(&remaining, false);
    p.sync(PARTIAL).await.unwrap();
    let dests = socket.destinations(&vip).unwrap();
    let weights: Vec<(RsKey, u32)> = dests.iter().map(|d| (d.server.key, d.server.weight)).collect();
    assert!(weights.contains(&(busy, 0)) && weights.contains(&(other, 1)), "expected {busy} draining at weight 0: {weights:?}");
    assert_eq!(p.stats().draining, 1);

    // New connections go to the other endpoint only; the held one lives on.
    let packet = s.cases[0].packet.clone();
    let only_other = Verdict::forward(&[&format!("{other}")], false);
    tokio::task::block_in_place(|| check_case(&topo, &packet, &only_other)).unwrap();
    let out = tokio::task::block_in_place(|| topo.pods.get_mut(&client).unwrap().wait_output(held)).unwrap();
    assert!(out.starts_with("held"), "the draining connection broke: {out}");
    // UDP real servers are not drained: the DNS port's went at once.
    let dns = VsKey { protocol: Protocol::Udp, addr: vip.addr, port: 53 };
    assert_eq!(socket.destinations(&dns).unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_server_a_set_member_and_a_chain_changed_from_outside_come_back_on_a_full_sync() {
    if !kernel_tests_enabled("a_virtual_server_a_set_member_and_a_chain_changed_from_outside_come_back_on_a_full_sync") {
        return;
    }
    let s = scenario("node_port");
    let topo = Topology::build(&s).unwrap();
    let mut p = proxier(&topo, &s);
    s.feed(&mut p);
    p.sync(SyncRequest { full: true }).await.unwrap();
    let mut socket = IpvsSocket::open_in_netns(topo.node.name()).unwrap();
    let node_port = VsKey { protocol: Protocol::Tcp, addr: fx::NODE_IP.parse().unwrap(), port: 3001 };
    let applied = socket.apply(&[Op::DelService(node_port)]).unwrap();
    assert!(applied.failed.is_empty(), "{:?}", applied.failed);
    let outside = s.cases[0].packet.clone();
    assert!(tokio::task::block_in_place(|| check_case(&topo, &outside, &s.cases[0].expected)).is_err(), "deleting it changed nothing");
    p.sync(SyncRequest { full: true }).await.unwrap();
    let failures = tokio::task::block_in_place(|| check_scenario_for(&topo, &s, Dataplane::Ipvs));
    assert!(failures.is_empty(), "not repaired: {}", failures.join("\n"));

    // The ipset and iptables pieces around IPVS: a set member deleted, a
    // chain flushed (either loses the NodePort's masquerade, which the
    // first case checks), each put back by the next full sync.
    let damages: [(&str, &[&str]); 2] = [
        ("a NodePort set member deleted", &["ipset", "del", "KUBE-NODE-PORT-TCP", "3001"]),
        ("the NodePort masquerade chain flushed", &["iptables-legacy", "-w", "5", "-t", "nat", "-F", "KUBE-NODE-PORT"]),
    ];
    for (what, command) in damages {
        topo.node.exec(command).unwrap_or_else(|e| panic!("{what}: {e}"));
        let broken = tokio::task::block_in_place(|| check_case(&topo, &outside, &s.cases[0].expected));
        assert!(broken.is_err(), "{what}: the damage did not show in traffic");
        p.sync(SyncRequest { full: true }).await.unwrap();
        let failures = tokio::task::block_in_place(|| check_scenario_for(&topo, &s, Dataplane::Ipvs));
        assert!(failures.is_empty(), "{what} was not repaired: {}", failures.join("\n"));
    }
}

/// The addresses on kube-ipvs0 and the entries of KUBE-CLUSTER-IP.
fn bound_and_listed(topo: &Topology) -> (usize, usize) {
    let bound = topo.node.exec(&["ip", "-o", "-4", "addr", "show", "dev", "kube-ipvs0"]).unwrap().lines().count();
    let listed = topo.node.exec(&["ipset", "save", "KUBE-CLUSTER-IP"]).unwrap().lines().filter(|l| l.starts_with("add ")).count();
    (bound, listed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_sync_of_many_services_and_their_removal_are_complete_when_the_sync_returns() {
    if !kernel_tests_enabled("a_cold_sync_of_many_services_and_their_removal_are_complete_when_the_sync_returns") {
        return;
    }
    let s = scenario("cluster_ip");
    let topo = Topology::build(&s).unwrap();
    let mut p = proxier(&topo, &s);
    s.feed(&mut p);
    // More than IpvsHost binds in the background (512 addresses).
    let many: Vec<_> = (0..600)
        .map(|i| fx::service("bulk", &format!("s{i}"), &[&format!("172.30.{}.{}", 10 + i / 250, 1 + i % 250)]).port("p80", 80, "TCP", 0).build())
        .collect();
    for svc in &many {
        p.on_service_update(None, Some(svc));
    }
    p.sync(SyncRequest { full: true }).await.unwrap();
    // The scenario's Service has one address and two ports.
    assert_eq!(bound_and_listed(&topo), (601, 602), "every address bound and every entry listed when the sync returned");
    let failures = tokio::task::block_in_place(|| check_scenario_for(&topo, &s, Dataplane::Ipvs));
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    for svc in &many {
        p.on_service_update(Some(svc), None);
    }
    p.sync(SyncRequest { full: true }).await.unwrap();
    assert_eq!(bound_and_listed(&topo), (1, 2), "every removed address unbound when the sync returned");
    let failures = tokio::task::block_in_place(|| check_scenario_for(&topo, &s, Dataplane::Ipvs));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
