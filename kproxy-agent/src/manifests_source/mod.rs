//! A directory of manifests as the cluster (kproxy's standalone mode):
//! Services, EndpointSlices, the Node and ServiceCIDRs read from YAML (or
//! JSON) files by [`Directory`], which no file can break, and followed
//! on file events (inotify) with a poll as the fallback (every second
//! without events or while a file settles, else every [`QUIET_POLL`]), their
//! differences handed to a [`Sink`] ([`follow`]) or a stream
//! ([`updates`]).
//!
//! A poll that finds no file changed costs a `stat` per file; a changed
//! file is parsed again alone and only its objects are compared. The
//! directory keeps a hash of each Service and EndpointSlice, not the
//! object: the proxiers hold the state, and changes (the first read
//! included) are handed over in batches of whole files. A file event that ends a change (a file closed
//! after writing, moved, removed) wakes the source at once; a write still
//! under way waits up to 20 ms for its end.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use kproxy_core::runner::Update;

use crate::kube_source::{ChannelSink, Sink, Updates};
use crate::selector::is_proxied;

mod directory;
mod events;
mod read;

pub use directory::{Directory, SETTLE};
pub use read::{read_all, Manifests, MAX_FILE_BYTES};

/// The updates that take `old` to `new` (objects the label selector
/// excludes count as absent): Services first, then EndpointSlices, then
/// Nodes, then the ServiceCIDRs' ranges if they changed. For whole states
/// read at once ([`read_all`]); a running source hands over
/// [`Directory::next_batch`]es instead.
pub fn diff(old: &Manifests, new: &Manifests) -> Vec<Update> {
    let mut out = Vec::new();
    let services: BTreeSet<&String> = old.services.keys().chain(new.services.keys()).collect();
    for k in services {
        let proxied = |m: &Manifests| m.services.get(k).filter(|s| is_proxied(s.metadata.labels.as_ref())).cloned();
        let (before, now) = (proxied(old), proxied(new));
        if before != now {
            out.push(Update::Service { previous: before, current: now });
        }
    }
    let slices: BTreeSet<&String> = old.slices.keys().chain(new.slices.keys()).collect();
    for k in slices {
        let proxied = |m: &Manifests| m.slices.get(k).filter(|s| is_proxied(s.metadata.labels.as_ref())).cloned();
        match (proxied(old), proxied(new)) {
            (before, Some(s)) if before.as_ref() != Some(&s) => out.push(Update::EndpointSlice { slice: s, removed: false }),
            (Some(s), None) => out.push(Update::EndpointSlice { slice: s, removed: true }),
            _ => {}
        }
    }
    // A Node gone from the files changes nothing (as before it came).
    for (k, n) in &new.nodes {
        if old.nodes.get(k) != Some(n) {
            out.push(Update::Node(Arc::clone(n)));
        }
    }
    let ranges = new.service_cidr_ranges();
    if ranges != old.service_cidr_ranges() {
        out.push(Update::ServiceCidrs(Arc::new(ranges)));
    }
    out
}

/// Whether the node may receive traffic (see
/// [`crate::health::node_eligible`]); standalone, a node with no manifest
/// is eligible.
pub fn node_eligible(node: Option<&Node>) -> bool {
    node.is_none_or(|n| crate::health::node_eligible(Some(n)))
}

/// How long the source waits for a file event before it looks at the
/// directory anyway: a second without file events (a filesystem that has
/// none) or while a file is unsettled (its kept objects leave only on a
/// later read, with no event to wake it); otherwise [`QUIET_POLL`], a
/// safety net for changes no event reports (a manifest that is a symlink
/// to a file outside the directory, its target rewritten).
fn poll_interval(events: bool, unsettled: bool) -> Duration {
    if events && !unsettled {
        QUIET_POLL
    } else {
        Duration::from_secs(1)
    }
}

/// The poll's interval while file events work and every file is settled.
/// A quiet poll costs a `stat` per file (about 43 ms at 10,000 files).
pub const QUIET_POLL: Duration = Duration::from_secs(10);

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

/// Hands everything `directory` has read and not yet handed over to
/// `sink`, a batch at a time; the number of updates.
async fn hand_over<S: Sink>(sink: &S, directory: &mut Directory) -> usize {
    let mut count = 0;
    while let Some(batch) = directory.next_batch() {
        count += batch.len();
        if !batch.is_empty() {
            sink.send(batch).await;
        }
    }
    count
}

/// Feeds `sink` from `dir`, already loaded by `directory`
/// ([`Directory::load`]), until the future is dropped: the initial
/// objects one file at a time and the `*Synced` markers first, then the
/// differences whenever files change, with the node's eligibility
/// ([`node_eligible`]) after each. Problems are logged: new ones at once,
/// lasting ones once a minute.
pub async fn follow<S: Sink>(sink: &S, node_name: &str, dir: &Path, mut directory: Directory) {
    sink.node_eligible(node_eligible(directory.node(node_name).as_deref()));
    hand_over(sink, &mut directory).await;
    let mut ranges = directory.service_cidr_ranges();
    let mut initial = Vec::new();
    if !ranges.is_empty() {
        initial.push(Update::ServiceCidrs(Arc::new(ranges.clone())));
    }
    initial.push(Update::ServicesSynced);
    initial.push(Update::EndpointSlicesSynced);
    sink.send(initial).await;
    let mut problems_seen = BTreeMap::new();
    // File events wake the source at once; the poll stays as the
    // fallback, and settles files caught half-written.
    let mut events = events::DirEvents::watch(dir)
        .inspect_err(|e| tracing::warn!("{e}; the manifests directory is read every second only"))
        .ok();
    loop {
        let wait = poll_interval(events.is_some(), directory.unsettled());
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
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
        sink.node_eligible(node_eligible(directory.node(node_name).as_deref()));
        // Only the objects of the files that changed are compared.
        let mut count = hand_over(sink, &mut directory).await;
        let now_ranges = directory.service_cidr_ranges();
        if now_ranges != ranges {
            sink.send(vec![Update::ServiceCidrs(Arc::new(now_ranges.clone()))]).await;
            ranges = now_ranges;
            count += 1;
        }
        tracing::trace!(
            read_ms = read.as_secs_f64() * 1000.0,
            hand_over_ms = (woken.elapsed() - read).as_secs_f64() * 1000.0,
            updates = count,
            "manifests changed"
        );
    }
}

/// Loads `dir` (logging its problems) and returns its updates for one
/// runner, from a task that runs [`follow`] until the stream is dropped;
/// an error when the directory cannot be read. Spawns on the current
/// tokio runtime.
pub fn updates(dir: &Path, node_name: &str) -> Result<Updates, String> {
    let mut directory = Directory::default();
    let problems = directory.load(dir)?;
    for p in &problems {
        tracing::warn!("manifest problem: {p}");
    }
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let (dir, node_name) = (dir.to_path_buf(), node_name.to_string());
    let task = tokio::spawn(async move { follow(&ChannelSink(tx), &node_name, &dir, directory).await });
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
    fn the_poll_is_rare_only_while_events_work_and_every_file_is_settled() {
        assert_eq!(poll_interval(true, false), QUIET_POLL);
        assert_eq!(poll_interval(true, true), Duration::from_secs(1), "a file settling is read again without an event");
        assert_eq!(poll_interval(false, false), Duration::from_secs(1), "no events: the poll is all there is");
        assert!(QUIET_POLL > Duration::from_secs(1));
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

