//! `Service` → per-family service ports.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;

use super::{has_skip_label, object_key, parse, port_number, valid_name, MAX_NAME_LEN};
use crate::VecMap;
use crate::model::{
    IpFamily, NamespacedName, Protocol, ServicePortInfo, ServicePortName, SourceRanges,
    DEFAULT_AFFINITY_TIMEOUT_SECONDS,
};

/// The ports of one Service, in one family.
pub type ServicePorts = VecMap<ServicePortName, ServicePortInfo>;

/// Converts a Service into its ports for `family`, skipping exactly what
/// upstream skips: headless and ExternalName services, services carrying the
/// `service.kubernetes.io/service-proxy-name` or `service.kubernetes.io/headless`
/// label, and services without a ClusterIP of this family.
///
/// Bad fields (unparsable IPs, ports out of range, invalid CIDRs, duplicate
/// ports, over-long names) are skipped and logged with the Service's
/// namespace/name; they never affect other fields or other objects. A
/// Service whose identity is unusable yields no ports.
pub fn service_ports(service: &Service, family: IpFamily) -> ServicePorts {
    let mut ports = ServicePorts::new();
    let Some(key) = object_key(&service.metadata, "Service") else {
        return ports;
    };
    if has_skip_label(&service.metadata) {
        return ports;
    }
    let Some(spec) = &service.spec else {
        return ports;
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return ports;
    }
    let Some(cluster_ip) = cluster_ip_of_family(service, family, &key) else {
        return ports;
    };
    let common = Common::from_service(service, family, &key, cluster_ip);
    let mut seen_numbers = Vec::new();
    for sp in spec.ports.iter().flatten() {
        let name = sp.name.clone().unwrap_or_default();
        if !valid_name(&name) {
            tracing::warn!(service = %key, len = name.len(), "skipping service port: name longer than {MAX_NAME_LEN}");
            continue;
        }
        let protocol = match sp.protocol.as_deref().unwrap_or("TCP").parse::<Protocol>() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(service = %key, port = %name, "skipping service port: {e}");
                continue;
            }
        };
        let Some(port) = port_number(sp.port) else {
            tracing::warn!(service = %key, port = %name, value = sp.port, "skipping service port: port out of range 1-65535");
            continue;
        };
        let spn = ServicePortName {
            service: key.clone(),
            port: name,
            protocol,
        };
        if ports.contains_key(&spn) || seen_numbers.contains(&(port, protocol)) {
            tracing::warn!(service = %key, port = %spn, "skipping duplicate service port");
            continue;
        }
        seen_numbers.push((port, protocol));
        let node_port = match sp.node_port {
            None | Some(0) => None,
            Some(n) => port_number(n).or_else(|| {
                tracing::warn!(service = %key, port = %spn, value = n, "ignoring nodePort out of range 1-65535");
                None
            }),
        };
        ports.insert(spn, common.port_info(port, protocol, node_port));
    }
    ports
}

/// The per-service fields shared by every port.
struct Common {
    cluster_ip: IpAddr,
    external_ips: Vec<IpAddr>,
    load_balancer_vips: Vec<IpAddr>,
    source_ranges: SourceRanges,
    affinity_timeout_seconds: Option<u32>,
    external_policy_local: bool,
    internal_policy_local: bool,
    health_check_node_port: Option<u16>,
}

