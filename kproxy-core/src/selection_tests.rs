//! Endpoint selection, case by case, named after upstream's
//! `TestCategorizeEndpoints` table.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::model::{Protocol, ZONE_LABEL};

const NODE: &str = "node-a";

fn node(zone: Option<&str>) -> NodeInfo {
    let mut n = NodeInfo::named(NODE);
    if let Some(z) = zone {
        n.labels = BTreeMap::from([(ZONE_LABEL.to_string(), z.to_string())]);
    }
    n
}

/// `spec` is `ip[/flags]`: `l` local, `r` not ready, `t` terminating (and
/// serving), `x` terminating not serving, `z:<zones>` zone hints separated by
/// `+`, `n:<nodes>` node hints.
fn ep(spec: &str) -> Endpoint {
    let mut parts = spec.split('/');
    let ip = parts.next().unwrap().parse().unwrap();
    let mut e = Endpoint::ready(ip, 80, false);
    for flag in parts {
        match flag {
            "l" => e.is_local = true,
            "r" => e.ready = false,
            "t" => {
                e.ready = false;
                e.terminating = true;
            }
            "x" => {
                e.ready = false;
                e.serving = false;
                e.terminating = true;
            }
            f if f.starts_with("z:") => e.zone_hints = f[2..].split('+').map(String::from).collect(),
            f if f.starts_with("n:") => e.node_hints = f[2..].split('+').map(String::from).collect(),
            f => panic!("unknown flag {f}"),
        }
    }
    e
}

fn svc(itp_local: bool, etp_local: bool) -> ServicePortInfo {
    let mut s = ServicePortInfo::cluster_ip("172.30.0.1".parse().unwrap(), 80, Protocol::Tcp);
    s.internal_policy_local = itp_local;
    if etp_local {
        s.node_port = Some(30080);
        s.external_policy_local = true;
    }
    s
}

fn ips(eps: &[Endpoint]) -> BTreeSet<String> {
    eps.iter().map(|e| e.ip.to_string()).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

struct Case {
    name: &'static str,
    service: ServicePortInfo,
    zone: Option<&'static str>,
    endpoints: &'static [&'static str],
    cluster: Option<&'static [&'static str]>,
    local: Option<&'static [&'static str]>,
    all: &'static [&'static str],
    has_any: bool,
}

fn check(c: &Case) {
    let eps: Vec<Endpoint> = c.endpoints.iter().map(|s| ep(s)).collect();
    let got = select_endpoints(&eps, &c.service, &node(c.zone));
    match c.cluster {
        Some(want) => assert_eq!(ips(&got.cluster), set(want), "{}: cluster", c.name),
        None => assert!(got.cluster.is_empty(), "{}: cluster should be unused", c.name),
    }
    match c.local {
        Some(want) => assert_eq!(ips(&got.local), set(want), "{}: local", c.name),
        None => assert!(got.local.is_empty(), "{}: local should be unused", c.name),
    }
    assert_eq!(ips(&got.all_reachable()), set(c.all), "{}: all reachable", c.name);
    assert_eq!(got.has_any, c.has_any, "{}: has_any", c.name);
}

