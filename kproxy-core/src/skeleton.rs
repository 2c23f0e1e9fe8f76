//! One `Proxier` for every backend: [`StateProxier`] does what every
//! backend must do around its own kernel work, and a backend implements
//! only [`Dataplane`].
//!
//! What [`StateProxier`] does, so that no backend can forget it:
//! - forwards the handlers to its [`ProxyState`];
//! - on each sync, applies the pending changes, tells the dataplane what to
//!   re-render ([`Refresh`]) and asks it to program the kernel;
//! - builds the [`SyncReport`] with [`ProxyState::report`]: health-check
//!   NodePorts and the stale-flow filter for conntrack cleanup come with
//!   every successful sync;
//! - after a failed sync, carries its changes over to the next one, so the
//!   conntrack cleanup and latency metrics they call for are not lost.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};

use async_trait::async_trait;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::model::NamespacedName;
use crate::proxier::{NoLocalEndpoints, Proxier, RuleCount, SyncReport, SyncRequest};
use crate::state::{ProxyState, StateChanges};
use crate::Result;

/// What a sync asks the dataplane to render again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refresh {
    /// Everything: the first sync, or the node changed.
    All,
    /// Only these Services (possibly none: a periodic sync).
    Services(Vec<NamespacedName>),
}

/// What the dataplane did in one successful sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The sync rewrote everything, though the runner asked for a partial
    /// one (a rebuild after drift, an untrusted kernel state, ...).
    pub full: bool,
    /// Service ports whose Local policy had no local endpoint.
    pub no_local_endpoints: NoLocalEndpoints,
    /// Rules per table, for backends that count them.
    pub rule_counts: BTreeMap<&'static str, RuleCount>,
}

/// A backend's own work: rendering the state and programming the kernel.
/// Wrap it in a [`StateProxier`] to get a [`Proxier`].
#[async_trait]
pub trait Dataplane: Send {
    /// The backend's name (`nftables`, `iptables`, `ipvs`, ...).
    fn backend(&self) -> &'static str;

    /// Programs the kernel for `state`, whose latest changes are `changes`;
    /// `refresh` says what to render again, `request` whether the runner
    /// asked for a full sync. On error the kernel may hold part of the
    /// sync; the next one gets the same changes again.
    async fn apply(&mut self, state: &ProxyState, changes: &StateChanges, refresh: Refresh, request: SyncRequest) -> Result<Applied>;

    /// Removes everything this backend ever installed.
    async fn cleanup(&mut self) -> Result<()>;
}

/// A [`Proxier`] made of a [`ProxyState`] and a [`Dataplane`].
///
/// It dereferences to the dataplane, so a backend's own accessors (its
/// kernel, its rendered rules) stay one call away.
///
/// ```no_run
/// use async_trait::async_trait;
/// use kproxy_core::skeleton::{Applied, Dataplane, Refresh, StateProxier};
/// use kproxy_core::{IpFamily, ProxyState, Result, StateChanges, SyncRequest};
///
/// struct Printer;
///
/// #[async_trait]
/// impl Dataplane for Printer {
///     fn backend(&self) -> &'static str { "printer" }
///     async fn apply(&mut self, state: &ProxyState, _: &StateChanges, refresh: Refresh, _: SyncRequest) -> Result<Applied> {
///         println!("{refresh:?}: {} service ports", state.services().len());
///         Ok(Applied::default())
///     }
///     async fn cleanup(&mut self) -> Result<()> { Ok(()) }
/// }
/// let _proxier = StateProxier::new(ProxyState::new(IpFamily::V4, "node-a"), Printer);
/// ```
#[derive(Debug)]
pub struct StateProxier<D> {
    state: ProxyState,
    dataplane: D,
    rendered_once: bool,
    /// Changes of syncs that failed, handed out with the next successful
    /// one.
    unreported: StateChanges,
}

impl<D: Dataplane> StateProxier<D> {
    /// A proxier for `state`'s family and node, programming `dataplane`.
    pub fn new(state: ProxyState, dataplane: D) -> Self {
        StateProxier { state, dataplane, rendered_once: false, unreported: StateChanges::default() }
    }

    /// The proxy state (for tests and tools).
    pub fn state(&self) -> &ProxyState {
        &self.state
    }

    /// The dataplane.
    pub fn dataplane(&self) -> &D {
        &self.dataplane
    }

    /// The dataplane, mutably (for tests that damage the kernel's state).
    pub fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dataplane
    }
}

impl<D> Deref for StateProxier<D> {
    type Target = D;
    fn deref(&self) -> &D {
        &self.dataplane
    }
}

impl<D> DerefMut for StateProxier<D> {
    fn deref_mut(&mut self) -> &mut D {
        &mut self.dataplane
    }
}

