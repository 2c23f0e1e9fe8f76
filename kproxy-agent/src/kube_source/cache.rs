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
    /// Each object by `namespace/name`, with the number of the last list
    /// that held it.
    known: HashMap<Box<str>, (Kept<K>, u64)>,
    /// The number of the list in progress, if one is.
    listing: Option<u64>,
    lists: u64,
    synced: bool,
    /// What the cache keeps of an object it has passed on.
    keep: Keep<K>,
}

/// What an [`ObjectCache`] keeps of each object.
#[derive(Debug)]
enum Keep<K> {
    /// `fn(object)`, shared with the changes.
    With(fn(&Arc<K>) -> Arc<K>),
    /// The resourceVersion alone; `fn(namespace, name, resourceVersion)`
    /// builds a skeleton when a change needs the object.
    Identity(fn(&str, &str, Option<&str>) -> Arc<K>),
}

/// One cache entry.
#[derive(Debug)]
enum Kept<K> {
    Object(Arc<K>),
    Version(Option<Box<str>>),
}

impl<K> Default for ObjectCache<K> {
    fn default() -> Self {
        ObjectCache::keeping(Arc::clone)
    }
}

impl<K> ObjectCache<K> {
    /// A cache that keeps `keep(object)` of each object: the object itself
    /// (the default) where later changes need its previous state.
    pub fn keeping(keep: fn(&Arc<K>) -> Arc<K>) -> Self {
        ObjectCache { known: HashMap::new(), listing: None, lists: 0, synced: false, keep: Keep::With(keep) }
    }
}

impl<K: Resource + Default> ObjectCache<K> {
    /// A cache that keeps only each object's identity and
    /// resourceVersion (a few dozen bytes), for objects whose previous
    /// state no change uses: Services, EndpointSlices and Nodes
    /// (proxiers compare with what they hold). A change that needs the
    /// object it no longer has (a deletion found by a relist, the previous
    /// state of an update) carries a [`skeleton`] with just those.
    pub fn identities() -> Self {
        let make = |namespace: &str, name: &str, version: Option<&str>| {
            identity((!namespace.is_empty()).then(|| namespace.to_string()), Some(name.to_string()), version.map(str::to_string))
        };
        ObjectCache { known: HashMap::new(), listing: None, lists: 0, synced: false, keep: Keep::Identity(make) }
    }
}

/// An object's identity and version only (labels are left out: a
/// one-entry label map alone costs more than the rest of the skeleton).
pub fn skeleton<K: Resource + Default>(o: &Arc<K>) -> Arc<K> {
    let from = o.meta();
    identity(from.namespace.clone(), from.name.clone(), from.resource_version.clone())
}

/// An empty object with just this namespace, name and resourceVersion.
fn identity<K: Resource + Default>(namespace: Option<String>, name: Option<String>, version: Option<String>) -> Arc<K> {
    let mut s = K::default();
    let meta = s.meta_mut();
    meta.namespace = namespace;
    meta.name = name;
    meta.resource_version = version;
    Arc::new(s)
}

/// `namespace/name` (a namespace never holds a `/`).
fn key<K: Resource>(o: &K) -> Box<str> {
    let meta = o.meta();
    format!("{}/{}", meta.namespace.as_deref().unwrap_or_default(), meta.name.as_deref().unwrap_or_default()).into_boxed_str()
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
                    let gone: Vec<Box<str>> = self.known.iter().filter(|(_, (_, seen))| *seen != list).map(|(k, _)| k.clone()).collect();
                    for k in gone {
                        if let Some((kept, _)) = self.known.remove(&k) {
                            out.push(Change::Delete(self.object(&k, kept)));
                        }
                    }
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

    /// What the cache hands on for an entry it kept.
    fn object(&self, k: &str, kept: Kept<K>) -> Arc<K> {
        match (kept, &self.keep) {
            (Kept::Object(o), _) => o,
            (Kept::Version(v), Keep::Identity(make)) => {
                let (namespace, name) = k.split_once('/').unwrap_or(("", k));
                make(namespace, name, v.as_deref())
            }
            (Kept::Version(_), Keep::With(_)) => unreachable!("a keeping cache stores objects"),
        }
    }

    fn upsert(&mut self, k: Box<str>, o: K) -> Vec<Change<K>> {
        let o = Arc::new(o);
        // Outside a list the mark is unused: the next list sets it again.
        let mark = self.listing.unwrap_or(self.lists);
        let kept = match &self.keep {
            Keep::With(keep) => Kept::Object(keep(&o)),
            Keep::Identity(_) => Kept::Version(o.meta().resource_version.as_deref().map(Box::from)),
        };
        let unchanged = match self.known.get(&k).map(|(p, _)| p) {
            None => None,
            Some(Kept::Object(p)) => Some(same(&**p, &*o)),
            Some(Kept::Version(v)) => Some(v.is_some() && v.as_deref() == o.meta().resource_version.as_deref()),
        };
        let previous = self.known.insert(k.clone(), (kept, mark)).map(|(p, _)| p);
        match (unchanged, previous) {
            (Some(true), _) => Vec::new(),
            (_, previous) => vec![Change::Upsert { previous: previous.map(|p| self.object(&k, p)), current: o }],
        }
    }
}

/// Whether two states of an object are the same version.
fn same<K: Resource + PartialEq>(a: &K, b: &K) -> bool {
    match (&a.meta().resource_version, &b.meta().resource_version) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
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
