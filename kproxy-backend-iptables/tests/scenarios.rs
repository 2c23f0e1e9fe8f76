//! Every shared kproxy-core scenario, written to the fake iptables as
//! `iptables-restore` text and traced through what the fake holds, must
//! give the verdict the scenario requires (and the oracle's).

use kproxy_backend_iptables::fake::FakeIptables;
use kproxy_backend_iptables::render::{jumps, Renderer};
use kproxy_backend_iptables::restore;
use kproxy_backend_iptables::trace::trace;
use kproxy_oracle::{evaluate_for, scenarios, Dataplane, Scenario};

fn check(scenario: &Scenario, kernel: &FakeIptables, failures: &mut Vec<String>) {
    let state = scenario.state();
    for case in &scenario.cases {
        let oracle = evaluate_for(Dataplane::Iptables, &state, &scenario.config, &case.packet);
        let expected = case.expected_for(Dataplane::Iptables);
        match trace(kernel, scenario.family, &scenario.config, &case.packet) {
            Ok(got) if got == *expected && got == oracle => {}
            Ok(got) => failures.push(format!(
                "{} / {}: {}\n  expected {:?}\n  traced   {:?}",
                scenario.name, case.name, case.packet, expected, got
            )),
            Err(e) => failures.push(format!("{} / {}: trace failed: {e}", scenario.name, case.name)),
        }
    }
}

fn full_restore(scenario: &Scenario) -> FakeIptables {
    let mut r = Renderer::new(scenario.config.clone());
    r.refresh_all(&scenario.state());
    let text = restore::full(&r, &Default::default(), &jumps());
    let mut kernel = FakeIptables::new();
    kernel.restore(scenario.family, &text).unwrap_or_else(|e| panic!("{}: the fake refused the restore: {e}\n{text}", scenario.name));
    kernel
}

#[test]
fn a_full_restore_meets_every_scenario() {
    let mut failures = Vec::new();
    for scenario in scenarios::all() {
        check(&scenario, &full_restore(&scenario), &mut failures);
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn partial_restores_from_empty_meet_every_scenario() {
    // Services appear one at a time, each sync a partial restore on top
    // of the last.
    let mut failures = Vec::new();
    for scenario in scenarios::all() {
        let mut r = Renderer::new(scenario.config.clone());
        let mut kernel = FakeIptables::new();
        let empty = kproxy_core::ProxyState::new(scenario.family, kproxy_oracle::fixtures::NODE_NAME);
        r.refresh_all(&empty);
        r.take_journal();
        kernel.restore(scenario.family, &restore::full(&r, &Default::default(), &jumps())).unwrap();
        let state = scenario.state();
        for svc in state.services().iter().map(|(n, _)| n.service.clone()).collect::<std::collections::BTreeSet<_>>() {
            r.refresh(&state, [&svc]);
            let journal = r.take_journal();
            let text = restore::partial(&r, &journal, &[]);
            kernel.restore(scenario.family, &text).unwrap_or_else(|e| panic!("{}: partial restore refused: {e}\n{text}", scenario.name));
        }
        check(&scenario, &kernel, &mut failures);
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
