//! Change tracking with upstream's semantics.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::*;
use crate::convert::{SERVICE_NAME_LABEL, TRIGGER_TIME_ANNOTATION};
use crate::endpoints_map::EndpointsMap;
use crate::model::{IpFamily, NamespacedName, Protocol, ServicePortName};
use kproxy_oracle::fixtures::{service, slice, EndpointState};
use crate::service_map::ServiceMap;

fn spn(name: &str, port: &str, protocol: Protocol) -> ServicePortName {
    ServicePortName::new("ns", name, port, protocol)
}

#[test]
fn service_add_then_delete_before_a_sync_is_no_change() {
    let mut t = ServiceChangeTracker::new(IpFamily::V4);
    let svc = service("ns", "a", &["172.30.0.1"]).port("p", 80, "TCP", 0).build();
    assert!(t.update(None, Some(&svc)));
    assert!(!t.update(Some(&svc), None));
    let mut map = ServiceMap::new();
    assert_eq!(t.apply(&mut map), ServiceUpdate::default());
    assert!(map.is_empty());
}

#[test]
fn deleting_a_udp_service_reports_its_cluster_ip() {
    let mut t = ServiceChangeTracker::new(IpFamily::V4);
    let svc = service("ns", "dns", &["172.30.0.10"]).port("dns", 53, "UDP", 0).port("tcp", 53, "TCP", 0).build();
    t.update(None, Some(&svc));
    let mut map = ServiceMap::new();
    t.apply(&mut map);
    assert_eq!(map.len(), 2);
    t.update(Some(&svc), None);
    let update = t.apply(&mut map);
    assert!(map.is_empty());
    assert_eq!(update.updated_services.len(), 1);
    let ips: Vec<String> = update.deleted_udp_cluster_ips.iter().map(|i| i.to_string()).collect();
    assert_eq!(ips, vec!["172.30.0.10"]);
}

#[test]
fn an_update_that_changes_nothing_the_proxy_uses_is_no_change() {
    let mut t = ServiceChangeTracker::new(IpFamily::V4);
    let svc = service("ns", "a", &["172.30.0.1"]).port("p", 80, "TCP", 0).build();
    t.update(None, Some(&svc));
    t.apply(&mut ServiceMap::new());
    let mut relabeled = svc.clone();
    relabeled.metadata.labels = Some(BTreeMap::from([("team".to_string(), "x".to_string())]));
    assert!(!t.update(Some(&svc), Some(&relabeled)));
}

fn ep_slice(name: &str, ips: &[(&str, EndpointState)]) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    let mut b = slice("ns", "svc", name, "IPv4").port("dns", 53, "UDP");
    for (ip, state) in ips {
        b = b.endpoint(ip, "node-a", *state);
    }
    b.build()
}

#[test]
fn removed_udp_endpoints_are_reported_stale() {
    let mut t = EndpointsChangeTracker::new(IpFamily::V4, "node-a");
    let mut map = EndpointsMap::new();
    t.update(&ep_slice("s1", &[("10.0.0.1", EndpointState::Ready), ("10.0.0.2", EndpointState::Ready)]), false);
    let first = t.apply(&mut map);
    assert_eq!(first.newly_active, vec![spn("svc", "dns", Protocol::Udp)], "0 -> some serving endpoints");
    assert!(first.stale_endpoints.is_empty());
    t.update(&ep_slice("s1", &[("10.0.0.2", EndpointState::Ready)]), false);
    let second = t.apply(&mut map);
    let stale: Vec<String> = second.stale_endpoints.iter().map(|(n, e)| format!("{n} {e}")).collect();
    assert_eq!(stale, vec!["ns/svc:dns 10.0.0.1:53"]);
    assert!(second.newly_active.is_empty());
    assert_eq!(map.get(&spn("svc", "dns", Protocol::Udp)).len(), 1);
}

