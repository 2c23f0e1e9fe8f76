//! Property tests of change tracking: the Service and EndpointSlice
//! trackers, the maps they feed, [`ProxyState`], and the conversions
//! underneath them.
//!
//! Every property runs for both [`IpFamily::V4`] and [`IpFamily::V6`].
//!
//! 1. **Incremental equals from-scratch** (`incremental_equals_from_scratch`).
//!    A random sequence of up to 64 Service and EndpointSlice events over a
//!    small universe (3 namespaces x 4 services, up to 3 slices per service
//!    whose `kubernetes.io/service-name` may point at another service or be
//!    missing; small address pools so that duplicates across slices,
//!    leading-zero spellings and wrong-family addresses happen) is turned
//!    into exactly the calls an informer makes:
//!    `ServiceChangeTracker::update(previous, current)` with the cached
//!    previous version (`None` for an add or as current for a delete) and
//!    `EndpointsChangeTracker::update(slice, removed)` with the last known
//!    version for a delete. Events that re-deliver an earlier version of an
//!    object exercise changes that collapse back to where they started.
//!    `apply` is called at random points. Checked:
//!    - at every `apply`, and once more at the end, the incrementally
//!      maintained `ServiceMap` and `EndpointsMap` equal the maps built from
//!      scratch (fresh trackers fed each live object once); those equal an
//!      oracle built without trackers from `convert::service_ports`,
//!      `convert::slice_info` and `convert::merge_slices`; and the merge is
//!      checked against every slice's own copies without `merge_slices`
//!      (each merged endpoint is one of its address's copies, no copy ranks
//!      higher by non-terminating-then-local, no address is lost);
//!    - `ProxyState`, fed the same calls, holds the same maps and reports the
//!      same changes;
//!    - each apply's report matches the actual map difference: every Service
//!      whose entries changed is in `updated_services`;
//!      `deleted_udp_cluster_ips` is exactly the ClusterIPs of removed
//!      UDP/SCTP ports; `stale_endpoints` and `newly_active` are exactly
//!      upstream's conntrack rules applied to the before/after maps; trigger
//!      times are only reported for updated Services;
//!    - after every event, each tracker's `pending()` (and
//!      `ProxyState::pending_counts`) is exactly the number of Services whose
//!      map entries differ from the oracle's, and every `update`/`on_*` call
//!      returns whether anything is pending.
//! 2. **Batch equals one-by-one** (`batch_equals_one_by_one`). The same
//!    event sequence applied with a single `apply` at the end, and with an
//!    `apply` after every event, gives equal maps (for the trackers and for
//!    `ProxyState`).
//! 3. **Malformed objects never panic and never spoil others**
//!    (`junk_never_panics_nor_spoils_good_objects`). Junk objects, in which
//!    each field is junk with probability 1/4 (so most carry some junk and
//!    many still reach the maps): unparsable, odd and overlong IPs, IPv4 with
//!    leading zeros, ports and nodePorts as any `i32` (0, negative, above
//!    65535), invalid CIDRs in `loadBalancerSourceRanges` and pod CIDRs,
//!    duplicate port names and numbers, names up to 400 characters with
//!    quotes, braces, semicolons, newlines and non-ASCII, empty or missing
//!    names, namespaces and specs, empty or wrong-family endpoint addresses,
//!    protocols such as `"ICMP"` or `""`, junk address types and
//!    trigger-time annotations, junk Node objects. Up to 16 junk events are
//!    fed through the trackers and `ProxyState` before, and up to 16 after,
//!    a fixed set of good objects living in namespaces junk never uses; every
//!    object also goes straight through `convert::service_ports`,
//!    `convert::slice_info` and `convert::node_info`. Nothing may panic; the
//!    good namespaces' entries must be exactly what the good objects produce
//!    when fed alone; everything property 1 checks must still hold for the
//!    whole maps, junk included; `ProxyState` must keep its own node name and
//!    `node_info` must not repeat an address. A companion property
//!    (`junk_fields_never_spoil_good_fields`) appends junk ports to a good
//!    Service and junk ports and endpoints to a good EndpointSlice: every
//!    good port must convert exactly as before, and every good port's
//!    endpoints must still come first, unchanged.
//! 4. **Map invariants**, checked on every map any of the above produces:
//!    each endpoint list is non-empty, strictly sorted by `(ip, port)` (so
//!    no `ip:port` appears twice) and holds only addresses of the tracker's
//!    family; every `ServiceMap` entry's `cluster_ip`, `external_ips`,
//!    `load_balancer_vips` and source ranges are of the family, the address
//!    lists are sorted and deduplicated, ports and NodePorts are non-zero,
//!    names are non-empty and no longer than `MAX_NAME_LEN`.
//!
//! Case counts: 128 cases for each of the three sequence properties, 256
//! for the cheap field-level one; the whole file takes about 5 s in debug
//! mode on two cores (7 s single-threaded). Failure persistence is off so
//! that no `proptest-regressions` file is written next to this one; a
//! failing case is printed, shrunk, in full. `PROPTEST_CASES` does not
//! override these counts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Node, NodeAddress, NodeSpec, NodeStatus, Service,
    ServicePort, ServiceSpec, ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint as ApiEndpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode, ForZone,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{select, subsequence, Index};
use proptest::test_runner::Config as ProptestConfig;

use kproxy_core::convert::{
    merge_slices, node_info, service_ports, slice_info, SliceInfo, HEADLESS_LABEL, MAX_NAME_LEN, SERVICE_NAME_LABEL,
    SERVICE_PROXY_NAME_LABEL, TRIGGER_TIME_ANNOTATION,
};
use kproxy_oracle::fixtures::{self, EndpointState};
use kproxy_core::tracker::{EndpointsUpdate, ServiceUpdate};
use kproxy_core::{
    Endpoint, EndpointsChangeTracker, EndpointsMap, IpFamily, NamespacedName, ProxyState, ServiceChangeTracker,
    ServiceMap, ServicePortInfo, ServicePortName, StateChanges,
};

/// The node the proxier runs on.
const NODE: &str = fixtures::NODE_NAME;
/// Both families; every property runs once per family.
const FAMILIES: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

/// The counts (128 and 256, see the file's docs) keep the whole file well
/// under 20 s in debug mode.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// The universe of well-formed objects (properties 1 and 2).
// ---------------------------------------------------------------------------

// Every strategy function returns a `BoxedStrategy`: unboxed, the nested
// value trees of the junk objects are large enough to overflow the 2 MiB
// stack of a test thread in debug builds.

static NAMESPACES: [&str; 3] = ["ns-0", "ns-1", "ns-2"];
static SERVICE_NAMES: [&str; 4] = ["svc-0", "svc-1", "svc-2", "svc-3"];
static SLICE_SUFFIXES: [&str; 3] = ["a", "b", "c"];
static PORT_NAMES: [Option<&str>; 4] = [None, Some("http"), Some("dns"), Some("metrics")];
static PROTOCOLS: [Option<&str>; 4] = [None, Some("TCP"), Some("UDP"), Some("SCTP")];
static SERVICE_PORT_NUMBERS: [i32; 4] = [53, 80, 443, 8080];
static NODE_PORTS: [Option<i32>; 4] = [None, Some(0), Some(30053), Some(30080)];
static V4_CLUSTER_IPS: [&str; 3] = ["172.30.0.1", "172.30.0.2", "172.30.7.9"];
static V6_CLUSTER_IPS: [&str; 3] = ["fd00::1", "fd00::2", "fd00::7:9"];
static SERVICE_TYPES: [Option<&str>; 5] = [
    None,
    Some("ClusterIP"),
    Some("NodePort"),
    Some("LoadBalancer"),
    Some("ExternalName"),
];
static EXTERNAL_IPS: [&str; 4] = ["192.168.99.1", "192.168.99.2", "fd00::99:1", "2001:db8::99"];
static LB_VIPS: [&str; 4] = ["1.2.3.4", "5.6.7.8", "2001:db8::1:4", "2001:db8::5:8"];
static IP_MODES: [Option<&str>; 3] = [None, Some("VIP"), Some("Proxy")];
static SOURCE_RANGES: [&str; 4] = ["203.0.113.0/25", "10.0.0.0/8", "2001:db8::/64", "fd00::/8"];
static POLICIES: [Option<&str>; 3] = [None, Some("Cluster"), Some("Local")];
static HEALTH_CHECK_PORTS: [Option<i32>; 3] = [None, Some(0), Some(30000)];
static AFFINITY_TIMEOUTS: [Option<i32>; 4] = [None, Some(0), Some(600), Some(86_401)];
/// Small pools so that the same endpoint shows up in several slices.
/// `010.180.0.1` is `10.180.0.1` and `fd00:10:0::1` is `fd00:10::1`, spelled
/// differently.
static V4_ENDPOINT_IPS: [&str; 5] = ["10.180.0.1", "10.180.0.2", "10.180.1.1", "10.180.1.2", "010.180.0.1"];
static V6_ENDPOINT_IPS: [&str; 5] = ["fd00:10::1", "fd00:10::2", "fd00:10::3", "fd00:10::4", "fd00:10:0::1"];
static ENDPOINT_PORT_NUMBERS: [Option<i32>; 4] = [Some(53), Some(80), Some(8080), None];
static NODE_NAMES: [Option<&str>; 3] = [Some("node-a"), Some("node-b"), None];
static ZONES: [&str; 2] = ["zone-a", "zone-b"];
static HINT_NODES: [&str; 2] = ["node-a", "node-b"];
/// Past, future (so it is reported), unparsable, before the epoch, beyond
/// what fits in `u64` nanoseconds (after 2554) and beyond that.
static TRIGGER_TIMES: [&str; 6] = [
    "2020-01-01T00:00:00Z",
    "2500-01-01T00:00:00Z",
    "2999-01-01T00:00:00Z",
    "not-a-time",
    "1900-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999999Z",
];

