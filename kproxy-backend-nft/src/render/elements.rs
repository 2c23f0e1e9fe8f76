//! Per-service elements: what one service port adds to the sets and maps.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use kproxy_core::{Endpoint, NoLocalEndpoints, ProxierConfig, SelectedEndpoints, ServicePortInfo, ServicePortName};

use crate::model::{Key, Value, Verdict};
use crate::names;

/// The four families of DNAT slot maps: endpoint list × key shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum SlotKind {
    /// Cluster endpoints, keyed by destination address.
    Cluster,
    /// Local endpoints, keyed by destination address.
    Local,
    /// Cluster endpoints, keyed by NodePort.
    NodePortCluster,
    /// Local endpoints, keyed by NodePort.
    NodePortLocal,
}

impl SlotKind {
    pub const ALL: [SlotKind; 4] = [SlotKind::Cluster, SlotKind::Local, SlotKind::NodePortCluster, SlotKind::NodePortLocal];

    /// The map holding the slots of services with `n` endpoints.
    pub fn map_name(self, n: usize) -> String {
        match self {
            SlotKind::Cluster => names::cluster_slots(n),
            SlotKind::Local => names::local_slots(n),
            SlotKind::NodePortCluster => names::nodeport_cluster_slots(n),
            SlotKind::NodePortLocal => names::nodeport_local_slots(n),
        }
    }

    /// The chain that load-balances over these maps.
    pub fn lb_chain(self) -> &'static str {
        match self {
            SlotKind::Cluster => names::CLUSTER_LB,
            SlotKind::Local => names::LOCAL_LB,
            SlotKind::NodePortCluster => names::NODEPORT_CLUSTER_LB,
            SlotKind::NodePortLocal => names::NODEPORT_LOCAL_LB,
        }
    }

    /// Whether keys start with the destination address (else the NodePort).
    pub fn by_address(self) -> bool {
        matches!(self, SlotKind::Cluster | SlotKind::Local)
    }
}

/// Elements gathered from every service port, before they are placed into a
/// ruleset.
#[derive(Debug, Default)]
pub(crate) struct Elements {
    pub cluster_ips: BTreeSet<IpAddr>,
    pub dispatch: BTreeMap<Key, Verdict>,
    pub nodeport_dispatch: BTreeMap<Key, Verdict>,
    pub no_endpoints: BTreeMap<Key, Verdict>,
    pub no_endpoint_nodeports: BTreeMap<Key, Verdict>,
    pub firewall_services: BTreeSet<Key>,
    pub firewall_allow: BTreeSet<Key>,
    pub hairpin: BTreeSet<IpAddr>,
    /// Slot maps by (kind, endpoint count): key → target.
    pub slots: BTreeMap<(SlotKind, usize), BTreeMap<Key, Value>>,
    /// Affinity destinations by timeout.
    pub affinity: BTreeMap<u32, BTreeSet<Key>>,
    pub no_local: NoLocalEndpoints,
    /// Destinations already owned by an earlier service port.
    claimed: BTreeSet<Key>,
}

impl Elements {
    /// Claims `key` for `name`; false (and a warning) if an earlier service
    /// port owns it, which only hand-written or fuzzed objects can cause.
    fn claim(&mut self, key: Key, name: &ServicePortName) -> bool {
        let fresh = self.claimed.insert(key);
        if !fresh {
            tracing::warn!(service = %name, destination = ?key, "destination already used by another service; skipping it");
        }
        fresh
    }

