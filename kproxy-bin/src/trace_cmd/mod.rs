//! `kproxy trace`: where a packet goes through this network namespace's
//! live Service rules, and why. It reads the kernel (never kproxy's
//! memory), so it works while kproxy is stopped, shows drift, and works as
//! well on a node that upstream kube-proxy programs in iptables mode (the
//! same chain layout), or in IPVS mode. In nftables mode it reads kproxy's
//! table with `nft -j list table` ([`nft`]); in iptables mode,
//! `iptables-save` ([`iptables`]); in IPVS mode, the IPVS table, the
//! ipsets and the iptables rules ([`ipvs`]). Without `--proxy-mode`, a
//! kproxy nftables table of the destination's family decides for
//! nftables, the `kube-ipvs0` interface for IPVS, else iptables.
//!
//! ```text
//! kproxy trace --source IP --destination IP:PORT [--protocol tcp|udp|sctp] [--source-port N]
//!              [--arrival external|local-pod|node] [--proxy-mode nftables|iptables|ipvs]
//!              [--output text|json]
//! ```
//!
//! JSON output: `{"verdict": "dnat"|"reject"|"drop"|"accept",
//! "endpoints": ["IP:PORT", ...], "masquerade": bool,
//! "affinitySeconds": N|null, "path": [rule, ...], "paths": [[rule, ...], ...],
//! "rules": "what was read"}`;
//! `accept` means the Service rules leave the packet alone, `path` is the
//! first way the packet can go and `paths` every way (one per random
//! branch). In nftables mode a rule line is `chain NAME: RULE # handle N`
//! and a way that DNATs ends with `=> dnat to IP:PORT`. A rule the tracer cannot follow stops it with
//! `cannot follow: <rule>`, never a guess.

pub mod iptables;
pub mod ipvs;
pub mod nft;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use kproxy_oracle::{Origin, Packet, Verdict};
use kproxy_core::{IpFamily, Protocol};

/// Which rules to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RulesMode {
    /// kproxy's nftables table.
    Nftables,
    /// The `KUBE-*` iptables chains (kproxy's or upstream's).
    Iptables,
    /// The IPVS table with its ipsets and iptables rules (kproxy's or
    /// upstream's).
    Ipvs,
}

/// What to trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceArgs {
    /// The packet.
    pub packet: Packet,
    /// JSON instead of text.
    pub json: bool,
    /// The rules to read; `None` finds out.
    pub mode: Option<RulesMode>,
}

/// What a trace found, whichever rules it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traced {
    /// The outcome, in the oracle's words.
    pub verdict: Verdict,
    /// Each way the packet can go: the rules it met, one line each.
    pub ways: Vec<Vec<String>>,
    /// Whether a packet the Service rules leave alone is still masqueraded.
    pub masquerade_if_untouched: bool,
    /// Which rules were read (`iptables-nft rules, IPv4`, ...).
    pub rules: String,
}

