//! Partial syncs are exact: after any sequence of Service and
//! EndpointSlice events, the partial restores kproxy writes take the fake
//! iptables (which checks references, `-D` targets and `-X` preconditions
//! as the kernel does) to the same rules as one full restore of the final
//! state, up to the order of rules inside the shared chains; and the
//! NodePort jump stays the last rule of nat `KUBE-SERVICES`.
//!
//! 64 cases of up to 24 events, applied in batches of 1 to 3.

use std::collections::BTreeMap;

use kproxy_backend_iptables::fake::FakeIptables;
use kproxy_backend_iptables::render::{jumps, Renderer, Table};
use kproxy_backend_iptables::{names, restore};
use kproxy_oracle::fixtures as fx;
use kproxy_core::{IpFamily, ProxyState};
use proptest::prelude::*;

use kproxy_testkit::events::{sharing_event, step, World};

/// Each chain's rules as sorted text: equal when the same rules are there.
fn canonical(kernel: &FakeIptables) -> BTreeMap<(Table, String), Vec<String>> {
    let mut out = BTreeMap::new();
    for table in Table::ALL {
        for (name, rules) in &kernel.table(IpFamily::V4, table).chains {
            let mut text: Vec<String> = rules.iter().map(|r| r.args()).collect();
            text.sort();
            out.insert((table, name.clone()), text);
        }
    }
    out
}

fn full(renderer: &Renderer) -> FakeIptables {
    let mut k = FakeIptables::new();
    k.restore(IpFamily::V4, &restore::full(renderer, &Default::default(), &jumps())).unwrap();
    k
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn partial_restores_reach_the_full_state(events in prop::collection::vec(sharing_event(), 1..24), batch in 1usize..4) {
        let config = fx::config(IpFamily::V4);
        let mut state = ProxyState::new(IpFamily::V4, fx::NODE_NAME);
        state.on_node(&fx::node());
        state.apply();
        let mut renderer = Renderer::new(config);
        renderer.refresh_all(&state);
        renderer.take_journal();
        let mut kernel = full(&renderer);
        let mut world = World { services: Default::default(), slices: Default::default() };
        for chunk in events.chunks(batch) {
            for e in chunk {
                step(&mut world, &mut state, e);
            }
            let changes = state.apply();
            let updated: Vec<_> = changes.updated_services().into_iter().cloned().collect();
            renderer.refresh(&state, updated.iter());
            let journal = renderer.take_journal();
            let text = restore::partial(&renderer, &journal, &[]);
            if let Err(e) = kernel.restore(IpFamily::V4, &text) {
                return Err(TestCaseError::fail(format!("the fake refused a partial restore: {e}\n{text}")));
            }
            prop_assert_eq!(canonical(&kernel), canonical(&full(&renderer)), "partial restores drifted from a full one");
            // The full restore's text reads back as exactly the typed rules.
            let fresh = full(&renderer);
            let rs = renderer.ruleset();
            for table in Table::ALL {
                for (name, rules) in rs.table(table) {
                    prop_assert_eq!(&fresh.table(IpFamily::V4, table).chains[name], rules, "{} reads back differently", name);
                }
            }
            let services = &kernel.table(IpFamily::V4, Table::Nat).chains[names::SERVICES];
            let last = services.last().map(|r| r.args()).unwrap_or_default();
            prop_assert!(last.ends_with(&format!("-j {}", names::NODEPORTS)), "nat KUBE-SERVICES does not end with the NodePort jump: {last}");
        }
    }
}