/// One informer event, before it is turned into tracker calls.
#[derive(Debug, Clone)]
enum Event {
    /// Add or update this Service.
    UpsertService(Box<Service>),
    /// Delete one of the live Services (if any).
    DeleteService(Index),
    /// Re-deliver an earlier version of some Service (exercises changes
    /// that end where they started).
    ReplayService(Index),
    /// Add or update this EndpointSlice.
    UpsertSlice(Box<EndpointSlice>),
    /// Delete one of the live slices (if any).
    DeleteSlice(Index),
    /// Re-deliver an earlier version of some slice.
    ReplaySlice(Index),
    /// This node's Node object changed.
    Node(Box<Node>),
    /// Apply pending changes.
    Apply,
}

/// Skewed towards the first namespace and services so that events collide.
fn arb_namespace() -> BoxedStrategy<usize> {
    prop_oneof![4 => Just(0), 1 => Just(1), 1 => Just(2)].boxed()
}

fn arb_service_name() -> BoxedStrategy<usize> {
    prop_oneof![3 => Just(0), 2 => Just(1), 1 => Just(2), 1 => Just(3)].boxed()
}

fn arb_cluster_ips() -> BoxedStrategy<(Option<String>, Option<Vec<String>>)> {
    let v4 = || select(&V4_CLUSTER_IPS[..]).prop_map(String::from);
    let v6 = || select(&V6_CLUSTER_IPS[..]).prop_map(String::from);
    prop_oneof![
        1 => Just((None, None)),
        1 => Just((Some("None".to_string()), Some(vec!["None".to_string()]))),
        1 => v4().prop_map(|ip| (Some(ip), None)),
        3 => v4().prop_map(|ip| (Some(ip.clone()), Some(vec![ip]))),
        3 => v6().prop_map(|ip| (Some(ip.clone()), Some(vec![ip]))),
        3 => (v4(), v6()).prop_map(|(a, b)| (Some(a.clone()), Some(vec![a, b]))),
        3 => (v6(), v4()).prop_map(|(a, b)| (Some(a.clone()), Some(vec![a, b]))),
    ]
    .boxed()
}

fn arb_service_port() -> BoxedStrategy<ServicePort> {
    (
        select(&PORT_NAMES[..]),
        select(&PROTOCOLS[..]),
        select(&SERVICE_PORT_NUMBERS[..]),
        select(&NODE_PORTS[..]),
    )
        .prop_map(|(name, protocol, port, node_port)| ServicePort {
            name: name.map(String::from),
            protocol: protocol.map(String::from),
            port,
            node_port,
            ..Default::default()
        })
        .boxed()
}

fn arb_skip_label() -> BoxedStrategy<Option<&'static str>> {
    prop_oneof![
        10 => Just(None),
        1 => Just(Some(SERVICE_PROXY_NAME_LABEL)),
        1 => Just(Some(HEADLESS_LABEL)),
    ]
    .boxed()
}

fn arb_service() -> BoxedStrategy<Service> {
    let identity = (arb_namespace(), arb_service_name(), arb_skip_label());
    let shape = (
        select(&SERVICE_TYPES[..]),
        arb_cluster_ips(),
        vec(arb_service_port(), 0..=3),
    );
    let extras = (
        subsequence(&EXTERNAL_IPS[..], 0..=2),
        vec((select(&LB_VIPS[..]), select(&IP_MODES[..])), 0..=2),
        option::of(subsequence(&SOURCE_RANGES[..], 0..=2)),
    );
    let policies = (
        select(&POLICIES[..]),
        select(&POLICIES[..]),
        select(&HEALTH_CHECK_PORTS[..]),
        option::weighted(0.3, select(&AFFINITY_TIMEOUTS[..])),
    );
    (identity, shape, extras, policies)
        .prop_map(
            |(
                (ns, name, skip),
                (type_, (cluster_ip, cluster_ips), ports),
                (external_ips, vips, ranges),
                (etp, itp, hc, affinity),
            )| {
                Service {
                    metadata: ObjectMeta {
                        namespace: Some(NAMESPACES[ns].to_string()),
                        name: Some(SERVICE_NAMES[name].to_string()),
                        labels: skip.map(|l| BTreeMap::from([(l.to_string(), "x".to_string())])),
                        ..Default::default()
                    },
                    spec: Some(ServiceSpec {
                        type_: type_.map(String::from),
                        cluster_ip,
                        cluster_ips,
                        ports: (!ports.is_empty()).then_some(ports),
                        external_ips: (!external_ips.is_empty())
                            .then(|| external_ips.iter().map(|s| s.to_string()).collect()),
                        load_balancer_source_ranges: ranges.map(|r| r.iter().map(|s| s.to_string()).collect()),
                        external_traffic_policy: etp.map(String::from),
                        internal_traffic_policy: itp.map(String::from),
                        health_check_node_port: hc,
                        session_affinity: affinity.map(|_| "ClientIP".to_string()),
                        session_affinity_config: affinity.flatten().map(|t| SessionAffinityConfig {
                            client_ip: Some(ClientIPConfig {
                                timeout_seconds: Some(t),
                            }),
                        }),
                        ..Default::default()
                    }),
                    status: (!vips.is_empty()).then(|| ServiceStatus {
                        load_balancer: Some(LoadBalancerStatus {
                            ingress: Some(
                                vips.iter()
                                    .map(|(ip, mode)| LoadBalancerIngress {
                                        ip: Some(ip.to_string()),
                                        ip_mode: mode.map(String::from),
                                        ..Default::default()
                                    })
                                    .collect(),
                            ),
                        }),
                        ..Default::default()
                    }),
                }
            },
        )
        .boxed()
}

/// An endpoint address, resolved once the slice's address type is known:
/// an index into the pool of the slice's family, or (rarely) of the other.
#[derive(Debug, Clone, Copy)]
struct PoolAddress {
    index: usize,
    other_family: bool,
}

impl PoolAddress {
    fn resolve(self, address_type: &str) -> String {
        let v6 = (address_type == "IPv6") != self.other_family;
        let pool = if v6 { &V6_ENDPOINT_IPS } else { &V4_ENDPOINT_IPS };
        pool[self.index].to_string()
    }
}

/// An endpoint whose addresses are still [`PoolAddress`]es.
type PendingEndpoint = (Vec<PoolAddress>, ApiEndpoint);

