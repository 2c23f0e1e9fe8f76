//! The running proxy, whatever feeds it: one proxier and sync runner per
//! IP family, the health and metrics servers, and health-check NodePorts.
//! A source (the manifest reloader or the API watchers) hands it updates.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Result};
use kproxy_backend_iptables::kernel::{Flavour, IptablesCli};
use kproxy_backend_ipvs::kernel::IpvsHost;
use kproxy_backend_nft::kernel::NftKernel;
use kproxy_core::runner::{RunnerConfig, SyncRunner, Update};
use kproxy_core::{IpFamily, Proxier};
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::observer::SyncObserver;
use crate::run::{iptables_proxier, ipvs_proxier, nft_proxier, Host};
use crate::servers::{self, HealthChecks, Kind, Shared};
use crate::settings::{Mode, Settings};

/// Labels that keep an object away from this proxy, as upstream's
/// informers select: Services another proxy implements
/// (`service.kubernetes.io/service-proxy-name`) and headless Services'
/// objects (`service.kubernetes.io/headless`).
pub const IGNORED_LABELS: [&str; 2] = ["service.kubernetes.io/service-proxy-name", "service.kubernetes.io/headless"];

/// The label selector for the API watchers (both labels absent).
pub fn label_selector() -> String {
    IGNORED_LABELS.map(|l| format!("!{l}")).join(",")
}

/// Whether an object with `labels` is this proxy's (the selector, applied
/// locally, for standalone mode).
pub fn is_proxied(labels: Option<&std::collections::BTreeMap<String, String>>) -> bool {
    labels.is_none_or(|l| IGNORED_LABELS.iter().all(|k| !l.contains_key(*k)))
}

/// Where the health-check NodePorts listen: on the NodePort addresses,
/// or on every address when a family serves NodePorts on all of them (as
/// upstream; a list that matches no address opens no listener).
fn health_check_addresses(settings: &Settings, node: &Host, families: &[IpFamily]) -> Option<Vec<std::net::IpAddr>> {
    let mut out = Vec::new();
    for &family in families {
        if settings.node_port_addresses.matches_all(family, &node.node.ips) {
            return None;
        }
        out.extend(settings.node_port_addresses.resolve(family, &node.node.ips, &node.local_ips));
    }
    Some(out)
}

/// The running proxy.
#[derive(Debug)]
pub struct Proxy {
    senders: Vec<mpsc::Sender<Update>>,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Starts a proxier per family with the mode's backend, and the
    /// servers. Nothing syncs before both initial lists are delivered.
    pub async fn start(settings: &Settings, node: &Host, families: &[IpFamily], configz: String) -> Result<Proxy> {
        let runner_config = RunnerConfig { min_sync_period: settings.min_sync_period, sync_period: settings.sync_period, burst: 2 };
        let metrics = Arc::new(Metrics::new());
        let mut senders = Vec::new();
        let mut runners = Vec::new();
        let flavour = match settings.mode {
            Mode::Iptables | Mode::Ipvs => {
                let (flavour, why) = Flavour::detect(None).await;
                tracing::info!("using iptables-{} ({why})", flavour.name());
                Some(flavour)
            }
            _ => None,
        };
        for &family in families {
            let proxier: Box<dyn Proxier> = match (settings.mode, flavour) {
                (Mode::Nftables, _) => Box::new(nft_proxier(settings, family, node, NftKernel::new()?)?),
                (Mode::Iptables, Some(flavour)) => Box::new(iptables_proxier(settings, family, node, IptablesCli::new(flavour, None))?),
                (Mode::Ipvs, Some(flavour)) => Box::new(ipvs_proxier(settings, family, node, IpvsHost::new(None, IptablesCli::new(flavour, None)))?),
                (mode, None) => bail!("proxy mode {mode:?}: no iptables flavour was picked"),
            };
            let runner = SyncRunner::new(runner_config)?;
            let (tx, rx) = mpsc::channel(1024);
            senders.push(tx);
            runners.push((family, proxier, runner, rx));
        }
        let shared = Arc::new(Shared {
            healths: runners.iter().map(|(_, _, r, _)| r.health()).collect(),
            metrics: Arc::clone(&metrics),
            node_eligible: AtomicBool::new(true),
            mode: settings.mode.name(),
            configz,
        });
        servers::serve(Kind::Health, settings.healthz_bind_address, Arc::clone(&shared)).await?;
        servers::serve(Kind::Metrics, settings.metrics_bind_address, Arc::clone(&shared)).await?;
        for warning in settings.node_port_warnings(families) {
            tracing::warn!("{warning}");
        }
        let health_checks = Arc::new(HealthChecks::new(Arc::clone(&shared), health_check_addresses(settings, node, families)));
        for (family, mut proxier, runner, rx) in runners {
            let mut observer = SyncObserver::new(family, Arc::clone(&metrics), Arc::clone(&health_checks));
            tokio::spawn(async move {
                if let Err(e) = runner.run(&mut *proxier, rx, |event| observer.observe(event)).await {
                    tracing::error!(%family, error = %e, "the sync runner stopped");
                }
            });
        }
        Ok(Proxy { senders, shared })
    }

    /// Hands updates to every family's proxier, counting changes for the
    /// metrics.
    pub async fn send(&self, updates: Vec<Update>) {
        for u in &updates {
            match u {
                Update::Service { .. } => self.shared.metrics.service_change(),
                Update::EndpointSlice { .. } => self.shared.metrics.endpoint_change(),
                _ => {}
            }
        }
        for tx in &self.senders {
            for u in &updates {
                let _ = tx.send(u.clone()).await;
            }
        }
    }

    /// Sets whether the node may receive traffic (false while it is being
    /// deleted: `/healthz` then fails).
    pub fn set_node_eligible(&self, eligible: bool) {
        self.shared.node_eligible.store(eligible, Ordering::Relaxed);
    }
}
