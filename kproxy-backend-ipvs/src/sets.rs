//! The ipsets of IPVS mode, as typed entries rendered to one
//! `ipset restore` script per sync. Each set is filled under a temporary
//! name and swapped in, so a packet never sees a half-written set.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use kproxy_core::{IpFamily, Protocol};

/// The longest ipset name the kernel takes.
const MAX_NAME: usize = 31;

/// The temporary set each set is filled under before the swap (one name
/// per family, as each is destroyed before the next set's is created).
fn swap_name(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "KPROXY-SWAP",
        IpFamily::V6 => "KPROXY-6-SWAP",
    }
}

/// One of upstream's sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetName {
    /// Every ClusterIP:port.
    ClusterIp,
    /// Endpoint IP:port,endpoint IP: a pod reaching itself (hairpin).
    LoopBack,
    /// externalIP:port with Cluster traffic policy.
    ExternalIp,
    /// externalIP:port with Local traffic policy.
    ExternalIpLocal,
    /// Every LoadBalancer VIP:port.
    LoadBalancer,
    /// LoadBalancer VIP:port with Local traffic policy.
    LoadBalancerLocal,
    /// LoadBalancer VIP:port with source ranges.
    LoadBalancerFw,
    /// VIP:port,source IP allowed through the source ranges.
    LoadBalancerSourceIp,
    /// VIP:port,source CIDR allowed through the source ranges.
    LoadBalancerSourceCidr,
    /// NodePorts of a protocol (TCP, UDP: bitmap:port; SCTP: hash:ip,port).
    NodePort(Protocol),
    /// NodePorts of a protocol with Local traffic policy.
    NodePortLocal(Protocol),
    /// Health-check NodePorts.
    HealthCheckNodePort,
    /// Every address bound to the dummy interface (`KUBE-IPVS-IPS`).
    IpvsIps,
}

impl SetName {
    /// The set's name in the kernel (IPv6 sets carry a `6-` after `KUBE-`,
    /// since one namespace holds both families' sets).
    pub fn name(self, family: IpFamily) -> String {
        let base = match self {
            SetName::ClusterIp => "CLUSTER-IP",
            SetName::LoopBack => "LOOP-BACK",
            SetName::ExternalIp => "EXTERNAL-IP",
            SetName::ExternalIpLocal => "EXTERNAL-IP-LOCAL",
            SetName::LoadBalancer => "LOAD-BALANCER",
            SetName::LoadBalancerLocal => "LOAD-BALANCER-LOCAL",
            SetName::LoadBalancerFw => "LOAD-BALANCER-FW",
            SetName::LoadBalancerSourceIp => "LOAD-BALANCER-SOURCE-IP",
            SetName::LoadBalancerSourceCidr => "LOAD-BALANCER-SOURCE-CIDR",
            SetName::NodePort(Protocol::Tcp) => "NODE-PORT-TCP",
            SetName::NodePort(Protocol::Udp) => "NODE-PORT-UDP",
            SetName::NodePort(Protocol::Sctp) => "NODE-PORT-SCTP-HASH",
            SetName::NodePortLocal(Protocol::Tcp) => "NODE-PORT-LOCAL-TCP",
            SetName::NodePortLocal(Protocol::Udp) => "NODE-PORT-LOCAL-UDP",
            SetName::NodePortLocal(Protocol::Sctp) => "NODE-PORT-LOCAL-SCTP-HASH",
            SetName::HealthCheckNodePort => "HEALTH-CHECK-NODE-PORT",
            SetName::IpvsIps => "IPVS-IPS",
        };
        match family {
            IpFamily::V4 => format!("KUBE-{base}"),
            // ipset names have at most 31 characters; upstream truncates.
            IpFamily::V6 => format!("KUBE-6-{base}").chars().take(MAX_NAME).collect(),
        }
    }

    /// The ipset type.
    pub fn kind(self) -> &'static str {
        match self {
            SetName::LoopBack | SetName::LoadBalancerSourceIp => "hash:ip,port,ip",
            SetName::LoadBalancerSourceCidr => "hash:ip,port,net",
            SetName::NodePort(Protocol::Sctp) | SetName::NodePortLocal(Protocol::Sctp) => "hash:ip,port",
            SetName::NodePort(_) | SetName::NodePortLocal(_) | SetName::HealthCheckNodePort => "bitmap:port",
            SetName::IpvsIps => "hash:ip",
            _ => "hash:ip,port",
        }
    }

    /// What `-m set --match-set` compares, in the set's dimension order.
    pub fn match_flags(self) -> &'static str {
        match self {
            SetName::LoopBack => "dst,dst,src",
            SetName::LoadBalancerSourceIp | SetName::LoadBalancerSourceCidr => "dst,dst,src",
            SetName::NodePort(Protocol::Sctp) | SetName::NodePortLocal(Protocol::Sctp) => "dst,dst",
            SetName::NodePort(_) | SetName::NodePortLocal(_) | SetName::HealthCheckNodePort | SetName::IpvsIps => "dst",
            _ => "dst,dst",
        }
    }

}

