//! kube-proxy's metrics, by upstream v1.34.4's names, types, labels and
//! buckets, registered per mode as upstream's `RegisterMetrics` does, so
//! existing dashboards and alerts keep working. Besides `kubeproxy_*`:
//! the API client's `rest_client_*`, the `process_*` families and
//! `kubernetes_build_info`.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use kproxy_core::runner::SyncEvent;
use kproxy_core::IpFamily;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::settings::Mode;

/// A `code` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Code {
    /// The HTTP status.
    pub code: String,
}

/// An `ip_family` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IpFamilyLabel {
    /// `IPv4` or `IPv6`.
    pub ip_family: String,
}

/// `traffic_policy` and `ip_family` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// `internal` or `external`.
    pub traffic_policy: String,
    /// `IPv4` or `IPv6`.
    pub ip_family: String,
}

/// `table` and `ip_family` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    /// `filter` or `nat`.
    pub table: String,
    /// `IPv4` or `IPv6`.
    pub ip_family: String,
}

/// `rest_client_requests_total`'s labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The HTTP status, or `<error>` when there was no answer.
    pub code: String,
    /// The API server's `host:port`.
    pub host: String,
    /// The HTTP method.
    pub method: String,
}

/// The `verb` and `host` labels of the latency histograms.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    /// The HTTP method.
    pub verb: String,
    /// The API server's `host:port`.
    pub host: String,
}

/// Builds histograms with fixed buckets for a [`Family`].
#[derive(Debug, Clone)]
pub struct Buckets(Vec<f64>);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

type Histograms<L> = Family<L, Histogram, Buckets>;
type TimeGauges = Family<IpFamilyLabel, Gauge<f64, AtomicU64>>;

/// Every metric kproxy exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    mode: Mode,
    started: SystemTime,
    sync_duration: Histograms<IpFamilyLabel>,
    sync_full_duration: Histograms<IpFamilyLabel>,
    sync_partial_duration: Histograms<IpFamilyLabel>,
    last_sync: TimeGauges,
    last_queued: TimeGauges,
    network_programming: Histograms<IpFamilyLabel>,
    endpoint_changes_pending: Gauge,
    endpoint_changes_total: Counter,
    service_changes_pending: Gauge,
    service_changes_total: Counter,
    iptables_restore_failures: Family<IpFamilyLabel, Counter>,
    iptables_partial_restore_failures: Family<IpFamilyLabel, Counter>,
    iptables_total: Family<TableLabels, Gauge>,
    iptables_last: Family<TableLabels, Gauge>,
    nftables_sync_failures: Family<IpFamilyLabel, Counter>,
    nftables_cleanup_failures: Family<IpFamilyLabel, Counter>,
    no_local_endpoints: Family<PolicyLabels, Gauge>,
    conntrack_duration: Histograms<IpFamilyLabel>,
    conntrack_deleted: Family<IpFamilyLabel, Counter>,
    rest_requests: Family<RequestLabels, Counter>,
    rest_duration: Histograms<VerbLabels>,
    rest_rate_limiter: Histograms<VerbLabels>,
    rest_request_size: Histograms<VerbLabels>,
    rest_response_size: Histograms<VerbLabels>,
    /// Whether upstream's nfacct counters exist and are exported.
    nfacct: std::sync::atomic::AtomicBool,
    /// `/healthz` answers by code.
    pub healthz: Family<Code, Counter>,
    /// `/livez` answers by code.
    pub livez: Family<Code, Counter>,
}

/// Upstream's sync-latency buckets: 1 ms doubling 15 times.
fn sync_buckets() -> Buckets {
    Buckets(exponential_buckets(0.001, 2.0, 15).collect())
}

/// Upstream's network-programming buckets (its bucket merge starts with
/// 0): 0.25 s steps to 0.5 s, 1 s steps to 59 s, 5 s steps from 60 s to
/// 115 s, 30 s steps from 120 s to 300 s.
fn programming_buckets() -> Buckets {
    let mut b = vec![0.0, 0.25, 0.5];
    b.extend((1..60).map(f64::from));
    b.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    b.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    Buckets(b)
}

