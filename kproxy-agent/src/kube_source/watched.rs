//! The Service as the watch decodes it. kube-proxy never reads a Service's
//! `status.conditions`, and the API server stores conditions that
//! k8s-openapi refuses to decode: a condition written without
//! `lastTransitionTime` (Kubernetes' own conformance spec "should complete
//! a service status lifecycle" writes one) is stored as `null`, a field
//! `Condition` requires. Decoded as a plain `Service`, every watch event
//! and list of that Service failed, and the watch relisted. Here the
//! conditions are dropped before decoding, so such a Service is an
//! ordinary one.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// A Service decoded without its `status.conditions`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WatchedService(pub Service);

impl<'de> Deserialize<'de> for WatchedService {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut value = serde_json::Value::deserialize(deserializer)?;
        if let Some(status) = value.get_mut("status").and_then(|s| s.as_object_mut()) {
            status.remove("conditions");
        }
        serde_json::from_value(value).map(WatchedService).map_err(D::Error::custom)
    }
}

impl k8s_openapi::Resource for WatchedService {
    const API_VERSION: &'static str = <Service as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <Service as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <Service as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <Service as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str = <Service as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = <Service as k8s_openapi::Resource>::Scope;
}

impl k8s_openapi::ListableResource for WatchedService {
    const LIST_KIND: &'static str = <Service as k8s_openapi::ListableResource>::LIST_KIND;
}

impl k8s_openapi::Metadata for WatchedService {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.0.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the API server sends for the conformance spec's Service after
    /// its status update: a condition with `lastTransitionTime: null`.
    const PATCHED: &str = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"test-service-x","namespace":"ns","annotations":{"patchedstatus":"true"}},
        "spec":{"clusterIP":"10.96.0.99","clusterIPs":["10.96.0.99"],"ports":[{"name":"http","port":80,"protocol":"TCP","targetPort":80}],"type":"ClusterIP"},
        "status":{"loadBalancer":{"ingress":[{"ip":"203.0.113.1"}]},
                  "conditions":[{"type":"StatusUpdate","status":"True","reason":"E2E","message":"Set from e2e test","lastTransitionTime":null}]}}"#;

    #[test]
    fn a_service_with_a_condition_lacking_its_time_decodes() {
        assert!(serde_json::from_str::<Service>(PATCHED).is_err(), "k8s-openapi refuses it (why this type exists)");
        let s: WatchedService = serde_json::from_str(PATCHED).unwrap();
        assert_eq!(s.0.metadata.name.as_deref(), Some("test-service-x"));
        let ingress = s.0.status.as_ref().and_then(|st| st.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref()).unwrap();
        assert_eq!(ingress[0].ip.as_deref(), Some("203.0.113.1"), "the rest of the status is kept");
        assert!(s.0.status.unwrap().conditions.is_none());
    }

    #[test]
    fn a_broken_service_is_still_an_error() {
        assert!(serde_json::from_str::<WatchedService>(r#"{"metadata":{"name":7}}"#).is_err());
    }
}
