//! Many nodes on one API server: N node namespaces, each running one
//! proxy, all watching the same objects, as the nodes of a cluster do.
//! One proxy kind runs at a time (kproxy on every node, then upstream
//! kube-proxy on every node, each against a freshly started API server),
//! so the API server's cost is each kind's own.
//!
//! A few nodes are *probed*: they have pods and a client
//! (`kproxy-testkit`'s topology), and real connections time each change.
//! The others are bare namespaces with the node's address on a link
//! of their own: the proxy programs them all the same, and they report through
//! their `/metrics`, as every node of a cluster does.

use std::time::{Duration, Instant, SystemTime};

use kproxy_core::convert::TRIGGER_TIME_ANNOTATION;
use kproxy_oracle::{fixtures as fx, Dataplane};
use kproxy_testkit::{Netns, Topology};
use serde_json::{json, Value};

use crate::api::Api;
use crate::bench::{self, bg_objects, node_scenario, probe_slice, proc_usage, Prober, Usage, CLIENT, POD_A, POD_B, POD_C};
use crate::binaries::Binaries;
use crate::control_plane::ControlPlane;
use crate::nodes::node_object;
use crate::prom::{self, Histogram};
use crate::scenario::{self, ProxyKind};

/// The histogram both proxies fill with API-write-to-programmed times.
pub const PROGRAMMING: &str = "kubeproxy_network_programming_duration_seconds";
/// The gauge both proxies set after each successful sync.
const LAST_SYNC: &str = "kubeproxy_sync_proxy_rules_last_timestamp_seconds";

/// A node's namespaces.
#[derive(Debug)]
enum Place {
    /// With pods and a client pod that probes with real connections.
    Probed(Box<Topology>),
    /// The node namespace alone.
    Bare(Netns),
}

/// One node and its proxy.
#[derive(Debug)]
struct ClusterNode {
    name: String,
    place: Place,
    proxy: Option<usize>,
}

impl ClusterNode {
    fn netns(&self) -> &Netns {
        match &self.place {
            Place::Probed(t) => &t.node,
            Place::Bare(ns) => ns,
        }
    }

    fn netns_mut(&mut self) -> &mut Netns {
        match &mut self.place {
            Place::Probed(t) => &mut t.node,
            Place::Bare(ns) => ns,
        }
    }

    /// The client pod's namespace, on a probed node.
    fn client(&self) -> Option<&str> {
        match &self.place {
            Place::Probed(t) => Some(t.pods[&CLIENT.parse().expect("literal")].name()),
            Place::Bare(_) => None,
        }
    }

    fn metrics(&self) -> Result<String, String> {
        self.netns().exec(&["curl", "-sS", "--max-time", "5", "http://127.0.0.1:10249/metrics"])
    }

    fn pid(&self) -> Option<u32> {
        self.proxy.and_then(|h| self.netns().pid(h))
    }

    fn usage(&self) -> Usage {
        self.pid().map(proc_usage).unwrap_or_default()
    }
}

/// A node namespace holding the node's addresses on a link of its own (a
/// veth pair inside the namespace: not every kernel has dummy links).
fn bare_node() -> Result<Netns, String> {
    let ns = Netns::new("node")?;
    ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])?;
    ns.ip(&["link", "add", "kpeth0", "type", "veth", "peer", "name", "kpeth1"])?;
    ns.ip(&["link", "set", "kpeth1", "up"])?;
    ns.ip(&["addr", "add", &format!("{}/24", fx::NODE_IP), "dev", "kpeth0"])?;
    ns.ip(&["addr", "add", &format!("{}/64", fx::NODE_IP_V6), "dev", "kpeth0"])?;
    ns.ip(&["link", "set", "kpeth0", "up"])?;
    Ok(ns)
}

/// `object` (JSON) with the trigger-time annotation set to now, in RFC
/// 3339 with nanoseconds as the EndpointSlice controller writes it.
fn triggered(mut object: Value) -> Value {
    let now = k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.9fZ").to_string();
    object["metadata"]["annotations"] = json!({ TRIGGER_TIME_ANNOTATION: now });
    object
}

