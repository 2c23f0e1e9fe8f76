//! `kproxy trace` over IPVS mode (kproxy's or upstream kube-proxy's: the
//! same layout): the IPVS table over generic netlink, the `KUBE-*` ipsets
//! (`ipset save`) and the iptables rules around them (`iptables-save`),
//! loaded into the IPVS backend's fake host and walked by its tracer.

use std::net::IpAddr;

use kproxy_backend_iptables::kernel::IptablesCli;
use kproxy_backend_ipvs::diff::CurrentIpvs;
use kproxy_backend_ipvs::host::FakeHost;
use kproxy_backend_ipvs::kernel::{IpvsHost, IpvsKernel};
use kproxy_oracle::Origin;
use kproxy_core::{IpFamily, ProxierConfig};

use super::{TraceArgs, Traced};

/// What IPVS mode holds in this namespace.
#[derive(Debug, Clone)]
pub struct IpvsListing {
    /// The IPVS table.
    pub table: CurrentIpvs,
    /// `ipset save` output.
    pub ipsets: String,
    /// `iptables-save` output.
    pub save: String,
    /// The iptables flavour's name.
    pub flavour: &'static str,
    /// The addresses on `kube-ipvs0` (local, so IPVS takes packets for
    /// them).
    pub bound: Vec<IpAddr>,
}

/// Whether this namespace looks like an IPVS-mode node (it has the
/// `kube-ipvs0` dummy interface both proxies bind Service addresses to).
pub(crate) fn present() -> bool {
    std::path::Path::new("/sys/class/net/kube-ipvs0").exists()
}

/// Reads the IPVS table, the ipsets and `family`'s iptables rules.
pub(crate) fn read(family: IpFamily) -> Result<IpvsListing, String> {
    let (save, flavour) = super::iptables::read(family)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    use kproxy_backend_iptables::kernel::Flavour;
    let tools = IptablesCli::new(if flavour == Flavour::Legacy.name() { Flavour::Legacy } else { Flavour::Nft }, None);
    let table = runtime
        .block_on(async { IpvsHost::new(None, tools).ipvs_table(family, None).await })
        .map_err(|e| format!("cannot read the IPVS table: {e} (kproxy trace needs root and the ip_vs module)"))?;
    let out = std::process::Command::new("ipset").arg("save").output().map_err(|e| format!("cannot run ipset: {e} (kproxy trace needs the ipset tool in IPVS mode)"))?;
    if !out.status.success() {
        return Err(format!("ipset save failed: {}", String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or_default()));
    }
    Ok(IpvsListing { table, ipsets: String::from_utf8_lossy(&out.stdout).into_owned(), save, flavour, bound: kproxy_agent::interfaces::ipvs_dummy_addresses() })
}

/// The trace of `args` through `live` on a node with `local` addresses.
pub fn trace(args: &TraceArgs, live: &IpvsListing, local: &[IpAddr]) -> Result<Traced, String> {
    let packet = &args.packet;
    let family = IpFamily::of(packet.dst);
    if !live.table.keys().any(|k| family.contains(k.addr)) {
        return Err(format!("no IPVS virtual server ({family}): is kproxy or kube-proxy running here, in IPVS mode?"));
    }
    let mut host = FakeHost::from_live(family, &live.table, &live.ipsets, &super::iptables::service_rules(&live.save)).map_err(|e| format!("cannot follow: {e}"))?;
    host.device = Some(("kube-ipvs0".to_string(), live.bound.iter().copied().collect()));
    let mut config = ProxierConfig::new(family);
    config.node_ips = local.iter().copied().filter(|ip| family.contains(*ip)).chain((packet.origin == Origin::Node).then_some(packet.src)).collect();
    let (verdict, ways) = kproxy_backend_ipvs::trace::explain(&host, family, &config, packet).map_err(|e| format!("cannot follow: {e}"))?;
    Ok(Traced { verdict, ways, masquerade_if_untouched: false, rules: format!("IPVS table, ipsets and iptables-{} rules, {family}", live.flavour) })
}
