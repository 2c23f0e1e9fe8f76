//! The kernel's part, rendered (pure): one nftables table per family that
//! steers Service traffic to the proxy's listeners and refuses or drops
//! what the plan says, replaced whole in one transaction.
//!
//! - `steer-prerouting` and `steer-output` (nat, at `dstnat`, -100) redirect a
//!   new connection or flow to its listener's port on the address it
//!   arrived at (the loopback address for the node's own traffic);
//! - `check-input`, `check-forward` and `check-output` (filter, just
//!   before `dstnat` and conntrack's own filters) refuse or drop new
//!   connections that no listener takes, by their original address.
//!
//! Both see the same ordered rules, so the first match decides in each.

use std::collections::BTreeMap;
use std::fmt::Write;

use kproxy_core::{IpFamily, LocalDetector};

use crate::plan::{Action, ListenerKey, Plan, Rule, Source};

/// The table's name, in the `ip` and `ip6` families.
pub const TABLE: &str = "kproxy-userspace";

/// `nft`'s keyword for `family`'s table and address matches.
pub fn keyword(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

/// The `nft -f` script that replaces `family`'s table with `plan`, whose
/// listeners are on `ports`.
pub fn render(family: IpFamily, plan: &Plan, ports: &BTreeMap<ListenerKey, u16>) -> String {
    let kw = keyword(family);
    let mut out = String::new();
    // Creating the table first makes the delete valid on a first sync.
    let _ = writeln!(out, "add table {kw} {TABLE}\ndelete table {kw} {TABLE}\ntable {kw} {TABLE} {{");
    let chains = [
        ("steer-prerouting", "nat hook prerouting priority -100", &plan.arriving, true),
        ("steer-output", "nat hook output priority -100", &plan.from_node, true),
        ("check-input", "filter hook input priority -110", &plan.arriving, false),
        ("check-forward", "filter hook forward priority -110", &plan.arriving, false),
        ("check-output", "filter hook output priority -110", &plan.from_node, false),
    ];
    for (name, hook, rules, steer) in chains {
        let _ = writeln!(out, "\tchain {name} {{\n\t\ttype {hook}; policy accept;");
        if !steer {
            // Only a connection's first packet is judged.
            let _ = writeln!(out, "\t\tct state != new accept");
        }
        for rule in rules.iter() {
            if let Some(line) = rule_line(kw, rule, ports, steer) {
                let _ = writeln!(out, "\t\t{line}");
            }
        }
        let _ = writeln!(out, "\t}}");
    }
    out.push_str("}\n");
    out
}

/// One rule in a steering (`steer`) or checking chain; `None` when it
/// matches nothing (no address, or a listener without a port).
fn rule_line(kw: &str, rule: &Rule, ports: &BTreeMap<ListenerKey, u16>, steer: bool) -> Option<String> {
    if rule.addresses.is_empty() {
        return None;
    }
    let mut m = format!("{kw} daddr {} {} dport {}", set(&rule.addresses), rule.protocol.as_lower_str(), rule.port);
    match &rule.source {
        Source::Any => {}
        Source::Pods(detector) => m.push_str(&format!(" {}", pods(kw, detector)?)),
        Source::NotIn(nets) if nets.is_empty() => {}
        Source::NotIn(nets) => m.push_str(&format!(" {kw} saddr != {}", set(nets))),
    }
    let verdict = match (&rule.action, steer) {
        (Action::Listen(key), true) => format!("redirect to :{}", ports.get(key)?),
        // Decided here; the other chain acts on it.
        (Action::Listen(_), false) => "accept".to_string(),
        (_, true) => "accept".to_string(),
        (Action::Drop, false) => "drop".to_string(),
        (Action::Reject, false) => "reject".to_string(),
    };
    Some(format!("{m} {verdict}"))
}

/// The match for this node's pods; `None` for a detector that says nothing.
fn pods(kw: &str, detector: &LocalDetector) -> Option<String> {
    match detector {
        LocalDetector::ClusterCidr(nets) | LocalDetector::NodeCidr(nets) if !nets.is_empty() => Some(format!("{kw} saddr {}", set(nets))),
        LocalDetector::BridgeInterface(name) if !name.is_empty() => Some(format!("iifname {name:?}")),
        LocalDetector::InterfaceNamePrefix(prefix) if !prefix.is_empty() => Some(format!("iifname \"{prefix}*\"")),
        _ => None,
    }
}

/// One value, or an anonymous set of several.
fn set<T: std::fmt::Display>(items: &[T]) -> String {
    match items {
        [one] => one.to_string(),
        many => format!("{{ {} }}", many.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Forwarding, Pool};
    use kproxy_core::{Protocol, ServicePortName};

    #[test]
    fn renders_steering_and_refusals_in_rule_order() {
        let key = ListenerKey { service: ServicePortName::new("ns", "web", "", Protocol::Tcp), pool: Pool::Cluster };
        let rule = |addresses: &[&str], port, source, action| Rule {
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            protocol: Protocol::Tcp,
            port,
            source,
            action,
        };
        let plan = Plan {
            listeners: [(key.clone(), Forwarding { endpoints: vec![], affinity: None })].into(),
            arriving: vec![
                rule(&["172.30.0.1"], 80, Source::Any, Action::Listen(key.clone())),
                rule(&["1.2.3.4"], 80, Source::NotIn(vec!["10.0.0.0/8".parse().unwrap()]), Action::Drop),
                rule(&["192.168.0.2", "192.168.1.2"], 30080, Source::Pods(LocalDetector::InterfaceNamePrefix("veth".into())), Action::Reject),
            ],
            from_node: vec![],
            ..Plan::default()
        };
        let text = render(IpFamily::V4, &plan, &[(key, 41000)].into());
        let want = "\
add table ip kproxy-userspace
delete table ip kproxy-userspace
table ip kproxy-userspace {
\tchain steer-prerouting {
\t\ttype nat hook prerouting priority -100; policy accept;
\t\tip daddr 172.30.0.1 tcp dport 80 redirect to :41000
\t\tip daddr 1.2.3.4 tcp dport 80 ip saddr != 10.0.0.0/8 accept
\t\tip daddr { 192.168.0.2, 192.168.1.2 } tcp dport 30080 iifname \"veth*\" accept
\t}
\tchain steer-output {
\t\ttype nat hook output priority -100; policy accept;
\t}
\tchain check-input {
\t\ttype filter hook input priority -110; policy accept;
\t\tct state != new accept
\t\tip daddr 172.30.0.1 tcp dport 80 accept
\t\tip daddr 1.2.3.4 tcp dport 80 ip saddr != 10.0.0.0/8 drop
\t\tip daddr { 192.168.0.2, 192.168.1.2 } tcp dport 30080 iifname \"veth*\" reject
\t}
";
        assert!(text.starts_with(want), "{text}");
    }
}
