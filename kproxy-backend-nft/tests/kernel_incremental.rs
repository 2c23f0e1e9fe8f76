//! Incremental transactions against the real kernel: after random cluster
//! events, each journal transaction must be accepted by `nft` and leave the
//! kernel's table equal (by listing) to a table created from scratch with
//! the same ruleset. Needs root.

use kproxy_backend_nft::kernel::{Kernel, NftCli, NftKernel, Outline};
use kproxy_backend_nft::transaction::Transaction;
use kproxy_backend_nft::{Renderer, Structure};
use kproxy_oracle::fixtures as fx;
use kproxy_core::{IpFamily, ProxyState};
use kproxy_testkit::{kernel_tests_enabled, Netns};
use proptest::prelude::*;

use kproxy_testkit::events::{event, step, World};

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn journal_transactions_apply_in_the_kernel(events in prop::collection::vec(event(), 1..16)) {
        if !kernel_tests_enabled("journal_transactions_apply_in_the_kernel") {
            return Ok(());
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let ns = Netns::new("incr").unwrap();
        let reference_ns = Netns::new("incr-ref").unwrap();
        // The table under test takes element changes over netlink; the
        // reference is created by plain `nft`.
        let mut nft = NftKernel::in_netns(ns.name()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut reference = NftCli::in_netns(reference_ns.name());
        let config = fx::config(IpFamily::V4);
        let mut state = ProxyState::new(IpFamily::V4, fx::NODE_NAME);
        state.on_node(&fx::node());
        let mut renderer = Renderer::new(config);
        let mut world = World { services: Default::default(), slices: Default::default() };
        state.apply();
        renderer.refresh_all(&state);
        renderer.take_journal();
        let mut tx = Transaction::new(IpFamily::V4);
        tx.create("kproxy-a", renderer.ruleset(), true);
        rt.block_on(nft.apply(&tx)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut committed = Structure::of(renderer.ruleset());
        for e in &events {
            step(&mut world, &mut state, e);
            let changes = state.apply();
            let updated: Vec<_> = changes.updated_services().into_iter().cloned().collect();
            renderer.refresh(&state, updated.iter());
            let tx = renderer.take_journal().transaction("kproxy-a", &committed, renderer.ruleset());
            if let Err(err) = rt.block_on(nft.apply(&tx)) {
                return Err(TestCaseError::fail(format!("nft refused: {err}\n{}", tx.to_nft())));
            }
            committed = Structure::of(renderer.ruleset());
        }
        // The outline read over netlink is what was committed.
        let outline = rt.block_on(nft.outline(IpFamily::V4, "kproxy-a")).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let outline = outline.expect("the table exists");
        let expected = Outline::of(renderer.ruleset());
        prop_assert_eq!(outline.shape(), expected.shape());
        prop_assert_eq!(rt.block_on(nft.tables(IpFamily::V4)).unwrap(), vec!["kproxy-a".to_string()]);
        // The incrementally built table lists exactly like a fresh one.
        let mut fresh = Transaction::new(IpFamily::V4);
        fresh.create("kproxy-a", renderer.ruleset(), true);
        rt.block_on(reference.apply(&fresh)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        // The kernel's digests depend on content only: the incrementally
        // built table has the digests of a fresh one.
        let mut reference_netlink = NftKernel::in_netns(reference_ns.name()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let fresh_outline = rt.block_on(reference_netlink.outline(IpFamily::V4, "kproxy-a")).unwrap().expect("created");
        prop_assert_eq!(&outline.digests, &fresh_outline.digests);
        // nft lists sets in creation order; compare the blocks sorted.
        let list = |ns: &Netns| {
            let text = ns.exec(&["nft", "list", "table", "ip", "kproxy-a"]).unwrap();
            // nft also lists interval-set elements in insertion order.
            let normalize = |block: &str| match block.split_once("elements = {") {
                Some((head, elements)) => {
                    let mut items: Vec<&str> = elements.split(',').map(|e| e.trim_matches(['\n', '}', ' ', '\t'])).collect();
                    items.sort_unstable();
                    format!("{head}elements = {{ {} }}", items.join(", "))
                }
                None => block.to_string(),
            };
            let mut blocks: Vec<String> =
                text.split("\n\n").map(|b| normalize(b.trim_matches(['\n', '}', ' ', '\t']))).collect();
            blocks.sort();
            blocks
        };
        let (incremental, fresh) = (list(&ns), list(&reference_ns));
        let only_incremental: Vec<&String> = incremental.iter().filter(|b| !fresh.contains(b)).collect();
        let only_fresh: Vec<&String> = fresh.iter().filter(|b| !incremental.contains(b)).collect();
        prop_assert!(
            only_incremental.is_empty() && only_fresh.is_empty(),
            "the kernel differs from a fresh table:\nincremental only: {only_incremental:#?}\nfresh only: {only_fresh:#?}"
        );
    }
}
