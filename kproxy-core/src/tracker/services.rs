//! Tracking Service events until the next sync.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;

use super::ChangeTracker;
use crate::convert::{service_ports, ServicePorts};
use crate::model::{IpFamily, NamespacedName};
use crate::service_map::ServiceMap;

/// What applying pending Service changes did to a [`ServiceMap`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceUpdate {
    /// Services whose ports changed (added, modified or removed).
    pub updated_services: BTreeSet<NamespacedName>,
    /// ClusterIPs of UDP/SCTP service ports that went away; their conntrack
    /// entries are stale.
    pub deleted_udp_cluster_ips: BTreeSet<IpAddr>,
}

/// Records Service add/update/delete events for one IP family until they are
/// applied to a [`ServiceMap`].
#[derive(Debug)]
pub struct ServiceChangeTracker {
    family: IpFamily,
    changes: ChangeTracker<NamespacedName, ServicePorts>,
}

impl ServiceChangeTracker {
    /// A tracker for `family`.
    pub fn new(family: IpFamily) -> Self {
        ServiceChangeTracker {
            family,
            changes: ChangeTracker::default(),
        }
    }

    /// Records one event: `previous` is the object before (None for an add),
    /// `current` after (None for a delete). Returns whether any change is
    /// pending.
    pub fn update(&mut self, previous: Option<&Service>, current: Option<&Service>) -> bool {
        let Some(key) = current.or(previous).and_then(key_of) else {
            return self.changes.pending() > 0;
        };
        let family = self.family;
        let convert = |s: Option<&Service>| s.map(|s| service_ports(s, family)).unwrap_or_default();
        self.changes.record(key, || convert(previous), convert(current))
    }

    /// Records one event, with the Service's previous ports taken from
    /// `map` (the state the pending changes will be applied to) instead of
    /// from an old object: until its pending changes are applied, `map`
    /// holds exactly what the last delivered object converted to, so the
    /// result is the same as [`update`](Self::update) with that object.
    /// `current` None deletes `service`. A source then needs to keep only
    /// each object's identity, not its last state.
    pub fn update_from_map(&mut self, map: &ServiceMap, service: NamespacedName, current: Option<&Service>) -> bool {
        let family = self.family;
        let current = current.map(|s| service_ports(s, family)).unwrap_or_default();
        let known = || map.ports_of(&service).map(|(k, v)| (k.clone(), v.clone())).collect();
        self.changes.record(service.clone(), known, current)
    }

    /// How many Services have pending changes.
    pub fn pending(&self) -> usize {
        self.changes.pending()
    }

    /// Applies every pending change to `map` and reports what changed.
    pub fn apply(&mut self, map: &mut ServiceMap) -> ServiceUpdate {
        let mut update = ServiceUpdate::default();
        for (service, change) in self.changes.take() {
            let removed = map.replace_service(&service, change.current);
            update.deleted_udp_cluster_ips.extend(
                removed
                    .iter()
                    .filter(|(name, _)| name.protocol.needs_conntrack_cleanup())
                    .map(|(_, info)| info.cluster_ip),
            );
            update.updated_services.insert(service);
        }
        update
    }
}

/// The namespace and name of `service` (namespace `default` when unset).
pub(crate) fn key_of(service: &Service) -> Option<NamespacedName> {
    let name = service.metadata.name.as_deref()?;
    let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
    Some(NamespacedName::new(namespace, name))
}
