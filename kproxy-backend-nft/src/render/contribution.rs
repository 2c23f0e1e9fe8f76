//! What one service port contributes to the sets and maps.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use kproxy_core::{Endpoint, IpFamily, Protocol, ProxierConfig, SelectedEndpoints, ServicePortInfo, ServicePortName};

use crate::model::{Key, KeyShape, SetDecl, Value, ValueShape};
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

    /// The map holding the slots of `protocol` services with `n` endpoints.
    pub fn map_name(self, protocol: Protocol, n: usize) -> String {
        match self {
            SlotKind::Cluster => names::cluster_slots(protocol, n),
            SlotKind::Local => names::local_slots(protocol, n),
            SlotKind::NodePortCluster => names::nodeport_cluster_slots(protocol, n),
            SlotKind::NodePortLocal => names::nodeport_local_slots(protocol, n),
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

/// Which set or map an element belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum SetId {
    /// One of the fixed sets, by name.
    Fixed(&'static str),
    /// A slot map: kind, protocol and endpoint count. Maps are per protocol
    /// because nft 1.0.6 can only read back a DNAT map whose port is typed
    /// for one protocol (`tcp dport`, not `th dport`).
    Slots(SlotKind, Protocol, usize),
    /// The affinity destinations of one timeout.
    Affinity(u32),
}

impl SetId {
    /// The set's name in the table.
    pub fn name(self) -> String {
        match self {
            SetId::Fixed(n) => n.to_string(),
            SetId::Slots(kind, protocol, n) => kind.map_name(protocol, n),
            SetId::Affinity(t) => names::affinity_services(t),
        }
    }

    /// Whether several service ports may add the same element (so it is
    /// reference-counted).
    pub fn shared(self) -> bool {
        matches!(self, SetId::Fixed(names::CLUSTER_IPS) | SetId::Fixed(names::HAIRPIN))
    }

    /// The declaration of a set that only exists while it has elements.
    pub fn decl(self) -> SetDecl {
        let plain = |key, value| SetDecl { key, value, dynamic_timeout: None, max_elements: None };
        match self {
            SetId::Slots(kind, p, n) if kind.by_address() => plain(KeyShape::ServiceSlot(p, n as u32), ValueShape::Target),
            SetId::Slots(_, p, n) => plain(KeyShape::PortSlot(p, n as u32), ValueShape::Target),
            SetId::Affinity(_) => plain(KeyShape::Service, ValueShape::None),
            SetId::Fixed(name) => fixed_decl(name),
        }
    }
}

/// The longest affinity timeout Kubernetes allows (one day): the dynamic
/// map's default timeout.
pub(crate) const MAX_AFFINITY_SECONDS: u32 = 86_400;

/// How many (client, service) affinity entries the kernel keeps.
pub(crate) const MAX_AFFINITY_ENTRIES: u32 = 1 << 20;

/// The fixed sets and maps, which always exist.
pub(crate) const FIXED_SETS: [&str; 16] = [
    names::CLUSTER_IPS,
    names::NODEPORT_IPS,
    names::CLUSTER_IP_SERVICES,
    names::CLUSTER_IP_LOCAL_SERVICES,
    names::EXTERNAL_SERVICES,
    names::EXTERNAL_LOCAL_SERVICES,
    names::NODEPORT_SERVICES,
    names::NODEPORT_LOCAL_SERVICES,
    names::NO_ENDPOINT_REJECT,
    names::NO_ENDPOINT_DROP,
    names::NODEPORT_NO_ENDPOINT_REJECT,
    names::NODEPORT_NO_ENDPOINT_DROP,
    names::FIREWALL_SERVICES,
    names::FIREWALL_ALLOW,
    names::HAIRPIN,
    names::AFFINITY,
];

/// The declaration of a fixed set.
pub(crate) fn fixed_decl(name: &str) -> SetDecl {
    let plain = |key, value| SetDecl { key, value, dynamic_timeout: None, max_elements: None };
    match name {
        names::CLUSTER_IPS | names::NODEPORT_IPS => plain(KeyShape::Addr, ValueShape::None),
        names::CLUSTER_IP_SERVICES
        | names::CLUSTER_IP_LOCAL_SERVICES
        | names::EXTERNAL_SERVICES
        | names::EXTERNAL_LOCAL_SERVICES
        | names::NO_ENDPOINT_REJECT
        | names::NO_ENDPOINT_DROP
        | names::FIREWALL_SERVICES => plain(KeyShape::Service, ValueShape::None),
        names::NODEPORT_SERVICES | names::NODEPORT_LOCAL_SERVICES | names::NODEPORT_NO_ENDPOINT_REJECT | names::NODEPORT_NO_ENDPOINT_DROP => {
            plain(KeyShape::Port, ValueShape::None)
        }
        names::FIREWALL_ALLOW => plain(KeyShape::ServiceSource, ValueShape::None),
        names::HAIRPIN => plain(KeyShape::AddrPair, ValueShape::None),
        names::AFFINITY => SetDecl {
            key: KeyShape::Affinity,
            value: ValueShape::Target,
            dynamic_timeout: Some(MAX_AFFINITY_SECONDS),
            max_elements: Some(MAX_AFFINITY_ENTRIES),
        },
        other => unreachable!("{other} is not a fixed set"),
    }
}

/// One element a service port adds.
pub(crate) type Element = (SetId, Key, Option<Value>);

/// Everything one service port adds, so it can be taken back exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Contribution {
    pub elements: Vec<Element>,
    /// Destinations this port owns.
    pub claims: Vec<Key>,
    /// Destinations this port wanted but another port owns: it is
    /// re-rendered when they are released.
    pub lost: Vec<Key>,
    /// Destinations this port took from their previous owner (its
    /// fingerprint), which must be re-rendered without them.
    pub taken: Vec<(Key, u64)>,
    /// Local internal policy with endpoints, none local.
    pub no_local_internal: bool,
    /// Local external policy with endpoints, none local.
    pub no_local_external: bool,
}

/// What the renderer remembers of a contribution to take it back later:
/// keys without values, and each run of DNAT slots as its first key (the
/// slot map's size says how long the run is). A few dozen bytes per service
/// port instead of one entry per element.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Stored {
    pub keys: Vec<(SetId, Key)>,
    pub slot_runs: Vec<(SetId, Key)>,
    pub claims: Vec<Key>,
    pub no_local_internal: bool,
    pub no_local_external: bool,
}

