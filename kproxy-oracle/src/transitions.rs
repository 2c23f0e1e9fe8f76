//! Shared transitions: a sequence of cluster states one proxier goes
//! through, with the cases each state must meet *after* the change from the
//! one before, applied as updates (what a running proxier sees), never as a
//! fresh start. States alone cannot catch a proxier that keeps something of
//! the previous state (affinity still held after it was switched off, an
//! address still owned by a deleted Service).
//!
//! ```no_run
//! use kproxy_oracle::transitions;
//! for t in transitions::all() {
//!     for (i, step) in t.steps.iter().enumerate() {
//!         // Feed the first step, then each step's changes, sync, and check
//!         // `step.cases` with real traffic.
//!         let _ = (i, step);
//!     }
//! }
//! ```

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::fixtures::{self as fx, service, slice, EndpointState::*};
use crate::scenarios::{fwd, outside, pod, Scenario};
use crate::Verdict;
use kproxy_core::model::IpFamily;
use kproxy_core::Proxier;

/// A named sequence of states.
#[derive(Debug, Clone)]
pub struct Transition {
    /// A unique snake_case name.
    pub name: &'static str,
    /// The states, in order; each one's cases hold after the change into it.
    pub steps: Vec<Scenario>,
}

impl Transition {
    /// One scenario for building the test topology (its pods and clients)
    /// once for the whole sequence: every Service of any step (its first
    /// version), every distinct version of every slice (renamed apart, so
    /// each one's endpoints get a pod), and every step's cases.
    pub fn combined(&self) -> Scenario {
        let mut all = self.steps[0].clone();
        let mut services: Vec<Service> = Vec::new();
        for svc in self.steps.iter().flat_map(|step| &step.services) {
            if !services.iter().any(|s| s.metadata.namespace == svc.metadata.namespace && s.metadata.name == svc.metadata.name) {
                services.push(svc.clone());
            }
        }
        let mut seen: Vec<&EndpointSlice> = Vec::new();
        let mut slices = Vec::new();
        for s in self.steps.iter().flat_map(|step| &step.slices) {
            if !seen.contains(&s) {
                seen.push(s);
                let mut version = s.clone();
                version.metadata.name = Some(format!("{}-v{}", s.metadata.name.as_deref().unwrap_or_default(), seen.len()));
                slices.push(version);
            }
        }
        all.services = services;
        all.slices = slices;
        all.cases = self.steps.iter().flat_map(|s| s.cases.clone()).collect();
        all
    }
}

fn key(ns: &Option<String>, name: &Option<String>) -> (String, String) {
    (ns.clone().unwrap_or_default(), name.clone().unwrap_or_default())
}

impl Scenario {
    /// Hands `proxier` the changes from `before` to this state, as the
    /// watch would: updates (old and new), additions and deletions of
    /// Services and EndpointSlices. Node and configuration stay.
    pub fn feed_changes_from<P: Proxier + ?Sized>(&self, before: &Scenario, proxier: &mut P) {
        let name = |m: &ObjectMeta| key(&m.namespace, &m.name);
        diff(&before.services, &self.services, |s| name(&s.metadata), |old, new| {
            proxier.on_service_update(old, new);
        });
        diff(&before.slices, &self.slices, |s| name(&s.metadata), |old, new| {
            if let Some((slice, removed)) = new.map(|n| (n, false)).or(old.map(|o| (o, true))) {
                proxier.on_endpoint_slice_update(slice, removed);
            }
        });
    }
}

/// Calls `change(old, new)` for each object of `before` gone from `after`
/// (`new` is `None`), then for each object of `after` that is new or
/// differs from its namesake (by `name`) in `before`.
fn diff<T: PartialEq, K: Ord>(before: &[T], after: &[T], name: impl Fn(&T) -> K, mut change: impl FnMut(Option<&T>, Option<&T>)) {
    let old: BTreeMap<K, &T> = before.iter().map(|o| (name(o), o)).collect();
    let new: BTreeMap<K, &T> = after.iter().map(|o| (name(o), o)).collect();
    for (k, o) in &old {
        if !new.contains_key(k) {
            change(Some(o), None);
        }
    }
    for (k, n) in &new {
        let was = old.get(k).copied();
        if was != Some(*n) {
            change(was, Some(n));
        }
    }
}

/// Every shared transition.
pub fn all() -> Vec<Transition> {
    vec![session_affinity_switched(), shared_address_released()]
}

