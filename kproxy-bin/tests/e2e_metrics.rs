//! `/metrics`, checked against upstream kube-proxy v1.34.4 on the same
//! cluster: each proxy runs the same scenario in the same mode on its own
//! node, gets the same changes and health probes, and is scraped.
//!
//! - Every family upstream exposes, kproxy exposes too, with the same type,
//!   label names and buckets, except the deliberate exceptions listed in
//!   [`EXCEPTIONS`] with their reasons.
//! - Every query of the kubernetes-mixin kube-proxy dashboard and its
//!   `KubeProxyDown` alert finds data in kproxy's `/metrics`.
//!
//! Needs root and the e2e binaries; skips without, must run in CI.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kproxy_oracle::{scenarios, Dataplane};
use kproxy_e2e::api::Api;
use kproxy_e2e::control_plane::ControlPlane;
use kproxy_e2e::{e2e_binaries, scenario, ProxyKind};
use kproxy_testkit::{check_scenario_for, Topology};
use serde_json::json;

/// Families upstream exposes that kproxy does not, and why. A name ending
/// in `_` is a prefix.
const EXCEPTIONS: &[(&str, &str)] = &[
    ("go_", "kproxy is not a Go program (go_goroutines is kept: it counts kproxy's live async tasks)"),
    ("apiserver_", "API-server library families upstream's binary registers only because it imports those packages; a proxy never changes them"),
    ("aggregator_", "API-server library family, as apiserver_*"),
    ("registered_metrics_total", "component-base's bookkeeping of its own registry"),
    ("disabled_metrics_total", "component-base's bookkeeping of its own registry"),
    ("hidden_metrics_total", "component-base's bookkeeping of its own registry"),
    ("cardinality_enforcement_unexpected_categorizations_total", "component-base's bookkeeping of its own registry"),
    ("kubernetes_feature_enabled", "upstream's feature gates; kproxy has none"),
    ("rest_client_exec_plugin_", "client-go's exec credential plugins; kproxy's client has none"),
    ("rest_client_transport_", "client-go's transport cache; kproxy's client has none"),
    ("rest_client_request_retries_total", "kproxy's client does not retry requests itself (its watches relist)"),
];

/// A dashboard panel, the metric its query reads, and the label matchers
/// it needs.
type MixinQuery = (&'static str, &'static str, &'static [(&'static str, &'static str)]);

/// The kubernetes-mixin kube-proxy dashboard's and alert's queries
/// (dashboards/proxy.libsonnet, alerts/kube_proxy.libsonnet): the metric
/// each reads and the target-side label matchers it needs (`job`,
/// `instance` and `cluster` come from Prometheus, not the target).
/// `label=~prefix` matches a value starting with the prefix.
const MIXIN: &[MixinQuery] = &[
    ("Rules Sync Rate", "kubeproxy_sync_proxy_rules_duration_seconds_count", &[]),
    ("Rules Sync Latency 99th Quantile", "kubeproxy_sync_proxy_rules_duration_seconds_bucket", &[("le", "")]),
    ("Network Programming Rate", "kubeproxy_network_programming_duration_seconds_count", &[]),
    ("Network Programming Latency 99th Quantile", "kubeproxy_network_programming_duration_seconds_bucket", &[("le", "")]),
    ("Kube API Request Rate (2xx)", "rest_client_requests_total", &[("code", "2")]),
    ("Post Request Latency 99th Quantile", "rest_client_request_duration_seconds_bucket", &[("verb", "POST"), ("le", "")]),
    ("Get Request Latency 99th Quantile", "rest_client_request_duration_seconds_bucket", &[("verb", "GET"), ("le", "")]),
    ("Memory", "process_resident_memory_bytes", &[]),
    ("CPU usage", "process_cpu_seconds_total", &[]),
    ("Goroutines", "go_goroutines", &[]),
];

/// One sample: its name and labels.
type Sample = (String, BTreeMap<String, String>);

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(n);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(name.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    out
}

/// The samples of an exposition (Prometheus text or OpenMetrics).
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| match l.split_once('{') {
            Some((name, rest)) => (name.to_string(), parse_labels(rest.rsplit_once('}').map_or(rest, |(labels, _)| labels))),
            None => (l.split(' ').next().unwrap_or_default().to_string(), BTreeMap::new()),
        })
        .collect()
}

