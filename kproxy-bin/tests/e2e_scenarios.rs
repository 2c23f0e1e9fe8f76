//! Every shared scenario through a real kube-apiserver with kproxy: the
//! objects are created through the API, kproxy runs in nftables mode (and
//! again in iptables mode, and in userspace mode with the oracle's
//! userspace verdicts) as a
//! user runs it (`--config` naming a kubeconfig) in a private node
//! namespace, and every case is checked with real traffic. Needs root and
//! the e2e binaries (`e2e/k8s/build.sh`); skips without, must run in CI.

use kproxy_oracle::Dataplane;
use kproxy_e2e::{e2e_binaries, scenario, ProxyKind};

#[test]
fn every_scenario_through_the_api_server() {
    let _one_at_a_time = kproxy_e2e::exclusive();
    let Some(bins) = e2e_binaries("every_scenario_through_the_api_server") else { return };
    let failures = scenario::run_all(&bins, ProxyKind::Kproxy, env!("CARGO_BIN_EXE_kproxy")).unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_scenario_through_the_api_server_in_iptables_mode() {
    let _one_at_a_time = kproxy_e2e::exclusive();
    let Some(bins) = e2e_binaries("every_scenario_through_the_api_server_in_iptables_mode") else { return };
    let failures = scenario::run_all_in(&bins, ProxyKind::Kproxy, env!("CARGO_BIN_EXE_kproxy"), Dataplane::Iptables).unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_scenario_through_the_api_server_in_userspace_mode() {
    let _one_at_a_time = kproxy_e2e::exclusive();
    let Some(bins) = e2e_binaries("every_scenario_through_the_api_server_in_userspace_mode") else { return };
    let failures = scenario::run_all_in(&bins, ProxyKind::Kproxy, env!("CARGO_BIN_EXE_kproxy"), Dataplane::Userspace).unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
