//! Every shared kproxy-core scenario, programmed by the IPVS proxier into
//! the fake kernel and traced through what it holds (rules, ipsets, IPVS
//! table, dummy addresses), must give the verdict the scenario requires in
//! IPVS mode (and the oracle's): after a full sync, and after Services
//! arrived one partial sync at a time.

use kproxy_backend_ipvs::host::FakeHost;
use kproxy_backend_ipvs::trace::trace;
use kproxy_backend_ipvs::{IpvsOptions, IpvsProxier};
use kproxy_core::oracle::{evaluate_for, fixtures as fx, scenarios, Dataplane, Scenario};
use kproxy_core::{Proxier, SyncRequest};

fn check(scenario: &Scenario, host: &FakeHost, failures: &mut Vec<String>) {
    let state = scenario.state();
    for case in &scenario.cases {
        let oracle = evaluate_for(Dataplane::Ipvs, &state, &scenario.config, &case.packet);
        let expected = case.expected_for(Dataplane::Ipvs);
        match trace(host, scenario.family, &scenario.config, &case.packet) {
            Ok(got) if got == *expected && got == oracle => {}
            Ok(got) => failures.push(format!("{} / {}: {}\n  expected {:?}\n  traced   {:?}", scenario.name, case.name, case.packet, expected, got)),
            Err(e) => failures.push(format!("{} / {}: trace failed: {e}", scenario.name, case.name)),
        }
    }
}

fn proxier(scenario: &Scenario) -> IpvsProxier<FakeHost> {
    IpvsProxier::new(fx::NODE_NAME, scenario.config.clone(), FakeHost::new(), IpvsOptions::default()).expect("valid config")
}

#[tokio::test]
async fn a_full_sync_meets_every_scenario() {
    let mut failures = Vec::new();
    for scenario in scenarios::all() {
        let mut p = proxier(&scenario);
        scenario.feed(&mut p);
        p.sync(SyncRequest { full: true }).await.unwrap_or_else(|e| panic!("{}: {e}", scenario.name));
        check(&scenario, p.kernel(), &mut failures);
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[tokio::test]
async fn partial_syncs_from_empty_meet_every_scenario() {
    let mut failures = Vec::new();
    for scenario in scenarios::all() {
        let mut p = proxier(&scenario);
        p.on_node_update(&scenario.node);
        p.sync(SyncRequest { full: false }).await.unwrap();
        // Slices first (no Service yet), then each Service on its own sync.
        for s in &scenario.slices {
            p.on_endpoint_slice_update(s, false);
        }
        for s in &scenario.services {
            p.on_service_update(None, Some(s));
            p.sync(SyncRequest { full: false }).await.unwrap_or_else(|e| panic!("{}: {e}", scenario.name));
            assert!(!p.stats().rules_written, "{}: a partial sync rewrote the rules", scenario.name);
        }
        check(&scenario, p.kernel(), &mut failures);
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
