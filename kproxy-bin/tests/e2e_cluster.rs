//! What needs two nodes, or a change over time, on a real API server:
//! external traffic policy Local on two nodes (health-check NodePort 200
//! on the node with the endpoint, 503 on the other, and both flipping when
//! the endpoint moves), topology hints on two zones, a UDP flow moving off
//! an endpoint that left its service (conntrack cleanup), and a pod going
//! through termination. Runs with kproxy (nftables and iptables modes)
//! and, to prove the expectations
//! are upstream's, with upstream kube-proxy. Each step prints what a user
//! would see and how long it took. Needs root and the e2e binaries; skips
//! without, must run in CI.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy_oracle::fixtures::{self as fx, EndpointState, EndpointState::*};
use kproxy_oracle::{scenarios, Dataplane, Origin, Packet, Scenario, Verdict};
use kproxy_core::IpFamily;
use kproxy_e2e::nodes::{within, ProxyRun, TestNode};
use kproxy_e2e::{e2e_binaries, scenario, ControlPlane, ProxyKind};
use kproxy_netfilter::Conntrack;
use kproxy_testkit::{check_case, KPT};

const KPROXY: &str = env!("CARGO_BIN_EXE_kproxy");
const HEALTH_PORT: u16 = 30_000;
const FIRST: Duration = Duration::from_secs(20);
const CHANGE: Duration = Duration::from_secs(10);

