//! The desired state kept up to date port by port, so a sync that changes
//! one Service re-renders one Service: each port's virtual servers, set
//! entries and addresses are remembered, entries and addresses shared by
//! several ports are counted, and what appeared or vanished since the last
//! sync is journaled for a partial kernel update.
//!
//! It always equals the whole-state rendering ([`render_ipvs`](crate::render::render_ipvs),
//! [`render_sets`](crate::rules::render_sets)); a proptest checks it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use kproxy_core::{NamespacedName, NoLocalEndpoints, ProxierConfig, ProxyState, ServicePortName};

use crate::model::{Scheduler, VsKey};
use crate::render::{port_addresses, port_no_local, render_port, DesiredIpvs, DesiredService};
use crate::rules::{port_entries, port_node_blocks, NodeBlock};
use crate::sets::{all_sets, Entry, SetName, Sets};

/// What one port contributes.
#[derive(Debug, Clone, Default)]
struct Port {
    services: Vec<(VsKey, DesiredService)>,
    entries: Vec<(SetName, Entry)>,
    addresses: Vec<IpAddr>,
    no_local: (bool, bool),
    blocks: Vec<NodeBlock>,
}

/// What changed since the journal was last taken.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Journal {
    /// Virtual servers added, changed or removed.
    pub services: BTreeSet<VsKey>,
    /// Set entries that appeared (`true`) or vanished (`false`).
    pub entries: BTreeMap<(SetName, Entry), bool>,
    /// Addresses that appeared (`true`) or vanished (`false`).
    pub addresses: BTreeMap<IpAddr, bool>,
    /// Node blocks that appeared (`true`) or vanished (`false`).
    pub blocks: BTreeMap<NodeBlock, bool>,
}

/// The desired IPVS state, rendered port by port.
#[derive(Debug, Clone)]
pub struct Renderer {
    config: ProxierConfig,
    scheduler: Scheduler,
    ports: BTreeMap<ServicePortName, Port>,
    by_service: BTreeMap<NamespacedName, Vec<ServicePortName>>,
    /// Each virtual server with the ports claiming it (normally one).
    services: BTreeMap<VsKey, BTreeMap<ServicePortName, DesiredService>>,
    entries: BTreeMap<(SetName, Entry), usize>,
    addresses: BTreeMap<IpAddr, usize>,
    blocks: BTreeMap<NodeBlock, usize>,
    no_local: NoLocalEndpoints,
    journal: Journal,
}

impl Renderer {
    /// An empty renderer for `config`, with `scheduler`.
    pub fn new(config: ProxierConfig, scheduler: Scheduler) -> Self {
        Renderer {
            config,
            scheduler,
            ports: BTreeMap::new(),
            by_service: BTreeMap::new(),
            services: BTreeMap::new(),
            entries: BTreeMap::new(),
            addresses: BTreeMap::new(),
            blocks: BTreeMap::new(),
            no_local: NoLocalEndpoints::default(),
            journal: Journal::default(),
        }
    }

    /// Re-renders every port of `state` (after a node change, or at start).
    pub fn refresh_all(&mut self, state: &ProxyState) {
        let names: BTreeSet<NamespacedName> =
            self.ports.keys().map(|n| n.service.clone()).chain(state.services().iter().map(|(n, _)| n.service.clone())).collect();
        self.refresh(state, &names);
    }

    /// Re-renders the ports of `services` (gone ones are removed); costs
    /// what those Services have, not what the node has.
    pub fn refresh(&mut self, state: &ProxyState, services: &BTreeSet<NamespacedName>) {
        for service in services {
            for name in self.by_service.remove(service).unwrap_or_default() {
                let port = self.ports.remove(&name).expect("indexed");
                self.withdraw(&name, port);
            }
            let current: Vec<(ServicePortName, kproxy_core::ServicePortInfo)> =
                state.services().ports_of(service).map(|(n, s)| (n.clone(), s.clone())).collect();
            for (name, svc) in current {
                let port = Port {
                    services: render_port(state, &self.config, self.scheduler, &name, &svc),
                    entries: port_entries(&svc, state.endpoints().get(&name), &self.config),
                    addresses: port_addresses(&svc, &self.config),
                    no_local: port_no_local(state, &name, &svc),
                    blocks: port_node_blocks(&svc, &self.config),
                };
                self.contribute(&name, &port);
                self.by_service.entry(service.clone()).or_default().push(name.clone());
                self.ports.insert(name, port);
            }
        }
    }

