//! What the binary does once flags and configuration are read.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kproxy_backend_nft::fake::FakeKernel;
use kproxy_backend_nft::kernel::{Kernel, NftKernel};
use kproxy_backend_nft::{NftOptions, NftProxier};
use kproxy_core::runner::{RunnerConfig, SyncRunner, Update};
use kproxy_core::{convert, IpFamily, NodeInfo, Proxier, SyncRequest};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;

use crate::config::{self, ConntrackConfiguration, KubeProxyConfiguration};
use crate::flags::Flags;
use crate::manifests::{self, Manifests};
use crate::metrics::Metrics;
use crate::observer::SyncObserver;
use crate::servers::{self, HealthChecks, Kind, Shared};
use crate::settings::{self, Mode, Settings};
use crate::sysctls;

/// Runs kproxy as the flags say.
pub async fn run(flags: Flags) -> Result<()> {
    let (mut file, path) = match &flags.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("{p}: cannot read the configuration file"))?;
            (config::parse(p, &text)?, p.clone())
        }
        None => (KubeProxyConfiguration::default(), "flags".to_string()),
    };
    let settings = settings::resolve(&file, &flags, &path)?;

    if let Some(out) = &flags.write_config_to {
        apply_flags(&mut file, &flags);
        let text = serde_saphyr::to_string(&file).context("cannot render the configuration")?;
        std::fs::write(out, text).with_context(|| format!("{out}: cannot write the configuration"))?;
        return Ok(());
    }
    if flags.cleanup {
        for family in [IpFamily::V4, IpFamily::V6] {
            let mut p = nft_proxier(&settings, family, &NodeInfo::named(&settings.node_name), NftKernel::new()?)?;
            p.cleanup().await?;
        }
        return Ok(());
    }
    if settings.mode != Mode::Nftables {
        bail!("proxy mode {:?} is not implemented yet; kproxy supports --proxy-mode nftables", settings.mode);
    }
    let Some(dir) = flags.manifests.as_deref() else {
        bail!("connecting to an API server is not implemented yet; use --manifests DIR (standalone mode)");
    };
    let (state, problems) = manifests::load(Path::new(dir)).map_err(anyhow::Error::msg)?;
    for p in &problems {
        tracing::warn!("skipping manifest: {p}");
    }
    let node = state.nodes.get(&settings.node_name).map(convert::node_info).unwrap_or_else(|| NodeInfo::named(&settings.node_name));
    let families: Vec<IpFamily> = [IpFamily::V4, IpFamily::V6]
        .into_iter()
        .filter(|f| f == &IpFamily::V4 || node.ips.iter().any(|ip| f.contains(*ip)))
        .collect();

    if flags.dry_run {
        for &family in &families {
            let mut p = nft_proxier(&settings, family, &node, FakeKernel::new())?;
            feed(&mut p, &state);
            p.sync(SyncRequest { full: true }).await?;
            println!("# {family}\n{}", p.kernel().dump());
        }
        return Ok(());
    }
    let applied = sysctls::apply(Path::new("/"), &settings.conntrack).map_err(anyhow::Error::msg)?;
    for change in &applied.changed {
        tracing::info!("set {change}");
    }
    for warning in &applied.warnings {
        tracing::warn!("{warning}");
    }
    apply_flags(&mut file, &flags);
    let configz = serde_json::to_string(&file).unwrap_or_default();
    standalone(&settings, &node, families, Path::new(dir), state, configz).await
}

fn apply_flags(file: &mut KubeProxyConfiguration, flags: &Flags) {
    if let Some(m) = &flags.proxy_mode {
        file.mode = Some(m.clone());
    }
    if let Some(h) = &flags.hostname_override {
        file.hostname_override = Some(h.clone());
    }
    if let Some(c) = &flags.cluster_cidr {
        file.cluster_cidr = Some(c.clone());
    }
    if let Some(n) = &flags.nodeport_addresses {
        file.node_port_addresses = Some(n.split(',').map(str::to_string).collect());
    }
    if let Some(a) = &flags.healthz_bind_address {
        file.healthz_bind_address = Some(a.clone());
    }
    if let Some(a) = &flags.metrics_bind_address {
        file.metrics_bind_address = Some(a.clone());
    }
    conntrack_flags(&mut file.conntrack, flags);
    if let Some(m) = flags.masquerade_all {
        file.nftables.get_or_insert_with(Default::default).masquerade_all = Some(m);
        file.iptables.get_or_insert_with(Default::default).masquerade_all = Some(m);
    }
}

/// Waits for SIGTERM (how Kubernetes stops a pod) or SIGINT; names it.
async fn stop_signal(terminate: &mut Signal) -> &'static str {
    tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

/// The `--conntrack-*` flags, folded into the file's `conntrack` section.
fn conntrack_flags(section: &mut Option<ConntrackConfiguration>, flags: &Flags) {
    let timeouts = [
        &flags.conntrack_tcp_timeout_established,
        &flags.conntrack_tcp_timeout_close_wait,
        &flags.conntrack_udp_timeout,
        &flags.conntrack_udp_timeout_stream,
    ];
    if flags.conntrack_max_per_core.is_none() && flags.conntrack_min.is_none() && flags.conntrack_tcp_be_liberal.is_none() && timeouts.iter().all(|t| t.is_none()) {
        return;
    }
    let c = section.get_or_insert_with(Default::default);
    c.max_per_core = flags.conntrack_max_per_core.or(c.max_per_core);
    c.min = flags.conntrack_min.or(c.min);
    c.tcp_be_liberal = flags.conntrack_tcp_be_liberal.or(c.tcp_be_liberal);
    let fields = [&mut c.tcp_established_timeout, &mut c.tcp_close_wait_timeout, &mut c.udp_timeout, &mut c.udp_stream_timeout];
    for (flag, field) in timeouts.into_iter().zip(fields) {
        if flag.is_some() {
            field.clone_from(flag);
        }
    }
}

