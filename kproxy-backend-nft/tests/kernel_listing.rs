//! The listing reader against the real kernel: every shared scenario's
//! rendered table, loaded with `nft -f` into a private namespace and read
//! back with `nft -j list table`, parses into the ruleset that was
//! rendered (elements, chains, rules and set shapes). This is what
//! `kproxy trace` relies on in nftables mode. Needs root.

use kproxy_backend_nft::{listing, render, text};
use kproxy_oracle::scenarios;
use kproxy_testkit::{kernel_tests_enabled, Netns};

#[test]
fn every_scenario_s_table_reads_back_as_rendered() {
    if !kernel_tests_enabled("every_scenario_s_table_reads_back_as_rendered") {
        return;
    }
    let ns = Netns::new("listing").unwrap();
    let mut failures = Vec::new();
    for scenario in scenarios::all() {
        let rendered = render(&scenario.state(), &scenario.config).ruleset;
        let family = kproxy_backend_nft::model::family_keyword(rendered.family);
        let script = std::env::temp_dir().join(format!("kproxy-listing-{}.nft", std::process::id()));
        std::fs::write(&script, text::table_block("kproxy-a", &rendered)).unwrap();
        if let Err(e) = ns.exec(&["nft", "-f", script.to_str().unwrap()]) {
            failures.push(format!("{}: nft -f: {e}", scenario.name));
            continue;
        }
        let json = ns.exec(&["nft", "-j", "list", "table", family, "kproxy-a"]).unwrap();
        ns.exec(&["nft", "delete", "table", family, "kproxy-a"]).unwrap();
        let _ = std::fs::remove_file(&script);
        match listing::parse(&json, "kproxy-a") {
            Ok(read) if read.ruleset == rendered => {}
            Ok(read) => {
                for (name, chain) in &rendered.chains {
                    if read.ruleset.chains.get(name) != Some(chain) {
                        failures.push(format!("{}: chain {name}: rendered {chain:?}, read {:?}", scenario.name, read.ruleset.chains.get(name)));
                    }
                }
                for (name, set) in &rendered.sets {
                    if read.ruleset.sets.get(name) != Some(set) {
                        failures.push(format!("{}: set {name}: rendered {set:?}, read {:?}", scenario.name, read.ruleset.sets.get(name)));
                    }
                }
                let extra: Vec<_> = read.ruleset.chains.keys().chain(read.ruleset.sets.keys()).filter(|n| !rendered.chains.contains_key(*n) && !rendered.sets.contains_key(*n)).collect();
                if !extra.is_empty() {
                    failures.push(format!("{}: read back more than rendered: {extra:?}", scenario.name));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", scenario.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
