//! `kproxy diagnose`: what the API says should happen to each frontend of
//! each Service (the oracle (`kproxy-oracle`), from the Service, its
//! EndpointSlices, the Node and the proxy's configuration), next to what
//! this node's live rules do (the tracer of `kproxy trace`: kproxy's
//! nftables table, or the iptables rules of kproxy or upstream), and one
//! line per finding with its fix.
//!
//! ```text
//! kproxy diagnose (--manifests DIR | --kubeconfig FILE) [--hostname-override NODE]
//!                 [--source CLIENT_IP] [KPROXY FLAGS...] [NAMESPACE/SERVICE]
//! ```
//!
//! The kproxy flags (`--config`, `--cluster-cidr`, `--nodeport-addresses`,
//! `--detect-local-mode`, ...) say how the node's proxy is configured;
//! give the ones it runs with. Exit code 0 when everything agrees, 1 when
//! there are findings, 2 on bad input.

mod checks;

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeStatus, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy_oracle::{Dataplane, Packet};
use kproxy_core::{IpFamily, ProxierConfig};

pub use checks::{diagnose, key, Inputs};

use crate::trace_cmd::{read_live, trace_rules, LiveRules, RulesMode, TraceArgs};

/// What `kproxy diagnose` is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Args {
    manifests: Option<String>,
    kubeconfig: Option<String>,
    /// `--hostname-override`; without it, kproxy's own default (the
    /// hostname).
    node: Option<String>,
    only: Option<String>,
    client: Option<IpAddr>,
    /// The kproxy flags, as given.
    proxy_flags: Vec<String>,
}

/// The command's usage line.
pub const USAGE: &str = "kproxy diagnose (--manifests DIR | --kubeconfig FILE) [--hostname-override NODE] [--source CLIENT_IP] [KPROXY FLAGS...] [NAMESPACE/SERVICE]";

fn parse_args(args: &[String]) -> Result<Args, String> {
    let own = ["manifests", "kubeconfig", "hostname-override", "source"];
    let mut values = std::collections::BTreeMap::new();
    let mut words = Vec::new();
    let mut proxy_flags = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--") else {
            words.push(arg.clone());
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.to_string(), None),
        };
        if own.contains(&name.as_str()) {
            let value = match inline {
                Some(v) => v,
                None => it.next().cloned().ok_or_else(|| format!("--{name} needs a value"))?,
            };
            values.insert(name, value);
            continue;
        }
        // A kproxy flag: its value follows unless it is a switch.
        let Some(takes_value) = crate::flags::takes_value(&name) else {
            return Err(format!("unknown flag --{name}: neither diagnose's nor kproxy's; usage: {USAGE}"));
        };
        proxy_flags.push(arg.clone());
        if inline.is_none() && takes_value {
            proxy_flags.push(it.next().cloned().ok_or_else(|| format!("--{name} needs a value"))?);
        }
    }
    let only = match words.len() {
        0 => None,
        1 if words[0].contains('/') => words.pop(),
        _ => return Err(format!("unexpected argument {:?}; usage: {USAGE}", words.last().unwrap_or(&String::new()))),
    };
    let node = values.get("hostname-override").cloned();
    let (manifests, kubeconfig) = (values.get("manifests").cloned(), values.get("kubeconfig").cloned());
    if manifests.is_some() == kubeconfig.is_some() {
        return Err(format!("give one of --manifests and --kubeconfig; usage: {USAGE}"));
    }
    let client = match values.get("source") {
        None => None,
        Some(s) => Some(s.parse().map_err(|_| format!("--source {s:?} is not an IP address"))?),
    };
    Ok(Args { manifests, kubeconfig, node, only, client, proxy_flags })
}

/// The proxy's settings from the kproxy flags (and `--config` file) given.
fn settings(args: &Args) -> Result<crate::settings::Settings, String> {
    let mut given = args.proxy_flags.clone();
    given.extend(args.node.iter().flat_map(|n| ["--hostname-override".to_string(), n.clone()]));
    let flags = crate::flags::Flags::parse_from(given).map_err(|e| e.to_string())?;
    let effective = crate::config::effective(&flags).map_err(|e| e.to_string().lines().next().unwrap_or_default().to_string())?;
    crate::settings::resolve(&effective.config, &effective.path).map_err(|e| e.to_string())
}

/// The cluster's Services, EndpointSlices and this node's Node (if any).
type Objects = (Vec<Service>, Vec<EndpointSlice>, Option<Node>);

