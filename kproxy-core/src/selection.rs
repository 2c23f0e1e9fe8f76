//! Which endpoints serve which traffic: upstream's `CategorizeEndpoints`.

use crate::model::{Endpoint, NodeInfo, ServicePortInfo};

/// The endpoints of one service port as seen from one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelectedEndpoints {
    /// Endpoints for Cluster-policy traffic, after topology filtering and
    /// terminating fallback. Empty when the port never uses Cluster policy.
    pub cluster: Vec<Endpoint>,
    /// Endpoints for Local-policy traffic (this node's), with terminating
    /// fallback. Empty when the port never uses Local policy.
    pub local: Vec<Endpoint>,
    /// Whether the port has a usable endpoint anywhere in the cluster, even if
    /// none is usable from this node.
    pub has_any: bool,
}

impl SelectedEndpoints {
    /// The union of `cluster` and `local`, sorted and deduplicated: every
    /// endpoint some traffic from this node may reach.
    pub fn all_reachable(&self) -> Vec<Endpoint> {
        let mut all: Vec<Endpoint> = self.cluster.iter().chain(&self.local).cloned().collect();
        all.sort_by_key(Endpoint::addr);
        all.dedup_by_key(|e| e.addr());
        all
    }
}

/// How topology hints narrow the cluster endpoints for this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopologyMode {
    /// No hints apply: every ready endpoint.
    None,
    /// `PreferSameNode`: endpoints hinted for this node.
    SameNode,
    /// `PreferSameZone` / topology-aware routing: endpoints hinted for this
    /// node's zone.
    SameZone,
}

/// Chooses the endpoints for `service` on `node` from `endpoints`:
///
/// - Cluster endpoints are the ready ones, filtered by topology hints; if
///   none are ready anywhere, the serving-and-terminating ones (ignoring
///   topology).
/// - Local endpoints are the ready local ones; if none, the serving and
///   terminating local ones.
/// - Hints apply all-or-nothing (see [`topology_mode`]).
pub fn select_endpoints(endpoints: &[Endpoint], service: &ServicePortInfo, node: &NodeInfo) -> SelectedEndpoints {
    let mut out = SelectedEndpoints::default();
    if service.uses_cluster_endpoints() {
        let mode = topology_mode(endpoints, node);
        out.cluster = filter(endpoints, |e| e.ready && available_for_topology(e, mode, node));
        if out.cluster.is_empty() {
            out.cluster = filter(endpoints, Endpoint::is_serving_terminating);
        }
        out.has_any = !out.cluster.is_empty();
    }
    if service.uses_local_endpoints() {
        out.has_any |= endpoints.iter().any(|e| e.ready || e.is_serving_terminating());
        out.local = filter(endpoints, |e| e.is_local && e.ready);
        if out.local.is_empty() {
            out.local = filter(endpoints, |e| e.is_local && e.is_serving_terminating());
        }
    }
    out
}

/// Upstream's all-or-nothing hint rule. Node hints are used when every ready
/// endpoint has one and at least one names this node; otherwise zone hints
/// when every ready endpoint has one and at least one names this node's
/// zone; otherwise no topology.
pub fn topology_mode(endpoints: &[Endpoint], node: &NodeInfo) -> TopologyMode {
    let ready: Vec<&Endpoint> = endpoints.iter().filter(|e| e.ready).collect();
    let all_have = |hints: fn(&Endpoint) -> &crate::model::Hints| {
        ready.iter().all(|e| !hints(e).is_empty())
    };
    let zone = node.zone();
    if all_have(|e| &e.node_hints) && ready.iter().any(|e| e.node_hints.contains(&node.name)) {
        return TopologyMode::SameNode;
    }
    if all_have(|e| &e.zone_hints) && ready.iter().any(|e| e.zone_hints.contains(zone)) {
        return TopologyMode::SameZone;
    }
    TopologyMode::None
}

fn available_for_topology(e: &Endpoint, mode: TopologyMode, node: &NodeInfo) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::SameNode => e.node_hints.contains(&node.name),
        TopologyMode::SameZone => e.zone_hints.contains(node.zone()),
    }
}

fn filter(endpoints: &[Endpoint], keep: impl Fn(&Endpoint) -> bool) -> Vec<Endpoint> {
    endpoints.iter().filter(|e| keep(e)).cloned().collect()
}

#[cfg(test)]
#[path = "selection_tests.rs"]
mod tests;
