//! Golden text: everything the IPVS proxier's first sync writes for
//! representative scenarios, as the tools print it (dummy addresses,
//! `ipset save`, `iptables-save`, `ipvsadm-save -n`). A change shows up as
//! a diff of these files; regenerate them with `UPDATE_GOLDEN=1 cargo test
//! -p kproxy-backend-ipvs --test golden` after checking the diff is
//! intended.

use kproxy_backend_ipvs::host::FakeHost;
use kproxy_backend_ipvs::{IpvsOptions, IpvsDataplane};
use kproxy_oracle::{fixtures as fx, scenarios};
use kproxy_core::{Proxier, SyncRequest};
use kproxy_testkit::check_golden;

async fn check(name: &str) {
    let scenario = scenarios::all().into_iter().find(|s| s.name == name).expect("scenario exists");
    let mut p = IpvsDataplane::proxier(fx::NODE_NAME, scenario.config.clone(), FakeHost::new(), IpvsOptions::default()).unwrap();
    scenario.feed(&mut p);
    p.sync(SyncRequest { full: true }).await.unwrap();
    let text = p.kernel().dump(scenario.family);
    check_golden(name, &format!("{}/tests/golden/{name}.txt", env!("CARGO_MANIFEST_DIR")), &text);
}

#[tokio::test]
async fn cluster_ip() {
    check("cluster_ip").await;
}

#[tokio::test]
async fn load_balancer_source_ranges() {
    check("load_balancer_source_ranges").await;
}

#[tokio::test]
async fn external_policy_local_with_local_endpoints() {
    check("external_policy_local_with_local_endpoints").await;
}

#[tokio::test]
async fn session_affinity() {
    check("session_affinity").await;
}

#[tokio::test]
async fn dual_stack_v6() {
    check("dual_stack_v6").await;
}
