//! The typed nftables ruleset kproxy generates: tables, chains, rules, sets,
//! maps and elements as plain data.

mod key;
mod rule;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use kproxy_core::{IpFamily, Protocol};

pub use key::{Key, Value};
pub use rule::{Expr, Match, Rule, Stmt};

/// A verdict, standalone or as a verdict-map value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
    /// `reject`.
    Reject,
    /// `return`.
    Return,
    /// `jump chain`.
    Jump(Cow<'static, str>),
    /// `goto chain`.
    Goto(Cow<'static, str>),
}

/// A base chain's hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// `prerouting`.
    Prerouting,
    /// `input`.
    Input,
    /// `forward`.
    Forward,
    /// `output`.
    Output,
    /// `postrouting`.
    Postrouting,
}

/// A base chain's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChainType {
    /// `filter`.
    Filter,
    /// `nat`.
    Nat,
}

/// What makes a chain a base chain: its type, hook and priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BaseChain {
    /// `filter` or `nat`.
    pub kind: ChainType,
    /// The hook.
    pub hook: Hook,
    /// The numeric priority (`dstnat` is -100, `srcnat` 100, `filter` 0).
    pub priority: i32,
}

/// A chain and its rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Chain {
    /// Set for base chains.
    pub base: Option<BaseChain>,
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

/// The shape of a set's or map's keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyShape {
    /// `addr`.
    Addr,
    /// `addr . addr`.
    AddrPair,
    /// `addr . proto . port`.
    Service,
    /// `proto . port`.
    Port,
    /// `addr . proto . port . numgen random mod N`, for one protocol.
    ServiceSlot(Protocol, u32),
    /// `proto . port . numgen random mod N`, for one protocol.
    PortSlot(Protocol, u32),
    /// `addr . proto . port . addr` with intervals.
    ServiceSource,
    /// `saddr . daddr . proto . port`, the affinity map key.
    Affinity,
}

/// What a set's elements map to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ValueShape {
    /// A plain set.
    None,
    /// A DNAT target map (`addr . port`).
    Target,
}

/// A set or map declaration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SetDecl {
    /// Key shape.
    pub key: KeyShape,
    /// Value shape.
    pub value: ValueShape,
    /// For dynamic maps updated from the packet path: the default timeout in
    /// seconds.
    pub dynamic_timeout: Option<u32>,
    /// The most elements the kernel keeps (dynamic maps only; without it nft
    /// caps a set updated from the packet path at 65535).
    pub max_elements: Option<u32>,
}

/// A set or map with its elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    /// The declaration.
    pub decl: SetDecl,
    /// The elements (value `None` in plain sets).
    pub elements: BTreeMap<Key, Option<Value>>,
}

impl Set {
    /// An empty set with this declaration.
    pub fn new(decl: SetDecl) -> Self {
        Set {
            decl,
            elements: BTreeMap::new(),
        }
    }
}

/// One table's worth of rules: what kproxy wants in the kernel for one IP
/// family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// The family (`ip` or `ip6` table).
    pub family: IpFamily,
    /// Chains by name.
    pub chains: BTreeMap<String, Chain>,
    /// Sets and maps by name.
    pub sets: BTreeMap<String, Set>,
}

impl Ruleset {
    /// An empty ruleset.
    pub fn new(family: IpFamily) -> Self {
        Ruleset {
            family,
            chains: BTreeMap::new(),
            sets: BTreeMap::new(),
        }
    }

    /// How many set and map elements the ruleset holds.
    pub fn element_count(&self) -> usize {
        self.sets.values().map(|s| s.elements.len()).sum()
    }

    /// The canonical form of a ruleset, as a fresh render produces it: slot
    /// maps and `affinity-services-*` sets without elements are dropped with
    /// the rules that use them (a long-lived renderer keeps them so it never
    /// has to rewrite a chain), the affinity lookups go when no affinity set
    /// is left, and load-balancing rules are sorted. Two rulesets with the
    /// same canonical form treat every packet the same.
    pub fn pruned(&self) -> Ruleset {
        let mut rs = self.clone();
        let removable = |name: &str| name.contains("-slots-") || name.starts_with("affinity-services-");
        let empty: Vec<String> =
            rs.sets.iter().filter(|(n, s)| removable(n) && s.elements.is_empty()).map(|(n, _)| n.clone()).collect();
        for name in &empty {
            rs.sets.remove(name);
        }
        let any_affinity = rs.sets.keys().any(|n| n.starts_with("affinity-services-"));
        let uses = |rule: &Rule, set: &str| {
            rule.matches.iter().any(|m| matches!(m, Match::Lookup { set: s, .. } if s == set))
                || rule.stmts.iter().any(|st| matches!(st, Stmt::DnatMap { map, .. } if map == set))
        };
        for chain in rs.chains.values_mut() {
            chain.rules.retain(|r| !empty.iter().any(|e| uses(r, e)) && (any_affinity || !uses(r, crate::names::AFFINITY)));
            if chain.rules.iter().all(|r| r.stmts.iter().all(|s| matches!(s, Stmt::DnatMap { .. }))) {
                chain.rules.sort_by_key(|r| format!("{r:?}"));
            }
        }
        rs
    }

    /// How many rules the ruleset holds.
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(|c| c.rules.len()).sum()
    }
}

/// The nft family keyword of a table.
pub fn family_keyword(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        })
    }
}
