//! Real traffic through a real IPVS kernel: every shared scenario and
//! transition, in private network namespaces (inside the VM of
//! scripts/ipvs-vm.sh), with the IPVS proxier programming the node,
//! checked against the scenario's IPVS-mode verdicts. Built only with the
//! `vm-tests` feature. `KPROXY_SCENARIO=name` runs one scenario only.

use kproxy_backend_iptables::kernel::{Flavour, IptablesCli};
use kproxy_backend_ipvs::kernel::IpvsHost;
use kproxy_backend_ipvs::{IpvsOptions, IpvsProxier, IpvsDataplane};
use kproxy_oracle::{fixtures as fx, Dataplane};
use kproxy_core::ProxierConfig;
use kproxy_testkit::{check_every_scenario, check_every_transition, kernel_tests_enabled, Topology};

/// A proxier programming the topology's node.
fn proxier(config: &ProxierConfig, topo: &Topology) -> IpvsProxier<IpvsHost> {
    let ns = topo.node.name();
    let kernel = IpvsHost::new(Some(ns), IptablesCli::new(Flavour::Nft, Some(ns)));
    IpvsDataplane::proxier(fx::NODE_NAME, config.clone(), kernel, IpvsOptions::default()).expect("valid config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_with_real_traffic() {
    if !kernel_tests_enabled("every_scenario_with_real_traffic") {
        return;
    }
    let (checked, failures) = check_every_scenario(Dataplane::Ipvs, proxier).await;
    assert!(failures.is_empty(), "{} of {checked} cases failed:\n{}", failures.len(), failures.join("\n"));
}

/// Every shared transition, applied as updates to one running proxier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transition_with_real_traffic() {
    if !kernel_tests_enabled("every_transition_with_real_traffic") {
        return;
    }
    let failures = check_every_transition(Dataplane::Ipvs, proxier).await;
    assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));
}
