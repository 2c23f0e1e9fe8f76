//! A directory of manifests as the cluster (kproxy's standalone mode):
//! Services, EndpointSlices, the Node and ServiceCIDRs read from YAML (or
//! JSON) files by [`Directory`], which no file can break, and followed
//! on file events (inotify) with a one-second poll as the fallback, their
//! differences handed to a [`Sink`] ([`follow`]) or a stream
//! ([`updates`]).
//!
//! A poll that finds no file changed costs a `stat` per file; a changed
//! file is parsed again alone and only its objects are compared, and
//! objects are shared (`Arc`) between the files, the merged state and the
//! updates, so nothing is copied. A file event that ends a change (a file
//! closed after writing, moved, removed) wakes the source at once; a
//! write still under way waits up to 20 ms for its end.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use std::sync::Arc;

use kproxy_core::runner::Update;

use crate::kube_source::{ChannelSink, Sink, Updates};
use crate::selector::is_proxied;

mod directory;
mod events;

pub use directory::{Directory, Manifests, MAX_FILE_BYTES};
use directory::ObjectKey;

/// The updates that take `old` to `new` (objects the label selector
/// excludes count as absent).
pub fn diff(old: &Manifests, new: &Manifests) -> Vec<Update> {
    let keys: BTreeSet<ObjectKey> = old.keys().into_iter().chain(new.keys()).collect();
    let mut out = diff_objects(old, new, &keys);
    let ranges = new.service_cidr_ranges();
    if ranges != old.service_cidr_ranges() {
        out.push(Update::ServiceCidrs(Arc::new(ranges)));
    }
    out
}

