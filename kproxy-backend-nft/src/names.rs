//! The fixed names of kproxy's chains, sets and maps.
//!
//! No name here is ever derived from a Kubernetes object: services appear
//! only as set and map elements, so no namespace, name or port name can
//! reach the rule text, and the number of chains does not grow with the
//! number of services.

use kproxy_core::Protocol;

/// The two table names kproxy alternates between (see [`crate::kernel`]).
pub const TABLES: [&str; 2] = ["kproxy-a", "kproxy-b"];

/// Base chain: nat prerouting, jumps to [`SERVICES`].
pub const NAT_PREROUTING: &str = "nat-prerouting";
/// Base chain: nat output, jumps to [`SERVICES`].
pub const NAT_OUTPUT: &str = "nat-output";
/// Base chain: nat postrouting, masquerades marked and hairpin traffic.
pub const NAT_POSTROUTING: &str = "nat-postrouting";
/// Base chain: filter prerouting before DNAT, the firewall.
pub const FILTER_PREROUTING: &str = "filter-prerouting";
/// Base chain: filter output before DNAT, the firewall.
pub const FILTER_OUTPUT_FIREWALL: &str = "filter-output-firewall";
/// Base chain: filter prerouting after DNAT, records affinity.
pub const AFFINITY_PREROUTING: &str = "affinity-prerouting";
/// Base chain: filter output after DNAT, records affinity.
pub const AFFINITY_OUTPUT: &str = "affinity-output";
/// Base chain: filter input, endpoint checks.
pub const FILTER_INPUT: &str = "filter-input";
/// Base chain: filter forward, endpoint checks.
pub const FILTER_FORWARD: &str = "filter-forward";
/// Base chain: filter output, endpoint checks.
pub const FILTER_OUTPUT: &str = "filter-output";

/// Dispatch by destination to the behaviour chains below.
pub const SERVICES: &str = "services";
/// ClusterIP traffic, Cluster policy.
pub const CLUSTER_IP: &str = "cluster-ip";
/// ClusterIP traffic, `internalTrafficPolicy: Local`.
pub const CLUSTER_IP_LOCAL: &str = "cluster-ip-local";
/// externalIP / LoadBalancer traffic, Cluster policy.
pub const EXTERNAL: &str = "external";
/// externalIP / LoadBalancer traffic, `externalTrafficPolicy: Local`.
pub const EXTERNAL_LOCAL: &str = "external-local";
/// NodePort traffic, Cluster policy.
pub const NODEPORT: &str = "nodeport";
/// NodePort traffic, `externalTrafficPolicy: Local`.
pub const NODEPORT_LOCAL: &str = "nodeport-local";
/// DNAT by destination to the cluster endpoint list.
pub const CLUSTER_LB: &str = "cluster-lb";
/// DNAT by destination to the local endpoint list.
pub const LOCAL_LB: &str = "local-lb";
/// DNAT by NodePort to the cluster endpoint list.
pub const NODEPORT_CLUSTER_LB: &str = "nodeport-cluster-lb";
/// DNAT by NodePort to the local endpoint list.
pub const NODEPORT_LOCAL_LB: &str = "nodeport-local-lb";
/// Sets the masquerade mark.
pub const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
/// Drops sources outside `loadBalancerSourceRanges`.
pub const FIREWALL_CHECK: &str = "firewall-check";
/// Records ClientIP affinity after DNAT.
pub const AFFINITY_RECORD: &str = "affinity-record";
/// Rejects or drops traffic to services without usable endpoints, and
/// unknown ports on ClusterIPs.
pub const ENDPOINTS_CHECK: &str = "endpoints-check";

/// Set: every ClusterIP.
pub const CLUSTER_IPS: &str = "cluster-ips";
/// Set: the addresses NodePorts are served on.
pub const NODEPORT_IPS: &str = "nodeport-ips";
// Dispatch uses plain sets and one fixed rule per behaviour, not verdict
// maps: adding a `goto` element to a map makes the kernel re-validate the
// whole jump graph, which costs milliseconds per commit at 50,000 services.

/// Set: ClusterIP destinations (`addr . proto . port`), Cluster policy.
pub const CLUSTER_IP_SERVICES: &str = "cluster-ip-services";
/// Set: ClusterIP destinations with `internalTrafficPolicy: Local`.
pub const CLUSTER_IP_LOCAL_SERVICES: &str = "cluster-ip-local-services";
/// Set: externalIP and LoadBalancer destinations, Cluster policy.
pub const EXTERNAL_SERVICES: &str = "external-services";
/// Set: externalIP and LoadBalancer destinations, `externalTrafficPolicy: Local`.
pub const EXTERNAL_LOCAL_SERVICES: &str = "external-local-services";
/// Set: NodePorts (`proto . port`), Cluster policy.
pub const NODEPORT_SERVICES: &str = "nodeport-services";
/// Set: NodePorts with `externalTrafficPolicy: Local`.
pub const NODEPORT_LOCAL_SERVICES: &str = "nodeport-local-services";
/// Set: destinations with no endpoint anywhere (rejected).
pub const NO_ENDPOINT_REJECT: &str = "no-endpoint-reject";
/// Set: destinations whose Local policy finds no local endpoint (dropped).
pub const NO_ENDPOINT_DROP: &str = "no-endpoint-drop";
/// Set: NodePorts with no endpoint anywhere (rejected).
pub const NODEPORT_NO_ENDPOINT_REJECT: &str = "nodeport-no-endpoint-reject";
/// Set: NodePorts whose Local policy finds no local endpoint (dropped).
pub const NODEPORT_NO_ENDPOINT_DROP: &str = "nodeport-no-endpoint-drop";
/// Set: LoadBalancer destinations that have source ranges.
pub const FIREWALL_SERVICES: &str = "firewall-services";
/// Interval set: `addr . proto . port . source network` allowed.
pub const FIREWALL_ALLOW: &str = "firewall-allow";
/// Set: `endpoint . endpoint` pairs, for hairpin masquerade.
pub const HAIRPIN: &str = "hairpin";
/// Dynamic map: `client . destination . proto . port` → chosen endpoint.
pub const AFFINITY: &str = "affinity";

/// Map: cluster endpoint slots of `protocol` services with `n` endpoints.
pub fn cluster_slots(protocol: Protocol, n: usize) -> String {
    format!("cluster-slots-{}-{n}", protocol.as_lower_str())
}

/// Map: local endpoint slots of `protocol` services with `n` endpoints.
pub fn local_slots(protocol: Protocol, n: usize) -> String {
    format!("local-slots-{}-{n}", protocol.as_lower_str())
}

/// Map: cluster endpoint slots of `protocol` NodePorts with `n` endpoints.
pub fn nodeport_cluster_slots(protocol: Protocol, n: usize) -> String {
    format!("nodeport-cluster-slots-{}-{n}", protocol.as_lower_str())
}

/// Map: local endpoint slots of `protocol` NodePorts with `n` endpoints.
pub fn nodeport_local_slots(protocol: Protocol, n: usize) -> String {
    format!("nodeport-local-slots-{}-{n}", protocol.as_lower_str())
}

/// Set: destinations whose affinity timeout is `seconds`.
pub fn affinity_services(seconds: u32) -> String {
    format!("affinity-services-{seconds}")
}
