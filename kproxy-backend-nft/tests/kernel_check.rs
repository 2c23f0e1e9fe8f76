//! The real `nft` accepts every transaction kproxy generates: the shared
//! scenarios (both families), and states with hostile names. Runs
//! `nft --check` inside a private network namespace. Needs root.

use kproxy_backend_nft::kernel::NftCli;
use kproxy_backend_nft::render;
use kproxy_backend_nft::transaction::Transaction;
use kproxy_oracle::fixtures as fx;
use kproxy_oracle::scenarios;
use kproxy_core::{IpFamily, ProxyState};
use kproxy_testkit::hostile::hostile_state;
use kproxy_testkit::{kernel_tests_enabled, Netns};
use proptest::prelude::*;

fn check(nft: &NftCli, state: &ProxyState, config: &kproxy_core::ProxierConfig) -> Result<(), String> {
    let rendered = render(state, config);
    let mut tx = Transaction::new(config.family);
    tx.create("kproxy-a", &rendered.ruleset, true);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(nft.check(&tx)).map_err(|e| format!("{e}\n{}", tx.to_nft()))
}

#[test]
fn nft_accepts_every_scenario() {
    if !kernel_tests_enabled("nft_accepts_every_scenario") {
        return;
    }
    let ns = Netns::new("check").unwrap();
    let nft = NftCli::in_netns(ns.name());
    for scenario in scenarios::all() {
        check(&nft, &scenario.state(), &scenario.config).unwrap_or_else(|e| panic!("{}: {e}", scenario.name));
    }
}

/// What names are made of: quotes, braces, semicolons, newlines, comment
/// markers, up to 253 characters.
const PIECES: &[&str] = &["a", "\"", "'", "{", "}", ";", "\n", "#", "@", "$", " ", "\\", "/", ":", "*", "é", "-"];

fn hostile_name() -> impl Strategy<Value = String> {
    kproxy_testkit::hostile::hostile_name(PIECES)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn hostile_names_never_reach_the_rules(names in prop::collection::vec((hostile_name(), hostile_name(), hostile_name()), 1..6)) {
        if !kernel_tests_enabled("hostile_names_never_reach_the_rules") {
            return Ok(());
        }
        let unique: std::collections::BTreeSet<_> = names.iter().map(|(ns, name, _)| (ns, name)).collect();
        prop_assume!(unique.len() == names.len());
        let state = hostile_state(&names);
        prop_assert_eq!(state.services().len(), names.len(), "every service survived conversion");
        // The same cluster with plain names must render byte for byte the
        // same: no name can influence the rules, let alone inject one.
        let plain: Vec<(String, String, String)> =
            (0..names.len()).map(|i| (format!("ns{i}"), format!("svc{i}"), format!("p{i}"))).collect();
        let config = fx::config(IpFamily::V4);
        let text = |state: &ProxyState| {
            let mut tx = Transaction::new(IpFamily::V4);
            tx.create("kproxy-a", &render(state, &config).ruleset, true);
            tx.to_nft()
        };
        prop_assert_eq!(text(&state), text(&hostile_state(&plain)));
        let ns = Netns::new("hostile").unwrap();
        let nft = NftCli::in_netns(ns.name());
        check(&nft, &state, &config).map_err(TestCaseError::fail)?;
    }
}
