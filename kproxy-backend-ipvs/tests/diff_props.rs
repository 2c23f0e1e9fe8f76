//! Syncing IPVS by diff is exact: after any sequence of Service and
//! EndpointSlice events, applying each sync's plan to the fake IPVS table
//! (which refuses what the kernel refuses) leaves exactly the desired
//! virtual servers and real servers, plus the draining ones: real servers
//! no longer wanted that still have TCP connections, at weight 0. A second
//! plan right after is empty, and nothing the proxy does not own is
//! touched.
//!
//! 64 cases of up to 24 events, applied in batches of 1 to 3.

use std::collections::BTreeMap;

use kproxy_backend_ipvs::diff::diff;
use kproxy_backend_ipvs::fake::FakeIpvs;
use kproxy_backend_ipvs::model::{Op, RealServer, RsKey, Scheduler, VirtualServer, VsKey};
use kproxy_backend_ipvs::render::render_ipvs;
use kproxy_oracle::fixtures as fx;
use kproxy_core::{IpFamily, Protocol, ProxyState};
use kproxy_testkit::events::{event, step, World};
use proptest::prelude::*;

/// Someone else's virtual server, which no sync may touch.
fn foreign() -> VsKey {
    VsKey { protocol: Protocol::Tcp, addr: "203.0.113.9".parse().unwrap(), port: 443 }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn plans_reach_the_desired_table(events in prop::collection::vec(event(), 1..24), batch in 1usize..4, busy in any::<u64>()) {
        let config = fx::config(IpFamily::V4);
        let mut state = ProxyState::new(IpFamily::V4, fx::NODE_NAME);
        state.on_node(&fx::node());
        state.apply();
        let mut kernel = FakeIpvs::new();
        let other = VirtualServer { key: foreign(), scheduler: Scheduler::Wlc, persistence: None };
        kernel.apply(&[Op::AddService(other)]);
        let mut world = World { services: Default::default(), slices: Default::default() };
        for (round, chunk) in events.chunks(batch).enumerate() {
            for e in chunk {
                step(&mut world, &mut state, e);
            }
            state.apply();
            let desired = render_ipvs(&state, &config, Scheduler::Rr);
            // Some real servers have connections (chosen by `busy`).
            let before = kernel.current();
            for (key, svc) in &before {
                for (i, d) in svc.dests.iter().enumerate() {
                    let on = busy.rotate_left((round * 7 + i) as u32) & 1 == 1;
                    kernel.set_connections(key, &d.server.key, on as u32, 0);
                }
            }
            let before = kernel.current();
            let plan = diff(&before, &desired.services, |k| *k != foreign());
            let failed = kernel.apply(&plan.ops);
            prop_assert!(failed.is_empty(), "the fake refused: {:?}", failed);
            let after = kernel.current();
            prop_assert_eq!(after.get(&foreign()).map(|s| s.server), Some(other), "a foreign virtual server was touched");
            for (key, want) in &desired.services {
                let have = after.get(key);
                prop_assert!(have.is_some(), "{} missing", key);
                let have = have.unwrap();
                prop_assert_eq!(have.server, want.server);
                let mut expected: BTreeMap<RsKey, u32> = want.dests.clone();
                // Kept draining: was there, unwanted, TCP/SCTP, connected.
                for d in before.get(key).map(|s| s.dests.as_slice()).unwrap_or_default() {
                    if !want.dests.contains_key(&d.server.key) && key.protocol != Protocol::Udp && d.connections() > 0 {
                        expected.insert(d.server.key, 0);
                    }
                }
                let got: BTreeMap<RsKey, u32> = have.dests.iter().map(|d| (d.server.key, d.server.weight)).collect();
                prop_assert_eq!(got, expected, "real servers of {}", key);
            }
            for key in after.keys() {
                prop_assert!(*key == foreign() || desired.services.contains_key(key), "{} left behind", key);
            }
            let again = diff(&after, &desired.services, |k| *k != foreign());
            prop_assert!(again.ops.is_empty(), "a second plan is not empty: {:?}", again.ops);
        }
    }
}

#[test]
fn a_drained_real_server_is_deleted_and_udp_ones_go_at_once() {
    let vs = |protocol| VsKey { protocol, addr: "172.30.0.1".parse().unwrap(), port: 80 };
    let rs = RsKey { addr: "10.180.0.1".parse().unwrap(), port: 8080 };
    let mut kernel = FakeIpvs::new();
    for p in [Protocol::Tcp, Protocol::Udp] {
        kernel.apply(&[Op::AddService(VirtualServer { key: vs(p), scheduler: Scheduler::Rr, persistence: None }), Op::AddDest(vs(p), RealServer { key: rs, weight: 1 })]);
        kernel.set_connections(&vs(p), &rs, 2, 1);
    }
    let mut desired = BTreeMap::new();
    for p in [Protocol::Tcp, Protocol::Udp] {
        let server = VirtualServer { key: vs(p), scheduler: Scheduler::Rr, persistence: None };
        desired.insert(vs(p), kproxy_backend_ipvs::render::DesiredService { server, dests: BTreeMap::new(), owner: kproxy_core::ServicePortName::new("ns", "s", "p", p) });
    }
    let plan = diff(&kernel.current(), &desired, |_| true);
    assert_eq!(plan.ops, vec![Op::EditDest(vs(Protocol::Tcp), RealServer { key: rs, weight: 0 }), Op::DelDest(vs(Protocol::Udp), rs)]);
    assert_eq!(plan.draining.len(), 1);
    kernel.apply(&plan.ops);
    // Still connected: nothing to do but wait.
    assert_eq!(diff(&kernel.current(), &desired, |_| true).ops, vec![]);
    kernel.set_connections(&vs(Protocol::Tcp), &rs, 0, 0);
    let plan = diff(&kernel.current(), &desired, |_| true);
    assert_eq!(plan.ops, vec![Op::DelDest(vs(Protocol::Tcp), rs)]);
    assert!(plan.draining.is_empty());
}