/// The objects, from the manifests or the API, with `node`'s Node.
fn objects(args: &Args, node: &str) -> Result<Objects, String> {
    if let Some(dir) = &args.manifests {
        let (m, _) = kproxy_agent::manifests_source::read_all(std::path::Path::new(dir))?;
        let node = m.nodes.get(node).map(|n| Node::clone(n));
        return Ok((m.services.into_values().map(std::sync::Arc::unwrap_or_clone).collect(), m.slices.into_values().map(std::sync::Arc::unwrap_or_clone).collect(), node));
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new(crate::settings::Mode::Iptables));
        let limits = crate::api_client::Limits { qps: 0.0, burst: 0 };
        let client = crate::watch::client(args.kubeconfig.as_deref(), None, limits, metrics).await.map_err(|e| format!("{e:#}"))?;
        let list = kube::api::ListParams::default();
        let services = kube::Api::<Service>::all(client.clone()).list(&list).await.map_err(|e| format!("cannot list Services: {e}"))?;
        let slices = kube::Api::<EndpointSlice>::all(client.clone()).list(&list).await.map_err(|e| format!("cannot list EndpointSlices: {e}"))?;
        let node = kube::Api::<Node>::all(client).get_opt(node).await.map_err(|e| format!("cannot get Node {node}: {e}"))?;
        Ok((services.items, slices.items, node))
    })
}

/// A Node for `name` with `local` addresses as its InternalIPs, for when
/// there is no Node object.
fn made_up_node(name: &str, local: &[IpAddr]) -> Node {
    let addresses = local.iter().filter(|ip| !ip.is_loopback()).map(|ip| NodeAddress { address: ip.to_string(), type_: "InternalIP".into() }).collect();
    Node {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta { name: Some(name.to_string()), ..Default::default() },
        status: Some(NodeStatus { addresses: Some(addresses), ..Default::default() }),
        ..Default::default()
    }
}

