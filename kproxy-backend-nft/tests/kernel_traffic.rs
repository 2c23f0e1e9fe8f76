//! Real traffic through the real kernel: every shared scenario, in private
//! network namespaces, with the nftables backend programming the node.
//! Needs root (skips with a message otherwise; must run in CI).

use kproxy_backend_nft::kernel::NftKernel;
use kproxy_backend_nft::{NftOptions, NftProxier};
use kproxy_core::oracle::{fixtures as fx, scenarios, transitions, Dataplane, Scenario};
use kproxy_core::{Proxier, SyncRequest};
use kproxy_testkit::{check_scenario, check_transition, kernel_tests_enabled, Topology};

/// Programs the topology's node with the scenario's objects.
async fn install(scenario: &Scenario, topo: &Topology) -> NftProxier<NftKernel> {
    let mut p = NftProxier::new(fx::NODE_NAME, scenario.config.clone(), NftKernel::in_netns(topo.node.name()).expect("netlink socket in the node namespace"), NftOptions::default())
        .expect("valid config");
    scenario.feed(&mut p);
    p.sync(SyncRequest { full: true }).await.unwrap_or_else(|e| panic!("{}: sync failed: {e}", scenario.name));
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_with_real_traffic() {
    if !kernel_tests_enabled("every_scenario_with_real_traffic") {
        return;
    }
    let mut failures = Vec::new();
    let mut checked = 0;
    // KPROXY_SCENARIO=name runs one scenario only (for debugging).
    let only = std::env::var("KPROXY_SCENARIO").ok();
    for scenario in scenarios::all().into_iter().filter(|s| only.as_ref().is_none_or(|o| o == s.name)) {
        let topo = Topology::build(&scenario).unwrap_or_else(|e| panic!("{}: topology: {e}", scenario.name));
        let _proxier = install(&scenario, &topo).await;
        let scenario_failures = tokio::task::block_in_place(|| check_scenario(&topo, &scenario));
        checked += scenario.cases.len();
        failures.extend(scenario_failures);
    }
    assert!(failures.is_empty(), "{} of {checked} cases failed:\n{}", failures.len(), failures.join("\n"));
}

/// Every shared transition, applied as updates to one running proxier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transition_with_real_traffic() {
    if !kernel_tests_enabled("every_transition_with_real_traffic") {
        return;
    }
    let mut failures = Vec::new();
    for t in transitions::all() {
        let topo = Topology::build(&t.combined()).unwrap_or_else(|e| panic!("{}: topology: {e}", t.name));
        let kernel = NftKernel::in_netns(topo.node.name()).expect("netlink socket in the node namespace");
        let mut p = NftProxier::new(fx::NODE_NAME, t.steps[0].config.clone(), kernel, NftOptions::default()).expect("valid config");
        failures.extend(check_transition(&topo, &t, Dataplane::Nftables, &mut p).await);
    }
    assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));
}
