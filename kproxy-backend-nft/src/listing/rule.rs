//! One rule of `nft -j` output back into a typed [`Rule`]: the matches and
//! statements kproxy writes, and nothing else (anything else is an error
//! naming it, so a tracer never guesses past it).

use std::net::IpAddr;

use ipnet::IpNet;
use kproxy_core::Protocol;
use serde_json::Value as Json;

use crate::model::{Expr, Match, Rule, Stmt, Verdict};

/// A protocol by nft's name or number.
pub(super) fn protocol(v: &Json) -> Option<Protocol> {
    match v {
        Json::String(s) => Protocol::ALL.into_iter().find(|p| p.as_lower_str() == s),
        Json::Number(n) => match n.as_u64()? {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            132 => Some(Protocol::Sctp),
            _ => None,
        },
        _ => None,
    }
}

/// The networks an address, prefix, range or anonymous set stands for.
pub(super) fn nets(v: &Json) -> Option<Vec<IpNet>> {
    match v {
        Json::String(s) => {
            let ip: IpAddr = s.parse().ok()?;
            Some(vec![IpNet::from(ip)])
        }
        Json::Object(o) => {
            if let Some(p) = o.get("prefix") {
                let ip: IpAddr = p["addr"].as_str()?.parse().ok()?;
                return Some(vec![IpNet::new(ip, u8::try_from(p["len"].as_u64()?).ok()?).ok()?]);
            }
            if let Some(r) = o.get("range") {
                let (a, b): (IpAddr, IpAddr) = (r[0].as_str()?.parse().ok()?, r[1].as_str()?.parse().ok()?);
                return match (a, b) {
                    (IpAddr::V4(a), IpAddr::V4(b)) => Some(ipnet::Ipv4Subnets::new(a, b, 0).map(IpNet::V4).collect()),
                    (IpAddr::V6(a), IpAddr::V6(b)) => Some(ipnet::Ipv6Subnets::new(a, b, 0).map(IpNet::V6).collect()),
                    _ => None,
                };
            }
            if let Some(Json::Array(items)) = o.get("set") {
                return items.iter().map(nets).collect::<Option<Vec<_>>>().map(|v| v.concat());
            }
            None
        }
        _ => None,
    }
}

/// One packet field or computed value.
fn expr(v: &Json) -> Option<Expr> {
    let o = v.as_object()?;
    if let Some(p) = o.get("payload") {
        return match (p["protocol"].as_str()?, p["field"].as_str()?) {
            ("ip" | "ip6", "saddr") => Some(Expr::Saddr),
            ("ip" | "ip6", "daddr") => Some(Expr::Daddr),
            ("th" | "tcp" | "udp" | "sctp", "dport") => Some(Expr::Dport),
            _ => None,
        };
    }
    if let Some(m) = o.get("meta") {
        return (m["key"] == "l4proto").then_some(Expr::L4Proto);
    }
    if let Some(n) = o.get("numgen") {
        let ok = n["mode"] == "random" && n.get("offset").and_then(Json::as_u64).unwrap_or(0) == 0;
        return ok.then_some(Expr::NumgenMod(u32::try_from(n["mod"].as_u64()?).ok()?));
    }
    if let Some(c) = o.get("ct") {
        return match (c["key"].as_str()?, c.get("dir").and_then(Json::as_str)) {
            ("ip daddr" | "ip6 daddr" | "daddr", Some("original")) => Some(Expr::CtOriginalDaddr),
            ("proto-dst", Some("original")) => Some(Expr::CtOriginalProtoDst),
            _ => None,
        };
    }
    None
}

/// A key: one expression or a concatenation.
fn key(v: &Json) -> Option<Vec<Expr>> {
    match v.get("concat") {
        Some(Json::Array(items)) => items.iter().map(expr).collect(),
        _ => Some(vec![expr(v)?]),
    }
}

/// The protocol a `tcp dport` (or udp, sctp) in a key implies: nft drops
/// the `meta l4proto tcp` a rule has before such a key from its listing.
fn implied_protocol(v: &Json) -> Option<Protocol> {
    let items = match v.get("concat") {
        Some(Json::Array(items)) => items.clone(),
        _ => vec![v.clone()],
    };
    items.iter().find_map(|e| protocol(&e.get("payload")?.get("protocol")?.clone()))
}

fn is_one_of(v: &Json, word: &str) -> bool {
    match v {
        Json::String(s) => s == word,
        Json::Array(a) => a.len() == 1 && a[0] == word,
        _ => false,
    }
}

