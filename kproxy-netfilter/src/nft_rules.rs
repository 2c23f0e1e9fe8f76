//! Digests of nf_tables chains' rules, read over netlink: what
//! iptables-nft wrote, compared cheaply (a dump, no `iptables-nft-save`,
//! which takes minutes at 300,000 rules).
//!
//! A chain's digest folds, rule by rule and in order, each expression's
//! name and data and the rule's user data (iptables-nft keeps `-m comment`
//! there). A `counter` expression's data (packet and byte counts) is left
//! out: it changes with traffic, not with the rules. Handles are left out
//! too, so rewriting a chain with the same rules gives the same digest.

use std::collections::BTreeMap;

use kproxy_core::IpFamily;

use crate::wire::{attr, attr_str, cstr, find, parse_attrs, NetlinkError, NfSocket};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;

const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;

/// The digest of a chain without rules.
pub const EMPTY: u64 = FNV_OFFSET;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

fn nfproto(family: IpFamily) -> u8 {
    match family {
        IpFamily::V4 => 2,  // NFPROTO_IPV4
        IpFamily::V6 => 10, // NFPROTO_IPV6
    }
}

/// Folds one rule (the attributes of a `NFT_MSG_NEWRULE` reply) into the
/// chain digest `h`.
pub fn fold_rule(mut h: u64, rule: &[(u16, &[u8])]) -> u64 {
    // A separator per rule, so rules cannot run into each other.
    h = fnv(h, b"\x00rule");
    if let Some(exprs) = find(rule, NFTA_RULE_EXPRESSIONS) {
        for (_, elem) in parse_attrs(exprs) {
            let e = parse_attrs(elem);
            let name = attr_str(&e, NFTA_EXPR_NAME).unwrap_or("");
            h = fnv(h, name.as_bytes());
            h = fnv(h, b"\x00");
            if name != "counter" {
                h = fnv(h, find(&e, NFTA_EXPR_DATA).unwrap_or_default());
            }
        }
    }
    h = fnv(h, b"\x00udata");
    fnv(h, find(rule, NFTA_RULE_USERDATA).unwrap_or_default())
}

/// The digest of every chain of `table` (of `family`), empty chains
/// included ([`EMPTY`]); a chain that does not exist is absent.
///
/// One rule dump per chain: the kernel resumes a dump by skipping the
/// rules already sent, from the start of the table (or of the chain, when
/// the dump names one), so one dump of a 320,000-rule table is quadratic
/// (40 s measured) where a dump per chain is not.
pub fn table_digests(socket: &mut NfSocket, family: IpFamily, table: &str) -> Result<BTreeMap<String, u64>, NetlinkError> {
    let mut names = Vec::new();
    let kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETCHAIN;
    socket.dump(kind, nfproto(family), |b| attr(b, NFTA_CHAIN_TABLE, &cstr(table)), |_, attrs| {
        if attr_str(&attrs, NFTA_CHAIN_TABLE) == Some(table) {
            if let Some(name) = attr_str(&attrs, NFTA_CHAIN_NAME) {
                names.push(name.to_string());
            }
        }
    })?;
    let mut out = BTreeMap::new();
    for name in names {
        // A chain deleted meanwhile is simply absent.
        if let Some(d) = chain_digest(socket, family, table, &name)? {
            out.insert(name, d);
        }
    }
    Ok(out)
}

/// The digest of one chain of `table`, or None if it does not exist.
pub fn chain_digest(socket: &mut NfSocket, family: IpFamily, table: &str, chain: &str) -> Result<Option<u64>, NetlinkError> {
    let mut out = BTreeMap::new();
    match rules_into(socket, family, table, Some(chain), &mut out) {
        Ok(()) => Ok(Some(out.get(chain).copied().unwrap_or(EMPTY))),
        // ENOENT: no such chain (or table).
        Err(e) if e.0.contains("os error 2") => Ok(None),
        Err(e) => Err(e),
    }
}

fn rules_into(socket: &mut NfSocket, family: IpFamily, table: &str, chain: Option<&str>, out: &mut BTreeMap<String, u64>) -> Result<(), NetlinkError> {
    let kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE;
    let body = |b: &mut Vec<u8>| {
        attr(b, NFTA_RULE_TABLE, &cstr(table));
        if let Some(c) = chain {
            attr(b, NFTA_RULE_CHAIN, &cstr(c));
        }
    };
    socket.dump(kind, nfproto(family), body, |_, attrs| {
        if attr_str(&attrs, NFTA_RULE_TABLE) != Some(table) {
            return;
        }
        if let Some(c) = attr_str(&attrs, NFTA_RULE_CHAIN) {
            if chain.is_none_or(|want| want == c) {
                let h = out.entry(c.to_string()).or_insert(EMPTY);
                *h = fold_rule(*h, &attrs);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::nested;

    fn rule(exprs: &[(&str, &[u8])], comment: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        nested(&mut b, NFTA_RULE_EXPRESSIONS, |b| {
            for (name, data) in exprs {
                nested(b, 1, |b| {
                    attr(b, NFTA_EXPR_NAME, &cstr(name));
                    attr(b, NFTA_EXPR_DATA, data);
                });
            }
        });
        attr(&mut b, NFTA_RULE_USERDATA, comment);
        b
    }

    fn digest(rules: &[Vec<u8>]) -> u64 {
        rules.iter().fold(EMPTY, |h, r| fold_rule(h, &parse_attrs(r)))
    }

    #[test]
    fn counters_do_not_count_and_everything_else_does() {
        let a = rule(&[("match", b"tcp dport 80"), ("counter", b"packets 1"), ("immediate", b"jump X")], b"svc");
        let counted = rule(&[("match", b"tcp dport 80"), ("counter", b"packets 999"), ("immediate", b"jump X")], b"svc");
        assert_eq!(digest(std::slice::from_ref(&a)), digest(&[counted]));
        let other_port = rule(&[("match", b"tcp dport 81"), ("counter", b"packets 1"), ("immediate", b"jump X")], b"svc");
        let other_comment = rule(&[("match", b"tcp dport 80"), ("counter", b"packets 1"), ("immediate", b"jump X")], b"other");
        let b = rule(&[("immediate", b"accept")], b"");
        for changed in [vec![other_port], vec![other_comment], vec![b.clone(), a.clone()], vec![a.clone(), a.clone()], vec![]] {
            assert_ne!(digest(&[a.clone(), b.clone()]), digest(&changed), "{changed:?}");
        }
        assert_ne!(digest(&[a.clone(), b.clone()]), digest(&[b, a]), "order counts");
    }
}
