//! Real traffic through the real kernel: every shared scenario and
//! transition, in private network namespaces, with the iptables backend
//! programming the node, once with iptables-legacy and once with
//! iptables-nft. Needs root (skips with a message otherwise; must run in
//! CI). `KPROXY_SCENARIO=name` runs one scenario only.

use kproxy_backend_iptables::kernel::{Flavour, IptablesCli};
use kproxy_backend_iptables::{IptablesOptions, IptablesProxier, IptablesDataplane};
use kproxy_oracle::{fixtures as fx, Dataplane};
use kproxy_core::ProxierConfig;
use kproxy_testkit::{check_every_scenario, check_every_transition, kernel_tests_enabled, Topology};

/// A proxier of `flavour` programming the topology's node.
fn proxier(flavour: Flavour) -> impl FnMut(&ProxierConfig, &Topology) -> IptablesProxier<IptablesCli> {
    move |config, topo| {
        let kernel = IptablesCli::new(flavour, Some(topo.node.name()));
        IptablesDataplane::proxier(fx::NODE_NAME, config.clone(), kernel, IptablesOptions::default()).expect("valid config")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_with_real_traffic_on_both_flavours() {
    if !kernel_tests_enabled("every_scenario_with_real_traffic_on_both_flavours") {
        return;
    }
    let (mut checked, mut failures) = (0, Vec::new());
    for flavour in [Flavour::Legacy, Flavour::Nft] {
        let (n, found) = check_every_scenario(Dataplane::Iptables, proxier(flavour)).await;
        checked += n;
        failures.extend(found.into_iter().map(|f| format!("{}: {f}", flavour.name())));
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
        let found = check_every_transition(Dataplane::Iptables, proxier(flavour)).await;
        failures.extend(found.into_iter().map(|f| format!("{}: {f}", flavour.name())));
    }
    assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));
}
