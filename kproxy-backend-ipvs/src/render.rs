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

use kproxy_core::{select_endpoints, Endpoint, NoLocalEndpoints, ProxierConfig, ProxyState, ServicePortName};

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
        let selected = select_endpoints(state.endpoints().get(name), svc, state.node());
        let dests = |eps: &[Endpoint]| -> BTreeMap<RsKey, u32> { eps.iter().map(|e| (RsKey { addr: e.ip, port: e.port }, 1)).collect() };
        // As upstream's IPVS mode: a Local policy takes this node's
        // endpoints when it has some, otherwise the Cluster ones.
        let pick = |local_only: bool| if local_only && !selected.local.is_empty() { &selected.local } else { &selected.cluster };
        let internal = dests(pick(svc.internal_policy_local));
        let external = dests(pick(svc.external_policy_local));
        let mut add = |addr: IpAddr, port: u16, dests: &BTreeMap<RsKey, u32>| {
            let key = VsKey { protocol: svc.protocol, addr, port };
            let server = VirtualServer { key, scheduler, persistence: svc.affinity_timeout_seconds };
            out.services.insert(key, DesiredService { server, dests: dests.clone(), owner: name.clone() });
        };
        add(svc.cluster_ip, svc.port, &internal);
        out.addresses.insert(svc.cluster_ip);
        for &ip in svc.external_ips.iter().chain(&svc.load_balancer_vips) {
            add(ip, svc.port, &external);
            out.addresses.insert(ip);
        }
        if let Some(node_port) = svc.node_port {
            for &ip in &config.node_port_ips {
                add(ip, node_port, &external);
            }
        }
    }
    // A node address never goes on the dummy interface (it would move the
    // node's own address), even when a Service names it as an externalIP.
    for ip in config.node_ips.iter().chain(&config.node_port_ips) {
        out.addresses.remove(ip);
    }
    out
}

/// Ports whose Local policy has endpoints, none on this node (for
/// `kubeproxy_sync_proxy_rules_no_local_endpoints_total`).
pub fn no_local_endpoints(state: &ProxyState) -> NoLocalEndpoints {
    let mut out = NoLocalEndpoints::default();
    for (name, svc) in state.services().iter() {
        let selected = select_endpoints(state.endpoints().get(name), svc, state.node());
        let none_local = selected.has_any && selected.local.is_empty();
        out.internal += usize::from(svc.internal_policy_local && none_local);
        out.external += usize::from(svc.externally_accessible() && svc.external_policy_local && none_local);
    }
    out
}
