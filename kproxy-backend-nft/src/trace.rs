//! A packet tracer over the typed ruleset: walks the first packet of a
//! connection through the hooks in priority order, following every `numgen`
//! branch, and reports the same [`Verdict`] vocabulary as the kproxy-core
//! oracle. It matches on structure, never on rule text.

use std::collections::BTreeSet;
use std::net::IpAddr;

use kproxy_oracle::{Origin, Packet, Target, Verdict as Outcome};
use kproxy_core::ProxierConfig;

use crate::model::{Expr, Hook, Key, Match, Ruleset, Stmt, Value, Verdict};

/// Why a trace could not produce a verdict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    /// A jump or goto went to a chain that does not exist.
    #[error("jump to unknown chain {0}")]
    UnknownChain(String),
    /// A rule looked up a set that does not exist.
    #[error("lookup in unknown set {0}")]
    UnknownSet(String),
    /// Chains jumped more than 64 deep (a loop).
    #[error("jump depth exceeded (loop?)")]
    TooDeep,
    /// Branches of one packet ended differently (some dropped, some not).
    #[error("numgen branches disagree: {0}")]
    Inconsistent(String),
}

#[derive(Debug, Clone)]
struct State {
    src: IpAddr,
    dst: IpAddr,
    dport: u16,
    orig_dst: IpAddr,
    orig_dport: u16,
    mark: u32,
    dnat: bool,
    masquerade: bool,
    affinity: Option<u32>,
    /// The rules that matched, as (chain, index in the chain).
    path: Vec<(String, usize)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The chain ran out (or, for a statement, the rule did not decide).
    Fall,
    /// `return`, or the end of a chain reached through `goto`.
    Return,
    Accept,
    Drop,
    Reject,
}

struct Tracer<'a> {
    rs: &'a Ruleset,
    packet: &'a Packet,
}

/// Traces `packet` through `ruleset` on a node configured as `config`.
pub fn trace(ruleset: &Ruleset, config: &ProxierConfig, packet: &Packet) -> Result<Outcome, TraceError> {
    explain(ruleset, config, packet).map(|(outcome, _)| outcome)
}

/// The rules one way of a packet went through, in order: each is a chain's
/// name and the rule's index in it. Only rules whose matches all held (and
/// so acted) are listed.
pub type Path = Vec<(String, usize)>;

/// One way a packet can go: the rules it meets, and where it ends up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Way {
    /// The rules that matched, in order.
    pub path: Path,
    /// The endpoint it is DNATed to, if any.
    pub target: Option<std::net::SocketAddr>,
    /// Whether it is masqueraded.
    pub masquerade: bool,
}

/// Like [`trace`], with the ways too: one per distinct way the packet can
/// go (one per `numgen` branch that leads to another endpoint).
pub fn explain(ruleset: &Ruleset, config: &ProxierConfig, packet: &Packet) -> Result<(Outcome, Vec<Way>), TraceError> {
    let t = Tracer { rs: ruleset, packet };
    let start = State {
        src: packet.src,
        dst: packet.dst,
        dport: packet.dport,
        orig_dst: packet.dst,
        orig_dport: packet.dport,
        mark: 0,
        dnat: false,
        masquerade: false,
        affinity: None,
        path: Vec::new(),
    };
    let first = if packet.origin == Origin::Node { Hook::Output } else { Hook::Prerouting };
    let mut finals = Vec::new();
    for (state, end) in t.hook(first, start)? {
        if end != End::Accept {
            finals.push((state, end));
            continue;
        }
        let local = |ip: IpAddr| ip.is_loopback() || config.node_ips.contains(&ip) || config.node_port_ips.contains(&ip);
        let next = match first {
            Hook::Output => Some(Hook::Postrouting),
            _ if local(state.dst) => None,
            _ => Some(Hook::Forward),
        };
        let Some(hook) = next else {
            for (s, e) in t.hook(Hook::Input, state)? {
                finals.push((s, e));
            }
            continue;
        };
        for (s, e) in t.hook(hook, state)? {
            if e == End::Accept && hook == Hook::Forward {
                finals.extend(t.hook(Hook::Postrouting, s)?);
            } else {
                finals.push((s, e));
            }
        }
    }
    let mut ways: Vec<Way> = Vec::new();
    for (s, _) in &finals {
        let way = Way { path: s.path.clone(), target: s.dnat.then_some(std::net::SocketAddr::new(s.dst, s.dport)), masquerade: s.masquerade };
        if !ways.contains(&way) {
            ways.push(way);
        }
    }
    Ok((summarize(finals)?, ways))
}

