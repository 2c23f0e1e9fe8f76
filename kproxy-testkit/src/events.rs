//! Random cluster events for property tests: small numbers that build
//! Services and EndpointSlices of every shape (the incremental tests of the
//! nftables and iptables backends, on fakes and on the real kernel).

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy_oracle::fixtures::{self as fx, service, slice, EndpointState};
use kproxy_core::ProxyState;
use proptest::prelude::*;

/// A service's shape, from a few small numbers.
#[derive(Debug, Clone)]
pub struct SvcSpec {
    /// 0 ClusterIP, 1 NodePort, 2 LoadBalancer.
    pub kind: u8,
    /// A second, UDP port.
    pub udp: bool,
    /// `externalTrafficPolicy: Local` (NodePort and LoadBalancer only).
    pub etp_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub itp_local: bool,
    /// ClientIP affinity timeout.
    pub affinity: Option<i32>,
    /// An externalIP.
    pub external_ip: bool,
    /// 0 no source ranges, 1 one range, 2 a range and a bogus entry.
    pub ranges: u8,
    /// 0 its own addresses; 1 also the externalIP every such Service
    /// shares ([`SHARED_EXTERNAL_IP`]); 2 the ClusterIP every such Service
    /// shares ([`SHARED_CLUSTER_IP`]). Only [`sharing_event`] makes these.
    pub shared: u8,
}

/// The externalIP of Services with `shared: 1` (the API server allows one
/// externalIP in many Services).
pub const SHARED_EXTERNAL_IP: &str = "192.168.99.200";

/// The ClusterIP of Services with `shared: 2` (the API server never gives
/// one ClusterIP twice, but a proxy must not depend on it).
pub const SHARED_CLUSTER_IP: &str = "172.30.0.250";

/// One cluster event.
#[derive(Debug, Clone)]
pub enum Event {
    /// Service `svcN` created or changed.
    Service(u8, SvcSpec),
    /// Service `svcN` deleted.
    DeleteService(u8),
    /// Slice `svcN-M` written with endpoints (IP suffix, local, state).
    Slice(u8, u8, Vec<(u8, bool, u8)>),
    /// Slice `svcN-M` deleted.
    DeleteSlice(u8, u8),
}

/// A random Service shape.
pub fn spec() -> impl Strategy<Value = SvcSpec> {
    (0u8..3, any::<bool>(), any::<bool>(), any::<bool>(), prop::option::of(prop::sample::select(vec![60, 3600])), any::<bool>(), 0u8..3)
        .prop_map(|(kind, udp, etp_local, itp_local, affinity, external_ip, ranges)| SvcSpec {
            kind,
            udp,
            etp_local,
            itp_local,
            affinity,
            external_ip,
            ranges,
            shared: 0,
        })
}

/// A random cluster event.
pub fn event() -> impl Strategy<Value = Event> {
    events_of(spec().boxed())
}

/// A random cluster event where Services often share an externalIP or a
/// ClusterIP and port, so that claims on one destination are taken,
/// contested and released in every order.
pub fn sharing_event() -> impl Strategy<Value = Event> {
    events_of((spec(), 0u8..3).prop_map(|(s, shared)| SvcSpec { shared, ..s }).boxed())
}

fn events_of(spec: BoxedStrategy<SvcSpec>) -> impl Strategy<Value = Event> {
    prop_oneof![
        3 => (0u8..6, spec).prop_map(|(i, s)| Event::Service(i, s)),
        1 => (0u8..6).prop_map(Event::DeleteService),
        4 => (0u8..6, 0u8..2, prop::collection::vec((0u8..12, any::<bool>(), 0u8..4), 0..5)).prop_map(|(i, j, e)| Event::Slice(i, j, e)),
        1 => (0u8..6, 0u8..2).prop_map(|(i, j)| Event::DeleteSlice(i, j)),
    ]
}

