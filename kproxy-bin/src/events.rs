//! The Event upstream kube-proxy records when it starts: `Starting`
//! (action `StartKubeProxy`) about the Node, in `events.k8s.io/v1`, so
//! that `kubectl describe node` and event-based tooling show the proxy
//! starting as they do with upstream.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;

/// The Event, as upstream's event recorder builds it (named after the
/// Node and the time, in the `default` namespace, as upstream's for
/// cluster-scoped objects).
pub fn starting(node: &str, now: k8s_openapi::jiff::Timestamp) -> Event {
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{node}.{:x}", now.as_nanosecond())),
            namespace: Some("default".into()),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        action: Some("StartKubeProxy".into()),
        reason: Some("Starting".into()),
        type_: Some("Normal".into()),
        reporting_controller: Some("kube-proxy".into()),
        reporting_instance: Some(format!("kube-proxy-{node}")),
        regarding: Some(ObjectReference { kind: Some("Node".into()), name: Some(node.into()), uid: Some(node.into()), ..Default::default() }),
        note: Some(format!("kproxy v{}", env!("CARGO_PKG_VERSION"))),
        ..Default::default()
    }
}

/// Records the start; a refusal (no RBAC grant) is logged, never fatal,
/// as upstream's event recorder does.
pub async fn record_start(client: Client, node: String) {
    let api: Api<Event> = Api::namespaced(client, "default");
    if let Err(e) = api.create(&PostParams::default(), &starting(&node, k8s_openapi::jiff::Timestamp::now())).await {
        tracing::warn!(error = %e.to_string().lines().next().unwrap_or_default(), "cannot record the Starting event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_is_upstream_s() {
        let now = k8s_openapi::jiff::Timestamp::from_second(1_764_907_361).unwrap();
        let e = starting("node-a", now);
        assert_eq!(e.metadata.name.as_deref(), Some("node-a.187e35e4d9e08a00"));
        assert_eq!((e.reason.as_deref(), e.action.as_deref(), e.type_.as_deref()), (Some("Starting"), Some("StartKubeProxy"), Some("Normal")));
        let regarding = e.regarding.unwrap();
        assert_eq!((regarding.kind.as_deref(), regarding.name.as_deref()), (Some("Node"), Some("node-a")));
    }
}
