//! The pure part of `kproxy diagnose`: the API's objects and the node's
//! configuration on one side, a tracer of the live rules on the other, and
//! one [`Finding`] per disagreement or known trap.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy_oracle::{evaluate_for, Dataplane, Origin, Packet, Verdict};
use kproxy_core::{IpFamily, LocalDetector, ProxierConfig, ProxyState, Protocol};

/// One finding: what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `namespace/name`, or `node` for the node's configuration.
    pub service: String,
    /// What is wrong.
    pub what: String,
    /// How to fix it.
    pub fix: &'static str,
}

/// What `diagnose` checks the Services against: their slices, the node
/// and its proxy configuration, and a tracer of the live rules (JSON of
/// `kproxy trace`).
pub struct Inputs<'a> {
    /// The Services.
    pub services: &'a [Service],
    /// Every EndpointSlice.
    pub slices: &'a [EndpointSlice],
    /// This node's Node object (made up from its addresses when the API
    /// or the manifests have none).
    pub node: &'a Node,
    /// The proxy's configuration for each family it runs.
    pub configs: &'a [ProxierConfig],
    /// The semantics the live rules follow.
    pub dataplane: Dataplane,
    /// Traces a packet; `Err` when the rules cannot be read.
    pub trace: &'a dyn Fn(&Packet) -> Result<serde_json::Value, String>,
    /// The outside client in question (`--source`), if any.
    pub client: Option<IpAddr>,
}

impl Inputs<'_> {
    fn node_name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or_default()
    }
}

/// `namespace/name`.
pub fn key(s: &Service) -> String {
    format!("{}/{}", s.metadata.namespace.as_deref().unwrap_or("default"), s.metadata.name.as_deref().unwrap_or_default())
}

fn protocol(p: Option<&str>) -> Protocol {
    match p {
        Some("UDP") => Protocol::Udp,
        Some("SCTP") => Protocol::Sctp,
        _ => Protocol::Tcp,
    }
}

/// Where the oracle's verdict and a trace are compared: `dnat` with its
/// endpoints and masquerading, `reject`, `drop`, or `accept`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    kind: String,
    endpoints: Vec<String>,
    masquerade: bool,
}

impl Outcome {
    /// `dnat ["IP:PORT", ...]`, `reject`, `drop`, or `no Service rule`.
    fn describe(&self) -> String {
        match self.kind.as_str() {
            "dnat" => format!("dnat {:?}", self.endpoints),
            "accept" => "no Service rule (not a Service address here)".into(),
            other => other.to_string(),
        }
    }

    fn of(v: &Verdict) -> Outcome {
        let (kind, endpoints, masquerade) = match v {
            Verdict::Forward { targets, .. } => ("dnat", targets.iter().map(|t| t.endpoint.to_string()).collect(), targets.iter().any(|t| t.masquerade)),
            Verdict::Reject => ("reject", Vec::new(), false),
            Verdict::Drop => ("drop", Vec::new(), false),
            Verdict::NotService => ("accept", Vec::new(), false),
        };
        Outcome { kind: kind.into(), endpoints, masquerade }
    }

    fn traced(json: &serde_json::Value) -> Outcome {
        let kind = json["verdict"].as_str().unwrap_or_default().to_string();
        let mut endpoints: Vec<String> = json["endpoints"].as_array().map(|a| a.iter().filter_map(|e| e.as_str().map(String::from)).collect()).unwrap_or_default();
        endpoints.sort();
        let masquerade = kind == "dnat" && json["masquerade"].as_bool().unwrap_or(false);
        Outcome { kind, endpoints, masquerade }
    }
}

