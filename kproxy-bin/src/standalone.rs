//! Standalone mode's source: the manifests directory, read again when a
//! file event says it changed (inotify) and every second, its differences
//! sent as updates.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use std::sync::Arc;

use kproxy_core::runner::Update;

use crate::manifests::{self, Manifests};
use crate::proxy::{is_proxied, Proxy};

/// The updates that take `old` to `new` (objects the label selector
/// excludes count as absent).
pub fn diff(old: &Manifests, new: &Manifests) -> Vec<Update> {
    let mut out = Vec::new();
    for k in new.services.keys() {
        let (before, now) = (service(old, k), service(new, k));
        if !same(before, now) {
            out.push(Update::Service { previous: before.cloned(), current: now.cloned() });
        }
    }
    for k in old.services.keys().filter(|k| !new.services.contains_key(*k)) {
        if let Some(s) = service(old, k) {
            out.push(Update::Service { previous: Some(Arc::clone(s)), current: None });
        }
    }
    for k in new.slices.keys() {
        let (before, now) = (slice(old, k), slice(new, k));
        if !same(before, now) {
            match (before, now) {
                (_, Some(s)) => out.push(Update::EndpointSlice { slice: Arc::clone(s), removed: false }),
                (Some(s), None) => out.push(Update::EndpointSlice { slice: Arc::clone(s), removed: true }),
                (None, None) => {}
            }
        }
    }
    for k in old.slices.keys().filter(|k| !new.slices.contains_key(*k)) {
        if let Some(s) = slice(old, k) {
            out.push(Update::EndpointSlice { slice: Arc::clone(s), removed: true });
        }
    }
    for (k, n) in &new.nodes {
        if !same(old.nodes.get(k), Some(n)) {
            out.push(Update::Node(Arc::clone(n)));
        }
    }
    let ranges = new.service_cidr_ranges();
    if ranges != old.service_cidr_ranges() {
        out.push(Update::ServiceCidrs(Arc::new(ranges)));
    }
    out
}

/// Whether two versions of an object are equal: the same allocation (not
/// read again), or equal fields.
fn same<T: PartialEq>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
        (None, None) => true,
        _ => false,
    }
}

/// `m`'s Service `k`, unless upstream's label selector excludes it.
fn service<'a>(m: &'a Manifests, k: &str) -> Option<&'a Arc<k8s_openapi::api::core::v1::Service>> {
    m.services.get(k).filter(|s| is_proxied(s.metadata.labels.as_ref()))
}

/// `m`'s EndpointSlice `k`, unless upstream's label selector excludes it.
fn slice<'a>(m: &'a Manifests, k: &str) -> Option<&'a Arc<k8s_openapi::api::discovery::v1::EndpointSlice>> {
    m.slices.get(k).filter(|s| is_proxied(s.metadata.labels.as_ref()))
}

/// Whether the node may receive traffic (see [`kproxy_agent::health::node_eligible`]);
/// standalone, a node with no manifest is eligible.
pub fn node_eligible(state: &Manifests, node_name: &str) -> bool {
    state.nodes.get(node_name).is_none_or(|n| kproxy_agent::health::node_eligible(Some(n)))
}

/// How often a problem that lasts is logged again.
const REPEAT_PROBLEMS: Duration = Duration::from_secs(60);

/// The problems to log now: new ones, and lasting ones every
/// [`REPEAT_PROBLEMS`]; `seen` remembers when each was last logged.
pub fn problems_to_log(seen: &mut BTreeMap<String, std::time::Instant>, problems: Vec<String>, now: std::time::Instant) -> Vec<String> {
    seen.retain(|p, _| problems.contains(p));
    problems
        .into_iter()
        .filter(|p| {
            let due = seen.get(p).is_none_or(|last| now.duration_since(*last) >= REPEAT_PROBLEMS);
            if due {
                seen.insert(p.clone(), now);
            }
            due
        })
        .collect()
}

/// Feeds `proxy` from `dir`, starting from `state` (already loaded by
/// `directory`), until the task is dropped. Only changed files are read
/// again.
pub async fn follow(proxy: &Proxy, node_name: &str, dir: &Path, state: Manifests, mut directory: manifests::Directory) {
    let mut initial = diff(&Manifests::default(), &state);
    initial.push(Update::ServicesSynced);
    initial.push(Update::EndpointSlicesSynced);
    proxy.set_node_eligible(node_eligible(&state, node_name));
    proxy.send(initial).await;
    let mut known = state;
    let mut problems_seen = BTreeMap::new();
    // File events wake the source at once; the one-second poll stays as
    // the fallback (and settles files caught half-written).
    let mut events = crate::dir_events::DirEvents::watch(dir)
        .inspect_err(|e| tracing::warn!("{e}; the manifests directory is read every second only"))
        .ok();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = async {
                match events.as_mut() {
                    Some(e) => e.changed().await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        let (changed, mut problems) = match directory.refresh(dir) {
            Ok(refreshed) => refreshed,
            Err(e) => {
                for p in problems_to_log(&mut problems_seen, vec![e], std::time::Instant::now()) {
                    tracing::warn!("{p}");
                }
                continue;
            }
        };
        // Nothing changed (the usual poll): no merge, no comparison.
        let state = changed.then(|| directory.objects());
        problems.extend(directory.duplicates().iter().cloned());
        for p in problems_to_log(&mut problems_seen, problems, std::time::Instant::now()) {
            tracing::warn!("manifest problem: {p}");
        }
        let Some(state) = state else { continue };
        proxy.set_node_eligible(node_eligible(&state, node_name));
        let updates = diff(&known, &state);
        if !updates.is_empty() {
            proxy.send(updates).await;
        }
        known = state;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kproxy_oracle::fixtures::service;

    #[test]
    fn a_lasting_problem_is_logged_again_now_and_then() {
        let mut seen = BTreeMap::new();
        let t0 = std::time::Instant::now();
        let p = |s: &str| vec![s.to_string()];
        assert_eq!(problems_to_log(&mut seen, p("a"), t0), ["a"]);
        assert!(problems_to_log(&mut seen, p("a"), t0 + Duration::from_secs(1)).is_empty(), "not every second");
        assert_eq!(problems_to_log(&mut seen, p("a"), t0 + REPEAT_PROBLEMS), ["a"], "but while it lasts");
        assert!(problems_to_log(&mut seen, Vec::new(), t0 + REPEAT_PROBLEMS).is_empty());
        assert_eq!(problems_to_log(&mut seen, p("a"), t0 + REPEAT_PROBLEMS), ["a"], "a problem that comes back is new");
    }

    #[test]
    fn services_another_proxy_owns_are_left_out() {
        let mut mine = Manifests::default();
        mine.services.insert("ns/a".into(), Arc::new(service("ns", "a", &["172.30.0.1"]).port("p", 80, "TCP", 0).build()));
        let mut theirs = service("ns", "b", &["172.30.0.2"]).port("p", 80, "TCP", 0).build();
        theirs.metadata.labels = Some([("service.kubernetes.io/service-proxy-name".to_string(), "other".to_string())].into());
        mine.services.insert("ns/b".into(), Arc::new(theirs));
        let updates = diff(&Manifests::default(), &mine);
        assert_eq!(updates.len(), 1, "{updates:?}");
        assert!(matches!(&updates[0], Update::Service { current: Some(s), .. } if s.metadata.name.as_deref() == Some("a")));
    }
}