/// `# TYPE` lines: family name to type. OpenMetrics names counters without
/// `_total`; both spellings map to the same entry.
fn types(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut parts = line.split(' ');
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        out.insert(name.trim_end_matches("_total").to_string(), kind.to_string());
    }
    out
}

fn excepted(name: &str) -> Option<&'static str> {
    let name = ["_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
    if name == "go_goroutines" {
        return None;
    }
    EXCEPTIONS.iter().find(|(n, _)| if n.ends_with('_') { name.starts_with(n) } else { name == *n }).map(|(_, why)| *why)
}

/// What upstream's exposition has that kproxy's lacks.
fn missing(upstream: &str, kproxy: &str) -> Vec<String> {
    let mut out = Vec::new();
    let label_names = |text: &str| {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, labels) in samples(text) {
            m.entry(name).or_default().extend(labels.into_keys());
        }
        m
    };
    let buckets = |text: &str| {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, labels) in samples(text) {
            if let Some(le) = labels.get("le") {
                let v: f64 = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
                m.entry(name).or_default().insert(format!("{v}"));
            }
        }
        m
    };
    let (up, kp) = (label_names(upstream), label_names(kproxy));
    for (name, labels) in &up {
        if excepted(name).is_some() {
            continue;
        }
        match kp.get(name) {
            None => out.push(format!("{name}: missing")),
            Some(ours) => {
                let lacking: Vec<&String> = labels.difference(ours).collect();
                if !lacking.is_empty() {
                    out.push(format!("{name}: lacks labels {lacking:?}"));
                }
            }
        }
    }
    let (up_b, kp_b) = (buckets(upstream), buckets(kproxy));
    for (name, les) in &up_b {
        if excepted(name).is_none() && kp_b.get(name).is_some_and(|ours| ours != les) {
            out.push(format!("{name}: buckets differ: upstream {les:?}, kproxy {:?}", kp_b[name]));
        }
    }
    let (up_t, kp_t) = (types(upstream), types(kproxy));
    for (name, kind) in &up_t {
        if excepted(name).is_none() && excepted(&format!("{name}_total")).is_none() {
            if let Some(ours) = kp_t.get(name).filter(|ours| *ours != kind) {
                out.push(format!("{name}: type {ours}, upstream's {kind}"));
            }
        }
    }
    out
}

/// What the mixin's queries find nothing for in `text`.
fn mixin_gaps(text: &str) -> Vec<String> {
    let all = samples(text);
    MIXIN
        .iter()
        .filter(|(_, metric, matchers)| {
            !all.iter().any(|(name, labels)| name == metric && matchers.iter().all(|(l, prefix)| labels.get(*l).is_some_and(|v| v.starts_with(prefix))))
        })
        .map(|(panel, metric, matchers)| format!("{panel}: no {metric} with {matchers:?}"))
        .collect()
}


