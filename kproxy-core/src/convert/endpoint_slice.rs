//! `EndpointSlice` → endpoints per service port, and merging a Service's
//! slices.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{has_skip_label, object_key, parse, port_number, valid_name, MAX_NAME_LEN};
use crate::model::{Endpoint, IpFamily, NamespacedName, Protocol, ServicePortName};
use crate::VecMap;

/// The label that names the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The annotation carrying the time of the change that triggered the slice
/// update, used for network-programming latency.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// Endpoints per service port, sorted by address and deduplicated, as one
/// slice (or a merge of several) provides them.
pub type PortEndpoints = VecMap<ServicePortName, Arc<[Endpoint]>>;

/// What one EndpointSlice contributes to its Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceInfo {
    /// The Service the slice belongs to.
    pub service: NamespacedName,
    /// The slice's own name.
    pub slice_name: String,
    /// Its endpoints per service port (not yet merged with sibling slices).
    pub endpoints: PortEndpoints,
}

/// Converts an EndpointSlice for a proxier of `family` on node `node_name`.
///
/// Returns `None` for slices that contribute nothing because of what they
/// are: no `kubernetes.io/service-name` label, a skip label, an unusable
/// name, or an address type other than `family` (FQDN slices included).
/// Bad ports and endpoints inside a usable slice are skipped one by one and
/// logged with the slice's namespace/name.
pub fn slice_info(slice: &EndpointSlice, family: IpFamily, node_name: &str) -> Option<SliceInfo> {
    let key = object_key(&slice.metadata, "EndpointSlice")?;
    let service_name = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .filter(|n| !n.is_empty())?;
    if !valid_name(service_name) {
        tracing::warn!(slice = %key, "skipping EndpointSlice: {SERVICE_NAME_LABEL} longer than {MAX_NAME_LEN}");
        return None;
    }
    if has_skip_label(&slice.metadata) || slice.address_type != family.as_k8s_str() {
        return None;
    }
    let service = NamespacedName::new(key.namespace.clone(), service_name.clone());
    let mut endpoints = PortEndpoints::new();
    for p in slice.ports.iter().flatten() {
        let name = p.name.clone().unwrap_or_default();
        if !valid_name(&name) {
            tracing::warn!(slice = %key, "skipping endpoint port: name longer than {MAX_NAME_LEN}");
            continue;
        }
        let protocol = match p.protocol.as_deref().unwrap_or("TCP").parse::<Protocol>() {
            Ok(proto) => proto,
            Err(e) => {
                tracing::warn!(slice = %key, port = %name, "skipping endpoint port: {e}");
                continue;
            }
        };
        let Some(port) = p.port.and_then(port_number) else {
            tracing::warn!(slice = %key, port = %name, value = ?p.port, "skipping endpoint port: port missing or out of range 1-65535");
            continue;
        };
        let spn = ServicePortName {
            service: service.clone(),
            port: name,
            protocol,
        };
        if endpoints.contains_key(&spn) {
            tracing::warn!(slice = %key, port = %spn, "skipping duplicate endpoint port");
            continue;
        }
        let eps = slice_endpoints(slice, &key, family, node_name, port);
        endpoints.insert(spn, dedup_sorted(eps));
    }
    Some(SliceInfo {
        service,
        slice_name: key.name,
        endpoints,
    })
}

fn slice_endpoints(
    slice: &EndpointSlice,
    key: &NamespacedName,
    family: IpFamily,
    node_name: &str,
    port: u16,
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for ep in &slice.endpoints {
        let Some(first) = ep.addresses.first() else {
            continue;
        };
        let Some(ip) = parse::parse_ip(first) else {
            tracing::warn!(slice = %key, value = %first, "skipping endpoint with unparsable address");
            continue;
        };
        if !family.contains(ip) {
            tracing::warn!(slice = %key, value = %first, "skipping endpoint of the wrong IP family");
            continue;
        }
        let cond = ep.conditions.as_ref();
        let hints = ep.hints.as_ref();
        out.push(Endpoint {
            ip,
            port,
            ready: cond.and_then(|c| c.ready).unwrap_or(true),
            serving: cond.and_then(|c| c.serving).unwrap_or(true),
            terminating: cond.and_then(|c| c.terminating).unwrap_or(false),
            is_local: !node_name.is_empty() && ep.node_name.as_deref() == Some(node_name),
            zone_hints: hints
                .and_then(|h| h.for_zones.as_ref())
                .into_iter()
                .flatten()
                .map(|z| z.name.clone())
                .collect(),
            node_hints: hints
                .and_then(|h| h.for_nodes.as_ref())
                .into_iter()
                .flatten()
                .map(|n| n.name.clone())
                .collect(),
        });
    }
    out
}

/// Sorts by address and keeps one endpoint per address (the preferred
/// copy, as when merging slices).
fn dedup_sorted(eps: Vec<Endpoint>) -> Arc<[Endpoint]> {
    let mut by_addr: BTreeMap<(std::net::IpAddr, u16), Endpoint> = BTreeMap::new();
    for ep in eps {
        match by_addr.get(&(ep.ip, ep.port)) {
            Some(existing) if !preferred(&ep, existing) => {}
            _ => {
                by_addr.insert((ep.ip, ep.port), ep);
            }
        }
    }
    by_addr.into_values().collect()
}

/// Merges the slices of one Service into endpoints per service port.
///
/// Endpoints are deduplicated by `IP:port`. When two slices carry the same
/// address, the non-terminating copy wins (a pod network may reuse the IP of
/// a terminating pod), then the local one; the result is sorted by address.
pub fn merge_slices<'a>(slices: impl IntoIterator<Item = &'a SliceInfo>) -> PortEndpoints {
    let slices: Vec<&SliceInfo> = slices.into_iter().collect();
    // The common case, one slice: its lists are already sorted and
    // deduplicated, and are shared rather than copied.
    if let [only] = slices.as_slice() {
        return only.endpoints.iter().filter(|(_, eps)| !eps.is_empty()).map(|(k, v)| (k.clone(), Arc::clone(v))).collect();
    }
    let mut by_port: BTreeMap<ServicePortName, BTreeMap<(std::net::IpAddr, u16), Endpoint>> = BTreeMap::new();
    for slice in slices {
        for (spn, eps) in &slice.endpoints {
            let merged = by_port.entry(spn.clone()).or_default();
            for ep in eps.iter() {
                match merged.get(&(ep.ip, ep.port)) {
                    Some(existing) if !preferred(ep, existing) => {}
                    _ => {
                        merged.insert((ep.ip, ep.port), ep.clone());
                    }
                }
            }
        }
    }
    by_port
        .into_iter()
        .filter(|(_, eps)| !eps.is_empty())
        .map(|(spn, eps)| (spn, eps.into_values().collect()))
        .collect()
}

/// Whether `candidate` should replace `existing` for the same address.
fn preferred(candidate: &Endpoint, existing: &Endpoint) -> bool {
    let rank = |e: &Endpoint| (!e.terminating, e.is_local);
    rank(candidate) > rank(existing)
}
