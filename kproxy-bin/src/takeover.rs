//! Taking a node over from upstream kube-proxy, or from kproxy in another
//! mode, make before break: once kproxy's own first sync is in place in
//! every family, what the other proxies left behind that could still steer
//! traffic is removed. Only what is recognisably kube-proxy's (or
//! kproxy's) goes: upstream's nftables table `kube-proxy`, kproxy's own
//! nftables tables, the `KUBE-*` chains and jumps of an iptables flavour
//! kproxy does not use, and IPVS mode's virtual servers, sets and chains
//! where IPVS mode's dummy interface `kube-ipvs0` shows it ran.
//!
//! IPVS mode's leftovers wait for its established connections to end
//! (at most [`IPVS_DRAIN_LIMIT`]): IPVS forwards a connection it accepted
//! itself, with its own address translation, which no netfilter rule can
//! take over. Until they are removed, the ClusterIPs stay on `kube-ipvs0`
//! so those connections keep reaching IPVS; new connections meet
//! kproxy's own rules first (at prerouting), as they do from the start.

use std::time::Duration;

use kproxy_backend_iptables::kernel::{Flavour, IptablesCli, Kernel};
use kproxy_backend_iptables::Table;
use kproxy_backend_ipvs::kernel::IpvsHost;
use kproxy_backend_nft::kernel::NftCli;
use kproxy_core::IpFamily;

use kproxy_agent::backend::{iptables_proxier, ipvs_proxier, Host};
use crate::settings::{Mode, Settings};

/// Upstream kube-proxy's nftables table (in the `ip` and `ip6` families).
pub const UPSTREAM_NFT_TABLE: &str = "kube-proxy";

/// kproxy's own nftables tables, in every mode that has them: nftables
/// mode's two and userspace mode's steering table.
pub const KPROXY_NFT_TABLES: [&str; 3] = [kproxy_backend_nft::names::TABLES[0], kproxy_backend_nft::names::TABLES[1], kproxy_userspace::TABLE];