const A_IP: &str = "172.30.0.60";
const B_IP: &str = "172.30.0.61";
const A_EPS: [&str; 3] = ["10.180.0.60:80", "10.180.1.60:80", "10.180.1.61:80"];
const B_EPS: [&str; 2] = ["10.180.0.62:80", "10.180.1.62:80"];

/// Service A (ClusterIP and NodePort 3060) with affinity `a`, beside
/// Service B, whose ClientIP affinity never changes.
fn affinity_state(name: &'static str, a: Option<i32>) -> Scenario {
    let mut svc_a = service("ns1", "svc60", &[A_IP]).port("p80", 80, "TCP", 3060).type_("NodePort");
    if let Some(t) = a {
        svc_a = svc_a.affinity(t);
    }
    let slices = vec![
        slice("ns1", "svc60", "svc60-a", "IPv4")
            .port("p80", 80, "TCP")
            .endpoint("10.180.0.60", fx::NODE_NAME, Ready)
            .endpoint("10.180.1.60", fx::OTHER_NODE, Ready)
            .endpoint("10.180.1.61", fx::OTHER_NODE, Ready)
            .build(),
        slice("ns1", "svc61", "svc61-a", "IPv4")
            .port("p80", 80, "TCP")
            .endpoint("10.180.0.62", fx::NODE_NAME, Ready)
            .endpoint("10.180.1.62", fx::OTHER_NODE, Ready)
            .build(),
    ];
    let s = Scenario::new(name, IpFamily::V4).with(
        vec![svc_a.build(), service("ns1", "svc61", &[B_IP]).port("p80", 80, "TCP", 0).affinity(10800).build()],
        slices,
    );
    let (cluster, node_port) = match a {
        Some(t) => (fwd(&A_EPS, false).with_affinity(t as u32), fwd(&A_EPS, true).with_affinity(t as u32)),
        None => (fwd(&A_EPS, false), fwd(&A_EPS, true)),
    };
    s.case("A's ClusterIP", pod(A_IP, 80), cluster)
        .case("A's NodePort", outside(fx::ALLOWED_CLIENT, fx::NODE_IP, 3060), node_port)
        .case("B keeps its affinity", pod(B_IP, 80), fwd(&B_EPS, false).with_affinity(10800))
}

/// Kubernetes' conformance specs "should be able to switch session
/// affinity": affinity switched off must balance at once, for the same
/// clients, while another Service keeps ClientIP affinity; then on again,
/// then its timeout changed.
fn session_affinity_switched() -> Transition {
    Transition {
        name: "session_affinity_switched",
        steps: vec![
            affinity_state("both Services with ClientIP affinity", Some(10800)),
            affinity_state("A switched to no affinity", None),
            affinity_state("A switched back to ClientIP", Some(10800)),
            affinity_state("A's affinity timeout changed", Some(60)),
        ],
    }
}

const SHARED_IP: &str = "192.168.99.60";

/// Two Services with the same externalIP and port (the API allows it);
/// when the one that holds it goes, the other is served at once.
fn shared_address_released() -> Transition {
    let svc = |name: &str, cluster_ip: &str| {
        service("ns1", name, &[cluster_ip]).port("p80", 80, "TCP", 0).external_ips(&[SHARED_IP]).build()
    };
    let slices = vec![
        slice("ns1", "svc62", "svc62-a", "IPv4").port("p80", 80, "TCP").endpoint("10.180.0.63", fx::NODE_NAME, Ready).build(),
        slice("ns1", "svc63", "svc63-a", "IPv4").port("p80", 80, "TCP").endpoint("10.180.0.64", fx::NODE_NAME, Ready).build(),
    ];
    let both = Scenario::new("both Services claim the externalIP", IpFamily::V4)
        .with(vec![svc("svc62", "172.30.0.62"), svc("svc63", "172.30.0.63")], slices.clone())
        .case("the first Service's ClusterIP", pod("172.30.0.62", 80), fwd(&["10.180.0.63:80"], false))
        .case("the second Service's ClusterIP", pod("172.30.0.63", 80), fwd(&["10.180.0.64:80"], false));
    let second_only = Scenario::new("the first Service deleted", IpFamily::V4)
        .with(vec![svc("svc63", "172.30.0.63")], slices[1..].to_vec())
        .case("the externalIP reaches the second Service", outside(fx::ALLOWED_CLIENT, SHARED_IP, 80), fwd(&["10.180.0.64:80"], true))
        .case("the first Service's ClusterIP is gone", pod("172.30.0.62", 80), Verdict::NotService);
    Transition { name: "shared_address_released", steps: vec![both, second_only] }
}
