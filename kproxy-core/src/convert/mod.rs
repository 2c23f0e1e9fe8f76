//! Conversion from the real API types (`k8s_openapi`) to the typed model.
//!
//! Every function here is total: no input panics, bad fields are skipped and
//! reported through `tracing` with the object's namespace/name.

mod endpoint_slice;
mod node;
pub mod parse;
mod service;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use endpoint_slice::{merge_slices, slice_info, PortEndpoints, SliceInfo, SERVICE_NAME_LABEL, TRIGGER_TIME_ANNOTATION};
pub use node::node_info;
pub use service::{service_ports, ServicePorts};

use crate::model::NamespacedName;

/// Services and slices with this label belong to another proxy.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// Services and slices with this label are headless.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// The longest name kproxy accepts for a namespace, object or port (the
/// Kubernetes maximum for any object name). Longer names are skipped.
pub const MAX_NAME_LEN: usize = 253;

fn valid_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN
}

/// The object's namespace/name, or `None` (logged) when either is missing or
/// too long.
fn object_key(meta: &ObjectMeta, kind: &str) -> Option<NamespacedName> {
    let namespace = meta.namespace.as_deref().unwrap_or("default");
    let name = meta.name.as_deref().unwrap_or("");
    if name.is_empty() || namespace.is_empty() {
        tracing::warn!(kind, namespace, "skipping object without a name");
        return None;
    }
    if !valid_name(name) || !valid_name(namespace) {
        tracing::warn!(kind, namespace_len = namespace.len(), name_len = name.len(), "skipping object: name longer than {MAX_NAME_LEN}");
        return None;
    }
    Some(NamespacedName::new(namespace, name))
}

fn has_skip_label(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL) || l.contains_key(HEADLESS_LABEL))
}

fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

#[cfg(test)]
mod tests;
