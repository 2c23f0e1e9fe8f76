//! kube-proxy's metrics, by upstream's names and labels, so existing
//! dashboards and alerts keep working.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use kproxy_core::runner::SyncEvent;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A `code` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Code {
    /// The HTTP status.
    pub code: String,
}

/// A `traffic_policy` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficPolicy {
    /// `internal` or `external`.
    pub traffic_policy: String,
}

/// An `ip_family` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IpFamilyLabel {
    /// `IPv4` or `IPv6`.
    pub ip_family: String,
}

/// Every metric kproxy exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sync_duration: Histogram,
    sync_full_duration: Histogram,
    sync_partial_duration: Histogram,
    last_sync: Gauge<f64, AtomicU64>,
    last_queued: Gauge<f64, AtomicU64>,
    network_programming: Histogram,
    endpoint_changes_pending: Gauge,
    endpoint_changes_total: Counter,
    service_changes_pending: Gauge,
    service_changes_total: Counter,
    nftables_sync_failures: Counter,
    no_local_endpoints: Family<TrafficPolicy, Gauge>,
    conntrack_duration: Family<IpFamilyLabel, Histogram>,
    conntrack_deleted: Family<IpFamilyLabel, Counter>,
    /// `/healthz` answers by code.
    pub healthz: Family<Code, Counter>,
    /// `/livez` answers by code.
    pub livez: Family<Code, Counter>,
}

/// Upstream's network-programming buckets: 0.25 s steps to 0.5 s, 1 s steps
/// to a minute, 5 s steps to 2 minutes, 30 s steps to 7 minutes.
fn programming_buckets() -> Vec<f64> {
    let mut b = vec![0.25, 0.5];
    b.extend((1..60).map(f64::from));
    b.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    b.extend((0..10).map(|i| 300.0 + 30.0 * f64::from(i)));
    b
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero.
    pub fn new() -> Self {
        let sync_buckets = || exponential_buckets(0.001, 2.0, 15);
        let mut m = Metrics {
            registry: Registry::with_prefix("kubeproxy"),
            sync_duration: Histogram::new(sync_buckets()),
            sync_full_duration: Histogram::new(sync_buckets()),
            sync_partial_duration: Histogram::new(sync_buckets()),
            last_sync: Gauge::default(),
            last_queued: Gauge::default(),
            network_programming: Histogram::new(programming_buckets()),
            endpoint_changes_pending: Gauge::default(),
            endpoint_changes_total: Counter::default(),
            service_changes_pending: Gauge::default(),
            service_changes_total: Counter::default(),
            nftables_sync_failures: Counter::default(),
            no_local_endpoints: Family::default(),
            conntrack_duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 15))),
            conntrack_deleted: Family::default(),
            healthz: Family::default(),
            livez: Family::default(),
        };
        let r = &mut m.registry;
        r.register("sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds", m.sync_duration.clone());
        r.register("sync_full_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for full resyncs", m.sync_full_duration.clone());
        r.register("sync_partial_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for partial resyncs", m.sync_partial_duration.clone());
        r.register("sync_proxy_rules_last_timestamp_seconds", "The last time proxy rules were successfully synced", m.last_sync.clone());
        r.register("sync_proxy_rules_last_queued_timestamp_seconds", "The last time a sync of proxy rules was queued", m.last_queued.clone());
        r.register("network_programming_duration_seconds", "In Cluster Network Programming Latency in seconds", m.network_programming.clone());
        r.register("sync_proxy_rules_endpoint_changes_pending", "Pending proxy rules Endpoint changes", m.endpoint_changes_pending.clone());
        r.register("sync_proxy_rules_endpoint_changes", "Cumulative proxy rules Endpoint changes", m.endpoint_changes_total.clone());
        r.register("sync_proxy_rules_service_changes_pending", "Pending proxy rules Service changes", m.service_changes_pending.clone());
        r.register("sync_proxy_rules_service_changes", "Cumulative proxy rules Service changes", m.service_changes_total.clone());
        r.register("sync_proxy_rules_nftables_sync_failures", "Cumulative proxy nftables sync failures", m.nftables_sync_failures.clone());
        r.register(
            "sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            m.no_local_endpoints.clone(),
        );
        r.register(
            "conntrack_reconciler_sync_duration_seconds",
            "ReconcileConntrackFlowsLatency latency in seconds",
            m.conntrack_duration.clone(),
        );
        r.register(
            "conntrack_reconciler_deleted_entries",
            "Cumulative conntrack flows deleted by conntrack reconciler",
            m.conntrack_deleted.clone(),
        );
        r.register("proxy_healthz", "Cumulative proxy healthz HTTP status", m.healthz.clone());
        r.register("proxy_livez", "Cumulative proxy livez HTTP status", m.livez.clone());
        m
    }

    /// A Service event reached the proxy.
    pub fn service_change(&self) {
        self.service_changes_total.inc();
        self.service_changes_pending.inc();
        self.queued();
    }

    /// An EndpointSlice event reached the proxy.
    pub fn endpoint_change(&self) {
        self.endpoint_changes_total.inc();
        self.endpoint_changes_pending.inc();
        self.queued();
    }

    fn queued(&self) {
        self.last_queued.set(unix_seconds(SystemTime::now()));
    }

    /// Records one sync's outcome.
    pub fn observe(&self, event: &SyncEvent<'_>) {
        let seconds = event.duration.as_secs_f64();
        self.sync_duration.observe(seconds);
        if event.full { &self.sync_full_duration } else { &self.sync_partial_duration }.observe(seconds);
        match event.result {
            Ok(report) => {
                let now = SystemTime::now();
                self.last_sync.set(unix_seconds(now));
                self.endpoint_changes_pending.set(0);
                self.service_changes_pending.set(0);
                for times in report.changes.endpoints.trigger_times.values() {
                    for t in times {
                        let latency = now.duration_since(*t).unwrap_or(Duration::ZERO);
                        self.network_programming.observe(latency.as_secs_f64());
                    }
                }
                let gauge = |policy: &str| self.no_local_endpoints.get_or_create(&TrafficPolicy { traffic_policy: policy.into() }).clone();
                gauge("internal").set(report.no_local_endpoints.internal as i64);
                gauge("external").set(report.no_local_endpoints.external as i64);
            }
            Err(_) => {
                self.nftables_sync_failures.inc();
            }
        }
    }

    /// Records one conntrack cleanup of `family` (`IPv4` or `IPv6`).
    pub fn conntrack_cleaned(&self, family: &str, duration: Duration, deleted: usize) {
        let label = IpFamilyLabel { ip_family: family.to_string() };
        self.conntrack_duration.get_or_create(&label).observe(duration.as_secs_f64());
        self.conntrack_deleted.get_or_create(&label).inc_by(deleted as u64);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_names_are_exported() {
        let m = Metrics::new();
        m.service_change();
        m.endpoint_change();
        m.conntrack_cleaned("IPv4", Duration::from_millis(3), 2);
        let text = m.encode();
        for name in [
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket",
            "kubeproxy_sync_full_proxy_rules_duration_seconds_count",
            "kubeproxy_sync_partial_proxy_rules_duration_seconds_count",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "kubeproxy_network_programming_duration_seconds_bucket",
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending 1",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total 1",
            "kubeproxy_sync_proxy_rules_service_changes_pending 1",
            "kubeproxy_sync_proxy_rules_service_changes_total 1",
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
            "kubeproxy_conntrack_reconciler_sync_duration_seconds_count{ip_family=\"IPv4\"} 1",
            "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv4\"} 2",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