/// What one run measures and how hard it pushes.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Moves of the probe Service between two pods.
    pub changes: usize,
    /// The least time between two moves.
    pub spacing: Duration,
    /// How long a probed node may take to show a move before it counts
    /// as this long.
    pub limit: Duration,
    /// Background slice changes per second in the churn phase.
    pub churn_rate: u32,
    /// How long the churn phase lasts (0: none).
    pub churn_seconds: u64,
}

/// CPU and memory added up over every node's proxy.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    /// CPU seconds, all proxies together.
    pub cpu_seconds: f64,
    /// The sum of the proxies' peak RSS, MiB.
    pub rss_sum_mib: f64,
    /// The largest proxy's peak RSS, MiB.
    pub rss_max_mib: f64,
}

impl Totals {
    fn of(usages: &[Usage]) -> Totals {
        Totals {
            cpu_seconds: usages.iter().map(|u| u.cpu_seconds).sum(),
            rss_sum_mib: usages.iter().map(|u| u.peak_rss_mib).sum(),
            rss_max_mib: usages.iter().map(|u| u.peak_rss_mib).fold(0.0, f64::max),
        }
    }
}

/// Programming latency as every node's `/metrics` saw it over a phase.
#[derive(Debug, Clone, Default)]
pub struct NodeLatencies {
    /// Every node's observations together.
    pub all: Histogram,
    /// The node whose p99 (then mean) was highest, its name and p99 and
    /// mean in seconds.
    pub slowest: Option<(String, f64, f64)>,
}

impl NodeLatencies {
    fn of(per_node: &[(String, Histogram)]) -> NodeLatencies {
        let mut all = Histogram::default();
        let mut slowest: Option<(String, f64, f64)> = None;
        for (name, h) in per_node {
            all.add(h);
            let (Some(p99), Some(mean)) = (h.quantile(0.99), h.mean()) else { continue };
            if slowest.as_ref().is_none_or(|(_, s99, smean)| (p99, mean) > (*s99, *smean)) {
                slowest = Some((name.clone(), p99, mean));
            }
        }
        NodeLatencies { all, slowest }
    }

    fn to_json(&self) -> Value {
        json!({
            "observations": self.all.count,
            "p50_s": self.all.quantile(0.5), "p99_s": self.all.quantile(0.99), "mean_s": self.all.mean(),
            "slowest_node": self.slowest.as_ref().map(|(n, p99, mean)| json!({"node": n, "p99_s": p99, "mean_s": mean})),
        })
    }
}

/// One proxy kind's run on every node.
#[derive(Debug, Clone, Default)]
pub struct KindReport {
    /// Nodes that ran the proxy.
    pub nodes: usize,
    /// From starting every proxy to the last node's first sync (and every
    /// probed node serving), seconds.
    pub all_synced_s: f64,
    /// The proxies' CPU and peak memory from start to that point.
    pub startup: Totals,
    /// Per probed node, each move's time from API write to the first
    /// connection answered by the new pod (at `limit` if never seen).
    pub probed: Vec<Vec<Duration>>,
    /// The moves as every node's metrics saw them.
    pub moves: NodeLatencies,
    /// The churn phase's changes as every node's metrics saw them.
    pub churn_latency: NodeLatencies,
    /// The proxies' CPU and peak memory over the churn phase.
    pub churn: Totals,
    /// The API server's CPU seconds over the whole run and its peak RSS.
    pub apiserver: Usage,
    /// Bytes the control plane sent to the nodes over the whole run.
    pub bytes_to_nodes: u64,
}

impl KindReport {
    /// Every probed observation, all nodes together.
    pub fn probed_all(&self) -> Vec<Duration> {
        self.probed.iter().flatten().copied().collect()
    }