fn arb_endpoint() -> BoxedStrategy<PendingEndpoint> {
    let ip = || {
        (0..V4_ENDPOINT_IPS.len(), proptest::bool::weighted(0.1))
            .prop_map(|(index, other_family)| PoolAddress { index, other_family })
    };
    let addresses = prop_oneof![
        8 => ip().prop_map(|a| vec![a]),
        1 => Just(Vec::new()),
        1 => (ip(), ip()).prop_map(|(a, b)| vec![a, b]),
    ];
    let conditions = option::of((
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
    ));
    let hints = option::weighted(
        0.3,
        (subsequence(&ZONES[..], 0..=2), subsequence(&HINT_NODES[..], 0..=2)),
    );
    (addresses, conditions, select(&NODE_NAMES[..]), hints)
        .prop_map(|(addresses, conditions, node, hints)| {
            let endpoint = ApiEndpoint {
                conditions: conditions.map(|(ready, serving, terminating)| EndpointConditions {
                    ready,
                    serving,
                    terminating,
                }),
                node_name: node.map(String::from),
                hints: hints.map(|(zones, nodes)| EndpointHints {
                    for_zones: Some(zones.iter().map(|z| ForZone { name: z.to_string() }).collect()),
                    for_nodes: Some(nodes.iter().map(|n| ForNode { name: n.to_string() }).collect()),
                }),
                ..Default::default()
            };
            (addresses, endpoint)
        })
        .boxed()
}

fn arb_endpoint_port() -> BoxedStrategy<EndpointPort> {
    (
        select(&PORT_NAMES[..]),
        select(&PROTOCOLS[..]),
        select(&ENDPOINT_PORT_NUMBERS[..]),
    )
        .prop_map(|(name, protocol, port)| EndpointPort {
            name: name.map(String::from),
            protocol: protocol.map(String::from),
            port,
            app_protocol: None,
        })
        .boxed()
}

/// Which Service a generated slice's `kubernetes.io/service-name` names.
#[derive(Debug, Clone, Copy)]
enum Owner {
    /// The Service the slice is named after.
    Own,
    /// Another Service of the namespace (the slice "moves").
    Other(usize),
    /// No label at all.
    Unlabelled,
}

fn arb_slice() -> BoxedStrategy<EndpointSlice> {
    let identity = (
        arb_namespace(),
        arb_service_name(),
        select(&SLICE_SUFFIXES[..]),
        prop_oneof![
            8 => Just(Owner::Own),
            2 => (0..SERVICE_NAMES.len()).prop_map(Owner::Other),
            1 => Just(Owner::Unlabelled),
        ],
        arb_skip_label(),
        option::weighted(0.2, select(&TRIGGER_TIMES[..])),
    );
    let address_type = prop_oneof![4 => Just("IPv4"), 4 => Just("IPv6"), 1 => Just("FQDN")];
    let body = (
        address_type,
        vec(arb_endpoint_port(), 0..=3),
        vec(arb_endpoint(), 0..=4),
    );
    (identity, body)
        .prop_map(
            |((ns, svc, suffix, owner, skip, trigger), (address_type, ports, endpoints))| {
                let mut labels = BTreeMap::new();
                match owner {
                    Owner::Own => {
                        labels.insert(SERVICE_NAME_LABEL.to_string(), SERVICE_NAMES[svc].to_string());
                    }
                    Owner::Other(other) => {
                        labels.insert(SERVICE_NAME_LABEL.to_string(), SERVICE_NAMES[other].to_string());
                    }
                    Owner::Unlabelled => {}
                }
                if let Some(l) = skip {
                    labels.insert(l.to_string(), "x".to_string());
                }
                EndpointSlice {
                    metadata: ObjectMeta {
                        namespace: Some(NAMESPACES[ns].to_string()),
                        name: Some(format!("{}-{suffix}", SERVICE_NAMES[svc])),
                        labels: Some(labels),
                        annotations: trigger
                            .map(|t| BTreeMap::from([(TRIGGER_TIME_ANNOTATION.to_string(), t.to_string())])),
                        ..Default::default()
                    },
                    address_type: address_type.to_string(),
                    ports: (!ports.is_empty()).then_some(ports),
                    endpoints: endpoints
                        .into_iter()
                        .map(|(addresses, endpoint)| ApiEndpoint {
                            addresses: addresses.into_iter().map(|a| a.resolve(address_type)).collect(),
                            ..endpoint
                        })
                        .collect(),
                }
            },
        )
        .boxed()
}

fn arb_event() -> BoxedStrategy<Event> {
    prop_oneof![
        5 => arb_service().prop_map(|s| Event::UpsertService(Box::new(s))),
        1 => any::<Index>().prop_map(Event::DeleteService),
        1 => any::<Index>().prop_map(Event::ReplayService),
        6 => arb_slice().prop_map(|s| Event::UpsertSlice(Box::new(s))),
        2 => any::<Index>().prop_map(Event::DeleteSlice),
        1 => any::<Index>().prop_map(Event::ReplaySlice),
        3 => Just(Event::Apply),
    ]
    .boxed()
}

fn arb_events() -> BoxedStrategy<Vec<Event>> {
    vec(arb_event(), 0..64).boxed()
}

// ---------------------------------------------------------------------------
// Informer simulation.
// ---------------------------------------------------------------------------

/// `(namespace, name)` as the trackers key objects.
type Key = (String, String);

fn key_of(meta: &ObjectMeta) -> Option<Key> {
    Some((
        meta.namespace.clone().unwrap_or_else(|| "default".to_string()),
        meta.name.clone()?,
    ))
}

/// The objects an informer's cache holds at some point.
#[derive(Debug, Clone, Default)]
struct Live {
    services: BTreeMap<Key, Service>,
    slices: BTreeMap<Key, EndpointSlice>,
}

/// One call into the trackers, exactly as an informer's handlers make it.
#[derive(Debug, Clone)]
enum Call {
    /// `ServiceChangeTracker::update(previous, current)`.
    Service(Option<Box<Service>>, Option<Box<Service>>),
    /// `EndpointsChangeTracker::update(slice, removed)`.
    Slice(Box<EndpointSlice>, bool),
    /// `ProxyState::on_node`.
    Node(Box<Node>),
    /// `apply`.
    Apply,
}

/// One call, and the informer cache right after it.
#[derive(Debug, Clone)]
struct Step {
    call: Call,
    live: Live,
}

/// Namespaces whose objects deletion events never pick (property 3's good
/// objects live there).
static GOOD_NAMESPACES: [&str; 2] = ["good-a", "good-b"];

fn deletable(key: &Key) -> bool {
    !GOOD_NAMESPACES.contains(&key.0.as_str())
}

/// Turns events into informer calls, tracking the cache: an update carries
/// the previous version, a delete the last known version. Objects without a
/// name (which no informer delivers) are passed as adds and not cached.
/// Returns each call with the cache after it, and the final cache.
fn informer_calls(events: &[Event]) -> (Vec<Step>, Live) {
    let mut live = Live::default();
    let mut service_history: Vec<Service> = Vec::new();
    let mut slice_history: Vec<EndpointSlice> = Vec::new();
    let mut steps = Vec::new();
    let upsert_service = |live: &mut Live, s: &Service| {
        let previous = key_of(&s.metadata).and_then(|k| live.services.insert(k, s.clone()));
        Call::Service(previous.map(Box::new), Some(Box::new(s.clone())))
    };
    let upsert_slice = |live: &mut Live, s: &EndpointSlice| {
        if let Some(k) = key_of(&s.metadata) {
            live.slices.insert(k, s.clone());
        }
        Call::Slice(Box::new(s.clone()), false)
    };
    for event in events {
        // `None`: the event makes no call (a delete or replay with nothing
        // to pick from).
        let call = match event {
            Event::UpsertService(s) => {
                service_history.push((**s).clone());
                Some(upsert_service(&mut live, s))
            }
            Event::ReplayService(i) => (!service_history.is_empty()).then(|| {
                let s = service_history[i.index(service_history.len())].clone();
                upsert_service(&mut live, &s)
            }),
            Event::DeleteService(i) => {
                let keys: Vec<Key> = live.services.keys().filter(|k| deletable(k)).cloned().collect();
                (!keys.is_empty()).then(|| {
                    let previous = live.services.remove(&keys[i.index(keys.len())]).expect("live");
                    Call::Service(Some(Box::new(previous)), None)
                })
            }
            Event::UpsertSlice(s) => {
                slice_history.push((**s).clone());
                Some(upsert_slice(&mut live, s))
            }
            Event::ReplaySlice(i) => (!slice_history.is_empty()).then(|| {
                let s = slice_history[i.index(slice_history.len())].clone();
                upsert_slice(&mut live, &s)
            }),
            Event::DeleteSlice(i) => {
                let keys: Vec<Key> = live.slices.keys().filter(|k| deletable(k)).cloned().collect();
                (!keys.is_empty()).then(|| {
                    let previous = live.slices.remove(&keys[i.index(keys.len())]).expect("live");
                    Call::Slice(Box::new(previous), true)
                })
            }
            Event::Node(n) => Some(Call::Node(n.clone())),
            Event::Apply => Some(Call::Apply),
        };
        if let Some(call) = call {
            steps.push(Step {
                call,
                live: live.clone(),
            });
        }
    }
    (steps, live)
}

