//! The last known state of every object a watcher delivered, and the
//! changes each watcher event makes: the relist logic (deletions missed
//! while disconnected are found at the end of the next list).

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy_core::runner::Update;
use kube::runtime::watcher::Event;
use kube::Resource;

use super::watched::WatchedService;

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
pub(crate) fn watched_service_update(c: Change<WatchedService>) -> Update {
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


/// Drops what a proxy never reads: managedFields and the
/// `kubectl.kubernetes.io/last-applied-configuration` annotation.
pub fn slim<K: Resource>(o: &mut K) {
    let meta = o.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
