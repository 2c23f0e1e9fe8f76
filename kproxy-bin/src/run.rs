//! What the binary does once flags and configuration are read.

use std::path::Path;

use anyhow::{bail, Context, Result};
use kproxy_backend_nft::fake::FakeKernel;
use kproxy_backend_nft::kernel::NftCli;
use kproxy_backend_iptables::fake::FakeIptables;
use kproxy_backend_iptables::kernel::{Flavour, IptablesCli};
use kproxy_backend_ipvs::host::FakeHost;
use kproxy_backend_ipvs::kernel::IpvsHost;
use kproxy_core::runner::Update;
use kproxy_core::{convert, IpFamily, NodeInfo, Proxier, SyncRequest};
use tokio::signal::unix::{signal, Signal, SignalKind};

use kproxy_agent::backend::{iptables_proxier, ipvs_proxier, nft_proxier, Host};
use crate::config::Effective;
use crate::flags::Flags;
use kproxy_agent::manifests_source::{self as standalone, Directory, Manifests};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use std::sync::Arc;
use crate::settings::{self, Mode, Settings};
use crate::{sysctls, watch};

/// Runs kproxy as the flags and the effective configuration say.
pub async fn run(flags: Flags, effective: Effective) -> Result<()> {
    let Effective { config, path, .. } = effective;
    if let Some(out) = flags.text("write-config-to") {
        // Keys sorted, as upstream writes them.
        let tree = serde_json::to_value(&config).context("cannot render the configuration")?;
        let text = serde_saphyr::to_string(&tree).context("cannot render the configuration")?;
        std::fs::write(&out, text).with_context(|| format!("{out}: cannot write the configuration"))?;
        tracing::info!(file = %out, "Wrote configuration");
        return Ok(());
    }
    let settings = settings::resolve(&config, &path)?;
    if flags.on("cleanup") {
        return cleanup(&settings).await;
    }
    if flags.on("hand-back") {
        return hand_back().await;
    }
    // As upstream's /configz: the configuration in force, under its group.
    let configz = serde_json::json!({ "kubeproxy.config.k8s.io": config }).to_string();
    let kubeconfig = config.client_connection.as_ref().and_then(|c| c.kubeconfig.clone()).filter(|k| !k.is_empty());
    let config_file = flags.text("config").map(|p| {
        let path = std::path::PathBuf::from(p);
        let start = crate::process::snapshot(&path);
        (path, start)
    });
    let run = Run { settings: &settings, flags: &flags, configz, kubeconfig, config_file };
    match flags.text("manifests") {
        Some(dir) => standalone(&run, Path::new(&dir)).await,
        None => cluster(&run).await,
    }
}

/// What a running kproxy needs besides its settings.
struct Run<'a> {
    settings: &'a Settings,
    flags: &'a Flags,
    configz: String,
    kubeconfig: Option<String>,
    /// `--config` and its content when read: a change to it makes kproxy
    /// exit, as upstream.
    config_file: Option<(std::path::PathBuf, Option<Vec<u8>>)>,
}

/// `--cleanup`: removes what any mode of kproxy or upstream kube-proxy
/// installed, as `kube-proxy --cleanup` does, and says what, one line per
/// kind: the nftables tables, then the iptables chains of each flavour
/// present, then IPVS mode's virtual servers, sets, chains and dummy
/// interface (when the kernel has IPVS).
async fn cleanup(settings: &Settings) -> Result<()> {
    let node = Host::pictured(NodeInfo::named(&settings.proxy.node_name));
    let cli = NftCli::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        for table in crate::takeover::KPROXY_NFT_TABLES.iter().chain(&[crate::takeover::UPSTREAM_NFT_TABLE]) {
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
        let mut p = iptables_proxier(&settings.proxy, IpFamily::V4, &node, tools)?;
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
        ipvs_proxier(&settings.proxy, IpFamily::V4, &node, IpvsHost::new(None, IptablesCli::new(flavour, None)))?.cleanup().await?;
        say(&format!("removed IPVS virtual servers, {}, the KUBE-* ipsets and IPVS mode's chains", settings.proxy.ipvs.device));
    }
    Ok(())
}