/// Runs `kind` on a fresh node for the scenario, makes one annotated
/// endpoint change and the health probes, and returns its `/metrics`.
fn scrape(cp: &mut ControlPlane, api: &Api, kind: ProxyKind, binary: &str, mode: Dataplane, probe: usize) -> String {
    let s = scenarios::all().into_iter().find(|s| s.name == "external_policy_local_with_local_endpoints").unwrap();
    let mut topo = Topology::build(&s).unwrap();
    cp.attach(&topo.node).unwrap();
    scenario::apply(api, &s).unwrap();
    let kubeconfig = cp.kubeconfig(kind.user()).unwrap();
    scenario::start_proxy(kind, &mut topo.node, &scenario::config_in(&s, &kubeconfig, mode), cp.dir(), binary).unwrap();
    let start = Instant::now();
    while !check_scenario_for(&topo, &s, mode).is_empty() && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
    }
    // A change with the trigger-time annotation, as the EndpointSlice
    // controller writes it (RFC 3339 with nanoseconds): network
    // programming latency is observed. Whole seconds would not do: both
    // proxies ignore a trigger time before their own start, and kproxy
    // can start and pass the scenario within one second.
    let name = format!("probe-{probe}");
    let now = k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.9fZ").to_string();
    api.apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "ns1", "name": name},
        "spec": {"ports": [{"name": "p", "port": 80, "protocol": "TCP"}]}}))
        .unwrap();
    api.apply(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "ns1", "name": format!("{name}-a"), "labels": {"kubernetes.io/service-name": name},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": now}},
        "addressType": "IPv4", "ports": [{"name": "p", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.180.0.9"], "conditions": {"ready": true}}]}))
        .unwrap();
    let mut text = String::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        common::http_get(&topo, "http://127.0.0.1:10256/healthz");
        common::http_get(&topo, "http://127.0.0.1:10256/livez");
        text = common::http_get(&topo, "http://127.0.0.1:10249/metrics").1;
        if text.contains("kubeproxy_network_programming_duration_seconds_count") && text.contains("kubeproxy_proxy_livez_total") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(topo);
    scenario::delete(api, &s).unwrap();
    text
}

#[test]
fn metrics_match_upstream_s_and_feed_the_mixin_dashboard() {
    let _one_at_a_time = kproxy_e2e::exclusive();
    let Some(bins) = e2e_binaries("metrics_match_upstream_s_and_feed_the_mixin_dashboard") else { return };
    let mut cp = ControlPlane::start(&bins).unwrap();
    let api = cp.admin().unwrap();
    let mut failures = Vec::new();
    for (i, mode) in [Dataplane::Nftables, Dataplane::Iptables].into_iter().enumerate() {
        let upstream = scrape(&mut cp, &api, ProxyKind::Upstream, &bins.path("kube-proxy"), mode, 2 * i);
        let kproxy = scrape(&mut cp, &api, ProxyKind::Kproxy, env!("CARGO_BIN_EXE_kproxy"), mode, 2 * i + 1);
        assert!(upstream.contains("kubeproxy_sync_proxy_rules_duration_seconds"), "upstream's /metrics ({mode:?}):\n{upstream}");
        failures.extend(missing(&upstream, &kproxy).into_iter().map(|m| format!("{mode:?}: {m}")));
        failures.extend(mixin_gaps(&kproxy).into_iter().map(|m| format!("{mode:?} mixin: {m}")));
        // The upstream side of the mixin check, so the table above is
        // known to be satisfiable (its POST panel reads upstream's Event).
        let upstream_gaps = mixin_gaps(&upstream);
        assert!(upstream_gaps.is_empty(), "the mixin table does not describe upstream either: {upstream_gaps:?}");
    }
    assert!(failures.is_empty(), "kproxy's /metrics lacks what upstream's has:\n{}", failures.join("\n"));
}

#[test]
fn the_exposition_parser_reads_both_formats() {
    let text = "# TYPE a_total counter\na_total{code=\"200\",host=\"h:1\"} 3\n# TYPE b histogram\nb_bucket{le=\"0.5\",x=\"a\\\"b\"} 1\nc 2\n";
    let s = samples(text);
    assert_eq!(s[0].0, "a_total");
    assert_eq!(s[0].1["host"], "h:1");
    assert_eq!(s[1].1["x"], "a\"b");
    assert_eq!(types(text)["a"], "counter");
    assert_eq!(missing(text, "# TYPE a counter\na_total{code=\"1\"} 1\n"), ["a_total: lacks labels [\"host\"]", "b_bucket: missing", "c: missing"]);
}
