//! What one service port contributes: its own chains (`KUBE-SVC-`,
//! `KUBE-SVL-`, `KUBE-EXT-`, `KUBE-FW-`, `KUBE-SEP-`) and its rules in
//! the shared chains, with upstream's layout and semantics.

use ipnet::IpNet;
use kproxy_core::{select_endpoints, Endpoint, LocalDetector, NodeInfo, ProxierConfig, ServicePortInfo, ServicePortName};

use crate::names;
use crate::rule::{probability, Match, Rule, Target};

/// The chains and shared-chain rules of one service port.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServiceRules {
    /// The port's own nat chains, in creation order, with their rules.
    pub chains: Vec<(String, Vec<Rule>)>,
    /// Rules in nat `KUBE-SERVICES`.
    pub nat_services: Vec<Rule>,
    /// Rules in nat `KUBE-NODEPORTS`.
    pub nat_nodeports: Vec<Rule>,
    /// Rules in filter `KUBE-SERVICES` (no-endpoint REJECT/DROP).
    pub filter_services: Vec<Rule>,
    /// Rules in filter `KUBE-EXTERNAL-SERVICES`.
    pub filter_external: Vec<Rule>,
    /// Rules in filter `KUBE-PROXY-FIREWALL`.
    pub filter_firewall: Vec<Rule>,
    /// Rules in filter `KUBE-NODEPORTS` (the health-check NodePort).
    pub filter_nodeports: Vec<Rule>,
    /// `internalTrafficPolicy: Local` with endpoints, none on this node.
    pub no_local_internal: bool,
    /// `externalTrafficPolicy: Local` with endpoints, none on this node.
    pub no_local_external: bool,
}

/// The match that says "from this node's pods" (`local == true`) or "not
/// from this node's pods"; None without a usable detector.
pub fn local_match(detector: &LocalDetector, local: bool) -> Option<Match> {
    let negated = !local;
    match detector {
        LocalDetector::None => None,
        LocalDetector::ClusterCidr(nets) | LocalDetector::NodeCidr(nets) => nets.first().map(|n| Match::Source(*n, negated)),
        LocalDetector::BridgeInterface(i) if !i.is_empty() => Some(Match::InInterface(i.clone(), negated)),
        LocalDetector::InterfaceNamePrefix(p) if !p.is_empty() => Some(Match::InInterface(format!("{p}+"), negated)),
        _ => None,
    }
}

fn comment(text: String) -> Match {
    Match::Comment(text)
}

