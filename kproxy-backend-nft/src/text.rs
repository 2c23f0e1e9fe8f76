//! Rendering the typed model as `nft -f` text. Deterministic: the same
//! model always gives the same bytes.

use std::fmt::{self, Write};
use std::net::IpAddr;

use kproxy_core::IpFamily;

use crate::model::{family_keyword, Chain, Expr, Key, KeyShape, Match, Rule, SetDecl, Stmt, Value, ValueShape, Verdict};

fn ip_kw(family: IpFamily) -> &'static str {
    family_keyword(family)
}

fn addr_type(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ipv4_addr",
        IpFamily::V6 => "ipv6_addr",
    }
}

/// One expression.
pub fn expr(e: Expr, family: IpFamily) -> String {
    let ip = ip_kw(family);
    match e {
        Expr::Saddr => format!("{ip} saddr"),
        Expr::Daddr => format!("{ip} daddr"),
        Expr::L4Proto => "meta l4proto".into(),
        Expr::Dport => "th dport".into(),
        Expr::NumgenMod(n) => format!("numgen random mod {n}"),
        Expr::CtOriginalDaddr => format!("ct original {ip} daddr"),
        Expr::CtOriginalProtoDst => "ct original proto-dst".into(),
    }
}

fn concat(key: &[Expr], family: IpFamily) -> String {
    key.iter().map(|e| expr(*e, family)).collect::<Vec<_>>().join(" . ")
}

/// A verdict.
pub fn verdict(v: &Verdict) -> String {
    match v {
        Verdict::Accept => "accept".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Reject => "reject".into(),
        Verdict::Return => "return".into(),
        Verdict::Jump(c) => format!("jump {c}"),
        Verdict::Goto(c) => format!("goto {c}"),
    }
}

fn matcher(m: &Match, family: IpFamily) -> String {
    let neg = |n: bool| if n { "!= " } else { "" };
    match m {
        Match::Lookup { key, set, negate } => format!("{} {}@{set}", concat(key, family), neg(*negate)),
        Match::SaddrIn { nets, negate } => {
            let list = nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            format!("{} saddr {}{{ {list} }}", ip_kw(family), neg(*negate))
        }
        Match::DaddrIn { nets } => {
            let list = nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            format!("{} daddr {{ {list} }}", ip_kw(family))
        }
        Match::Iifname { name, prefix, negate } => {
            format!("iifname {}\"{}{}\"", neg(*negate), name, if *prefix { "*" } else { "" })
        }
        Match::FibSaddrLocal => "fib saddr type local".into(),
        Match::CtStateNew => "ct state new".into(),
        Match::CtStatusDnat => "ct status dnat".into(),
        Match::L4Proto(p) => format!("meta l4proto {}", p.as_lower_str()),
        Match::MarkClear(m) => format!("meta mark & {m:#010x} == 0"),
    }
}

fn stmt(s: &Stmt, family: IpFamily) -> String {
    let ip = ip_kw(family);
    match s {
        Stmt::DnatMap { key, map } => format!("dnat {ip} to {} map @{map}", concat(key, family)),
        Stmt::RecordTarget { key, map, timeout } => format!(
            "update @{map} {{ {} timeout {timeout}s : {ip} daddr . th dport }}",
            concat(key, family)
        ),
        Stmt::MarkOr(m) => format!("meta mark set meta mark | {m:#010x}"),
        Stmt::MarkXor(m) => format!("meta mark set meta mark ^ {m:#010x}"),
        Stmt::Masquerade => "masquerade fully-random".into(),
        Stmt::Verdict(v) => verdict(v),
    }
}

