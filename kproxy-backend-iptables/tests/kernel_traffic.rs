//! Real traffic through the real kernel: every shared scenario, in private
//! network namespaces, with the iptables backend programming the node,
//! once with iptables-legacy and once with iptables-nft. Needs root
//! (skips with a message otherwise; must run in CI).

use kproxy_backend_iptables::kernel::{Flavour, IptablesCli};
use kproxy_backend_iptables::{IptablesOptions, IptablesProxier};
use kproxy_core::oracle::{fixtures as fx, scenarios, transitions, Dataplane, Scenario};
use kproxy_core::{Proxier, SyncRequest};
use kproxy_testkit::{check_scenario_for, check_transition, kernel_tests_enabled, Topology};

async fn install(scenario: &Scenario, topo: &Topology, flavour: Flavour) -> IptablesProxier<IptablesCli> {
    let kernel = IptablesCli::new(flavour, Some(topo.node.name()));
    let mut p = IptablesProxier::new(fx::NODE_NAME, scenario.config.clone(), kernel, IptablesOptions::default()).expect("valid config");
    scenario.feed(&mut p);
    p.sync(SyncRequest { full: true }).await.unwrap_or_else(|e| panic!("{}: sync failed: {e}", scenario.name));
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_with_real_traffic_on_both_flavours() {
    if !kernel_tests_enabled("every_scenario_with_real_traffic_on_both_flavours") {
        return;
    }
    let mut failures = Vec::new();
    let mut checked = 0;
    // KPROXY_SCENARIO=name runs one scenario only (for debugging).
    let only = std::env::var("KPROXY_SCENARIO").ok();
    for flavour in [Flavour::Legacy, Flavour::Nft] {
        for scenario in scenarios::all().into_iter().filter(|s| only.as_ref().is_none_or(|o| o == s.name)) {
            let topo = Topology::build(&scenario).unwrap_or_else(|e| panic!("{}: topology: {e}", scenario.name));
            let _proxier = install(&scenario, &topo, flavour).await;
            let found = tokio::task::block_in_place(|| check_scenario_for(&topo, &scenario, Dataplane::Iptables));
            checked += scenario.cases.len();
            failures.extend(found.into_iter().map(|f| format!("{}: {f}", flavour.name())));
        }
    }
    assert!(failures.is_empty(), "{} of {checked} cases failed:\n{}", failures.len(), failures.join("\n"));
}

/// Every shared transition, applied as updates to one running proxier, on
/// both flavours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transition_with_real_traffic_on_both_flavours() {
    if !kernel_tests_enabled("every_transition_with_real_traffic_on_both_flavours") {
        return;
    }
    let mut failures = Vec::new();
    for flavour in [Flavour::Legacy, Flavour::Nft] {
        for t in transitions::all() {
            let topo = Topology::build(&t.combined()).unwrap_or_else(|e| panic!("{}: topology: {e}", t.name));
            let kernel = IptablesCli::new(flavour, Some(topo.node.name()));
            let mut p = IptablesProxier::new(fx::NODE_NAME, t.steps[0].config.clone(), kernel, IptablesOptions::default()).expect("valid config");
            let found = check_transition(&topo, &t, Dataplane::Iptables, &mut p).await;
            failures.extend(found.into_iter().map(|f| format!("{}: {f}", flavour.name())));
        }
    }
    assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));
}
