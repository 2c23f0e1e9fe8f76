//! A packet tracer over the fake kernel's typed rules: walks the first
//! packet of a connection through the built-in chains in netfilter's
//! order, follows both branches of every `statistic` match, and reports
//! the oracle (`kproxy-oracle`)'s [`Verdict`] vocabulary.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use kproxy_oracle::{Origin, Packet, Target as Endpoint, Verdict};
use kproxy_core::{IpFamily, ProxierConfig};

use crate::fake::{FakeIptables, FakeTable};
use crate::render::Table;
use crate::rule::{CtState, Match, Rule, Target};

/// Why a trace could not produce a verdict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    /// A jump went to a chain that does not exist.
    #[error("jump to unknown chain {0}")]
    UnknownChain(String),
    /// Chains jumped more than 64 deep (a loop).
    #[error("jump depth exceeded (loop?)")]
    TooDeep,
    /// Branches of one packet ended differently (some dropped, some not).
    #[error("statistic branches disagree: {0}")]
    Inconsistent(String),
}

/// A packet as it walks the chains: its addresses as rewritten so far and
/// what the rules did to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// Source address.
    pub src: IpAddr,
    /// Destination address (after any DNAT).
    pub dst: IpAddr,
    /// Destination port (after any DNAT).
    pub dport: u16,
    /// The packet mark.
    pub mark: u32,
    /// Whether a DNAT rewrote the destination.
    pub dnat: bool,
    /// Whether a MASQUERADE rule took it.
    pub masquerade: bool,
    /// The affinity timeout a `recent` match checked, if any.
    pub affinity: Option<u32>,
    /// The IPVS virtual server that took the packet, if one did (address,
    /// port; set by the IPVS backend's tracer).
    pub ipvs: Option<(IpAddr, u16)>,
    /// Every rule that matched on the way, as `-A CHAIN args` (`*table`
    /// lines mark where a table's walk begins).
    pub path: Vec<String>,
}

impl Hop {
    /// The first packet of `packet`'s connection, untouched.
    pub fn new(packet: &Packet) -> Hop {
        Hop { src: packet.src, dst: packet.dst, dport: packet.dport, mark: 0, dnat: false, masquerade: false, affinity: None, ipvs: None, path: Vec::new() }
    }
}

type State = Hop;

/// How a built-in chain ended for a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted (explicitly, by a NAT target, or by the chain's policy).
    Accept,
    /// Dropped.
    Drop,
    /// Rejected.
    Reject,
}

/// Answers `-m set` matches for [`walk`] (the iptables backend writes
/// none; the IPVS backend's rules are mostly set matches).
pub trait SetLookup {
    /// Whether `hop`'s fields picked by `flags` (`dst,dst,src`, ...), with
    /// `protocol`, are in the ipset `name`.
    fn contains(&self, name: &str, flags: &str, protocol: kproxy_core::Protocol, hop: &Hop) -> bool;
}

/// No sets at all: every `-m set` match fails.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSets;

impl SetLookup for NoSets {
    fn contains(&self, _: &str, _: &str, _: kproxy_core::Protocol, _: &Hop) -> bool {
        false
    }
}

/// Walks `hop` of `packet` through the built-in `chain` of `table` (one
/// result per `statistic` branch). `local` holds the node's addresses
/// (`-m addrtype LOCAL`); `sets` answers `-m set` matches.
pub fn walk(table: &FakeTable, chain: &str, packet: &Packet, local: &BTreeSet<IpAddr>, sets: &dyn SetLookup, hop: Hop) -> Result<Vec<(Hop, Outcome)>, TraceError> {
    let t = Tracer { packet, local: local.clone(), sets };
    Ok(t.builtin(table, chain, hop)?
        .into_iter()
        .map(|(h, e)| {
            let outcome = match e {
                End::Drop => Outcome::Drop,
                End::Reject => Outcome::Reject,
                _ => Outcome::Accept,
            };
            (h, outcome)
        })
        .collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Fell off the chain (or a non-terminating target): go on.
    Fall,
    /// `RETURN`: this chain ends, its caller goes on.
    Return,
    /// `ACCEPT`, `DNAT` or `MASQUERADE`: this table is done with it.
    Accept,
    Drop,
    Reject,
}

struct Tracer<'a> {
    packet: &'a Packet,
    local: BTreeSet<IpAddr>,
    sets: &'a dyn SetLookup,
}

