//! What the binary does once flags and configuration are read.

use std::path::Path;

use anyhow::{bail, Context, Result};
use kproxy_backend_nft::fake::FakeKernel;
use kproxy_backend_nft::kernel::{Kernel, NftCli};
use kproxy_backend_iptables::fake::FakeIptables;
use kproxy_backend_iptables::kernel::{Flavour, IptablesCli};
use kproxy_backend_iptables::{IptablesOptions, IptablesProxier};
use kproxy_backend_ipvs::host::FakeHost;
use kproxy_backend_ipvs::kernel::{IpvsHost, IpvsKernel};
use kproxy_backend_ipvs::IpvsProxier;
use kproxy_backend_nft::{NftOptions, NftProxier};
use kproxy_core::runner::Update;
use kproxy_core::{convert, IpFamily, NodeInfo, Proxier, SyncRequest};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::config::{self, ConntrackConfiguration, KubeProxyConfiguration};
use crate::flags::Flags;
use crate::manifests::{self, Manifests};
use crate::proxy::Proxy;
use crate::settings::{self, Mode, Settings};
use crate::{standalone, sysctls, watch};

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
        return cleanup(&settings).await;
    }
    if flags.hand_back {
        return hand_back().await;
    }
    apply_flags(&mut file, &flags);
    let configz = serde_json::to_string(&file).unwrap_or_default();
    match flags.manifests.as_deref() {
        Some(dir) => standalone(&settings, &flags, Path::new(dir), configz).await,
        None => cluster(&settings, &flags, file.client_connection.as_ref().and_then(|c| c.kubeconfig.clone()), configz).await,
    }
}

/// `--cleanup`: removes what any mode of kproxy or upstream kube-proxy
/// installed, as `kube-proxy --cleanup` does, and says what, one line per
/// kind: the nftables tables, then the iptables chains of each flavour
/// present, then IPVS mode's virtual servers, sets, chains and dummy
/// interface (when the kernel has IPVS).
async fn cleanup(settings: &Settings) -> Result<()> {
    let node = Host::pictured(NodeInfo::named(&settings.node_name));
    let cli = NftCli::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        for table in kproxy_backend_nft::names::TABLES.iter().chain(&[crate::takeover::UPSTREAM_NFT_TABLE]) {
            if cli.delete_table_if_present(family, table).await? {
                say(&format!("removed nftables table {} {table}", if family == IpFamily::V4 { "ip" } else { "ip6" }));
            }
        }
    }
    for flavour in [Flavour::Nft, Flavour::Legacy] {
        let tools = IptablesCli::new(flavour, None);
        if !tools.available().await {
            continue;
        }
        let mut p = iptables_proxier(settings, IpFamily::V4, &node, tools)?;
        match p.cleanup().await {
            Ok(()) => say(&format!("removed the KUBE-* chains and their jumps of iptables-{}", flavour.name())),
            Err(e) => tracing::warn!("iptables-{}: {e}", flavour.name()),
        }
        if p.localnet_safeguard_removed() {
            say(&format!("removed the localnet safeguard (KUBE-FIREWALL) of iptables-{}", flavour.name()));
            // The localhost NodePorts and their safeguard are gone: nothing
            // may route 127.0.0.0/8 from outside any more.
            if let Some(change) = sysctls::route_localnet_off(Path::new("/")).map_err(anyhow::Error::msg)? {
                say(&format!("set {change}"));
            }
        }
    }
    if kproxy_backend_ipvs::netlink::IpvsSocket::open().is_ok() {
        let (flavour, _) = Flavour::detect(None).await;
        ipvs_proxier(settings, IpFamily::V4, &node, IpvsHost::new(None, IptablesCli::new(flavour, None)))?.cleanup().await?;
        say(&format!("removed IPVS virtual servers, {}, the KUBE-* ipsets and IPVS mode's chains", settings.ipvs.device));
    }
    Ok(())
}

