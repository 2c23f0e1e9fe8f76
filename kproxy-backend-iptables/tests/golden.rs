//! Golden text: the full `iptables-restore` input kproxy writes for
//! representative scenarios. A change to the rules shows up as a diff of
//! these files; regenerate them with `UPDATE_GOLDEN=1 cargo test -p
//! kproxy-backend-iptables --test golden` after checking the diff is
//! intended. The golden chain names double as a check of upstream's hash.

use kproxy_backend_iptables::render::{jumps, Renderer};
use kproxy_backend_iptables::restore;
use kproxy_oracle::scenarios;
use kproxy_testkit::check_golden;

fn check(name: &str) {
    let scenario = scenarios::all().into_iter().find(|s| s.name == name).expect("scenario exists");
    let text = restore::full(&Renderer::of(&scenario.state(), &scenario.config), &Default::default(), &jumps());
    check_golden(name, &format!("{}/tests/golden/{name}.rules", env!("CARGO_MANIFEST_DIR")), &text);
}

#[test]
fn cluster_ip() {
    check("cluster_ip");
}

#[test]
fn load_balancer_source_ranges() {
    check("load_balancer_source_ranges");
}

#[test]
fn external_policy_local_with_local_endpoints() {
    check("external_policy_local_with_local_endpoints");
}

#[test]
fn session_affinity() {
    check("session_affinity");
}

#[test]
fn no_endpoints() {
    check("no_endpoints");
}

#[test]
fn dual_stack_v6() {
    check("dual_stack_v6");
}
