//! Every shared kproxy-core scenario, traced through the nftables rules that
//! kproxy generates, must give the verdict the scenario requires (and the
//! same verdict the oracle gives).

use kproxy_backend_nft::fake::FakeKernel;
use kproxy_backend_nft::kernel::Kernel;
use kproxy_backend_nft::trace::trace;
use kproxy_backend_nft::transaction::Transaction;
use kproxy_backend_nft::{model::Ruleset, render};
use kproxy_oracle::{evaluate, scenarios, Scenario};

fn check(scenario: &Scenario, ruleset: &Ruleset, failures: &mut Vec<String>) {
    let state = scenario.state();
    for case in &scenario.cases {
        let oracle = evaluate(&state, &scenario.config, &case.packet);
        match trace(ruleset, &scenario.config, &case.packet) {
            Ok(got) if got == case.expected && got == oracle => {}
            Ok(got) => failures.push(format!(
                "{} / {}: {}\n  expected {:?}\n  traced   {:?}",
                scenario.name, case.name, case.packet, case.expected, got
            )),
            Err(e) => failures.push(format!("{} / {}: trace failed: {e}", scenario.name, case.name)),
        }
    }
}

#[test]
fn rendered_rules_meet_every_scenario() {
    let mut failures = Vec::new();
    for scenario in scenarios::all() {
        let rendered = render(&scenario.state(), &scenario.config);
        check(&scenario, &rendered.ruleset, &mut failures);
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[tokio::test]
async fn rules_applied_to_the_fake_kernel_meet_every_scenario() {
    let mut failures = Vec::new();
    for scenario in scenarios::all() {
        let rendered = render(&scenario.state(), &scenario.config);
        let mut kernel = FakeKernel::new();
        let mut tx = Transaction::new(scenario.family);
        tx.create("kproxy-a", &rendered.ruleset, true);
        kernel.apply(&tx).await.unwrap_or_else(|e| panic!("{}: fake refused: {e}", scenario.name));
        let applied = kernel.table(scenario.family, "kproxy-a").expect("table created").clone();
        assert_eq!(applied, rendered.ruleset, "{}: the fake holds what was rendered", scenario.name);
        check(&scenario, &applied, &mut failures);
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn every_scenario_holds_with_another_masquerade_bit() {
    let mut failures = Vec::new();
    for mut scenario in scenarios::all() {
        scenario.config.masquerade_bit = 5;
        let rendered = render(&scenario.state(), &scenario.config);
        let text = kproxy_backend_nft::text::table_block("t", &rendered.ruleset);
        assert!(text.contains("0x00000020") && !text.contains("0x00004000"), "{}: the mark follows the bit", scenario.name);
        check(&scenario, &rendered.ruleset, &mut failures);
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
