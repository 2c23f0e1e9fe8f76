//! Cluster mode's source: `kube` watchers on Services and EndpointSlices
//! (with upstream's label selector) and on this node's Node.
//!
//! kube's watcher lists, then watches; after `410 Gone` or any error it
//! lists again, with exponential backoff between failures. Each relist is
//! compared with what was known so deletions missed while disconnected are
//! still delivered. Rules are never touched while disconnected: the
//! proxiers keep what they programmed until updates arrive.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};

use crate::watched::WatchedService;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use kproxy_core::runner::Update;
use serde::de::DeserializeOwned;

use crate::proxy::{label_selector, Proxy};
use crate::service_cidrs::ServiceCidrs;
use k8s_openapi::api::networking::v1::ServiceCIDR;

/// One object kind's change, from [`ObjectCache::apply`].
#[derive(Debug, Clone, PartialEq)]
pub enum Change<K> {
    /// Added (`previous` None) or modified.
    Upsert {
        /// What was known before.
        previous: Option<Arc<K>>,
        /// The object now.
        current: Arc<K>,
    },
    /// Deleted (its last known state).
    Delete(Arc<K>),
    /// The first complete list has been delivered.
    Synced,
}

/// The last known state of every object a watcher delivered, turning its
/// events into changes. Objects are shared with the changes it emits, so
/// each exists once however many proxiers receive it.
#[derive(Debug)]
pub struct ObjectCache<K> {
    /// Each object, with the number of the last list that held it.
    known: HashMap<(String, String), (Arc<K>, u64)>,
    /// The number of the list in progress, if one is.
    listing: Option<u64>,
    lists: u64,
    synced: bool,
    /// What the cache keeps of an object it has passed on.
    keep: fn(&Arc<K>) -> Arc<K>,
}

impl<K> Default for ObjectCache<K> {
    fn default() -> Self {
        ObjectCache::keeping(Arc::clone)
    }
}

impl<K> ObjectCache<K> {
    /// A cache that keeps `keep(object)` of each object: the object itself
    /// (the default) where later changes need its previous state, or a
    /// skeleton with its identity and resourceVersion where they do not.
    pub fn keeping(keep: fn(&Arc<K>) -> Arc<K>) -> Self {
        ObjectCache { known: HashMap::new(), listing: None, lists: 0, synced: false, keep }
    }
}

/// An object's identity and version only: what the cache needs of objects
/// whose previous state no change uses (EndpointSlices, Nodes), and what a
/// deletion found by a relist needs to name them. (Labels are left out: a
/// one-entry label map alone costs more than the rest of the skeleton.)
pub fn skeleton<K: Resource + Default>(o: &Arc<K>) -> Arc<K> {
    let mut s = K::default();
    let (meta, from) = (s.meta_mut(), o.meta());
    meta.name = from.name.clone();
    meta.namespace = from.namespace.clone();
    meta.resource_version = from.resource_version.clone();
    Arc::new(s)
}

fn key<K: Resource>(o: &K) -> (String, String) {
    (o.meta().namespace.clone().unwrap_or_default(), o.meta().name.clone().unwrap_or_default())
}

