//! Real traffic through the real kernel: every shared scenario and
//! transition, in private network namespaces, with the nftables backend
//! programming the node. Needs root (skips with a message otherwise; must
//! run in CI). `KPROXY_SCENARIO=name` runs one scenario only.

use kproxy_backend_nft::kernel::NftKernel;
use kproxy_backend_nft::{NftOptions, NftProxier, NftDataplane};
use kproxy_oracle::{fixtures as fx, Dataplane};
use kproxy_core::ProxierConfig;
use kproxy_testkit::{check_every_scenario, check_every_transition, kernel_tests_enabled, Topology};

/// A proxier programming the topology's node.
fn proxier(config: &ProxierConfig, topo: &Topology) -> NftProxier<NftKernel> {
    let kernel = NftKernel::in_netns(topo.node.name()).expect("netlink socket in the node namespace");
    NftDataplane::proxier(fx::NODE_NAME, config.clone(), kernel, NftOptions::default()).expect("valid config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_with_real_traffic() {
    if !kernel_tests_enabled("every_scenario_with_real_traffic") {
        return;
    }
    let (checked, failures) = check_every_scenario(Dataplane::Nftables, proxier).await;
    assert!(failures.is_empty(), "{} of {checked} cases failed:\n{}", failures.len(), failures.join("\n"));
}

/// Every shared transition, applied as updates to one running proxier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transition_with_real_traffic() {
    if !kernel_tests_enabled("every_transition_with_real_traffic") {
        return;
    }
    let failures = check_every_transition(Dataplane::Nftables, proxier).await;
    assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));
}