// ---------------------------------------------------------------------------
// Drivers: the bare trackers and ProxyState.
// ---------------------------------------------------------------------------

/// A `ServiceChangeTracker` and an `EndpointsChangeTracker` with their maps.
struct Trackers {
    family: IpFamily,
    service_changes: ServiceChangeTracker,
    endpoint_changes: EndpointsChangeTracker,
    services: ServiceMap,
    endpoints: EndpointsMap,
}

impl Trackers {
    fn new(family: IpFamily) -> Self {
        Trackers {
            family,
            service_changes: ServiceChangeTracker::new(family),
            endpoint_changes: EndpointsChangeTracker::new(family, NODE),
            services: ServiceMap::new(),
            endpoints: EndpointsMap::new(),
        }
    }

    /// Feeds one non-apply call; checks the returned "anything pending".
    fn feed(&mut self, call: &Call) {
        match call {
            Call::Service(previous, current) => {
                let pending = self.service_changes.update(previous.as_deref(), current.as_deref());
                assert_eq!(pending, self.service_changes.pending() > 0);
            }
            Call::Slice(slice, removed) => {
                let pending = self.endpoint_changes.update(slice, *removed);
                assert_eq!(pending, self.endpoint_changes.pending() > 0);
            }
            Call::Node(_) | Call::Apply => {}
        }
    }

    /// Applies and checks the reports against the actual map difference and
    /// the new maps against the invariants.
    fn apply(&mut self) -> (ServiceUpdate, EndpointsUpdate) {
        let services_before = self.services.clone();
        let endpoints_before = self.endpoints.clone();
        let su = self.service_changes.apply(&mut self.services);
        let eu = self.endpoint_changes.apply(&mut self.endpoints);
        assert_eq!(self.service_changes.pending(), 0);
        assert_eq!(self.endpoint_changes.pending(), 0);
        check_service_update(&services_before, &self.services, &su);
        check_endpoints_update(&endpoints_before, &self.endpoints, &eu);
        check_service_map(&self.services, self.family);
        check_endpoints_map(&self.endpoints, self.family);
        (su, eu)
    }
}

fn feed_state(state: &mut ProxyState, call: &Call) {
    let pending = match call {
        Call::Service(previous, current) => state.on_service(previous.as_deref(), current.as_deref()),
        Call::Slice(slice, removed) => state.on_endpoint_slice(slice, *removed),
        Call::Node(node) => state.on_node(node),
        Call::Apply => return,
    };
    assert_eq!(pending, state.has_pending());
}

/// `ProxyState` must report what the bare trackers report (trigger times
/// aside: they depend on each tracker's start time).
fn assert_same_changes(state: &StateChanges, su: &ServiceUpdate, eu: &EndpointsUpdate) {
    assert_eq!(
        &state.services, su,
        "ProxyState service changes differ from the tracker's"
    );
    assert_eq!(state.endpoints.updated_services, eu.updated_services);
    assert_eq!(state.endpoints.stale_endpoints, eu.stale_endpoints);
    assert_eq!(state.endpoints.newly_active, eu.newly_active);
}

/// The maps built from scratch: fresh trackers, each live object added once.
/// They must equal the tracker-free oracle.
fn from_scratch(family: IpFamily, live: &Live) -> (ServiceMap, EndpointsMap) {
    let mut t = Trackers::new(family);
    for s in live.services.values() {
        t.service_changes.update(None, Some(s));
    }
    for s in live.slices.values() {
        t.endpoint_changes.update(s, false);
    }
    t.apply();
    check_merge_semantics(family, live, &t.endpoints);
    let (services, endpoints) = oracle(family, live);
    assert_eq!(
        t.services, services,
        "from-scratch ServiceMap differs from the conversion oracle"
    );
    assert_eq!(
        t.endpoints, endpoints,
        "from-scratch EndpointsMap differs from the conversion oracle"
    );
    (t.services, t.endpoints)
}

/// The maps computed without any tracker, straight from the conversions.
/// Slices of one Service are merged in slice-name order, as the tracker does.
fn oracle(family: IpFamily, live: &Live) -> (ServiceMap, EndpointsMap) {
    let services: ServiceMap = live.services.values().flat_map(|s| service_ports(s, family)).collect();
    let mut by_service: BTreeMap<NamespacedName, BTreeMap<String, SliceInfo>> = BTreeMap::new();
    for slice in live.slices.values() {
        if let Some(info) = slice_info(slice, family, NODE) {
            by_service
                .entry(info.service.clone())
                .or_default()
                .insert(info.slice_name.clone(), info);
        }
    }
    let endpoints: EndpointsMap = by_service
        .values()
        .flat_map(|slices| merge_slices(slices.values()))
        .collect();
    (services, endpoints)
}

/// Checks the merged endpoints against every slice's own copy, without
/// `merge_slices`: each merged endpoint is one of the copies of its address,
/// no copy ranks higher (non-terminating first, then local), and no
/// address of any copy is lost.
fn check_merge_semantics(family: IpFamily, live: &Live, endpoints: &EndpointsMap) {
    let mut copies: BTreeMap<(ServicePortName, IpAddr, u16), Vec<Endpoint>> = BTreeMap::new();
    for slice in live.slices.values() {
        for (name, eps) in slice_info(slice, family, NODE).map(|i| i.endpoints).unwrap_or_default() {
            for ep in eps.iter().cloned() {
                copies.entry((name.clone(), ep.ip, ep.port)).or_default().push(ep);
            }
        }
    }
    let rank = |e: &Endpoint| (!e.terminating, e.is_local);
    let mut merged = 0;
    for (name, eps) in endpoints.iter() {
        for ep in eps {
            merged += 1;
            let candidates = copies.get(&(name.clone(), ep.ip, ep.port));
            let candidates = candidates.map(Vec::as_slice).unwrap_or_default();
            assert!(candidates.contains(ep), "{name}: merged {ep:?} is no slice's copy");
            let best = candidates.iter().map(rank).max();
            assert_eq!(Some(rank(ep)), best, "{name}: {ep:?} was preferred over a better copy");
        }
    }
    assert_eq!(merged, copies.len(), "endpoints were lost or invented in the merge");
}

// ---------------------------------------------------------------------------
// Checks.
// ---------------------------------------------------------------------------

fn by_service<'a, V: ?Sized + 'a>(
    entries: impl Iterator<Item = (&'a ServicePortName, &'a V)>,
) -> BTreeMap<&'a NamespacedName, Vec<(&'a ServicePortName, &'a V)>> {
    let mut out: BTreeMap<&NamespacedName, Vec<_>> = BTreeMap::new();
    for (name, v) in entries {
        out.entry(&name.service).or_default().push((name, v));
    }
    out
}

/// Services whose entries differ between two maps.
fn changed_services<'a, V: PartialEq + ?Sized + 'a>(
    before: impl Iterator<Item = (&'a ServicePortName, &'a V)>,
    after: impl Iterator<Item = (&'a ServicePortName, &'a V)>,
) -> BTreeSet<NamespacedName> {
    let before = by_service(before);
    let after = by_service(after);
    before
        .keys()
        .chain(after.keys())
        .filter(|s| before.get(*s) != after.get(*s))
        .map(|s| (*s).clone())
        .collect()
}

fn check_service_update(before: &ServiceMap, after: &ServiceMap, update: &ServiceUpdate) {
    let changed = changed_services(before.iter(), after.iter());
    assert!(
        changed.is_subset(&update.updated_services),
        "services {changed:?} changed but the update lists only {:?}",
        update.updated_services
    );
    let deleted: BTreeSet<IpAddr> = before
        .iter()
        .filter(|(name, _)| name.protocol.needs_conntrack_cleanup() && after.get(name).is_none())
        .map(|(_, info)| info.cluster_ip)
        .collect();
    assert_eq!(update.deleted_udp_cluster_ips, deleted, "deleted UDP/SCTP ClusterIPs");
}

