//! The real `iptables-restore` (both flavours, both families) accepts what
//! kproxy writes: every shared scenario as a full restore, then as a run
//! of partial restores that add its Services one at a time and remove them
//! again, inside a private network namespace. Needs root.

use std::collections::BTreeSet;

use kproxy_backend_iptables::render::{jumps, Renderer};
use kproxy_backend_iptables::restore;
use kproxy_core::oracle::{fixtures as fx, scenarios};
use kproxy_core::{IpFamily, ProxyState};
use kproxy_testkit::{kernel_tests_enabled, Netns};

fn restore_cmd(flavour: &str, family: IpFamily) -> String {
    let base = if family == IpFamily::V6 { "ip6tables" } else { "iptables" };
    format!("{base}-{flavour}-restore")
}

fn apply(ns: &Netns, flavour: &str, family: IpFamily, text: &str) -> Result<(), String> {
    let file = std::env::temp_dir().join(format!("kproxy-ipt-{}-{}.rules", std::process::id(), ns.name()));
    std::fs::write(&file, text).map_err(|e| e.to_string())?;
    let out = ns.exec(&[&restore_cmd(flavour, family), "--noflush", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
    out.map(|_| ()).map_err(|e| format!("{e}\n--- input:\n{text}"))
}

#[test]
fn iptables_restore_accepts_every_scenario_full_and_partial() {
    if !kernel_tests_enabled("iptables_restore_accepts_every_scenario_full_and_partial") {
        return;
    }
    for flavour in ["legacy", "nft"] {
        for scenario in scenarios::all() {
            let ns = Netns::new("ipt").unwrap();
            let family = scenario.family;
            let state = scenario.state();
            let mut r = Renderer::new(scenario.config.clone());
            r.refresh_all(&state);
            r.take_journal();
            apply(&ns, flavour, family, &restore::full(&r.ruleset(), &Default::default(), &jumps()))
                .unwrap_or_else(|e| panic!("{flavour} {}: full restore: {e}", scenario.name));
            let save = if family == IpFamily::V6 { format!("ip6tables-{flavour}-save") } else { format!("iptables-{flavour}-save") };
            let saved = ns.exec(&[&save, "-t", "nat"]).unwrap();
            assert!(saved.contains("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"), "{flavour}: {saved}");

            // Remove every Service, one per partial restore, then add them back.
            let services: BTreeSet<_> = state.services().iter().map(|(n, _)| n.service.clone()).collect();
            let empty = ProxyState::new(family, fx::NODE_NAME);
            for svc in &services {
                r.refresh(&empty, [svc]);
                let journal = r.take_journal();
                apply(&ns, flavour, family, &restore::partial(&r, &journal, &[]))
                    .unwrap_or_else(|e| panic!("{flavour} {}: removing {svc}: {e}", scenario.name));
            }
            let saved = ns.exec(&[&save, "-t", "nat"]).unwrap();
            assert!(!saved.contains("KUBE-SVC-") && !saved.contains("KUBE-SEP-"), "{flavour} {}: chains left after removal:\n{saved}", scenario.name);
            for svc in &services {
                r.refresh(&state, [svc]);
                let journal = r.take_journal();
                apply(&ns, flavour, family, &restore::partial(&r, &journal, &[]))
                    .unwrap_or_else(|e| panic!("{flavour} {}: adding {svc}: {e}", scenario.name));
            }
        }
    }
}
