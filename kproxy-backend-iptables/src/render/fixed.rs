//! The chains every node has whatever its Services, and the jumps into
//! them from the built-in chains (upstream's `iptablesJumpChains`).

use kproxy_core::{IpFamily, ProxierConfig};

use super::service::node_port_destinations;
use super::Chains;
use crate::names::*;
use crate::rule::{CtState, Match, Rule, Target};

/// An iptables table kproxy writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// `nat`.
    Nat,
    /// `filter`.
    Filter,
}

impl Table {
    /// Both, in the order a restore writes them.
    pub const ALL: [Table; 2] = [Table::Filter, Table::Nat];

    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Nat => "nat",
            Table::Filter => "filter",
        }
    }

    /// The table's built-in chains.
    pub fn builtins(self) -> &'static [&'static str] {
        match self {
            Table::Nat => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
            Table::Filter => &["INPUT", "FORWARD", "OUTPUT"],
        }
    }
}

/// A rule kproxy keeps at the top of a built-in chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Jump {
    /// The table.
    pub table: Table,
    /// The built-in chain.
    pub from: &'static str,
    /// The rule (a jump to a kproxy chain).
    pub rule: Rule,
}

impl Jump {
    /// `-A FROM [-m comment --comment COMMENT] -j TO` in `table`.
    pub fn new(table: Table, from: &'static str, to: &str, comment: &str) -> Jump {
        jump(table, from, to, comment, false)
    }
}

fn jump(table: Table, from: &'static str, to: &str, comment: &str, new_only: bool) -> Jump {
    let mut matches = Vec::new();
    if new_only {
        matches.push(Match::CtState(vec![CtState::New], false));
    }
    if !comment.is_empty() {
        matches.push(Match::Comment(comment.to_string()));
    }
    Jump { table, from, rule: Rule::new(matches, Target::Jump(to.to_string())) }
}

/// The jumps from built-in chains, in the order they end up (each is
/// inserted at the top, so upstream's list is written last first).
pub fn jumps() -> Vec<Jump> {
    jumps_for(false)
}

/// [`jumps`], plus the jumps to `KUBE-FIREWALL` when localhost NodePorts
/// are on.
pub fn jumps_for(localhost_node_ports: bool) -> Vec<Jump> {
    let mut out = Vec::new();
    if localhost_node_ports {
        out.push(jump(Table::Filter, "INPUT", FIREWALL, "", false));
        out.push(jump(Table::Filter, "OUTPUT", FIREWALL, "", false));
    }
    out.extend([
        jump(Table::Filter, "INPUT", PROXY_FIREWALL, "kubernetes load balancer firewall", true),
        jump(Table::Filter, "INPUT", NODEPORTS, "kubernetes health check service ports", false),
        jump(Table::Filter, "INPUT", EXTERNAL_SERVICES, "kubernetes externally-visible service portals", true),
        jump(Table::Filter, "FORWARD", PROXY_FIREWALL, "kubernetes load balancer firewall", true),
        jump(Table::Filter, "FORWARD", FORWARD, "kubernetes forwarding rules", false),
        jump(Table::Filter, "FORWARD", SERVICES, "kubernetes service portals", true),
        jump(Table::Filter, "FORWARD", EXTERNAL_SERVICES, "kubernetes externally-visible service portals", true),
        jump(Table::Filter, "OUTPUT", PROXY_FIREWALL, "kubernetes load balancer firewall", true),
        jump(Table::Filter, "OUTPUT", SERVICES, "kubernetes service portals", true),
        jump(Table::Nat, "PREROUTING", SERVICES, "kubernetes service portals", false),
        jump(Table::Nat, "OUTPUT", SERVICES, "kubernetes service portals", false),
        jump(Table::Nat, "POSTROUTING", POSTROUTING, "kubernetes postrouting rules", false),
    ]);
    out
}

/// The loopback network of `config`'s family.
fn loopback(config: &ProxierConfig) -> ipnet::IpNet {
    match config.family {
        IpFamily::V4 => "127.0.0.0/8".parse().expect("literal"),
        IpFamily::V6 => "::1/128".parse().expect("literal"),
    }
}