/// Traces `packet` through `family`'s tables of `kernel`, on a node
/// configured as `config`.
pub fn trace(kernel: &FakeIptables, family: IpFamily, config: &ProxierConfig, packet: &Packet) -> Result<Verdict, TraceError> {
    let mut local: BTreeSet<IpAddr> = config.node_ips.iter().chain(&config.node_port_ips).copied().collect();
    if packet.origin == Origin::Node {
        local.insert(packet.src);
    }
    summarize(finals(kernel, family, packet, local)?)
}

/// [`trace`] with the node's addresses given, and each way the packet can
/// go (one per `statistic` branch) with the rules it met.
pub fn explain(kernel: &FakeIptables, family: IpFamily, local: BTreeSet<IpAddr>, packet: &Packet) -> Result<(Verdict, Vec<Hop>), TraceError> {
    let finals = finals(kernel, family, packet, local)?;
    let hops = finals.iter().map(|(h, _)| h.clone()).collect();
    Ok((summarize(finals)?, hops))
}

/// Every way `packet` can leave the tables, and how.
fn finals(kernel: &FakeIptables, family: IpFamily, packet: &Packet, local: BTreeSet<IpAddr>) -> Result<Vec<(State, End)>, TraceError> {
    let t = Tracer { packet, local, sets: &NoSets };
    let nat = kernel.table(family, Table::Nat);
    let filter = kernel.table(family, Table::Filter);
    let start = Hop::new(packet);
    let mut finals = Vec::new();
    let from_node = packet.origin == Origin::Node;
    for (s, end) in t.builtin(nat, if from_node { "OUTPUT" } else { "PREROUTING" }, start)? {
        if matches!(end, End::Drop | End::Reject) {
            finals.push((s, end));
            continue;
        }
        let filter_chain = if from_node {
            "OUTPUT"
        } else if t.is_local(s.dst) {
            "INPUT"
        } else {
            "FORWARD"
        };
        for (s, end) in t.builtin(filter, filter_chain, s)? {
            if matches!(end, End::Drop | End::Reject) || filter_chain == "INPUT" {
                finals.push((s, end));
                continue;
            }
            finals.extend(t.builtin(nat, "POSTROUTING", s)?);
        }
    }
    Ok(finals)
}

fn summarize(finals: Vec<(State, End)>) -> Result<Verdict, TraceError> {
    let ends: BTreeSet<String> = finals.iter().map(|(s, e)| format!("{:?}/dnat={}", if *e == End::Fall { End::Accept } else { *e }, s.dnat)).collect();
    if ends.len() > 1 {
        return Err(TraceError::Inconsistent(ends.into_iter().collect::<Vec<_>>().join(", ")));
    }
    let Some((first, end)) = finals.first().cloned() else {
        return Err(TraceError::Inconsistent("no outcome".into()));
    };
    Ok(match end {
        End::Drop => Verdict::Drop,
        End::Reject => Verdict::Reject,
        _ if !first.dnat => Verdict::NotService,
        _ => {
            let mut targets: Vec<Endpoint> =
                finals.iter().map(|(s, _)| Endpoint { endpoint: SocketAddr::new(s.dst, s.dport), masquerade: s.masquerade }).collect();
            targets.sort();
            targets.dedup();
            Verdict::Forward { targets, affinity_seconds: first.affinity }
        }
    })
}

