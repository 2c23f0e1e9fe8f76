//! Incremental rendering is exact: after any sequence of Service and
//! EndpointSlice events, re-rendering only the changed services gives the
//! same ruleset as rendering everything from scratch (in canonical form: the
//! incremental renderer keeps emptied slot maps), and the journal's
//! transaction takes the fake kernel from the previous ruleset to exactly
//! the new one (the fake checks every reference, as nft does).
//!
//! 48 cases of up to 24 events each.

use kproxy_backend_nft::fake::FakeKernel;
use kproxy_backend_nft::kernel::Kernel;
use kproxy_backend_nft::transaction::Transaction;
use kproxy_backend_nft::{render, Renderer, Structure};
use kproxy_oracle::fixtures as fx;
use kproxy_core::{IpFamily, ProxyState};
use proptest::prelude::*;

use kproxy_testkit::events::{event, step, World};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn incremental_rendering_and_journals_are_exact(events in prop::collection::vec(event(), 1..24), batch in 1usize..4) {
        let config = fx::config(IpFamily::V4);
        let mut state = ProxyState::new(IpFamily::V4, fx::NODE_NAME);
        state.on_node(&fx::node());
        let mut renderer = Renderer::new(config.clone());
        let mut world = World { services: Default::default(), slices: Default::default() };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut kernel = FakeKernel::new();
        state.apply();
        renderer.refresh_all(&state);
        renderer.take_journal();
        let mut tx = Transaction::new(IpFamily::V4);
        tx.create("kproxy-a", renderer.ruleset(), true);
        rt.block_on(kernel.apply(&tx)).unwrap();
        let mut committed = Structure::of(renderer.ruleset());

        for chunk in events.chunks(batch) {
            for e in chunk {
                step(&mut world, &mut state, e);
            }
            let changes = state.apply();
            let updated: Vec<_> = changes.updated_services().into_iter().cloned().collect();
            renderer.refresh(&state, updated.iter());
            let expected = render(&state, &config).ruleset;
            prop_assert_eq!(renderer.ruleset().pruned(), expected.pruned(), "incremental differs from full render");
            let tx = renderer.take_journal().transaction("kproxy-a", &committed, renderer.ruleset());
            if let Err(e) = rt.block_on(kernel.apply(&tx)) {
                return Err(TestCaseError::fail(format!("fake refused the journal: {e}\n{}", tx.to_nft())));
            }
            prop_assert_eq!(kernel.table(IpFamily::V4, "kproxy-a").unwrap(), renderer.ruleset(), "the kernel drifted from the renderer");
            committed = Structure::of(renderer.ruleset());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Services that share an externalIP or a ClusterIP and port, created,
    /// changed and deleted in any order: whoever owns the destination, the
    /// incremental renderer agrees with a whole-state rendering after every
    /// sync, so a destination released by its owner is programmed for the
    /// next claimant at once (it once stayed unprogrammed, also after a
    /// full resync).
    #[test]
    fn released_claims_go_to_the_next_claimant(events in prop::collection::vec(kproxy_testkit::events::sharing_event(), 1..32), batch in 1usize..3) {
        let config = fx::config(IpFamily::V4);
        let mut state = ProxyState::new(IpFamily::V4, fx::NODE_NAME);
        state.on_node(&fx::node());
        state.apply();
        let mut renderer = Renderer::new(config.clone());
        renderer.refresh_all(&state);
        let mut world = World::default();
        for chunk in events.chunks(batch) {
            for e in chunk {
                step(&mut world, &mut state, e);
            }
            let changes = state.apply();
            let updated: Vec<_> = changes.updated_services().into_iter().cloned().collect();
            renderer.refresh(&state, updated.iter());
            let expected = render(&state, &config).ruleset;
            prop_assert_eq!(renderer.ruleset().pruned(), expected.pruned(), "incremental differs from full render");
        }
    }
}
