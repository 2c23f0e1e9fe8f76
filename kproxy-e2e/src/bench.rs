//! kproxy and upstream kube-proxy side by side on one API server: two node
//! namespaces, identical inside (same pods, same addresses), each running
//! one proxy in nftables mode with the same configuration, both watching
//! the same objects. Measurements are taken from each node's client pod
//! with real connections.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy_oracle::fixtures::{self as fx, slice, EndpointState};
use kproxy_oracle::{Case, Dataplane, Origin, Packet, Scenario, Verdict};
use kproxy_core::IpFamily;
use kproxy_testkit::{Topology, KPT};
use serde_json::{json, Value};

use crate::api::Api;
use crate::binaries::Binaries;
use crate::control_plane::ControlPlane;
use crate::scenario::{self, ProxyKind};

/// The service whose endpoint the latency benchmark moves.
pub const PROBE_IP: &str = "172.30.0.10";
pub(crate) const CLIENT: &str = "10.180.0.100";
pub(crate) const POD_A: &str = "10.180.0.1";
pub(crate) const POD_B: &str = "10.180.0.2";
pub(crate) const POD_C: &str = "10.180.0.3";
pub(crate) const POD_D: &str = "10.180.0.4";
/// The pods background Services' endpoints are spread over: pod C first,
/// then nine more that serve only for them.
const BG_PODS: [&str; 10] =
    [POD_C, "10.180.0.11", "10.180.0.12", "10.180.0.13", "10.180.0.14", "10.180.0.15", "10.180.0.16", "10.180.0.17", "10.180.0.18", "10.180.0.19"];
/// The most endpoints a background Service can have.
pub const MAX_ENDPOINTS_EACH: usize = BG_PODS.len();
/// The port the pods answer UDP on (for the dataplane benchmark's UDP
/// Service).
pub(crate) const UDP_TARGET_PORT: u16 = 8053;

/// One node namespace and its proxy.
#[derive(Debug)]
pub struct BenchNode {
    /// Which proxy runs here.
    pub kind: ProxyKind,
    /// The node's name in the API.
    pub name: String,
    /// The node, its pods and client.
    pub topo: Topology,
    proxy: Option<usize>,
    binary: String,
}

/// The side-by-side set-up.
#[derive(Debug)]
pub struct SideBySide {
    /// The control plane.
    pub cp: ControlPlane,
    /// An admin client.
    pub api: Api,
    /// kproxy's node, then upstream's.
    pub nodes: Vec<BenchNode>,
    /// How many background services exist.
    pub services: usize,
    /// The proxy mode both proxies run in (nftables unless set).
    pub mode: Dataplane,
    /// In iptables mode, whether both proxies use iptables-legacy (set
    /// before the first start) instead of the iptables-nft a fresh
    /// namespace gets.
    pub legacy: bool,
    /// How many endpoints each background Service gets (1 unless set, at
    /// most [`MAX_ENDPOINTS_EACH`]); set before [`SideBySide::grow_to`].
    pub endpoints_each: usize,
}

/// Per proxy, the latency of each change; and how long each API write
/// itself took.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    /// Write-to-first-connection per change, per proxy.
    pub by_proxy: BTreeMap<ProxyKind, Vec<Duration>>,
    /// The API writes' own durations.
    pub writes: Vec<Duration>,
}

/// CPU and memory of one proxy process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// User + system CPU seconds, with those of the child processes it
    /// has waited for (the tools it runs).
    pub cpu_seconds: f64,
    /// Peak resident set (VmHWM), MiB.
    pub peak_rss_mib: f64,
}

pub(crate) fn probe_slice(endpoint: &str) -> EndpointSlice {
    slice("bench", "probe", "probe-a", "IPv4").port("http", 8080, "TCP").endpoint(endpoint, "node-k", EndpointState::Ready).build()
}

/// The ClusterIP of background Service `i`.
pub(crate) fn bg_ip(i: usize) -> String {
    format!("172.30.{}.{}", 1 + i / 250, 1 + i % 250)
}