/// The packets that stand for a Service port's frontends: (what, packet).
fn frontends(inputs: &Inputs<'_>, svc: &Service, port: &ServicePort, config: &ProxierConfig, pod: Option<IpAddr>) -> Vec<(String, Packet)> {
    let family = config.family;
    let spec = svc.spec.clone().unwrap_or_default();
    let proto = protocol(port.protocol.as_deref());
    let node_ip = config.node_ips.first().copied();
    let outside = inputs.client.filter(|c| family.contains(*c)).unwrap_or(match family {
        IpFamily::V4 => IpAddr::from([203, 0, 113, 77]),
        IpFamily::V6 => "2001:db8::77".parse().unwrap_or(IpAddr::from([0u16; 8])),
    });
    let packet = |origin, src, dst, dport: i32| Packet { src, dst, protocol: proto, dport: u16::try_from(dport).unwrap_or(0), origin };
    let mut out = Vec::new();
    let parse = |list: Option<Vec<String>>| list.unwrap_or_default().iter().filter_map(|a| a.parse::<IpAddr>().ok()).filter(|ip| family.contains(*ip)).collect::<Vec<_>>();
    let cluster_ips = parse(spec.cluster_ips.clone().or_else(|| spec.cluster_ip.clone().map(|c| vec![c])));
    for ip in cluster_ips {
        let target = SocketAddr::new(ip, port.port as u16);
        if let Some(src) = node_ip {
            out.push((format!("ClusterIP {target} from the node"), packet(Origin::Node, src, ip, port.port)));
        }
        if let Some(src) = pod {
            out.push((format!("ClusterIP {target} from a pod here ({src})"), packet(Origin::LocalPod, src, ip, port.port)));
        }
    }
    if let Some(np) = port.node_port.filter(|p| *p > 0) {
        for ip in config.node_ips.iter().copied() {
            out.push((format!("NodePort {} from outside ({outside})", SocketAddr::new(ip, np as u16)), packet(Origin::Outside, outside, ip, np)));
        }
    }
    let lb = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.clone()).unwrap_or_default();
    let mut external = parse(spec.external_ips.clone());
    external.extend(parse(Some(lb.iter().filter_map(|i| i.ip.clone()).collect())));
    for ip in external {
        out.push((format!("{} from outside ({outside})", SocketAddr::new(ip, port.port as u16)), packet(Origin::Outside, outside, ip, port.port)));
    }
    out
}

/// Every finding about `services` (all of them, or the one named).
pub fn diagnose(inputs: &Inputs<'_>, only: Option<&str>) -> Vec<Finding> {
    let mut out = node_findings(inputs);
    let mut unreadable = false;
    let states: Vec<(ProxierConfig, ProxyState)> = inputs
        .configs
        .iter()
        .map(|c| {
            let mut state = ProxyState::new(c.family, inputs.node_name());
            state.on_node(inputs.node);
            for s in inputs.services {
                state.on_service(None, Some(s));
            }
            for s in inputs.slices {
                state.on_endpoint_slice(s, false);
            }
            state.apply();
            (c.clone(), state)
        })
        .collect();
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
        let cluster_ip = spec.cluster_ip.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") || cluster_ip == "None" || labels.contains_key("service.kubernetes.io/headless") {
            continue;
        }
        let slices = slices_of(inputs, svc);
        if slices.is_empty() {
            find("no EndpointSlice".into(), "check that the Service's selector matches running pods (kubectl get endpointslices -l kubernetes.io/service-name=NAME)");
        }
        api_findings(inputs, svc, &mut find);
        for port in spec.ports.clone().unwrap_or_default() {
            let shown = match port.name.as_deref().filter(|n| !n.is_empty()) {
                Some(n) => format!("{n} ({})", port.port),
                None => port.port.to_string(),
            };
            endpoint_findings(inputs, svc, &slices, &port, &shown, &mut find);
            for (config, state) in &states {
                node_port_findings(config, &port, &shown, &mut find);
                if unreadable {
                    continue;
                }
                let pod = local_pod(inputs, config.family);
                for (what, packet) in frontends(inputs, svc, &port, config, pod) {
                    let want = Outcome::of(&evaluate_for(inputs.dataplane, state, config, &packet));
                    let got = match (inputs.trace)(&packet) {
                        Ok(json) => Outcome::traced(&json),
                        Err(e) => {
                            unreadable = true;
                            find(format!("the kernel's rules cannot be read: {e}"), "run kproxy (or kube-proxy in iptables mode) on this node, and diagnose as root");
                            break;
                        }
                    };
                    if got == want {
                        continue;
                    }
                    if got.kind == "accept" {
                        find(format!("port {shown}, {what}: the kernel has no rule for it, the API says {}", want.describe()), "the proxy is not running or has not synced: check its logs and /healthz");
                        continue;
                    }
                    let masquerade = if got.masquerade != want.masquerade && got.kind == want.kind && got.endpoints == want.endpoints {
                        format!(" (masquerading: the kernel {}, the API {})", got.masquerade, want.masquerade)
                    } else {
                        String::new()
                    };
                    find(
                        format!("port {shown}, {what}: the kernel does {}, the API says {}{masquerade} (stale rules or drift)", got.describe(), want.describe()),
                        "check the proxy's sync errors in its log; a periodic sync repairs drift, a restart of the proxy rewrites everything",
                    );
                }
            }
        }
    }
    out
}

