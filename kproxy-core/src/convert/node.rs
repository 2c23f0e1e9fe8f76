//! `Node` → [`NodeInfo`].

use k8s_openapi::api::core::v1::Node;

use super::parse;
use crate::model::NodeInfo;

/// Converts the node's own Node object. Unparsable addresses and CIDRs are
/// skipped and logged; the rest is kept.
pub fn node_info(node: &Node) -> NodeInfo {
    let name = node.metadata.name.clone().unwrap_or_default();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let mut ips = Vec::new();
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    for wanted in ["InternalIP", "ExternalIP"] {
        for a in addresses.into_iter().flatten().filter(|a| a.type_ == wanted) {
            match parse::parse_ip(&a.address) {
                Some(ip) if !ips.contains(&ip) => ips.push(ip),
                Some(_) => {}
                None => tracing::warn!(node = %name, value = %a.address, "ignoring unparsable node address"),
            }
        }
    }
    let spec = node.spec.as_ref();
    let cidr_texts = spec
        .and_then(|s| s.pod_cidrs.clone())
        .filter(|c| !c.is_empty())
        .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
        .unwrap_or_default();
    let pod_cidrs = cidr_texts
        .iter()
        .filter_map(|t| {
            let net = parse::parse_cidr(t);
            if net.is_none() {
                tracing::warn!(node = %name, value = %t, "ignoring invalid podCIDR");
            }
            net
        })
        .collect();
    NodeInfo {
        name,
        labels,
        ips,
        pod_cidrs,
    }
}
