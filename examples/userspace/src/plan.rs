//! What userspace mode must do, from the proxy state alone (pure): the
//! listeners the proxy runs and where each forwards, and, for each Service
//! address, whether the kernel steers a packet to a listener, drops it or
//! refuses it.
//!
//! A Service port gets up to two listeners: one forwarding to its cluster
//! endpoints and one to its node-local ones, as its traffic policies need.
//! The decisions follow kube-proxy's (see `kproxy_oracle::evaluate`):
//! ClusterIP traffic takes the internal policy; externalIPs, LoadBalancer
//! VIPs (after `loadBalancerSourceRanges`) and NodePorts take the external
//! one, where `Local` still sends the node's own traffic and its pods'
//! traffic to the cluster endpoints. A port with no usable endpoint
//! anywhere is refused; one whose policy finds no endpoint is dropped.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use kproxy_core::{select_endpoints, LocalDetector, NoLocalEndpoints, Protocol, ProxierConfig, ProxyState, ServicePortInfo, ServicePortName};

/// Which endpoints a listener forwards to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pool {
    /// The port's cluster-wide endpoints (Cluster policy).
    Cluster,
    /// This node's endpoints (Local policy).
    Local,
}

/// One listener: a Service port and the pool it forwards to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenerKey {
    /// The Service port (its protocol is the listener's).
    pub service: ServicePortName,
    /// The endpoints it forwards to.
    pub pool: Pool,
}

/// Where a listener forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarding {
    /// The endpoints, in a stable order (round robin goes through them).
    pub endpoints: Vec<SocketAddr>,
    /// `sessionAffinity: ClientIP`'s timeout: a client keeps its endpoint
    /// while it comes back within it.
    pub affinity: Option<Duration>,
}

/// What the kernel does with a packet a [`Rule`] matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Steer it to this listener.
    Listen(ListenerKey),
    /// Drop it (a policy with no endpoint here, a source range).
    Drop,
    /// Refuse it (no usable endpoint anywhere).
    Reject,
}

/// Which sources a [`Rule`] matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Every source.
    Any,
    /// This node's pods, by the local-traffic detector.
    Pods(LocalDetector),
    /// Sources outside these networks (`loadBalancerSourceRanges`; empty:
    /// every source).
    NotIn(Vec<IpNet>),
}

/// One steering decision; a chain's rules are tried in order and the
/// first match decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The destination addresses.
    pub addresses: Vec<IpAddr>,
    /// The protocol.
    pub protocol: Protocol,
    /// The destination port.
    pub port: u16,
    /// The sources matched.
    pub source: Source,
    /// What happens.
    pub action: Action,
}

/// Everything a sync programs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The listeners and where each forwards.
    pub listeners: BTreeMap<ListenerKey, Forwarding>,
    /// Rules for packets arriving at the node (pods, other hosts).
    pub arriving: Vec<Rule>,
    /// Rules for packets the node itself sends.
    pub from_node: Vec<Rule>,
    /// Ports userspace mode cannot serve (SCTP).
    pub unsupported: Vec<ServicePortName>,
    /// Local policies with endpoints elsewhere but none here.
    pub no_local_endpoints: NoLocalEndpoints,
}

/// The endpoints one Service port may use from this node.
struct Ports<'a> {
    name: &'a ServicePortName,
    svc: &'a ServicePortInfo,
    has_any: bool,
    cluster: Vec<SocketAddr>,
    local: Vec<SocketAddr>,
}

impl Ports<'_> {
    /// The action for traffic served by `pool`, registering its listener.
    fn action(&self, pool: Pool, listeners: &mut BTreeMap<ListenerKey, Forwarding>) -> Action {
        if !self.has_any {
            return Action::Reject;
        }
        let endpoints = match pool {
            Pool::Cluster => &self.cluster,
            Pool::Local => &self.local,
        };
        if endpoints.is_empty() {
            return Action::Drop;
        }
        let key = ListenerKey { service: self.name.clone(), pool };
        let affinity = self.svc.affinity_timeout_seconds.map(|s| Duration::from_secs(u64::from(s)));
        listeners.insert(key.clone(), Forwarding { endpoints: endpoints.clone(), affinity });
        Action::Listen(key)
    }

    fn rule(&self, addresses: Vec<IpAddr>, port: u16, source: Source, action: Action) -> Rule {
        Rule { addresses, protocol: self.svc.protocol, port, source, action }
    }
}

