//! The ipsets and the small iptables ruleset of IPVS mode, in upstream's
//! layout, with the iptables backend's typed rules
//! (`kproxy_backend_iptables::rule`): masquerade marks for ClusterIP
//! traffic from outside the pod network, for externalIPs and
//! LoadBalancer VIPs and NodePorts with Cluster policy, and for hairpin
//! connections; LoadBalancer source ranges; health-check NodePorts.
//!
//! IPVS itself does the load balancing (see [`crate::render`]); these rules
//! only decide masquerade and filtering around it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use kproxy_backend_iptables::kernel::Listing;
use kproxy_backend_iptables::render::{local_match, Chains, Jump, Table};
use kproxy_backend_iptables::restore;
use kproxy_backend_iptables::rule::{CtState, Match, Rule, Target};
use kproxy_core::{Endpoint, IpFamily, Protocol, ProxierConfig, ProxyState, ServicePortInfo, SourceRanges};

use crate::render::port_addresses;

use crate::sets::{all_sets, Entry, SetName, Sets};

/// nat `KUBE-SERVICES`, jumped to from PREROUTING and OUTPUT.
pub const SERVICES: &str = "KUBE-SERVICES";
/// nat `KUBE-POSTROUTING`.
pub const POSTROUTING: &str = "KUBE-POSTROUTING";
/// nat `KUBE-MARK-MASQ`.
pub const MARK_MASQ: &str = "KUBE-MARK-MASQ";
/// nat `KUBE-LOAD-BALANCER`.
pub const LOAD_BALANCER: &str = "KUBE-LOAD-BALANCER";
/// nat and filter `KUBE-NODE-PORT`.
pub const NODE_PORT: &str = "KUBE-NODE-PORT";
/// filter `KUBE-IPVS-FILTER`: other ports of bound addresses are rejected.
pub const IPVS_FILTER: &str = "KUBE-IPVS-FILTER";
/// filter `KUBE-IPVS-OUT-FILTER`: the node's own connections to
/// LoadBalancer VIPs whose source ranges leave the node out.
pub const IPVS_OUT_FILTER: &str = "KUBE-IPVS-OUT-FILTER";
/// filter `KUBE-PROXY-FIREWALL`, jumped to from INPUT and FORWARD.
pub const PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
/// filter `KUBE-SOURCE-RANGES-FIREWALL`.
pub const SOURCE_RANGES_FIREWALL: &str = "KUBE-SOURCE-RANGES-FIREWALL";
/// filter `KUBE-FORWARD`.
pub const FORWARD: &str = "KUBE-FORWARD";

/// The jumps from built-in chains, in the order they end up, with
/// upstream's comments.
pub fn jumps() -> Vec<Jump> {
    let j = Jump::new;
    vec![
        j(Table::Nat, "PREROUTING", SERVICES, "kubernetes service portals"),
        j(Table::Nat, "OUTPUT", SERVICES, "kubernetes service portals"),
        j(Table::Nat, "POSTROUTING", POSTROUTING, "kubernetes postrouting rules"),
        j(Table::Filter, "INPUT", IPVS_FILTER, "kubernetes ipvs access filter"),
        j(Table::Filter, "INPUT", PROXY_FIREWALL, "kube-proxy firewall rules"),
        j(Table::Filter, "INPUT", NODE_PORT, "kubernetes health check rules"),
        j(Table::Filter, "FORWARD", PROXY_FIREWALL, "kube-proxy firewall rules"),
        j(Table::Filter, "FORWARD", FORWARD, "kubernetes forwarding rules"),
        j(Table::Filter, "OUTPUT", IPVS_OUT_FILTER, "kubernetes ipvs access filter"),
    ]
}

/// Every set's entries for the applied state.
pub fn render_sets(state: &ProxyState, config: &ProxierConfig) -> Sets {
    let mut sets: Sets = all_sets().into_iter().map(|s| (s, Default::default())).collect();
    for (name, svc) in state.services().iter() {
        for (set, e) in port_entries(svc, state.endpoints().get(name), config) {
            sets.get_mut(&set).expect("every set is present").insert(e);
        }
    }
    sets
}

/// A LoadBalancer VIP:port the node itself may not reach: its source
/// ranges hold no node address.
pub type NodeBlock = (IpAddr, Protocol, u16);