/// `--hand-back`: removes kproxy's own nftables tables, the only objects
/// of kproxy's that upstream kube-proxy cannot see, and says which.
async fn hand_back() -> Result<()> {
    let cli = NftCli::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        for table in kproxy_backend_nft::names::TABLES {
            if cli.delete_table_if_present(family, table).await? {
                say(&format!("removed nftables table {} {table}", if family == IpFamily::V4 { "ip" } else { "ip6" }));
            }
        }
    }
    Ok(())
}

/// Prints `text` and a newline on stdout. A reader that went away (as
/// `kproxy --dry-run | head` does) ends the process quietly, as command-line
/// tools do, instead of a panic.
fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        tracing::warn!(error = %e, "cannot write to stdout");
    }
}

/// The families the dry run pictures: those the node has addresses in
/// (IPv4 when it has none).
fn families_of(node: &NodeInfo) -> Vec<IpFamily> {
    let families: Vec<IpFamily> = [IpFamily::V4, IpFamily::V6].into_iter().filter(|f| node.ips.iter().any(|ip| f.contains(*ip))).collect();
    if families.is_empty() {
        vec![IpFamily::V4]
    } else {
        families
    }
}

/// The families to proxy, as upstream: every family the kernel supports
/// (IPv6 when `/proc/net/if_inet6` exists), whatever addresses the node
/// has, the node's primary family first.
fn families_to_proxy(node: &NodeInfo, root: &Path) -> Vec<IpFamily> {
    let v6 = root.join("proc/net/if_inet6").exists();
    let primary = node.ips.first().map_or(IpFamily::V4, |ip| IpFamily::of(*ip));
    let mut out = vec![primary];
    match (primary, v6) {
        (IpFamily::V4, true) => out.push(IpFamily::V6),
        (IpFamily::V6, _) => out.push(IpFamily::V4),
        (IpFamily::V4, false) => {}
    }
    if primary == IpFamily::V6 && !v6 {
        tracing::warn!("the node's primary family is IPv6, but the kernel has no IPv6 (no /proc/net/if_inet6)");
    }
    let names: Vec<String> = out.iter().map(|f| f.to_string()).collect();
    if out.len() == 2 {
        tracing::info!(primary = %primary, "running in dual-stack mode ({})", names.join(", "));
    } else {
        tracing::info!(family = %primary, "running in single-stack mode");
    }
    out
}