impl Tracer<'_> {
    fn is_local(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || self.local.contains(&ip)
    }

    /// A built-in chain: falling off the end is its ACCEPT policy.
    fn builtin(&self, table: &FakeTable, chain: &str, s: State) -> Result<Vec<(State, End)>, TraceError> {
        Ok(self.chain(table, chain, s, 0)?.into_iter().map(|(s, e)| if e == End::Fall { (s, End::Accept) } else { (s, e) }).collect())
    }

    fn chain(&self, table: &FakeTable, name: &str, state: State, depth: usize) -> Result<Vec<(State, End)>, TraceError> {
        if depth > 64 {
            return Err(TraceError::TooDeep);
        }
        let rules = table.chains.get(name).ok_or_else(|| TraceError::UnknownChain(name.into()))?;
        let mut live = vec![state];
        let mut done = Vec::new();
        for rule in rules {
            let mut next = Vec::new();
            for mut s in live {
                let (matched, unmatched) = self.matches(rule, &mut s);
                if unmatched {
                    next.push(s.clone());
                }
                if !matched {
                    continue;
                }
                s.path.push(format!("-A {name} {}", rule.args()));
                for (s, end) in self.target(table, rule, s, depth)? {
                    match end {
                        End::Fall => next.push(s),
                        End::Return => done.push((s, End::Fall)),
                        other => done.push((s, other)),
                    }
                }
            }
            live = next;
        }
        done.extend(live.into_iter().map(|s| (s, End::Fall)));
        Ok(done)
    }

    /// Whether the rule can match, and whether it can not match (both for
    /// a `statistic` match whose other matches hold).
    fn matches(&self, rule: &Rule, s: &mut State) -> (bool, bool) {
        let mut random = false;
        for m in &rule.matches {
            let ok = match m {
                Match::Comment(_) | Match::Nfacct(_) => true,
                Match::Protocol(p) => *p == self.packet.protocol,
                Match::Source(n, neg) => n.contains(&s.src) != *neg,
                Match::Destination(n, neg) => n.contains(&s.dst) != *neg,
                Match::DestinationPort(p) => *p == s.dport,
                Match::InInterface(name, neg) => {
                    let hit = self.packet.iif().is_some_and(|i| match name.strip_suffix('+') {
                        Some(prefix) => i.starts_with(prefix),
                        None => i == name,
                    });
                    hit != *neg
                }
                Match::SourceLocal(neg) => self.is_local(s.src) != *neg,
                Match::DestinationLocal(neg) => self.is_local(s.dst) != *neg,
                Match::Mark(m, neg) => (s.mark & m == *m) != *neg,
                // A first packet is NEW (and DNAT once its destination was
                // rewritten), never INVALID, RELATED or ESTABLISHED.
                Match::CtState(states, neg) => states.iter().any(|c| *c == CtState::New || (*c == CtState::Dnat && s.dnat)) != *neg,
                Match::Probability(_) => {
                    random = true;
                    true
                }
                Match::RecentCheck { seconds, .. } => {
                    // A first packet has no affinity entry yet.
                    s.affinity = Some(*seconds);
                    false
                }
                Match::RecentSet { .. } => true,
                Match::Set { name, flags, negated } => self.sets.contains(name, flags, self.packet.protocol, s) != *negated,
                Match::IpvsVirtual { addr, protocol, port } => *protocol == self.packet.protocol && s.ipvs == Some((*addr, *port)),
            };
            if !ok {
                return (false, true);
            }
        }
        (true, random)
    }

    fn target(&self, table: &FakeTable, rule: &Rule, mut s: State, depth: usize) -> Result<Vec<(State, End)>, TraceError> {
        Ok(match &rule.target {
            Target::Jump(c) => self.chain(table, c, s, depth + 1)?,
            Target::Accept => vec![(s, End::Accept)],
            Target::Drop => vec![(s, End::Drop)],
            Target::Reject => vec![(s, End::Reject)],
            Target::Return => vec![(s, End::Return)],
            Target::Dnat(a) => {
                s.dst = a.ip();
                s.dport = a.port();
                s.dnat = true;
                vec![(s, End::Accept)]
            }
            Target::OrMark(m) => {
                s.mark |= m;
                vec![(s, End::Fall)]
            }
            Target::XorMark(m) => {
                s.mark ^= m;
                vec![(s, End::Fall)]
            }
            Target::Nothing => vec![(s, End::Fall)],
            Target::Masquerade => {
                s.masquerade = true;
                vec![(s, End::Accept)]
            }
        })
    }
}
