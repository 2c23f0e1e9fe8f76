//! The desired endpoints: every service port's merged endpoints.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::model::{Endpoint, NamespacedName, ServicePortName};
use crate::service_map::ports_of;

/// The merged, deduplicated, sorted endpoints of every service port of one
/// IP family. A service port with no endpoints has no entry.
///
/// Lists are shared (`Arc`) with the change tracker's slice cache when a
/// port has a single slice, so they are kept once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointsMap {
    ports: BTreeMap<ServicePortName, Arc<[Endpoint]>>,
}

impl EndpointsMap {
    /// An empty map.
    pub fn new() -> Self {
        EndpointsMap::default()
    }

    /// The endpoints of `name` (empty when it has none).
    pub fn get(&self, name: &ServicePortName) -> &[Endpoint] {
        self.ports.get(name).map(|v| &**v).unwrap_or_default()
    }

    /// All service ports that have endpoints, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&ServicePortName, &[Endpoint])> {
        self.ports.iter().map(|(k, v)| (k, &**v))
    }

    /// How many service ports have endpoints.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// Whether no service port has endpoints.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// The endpoints of every port of one Service.
    pub fn ports_of<'a>(
        &'a self,
        service: &'a NamespacedName,
    ) -> impl Iterator<Item = (&'a ServicePortName, &'a [Endpoint])> + 'a {
        ports_of(&self.ports, service).map(|(k, v)| (k, &**v))
    }

    /// Replaces all endpoints of `service` with `ports`; empty lists are not
    /// stored.
    pub fn replace_service(
        &mut self,
        service: &NamespacedName,
        ports: impl IntoIterator<Item = (ServicePortName, Arc<[Endpoint]>)>,
    ) {
        let old: Vec<ServicePortName> = self.ports_of(service).map(|(k, _)| k.clone()).collect();
        for k in old {
            self.ports.remove(&k);
        }
        for (k, v) in ports {
            debug_assert_eq!(&k.service, service);
            if !v.is_empty() {
                self.ports.insert(k, v);
            }
        }
    }

    /// Sets the endpoints of one service port (an empty list removes it).
    pub fn insert(&mut self, name: ServicePortName, endpoints: impl Into<Arc<[Endpoint]>>) {
        let endpoints = endpoints.into();
        if endpoints.is_empty() {
            self.ports.remove(&name);
        } else {
            self.ports.insert(name, endpoints);
        }
    }
}

impl<E: Into<Arc<[Endpoint]>>> FromIterator<(ServicePortName, E)> for EndpointsMap {
    fn from_iter<I: IntoIterator<Item = (ServicePortName, E)>>(iter: I) -> Self {
        let mut map = EndpointsMap::new();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}