fn check_endpoints_update(before: &EndpointsMap, after: &EndpointsMap, update: &EndpointsUpdate) {
    let changed = changed_services(before.iter(), after.iter());
    assert!(
        changed.is_subset(&update.updated_services),
        "services {changed:?} changed but the update lists only {:?}",
        update.updated_services
    );
    let names: BTreeSet<&ServicePortName> = before.iter().chain(after.iter()).map(|(n, _)| n).collect();
    let serving = |eps: &[Endpoint]| eps.iter().filter(|e| e.serving).cloned().collect::<Vec<_>>();
    let mut stale = Vec::new();
    let mut newly_active = Vec::new();
    for name in names.into_iter().filter(|n| n.protocol.needs_conntrack_cleanup()) {
        let old = serving(before.get(name));
        let new = serving(after.get(name));
        for ep in &old {
            if !new.iter().any(|n| n.addr() == ep.addr()) {
                stale.push((name.clone(), ep.clone()));
            }
        }
        if old.is_empty() && !new.is_empty() {
            newly_active.push(name.clone());
        }
    }
    let mut reported_stale = update.stale_endpoints.clone();
    reported_stale.sort();
    stale.sort();
    assert_eq!(reported_stale, stale, "stale UDP/SCTP endpoints");
    let mut reported_active = update.newly_active.clone();
    reported_active.sort();
    newly_active.sort();
    assert_eq!(reported_active, newly_active, "newly active UDP/SCTP ports");
    for svc in update.trigger_times.keys() {
        assert!(
            update.updated_services.contains(svc),
            "trigger time reported for unchanged {svc}"
        );
    }
}

fn check_name(name: &ServicePortName) {
    let NamespacedName { namespace, name: svc } = &name.service;
    assert!(!namespace.is_empty() && !svc.is_empty(), "empty name in {name:?}");
    for part in [namespace, svc, &name.port] {
        assert!(part.len() <= MAX_NAME_LEN, "over-long name in {name:?}");
    }
}

fn assert_sorted_unique_of_family(ips: &[IpAddr], family: IpFamily, what: &str) {
    assert!(
        ips.iter().all(|ip| family.contains(*ip)),
        "{what} {ips:?} not all {family}"
    );
    assert!(
        ips.windows(2).all(|w| w[0] < w[1]),
        "{what} {ips:?} not sorted and unique"
    );
}

fn check_service_port(name: &ServicePortName, info: &ServicePortInfo, family: IpFamily) {
    check_name(name);
    assert!(
        family.contains(info.cluster_ip),
        "{name}: clusterIP {} is not {family}",
        info.cluster_ip
    );
    assert_sorted_unique_of_family(&info.external_ips, family, "externalIPs");
    assert_sorted_unique_of_family(&info.load_balancer_vips, family, "LoadBalancer VIPs");
    let nets = info.source_ranges.networks();
    assert!(
        nets.iter().all(|n| IpFamily::of_net(n) == family),
        "{name}: source ranges {nets:?} not all {family}"
    );
    assert!(
        nets.windows(2).all(|w| w[0] < w[1]),
        "{name}: source ranges {nets:?} not sorted and unique"
    );
    assert_eq!(info.protocol, name.protocol, "{name}");
    assert_ne!(info.port, 0, "{name}");
    assert_ne!(info.node_port, Some(0), "{name}");
    assert_ne!(info.health_check_node_port, Some(0), "{name}");
    if let Some(t) = info.affinity_timeout_seconds {
        assert!((1..=86_400).contains(&t), "{name}: affinity timeout {t}");
    }
}

/// Property 4 for a `ServiceMap`.
fn check_service_map(map: &ServiceMap, family: IpFamily) {
    for (name, info) in map.iter() {
        check_service_port(name, info, family);
    }
}

/// Property 4 for an `EndpointsMap`.
fn check_endpoints_map(map: &EndpointsMap, family: IpFamily) {
    for (name, eps) in map.iter() {
        check_name(name);
        assert!(!eps.is_empty(), "{name}: empty endpoint list stored");
        for ep in eps {
            assert!(family.contains(ep.ip), "{name}: endpoint {ep} is not {family}");
            assert_ne!(ep.port, 0, "{name}: endpoint {ep}");
        }
        for w in eps.windows(2) {
            assert!(
                (w[0].ip, w[0].port) < (w[1].ip, w[1].port),
                "{name}: endpoints not strictly sorted by (ip, port): {} then {}",
                w[0],
                w[1]
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Properties 1 and 2.
// ---------------------------------------------------------------------------

/// Runs `calls` through the bare trackers and `ProxyState`, checking at
/// every apply (and at the end) that both equal the from-scratch maps of
/// the informer cache at that point.
fn run_incremental(family: IpFamily, steps: &[Step], final_live: &Live) -> (Trackers, ProxyState) {
    let mut trackers = Trackers::new(family);
    let mut state = ProxyState::new(family, NODE);
    let check = |trackers: &mut Trackers, state: &mut ProxyState, live: &Live| {
        let (su, eu) = trackers.apply();
        let changes = state.apply();
        assert!(!state.has_pending());
        assert_same_changes(&changes, &su, &eu);
        let (services, endpoints) = from_scratch(family, live);
        assert_eq!(
            trackers.services, services,
            "{family}: incremental ServiceMap differs from scratch"
        );
        assert_eq!(
            trackers.endpoints, endpoints,
            "{family}: incremental EndpointsMap differs from scratch"
        );
        assert_eq!(
            state.services(),
            &services,
            "{family}: ProxyState services differ from scratch"
        );
        assert_eq!(
            state.endpoints(),
            &endpoints,
            "{family}: ProxyState endpoints differ from scratch"
        );
        assert_eq!(state.node().name, NODE, "ProxyState adopted another node's name");
    };
    for Step { call, live } in steps {
        match call {
            Call::Apply => check(&mut trackers, &mut state, live),
            other => {
                trackers.feed(other);
                feed_state(&mut state, other);
                // Exactly the Services whose maps would change are pending: a
                // change that ends where it started collapses.
                let (services, endpoints) = oracle(family, live);
                let service_pending = changed_services(trackers.services.iter(), services.iter());
                let endpoint_pending = changed_services(trackers.endpoints.iter(), endpoints.iter());
                assert_eq!(
                    trackers.service_changes.pending(),
                    service_pending.len(),
                    "{family}: pending Service changes, expected {service_pending:?}"
                );
                assert_eq!(
                    trackers.endpoint_changes.pending(),
                    endpoint_pending.len(),
                    "{family}: pending endpoint changes, expected {endpoint_pending:?}"
                );
                assert_eq!(state.pending_counts(), (service_pending.len(), endpoint_pending.len()));
            }
        }
    }
    check(&mut trackers, &mut state, final_live);
    (trackers, state)
}

proptest! {
    #![proptest_config(config(128))]

    /// Property 1 (see the file's docs).
    #[test]
    fn incremental_equals_from_scratch(events in arb_events()) {
        let (steps, live) = informer_calls(&events);
        for family in FAMILIES {
            run_incremental(family, &steps, &live);
        }
    }

    /// Property 2 (see the file's docs).
    #[test]
    fn batch_equals_one_by_one(events in arb_events()) {
        let (steps, _) = informer_calls(&events);
        for family in FAMILIES {
            let mut batch = Trackers::new(family);
            let mut each = Trackers::new(family);
            let mut batch_state = ProxyState::new(family, NODE);
            let mut each_state = ProxyState::new(family, NODE);
            for call in steps.iter().map(|s| &s.call).filter(|c| !matches!(c, Call::Apply)) {
                batch.feed(call);
                feed_state(&mut batch_state, call);
                each.feed(call);
                each.apply();
                feed_state(&mut each_state, call);
                each_state.apply();
            }
            batch.apply();
            batch_state.apply();
            prop_assert_eq!(&batch.services, &each.services);
            prop_assert_eq!(&batch.endpoints, &each.endpoints);
            prop_assert_eq!(batch_state.services(), each_state.services());
            prop_assert_eq!(batch_state.endpoints(), each_state.endpoints());
            prop_assert_eq!(batch_state.services(), &batch.services);
            prop_assert_eq!(batch_state.endpoints(), &batch.endpoints);
        }
    }
}

// ---------------------------------------------------------------------------
// Property 3: junk.
// ---------------------------------------------------------------------------

/// Each field of a junk object is valid with probability 3/4 and junk
/// otherwise, so that most objects carry some junk and many still get far
/// enough into the conversions to produce entries.
fn mostly<T: std::fmt::Debug + 'static>(valid: BoxedStrategy<T>, junk: BoxedStrategy<T>) -> BoxedStrategy<T> {
    prop_oneof![3 => valid, 1 => junk].boxed()
}

fn pick<T: Clone + std::fmt::Debug + 'static>(values: &'static [T]) -> BoxedStrategy<T> {
    select(values).boxed()
}

fn pick_string(values: &'static [&'static str]) -> BoxedStrategy<String> {
    select(values).prop_map(String::from).boxed()
}

/// Arbitrary text aimed at address, CIDR and name parsers: empty, `None`,
/// dotted numbers with overlong or too many octets, IPv4 with leading
/// zeros, hex-and-colon soup, valid addresses wrapped in blanks, quotes,
/// braces, semicolons, newlines, unicode, up to 400 characters.
fn junk_text() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        Just("None".to_string()),
        "[0-9]{1,5}(\\.[0-9]{1,5}){0,5}",
        "0[0-9]{1,3}\\.0{0,3}[0-9]{1,3}\\.[0-9]{1,4}\\.[0-9]{1,3}",
        "[0-9a-fA-F:]{0,45}",
        "[0-9a-f:.%/ \\[\\]]{0,30}",
        "[ \t\n]{0,2}(10\\.180\\.0\\.[0-9]|fd00:10::[0-9]|172\\.30\\.0\\.[0-9]{1,3})[ \t\n]{0,2}",
        "[\"'{};\\n\\\\ a-z0-9\u{e9}\u{4e2d}\u{1F600}]{0,60}",
        "\\PC{0,40}",
        ".{0,400}",
    ]
    .boxed()
}