fn summarize(finals: Vec<(State, End)>) -> Result<Outcome, TraceError> {
    let ends: BTreeSet<String> = finals.iter().map(|(s, e)| format!("{e:?}/dnat={}", s.dnat)).collect();
    if ends.len() > 1 {
        return Err(TraceError::Inconsistent(ends.into_iter().collect::<Vec<_>>().join(", ")));
    }
    let Some((first, end)) = finals.first().cloned() else {
        return Err(TraceError::Inconsistent("no outcome".into()));
    };
    Ok(match end {
        End::Drop => Outcome::Drop,
        End::Reject => Outcome::Reject,
        End::Fall | End::Return | End::Accept if !first.dnat => Outcome::NotService,
        End::Fall | End::Return | End::Accept => {
            let mut targets: Vec<Target> = finals
                .iter()
                .map(|(s, _)| Target { endpoint: std::net::SocketAddr::new(s.dst, s.dport), masquerade: s.masquerade })
                .collect();
            targets.sort();
            targets.dedup();
            Outcome::Forward { targets, affinity_seconds: first.affinity }
        }
    })
}

impl Tracer<'_> {
    /// Runs every base chain of `hook` in priority order; states that end
    /// in drop or reject stop there, the rest go on.
    fn hook(&self, hook: Hook, state: State) -> Result<Vec<(State, End)>, TraceError> {
        let mut bases: Vec<(&String, i32)> = self
            .rs
            .chains
            .iter()
            .filter_map(|(n, c)| c.base.filter(|b| b.hook == hook).map(|b| (n, b.priority)))
            .collect();
        bases.sort_by_key(|(n, p)| (*p, (*n).clone()));
        let mut live = vec![state];
        let mut stopped = Vec::new();
        for (name, _) in bases {
            let mut next = Vec::new();
            for s in live {
                for (s, end) in self.chain(name, s, 0)? {
                    match end {
                        End::Fall | End::Return | End::Accept => next.push(s),
                        End::Drop | End::Reject => stopped.push((s, end)),
                    }
                }
            }
            live = next;
        }
        stopped.extend(live.into_iter().map(|s| (s, End::Accept)));
        Ok(stopped)
    }

    fn chain(&self, name: &str, state: State, depth: usize) -> Result<Vec<(State, End)>, TraceError> {
        if depth > 64 {
            return Err(TraceError::TooDeep);
        }
        let chain = self.rs.chains.get(name).ok_or_else(|| TraceError::UnknownChain(name.into()))?;
        let mut live = vec![state];
        let mut done = Vec::new();
        for (index, rule) in chain.rules.iter().enumerate() {
            let mut next = Vec::new();
            for mut s in live {
                if !self.matches(&rule.matches, &s)? {
                    next.push(s);
                    continue;
                }
                s.path.push((name.to_string(), index));
                for (s, end) in self.stmts(&rule.stmts, s, depth)? {
                    match end {
                        End::Fall => next.push(s),
                        other => done.push((s, other)),
                    }
                }
            }
            live = next;
        }
        done.extend(live.into_iter().map(|s| (s, End::Fall)));
        Ok(done)
    }

    /// Runs a rule's statements; `Fall` means "go on with the next rule".
    fn stmts(&self, stmts: &[Stmt], mut s: State, depth: usize) -> Result<Vec<(State, End)>, TraceError> {
        for stmt in stmts {
            match stmt {
                Stmt::MarkOr(m) => s.mark |= m,
                Stmt::MarkXor(m) => s.mark ^= m,
                Stmt::Masquerade => {
                    s.masquerade = true;
                    return Ok(vec![(s, End::Accept)]);
                }
                Stmt::RecordTarget { timeout, .. } => s.affinity = Some(*timeout),
                Stmt::Verdict(v) => return self.verdict(v, s, depth),
                Stmt::DnatMap { key, map } => {
                    let modulus = key.iter().find_map(|e| match e {
                        Expr::NumgenMod(n) => Some(*n),
                        _ => None,
                    });
                    let mut out = Vec::new();
                    for slot in modulus.map_or(vec![None], |n| (0..n).map(Some).collect()) {
                        match self.lookup_value(map, key, &s, slot)? {
                            Some(Value::Target(ip, port)) => {
                                let mut b = s.clone();
                                b.dst = ip;
                                b.dport = port;
                                b.dnat = true;
                                out.push((b, End::Accept));
                            }
                            _ => {
                                // A missed lookup decided nothing: not on the path.
                                let mut missed = s.clone();
                                missed.path.pop();
                                out.push((missed, End::Fall));
                            }
                        }
                    }
                    // DNAT ends the chain; a missed lookup breaks the rule.
                    return Ok(out);
                }
            }
        }
        Ok(vec![(s, End::Fall)])
    }

    fn verdict(&self, v: &Verdict, s: State, depth: usize) -> Result<Vec<(State, End)>, TraceError> {
        Ok(match v {
            Verdict::Accept => vec![(s, End::Accept)],
            Verdict::Drop => vec![(s, End::Drop)],
            Verdict::Reject => vec![(s, End::Reject)],
            Verdict::Return => vec![(s, End::Return)],
            Verdict::Jump(c) => self
                .chain(c, s, depth + 1)?
                .into_iter()
                .map(|(s, e)| if e == End::Return { (s, End::Fall) } else { (s, e) })
                .collect(),
            Verdict::Goto(c) => self
                .chain(c, s, depth + 1)?
                .into_iter()
                .map(|(s, e)| if e == End::Fall || e == End::Return { (s, End::Return) } else { (s, e) })
                .collect(),
        })
    }

    fn matches(&self, matches: &[Match], s: &State) -> Result<bool, TraceError> {
        for m in matches {
            let ok = match m {
                Match::Lookup { key, set, negate } => self.contains(set, key, s)? != *negate,
                Match::SaddrIn { nets, negate } => nets.iter().any(|n| n.contains(&s.src)) != *negate,
                Match::DaddrIn { nets } => nets.iter().any(|n| n.contains(&s.dst)),
                Match::Iifname { name, prefix, negate } => {
                    let hit = self.packet.iif().is_some_and(|i| if *prefix { i.starts_with(name.as_str()) } else { i == name });
                    hit != *negate
                }
                Match::FibSaddrLocal => self.packet.origin == Origin::Node,
                Match::CtStateNew => true,
                Match::CtStatusDnat => s.dnat,
                Match::L4Proto(p) => *p == self.packet.protocol,
                Match::MarkClear(m) => s.mark & m == 0,
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Builds the key the expressions produce for this packet.
    fn key(&self, exprs: &[Expr], s: &State, slot: Option<u32>) -> Option<Key> {
        let p = self.packet.protocol;
        let port_of = |e: &Expr| match e {
            Expr::Dport => Some(s.dport),
            Expr::CtOriginalProtoDst => Some(s.orig_dport),
            _ => None,
        };
        let addr_of = |e: &Expr| match e {
            Expr::Saddr => Some(s.src),
            Expr::Daddr => Some(s.dst),
            Expr::CtOriginalDaddr => Some(s.orig_dst),
            _ => None,
        };
        Some(match exprs {
            [a] => Key::Addr(addr_of(a)?),
            [a, b] if addr_of(b).is_some() => Key::AddrPair(addr_of(a)?, addr_of(b)?),
            [Expr::L4Proto, port] => Key::Port(p, port_of(port)?),
            [a, Expr::L4Proto, port] => Key::Service(addr_of(a)?, p, port_of(port)?),
            [Expr::L4Proto, port, Expr::NumgenMod(_)] => Key::PortSlot(p, port_of(port)?, slot?),
            [a, Expr::L4Proto, port, Expr::NumgenMod(_)] => Key::ServiceSlot(addr_of(a)?, p, port_of(port)?, slot?),
            [a, Expr::L4Proto, port, src] => {
                Key::ServiceSource(addr_of(a)?, p, port_of(port)?, ipnet::IpNet::from(addr_of(src)?))
            }
            // The affinity map starts empty for a first packet.
            [_, _, Expr::L4Proto, _] => return None,
            _ => return None,
        })
    }

    fn contains(&self, set: &str, exprs: &[Expr], s: &State) -> Result<bool, TraceError> {
        let set_ref = self.rs.sets.get(set).ok_or_else(|| TraceError::UnknownSet(set.into()))?;
        let Some(key) = self.key(exprs, s, None) else {
            return Ok(false);
        };
        if let Key::ServiceSource(a, p, port, probe) = key {
            // An interval set: the source must fall inside an allowed network.
            return Ok(set_ref.elements.keys().any(|k| {
                matches!(k, Key::ServiceSource(ka, kp, kport, net) if *ka == a && *kp == p && *kport == port && net.contains(&probe.addr()))
            }));
        }
        Ok(set_ref.elements.contains_key(&key))
    }

    fn lookup_value(&self, map: &str, exprs: &[Expr], s: &State, slot: Option<u32>) -> Result<Option<Value>, TraceError> {
        let set_ref = self.rs.sets.get(map).ok_or_else(|| TraceError::UnknownSet(map.into()))?;
        Ok(self.key(exprs, s, slot).and_then(|k| set_ref.elements.get(&k).cloned().flatten()))
    }
}
