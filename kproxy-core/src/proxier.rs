//! The contract every dataplane backend implements.

use async_trait::async_trait;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use std::collections::BTreeMap;

use crate::conntrack::StaleFlowFilter;
use crate::model::NamespacedName;
use crate::state::{HealthCheck, StateChanges};
use crate::Result;

/// What the runner asks of one sync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncRequest {
    /// Reprogram everything and repair drift, not just what changed: set for
    /// the periodic resync and for the retry after a failed sync.
    pub full: bool,
}

/// What one successful sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncReport {
    /// Whether the backend reprogrammed everything.
    pub full: bool,
    /// The changes this sync applied; the caller uses them for conntrack
    /// cleanup and latency metrics.
    pub changes: StateChanges,
    /// Service ports whose Local policy had no local endpoint, by policy.
    pub no_local_endpoints: NoLocalEndpoints,
    /// Health-check NodePorts to serve, with their local endpoint counts
    /// (from [`ProxyState::health_checks`](crate::ProxyState::health_checks)).
    pub health_checks: BTreeMap<NamespacedName, HealthCheck>,
    /// Which conntrack entries to delete now, when this sync may have left
    /// some stale (full syncs, and [`StateChanges::may_leave_stale_flows`]);
    /// from [`ProxyState::stale_flow_filter`](crate::ProxyState::stale_flow_filter).
    /// The caller runs it against the kernel (`kproxy-netfilter` does).
    pub stale_flows: Option<StaleFlowFilter>,
    /// Rules per table, for backends that count them (the iptables
    /// backend: `filter` and `nat`, as upstream's
    /// `sync_proxy_rules_iptables_total` and `_last`).
    pub rule_counts: BTreeMap<&'static str, RuleCount>,
}

/// How many rules of one table a backend owns and wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleCount {
    /// Rules the backend owns after the sync.
    pub total: usize,
    /// Rules the sync wrote (all of them after a full sync).
    pub written: usize,
}

impl crate::state::ProxyState {
    /// The report of a successful sync that applied `changes`: health
    /// checks from the maps, and the conntrack filter when the sync may
    /// have left stale flows (full syncs, and
    /// [`StateChanges::may_leave_stale_flows`]).
    pub fn report(&self, full: bool, changes: StateChanges, no_local_endpoints: NoLocalEndpoints) -> SyncReport {
        let mut report = SyncReport::new(full, changes);
        report.no_local_endpoints = no_local_endpoints;
        report.health_checks = self.health_checks();
        if report.full || report.changes.may_leave_stale_flows() {
            report.stale_flows = Some(self.stale_flow_filter(&report.changes));
        }
        report
    }
}

impl SyncReport {
    /// A report for a sync that applied `changes`.
    pub fn new(full: bool, changes: StateChanges) -> Self {
        SyncReport {
            full,
            changes,
            no_local_endpoints: NoLocalEndpoints::default(),
            health_checks: BTreeMap::new(),
            stale_flows: None,
            rule_counts: BTreeMap::new(),
        }
    }
}

/// Counts behind `kubeproxy_sync_proxy_rules_no_local_endpoints_total`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoLocalEndpoints {
    /// `internalTrafficPolicy: Local` ports with endpoints, none local.
    pub internal: usize,
    /// `externalTrafficPolicy: Local` ports with endpoints, none local.
    pub external: usize,
}

/// A dataplane backend.
///
/// Handlers record a change and return whether anything is now pending;
/// they never touch the kernel and never schedule a sync. The
/// [`SyncRunner`](crate::runner::SyncRunner) decides when to call
/// [`Proxier::sync`].
///
/// Write a backend as a [`Dataplane`](crate::skeleton::Dataplane) and wrap
/// it in a [`StateProxier`](crate::skeleton::StateProxier), as kproxy's
/// three backends do: the skeleton forwards the handlers to a
/// [`ProxyState`](crate::ProxyState), carries a failed sync's changes
/// over, and fills every [`SyncReport`] with the health checks and the
/// conntrack cleanup, which a hand-written `Proxier` can forget:
///
/// ```no_run
/// use async_trait::async_trait;
/// use kproxy_core::skeleton::{Applied, Dataplane, Refresh, StateProxier};
/// use kproxy_core::{IpFamily, Proxier, ProxyState, Result, StateChanges, SyncRequest};
///
/// struct Printer;
///
/// #[async_trait]
/// impl Dataplane for Printer {
///     fn backend(&self) -> &'static str { "printer" }
///     async fn apply(&mut self, state: &ProxyState, _: &StateChanges, _: Refresh, _: SyncRequest) -> Result<Applied> {
///         println!("{} service ports", state.services().len());
///         Ok(Applied::default())
///     }
///     async fn cleanup(&mut self) -> Result<()> { Ok(()) }
/// }
/// fn proxier() -> impl Proxier {
///     StateProxier::new(ProxyState::new(IpFamily::V4, "node-a"), Printer)
/// }
/// let _ = proxier();
/// ```
#[async_trait]
pub trait Proxier: Send {
    /// The backend's name (`nftables`, `iptables`, `ipvs`, ...), for logs and
    /// metrics.
    fn backend(&self) -> &'static str;

    /// A Service was added (`previous` None), updated, or deleted (`current`
    /// None). Returns whether any change is pending.
    fn on_service_update(&mut self, previous: Option<&Service>, current: Option<&Service>) -> bool;

    /// An EndpointSlice was added or updated (`removed` false) or deleted.
    /// Returns whether any change is pending.
    fn on_endpoint_slice_update(&mut self, slice: &EndpointSlice, removed: bool) -> bool;

    /// The node's own Node object changed. Returns whether any change is
    /// pending.
    fn on_node_update(&mut self, node: &Node) -> bool;

    /// The cluster's ServiceCIDRs changed: `cidrs` is every range of every
    /// `networking.k8s.io/v1` ServiceCIDR object, of both families.
    /// Returns whether any change is pending. Only backends that act on
    /// them (nftables mode drops traffic to addresses of these ranges that
    /// no Service holds, as upstream's does) override the default, which
    /// ignores them.
    fn on_service_cidrs_update(&mut self, cidrs: &[IpNet]) -> bool {
        let _ = cidrs;
        false
    }

    /// Programs the dataplane from the desired state.
    async fn sync(&mut self, request: SyncRequest) -> Result<SyncReport>;

    /// Removes everything this backend ever installed.
    async fn cleanup(&mut self) -> Result<()>;
}
