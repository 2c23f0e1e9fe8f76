//! The oracle agrees with every shared scenario's hand-written expectations.

use std::collections::BTreeSet;

use kproxy_oracle::{evaluate, evaluate_for, scenarios, transitions, Dataplane};

#[test]
fn oracle_meets_every_scenario() {
    let mut failures = Vec::new();
    let mut cases = 0;
    for scenario in scenarios::all() {
        let state = scenario.state();
        for case in &scenario.cases {
            cases += 1;
            let got = evaluate(&state, &scenario.config, &case.packet);
            if got != case.expected {
                failures.push(format!(
                    "{} / {}: {}\n  expected {:?}\n  got      {:?}",
                    scenario.name, case.name, case.packet, case.expected, got
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {cases} cases failed:\n{}", failures.len(), failures.join("\n"));
    assert!(cases >= 50, "the scenario kit shrank to {cases} cases");
}

#[test]
fn oracle_meets_every_scenario_in_every_mode() {
    let mut failures = Vec::new();
    let mut differing = 0;
    let mut ipvs_differing = 0;
    for scenario in scenarios::all() {
        let state = scenario.state();
        for case in &scenario.cases {
            for mode in [Dataplane::Nftables, Dataplane::Iptables, Dataplane::Ipvs] {
                let got = evaluate_for(mode, &state, &scenario.config, &case.packet);
                if &got != case.expected_for(mode) {
                    failures.push(format!("{mode:?} {} / {}: expected {:?}, got {got:?}", scenario.name, case.name, case.expected_for(mode)));
                }
            }
            differing += usize::from(case.iptables.is_some());
            ipvs_differing += usize::from(case.ipvs.is_some());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(differing, 6, "only the unknown-port and unknown-protocol ClusterIP cases, the ServiceCIDR drops, and a blocked client of a Service without endpoints differ by mode");
    assert_eq!(ipvs_differing, 12, "IPVS mode differs where upstream's IPVS layout does (see oracle::evaluate_for)");
}

#[test]
fn scenario_names_are_unique_and_cover_the_required_topics() {
    let names: Vec<&str> = scenarios::all().iter().map(|s| s.name).collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "duplicate scenario names");
    for required in [
        "cluster_ip",
        "node_port",
        "load_balancer_source_ranges",
        "external_ips",
        "external_policy_local_with_local_endpoints",
        "external_policy_local_without_local_endpoints",
        "internal_policy_local",
        "session_affinity",
        "terminating_fallback",
        "topology_hints",
        "no_endpoints",
        "service_cidrs",
        "hairpin",
        "masquerade_all",
        "dual_stack_v4",
        "dual_stack_v6",
    ] {
        assert!(unique.contains(required), "missing scenario {required}");
    }
}

#[test]
fn every_scenario_builds_the_services_it_declares() {
    for scenario in scenarios::all() {
        let state = scenario.state();
        assert!(!state.services().is_empty(), "{}: no service survived conversion", scenario.name);
        for (name, info) in state.services().iter() {
            assert!(scenario.family.contains(info.cluster_ip), "{}: {name} has a foreign ClusterIP", scenario.name);
        }
    }
}

/// The oracle agrees with every step of every shared transition, in every
/// mode (each step's expectations are those of its state).
#[test]
fn oracle_meets_every_transition_step() {
    let mut failures = Vec::new();
    let mut cases = 0;
    for t in transitions::all() {
        assert!(t.steps.len() >= 2, "{}: a transition has two steps or more", t.name);
        for step in &t.steps {
            let state = step.state();
            for case in &step.cases {
                for mode in [Dataplane::Nftables, Dataplane::Iptables, Dataplane::Ipvs] {
                    cases += 1;
                    let got = evaluate_for(mode, &state, &step.config, &case.packet);
                    if &got != case.expected_for(mode) {
                        failures.push(format!("{mode:?} {} / {} / {}: expected {:?}, got {got:?}", t.name, step.name, case.name, case.expected_for(mode)));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(cases >= 30, "{cases}");
}

/// Userspace mode's verdicts are nftables mode's, except where a proxy
/// that forwards connections itself differs by nature: every forwarded
/// connection reaches its endpoint from the node (masqueraded), and it
/// does not do nftables mode's own refusals of a ClusterIP's other ports
/// and drops of the ServiceCIDRs (iptables mode's verdict, no service,
/// there). Says how many cases differ in each way.
#[test]
fn userspace_verdicts_are_nftables_ones_with_the_node_as_every_source() {
    use kproxy_oracle::{Target, Verdict};
    let (mut failures, mut unmasqueraded, mut not_service, mut cases) = (Vec::new(), 0, 0, 0);
    for scenario in scenarios::all() {
        for (case, got) in scenario.cases.iter().zip(scenario.verdicts_for(Dataplane::Userspace)) {
            cases += 1;
            let want = match case.expected_for(Dataplane::Nftables) {
                Verdict::Forward { targets, affinity_seconds } => {
                    unmasqueraded += usize::from(targets.iter().any(|t| !t.masquerade));
                    Verdict::Forward { targets: targets.iter().map(|t| Target { masquerade: true, ..*t }).collect(), affinity_seconds: *affinity_seconds }
                }
                _ if case.iptables == Some(Verdict::NotService) => {
                    not_service += 1;
                    Verdict::NotService
                }
                other => other.clone(),
            };
            if got != want {
                failures.push(format!("{} / {}: {}\n  expected {want:?}\n  got      {got:?}", scenario.name, case.name, case.packet));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {cases} cases:\n{}", failures.len(), failures.join("\n"));
    println!("{cases} cases: {unmasqueraded} forwarded unmasqueraded in nftables mode are masqueraded in userspace mode; {not_service} nftables-only refusals or drops are no service");
    assert!(unmasqueraded > 0 && not_service > 0, "the kit no longer shows either difference");
}
