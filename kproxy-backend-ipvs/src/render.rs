//! Rule generation for IPVS: the applied state in, the desired virtual
//! servers and dummy-interface addresses out (pure: the same input always
//! gives the same output).
//!
//! As upstream's IPVS mode: one virtual server per ClusterIP:port,
//! externalIP:port and LoadBalancer VIP:port, and one per NodePort address
//! for each NodePort; real servers of weight 1; ClientIP affinity as
//! persistence with the affinity timeout. The ClusterIP's real servers
//! follow the internal traffic policy, the others the external one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use kproxy_core::{select_endpoints, Endpoint, NoLocalEndpoints, ProxierConfig, ProxyState, ServicePortInfo, ServicePortName};

use crate::model::{RsKey, Scheduler, VirtualServer, VsKey};

/// One desired virtual server with its real servers (address → weight).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredService {
    /// The virtual server.
    pub server: VirtualServer,
    /// Its real servers and their weights.
    pub dests: BTreeMap<RsKey, u32>,
    /// The service port it belongs to.
    pub owner: ServicePortName,
}

/// The IPVS side of the desired state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DesiredIpvs {
    /// Addresses the dummy interface must carry: every ClusterIP,
    /// externalIP and LoadBalancer VIP (never a node address).
    pub addresses: BTreeSet<IpAddr>,
    /// Every virtual server.
    pub services: BTreeMap<VsKey, DesiredService>,
}

/// Renders the applied state of `state` for `config`, with `scheduler`.
pub fn render_ipvs(state: &ProxyState, config: &ProxierConfig, scheduler: Scheduler) -> DesiredIpvs {
    let mut out = DesiredIpvs::default();
    for (name, svc) in state.services().iter() {
        for (key, desired) in render_port(state, config, scheduler, name, svc) {
            // Two ports on one address and port: the first by name owns
            // the virtual server, as in the incremental renderer.
            match out.services.entry(key) {
                std::collections::btree_map::Entry::Occupied(mut e) if desired.owner < e.get().owner => {
                    e.insert(desired);
                }
                std::collections::btree_map::Entry::Occupied(_) => {}
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(desired);
                }
            }
        }
        out.addresses.extend(port_addresses(svc, config));
    }
    out
}

/// One service port's virtual servers.
pub fn render_port(state: &ProxyState, config: &ProxierConfig, scheduler: Scheduler, name: &ServicePortName, svc: &ServicePortInfo) -> Vec<(VsKey, DesiredService)> {
    let selected = select_endpoints(state.endpoints().get(name), svc, state.node());
    let dests = |eps: &[Endpoint]| -> BTreeMap<RsKey, u32> { eps.iter().map(|e| (RsKey { addr: e.ip, port: e.port }, 1)).collect() };
    // As upstream's IPVS mode: a Local policy takes this node's endpoints
    // when it has some, otherwise the Cluster ones.
    let pick = |local_only: bool| if local_only && !selected.local.is_empty() { &selected.local } else { &selected.cluster };
    let internal = dests(pick(svc.internal_policy_local));
    let external = dests(pick(svc.external_policy_local));
    let mut out = Vec::new();
    let mut add = |addr: IpAddr, port: u16, dests: &BTreeMap<RsKey, u32>| {
        let key = VsKey { protocol: svc.protocol, addr, port };
        let server = VirtualServer { key, scheduler, persistence: svc.affinity_timeout_seconds };
        out.push((key, DesiredService { server, dests: dests.clone(), owner: name.clone() }));
    };
    add(svc.cluster_ip, svc.port, &internal);
    for &ip in svc.external_ips.iter().chain(&svc.load_balancer_vips) {
        add(ip, svc.port, &external);
    }
    if let Some(node_port) = svc.node_port {
        for &ip in &config.node_port_ips {
            add(ip, node_port, &external);
        }
    }
    out
}

/// The addresses one service port needs on the dummy interface: its
/// ClusterIP, externalIPs and LoadBalancer VIPs, never a node address
/// (binding one would move the node's own address).
pub fn port_addresses(svc: &ServicePortInfo, config: &ProxierConfig) -> Vec<IpAddr> {
    let node = |ip: &IpAddr| config.node_ips.contains(ip) || config.node_port_ips.contains(ip);
    std::iter::once(&svc.cluster_ip).chain(&svc.external_ips).chain(&svc.load_balancer_vips).filter(|ip| !node(ip)).copied().collect()
}

/// Ports whose Local policy has endpoints, none on this node (for
/// `kubeproxy_sync_proxy_rules_no_local_endpoints_total`).
pub fn no_local_endpoints(state: &ProxyState) -> NoLocalEndpoints {
    let mut out = NoLocalEndpoints::default();
    for (name, svc) in state.services().iter() {
        let (internal, external) = port_no_local(state, name, svc);
        out.internal += usize::from(internal);
        out.external += usize::from(external);
    }
    out
}

/// Whether one port's internal and external Local policies have endpoints,
/// none on this node.
pub fn port_no_local(state: &ProxyState, name: &ServicePortName, svc: &ServicePortInfo) -> (bool, bool) {
    let selected = select_endpoints(state.endpoints().get(name), svc, state.node());
    let none_local = selected.has_any && selected.local.is_empty();
    (svc.internal_policy_local && none_local, svc.externally_accessible() && svc.external_policy_local && none_local)
}