/// One port's [`NodeBlock`]s (VIPs bound on the dummy interface only).
pub fn port_node_blocks(svc: &ServicePortInfo, config: &ProxierConfig) -> Vec<NodeBlock> {
    let SourceRanges::Only(nets) = &svc.source_ranges else {
        return Vec::new();
    };
    if config.node_ips.iter().any(|n| nets.iter().any(|net| net.contains(n))) {
        return Vec::new();
    }
    let bound = port_addresses(svc, config);
    svc.load_balancer_vips.iter().filter(|ip| bound.contains(ip)).map(|ip| (*ip, svc.protocol, svc.port)).collect()
}

/// `KUBE-IPVS-OUT-FILTER`'s rules, as upstream writes them: IPVS takes the
/// node's connections at LOCAL_OUT, before filter OUTPUT, so the original
/// destination is matched with `-m ipvs`; the node reaches a local VIP
/// from the VIP itself.
pub fn out_filter_rules<'a>(blocks: impl IntoIterator<Item = &'a NodeBlock>) -> Vec<Rule> {
    blocks
        .into_iter()
        .map(|&(addr, protocol, port)| Rule::new(vec![Match::Source(ipnet::IpNet::from(addr), false), Match::IpvsVirtual { addr, protocol, port }], Target::Drop))
        .collect()
}

/// One service port's set entries (`endpoints` are its endpoints).
pub fn port_entries(svc: &ServicePortInfo, endpoints: &[Endpoint], config: &ProxierConfig) -> Vec<(SetName, Entry)> {
    let mut out = Vec::new();
    let mut add = |set: SetName, e: Entry| out.push((set, e));
    let p = svc.protocol;
    add(SetName::ClusterIp, Entry::IpPort(svc.cluster_ip, p, svc.port));
    // A local pod reaching itself through the service (hairpin).
    for e in endpoints.iter().filter(|e| e.is_local) {
        add(SetName::LoopBack, Entry::IpPortIp(e.ip, p, e.port, e.ip));
    }
    for &ip in &svc.external_ips {
        let set = if svc.external_policy_local { SetName::ExternalIpLocal } else { SetName::ExternalIp };
        add(set, Entry::IpPort(ip, p, svc.port));
    }
    for &ip in &svc.load_balancer_vips {
        add(SetName::LoadBalancer, Entry::IpPort(ip, p, svc.port));
        if svc.external_policy_local {
            add(SetName::LoadBalancerLocal, Entry::IpPort(ip, p, svc.port));
        }
        if let SourceRanges::Only(nets) = &svc.source_ranges {
            add(SetName::LoadBalancerFw, Entry::IpPort(ip, p, svc.port));
            for net in nets {
                add(SetName::LoadBalancerSourceCidr, Entry::IpPortNet(ip, p, svc.port, *net));
            }
            // When a range holds the node, the node reaching the VIP bound
            // on its own dummy interface (sourced from the VIP) is allowed.
            if config.node_ips.iter().any(|n| nets.iter().any(|net| net.contains(n))) {
                add(SetName::LoadBalancerSourceIp, Entry::IpPortIp(ip, p, svc.port, ip));
            }
        }
    }
    if let Some(node_port) = svc.node_port {
        let entries: Vec<Entry> = if p == Protocol::Sctp {
            config.node_port_ips.iter().map(|&ip| Entry::IpPort(ip, p, node_port)).collect()
        } else {
            vec![Entry::Port(node_port)]
        };
        for e in entries {
            if svc.external_policy_local {
                add(SetName::NodePortLocal(p), e.clone());
            }
            add(SetName::NodePort(p), e);
        }
    }
    if let Some(hc) = svc.health_check_node_port {
        add(SetName::HealthCheckNodePort, Entry::Port(hc));
    }
    for ip in port_addresses(svc, config) {
        add(SetName::IpvsIps, Entry::Ip(ip));
    }
    out
}

fn set(name: SetName, family: IpFamily) -> Match {
    set_with(name, family, name.match_flags())
}

fn set_with(name: SetName, family: IpFamily, flags: &str) -> Match {
    Match::Set { name: name.name(family), flags: flags.to_string(), negated: false }
}

fn comment(text: &str) -> Match {
    Match::Comment(text.to_string())
}