/// Whether two states of an object are the same version.
fn same<K: Resource + PartialEq>(a: &K, b: &K) -> bool {
    match (&a.meta().resource_version, &b.meta().resource_version) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

impl<K: Resource + Clone + PartialEq> ObjectCache<K> {
    /// The changes one watcher event makes. Listed objects are passed on
    /// as they arrive (a list never holds every full object at once);
    /// the end of a list names what it no longer holds as deleted.
    pub fn apply(&mut self, event: Event<K>) -> Vec<Change<K>> {
        match event {
            Event::Init => {
                self.lists += 1;
                self.listing = Some(self.lists);
                Vec::new()
            }
            Event::InitApply(o) => self.upsert(key(&o), o),
            Event::InitDone => {
                let mut out = Vec::new();
                if let Some(list) = self.listing.take() {
                    self.known.retain(|_, (o, seen)| {
                        let kept = *seen == list;
                        if !kept {
                            out.push(Change::Delete(Arc::clone(o)));
                        }
                        kept
                    });
                }
                if !self.synced {
                    self.synced = true;
                    out.push(Change::Synced);
                }
                out
            }
            Event::Apply(o) => self.upsert(key(&o), o),
            Event::Delete(o) => {
                self.known.remove(&key(&o));
                vec![Change::Delete(Arc::new(o))]
            }
        }
    }

    fn upsert(&mut self, k: (String, String), o: K) -> Vec<Change<K>> {
        let o = Arc::new(o);
        // Outside a list the mark is unused: the next list sets it again.
        let mark = self.listing.unwrap_or(self.lists);
        match self.known.insert(k, ((self.keep)(&o), mark)).map(|(p, _)| p) {
            Some(p) if same(&*p, &*o) => Vec::new(),
            previous => vec![Change::Upsert { previous, current: o }],
        }
    }
}

/// A Service change as a runner update.
pub fn service_update(c: Change<Service>) -> Update {
    match c {
        Change::Upsert { previous, current } => Update::Service { previous, current: Some(current) },
        Change::Delete(last) => Update::Service { previous: Some(last), current: None },
        Change::Synced => Update::ServicesSynced,
    }
}

/// [`service_update`] for the watch's [`WatchedService`]s.
fn watched_service_update(c: Change<WatchedService>) -> Update {
    let plain = |s: Arc<WatchedService>| Arc::new(s.0.clone());
    service_update(match c {
        Change::Upsert { previous, current } => Change::Upsert { previous: previous.map(plain), current: plain(current) },
        Change::Delete(last) => Change::Delete(plain(last)),
        Change::Synced => Change::Synced,
    })
}

/// An EndpointSlice change as a runner update.
pub fn slice_update(c: Change<EndpointSlice>) -> Update {
    match c {
        Change::Upsert { current, .. } => Update::EndpointSlice { slice: current, removed: false },
        Change::Delete(last) => Update::EndpointSlice { slice: last, removed: true },
        Change::Synced => Update::EndpointSlicesSynced,
    }
}

/// Objects per list request (client-go pages by 500; larger pages keep the
/// initial lists of a large cluster within the rate limit's burst).
pub const LIST_PAGE_SIZE: u32 = 5000;

/// A client from `--kubeconfig` (or the config file's
/// `clientConnection.kubeconfig`), else the in-cluster service account or
/// `$KUBECONFIG`/`~/.kube/config`; `--master` overrides the server.
/// Every request waits for `limits` and is recorded in `metrics`.
pub async fn client(kubeconfig: Option<&str>, master: Option<&str>, limits: crate::api_client::Limits, metrics: std::sync::Arc<crate::metrics::Metrics>) -> anyhow::Result<Client> {
    let mut config = match kubeconfig.filter(|k| !k.is_empty()) {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| anyhow::anyhow!("{path}: cannot read the kubeconfig: {}", one_line(&e)))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| anyhow::anyhow!("{path}: unusable kubeconfig: {}", one_line(&e)))?
        }
        None => match master {
            Some(_) => kube::Config::new("http://localhost".parse().expect("literal URL")),
            None => kube::Config::infer().await.map_err(|e| {
                anyhow::anyhow!("no API server: not in a cluster and no kubeconfig ({}); use --kubeconfig FILE, or --manifests DIR", one_line(&e))
            })?,
        },
    };
    if let Some(m) = master.filter(|m| !m.is_empty()) {
        config.cluster_url = m.parse().map_err(|e| anyhow::anyhow!("--master {m:?}: not a URL: {e}"))?;
    }
    let host = config.cluster_url.authority().map(|a| a.to_string()).unwrap_or_default();
    let builder = kube::client::ClientBuilder::try_from(config).map_err(|e| anyhow::anyhow!("cannot build the API client: {}", one_line(&e)))?;
    Ok(builder.with_layer(&crate::api_client::Layer::new(limits, metrics, host)).build())
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
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

/// Drops what a proxy never reads: managedFields and the
/// `kubectl.kubernetes.io/last-applied-configuration` annotation.
pub fn slim<K: Resource>(o: &mut K) {
    let meta = o.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
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

/// Runs one watcher until the task is dropped, handing each event's
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

/// Feeds `proxy` from the API server until the task is dropped.
pub async fn follow(proxy: &Proxy, client: Client, node_name: &str) {
    let selector = label_selector();
    // Lists come in pages of LIST_PAGE_SIZE: at 10,000 Services the initial
    // lists fit in the API client's burst (clientConnection.burst, 10), so
    // the rate limit does not delay the start.
    let paged = || watcher::Config::default().labels(&selector).page_size(LIST_PAGE_SIZE);
    let services = watch(Api::<WatchedService>::all(client.clone()), paged(), "services", false, ObjectCache::default(), |changes| {
        proxy.send(changes.into_iter().map(watched_service_update).collect())
    });
    // A slice's previous state is never used: the cache keeps skeletons.
    let slice_cache = ObjectCache::keeping(skeleton);
    let slices = watch(Api::<EndpointSlice>::all(client.clone()), paged(), "endpointslices", false, slice_cache, |changes| {
        proxy.send(changes.into_iter().map(slice_update).collect())
    });
    let node_config = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let nodes = watch(Api::<Node>::all(client.clone()), node_config, "node", false, ObjectCache::keeping(skeleton), |changes| {
        let mut updates = Vec::new();
        for c in changes {
            match c {
                Change::Upsert { current, .. } => {
                    proxy.set_node_eligible(crate::servers::node_eligible(Some(&current)));
                    updates.push(Update::Node(current));
                }
                Change::Delete(last) => {
                    tracing::warn!(node = %last.name_any(), "this node's Node object was deleted");
                    proxy.set_node_eligible(false);
                }
                Change::Synced => {}
            }
        }
        proxy.send(updates)
    });
    // ServiceCIDRs (Kubernetes 1.33+): only their ranges matter, and only
    // to nftables mode; a cluster without the API is served without them.
    let mut ranges = ServiceCidrs::default();
    let cidrs = watch(Api::<ServiceCIDR>::all(client), watcher::Config::default(), "servicecidrs", true, ObjectCache::default(), move |changes| {
        let updates: Vec<Update> = changes
            .into_iter()
            .filter_map(|c| match c {
                Change::Upsert { current, .. } => ranges.upsert(&current),
                Change::Delete(last) => ranges.delete(&last),
                Change::Synced => None,
            })
            .collect();
        proxy.send(updates)
    });
    tokio::join!(services, slices, nodes, cidrs);
}

#[cfg(test)]
mod tests;
