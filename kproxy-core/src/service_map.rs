//! The desired services: every service port of one family.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::model::{NamespacedName, Protocol, ServicePortInfo, ServicePortName};

/// Every known service port of one IP family, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceMap {
    ports: BTreeMap<ServicePortName, ServicePortInfo>,
}

impl ServiceMap {
    /// An empty map.
    pub fn new() -> Self {
        ServiceMap::default()
    }

    /// The service port called `name`.
    pub fn get(&self, name: &ServicePortName) -> Option<&ServicePortInfo> {
        self.ports.get(name)
    }

    /// All service ports, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&ServicePortName, &ServicePortInfo)> {
        self.ports.iter()
    }

    /// How many service ports there are.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// The ports of one Service.
    pub fn ports_of<'a>(
        &'a self,
        service: &'a NamespacedName,
    ) -> impl Iterator<Item = (&'a ServicePortName, &'a ServicePortInfo)> + 'a {
        ports_of(&self.ports, service)
    }

    /// Replaces all ports of `service` with `ports` (all of which must belong
    /// to `service`); returns the names of the ports that were removed.
    pub fn replace_service(
        &mut self,
        service: &NamespacedName,
        ports: impl IntoIterator<Item = (ServicePortName, ServicePortInfo)>,
    ) -> Vec<(ServicePortName, ServicePortInfo)> {
        let old: Vec<ServicePortName> = self.ports_of(service).map(|(k, _)| k.clone()).collect();
        let mut removed: Vec<_> = old.iter().filter_map(|k| self.ports.remove_entry(k)).collect();
        for (k, v) in ports {
            debug_assert_eq!(&k.service, service);
            removed.retain(|(r, _)| r != &k);
            self.ports.insert(k, v);
        }
        removed
    }

    /// Inserts one service port, returning the previous value.
    pub fn insert(&mut self, name: ServicePortName, info: ServicePortInfo) -> Option<ServicePortInfo> {
        self.ports.insert(name, info)
    }
}

impl FromIterator<(ServicePortName, ServicePortInfo)> for ServiceMap {
    fn from_iter<I: IntoIterator<Item = (ServicePortName, ServicePortInfo)>>(iter: I) -> Self {
        ServiceMap {
            ports: iter.into_iter().collect(),
        }
    }
}

/// The entries of one Service's ports in a map keyed by port name: a
/// Service's ports sort together, from the smallest name of the service on.
pub(crate) fn ports_of<'a, V>(
    map: &'a std::collections::BTreeMap<ServicePortName, V>,
    service: &'a NamespacedName,
) -> impl Iterator<Item = (&'a ServicePortName, &'a V)> + 'a {
    let first = ServicePortName {
        service: service.clone(),
        port: String::new(),
        protocol: Protocol::Tcp,
    };
    map.range((Bound::Included(first), Bound::Unbounded))
        .take_while(move |(k, _)| &k.service == service)
}
