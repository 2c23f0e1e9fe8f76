//! `kproxy trace` over iptables rules: kproxy's iptables mode, or upstream
//! kube-proxy's (the same chain layout), read with `iptables-save`.

use std::collections::BTreeSet;
use std::net::IpAddr;

use kproxy_backend_iptables::fake::FakeIptables;
use kproxy_backend_iptables::kernel::Flavour;
use kproxy_oracle::Origin;
use kproxy_core::IpFamily;

use super::{TraceArgs, Traced};

/// The Service rules of an `iptables-save` listing: the `nat` and `filter`
/// tables' built-in chains' jumps into `KUBE-*` chains and those chains.
pub fn service_rules(save: &str) -> String {
    let mut out = String::new();
    let mut keep_table = false;
    for line in save.lines() {
        if let Some(table) = line.strip_prefix('*') {
            keep_table = table == "nat" || table == "filter";
        }
        if !keep_table {
            continue;
        }
        let keep = line.starts_with('*')
            || line == "COMMIT"
            || line.starts_with(":KUBE-")
            || (line.starts_with(':') && line[1..].starts_with(|c: char| c.is_ascii_uppercase()) && !line[1..].contains('-'))
            || line.starts_with("-A KUBE-")
            || (line.starts_with("-A ") && line.contains(" -j KUBE-"));
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Reads this namespace's rules for `family` with the flavour in use:
/// the `iptables-save` text and the flavour's name.
pub(crate) fn read(family: IpFamily) -> Result<(String, &'static str), String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let (flavour, _) = runtime.block_on(Flavour::detect(None));
    let prefix = if family == IpFamily::V4 { "iptables" } else { "ip6tables" };
    let tool = format!("{prefix}-{}-save", flavour.name());
    let out = std::process::Command::new(&tool).output().map_err(|e| format!("cannot run {tool}: {e} (kproxy trace needs the iptables tools)"))?;
    if !out.status.success() {
        return Err(format!("{tool} failed: {} (kproxy trace needs root)", String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or_default()));
    }
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), flavour.name()))
}

/// The trace of `args` through `save` (an `iptables-save` listing of the
/// `flavour` tools) on a node with `local` addresses.
pub fn trace(args: &TraceArgs, save: &str, local: &[IpAddr], flavour: &str) -> Result<Traced, String> {
    let packet = &args.packet;
    let family = IpFamily::of(packet.dst);
    let rules = service_rules(save);
    if !rules.lines().any(|l| l.starts_with("-A KUBE-")) {
        return Err(format!("no Service rules in iptables-{flavour} ({family}): is kproxy or kube-proxy running here, in iptables mode?"));
    }
    let mut kernel = FakeIptables::new();
    kernel.restore(family, &rules).map_err(|e| format!("cannot follow: {e}"))?;
    let local: BTreeSet<IpAddr> = local.iter().copied().filter(|ip| family.contains(*ip)).chain((packet.origin == Origin::Node).then_some(packet.src)).collect();
    let (verdict, hops) = kproxy_backend_iptables::trace::explain(&kernel, family, local, packet).map_err(|e| format!("cannot follow: {e}"))?;
    Ok(Traced {
        verdict,
        ways: hops.iter().map(|h| h.path.clone()).collect(),
        masquerade_if_untouched: hops.iter().any(|h| h.masquerade),
        rules: format!("iptables-{flavour} rules, {family}"),
    })
}
