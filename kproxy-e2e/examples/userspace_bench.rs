//! What userspace mode costs a connection, measured against nftables mode
//! (and against no proxy at all) on the same topology: the `cluster_ip`
//! scenario's private namespaces, a pod on the node as the client, the
//! ClusterIP's two endpoint pods as servers. For each, from the client pod:
//!
//! - `--connections` TCP connections one after another (connect, read the
//!   pod's greeting, close): connections per second, p50 and p99;
//! - `--udp` UDP request/replies from one socket: p50 and p99;
//! - `--megabytes` MiB over one TCP connection: throughput.
//!
//! ```sh
//! cargo build --release -p kproxy-bin
//! cargo run --release -p kproxy-e2e --example kproxy-userspace-bench
//! ```
//! (root; it builds its own namespaces and touches nothing else). Prints a
//! table with userspace mode's ratios to nftables mode.

use std::path::Path;
use std::time::{Duration, Instant};

use kproxy_oracle::{fixtures as fx, scenarios, Dataplane, Scenario};
use kproxy_testkit::{check_scenario_for, Topology, KPT};
use serde_json::Value;

struct Args {
    kproxy: String,
    connections: usize,
    udp: usize,
    megabytes: usize,
}

fn parse() -> Result<Args, String> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut a = Args { kproxy: format!("{root}/target/release/kproxy"), connections: 2000, udp: 2000, megabytes: 500 };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let (flag, value) = (pair[0].as_str(), pair.get(1).ok_or_else(|| format!("{} needs a value", pair[0]))?);
        let number = || value.parse::<usize>().map_err(|_| format!("{flag}: {value:?} is not a number"));
        match flag {
            "--kproxy" => a.kproxy = value.clone(),
            "--connections" => a.connections = number()?,
            "--udp" => a.udp = number()?,
            "--megabytes" => a.megabytes = number()?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if !Path::new(&a.kproxy).exists() {
        return Err(format!("{}: no kproxy binary (cargo build --release -p kproxy-bin)", a.kproxy));
    }
    Ok(a)
}

/// Runs `kpt.py bench` from the client pod to `dst` (TCP `port`, UDP
/// `udp_port`); its JSON result.
fn bench(topo: &Topology, a: &Args, dst: &str, port: u16, udp_port: u16) -> Result<Value, String> {
    let client = topo.pods.get(&fx::LOCAL_CLIENT_POD.parse().unwrap()).ok_or("no client pod")?;
    let (port, udp_port, connections, udp, megabytes) = (port.to_string(), udp_port.to_string(), a.connections.to_string(), a.udp.to_string(), a.megabytes.to_string());
    let out = client.exec(&[
        "python3", KPT, "bench", "--src", fx::LOCAL_CLIENT_POD, "--dst", dst, "--port", &port, "--udp-port", &udp_port, "--connections", &connections, "--udp-count", &udp,
        "--megabytes", &megabytes,
    ])?;
    serde_json::from_str(out.trim()).map_err(|e| format!("{e}: {out}"))
}

/// Starts kproxy in `mode` on `scenario` in the node and waits until it
/// serves every case; its handle.
fn start(topo: &mut Topology, scenario: &Scenario, mode: Dataplane, kproxy: &str, dir: &Path) -> Result<usize, String> {
    let manifests = dir.join("m");
    std::fs::create_dir_all(&manifests).map_err(|e| e.to_string())?;
    let objects = std::iter::once(serde_json::to_string(&scenario.node))
        .chain(scenario.services.iter().map(serde_json::to_string))
        .chain(scenario.slices.iter().map(serde_json::to_string));
    for (n, text) in objects.enumerate() {
        std::fs::write(manifests.join(format!("{n:03}.yaml")), text.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let mut config = kproxy_e2e::scenario::config_in(scenario, Path::new("unused"), mode);
    config.as_object_mut().ok_or("config")?.remove("clientConnection");
    let file = dir.join(format!("config-{mode:?}.json"));
    std::fs::write(&file, config.to_string()).map_err(|e| e.to_string())?;
    let handle = topo.node.spawn(&[kproxy, "--config", &file.to_string_lossy(), "--manifests", &manifests.to_string_lossy()])?;
    let began = Instant::now();
    while !check_scenario_for(topo, scenario, mode).is_empty() {
        if began.elapsed() > Duration::from_secs(60) {
            return Err(format!("kproxy in {mode:?} mode never served the scenario"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(handle)
}

fn number(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

fn main() -> Result<(), String> {
    let a = parse()?;
    if !kproxy_testkit::kernel_tests_enabled("kproxy-userspace-bench") {
        return Err("kproxy-userspace-bench needs root and the network tools".into());
    }
    let scenario = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").ok_or("no cluster_ip scenario")?;
    let mut topo = Topology::build(&scenario)?;
    let dir = std::env::temp_dir().join(format!("kproxy-userspace-bench-{}", std::process::id()));
    let mut rows = vec![("no proxy (straight to one pod)", bench(&topo, &a, "10.180.0.1", 8080, 5353)?)];
    for (name, mode) in [("nftables mode", Dataplane::Nftables), ("userspace mode", Dataplane::Userspace)] {
        let handle = start(&mut topo, &scenario, mode, &a.kproxy, &dir)?;
        let result = bench(&topo, &a, "172.30.0.41", 80, 53);
        topo.node.kill(handle);
        topo.node.exec(&[&a.kproxy, "--cleanup", "--hostname-override", fx::NODE_NAME])?;
        rows.push((name, result?));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let keys = [
        ("new TCP connections per second", "connections_per_second"),
        ("TCP connect + first byte p50 (ms)", "connect_p50_ms"),
        ("TCP connect + first byte p99 (ms)", "connect_p99_ms"),
        ("UDP round trip p50 (ms)", "udp_p50_ms"),
        ("UDP round trip p99 (ms)", "udp_p99_ms"),
        ("TCP throughput, one connection (MiB/s)", "tcp_mb_per_second"),
    ];
    println!("{} connections, {} UDP round trips, {} MiB", a.connections, a.udp, a.megabytes);
    println!("| measure | {} | userspace / nftables |", rows.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(" | "));
    println!("| --- |{} --- |", " --- |".repeat(rows.len()));
    for (label, key) in keys {
        let values: Vec<String> = rows.iter().map(|(_, v)| format!("{:.2}", number(v, key))).collect();
        let ratio = number(&rows[2].1, key) / number(&rows[1].1, key);
        println!("| {label} | {} | {ratio:.2} |", values.join(" | "));
    }
    Ok(())
}
