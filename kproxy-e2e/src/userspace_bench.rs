//! What userspace mode costs a connection, against nftables mode and
//! against no proxy at all, on the `cluster_ip` scenario's private
//! namespaces: a pod on the node is the client, the ClusterIP's two
//! endpoint pods serve. `kproxy-userspace-bench` prints the table; a test
//! runs it at a tiny size so it cannot rot.

use std::path::Path;
use std::time::{Duration, Instant};

use kproxy_oracle::{fixtures as fx, scenarios, Dataplane, Scenario};
use kproxy_testkit::{check_scenario_for, Topology, KPT};
use serde_json::Value;

/// How much traffic each measurement sends.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// TCP connections opened one after another.
    pub connections: usize,
    /// UDP request/replies from one socket.
    pub udp: usize,
    /// MiB sent over one TCP connection.
    pub megabytes: usize,
}

/// One path's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// New TCP connections per second (each reads the pod's greeting).
    pub connections_per_second: f64,
    /// Connect + first byte, p50 and p99, in ms.
    pub connect_ms: (f64, f64),
    /// UDP round trip, p50 and p99, in ms.
    pub udp_ms: (f64, f64),
    /// One TCP connection's throughput, MiB/s.
    pub tcp_mib_per_second: f64,
}

/// The measured paths, in order: no proxy, nftables mode, userspace mode.
pub const PATHS: [&str; 3] = ["no proxy (straight to one pod)", "nftables mode", "userspace mode"];

/// Measures the three paths with the kproxy binary at `kproxy` (root).
pub fn run(kproxy: &str, sizes: Sizes) -> Result<Vec<Figures>, String> {
    let scenario = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").ok_or("no cluster_ip scenario")?;
    let mut topo = Topology::build(&scenario)?;
    let dir = std::env::temp_dir().join(format!("kproxy-userspace-bench-{}", std::process::id()));
    let mut out = vec![measure(&topo, sizes, "10.180.0.1", 8080, 5353)?];
    for mode in [Dataplane::Nftables, Dataplane::Userspace] {
        let handle = start(&mut topo, &scenario, mode, kproxy, &dir)?;
        let result = measure(&topo, sizes, "172.30.0.41", 80, 53);
        topo.node.kill(handle);
        topo.node.exec(&[kproxy, "--cleanup", "--hostname-override", fx::NODE_NAME])?;
        out.push(result?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

/// Runs `kpt.py bench` from the client pod to `dst` (TCP `port`, UDP
/// `udp_port`).
fn measure(topo: &Topology, sizes: Sizes, dst: &str, port: u16, udp_port: u16) -> Result<Figures, String> {
    let client = topo.pods.get(&fx::LOCAL_CLIENT_POD.parse().map_err(|_| "client address")?).ok_or("no client pod")?;
    let (port, udp_port) = (port.to_string(), udp_port.to_string());
    let (connections, udp, megabytes) = (sizes.connections.to_string(), sizes.udp.to_string(), sizes.megabytes.to_string());
    let out = client.exec(&[
        "python3", KPT, "bench", "--src", fx::LOCAL_CLIENT_POD, "--dst", dst, "--port", &port, "--udp-port", &udp_port, "--connections", &connections, "--udp-count", &udp,
        "--megabytes", &megabytes,
    ])?;
    let v: Value = serde_json::from_str(out.trim()).map_err(|e| format!("{e}: {out}"))?;
    let n = |key: &str| v[key].as_f64().ok_or_else(|| format!("no {key} in {out}"));
    Ok(Figures {
        connections_per_second: n("connections_per_second")?,
        connect_ms: (n("connect_p50_ms")?, n("connect_p99_ms")?),
        udp_ms: (n("udp_p50_ms")?, n("udp_p99_ms")?),
        tcp_mib_per_second: n("tcp_mb_per_second")?,
    })
}

/// Starts kproxy in `mode` on `scenario` in the node and waits until it
/// serves every case; its handle.
fn start(topo: &mut Topology, scenario: &Scenario, mode: Dataplane, kproxy: &str, dir: &Path) -> Result<usize, String> {
    let manifests = dir.join("m");
    std::fs::create_dir_all(&manifests).map_err(|e| e.to_string())?;
    crate::scenario::write_manifests(&manifests, scenario)?;
    let mut config = crate::scenario::config_in(scenario, Path::new("unused"), mode);
    config.as_object_mut().ok_or("config")?.remove("clientConnection");
    let file = dir.join(format!("config-{mode:?}.json"));
    std::fs::write(&file, config.to_string()).map_err(|e| e.to_string())?;
    let handle = topo.node.spawn(&[kproxy, "--config", &file.to_string_lossy(), "--manifests", &manifests.to_string_lossy()])?;
    let began = Instant::now();
    while !check_scenario_for(topo, scenario, mode).is_empty() {
        if began.elapsed() > Duration::from_secs(60) {
            topo.node.kill(handle);
            return Err(format!("kproxy in {mode:?} mode never served the scenario"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(handle)
}

/// A table row: its label and how to read its figure.
type Row = (&'static str, fn(&Figures) -> f64);

/// The Markdown table of `figures` (in [`PATHS`] order), with userspace
/// mode's ratio to nftables mode.
pub fn table(figures: &[Figures]) -> String {
    let rows: [Row; 6] = [
        ("new TCP connections per second", |f| f.connections_per_second),
        ("TCP connect + first byte p50 (ms)", |f| f.connect_ms.0),
        ("TCP connect + first byte p99 (ms)", |f| f.connect_ms.1),
        ("UDP round trip p50 (ms)", |f| f.udp_ms.0),
        ("UDP round trip p99 (ms)", |f| f.udp_ms.1),
        ("TCP throughput, one connection (MiB/s)", |f| f.tcp_mib_per_second),
    ];
    let mut out = format!("| measure | {} | userspace / nftables |\n|---|{}---|\n", PATHS.join(" | "), "---|".repeat(PATHS.len()));
    for (label, get) in rows {
        let values: Vec<String> = figures.iter().map(|f| format!("{:.2}", get(f))).collect();
        let ratio = match figures {
            [_, nft, user, ..] => get(user) / get(nft),
            _ => f64::NAN,
        };
        out.push_str(&format!("| {label} | {} | {ratio:.2} |\n", values.join(" | ")));
    }
    out
}
