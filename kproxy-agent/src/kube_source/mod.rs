//! Cluster mode's source: `kube` watchers on Services and EndpointSlices
//! (with upstream's label selector), this node's Node and the cluster's
//! ServiceCIDRs, turned into runner [`Update`]s.
//!
//! kube's watcher gets each resource's current objects, then watches;
//! after `410 Gone` or any error it starts over, with exponential backoff
//! between failures. The current objects come as lists in pages of
//! [`LIST_PAGE_SIZE`], and the client accepts gzip, as client-go's does:
//! the API server compresses a page over 128 KiB, so a large cluster's
//! lists cost its nodes' links a tenth of their JSON size. (A streaming
//! list, a watch with `sendInitialEvents=true`, is never compressed: at
//! 20 nodes and 5,000 Services it sent 13 times upstream's bytes;
//! BENCHMARKS.md.) Each relist is compared with what was known so
//! deletions missed while disconnected are still delivered. Rules are
//! never touched while disconnected: the proxiers keep what they
//! programmed until updates arrive.
//!
//! Feed a [`Sink`] with [`follow`], or take a [`Stream`](futures::Stream)
//! of updates for one [`SyncRunner`](kproxy_core::runner::SyncRunner) with
//! [`updates`].

mod cache;
pub mod watched;

use std::fmt::Debug;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kproxy_core::runner::Update;
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

pub use cache::{service_update, skeleton, slice_update, slim, Change, ObjectCache};
use cache::watched_service_update;
use watched::WatchedService;

use crate::selector::label_selector;
use crate::service_cidrs::ServiceCidrs;

/// Objects per list request: one page is decoded at a time (at 10,000
/// Services × 10 endpoints, pages of 500 cost 6 MiB more peak memory
/// than pages of 200; a page of 200 Services is still over the API
/// server's 128 KiB compression threshold).
pub const LIST_PAGE_SIZE: u32 = 200;

/// Where the watchers' updates go.
pub trait Sink: Sync {
    /// Takes one watcher event's updates, in order; may wait while the
    /// receivers are busy (the watcher reads no further meanwhile).
    fn send(&self, updates: Vec<Update>) -> impl std::future::Future<Output = ()> + Send;

    /// This node's Node object was deleted (no update: the proxiers keep
    /// the last Node they had). The default does nothing.
    fn node_deleted(&self) {}

    /// Whether the node may receive load-balancer traffic, as a source
    /// without Node events decides it (the manifests directory: see
    /// [`crate::manifests_source::node_eligible`]). The default does
    /// nothing.
    fn node_eligible(&self, _eligible: bool) {}
}

/// Feeds `sink` from the API server until the future is dropped.
pub async fn follow<S: Sink>(sink: &S, client: Client, node_name: &str) {
    let selector = label_selector();
    let paged = || watcher::Config::default().labels(&selector).page_size(LIST_PAGE_SIZE);
    // Neither a Service's nor a slice's previous state is ever used (the
    // proxiers compare with what they hold): the caches keep identities
    // and resourceVersions only, and a change that needs an object they
    // no longer have carries a skeleton.
    let service_cache = ObjectCache::identities();
    let services = watch(Api::<WatchedService>::all(client.clone()), paged(), "services", false, service_cache, |changes| {
        sink.send(changes.into_iter().map(watched_service_update).collect())
    });
    let slice_cache = ObjectCache::identities();
    let slices = watch(Api::<EndpointSlice>::all(client.clone()), paged(), "endpointslices", false, slice_cache, |changes| {
        sink.send(changes.into_iter().map(slice_update).collect())
    });
    let node_config = watcher::Config::default().fields(&format!("metadata.name={node_name}")).page_size(LIST_PAGE_SIZE);
    let nodes = watch(Api::<Node>::all(client.clone()), node_config, "node", false, ObjectCache::identities(), |changes| {
        let mut updates = Vec::new();
        for c in changes {
            match c {
                Change::Upsert { current, .. } => updates.push(Update::Node(current)),
                Change::Delete(last) => {
                    tracing::warn!(node = %last.name_any(), "this node's Node object was deleted");
                    sink.node_deleted();
                }
                Change::Synced => {}
            }
        }
        sink.send(updates)
    });
    // ServiceCIDRs (Kubernetes 1.33+): only their ranges matter, and only
    // to nftables mode; a cluster without the API is served without them.
    let mut ranges = ServiceCidrs::default();
    let cidrs = watch(Api::<ServiceCIDR>::all(client), watcher::Config::default().page_size(LIST_PAGE_SIZE), "servicecidrs", true, ObjectCache::default(), move |changes| {
        let updates: Vec<Update> = changes
            .into_iter()
            .filter_map(|c| match c {
                Change::Upsert { current, .. } => ranges.upsert(&current),
                Change::Delete(last) => ranges.delete(&last),
                Change::Synced => None,
            })
            .collect();
        sink.send(updates)
    });
    tokio::join!(services, slices, nodes, cidrs);
}