/// Fails with one line if this machine cannot run the mode's backend
/// (the iptables mode's tools are checked when a flavour is picked).
async fn check_kernel_support(mode: Mode) -> Result<()> {
    if mode == Mode::Ipvs {
        return kproxy_backend_ipvs::netlink::IpvsSocket::open().map(|_| ()).map_err(|e| anyhow::anyhow!("proxy mode ipvs: {}", e.0));
    }
    if mode != Mode::Nftables {
        return Ok(());
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    kproxy_backend_nft::kernel::check_support(&NftCli::new(), &release).await.map_err(anyhow::Error::msg)
}

/// Sets the conntrack sysctls (and `route_localnet` for localhost
/// NodePorts), logging what changed.
fn set_sysctls(settings: &Settings, node: &NodeInfo) -> Result<()> {
    let mut applied = sysctls::apply(Path::new("/"), &settings.conntrack).map_err(anyhow::Error::msg)?;
    if settings.localhost_node_ports(node) {
        tracing::info!("setting route_localnet=1 to allow NodePorts on localhost; to change this either disable iptables.localhostNodePorts (--iptables-localhost-nodeports) or set nodePortAddresses (--nodeport-addresses) to filter loopback addresses");
        applied.changed.extend(sysctls::route_localnet(Path::new("/")).map_err(anyhow::Error::msg)?);
    }
    for change in &applied.changed {
        tracing::info!("set {change}");
    }
    for warning in &applied.warnings {
        tracing::warn!("{warning}");
    }
    Ok(())
}

/// Standalone mode: the cluster state comes from a manifests directory.
async fn standalone(settings: &Settings, flags: &Flags, dir: &Path, configz: String) -> Result<()> {
    let (state, problems) = manifests::load(dir).map_err(anyhow::Error::msg)?;
    for p in &problems {
        tracing::warn!("skipping manifest: {p}");
    }
    let node = state.nodes.get(&settings.node_name).map(convert::node_info).unwrap_or_else(|| NodeInfo::named(&settings.node_name));
    let families = families_of(&node);
    if flags.dry_run {
        let node = Host::pictured(node);
        for &family in &families {
            let text = match settings.mode {
                Mode::Ipvs => {
                    let mut p = ipvs_proxier(settings, family, &node, FakeHost::new())?;
                    first_sync(&mut p, &state).await?;
                    p.kernel().dump(family)
                }
                Mode::Iptables => {
                    let mut p = iptables_proxier(settings, family, &node, FakeIptables::new())?;
                    first_sync(&mut p, &state).await?;
                    kproxy_backend_iptables::Table::ALL.iter().map(|t| p.kernel().save(family, *t)).collect::<Vec<_>>().join("")
                }
                _ => {
                    let mut p = nft_proxier(settings, family, &node, FakeKernel::new())?;
                    first_sync(&mut p, &state).await?;
                    p.kernel().dump()
                }
            };
            say(&format!("# {family}\n{text}"));
        }
        return Ok(());
    }
    check_kernel_support(settings.mode).await?;
    set_sysctls(settings, &node)?;
    let families = families_to_proxy(&node, Path::new("/"));
    let proxy = Proxy::start(settings, &Host::here(node), &families, configz).await?;
    until_stopped(standalone::follow(&proxy, &settings.node_name, dir, state), proxy.restart_needed()).await
}

/// Cluster mode: the cluster state comes from the API server.
async fn cluster(settings: &Settings, flags: &Flags, file_kubeconfig: Option<String>, configz: String) -> Result<()> {
    if flags.dry_run {
        bail!("--dry-run needs --manifests DIR");
    }
    check_kernel_support(settings.mode).await?;
    let kubeconfig = flags.kubeconfig.clone().or(file_kubeconfig);
    let client = watch::client(kubeconfig.as_deref(), flags.master.as_deref()).await?;
    // Like upstream, wait a while for the Node (its addresses decide the
    // families and the primary NodePort addresses).
    let node = match watch::fetch_node(&client, &settings.node_name, 30).await {
        Some(n) => convert::node_info(&n),
        None => {
            tracing::warn!(node = %settings.node_name, "no Node object; proxying IPv4 with no node addresses");
            NodeInfo::named(&settings.node_name)
        }
    };
    let families = families_to_proxy(&node, Path::new("/"));
    set_sysctls(settings, &node)?;
    let proxy = Proxy::start(settings, &Host::here(node), &families, configz).await?;
    until_stopped(watch::follow(&proxy, client, &settings.node_name), proxy.restart_needed()).await
}

/// Runs `source` until SIGTERM or SIGINT, or until the configuration
/// must be read again (`restart` says why: kproxy then exits non-zero so
/// that the DaemonSet restarts it, as upstream). The rules stay in place,
/// so traffic keeps flowing across a restart or an upgrade.
async fn until_stopped(source: impl std::future::Future<Output = ()>, restart: impl std::future::Future<Output = String>) -> Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        _ = source => bail!("the update source stopped"),
        why = restart => bail!("{why}; exiting so that kproxy restarts with it (the rules stay in place)"),
        signal = stop_signal(&mut terminate) => {
            tracing::info!("{signal}: stopping; the rules stay in place");
            Ok(())
        }
    }
}

/// Hands everything in `state` to `p` and runs its first (full) sync, as
/// the dry run does without a runner.
async fn first_sync<P: Proxier>(p: &mut P, state: &Manifests) -> Result<()> {
    for u in standalone::diff(&Manifests::default(), state) {
        deliver(p, u);
    }
    p.sync(SyncRequest { full: true }).await?;
    Ok(())
}

