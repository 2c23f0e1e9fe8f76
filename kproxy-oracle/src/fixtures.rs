//! Upstream's test conventions, as constants and builders of real API
//! objects, so scenarios (and later e2e tests) use the same objects a user
//! would create.
//!
//! Addresses: pods 10.0.0.0/8 (local pods 10.180.0.0/24 on [`NODE_NAME`],
//! remote pods 10.180.1.0/24 on [`OTHER_NODE`]), ClusterIPs
//! 172.30.0.0/16, node 192.168.0.2, externalIPs 192.168.99.0/24, LB VIPs
//! 1.2.3.4 and 5.6.7.8, clients 203.0.113.2 (allowed) and 203.0.113.130
//! (blocked by the source range 203.0.113.0/25). IPv6 equivalents live under
//! fd00::/8 and 2001:db8::/32.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Node, NodeAddress, NodeSpec, NodeStatus, Service,
    ServicePort, ServiceSpec, ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint as ApiEndpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode, ForZone,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use kproxy_core::config::{LocalDetector, ProxierConfig};
use kproxy_core::convert::SERVICE_NAME_LABEL;
use kproxy_core::model::{IpFamily, ZONE_LABEL};

/// The node the proxier runs on.
pub const NODE_NAME: &str = "node-a";
/// Another node of the cluster.
pub const OTHER_NODE: &str = "node-b";
/// The zone of [`NODE_NAME`].
pub const NODE_ZONE: &str = "zone-a";
/// The zone of [`OTHER_NODE`].
pub const OTHER_ZONE: &str = "zone-b";
/// The node's IPv4 address.
pub const NODE_IP: &str = "192.168.0.2";
/// The node's IPv6 address.
pub const NODE_IP_V6: &str = "2001:db8::2";
/// The cluster's IPv4 pod CIDR.
pub const POD_CIDR: &str = "10.0.0.0/8";
/// The cluster's IPv6 pod CIDR.
pub const POD_CIDR_V6: &str = "fd00:10::/32";
/// A pod on this node that is no service's endpoint.
pub const LOCAL_CLIENT_POD: &str = "10.180.0.100";
/// A pod on another node: its connections to this node's frontends
/// arrive from outside with a pod-range source.
pub const REMOTE_CLIENT_POD: &str = "10.180.1.200";
/// An off-cluster client allowed by the fixture source range.
pub const ALLOWED_CLIENT: &str = "203.0.113.2";
/// An off-cluster client blocked by the fixture source range.
pub const BLOCKED_CLIENT: &str = "203.0.113.130";
/// The fixture `loadBalancerSourceRanges` entry.
pub const SOURCE_RANGE: &str = "203.0.113.0/25";
/// The first LoadBalancer VIP.
pub const LB_IP: &str = "1.2.3.4";
/// The second LoadBalancer VIP.
pub const LB_IP_2: &str = "5.6.7.8";

/// The default proxier configuration of the fixtures for `family`: local
/// detector ClusterCIDR over the pod CIDR, the node IP, NodePorts on the node
/// IP.
pub fn config(family: IpFamily) -> ProxierConfig {
    let (cidr, node_ip) = match family {
        IpFamily::V4 => (POD_CIDR, NODE_IP),
        IpFamily::V6 => (POD_CIDR_V6, NODE_IP_V6),
    };
    let node_ip = node_ip.parse().expect("fixture literal");
    ProxierConfig {
        local_detector: LocalDetector::ClusterCidr(vec![cidr.parse().expect("fixture literal")]),
        node_ips: vec![node_ip],
        node_port_ips: vec![node_ip],
        ..ProxierConfig::new(family)
    }
}

/// This node's Node object (zone [`NODE_ZONE`], both node IPs).
pub fn node() -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(NODE_NAME.into()),
            labels: Some(BTreeMap::from([(ZONE_LABEL.to_string(), NODE_ZONE.to_string())])),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidrs: Some(vec!["10.180.0.0/24".into(), "fd00:10:180::/64".into()]),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress { address: NODE_IP.into(), type_: "InternalIP".into() },
                NodeAddress { address: NODE_IP_V6.into(), type_: "InternalIP".into() },
            ]),
            ..Default::default()
        }),
    }
}

/// Builds a `Service`.
#[derive(Debug, Clone)]
pub struct ServiceBuilder(Service);

/// Starts a ClusterIP Service `namespace/name` with the given ClusterIPs
/// (one per family), with the IP families and family policy the API server
/// would record for them.
pub fn service(namespace: &str, name: &str, cluster_ips: &[&str]) -> ServiceBuilder {
    let families: Vec<String> = cluster_ips.iter().map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" }.to_string()).collect();
    let policy = if cluster_ips.len() > 1 { "RequireDualStack" } else { "SingleStack" };
    ServiceBuilder(Service {
        metadata: meta(namespace, name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: cluster_ips.first().map(|s| s.to_string()),
            cluster_ips: Some(cluster_ips.iter().map(|s| s.to_string()).collect()),
            ip_families: Some(families),
            ip_family_policy: Some(policy.into()),
            ..Default::default()
        }),
        status: None,
    })
}

impl ServiceBuilder {
    fn spec(&mut self) -> &mut ServiceSpec {
        self.0.spec.get_or_insert_with(Default::default)
    }

