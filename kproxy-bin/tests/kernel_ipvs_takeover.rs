//! Taking a node over from upstream kube-proxy in IPVS mode, and into it,
//! and handing it back, through the real API server (issue 13's takeover
//! where the kernel has IPVS): inside the VM of scripts/ipvs-vm.sh, with
//! the control plane and upstream's binary the e2e harness builds (the
//! VM sees them where scripts/test-ipvs-vm.sh puts them). The same
//! procedure as `e2e_takeover.rs`: a held connection and a new connection
//! every 10 ms to a ClusterIP and a NodePort through each switch, the
//! leftovers of the mode before removed once the new rules are in place.
//! Built only with the `vm-tests` feature.

use std::time::Duration;

use kproxy_e2e::e2e_binaries;
use kproxy_oracle::Dataplane;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_kproxy");

#[test]
fn taking_over_from_and_into_upstream_s_ipvs_mode_keeps_connections() {
    let Some(bins) = e2e_binaries("taking_over_from_and_into_upstream_s_ipvs_mode_keeps_connections") else { return };
    use Dataplane::{Iptables, Ipvs, Nftables};
    let pairs = [(Ipvs, Nftables), (Ipvs, Ipvs), (Nftables, Ipvs), (Ipvs, Iptables), (Iptables, Ipvs)];
    let (report, failures) = common::takeover::take_over_and_back(&bins, BIN, &pairs, Duration::from_secs(24), true);
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