/// Well-formed addresses of both families (the ones fixtures use).
static VALID_IPS: [&str; 10] = [
    "10.180.0.1",
    "10.180.1.1",
    "172.30.0.5",
    "1.2.3.4",
    "192.168.99.1",
    "fd00:10::1",
    "fd00:10::2",
    "fd00::5",
    "2001:db8::4",
    "fd00::99:1",
];

/// Addresses that are valid in odd spellings, or not at all.
fn junk_ip() -> BoxedStrategy<String> {
    static ODD: [&str; 8] = [
        "010.180.000.001",
        " 10.180.0.2 ",
        "::ffff:10.180.0.1",
        "fd00:10::1%eth0",
        "[fd00::1]",
        "10.180.0.1/32",
        "0x0a.0.0.1",
        "1e100.0.0.1",
    ];
    prop_oneof![1 => pick_string(&ODD), 2 => junk_text()].boxed()
}

fn ip() -> BoxedStrategy<String> {
    mostly(pick_string(&VALID_IPS), junk_ip())
}

fn cidr() -> BoxedStrategy<String> {
    static VALID: [&str; 5] = [
        "10.0.0.0/8",
        "203.0.113.0/25",
        "2001:db8::/64",
        "10.0.0.7/8",
        "0.0.0.0/0",
    ];
    static JUNK: [&str; 15] = [
        "10.0.0.0/33",
        "10.0.0.0/-1",
        "10.0.0.0/",
        "10.0.0.0/256",
        "::/999",
        "x/8",
        "10.0.0.0/0008",
        "::/129",
        "1.2.3.4",
        "010.0.0.0/8",
        "/",
        "",
        " 10.0.0.0/8 ",
        "10.0.0.0/8/8",
        "fd00::/64%eth0",
    ];
    let junk = prop_oneof![
        3 => pick_string(&JUNK),
        2 => (ip(), "[0-9-]{0,5}").prop_map(|(a, l)| format!("{a}/{l}")),
        1 => junk_text(),
    ];
    mostly(pick_string(&VALID), junk.boxed())
}

/// Ports, nodePorts, timeouts: any `i32`, with the edges favoured.
fn port_i32() -> BoxedStrategy<i32> {
    static VALID: [i32; 5] = [53, 80, 443, 8080, 30080];
    static EDGES: [i32; 8] = [0, -1, 1, 65535, 65536, -65536, i32::MIN, i32::MAX];
    mostly(pick(&VALID), prop_oneof![3 => pick(&EDGES), 1 => any::<i32>()].boxed())
}

fn protocol() -> BoxedStrategy<Option<String>> {
    static VALID: [Option<&str>; 6] = [None, Some("TCP"), Some("UDP"), Some("SCTP"), Some("tcp"), Some("Udp")];
    static JUNK: [&str; 5] = ["ICMP", "", " TCP", "TCP\n", "HTTP"];
    mostly(
        pick(&VALID).prop_map(|p| p.map(String::from)).boxed(),
        prop_oneof![3 => pick_string(&JUNK), 1 => junk_text()]
            .prop_map(Some)
            .boxed(),
    )
}

/// Names that no conversion accepts, or that stress logging: missing,
/// empty, at and beyond the 253-character limit, up to 400 characters of
/// quotes, braces, semicolons, newlines and unicode.
fn junk_name() -> BoxedStrategy<Option<String>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(String::new())),
        2 => "[a-z\"'{};\\n\u{e9}\u{4e2d}\u{1F600}]{1,400}".prop_map(Some),
        1 => (252usize..=255).prop_map(|n| Some("x".repeat(n))),
        1 => junk_text().prop_map(Some),
    ]
    .boxed()
}

/// Object names from a small pool, so that junk objects update each other.
fn name() -> BoxedStrategy<Option<String>> {
    static VALID: [&str; 4] = ["x", "web", "svc-0", "a.b"];
    mostly(pick_string(&VALID).prop_map(Some).boxed(), junk_name())
}

/// Port names: a few shared ones (so duplicates happen) or junk.
fn port_name() -> BoxedStrategy<Option<String>> {
    static VALID: [Option<&str>; 4] = [None, Some(""), Some("http"), Some("dns")];
    mostly(pick(&VALID).prop_map(|n| n.map(String::from)).boxed(), junk_name())
}

/// Metadata in namespaces that are never the good ones.
fn junk_meta() -> BoxedStrategy<ObjectMeta> {
    static NAMESPACES: [Option<&str>; 3] = [None, Some("junk-1"), Some("default")];
    let namespace = mostly(pick(&NAMESPACES).prop_map(|n| n.map(String::from)).boxed(), junk_name());
    let label_key = prop_oneof![
        Just(SERVICE_PROXY_NAME_LABEL.to_string()),
        Just(HEADLESS_LABEL.to_string()),
        "[a-z./-]{1,20}",
    ];
    let labels = mostly(
        Just(None).boxed(),
        option::of(btree_map(label_key, junk_text(), 0..3)).boxed(),
    );
    (namespace, name(), labels)
        .prop_map(|(namespace, name, labels)| ObjectMeta {
            namespace: namespace.map(|ns| {
                if GOOD_NAMESPACES.contains(&ns.as_str()) {
                    format!("junk-{ns}")
                } else {
                    ns
                }
            }),
            name,
            labels,
            ..Default::default()
        })
        .boxed()
}

fn junk_service_port() -> BoxedStrategy<ServicePort> {
    let node_port = mostly(Just(None).boxed(), option::of(port_i32()).boxed());
    (port_name(), port_i32(), protocol(), node_port)
        .prop_map(|(name, port, protocol, node_port)| ServicePort {
            name,
            port,
            protocol,
            node_port,
            ..Default::default()
        })
        .boxed()
}

