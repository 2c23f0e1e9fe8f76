//! What the backends' benchmarks share: the synthetic cluster (N ClusterIP
//! Services with endpoints on another node) and the reporting helpers.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy_oracle::fixtures::{self as fx, service, slice, EndpointState};
use kproxy_core::{Proxier, SyncRequest};

/// The ClusterIP of benchmark Service `i` (172.16.0.0/12, unique below 2^20).
pub fn cluster_ip(i: usize) -> String {
    format!("172.{}.{}.{}", 16 + (i >> 16), (i >> 8) & 255, i & 255)
}

/// The IP of endpoint `j` (< 16) of Service `i`.
pub fn endpoint_ip(i: usize, j: usize) -> String {
    let n = i * 16 + j;
    format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255)
}

/// Benchmark Service `i`: one TCP port, `http` 80.
pub fn bench_service(i: usize) -> Service {
    service("bench", &format!("svc-{i}"), &[&cluster_ip(i)]).port("http", 80, "TCP", 0).build()
}

/// Service `i`'s slice with `count` ready endpoints on another node.
pub fn bench_endpoints(i: usize, count: usize) -> EndpointSlice {
    let mut b = slice("bench", &format!("svc-{i}"), &format!("svc-{i}-1"), "IPv4").port("http", 8080, "TCP");
    for j in 0..count {
        b = b.endpoint(&endpoint_ip(i, j), fx::OTHER_NODE, EndpointState::Ready);
    }
    b.build()
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// This process's peak RSS (VmHWM), KiB.
pub fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}

/// This process's RSS now (VmRSS), KiB.
pub fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

/// A duration in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median and worst of a series, in milliseconds ("median / worst").
pub fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    format!("{:.1} / {:.1}", ms(v[v.len() / 2]), ms(v[v.len() - 1]))
}

/// Hands `p` this node and `services` benchmark Services with `eps`
/// endpoints each (no sync).
pub fn load<P: Proxier + ?Sized>(p: &mut P, services: usize, eps: usize) {
    p.on_node_update(&fx::node());
    for i in 0..services {
        p.on_service_update(None, Some(&bench_service(i)));
        p.on_endpoint_slice_update(&bench_endpoints(i, eps), false);
    }
}

/// The one-service change times of `rounds` rounds, each synced on its
/// own: an endpoint added to one Service, removed again, then one new
/// Service with `eps` endpoints (handler call to sync returning).
#[derive(Debug, Default)]
pub struct Changes {
    /// Endpoint added.
    pub added: Vec<Duration>,
    /// Endpoint removed.
    pub removed: Vec<Duration>,
    /// Service added.
    pub new_service: Vec<Duration>,
}

/// Runs [`Changes`]' rounds on `p`, loaded by [`load`] with `services`.
pub async fn change_rounds<P: Proxier + ?Sized>(p: &mut P, services: usize, eps: usize, rounds: usize) -> Changes {
    let mut c = Changes::default();
    for r in 0..rounds {
        let i = (r * 7919) % services;
        let t = Instant::now();
        p.on_endpoint_slice_update(&bench_endpoints(i, eps + 1), false);
        p.sync(SyncRequest::default()).await.expect("sync");
        c.added.push(t.elapsed());
        let t = Instant::now();
        p.on_endpoint_slice_update(&bench_endpoints(i, eps), false);
        p.sync(SyncRequest::default()).await.expect("sync");
        c.removed.push(t.elapsed());
        let t = Instant::now();
        let n = services + r;
        p.on_service_update(None, Some(&bench_service(n)));
        p.on_endpoint_slice_update(&bench_endpoints(n, eps), false);
        p.sync(SyncRequest::default()).await.expect("sync");
        c.new_service.push(t.elapsed());
    }
    c
}

/// A benchmark's `[SERVICES,...] [ENDPOINTS]` arguments (the first two of
/// `args`), with `default_sizes` and 10 endpoints when absent.
pub fn sizes_and_endpoints(args: &[String], default_sizes: &[usize]) -> (Vec<usize>, usize) {
    let sizes = args
        .first()
        .map(|s| s.split(',').map(|n| n.parse().expect("a number of services")).collect())
        .unwrap_or_else(|| default_sizes.to_vec());
    let eps = args.get(1).map(|n| n.parse().expect("a number of endpoints")).unwrap_or(10);
    (sizes, eps)
}

/// Runs this benchmark's own executable with `args` inside a fresh network
/// namespace named after `label`, and deletes the namespace afterwards.
/// Exits the process with a one-line message naming `tool` when the
/// namespace cannot be made (not root) or the run fails.
pub fn run_isolated(tool: &str, label: &str, args: &[String]) {
    let me = std::env::current_exe().expect("own path");
    let ns = format!("kpbench-{}-{label}", std::process::id());
    let ok = std::process::Command::new("ip").args(["netns", "add", &ns]).status().map(|s| s.success()).unwrap_or(false);
    if !ok {
        eprintln!("{tool}: cannot create network namespace {ns} (run as root)");
        std::process::exit(1);
    }
    let status = std::process::Command::new("ip").args(["netns", "exec", &ns]).arg(&me).args(args).status();
    let _ = std::process::Command::new("ip").args(["netns", "del", &ns]).status();
    if !status.map(|s| s.success()).unwrap_or(false) {
        eprintln!("{tool}: the run {label} failed");
        std::process::exit(1);
    }
}