fn nft_proxier<K: Kernel + 'static>(settings: &Settings, family: IpFamily, node: &NodeInfo, kernel: K) -> Result<NftProxier<K>> {
    Ok(NftProxier::new(&settings.node_name, settings.proxier_config(family, node), kernel, NftOptions::default())?)
}

fn feed<P: Proxier>(p: &mut P, state: &Manifests) {
    for n in state.nodes.values() {
        p.on_node_update(n);
    }
    for s in state.services.values() {
        p.on_service_update(None, Some(s));
    }
    for s in state.slices.values() {
        p.on_endpoint_slice_update(s, false);
    }
}

/// The updates that take `old` to `new`.
fn diff(old: &Manifests, new: &Manifests) -> Vec<Update> {
    let mut out = Vec::new();
    for (k, s) in &new.services {
        if old.services.get(k) != Some(s) {
            out.push(Update::Service { previous: old.services.get(k).cloned().map(Box::new), current: Some(Box::new(s.clone())) });
        }
    }
    for (k, s) in &old.services {
        if !new.services.contains_key(k) {
            out.push(Update::Service { previous: Some(Box::new(s.clone())), current: None });
        }
    }
    for (k, s) in &new.slices {
        if old.slices.get(k) != Some(s) {
            out.push(Update::EndpointSlice { slice: Box::new(s.clone()), removed: false });
        }
    }
    for (k, s) in &old.slices {
        if !new.slices.contains_key(k) {
            out.push(Update::EndpointSlice { slice: Box::new(s.clone()), removed: true });
        }
    }
    for (k, n) in &new.nodes {
        if old.nodes.get(k) != Some(n) {
            out.push(Update::Node(Box::new(n.clone())));
        }
    }
    out
}

/// Whether the node may receive traffic (not being deleted).
fn node_eligible(state: &Manifests, node_name: &str) -> bool {
    state.nodes.get(node_name).is_none_or(|n| n.metadata.deletion_timestamp.is_none())
}

/// Standalone mode: one proxier and runner per family, fed from the
/// manifests directory, which is re-read every second; the health and
/// metrics servers run beside them.
async fn standalone(
    settings: &Settings,
    node: &NodeInfo,
    families: Vec<IpFamily>,
    dir: &Path,
    state: Manifests,
    configz: String,
) -> Result<()> {
    let runner_config = RunnerConfig { min_sync_period: settings.min_sync_period, sync_period: settings.sync_period, burst: 2 };
    let metrics = Arc::new(Metrics::new());
    let mut senders = Vec::new();
    let mut runners = Vec::new();
    for family in families {
        let proxier = nft_proxier(settings, family, node, NftKernel::new()?)?;
        let runner = SyncRunner::new(runner_config)?;
        let (tx, rx) = mpsc::channel(1024);
        senders.push(tx);
        runners.push((family, proxier, runner, rx));
    }
    let shared = Arc::new(Shared {
        healths: runners.iter().map(|(_, _, r, _)| r.health()).collect(),
        metrics: Arc::clone(&metrics),
        node_eligible: AtomicBool::new(node_eligible(&state, &settings.node_name)),
        mode: "nftables",
        configz,
    });
    servers::serve(Kind::Health, settings.healthz_bind_address, Arc::clone(&shared)).await?;
    servers::serve(Kind::Metrics, settings.metrics_bind_address, Arc::clone(&shared)).await?;
    let health_checks = Arc::new(HealthChecks::new(Arc::clone(&shared)));
    let mut tasks = Vec::new();
    for (family, mut proxier, runner, rx) in runners {
        let mut observer = SyncObserver::new(family, Arc::clone(&metrics), Arc::clone(&health_checks));
        tasks.push(tokio::spawn(async move { runner.run(&mut proxier, rx, |event| observer.observe(event)).await }));
    }
    let send = |updates: Vec<Update>, senders: &[mpsc::Sender<Update>]| {
        for u in &updates {
            match u {
                Update::Service { .. } => metrics.service_change(),
                Update::EndpointSlice { .. } => metrics.endpoint_change(),
                _ => {}
            }
        }
        let senders = senders.to_vec();
        async move {
            for tx in &senders {
                for u in &updates {
                    let _ = tx.send(u.clone()).await;
                }
            }
        }
    };
    let mut initial = diff(&Manifests::default(), &state);
    initial.push(Update::ServicesSynced);
    initial.push(Update::EndpointSlicesSynced);
    send(initial, &senders).await;
    let mut known = state;
    let mut problems_seen = BTreeMap::new();
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let Ok((state, problems)) = manifests::load(dir) else { continue };
                for p in problems {
                    if problems_seen.insert(p.clone(), ()).is_none() {
                        tracing::warn!("skipping manifest: {p}");
                    }
                }
                shared.node_eligible.store(node_eligible(&state, &settings.node_name), Ordering::Relaxed);
                let updates = diff(&known, &state);
                if !updates.is_empty() {
                    send(updates, &senders).await;
                    known = state;
                }
            }
            signal = stop_signal(&mut terminate) => {
                // Rules stay in place, so traffic keeps flowing across a
                // restart or an upgrade.
                tracing::info!("{signal}: stopping; the rules stay in place");
                return Ok(());
            }
        }
    }
}
