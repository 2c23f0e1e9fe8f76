//! `kproxy diagnose`: what the API says should happen to each Service's
//! ClusterIP traffic, next to what this node's live rules do (the tracer of
//! `kproxy trace`: kproxy's nftables table, or the iptables rules of kproxy
//! or upstream), and one line per finding with its fix.
//!
//! ```text
//! kproxy diagnose (--manifests DIR | --kubeconfig FILE) --hostname-override NODE [NAMESPACE/SERVICE]
//! ```
//!
//! Exit code 0 when everything agrees, 1 when there are findings, 2 on bad
//! input.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy_core::oracle::{Origin, Packet};
use kproxy_core::Protocol;

use crate::trace_cmd::{trace_rules, TraceArgs};

/// One finding: what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `namespace/name`.
    pub service: String,
    /// What is wrong.
    pub what: String,
    /// How to fix it.
    pub fix: &'static str,
}

/// What `diagnose` checks one Service against: its slices, the node, and a
/// way to trace a packet through the live rules (JSON of `kproxy trace`).
pub struct Inputs<'a> {
    /// The Services.
    pub services: &'a [Service],
    /// Every EndpointSlice.
    pub slices: &'a [EndpointSlice],
    /// This node's name.
    pub node: &'a str,
    /// Traces a packet; `Err` when the rules cannot be read.
    pub trace: &'a dyn Fn(&Packet) -> Result<serde_json::Value, String>,
    /// The address packets are sent from (the node's).
    pub source: IpAddr,
}

fn key(s: &Service) -> String {
    format!("{}/{}", s.metadata.namespace.as_deref().unwrap_or("default"), s.metadata.name.as_deref().unwrap_or_default())
}

fn protocol(p: Option<&str>) -> Protocol {
    match p {
        Some("UDP") => Protocol::Udp,
        Some("SCTP") => Protocol::Sctp,
        _ => Protocol::Tcp,
    }
}

/// Every finding about `services` (all of them, or the one named).
pub fn diagnose(inputs: &Inputs<'_>, only: Option<&str>) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut rules_missing = false;
    for svc in inputs.services.iter().filter(|s| only.is_none_or(|o| key(s) == o)) {
        let name = key(svc);
        let mut find = |what: String, fix: &'static str| out.push(Finding { service: name.clone(), what, fix });
        let labels = svc.metadata.labels.clone().unwrap_or_default();
        if let Some(owner) = labels.get(kproxy_core::convert::SERVICE_PROXY_NAME_LABEL) {
            find(
                format!("labelled {}={owner}: another proxy implements it; kproxy and kube-proxy leave it alone", kproxy_core::convert::SERVICE_PROXY_NAME_LABEL),
                "remove the label if this proxy should serve it",
            );
            continue;
        }
        let spec = svc.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let cluster_ip = spec.cluster_ip.clone().unwrap_or_default();
        if cluster_ip == "None" || labels.contains_key("service.kubernetes.io/headless") {
            continue;
        }
        let Ok(ip) = cluster_ip.parse::<IpAddr>() else { continue };
        let namespace = svc.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let service_name = svc.metadata.name.clone().unwrap_or_default();
        let slices: Vec<&EndpointSlice> = inputs
            .slices
            .iter()
            .filter(|s| {
                s.metadata.namespace.as_deref().unwrap_or("default") == namespace
                    && s.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name")) == Some(&service_name)
            })
            .collect();
        if slices.is_empty() {
            find("no EndpointSlice".into(), "check that the Service's selector matches running pods (kubectl get endpointslices -l kubernetes.io/service-name=NAME)");
        }
        let local_policy = spec.external_traffic_policy.as_deref() == Some("Local") && matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
        for port in spec.ports.clone().unwrap_or_default() {
            let port_name = port.name.clone().unwrap_or_default();
            let (mut ready, mut not_ready, mut terminating, mut ready_here) = (BTreeSet::new(), 0, 0, 0);
            for slice in &slices {
                let Some(target) = slice.ports.iter().flatten().find(|p| p.name.clone().unwrap_or_default() == port_name).and_then(|p| p.port) else { continue };
                for e in &slice.endpoints {
                    let c = e.conditions.clone().unwrap_or_default();
                    if c.ready.unwrap_or(true) {
                        for a in &e.addresses {
                            if let Ok(addr) = a.parse::<IpAddr>() {
                                ready.insert(SocketAddr::new(addr, target as u16).to_string());
                            }
                        }
                        ready_here += usize::from(e.node_name.as_deref() == Some(inputs.node));
                    } else if c.terminating.unwrap_or(false) {
                        terminating += 1;
                    } else {
                        not_ready += 1;
                    }
                }
            }
            let shown = if port_name.is_empty() { port.port.to_string() } else { format!("{port_name} ({})", port.port) };
            if ready.is_empty() && !slices.is_empty() {
                find(format!("port {shown}: no ready endpoint ({not_ready} not ready, {terminating} terminating): connections are refused"), "check the pods' readiness probes and logs");
            }
            if local_policy && !ready.is_empty() && ready_here == 0 {
                find(
                    format!("port {shown}: externalTrafficPolicy Local and no ready endpoint on {}: external traffic to this node is dropped", inputs.node),
                    "expected on nodes without its pods (load balancers skip them by the health-check NodePort); otherwise schedule a pod here or use the Cluster policy",
                );
            }
            if rules_missing {
                continue;
            }
            let packet = Packet { src: inputs.source, dst: ip, protocol: protocol(port.protocol.as_deref()), dport: port.port as u16, origin: Origin::Node };
            let want: Vec<String> = ready.iter().cloned().collect();
            match (inputs.trace)(&packet) {
                Err(e) => {
                    rules_missing = true;
                    find(format!("the kernel's rules cannot be read: {e}"), "run kproxy (or kube-proxy in iptables mode) on this node, and diagnose as root");
                }
                Ok(json) => {
                    let got: Vec<String> = json["endpoints"].as_array().map(|a| a.iter().filter_map(|e| e.as_str().map(String::from)).collect()).unwrap_or_default();
                    let verdict = json["verdict"].as_str().unwrap_or_default().to_string();
                    let expected = if want.is_empty() { "reject" } else { "dnat" };
                    if verdict == "accept" {
                        find(format!("port {shown}: the kernel has no rule for {ip}:{}", port.port), "the proxy is not running or has not synced: check its logs and /healthz");
                    } else if verdict != expected || (expected == "dnat" && got != want) {
                        find(
                            format!("port {shown}: the kernel does {verdict} {got:?}, the API says {expected} {want:?} (stale rules or drift)"),
                            "check the proxy's sync errors in its log; a periodic sync repairs drift, a restart of the proxy rewrites everything",
                        );
                    }
                }
            }
        }
    }
    out
}