    /// The report as JSON (milliseconds and seconds as named).
    pub fn to_json(&self) -> Value {
        let ms = |v: &[Duration]| v.iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>();
        let totals = |t: &Totals| json!({"cpu_seconds": t.cpu_seconds, "rss_sum_mib": t.rss_sum_mib, "rss_max_mib": t.rss_max_mib});
        json!({
            "nodes": self.nodes,
            "all_synced_s": self.all_synced_s,
            "startup": totals(&self.startup),
            "probed_ms": self.probed.iter().map(|v| ms(v)).collect::<Vec<_>>(),
            "moves_by_metrics": self.moves.to_json(),
            "churn_by_metrics": self.churn_latency.to_json(),
            "churn": totals(&self.churn),
            "apiserver": {"cpu_seconds": self.apiserver.cpu_seconds, "peak_rss_mib": self.apiserver.peak_rss_mib},
            "bytes_to_nodes": self.bytes_to_nodes,
        })
    }
}

/// The cluster: a control plane, its nodes and the Services they proxy.
#[derive(Debug)]
pub struct ClusterBench {
    cp: ControlPlane,
    api: Api,
    nodes: Vec<ClusterNode>,
    /// The proxy mode every node runs (nftables or iptables, on
    /// iptables-nft).
    pub mode: Dataplane,
    services: usize,
}

impl ClusterBench {
    /// Starts the control plane and `nodes` node namespaces, the first
    /// `probed` of them with pods and a client; registers each Node
    /// (`node-000`, …) and the probe Service (on pod A).
    pub fn new(bins: &Binaries, nodes: usize, probed: usize) -> Result<ClusterBench, String> {
        let mut cp = ControlPlane::start(bins)?;
        let api = cp.admin()?;
        api.namespace("bench")?;
        let mut all = Vec::new();
        for i in 0..nodes {
            let place = if i < probed { Place::Probed(Box::new(Topology::build(&node_scenario())?)) } else { Place::Bare(bare_node()?) };
            let node = ClusterNode { name: format!("node-{i:03}"), place, proxy: None };
            cp.attach(node.netns())?;
            api.put(node_object(&node.name, "zone-a"))?;
            all.push(node);
        }
        api.apply(&node_scenario().services[0])?;
        api.apply(probe_slice(POD_A))?;
        Ok(ClusterBench { cp, api, nodes: all, mode: Dataplane::Nftables, services: 0 })
    }

    /// Creates background Services (one endpoint each) until there are
    /// `n`.
    pub fn grow_to(&mut self, n: usize) -> Result<(), String> {
        let objects: Vec<Value> = (self.services..n).flat_map(|i| <[Value; 2]>::from(bg_objects(i, &[POD_C]))).collect();
        self.api.apply_many(objects, 32)?;
        self.services = self.services.max(n);
        Ok(())
    }

    /// Runs `kind` (from `binary`) on every node: a fresh API server,
    /// clean tables, every proxy started at once; then the moves, then
    /// the churn; then every proxy stopped.
    pub fn run(&mut self, kind: ProxyKind, binary: &str, plan: &Plan) -> Result<KindReport, String> {
        // The previous kind's watches and caches gone: the API server
        // starts again from etcd.
        self.cp.restart_apiserver(Duration::ZERO)?;
        let api_pid = self.cp.apiserver_pid().ok_or("no API server")?;
        let api_before = proc_usage(api_pid);
        let bytes_before = self.cp.bytes_to_nodes()?;
        let mut report = KindReport { nodes: self.nodes.len(), ..KindReport::default() };
        let started = self.start_all(kind, binary)?;
        report.all_synced_s = self.wait_synced(started, Duration::from_secs(900))?;
        report.startup = Totals::of(&self.nodes.iter().map(ClusterNode::usage).collect::<Vec<_>>());
        // Let the start's syncs settle and the rate limiters refill.
        std::thread::sleep(Duration::from_secs(3));
        let before = self.programming()?;
        report.probed = self.moves(plan)?;
        let after = self.programming()?;
        report.moves = NodeLatencies::of(&since(&after, &before));
        if plan.churn_seconds > 0 {
            self.nodes.iter().filter_map(ClusterNode::pid).for_each(bench::reset_peak);
            let usage_before: Vec<Usage> = self.nodes.iter().map(ClusterNode::usage).collect();
            bench::churn_slices(&self.api, self.services, plan.churn_rate, plan.churn_seconds, triggered)?;
            // The last changes' syncs.
            std::thread::sleep(Duration::from_secs(2));
            let usage: Vec<Usage> = self
                .nodes
                .iter()
                .zip(&usage_before)
                .map(|(n, b)| {
                    let now = n.usage();
                    Usage { cpu_seconds: now.cpu_seconds - b.cpu_seconds, peak_rss_mib: now.peak_rss_mib }
                })
                .collect();
            report.churn = Totals::of(&usage);
            report.churn_latency = NodeLatencies::of(&since(&self.programming()?, &after));
        }
        let api_after = proc_usage(api_pid);
        report.apiserver = Usage { cpu_seconds: api_after.cpu_seconds - api_before.cpu_seconds, peak_rss_mib: api_after.peak_rss_mib };
        report.bytes_to_nodes = self.cp.bytes_to_nodes()?.saturating_sub(bytes_before);
        for node in &mut self.nodes {
            if let Some(h) = node.proxy.take() {
                node.netns_mut().kill(h);
            }
        }
        Ok(report)
    }

