//! The tracer is not vacuous: breaking a rule the scenarios depend on makes
//! the affected cases fail.

use kproxy_backend_nft::model::{Ruleset, Stmt, Verdict};
use kproxy_backend_nft::{names, render, trace::trace};
use kproxy_oracle::scenarios;

/// How many cases of all scenarios fail after `mutate` edits each ruleset.
fn failures_after(mutate: impl Fn(&mut Ruleset)) -> usize {
    let mut failed = 0;
    for scenario in scenarios::all() {
        let mut rs = render(&scenario.state(), &scenario.config).ruleset;
        mutate(&mut rs);
        for case in &scenario.cases {
            if trace(&rs, &scenario.config, &case.packet).ok().as_ref() != Some(&case.expected) {
                failed += 1;
            }
        }
    }
    failed
}

#[test]
fn the_unmutated_rules_pass() {
    assert_eq!(failures_after(|_| {}), 0);
}

#[test]
fn losing_the_external_masquerade_is_caught() {
    let n = failures_after(|rs| {
        for chain in [names::EXTERNAL, names::NODEPORT] {
            rs.chains.get_mut(chain).unwrap().rules.retain(|r| !r.stmts.contains(&Stmt::Verdict(Verdict::Jump(names::MARK_FOR_MASQUERADE.into()))));
        }
    });
    assert!(n >= 5, "only {n} cases noticed");
}

#[test]
fn losing_the_firewall_is_caught() {
    let n = failures_after(|rs| rs.chains.get_mut(names::FIREWALL_CHECK).unwrap().rules.clear());
    assert!(n >= 3, "only {n} cases noticed");
}

#[test]
fn losing_the_endpoint_checks_is_caught() {
    let n = failures_after(|rs| rs.chains.get_mut(names::ENDPOINTS_CHECK).unwrap().rules.clear());
    assert!(n >= 8, "only {n} cases noticed");
}

#[test]
fn losing_the_pod_short_circuit_is_caught() {
    let n = failures_after(|rs| {
        rs.chains.get_mut(names::EXTERNAL_LOCAL).unwrap().rules.remove(0);
    });
    assert!(n >= 2, "only {n} cases noticed");
}

#[test]
fn losing_hairpin_masquerade_is_caught() {
    let n = failures_after(|rs| rs.sets.get_mut(names::HAIRPIN).unwrap().elements.clear());
    assert!(n >= 1, "only {n} cases noticed");
}

#[test]
fn losing_affinity_recording_is_caught() {
    let n = failures_after(|rs| rs.chains.get_mut(names::AFFINITY_RECORD).unwrap().rules.clear());
    assert!(n >= 2, "only {n} cases noticed");
}
