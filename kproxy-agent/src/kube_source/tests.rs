//! The watcher event → update logic, relists included.

use super::*;
use kproxy_oracle::fixtures::service;
use kube::ResourceExt;

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
fn the_first_list_is_passed_on_as_it_arrives_then_synced() {
    let mut cache = ObjectCache::default();
    assert!(cache.apply(Event::Init).is_empty());
    assert_eq!(names(&cache.apply(Event::InitApply(svc("a", "1")))), ["add a"]);
    assert_eq!(names(&cache.apply(Event::InitApply(svc("b", "1")))), ["add b"]);
    assert_eq!(names(&cache.apply(Event::InitDone)), ["synced"]);
    assert!(cache.listing.is_none());
}

#[test]
fn a_list_cut_short_and_restarted_loses_nothing() {
    let mut cache = ObjectCache::default();
    list(&mut cache, &[svc("a", "1"), svc("b", "1")]);
    // A relist delivers a's new version, then fails; the next one completes.
    cache.apply(Event::Init);
    assert_eq!(names(&cache.apply(Event::InitApply(svc("a", "2")))), ["update a 1->2"]);
    let again = list(&mut cache, &[svc("a", "2")]);
    assert_eq!(again, ["delete b"], "a is not delivered twice, b's deletion is found");
}

#[test]
fn a_deletion_carries_the_final_state_from_the_event() {
    let mut cache: ObjectCache<Service> = ObjectCache::identities();
    list(&mut cache, &[svc("a", "1")]);
    let gone = cache.apply(Event::Delete(svc("a", "2")));
    let [Change::Delete(last)] = &gone[..] else { panic!("one deletion expected: {gone:?}") };
    assert!(last.spec.is_some(), "the whole final object, not the cached skeleton");
    assert!(cache.known.is_empty());
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
    let u = service_update(Change::Upsert { previous: Some(svc("a", "1").into()), current: svc("a", "2").into() });
    assert!(matches!(u, Update::Service { previous: Some(_), current: Some(_) }));
    assert!(matches!(service_update(Change::Delete(svc("a", "2").into())), Update::Service { previous: Some(_), current: None }));
    assert!(matches!(service_update(Change::Synced), Update::ServicesSynced));
    assert!(matches!(slice_update(Change::Synced), Update::EndpointSlicesSynced));
}

#[test]
fn an_identity_cache_still_diffs_relists_and_names_deletions() {
    let mut cache: ObjectCache<Service> = ObjectCache::identities();
    list(&mut cache, &[svc("a", "1"), svc("b", "1")]);
    let relisted = list(&mut cache, &[svc("a", "1"), svc("c", "2")]);
    assert_eq!(relisted, ["add c", "delete b"]);
    assert!(cache.known.values().all(|(kept, _)| matches!(kept, Kept::Version(Some(_)))), "the cache keeps versions only");
    assert!(cache.apply(Event::Apply(svc("a", "1"))).is_empty(), "same version: nothing");
    // An update's previous state and a relist's deletion are skeletons
    // naming the object.
    let updated = cache.apply(Event::Apply(svc("a", "3")));
    let [Change::Upsert { previous: Some(p), current }] = &updated[..] else { panic!("one update expected: {updated:?}") };
    assert_eq!((p.namespace().as_deref(), p.name_any().as_str(), p.resource_version().as_deref()), (Some("ns"), "a", Some("1")));
    assert!(p.spec.is_none() && current.spec.is_some());
    let gone = list(&mut cache, &[svc("c", "2")]);
    assert_eq!(gone, ["delete a"]);
    let mut labelled = svc("z", "1");
    labelled.metadata.labels = Some([("app".into(), "web".into())].into());
    let kept = skeleton(&Arc::new(labelled));
    assert!(kept.metadata.labels.is_none() && kept.name_any() == "z" && kept.resource_version().as_deref() == Some("1"));
}

#[test]
fn a_cluster_scoped_object_keeps_no_namespace() {
    let mut cache: ObjectCache<k8s_openapi::api::core::v1::Node> = ObjectCache::identities();
    let mut node = k8s_openapi::api::core::v1::Node::default();
    node.metadata.name = Some("node-a".into());
    node.metadata.resource_version = Some("5".into());
    cache.apply(Event::Init);
    cache.apply(Event::InitApply(node));
    cache.apply(Event::InitDone);
    cache.apply(Event::Init);
    let out = cache.apply(Event::InitDone);
    let [Change::Delete(last)] = &out[..] else { panic!("one deletion expected: {out:?}") };
    assert_eq!((last.metadata.namespace.as_deref(), last.name_any().as_str()), (None, "node-a"));
}