/// What `kproxy diagnose` is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Args {
    manifests: Option<String>,
    kubeconfig: Option<String>,
    node: String,
    only: Option<String>,
}

/// The command's usage line.
pub const USAGE: &str = "kproxy diagnose (--manifests DIR | --kubeconfig FILE) --hostname-override NODE [NAMESPACE/SERVICE]";

fn parse_args(args: &[String]) -> Result<Args, String> {
    let (values, mut words) = crate::trace_cmd::long_flags(args, &["manifests", "kubeconfig", "hostname-override"], USAGE)?;
    let only = match words.len() {
        0 => None,
        1 if words[0].contains('/') => words.pop(),
        _ => return Err(format!("unexpected argument {:?}; usage: {USAGE}", words.last().unwrap_or(&String::new()))),
    };
    let node = values.get("hostname-override").cloned().ok_or("--hostname-override is required")?;
    let (manifests, kubeconfig) = (values.get("manifests").cloned(), values.get("kubeconfig").cloned());
    if manifests.is_some() == kubeconfig.is_some() {
        return Err(format!("give one of --manifests and --kubeconfig; usage: {USAGE}"));
    }
    Ok(Args { manifests, kubeconfig, node, only })
}

/// The cluster's Services and EndpointSlices, from the manifests or the API.
fn objects(args: &Args) -> Result<(Vec<Service>, Vec<EndpointSlice>), String> {
    if let Some(dir) = &args.manifests {
        let (m, _) = crate::manifests::Directory::default().load(std::path::Path::new(dir))?;
        return Ok((m.services.into_values().collect(), m.slices.into_values().collect()));
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new(crate::settings::Mode::Iptables));
        let limits = crate::api_client::Limits { qps: 0.0, burst: 0 };
        let client = crate::watch::client(args.kubeconfig.as_deref(), None, limits, metrics).await.map_err(|e| format!("{e:#}"))?;
        let list = kube::api::ListParams::default();
        let services = kube::Api::<Service>::all(client.clone()).list(&list).await.map_err(|e| format!("cannot list Services: {e}"))?;
        let slices = kube::Api::<EndpointSlice>::all(client).list(&list).await.map_err(|e| format!("cannot list EndpointSlices: {e}"))?;
        Ok((services.items, slices.items))
    })
}

