//! Standalone mode at scale (issue 17): kproxy in nftables mode on a
//! manifests directory of many Services, each with several endpoints, in
//! files of a few hundred Services. Measured with real connections from a
//! client pod: the time from process start until sampled Services answer,
//! the peak memory, the CPU used while nothing changes, and the time from
//! rewriting a whole file (one of its Services moved to another pod)
//! until a connection is answered by the new pod. Upstream kube-proxy has
//! no standalone mode, so there is nothing to run beside it.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use kproxy_core::IpFamily;
use kproxy_oracle::fixtures::{self as fx, slice, EndpointState};
use kproxy_oracle::{Case, Dataplane, Origin, Packet, Scenario, Verdict};
use kproxy_testkit::Topology;
use serde_json::{json, Value};

use crate::bench::{bg_ip, proc_usage, wait_for, wall, Prober, Usage, PROBE_IP};

const CLIENT: &str = "10.180.0.100";
/// The pods every Service's endpoints are (so any of them answers).
const PODS: [&str; 10] = ["10.180.0.1", "10.180.0.2", "10.180.0.3", "10.180.0.4", "10.180.0.5", "10.180.0.6", "10.180.0.7", "10.180.0.8", "10.180.0.9", "10.180.0.10"];

/// The set-up: a node with ten pods and a client, and the directory.
#[derive(Debug)]
pub struct StandaloneBench {
    topo: Topology,
    dir: PathBuf,
    /// Services in all.
    pub services: usize,
    /// Files they are spread over.
    pub files: usize,
    /// Endpoints per Service (at most 10).
    pub endpoints: usize,
    proxy: Option<usize>,
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct StandaloneResults {
    /// Process start until the probe Service and the sampled ones answer.
    pub start_to_traffic: Duration,
    /// Peak RSS by then, MiB.
    pub start_peak_rss_mib: f64,
    /// CPU used while nothing changed, as a share of one core (0–1).
    pub idle_cpu: f64,
    /// File write → first connection answered by the new pod, per change.
    pub write_to_traffic: Vec<Duration>,
    /// Peak RSS at the end, MiB.
    pub end_peak_rss_mib: f64,
}

fn service(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "bench", "name": name},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
}

fn endpoint_slice(name: &str, endpoints: &[&str]) -> Value {
    let eps: Vec<Value> = endpoints.iter().map(|e| json!({"addresses": [e], "conditions": {"ready": true}, "nodeName": fx::NODE_NAME})).collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "bench", "name": format!("{name}-a"), "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4", "endpoints": eps, "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
}

/// The node: the ten pods serving 8080 and the client pod.
fn node_scenario() -> Scenario {
    let mut pods = slice("bench", "pods", "pods-a", "IPv4").port("http", 8080, "TCP");
    for pod in PODS {
        pods = pods.endpoint(pod, fx::NODE_NAME, EndpointState::Ready);
    }
    let packet = Packet::tcp(Origin::LocalPod, CLIENT.parse().expect("literal"), PROBE_IP.parse().expect("literal"), 80);
    Scenario {
        name: "standalone-bench",
        family: IpFamily::V4,
        services: Vec::new(),
        slices: vec![pods.build()],
        node: fx::node(),
        config: fx::config(IpFamily::V4),
        service_cidrs: Vec::new(),
        localhost_node_ports: false,
        cases: vec![Case { name: "client", packet, expected: Verdict::Reject, iptables: None, ipvs: None }],
    }
}