    /// Adds one service port.
    pub fn add(&mut self, name: &ServicePortName, svc: &ServicePortInfo, selected: &SelectedEndpoints, config: &ProxierConfig) {
        let (proto, port) = (svc.protocol, svc.port);
        let has_any = selected.has_any;
        let internal = if svc.internal_policy_local { &selected.local } else { &selected.cluster };
        let has_internal = has_any && !internal.is_empty();
        let has_external = has_any && !(svc.external_policy_local && selected.local.is_empty());
        if has_any && svc.internal_policy_local && selected.local.is_empty() {
            self.no_local.internal += 1;
        }
        if has_any && svc.external_policy_local && svc.externally_accessible() && selected.local.is_empty() {
            self.no_local.external += 1;
        }
        // Reject when nothing can serve; drop when only the policy forbids.
        let refuse = if has_any { Verdict::Drop } else { Verdict::Goto(names::REJECT_CHAIN.into()) };

        self.cluster_ips.insert(svc.cluster_ip);
        let cluster_key = Key::Service(svc.cluster_ip, proto, port);
        if !self.claim(cluster_key, name) {
            return;
        }
        if has_internal {
            let chain = if svc.internal_policy_local { names::CLUSTER_IP_LOCAL } else { names::CLUSTER_IP };
            self.dispatch.insert(cluster_key, Verdict::Goto(chain.into()));
            let kind = if svc.internal_policy_local { SlotKind::Local } else { SlotKind::Cluster };
            self.add_slots(kind, |i| Key::ServiceSlot(svc.cluster_ip, proto, port, i), internal);
        } else {
            self.no_endpoints.insert(cluster_key, refuse.clone());
        }

        let mut destinations: Vec<IpAddr> = svc.external_ips.iter().chain(&svc.load_balancer_vips).copied().collect();
        destinations.sort();
        destinations.dedup();
        destinations.retain(|&d| self.claim(Key::Service(d, proto, port), name));
        let node_port = svc.node_port.filter(|&np| self.claim(Key::Port(proto, np), name));
        let etp_local = svc.external_policy_local;
        if has_any {
            let chain = if etp_local { names::EXTERNAL_LOCAL } else { names::EXTERNAL };
            for &d in &destinations {
                self.dispatch.insert(Key::Service(d, proto, port), Verdict::Goto(chain.into()));
                self.add_slots(SlotKind::Cluster, |i| Key::ServiceSlot(d, proto, port, i), &selected.cluster);
                if etp_local {
                    self.add_slots(SlotKind::Local, |i| Key::ServiceSlot(d, proto, port, i), &selected.local);
                }
            }
            if let Some(np) = node_port {
                let chain = if etp_local { names::NODEPORT_LOCAL } else { names::NODEPORT };
                self.nodeport_dispatch.insert(Key::Port(proto, np), Verdict::Goto(chain.into()));
                self.add_slots(SlotKind::NodePortCluster, |i| Key::PortSlot(proto, np, i), &selected.cluster);
                if etp_local {
                    self.add_slots(SlotKind::NodePortLocal, |i| Key::PortSlot(proto, np, i), &selected.local);
                }
            }
        }
        if !has_external {
            for &d in &destinations {
                self.no_endpoints.insert(Key::Service(d, proto, port), refuse.clone());
            }
            if let Some(np) = node_port {
                self.no_endpoint_nodeports.insert(Key::Port(proto, np), refuse.clone());
            }
        }

        if svc.source_ranges.is_restricted() {
            let nets = svc.source_ranges.networks();
            let node_in_range = nets.iter().any(|n| config.node_ips.iter().any(|ip| n.contains(ip)));
            for &vip in svc.load_balancer_vips.iter().filter(|v| destinations.contains(v)) {
                self.firewall_services.insert(Key::Service(vip, proto, port));
                for net in nets {
                    self.firewall_allow.insert(Key::ServiceSource(vip, proto, port, *net));
                }
                if node_in_range {
                    for &src in &svc.load_balancer_vips {
                        self.firewall_allow.insert(Key::ServiceSource(vip, proto, port, IpNet::from(src)));
                    }
                }
            }
        }

        if let (Some(t), true) = (svc.affinity_timeout_seconds, has_any) {
            let set = self.affinity.entry(t).or_default();
            set.insert(cluster_key);
            set.extend(destinations.iter().map(|&d| Key::Service(d, proto, port)));
            if let Some(np) = node_port {
                set.extend(config.node_port_ips.iter().map(|&ip| Key::Service(ip, proto, np)));
            }
        }

        self.hairpin.extend(selected.cluster.iter().chain(&selected.local).map(|e| e.ip));
    }

    fn add_slots(&mut self, kind: SlotKind, key: impl Fn(u32) -> Key, endpoints: &[Endpoint]) {
        if endpoints.is_empty() {
            return;
        }
        let slots = self.slots.entry((kind, endpoints.len())).or_default();
        for (i, ep) in endpoints.iter().enumerate() {
            slots.insert(key(i as u32), Value::Target(ep.ip, ep.port));
        }
    }
}
