//! Taking a node over from upstream kube-proxy, and handing it back,
//! through the real API server: for each pair of modes (upstream's →
//! kproxy's, nftables and iptables), a pod holds a TCP connection to a
//! ClusterIP and opens a new one every 10 ms to the ClusterIP and to a
//! NodePort throughout. Upstream serves, stops (its rules stay, as on a
//! DaemonSet rollout), kproxy starts and removes upstream's leftovers once
//! its own rules are in place; then upstream starts again and
//! `kproxy --hand-back` removes kproxy's own tables. Prints the failures
//! and the time until the leftovers are gone. Needs root and the e2e
//! binaries; skips without, must run in CI. The pairs with IPVS mode run
//! in the IPVS VM (`kernel_ipvs_takeover.rs`).

use std::time::Duration;

use kproxy_e2e::e2e_binaries;
use kproxy_oracle::Dataplane;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_kproxy");

#[test]
fn taking_over_from_upstream_and_handing_back_keeps_connections() {
    let _one_at_a_time = kproxy_e2e::exclusive();
    let Some(bins) = e2e_binaries("taking_over_from_upstream_and_handing_back_keeps_connections") else { return };
    let modes = [Dataplane::Nftables, Dataplane::Iptables];
    let pairs: Vec<_> = modes.iter().flat_map(|&u| modes.iter().map(move |&k| (u, k))).collect();
    let (report, failures) = common::takeover::take_over_and_back(&bins, BIN, &pairs, Duration::from_secs(24), false);
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