/// A family's live Service rules, read once.
#[derive(Debug, Clone)]
pub enum LiveRules {
    /// `iptables-save` text and the flavour's name.
    Iptables(String, &'static str),
    /// kproxy's table: its name and `nft -j` listing.
    Nftables(String, String),
    /// IPVS mode's table, sets and rules.
    Ipvs(Box<ipvs::IpvsListing>),
}

/// Reads this namespace's Service rules for `family`, as `mode` says or,
/// without it, from kproxy's nftables table if there is one, else IPVS
/// mode's if the `kube-ipvs0` interface is there, else iptables.
pub fn read_live(family: IpFamily, mode: Option<RulesMode>) -> Result<LiveRules, String> {
    let mode = mode.unwrap_or_else(|| {
        if !nft::tables(family).is_empty() {
            RulesMode::Nftables
        } else if ipvs::present() {
            RulesMode::Ipvs
        } else {
            RulesMode::Iptables
        }
    });
    Ok(match mode {
        RulesMode::Ipvs => LiveRules::Ipvs(Box::new(ipvs::read(family)?)),
        RulesMode::Nftables => {
            let (table, json) = nft::read(family)?;
            LiveRules::Nftables(table, json)
        }
        RulesMode::Iptables => {
            let (save, flavour) = iptables::read(family)?;
            LiveRules::Iptables(save, flavour)
        }
    })
}

/// The trace of `args` through `rules` on a node with `local` addresses:
/// the text or JSON to print.
pub fn trace_rules(args: &TraceArgs, rules: &LiveRules, local: &[IpAddr]) -> Result<String, String> {
    let traced = match rules {
        LiveRules::Iptables(save, flavour) => iptables::trace(args, save, local, flavour)?,
        LiveRules::Nftables(table, json) => nft::trace(args, json, table, local)?,
        LiveRules::Ipvs(live) => ipvs::trace(args, live, local)?,
    };
    Ok(render(args, &traced))
}

/// The command's usage line.
pub const USAGE: &str = "kproxy trace --source IP --destination IP:PORT [--protocol tcp|udp|sctp] [--source-port N] [--arrival external|local-pod|node] [--proxy-mode nftables|iptables|ipvs] [--output text|json]";

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
    let (values, words) = long_flags(args, &["source", "source-port", "destination", "protocol", "arrival", "proxy-mode", "output"], USAGE)?;
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
    // Accepted for the command line issue 18 names; no Service rule of
    // either proxy matches on the source port, so it changes no trace.
    if let Some(port) = get("source-port") {
        if !port.parse::<u16>().is_ok_and(|p| p > 0) {
            return Err(format!("--source-port {port:?}: expected a port from 1 to 65535"));
        }
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
    let mode = match get("proxy-mode").as_deref() {
        None => None,
        Some("nftables") => Some(RulesMode::Nftables),
        Some("iptables") => Some(RulesMode::Iptables),
        Some("ipvs") => Some(RulesMode::Ipvs),
        Some(other) => return Err(format!("--proxy-mode {other:?}: expected nftables, iptables or ipvs")),
    };
    let json = match get("output").as_deref().unwrap_or("text") {
        "text" => false,
        "json" => true,
        other => return Err(format!("--output {other:?}: expected text or json")),
    };
    Ok(TraceArgs { packet: Packet { src: source, dst: destination.ip(), protocol, dport: destination.port(), origin }, json, mode })
}

/// The text (or JSON) `kproxy trace` prints for `traced`.
pub fn render(args: &TraceArgs, traced: &Traced) -> String {
    let packet = &args.packet;
    let (kind, endpoints, masquerade, affinity) = match &traced.verdict {
        Verdict::Forward { targets, affinity_seconds } => {
            ("dnat", targets.iter().map(|t| t.endpoint.to_string()).collect::<Vec<_>>(), targets.iter().any(|t| t.masquerade), *affinity_seconds)
        }
        Verdict::Reject => ("reject", Vec::new(), false, None),
        Verdict::Drop => ("drop", Vec::new(), false, None),
        Verdict::NotService => ("accept", Vec::new(), traced.masquerade_if_untouched, None),
    };
    let paths = &traced.ways;
    if args.json {
        let value = serde_json::json!({
            "verdict": kind, "endpoints": endpoints, "masquerade": masquerade, "affinitySeconds": affinity,
            "path": paths.first().cloned().unwrap_or_default(), "paths": paths, "rules": traced.rules,
        });
        return format!("{value}\n");
    }
    let protocol = format!("{:?}", packet.protocol).to_lowercase();
    let arrival = match packet.origin {
        Origin::Outside => "from outside the node",
        Origin::LocalPod => "from a pod on this node",
        Origin::Node => "from the node itself",
    };
    let mut out = format!("{protocol} {} -> {}, {arrival} ({})\n", packet.src, SocketAddr::new(packet.dst, packet.dport), traced.rules);
    for (i, way) in paths.iter().enumerate() {
        if paths.len() > 1 {
            out.push_str(&format!("way {} of {}:\n", i + 1, paths.len()));
        }
        for rule in way {
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
    out
}

/// Runs `kproxy trace ARGS`: prints the trace, or one line and exit 1.
pub fn main(args: &[String]) -> std::process::ExitCode {
    let result = parse_args(args).and_then(|a| {
        let rules = read_live(IpFamily::of(a.packet.dst), a.mode)?;
        trace_rules(&a, &rules, &kproxy_agent::interfaces::local_addresses())
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
            (&["--source", "10.0.0.1", "--destination", "10.96.0.10:80", "--proxy-mode", "userspace"], "expected nftables, iptables or ipvs"),
            (&["--bogus", "1"], "unknown flag --bogus"),
            (&["--source", "10.0.0.1", "--destination", "10.96.0.10:80", "--source-port", "0"], "--source-port"),
        ] {
            let err = args(list).unwrap_err();
            assert!(err.contains(needle) && !err.contains('\n'), "{list:?}: {err}");
        }
        assert_eq!(args(&["--source=10.0.0.1", "--destination=10.96.0.10:53", "--protocol=udp", "--output=json"]).unwrap().packet.protocol, Protocol::Udp);
    }

    /// `iptables-save` of a node kproxy programmed in iptables mode with
    /// `examples/cluster` (node-a, 192.168.0.2).
    const SAVED: &str = include_str!("../../testdata/iptables-save-example-cluster.txt");

    fn trace_listing(args: &TraceArgs, save: &str, local: &[IpAddr], flavour: &str) -> Result<String, String> {
        Ok(render(args, &iptables::trace(args, save, local, flavour)?))
    }

    /// `nft -j list table ip kproxy-a` of the table kproxy renders for
    /// `examples/cluster` on node-a (see kproxy-backend-nft's testdata).
    const NFT_JSON: &str = include_str!("../../../kproxy-backend-nft/testdata/example-cluster.json");

    #[test]
    fn a_kproxy_nftables_table_is_traced_with_its_path() {
        let local: Vec<IpAddr> = vec!["192.168.50.2".parse().unwrap()];
        let run = |list: &[&str]| render(&args(list).unwrap(), &nft::trace(&args(list).unwrap(), NFT_JSON, "kproxy-a", &local).unwrap());
        let json: serde_json::Value = serde_json::from_str(&run(&["--source", "192.168.50.100", "--destination", "10.96.0.10:80", "--output", "json"])).unwrap();
        assert_eq!(json["verdict"], "dnat", "{json}");
        assert_eq!(json["endpoints"], serde_json::json!(["10.244.1.10:8080", "10.244.1.11:8080"]), "{json}");
        assert_eq!(json["paths"].as_array().unwrap().len(), 2, "one way per endpoint: {json}");
        let path: Vec<&str> = json["path"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
        assert!(path.iter().any(|r| r.starts_with("chain services: ip daddr . meta l4proto . th dport @cluster-ip-services goto cluster-ip # handle ")), "{path:#?}");
        let lb: Vec<&&str> = path.iter().filter(|r| r.starts_with("chain cluster-lb:")).collect();
        assert_eq!(lb.len(), 1, "only the DNAT that hit: {path:#?}");
        assert!(lb[0].starts_with("chain cluster-lb: meta l4proto tcp dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 map @cluster-slots-tcp-2"), "{path:#?}");
        assert_eq!(path.last().copied(), Some("=> dnat to 10.244.1.10:8080"), "{path:#?}");
        let text = run(&["--source", "192.168.50.100", "--destination", "10.96.0.40:80"]);
        assert!(text.contains("chain endpoints-check: ip daddr . meta l4proto . th dport @no-endpoint-reject reject") && text.contains("verdict: REJECT"), "{text}");
        let text = run(&["--source", "192.168.50.100", "--destination", "192.168.50.2:30443"]);
        assert!(text.contains("DNAT to 10.244.1.30:8443 (one chosen at random), not masqueraded"), "ETP=Local keeps the source: {text}");
        let text = run(&["--source", "192.168.50.100", "--destination", "10.1.2.3:80"]);
        assert!(text.ends_with("verdict: not a Service address: the Service rules leave it alone\n"), "{text}");
    }

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
