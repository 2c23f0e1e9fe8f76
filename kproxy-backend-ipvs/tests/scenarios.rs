//! Every shared kproxy-core scenario, programmed by the IPVS proxier into
//! the fake kernel and traced through what it holds (rules, ipsets, IPVS
//! table, dummy addresses), must give the verdict the scenario requires in
//! IPVS mode (and the oracle's): after a full sync, and after Services
//! arrived one partial sync at a time.

use kproxy_backend_ipvs::host::FakeHost;
use kproxy_backend_ipvs::trace::trace;
use kproxy_backend_ipvs::{IpvsOptions, IpvsProxier, IpvsDataplane};
use kproxy_oracle::{evaluate_for, fixtures as fx, scenarios, Dataplane, Scenario};
use kproxy_core::{Proxier, SyncRequest};

fn check(scenario: &Scenario, host: &FakeHost, failures: &mut Vec<String>) {
    check_with(scenario, host, &scenario.config, failures);
}

/// [`check`], tracing with `trace_config` (the oracle keeps the
/// scenario's).
fn check_with(scenario: &Scenario, host: &FakeHost, trace_config: &kproxy_core::ProxierConfig, failures: &mut Vec<String>) {
    let state = scenario.state();
    for case in &scenario.cases {
        let oracle = evaluate_for(Dataplane::Ipvs, &state, &scenario.config, &case.packet);
        let expected = case.expected_for(Dataplane::Ipvs);
        match trace(host, scenario.family, trace_config, &case.packet) {
            Ok(got) if got == *expected && got == oracle => {}
            Ok(got) => failures.push(format!("{} / {}: {}\n  expected {:?}\n  traced   {:?}", scenario.name, case.name, case.packet, expected, got)),
            Err(e) => failures.push(format!("{} / {}: trace failed: {e}", scenario.name, case.name)),
        }
    }
}

fn proxier(scenario: &Scenario) -> IpvsProxier<FakeHost> {
    IpvsDataplane::proxier(fx::NODE_NAME, scenario.config.clone(), FakeHost::new(), IpvsOptions::default()).expect("valid config")
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

/// What `kproxy trace` does on a live IPVS node: the IPVS table, the
/// `ipset save` text and the `iptables-save` text read back into a fresh
/// fake ([`FakeHost::from_live`]), with the dummy interface's addresses
/// among the node's. Every scenario traces as on the proxier's own fake.
#[tokio::test]
async fn a_host_rebuilt_from_its_listings_traces_the_same() {
    let mut failures = Vec::new();
    for scenario in scenarios::all() {
        let mut p = proxier(&scenario);
        scenario.feed(&mut p);
        p.sync(SyncRequest { full: true }).await.unwrap_or_else(|e| panic!("{}: {e}", scenario.name));
        let host = p.kernel();
        let mut ipset_save = String::new();
        for (name, set) in &host.ipsets.sets {
            ipset_save.push_str(&format!("create {name} {} family inet hashsize 1024 maxelem 65536\n", set.kind));
            for e in &set.entries {
                ipset_save.push_str(&format!("add {name} {}\n", e.text()));
            }
        }
        let save: String = kproxy_backend_iptables::Table::ALL.iter().map(|t| host.iptables.save(scenario.family, *t)).collect();
        let rebuilt = FakeHost::from_live(scenario.family, &host.ipvs.current(), &ipset_save, &save).unwrap_or_else(|e| panic!("{}: {e}", scenario.name));
        // kproxy trace passes every local address as a node address.
        let mut config = scenario.config.clone();
        config.node_ips.extend(host.addresses().into_iter().filter(|ip| scenario.family.contains(*ip)));
        let before = failures.len();
        check_with(&scenario, &rebuilt, &config, &mut failures);
        let live = &scenario;
        // The ways name the IPVS servers the packet met.
        if failures.len() == before {
            if let Some(case) = live.cases.iter().find(|c| matches!(c.expected_for(Dataplane::Ipvs), kproxy_oracle::Verdict::Forward { .. })) {
                let (_, ways) = kproxy_backend_ipvs::trace::explain(&rebuilt, live.family, &config, &case.packet).unwrap();
                if !ways.iter().all(|w| w.iter().any(|l| l.starts_with("ipvs: -A ")) && w.iter().any(|l| l.starts_with("ipvs: -a "))) {
                    failures.push(format!("{} / {}: ways without their IPVS servers: {ways:#?}", live.name, case.name));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