impl StandaloneBench {
    /// Builds the node and writes `services` Services with `endpoints`
    /// endpoints each (1–10) into `files` files (file 0 also holds the
    /// probe Service, on the first pod), plus the Node and the
    /// configuration.
    pub fn new(services: usize, files: usize, endpoints: usize) -> Result<StandaloneBench, String> {
        if !(1..=PODS.len()).contains(&endpoints) || files == 0 {
            return Err(format!("endpoints must be 1-{} and files at least 1", PODS.len()));
        }
        let topo = Topology::build(&node_scenario())?;
        let dir = std::env::temp_dir().join(format!("kproxy-standalone-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("m")).map_err(|e| format!("{}: {e}", dir.display()))?;
        let bench = StandaloneBench { topo, dir, services, files, endpoints, proxy: None };
        std::fs::write(bench.dir.join("m/node.yaml"), serde_json::to_string(&fx::node()).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        for file in 0..files {
            bench.write_file(file, PODS[0])?;
        }
        let mut config = crate::scenario::config_in(&node_scenario(), std::path::Path::new("unused"), Dataplane::Nftables);
        if let Some(c) = config.as_object_mut() {
            c.remove("clientConnection");
        }
        // KPROXY_BENCH_VERBOSITY=N: kproxy logs at -v=N (4: every event
        // and sync), to look into a slow change; the log is kept as
        // $TMPDIR/kproxy-standalone-bench.log.
        if let Some(v) = std::env::var("KPROXY_BENCH_VERBOSITY").ok().and_then(|v| v.parse::<u32>().ok()) {
            config["logging"] = json!({"verbosity": v});
        }
        std::fs::write(bench.dir.join("config.yaml"), config.to_string()).map_err(|e| e.to_string())?;
        Ok(bench)
    }

    /// Writes file `file` whole (in place, as an editor or a deploy tool
    /// would): its share of the Services and, in file 0, the probe
    /// Service with its one endpoint `probe_pod`.
    fn write_file(&self, file: usize, probe_pod: &str) -> Result<(), String> {
        let (path, text) = self.file_text(file, probe_pod);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// File `file`'s path and text (see [`StandaloneBench::write_file`]).
    fn file_text(&self, file: usize, probe_pod: &str) -> (PathBuf, String) {
        let per_file = self.services.div_ceil(self.files);
        let mut docs = Vec::new();
        if file == 0 {
            docs.push(service("probe", PROBE_IP));
            docs.push(endpoint_slice("probe", &[probe_pod]));
        }
        for i in file * per_file..((file + 1) * per_file).min(self.services) {
            let name = format!("bg-{i}");
            docs.push(service(&name, &bg_ip(i)));
            docs.push(endpoint_slice(&name, &PODS[..self.endpoints]));
        }
        let text: Vec<String> = docs.iter().map(Value::to_string).collect();
        (self.dir.join(format!("m/services-{file:03}.yaml")), text.join("\n---\n"))
    }

    fn client(&self) -> String {
        self.topo.pods[&CLIENT.parse().expect("literal")].name().to_string()
    }

    /// Starts kproxy (`binary`) on the directory; returns when.
    pub fn start(&mut self, binary: &str) -> Result<SystemTime, String> {
        let config = self.dir.join("config.yaml");
        let manifests = self.dir.join("m");
        let log = self.dir.join("kproxy.log");
        let started = SystemTime::now();
        let args = [binary, "--config", config.to_str().unwrap_or_default(), "--manifests", manifests.to_str().unwrap_or_default()];
        self.proxy = Some(self.topo.node.spawn_logged(&args, &log)?);
        Ok(started)
    }

    /// The proxy's CPU and peak memory so far.
    pub fn usage(&self) -> Usage {
        self.proxy.and_then(|h| self.topo.node.pid(h)).map(proc_usage).unwrap_or_default()
    }

    /// Time from `started` until the probe Service, the last Service and
    /// `sample` others answer from the client pod, within `limit`.
    pub fn time_to_serve(&self, started: SystemTime, sample: usize, limit: Duration) -> Result<Duration, String> {
        crate::bench::time_to_serve(&self.client(), CLIENT, self.services, started, sample, limit)
    }

    /// The CPU share of one core the proxy used over `period` with nothing
    /// changing.
    pub fn idle_cpu(&self, period: Duration) -> f64 {
        let before = self.usage().cpu_seconds;
        std::thread::sleep(period);
        (self.usage().cpu_seconds - before) / period.as_secs_f64()
    }

    /// Moves the probe Service between the first two pods `changes` times
    /// by rewriting file 0 whole, each `spacing` after the last; per change,
    /// the time from the write to the first connection answered by the new
    /// pod (a change not seen within `limit` counts as `limit`).
    pub fn write_to_traffic(&self, changes: usize, spacing: Duration, limit: Duration) -> Result<Vec<Duration>, String> {
        let seconds = changes as f64 * (spacing + limit).as_secs_f64() + 30.0;
        let prober = Prober::follow(&self.client(), CLIENT, PROBE_IP, seconds, crate::bench::CLIENT_PORT_RANGE)?;
        let mut current = PODS[0];
        wait_for(&prober, current, 0.0, Duration::from_secs(60), &mut None, &mut Vec::new()).map_err(|e| format!("the probe Service never answered: {e}"))?;
        let mut out = Vec::new();
        for _ in 0..changes {
            current = if current == PODS[0] { PODS[1] } else { PODS[0] };
            let began = Instant::now();
            // Timed from the write itself (the text is made before).
            let (path, text) = self.file_text(0, current);
            let t0 = wall(SystemTime::now());
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
            if std::env::var_os("KPROXY_BENCH_VERBOSITY").is_some() {
                eprintln!("change {} to {current} written at {t0:.6}", out.len() + 1);
            }
            let seen = wait_for(&prober, current, t0, limit, &mut None, &mut Vec::new());
            if let Err(e) = &seen {
                eprintln!("change {} to {current}: {e}", out.len() + 1);
            }
            out.push(seen.map_or(limit, |t| Duration::from_secs_f64((t - t0).max(0.0))));
            std::thread::sleep(spacing.saturating_sub(began.elapsed()));
        }
        Ok(out)
    }

    /// kproxy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kproxy.log")).unwrap_or_default()
    }
}

impl Drop for StandaloneBench {
    fn drop(&mut self) {
        if let Some(h) = self.proxy.take() {
            self.topo.node.kill(h);
        }
        // With KPROXY_BENCH_VERBOSITY set, kproxy's log outlives the run.
        if std::env::var_os("KPROXY_BENCH_VERBOSITY").is_some() {
            let kept = std::env::temp_dir().join("kproxy-standalone-bench.log");
            if std::fs::copy(self.dir.join("kproxy.log"), &kept).is_ok() {
                eprintln!("kproxy's log: {}", kept.display());
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
