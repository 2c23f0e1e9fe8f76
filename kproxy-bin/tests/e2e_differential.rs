//! Differential test against upstream kube-proxy v1.34.4 (issue 13): the
//! suite's expectations are kproxy's own, so here upstream's binary is the
//! judge. proptest generates random walks of cluster states (Services of
//! every type, either traffic policy, affinity, externalIPs, source
//! ranges, TCP or UDP, trafficDistribution; endpoints local or remote,
//! ready, serving-terminating, terminating or not ready, with or without
//! zone and node hints; Services appearing and disappearing), each state a
//! random edit of the one before, so transitions such as affinity
//! switched off or an endpoint turning terminating are met too. Each walk
//! has its own node configuration: the local-traffic detector (ClusterCIDR,
//! NodeCIDR, BridgeInterface, InterfaceNamePrefix or none),
//! `nodePortAddresses` (primary, every address, or a range holding none)
//! and `localhostNodePorts`. Each walk runs through the real API server,
//! once with upstream and once with kproxy, in nftables mode and in
//! iptables mode; after each state every frontend is probed with real
//! traffic (a local pod, a pod on another node, the node itself, NodePorts
//! on 127.0.0.1, allowed and blocked outside clients). Any probe where the two proxies differ,
//! or both differ from the oracle, fails the test, unless listed in
//! README.md's deliberate differences (none has been needed so far).
//!
//! The run is deterministic: `KPROXY_DIFF_SEED` (default 1) seeds the
//! generator, `KPROXY_DIFF_WALKS` (default 3) and `KPROXY_DIFF_STEPS`
//! (default 3) size it; CI runs the defaults, a longer run is the same
//! test with larger numbers. Needs root and the e2e binaries; skips
//! without, must run in CI.

use kproxy_oracle::fixtures::EndpointState;
use kproxy_oracle::random::{state_on, DetectorChoice, EndpointChoice, NodeChoice, NodePortChoice, ServiceChoice, ServiceKind};
use kproxy_oracle::{Dataplane, Transition};
use kproxy_e2e::differential::{differences, run};
use kproxy_e2e::{e2e_binaries, ProxyKind};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

const KPROXY: &str = env!("CARGO_BIN_EXE_kproxy");

fn endpoint() -> impl Strategy<Value = EndpointChoice> {
    let state = prop_oneof![
        4 => Just(EndpointState::Ready),
        1 => Just(EndpointState::ServingTerminating),
        1 => Just(EndpointState::Terminating),
        1 => Just(EndpointState::NotReady),
    ];
    // Hints are kept only on a Service that chooses them; then most
    // endpoints have a zone hint and some a node hint, so the
    // all-or-nothing rule goes both ways.
    let zone = prop::option::weighted(0.85, any::<bool>());
    let node = prop::option::weighted(0.3, any::<bool>());
    (any::<bool>(), state, zone, node).prop_map(|(local, state, zone_hint, node_hint)| EndpointChoice { local, state, zone_hint, node_hint })
}

fn service() -> impl Strategy<Value = ServiceChoice> {
    let kind = prop_oneof![Just(ServiceKind::ClusterIp), Just(ServiceKind::NodePort), Just(ServiceKind::LoadBalancer)];
    let policies = (any::<bool>(), prop::bool::weighted(0.25), prop::bool::weighted(0.3));
    let addresses = (prop::bool::weighted(0.3), any::<bool>(), prop::bool::weighted(0.3));
    let topology = (prop::bool::weighted(0.3), prop::bool::weighted(0.3));
    (kind, policies, addresses, topology, prop::collection::vec(endpoint(), 0..4)).prop_map(
        |(kind, (external_local, internal_local, affinity), (external_ip, source_range, udp), (traffic_distribution, hints), mut endpoints)| {
            if !hints {
                for e in &mut endpoints {
                    (e.zone_hint, e.node_hint) = (None, None);
                }
            }
            ServiceChoice { kind, external_local, internal_local, affinity, external_ip, source_range, udp, traffic_distribution, endpoints }
        },
    )
}

fn node() -> impl Strategy<Value = NodeChoice> {
    let detector = prop_oneof![
        3 => Just(DetectorChoice::ClusterCidr),
        1 => Just(DetectorChoice::NodeCidr),
        1 => Just(DetectorChoice::BridgeInterface),
        1 => Just(DetectorChoice::InterfaceNamePrefix),
        1 => Just(DetectorChoice::None),
    ];
    let node_ports = prop_oneof![2 => Just(NodePortChoice::Primary), 2 => Just(NodePortChoice::EveryAddress), 1 => Just(NodePortChoice::NoAddress)];
    (detector, node_ports, any::<bool>()).prop_map(|(detector, node_ports, localhost_node_ports)| NodeChoice { detector, node_ports, localhost_node_ports })
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The walks for this run: a node configuration, then states of one to
/// three Services (by index, so a shorter state deletes the last ones and
/// a longer one adds some).
fn walks() -> Vec<Transition> {
    let seed = env_or("KPROXY_DIFF_SEED", 1);
    let (count, steps) = (env_or("KPROXY_DIFF_WALKS", 3), env_or("KPROXY_DIFF_STEPS", 3) as usize);
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &key));
    let walk = (node(), prop::collection::vec(prop::collection::vec(service(), 1..4), steps));
    (0..count)
        .map(|w| {
            let (node, choices) = walk.new_tree(&mut runner).expect("a walk").current();
            // Names live as long as the test (a few dozen short strings).
            let name: &'static str = Box::leak(format!("seed {seed} walk {w} on {node:?}").into_boxed_str());
            let steps = choices
                .iter()
                .map(|services| state_on(Box::leak(format!("{services:?}").replace("ServiceChoice ", "").into_boxed_str()), &node, services))
                .collect();
            Transition { name, steps }
        })
        .collect()
}

fn differential(test: &str, mode: Dataplane) {
    let _one_at_a_time = kproxy_e2e::exclusive();
    let Some(bins) = e2e_binaries(test) else { return };
    let mut walks = walks();
    // KPROXY_DIFF_ONLY=N: only walk N (to look into one).
    if let Some(n) = std::env::var("KPROXY_DIFF_ONLY").ok().and_then(|v| v.parse::<usize>().ok()) {
        walks = vec![walks.swap_remove(n)];
    }
    let probes: usize = walks.iter().flat_map(|w| &w.steps).map(|s| s.cases.len()).sum();
    for w in &walks {
        println!("{mode:?}: {}", w.name);
    }
    let upstream = run(&bins, ProxyKind::Upstream, &bins.path("kube-proxy"), mode, &walks).unwrap();
    let kproxy = run(&bins, ProxyKind::Kproxy, KPROXY, mode, &walks).unwrap();
    let found = differences(&walks, &kproxy, &upstream);
    println!("{mode:?}: {} walks, {} states, {probes} probes per proxy, {} differences", walks.len(), walks.iter().map(|w| w.steps.len()).sum::<usize>(), found.len());
    assert!(found.is_empty(), "{} differences in {mode:?} mode:\n{}", found.len(), found.join("\n"));
}

#[test]
fn random_walks_agree_with_upstream_in_nftables_mode() {
    differential("random_walks_agree_with_upstream_in_nftables_mode", Dataplane::Nftables);
}

#[test]
fn random_walks_agree_with_upstream_in_iptables_mode() {
    differential("random_walks_agree_with_upstream_in_iptables_mode", Dataplane::Iptables);
}