pub(crate) fn bg_objects(i: usize, endpoints: &[&str]) -> (Value, Value) {
    let name = format!("bg-{i}");
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "bench", "name": name},
        "spec": {"clusterIP": bg_ip(i), "clusterIPs": [bg_ip(i)], "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}});
    let eps: Vec<Value> = endpoints.iter().map(|e| json!({"addresses": [e], "conditions": {"ready": true}, "nodeName": "node-k"})).collect();
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "bench", "name": format!("{name}-a"), "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4", "endpoints": eps, "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]});
    (svc, slice)
}

/// The scenario a bench node is built from: pods A–D serving TCP 8080 and
/// UDP 8053, and the client pod.
pub(crate) fn node_scenario() -> Scenario {
    let probe = fx::service("bench", "probe", &[PROBE_IP]).port("http", 80, "TCP", 0).build();
    let pods = slice("bench", "probe", "pods", "IPv4")
        .port("http", 8080, "TCP")
        .port("dns", i32::from(UDP_TARGET_PORT), "UDP")
        .endpoint(POD_A, "node-k", EndpointState::Ready)
        .endpoint(POD_B, "node-k", EndpointState::Ready)
        .endpoint(POD_C, "node-k", EndpointState::Ready)
        .endpoint(POD_D, "node-k", EndpointState::Ready);
    let pods = BG_PODS[1..].iter().fold(pods, |s, ip| s.endpoint(ip, "node-k", EndpointState::Ready)).build();
    let packet = Packet::tcp(Origin::LocalPod, CLIENT.parse().expect("literal"), PROBE_IP.parse().expect("literal"), 80);
    Scenario {
        name: "bench",
        family: IpFamily::V4,
        services: vec![probe],
        slices: vec![pods],
        node: fx::node(),
        config: fx::config(IpFamily::V4),
        service_cidrs: Vec::new(),
        localhost_node_ports: false,
        cases: vec![Case { name: "client", packet, expected: Verdict::Reject, iptables: None, ipvs: None }],
    }
}

pub(crate) fn proc_usage(pid: u32) -> Usage {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After the command name: state is field 0, utime 11, stime 12, and
    // the children it has waited for 13 and 14: the `nft`,
    // `iptables-restore` and `ipset` processes a proxy runs are its cost.
    let cpu_seconds = (ticks(11) + ticks(12) + ticks(13) + ticks(14)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok()).unwrap_or(0.0);
    Usage { cpu_seconds, peak_rss_mib: kib / 1024.0 }
}

/// The ephemeral ports a `follow` client gets: every unprivileged port.
///
/// `follow` connects hundreds of times a second, and each connection
/// leaves a TIME-WAIT socket for 60 s. With the kernel's default range
/// (32768–60999) the odd half, which `bind()` tries first, runs out
/// within a minute; `bind()` then keeps handing out the few ports that
/// are free, so one port whose connection failed (and so is free again at
/// once) is retried over and over, and a single failure becomes seconds
/// of them. That would measure the client, not the proxy.
pub const CLIENT_PORT_RANGE: &str = "1024 65535";

/// Sets the ephemeral port range of the client namespace `netns`.
fn set_port_range(netns: &str, range: &str) -> Result<(), String> {
    kproxy_testkit::run(&["ip", "netns", "exec", netns, "sysctl", "-qw", &format!("net.ipv4.ip_local_port_range={range}")]).map(drop)
}

