//! A packet tracer over the fake kernel ([`FakeHost`]): the first packet of
//! a connection walks the iptables rules (with the ipsets the fake holds)
//! and the IPVS table in netfilter's order, and the result is told in the
//! kproxy-oracle oracle's [`Verdict`] vocabulary.
//!
//! The order, as in the kernel: nat PREROUTING (OUTPUT for the node's own
//! packets) marks for masquerade; a packet for a local address then passes
//! filter INPUT (priority 0) before IPVS takes it at LOCAL_IN (priority
//! 99); the node's own packets meet IPVS at LOCAL_OUT (-99), before filter
//! OUTPUT sees them rewritten. A virtual server without real servers
//! answers ICMP port unreachable (a REJECT); one with real servers of
//! weight above 0 forwards to each of them, masqueraded when nat
//! POSTROUTING says so.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use kproxy_backend_iptables::trace::{walk, Hop, Outcome, SetLookup, TraceError};
use kproxy_backend_iptables::Table;
use kproxy_oracle::{Origin, Packet, Target, Verdict};
use kproxy_core::{IpFamily, Protocol, ProxierConfig};

use crate::host::{FakeHost, FakeIpsets};
use crate::model::{RsKey, VsKey};

impl SetLookup for FakeIpsets {
    fn contains(&self, name: &str, flags: &str, protocol: Protocol, hop: &Hop) -> bool {
        self.sets.get(name).is_some_and(|s| s.entries.iter().any(|e| e.contains(flags, protocol, hop.src, hop.dst, hop.dport)))
    }
}

/// Traces `packet` through `host` (`family`'s tables), on a node
/// configured as `config`.
pub fn trace(host: &FakeHost, family: IpFamily, config: &ProxierConfig, packet: &Packet) -> Result<Verdict, TraceError> {
    explain(host, family, config, packet).map(|(v, _)| v)
}

/// Like [`trace`], with each way's steps: the iptables rules that matched
/// (as `-A CHAIN ...`), and the IPVS virtual and real server (as
/// `ipvsadm -A`/`-a` would add them). One way per real server.
pub fn explain(host: &FakeHost, family: IpFamily, config: &ProxierConfig, packet: &Packet) -> Result<(Verdict, Vec<Vec<String>>), TraceError> {
    let mut local: BTreeSet<IpAddr> = config.node_ips.iter().chain(&config.node_port_ips).copied().collect();
    local.extend(host.addresses());
    if packet.origin == Origin::Node {
        local.insert(packet.src);
    }
    let nat = host.iptables.table(family, Table::Nat);
    let filter = host.iptables.table(family, Table::Filter);
    let sets = &host.ipsets;
    let from_node = packet.origin == Origin::Node;
    let first = |table, chain, hop| -> Result<(Hop, Outcome), TraceError> {
        let mut out = walk(table, chain, packet, &local, sets, hop)?;
        // IPVS mode's rules have no random branches.
        Ok(out.remove(0))
    };
    let (hop, outcome) = first(nat, if from_node { "OUTPUT" } else { "PREROUTING" }, Hop::new(packet))?;
    if let Some(v) = stopped(outcome) {
        return Ok((v, vec![hop.path]));
    }
    let dst_local = hop.dst.is_loopback() || local.contains(&hop.dst);
    if !dst_local {
        // Forwarded past the node: IPVS never sees it.
        return Ok((Verdict::NotService, vec![hop.path]));
    }
    let hop = if from_node {
        hop
    } else {
        let (hop, outcome) = first(filter, "INPUT", hop)?;
        if let Some(v) = stopped(outcome) {
            return Ok((v, vec![hop.path]));
        }
        hop
    };
    let key = VsKey { protocol: packet.protocol, addr: hop.dst, port: hop.dport };
    let table = host.ipvs.current();
    let Some(service) = table.get(&key) else {
        // Delivered to the node's own stack: not a service.
        return Ok((Verdict::NotService, vec![hop.path]));
    };
    let flag = match key.protocol {
        Protocol::Tcp => "-t",
        Protocol::Udp => "-u",
        Protocol::Sctp => "--sctp-service",
    };
    let vs = RsKey { addr: key.addr, port: key.port };
    let persistence = service.server.persistence.map(|p| format!(" -p {p}")).unwrap_or_default();
    let mut base = hop.clone();
    base.path.push(format!("ipvs: -A {flag} {vs} -s {}{persistence}", service.server.scheduler.name()));
    let dests: Vec<_> = service.dests.iter().filter(|d| d.server.weight > 0).collect();
    if dests.is_empty() {
        base.path.push("ipvs: no real server of weight above 0: ICMP port unreachable".into());
        return Ok((Verdict::Reject, vec![base.path]));
    }
    let mut targets = Vec::new();
    let mut ways = Vec::new();
    for d in dests {
        let mut h = base.clone();
        h.path.push(format!("ipvs: -a {flag} {vs} -r {} -m -w {}", d.server.key, d.server.weight));
        h.dst = d.server.key.addr;
        h.dport = d.server.key.port;
        h.dnat = true;
        h.ipvs = Some((key.addr, key.port));
        if from_node {
            let (after, outcome) = first(filter, "OUTPUT", h.clone())?;
            if let Some(v) = stopped(outcome) {
                return Ok((v, vec![after.path]));
            }
            h = after;
        }
        let (h, _) = first(nat, "POSTROUTING", h)?;
        targets.push(Target { endpoint: SocketAddr::new(d.server.key.addr, d.server.key.port), masquerade: h.masquerade });
        ways.push(h.path);
    }
    targets.sort();
    targets.dedup();
    Ok((Verdict::Forward { targets, affinity_seconds: service.server.persistence }, ways))
}

fn stopped(outcome: Outcome) -> Option<Verdict> {
    match outcome {
        Outcome::Drop => Some(Verdict::Drop),
        Outcome::Reject => Some(Verdict::Reject),
        Outcome::Accept => None,
    }
}