impl Common {
    fn from_service(service: &Service, family: IpFamily, key: &NamespacedName, cluster_ip: IpAddr) -> Self {
        let spec = service.spec.as_ref().expect("checked by caller");
        let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
        // Upstream's ExternallyAccessible: a ClusterIP Service with
        // externalIPs counts, so ETP=Local applies to those addresses.
        let externally_accessible = matches!(type_, "NodePort" | "LoadBalancer")
            || (type_ == "ClusterIP" && spec.external_ips.as_ref().is_some_and(|ips| !ips.is_empty()));
        let external_policy_local =
            externally_accessible && spec.external_traffic_policy.as_deref() == Some("Local");
        let health_check_node_port = if type_ == "LoadBalancer" && external_policy_local {
            match spec.health_check_node_port.map(port_number) {
                Some(Some(p)) => Some(p),
                _ => {
                    tracing::warn!(service = %key, "LoadBalancer service with externalTrafficPolicy Local has no valid healthCheckNodePort");
                    None
                }
            }
        } else {
            None
        };
        let affinity_timeout_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match t {
                Some(t) if (1..=86_400).contains(&t) => t as u32,
                None => DEFAULT_AFFINITY_TIMEOUT_SECONDS,
                Some(t) => {
                    tracing::warn!(service = %key, value = t, "affinity timeout outside 1-86400s; using the default");
                    DEFAULT_AFFINITY_TIMEOUT_SECONDS
                }
            }
        });
        Common {
            cluster_ip,
            external_ips: ips_of_family(spec.external_ips.iter().flatten(), family, key, "externalIPs"),
            load_balancer_vips: load_balancer_vips(service, family, key),
            source_ranges: source_ranges(spec.load_balancer_source_ranges.as_deref(), family, key),
            affinity_timeout_seconds,
            external_policy_local,
            internal_policy_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            health_check_node_port,
        }
    }

    fn port_info(&self, port: u16, protocol: Protocol, node_port: Option<u16>) -> ServicePortInfo {
        ServicePortInfo {
            cluster_ip: self.cluster_ip,
            port,
            protocol,
            node_port,
            load_balancer_vips: self.load_balancer_vips.clone(),
            external_ips: self.external_ips.clone(),
            source_ranges: self.source_ranges.clone(),
            affinity_timeout_seconds: self.affinity_timeout_seconds,
            external_policy_local: self.external_policy_local,
            internal_policy_local: self.internal_policy_local,
            health_check_node_port: self.health_check_node_port,
        }
    }
}

/// The ClusterIP of `family`: from `clusterIPs` when set, else `clusterIP`.
/// `None` (or empty) means headless, which is skipped.
fn cluster_ip_of_family(service: &Service, family: IpFamily, key: &NamespacedName) -> Option<IpAddr> {
    let spec = service.spec.as_ref()?;
    let candidates: Vec<&String> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().collect(),
        _ => spec.cluster_ip.iter().collect(),
    };
    for text in candidates {
        if text.is_empty() || text == "None" {
            return None;
        }
        match parse::parse_ip(text) {
            Some(ip) if family.contains(ip) => return Some(ip),
            Some(_) => {}
            None => tracing::warn!(service = %key, value = %text, "ignoring unparsable clusterIP"),
        }
    }
    None
}

fn ips_of_family<'a>(
    texts: impl Iterator<Item = &'a String>,
    family: IpFamily,
    key: &NamespacedName,
    field: &str,
) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = texts
        .filter_map(|t| {
            let ip = parse::parse_ip(t);
            if ip.is_none() {
                tracing::warn!(service = %key, field, value = %t, "ignoring unparsable IP");
            }
            ip
        })
        .filter(|ip| family.contains(*ip))
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

fn load_balancer_vips(service: &Service, family: IpFamily, key: &NamespacedName) -> Vec<IpAddr> {
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let vip_mode = ingress
        .into_iter()
        .flatten()
        .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|i| i.ip.as_ref())
        .filter(|ip| !ip.is_empty());
    ips_of_family(vip_mode, family, key, "status.loadBalancer.ingress")
}

/// Source ranges of this family.
///
/// As upstream, ranges of the other family do not restrict this family. One
/// deliberate difference: if an entry does not parse (the API server rejects
/// such objects, so only hand-written manifests or fuzzers produce them) and
/// no valid entry of this family remains, nothing may pass, because a typo in
/// a firewall must not open it.
fn source_ranges(ranges: Option<&[String]>, family: IpFamily, key: &NamespacedName) -> SourceRanges {
    let ranges = ranges.unwrap_or_default();
    let mut invalid = false;
    let mut nets: Vec<_> = ranges
        .iter()
        .filter_map(|t| {
            let net = parse::parse_cidr(t);
            if net.is_none() {
                invalid = true;
                tracing::warn!(service = %key, value = %t, "ignoring invalid loadBalancerSourceRanges entry");
            }
            net
        })
        .filter(|n| IpFamily::of_net(n) == family)
        .collect();
    nets.sort();
    nets.dedup();
    if nets.is_empty() && !invalid {
        SourceRanges::AllowAll
    } else {
        SourceRanges::Only(nets)
    }
}