    fn start_all(&mut self, kind: ProxyKind, binary: &str) -> Result<SystemTime, String> {
        let kubeconfig = self.cp.kubeconfig(kind.user())?;
        let dir = self.cp.dir().to_path_buf();
        let started = SystemTime::now();
        for node in &mut self.nodes {
            let ns = node.netns_mut();
            ns.exec(&["nft", "flush", "ruleset"])?;
            let _ = ns.exec(&["conntrack", "-F"]);
            let mut config = scenario::config_in(&node_scenario(), &kubeconfig, self.mode);
            config["hostnameOverride"] = json!(node.name);
            // KPROXY_BENCH_VERBOSITY=N: kproxy logs at -v=N (4: every
            // event and sync), to look into a slow change.
            if let Some(v) = std::env::var("KPROXY_BENCH_VERBOSITY").ok().and_then(|v| v.parse::<u32>().ok()).filter(|_| kind == ProxyKind::Kproxy) {
                config["logging"] = json!({"verbosity": v});
            }
            node.proxy = Some(scenario::start_proxy(kind, node.netns_mut(), &config, &dir, binary)?);
        }
        Ok(started)
    }

    /// Waits until every node's proxy has synced once and every probed
    /// node serves the probe and the background Services; returns the
    /// seconds from `started` to the last of these.
    fn wait_synced(&self, started: SystemTime, limit: Duration) -> Result<f64, String> {
        let deadline = Instant::now() + limit;
        let mut done = vec![None; self.nodes.len()];
        while done.iter().any(Option::is_none) {
            for (node, seen) in self.nodes.iter().zip(done.iter_mut()).filter(|(_, s)| s.is_none()) {
                if node.metrics().is_ok_and(|text| prom::value(&text, LAST_SYNC) > 0.0) {
                    *seen = Some(started.elapsed().unwrap_or_default().as_secs_f64());
                }
            }
            if Instant::now() > deadline {
                let late: Vec<&str> = self.nodes.iter().zip(&done).filter(|(_, s)| s.is_none()).map(|(n, _)| n.name.as_str()).collect();
                return Err(format!("not synced within {limit:?}: {}", late.join(" ")));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let mut last = done.into_iter().flatten().fold(0.0, f64::max);
        for client in self.nodes.iter().filter_map(ClusterNode::client) {
            let served = bench::time_to_serve(client, CLIENT, self.services, started, 10, deadline.saturating_duration_since(Instant::now()))?;
            last = last.max(served.as_secs_f64());
        }
        Ok(last)
    }

    /// Every node's programming histogram now.
    fn programming(&self) -> Result<Vec<(String, Histogram)>, String> {
        self.nodes.iter().map(|n| Ok((n.name.clone(), prom::histogram(&n.metrics()?, PROGRAMMING)))).collect()
    }

    /// Moves the probe Service between pods A and B `plan.changes` times
    /// and times each move on every probed node.
    fn moves(&self, plan: &Plan) -> Result<Vec<Vec<Duration>>, String> {
        let clients: Vec<&str> = self.nodes.iter().filter_map(ClusterNode::client).collect();
        let seconds = plan.changes as f64 * (plan.spacing + plan.limit).as_secs_f64() + 30.0;
        let probers = clients.iter().map(|c| Prober::follow(c, CLIENT, bench::PROBE_IP, seconds, bench::CLIENT_PORT_RANGE)).collect::<Result<Vec<_>, _>>()?;
        // Settle: every probed node answers from pod A.
        let mut current = POD_A;
        self.api.apply(probe_slice(current))?;
        for (p, client) in probers.iter().zip(&clients) {
            bench::wait_for(p, current, 0.0, Duration::from_secs(60), &mut None, &mut Vec::new()).map_err(|e| format!("{client}: never served the probe: {e}"))?;
        }
        let mut out = vec![Vec::new(); probers.len()];
        for _ in 0..plan.changes {
            current = if current == POD_A { POD_B } else { POD_A };
            let began = Instant::now();
            let t0 = bench::wall(SystemTime::now());
            let slice = serde_json::to_value(probe_slice(current)).map_err(|e| e.to_string())?;
            self.api.apply(triggered(slice))?;
            for (p, seen) in probers.iter().zip(out.iter_mut()) {
                let at = bench::wait_for(p, current, t0, plan.limit, &mut None, &mut Vec::new()).unwrap_or(t0 + plan.limit.as_secs_f64());
                seen.push(Duration::from_secs_f64((at - t0).max(0.0)));
            }
            std::thread::sleep(plan.spacing.saturating_sub(began.elapsed()));
        }
        Ok(out)
    }
}

/// Per node, what `after` holds beyond `before`.
fn since(after: &[(String, Histogram)], before: &[(String, Histogram)]) -> Vec<(String, Histogram)> {
    after.iter().zip(before).map(|((name, a), (_, b))| (name.clone(), a.since(b))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(le_counts: &[(f64, f64)], sum: f64) -> Histogram {
        let count = le_counts.last().map_or(0.0, |(_, c)| *c);
        Histogram { buckets: le_counts.to_vec(), sum, count }
    }

    #[test]
    fn the_slowest_node_is_the_one_with_the_highest_p99() {
        let fast = h(&[(0.25, 10.0), (0.5, 10.0), (f64::INFINITY, 10.0)], 0.5);
        let slow = h(&[(0.25, 5.0), (0.5, 10.0), (f64::INFINITY, 10.0)], 2.5);
        let idle = Histogram::default();
        let l = NodeLatencies::of(&[("a".into(), fast), ("b".into(), slow), ("c".into(), idle)]);
        let (name, p99, mean) = l.slowest.unwrap();
        assert_eq!(name, "b");
        assert!(p99 > 0.25 && p99 <= 0.5, "{p99}");
        assert!((mean - 0.25).abs() < 1e-9);
        assert_eq!(l.all.count, 20.0);
    }

    #[test]
    fn totals_add_cpu_and_memory_and_keep_the_largest() {
        let t = Totals::of(&[Usage { cpu_seconds: 1.5, peak_rss_mib: 30.0 }, Usage { cpu_seconds: 0.5, peak_rss_mib: 50.0 }]);
        assert_eq!((t.cpu_seconds, t.rss_sum_mib, t.rss_max_mib), (2.0, 80.0, 50.0));
    }

    #[test]
    fn a_triggered_object_carries_a_nanosecond_trigger_time() {
        let v = triggered(json!({"metadata": {"name": "x"}}));
        let at = v["metadata"]["annotations"][TRIGGER_TIME_ANNOTATION].as_str().unwrap();
        assert!(at.ends_with('Z') && at.len() == "2026-12-07T00:00:00.000000000Z".len(), "{at}");
        assert_eq!(v["metadata"]["name"], "x");
    }
}