#[test]
fn categorize_endpoints_like_upstream() {
    let cases = [
        Case {
            name: "hints enabled, hints annotation == auto",
            service: svc(false, false),
            zone: Some("zone-a"),
            endpoints: &["10.1.2.3/z:zone-a", "10.1.2.4/z:zone-b", "10.1.2.5/z:zone-c", "10.1.2.6/z:zone-a"],
            cluster: Some(&["10.1.2.3", "10.1.2.6"]),
            local: None,
            all: &["10.1.2.3", "10.1.2.6"],
            has_any: true,
        },
        Case {
            name: "externalTrafficPolicy: Local, topology ignored for Local endpoints",
            service: svc(false, true),
            zone: Some("zone-a"),
            endpoints: &["10.1.2.3/l/z:zone-a", "10.1.2.4/l/z:zone-b", "10.1.2.5/z:zone-c", "10.1.2.6/z:zone-a"],
            cluster: Some(&["10.1.2.3", "10.1.2.6"]),
            local: Some(&["10.1.2.3", "10.1.2.4"]),
            all: &["10.1.2.3", "10.1.2.4", "10.1.2.6"],
            has_any: true,
        },
        Case {
            name: "internalTrafficPolicy: Local, topology ignored for Local endpoints",
            service: svc(true, false),
            zone: Some("zone-a"),
            endpoints: &["10.1.2.3/l/z:zone-a", "10.1.2.4/l/z:zone-b", "10.1.2.5/z:zone-c", "10.1.2.6/z:zone-a"],
            cluster: None,
            local: Some(&["10.1.2.3", "10.1.2.4"]),
            all: &["10.1.2.3", "10.1.2.4"],
            has_any: true,
        },
        Case {
            name: "empty node labels",
            service: svc(false, false),
            zone: None,
            endpoints: &["10.1.2.3/z:zone-a"],
            cluster: Some(&["10.1.2.3"]),
            local: None,
            all: &["10.1.2.3"],
            has_any: true,
        },
        Case {
            name: "node in different zone, no endpoint filtering",
            service: svc(false, false),
            zone: Some("zone-b"),
            endpoints: &["10.1.2.3/z:zone-a"],
            cluster: Some(&["10.1.2.3"]),
            local: None,
            all: &["10.1.2.3"],
            has_any: true,
        },
        Case {
            name: "unready endpoint",
            service: svc(false, false),
            zone: Some("zone-a"),
            endpoints: &["10.1.2.3/z:zone-a", "10.1.2.4/z:zone-b", "10.1.2.5/z:zone-c", "10.1.2.6/r/z:zone-a"],
            cluster: Some(&["10.1.2.3"]),
            local: None,
            all: &["10.1.2.3"],
            has_any: true,
        },
        Case {
            name: "only unready endpoints in same zone (should not filter)",
            service: svc(false, false),
            zone: Some("zone-a"),
            endpoints: &["10.1.2.3/r/z:zone-a", "10.1.2.4/z:zone-b", "10.1.2.5/z:zone-c", "10.1.2.6/r/z:zone-a"],
            cluster: Some(&["10.1.2.4", "10.1.2.5"]),
            local: None,
            all: &["10.1.2.4", "10.1.2.5"],
            has_any: true,
        },
        Case {
            name: "missing hints, fall back to cluster-wide endpoints",
            service: svc(false, false),
            zone: Some("zone-a"),
            endpoints: &["10.1.2.3/z:zone-a", "10.1.2.4/z:zone-b", "10.1.2.5", "10.1.2.6/z:zone-a"],
            cluster: Some(&["10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6"]),
            local: None,
            all: &["10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6"],
            has_any: true,
        },
        Case {
            name: "multiple hints per endpoint, filtering includes any endpoint with zone included",
            service: svc(false, false),
            zone: Some("zone-c"),
            endpoints: &["10.1.2.1/z:zone-a+zone-b+zone-c", "10.1.2.2/z:zone-b+zone-c", "10.1.2.3/z:zone-b+zone-d", "10.1.2.4/z:zone-c"],
            cluster: Some(&["10.1.2.1", "10.1.2.2", "10.1.2.4"]),
            local: None,
            all: &["10.1.2.1", "10.1.2.2", "10.1.2.4"],
            has_any: true,
        },
        Case {
            name: "conflicting topology and localness require merging allEndpoints",
            service: svc(false, true),
            zone: Some("zone-a"),
            endpoints: &["10.0.0.0/l/z:zone-a", "10.0.0.1/l/z:zone-b", "10.0.0.2/z:zone-a", "10.0.0.3/z:zone-b"],
            cluster: Some(&["10.0.0.0", "10.0.0.2"]),
            local: Some(&["10.0.0.0", "10.0.0.1"]),
            all: &["10.0.0.0", "10.0.0.1", "10.0.0.2"],
            has_any: true,
        },
        Case {
            name: "internalTrafficPolicy: Local, with empty endpoints",
            service: svc(true, false),
            zone: None,
            endpoints: &[],
            cluster: None,
            local: None,
            all: &[],
            has_any: false,
        },
        Case {
            name: "internalTrafficPolicy: Local, but all endpoints are remote",
            service: svc(true, false),
            zone: None,
            endpoints: &["10.0.0.0", "10.0.0.1"],
            cluster: None,
            local: None,
            all: &[],
            has_any: true,
        },
        Case {
            name: "internalTrafficPolicy: Local, some endpoints are local",
            service: svc(true, false),
            zone: None,
            endpoints: &["10.0.0.0/l", "10.0.0.1"],
            cluster: None,
            local: Some(&["10.0.0.0"]),
            all: &["10.0.0.0"],
            has_any: true,
        },
        Case {
            name: "Cluster traffic policy, endpoints not Ready",
            service: svc(false, false),
            zone: None,
            endpoints: &["10.0.0.0/r", "10.0.0.1/r"],
            cluster: None,
            local: None,
            all: &[],
            has_any: false,
        },
        Case {
            name: "Cluster traffic policy, some endpoints are Ready",
            service: svc(false, false),
            zone: None,
            endpoints: &["10.0.0.0/r", "10.0.0.1"],
            cluster: Some(&["10.0.0.1"]),
            local: None,
            all: &["10.0.0.1"],
            has_any: true,
        },
        Case {
            name: "Cluster traffic policy, all endpoints are terminating",
            service: svc(false, false),
            zone: None,
            endpoints: &["10.0.0.0/t", "10.0.0.1/x"],
            cluster: Some(&["10.0.0.0"]),
            local: None,
            all: &["10.0.0.0"],
            has_any: true,
        },
        Case {
            name: "iTP: Local, eTP: Cluster, some endpoints local",
            service: {
                let mut s = svc(true, false);
                s.node_port = Some(30080);
                s
            },
            zone: None,
            endpoints: &["10.0.0.0/l", "10.0.0.1"],
            cluster: Some(&["10.0.0.0", "10.0.0.1"]),
            local: Some(&["10.0.0.0"]),
            all: &["10.0.0.0", "10.0.0.1"],
            has_any: true,
        },
        Case {
            name: "iTP: Cluster, eTP: Local, some endpoints local",
            service: svc(false, true),
            zone: None,
            endpoints: &["10.0.0.0/l", "10.0.0.1"],
            cluster: Some(&["10.0.0.0", "10.0.0.1"]),
            local: Some(&["10.0.0.0"]),
            all: &["10.0.0.0", "10.0.0.1"],
            has_any: true,
        },
        Case {
            name: "iTP: Local, eTP: Local, all endpoints remote",
            service: svc(true, true),
            zone: None,
            endpoints: &["10.0.0.0", "10.0.0.1"],
            cluster: Some(&["10.0.0.0", "10.0.0.1"]),
            local: None,
            all: &["10.0.0.0", "10.0.0.1"],
            has_any: true,
        },
        Case {
            name: "iTP: Local, eTP: Local, all endpoints remote and terminating",
            service: svc(true, true),
            zone: None,
            endpoints: &["10.0.0.0/t", "10.0.0.1/t"],
            cluster: Some(&["10.0.0.0", "10.0.0.1"]),
            local: None,
            all: &["10.0.0.0", "10.0.0.1"],
            has_any: true,
        },
        Case {
            name: "iTP: Local, eTP: Local, local endpoint terminating, remote ready",
            service: svc(true, true),
            zone: None,
            endpoints: &["10.0.0.0/l/t", "10.0.0.1"],
            cluster: Some(&["10.0.0.1"]),
            local: Some(&["10.0.0.0"]),
            all: &["10.0.0.0", "10.0.0.1"],
            has_any: true,
        },
        Case {
            name: "PreferSameNode: node hints choose this node's endpoint",
            service: svc(false, false),
            zone: Some("zone-a"),
            endpoints: &["10.0.0.0/z:zone-a/n:node-a", "10.0.0.1/z:zone-a/n:node-b"],
            cluster: Some(&["10.0.0.0"]),
            local: None,
            all: &["10.0.0.0"],
            has_any: true,
        },
        Case {
            name: "PreferSameNode: no hint for this node falls back to zone hints",
            service: svc(false, false),
            zone: Some("zone-a"),
            endpoints: &["10.0.0.0/z:zone-a/n:node-b", "10.0.0.1/z:zone-b/n:node-c"],
            cluster: Some(&["10.0.0.0"]),
            local: None,
            all: &["10.0.0.0"],
            has_any: true,
        },
        Case {
            name: "terminating fallback ignores topology",
            service: svc(false, false),
            zone: Some("zone-a"),
            endpoints: &["10.0.0.0/t/z:zone-b", "10.0.0.1/t/z:zone-b"],
            cluster: Some(&["10.0.0.0", "10.0.0.1"]),
            local: None,
            all: &["10.0.0.0", "10.0.0.1"],
            has_any: true,
        },
    ];
    for c in &cases {
        check(c);
    }
}

#[test]
fn topology_mode_is_all_or_nothing() {
    let n = node(Some("zone-a"));
    assert_eq!(topology_mode(&[ep("10.0.0.1/z:zone-a"), ep("10.0.0.2")], &n), TopologyMode::None);
    assert_eq!(topology_mode(&[ep("10.0.0.1/z:zone-a"), ep("10.0.0.2/r")], &n), TopologyMode::SameZone, "unready endpoints do not count");
    assert_eq!(topology_mode(&[ep("10.0.0.1/n:node-a"), ep("10.0.0.2/n:node-b")], &n), TopologyMode::SameNode);
    assert_eq!(topology_mode(&[], &n), TopologyMode::None);
}