fn junk_service() -> BoxedStrategy<Service> {
    static TYPES: [Option<&str>; 4] = [None, Some("ClusterIP"), Some("NodePort"), Some("LoadBalancer")];
    static JUNK_TYPES: [&str; 3] = ["ExternalName", "", "clusterip"];
    static POLICY: [Option<&str>; 3] = [None, Some("Local"), Some("Cluster")];
    let type_ = mostly(
        pick(&TYPES).prop_map(|t| t.map(String::from)).boxed(),
        prop_oneof![pick_string(&JUNK_TYPES), junk_text()]
            .prop_map(Some)
            .boxed(),
    );
    let policy = || {
        mostly(
            pick(&POLICY).prop_map(|p| p.map(String::from)).boxed(),
            junk_text().prop_map(Some).boxed(),
        )
    };
    let cluster_ip = mostly(
        ip().prop_map(Some).boxed(),
        prop_oneof![Just(None), Just(Some("None".to_string())), Just(Some(String::new()))].boxed(),
    );
    let addresses = (
        cluster_ip,
        option::of(vec(ip(), 0..3)),
        option::of(vec(ip(), 0..4)),
        option::of(vec(cidr(), 0..4)),
    );
    let affinity = mostly(
        prop_oneof![Just(None), Just(Some("ClientIP".to_string()))].boxed(),
        junk_text().prop_map(Some).boxed(),
    );
    let behaviour = (
        type_,
        option::weighted(0.9, vec(junk_service_port(), 0..6)),
        policy(),
        policy(),
        option::of(port_i32()),
        affinity,
        option::of(option::of(port_i32())),
    );
    let ingress = (
        option::of(ip()),
        mostly(
            pick(&IP_MODES).prop_map(|m| m.map(String::from)).boxed(),
            junk_text().prop_map(Some).boxed(),
        ),
    );
    let status = option::of(option::of(vec(ingress, 0..4)));
    (junk_meta(), option::weighted(0.95, (addresses, behaviour)), status)
        .prop_map(|(metadata, spec, status)| Service {
            metadata,
            spec: spec.map(
                |((cluster_ip, cluster_ips, external_ips, ranges), (type_, ports, etp, itp, hc, affinity, timeout))| {
                    ServiceSpec {
                        type_,
                        cluster_ip,
                        cluster_ips,
                        ports,
                        external_ips,
                        load_balancer_source_ranges: ranges,
                        external_traffic_policy: etp,
                        internal_traffic_policy: itp,
                        health_check_node_port: hc,
                        session_affinity: affinity,
                        session_affinity_config: timeout.map(|t| SessionAffinityConfig {
                            client_ip: Some(ClientIPConfig { timeout_seconds: t }),
                        }),
                        ..Default::default()
                    }
                },
            ),
            status: status.map(|ingress| ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: ingress.map(|v| {
                        v.into_iter()
                            .map(|(ip, ip_mode)| LoadBalancerIngress {
                                ip,
                                ip_mode,
                                ..Default::default()
                            })
                            .collect()
                    }),
                }),
                ..Default::default()
            }),
        })
        .boxed()
}

fn junk_endpoint() -> BoxedStrategy<ApiEndpoint> {
    let node = mostly(pick(&NODE_NAMES).prop_map(|n| n.map(String::from)).boxed(), junk_name());
    let hint_names = || option::of(vec(name().prop_map(Option::unwrap_or_default), 0..3));
    let conditions = option::of((
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
    ));
    let addresses = mostly(ip().prop_map(|a| vec![a]).boxed(), vec(ip(), 0..3).boxed());
    (
        addresses,
        conditions,
        node,
        option::of((hint_names(), hint_names())),
        option::of(junk_text()),
    )
        .prop_map(|(addresses, conditions, node_name, hints, hostname)| ApiEndpoint {
            addresses,
            conditions: conditions.map(|(ready, serving, terminating)| EndpointConditions {
                ready,
                serving,
                terminating,
            }),
            node_name,
            hints: hints.map(|(zones, nodes)| EndpointHints {
                for_zones: zones.map(|z| z.into_iter().map(|name| ForZone { name }).collect()),
                for_nodes: nodes.map(|n| n.into_iter().map(|name| ForNode { name }).collect()),
            }),
            hostname,
            ..Default::default()
        })
        .boxed()
}

fn junk_endpoint_port() -> BoxedStrategy<EndpointPort> {
    (
        port_name(),
        option::weighted(0.9, port_i32()),
        protocol(),
        option::of(junk_text()),
    )
        .prop_map(|(name, port, protocol, app_protocol)| EndpointPort {
            name,
            port,
            protocol,
            app_protocol,
        })
        .boxed()
}

fn junk_slice() -> BoxedStrategy<EndpointSlice> {
    static ADDRESS_TYPES: [&str; 2] = ["IPv4", "IPv6"];
    static JUNK_ADDRESS_TYPES: [&str; 4] = ["FQDN", "", "ipv4", "IPv4 "];
    static SERVICES: [&str; 4] = ["web", "lb", "v6", "svc"];
    let service_label = mostly(pick_string(&SERVICES).prop_map(Some).boxed(), junk_name());
    let address_type = mostly(
        pick_string(&ADDRESS_TYPES),
        prop_oneof![pick_string(&JUNK_ADDRESS_TYPES), junk_text()].boxed(),
    );
    let trigger = option::of(prop_oneof![pick_string(&TRIGGER_TIMES), junk_text()]);
    (
        junk_meta(),
        service_label,
        trigger,
        address_type,
        option::weighted(0.9, vec(junk_endpoint_port(), 0..5)),
        vec(junk_endpoint(), 0..6),
    )
        .prop_map(|(mut metadata, service, trigger, address_type, ports, endpoints)| {
            if let Some(service) = service {
                metadata
                    .labels
                    .get_or_insert_with(BTreeMap::new)
                    .insert(SERVICE_NAME_LABEL.to_string(), service);
            }
            metadata.annotations = trigger.map(|t| BTreeMap::from([(TRIGGER_TIME_ANNOTATION.to_string(), t)]));
            EndpointSlice {
                metadata,
                address_type,
                ports,
                endpoints,
            }
        })
        .boxed()
}

fn junk_node() -> BoxedStrategy<Node> {
    static TYPES: [&str; 2] = ["InternalIP", "ExternalIP"];
    static JUNK_TYPES: [&str; 3] = ["Hostname", "", "internalip"];
    let node_name = mostly(Just(Some(NODE.to_string())).boxed(), name());
    let labels = option::of(btree_map(
        prop_oneof![Just(kproxy_core::model::ZONE_LABEL.to_string()), "[a-z./]{1,10}"],
        junk_text(),
        0..3,
    ));
    let type_ = mostly(
        pick_string(&TYPES),
        prop_oneof![pick_string(&JUNK_TYPES), junk_text()].boxed(),
    );
    // Addresses from a small pool, so that duplicates happen.
    let address = (ip(), type_).prop_map(|(address, type_)| NodeAddress { address, type_ });
    let spec = option::weighted(0.9, (option::of(cidr()), option::of(vec(cidr(), 0..4))));
    let status = option::weighted(0.9, option::weighted(0.9, vec(address, 0..6)));
    (node_name, labels, spec, status)
        .prop_map(|(name, labels, spec, status)| Node {
            metadata: ObjectMeta {
                name,
                labels,
                ..Default::default()
            },
            spec: spec.map(|(pod_cidr, pod_cidrs)| NodeSpec {
                pod_cidr,
                pod_cidrs,
                ..Default::default()
            }),
            status: status.map(|addresses| NodeStatus {
                addresses,
                ..Default::default()
            }),
        })
        .boxed()
}

fn junk_event() -> BoxedStrategy<Event> {
    prop_oneof![
        5 => junk_service().prop_map(|s| Event::UpsertService(Box::new(s))),
        1 => any::<Index>().prop_map(Event::DeleteService),
        1 => any::<Index>().prop_map(Event::ReplayService),
        5 => junk_slice().prop_map(|s| Event::UpsertSlice(Box::new(s))),
        1 => any::<Index>().prop_map(Event::DeleteSlice),
        1 => any::<Index>().prop_map(Event::ReplaySlice),
        2 => junk_node().prop_map(|n| Event::Node(Box::new(n))),
        2 => Just(Event::Apply),
    ]
    .boxed()
}

/// The good objects: every kind of field the conversions handle, in the
/// namespaces junk never uses.
fn good_services() -> Vec<Service> {
    use fixtures::service;
    vec![
        service("good-a", "web", &["172.30.0.10", "fd00::10"])
            .port("http", 80, "TCP", 0)
            .port("dns", 53, "UDP", 0)
            .build(),
        service("good-a", "lb", &["172.30.0.11", "fd00::11"])
            .port("https", 443, "TCP", 30443)
            .port("quic", 443, "UDP", 30444)
            .load_balancer(&["1.2.3.4", "2001:db8::4"])
            .source_ranges(&["203.0.113.0/25", "2001:db8::/64"])
            .external_ips(&["192.168.99.1", "fd00::99:1"])
            .external_policy_local(30000)
            .affinity(600)
            .build(),
        service("good-b", "v6", &["fd00::20"])
            .type_("NodePort")
            .port("", 8080, "SCTP", 30080)
            .internal_policy_local()
            .build(),
        service("good-b", "v4", &["172.30.0.20"])
            .port("", 9090, "UDP", 0)
            .build(),
    ]
}