/// `--hand-back`: removes kproxy's own nftables tables, the only objects
/// of kproxy's that upstream kube-proxy cannot see, and says which.
async fn hand_back() -> Result<()> {
    let cli = NftCli::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        for table in crate::takeover::KPROXY_NFT_TABLES {
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
    // Userspace mode steers with nftables too.
    if !matches!(mode, Mode::Nftables | Mode::Userspace) {
        return Ok(());
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    kproxy_backend_nft::kernel::check_support(&NftCli::new(), &release).await.map_err(anyhow::Error::msg)
}

/// Sets the conntrack sysctls (and `route_localnet` for localhost
/// NodePorts), logging what changed.
fn set_sysctls(settings: &Settings, node: &NodeInfo) -> Result<()> {
    let mut applied = sysctls::apply(Path::new("/"), &settings.conntrack).map_err(anyhow::Error::msg)?;
    if settings.proxy.localhost_node_ports(node) {
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
async fn standalone(run: &Run<'_>, dir: &Path) -> Result<()> {
    let settings = run.settings;
    if run.flags.on("dry-run") {
        let (state, problems) = standalone::read_all(dir).map_err(anyhow::Error::msg)?;
        for p in &problems {
            tracing::warn!("manifest problem: {p}");
        }
        let node = state.nodes.get(&settings.proxy.node_name).map(|n| convert::node_info(n)).unwrap_or_else(|| NodeInfo::named(&settings.proxy.node_name));
        let node = with_primary_ip(node, settings.primary_ip);
        let families = families_of(&node);
        let node = Host::pictured(node);
        for &family in &families {
            let text = match settings.proxy.mode {
                Mode::Ipvs => {
                    let mut p = ipvs_proxier(&settings.proxy, family, &node, FakeHost::new())?;
                    first_sync(&mut p, &state).await?;
                    p.kernel().dump(family)
                }
                Mode::Iptables => {
                    let mut p = iptables_proxier(&settings.proxy, family, &node, FakeIptables::new())?;
                    first_sync(&mut p, &state).await?;
                    kproxy_backend_iptables::Table::ALL.iter().map(|t| p.kernel().save(family, *t)).collect::<Vec<_>>().join("")
                }
                Mode::Userspace => {
                    let config = node.config(&settings.proxy, family);
                    kproxy_userspace::preview(&state_of(&state, family, &settings.proxy.node_name), &config)
                }
                _ => {
                    let mut p = nft_proxier(&settings.proxy, family, &node, FakeKernel::new())?;
                    first_sync(&mut p, &state).await?;
                    p.kernel().dump()
                }
            };
            say(&format!("# {family}\n{text}"));
        }
        return Ok(());
    }
    // Only what is needed to start: the directory keeps hashes of the
    // Services and slices, and hands them over file by file once the
    // proxiers run.
    let mut directory = Directory::default();
    let problems = directory.load(dir).map_err(anyhow::Error::msg)?;
    for p in &problems {
        tracing::warn!("manifest problem: {p}");
    }
    let node = directory.node(&settings.proxy.node_name).map(|n| convert::node_info(&n)).unwrap_or_else(|| NodeInfo::named(&settings.proxy.node_name));
    let node = with_primary_ip(node, settings.primary_ip);
    check_kernel_support(settings.proxy.mode).await?;
    set_sysctls(settings, &node)?;
    if run.flags.on("init-only") {
        tracing::info!("System initialized and --init-only specified");
        return Ok(());
    }
    crate::process::apply_oom_score_adj(settings.oom_score_adj);
    let families = families_to_proxy(&node, Path::new("/"));
    let proxy = Proxy::start(settings, &Host::here(node).counting(settings.proxy.mode), &families, run.configz.clone(), Arc::new(Metrics::new(settings.proxy.mode))).await?;
    let follow = standalone::follow(&proxy, &settings.proxy.node_name, dir, directory);
    until_stopped(follow, restart_needed(&proxy, run.config_file.clone())).await
}

/// Cluster mode: the cluster state comes from the API server.
async fn cluster(run: &Run<'_>) -> Result<()> {
    let settings = run.settings;
    if run.flags.on("dry-run") {
        bail!("--dry-run needs --manifests DIR");
    }
    check_kernel_support(settings.proxy.mode).await?;
    let limits = crate::api_client::Limits { qps: settings.api_qps, burst: settings.api_burst };
    let metrics = Arc::new(Metrics::new(settings.proxy.mode));
    let client = watch::client(run.kubeconfig.as_deref(), run.flags.text("master").as_deref(), limits, Arc::clone(&metrics)).await?;
    // Like upstream, wait a while for the Node (its addresses decide the
    // families and the primary NodePort addresses).
    let fetched = watch::fetch_node(&client, &settings.proxy.node_name, 30).await;
    // As upstream, a node never seen is not eligible (`/healthz` fails)
    // until its Node object appears.
    let found = fetched.is_some();
    let node = match fetched {
        Some(n) => convert::node_info(&n),
        None => {
            tracing::warn!(node = %settings.proxy.node_name, "no Node object; proxying IPv4 with no node addresses");
            NodeInfo::named(&settings.proxy.node_name)
        }
    };
    let node = with_primary_ip(node, settings.primary_ip);
    let families = families_to_proxy(&node, Path::new("/"));
    set_sysctls(settings, &node)?;
    if run.flags.on("init-only") {
        tracing::info!("System initialized and --init-only specified");
        return Ok(());
    }
    crate::process::apply_oom_score_adj(settings.oom_score_adj);
    let proxy = Proxy::start(settings, &Host::here(node).counting(settings.proxy.mode), &families, run.configz.clone(), metrics).await?;
    if !found {
        proxy.set_node_eligible(false);
    }
    tokio::spawn(crate::events::record_start(client.clone(), settings.proxy.node_name.clone()));
    let follow = watch::follow(&proxy, client, &settings.proxy.node_name);
    until_stopped(follow, restart_needed(&proxy, run.config_file.clone())).await
}

/// `bindAddress`, when it names an address, is the node's primary IP, as
/// upstream: it goes first, in place of the Node's address of its family.
fn with_primary_ip(mut node: NodeInfo, primary: Option<std::net::IpAddr>) -> NodeInfo {
    if let Some(ip) = primary {
        node.ips.retain(|other| other.is_ipv4() != ip.is_ipv4());
        node.ips.insert(0, ip);
    }
    node
}

/// Why kproxy must restart: the Node changed in a way the configuration
/// depends on, or the configuration file changed (as upstream, which exits
/// so that its DaemonSet restarts it with the new file).
async fn restart_needed(proxy: &Proxy, config_file: Option<(std::path::PathBuf, Option<Vec<u8>>)>) -> String {
    match config_file {
        Some((path, start)) => tokio::select! {
            why = proxy.restart_needed() => why,
            why = crate::process::file_changed(path, start) => why,
        },
        None => proxy.restart_needed().await,
    }
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

/// The proxy state `state` gives `family` on node `node_name` (userspace
/// mode's dry run, which opens no listener).
fn state_of(state: &Manifests, family: IpFamily, node_name: &str) -> kproxy_core::ProxyState {
    let mut s = kproxy_core::ProxyState::new(family, node_name);
    for update in standalone::diff(&Manifests::default(), state) {
        match update {
            Update::Service { previous, current } => s.on_service(previous.as_deref(), current.as_deref()),
            Update::EndpointSlice { slice, removed } => s.on_endpoint_slice(&slice, removed),
            Update::Node(n) => s.on_node(&n),
            Update::ServiceCidrs(cidrs) => s.on_service_cidrs(&cidrs),
            Update::ServicesSynced | Update::EndpointSlicesSynced => false,
        };
    }
    s.apply();
    s
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

/// Waits for SIGTERM (how Kubernetes stops a pod) or SIGINT; names it.
async fn stop_signal(terminate: &mut Signal) -> &'static str {
    tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_address_is_the_primary_node_ip() {
        let mut node = NodeInfo::named("n");
        node.ips = vec!["192.168.0.2".parse().unwrap(), "fd00::2".parse().unwrap()];
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(with_primary_ip(node.clone(), None).ips, node.ips, "unset (0.0.0.0): the Node's");
        assert_eq!(with_primary_ip(node.clone(), Some(ip("fd00::9"))).ips, [ip("fd00::9"), ip("192.168.0.2")], "IPv6 primary, in place of the Node's IPv6");
        assert_eq!(with_primary_ip(node, Some(ip("10.0.0.7"))).ips, [ip("10.0.0.7"), ip("fd00::2")]);
    }

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
