//! The running proxy, whatever feeds it: one proxier and sync runner per
//! IP family, the health and metrics servers, and health-check NodePorts.
//! A source (the manifest reloader or the API watchers) hands it updates.

use std::sync::Arc;

use anyhow::Result;
use kproxy_agent::backend::{Backend, Host};
use kproxy_agent::fanout::FanOut;
use kproxy_agent::health::{HealthCheckServers, ProxyHealth};
use kproxy_core::runner::{RunnerConfig, Update};
use kproxy_core::IpFamily;

use crate::metrics::Metrics;
use crate::observer::Hooks;
use crate::servers::{self, Shared};
use crate::settings::Settings;

/// The running proxy.
#[derive(Debug)]
pub struct Proxy {
    /// One proxier and runner per family.
    fan_out: FanOut,
    /// The family of each sender.
    families: Vec<IpFamily>,
    shared: Arc<Shared>,
    /// What the configuration was built from.
    started_on: StartedOn,
    /// Set when the Node changed in a way the configuration depends on.
    restart: tokio::sync::watch::Sender<Option<String>>,
}

/// The parts of the Node that the proxiers' configuration was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StartedOn {
    ips: Vec<std::net::IpAddr>,
    /// `Some` when the local detector is the node's pod CIDRs.
    pod_cidrs: Option<Vec<ipnet::IpNet>>,
}

impl StartedOn {
    /// Why a Node like `node` needs a new configuration, if it does.
    fn change(&self, node: &kproxy_core::NodeInfo) -> Option<String> {
        if node.ips != self.ips {
            return Some(format!("the Node's IPs changed from {:?} to {:?}", self.ips, node.ips));
        }
        match &self.pod_cidrs {
            Some(old) if *old != node.pod_cidrs => Some(format!("the Node's PodCIDRs changed from {old:?} to {:?}", node.pod_cidrs)),
            _ => None,
        }
    }
}

