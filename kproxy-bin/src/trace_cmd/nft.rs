//! `kproxy trace` over kproxy's nftables table, read with `nft -j list`
//! into the backend's typed model and walked by its tracer.

use std::net::IpAddr;

use kproxy_backend_nft::{listing, model::family_keyword, text};
use kproxy_oracle::Origin;
use kproxy_core::{IpFamily, ProxierConfig};

use super::{TraceArgs, Traced};

fn nft(args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("nft").args(args).output().map_err(|e| format!("cannot run nft: {e} (kproxy trace needs the nft tool)"))?;
    if !out.status.success() {
        return Err(format!("nft {} failed: {} (kproxy trace needs root)", args.join(" "), String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or_default()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The names of kproxy's tables of `family` in this namespace (empty when
/// nft cannot be run).
pub(crate) fn tables(family: IpFamily) -> Vec<String> {
    nft(&["-j", "list", "tables", family_keyword(family)]).ok().and_then(|j| listing::kproxy_tables(&j, family).ok()).unwrap_or_default()
}

/// Reads kproxy's table of `family`: its name and `nft -j` listing.
pub(crate) fn read(family: IpFamily) -> Result<(String, String), String> {
    let fam = family_keyword(family);
    let names = listing::kproxy_tables(&nft(&["-j", "list", "tables", fam])?, family).map_err(|e| e.to_string())?;
    let name = match names.as_slice() {
        [one] => one.clone(),
        [] => {
            let upstream = nft(&["list", "table", fam, "kube-proxy"]).is_ok();
            return Err(if upstream {
                format!("table {fam} kube-proxy is upstream kube-proxy's nftables layout, which kproxy trace does not read (it reads kproxy's nftables tables and the iptables rules of either proxy)")
            } else {
                format!("no kproxy table in nftables ({family}): is kproxy running here, in nftables mode?")
            });
        }
        many => return Err(format!("{} kproxy tables ({}): kproxy is switching tables; run the trace again", many.len(), many.join(", "))),
    };
    let json = nft(&["-j", "list", "table", fam, &name])?;
    Ok((name, json))
}

/// The trace of `args` through `json` (`nft -j list table` of `table`) on a
/// node with `local` addresses.
pub fn trace(args: &TraceArgs, json: &str, table: &str, local: &[IpAddr]) -> Result<Traced, String> {
    let packet = &args.packet;
    let family = IpFamily::of(packet.dst);
    let read = listing::parse(json, table).map_err(|e| e.to_string())?;
    let mut config = ProxierConfig::new(family);
    config.node_ips = local.iter().copied().filter(|ip| family.contains(*ip)).chain((packet.origin == Origin::Node).then_some(packet.src)).collect();
    let (verdict, ways) = kproxy_backend_nft::trace::explain(&read.ruleset, &config, packet).map_err(|e| format!("cannot follow: {e}"))?;
    let line = |chain: &str, index: usize| {
        let rule = &read.ruleset.chains[chain].rules[index];
        let handle = read.handles.get(chain).and_then(|h| h.get(index)).map(|h| format!(" # handle {h}")).unwrap_or_default();
        format!("chain {chain}: {}{handle}", text::rule(rule, family))
    };
    Ok(Traced {
        verdict,
        ways: ways
            .iter()
            .map(|w| w.path.iter().map(|(c, i)| line(c, *i)).chain(w.target.map(|t| format!("=> dnat to {t}{}", if w.masquerade { ", masqueraded" } else { "" }))).collect())
            .collect(),
        masquerade_if_untouched: false,
        rules: format!("nftables table {} {table}, {family}", family_keyword(family)),
    })
}