fn good_slices() -> Vec<EndpointSlice> {
    use fixtures::slice;
    use EndpointState::*;
    vec![
        slice("good-a", "web", "web-v4-1", "IPv4")
            .port("http", 8080, "TCP")
            .port("dns", 5353, "UDP")
            .endpoint("10.180.0.1", NODE, Ready)
            .hints(&["zone-a"], &[])
            .endpoint("10.180.1.1", fixtures::OTHER_NODE, ServingTerminating)
            .build(),
        slice("good-a", "web", "web-v4-2", "IPv4")
            .port("http", 8080, "TCP")
            .port("dns", 5353, "UDP")
            .endpoint("10.180.1.1", fixtures::OTHER_NODE, Ready)
            .endpoint("10.180.1.2", fixtures::OTHER_NODE, NotReady)
            .build(),
        slice("good-a", "web", "web-v6", "IPv6")
            .port("http", 8080, "TCP")
            .port("dns", 5353, "UDP")
            .endpoint("fd00:10::1", NODE, Ready)
            .build(),
        slice("good-a", "lb", "lb-1", "IPv4")
            .port("https", 8443, "TCP")
            .port("quic", 8443, "UDP")
            .endpoint("10.180.0.2", NODE, Ready)
            .endpoint("10.180.1.3", fixtures::OTHER_NODE, Terminating)
            .build(),
        slice("good-a", "lb", "lb-1-v6", "IPv6")
            .port("https", 8443, "TCP")
            .endpoint("fd00:10::2", fixtures::OTHER_NODE, Ready)
            .build(),
        slice("good-b", "v6", "v6-1", "IPv6")
            .port("", 8080, "SCTP")
            .endpoint("fd00:10::3", NODE, Ready)
            .build(),
        slice("good-b", "v4", "v4-1", "IPv4")
            .port("", 9090, "UDP")
            .endpoint("10.180.0.9", NODE, Ready)
            .build(),
    ]
}

fn good_events(applies: &[bool]) -> Vec<Event> {
    let mut events = Vec::new();
    let objects = good_services()
        .into_iter()
        .map(|s| Event::UpsertService(Box::new(s)))
        .chain(good_slices().into_iter().map(|s| Event::UpsertSlice(Box::new(s))));
    for (event, apply) in objects.zip(applies.iter().chain(std::iter::repeat(&false))) {
        events.push(event);
        if *apply {
            events.push(Event::Apply);
        }
    }
    events
}

fn is_good(name: &ServicePortName) -> bool {
    GOOD_NAMESPACES.contains(&name.service.namespace.as_str())
}

fn good_part_services(map: &ServiceMap) -> ServiceMap {
    map.iter()
        .filter(|(n, _)| is_good(n))
        .map(|(n, i)| (n.clone(), i.clone()))
        .collect()
}

fn good_part_endpoints(map: &EndpointsMap) -> EndpointsMap {
    map.iter()
        .filter(|(n, _)| is_good(n))
        .map(|(n, e)| (n.clone(), e))
        .collect()
}

/// Conversions called directly: no panic, and results obey the invariants.
fn check_direct_conversions(steps: &[Step]) {
    for Step { call, .. } in steps {
        match call {
            Call::Service(previous, current) => {
                for s in previous.iter().chain(current) {
                    for family in FAMILIES {
                        let ports = service_ports(s, family);
                        for (name, info) in &ports {
                            check_service_port(name, info, family);
                            assert_eq!(
                                Some(&name.service),
                                key_of(&s.metadata).map(|(ns, n)| NamespacedName::new(ns, n)).as_ref()
                            );
                        }
                    }
                }
            }
            Call::Slice(slice, _) => {
                for family in FAMILIES {
                    if let Some(info) = slice_info(slice, family, NODE) {
                        assert_eq!(slice.address_type, family.as_k8s_str());
                        for (name, eps) in &info.endpoints {
                            check_name(name);
                            assert_eq!(name.service, info.service);
                            assert!(eps.iter().all(|e| family.contains(e.ip) && e.port != 0));
                        }
                        let merged: EndpointsMap = merge_slices([&info]).into_iter().collect();
                        check_endpoints_map(&merged, family);
                    }
                }
            }
            Call::Node(node) => {
                let info = node_info(node);
                assert_eq!(info.name, node.metadata.name.clone().unwrap_or_default());
                let unique: BTreeSet<_> = info.ips.iter().collect();
                assert_eq!(unique.len(), info.ips.len(), "duplicate node IPs {:?}", info.ips);
            }
            Call::Apply => {}
        }
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// Property 3 (see the file's docs).
    #[test]
    fn junk_never_panics_nor_spoils_good_objects(
        before in vec(junk_event(), 0..16),
        after in vec(junk_event(), 0..16),
        good_applies in vec(any::<bool>(), 11),
    ) {
        let (alone_steps, alone_live) = informer_calls(&good_events(&[]));
        let events: Vec<Event> = before
            .into_iter()
            .chain(good_events(&good_applies))
            .chain(after)
            .collect();
        let (steps, live) = informer_calls(&events);
        check_direct_conversions(&steps);
        for family in FAMILIES {
            let (alone, _) = run_incremental(family, &alone_steps, &alone_live);
            prop_assert!(!alone.services.is_empty() && !alone.endpoints.is_empty());
            // Also asserts that the whole maps, junk included, equal the
            // from-scratch maps, and checks every apply's report.
            let (mixed, state) = run_incremental(family, &steps, &live);
            prop_assert_eq!(good_part_services(&mixed.services), alone.services.clone());
            prop_assert_eq!(good_part_endpoints(&mixed.endpoints), alone.endpoints.clone());
            prop_assert_eq!(good_part_services(state.services()), alone.services);
            prop_assert_eq!(good_part_endpoints(state.endpoints()), alone.endpoints);
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Property 3, field level (see the file's docs).
    #[test]
    fn junk_fields_never_spoil_good_fields(
        service_index in any::<Index>(),
        junk_ports in vec(junk_service_port(), 1..6),
        slice_index in any::<Index>(),
        junk_slice_ports in vec(junk_endpoint_port(), 0..5),
        junk_endpoints in vec(junk_endpoint(), 0..6),
    ) {
        let services = good_services();
        let good = &services[service_index.index(services.len())];
        let mut spoiled = good.clone();
        spoiled.spec.as_mut().expect("fixture has a spec").ports.get_or_insert_with(Vec::new).extend(junk_ports);
        let slices = good_slices();
        let good_slice = &slices[slice_index.index(slices.len())];
        let mut spoiled_slice = good_slice.clone();
        spoiled_slice.ports.get_or_insert_with(Vec::new).extend(junk_slice_ports);
        spoiled_slice.endpoints.extend(junk_endpoints);
        for family in FAMILIES {
            let expected = service_ports(good, family);
            let got = service_ports(&spoiled, family);
            for (name, info) in &got {
                check_service_port(name, info, family);
            }
            for (name, info) in &expected {
                prop_assert_eq!(got.get(name), Some(info), "{} spoiled by junk ports", name);
            }
            let expected = slice_info(good_slice, family, NODE);
            let got = slice_info(&spoiled_slice, family, NODE);
            prop_assert_eq!(expected.is_some(), got.is_some());
            if let (Some(expected), Some(got)) = (expected, got) {
                // A slice's list is sorted and deduplicated by address, so
                // junk may sort in between; every good endpoint must still
                // be there, unless a copy of its address that ranks higher
                // (non-terminating, then local) replaced it.
                let rank = |e: &Endpoint| (!e.terminating, e.is_local);
                for (name, eps) in &expected.endpoints {
                    let spoiled_eps = got.endpoints.get(name);
                    let kept = |e: &Endpoint| {
                        spoiled_eps.is_some_and(|s| s.iter().any(|g| g.addr() == e.addr() && (g == e || rank(g) > rank(e))))
                    };
                    prop_assert!(
                        eps.iter().all(kept),
                        "{} endpoints spoiled by junk: {:?} vs {:?}", name, eps, spoiled_eps
                    );
                }
            }
        }
    }
}