/// The nat and filter chains for `config`, in upstream's layout (their
/// contents do not depend on the Services: the sets carry those).
pub fn render_chains(config: &ProxierConfig) -> (Chains, Chains) {
    let f = config.family;
    let mark = config.masquerade_mark();
    let masq = || Target::Jump(MARK_MASQ.to_string());
    let loopback: ipnet::IpNet = match f {
        IpFamily::V4 => "127.0.0.0/8".parse().expect("literal"),
        IpFamily::V6 => "::1/128".parse().expect("literal"),
    };
    let mut nat: Chains = BTreeMap::new();
    let cluster = || vec![comment("Kubernetes service cluster ip + port for masquerade purpose"), set(SetName::ClusterIp, f)];
    let external = || vec![comment("Kubernetes service external ip + port for masquerade and filter purpose"), set(SetName::ExternalIp, f)];
    let external_local = || vec![comment("Kubernetes service external ip + port with externalTrafficPolicy=local"), set(SetName::ExternalIpLocal, f)];
    let mut services = vec![
        Rule::new(vec![Match::Source(loopback, false)], Target::Return),
        Rule::new(vec![comment("Kubernetes service lb portal"), set(SetName::LoadBalancer, f)], Target::Jump(LOAD_BALANCER.into())),
    ];
    if config.masquerade_all {
        services.push(Rule::new(cluster(), masq()));
    } else if let Some(not_local) = local_match(&config.local_detector, false) {
        services.push(Rule::new([cluster(), vec![not_local]].concat(), masq()));
    } else {
        // Without a detector: node traffic sourced from a VIP (the dummy
        // interface makes it the preferred source) to that VIP's port.
        let m = vec![comment("Kubernetes service cluster ip + port for masquerade purpose"), set_with(SetName::ClusterIp, f, "src,dst")];
        services.push(Rule::new(m, masq()));
    }
    services.push(Rule::new(external(), masq()));
    services.push(Rule::new([external(), vec![Match::DestinationLocal(false)]].concat(), Target::Accept));
    services.push(Rule::new([external_local(), vec![Match::DestinationLocal(false)]].concat(), Target::Accept));
    services.push(Rule::new(vec![Match::DestinationLocal(false)], Target::Jump(NODE_PORT.into())));
    services.push(Rule::new(vec![set(SetName::ClusterIp, f)], Target::Accept));
    services.push(Rule::new(vec![set(SetName::LoadBalancer, f)], Target::Accept));
    nat.insert(SERVICES.into(), services);
    nat.insert(
        LOAD_BALANCER.into(),
        vec![
            Rule::new(vec![comment("Kubernetes service load balancer ip + port with externalTrafficPolicy=local"), set(SetName::LoadBalancerLocal, f)], Target::Return),
            Rule::new(vec![], masq()),
        ],
    );
    let mut node_port = Vec::new();
    for p in Protocol::ALL {
        node_port.push(Rule::new(vec![Match::Protocol(p), set(SetName::NodePortLocal(p), f)], Target::Return));
        node_port.push(Rule::new(vec![Match::Protocol(p), set(SetName::NodePort(p), f)], masq()));
    }
    nat.insert(NODE_PORT.into(), node_port);
    nat.insert(
        POSTROUTING.into(),
        vec![
            Rule::new(vec![comment("Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"), set(SetName::LoopBack, f)], Target::Masquerade),
            Rule::new(vec![Match::Mark(mark, true)], Target::Return),
            Rule::new(vec![], Target::XorMark(mark)),
            Rule::new(vec![comment("kubernetes service traffic requiring SNAT")], Target::Masquerade),
        ],
    );
    nat.insert(MARK_MASQ.into(), vec![Rule::new(vec![], Target::OrMark(mark))]);

    let mut filter: Chains = BTreeMap::new();
    let mut ipvs_filter: Vec<Rule> = [SetName::LoadBalancer, SetName::ClusterIp, SetName::ExternalIp, SetName::ExternalIpLocal, SetName::HealthCheckNodePort]
        .into_iter()
        .map(|s| Rule::new(vec![set(s, f)], Target::Return))
        .collect();
    ipvs_filter.push(Rule::new(vec![Match::CtState(vec![CtState::New], false), set(SetName::IpvsIps, f)], Target::Reject));
    filter.insert(IPVS_FILTER.into(), ipvs_filter);
    // Filled per sync from the Services (see `out_filter_rules`).
    filter.insert(IPVS_OUT_FILTER.into(), Vec::new());
    filter.insert(
        PROXY_FIREWALL.into(),
        vec![Rule::new(vec![comment("Kubernetes service load balancer ip + port for load balancer with sourceRange"), set(SetName::LoadBalancerFw, f)], Target::Jump(SOURCE_RANGES_FIREWALL.into()))],
    );
    filter.insert(
        SOURCE_RANGES_FIREWALL.into(),
        vec![
            Rule::new(vec![set(SetName::LoadBalancerSourceCidr, f)], Target::Return),
            Rule::new(vec![set(SetName::LoadBalancerSourceIp, f)], Target::Return),
            Rule::new(vec![], Target::Drop),
        ],
    );
    filter.insert(
        NODE_PORT.into(),
        vec![Rule::new(vec![comment("Kubernetes health check node port"), set(SetName::HealthCheckNodePort, f)], Target::Accept)],
    );
    filter.insert(
        FORWARD.into(),
        vec![
            Rule::new(vec![comment("kubernetes forwarding rules"), Match::Mark(mark, false)], Target::Accept),
            Rule::new(vec![comment("kubernetes forwarding conntrack rule"), Match::CtState(vec![CtState::Related, CtState::Established], false)], Target::Accept),
        ],
    );
    (nat, filter)
}

