//! The same scenarios with upstream kube-proxy (v1.34.4, nftables mode)
//! instead of kproxy: the oracle's expectations are upstream's observed
//! behaviour, not only kproxy's. Needs root and the e2e binaries; skips
//! without, must run in CI.

use kproxy_oracle::Dataplane;
use kproxy_e2e::{e2e_binaries, scenario, ProxyKind};

#[test]
fn every_scenario_with_upstream_kube_proxy() {
    let _one_at_a_time = kproxy_e2e::exclusive();
    let Some(bins) = e2e_binaries("every_scenario_with_upstream_kube_proxy") else { return };
    let failures = scenario::run_all(&bins, ProxyKind::Upstream, &bins.path("kube-proxy")).unwrap();
    assert!(failures.is_empty(), "upstream kube-proxy disagrees with the oracle:\n{}", failures.join("\n"));
}

#[test]
fn every_scenario_with_upstream_kube_proxy_in_iptables_mode() {
    let _one_at_a_time = kproxy_e2e::exclusive();
    let Some(bins) = e2e_binaries("every_scenario_with_upstream_kube_proxy_in_iptables_mode") else { return };
    let failures = scenario::run_all_in(&bins, ProxyKind::Upstream, &bins.path("kube-proxy"), Dataplane::Iptables).unwrap();
    assert!(failures.is_empty(), "upstream kube-proxy (iptables mode) disagrees with the oracle:\n{}", failures.join("\n"));
}