fn shared(name: &str) -> Scenario {
    scenarios::all().into_iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no scenario {name}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn outside_to_node_port(port: u16) -> Packet {
    Packet::tcp(Origin::Outside, ip(fx::ALLOWED_CLIENT), ip(fx::NODE_IP), port)
}

fn pod_to(dst: &str, port: u16) -> Packet {
    Packet::tcp(Origin::LocalPod, ip(fx::LOCAL_CLIENT_POD), ip(dst), port)
}

fn only(endpoints: &[&str]) -> Verdict {
    Verdict::forward(endpoints, false)
}

/// svc7 (ETP Local, NodePort 3007, health check 30000) with its endpoints.
fn etp_slice(endpoints: &[(&str, &str)]) -> EndpointSlice {
    let mut b = fx::slice("ns1", "svc7", "svc7-a", "IPv4").port("p80", 80, "TCP");
    for (addr, node) in endpoints {
        b = b.endpoint(addr, node, Ready);
    }
    b.build()
}

fn term_service() -> Service {
    fx::service("ns1", "term", &["172.30.0.60"]).port("p80", 80, "TCP", 0).build()
}

fn term_slice(a: EndpointState, b: EndpointState) -> EndpointSlice {
    fx::slice("ns1", "term", "term-a", "IPv4")
        .port("p80", 80, "TCP")
        .endpoint("10.180.0.61", fx::NODE_NAME, a)
        .endpoint("10.180.0.62", fx::NODE_NAME, b)
        .build()
}

/// The objects applied at the start, and the world: those plus every pod
/// a later step needs (each node's namespaces are built from the world).
fn scenarios_for_run() -> (Scenario, Scenario) {
    let etp = shared("external_policy_local_without_local_endpoints");
    let hints = shared("topology_hints");
    let cluster_ip = shared("cluster_ip");
    let mut start = etp.clone();
    start.name = "multi_node";
    start.services.extend(hints.services.iter().cloned().chain(cluster_ip.services.iter().cloned()).chain([term_service()]));
    start.slices.extend(hints.slices.iter().cloned().chain(cluster_ip.slices.iter().cloned()).chain([term_slice(Ready, Ready)]));
    let mut world = start.clone();
    // Its own name: a second "svc7-a" would replace the first.
    let mut later = etp_slice(&[("10.180.0.7", fx::NODE_NAME)]);
    later.metadata.name = Some("svc7-later".into());
    world.slices.push(later);
    (start, world)
}

fn health(node: &TestNode, code: u16, count: u64) -> Result<(), String> {
    let seen = node.health_check(HEALTH_PORT)?;
    (seen == (code, count)).then_some(()).ok_or_else(|| format!("health check answered {seen:?}, expected ({code}, {count})"))
}

fn run_two_nodes(kind: ProxyKind, binary: &str, test: &str, mode: Dataplane) {
    let _one_at_a_time = kproxy_e2e::exclusive();
    let Some(bins) = e2e_binaries(test) else { return };
    let (start, world) = scenarios_for_run();
    let mut cp = ControlPlane::start(&bins).unwrap();
    let api = cp.admin().unwrap();
    scenario::apply(&api, &start).unwrap();
    let run = ProxyRun { kind, binary, mode };
    let mut a = TestNode::start(&mut cp, &api, &world, fx::NODE_NAME, fx::NODE_ZONE, &run).unwrap();
    let b = TestNode::start(&mut cp, &api, &world, fx::OTHER_NODE, fx::OTHER_ZONE, &run).unwrap();
    let logs = [&a, &b].map(|n| (n.name.clone(), scenario::log_path(kind, &n.topo.node, cp.dir())));
    let say = |what: &str| format!("[{kind:?} {mode:?}] {what}");
    let fail = |e: String| -> ! {
        let logs: Vec<String> = logs.iter().map(|(n, p)| format!("--- {n} log:\n{}", std::fs::read_to_string(p).unwrap_or_default())).collect();
        panic!("{e}\n{}", logs.join("\n"))
    };

    // ETP=Local, the endpoint on node-b: node-b serves NodePort traffic
    // and says 200 to load balancers; node-a drops it and says 503.
    let np = outside_to_node_port(3007);
    within(&say("node-b: NodePort reaches its local endpoint, source kept"), FIRST, || check_case(&b.topo, &np, &only(&["10.180.1.7:80"]))).unwrap_or_else(|e| fail(e));
    within(&say("node-b: health check 200, localEndpoints 1"), FIRST, || health(&b, 200, 1)).unwrap_or_else(|e| fail(e));
    within(&say("node-a: NodePort dropped (no local endpoint)"), FIRST, || check_case(&a.topo, &np, &Verdict::Drop)).unwrap_or_else(|e| fail(e));
    within(&say("node-a: health check 503, localEndpoints 0"), FIRST, || health(&a, 503, 0)).unwrap_or_else(|e| fail(e));

    // Topology: zone hints keep ClusterIP traffic in each node's zone;
    // node hints pick each node's own endpoint.
    for (node, zone_ep, node_ep) in [(&a, "10.180.0.17:80", "10.180.0.19:80"), (&b, "10.180.1.17:80", "10.180.1.19:80")] {
        within(&say(&format!("{}: zone hints send svc14 to {zone_ep}", node.name)), FIRST, || check_case(&node.topo, &pod_to("172.30.0.54", 80), &only(&[zone_ep])))
            .unwrap_or_else(|e| fail(e));
        within(&say(&format!("{}: node hints send svc16 to {node_ep}", node.name)), FIRST, || check_case(&node.topo, &pod_to("172.30.0.56", 80), &only(&[node_ep])))
            .unwrap_or_else(|e| fail(e));
    }

    // The pod moves: first a second endpoint on node-a, then node-b's goes.
    api.apply(etp_slice(&[("10.180.1.7", fx::OTHER_NODE), ("10.180.0.7", fx::NODE_NAME)])).unwrap();
    within(&say("endpoint added on node-a: its health check says 200"), CHANGE, || health(&a, 200, 1)).unwrap_or_else(|e| fail(e));
    within(&say("endpoint added on node-a: its NodePort reaches it"), CHANGE, || check_case(&a.topo, &np, &only(&["10.180.0.7:80"]))).unwrap_or_else(|e| fail(e));
    api.apply(etp_slice(&[("10.180.0.7", fx::NODE_NAME)])).unwrap();
    within(&say("endpoint gone from node-b: its health check says 503"), CHANGE, || health(&b, 503, 0)).unwrap_or_else(|e| fail(e));
    within(&say("endpoint gone from node-b: its NodePort drops"), CHANGE, || check_case(&b.topo, &np, &Verdict::Drop)).unwrap_or_else(|e| fail(e));
    within(&say("node-a still serves"), CHANGE, || check_case(&a.topo, &np, &only(&["10.180.0.7:80"]))).unwrap_or_else(|e| fail(e));

    // A pod terminates: while another is ready it gets no new
    // connections; when all are terminating the serving ones are used;
    // one that stops serving is dropped from the fallback.
    let term = pod_to("172.30.0.60", 80);
    for (step, a_state, b_state, expect) in [
        ("both ready: both answer", Ready, Ready, vec!["10.180.0.61:80", "10.180.0.62:80"]),
        (".62 terminating: only .61 answers", Ready, ServingTerminating, vec!["10.180.0.61:80"]),
        ("both terminating and serving: both answer", ServingTerminating, ServingTerminating, vec!["10.180.0.61:80", "10.180.0.62:80"]),
        (".61 stops serving: only .62 answers", Terminating, ServingTerminating, vec!["10.180.0.62:80"]),
    ] {
        api.apply(term_slice(a_state, b_state)).unwrap();
        within(&say(&format!("node-a: {step}")), CHANGE, || check_case(&a.topo, &term, &only(&expect))).unwrap_or_else(|e| fail(e));
    }

    // A UDP flow (one source port, one conntrack entry) to svc1: its
    // endpoint leaves the service while its pod keeps answering; the
    // proxy must delete the entry so the flow moves to the other one.
    let client = ip(fx::LOCAL_CLIENT_POD);
    let stream = a.topo.pods.get_mut(&client).unwrap();
    let handle = stream
        .spawn(&["python3", KPT, "udpstream", "--src", fx::LOCAL_CLIENT_POD, "--sport", "40053", "--dst", "172.30.0.41", "--port", "53", "--seconds", "8"])
        .unwrap();
    let mut conntrack = Conntrack::open_in_netns(a.topo.node.name()).unwrap();
    let mut first = String::new();
    within(&say("node-a: the UDP flow has a conntrack entry"), CHANGE, || {
        let flows = conntrack.flows(IpFamily::V4).map_err(|e| e.to_string())?;
        let found = flows.iter().find(|f| f.original_source.port() == 40053 && f.original_destination.port() == 53).ok_or("no entry yet")?;
        first = found.reply_source.ip().to_string();
        Ok(())
    })
    .unwrap_or_else(|e| fail(e));
    std::thread::sleep(Duration::from_secs(1));
    let mut slice = start.slices.iter().find(|s| s.metadata.name.as_deref() == Some("svc1-a")).unwrap().clone();
    slice.endpoints.retain(|e| e.addresses[0] != first);
    api.apply(&slice).unwrap();
    let out = a.topo.pods.get_mut(&client).unwrap().wait_output(handle).unwrap();
    let answers: Vec<(f64, &str)> = out.lines().filter_map(|l| l.split_once(' ')).map(|(t, n)| (t.parse().unwrap_or(0.0), n)).collect();
    let other = if first == "10.180.0.1" { "10.180.1.1" } else { "10.180.0.1" };
    assert_eq!(answers.first().map(|a| a.1), Some(first.as_str()), "{out}");
    let moved = answers.iter().position(|a| a.1 == other).unwrap_or_else(|| fail(format!("the UDP flow never left {first}:\n{out}")));
    assert!(answers[moved..].iter().all(|a| a.1 == other), "the flow went back to {first} or was lost:\n{out}");
    let last_old = answers[..moved].iter().rev().find(|a| a.1 == first).map_or(0.0, |a| a.0);
    println!("[{kind:?} {mode:?}] node-a: UDP flow moved from {first} to {other}; first answer from {other} at {:.2} s, {:.2} s after the last from {first}", answers[moved].0, answers[moved].0 - last_old);
    assert!(answers.len() - moved >= 20, "moved too late:\n{out}");
}

#[test]
fn two_nodes_and_changes_over_time_with_kproxy() {
    run_two_nodes(ProxyKind::Kproxy, KPROXY, "two_nodes_and_changes_over_time_with_kproxy", Dataplane::Nftables);
}

#[test]
fn two_nodes_and_changes_over_time_with_kproxy_in_iptables_mode() {
    run_two_nodes(ProxyKind::Kproxy, KPROXY, "two_nodes_and_changes_over_time_with_kproxy_in_iptables_mode", Dataplane::Iptables);
}

#[test]
fn two_nodes_and_changes_over_time_with_upstream_kube_proxy() {
    let Some(bins) = e2e_binaries("two_nodes_and_changes_over_time_with_upstream_kube_proxy") else { return };
    run_two_nodes(ProxyKind::Upstream, &bins.path("kube-proxy"), "two_nodes_and_changes_over_time_with_upstream_kube_proxy", Dataplane::Nftables);
}