/// The updates for one runner, from a task that runs [`follow`] until the
/// stream is dropped. Spawns on the current tokio runtime.
pub fn updates(client: Client, node_name: &str) -> Updates {
    let (tx, rx) = mpsc::channel(1024);
    let node_name = node_name.to_string();
    let task = tokio::spawn(async move { follow(&ChannelSink(tx), client, &node_name).await });
    Updates { rx, task }
}

/// A [`Stream`](futures::Stream) of [`Update`]s from a source: the API
/// server ([`updates`]) or a manifests directory
/// ([`crate::manifests_source::updates`]); dropping it stops the source.
#[derive(Debug)]
pub struct Updates {
    rx: mpsc::Receiver<Update>,
    task: tokio::task::JoinHandle<()>,
}

impl Updates {
    /// The stream of `rx`, fed by `task` (aborted when dropped).
    pub(crate) fn new(rx: mpsc::Receiver<Update>, task: tokio::task::JoinHandle<()>) -> Updates {
        Updates { rx, task }
    }
}

impl futures::Stream for Updates {
    type Item = Update;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Update>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Updates {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A channel as a [`Sink`].
pub(crate) struct ChannelSink(pub(crate) mpsc::Sender<Update>);

impl Sink for ChannelSink {
    async fn send(&self, updates: Vec<Update>) {
        for u in updates {
            if self.0.send(u).await.is_err() {
                return;
            }
        }
    }
}

/// This node's Node object, retried for up to `attempts` seconds (a new
/// node may not be registered yet); None if it never appears.
pub async fn fetch_node(client: &Client, name: &str, attempts: u32) -> Option<Node> {
    let api: Api<Node> = Api::all(client.clone());
    for attempt in 0..attempts {
        match api.get_opt(name).await {
            Ok(Some(node)) => return Some(node),
            Ok(None) => tracing::info!(node = name, "waiting for this node's Node object"),
            Err(e) => tracing::warn!(node = name, error = %one_line(&e), "cannot read this node's Node object"),
        }
        if attempt + 1 < attempts {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
    None
}

/// The first line of an error's text (kube's errors can span several).
pub fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// Whether a watch error says the resource cannot be had at all: the API
/// server does not serve it (404, an older cluster) or may not show it to
/// us (403).
fn unavailable(e: &watcher::Error) -> bool {
    let api = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s)) | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s,
        _ => return false,
    };
    api.code == 404 || api.code == 403
}

/// Runs one watcher until the future is dropped, handing each event's
/// changes to `deliver`. An `optional` resource that is unavailable (see
/// [`unavailable`]) is given up after one log line.
async fn watch<K, F, Fut>(api: Api<K>, config: watcher::Config, what: &'static str, optional: bool, mut cache: ObjectCache<K>, mut deliver: F)
where
    K: Resource + Clone + PartialEq + DeserializeOwned + Debug + Send + Sync + 'static,
    F: FnMut(Vec<Change<K>>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    // The proxy never reads managedFields or the last-applied annotation;
    // at thousands of objects they are most of the memory.
    let mut stream = watcher::watcher(api, config).default_backoff().modify(slim).boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                let changes = cache.apply(event);
                if !changes.is_empty() {
                    deliver(changes).await;
                }
            }
            Err(e) if optional && unavailable(&e) => {
                tracing::warn!(what, error = %one_line(&e), "cannot watch; going on without it");
                return;
            }
            // The watcher relists (after 410 Gone too) with backoff.
            Err(e) => tracing::warn!(what, error = %one_line(&e), "watch failed; retrying"),
        }
    }
}
