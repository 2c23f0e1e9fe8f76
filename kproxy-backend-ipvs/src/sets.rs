//! The ipsets of IPVS mode, as typed entries turned into one list of
//! ipset commands per sync (sent over netlink, or read as an `ipset
//! restore` script by the fake kernel). Each set is filled under a
//! temporary name and swapped in, so a packet never sees a half-written
//! set.

use std::collections::{BTreeMap, BTreeSet};

use kproxy_core::{IpFamily, Protocol};
pub use kproxy_netfilter::ipset::{Command, Entry, SetType};

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
    pub fn kind(self) -> SetType {
        match self {
            SetName::LoopBack | SetName::LoadBalancerSourceIp => SetType::HashIpPortIp,
            SetName::LoadBalancerSourceCidr => SetType::HashIpPortNet,
            SetName::NodePort(Protocol::Sctp) | SetName::NodePortLocal(Protocol::Sctp) => SetType::HashIpPort,
            SetName::NodePort(_) | SetName::NodePortLocal(_) | SetName::HealthCheckNodePort => SetType::BitmapPort,
            SetName::IpvsIps => SetType::HashIp,
            _ => SetType::HashIpPort,
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

/// The commands that make the kernel's sets `sets`: each set is created
/// if missing, filled under a temporary name, swapped in, and the
/// temporary one destroyed.
pub fn restore_commands(sets: &Sets, family: IpFamily) -> Vec<Command> {
    let mut out = Vec::new();
    let tmp = swap_name(family).to_string();
    for (set, entries) in sets {
        let name = set.name(family);
        let kind = set.kind();
        out.push(Command::Create { name: name.clone(), kind, family });
        out.push(Command::Create { name: tmp.clone(), kind, family });
        out.push(Command::Flush(tmp.clone()));
        if !entries.is_empty() {
            out.push(Command::Add { name: tmp.clone(), entries: entries.iter().cloned().collect(), exist: false });
        }
        out.push(Command::Swap(tmp.clone(), name));
        out.push(Command::Destroy(tmp.clone()));
    }
    out
}

/// The commands that add (`true`) and delete (`false`) single entries in
/// place (`-exist`, so a set someone else touched does not fail the
/// sync); neighbouring changes of one kind to one set travel together.
pub fn entry_commands(changes: &BTreeMap<(SetName, Entry), bool>, family: IpFamily) -> Vec<Command> {
    let mut out: Vec<Command> = Vec::new();
    for ((set, e), added) in changes {
        let name = set.name(family);
        match out.last_mut() {
            Some(Command::Add { name: n, entries, .. }) if *added && *n == name => entries.push(e.clone()),
            Some(Command::Del { name: n, entries, .. }) if !*added && *n == name => entries.push(e.clone()),
            _ if *added => out.push(Command::Add { name, entries: vec![e.clone()], exist: true }),
            _ => out.push(Command::Del { name, entries: vec![e.clone()], exist: true }),
        }
    }
    out
}

/// The commands that destroy every set of both families (each is made
/// first, as `ipset restore` refuses to destroy a set that is not there).
pub fn destroy_commands() -> Vec<Command> {
    let mut sets = Sets::new();
    for s in all_sets() {
        sets.insert(s, BTreeSet::new());
    }
    let mut out = Vec::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        out.extend(restore_commands(&sets, family));
        out.extend(all_sets().into_iter().map(|s| Command::Destroy(s.name(family))));
    }
    out
}

/// `commands` as an `ipset restore` script.
pub fn script(commands: &[Command]) -> String {
    commands.iter().map(Command::restore_text).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn entries_and_scripts_read_as_ipset_expects() {
        let mut sets = Sets::new();
        let ip: IpAddr = "172.30.0.1".parse().unwrap();
        sets.insert(SetName::ClusterIp, [Entry::IpPort(ip, Protocol::Tcp, 80)].into());
        sets.insert(SetName::NodePort(Protocol::Udp), [Entry::Port(30001)].into());
        let text = script(&restore_commands(&sets, IpFamily::V4));
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
        assert_eq!(SetName::LoopBack.name(IpFamily::V6), "KUBE-6-LOOP-BACK");
        let ip2: IpAddr = "172.30.0.2".parse().unwrap();
        let changes = [
            ((SetName::ClusterIp, Entry::IpPort(ip, Protocol::Tcp, 80)), false),
            ((SetName::ClusterIp, Entry::IpPort(ip, Protocol::Tcp, 81)), false),
            ((SetName::ClusterIp, Entry::IpPort(ip2, Protocol::Tcp, 80)), true),
            ((SetName::IpvsIps, Entry::Ip(ip)), true),
        ]
        .into();
        let commands = entry_commands(&changes, IpFamily::V4);
        assert_eq!(commands.len(), 3, "the two deletes from one set travel together: {commands:?}");
        assert_eq!(
            script(&commands),
            "del KUBE-CLUSTER-IP 172.30.0.1,tcp:80 -exist\ndel KUBE-CLUSTER-IP 172.30.0.1,tcp:81 -exist\n\
             add KUBE-CLUSTER-IP 172.30.0.2,tcp:80 -exist\nadd KUBE-IPVS-IPS 172.30.0.1 -exist\n"
        );
        for set in all_sets() {
            for family in [IpFamily::V4, IpFamily::V6] {
                assert!(set.name(family).len() <= MAX_NAME, "{}", set.name(family));
            }
        }
        assert_eq!(SetName::LoadBalancerSourceCidr.name(IpFamily::V6), "KUBE-6-LOAD-BALANCER-SOURCE-CID", "truncated as upstream");
    }
}