/// The node settings, beyond [`ProxierConfig`], that shape the fixed
/// chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FixedOptions {
    /// Serve NodePorts on 127.0.0.1 too (IPv4 only), with upstream's
    /// localnet safeguard; otherwise loopback is excluded.
    pub localhost_node_ports: bool,
    /// conntrack accepts out-of-window TCP packets
    /// (`nf_conntrack_tcp_be_liberal`): then, as upstream, forwarded
    /// packets conntrack calls INVALID are not dropped.
    pub tcp_be_liberal: bool,
    /// upstream's nfacct counters exist: the INVALID drop and localhost
    /// NodePorts count into them, as upstream's rules do.
    pub nfacct: bool,
}

/// The fixed chains of the nat and filter tables with their fixed rules.
/// The shared chains' port rules are inserted before these rules.
pub fn fixed_chains(config: &ProxierConfig, options: FixedOptions) -> (Chains, Chains) {
    let mark = config.masquerade_mark();
    let localhost = options.localhost_node_ports && config.family == IpFamily::V4;
    let mut nat = Chains::new();
    let mut destinations = node_port_destinations(config);
    if localhost && !config.node_ports_on_every_address {
        // The ranges hold 127.0.0.0/8 (localhost NodePorts are on only
        // then): upstream serves the loopback address they match.
        destinations.push(Match::Destination(std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST).into(), false));
    }
    let nodeports_jump = destinations
        .into_iter()
        .map(|dst| {
            let mut m = vec![Match::Comment("kubernetes service nodeports; NOTE: this must be the last rule in this chain".into())];
            let by_type = matches!(dst, Match::DestinationLocal(_));
            m.push(dst);
            if by_type && !localhost {
                m.push(Match::Destination(loopback(config), true));
            }
            Rule::new(m, Target::Jump(NODEPORTS.into()))
        })
        .collect();
    nat.insert(SERVICES.into(), nodeports_jump);
    nat.insert(NODEPORTS.into(), Vec::new());
    nat.insert(
        POSTROUTING.into(),
        vec![
            Rule::new(vec![Match::Mark(mark, true)], Target::Return),
            Rule::new(vec![], Target::XorMark(mark)),
            Rule::new(vec![Match::Comment("kubernetes service traffic requiring SNAT".into())], Target::Masquerade),
        ],
    );
    nat.insert(MARK_MASQ.into(), vec![Rule::new(vec![], Target::OrMark(mark))]);
    nat.insert(CANARY.into(), Vec::new());

    let mut filter = Chains::new();
    for chain in [SERVICES, EXTERNAL_SERVICES, NODEPORTS, PROXY_FIREWALL, CANARY] {
        filter.insert(chain.into(), Vec::new());
    }
    if localhost {
        // CVE-2020-8558: with route_localnet on, nothing from outside may
        // reach 127.0.0.0/8 unless a NodePort rewrote it.
        let lo = loopback(config);
        filter.insert(
            FIREWALL.into(),
            vec![Rule::new(
                vec![
                    Match::Comment("block incoming localnet connections".into()),
                    Match::Destination(lo, false),
                    Match::Source(lo, true),
                    Match::CtState(vec![CtState::Related, CtState::Established, CtState::Dnat], true),
                ],
                Target::Drop,
            )],
        );
    }
    let mut forward = Vec::new();
    if !options.tcp_be_liberal {
        // An out-of-window packet would otherwise reset a connection
        // (kubernetes/kubernetes#74839).
        let mut matches = vec![Match::CtState(vec![CtState::Invalid], false)];
        if options.nfacct {
            matches.push(Match::Nfacct(crate::names::NFACCT_INVALID_DROPPED.into()));
        }
        forward.push(Rule::new(matches, Target::Drop));
    }
    forward.extend([
        Rule::new(vec![Match::Comment("kubernetes forwarding rules".into()), Match::Mark(mark, false)], Target::Accept),
        Rule::new(
            vec![Match::Comment("kubernetes forwarding conntrack rule".into()), Match::CtState(vec![CtState::Related, CtState::Established], false)],
            Target::Accept,
        ),
    ]);
    filter.insert(FORWARD.into(), forward);
    (nat, filter)
}