/// A prober (`kpt.py ARGS`) running in a network namespace, its lines
/// read as they come. Dropping it stops it.
pub struct Prober {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Prober {
    /// Starts `kpt.py ARGS` in `netns`.
    pub fn start(netns: &str, args: &[&str]) -> Result<Prober, String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "python3", KPT])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("prober: {e}"))?;
        let stdout = child.stdout.take().ok_or("prober without stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Prober { child, lines })
    }

    /// Starts a `follow` client in `netns`: connections from `src` to
    /// `dst`:80 for `seconds`, a line at each change of the answering pod,
    /// failures included (with their source ports). The namespace's
    /// ephemeral ports become `range` first (normally
    /// [`CLIENT_PORT_RANGE`]; see there why).
    pub fn follow(netns: &str, src: &str, dst: &str, seconds: f64, range: &str) -> Result<Prober, String> {
        set_port_range(netns, range)?;
        Prober::start(netns, &["follow", "--src", src, "--dst", dst, "--port", "80", "--seconds", &seconds.to_string(), "--show-failures"])
    }

    /// The next line, waiting up to `limit`.
    pub fn next_line(&self, limit: Duration) -> Option<String> {
        self.lines.recv_timeout(limit).ok()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `t` as seconds since the epoch (as `kpt.py` prints times).
pub(crate) fn wall(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl SideBySide {
    /// Starts the control plane and both nodes (no proxy yet); the probe
    /// service points at pod A.
    pub fn new(bins: &Binaries, kproxy: &str) -> Result<SideBySide, String> {
        let mut cp = ControlPlane::start(bins)?;
        let api = cp.admin()?;
        api.namespace("bench")?;
        let mut nodes = Vec::new();
        for (kind, name, binary) in [(ProxyKind::Kproxy, "node-k", kproxy.to_string()), (ProxyKind::Upstream, "node-u", bins.path("kube-proxy"))] {
            let topo = Topology::build(&node_scenario())?;
            cp.attach(&topo.node)?;
            let mut node = fx::node();
            node.metadata.name = Some(name.to_string());
            if let Some(spec) = node.spec.as_mut() {
                spec.pod_cidr = spec.pod_cidrs.as_ref().and_then(|c| c.first().cloned());
            }
            api.put(&node)?;
            nodes.push(BenchNode { kind, name: name.to_string(), topo, proxy: None, binary });
        }
        let s = node_scenario();
        api.apply(&s.services[0])?;
        api.apply(probe_slice(POD_A))?;
        Ok(SideBySide { cp, api, nodes, services: 0, mode: Dataplane::Nftables, legacy: false, endpoints_each: 1 })
    }

    /// Creates background services until there are `n`, each with
    /// `endpoints_each` endpoints (pod C, then the other background pods).
    pub fn grow_to(&mut self, n: usize) -> Result<(), String> {
        let mut objects = Vec::new();
        let pods = &BG_PODS[..self.endpoints_each.clamp(1, MAX_ENDPOINTS_EACH)];
        for i in self.services..n {
            let (svc, slice) = bg_objects(i, pods);
            objects.push(svc);
            objects.push(slice);
        }
        self.api.apply_many(objects, 32)?;
        self.services = self.services.max(n);
        Ok(())
    }

    fn node(&mut self, kind: ProxyKind) -> &mut BenchNode {
        self.nodes.iter_mut().find(|n| n.kind == kind).expect("both kinds exist")
    }

    /// Starts `kind`'s proxy on a clean table; returns when it was started.
    pub fn start(&mut self, kind: ProxyKind) -> Result<SystemTime, String> {
        let kubeconfig = self.cp.kubeconfig(kind.user())?;
        let dir = self.cp.dir().to_path_buf();
        let mode = self.mode;
        let legacy = self.legacy && mode == Dataplane::Iptables;
        let node = self.node(kind);
        // Both modes use nf_tables here (iptables-nft, in a fresh namespace)
        // unless legacy is asked for.
        node.topo.node.exec(&["nft", "flush", "ruleset"])?;
        if legacy {
            legacy_tables(&node.topo.node)?;
            if kind == ProxyKind::Upstream && !node.binary.ends_with(LEGACY_WRAPPER) {
                node.binary = legacy_wrapper(&dir, &node.binary)?;
            }
        }
        let mut config = scenario::config_in(&node_scenario(), &kubeconfig, mode);
        config["hostnameOverride"] = json!(node.name);
        // KPROXY_BENCH_VERBOSITY=N: kproxy logs at -v=N (4: every event
        // and sync), to look into a slow change.
        if let Some(v) = std::env::var("KPROXY_BENCH_VERBOSITY").ok().and_then(|v| v.parse::<u32>().ok()).filter(|_| kind == ProxyKind::Kproxy) {
            config["logging"] = json!({"verbosity": v});
        }
        let started = SystemTime::now();
        let binary = node.binary.clone();
        node.proxy = Some(scenario::start_proxy(kind, &mut node.topo.node, &config, &dir, &binary)?);
        Ok(started)
    }

    /// Stops `kind`'s proxy (its rules stay).
    pub fn stop(&mut self, kind: ProxyKind) {
        let node = self.node(kind);
        if let Some(h) = node.proxy.take() {
            node.topo.node.kill(h);
        }
    }

    /// The CPU and peak memory of `kind`'s proxy so far.
    pub fn usage(&mut self, kind: ProxyKind) -> Usage {
        let node = self.node(kind);
        node.proxy.and_then(|h| node.topo.node.pid(h)).map(proc_usage).unwrap_or_default()
    }

    /// Copies the proxies' logs into `dir` (`kproxy.log`,
    /// `kube-proxy.log`); a proxy that never ran has none.
    pub fn keep_logs(&self, dir: &std::path::Path) -> Result<(), String> {
        for node in &self.nodes {
            let to = dir.join(match node.kind {
                ProxyKind::Kproxy => "kproxy.log",
                ProxyKind::Upstream => "kube-proxy.log",
            });
            let from = scenario::log_path(node.kind, &node.topo.node, self.cp.dir());
            if !from.exists() {
                continue;
            }
            std::fs::copy(&from, &to).map_err(|e| format!("{}: {e}", to.display()))?;
        }
        Ok(())
    }

    /// Resets `kind`'s peak-memory mark (VmHWM), to measure one phase.
    pub fn reset_peak(&mut self, kind: ProxyKind) {
        let node = self.node(kind);
        if let Some(pid) = node.proxy.and_then(|h| node.topo.node.pid(h)) {
            reset_peak(pid);
        }
    }

    pub(crate) fn client(&self, kind: ProxyKind) -> String {
        let node = self.nodes.iter().find(|n| n.kind == kind).expect("both kinds exist");
        node.topo.pods[&CLIENT.parse().expect("literal")].name().to_string()
    }

    /// Time from `started` until the probe service, the last background
    /// service and `sample` others answer from `kind`'s client pod.
    pub fn time_to_serve(&self, kind: ProxyKind, started: SystemTime, sample: usize, limit: Duration) -> Result<Duration, String> {
        time_to_serve(&self.client(kind), CLIENT, self.services, started, sample, limit).map_err(|e| format!("{kind:?}: {e}"))
    }

    /// Moves the probe service between pods A and B `changes` times, each
    /// at least `spacing` after the last, and measures per proxy the time
    /// from the API write to the first connection answered by the new pod.
    /// A change not seen within `limit` counts as `limit`. Also returns how
    /// long each API write itself took (the floor under both proxies).
    pub fn programming_latency(&mut self, changes: usize, spacing: Duration, limit: Duration) -> Result<Latencies, String> {
        let kinds = [ProxyKind::Kproxy, ProxyKind::Upstream];
        let seconds = changes as f64 * (spacing + limit).as_secs_f64() + 30.0;
        let mut probers = Vec::new();
        for kind in kinds {
            probers.push((kind, Prober::follow(&self.client(kind), CLIENT, PROBE_IP, seconds, CLIENT_PORT_RANGE)?));
        }
        // Settle: both answer from the current pod.
        let mut current = POD_A;
        self.api.apply(probe_slice(current))?;
        for (kind, p) in &probers {
            wait_for(p, current, 0.0, Duration::from_secs(60), &mut None, &mut Vec::new()).map_err(|e| format!("{kind:?} never served the probe: {e}"))?;
        }
        let mut out: BTreeMap<ProxyKind, Vec<Duration>> = BTreeMap::new();
        let mut writes = Vec::new();
        for _ in 0..changes {
            current = if current == POD_A { POD_B } else { POD_A };
            let began = Instant::now();
            let t0 = wall(SystemTime::now());
            self.api.apply(probe_slice(current))?;
            writes.push(began.elapsed());
            for (kind, p) in &probers {
                let mut before = None;
                let mut between = Vec::new();
                let seen = wait_for(p, current, t0, limit, &mut before, &mut between);
                let slow = seen.as_ref().is_ok_and(|t| t - t0 > 1.0);
                if seen.is_err() || slow || before.as_deref() == Some(current) {
                    // Why a change was late: still the old pod, or the
                    // new one already answering before the write (the
                    // proxy went back to an older state, so no change
                    // could be seen).
                    eprintln!(
                        "{kind:?}: change {} to {current}, written at {t0:.3}: {}; last answer before the write: {}",
                        writes.len(),
                        seen.as_ref().map_or_else(|e| e.clone(), |t| format!("seen after {:.3} s", t - t0)),
                        before.as_deref().unwrap_or("none since the last change")
                    );
                    for line in &between {
                        eprintln!("{kind:?}:   meanwhile {line}");
                    }
                    let time_wait = time_wait(&self.client(*kind));
                    eprintln!("{kind:?}:   client sockets in TIME-WAIT now: {time_wait:?}");
                }
                let seen = seen.unwrap_or(t0 + limit.as_secs_f64());
                out.entry(*kind).or_default().push(Duration::from_secs_f64((seen - t0).max(0.0)));
            }
            // Past the rate limiter's refill, with jitter against the
            // periodic full syncs.
            let jitter = Duration::from_millis((t0.fract() * 300.0) as u64);
            let wait = (spacing + jitter).saturating_sub(began.elapsed());
            std::thread::sleep(wait);
        }
        Ok(Latencies { by_proxy: out, writes })
    }

    /// Changes `rate` background slices per second for `seconds` (each
    /// toggles between one and two endpoints); returns each proxy's CPU
    /// seconds and peak memory over the run.
    pub fn churn(&mut self, rate: u32, seconds: u64) -> Result<BTreeMap<ProxyKind, Usage>, String> {
        let kinds = [ProxyKind::Kproxy, ProxyKind::Upstream];
        let mut before = BTreeMap::new();
        for kind in kinds {
            self.reset_peak(kind);
            before.insert(kind, self.usage(kind));
        }
        churn_slices(&self.api, self.services, rate, seconds, |slice| slice)?;
        let mut out = BTreeMap::new();
        for kind in kinds {
            let now = self.usage(kind);
            out.insert(kind, Usage { cpu_seconds: now.cpu_seconds - before[&kind].cpu_seconds, peak_rss_mib: now.peak_rss_mib });
        }
        Ok(out)
    }
}

/// Resets process `pid`'s peak-memory mark (VmHWM), to measure one phase.
pub(crate) fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Changes `rate` of the first `services` background slices a second for
/// `seconds`, each between one endpoint (pod C) and two (C and D), every
/// slice passed through `dress` before it is written.
pub(crate) fn churn_slices(api: &Api, services: usize, rate: u32, seconds: u64, dress: impl Fn(Value) -> Value) -> Result<(), String> {
    let start = Instant::now();
    let services = services.max(1);
    let mut two = vec![false; services];
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        let due = start + Duration::from_secs_f64(n as f64 / f64::from(rate.max(1)));
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let i = ((n * 7919) as usize) % services;
        two[i] = !two[i];
        let eps: &[&str] = if two[i] { &[POD_C, POD_D] } else { &[POD_C] };
        api.apply(dress(bg_objects(i, eps).1))?;
        n += 1;
    }
    Ok(())
}

/// The name of the wrapper that runs upstream kube-proxy with the
/// iptables-legacy tools first on its `PATH`.
const LEGACY_WRAPPER: &str = "kube-proxy-legacy";

/// Empties `node`'s iptables-legacy tables (both families) and marks
/// legacy as the flavour in use the way kubelet does (a
/// `KUBE-IPTABLES-HINT` chain in mangle), which kproxy's detection
/// follows.
fn legacy_tables(node: &kproxy_testkit::Netns) -> Result<(), String> {
    for tool in ["iptables-legacy", "ip6tables-legacy"] {
        for table in ["filter", "nat", "mangle"] {
            node.exec(&[tool, "-w", "-t", table, "-F"])?;
            node.exec(&[tool, "-w", "-t", table, "-X"])?;
        }
        node.exec(&[tool, "-w", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT"])?;
    }
    Ok(())
}

/// Writes, under `dir`, a wrapper that runs `binary` with `iptables`,
/// `iptables-save`, `iptables-restore` and their IPv6 twins meaning the
/// legacy tools (upstream's binary runs whatever `iptables` its `PATH`
/// finds; its image picks the flavour the same way); returns its path.
fn legacy_wrapper(dir: &std::path::Path, binary: &str) -> Result<String, String> {
    let bin = dir.join("legacy-bin");
    std::fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
    for name in ["iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"] {
        let link = bin.join(name);
        let _ = std::fs::remove_file(&link);
        let target = format!("/usr/sbin/{}", name.replacen("tables", "tables-legacy", 1));
        std::os::unix::fs::symlink(&target, &link).map_err(|e| format!("{}: {e}", link.display()))?;
    }
    let wrapper = dir.join(LEGACY_WRAPPER);
    let script = format!("#!/bin/sh\nPATH={}:$PATH exec {binary} \"$@\"\n", bin.display());
    std::fs::write(&wrapper, script).map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    Ok(wrapper.to_string_lossy().into_owned())
}

/// Time from `started` until the probe Service, the last of `services`
/// background Services and `sample` others answer a client at `src` in
/// the namespace `client`, within `limit`.
pub(crate) fn time_to_serve(client: &str, src: &str, services: usize, started: SystemTime, sample: usize, limit: Duration) -> Result<Duration, String> {
    let mut targets = vec![format!("{PROBE_IP}:80")];
    if services > 0 {
        let step = (services / sample.max(1)).max(1);
        targets.extend((0..services).step_by(step).map(|i| format!("{}:80", bg_ip(i))));
        targets.push(format!("{}:80", bg_ip(services - 1)));
    }
    let out = kproxy_testkit::run(&["ip", "netns", "exec", client, "python3", KPT, "reach", "--src", src, "--targets", &targets.join(","), "--seconds", &limit.as_secs().to_string()])?;
    let line = out.lines().next().unwrap_or_default();
    let at: f64 = line.split_whitespace().next().and_then(|t| t.parse().ok()).filter(|_| line.contains(" all ")).ok_or_else(|| format!("not all served: {line}"))?;
    Ok(Duration::from_secs_f64((at - wall(started)).max(0.0)))
}

/// How many TCP sockets of `netns` rest in TIME-WAIT (a prober opens one
/// connection every few ms; each port rests 60 s before reuse).
pub fn time_wait(netns: &str) -> Result<usize, String> {
    kproxy_testkit::run(&["ip", "netns", "exec", netns, "ss", "-Htan", "state", "time-wait"]).map(|o| o.lines().count())
}

/// Waits for a `follow` line naming `pod` at or after wall time `after`;
/// returns its time. `before` gets the last pod named before `after`, and
/// `between` the other lines seen after `after` (another pod, failures).
pub(crate) fn wait_for(p: &Prober, pod: &str, after: f64, limit: Duration, before: &mut Option<String>, between: &mut Vec<String>) -> Result<f64, String> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = p.lines.recv_timeout(left).map_err(|_| format!("{pod} not seen within {limit:?}"))?;
        let mut parts = line.split_whitespace();
        let (Some(t), Some(name)) = (parts.next().and_then(|t| t.parse::<f64>().ok()), parts.next()) else { continue };
        if t < after {
            *before = Some(name.to_string());
        } else if name == pod {
            return Ok(t);
        } else {
            between.push(line.clone());
        }
    }
}

/// The `q` quantile (0–1) of `values`, in milliseconds.
pub fn quantile_ms(values: &[Duration], q: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let idx = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[idx.min(v.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&v, 0.5), 51.0);
        assert_eq!(quantile_ms(&v, 0.99), 99.0);
        assert_eq!(quantile_ms(&[], 0.5), 0.0);
    }

    #[test]
    fn background_addresses_are_distinct_and_stay_clear_of_the_probe() {
        let ips: std::collections::BTreeSet<String> = (0..10_000).map(bg_ip).collect();
        assert_eq!(ips.len(), 10_000);
        assert!(!ips.contains(PROBE_IP));
        assert!(ips.iter().all(|ip| ip.starts_with("172.30.") && !ip.ends_with(".0") && !ip.ends_with(".255")));
    }
}