/// The plan for `state` with `config`.
pub fn plan(state: &ProxyState, config: &ProxierConfig) -> Plan {
    let mut out = Plan::default();
    let mut ports = Vec::new();
    for (name, svc) in state.services().iter() {
        if svc.protocol == Protocol::Sctp {
            out.unsupported.push(name.clone());
            continue;
        }
        let selected = select_endpoints(state.endpoints().get(name), svc, state.node());
        let addrs = |eps: &[kproxy_core::Endpoint]| eps.iter().map(|e| e.addr()).collect::<Vec<_>>();
        if svc.internal_policy_local && selected.has_any && selected.local.is_empty() {
            out.no_local_endpoints.internal += 1;
        }
        if svc.external_policy_local && svc.externally_accessible() && selected.has_any && selected.local.is_empty() {
            out.no_local_endpoints.external += 1;
        }
        ports.push(Ports { name, svc, has_any: selected.has_any, cluster: addrs(&selected.cluster), local: addrs(&selected.local) });
    }
    // ClusterIPs first, then externalIPs, LoadBalancer VIPs and NodePorts,
    // each in Service order: where two Services claim the same address and
    // port, the first one wins, as in the other modes.
    for p in &ports {
        let pool = if p.svc.internal_policy_local { Pool::Local } else { Pool::Cluster };
        let action = p.action(pool, &mut out.listeners);
        let rule = p.rule(vec![p.svc.cluster_ip], p.svc.port, Source::Any, action);
        out.arriving.push(rule.clone());
        out.from_node.push(rule);
    }
    let external = |out: &mut Plan, p: &Ports, addresses: Vec<IpAddr>, port: u16| {
        if addresses.is_empty() {
            return;
        }
        let cluster = p.action(Pool::Cluster, &mut out.listeners);
        // The node's own traffic takes the cluster endpoints under either
        // policy; arriving traffic takes the Local pool under Local, except
        // from this node's pods.
        out.from_node.push(p.rule(addresses.clone(), port, Source::Any, cluster.clone()));
        if p.svc.external_policy_local {
            if config.local_detector.is_implemented() {
                out.arriving.push(p.rule(addresses.clone(), port, Source::Pods(config.local_detector.clone()), cluster));
            }
            let local = p.action(Pool::Local, &mut out.listeners);
            out.arriving.push(p.rule(addresses, port, Source::Any, local));
        } else {
            out.arriving.push(p.rule(addresses, port, Source::Any, cluster));
        }
    };
    for p in &ports {
        external(&mut out, p, p.svc.external_ips.clone(), p.svc.port);
    }
    for p in &ports {
        for &vip in &p.svc.load_balancer_vips {
            if p.svc.source_ranges.is_restricted() {
                let mut allowed = p.svc.source_ranges.networks().to_vec();
                // A node reaching its own VIP may show the VIP as the source.
                if allowed.iter().any(|n| config.node_ips.iter().any(|ip| n.contains(ip))) {
                    allowed.push(IpNet::from(vip));
                }
                let blocked = p.rule(vec![vip], p.svc.port, Source::NotIn(allowed), Action::Drop);
                out.arriving.push(blocked.clone());
                out.from_node.push(blocked);
            }
            external(&mut out, p, vec![vip], p.svc.port);
        }
    }
    for p in &ports {
        if let Some(node_port) = p.svc.node_port {
            external(&mut out, p, config.node_port_ips.clone(), node_port);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kproxy_core::IpFamily;
    use kproxy_oracle::fixtures::{self as fx, service, slice, EndpointState};

    fn state(services: &[k8s_openapi::api::core::v1::Service], slices: &[k8s_openapi::api::discovery::v1::EndpointSlice]) -> ProxyState {
        let mut state = ProxyState::new(IpFamily::V4, fx::NODE_NAME);
        state.on_node(&fx::node());
        for s in services {
            state.on_service(None, Some(s));
        }
        for s in slices {
            state.on_endpoint_slice(s, false);
        }
        state.apply();
        state
    }

    fn name(n: &str) -> ServicePortName {
        ServicePortName::new("ns", n, "http", Protocol::Tcp)
    }

    #[test]
    fn a_port_without_endpoints_is_refused_and_one_with_them_gets_a_listener() {
        let a = service("ns", "a", &["172.30.0.1"]).port("http", 80, "TCP", 0).build();
        let b = service("ns", "b", &["172.30.0.2"]).port("http", 80, "TCP", 0).build();
        let eps = slice("ns", "a", "a-1", "IPv4").port("http", 8080, "TCP").endpoint("10.0.0.1", "node-b", EndpointState::Ready).build();
        let plan = plan(&state(&[a, b], &[eps]), &ProxierConfig::new(IpFamily::V4));
        let key = ListenerKey { service: name("a"), pool: Pool::Cluster };
        assert_eq!(plan.listeners.keys().collect::<Vec<_>>(), vec![&key]);
        assert_eq!(plan.listeners[&key].endpoints, vec!["10.0.0.1:8080".parse().unwrap()]);
        assert_eq!(plan.arriving[0].action, Action::Listen(key));
        assert_eq!(plan.arriving[1].action, Action::Reject);
        assert_eq!(plan.arriving, plan.from_node);
    }

    #[test]
    fn external_local_policy_keeps_the_node_and_its_pods_on_the_cluster_endpoints() {
        let svc = service("ns", "a", &["172.30.0.1"]).port("http", 80, "TCP", 30080).type_("NodePort").external_policy_local(0).build();
        let eps = slice("ns", "a", "a-1", "IPv4").port("http", 8080, "TCP").endpoint("10.0.0.1", "node-b", EndpointState::Ready).build();
        let mut config = ProxierConfig::new(IpFamily::V4);
        config.node_port_ips = vec![fx::NODE_IP.parse().unwrap()];
        config.local_detector = LocalDetector::ClusterCidr(vec!["10.0.0.0/8".parse().unwrap()]);
        let plan = plan(&state(&[svc], &[eps]), &config);
        let cluster = Action::Listen(ListenerKey { service: name("a"), pool: Pool::Cluster });
        let node_port: Vec<_> = plan.arriving.iter().filter(|r| r.port == 30080).map(|r| (&r.source, &r.action)).collect();
        assert_eq!(node_port, vec![(&Source::Pods(config.local_detector.clone()), &cluster), (&Source::Any, &Action::Drop)]);
        assert_eq!(plan.from_node.iter().filter(|r| r.port == 30080).map(|r| &r.action).collect::<Vec<_>>(), vec![&cluster]);
        assert_eq!(plan.no_local_endpoints.external, 1);
    }
}
