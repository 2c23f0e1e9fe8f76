//! `kproxy trace`: where a packet goes through this network namespace's
//! live Service rules, and why. It reads the kernel (never kproxy's
//! memory), so it works while kproxy is stopped, shows drift, and works as
//! well on a node that upstream kube-proxy programs in iptables mode (the
//! same chain layout).
//!
//! ```text
//! kproxy trace --source IP --destination IP:PORT [--protocol tcp|udp|sctp]
//!              [--arrival external|local-pod|node] [--proxy-mode iptables]
//!              [--output text|json]
//! ```
//!
//! JSON output: `{"verdict": "dnat"|"reject"|"drop"|"accept",
//! "endpoints": ["IP:PORT", ...], "masquerade": bool,
//! "affinitySeconds": N|null, "path": [rule, ...], "paths": [[rule, ...], ...]}`;
//! `accept` means the Service rules leave the packet alone, `path` is the
//! first way the packet can go and `paths` every way (one per random
//! branch). A rule the tracer cannot follow stops it with
//! `cannot follow: <rule>`, never a guess.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use kproxy_backend_iptables::fake::FakeIptables;
use kproxy_backend_iptables::kernel::Flavour;
use kproxy_core::oracle::{Origin, Packet, Verdict};
use kproxy_core::{IpFamily, Protocol};

/// What to trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceArgs {
    /// The packet.
    pub packet: Packet,
    /// JSON instead of text.
    pub json: bool,
}

/// The command's usage line.
pub const USAGE: &str = "kproxy trace --source IP --destination IP:PORT [--protocol tcp|udp|sctp] [--arrival external|local-pod|node] [--proxy-mode iptables] [--output text|json]";

/// A subcommand's arguments: `--name value` or `--name=value` for the
/// `allowed` names, and the other words in order. One line per problem.
pub fn long_flags(args: &[String], allowed: &[&str], usage: &str) -> Result<(BTreeMap<String, String>, Vec<String>), String> {
    let mut values = BTreeMap::new();
    let mut words = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--") else {
            words.push(arg.clone());
            continue;
        };
        let (name, value) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => (flag.to_string(), it.next().cloned().ok_or_else(|| format!("--{flag} needs a value"))?),
        };
        if !allowed.contains(&name.as_str()) {
            return Err(format!("unknown flag --{name}; usage: {usage}"));
        }
        values.insert(name, value);
    }
    Ok((values, words))
}

/// Parses `kproxy trace`'s arguments (after `trace`); one line per problem.
pub fn parse_args(args: &[String]) -> Result<TraceArgs, String> {
    let (values, words) = long_flags(args, &["source", "destination", "protocol", "arrival", "proxy-mode", "output"], USAGE)?;
    if let Some(word) = words.first() {
        return Err(format!("unexpected argument {word:?}; usage: {USAGE}"));
    }
    let get = |n: &str| values.get(n).cloned();
    let source: IpAddr = get("source").ok_or("--source is required")?.parse().map_err(|_| format!("--source {:?} is not an IP address", values["source"]))?;
    let destination: SocketAddr = get("destination")
        .ok_or("--destination is required")?
        .parse()
        .map_err(|_| format!("--destination {:?} is not IP:PORT (a port from 1 to 65535; [v6]:PORT for IPv6)", values["destination"]))?;
    if destination.port() == 0 {
        return Err("--destination: port 0 is not a port".into());
    }
    if source.is_ipv4() != destination.is_ipv4() {
        return Err("--source and --destination must be of the same IP family".into());
    }
    let protocol = match get("protocol").as_deref().unwrap_or("tcp") {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        other => return Err(format!("--protocol {other:?}: expected tcp, udp or sctp")),
    };
    let origin = match get("arrival").as_deref().unwrap_or("external") {
        "external" => Origin::Outside,
        "local-pod" => Origin::LocalPod,
        "node" => Origin::Node,
        other => return Err(format!("--arrival {other:?}: expected external, local-pod or node")),
    };
    match get("proxy-mode").as_deref().unwrap_or("iptables") {
        "iptables" => {}
        other => return Err(format!("--proxy-mode {other}: kproxy trace reads iptables rules only so far (kproxy's or upstream kube-proxy's iptables mode)")),
    }
    let json = match get("output").as_deref().unwrap_or("text") {
        "text" => false,
        "json" => true,
        other => return Err(format!("--output {other:?}: expected text or json")),
    };
    Ok(TraceArgs { packet: Packet { src: source, dst: destination.ip(), protocol, dport: destination.port(), origin }, json })
}

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

