//! # kproxy-userspace
//!
//! kube-proxy's userspace mode, as a kproxy backend written from outside:
//! this crate uses only the public API of `kproxy-core` (the model, the
//! endpoint selection and the [`StateProxier`] skeleton) and
//! `kproxy-agent` (the options and host a backend is built from), as a
//! third party would. `kproxy --proxy-mode userspace` runs it.
//!
//! The proxy does the forwarding itself. For each Service port it opens
//! listeners on ports the kernel picks (one for the cluster endpoints,
//! one for the node's own where a `Local` policy needs them), and an
//! nftables table steers the port's traffic to them: ClusterIPs,
//! externalIPs, LoadBalancer VIPs and NodePorts, from pods, other hosts
//! and the node itself. A listener forwards each TCP connection, and each
//! client's UDP datagrams (a session, dropped after
//! [`UserspaceOptions::udp_idle_timeout`] without traffic), to a ready
//! endpoint, round robin, or to the client's previous endpoint under
//! `sessionAffinity: ClientIP`. A port without an endpoint is refused by
//! the kernel; a `Local` policy without a local endpoint drops.
//!
//! What differs from the other modes by nature: the endpoint sees the
//! node as the source of every connection (the proxy opens it), so no
//! source is preserved, not even under `externalTrafficPolicy: Local`;
//! SCTP is not proxied; and each connection crosses user space twice.
//!
//! ```no_run
//! # async fn example() -> kproxy_core::Result<()> {
//! use kproxy_core::{IpFamily, Proxier, ProxierConfig, SyncRequest};
//! use kproxy_userspace::{UserspaceDataplane, UserspaceOptions};
//!
//! let mut proxier = UserspaceDataplane::proxier("node-a", ProxierConfig::new(IpFamily::V4), UserspaceOptions::default());
//! // ... feed it Services and EndpointSlices (or run it under kproxy's
//! // SyncRunner), then:
//! proxier.sync(SyncRequest { full: true }).await?;
//! # Ok(())
//! # }
//! ```

pub mod forward;
pub mod kernel;
pub mod nft;
pub mod plan;

use std::time::Duration;

use async_trait::async_trait;
use kproxy_agent::backend::{Host, ProxyOptions};
use kproxy_core::skeleton::{Applied, Dataplane, Refresh, StateProxier};
use kproxy_core::{Error, IpFamily, ProxierConfig, ProxyState, ServicePortName, StateChanges, SyncRequest};

pub use nft::TABLE;

/// The backend's name, as `/proxyMode` and the logs say it.
pub const BACKEND: &str = "userspace";

/// Userspace mode's own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserspaceOptions {
    /// A UDP session ends after this long without a datagram either way
    /// (kube-proxy's userspace `udpIdleTimeout`, 250 ms by default).
    pub udp_idle_timeout: Duration,
}

impl Default for UserspaceOptions {
    fn default() -> Self {
        UserspaceOptions { udp_idle_timeout: Duration::from_millis(250) }
    }
}

/// The userspace dataplane of one IP family: its listeners and its
/// nftables table.
#[derive(Debug)]
pub struct UserspaceDataplane {
    config: ProxierConfig,
    listeners: forward::Listeners,
    /// SCTP ports already warned about.
    warned: std::collections::BTreeSet<ServicePortName>,
    /// The last script applied.
    script: String,
}

/// A userspace proxier: kproxy-core's skeleton over [`UserspaceDataplane`].
pub type UserspaceProxier = StateProxier<UserspaceDataplane>;

impl UserspaceDataplane {
    /// A proxier for `config`'s family on node `node_name`.
    pub fn proxier(node_name: &str, config: ProxierConfig, options: UserspaceOptions) -> UserspaceProxier {
        let family = config.family;
        let dataplane = UserspaceDataplane {
            listeners: forward::Listeners::new(family, options.udp_idle_timeout),
            config,
            warned: Default::default(),
            script: String::new(),
        };
        StateProxier::new(ProxyState::new(family, node_name), dataplane)
    }

    /// The proxier kube-proxy's `options` call for, for `family` on `host`
    /// (as `kproxy_agent::backend::Backend::proxier` builds the other
    /// modes').
    pub fn for_host(options: &ProxyOptions, family: IpFamily, host: &Host) -> UserspaceProxier {
        UserspaceDataplane::proxier(&options.node_name, host.config(options, family), UserspaceOptions::default())
    }

    /// The nftables script of the last sync.
    pub fn script(&self) -> &str {
        &self.script
    }
}

#[async_trait]
impl Dataplane for UserspaceDataplane {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    /// Renders everything on every sync: the listeners keep their ports,
    /// and the table is small.
    async fn apply(&mut self, state: &ProxyState, _: &StateChanges, _: Refresh, _: SyncRequest) -> kproxy_core::Result<Applied> {
        let plan = plan::plan(state, &self.config);
        for name in &plan.unsupported {
            if self.warned.insert(name.clone()) {
                tracing::warn!(service = %name, "userspace mode does not proxy SCTP; this port is not served");
            }
        }
        let ports = self.listeners.reconcile(&plan.listeners).map_err(|e| Error::sync(BACKEND, format!("cannot open a listener: {e}"), Some(Box::new(e))))?;
        let script = nft::render(self.config.family, &plan, &ports);
        kernel::apply(&script).await.map_err(|e| Error::sync(BACKEND, e, None))?;
        self.script = script;
        Ok(Applied { full: true, no_local_endpoints: plan.no_local_endpoints, rule_counts: Default::default() })
    }

    async fn cleanup(&mut self) -> kproxy_core::Result<()> {
        self.listeners.close_all();
        kernel::delete_table(self.config.family).await.map_err(|message| Error::Cleanup { backend: BACKEND, message, source: None })
    }
}

/// What userspace mode would program for `state` with `config`, for a
/// dry run: each listener and where it forwards, then the nftables table,
/// with each listener's port shown as its number in the list (the kernel
/// picks the real ports when the listeners open).
pub fn preview(state: &ProxyState, config: &ProxierConfig) -> String {
    let plan = plan::plan(state, config);
    let mut out = String::new();
    let mut ports = std::collections::BTreeMap::new();
    for (n, (key, forwarding)) in plan.listeners.iter().enumerate() {
        let port = u16::try_from(n + 1).unwrap_or(u16::MAX);
        ports.insert(key.clone(), port);
        let endpoints: Vec<String> = forwarding.endpoints.iter().map(ToString::to_string).collect();
        let affinity = forwarding.affinity.map(|a| format!(" (ClientIP affinity {}s)", a.as_secs())).unwrap_or_default();
        out.push_str(&format!("# listener {port}: {} {:?} -> {}{affinity}\n", key.service, key.pool, endpoints.join(", ")));
    }
    for name in &plan.unsupported {
        out.push_str(&format!("# not served (SCTP): {name}\n"));
    }
    out.push_str(&nft::render(config.family, &plan, &ports));
    out
}
