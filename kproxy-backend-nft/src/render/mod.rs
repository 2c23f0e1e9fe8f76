//! Pure rule generation: the desired state in, a typed [`Ruleset`] out.

mod chains;
mod elements;

use std::collections::BTreeMap;

use kproxy_core::{select_endpoints, NoLocalEndpoints, ProxierConfig, ProxyState, Protocol};

use crate::model::{Key, KeyShape, Ruleset, Set, SetDecl, Value, ValueShape};
use crate::names;
use elements::{Elements, SlotKind};

pub(crate) use chains::local_traffic;

/// The longest affinity timeout Kubernetes allows (one day), the dynamic
/// map's default.
const MAX_AFFINITY_SECONDS: u32 = 86_400;

/// What [`render`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The ruleset.
    pub ruleset: Ruleset,
    /// Ports whose Local policy found no local endpoint, for metrics.
    pub no_local_endpoints: NoLocalEndpoints,
}

/// Renders the applied state of `state` for `config` into a ruleset.
///
/// Pure and deterministic: the same input always gives the same ruleset, so
/// a sync can diff it against the last committed one.
pub fn render(state: &ProxyState, config: &ProxierConfig) -> Rendered {
    let mut el = Elements::default();
    for (name, svc) in state.services().iter() {
        let selected = select_endpoints(state.endpoints().get(name), svc, state.node());
        el.add(name, svc, &selected, config);
    }

    let mut rs = Ruleset::new(config.family);
    let decl = |key, value| SetDecl { key, value, dynamic_timeout: None };
    let mut put = |name: &str, decl: SetDecl, elements: BTreeMap<Key, Option<Value>>| {
        rs.sets.insert(name.to_string(), Set { decl, elements });
    };
    let keys = |it: &mut dyn Iterator<Item = Key>| it.map(|k| (k, None)).collect::<BTreeMap<_, _>>();
    let verdicts = |m: BTreeMap<Key, crate::model::Verdict>| {
        m.into_iter().map(|(k, v)| (k, Some(Value::Verdict(v)))).collect::<BTreeMap<_, _>>()
    };
    put(names::CLUSTER_IPS, decl(KeyShape::Addr, ValueShape::None), keys(&mut el.cluster_ips.iter().map(|&ip| Key::Addr(ip))));
    put(
        names::NODEPORT_IPS,
        decl(KeyShape::Addr, ValueShape::None),
        keys(&mut config.node_port_ips.iter().filter(|ip| config.family.contains(**ip)).map(|&ip| Key::Addr(ip))),
    );
    put(names::SERVICE_DISPATCH, decl(KeyShape::Service, ValueShape::Verdict), verdicts(el.dispatch));
    put(names::NODEPORT_DISPATCH, decl(KeyShape::Port, ValueShape::Verdict), verdicts(el.nodeport_dispatch));
    put(names::NO_ENDPOINT_SERVICES, decl(KeyShape::Service, ValueShape::Verdict), verdicts(el.no_endpoints));
    put(names::NO_ENDPOINT_NODEPORTS, decl(KeyShape::Port, ValueShape::Verdict), verdicts(el.no_endpoint_nodeports));
    put(names::FIREWALL_SERVICES, decl(KeyShape::Service, ValueShape::None), keys(&mut el.firewall_services.into_iter()));
    put(names::FIREWALL_ALLOW, decl(KeyShape::ServiceSource, ValueShape::None), keys(&mut el.firewall_allow.into_iter()));
    put(names::HAIRPIN, decl(KeyShape::AddrPair, ValueShape::None), keys(&mut el.hairpin.iter().map(|&ip| Key::AddrPair(ip, ip))));
    put(
        names::AFFINITY,
        SetDecl { key: KeyShape::Affinity, value: ValueShape::Target, dynamic_timeout: Some(MAX_AFFINITY_SECONDS) },
        BTreeMap::new(),
    );

    let mut slot_sizes: BTreeMap<SlotKind, Vec<usize>> = BTreeMap::new();
    for ((kind, n), slots) in el.slots {
        slot_sizes.entry(kind).or_default().push(n);
        let shape = if kind.by_address() { KeyShape::ServiceSlot(n as u32) } else { KeyShape::PortSlot(n as u32) };
        put(&kind.map_name(n), decl(shape, ValueShape::Target), slots.into_iter().map(|(k, v)| (k, Some(v))).collect());
    }

    let mut affinity: BTreeMap<u32, Vec<Protocol>> = BTreeMap::new();
    for (timeout, dests) in el.affinity {
        let mut protocols: Vec<Protocol> = dests
            .iter()
            .filter_map(|k| match k {
                Key::Service(_, p, _) => Some(*p),
                _ => None,
            })
            .collect();
        protocols.sort();
        protocols.dedup();
        affinity.insert(timeout, protocols);
        put(&names::affinity_services(timeout), decl(KeyShape::Service, ValueShape::None), keys(&mut dests.into_iter()));
    }

    rs.chains = chains::chains(&chains::ChainInputs { config, slot_sizes, affinity });
    Rendered {
        ruleset: rs,
        no_local_endpoints: el.no_local,
    }
}