#[async_trait]
impl<D: Dataplane> Proxier for StateProxier<D> {
    fn backend(&self) -> &'static str {
        self.dataplane.backend()
    }

    fn on_service_update(&mut self, previous: Option<&Service>, current: Option<&Service>) -> bool {
        self.state.on_service(previous, current)
    }

    fn on_endpoint_slice_update(&mut self, slice: &EndpointSlice, removed: bool) -> bool {
        self.state.on_endpoint_slice(slice, removed)
    }

    fn on_node_update(&mut self, node: &Node) -> bool {
        self.state.on_node(node)
    }

    fn on_service_cidrs_update(&mut self, cidrs: &[IpNet]) -> bool {
        self.state.on_service_cidrs(cidrs)
    }

    async fn sync(&mut self, request: SyncRequest) -> Result<SyncReport> {
        let mut changes = std::mem::take(&mut self.unreported);
        changes.absorb(self.state.apply());
        let refresh = if changes.node_changed || !self.rendered_once {
            Refresh::All
        } else {
            Refresh::Services(changes.updated_services().into_iter().cloned().collect())
        };
        match self.dataplane.apply(&self.state, &changes, refresh, request).await {
            Ok(applied) => {
                self.rendered_once = true;
                let mut report = self.state.report(request.full || applied.full, changes, applied.no_local_endpoints);
                report.rule_counts = applied.rule_counts;
                Ok(report)
            }
            Err(e) => {
                self.unreported = changes;
                Err(e)
            }
        }
    }

    async fn cleanup(&mut self) -> Result<()> {
        self.dataplane.cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IpFamily;
    use crate::Error;
    use kproxy_oracle::fixtures::{self as fx, service, slice, EndpointState};

    /// Records what it was asked; fails while `fail` is set.
    #[derive(Default)]
    struct Recorder {
        refreshes: Vec<Refresh>,
        fail: bool,
    }

    #[async_trait]
    impl Dataplane for Recorder {
        fn backend(&self) -> &'static str {
            "recorder"
        }
        async fn apply(&mut self, _: &ProxyState, _: &StateChanges, refresh: Refresh, _: SyncRequest) -> Result<Applied> {
            self.refreshes.push(refresh);
            if self.fail {
                return Err(Error::sync("recorder", "refused", None));
            }
            Ok(Applied::default())
        }
        async fn cleanup(&mut self) -> Result<()> {
            Ok(())
        }
    }

    fn lb_local() -> (Service, EndpointSlice) {
        let svc = service("ns", "lb", &["172.30.0.1"]).port("dns", 53, "UDP", 30053).load_balancer(&["1.2.3.4"]).external_policy_local(32000).build();
        let eps = slice("ns", "lb", "lb-1", "IPv4").port("dns", 53, "UDP").endpoint("10.0.0.1", fx::NODE_NAME, EndpointState::Ready).build();
        (svc, eps)
    }

    #[tokio::test]
    async fn reports_carry_health_checks_and_conntrack_cleanup_and_survive_a_failure() {
        let mut p = StateProxier::new(ProxyState::new(IpFamily::V4, fx::NODE_NAME), Recorder::default());
        assert_eq!(p.backend(), "recorder");
        let (svc, eps) = lb_local();
        assert!(p.on_node_update(&fx::node()));
        assert!(p.on_service_update(None, Some(&svc)));
        assert!(p.on_endpoint_slice_update(&eps, false));
        let first = p.sync(SyncRequest { full: false }).await.unwrap();
        assert_eq!(first.health_checks.values().map(|h| (h.port, h.local_endpoints)).collect::<Vec<_>>(), vec![(32000, 1)]);

        // The endpoint goes while the dataplane fails: the change (a UDP
        // endpoint to clean up after) waits for the next good sync.
        p.dataplane_mut().fail = true;
        assert!(p.on_endpoint_slice_update(&eps, true));
        assert!(p.sync(SyncRequest { full: false }).await.is_err());
        p.dataplane_mut().fail = false;
        let after = p.sync(SyncRequest { full: false }).await.unwrap();
        assert_eq!(after.changes.updated_services().len(), 1, "the failed sync's change is reported with the next one");
        assert!(after.stale_flows.is_some(), "the removed UDP endpoint's flows are cleaned up");
        assert_eq!(after.health_checks.values().map(|h| h.local_endpoints).collect::<Vec<_>>(), vec![0]);

        let name = crate::NamespacedName { namespace: "ns".into(), name: "lb".into() };
        assert_eq!(p.refreshes[0], Refresh::All, "the first sync renders everything");
        assert_eq!(p.refreshes[1], Refresh::Services(vec![name.clone()]));
        assert_eq!(p.refreshes[2], Refresh::Services(vec![name]), "the carried-over change is rendered again");
        // A node change renders everything again.
        let mut node = fx::node();
        node.metadata.labels = None;
        p.on_node_update(&node);
        p.sync(SyncRequest { full: false }).await.unwrap();
        assert_eq!(p.refreshes.last(), Some(&Refresh::All));
    }
}