/// One `{"match": ...}`.
fn matcher(m: &Json) -> Option<Match> {
    let (op, left, right) = (m["op"].as_str()?, &m["left"], &m["right"]);
    let negate = match op {
        "==" | "in" => false,
        "!=" => true,
        _ => return None,
    };
    if let Some(set) = right.as_str().and_then(|r| r.strip_prefix('@')) {
        return Some(Match::Lookup { key: key(left)?, set: set.to_string(), negate });
    }
    if let Some(ct) = left.get("ct") {
        return match ct["key"].as_str()? {
            "state" if !negate && is_one_of(right, "new") => Some(Match::CtStateNew),
            "status" if !negate && is_one_of(right, "dnat") => Some(Match::CtStatusDnat),
            _ => None,
        };
    }
    if let Some(fib) = left.get("fib") {
        let saddr_type = fib["result"] == "type" && is_one_of(&fib["flags"], "saddr");
        return (saddr_type && !negate && is_one_of(right, "local")).then_some(Match::FibSaddrLocal);
    }
    if let Some(meta) = left.get("meta") {
        return match meta["key"].as_str()? {
            "l4proto" if !negate => Some(Match::L4Proto(protocol(right)?)),
            "iifname" => {
                let name = right.as_str()?;
                let (name, prefix) = name.strip_suffix('*').map_or((name, false), |n| (n, true));
                Some(Match::Iifname { name: name.to_string(), prefix, negate })
            }
            _ => None,
        };
    }
    if let Some(Json::Array(and)) = left.get("&") {
        let is_mark = and.first()?.get("meta")?["key"] == "mark";
        return (is_mark && op == "==" && right.as_u64() == Some(0)).then_some(Match::MarkClear(u32::try_from(and.get(1)?.as_u64()?).ok()?));
    }
    match expr(left)? {
        Expr::Saddr => Some(Match::SaddrIn { nets: nets(right)?, negate }),
        Expr::Daddr if !negate => Some(Match::DaddrIn { nets: nets(right)? }),
        _ => None,
    }
}

/// An nft time (`3h`, `10800s`, `1d2h3m4s`) in seconds.
fn seconds(text: &str) -> Option<u32> {
    let (mut total, mut number) = (0u64, String::new());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = std::mem::take(&mut number).parse().ok()?;
        total += match c {
            'd' => n * 86_400,
            'h' => n * 3_600,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                n / 1000
            }
            'm' => n * 60,
            's' => n,
            _ => return None,
        };
    }
    if !number.is_empty() {
        return None;
    }
    u32::try_from(total).ok()
}

/// One expression as nft prints it in text (`ip saddr`, `tcp dport`, ...).
fn text_expr(text: &str) -> Option<Expr> {
    Some(match text.trim() {
        "ip saddr" | "ip6 saddr" => Expr::Saddr,
        "ip daddr" | "ip6 daddr" => Expr::Daddr,
        "meta l4proto" => Expr::L4Proto,
        "th dport" | "tcp dport" | "udp dport" | "sctp dport" => Expr::Dport,
        "ct original ip daddr" | "ct original ip6 daddr" => Expr::CtOriginalDaddr,
        "ct original proto-dst" => Expr::CtOriginalProtoDst,
        other => Expr::NumgenMod(other.strip_prefix("numgen random mod ")?.parse().ok()?),
    })
}

/// `update @map { KEY timeout T : ip daddr . th dport }`: nft 1.0.6 has no
/// JSON form for a map update and prints the statement's text instead.
fn record_target(text: &str) -> Option<Stmt> {
    let rest = text.strip_prefix("update @")?;
    let (map, rest) = rest.split_once(" { ")?;
    let inner = rest.strip_suffix(" }")?;
    let (key_part, rest) = inner.split_once(" timeout ")?;
    let (timeout, data) = rest.split_once(" : ")?;
    let data: Option<Vec<Expr>> = data.split(" . ").map(text_expr).collect();
    if data? != [Expr::Daddr, Expr::Dport] {
        return None;
    }
    let key: Option<Vec<Expr>> = key_part.split(" . ").map(text_expr).collect();
    Some(Stmt::RecordTarget { key: key?, map: map.to_string(), timeout: seconds(timeout)? })
}