/// The Service `ns/svcI` of shape `s`.
pub fn build_service(i: u8, s: &SvcSpec) -> Service {
    let name = format!("svc{i}");
    let node_port = if s.kind > 0 { 30000 + i32::from(i) } else { 0 };
    let cluster_ip = if s.shared == 2 { SHARED_CLUSTER_IP.to_string() } else { format!("172.30.0.{}", 10 + i) };
    let mut b = service("ns", &name, &[&cluster_ip]).port("p80", 80, "TCP", node_port);
    if s.udp {
        b = b.port("dns", 53, "UDP", 0);
    }
    match s.kind {
        1 => b = b.type_("NodePort"),
        2 => b = b.load_balancer(&[&format!("1.2.3.{}", 10 + i)]),
        _ => {}
    }
    match (s.external_ip, s.shared == 1) {
        (true, true) => b = b.external_ips(&[&format!("192.168.99.{}", 10 + i), SHARED_EXTERNAL_IP]),
        (false, true) => b = b.external_ips(&[SHARED_EXTERNAL_IP]),
        (true, false) => b = b.external_ips(&[&format!("192.168.99.{}", 10 + i)]),
        (false, false) => {}
    }
    if s.etp_local && s.kind > 0 {
        b = b.external_policy_local(31000 + i32::from(i));
    }
    if s.itp_local {
        b = b.internal_policy_local();
    }
    if let Some(t) = s.affinity {
        b = b.affinity(t);
    }
    match s.ranges {
        1 => b = b.source_ranges(&[fx::SOURCE_RANGE]),
        2 => b = b.source_ranges(&["192.168.0.0/16", "bogus"]),
        _ => {}
    }
    b.build()
}

/// The slice `svcI-J` with endpoints (IP suffix, local, state index).
pub fn build_slice(i: u8, j: u8, eps: &[(u8, bool, u8)]) -> EndpointSlice {
    let mut b = slice("ns", &format!("svc{i}"), &format!("svc{i}-{j}"), "IPv4").port("p80", 8080, "TCP").port("dns", 53, "UDP");
    for (ip, local, state) in eps {
        let node = if *local { fx::NODE_NAME } else { fx::OTHER_NODE };
        let state = [EndpointState::Ready, EndpointState::ServingTerminating, EndpointState::Terminating, EndpointState::NotReady][*state as usize];
        b = b.endpoint(&format!("10.180.{}.{}", u8::from(!*local), ip), node, state);
    }
    b.build()
}

/// The objects the events have made so far.
#[derive(Debug, Default)]
pub struct World {
    /// The Services, by index.
    pub services: [Option<Service>; 6],
    /// The slices, by (service, slice).
    pub slices: std::collections::BTreeMap<(u8, u8), EndpointSlice>,
}

/// Applies `e` to the world and hands the change to `state`.
pub fn step(world: &mut World, state: &mut ProxyState, e: &Event) {
    match apply(world, e) {
        Some(Change::Service(old, new)) => {
            state.on_service(old.as_deref(), new.as_deref());
        }
        Some(Change::Slice(slice, removed)) => {
            state.on_endpoint_slice(&slice, removed);
        }
        None => {}
    }
}

/// [`step`] for a proxier: applies `e` to the world and hands the change
/// to `p`'s handlers.
pub fn step_proxier<P: kproxy_core::Proxier + ?Sized>(world: &mut World, p: &mut P, e: &Event) {
    match apply(world, e) {
        Some(Change::Service(old, new)) => {
            p.on_service_update(old.as_deref(), new.as_deref());
        }
        Some(Change::Slice(slice, removed)) => {
            p.on_endpoint_slice_update(&slice, removed);
        }
        None => {}
    }
}

/// What an event changed: a Service (previous, current) or a slice
/// (the slice, whether it was removed).
enum Change {
    Service(Option<Box<Service>>, Option<Box<Service>>),
    Slice(Box<EndpointSlice>, bool),
}

/// Applies `e` to the world; None when it changed nothing (deleting what
/// does not exist).
fn apply(world: &mut World, e: &Event) -> Option<Change> {
    match e {
        Event::Service(i, s) => {
            let new = build_service(*i, s);
            let old = world.services[*i as usize].replace(new.clone());
            Some(Change::Service(old.map(Box::new), Some(Box::new(new))))
        }
        Event::DeleteService(i) => world.services[*i as usize].take().map(|old| Change::Service(Some(Box::new(old)), None)),
        Event::Slice(i, j, eps) => {
            let s = build_slice(*i, *j, eps);
            world.slices.insert((*i, *j), s.clone());
            Some(Change::Slice(Box::new(s), false))
        }
        Event::DeleteSlice(i, j) => world.slices.remove(&(*i, *j)).map(|s| Change::Slice(Box::new(s), true)),
    }
}

/// Hands everything in `world` to `p` as additions.
pub fn replay<P: kproxy_core::Proxier + ?Sized>(world: &World, p: &mut P) {
    for s in world.services.iter().flatten() {
        p.on_service_update(None, Some(s));
    }
    for s in world.slices.values() {
        p.on_endpoint_slice_update(s, false);
    }
}