/// One rule, as it follows `add rule <family> <table> <chain>`.
pub fn rule(r: &Rule, family: IpFamily) -> String {
    r.matches
        .iter()
        .map(|m| matcher(m, family))
        .chain(r.stmts.iter().map(|s| stmt(s, family)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A base chain's declaration (`type ... hook ... priority ...; policy accept;`).
pub fn chain_spec(chain: &Chain) -> Option<String> {
    chain.base.map(|b| {
        let kind = match b.kind {
            crate::model::ChainType::Filter => "filter",
            crate::model::ChainType::Nat => "nat",
        };
        format!("type {kind} hook {} priority {}; policy accept;", b.hook, b.priority)
    })
}

/// Whether a declaration is a map (else a set).
pub fn is_map(decl: &SetDecl) -> bool {
    decl.value != ValueShape::None
}

/// A set's or map's declaration body, without braces.
pub fn set_spec(decl: &SetDecl, family: IpFamily) -> String {
    let a = addr_type(family);
    let ip = ip_kw(family);
    let typeof_key = |k: &str| format!("typeof {k}");
    let (key, uses_typeof) = match decl.key {
        KeyShape::Addr => (format!("type {a}"), false),
        KeyShape::AddrPair => (format!("type {a} . {a}"), false),
        KeyShape::Service => (format!("type {a} . inet_proto . inet_service"), false),
        KeyShape::Port => ("type inet_proto . inet_service".into(), false),
        KeyShape::ServiceSlot(_, n) => (typeof_key(&format!("{ip} daddr . meta l4proto . th dport . numgen random mod {n}")), true),
        KeyShape::PortSlot(_, n) => (typeof_key(&format!("meta l4proto . th dport . numgen random mod {n}")), true),
        KeyShape::ServiceSource => (format!("type {a} . inet_proto . inet_service . {a}"), false),
        KeyShape::Affinity => (format!("type {a} . {a} . inet_proto . inet_service"), false),
    };
    let value = match (decl.value, uses_typeof) {
        (ValueShape::None, _) => String::new(),
        // `tcp dport` (or udp, sctp), not `th dport`: nft 1.0.6 cannot read
        // back a map whose data is `ip daddr . th dport` ("conflicting
        // protocols"), so a later rule could not reference it. Slot maps are
        // per protocol for this reason.
        (ValueShape::Target, true) => format!(" : {ip} daddr . {} dport", slot_protocol(decl.key)),
        (ValueShape::Target, false) => format!(" : {a} . inet_service"),
    };
    let mut out = format!("{key}{value};");
    let mut flags = Vec::new();
    if decl.key == KeyShape::ServiceSource {
        flags.push("interval");
    }
    if decl.dynamic_timeout.is_some() {
        flags.extend(["dynamic", "timeout"]);
    }
    if !flags.is_empty() {
        let _ = write!(out, " flags {};", flags.join(","));
    }
    if let Some(t) = decl.dynamic_timeout {
        let _ = write!(out, " timeout {t}s;");
    }
    if let Some(n) = decl.max_elements {
        let _ = write!(out, " size {n};");
    }
    out
}

fn slot_protocol(key: KeyShape) -> &'static str {
    match key {
        KeyShape::ServiceSlot(p, _) | KeyShape::PortSlot(p, _) => p.as_lower_str(),
        _ => "th",
    }
}

/// Text of an address in an element.
fn addr(ip: &IpAddr) -> String {
    ip.to_string()
}

/// A key, as written in an element list.
pub fn key(k: &Key) -> String {
    match k {
        Key::Addr(a) => addr(a),
        Key::AddrPair(a, b) => format!("{} . {}", addr(a), addr(b)),
        Key::Service(a, p, port) => format!("{} . {} . {port}", addr(a), p.as_lower_str()),
        Key::Port(p, port) => format!("{} . {port}", p.as_lower_str()),
        Key::ServiceSlot(a, p, port, i) => format!("{} . {} . {port} . {i}", addr(a), p.as_lower_str()),
        Key::PortSlot(p, port, i) => format!("{} . {port} . {i}", p.as_lower_str()),
        Key::ServiceSource(a, p, port, net) => format!("{} . {} . {port} . {net}", addr(a), p.as_lower_str()),
        Key::Affinity(c, d, p, port) => format!("{} . {} . {} . {port}", addr(c), addr(d), p.as_lower_str()),
    }
}

/// A map value.
pub fn value(v: &Value) -> String {
    match v {
        Value::Target(ip, port) => format!("{} . {port}", addr(ip)),
    }
}

/// One element: `key` or `key : value`.
pub fn element(k: &Key, v: &Option<Value>) -> String {
    match v {
        Some(v) => format!("{} : {}", key(k), value(v)),
        None => key(k),
    }
}

/// Writes a comma-separated element list, wrapping lines so that no line of
/// the output grows without bound.
pub fn element_list<'a>(out: &mut String, elements: impl Iterator<Item = String> + 'a) -> fmt::Result {
    for (i, e) in elements.enumerate() {
        if i > 0 {
            out.push_str(if i % 8 == 0 { ",\n\t\t" } else { ", " });
        }
        out.push_str(&e);
    }
    Ok(())
}

/// The whole table as one `table <family> <name> { ... }` block, the form
/// `nft list table` prints: for dumps and golden tests.
pub fn table_block(name: &str, rs: &crate::model::Ruleset) -> String {
    let family = rs.family;
    let mut out = format!("table {} {name} {{\n", ip_kw(family));
    for (cname, chain) in &rs.chains {
        let _ = writeln!(out, "\tchain {cname} {{");
        if let Some(spec) = chain_spec(chain) {
            let _ = writeln!(out, "\t\t{spec}");
        }
        for r in &chain.rules {
            let _ = writeln!(out, "\t\t{}", rule(r, family));
        }
        out.push_str("\t}\n");
    }
    for (sname, set) in &rs.sets {
        let kw = if is_map(&set.decl) { "map" } else { "set" };
        let _ = writeln!(out, "\t{kw} {sname} {{\n\t\t{}", set_spec(&set.decl, family));
        if !set.elements.is_empty() {
            out.push_str("\t\telements = { ");
            let _ = element_list(&mut out, set.elements.iter().map(|(k, v)| element(k, v)));
            out.push_str(" }\n");
        }
        out.push_str("\t}\n");
    }
    out.push_str("}\n");
    out
}