fn slices_of<'a>(inputs: &Inputs<'a>, svc: &Service) -> Vec<&'a EndpointSlice> {
    let namespace = svc.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = svc.metadata.name.clone().unwrap_or_default();
    inputs
        .slices
        .iter()
        .filter(|s| s.metadata.namespace.as_deref().unwrap_or("default") == namespace && s.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name")) == Some(&name))
        .collect()
}

/// A ready pod address on this node of `family`, to send pod traffic from.
fn local_pod(inputs: &Inputs<'_>, family: IpFamily) -> Option<IpAddr> {
    inputs
        .slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.node_name.as_deref() == Some(inputs.node_name()) && e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .find(|ip| family.contains(*ip))
}

/// The Service's own settings: source ranges that leave out the client.
fn api_findings(inputs: &Inputs<'_>, svc: &Service, find: &mut impl FnMut(String, &'static str)) {
    let spec = svc.spec.clone().unwrap_or_default();
    let ranges: Vec<IpNet> = spec.load_balancer_source_ranges.clone().unwrap_or_default().iter().filter_map(|r| r.trim().parse().ok()).collect();
    if let Some(client) = inputs.client {
        if spec.type_.as_deref() == Some("LoadBalancer") && !ranges.is_empty() && !ranges.iter().any(|r| r.contains(&client)) {
            let shown: Vec<String> = ranges.iter().map(ToString::to_string).collect();
            find(
                format!("loadBalancerSourceRanges ({}) leave out the client {client}: its connections to the load balancer's addresses are dropped", shown.join(", ")),
                "add the client's range to spec.loadBalancerSourceRanges (or send from an address inside them)",
            );
        }
    }
}

/// The endpoints of one port: none ready, or none on this node under
/// `externalTrafficPolicy: Local`.
fn endpoint_findings(inputs: &Inputs<'_>, svc: &Service, slices: &[&EndpointSlice], port: &ServicePort, shown: &str, find: &mut impl FnMut(String, &'static str)) {
    let spec = svc.spec.clone().unwrap_or_default();
    let port_name = port.name.clone().unwrap_or_default();
    let (mut ready, mut not_ready, mut terminating, mut ready_here) = (BTreeSet::new(), 0, 0, 0);
    for slice in slices {
        if !slice.ports.iter().flatten().any(|p| p.name.clone().unwrap_or_default() == port_name) {
            continue;
        }
        for e in &slice.endpoints {
            let c = e.conditions.clone().unwrap_or_default();
            if c.ready.unwrap_or(true) {
                ready.extend(e.addresses.iter().cloned());
                ready_here += usize::from(e.node_name.as_deref() == Some(inputs.node_name()));
            } else if c.terminating.unwrap_or(false) {
                terminating += 1;
            } else {
                not_ready += 1;
            }
        }
    }
    if ready.is_empty() && !slices.is_empty() {
        find(format!("port {shown}: no ready endpoint ({not_ready} not ready, {terminating} terminating): connections are refused"), "check the pods' readiness probes and logs");
    }
    let local_policy = spec.external_traffic_policy.as_deref() == Some("Local") && matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
    if local_policy && !ready.is_empty() && ready_here == 0 {
        find(
            format!("port {shown}: externalTrafficPolicy Local and no ready endpoint on {}: external traffic to this node is dropped", inputs.node_name()),
            "expected on nodes without its pods (load balancers skip them by the health-check NodePort); otherwise schedule a pod here or use the Cluster policy",
        );
    }
}

