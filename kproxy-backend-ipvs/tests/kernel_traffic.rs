//! Real traffic through a real IPVS kernel: every shared scenario, in
//! private network namespaces (inside the VM of scripts/ipvs-vm.sh), with
//! the IPVS proxier programming the node, checked against the scenario's
//! IPVS-mode verdicts. Built only with the `vm-tests` feature.

use kproxy_backend_iptables::kernel::{Flavour, IptablesCli};
use kproxy_backend_ipvs::kernel::IpvsHost;
use kproxy_backend_ipvs::{IpvsOptions, IpvsProxier};
use kproxy_core::oracle::{fixtures as fx, scenarios, transitions, Dataplane, Scenario};
use kproxy_core::{Proxier, SyncRequest};
use kproxy_testkit::{check_scenario_for, check_transition, kernel_tests_enabled, Topology};

async fn install(scenario: &Scenario, topo: &Topology) -> IpvsProxier<IpvsHost> {
    let ns = topo.node.name();
    let kernel = IpvsHost::new(Some(ns), IptablesCli::new(Flavour::Nft, Some(ns)));
    let mut p = IpvsProxier::new(fx::NODE_NAME, scenario.config.clone(), kernel, IpvsOptions::default()).expect("valid config");
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
        failures.extend(tokio::task::block_in_place(|| check_scenario_for(&topo, &scenario, Dataplane::Ipvs)));
        checked += scenario.cases.len();
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
        let ns = topo.node.name();
        let kernel = IpvsHost::new(Some(ns), IptablesCli::new(Flavour::Nft, Some(ns)));
        let mut p = IpvsProxier::new(fx::NODE_NAME, t.steps[0].config.clone(), kernel, IpvsOptions::default()).expect("valid config");
        failures.extend(check_transition(&topo, &t, Dataplane::Ipvs, &mut p).await);
    }
    assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));
}
