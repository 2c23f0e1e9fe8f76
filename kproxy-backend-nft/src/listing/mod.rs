//! Reading a live kproxy table back into the typed model: the output of
//! `nft -j list table ip|ip6 NAME` becomes a [`Ruleset`], so the
//! tracer (`trace`, feature `trace`) can walk packets through what the kernel holds
//! (drift included), not through what kproxy meant to write.
//!
//! Only what kproxy writes is understood. A rule, set or chain of any other
//! shape is an error naming it ([`ListingError::CannotFollow`]), never a
//! guess.
//!
//! ```
//! use kproxy_backend_nft::listing;
//!
//! let json = r#"{"nftables": [
//!   {"table": {"family": "ip", "name": "kproxy-a", "handle": 1}},
//!   {"chain": {"family": "ip", "table": "kproxy-a", "name": "nat-prerouting", "handle": 1,
//!              "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
//!   {"chain": {"family": "ip", "table": "kproxy-a", "name": "services", "handle": 2}},
//!   {"rule": {"family": "ip", "table": "kproxy-a", "chain": "nat-prerouting", "handle": 3,
//!             "expr": [{"jump": {"target": "services"}}]}}
//! ]}"#;
//! let listing = listing::parse(json, "kproxy-a").unwrap();
//! assert_eq!(listing.ruleset.rule_count(), 1);
//! assert_eq!(listing.handles["nat-prerouting"], vec![3]);
//! ```

mod rule;

use std::collections::BTreeMap;
use std::net::IpAddr;

use kproxy_core::{IpFamily, Protocol};
use serde_json::Value as Json;

use crate::model::{BaseChain, Chain, ChainType, Hook, Key, KeyShape, Ruleset, Set, SetDecl, Value, ValueShape};

/// Why a listing could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ListingError {
    /// The text is not `nft -j` output.
    #[error("not nft JSON output: {0}")]
    NotJson(String),
    /// The listing holds no table of that name.
    #[error("no table {0} in the listing")]
    NoTable(String),
    /// An object kproxy never writes, named with its JSON.
    #[error("cannot follow: {0}")]
    CannotFollow(String),
}

/// A table read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The table's name.
    pub name: String,
    /// Its chains, sets, maps and elements, typed.
    pub ruleset: Ruleset,
    /// Each chain's rule handles, in rule order (for naming a rule as
    /// `nft -a list` does).
    pub handles: BTreeMap<String, Vec<u64>>,
}

fn objects(json: &str) -> Result<Vec<Json>, ListingError> {
    let value: Json = serde_json::from_str(json).map_err(|e| ListingError::NotJson(e.to_string()))?;
    match value.get("nftables") {
        Some(Json::Array(items)) => Ok(items.clone()),
        _ => Err(ListingError::NotJson("no \"nftables\" array".into())),
    }
}

/// The names of kproxy's tables (`kproxy-*`) of `family` in an
/// `nft -j list tables` (or `list ruleset`) output.
pub fn kproxy_tables(json: &str, family: IpFamily) -> Result<Vec<String>, ListingError> {
    let fam = crate::model::family_keyword(family);
    Ok(objects(json)?
        .iter()
        .filter_map(|o| o.get("table"))
        .filter(|t| t["family"] == fam)
        .filter_map(|t| t["name"].as_str())
        .filter(|n| n.starts_with("kproxy-"))
        .map(str::to_string)
        .collect())
}

fn cannot(what: &Json) -> ListingError {
    ListingError::CannotFollow(what.to_string())
}