/// Runs `kproxy diagnose ARGS`.
pub fn main(args: &[String]) -> std::process::ExitCode {
    let fail = |e: String| {
        eprintln!("kproxy diagnose: {e}");
        std::process::ExitCode::from(2)
    };
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let settings = match settings(&args) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if settings.proxy.mode == crate::settings::Mode::Userspace {
        return fail(format!(
            "userspace mode forwards connections in the proxy itself, so there are no rules to trace (its steering table: nft list table ip {})",
            kproxy_userspace::TABLE
        ));
    }
    let (services, slices, node) = match objects(&args, &settings.proxy.node_name) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    if let Some(only) = &args.only {
        if !services.iter().any(|s| key(s) == *only) {
            return fail(format!("no Service {only}"));
        }
    }
    let local = kproxy_agent::interfaces::local_addresses();
    let node = node.unwrap_or_else(|| made_up_node(&settings.proxy.node_name, &local));
    let info = kproxy_core::convert::node_info(&node);
    let families: Vec<IpFamily> = [IpFamily::V4, IpFamily::V6].into_iter().filter(|f| info.ips.iter().any(|ip| f.contains(*ip)) || *f == IpFamily::V4).collect();
    let configs: Vec<ProxierConfig> = families.iter().map(|f| settings.proxy.proxier_config(*f, &info, &local)).collect();
    let mode = match settings.proxy.mode {
        crate::settings::Mode::Nftables => Some(RulesMode::Nftables),
        crate::settings::Mode::Ipvs => Some(RulesMode::Ipvs),
        // iptables is also the default: without a mode given, the node's
        // rules decide.
        _ if args.proxy_flags.iter().any(|f| f.starts_with("--proxy-mode") || f.starts_with("--config")) => Some(RulesMode::Iptables),
        _ => None,
    };
    // The rules are read once per family.
    let rules: Vec<(IpFamily, Result<LiveRules, String>)> = families.iter().map(|f| (*f, read_live(*f, mode))).collect();
    let dataplane = match rules.first().map(|(_, r)| r) {
        Some(Ok(LiveRules::Nftables(..))) => Dataplane::Nftables,
        Some(Ok(LiveRules::Ipvs(..))) => Dataplane::Ipvs,
        _ => Dataplane::Iptables,
    };
    let trace = |packet: &Packet| -> Result<serde_json::Value, String> {
        let family = IpFamily::of(packet.dst);
        let live = rules.iter().find(|(f, _)| *f == family).map(|(_, r)| r.clone()).unwrap_or_else(|| Err(format!("no {family} rules")))?;
        let text = trace_rules(&TraceArgs { packet: packet.clone(), json: true, mode: None }, &live, &local)?;
        serde_json::from_str(&text).map_err(|e| e.to_string())
    };
    let inputs = Inputs { services: &services, slices: &slices, node: &node, configs: &configs, dataplane, trace: &trace, client: args.client };
    let findings = diagnose(&inputs, args.only.as_deref());
    if findings.is_empty() {
        println!("every Service agrees: the kernel does what the API says");
        return std::process::ExitCode::SUCCESS;
    }
    for f in &findings {
        println!("{}: {}\n  fix: {}", f.service, f.what, f.fix);
    }
    std::process::ExitCode::from(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kproxy_oracle::fixtures::{self as fx, service, slice, EndpointState, NODE_NAME};

    fn args(list: &[&str]) -> Result<Args, String> {
        parse_args(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn bad_input_is_one_line() {
        assert!(args(&["--hostname-override", "n"]).unwrap_err().contains("one of --manifests and --kubeconfig"));
        // The node defaults as kproxy's does (the hostname).
        let a = args(&["--manifests", "d"]).unwrap();
        assert_eq!(a.node, None);
        assert!(!settings(&a).unwrap().proxy.node_name.is_empty());
        assert!(args(&["--hostname-override", "n", "--manifests", "d", "--source", "10.0.0.300"]).unwrap_err().contains("not an IP address"));
        assert_eq!(args(&["--hostname-override", "n", "--manifests", "d", "ns/web"]).unwrap().only.as_deref(), Some("ns/web"));
        // kproxy's own flags pass through, with their values.
        let a = args(&["--hostname-override", "n", "--manifests", "d", "--cluster-cidr", "10.0.0.0/8", "--masquerade-all", "ns/web"]).unwrap();
        assert_eq!(a.proxy_flags, ["--cluster-cidr", "10.0.0.0/8", "--masquerade-all"]);
        assert_eq!(a.only.as_deref(), Some("ns/web"));
        assert!(args(&["--hostname-override", "n", "--manifests", "d", "--bogus", "x"]).unwrap_err().starts_with("unknown flag --bogus"));
        let bad = args(&["--hostname-override", "n", "--manifests", "d", "--nodeport-addresses", "300.0.0.0/8"]).unwrap();
        assert!(!settings(&bad).unwrap_err().contains('\n'));
    }

    fn inputs<'a>(services: &'a [Service], slices: &'a [EndpointSlice], node: &'a Node, configs: &'a [ProxierConfig], trace: &'a dyn Fn(&Packet) -> Result<serde_json::Value, String>, client: Option<IpAddr>) -> Inputs<'a> {
        Inputs { services, slices, node, configs, dataplane: Dataplane::Nftables, trace, client }
    }

    fn findings(inputs: &Inputs<'_>) -> Vec<String> {
        diagnose(inputs, None).into_iter().map(|f| format!("{}: {}", f.service, f.what)).collect()
    }

    #[test]
    fn api_side_findings_and_a_kernel_that_disagrees() {
        let web = service("ns", "web", &["172.30.0.10"]).port("p80", 80, "TCP", 0).build();
        let empty = service("ns", "empty", &["172.30.0.11"]).port("p80", 80, "TCP", 0).build();
        let orphan = service("ns", "orphan", &["172.30.0.12"]).port("p80", 80, "TCP", 0).build();
        let slices = vec![
            slice("ns", "web", "web-a", "IPv4").port("p80", 8080, "TCP").endpoint("10.180.0.1", "elsewhere", EndpointState::Ready).build(),
            slice("ns", "empty", "empty-a", "IPv4").port("p80", 8080, "TCP").endpoint("10.180.0.2", NODE_NAME, EndpointState::Terminating).build(),
        ];
        let services = vec![web, empty, orphan];
        // A kernel that sends web to a pod that left, rejects empty, and has
        // no rule for orphan.
        let trace = |p: &Packet| -> Result<serde_json::Value, String> {
            Ok(match p.dst.to_string().as_str() {
                "172.30.0.10" => serde_json::json!({"verdict": "dnat", "endpoints": ["10.180.0.9:8080"], "masquerade": true}),
                "172.30.0.11" => serde_json::json!({"verdict": "reject", "endpoints": []}),
                _ => serde_json::json!({"verdict": "accept", "endpoints": []}),
            })
        };
        let (node, configs) = (fx::node(), [fx::config(IpFamily::V4)]);
        let i = inputs(&services, &slices, &node, &configs, &trace, None);
        let found = findings(&i);
        assert!(found.iter().any(|f| f == "ns/web: port p80 (80), ClusterIP 172.30.0.10:80 from the node: the kernel does dnat [\"10.180.0.9:8080\"], the API says dnat [\"10.180.0.1:8080\"] (stale rules or drift)"), "{found:#?}");
        assert!(found.iter().any(|f| f.starts_with("ns/empty: port p80 (80): no ready endpoint (0 not ready, 1 terminating)")), "{found:#?}");
        assert!(found.iter().any(|f| f == "ns/orphan: no EndpointSlice"), "{found:#?}");
        assert!(found.iter().any(|f| f == "ns/orphan: port p80 (80), ClusterIP 172.30.0.12:80 from the node: the kernel has no rule for it, the API says reject"), "{found:#?}");
        assert!(diagnose(&i, Some("ns/none")).is_empty());
        // A kernel that does what the oracle says has nothing to report
        // beyond the API's own findings.
        let state = {
            let mut s = kproxy_core::ProxyState::new(IpFamily::V4, NODE_NAME);
            s.on_node(&node);
            for x in &services {
                s.on_service(None, Some(x));
            }
            for x in &slices {
                s.on_endpoint_slice(x, false);
            }
            s.apply();
            s
        };
        let faithful = |p: &Packet| -> Result<serde_json::Value, String> {
            let v = kproxy_oracle::evaluate_for(Dataplane::Nftables, &state, &configs[0], p);
            let (kind, eps, masq) = match v {
                kproxy_oracle::Verdict::Forward { targets, .. } => ("dnat", targets.iter().map(|t| t.endpoint.to_string()).collect::<Vec<_>>(), targets.iter().any(|t| t.masquerade)),
                kproxy_oracle::Verdict::Reject => ("reject", vec![], false),
                kproxy_oracle::Verdict::Drop => ("drop", vec![], false),
                kproxy_oracle::Verdict::NotService => ("accept", vec![], false),
            };
            Ok(serde_json::json!({"verdict": kind, "endpoints": eps, "masquerade": masq}))
        };
        let i = inputs(&services, &slices, &node, &configs, &faithful, None);
        let found: Vec<String> = findings(&i);
        assert!(found.iter().all(|f| !f.contains("the kernel")), "{found:#?}");
    }

    #[test]
    fn the_detector_node_port_addresses_and_source_ranges() {
        let np = service("ns", "np", &["172.30.0.20"]).type_("NodePort").port("p80", 80, "TCP", 30080).build();
        let lb = service("ns", "lb", &["172.30.0.21"]).type_("LoadBalancer").load_balancer(&[fx::LB_IP]).source_ranges(&[fx::SOURCE_RANGE]).port("p80", 80, "TCP", 30081).build();
        let slices = vec![
            slice("ns", "np", "np-a", "IPv4").port("p80", 8080, "TCP").endpoint("192.168.77.5", NODE_NAME, EndpointState::Ready).build(),
            slice("ns", "lb", "lb-a", "IPv4").port("p80", 8080, "TCP").endpoint("10.180.0.7", NODE_NAME, EndpointState::Ready).build(),
        ];
        let services = vec![np, lb];
        let no_rules = |_: &Packet| -> Result<serde_json::Value, String> { Err("no rules here".into()) };
        let node = fx::node();
        // NodePorts on no address of the node.
        let config = ProxierConfig { node_port_ips: vec![], node_ports_on_every_address: false, ..fx::config(IpFamily::V4) };
        let configs = [config];
        let blocked: IpAddr = fx::BLOCKED_CLIENT.parse().unwrap();
        let found = findings(&inputs(&services, &slices, &node, &configs, &no_rules, Some(blocked)));
        assert!(found.iter().any(|f| f.starts_with("node: the local-traffic detector (clusterCIDR 10.0.0.0/8) does not cover the pod addresses 192.168.77.5")), "{found:#?}");
        assert!(found.iter().any(|f| f == "ns/np: port p80 (80): NodePort 30080 is served on no IPv4 address of this node: nodePortAddresses matches none of them"), "{found:#?}");
        assert!(found.iter().any(|f| f.starts_with("ns/lb: loadBalancerSourceRanges (203.0.113.0/25) leave out the client 203.0.113.130")), "{found:#?}");
        assert_eq!(found.iter().filter(|f| f.contains("cannot be read")).count(), 1, "said once: {found:#?}");
        // NodePorts on another address only; no detector; an allowed client.
        let config = ProxierConfig { node_port_ips: vec!["192.0.2.1".parse().unwrap()], node_ports_on_every_address: false, local_detector: kproxy_core::LocalDetector::None, ..fx::config(IpFamily::V4) };
        let configs = [config];
        let allowed: IpAddr = fx::ALLOWED_CLIENT.parse().unwrap();
        let found = findings(&inputs(&services, &slices, &node, &configs, &no_rules, Some(allowed)));
        assert!(found.iter().any(|f| f.starts_with(&format!("ns/np: port p80 (80): NodePort 30080 is not served on the node's address {}: nodePortAddresses leaves it out (served on 192.0.2.1)", fx::NODE_IP))), "{found:#?}");
        assert!(found.iter().any(|f| f.starts_with("node: no local-traffic detector for IPv4")), "{found:#?}");
        assert!(!found.iter().any(|f| f.contains("leave out the client")), "{found:#?}");
    }
}
