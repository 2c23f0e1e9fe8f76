//! What kproxy knows about one port of one Service, in one IP family.

use std::net::IpAddr;

use ipnet::IpNet;

use super::Protocol;

/// Upstream's default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;

/// One port of one Service, reduced to what a dataplane needs, for one IP
/// family: every address here is of the proxier's family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortInfo {
    /// The Service's ClusterIP in this family.
    pub cluster_ip: IpAddr,
    /// The Service port (`spec.ports[].port`).
    pub port: u16,
    /// The port's protocol.
    pub protocol: Protocol,
    /// The NodePort, if one is allocated.
    pub node_port: Option<u16>,
    /// LoadBalancer VIPs from `status.loadBalancer.ingress` (entries with
    /// `ipMode: Proxy` are left out, as upstream does), sorted.
    pub load_balancer_vips: Vec<IpAddr>,
    /// `spec.externalIPs` of this family, sorted.
    pub external_ips: Vec<IpAddr>,
    /// Which sources may reach the LoadBalancer VIPs.
    pub source_ranges: SourceRanges,
    /// ClientIP session affinity timeout in seconds, if affinity is on.
    pub affinity_timeout_seconds: Option<u32>,
    /// `externalTrafficPolicy: Local` on an externally reachable service.
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// The health-check NodePort of a `LoadBalancer` service with
    /// `externalTrafficPolicy: Local`.
    pub health_check_node_port: Option<u16>,
}

/// The `loadBalancerSourceRanges` that apply to one family.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SourceRanges {
    /// No ranges are set: every source may reach the VIPs.
    #[default]
    AllowAll,
    /// Only these networks may reach the VIPs (sorted, deduplicated).
    ///
    /// The list can be empty: a Service whose ranges were all invalid or all
    /// of the other family lets no source in, rather than everyone (fail
    /// closed).
    Only(Vec<IpNet>),
}

impl SourceRanges {
    /// Whether a source range applies at all.
    pub fn is_restricted(&self) -> bool {
        matches!(self, SourceRanges::Only(_))
    }

    /// The allowed networks (empty for `AllowAll`).
    pub fn networks(&self) -> &[IpNet] {
        match self {
            SourceRanges::AllowAll => &[],
            SourceRanges::Only(nets) => nets,
        }
    }
}

impl ServicePortInfo {
    /// A plain ClusterIP service port with no extras; handy for tests and for
    /// building records by hand.
    pub fn cluster_ip(cluster_ip: IpAddr, port: u16, protocol: Protocol) -> Self {
        ServicePortInfo {
            cluster_ip,
            port,
            protocol,
            node_port: None,
            load_balancer_vips: Vec::new(),
            external_ips: Vec::new(),
            source_ranges: SourceRanges::AllowAll,
            affinity_timeout_seconds: None,
            external_policy_local: false,
            internal_policy_local: false,
            health_check_node_port: None,
        }
    }

    /// Whether traffic can reach this port from outside the cluster: it has a
    /// NodePort, LoadBalancer VIPs or externalIPs.
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some() || !self.load_balancer_vips.is_empty() || !self.external_ips.is_empty()
    }

    /// Whether any traffic to this port is served by cluster-wide endpoints
    /// (upstream's `UsesClusterEndpoints`).
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_policy_local || self.externally_accessible()
    }

    /// Whether any traffic to this port is served by node-local endpoints
    /// (upstream's `UsesLocalEndpoints`).
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local || (self.external_policy_local && self.externally_accessible())
    }

    /// Whether the source `ip` may reach this port's LoadBalancer VIPs, given
    /// the node's own IPs. When a source range contains a node IP, the VIPs
    /// themselves are allowed too, because a node reaching a VIP that is
    /// bound locally sees the VIP as the source (upstream does the same).
    pub fn source_allowed(&self, ip: IpAddr, node_ips: &[IpAddr]) -> bool {
        match &self.source_ranges {
            SourceRanges::AllowAll => true,
            SourceRanges::Only(nets) => {
                nets.iter().any(|n| n.contains(&ip))
                    || (self.load_balancer_vips.contains(&ip)
                        && nets.iter().any(|n| node_ips.iter().any(|node| n.contains(node))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> ServicePortInfo {
        ServicePortInfo::cluster_ip("172.30.0.41".parse().unwrap(), 80, Protocol::Tcp)
    }

    #[test]
    fn derived_flags_follow_upstream() {
        let mut s = svc();
        assert!(s.uses_cluster_endpoints() && !s.uses_local_endpoints());
        s.internal_policy_local = true;
        assert!(!s.uses_cluster_endpoints() && s.uses_local_endpoints());
        s.node_port = Some(30080);
        assert!(s.uses_cluster_endpoints() && s.uses_local_endpoints());
        s.internal_policy_local = false;
        s.external_policy_local = true;
        assert!(s.uses_cluster_endpoints() && s.uses_local_endpoints());
    }

    #[test]
    fn source_ranges_allow_vips_only_when_a_range_holds_the_node() {
        let mut s = svc();
        s.load_balancer_vips = vec!["1.2.3.4".parse().unwrap()];
        s.source_ranges = SourceRanges::Only(vec!["203.0.113.0/25".parse().unwrap()]);
        let node = ["192.168.0.2".parse().unwrap()];
        assert!(s.source_allowed("203.0.113.2".parse().unwrap(), &node));
        assert!(!s.source_allowed("203.0.113.130".parse().unwrap(), &node));
        assert!(!s.source_allowed("1.2.3.4".parse().unwrap(), &node));
        s.source_ranges = SourceRanges::Only(vec!["192.168.0.0/24".parse().unwrap()]);
        assert!(s.source_allowed("1.2.3.4".parse().unwrap(), &node));
        s.source_ranges = SourceRanges::Only(vec![]);
        assert!(!s.source_allowed("192.168.0.2".parse().unwrap(), &node));
    }
}
