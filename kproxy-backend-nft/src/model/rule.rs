//! Rules: typed matches and statements.

use ipnet::IpNet;
use kproxy_core::Protocol;

/// A packet field or computed value used in matches, lookups and keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expr {
    /// `ip saddr` / `ip6 saddr`.
    Saddr,
    /// `ip daddr` / `ip6 daddr`.
    Daddr,
    /// `meta l4proto`.
    L4Proto,
    /// `th dport`.
    Dport,
    /// `numgen random mod N`.
    NumgenMod(u32),
    /// `ct original ip daddr` (the destination before DNAT).
    CtOriginalDaddr,
    /// `ct original proto-dst` (the port before DNAT; needs a protocol match
    /// in the same rule).
    CtOriginalProtoDst,
}

/// A condition; a rule applies only if all its matches hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Match {
    /// `key @set` (or `key != @set`).
    Lookup {
        /// The key expressions, concatenated.
        key: Vec<Expr>,
        /// The set.
        set: String,
        /// Whether the lookup is negated.
        negate: bool,
    },
    /// `ip saddr { nets }` (or `!=`).
    SaddrIn {
        /// The networks.
        nets: Vec<IpNet>,
        /// Whether negated.
        negate: bool,
    },
    /// `ip daddr { nets }`.
    DaddrIn {
        /// The networks.
        nets: Vec<IpNet>,
    },
    /// `iifname "name"` or `iifname "prefix*"` (or `!=`).
    Iifname {
        /// The interface name or prefix.
        name: String,
        /// Whether `name` is a prefix (`"name*"`).
        prefix: bool,
        /// Whether negated.
        negate: bool,
    },
    /// `fib saddr type local`: the packet was sent by this node.
    FibSaddrLocal,
    /// `ct state new`.
    CtStateNew,
    /// `ct status dnat`.
    CtStatusDnat,
    /// `meta l4proto P`.
    L4Proto(Protocol),
    /// `meta mark & M == 0`.
    MarkClear(u32),
}

/// An action.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Stmt {
    /// `dnat ip to key map @map`.
    DnatMap {
        /// The key expressions.
        key: Vec<Expr>,
        /// The map of `addr . port` targets.
        map: String,
    },
    /// `update @map { key timeout Ns : ip daddr . th dport }`: remember the
    /// DNAT target for `key`.
    RecordTarget {
        /// The key expressions.
        key: Vec<Expr>,
        /// The dynamic map.
        map: String,
        /// The element timeout in seconds.
        timeout: u32,
    },
    /// `meta mark set meta mark | M`.
    MarkOr(u32),
    /// `meta mark set meta mark ^ M`.
    MarkXor(u32),
    /// `masquerade fully-random`.
    Masquerade,
    /// A verdict.
    Verdict(crate::model::Verdict),
}

/// One rule: all matches, then the statements in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// The conditions.
    pub matches: Vec<Match>,
    /// The actions.
    pub stmts: Vec<Stmt>,
}

impl Rule {
    /// A rule with these matches and statements.
    pub fn new(matches: Vec<Match>, stmts: Vec<Stmt>) -> Self {
        Rule { matches, stmts }
    }
}