#[test]
fn an_endpoint_that_stops_serving_is_stale() {
    let mut t = EndpointsChangeTracker::new(IpFamily::V4, "node-a");
    let mut map = EndpointsMap::new();
    t.update(&ep_slice("s1", &[("10.0.0.1", EndpointState::Ready)]), false);
    t.apply(&mut map);
    t.update(&ep_slice("s1", &[("10.0.0.1", EndpointState::Terminating)]), false);
    let update = t.apply(&mut map);
    assert_eq!(update.stale_endpoints.len(), 1);
}

#[test]
fn slices_of_one_service_merge_and_deleting_one_keeps_the_other() {
    let mut t = EndpointsChangeTracker::new(IpFamily::V4, "node-a");
    let mut map = EndpointsMap::new();
    t.update(&ep_slice("s1", &[("10.0.0.1", EndpointState::Ready)]), false);
    t.update(&ep_slice("s2", &[("10.0.0.2", EndpointState::Ready), ("10.0.0.1", EndpointState::Ready)]), false);
    t.apply(&mut map);
    assert_eq!(map.get(&spn("svc", "dns", Protocol::Udp)).len(), 2);
    t.update(&ep_slice("s2", &[]), true);
    t.apply(&mut map);
    let left: Vec<String> = map.get(&spn("svc", "dns", Protocol::Udp)).iter().map(|e| e.to_string()).collect();
    assert_eq!(left, vec!["10.0.0.1:53"]);
}

#[test]
fn a_slice_that_changes_owner_leaves_its_old_service() {
    let mut t = EndpointsChangeTracker::new(IpFamily::V4, "node-a");
    let mut map = EndpointsMap::new();
    let original = ep_slice("s1", &[("10.0.0.1", EndpointState::Ready)]);
    t.update(&original, false);
    t.apply(&mut map);
    let mut moved = original.clone();
    moved.metadata.labels.as_mut().unwrap().insert(SERVICE_NAME_LABEL.into(), "other".into());
    t.update(&moved, false);
    let update = t.apply(&mut map);
    assert!(map.get(&spn("svc", "dns", Protocol::Udp)).is_empty());
    assert_eq!(map.get(&spn("other", "dns", Protocol::Udp)).len(), 1);
    assert_eq!(update.updated_services.len(), 2);
}

#[test]
fn trigger_times_are_kept_for_updates_and_dropped_for_deletions() {
    let mut t = EndpointsChangeTracker::new(IpFamily::V4, "node-a");
    let mut map = EndpointsMap::new();
    let secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() + 3600;
    let later = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    let stamp = k8s_openapi::jiff::Timestamp::from_second(secs as i64).unwrap().to_string();
    let mut s = ep_slice("s1", &[("10.0.0.1", EndpointState::Ready)]);
    s.metadata.annotations = Some(BTreeMap::from([(TRIGGER_TIME_ANNOTATION.to_string(), stamp)]));
    t.update(&s, false);
    let update = t.apply(&mut map);
    let times = &update.trigger_times[&NamespacedName::new("ns", "svc")];
    assert_eq!(times.len(), 1);
    assert!(times[0].duration_since(later).unwrap_or_else(|e| e.duration()) < Duration::from_millis(1));

    t.update(&s, true);
    let update = t.apply(&mut map);
    assert!(update.trigger_times.is_empty(), "a deletion's annotation is not this change's time");
}

#[test]
fn trigger_times_older_than_the_tracker_are_ignored() {
    let mut t = EndpointsChangeTracker::new(IpFamily::V4, "node-a");
    let mut s = ep_slice("s1", &[("10.0.0.1", EndpointState::Ready)]);
    s.metadata.annotations = Some(BTreeMap::from([(TRIGGER_TIME_ANNOTATION.to_string(), "2001-01-01T00:00:00Z".to_string())]));
    t.update(&s, false);
    assert!(t.apply(&mut EndpointsMap::new()).trigger_times.is_empty());
}
