//! The watcher event → update logic, relists included.

use super::*;
use kproxy_core::oracle::fixtures::service;

fn svc(name: &str, rv: &str) -> Service {
    let mut s = service("ns", name, &["172.30.0.1"]).port("p", 80, "TCP", 0).build();
    s.metadata.resource_version = Some(rv.to_string());
    s
}

fn names(changes: &[Change<Service>]) -> Vec<String> {
    changes
        .iter()
        .map(|c| match c {
            Change::Upsert { previous: None, current } => format!("add {}", current.name_any()),
            Change::Upsert { previous: Some(p), current } => format!("update {} {}->{}", current.name_any(), p.resource_version().unwrap(), current.resource_version().unwrap()),
            Change::Delete(o) => format!("delete {}", o.name_any()),
            Change::Synced => "synced".to_string(),
        })
        .collect()
}

fn list(cache: &mut ObjectCache<Service>, objects: &[Service]) -> Vec<String> {
    let mut out = names(&cache.apply(Event::Init));
    for o in objects {
        out.extend(names(&cache.apply(Event::InitApply(o.clone()))));
    }
    out.extend(names(&cache.apply(Event::InitDone)));
    out.sort();
    out
}

#[test]
fn the_first_list_is_delivered_whole_then_synced() {
    let mut cache = ObjectCache::default();
    let mut init = cache.apply(Event::Init);
    init.extend(cache.apply(Event::InitApply(svc("a", "1"))));
    assert!(init.is_empty(), "nothing before the list is complete");
    let done = cache.apply(Event::InitDone);
    assert_eq!(names(&done), ["add a", "synced"]);
}

#[test]
fn a_relist_after_410_delivers_what_was_missed_and_nothing_else() {
    let mut cache = ObjectCache::default();
    list(&mut cache, &[svc("a", "1"), svc("b", "1"), svc("c", "1")]);
    // Disconnected: b changed, c was deleted, d was added.
    let relisted = list(&mut cache, &[svc("a", "1"), svc("b", "7"), svc("d", "8")]);
    assert_eq!(relisted, ["add d", "delete c", "update b 1->7"]);
}

#[test]
fn watch_events_carry_the_previous_state_and_repeats_are_dropped() {
    let mut cache = ObjectCache::default();
    list(&mut cache, &[svc("a", "1")]);
    assert_eq!(names(&cache.apply(Event::Apply(svc("a", "2")))), ["update a 1->2"]);
    assert!(cache.apply(Event::Apply(svc("a", "2"))).is_empty(), "same resourceVersion");
    assert_eq!(names(&cache.apply(Event::Delete(svc("a", "3")))), ["delete a"]);
    assert_eq!(names(&cache.apply(Event::Apply(svc("a", "4")))), ["add a"]);
}

#[test]
fn changes_become_runner_updates() {
    let u = service_update(Change::Upsert { previous: Some(svc("a", "1")), current: svc("a", "2") });
    assert!(matches!(u, Update::Service { previous: Some(_), current: Some(_) }));
    assert!(matches!(service_update(Change::Delete(svc("a", "2"))), Update::Service { previous: Some(_), current: None }));
    assert!(matches!(service_update(Change::Synced), Update::ServicesSynced));
    assert!(matches!(slice_update(Change::Synced), Update::EndpointSlicesSynced));
}

#[test]
fn the_label_selector_is_upstreams() {
    assert_eq!(label_selector(), "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless");
}
