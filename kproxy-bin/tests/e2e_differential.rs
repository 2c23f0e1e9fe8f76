//! Differential test against upstream kube-proxy v1.34.4 (issue 13): the
//! suite's expectations are kproxy's own, so here upstream's binary is the
//! judge. proptest generates random walks of cluster states (Services of
//! every type, either traffic policy, affinity, externalIPs, source
//! ranges, TCP or UDP; endpoints local or remote, ready, serving-terminating,
//! terminating or not ready; Services appearing and disappearing), each
//! state a random edit of the one before, so transitions such as affinity
//! switched off or an endpoint turning terminating are met too. Each walk
//! runs through the real API server, once with upstream and once with
//! kproxy, in nftables mode and in iptables mode; after each state every
//! frontend is probed with real traffic (a local pod, the node, allowed
//! and blocked outside clients). Any probe where the two proxies differ,
//! or both differ from the oracle, fails the test, unless listed in
//! README.md's deliberate differences (none has been needed so far).
//!
//! The run is deterministic: `KPROXY_DIFF_SEED` (default 1) seeds the
//! generator, `KPROXY_DIFF_WALKS` (default 3) and `KPROXY_DIFF_STEPS`
//! (default 3) size it; CI runs the defaults, a longer run is the same
//! test with larger numbers. Needs root and the e2e binaries; skips
//! without, must run in CI.

use kproxy_core::oracle::fixtures::EndpointState;
use kproxy_core::oracle::random::{state, EndpointChoice, ServiceChoice, ServiceKind};
use kproxy_core::oracle::{Dataplane, Transition};
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
    (any::<bool>(), state).prop_map(|(local, state)| EndpointChoice { local, state })
}

fn service() -> impl Strategy<Value = ServiceChoice> {
    let kind = prop_oneof![Just(ServiceKind::ClusterIp), Just(ServiceKind::NodePort), Just(ServiceKind::LoadBalancer)];
    (kind, any::<bool>(), prop::bool::weighted(0.25), prop::bool::weighted(0.3), prop::bool::weighted(0.3), any::<bool>(), prop::bool::weighted(0.3), prop::collection::vec(endpoint(), 0..4))
        .prop_map(|(kind, external_local, internal_local, affinity, external_ip, source_range, udp, endpoints)| ServiceChoice {
            kind,
            external_local,
            internal_local,
            affinity,
            external_ip,
            source_range,
            udp,
            endpoints,
        })
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The walks for this run: states of one to three Services (by index, so
/// a shorter state deletes the last ones and a longer one adds some).
fn walks() -> Vec<Transition> {
    let seed = env_or("KPROXY_DIFF_SEED", 1);
    let (count, steps) = (env_or("KPROXY_DIFF_WALKS", 3), env_or("KPROXY_DIFF_STEPS", 3) as usize);
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &key));
    let states = prop::collection::vec(prop::collection::vec(service(), 1..4), steps);
    (0..count)
        .map(|w| {
            let choices = states.new_tree(&mut runner).expect("a walk").current();
            let name: &'static str = Box::leak(format!("seed {seed} walk {w}").into_boxed_str());
            let steps = choices
                .iter()
                .map(|services| state(Box::leak(format!("{services:?}").replace("ServiceChoice ", "").into_boxed_str()), services))
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
