//! Partial syncs are exact: after any sequence of Service and
//! EndpointSlice events synced in batches, the incremental renderer equals
//! the whole-state rendering (and so do its no-local-endpoint counts), and
//! the fake kernel (IPVS table, ipsets,
//! dummy addresses) equals what one full sync of the final state writes
//! into an empty one. No partial sync rewrites the iptables rules.
//!
//! 64 cases of up to 24 events, applied in batches of 1 to 3.

use kproxy_backend_ipvs::host::FakeHost;
use kproxy_backend_ipvs::render::{no_local_endpoints, render_ipvs};
use kproxy_backend_ipvs::rules::render_sets;
use kproxy_backend_ipvs::{IpvsOptions, IpvsProxier, IpvsDataplane};
use kproxy_oracle::fixtures as fx;
use kproxy_core::{IpFamily, Proxier, SyncRequest};
use kproxy_testkit::events::{sharing_event, replay, step_proxier, World};
use proptest::prelude::*;

fn proxier() -> IpvsProxier<FakeHost> {
    let mut p = IpvsDataplane::proxier(fx::NODE_NAME, fx::config(IpFamily::V4), FakeHost::new(), IpvsOptions::default()).unwrap();
    p.on_node_update(&fx::node());
    p
}

async fn run(events: Vec<kproxy_testkit::events::Event>, batch: usize) -> Result<(), TestCaseError> {
    let config = fx::config(IpFamily::V4);
    let mut p = proxier();
    p.sync(SyncRequest { full: true }).await.unwrap();
    let mut world = World::default();
    for chunk in events.chunks(batch) {
        for e in chunk {
            step_proxier(&mut world, &mut p, e);
        }
        p.sync(SyncRequest { full: false }).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(!p.stats().rules_written, "a partial sync rewrote the rules");
        prop_assert_eq!(p.desired(), render_ipvs(p.state(), &config, Default::default()), "the renderer drifted");
        prop_assert_eq!(p.renderer().sets(), render_sets(p.state(), &config), "the sets drifted");
        prop_assert_eq!(p.renderer().no_local_endpoints(), no_local_endpoints(p.state()), "the no-local counts drifted");

        let mut fresh = proxier();
        replay(&world, &mut fresh);
        fresh.sync(SyncRequest { full: true }).await.unwrap();
        let (got, want) = (p.kernel(), fresh.kernel());
        prop_assert_eq!(got.ipvs.current(), want.ipvs.current(), "IPVS tables differ");
        prop_assert_eq!(&got.ipsets, &want.ipsets, "ipsets differ");
        prop_assert_eq!(got.addresses(), want.addresses(), "dummy addresses differ");
        let filter = |h: &FakeHost| h.iptables.save(IpFamily::V4, kproxy_backend_iptables::Table::Filter);
        prop_assert_eq!(filter(got), filter(want), "filter rules differ");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn partial_syncs_reach_what_a_full_sync_writes(events in prop::collection::vec(sharing_event(), 1..24), batch in 1usize..4) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(run(events, batch))?;
    }
}