/// One entry of a set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entry {
    /// `IP,PROTO:PORT`.
    IpPort(IpAddr, Protocol, u16),
    /// `IP,PROTO:PORT,IP`.
    IpPortIp(IpAddr, Protocol, u16, IpAddr),
    /// `IP,PROTO:PORT,NET`.
    IpPortNet(IpAddr, Protocol, u16, IpNet),
    /// `PORT` (bitmap:port).
    Port(u16),
    /// `IP` (hash:ip).
    Ip(IpAddr),
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

impl Entry {
    /// The entry as `ipset add` reads it.
    pub fn text(&self) -> String {
        match self {
            Entry::IpPort(ip, p, port) => format!("{ip},{}:{port}", proto(*p)),
            Entry::IpPortIp(ip, p, port, ip2) => format!("{ip},{}:{port},{ip2}", proto(*p)),
            Entry::IpPortNet(ip, p, port, net) => format!("{ip},{}:{port},{net}", proto(*p)),
            Entry::Port(port) => port.to_string(),
            Entry::Ip(ip) => ip.to_string(),
        }
    }

    /// Reads an entry of a set of type `kind` as `ipset` prints it.
    pub fn parse(kind: &str, text: &str) -> Option<Entry> {
        let ip_port = |a: &str, b: &str| -> Option<(IpAddr, Protocol, u16)> {
            let (p, port) = b.split_once(':')?;
            let p = match p {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                "sctp" => Protocol::Sctp,
                _ => return None,
            };
            Some((a.parse().ok()?, p, port.parse().ok()?))
        };
        let parts: Vec<&str> = text.split(',').collect();
        match (kind, parts.as_slice()) {
            ("bitmap:port", [port]) => port.parse().ok().map(Entry::Port),
            ("hash:ip", [ip]) => ip.parse().ok().map(Entry::Ip),
            ("hash:ip,port", [a, b]) => ip_port(a, b).map(|(ip, p, port)| Entry::IpPort(ip, p, port)),
            ("hash:ip,port,ip", [a, b, c]) => {
                let (ip, p, port) = ip_port(a, b)?;
                Some(Entry::IpPortIp(ip, p, port, c.parse().ok()?))
            }
            ("hash:ip,port,net", [a, b, c]) => {
                let (ip, p, port) = ip_port(a, b)?;
                Some(Entry::IpPortNet(ip, p, port, c.parse().ok()?))
            }
            _ => None,
        }
    }

    /// Whether a packet's fields, picked by `flags` as `-m set` picks them
    /// (`dst,dst,src`: the destination address, the destination port with
    /// the protocol, the source address), are this entry. Source ports
    /// never appear in kproxy's rules and never match.
    pub fn contains(&self, flags: &str, protocol: Protocol, src: IpAddr, dst: IpAddr, dport: u16) -> bool {
        let f: Vec<&str> = flags.split(',').collect();
        let addr = |i: usize| match f.get(i) {
            Some(&"src") => Some(src),
            Some(&"dst") => Some(dst),
            _ => None,
        };
        let port_is = |i: usize, p: Protocol, port: u16| f.get(i) == Some(&"dst") && p == protocol && port == dport;
        match self {
            Entry::IpPort(ip, p, port) => f.len() == 2 && addr(0) == Some(*ip) && port_is(1, *p, *port),
            Entry::IpPortIp(ip, p, port, ip2) => f.len() == 3 && addr(0) == Some(*ip) && port_is(1, *p, *port) && addr(2) == Some(*ip2),
            Entry::IpPortNet(ip, p, port, net) => {
                f.len() == 3 && addr(0) == Some(*ip) && port_is(1, *p, *port) && addr(2).is_some_and(|a| net.contains(&a))
            }
            Entry::Port(port) => f == ["dst"] && *port == dport,
            Entry::Ip(ip) => f.len() == 1 && addr(0) == Some(*ip),
        }
    }
}

/// Every set's desired entries (every set is present, empty or not).
pub type Sets = BTreeMap<SetName, BTreeSet<Entry>>;

/// Every set kproxy keeps, for `family`'s NodePort protocols.
pub fn all_sets() -> Vec<SetName> {
    let mut out = vec![
        SetName::ClusterIp,
        SetName::LoopBack,
        SetName::ExternalIp,
        SetName::ExternalIpLocal,
        SetName::LoadBalancer,
        SetName::LoadBalancerLocal,
        SetName::LoadBalancerFw,
        SetName::LoadBalancerSourceIp,
        SetName::LoadBalancerSourceCidr,
        SetName::HealthCheckNodePort,
        SetName::IpvsIps,
    ];
    for p in Protocol::ALL {
        out.push(SetName::NodePort(p));
        out.push(SetName::NodePortLocal(p));
    }
    out
}