/// The updates for the objects `keys` from `old` to `new` (ServiceCIDRs
/// aside): Services first, then EndpointSlices, then Nodes.
fn diff_objects(old: &Manifests, new: &Manifests, keys: &BTreeSet<ObjectKey>) -> Vec<Update> {
    let mut out = Vec::new();
    let of = |kind: &'static str| keys.iter().filter(move |k| k.0 == kind).map(|k| k.1.as_str());
    for k in of("Service") {
        let (before, now) = (service(old, k), service(new, k));
        if !same(before, now) {
            out.push(Update::Service { previous: before.cloned(), current: now.cloned() });
        }
    }
    for k in of("EndpointSlice") {
        let (before, now) = (slice(old, k), slice(new, k));
        if !same(before, now) {
            match (before, now) {
                (_, Some(s)) => out.push(Update::EndpointSlice { slice: Arc::clone(s), removed: false }),
                (Some(s), None) => out.push(Update::EndpointSlice { slice: Arc::clone(s), removed: true }),
                (None, None) => {}
            }
        }
    }
    // A Node gone from the files changes nothing (as before it came).
    for k in of("Node") {
        if let Some(n) = new.nodes.get(k) {
            if !same(old.nodes.get(k), Some(n)) {
                out.push(Update::Node(Arc::clone(n)));
            }
        }
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
    state.nodes.get(node_name).is_none_or(|n| crate::health::node_eligible(Some(n)))
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

/// Feeds `sink` from `dir`, starting from `state` (already loaded by
/// `directory`), until the future is dropped: the initial objects and the
/// `*Synced` markers first, then the differences whenever files change,
/// with the node's eligibility ([`node_eligible`]) after each. Problems
/// are logged: new ones at once, lasting ones once a minute.
pub async fn follow<S: Sink>(sink: &S, node_name: &str, dir: &Path, state: Manifests, mut directory: Directory) {
    let mut initial = diff(&Manifests::default(), &state);
    initial.push(Update::ServicesSynced);
    initial.push(Update::EndpointSlicesSynced);
    sink.node_eligible(node_eligible(&state, node_name));
    sink.send(initial).await;
    let mut ranges = state.service_cidr_ranges();
    // From here on the directory's own merge is the state.
    drop(state);
    let mut problems_seen = BTreeMap::new();
    // File events wake the source at once; the one-second poll stays as
    // the fallback (and settles files caught half-written).
    let mut events = events::DirEvents::watch(dir)
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
        let woken = std::time::Instant::now();
        let (changed, mut problems) = match directory.refresh(dir) {
            Ok(refreshed) => refreshed,
            Err(e) => {
                for p in problems_to_log(&mut problems_seen, vec![e], std::time::Instant::now()) {
                    tracing::warn!("{p}");
                }
                continue;
            }
        };
        problems.extend(directory.duplicates());
        for p in problems_to_log(&mut problems_seen, problems, std::time::Instant::now()) {
            tracing::warn!("manifest problem: {p}");
        }
        // Nothing changed (the usual poll): no comparison.
        if !changed {
            continue;
        }
        let read = woken.elapsed();
        // Only the objects of the files that changed are compared.
        let (before, touched) = directory.take_touched();
        let state = directory.merged();
        sink.node_eligible(node_eligible(state, node_name));
        let mut updates = diff_objects(&before, state, &touched);
        let now_ranges = state.service_cidr_ranges();
        if now_ranges != ranges {
            updates.push(Update::ServiceCidrs(Arc::new(now_ranges.clone())));
            ranges = now_ranges;
        }
        tracing::trace!(
            read_ms = read.as_secs_f64() * 1000.0,
            compare_ms = (woken.elapsed() - read).as_secs_f64() * 1000.0,
            updates = updates.len(),
            "manifests changed"
        );
        if !updates.is_empty() {
            sink.send(updates).await;
        }
    }
}

/// Loads `dir` (logging its problems) and returns its updates for one
/// runner, from a task that runs [`follow`] until the stream is dropped;
/// an error when the directory cannot be read. Spawns on the current
/// tokio runtime.
pub fn updates(dir: &Path, node_name: &str) -> Result<Updates, String> {
    let mut directory = Directory::default();
    let (state, problems) = directory.load(dir)?;
    for p in &problems {
        tracing::warn!("manifest problem: {p}");
    }
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let (dir, node_name) = (dir.to_path_buf(), node_name.to_string());
    let task = tokio::spawn(async move { follow(&ChannelSink(tx), &node_name, &dir, state, directory).await });
    Ok(Updates::new(rx, task))
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

    /// The stream form: the directory's objects, then the `*Synced`
    /// markers, then a file written later as one more update.
    #[tokio::test]
    async fn a_directory_is_a_stream_of_updates_that_follows_its_files() {
        use futures::StreamExt;
        let dir = std::env::temp_dir().join(format!("kproxy-agent-manifests-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let web = |ip: &str| serde_json::to_string(&service("demo", "web", &[ip]).port("http", 80, "TCP", 0).build()).unwrap();
        std::fs::write(dir.join("web.yaml"), web("10.96.0.10")).unwrap();
        let mut updates = updates(&dir, "node-a").unwrap();
        let mut first = Vec::new();
        while !matches!(first.last(), Some(Update::EndpointSlicesSynced)) {
            first.push(tokio::time::timeout(Duration::from_secs(30), updates.next()).await.unwrap().unwrap());
        }
        assert!(matches!(&first[0], Update::Service { previous: None, current: Some(s) } if s.spec.as_ref().unwrap().cluster_ip.as_deref() == Some("10.96.0.10")), "{first:?}");
        std::fs::write(dir.join("web.yaml"), web("10.96.0.11")).unwrap();
        let next = tokio::time::timeout(Duration::from_secs(30), updates.next()).await.unwrap().unwrap();
        assert!(matches!(&next, Update::Service { previous: Some(_), current: Some(s) } if s.spec.as_ref().unwrap().cluster_ip.as_deref() == Some("10.96.0.11")), "{next:?}");
        let err = super::updates(&dir.join("nothing"), "node-a").unwrap_err();
        assert!(err.contains("cannot read the manifests directory"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
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

/// The incremental merge against a merge from scratch, over random
/// sequences of whole-file writes (objects added, changed, moved between
/// files, duplicated), half-written files and removed files: after every
/// refresh the merge is the same, and the updates computed from the
/// touched objects alone are those of comparing everything.
#[cfg(test)]
mod incremental {
    use super::*;
    use proptest::prelude::*;

    /// What one step does to one of three files.
    #[derive(Debug, Clone)]
    enum Step {
        /// Writes the file whole: Services (and slices) by number, each
        /// with a port (a changed port is a changed object).
        Write(usize, Vec<(u8, u16)>),
        /// Writes its first half only (a writer caught mid-way).
        Half(usize, Vec<(u8, u16)>),
        Remove(usize),
        /// Reads without a change (settles half-written files).
        Nothing,
    }

    fn step() -> impl Strategy<Value = Step> {
        let objects = proptest::collection::vec((0u8..8, 80u16..83), 0..6);
        prop_oneof![
            4 => (0usize..3, objects.clone()).prop_map(|(f, o)| Step::Write(f, o)),
            1 => (0usize..3, objects).prop_map(|(f, o)| Step::Half(f, o)),
            1 => (0usize..3).prop_map(Step::Remove),
            1 => Just(Step::Nothing),
        ]
    }

    fn text(objects: &[(u8, u16)]) -> String {
        let docs: Vec<String> = objects
            .iter()
            .flat_map(|(n, port)| {
                [
                    format!("{{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{{\"name\":\"s{n}\",\"namespace\":\"d\"}},\"spec\":{{\"clusterIP\":\"10.96.0.{n}\",\"ports\":[{{\"port\":{port}}}]}}}}"),
                    format!("{{\"apiVersion\":\"discovery.k8s.io/v1\",\"kind\":\"EndpointSlice\",\"metadata\":{{\"name\":\"s{n}-x\",\"namespace\":\"d\",\"labels\":{{\"kubernetes.io/service-name\":\"s{n}\"}}}},\"addressType\":\"IPv4\",\"endpoints\":[{{\"addresses\":[\"10.0.0.{port}\"]}}]}}"),
                ]
            })
            .collect();
        docs.join("\n---\n")
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn the_incremental_merge_is_the_merge_from_scratch(steps in proptest::collection::vec(step(), 1..12)) {
            let dir = std::env::temp_dir().join(format!("kproxy-incremental-{}-{:?}", std::process::id(), std::thread::current().id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let file = |f: usize| dir.join(format!("f{f}.yaml"));
            let write = |f: usize, t: &str| {
                // A new inode each time, as editors and ConfigMap updates do.
                let tmp = dir.join("tmp");
                std::fs::write(&tmp, t).unwrap();
                std::fs::rename(&tmp, file(f)).unwrap();
            };
            let mut directory = Directory::default();
            let mut last = Manifests::default();
            for s in steps {
                match &s {
                    Step::Write(f, o) => write(*f, &text(o)),
                    Step::Half(f, o) => { let t = text(o); write(*f, &t[..t.len() / 2]); }
                    Step::Remove(f) => { let _ = std::fs::remove_file(file(*f)); }
                    Step::Nothing => {}
                }
                directory.refresh(&dir).unwrap();
                let now = directory.merged_from_scratch();
                prop_assert_eq!(directory.merged(), &now, "after {:?}", s);
                let (before, touched) = directory.take_touched();
                let incremental = format!("{:?}", diff_objects(&before, directory.merged(), &touched));
                let mut full = diff(&last, &now);
                full.retain(|u| !matches!(u, Update::ServiceCidrs(_)));
                prop_assert_eq!(incremental, format!("{full:?}"), "after {:?}", s);
                last = now;
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