/// The `iptables-restore --noflush` input that writes `nat` and `filter`
/// (each chain declared, hence emptied, then filled) and inserts the jumps
/// of [`jumps`] that `present` (the built-in chains as listed) lacks.
pub fn restore_text(nat: &Chains, filter: &Chains, present: &Listing) -> String {
    let missing: Vec<Jump> = jumps().into_iter().filter(|j| !present.has(j)).collect();
    restore::chains(&[(Table::Nat, nat), (Table::Filter, filter)], &missing)
}

/// The names of the chains IPVS mode writes (in kproxy as in upstream
/// kube-proxy), in either table.
pub fn chain_names() -> BTreeSet<String> {
    let (nat, filter) = render_chains(&ProxierConfig::new(IpFamily::V4));
    nat.into_keys().chain(filter.into_keys()).collect()
}

/// The `iptables-restore --noflush` input that removes this ruleset from
/// tables listed as `saved`: the jumps to its chains, then the chains,
/// except those `keep` names (chains iptables mode writes too, when it
/// now serves in the same flavour).
pub fn cleanup_text(saved: &[(Table, Listing)], keep: &dyn Fn(&str) -> bool) -> String {
    let ours = chain_names();
    restore::cleanup_chains(saved, |c| ours.contains(c) && !keep(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kproxy_oracle::fixtures as fx;

    #[test]
    fn the_ruleset_reads_back_and_only_missing_jumps_are_inserted() {
        let config = fx::config(IpFamily::V4);
        let (nat, filter) = render_chains(&config);
        let present = Listing { builtin_rules: vec!["-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".to_string()], ..Listing::default() };
        let text = restore_text(&nat, &filter, &present);
        assert!(!text.contains("-I PREROUTING"), "{text}");
        assert!(text.contains("-I OUTPUT 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"), "{text}");
        assert!(text.contains("-A KUBE-SERVICES -m comment --comment \"Kubernetes service lb portal\" -m set --match-set KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER\n"), "{text}");
        // Every rule parses back as the typed rule it came from.
        let blocks = [("1.2.3.4".parse().unwrap(), Protocol::Tcp, 80), ("fd00::5".parse().unwrap(), Protocol::Sctp, 9)];
        let out = out_filter_rules(&blocks);
        assert_eq!(out[0].args(), "-s 1.2.3.4 -m ipvs --vaddr 1.2.3.4/32 --vproto tcp --vport 80 -j DROP");
        assert_eq!(&Rule::parse(&out[1].args(), IpFamily::V6).unwrap(), &out[1]);
        for chains in [&nat, &filter] {
            for rule in chains.values().flatten() {
                assert_eq!(&Rule::parse(&rule.args(), IpFamily::V4).unwrap(), rule);
            }
        }
    }
}
