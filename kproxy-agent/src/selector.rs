//! Which objects are this proxy's: upstream's informers leave out Services
//! another proxy implements (`service.kubernetes.io/service-proxy-name`)
//! and headless Services' objects (`service.kubernetes.io/headless`).

use kproxy_core::convert::{HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL};

/// Labels that keep an object away from this proxy.
pub const IGNORED_LABELS: [&str; 2] = [SERVICE_PROXY_NAME_LABEL, HEADLESS_LABEL];

/// The label selector for the API watchers (both labels absent).
pub fn label_selector() -> String {
    IGNORED_LABELS.map(|l| format!("!{l}")).join(",")
}

/// Whether an object with `labels` is this proxy's (the selector, applied
/// locally, for the manifests directory).
pub fn is_proxied(labels: Option<&std::collections::BTreeMap<String, String>>) -> bool {
    labels.is_none_or(|l| IGNORED_LABELS.iter().all(|k| !l.contains_key(*k)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_selector_is_upstreams() {
        assert_eq!(label_selector(), "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless");
        let other = std::collections::BTreeMap::from([(SERVICE_PROXY_NAME_LABEL.to_string(), "cilium".to_string())]);
        assert!(!is_proxied(Some(&other)));
        assert!(is_proxied(None));
    }
}
