use super::*;
use crate::model::{Expr, Match, Stmt};

/// `nft -j list table ip kproxy-a` of the table kproxy renders for
/// `examples/cluster` on node-a (`--dry-run` output loaded with `nft -f`
/// into a scratch namespace; nft 1.0.6).
const EXAMPLE: &str = include_str!("../../testdata/example-cluster.json");

#[test]
fn the_example_cluster_s_table_reads_back() {
    let l = parse(EXAMPLE, "kproxy-a").unwrap();
    assert_eq!(l.ruleset.family, IpFamily::V4);
    let services = &l.ruleset.chains["services"];
    assert!(services.base.is_none());
    let pre = l.ruleset.chains["nat-prerouting"].base.unwrap();
    assert_eq!((pre.kind, pre.hook, pre.priority), (ChainType::Nat, Hook::Prerouting, -100));
    // The map update nft prints as text, with its `3h`.
    let record = &l.ruleset.chains["affinity-record"].rules[0];
    assert!(matches!(record.stmts[0], Stmt::RecordTarget { timeout: 10_800, .. }), "{record:?}");
    // The protocol match nft folds into `tcp dport` is back.
    let lb = &l.ruleset.chains["cluster-lb"].rules[1];
    assert_eq!(lb.matches, vec![Match::L4Proto(Protocol::Tcp)]);
    assert!(matches!(&lb.stmts[0], Stmt::DnatMap { key, .. } if key.last() == Some(&Expr::NumgenMod(1))));
    let slots = &l.ruleset.sets["cluster-slots-tcp-2"];
    assert_eq!(slots.decl.key, KeyShape::ServiceSlot(Protocol::Tcp, 2));
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(slots.elements[&Key::ServiceSlot(ip("10.96.0.10"), Protocol::Tcp, 80, 0)], Some(Value::Target(ip("10.244.1.10"), 8080)));
    let allow = &l.ruleset.sets["firewall-allow"];
    assert!(allow.elements.contains_key(&Key::ServiceSource(ip("198.51.100.7"), Protocol::Tcp, 443, "203.0.113.0/24".parse().unwrap())));
    assert_eq!(l.handles["services"].len(), services.rules.len());
}

#[test]
fn bad_listings_are_named() {
    assert!(matches!(parse("not json", "kproxy-a"), Err(ListingError::NotJson(_))));
    assert!(matches!(parse(r#"{"nftables": []}"#, "kproxy-a"), Err(ListingError::NoTable(_))));
    let foreign = EXAMPLE.replacen(r#"{"jump": {"target": "services"}}"#, r#"{"queue": {"num": 1}}"#, 1);
    let err = parse(&foreign, "kproxy-a").unwrap_err().to_string();
    assert!(err.starts_with("cannot follow: chain nat-output handle") && err.contains("queue"), "{err}");
    let drop_policy = EXAMPLE.replacen(r#""policy": "accept""#, r#""policy": "drop""#, 1);
    assert!(parse(&drop_policy, "kproxy-a").unwrap_err().to_string().contains(r#""policy":"drop""#));
}

#[test]
fn kproxy_tables_are_found_by_family() {
    let json = r#"{"nftables": [{"table": {"family": "ip", "name": "kube-proxy"}}, {"table": {"family": "ip", "name": "kproxy-b"}}, {"table": {"family": "ip6", "name": "kproxy-a"}}]}"#;
    assert_eq!(kproxy_tables(json, IpFamily::V4).unwrap(), vec!["kproxy-b"]);
    assert_eq!(kproxy_tables(json, IpFamily::V6).unwrap(), vec!["kproxy-a"]);
}