fn host(ip: std::net::IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// `-p PROTO -m PROTO -d IP --dport PORT`.
fn to(info: &ServicePortInfo, ip: std::net::IpAddr, port: u16) -> [Match; 3] {
    [Match::Protocol(info.protocol), Match::Destination(host(ip), false), Match::DestinationPort(port)]
}

fn with(mut head: Vec<Match>, rest: impl IntoIterator<Item = Match>) -> Vec<Match> {
    head.extend(rest);
    head
}

/// The rules of a `KUBE-SVC-`/`KUBE-SVL-` chain: affinity checks, then one
/// jump per endpoint with upstream's probabilities.
fn balance(name: &ServicePortName, info: &ServicePortInfo, endpoints: &[Endpoint], v6: bool) -> Vec<Rule> {
    let mut rules = Vec::new();
    if let Some(seconds) = info.affinity_timeout_seconds {
        for ep in endpoints {
            let sep = names::endpoint_chain(name, ep);
            rules.push(Rule::new(
                vec![comment(format!("{name} -> {}", ep.addr())), Match::RecentCheck { name: sep.clone(), seconds, v6 }],
                Target::Jump(sep),
            ));
        }
    }
    let n = endpoints.len();
    for (i, ep) in endpoints.iter().enumerate() {
        let mut m = vec![comment(format!("{name} -> {}", ep.addr()))];
        if i + 1 < n {
            m.push(Match::Probability(probability(i, n)));
        }
        rules.push(Rule::new(m, Target::Jump(names::endpoint_chain(name, ep))));
    }
    rules
}

/// Renders one service port for `config` on `node`.
pub fn render_port(name: &ServicePortName, info: &ServicePortInfo, endpoints: &[Endpoint], node: &NodeInfo, config: &ProxierConfig) -> ServiceRules {
    let v6 = config.family == kproxy_core::IpFamily::V6;
    let selected = select_endpoints(endpoints, info, node);
    let mut out = ServiceRules::default();
    let (svc, svl, ext, fw) = (names::service_chain(name), names::local_chain(name), names::external_chain(name), names::firewall_chain(name));
    let has_any = selected.has_any;
    let internal_chain = if info.internal_policy_local { &svl } else { &svc };
    let has_internal = if info.internal_policy_local { !selected.local.is_empty() } else { !selected.cluster.is_empty() };
    let external_policy_chain = if info.external_policy_local { &svl } else { &svc };
    let has_external = if info.external_policy_local { !selected.local.is_empty() } else { !selected.cluster.is_empty() };
    let uses_fw = has_any && info.source_ranges.is_restricted() && !info.load_balancer_vips.is_empty();
    let external = info.externally_accessible();
    out.no_local_internal = info.internal_policy_local && has_any && !has_internal;
    out.no_local_external = external && info.external_policy_local && has_any && !has_external;

    // The filter target for traffic no endpoint can take.
    let (internal_filter, external_filter) = if !has_any {
        let why = format!("{name} has no endpoints");
        (Some((Target::Reject, why.clone())), Some((Target::Reject, why)))
    } else {
        let why = format!("{name} has no local endpoints");
        ((!has_internal).then(|| (Target::Drop, why.clone())), (!has_external).then_some((Target::Drop, why)))
    };

    // The port's own chains.
    if has_any && info.uses_cluster_endpoints() {
        let mut rules = Vec::new();
        if !info.internal_policy_local {
            rules.extend(masquerade_rule(name, info, config));
        }
        rules.extend(balance(name, info, &selected.cluster, v6));
        out.chains.push((svc.clone(), rules));
    }
    if has_any && info.uses_local_endpoints() {
        let mut rules = Vec::new();
        if info.internal_policy_local {
            rules.extend(masquerade_rule(name, info, config));
        }
        rules.extend(balance(name, info, &selected.local, v6));
        out.chains.push((svl.clone(), rules));
    }
    if has_any && external {
        let mut rules = Vec::new();
        if !info.external_policy_local {
            rules.push(Rule::new(vec![comment(format!("masquerade traffic for {name} external destinations"))], Target::Jump(names::MARK_MASQ.into())));
        } else {
            if let Some(m) = local_match(&config.local_detector, true) {
                rules.push(Rule::new(vec![comment(format!("pod traffic for {name} external destinations")), m], Target::Jump(svc.clone())));
            }
            rules.push(Rule::new(
                vec![comment(format!("masquerade LOCAL traffic for {name} external destinations")), Match::SourceLocal(false)],
                Target::Jump(names::MARK_MASQ.into()),
            ));
            rules.push(Rule::new(
                vec![comment(format!("route LOCAL traffic for {name} external destinations")), Match::SourceLocal(false)],
                Target::Jump(svc.clone()),
            ));
        }
        if has_external {
            rules.push(Rule::new(vec![], Target::Jump(external_policy_chain.clone())));
        }
        out.chains.push((ext.clone(), rules));
    }
    if uses_fw {
        let mut rules = Vec::new();
        let ranges = info.source_ranges.networks();
        for net in ranges {
            rules.push(Rule::new(vec![comment(format!("{name} loadbalancer IP")), Match::Source(*net, false)], Target::Jump(ext.clone())));
        }
        // A node reaching a VIP bound on itself sends from the VIP.
        if ranges.iter().any(|n| config.node_ips.iter().any(|ip| n.contains(ip))) {
            for vip in &info.load_balancer_vips {
                rules.push(Rule::new(vec![comment(format!("{name} loadbalancer IP")), Match::Source(host(*vip), false)], Target::Jump(ext.clone())));
            }
        }
        out.chains.push((fw.clone(), rules));
    }
    for ep in selected.all_reachable() {
        let sep = names::endpoint_chain(name, &ep);
        let mut dnat = vec![comment(name.to_string()), Match::Protocol(info.protocol)];
        if info.affinity_timeout_seconds.is_some() {
            dnat.push(Match::RecentSet { name: sep.clone(), v6 });
        }
        let rules = vec![
            Rule::new(vec![comment(name.to_string()), Match::Source(host(ep.ip), false)], Target::Jump(names::MARK_MASQ.into())),
            Rule::new(dnat, Target::Dnat(ep.addr())),
        ];
        out.chains.push((sep, rules));
    }

    // ClusterIP.
    let cluster_ip = to(info, info.cluster_ip, info.port);
    if has_internal {
        out.nat_services.push(Rule::new(with(vec![comment(format!("{name} cluster IP"))], cluster_ip.clone()), Target::Jump(internal_chain.clone())));
    } else if let Some((target, why)) = &internal_filter {
        out.filter_services.push(Rule::new(with(vec![comment(why.clone())], cluster_ip.clone()), target.clone()));
    }
    // externalIPs and LoadBalancer VIPs.
    for ip in &info.external_ips {
        if has_any {
            out.nat_services.push(Rule::new(with(vec![comment(format!("{name} external IP"))], to(info, *ip, info.port)), Target::Jump(ext.clone())));
        }
        if let Some((target, why)) = &external_filter {
            out.filter_external.push(Rule::new(with(vec![comment(why.clone())], to(info, *ip, info.port)), target.clone()));
        }
    }
    for vip in &info.load_balancer_vips {
        if has_any {
            let chain = if uses_fw { &fw } else { &ext };
            out.nat_services.push(Rule::new(with(vec![comment(format!("{name} loadbalancer IP"))], to(info, *vip, info.port)), Target::Jump(chain.clone())));
        }
        if uses_fw {
            out.filter_firewall.push(Rule::new(with(vec![comment(format!("{name} traffic not accepted by {fw}"))], to(info, *vip, info.port)), Target::Drop));
        }
        if let Some((target, why)) = &external_filter {
            out.filter_external.push(Rule::new(with(vec![comment(why.clone())], to(info, *vip, info.port)), target.clone()));
        }
    }
    // NodePort.
    if let Some(np) = info.node_port {
        if has_any {
            out.nat_nodeports.push(Rule::new(vec![comment(name.to_string()), Match::Protocol(info.protocol), Match::DestinationPort(np)], Target::Jump(ext.clone())));
        }
        if let Some((target, why)) = &external_filter {
            for dst in node_port_destinations(config) {
                out.filter_external.push(Rule::new(
                    with(vec![comment(why.clone()), dst], [Match::Protocol(info.protocol), Match::DestinationPort(np)]),
                    target.clone(),
                ));
            }
        }
    }
    if let Some(hc) = info.health_check_node_port {
        out.filter_nodeports.push(Rule::new(
            vec![comment(format!("{} health check node port", name.service)), Match::Protocol(kproxy_core::Protocol::Tcp), Match::DestinationPort(hc)],
            Target::Accept,
        ));
    }
    out
}

/// The masquerade rule at the head of the internal-traffic chain:
/// everything with masqueradeAll, else what the detector says is not from
/// a local pod; nothing without a detector.
fn masquerade_rule(name: &ServicePortName, info: &ServicePortInfo, config: &ProxierConfig) -> Option<Rule> {
    let head = with(vec![comment(format!("{name} cluster IP"))], to(info, info.cluster_ip, info.port));
    if config.masquerade_all {
        return Some(Rule::new(head, Target::Jump(names::MARK_MASQ.into())));
    }
    let not_local = local_match(&config.local_detector, false)?;
    Some(Rule::new(with(head, [not_local]), Target::Jump(names::MARK_MASQ.into())))
}

/// The destinations NodePorts are served on: every local address (by
/// address type), or each NodePort address, or none at all when
/// `nodePortAddresses` matched no address.
pub fn node_port_destinations(config: &ProxierConfig) -> Vec<Match> {
    if config.node_ports_on_every_address {
        vec![Match::DestinationLocal(false)]
    } else {
        config.node_port_ips.iter().map(|ip| Match::Destination(host(*ip), false)).collect()
    }
}
