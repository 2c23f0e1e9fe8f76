//! Tracking EndpointSlice events until the next sync.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::convert::{merge_slices, slice_info, PortEndpoints, SliceInfo, TRIGGER_TIME_ANNOTATION};
use crate::endpoints_map::EndpointsMap;
use crate::model::{Endpoint, IpFamily, NamespacedName, ServicePortName};
use crate::VecMap;

/// What applying pending EndpointSlice changes did to an [`EndpointsMap`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointsUpdate {
    /// Services whose endpoints changed.
    pub updated_services: BTreeSet<NamespacedName>,
    /// UDP/SCTP endpoints that were serving and no longer are: conntrack
    /// entries pointing at them must be deleted.
    pub stale_endpoints: Vec<(ServicePortName, Endpoint)>,
    /// UDP/SCTP service ports that went from no serving endpoint to some:
    /// conntrack entries created while they rejected traffic must go.
    pub newly_active: Vec<ServicePortName>,
    /// Per Service, the `last-change-trigger-time` of each applied slice
    /// update, for the network-programming-latency metric.
    pub trigger_times: BTreeMap<NamespacedName, Vec<SystemTime>>,
}

/// Records EndpointSlice events for one IP family and one node until they are
/// applied to an [`EndpointsMap`]. It keeps the latest version of every
/// slice so it can merge a Service's slices.
#[derive(Debug)]
pub struct EndpointsChangeTracker {
    family: IpFamily,
    node_name: String,
    started: SystemTime,
    slices: BTreeMap<NamespacedName, VecMap<String, SliceInfo>>,
    owners: BTreeMap<NamespacedName, NamespacedName>,
    /// Services with a pending change and their endpoints as the map holds
    /// them; the current endpoints are merged from `slices` when needed, so
    /// the largest state is kept once.
    pending: BTreeMap<NamespacedName, PortEndpoints>,
    trigger_times: BTreeMap<NamespacedName, Vec<SystemTime>>,
}

impl EndpointsChangeTracker {
    /// A tracker for `family` on the node called `node_name` (endpoints whose
    /// `nodeName` matches are local).
    pub fn new(family: IpFamily, node_name: impl Into<String>) -> Self {
        EndpointsChangeTracker {
            family,
            node_name: node_name.into(),
            started: SystemTime::now(),
            slices: BTreeMap::new(),
            owners: BTreeMap::new(),
            pending: BTreeMap::new(),
            trigger_times: BTreeMap::new(),
        }
    }

    /// Records that `slice` was added or updated (`removed == false`) or
    /// deleted. Returns whether any change is pending.
    pub fn update(&mut self, slice: &EndpointSlice, removed: bool) -> bool {
        let Some(slice_key) = slice_key(slice) else {
            return !self.pending.is_empty();
        };
        let new_info = if removed { None } else { slice_info(slice, self.family, &self.node_name) };
        let old_owner = self.owners.get(&slice_key).cloned();
        let affected: BTreeSet<NamespacedName> =
            old_owner.iter().cloned().chain(new_info.as_ref().map(|i| i.service.clone())).collect();
        let before: Vec<(NamespacedName, Option<PortEndpoints>)> = affected
            .into_iter()
            .map(|svc| {
                let merged = (!self.pending.contains_key(&svc)).then(|| self.merged(&svc));
                (svc, merged)
            })
            .collect();

        if let Some(owner) = old_owner {
            self.remove_slice(&owner, &slice_key.name);
            self.owners.remove(&slice_key);
        }
        let new_service = new_info.as_ref().map(|i| i.service.clone());
        if let Some(info) = new_info {
            self.owners.insert(slice_key, info.service.clone());
            self.slices
                .entry(info.service.clone())
                .or_default()
                .insert(info.slice_name.clone(), info);
        }

        for (svc, before) in before {
            let current = self.merged(&svc);
            // One (previous, current) pair per service; a change that ends
            // where it started collapses to nothing.
            let previous = match before {
                Some(b) => b,
                None => self.pending.remove(&svc).expect("pending when no `before` was taken"),
            };
            let pending = previous != current;
            if pending {
                self.pending.insert(svc.clone(), previous);
            }
            // A deletion's trigger time is the time of the last update, not
            // of this change: measuring it would lie, so it is dropped.
            if removed || !pending {
                self.trigger_times.remove(&svc);
            } else if new_service.as_ref() == Some(&svc) {
                if let Some(t) = trigger_time(slice).filter(|t| *t > self.started) {
                    self.trigger_times.entry(svc).or_default().push(t);
                }
            }
        }
        !self.pending.is_empty()
    }

    /// How many Services have pending endpoint changes.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Applies every pending change to `map` and reports what changed.
    pub fn apply(&mut self, map: &mut EndpointsMap) -> EndpointsUpdate {
        let mut update = EndpointsUpdate::default();
        for (service, previous) in std::mem::take(&mut self.pending) {
            let current = self.merged(&service);
            detect_stale(&previous, &current, &mut update);
            map.replace_service(&service, current);
            update.updated_services.insert(service);
        }
        update.trigger_times = std::mem::take(&mut self.trigger_times);
        update
    }

    fn merged(&self, service: &NamespacedName) -> PortEndpoints {
        self.slices.get(service).map(|s| merge_slices(s.values())).unwrap_or_default()
    }

    fn remove_slice(&mut self, service: &NamespacedName, slice_name: &str) {
        if let Some(slices) = self.slices.get_mut(service) {
            slices.remove(slice_name);
            if slices.is_empty() {
                self.slices.remove(service);
            }
        }
    }
}

fn slice_key(slice: &EndpointSlice) -> Option<NamespacedName> {
    let name = slice.metadata.name.as_deref()?;
    let namespace = slice.metadata.namespace.as_deref().unwrap_or("default");
    Some(NamespacedName::new(namespace, name))
}

fn trigger_time(slice: &EndpointSlice) -> Option<SystemTime> {
    let text = slice.metadata.annotations.as_ref()?.get(TRIGGER_TIME_ANNOTATION)?;
    let ts: k8s_openapi::jiff::Timestamp = text.parse().ok()?;
    let nanos = u64::try_from(ts.as_nanosecond()).ok()?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(nanos))
}

/// Upstream's stale-conntrack detection, for UDP and SCTP.
fn detect_stale(previous: &PortEndpoints, current: &PortEndpoints, update: &mut EndpointsUpdate) {
    let serving = |eps: Option<&std::sync::Arc<[Endpoint]>>| -> Vec<Endpoint> {
        eps.map(|v| v.iter().filter(|e| e.serving).cloned().collect()).unwrap_or_default()
    };
    let names: BTreeSet<&ServicePortName> = previous.keys().chain(current.keys()).collect();
    for name in names.into_iter().filter(|n| n.protocol.needs_conntrack_cleanup()) {
        let old = serving(previous.get(name));
        let new = serving(current.get(name));
        for ep in &old {
            if !new.iter().any(|n| n.addr() == ep.addr()) {
                update.stale_endpoints.push((name.clone(), ep.clone()));
            }
        }
        if old.is_empty() && !new.is_empty() {
            update.newly_active.push(name.clone());
        }
    }
}