    fn contribute(&mut self, name: &ServicePortName, port: &Port) {
        self.no_local.internal += usize::from(port.no_local.0);
        self.no_local.external += usize::from(port.no_local.1);
        for (key, svc) in &port.services {
            self.services.entry(*key).or_default().insert(name.clone(), svc.clone());
            self.journal.services.insert(*key);
        }
        for e in &port.entries {
            count_up(&mut self.entries, e.clone(), &mut self.journal.entries);
        }
        for ip in &port.addresses {
            count_up(&mut self.addresses, *ip, &mut self.journal.addresses);
        }
        for b in &port.blocks {
            count_up(&mut self.blocks, *b, &mut self.journal.blocks);
        }
    }

    fn withdraw(&mut self, name: &ServicePortName, port: Port) {
        self.no_local.internal -= usize::from(port.no_local.0);
        self.no_local.external -= usize::from(port.no_local.1);
        for (key, _) in &port.services {
            if let Some(claims) = self.services.get_mut(key) {
                claims.remove(name);
                if claims.is_empty() {
                    self.services.remove(key);
                }
            }
            self.journal.services.insert(*key);
        }
        for e in port.entries {
            count_down(&mut self.entries, e, &mut self.journal.entries);
        }
        for ip in port.addresses {
            count_down(&mut self.addresses, ip, &mut self.journal.addresses);
        }
        for b in port.blocks {
            count_down(&mut self.blocks, b, &mut self.journal.blocks);
        }
    }

    /// The desired virtual server `key` (the first claiming port's, when
    /// two ports claim one address and port).
    pub fn service(&self, key: &VsKey) -> Option<&DesiredService> {
        self.services.get(key).and_then(|claims| claims.values().next())
    }

    /// Every desired virtual server.
    pub fn services(&self) -> BTreeMap<VsKey, DesiredService> {
        self.services.keys().filter_map(|k| Some((*k, self.service(k)?.clone()))).collect()
    }

    /// Every VIP:port the node may not reach (`KUBE-IPVS-OUT-FILTER`).
    pub fn node_blocks(&self) -> BTreeSet<NodeBlock> {
        self.blocks.keys().copied().collect()
    }

    /// Every desired address on the dummy interface.
    pub fn addresses(&self) -> BTreeSet<IpAddr> {
        self.addresses.keys().copied().collect()
    }

    /// The whole desired IPVS side.
    pub fn desired(&self) -> DesiredIpvs {
        DesiredIpvs { addresses: self.addresses(), services: self.services() }
    }

    /// Every set, with its entries (every set is present).
    pub fn sets(&self) -> Sets {
        let mut sets: Sets = all_sets().into_iter().map(|s| (s, BTreeSet::new())).collect();
        for (set, e) in self.entries.keys() {
            sets.get_mut(set).expect("every set is present").insert(e.clone());
        }
        sets
    }

    /// Ports whose Local policy has endpoints, none on this node.
    pub fn no_local_endpoints(&self) -> NoLocalEndpoints {
        self.no_local
    }

    /// What changed since the last call.
    pub fn take_journal(&mut self) -> Journal {
        std::mem::take(&mut self.journal)
    }
}

/// Counts `item` in; journals it when it appears.
fn count_up<T: Ord + Clone>(counts: &mut BTreeMap<T, usize>, item: T, journal: &mut BTreeMap<T, bool>) {
    let n = counts.entry(item.clone()).or_insert(0);
    *n += 1;
    if *n == 1 {
        toggle(journal, item, true);
    }
}

/// Counts `item` out; journals it when it vanishes.
fn count_down<T: Ord + Clone>(counts: &mut BTreeMap<T, usize>, item: T, journal: &mut BTreeMap<T, bool>) {
    if let Some(n) = counts.get_mut(&item) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&item);
            toggle(journal, item, false);
        }
    }
}

/// Journals `item` appearing or vanishing; the opposite of what the
/// journal already says cancels it (it is as the kernel last saw it).
fn toggle<T: Ord>(journal: &mut BTreeMap<T, bool>, item: T, appeared: bool) {
    match journal.get(&item) {
        Some(&before) if before != appeared => {
            journal.remove(&item);
        }
        _ => {
            journal.insert(item, appeared);
        }
    }
}