/// Parses `nft -j list table FAMILY NAME` output (or any listing holding
/// that table) into the typed model.
pub fn parse(json: &str, table: &str) -> Result<Listing, ListingError> {
    let items = objects(json)?;
    let of_table = |o: &Json| o["table"] == table;
    let family = items
        .iter()
        .filter_map(|o| o.get("table"))
        .find(|t| t["name"] == table)
        .and_then(|t| match t["family"].as_str() {
            Some("ip") => Some(IpFamily::V4),
            Some("ip6") => Some(IpFamily::V6),
            _ => None,
        })
        .ok_or_else(|| ListingError::NoTable(table.to_string()))?;
    let mut listing = Listing { name: table.to_string(), ruleset: Ruleset::new(family), handles: BTreeMap::new() };
    for item in &items {
        if let Some(c) = item.get("chain").filter(|c| of_table(c)) {
            let name = c["name"].as_str().ok_or_else(|| cannot(c))?.to_string();
            let base = match c.get("hook") {
                // A base chain that drops what no rule accepts is not
                // kproxy's: the tracer would miss every packet it drops.
                Some(_) if c.get("policy").is_some_and(|p| p != "accept") => return Err(cannot(c)),
                Some(_) => Some(base_chain(c).ok_or_else(|| cannot(c))?),
                None => None,
            };
            listing.ruleset.chains.insert(name.clone(), Chain { base, rules: Vec::new() });
            listing.handles.insert(name, Vec::new());
        } else if let Some(s) = item.get("set").or_else(|| item.get("map")).filter(|s| of_table(s)) {
            let (name, set) = set(s).ok_or_else(|| cannot(s))?;
            listing.ruleset.sets.insert(name, set);
        }
    }
    for r in items.iter().filter_map(|o| o.get("rule")).filter(|r| of_table(r)) {
        let chain = r["chain"].as_str().unwrap_or_default();
        let exprs = r["expr"].as_array().ok_or_else(|| cannot(r))?;
        let typed = rule::rule(exprs).ok_or_else(|| ListingError::CannotFollow(format!("chain {chain} handle {}: {}", r["handle"], r["expr"])))?;
        let Some(c) = listing.ruleset.chains.get_mut(chain) else { return Err(cannot(r)) };
        c.rules.push(typed);
        listing.handles.entry(chain.to_string()).or_default().push(r["handle"].as_u64().unwrap_or_default());
    }
    Ok(listing)
}

fn base_chain(c: &Json) -> Option<BaseChain> {
    let kind = match c["type"].as_str()? {
        "filter" => ChainType::Filter,
        "nat" => ChainType::Nat,
        _ => return None,
    };
    let hook = match c["hook"].as_str()? {
        "prerouting" => Hook::Prerouting,
        "input" => Hook::Input,
        "forward" => Hook::Forward,
        "output" => Hook::Output,
        "postrouting" => Hook::Postrouting,
        _ => return None,
    };
    let priority = match &c["prio"] {
        Json::Number(n) => i32::try_from(n.as_i64()?).ok()?,
        Json::String(s) => match s.as_str() {
            "raw" => -300,
            "mangle" => -150,
            "dstnat" => -100,
            "filter" => 0,
            "security" => 50,
            "srcnat" => 100,
            _ => return None,
        },
        _ => return None,
    };
    Some(BaseChain { kind, hook, priority })
}

/// The shape of a set's keys from its `type` list.
fn key_shape(s: &Json, name: &str) -> Option<KeyShape> {
    let types: Vec<&str> = match &s["type"] {
        Json::String(t) => vec![t.as_str()],
        Json::Array(a) => a.iter().map(Json::as_str).collect::<Option<_>>()?,
        _ => return None,
    };
    let addr = |t: &str| t == "ipv4_addr" || t == "ipv6_addr";
    // Slot maps are named `...-slots-PROTO-N` (see crate::names).
    let slot = || {
        let mut parts = name.rsplit('-');
        let n: u32 = parts.next()?.parse().ok()?;
        let p = rule::protocol(&Json::String(parts.next()?.to_string()))?;
        Some((p, n))
    };
    Some(match types.as_slice() {
        [a] if addr(a) => KeyShape::Addr,
        [a, b] if addr(a) && addr(b) => KeyShape::AddrPair,
        [a, "inet_proto", "inet_service"] if addr(a) => KeyShape::Service,
        ["inet_proto", "inet_service"] => KeyShape::Port,
        [a, "inet_proto", "inet_service", "integer"] if addr(a) => {
            let (p, n) = slot()?;
            KeyShape::ServiceSlot(p, n)
        }
        ["inet_proto", "inet_service", "integer"] => {
            let (p, n) = slot()?;
            KeyShape::PortSlot(p, n)
        }
        [a, "inet_proto", "inet_service", b] if addr(a) && addr(b) => KeyShape::ServiceSource,
        [a, b, "inet_proto", "inet_service"] if addr(a) && addr(b) => KeyShape::Affinity,
        _ => return None,
    })
}