/// One statement; `Ok(None)` for those that change nothing a trace sees
/// (counters).
fn statement(s: &Json) -> Option<Option<Stmt>> {
    if let Some(text) = s.as_str() {
        return Some(Some(record_target(text)?));
    }
    let (name, body) = s.as_object()?.iter().next()?;
    let verdict = |v| Some(Some(Stmt::Verdict(v)));
    match name.as_str() {
        "counter" => Some(None),
        "accept" => verdict(Verdict::Accept),
        "drop" => verdict(Verdict::Drop),
        "return" => verdict(Verdict::Return),
        "reject" => verdict(Verdict::Reject),
        "jump" => verdict(Verdict::Jump(body["target"].as_str()?.to_string().into())),
        "goto" => verdict(Verdict::Goto(body["target"].as_str()?.to_string().into())),
        "masquerade" => Some(Some(Stmt::Masquerade)),
        "mangle" if body["key"].get("meta")?["key"] == "mark" => {
            let value = body["value"].as_object()?;
            let (op, args) = value.iter().next()?;
            let on_mark = args.get(0)?.get("meta")?["key"] == "mark";
            let m = u32::try_from(args.get(1)?.as_u64()?).ok()?;
            match (op.as_str(), on_mark) {
                ("|", true) => Some(Some(Stmt::MarkOr(m))),
                ("^", true) => Some(Some(Stmt::MarkXor(m))),
                _ => None,
            }
        }
        "dnat" => {
            let map = body["addr"].get("map")?;
            let target = map["data"].as_str()?.strip_prefix('@')?;
            if body.get("port").is_some() {
                return None;
            }
            Some(Some(Stmt::DnatMap { key: key(&map["key"])?, map: target.to_string() }))
        }
        _ => None,
    }
}

/// A rule's `expr` list as a typed rule, or `None` if any part of it is
/// not one kproxy writes.
pub(super) fn rule(exprs: &[Json]) -> Option<Rule> {
    let mut matches = Vec::new();
    let mut stmts = Vec::new();
    for e in exprs {
        if let Some(m) = e.get("match") {
            if !stmts.is_empty() {
                return None;
            }
            matches.push(matcher(m)?);
        } else if let Some(s) = statement(e)? {
            stmts.push(s);
        }
    }
    // Put back the protocol match nft folds into a `tcp dport` (a DNAT
    // map's key, or a map update's data).
    let implied = exprs.iter().find_map(|e| match e.as_str() {
        Some(text) => Protocol::ALL.into_iter().find(|p| text.ends_with(&format!(" {} dport }}", p.as_lower_str()))),
        None => implied_protocol(&e.get("dnat")?.get("addr")?.get("map")?["key"]),
    });
    if let Some(p) = implied.filter(|p| !matches.contains(&Match::L4Proto(*p))) {
        matches.insert(0, Match::L4Proto(p));
    }
    Some(Rule::new(matches, stmts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_updates() {
        assert_eq!(seconds("3h"), Some(10_800));
        assert_eq!(seconds("1d2h3m4s"), Some(93_784));
        assert_eq!(seconds("10800s"), Some(10_800));
        assert_eq!(seconds("3x"), None);
        assert_eq!(seconds("12"), None);
        let s = record_target("update @affinity { ip saddr . ct original ip daddr . meta l4proto . ct original proto-dst timeout 3h : ip daddr . udp dport }");
        assert_eq!(
            s,
            Some(Stmt::RecordTarget { key: vec![Expr::Saddr, Expr::CtOriginalDaddr, Expr::L4Proto, Expr::CtOriginalProtoDst], map: "affinity".into(), timeout: 10_800 })
        );
        assert_eq!(record_target("update @affinity { ip saddr timeout 3h : ip saddr }"), None);
    }

    #[test]
    fn a_rule_kproxy_never_writes_is_refused() {
        let json: Json = serde_json::from_str(r#"[{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "sport"}}, "right": 22}}, {"accept": null}]"#).unwrap();
        assert_eq!(rule(json.as_array().unwrap()), None);
        let json: Json = serde_json::from_str(r#"[{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.96.0.0", "len": 12}}}}, {"counter": {"packets": 0, "bytes": 0}}, {"accept": null}]"#).unwrap();
        assert_eq!(rule(json.as_array().unwrap()), Some(Rule::new(vec![Match::DaddrIn { nets: vec!["10.96.0.0/12".parse().unwrap()] }], vec![Stmt::Verdict(Verdict::Accept)])));
    }
}
