//! Names as hostile as hand-written objects can carry, for checking that
//! no name reaches rule text it could break or extend.

use kproxy_oracle::fixtures::{self as fx, service, slice, EndpointState};
use kproxy_core::{IpFamily, ProxyState};
use proptest::prelude::*;

/// Names up to 253 characters made of `pieces` (quotes, braces, newlines,
/// comment markers, whatever the dataplane's syntax fears).
pub fn hostile_name(pieces: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(pieces), 1..60).prop_map(|parts| {
        let mut s = parts.concat();
        if s.len() > 253 {
            let cut = (0..=253).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
            s.truncate(cut);
        }
        s
    })
}

/// An applied IPv4 state with one LoadBalancer Service per (namespace,
/// name, port name): NodePort, source range, affinity, one local endpoint.
pub fn hostile_state(names: &[(String, String, String)]) -> ProxyState {
    let mut state = ProxyState::new(IpFamily::V4, fx::NODE_NAME);
    state.on_node(&fx::node());
    for (i, (ns, name, port)) in names.iter().enumerate() {
        let i = i as u8;
        let svc = service(ns, name, &[&format!("172.30.5.{i}")])
            .port(port, 80, "TCP", 30_100 + i32::from(i))
            .load_balancer(&[&format!("1.2.5.{i}")])
            .source_ranges(&[fx::SOURCE_RANGE])
            .affinity(60)
            .build();
        state.on_service(None, Some(&svc));
        let sl = slice(ns, name, &format!("{name}-x"), "IPv4").port(port, 8080, "TCP").endpoint(&format!("10.180.5.{i}"), fx::NODE_NAME, EndpointState::Ready).build();
        state.on_endpoint_slice(&sl, false);
    }
    state.apply();
    state
}
