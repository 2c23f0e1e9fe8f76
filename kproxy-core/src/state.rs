//! [`ProxyState`]: the trackers, maps and node info a backend embeds.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::conntrack::StaleFlowFilter;
use crate::convert::node_info;
use crate::endpoints_map::EndpointsMap;
use crate::model::{IpFamily, NamespacedName, NodeInfo};
use crate::service_map::ServiceMap;
use crate::tracker::{EndpointsChangeTracker, EndpointsUpdate, ServiceChangeTracker, ServiceUpdate};

/// Everything a backend needs to know about the cluster, for one IP family:
/// the pending changes, the maps they are applied to, and the node.
///
/// A backend's [`Proxier`](crate::Proxier) handlers forward to the `on_*`
/// methods here; its `sync` calls [`ProxyState::apply`] and then renders
/// from [`ProxyState::services`], [`ProxyState::endpoints`] and
/// [`ProxyState::node`].
#[derive(Debug)]
pub struct ProxyState {
    service_changes: ServiceChangeTracker,
    endpoint_changes: EndpointsChangeTracker,
    services: ServiceMap,
    endpoints: EndpointsMap,
    node: NodeInfo,
    node_changed: bool,
    family: IpFamily,
    service_cidrs: Vec<IpNet>,
    service_cidrs_changed: bool,
}

/// What [`ProxyState::apply`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateChanges {
    /// Service changes.
    pub services: ServiceUpdate,
    /// Endpoint changes.
    pub endpoints: EndpointsUpdate,
    /// The node's labels, addresses or pod CIDRs changed (its zone, say):
    /// every service's topology must be recomputed, so the sync is full.
    pub node_changed: bool,
    /// This family's ServiceCIDRs changed (see
    /// [`ProxyState::on_service_cidrs`]).
    pub service_cidrs_changed: bool,
}

impl StateChanges {
    /// Folds `later` into these changes, as if both had been applied at
    /// once (used to carry the changes of a failed sync to the next one).
    pub fn absorb(&mut self, later: StateChanges) {
        self.services.updated_services.extend(later.services.updated_services);
        self.services.deleted_udp_cluster_ips.extend(later.services.deleted_udp_cluster_ips);
        self.endpoints.updated_services.extend(later.endpoints.updated_services);
        self.endpoints.stale_endpoints.extend(later.endpoints.stale_endpoints);
        self.endpoints.newly_active.extend(later.endpoints.newly_active);
        for (svc, times) in later.endpoints.trigger_times {
            self.endpoints.trigger_times.entry(svc).or_default().extend(times);
        }
        self.node_changed |= later.node_changed;
        self.service_cidrs_changed |= later.service_cidrs_changed;
    }

    /// Whether these changes may have left stale UDP/SCTP conntrack
    /// entries: a serving endpoint went away, a service got its first
    /// serving endpoint, or a ClusterIP was deleted.
    pub fn may_leave_stale_flows(&self) -> bool {
        !self.endpoints.stale_endpoints.is_empty()
            || !self.endpoints.newly_active.is_empty()
            || !self.services.deleted_udp_cluster_ips.is_empty()
    }

    /// Every Service whose ports or endpoints changed.
    pub fn updated_services(&self) -> BTreeSet<&NamespacedName> {
        self.services
            .updated_services
            .iter()
            .chain(&self.endpoints.updated_services)
            .collect()
    }
}

impl ProxyState {
    /// An empty state for `family` on the node called `node_name`.
    pub fn new(family: IpFamily, node_name: impl Into<String>) -> Self {
        let node_name = node_name.into();
        ProxyState {
            service_changes: ServiceChangeTracker::new(family),
            endpoint_changes: EndpointsChangeTracker::new(family, node_name.clone()),
            services: ServiceMap::new(),
            endpoints: EndpointsMap::new(),
            node: NodeInfo::named(node_name),
            node_changed: false,
            family,
            service_cidrs: Vec::new(),
            service_cidrs_changed: false,
        }
    }

    /// Records a Service event; returns whether anything is pending.
    ///
    /// Only the identity of `previous` is read (to name the Service when
    /// `current` is None): the Service's previous state is what this state
    /// already holds for it, so a source may pass a skeleton with just
    /// the namespace and name.
    pub fn on_service(&mut self, previous: Option<&Service>, current: Option<&Service>) -> bool {
        if let Some(key) = current.or(previous).and_then(crate::tracker::service_key) {
            self.service_changes.update_from_map(&self.services, key, current);
        }
        self.has_pending()
    }

    /// Records an EndpointSlice event; returns whether anything is pending.
    pub fn on_endpoint_slice(&mut self, slice: &EndpointSlice, removed: bool) -> bool {
        self.endpoint_changes.update(slice, removed);
        self.has_pending()
    }

    /// Records the node's own Node object (its name must match). Returns
    /// whether anything is pending.
    pub fn on_node(&mut self, node: &Node) -> bool {
        let info = node_info(node);
        if info.name != self.node.name {
            tracing::warn!(expected = %self.node.name, got = %info.name, "ignoring another node's Node object");
        } else if info != self.node {
            self.node_changed = true;
            self.node = info;
        }
        self.has_pending()
    }

    /// Records the cluster's ServiceCIDRs: every range of every
    /// `networking.k8s.io/v1` ServiceCIDR object, of any family (upstream's
    /// `OnServiceCIDRsChanged`). This family's ranges are kept, sorted;
    /// returns whether anything is pending.
    pub fn on_service_cidrs(&mut self, cidrs: &[IpNet]) -> bool {
        let family = self.family;
        let mut mine: Vec<IpNet> = cidrs.iter().map(IpNet::trunc).filter(|n| IpFamily::of_net(n) == family).collect();
        mine.sort();
        mine.dedup();
        if mine != self.service_cidrs {
            self.service_cidrs = mine;
            self.service_cidrs_changed = true;
        }
        self.has_pending()
    }

