//! The chains every node has whatever its Services, and the jumps into
//! them from the built-in chains (upstream's `iptablesJumpChains`).

use kproxy_core::ProxierConfig;

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

fn jump(table: Table, from: &'static str, to: &str, comment: &str, new_only: bool) -> Jump {
    let mut matches = Vec::new();
    if new_only {
        matches.push(Match::CtState(vec![CtState::New], false));
    }
    matches.push(Match::Comment(comment.to_string()));
    Jump { table, from, rule: Rule::new(matches, Target::Jump(to.to_string())) }
}

/// The jumps from built-in chains, in the order they end up (each is
/// inserted at the top, so upstream's list is written last first).
pub fn jumps() -> Vec<Jump> {
    vec![
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
    ]
}

/// The fixed chains of the nat and filter tables with their fixed rules.
/// The shared chains' port rules are inserted before these rules.
pub fn fixed_chains(config: &ProxierConfig) -> (Chains, Chains) {
    let mark = config.masquerade_mark();
    let mut nat = Chains::new();
    let nodeports_jump = node_port_destinations(config)
        .into_iter()
        .map(|dst| {
            Rule::new(
                vec![Match::Comment("kubernetes service nodeports; NOTE: this must be the last rule in this chain".into()), dst],
                Target::Jump(NODEPORTS.into()),
            )
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
    filter.insert(
        FORWARD.into(),
        vec![
            Rule::new(vec![Match::CtState(vec![CtState::Invalid], false)], Target::Drop),
            Rule::new(vec![Match::Comment("kubernetes forwarding rules".into()), Match::Mark(mark, false)], Target::Accept),
            Rule::new(
                vec![Match::Comment("kubernetes forwarding conntrack rule".into()), Match::CtState(vec![CtState::Related, CtState::Established], false)],
                Target::Accept,
            ),
        ],
    );
    (nat, filter)
}
