//! Golden text: the table kproxy renders for representative scenarios, as
//! `nft list table` would show it. A change to the rules shows up as a diff
//! of these files; regenerate them with `UPDATE_GOLDEN=1 cargo test -p
//! kproxy-backend-nft --test golden` after checking the diff is intended.

use kproxy_backend_nft::{render, text};
use kproxy_oracle::scenarios;
use kproxy_testkit::check_golden;

fn check(name: &str) {
    let scenario = scenarios::all().into_iter().find(|s| s.name == name).expect("scenario exists");
    let text = text::table_block("kproxy-a", &render(&scenario.state(), &scenario.config).ruleset);
    check_golden(name, &format!("{}/tests/golden/{name}.nft", env!("CARGO_MANIFEST_DIR")), &text);
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
fn dual_stack_v6() {
    check("dual_stack_v6");
}

#[test]
fn service_cidrs() {
    check("service_cidrs");
}