    /// This family's ServiceCIDRs, sorted (empty until
    /// [`ProxyState::on_service_cidrs`] is called).
    pub fn service_cidrs(&self) -> &[IpNet] {
        &self.service_cidrs
    }

    /// Whether changes are waiting for [`ProxyState::apply`].
    pub fn has_pending(&self) -> bool {
        self.service_changes.pending() > 0 || self.endpoint_changes.pending() > 0 || self.node_changed || self.service_cidrs_changed
    }

    /// Pending (service, endpoint) change counts, for metrics.
    pub fn pending_counts(&self) -> (usize, usize) {
        (self.service_changes.pending(), self.endpoint_changes.pending())
    }

    /// Applies all pending changes to the maps and reports what changed.
    pub fn apply(&mut self) -> StateChanges {
        StateChanges {
            services: self.service_changes.apply(&mut self.services),
            endpoints: self.endpoint_changes.apply(&mut self.endpoints),
            node_changed: std::mem::take(&mut self.node_changed),
            service_cidrs_changed: std::mem::take(&mut self.service_cidrs_changed),
        }
    }

    /// The desired services (as of the last [`ProxyState::apply`]).
    pub fn services(&self) -> &ServiceMap {
        &self.services
    }

    /// The desired endpoints (as of the last [`ProxyState::apply`]).
    pub fn endpoints(&self) -> &EndpointsMap {
        &self.endpoints
    }

    /// The node this proxier runs on.
    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    /// The filter for conntrack entries left stale by `changes` (just
    /// applied): see [`StaleFlowFilter`].
    pub fn stale_flow_filter(&self, changes: &StateChanges) -> StaleFlowFilter {
        StaleFlowFilter::new(&self.services, &self.endpoints, changes.services.deleted_udp_cluster_ips.iter().copied())
    }

    /// The health-check NodePort of every `LoadBalancer` Service with
    /// `externalTrafficPolicy: Local`, and how many ready endpoints it has
    /// on this node, summed over its ports (upstream's count).
    pub fn health_checks(&self) -> BTreeMap<NamespacedName, HealthCheck> {
        let mut out: BTreeMap<NamespacedName, HealthCheck> = BTreeMap::new();
        for (name, info) in self.services.iter() {
            let Some(port) = info.health_check_node_port else { continue };
            let local_ready = self.endpoints.get(name).iter().filter(|e| e.is_local && e.ready).count();
            let entry = out.entry(name.service.clone()).or_insert(HealthCheck { port, local_endpoints: 0 });
            entry.local_endpoints += local_ready;
        }
        out
    }
}

/// One Service's health-check NodePort and its local ready endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCheck {
    /// `spec.healthCheckNodePort`.
    pub port: u16,
    /// Ready endpoints on this node, summed over the Service's ports.
    pub local_endpoints: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kproxy_oracle::fixtures::{self as fx, service, slice, EndpointState};

    #[test]
    fn health_checks_count_local_ready_endpoints_over_ports() {
        let mut state = ProxyState::new(IpFamily::V4, fx::NODE_NAME);
        let svc = service("ns", "lb", &["172.30.0.1"])
            .port("a", 80, "TCP", 30080)
            .port("b", 443, "TCP", 30443)
            .load_balancer(&["1.2.3.4"])
            .external_policy_local(32000)
            .build();
        state.on_service(None, Some(&svc));
        let eps = slice("ns", "lb", "lb-1", "IPv4")
            .port("a", 80, "TCP")
            .port("b", 443, "TCP")
            .endpoint("10.0.0.1", fx::NODE_NAME, EndpointState::Ready)
            .endpoint("10.0.0.2", fx::NODE_NAME, EndpointState::ServingTerminating)
            .endpoint("10.0.0.3", fx::OTHER_NODE, EndpointState::Ready)
            .build();
        state.on_endpoint_slice(&eps, false);
        state.apply();
        let checks = state.health_checks();
        assert_eq!(checks[&NamespacedName::new("ns", "lb")], HealthCheck { port: 32000, local_endpoints: 2 });
    }

    /// A source that keeps only identities: the previous state comes from
    /// the state itself, so a skeleton deletes, an unchanged object is no
    /// change, and a change undone before the sync is none either.
    #[test]
    fn a_service_is_compared_with_what_the_state_holds_not_with_the_previous_object() {
        let mut state = ProxyState::new(IpFamily::V4, fx::NODE_NAME);
        let svc = service("ns", "a", &["172.30.0.1"]).port("http", 80, "TCP", 0).build();
        state.on_service(None, Some(&svc));
        state.apply();
        assert_eq!(state.services().len(), 1);
        assert!(!state.on_service(None, Some(&svc)), "the same object again is no change");
        let moved = service("ns", "a", &["172.30.0.1"]).port("http", 81, "TCP", 0).build();
        assert!(state.on_service(None, Some(&moved)));
        assert!(!state.on_service(None, Some(&svc)), "a change undone before the sync is none");
        let mut skeleton = Service::default();
        skeleton.metadata.name = Some("a".into());
        skeleton.metadata.namespace = Some("ns".into());
        assert!(state.on_service(Some(&skeleton), None), "a skeleton names the deleted Service");
        let changes = state.apply();
        assert!(state.services().is_empty(), "deleted: {changes:?}");
    }
}
