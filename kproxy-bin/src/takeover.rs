//! Taking a node over from upstream kube-proxy, or from kproxy in another
//! mode, make before break: once kproxy's own first sync is in place in
//! every family, what the other proxies left behind that could still steer
//! traffic is removed. Only what is recognisably kube-proxy's (or
//! kproxy's) goes: upstream's nftables table `kube-proxy`, kproxy's own
//! nftables tables, the `KUBE-*` chains and jumps of an iptables flavour
//! kproxy does not use, and IPVS mode's virtual servers, sets and chains
//! where IPVS mode's dummy interface `kube-ipvs0` shows it ran.

use kproxy_backend_iptables::kernel::{Flavour, IptablesCli, Kernel};
use kproxy_backend_iptables::Table;
use kproxy_backend_ipvs::kernel::IpvsHost;
use kproxy_backend_nft::kernel::NftCli;
use kproxy_core::{IpFamily, Proxier};

use crate::backends::{iptables_proxier, ipvs_proxier, Host};
use crate::settings::{Mode, Settings};

/// Upstream kube-proxy's nftables table (in the `ip` and `ip6` families).
pub const UPSTREAM_NFT_TABLE: &str = "kube-proxy";

/// Removes the other proxies' leftovers for a node running `settings.mode`
/// (with iptables `flavour` in iptables and IPVS modes); returns one line
/// per kind of thing removed. Failures are logged: the node keeps working
/// with kproxy's rules in front, as before.
pub async fn remove_leftovers(settings: &Settings, host: &Host, flavour: Option<Flavour>) -> Vec<String> {
    let mut done = Vec::new();
    let cli = NftCli::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        let keyword = if family == IpFamily::V4 { "ip" } else { "ip6" };
        let mut tables = vec![UPSTREAM_NFT_TABLE.to_string()];
        if settings.mode != Mode::Nftables {
            tables.extend(kproxy_backend_nft::names::TABLES.iter().map(|t| t.to_string()));
        }
        for table in tables {
            match cli.delete_table_if_present(family, &table).await {
                Ok(true) => done.push(format!("removed nftables table {keyword} {table}")),
                Ok(false) => {}
                Err(e) => tracing::warn!(table = %table, error = %e, "cannot remove a leftover nftables table"),
            }
        }
    }
    // Every iptables flavour kproxy does not program (both, in nftables
    // mode).
    for other in [Flavour::Nft, Flavour::Legacy].into_iter().filter(|f| Some(*f) != flavour) {
        let mut cli = IptablesCli::new(other, None);
        if !cli.available().await || !has_kube_chains(&mut cli).await {
            continue;
        }
        match iptables_proxier(settings, IpFamily::V4, host, IptablesCli::new(other, None)) {
            Ok(mut p) => match p.cleanup().await {
                Ok(()) => done.push(format!("removed iptables-{} KUBE-* chains and their jumps", other.name())),
                Err(e) => tracing::warn!(flavour = other.name(), error = %e, "cannot remove leftover iptables chains"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot remove leftover iptables chains"),
        }
    }
    // IPVS mode's leftovers, where it ran (its iptables chains live in the
    // flavour kproxy now programs in iptables mode, so only from
    // nftables mode).
    let ipvs_ran = std::path::Path::new("/sys/class/net").join(&settings.ipvs.device).exists();
    if settings.mode == Mode::Nftables && ipvs_ran && kproxy_backend_ipvs::netlink::IpvsSocket::open().is_ok() {
        let (flavour, _) = Flavour::detect(None).await;
        match ipvs_proxier(settings, IpFamily::V4, host, IpvsHost::new(None, IptablesCli::new(flavour, None))) {
            Ok(mut p) => match p.cleanup().await {
                Ok(()) => done.push(format!("removed IPVS virtual servers, {}, ipsets and chains", settings.ipvs.device)),
                Err(e) => tracing::warn!(error = %e, "cannot remove IPVS mode's leftovers"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot remove IPVS mode's leftovers"),
        }
    }
    done
}

/// Whether `cli`'s flavour holds any `KUBE-*` chain (nat or filter, either
/// family): only then is there something to remove (and to report).
async fn has_kube_chains(cli: &mut IptablesCli) -> bool {
    for family in [IpFamily::V4, IpFamily::V6] {
        for table in [Table::Nat, Table::Filter] {
            if cli.chain_names(family, table).await.is_ok_and(|names| names.iter().any(|n| n.starts_with("KUBE-"))) {
                return true;
            }
        }
    }
    false
}