/// A NodePort that `nodePortAddresses` keeps off some or all of the
/// node's addresses.
fn node_port_findings(config: &ProxierConfig, port: &ServicePort, shown: &str, find: &mut impl FnMut(String, &'static str)) {
    let Some(np) = port.node_port.filter(|p| *p > 0) else { return };
    if config.node_ports_on_every_address {
        return;
    }
    let fix = "widen nodePortAddresses (--nodeport-addresses) to a range holding the address, or send to an address it names";
    let served: Vec<String> = config.node_port_ips.iter().map(ToString::to_string).collect();
    if served.is_empty() {
        find(format!("port {shown}: NodePort {np} is served on no {} address of this node: nodePortAddresses matches none of them", config.family), fix);
        return;
    }
    for ip in config.node_ips.iter().filter(|ip| !config.node_port_ips.contains(ip)) {
        find(format!("port {shown}: NodePort {np} is not served on the node's address {ip}: nodePortAddresses leaves it out (served on {})", served.join(", ")), fix);
    }
}

/// The node's own configuration: a local-traffic detector that misses pod
/// addresses in use.
fn node_findings(inputs: &Inputs<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    let fix = "set clusterCIDR (--cluster-cidr) to cover every pod range, or pick another detectLocalMode (NodeCIDR, InterfaceNamePrefix, BridgeInterface)";
    for config in inputs.configs {
        let family = config.family;
        let (nets, what) = match &config.local_detector {
            LocalDetector::ClusterCidr(nets) => (nets.clone(), "clusterCIDR"),
            LocalDetector::NodeCidr(nets) => (nets.clone(), "the Node's podCIDRs"),
            LocalDetector::None => {
                out.push(Finding {
                    service: "node".into(),
                    what: format!("no local-traffic detector for {family} (detectLocalMode ClusterCIDR without a clusterCIDR of this family): pod traffic cannot be told from other traffic, so ClusterIP traffic from outside the cluster is not masqueraded and pods get no externalTrafficPolicy: Local short-cut"),
                    fix,
                });
                continue;
            }
            _ => continue,
        };
        let shown: Vec<String> = nets.iter().map(ToString::to_string).collect();
        let mut missed = BTreeSet::new();
        // The pods on this node are those whose traffic this node's rules
        // classify; endpoints elsewhere may be other nodes' host-network
        // pods (or no pods at all, like the API server's).
        for e in inputs.slices.iter().flat_map(|s| s.endpoints.iter()) {
            if e.node_name.as_deref() != Some(inputs.node_name()) {
                continue;
            }
            for ip in e.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()).filter(|ip| family.contains(*ip)) {
                if !nets.iter().any(|n| n.contains(&ip)) && !config.node_ips.contains(&ip) {
                    missed.insert(ip);
                }
            }
        }
        if !missed.is_empty() {
            let list: Vec<String> = missed.iter().map(ToString::to_string).collect();
            out.push(Finding {
                service: "node".into(),
                what: format!(
                    "the local-traffic detector ({what} {}) does not cover the pod addresses {}: their traffic to Services is taken as from outside the cluster (masqueraded, and externalTrafficPolicy: Local applies to it)",
                    if shown.is_empty() { "none".to_string() } else { shown.join(", ") },
                    list.join(", ")
                ),
                fix,
            });
        }
    }
    out
}