/// Reads this namespace's rules for `family` with the flavour in use.
pub(crate) fn live_rules(family: IpFamily) -> Result<(String, &'static str), String> {
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

/// The trace of `args` through `save` (an `iptables-save` listing) on a
/// node with `local` addresses: the text or JSON to print.
pub fn trace_listing(args: &TraceArgs, save: &str, local: &[IpAddr], flavour: &str) -> Result<String, String> {
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
    let (kind, endpoints, masquerade, affinity) = match &verdict {
        Verdict::Forward { targets, affinity_seconds } => {
            ("dnat", targets.iter().map(|t| t.endpoint.to_string()).collect::<Vec<_>>(), targets.iter().any(|t| t.masquerade), *affinity_seconds)
        }
        Verdict::Reject => ("reject", Vec::new(), false, None),
        Verdict::Drop => ("drop", Vec::new(), false, None),
        Verdict::NotService => ("accept", Vec::new(), hops.iter().any(|h| h.masquerade), None),
    };
    let paths: Vec<Vec<String>> = hops.iter().map(|h| h.path.clone()).collect();
    if args.json {
        let value = serde_json::json!({
            "verdict": kind, "endpoints": endpoints, "masquerade": masquerade, "affinitySeconds": affinity,
            "path": paths.first().cloned().unwrap_or_default(), "paths": paths,
        });
        return Ok(format!("{value}\n"));
    }
    let protocol = format!("{:?}", packet.protocol).to_lowercase();
    let arrival = match packet.origin {
        Origin::Outside => "from outside the node",
        Origin::LocalPod => "from a pod on this node",
        Origin::Node => "from the node itself",
    };
    let mut out = format!("{protocol} {} -> {}, {arrival} (iptables-{flavour} rules, {family})\n", packet.src, SocketAddr::new(packet.dst, packet.dport));
    for (i, hop) in hops.iter().enumerate() {
        if hops.len() > 1 {
            out.push_str(&format!("way {} of {}:\n", i + 1, hops.len()));
        }
        for rule in &hop.path {
            out.push_str(&format!("  {rule}\n"));
        }
    }
    let outcome = match kind {
        "dnat" => format!("DNAT to {} (one chosen at random){}{}", endpoints.join(", "), if masquerade { ", masqueraded" } else { ", not masqueraded" }, affinity.map(|s| format!(", ClientIP affinity {s}s")).unwrap_or_default()),
        "reject" => "REJECT: refused at once (the Service has no endpoint for this traffic)".into(),
        "drop" => "DROP".into(),
        _ => "not a Service address: the Service rules leave it alone".into(),
    };
    out.push_str(&format!("verdict: {outcome}\n"));
    Ok(out)
}

/// Runs `kproxy trace ARGS`: prints the trace, or one line and exit 1.
pub fn main(args: &[String]) -> std::process::ExitCode {
    let result = parse_args(args).and_then(|a| {
        let family = IpFamily::of(a.packet.dst);
        let (save, flavour) = live_rules(family)?;
        trace_listing(&a, &save, &crate::interfaces::local_addresses(), flavour)
    });
    match result {
        Ok(text) => {
            print!("{text}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kproxy trace: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<TraceArgs, String> {
        parse_args(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn bad_input_is_one_line() {
        for (list, needle) in [
            (&["--destination", "10.96.0.10:80"][..], "--source is required"),
            (&["--source", "10.0.0.300", "--destination", "10.96.0.10:80"], "not an IP address"),
            (&["--source", "10.0.0.1", "--destination", "10.96.0.10:70000"], "not IP:PORT"),
            (&["--source", "10.0.0.1", "--destination", "10.96.0.10"], "not IP:PORT"),
            (&["--source", "fd00::1", "--destination", "10.96.0.10:80"], "same IP family"),
            (&["--source", "10.0.0.1", "--destination", "10.96.0.10:80", "--protocol", "icmp"], "--protocol"),
            (&["--source", "10.0.0.1", "--destination", "10.96.0.10:80", "--proxy-mode", "ipvs"], "iptables rules only"),
            (&["--bogus", "1"], "unknown flag --bogus"),
        ] {
            let err = args(list).unwrap_err();
            assert!(err.contains(needle) && !err.contains('\n'), "{list:?}: {err}");
        }
        assert_eq!(args(&["--source=10.0.0.1", "--destination=10.96.0.10:53", "--protocol=udp", "--output=json"]).unwrap().packet.protocol, Protocol::Udp);
    }

    /// `iptables-save` of a node kproxy programmed in iptables mode with
    /// `examples/cluster` (node-a, 192.168.0.2).
    const SAVED: &str = include_str!("../testdata/iptables-save-example-cluster.txt");

    #[test]
    fn a_saved_listing_is_traced_with_its_path() {
        let local: Vec<IpAddr> = vec!["192.168.0.2".parse().unwrap()];
        let run = |list: &[&str]| trace_listing(&args(list).unwrap(), SAVED, &local, "nft").unwrap();
        let json: serde_json::Value = serde_json::from_str(&run(&["--source", "192.168.0.100", "--destination", "10.96.0.10:80", "--output", "json"])).unwrap();
        assert_eq!(json["verdict"], "dnat", "{json}");
        assert_eq!(json["endpoints"], serde_json::json!(["10.244.1.10:8080", "10.244.1.11:8080"]), "{json}");
        assert_eq!(json["paths"].as_array().unwrap().len(), 2, "one way per endpoint: {json}");
        assert!(json["path"].as_array().unwrap().iter().any(|r| r.as_str().unwrap().contains("-j DNAT --to-destination")), "{json}");
        let text = run(&["--source", "192.168.0.100", "--destination", "10.96.0.40:80"]);
        assert!(text.contains("verdict: REJECT"), "the Service without endpoints: {text}");
        let text = run(&["--source", "192.168.0.100", "--destination", "10.1.2.3:80"]);
        assert!(text.ends_with("verdict: not a Service address: the Service rules leave it alone\n"), "{text}");
    }

    #[test]
    fn no_service_rules_is_one_line() {
        let a = args(&["--source", "10.0.0.1", "--destination", "10.96.0.10:80"]).unwrap();
        let err = trace_listing(&a, "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n", &[], "nft").unwrap_err();
        assert!(err.starts_with("no Service rules"), "{err}");
    }
}