fn set(s: &Json) -> Option<(String, Set)> {
    let name = s["name"].as_str()?.to_string();
    let key = key_shape(s, &name)?;
    let value = match s.get("map").and_then(Json::as_str) {
        None => ValueShape::None,
        Some("ipv4_addr . inet_service" | "ipv6_addr . inet_service") => ValueShape::Target,
        Some(_) => return None,
    };
    let decl = SetDecl {
        key,
        value,
        dynamic_timeout: s.get("timeout").and_then(Json::as_u64).and_then(|t| u32::try_from(t).ok()),
        max_elements: s.get("size").and_then(Json::as_u64).and_then(|t| u32::try_from(t).ok()),
    };
    let mut set = Set::new(decl);
    for e in s.get("elem").and_then(Json::as_array).map(Vec::as_slice).unwrap_or_default() {
        let (k, v) = match (value, e) {
            (ValueShape::Target, Json::Array(kv)) if kv.len() == 2 => (&kv[0], Some(target(&kv[1])?)),
            (ValueShape::None, k) => (k, None),
            _ => return None,
        };
        for k in keys(key, k)? {
            set.elements.insert(k, v);
        }
    }
    Some((name, set))
}

/// An element's parts, unwrapped from `{"elem": {"val": ...}}` (elements
/// with a timeout or a comment) and `{"concat": [...]}`.
fn parts(v: &Json) -> Vec<Json> {
    let v = v.get("elem").map_or(v, |e| &e["val"]);
    match v.get("concat") {
        Some(Json::Array(items)) => items.clone(),
        _ => vec![v.clone()],
    }
}

fn target(v: &Json) -> Option<Value> {
    match parts(v).as_slice() {
        [ip, port] => Some(Value::Target(ip.as_str()?.parse().ok()?, u16::try_from(port.as_u64()?).ok()?)),
        _ => None,
    }
}

/// The keys one element stands for (a range of sources is several
/// networks).
fn keys(shape: KeyShape, v: &Json) -> Option<Vec<Key>> {
    let p = parts(v);
    let ip = |j: &Json| j.as_str()?.parse::<IpAddr>().ok();
    let proto = |j: &Json| -> Option<Protocol> { rule::protocol(j) };
    let port = |j: &Json| u16::try_from(j.as_u64()?).ok();
    let slot = |j: &Json| u32::try_from(j.as_u64()?).ok();
    let one = |k: Option<Key>| k.map(|k| vec![k]);
    match (shape, p.as_slice()) {
        (KeyShape::Addr, [a]) => one(Some(Key::Addr(ip(a)?))),
        (KeyShape::AddrPair, [a, b]) => one(Some(Key::AddrPair(ip(a)?, ip(b)?))),
        (KeyShape::Service, [a, pr, po]) => one(Some(Key::Service(ip(a)?, proto(pr)?, port(po)?))),
        (KeyShape::Port, [pr, po]) => one(Some(Key::Port(proto(pr)?, port(po)?))),
        (KeyShape::ServiceSlot(..), [a, pr, po, s]) => one(Some(Key::ServiceSlot(ip(a)?, proto(pr)?, port(po)?, slot(s)?))),
        (KeyShape::PortSlot(..), [pr, po, s]) => one(Some(Key::PortSlot(proto(pr)?, port(po)?, slot(s)?))),
        (KeyShape::ServiceSource, [a, pr, po, net]) => {
            let (a, pr, po) = (ip(a)?, proto(pr)?, port(po)?);
            Some(rule::nets(net)?.into_iter().map(|n| Key::ServiceSource(a, pr, po, n)).collect())
        }
        (KeyShape::Affinity, [c, d, pr, po]) => one(Some(Key::Affinity(ip(c)?, ip(d)?, proto(pr)?, port(po)?))),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
