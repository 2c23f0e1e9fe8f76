//! Golden text: the full `iptables-restore` input kproxy writes for
//! representative scenarios. A change to the rules shows up as a diff of
//! these files; regenerate them with `UPDATE_GOLDEN=1 cargo test -p
//! kproxy-backend-iptables --test golden` after checking the diff is
//! intended. The golden chain names double as a check of upstream's hash.

use kproxy_backend_iptables::render::{jumps, render};
use kproxy_backend_iptables::restore;
use kproxy_core::oracle::scenarios;

fn check(name: &str) {
    let scenario = scenarios::all().into_iter().find(|s| s.name == name).expect("scenario exists");
    let text = restore::full(&render(&scenario.state(), &scenario.config), &Default::default(), &jumps());
    let path = format!("{}/tests/golden/{name}.rules", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).expect("write golden file");
        return;
    }
    let golden = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("missing {path}; run with UPDATE_GOLDEN=1"));
    if golden != text {
        let first = golden.lines().zip(text.lines()).position(|(a, b)| a != b).unwrap_or(0);
        panic!("{name}: rendered rules differ from {path} at line {}:\n  golden:   {:?}\n  rendered: {:?}", first + 1, golden.lines().nth(first), text.lines().nth(first));
    }
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