/// Removes the other proxies' leftovers for a node running `settings.proxy.mode`
/// (with iptables `flavour` in iptables and IPVS modes); returns one line
/// per kind of thing removed. Failures are logged: the node keeps working
/// with kproxy's rules in front, as before.
pub async fn remove_leftovers(settings: &Settings, host: &Host, flavour: Option<Flavour>) -> Vec<String> {
    let mut done = Vec::new();
    let cli = NftCli::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        let keyword = if family == IpFamily::V4 { "ip" } else { "ip6" };
        let mut tables = vec![UPSTREAM_NFT_TABLE.to_string()];
        if settings.proxy.mode != Mode::Nftables {
            tables.extend(kproxy_backend_nft::names::TABLES.iter().map(|t| t.to_string()));
        }
        if settings.proxy.mode != Mode::Userspace {
            tables.push(kproxy_userspace::TABLE.to_string());
        }
        for table in tables {
            match cli.delete_table_if_present(family, &table).await {
                Ok(true) => done.push(format!("removed nftables table {keyword} {table}")),
                Ok(false) => {}
                Err(e) => tracing::warn!(table = %table, error = %e, "cannot remove a leftover nftables table"),
            }
        }
    }
    // IPVS mode's leftovers, where it ran, in every other mode.
    let ipvs_ran = settings.proxy.mode != Mode::Ipvs
        && std::path::Path::new("/sys/class/net").join(&settings.proxy.ipvs.device).exists()
        && kproxy_backend_ipvs::netlink::IpvsSocket::open().is_ok();
    let ipvs_flavour = if ipvs_ran { Some(Flavour::detect(None).await.0) } else { None };
    // In iptables mode, in the flavour IPVS mode used, the chains both
    // modes name alike are iptables mode's own now (its first sync
    // rewrote them): they stay.
    let iptables_in_ipvs_flavour = settings.proxy.mode == Mode::Iptables && ipvs_flavour.is_some() && ipvs_flavour == flavour;
    let keep_iptables_mode_s: &(dyn Fn(&str) -> bool + Sync) = if iptables_in_ipvs_flavour { &kproxy_backend_iptables::restore::is_ours } else { &|_| false };
    // Every iptables flavour kproxy does not program (both, in nftables
    // mode). IPVS mode's flavour waits for IPVS mode's own cleanup: its
    // chains refer to chains of the same names, so removing them first
    // fails ("busy").
    for other in [Flavour::Nft, Flavour::Legacy].into_iter().filter(|f| Some(*f) != flavour && Some(*f) != ipvs_flavour) {
        remove_iptables_leftovers(settings, host, other, &|_| false, &mut done).await;
    }
    // In IPVS mode, iptables mode's own chains (`KUBE-SVC-*`,
    // `KUBE-NODEPORTS`, `KUBE-EXTERNAL-SERVICES`, ...) in the flavour IPVS
    // mode now programs; the chains both name alike are IPVS mode's now.
    if let (Mode::Ipvs, Some(own)) = (settings.proxy.mode, flavour) {
        let ipvs_chains = kproxy_backend_ipvs::rules::chain_names();
        remove_iptables_leftovers(settings, host, own, &|c| ipvs_chains.contains(c), &mut done).await;
    }
    if let Some(ipvs_flavour) = ipvs_flavour {
        drain_ipvs(&settings.proxy.ipvs.exclude_cidrs, IPVS_DRAIN_LIMIT, DRAIN_POLL).await;
        match ipvs_proxier(&settings.proxy, IpFamily::V4, host, IpvsHost::new(None, IptablesCli::new(ipvs_flavour, None))) {
            Ok(mut p) => match p.dataplane_mut().cleanup_keeping(keep_iptables_mode_s).await {
                Ok(()) => done.push(format!("removed IPVS virtual servers, {}, ipsets and chains", settings.proxy.ipvs.device)),
                Err(e) => tracing::warn!(error = %e, "cannot remove IPVS mode's leftovers"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot remove IPVS mode's leftovers"),
        }
        // Whatever iptables mode left in the same flavour, if anything
        // (in iptables mode, that is its own).
        if !iptables_in_ipvs_flavour {
            remove_iptables_leftovers(settings, host, ipvs_flavour, &|_| false, &mut done).await;
        }
    }
    done
}

/// Removes iptables mode's `KUBE-*` chains and jumps from `flavour`, if it
/// has any, except the chains `keep` names; says so in `done`, or logs
/// why not.
async fn remove_iptables_leftovers(settings: &Settings, host: &Host, flavour: Flavour, keep: &(dyn Fn(&str) -> bool + Sync), done: &mut Vec<String>) {
    let mut cli = IptablesCli::new(flavour, None);
    let removable = |c: &str| kproxy_backend_iptables::restore::is_ours(c) && !keep(c);
    if !cli.available().await || !has_chains(&mut cli, &removable).await {
        return;
    }
    match iptables_proxier(&settings.proxy, IpFamily::V4, host, IptablesCli::new(flavour, None)) {
        Ok(mut p) => match p.dataplane_mut().cleanup_keeping(keep).await {
            Ok(()) => done.push(format!("removed iptables-{} KUBE-* chains and their jumps", flavour.name())),
            Err(e) => tracing::warn!(flavour = flavour.name(), error = %e, "cannot remove leftover iptables chains"),
        },
        Err(e) => tracing::warn!(error = %e, "cannot remove leftover iptables chains"),
    }
}

/// The longest kproxy waits for connections through IPVS mode's virtual
/// servers to end before it removes them anyway.
pub const IPVS_DRAIN_LIMIT: Duration = Duration::from_secs(300);

/// How often the drain looks at IPVS's connection table.
const DRAIN_POLL: Duration = Duration::from_secs(1);

/// Waits until no virtual server (outside `exclude`) has an established
/// connection in IPVS's connection table, or `limit` has passed; logs
/// what it waits for whenever that changes.
async fn drain_ipvs(exclude: &[ipnet::IpNet], limit: Duration, poll: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last: Option<Vec<String>> = None;
    loop {
        let busy = match established_ipvs_connections(exclude) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read IPVS's connections; removing IPVS mode's leftovers now");
                return;
            }
        };
        if busy.is_empty() {
            if last.is_some() {
                tracing::info!("taking the node over: IPVS mode's last established connection ended");
            }
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(connections = busy.len(), "IPVS mode's connections did not end within {}s; removing its leftovers, which breaks them", limit.as_secs());
            return;
        }
        if last.as_ref() != Some(&busy) {
            tracing::info!(
                connections = busy.len(),
                waiting_for = %busy.join(", "),
                "taking the node over: IPVS mode's leftovers stay until its established connections end (at most {}s)",
                limit.as_secs()
            );
            last = Some(busy);
        }
        tokio::time::sleep(poll).await;
    }
}

/// The established connections through IPVS's virtual servers (those
/// outside `exclude`), from IPVS's connection table, as `client ->
/// virtual server -> real server`.
fn established_ipvs_connections(exclude: &[ipnet::IpNet]) -> std::io::Result<Vec<String>> {
    let table = kproxy_backend_ipvs::conntable::read()?;
    Ok(table
        .iter()
        .filter(|c| c.is_established() && !exclude.iter().any(|n| n.contains(&c.virtual_server.ip())))
        .map(|c| format!("{} {} -> {} -> {}", c.protocol, c.client, c.virtual_server, c.destination))
        .collect())
}

/// Whether `cli`'s flavour holds any chain `wanted` names (nat or filter,
/// either family): only then is there something to remove (and to
/// report).
async fn has_chains(cli: &mut IptablesCli, wanted: &(dyn Fn(&str) -> bool + Sync)) -> bool {
    for family in [IpFamily::V4, IpFamily::V6] {
        for table in [Table::Nat, Table::Filter] {
            if cli.chain_names(family, table).await.is_ok_and(|names| names.iter().any(|n| wanted(n))) {
                return true;
            }
        }
    }
    false
}