impl Proxy {
    /// Starts a proxier per family with the mode's backend, and the
    /// servers. Nothing syncs before both initial lists are delivered.
    pub async fn start(settings: &Settings, node: &Host, families: &[IpFamily], configz: String, metrics: Arc<Metrics>) -> Result<Proxy> {
        let runner_config = RunnerConfig { min_sync_period: settings.min_sync_period, sync_period: settings.sync_period, burst: 2 };
        metrics.count_nfacct(node.nfacct);
        let mut fan_out = FanOut::new();
        let backend = Backend::detect(settings.proxy.mode).await;
        let flavour = backend.flavour();
        for &family in families {
            let proxier: Box<dyn kproxy_core::Proxier> = if settings.proxy.mode == crate::settings::Mode::Userspace {
                Box::new(kproxy_userspace::UserspaceDataplane::for_host(&settings.proxy, family, node))
            } else {
                backend.proxier(&settings.proxy, family, node)?
            };
            fan_out.add(family, proxier, runner_config)?;
        }
        let shared = Arc::new(Shared {
            health: Arc::new(ProxyHealth::new(fan_out.healths().to_vec())),
            metrics: Arc::clone(&metrics),
            mode: settings.proxy.mode.name(),
            configz,
        });
        let hard_fail = settings.bind_address_hard_fail;
        if let Some(addr) = settings.healthz_bind_address {
            servers::serve_health_server(addr, Arc::clone(&shared), hard_fail).await?;
        }
        if let Some(addr) = settings.metrics_bind_address {
            servers::serve_metrics_server(addr, Arc::clone(&shared), hard_fail).await?;
        }
        for warning in settings.proxy.node_port_warnings(families) {
            tracing::warn!("{warning}");
        }
        let health_checks = Arc::new(HealthCheckServers::new(Arc::clone(&shared.health), settings.proxy.health_check_addresses(node, families)));
        fan_out.start(|_| Hooks { metrics: Arc::clone(&metrics), health_checks: Arc::clone(&health_checks) });
        // Make before break: the other proxies' leftovers go once every
        // family has synced.
        let (takeover_settings, takeover_host, health) = (settings.clone(), node.clone(), Arc::clone(&shared.health));
        tokio::spawn(async move {
            while !health.all_synced() {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            for line in crate::takeover::remove_leftovers(&takeover_settings, &takeover_host, flavour).await {
                tracing::info!("taking the node over: {line}");
            }
        });
        let started_on = StartedOn {
            ips: node.node.ips.clone(),
            pod_cidrs: (settings.proxy.detect_local == crate::settings::DetectLocal::NodeCidr).then(|| node.node.pod_cidrs.clone()),
        };
        Ok(Proxy { fan_out, families: families.to_vec(), shared, started_on, restart: tokio::sync::watch::Sender::new(None) })
    }

    /// Waits until the Node changed in a way the configuration depends on
    /// (its IPs; its PodCIDRs with `detectLocalMode: NodeCIDR`), and says
    /// how. Never returns otherwise.
    pub async fn restart_needed(&self) -> String {
        let mut rx = self.restart.subscribe();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Hands updates to every family's proxier, counting changes for the
    /// metrics.
    pub async fn send(&self, updates: Vec<Update>) {
        for u in &updates {
            match u {
                Update::Service { previous, current } => {
                    self.shared.metrics.service_change();
                    // Per-change detail: upstream logs it at -v=4. The name
                    // is built only when that level is on (inside the macro).
                    let meta = current.as_ref().or(previous.as_ref()).map(|s| &s.metadata);
                    tracing::trace!(service = meta.map(object_name).unwrap_or_default(), deleted = current.is_none(), "Service changed");
                }
                Update::EndpointSlice { slice, removed } => {
                    self.shared.metrics.endpoint_change();
                    tracing::trace!(endpointSlice = object_name(&slice.metadata), deleted = *removed, "EndpointSlice changed");
                }
                Update::Node(n) => {
                    if let Some(why) = self.started_on.change(&kproxy_core::convert::node_info(n)) {
                        self.restart.send_replace(Some(why));
                    }
                }
                _ => {}
            }
        }
        if updates.iter().any(|u| matches!(u, Update::Service { .. } | Update::EndpointSlice { .. })) {
            for family in &self.families {
                self.shared.metrics.queued(*family);
            }
        }
        self.fan_out.send(&updates).await;
    }

    /// Sets whether the node may receive traffic (false while it is being
    /// deleted: `/healthz` then fails).
    pub fn set_node_eligible(&self, eligible: bool) {
        self.shared.health.set_node_eligible(eligible);
    }
}

/// `namespace/name` of an object, for logs.
fn object_name(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!("{}/{}", m.namespace.as_deref().unwrap_or_default(), m.name.as_deref().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ips: &[&str], cidrs: &[&str]) -> kproxy_core::NodeInfo {
        let mut n = kproxy_core::NodeInfo::named("n");
        n.ips = ips.iter().map(|s| s.parse().unwrap()).collect();
        n.pod_cidrs = cidrs.iter().map(|s| s.parse().unwrap()).collect();
        n
    }

    #[test]
    fn a_node_change_the_configuration_depends_on_asks_for_a_restart() {
        let start = node(&["192.168.0.2"], &["10.0.1.0/24"]);
        let by_ips = StartedOn { ips: start.ips.clone(), pod_cidrs: None };
        assert_eq!(by_ips.change(&start), None);
        assert_eq!(by_ips.change(&node(&["192.168.0.2"], &["10.0.9.0/24"])), None, "PodCIDRs only matter to the NodeCIDR detector");
        let why = by_ips.change(&node(&["192.168.0.2", "fd00::2"], &[])).unwrap();
        assert!(why.starts_with("the Node's IPs changed"), "{why}");
        let by_cidrs = StartedOn { ips: start.ips.clone(), pod_cidrs: Some(start.pod_cidrs.clone()) };
        let why = by_cidrs.change(&node(&["192.168.0.2"], &["10.0.9.0/24"])).unwrap();
        assert!(why.starts_with("the Node's PodCIDRs changed"), "{why}");
    }
}