impl Contribution {
    /// The compact form to keep.
    pub fn stored(&self) -> Stored {
        let mut out = Stored {
            claims: self.claims.clone(),
            no_local_internal: self.no_local_internal,
            no_local_external: self.no_local_external,
            ..Stored::default()
        };
        for (set, key, _) in &self.elements {
            match (set, key) {
                (SetId::Slots(..), Key::ServiceSlot(.., 0) | Key::PortSlot(.., 0)) => out.slot_runs.push((*set, *key)),
                (SetId::Slots(..), _) => {}
                _ => out.keys.push((*set, *key)),
            }
        }
        out.keys.shrink_to_fit();
        out.slot_runs.shrink_to_fit();
        out
    }
}

impl Stored {
    /// Every (set, key) the contribution added.
    pub fn all_keys(&self) -> impl Iterator<Item = (SetId, Key)> + '_ {
        let slots = self.slot_runs.iter().flat_map(|(set, first)| {
            let n = match set {
                SetId::Slots(_, _, n) => *n as u32,
                _ => 0,
            };
            (0..n).map(move |i| (*set, with_slot(*first, i)))
        });
        self.keys.iter().copied().chain(slots)
    }
}

fn with_slot(key: Key, i: u32) -> Key {
    match key {
        Key::ServiceSlot(a, p, port, _) => Key::ServiceSlot(a, p, port, i),
        Key::PortSlot(p, port, _) => Key::PortSlot(p, port, i),
        other => other,
    }
}

