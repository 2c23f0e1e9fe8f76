//! The real `iptables-restore` (both flavours, both families) accepts what
//! kproxy writes: every shared scenario as a full restore, then as a run
//! of partial restores that add its Services one at a time and remove them
//! again, inside a private network namespace; and hostile names, which
//! reach only comments. Needs root.

use std::collections::BTreeSet;

use kproxy_backend_iptables::render::{jumps, Renderer};
use kproxy_backend_iptables::restore;
use kproxy_oracle::fixtures as fx;
use kproxy_oracle::scenarios;
use kproxy_core::{IpFamily, ProxyState};
use kproxy_testkit::hostile::hostile_state;
use kproxy_testkit::{kernel_tests_enabled, Netns};
use proptest::prelude::*;

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
            apply(&ns, flavour, family, &restore::full(&r, &Default::default(), &jumps()))
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

/// What names are made of, up to 253 characters: quotes, backslashes,
/// newlines, comment markers, spaces, restore syntax and multi-byte
/// characters. They reach only comments, and must never break the restore
/// or inject a rule.
const PIECES: &[&str] = &["a", "\"", "'", "{", "}", ";", "\n", "#", "-A", " ", "\\", "/", ":", "*", "é", "-j", "COMMIT"];

fn hostile_name() -> impl Strategy<Value = String> {
    kproxy_testkit::hostile::hostile_name(PIECES)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn hostile_names_never_break_or_extend_the_restore(names in prop::collection::vec((hostile_name(), hostile_name(), hostile_name()), 1..5)) {
        if !kernel_tests_enabled("hostile_names_never_break_or_extend_the_restore") {
            return Ok(());
        }
        let unique: BTreeSet<_> = names.iter().map(|(ns, name, _)| (ns, name)).collect();
        prop_assume!(unique.len() == names.len());
        let state = hostile_state(&names);
        prop_assert_eq!(state.services().len(), names.len(), "every service survived conversion");
        let config = fx::config(IpFamily::V4);
        let mut r = Renderer::new(config.clone());
        r.refresh_all(&state);
        let text = restore::full(&r, &Default::default(), &jumps());
        // Every line is a declaration, a rule of a kproxy or built-in chain, or COMMIT.
        for line in text.lines() {
            let ok = line.starts_with('*') || line.starts_with(":KUBE-") || line == "COMMIT"
                || ["-A KUBE-", "-I PREROUTING", "-I OUTPUT", "-I POSTROUTING", "-I INPUT", "-I FORWARD"].iter().any(|p| line.starts_with(p));
            prop_assert!(ok, "unexpected line {:?}", line);
        }
        let ns = Netns::new("hostile").unwrap();
        for flavour in ["legacy", "nft"] {
            apply(&ns, flavour, IpFamily::V4, &text).map_err(TestCaseError::fail)?;
        }
        let mut kernel = kproxy_backend_iptables::fake::FakeIptables::new();
        kernel.restore(IpFamily::V4, &text).map_err(TestCaseError::fail)?;
    }
}

/// Input fed to the tool piece by piece: applied when good, and when bad
/// the error is the tool's own, naming the problem.
#[tokio::test]
async fn restore_input_fed_in_pieces_is_applied_or_refused_with_the_tools_message() {
    use kproxy_backend_iptables::kernel::{Flavour, IptablesCli, Kernel, KernelError};
    if !kernel_tests_enabled("restore_input_fed_in_pieces_is_applied_or_refused_with_the_tools_message") {
        return;
    }
    let ns = Netns::new("pieces").unwrap();
    for flavour in [Flavour::Legacy, Flavour::Nft] {
        let mut cli = IptablesCli::new(flavour, Some(ns.name()));
        let good = ["*nat\n".to_string(), ":KUBE-TEST - [0:0]\n".into(), "-A KUBE-TEST -j RETURN\n".repeat(50_000), "COMMIT\n".into()];
        cli.restore_pieces(IpFamily::V4, &mut good.into_iter()).await.unwrap_or_else(|e| panic!("{}: {e}", flavour.name()));
        let listing = cli.list(IpFamily::V4, kproxy_backend_iptables::Table::Nat, &["KUBE-TEST"]).await.unwrap();
        assert_eq!(listing.chains.get("KUBE-TEST"), Some(&50_000), "{}", flavour.name());
        let bad = ["*nat\n".to_string(), "-A KUBE-NO-SUCH-CHAIN -j RETURN\n".into(), "COMMIT\n".into()];
        match cli.restore_pieces(IpFamily::V4, &mut bad.into_iter()).await {
            Err(KernelError::Failed { message, .. }) => assert!(!message.is_empty(), "{}: empty message", flavour.name()),
            other => panic!("{}: expected the tool to refuse, got {other:?}", flavour.name()),
        }
    }
}