/// Hands one update to a proxier directly (the dry run has no runner).
fn deliver<P: Proxier>(p: &mut P, update: Update) {
    match update {
        Update::Service { previous, current } => {
            p.on_service_update(previous.as_deref(), current.as_deref());
        }
        Update::EndpointSlice { slice, removed } => {
            p.on_endpoint_slice_update(&slice, removed);
        }
        Update::Node(n) => {
            p.on_node_update(&n);
        }
        Update::ServiceCidrs(cidrs) => {
            p.on_service_cidrs_update(&cidrs);
        }
        Update::ServicesSynced | Update::EndpointSlicesSynced => {}
    }
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

/// The iptables proxier for `family`.
pub(crate) fn iptables_proxier<K: kproxy_backend_iptables::kernel::Kernel + 'static>(settings: &Settings, family: IpFamily, host: &Host, kernel: K) -> Result<IptablesProxier<K>> {
    let options = IptablesOptions {
        localhost_node_ports: settings.localhost_node_ports(&host.node),
        tcp_be_liberal: settings.conntrack.tcp_be_liberal || host.tcp_be_liberal,
        ..IptablesOptions::default()
    };
    Ok(IptablesProxier::new(&settings.node_name, host.config(settings, family), kernel, options)?)
}

/// The IPVS proxier for `family`.
pub(crate) fn ipvs_proxier<K: IpvsKernel + 'static>(settings: &Settings, family: IpFamily, host: &Host, kernel: K) -> Result<IpvsProxier<K>> {
    Ok(IpvsProxier::new(&settings.node_name, host.config(settings, family), kernel, settings.ipvs.clone())?)
}

/// The nftables proxier for `family`.
pub(crate) fn nft_proxier<K: Kernel + 'static>(settings: &Settings, family: IpFamily, host: &Host, kernel: K) -> Result<NftProxier<K>> {
    Ok(NftProxier::new(&settings.node_name, host.config(settings, family), kernel, NftOptions::default())?)
}

/// The node a proxier runs on: its Node object and its interfaces'
/// addresses.
#[derive(Debug, Clone)]
pub(crate) struct Host {
    /// What the Node object says.
    pub node: NodeInfo,
    /// The addresses of this namespace's interfaces.
    pub local_ips: Vec<std::net::IpAddr>,
    /// `nf_conntrack_tcp_be_liberal` is on here.
    pub tcp_be_liberal: bool,
}

impl Host {
    /// `node`, on this namespace's interfaces.
    pub fn here(node: NodeInfo) -> Host {
        Host { node, local_ips: crate::interfaces::local_addresses(), tcp_be_liberal: sysctls::tcp_be_liberal(Path::new("/")) }
    }

    /// `node` as the dry run pictures it: its own addresses are its
    /// interfaces'.
    pub fn pictured(node: NodeInfo) -> Host {
        let local_ips = node.ips.clone();
        Host { node, local_ips, tcp_be_liberal: false }
    }

    fn config(&self, settings: &Settings, family: IpFamily) -> kproxy_core::ProxierConfig {
        settings.proxier_config(family, &self.node, &self.local_ips)
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_the_kernel_has_is_proxied_primary_first() {
        let root = std::env::temp_dir().join(format!("kproxy-families-{}", std::process::id()));
        std::fs::create_dir_all(root.join("proc/net")).unwrap();
        let mut v4_node = NodeInfo::named("n");
        v4_node.ips = vec!["192.168.0.2".parse().unwrap()];
        assert_eq!(families_to_proxy(&v4_node, &root), [IpFamily::V4], "no IPv6 in the kernel");
        std::fs::write(root.join("proc/net/if_inet6"), "").unwrap();
        assert_eq!(families_to_proxy(&v4_node, &root), [IpFamily::V4, IpFamily::V6], "an IPv4-only Node still gets IPv6 rules");
        let mut v6_node = NodeInfo::named("n");
        v6_node.ips = vec!["fd00::2".parse().unwrap(), "192.168.0.2".parse().unwrap()];
        assert_eq!(families_to_proxy(&v6_node, &root), [IpFamily::V6, IpFamily::V4]);
        assert_eq!(families_to_proxy(&NodeInfo::named("n"), &root), [IpFamily::V4, IpFamily::V6], "no addresses: IPv4 primary");
        let _ = std::fs::remove_dir_all(&root);
    }
}