/// The `ipset restore` script that makes the kernel's sets `sets`: each
/// set is created if missing, filled under a temporary name, swapped in,
/// and the temporary one destroyed.
pub fn restore_script(sets: &Sets, family: IpFamily) -> String {
    let inet = match family {
        IpFamily::V4 => "inet",
        IpFamily::V6 => "inet6",
    };
    let mut s = String::new();
    for (set, entries) in sets {
        let name = set.name(family);
        let tmp = swap_name(family);
        let options = match set.kind() {
            "bitmap:port" => "range 0-65535".to_string(),
            _ => format!("family {inet} hashsize 1024 maxelem 65536"),
        };
        let kind = set.kind();
        writeln!(s, "create {name} {kind} {options} -exist").expect("String");
        writeln!(s, "create {tmp} {kind} {options} -exist").expect("String");
        writeln!(s, "flush {tmp}").expect("String");
        for e in entries {
            writeln!(s, "add {tmp} {}", e.text()).expect("String");
        }
        writeln!(s, "swap {tmp} {name}").expect("String");
        writeln!(s, "destroy {tmp}").expect("String");
    }
    s
}

/// The `ipset restore` script that adds (`true`) and deletes (`false`)
/// single entries in place (`-exist`, so a set someone else touched does
/// not fail the sync).
pub fn entries_script(changes: &BTreeMap<(SetName, Entry), bool>, family: IpFamily) -> String {
    let mut out = String::new();
    for ((set, e), added) in changes {
        let verb = if *added { "add" } else { "del" };
        writeln!(out, "{verb} {} {} -exist", set.name(family), e.text()).expect("String");
    }
    out
}

/// The `ipset restore` script that destroys every set of both families
/// (`-exist` is not accepted by destroy, so each is created first).
pub fn destroy_script() -> String {
    let mut sets = Sets::new();
    for s in all_sets() {
        sets.insert(s, BTreeSet::new());
    }
    let mut out = String::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        out.push_str(&restore_script(&sets, family));
        for s in all_sets() {
            writeln!(out, "destroy {}", s.name(family)).expect("String");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_scripts_read_as_ipset_expects() {
        let mut sets = Sets::new();
        let ip: IpAddr = "172.30.0.1".parse().unwrap();
        sets.insert(SetName::ClusterIp, [Entry::IpPort(ip, Protocol::Tcp, 80)].into());
        sets.insert(SetName::NodePort(Protocol::Udp), [Entry::Port(30001)].into());
        let text = restore_script(&sets, IpFamily::V4);
        assert_eq!(
            text,
            "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 -exist\n\
             create KPROXY-SWAP hash:ip,port family inet hashsize 1024 maxelem 65536 -exist\n\
             flush KPROXY-SWAP\n\
             add KPROXY-SWAP 172.30.0.1,tcp:80\n\
             swap KPROXY-SWAP KUBE-CLUSTER-IP\n\
             destroy KPROXY-SWAP\n\
             create KUBE-NODE-PORT-UDP bitmap:port range 0-65535 -exist\n\
             create KPROXY-SWAP bitmap:port range 0-65535 -exist\n\
             flush KPROXY-SWAP\n\
             add KPROXY-SWAP 30001\n\
             swap KPROXY-SWAP KUBE-NODE-PORT-UDP\n\
             destroy KPROXY-SWAP\n"
        );
        let e = Entry::IpPortNet("fd00::1".parse().unwrap(), Protocol::Sctp, 9, "fd00:1::/64".parse().unwrap());
        assert_eq!(e.text(), "fd00::1,sctp:9,fd00:1::/64");
        assert_eq!(SetName::LoopBack.name(IpFamily::V6), "KUBE-6-LOOP-BACK");
        let changes = [((SetName::ClusterIp, Entry::IpPort(ip, Protocol::Tcp, 80)), false), ((SetName::IpvsIps, Entry::Ip(ip)), true)].into();
        assert_eq!(entries_script(&changes, IpFamily::V4), "del KUBE-CLUSTER-IP 172.30.0.1,tcp:80 -exist\nadd KUBE-IPVS-IPS 172.30.0.1 -exist\n");
        for set in all_sets() {
            for family in [IpFamily::V4, IpFamily::V6] {
                assert!(set.name(family).len() <= MAX_NAME, "{}", set.name(family));
            }
        }
        assert_eq!(SetName::LoadBalancerSourceCidr.name(IpFamily::V6), "KUBE-6-LOAD-BALANCER-SOURCE-CID", "truncated as upstream");
    }
}