/// Who owns which destination (a ClusterIP, externalIP or VIP with a port,
/// or a NodePort), by a fingerprint of the owner's name (a copy of every
/// name would cost more memory than the rest of the bookkeeping). When
/// several service ports claim one destination, the one with the smallest
/// fingerprint owns it, whatever the order they came in: the incremental
/// renderer then always agrees with a whole-state rendering, and a
/// released destination goes to the next claimant.
pub(crate) type Claims = HashMap<Key, u64>;

/// A stable fingerprint of a service port's name.
pub(crate) fn fingerprint(name: &ServicePortName) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

fn claim(claims: &mut Claims, key: Key, name: &ServicePortName, out: &mut Contribution) -> bool {
    let me = fingerprint(name);
    match claims.get(&key).copied() {
        Some(owner) if owner < me => {
            tracing::warn!(service = %name, destination = ?key, "destination already used by another service; skipping it");
            out.lost.push(key);
            false
        }
        previous => {
            if let Some(owner) = previous.filter(|o| *o != me) {
                out.taken.push((key, owner));
            }
            claims.insert(key, me);
            out.claims.push(key);
            true
        }
    }
}

/// The elements of one service port, given its selected endpoints.
pub(crate) fn contribute(
    name: &ServicePortName,
    svc: &ServicePortInfo,
    selected: &SelectedEndpoints,
    config: &ProxierConfig,
    claims: &mut Claims,
) -> Contribution {
    let mut out = Contribution::default();
    let (proto, port) = (svc.protocol, svc.port);
    let has_any = selected.has_any;
    let internal = if svc.internal_policy_local { &selected.local } else { &selected.cluster };
    let has_internal = has_any && !internal.is_empty();
    let has_external = has_any && !(svc.external_policy_local && selected.local.is_empty());
    out.no_local_internal = has_any && svc.internal_policy_local && selected.local.is_empty();
    out.no_local_external = has_any && svc.external_policy_local && svc.externally_accessible() && selected.local.is_empty();
    // Reject when nothing can serve; drop when only the policy forbids.
    let (refuse, refuse_nodeport) = if has_any {
        (names::NO_ENDPOINT_DROP, names::NODEPORT_NO_ENDPOINT_DROP)
    } else {
        (names::NO_ENDPOINT_REJECT, names::NODEPORT_NO_ENDPOINT_REJECT)
    };
    let put = |out: &mut Contribution, set: SetId, key: Key, value: Option<Value>| out.elements.push((set, key, value));
    let member = |out: &mut Contribution, set: &'static str, key: Key| out.elements.push((SetId::Fixed(set), key, None));

    let cluster_key = Key::Service(svc.cluster_ip, proto, port);
    if !claim(claims, cluster_key, name, &mut out) {
        return out;
    }
    put(&mut out, SetId::Fixed(names::CLUSTER_IPS), Key::Addr(svc.cluster_ip), None);
    if has_internal {
        let (set, kind) = if svc.internal_policy_local {
            (names::CLUSTER_IP_LOCAL_SERVICES, SlotKind::Local)
        } else {
            (names::CLUSTER_IP_SERVICES, SlotKind::Cluster)
        };
        member(&mut out, set, cluster_key);
        slots(&mut out, kind, |i| Key::ServiceSlot(svc.cluster_ip, proto, port, i), internal);
    } else {
        member(&mut out, refuse, cluster_key);
    }

    let mut destinations: Vec<IpAddr> = svc.external_ips.iter().chain(&svc.load_balancer_vips).copied().collect();
    destinations.sort();
    destinations.dedup();
    destinations.retain(|&d| claim(claims, Key::Service(d, proto, port), name, &mut out));
    let node_port = svc.node_port.filter(|&np| claim(claims, Key::Port(proto, np), name, &mut out));
    let etp_local = svc.external_policy_local;
    if has_any {
        let set = if etp_local { names::EXTERNAL_LOCAL_SERVICES } else { names::EXTERNAL_SERVICES };
        for &d in &destinations {
            member(&mut out, set, Key::Service(d, proto, port));
            slots(&mut out, SlotKind::Cluster, |i| Key::ServiceSlot(d, proto, port, i), &selected.cluster);
            if etp_local {
                slots(&mut out, SlotKind::Local, |i| Key::ServiceSlot(d, proto, port, i), &selected.local);
            }
        }
        if let Some(np) = node_port {
            let set = if etp_local { names::NODEPORT_LOCAL_SERVICES } else { names::NODEPORT_SERVICES };
            member(&mut out, set, Key::Port(proto, np));
            slots(&mut out, SlotKind::NodePortCluster, |i| Key::PortSlot(proto, np, i), &selected.cluster);
            if etp_local {
                slots(&mut out, SlotKind::NodePortLocal, |i| Key::PortSlot(proto, np, i), &selected.local);
            }
        }
    }
    if !has_external {
        for &d in &destinations {
            member(&mut out, refuse, Key::Service(d, proto, port));
        }
        if let Some(np) = node_port {
            member(&mut out, refuse_nodeport, Key::Port(proto, np));
        }
    }

    if svc.source_ranges.is_restricted() {
        let nets = svc.source_ranges.networks();
        let node_in_range = nets.iter().any(|n| config.node_ips.iter().any(|ip| n.contains(ip)));
        for &vip in svc.load_balancer_vips.iter().filter(|v| destinations.contains(v)) {
            put(&mut out, SetId::Fixed(names::FIREWALL_SERVICES), Key::Service(vip, proto, port), None);
            for net in nets {
                put(&mut out, SetId::Fixed(names::FIREWALL_ALLOW), Key::ServiceSource(vip, proto, port, *net), None);
            }
            if node_in_range {
                for &src in &svc.load_balancer_vips {
                    put(&mut out, SetId::Fixed(names::FIREWALL_ALLOW), Key::ServiceSource(vip, proto, port, IpNet::from(src)), None);
                }
            }
        }
    }

    if let (Some(t), true) = (svc.affinity_timeout_seconds, has_any) {
        put(&mut out, SetId::Affinity(t), cluster_key, None);
        for &d in &destinations {
            put(&mut out, SetId::Affinity(t), Key::Service(d, proto, port), None);
        }
        if let Some(np) = node_port {
            for &ip in config.node_port_ips.iter().filter(|ip| IpFamily::of(**ip) == config.family) {
                put(&mut out, SetId::Affinity(t), Key::Service(ip, proto, np), None);
            }
        }
    }

    // Hairpin: an endpoint whose own connection is sent back to it must be
    // masqueraded. Only local endpoints can be such a client, except through
    // the ETP=Local pod short-circuit, which a remote pod reaching this
    // node's NodePort or VIP also takes (see the oracle).
    let short_circuit = svc.external_policy_local && svc.externally_accessible();
    let mut hairpin: Vec<IpAddr> = selected
        .cluster
        .iter()
        .chain(&selected.local)
        .filter(|e| e.is_local || short_circuit)
        .map(|e| e.ip)
        .collect();
    hairpin.sort();
    hairpin.dedup();
    for ip in hairpin {
        put(&mut out, SetId::Fixed(names::HAIRPIN), Key::AddrPair(ip, ip), None);
    }
    out
}

fn slots(out: &mut Contribution, kind: SlotKind, key: impl Fn(u32) -> Key, endpoints: &[Endpoint]) {
    for (i, ep) in endpoints.iter().enumerate() {
        let k = key(i as u32);
        let protocol = match k {
            Key::ServiceSlot(_, p, _, _) | Key::PortSlot(p, _, _) => p,
            _ => unreachable!("slot keys carry their protocol"),
        };
        out.elements.push((SetId::Slots(kind, protocol, endpoints.len()), k, Some(Value::Target(ep.ip, ep.port))));
    }
}