/// client-go's request-latency buckets.
fn rest_buckets() -> Buckets {
    Buckets(vec![0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0])
}

/// client-go's request- and response-size buckets.
fn size_buckets() -> Buckets {
    Buckets(vec![64.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0])
}

fn family_label(family: IpFamily) -> IpFamilyLabel {
    IpFamilyLabel { ip_family: family.as_k8s_str().to_string() }
}

impl Metrics {
    /// A registry with `mode`'s families, as upstream registers them.
    pub fn new(mode: Mode) -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            mode,
            started: SystemTime::now(),
            sync_duration: Family::new_with_constructor(sync_buckets()),
            sync_full_duration: Family::new_with_constructor(sync_buckets()),
            sync_partial_duration: Family::new_with_constructor(sync_buckets()),
            last_sync: Family::default(),
            last_queued: Family::default(),
            network_programming: Family::new_with_constructor(programming_buckets()),
            endpoint_changes_pending: Gauge::default(),
            endpoint_changes_total: Counter::default(),
            service_changes_pending: Gauge::default(),
            service_changes_total: Counter::default(),
            iptables_restore_failures: Family::default(),
            iptables_partial_restore_failures: Family::default(),
            iptables_total: Family::default(),
            iptables_last: Family::default(),
            nftables_sync_failures: Family::default(),
            nftables_cleanup_failures: Family::default(),
            no_local_endpoints: Family::default(),
            conntrack_duration: Family::new_with_constructor(sync_buckets()),
            conntrack_deleted: Family::default(),
            rest_requests: Family::default(),
            rest_duration: Family::new_with_constructor(rest_buckets()),
            rest_rate_limiter: Family::new_with_constructor(rest_buckets()),
            rest_request_size: Family::new_with_constructor(size_buckets()),
            rest_response_size: Family::new_with_constructor(size_buckets()),
            healthz: Family::default(),
            livez: Family::default(),
            nfacct: std::sync::atomic::AtomicBool::new(false),
        };
        let rest = &mut m.registry;
        rest.register("rest_client_requests", "Number of HTTP requests, partitioned by status code, method, and host.", m.rest_requests.clone());
        rest.register("rest_client_request_duration_seconds", "Request latency in seconds. Broken down by verb, and host.", m.rest_duration.clone());
        rest.register(
            "rest_client_rate_limiter_duration_seconds",
            "Client side rate limiter latency in seconds. Broken down by verb, and host.",
            m.rest_rate_limiter.clone(),
        );
        rest.register("rest_client_request_size_bytes", "Request size in bytes. Broken down by verb and host.", m.rest_request_size.clone());
        rest.register("rest_client_response_size_bytes", "Response size in bytes. Broken down by verb and host.", m.rest_response_size.clone());
        let r = m.registry.sub_registry_with_prefix("kubeproxy");
        // Every mode.
        r.register("sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds", m.sync_duration.clone());
        r.register("sync_proxy_rules_last_queued_timestamp_seconds", "The last time a sync of proxy rules was queued", m.last_queued.clone());
        r.register("sync_proxy_rules_last_timestamp_seconds", "The last time proxy rules were successfully synced", m.last_sync.clone());
        r.register("sync_proxy_rules_endpoint_changes_pending", "Pending proxy rules Endpoint changes", m.endpoint_changes_pending.clone());
        r.register("sync_proxy_rules_endpoint_changes", "Cumulative proxy rules Endpoint changes", m.endpoint_changes_total.clone());
        r.register("sync_proxy_rules_service_changes_pending", "Pending proxy rules Service changes", m.service_changes_pending.clone());
        r.register("sync_proxy_rules_service_changes", "Cumulative proxy rules Service changes", m.service_changes_total.clone());
        r.register("proxy_healthz", "Cumulative proxy healthz HTTP status", m.healthz.clone());
        r.register("proxy_livez", "Cumulative proxy livez HTTP status", m.livez.clone());
        r.register("network_programming_duration_seconds", "In Cluster Network Programming Latency in seconds", m.network_programming.clone());
        r.register(
            "sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            m.no_local_endpoints.clone(),
        );
        // The mode's own.
        if mode != Mode::Ipvs {
            r.register("sync_full_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for full resyncs", m.sync_full_duration.clone());
            r.register(
                "sync_partial_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for partial resyncs",
                m.sync_partial_duration.clone(),
            );
        }
        if matches!(mode, Mode::Iptables | Mode::Ipvs) {
            r.register("sync_proxy_rules_iptables_restore_failures", "Cumulative proxy iptables restore failures", m.iptables_restore_failures.clone());
        }
        if mode == Mode::Iptables {
            r.register(
                "sync_proxy_rules_iptables_partial_restore_failures",
                "Cumulative proxy iptables partial restore failures",
                m.iptables_partial_restore_failures.clone(),
            );
            r.register("sync_proxy_rules_iptables_total", "Total number of iptables rules owned by kube-proxy", m.iptables_total.clone());
            r.register("sync_proxy_rules_iptables_last", "Number of iptables rules written by kube-proxy in last sync", m.iptables_last.clone());
        }
        if mode == Mode::Nftables {
            r.register("sync_proxy_rules_nftables_sync_failures", "Cumulative proxy nftables sync failures", m.nftables_sync_failures.clone());
            r.register("sync_proxy_rules_nftables_cleanup_failures", "Cumulative proxy nftables cleanup failures", m.nftables_cleanup_failures.clone());
        }
        r.register("conntrack_reconciler_sync_duration_seconds", "ReconcileConntrackFlowsLatency latency in seconds", m.conntrack_duration.clone());
        r.register("conntrack_reconciler_deleted_entries", "Cumulative conntrack flows deleted by conntrack reconciler", m.conntrack_deleted.clone());
        m
    }

    /// Exports upstream's nfacct packet counters (iptables mode, when they
    /// exist), read from the kernel at each scrape.
    pub fn count_nfacct(&self, on: bool) {
        self.nfacct.store(on && self.mode == Mode::Iptables, std::sync::atomic::Ordering::Relaxed);
    }

    /// The nfacct counters' families, as upstream's collectors write them
    /// (each only when its counter reads).
    fn nfacct_families(&self) -> String {
        use kproxy_backend_iptables::names::{NFACCT_INVALID_DROPPED, NFACCT_LOCALHOST_NODEPORTS};
        let mut out = String::new();
        if !self.nfacct.load(std::sync::atomic::Ordering::Relaxed) {
            return out;
        }
        let Ok(mut acct) = kproxy_netfilter::Nfacct::open() else { return out };
        for (counter, family, help) in [
            (NFACCT_INVALID_DROPPED, "kubeproxy_iptables_ct_state_invalid_dropped_packets", "packets dropped by iptables to work around conntrack problems"),
            (NFACCT_LOCALHOST_NODEPORTS, "kubeproxy_iptables_localhost_nodeports_accepted_packets", "Number of packets accepted on nodeports of loopback interface"),
        ] {
            if let Ok(Some(packets)) = acct.packets(counter) {
                out.push_str(&format!("# HELP {family} {help}\n# TYPE {family} counter\n{family}_total {packets}\n"));
            }
        }
        out
    }

    /// A Service event reached the proxy.
    pub fn service_change(&self) {
        self.service_changes_total.inc();
        self.service_changes_pending.inc();
    }

    /// An EndpointSlice event reached the proxy.
    pub fn endpoint_change(&self) {
        self.endpoint_changes_total.inc();
        self.endpoint_changes_pending.inc();
    }

    /// A sync of `family` was queued.
    pub fn queued(&self, family: IpFamily) {
        self.last_queued.get_or_create(&family_label(family)).set(unix_seconds(SystemTime::now()));
    }

    /// Records one sync of `family`.
    pub fn observe(&self, family: IpFamily, event: &SyncEvent<'_>) {
        let label = family_label(family);
        let seconds = event.duration.as_secs_f64();
        self.sync_duration.get_or_create(&label).observe(seconds);
        if self.mode != Mode::Ipvs {
            if event.full { &self.sync_full_duration } else { &self.sync_partial_duration }.get_or_create(&label).observe(seconds);
        }
        match event.result {
            Ok(report) => {
                let now = SystemTime::now();
                self.last_sync.get_or_create(&label).set(unix_seconds(now));
                self.endpoint_changes_pending.set(0);
                self.service_changes_pending.set(0);
                for times in report.changes.endpoints.trigger_times.values() {
                    for t in times {
                        let latency = now.duration_since(*t).unwrap_or(Duration::ZERO);
                        self.network_programming.get_or_create(&label).observe(latency.as_secs_f64());
                    }
                }
                let gauge = |policy: &str| {
                    let labels = PolicyLabels { traffic_policy: policy.into(), ip_family: label.ip_family.clone() };
                    self.no_local_endpoints.get_or_create(&labels).clone()
                };
                gauge("internal").set(report.no_local_endpoints.internal as i64);
                gauge("external").set(report.no_local_endpoints.external as i64);
                for (table, count) in &report.rule_counts {
                    let labels = TableLabels { table: table.to_string(), ip_family: label.ip_family.clone() };
                    self.iptables_total.get_or_create(&labels).set(count.total as i64);
                    self.iptables_last.get_or_create(&labels).set(count.written as i64);
                }
            }
            Err(_) => match self.mode {
                Mode::Nftables => {
                    self.nftables_sync_failures.get_or_create(&label).inc();
                }
                Mode::Iptables => {
                    self.iptables_restore_failures.get_or_create(&label).inc();
                    if !event.full {
                        self.iptables_partial_restore_failures.get_or_create(&label).inc();
                    }
                }
                Mode::Ipvs => {
                    self.iptables_restore_failures.get_or_create(&label).inc();
                }
                // Upstream's userspace mode had no failure counter.
                Mode::Userspace => {}
            },
        }
    }

    /// Records one conntrack cleanup of `family`.
    pub fn conntrack_cleaned(&self, family: IpFamily, duration: Duration, deleted: usize) {
        let label = family_label(family);
        self.conntrack_duration.get_or_create(&label).observe(duration.as_secs_f64());
        self.conntrack_deleted.get_or_create(&label).inc_by(deleted as u64);
    }

    /// Records one API request that waited `waited` for the rate limit.
    pub fn rest_rate_limited(&self, method: &str, host: &str, waited: Duration) {
        let labels = VerbLabels { verb: method.into(), host: host.into() };
        self.rest_rate_limiter.get_or_create(&labels).observe(waited.as_secs_f64());
    }

    /// Records one API request's answer (`code`) and latency.
    pub fn rest_request(&self, method: &str, host: &str, code: &str, latency: Duration) {
        let labels = RequestLabels { code: code.into(), host: host.into(), method: method.into() };
        self.rest_requests.get_or_create(&labels).inc();
        let labels = VerbLabels { verb: method.into(), host: host.into() };
        self.rest_duration.get_or_create(&labels).observe(latency.as_secs_f64());
    }

    /// Records one API request's body size and its answer's, when known.
    pub fn rest_sizes(&self, method: &str, host: &str, request: Option<u64>, response: Option<u64>) {
        let labels = VerbLabels { verb: method.into(), host: host.into() };
        if let Some(size) = request {
            self.rest_request_size.get_or_create(&labels).observe(size as f64);
        }
        if let Some(size) = response {
            self.rest_response_size.get_or_create(&labels).observe(size as f64);
        }
    }

    /// The exposition (OpenMetrics text), with the process's own families.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        out.push_str(&self.nfacct_families());
        out.push_str(&crate::metrics_process::encode(self.started));
        out.push_str("# EOF\n");
        out
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Every family `mode` registers, by its exposed name (counters with
/// `_total`), each used once so that it shows.
#[cfg(test)]
pub fn every_family(mode: Mode) -> Vec<String> {
    let m = Metrics::new(mode);
    let family = family_label(IpFamily::V4);
    let table = TableLabels { table: "nat".into(), ip_family: "IPv4".into() };
    let verb = VerbLabels { verb: "GET".into(), host: "h".into() };
    for f in [&m.iptables_restore_failures, &m.iptables_partial_restore_failures, &m.nftables_sync_failures, &m.nftables_cleanup_failures, &m.conntrack_deleted] {
        f.get_or_create(&family).inc();
    }
    for f in [&m.sync_duration, &m.sync_full_duration, &m.sync_partial_duration, &m.network_programming, &m.conntrack_duration] {
        f.get_or_create(&family).observe(0.1);
    }
    for f in [&m.last_sync, &m.last_queued] {
        f.get_or_create(&family).set(1.0);
    }
    for f in [&m.rest_duration, &m.rest_rate_limiter, &m.rest_request_size, &m.rest_response_size] {
        f.get_or_create(&verb).observe(0.1);
    }
    m.rest_requests.get_or_create(&RequestLabels { code: "200".into(), host: "h".into(), method: "GET".into() }).inc();
    m.no_local_endpoints.get_or_create(&PolicyLabels { traffic_policy: "internal".into(), ip_family: "IPv4".into() }).set(0);
    m.iptables_total.get_or_create(&table).set(1);
    m.iptables_last.get_or_create(&table).set(1);
    m.healthz.get_or_create(&Code { code: "200".into() }).inc();
    m.livez.get_or_create(&Code { code: "200".into() }).inc();
    m.encode()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap_or((l, ""));
            if kind == "counter" { format!("{name}_total") } else { name.to_string() }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_names_labels_and_buckets() {
        let m = Metrics::new(Mode::Nftables);
        m.service_change();
        m.endpoint_change();
        m.queued(IpFamily::V4);
        m.conntrack_cleaned(IpFamily::V6, Duration::from_millis(3), 2);
        m.rest_request("GET", "10.0.0.1:6443", "200", Duration::from_millis(20));
        let text = m.encode();
        for name in [
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending 1",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total 1",
            "kubeproxy_sync_proxy_rules_service_changes_pending 1",
            "kubeproxy_sync_proxy_rules_service_changes_total 1",
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family=\"IPv4\"}",
            "kubeproxy_conntrack_reconciler_sync_duration_seconds_count{ip_family=\"IPv6\"} 1",
            "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv6\"} 2",
            "rest_client_requests_total{code=\"200\",host=\"10.0.0.1:6443\",method=\"GET\"} 1",
            "rest_client_request_duration_seconds_bucket{le=\"0.025\",verb=\"GET\",host=\"10.0.0.1:6443\"} 1",
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
            "process_start_time_seconds ",
            "process_open_fds ",
            "process_max_fds ",
            "process_virtual_memory_bytes ",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(programming_buckets().0.len(), 81, "upstream's 81 buckets");
    }

    #[test]
    fn each_mode_registers_upstream_s_families() {
        let nft = every_family(Mode::Nftables);
        assert!(nft.contains(&"kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total".to_string()), "{nft:?}");
        assert!(!nft.iter().any(|n| n.contains("iptables")), "{nft:?}");
        let ipt = every_family(Mode::Iptables);
        assert!(ipt.contains(&"kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total".to_string()), "{ipt:?}");
        assert!(ipt.contains(&"kubeproxy_sync_proxy_rules_iptables_last".to_string()), "{ipt:?}");
        assert!(!ipt.iter().any(|n| n.contains("nftables")), "{ipt:?}");
        let ipvs = every_family(Mode::Ipvs);
        assert!(ipvs.contains(&"kubeproxy_sync_proxy_rules_iptables_restore_failures_total".to_string()), "{ipvs:?}");
        assert!(!ipvs.iter().any(|n| n.contains("partial") || n.contains("sync_full")), "{ipvs:?}");
    }
}