    /// Adds a port (`protocol` is `TCP`, `UDP` or `SCTP`); `node_port` 0
    /// means none.
    pub fn port(mut self, name: &str, port: i32, protocol: &str, node_port: i32) -> Self {
        self.spec().ports.get_or_insert_with(Vec::new).push(ServicePort {
            name: (!name.is_empty()).then(|| name.to_string()),
            port,
            protocol: Some(protocol.into()),
            node_port: (node_port != 0).then_some(node_port),
            ..Default::default()
        });
        self
    }

    /// Sets `spec.type`.
    pub fn type_(mut self, type_: &str) -> Self {
        self.spec().type_ = Some(type_.into());
        self
    }

    /// Adds `spec.externalIPs`.
    pub fn external_ips(mut self, ips: &[&str]) -> Self {
        self.spec().external_ips = Some(ips.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Makes it a LoadBalancer with these ingress IPs in its status.
    pub fn load_balancer(mut self, vips: &[&str]) -> Self {
        self.spec().type_ = Some("LoadBalancer".into());
        self.0.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(
                    vips.iter()
                        .map(|ip| LoadBalancerIngress { ip: Some(ip.to_string()), ..Default::default() })
                        .collect(),
                ),
            }),
            ..Default::default()
        });
        self
    }

    /// Sets `loadBalancerSourceRanges`.
    pub fn source_ranges(mut self, ranges: &[&str]) -> Self {
        self.spec().load_balancer_source_ranges = Some(ranges.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Sets `externalTrafficPolicy: Local` and a health-check NodePort
    /// (0: none, as the API server leaves it on Services that are not
    /// LoadBalancers).
    pub fn external_policy_local(mut self, health_check_node_port: i32) -> Self {
        let spec = self.spec();
        spec.external_traffic_policy = Some("Local".into());
        spec.health_check_node_port = (health_check_node_port != 0).then_some(health_check_node_port);
        self
    }

    /// Sets `internalTrafficPolicy: Local`.
    pub fn internal_policy_local(mut self) -> Self {
        self.spec().internal_traffic_policy = Some("Local".into());
        self
    }

    /// Sets `trafficDistribution` (`PreferClose`, `PreferSameZone` or
    /// `PreferSameNode`). Proxies read the slices' hints, which the
    /// EndpointSlice controller derives from it, not this field.
    pub fn traffic_distribution(mut self, value: &str) -> Self {
        self.spec().traffic_distribution = Some(value.into());
        self
    }

    /// Sets ClientIP affinity with this timeout.
    pub fn affinity(mut self, timeout_seconds: i32) -> Self {
        let spec = self.spec();
        spec.session_affinity = Some("ClientIP".into());
        spec.session_affinity_config = Some(SessionAffinityConfig {
            client_ip: Some(ClientIPConfig { timeout_seconds: Some(timeout_seconds) }),
        });
        self
    }

    /// The finished object.
    pub fn build(self) -> Service {
        self.0
    }
}

/// Builds an `EndpointSlice`.
#[derive(Debug, Clone)]
pub struct SliceBuilder(EndpointSlice);

/// Starts a slice `name` of Service `namespace/service` with `address_type`
/// `IPv4` or `IPv6`.
pub fn slice(namespace: &str, service: &str, name: &str, address_type: &str) -> SliceBuilder {
    let mut metadata = meta(namespace, name);
    metadata.labels = Some(BTreeMap::from([(SERVICE_NAME_LABEL.to_string(), service.to_string())]));
    SliceBuilder(EndpointSlice {
        address_type: address_type.into(),
        endpoints: Vec::new(),
        metadata,
        ports: None,
    })
}

/// The state of one endpoint in a [`SliceBuilder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointState {
    /// Ready (conditions left unset, so upstream's defaults apply).
    Ready,
    /// Not ready, serving, terminating.
    ServingTerminating,
    /// Not ready, not serving, terminating.
    Terminating,
    /// Not ready, not terminating.
    NotReady,
}

impl SliceBuilder {
    /// Adds a port.
    pub fn port(mut self, name: &str, port: i32, protocol: &str) -> Self {
        self.0.ports.get_or_insert_with(Vec::new).push(EndpointPort {
            name: (!name.is_empty()).then(|| name.to_string()),
            port: Some(port),
            protocol: Some(protocol.into()),
            app_protocol: None,
        });
        self
    }

    /// Adds an endpoint on `node` in `state`.
    pub fn endpoint(mut self, ip: &str, node: &str, state: EndpointState) -> Self {
        let conditions = match state {
            EndpointState::Ready => None,
            EndpointState::ServingTerminating => Some((false, true, true)),
            EndpointState::Terminating => Some((false, false, true)),
            EndpointState::NotReady => Some((false, false, false)),
        };
        self.0.endpoints.push(ApiEndpoint {
            addresses: vec![ip.into()],
            node_name: Some(node.into()),
            conditions: conditions.map(|(ready, serving, terminating)| EndpointConditions {
                ready: Some(ready),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            ..Default::default()
        });
        self
    }

    /// Adds zone and node hints to the last endpoint.
    pub fn hints(mut self, zones: &[&str], nodes: &[&str]) -> Self {
        if let Some(ep) = self.0.endpoints.last_mut() {
            ep.hints = Some(EndpointHints {
                for_zones: (!zones.is_empty()).then(|| zones.iter().map(|z| ForZone { name: z.to_string() }).collect()),
                for_nodes: (!nodes.is_empty()).then(|| nodes.iter().map(|n| ForNode { name: n.to_string() }).collect()),
            });
        }
        self
    }

    /// The finished object.
    pub fn build(self) -> EndpointSlice {
        self.0
    }
}

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}