/// Runs `kproxy diagnose ARGS`.
pub fn main(args: &[String]) -> std::process::ExitCode {
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kproxy diagnose: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let (services, slices) = match objects(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("kproxy diagnose: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let local = crate::interfaces::local_addresses();
    let source = local.iter().copied().find(|ip| ip.is_ipv4() && !ip.is_loopback()).unwrap_or(IpAddr::from([127, 0, 0, 1]));
    // The listing is read once per family.
    let listings: BTreeMap<bool, Result<crate::trace_cmd::LiveRules, String>> = [false, true]
        .into_iter()
        .map(|v6| (v6, crate::trace_cmd::read_live(if v6 { kproxy_core::IpFamily::V6 } else { kproxy_core::IpFamily::V4 }, None)))
        .collect();
    let trace = |packet: &Packet| -> Result<serde_json::Value, String> {
        let v6 = packet.dst.is_ipv6();
        let rules = listings.get(&v6).cloned().unwrap_or_else(|| Err("no listing".into()))?;
        let mut packet = packet.clone();
        if packet.src.is_ipv6() != v6 {
            packet.src = local.iter().copied().find(|ip| ip.is_ipv6() == v6 && !ip.is_loopback()).unwrap_or(packet.dst);
        }
        let text = trace_rules(&TraceArgs { packet, json: true, mode: None }, &rules, &local)?;
        serde_json::from_str(&text).map_err(|e| e.to_string())
    };
    let inputs = Inputs { services: &services, slices: &slices, node: &args.node, trace: &trace, source };
    let findings = diagnose(&inputs, args.only.as_deref());
    if let Some(only) = &args.only {
        if !services.iter().any(|s| key(s) == *only) {
            eprintln!("kproxy diagnose: no Service {only}");
            return std::process::ExitCode::from(2);
        }
    }
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
    use kproxy_core::oracle::fixtures::{service, slice, EndpointState, NODE_NAME};

    fn args(list: &[&str]) -> Result<Args, String> {
        parse_args(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn bad_input_is_one_line() {
        assert!(args(&["--manifests", "d"]).unwrap_err().contains("--hostname-override is required"));
        assert!(args(&["--hostname-override", "n"]).unwrap_err().contains("one of --manifests and --kubeconfig"));
        assert!(args(&["--hostname-override", "n", "--manifests", "d", "--bogus", "x"]).unwrap_err().contains("unknown flag"));
        assert_eq!(args(&["--hostname-override", "n", "--manifests", "d", "ns/web"]).unwrap().only.as_deref(), Some("ns/web"));
    }

    #[test]
    fn api_side_findings_and_a_kernel_that_disagrees() {
        let web = service("ns", "web", &["172.30.0.10"]).port("p80", 80, "TCP", 0).build();
        let empty = service("ns", "empty", &["172.30.0.11"]).port("p80", 80, "TCP", 0).build();
        let orphan = service("ns", "orphan", &["172.30.0.12"]).port("p80", 80, "TCP", 0).build();
        let slices = vec![
            slice("ns", "web", "web-a", "IPv4").port("p80", 8080, "TCP").endpoint("10.180.0.1", NODE_NAME, EndpointState::Ready).build(),
            slice("ns", "empty", "empty-a", "IPv4").port("p80", 8080, "TCP").endpoint("10.180.0.2", NODE_NAME, EndpointState::Terminating).build(),
        ];
        let services = vec![web, empty, orphan];
        // A kernel that sends web to a pod that left, rejects empty, and has
        // no rule for orphan.
        let trace = |p: &Packet| -> Result<serde_json::Value, String> {
            Ok(match p.dst.to_string().as_str() {
                "172.30.0.10" => serde_json::json!({"verdict": "dnat", "endpoints": ["10.180.0.9:8080"]}),
                "172.30.0.11" => serde_json::json!({"verdict": "reject", "endpoints": []}),
                _ => serde_json::json!({"verdict": "accept", "endpoints": []}),
            })
        };
        let inputs = Inputs { services: &services, slices: &slices, node: NODE_NAME, trace: &trace, source: "192.168.0.2".parse().unwrap() };
        let found: Vec<String> = diagnose(&inputs, None).into_iter().map(|f| format!("{}: {}", f.service, f.what)).collect();
        assert!(found.iter().any(|f| f.starts_with("ns/web: port p80 (80): the kernel does dnat [\"10.180.0.9:8080\"], the API says dnat [\"10.180.0.1:8080\"]")), "{found:#?}");
        assert!(found.iter().any(|f| f.starts_with("ns/empty: port p80 (80): no ready endpoint (0 not ready, 1 terminating)")), "{found:#?}");
        assert!(found.iter().any(|f| f == "ns/orphan: no EndpointSlice"), "{found:#?}");
        assert!(found.iter().any(|f| f.starts_with("ns/orphan: port p80 (80): the kernel has no rule")), "{found:#?}");
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(diagnose(&inputs, Some("ns/none")).is_empty());
    }
}
