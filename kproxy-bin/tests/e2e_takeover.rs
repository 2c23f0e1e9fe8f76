//! Taking a node over from upstream kube-proxy, and handing it back,
//! through the real API server: for each pair of modes (upstream's →
//! kproxy's, nftables and iptables), a pod holds a TCP connection to a
//! ClusterIP and opens a new one every 10 ms to the ClusterIP and to a
//! NodePort throughout. Upstream serves, stops (its rules stay, as on a
//! DaemonSet rollout), kproxy starts and removes upstream's leftovers once
//! its own rules are in place; then upstream starts again and
//! `kproxy --hand-back` removes kproxy's own tables. Prints the failures
//! and the time until the leftovers are gone. Needs root and the e2e
//! binaries; skips without, must run in CI.

use std::time::{Duration, Instant};

use kproxy_oracle::fixtures as fx;
use kproxy_oracle::{scenarios, Dataplane};
use kproxy_e2e::scenario::{apply, config_in, log_path, start_proxy};
use kproxy_e2e::{e2e_binaries, ControlPlane, ProxyKind};
use kproxy_testkit::{check_scenario_for, Topology, KPT};

const BIN: &str = env!("CARGO_BIN_EXE_kproxy");
const CLUSTER_IP: &str = "172.30.0.42";

fn name(mode: Dataplane) -> &'static str {
    if mode == Dataplane::Iptables {
        "iptables"
    } else {
        "nftables"
    }
}

/// Whether what `kind` left in `mode` is still in the node, now that the
/// other proxy runs in `now`.
fn leftovers(topo: &Topology, kind: ProxyKind, mode: Dataplane, now: Dataplane) -> bool {
    let tables = topo.node.exec(&["nft", "list", "tables"]).unwrap_or_default();
    match (kind, mode, now) {
        (ProxyKind::Upstream, Dataplane::Nftables, _) => tables.contains("table ip kube-proxy"),
        (ProxyKind::Kproxy, Dataplane::Nftables, _) => tables.contains("table ip kproxy-"),
        (_, Dataplane::Iptables, Dataplane::Nftables) => topo.node.exec(&["iptables-save"]).unwrap_or_default().contains(":KUBE-SERVICES"),
        // Same chain names in both proxies: the one serving rewrites them.
        _ => false,
    }
}

/// Waits until the proxy in `topo.node` has synced its rules once (its
/// `kubeproxy_sync_proxy_rules_last_timestamp_seconds` is set; `/healthz`
/// says 200 before the first sync), 30 s at most.
fn wait_synced(topo: &Topology, what: &str) {
    let start = Instant::now();
    loop {
        let metrics = topo.node.exec(&["curl", "-sS", "--max-time", "1", "http://127.0.0.1:10249/metrics"]).unwrap_or_default();
        let synced = metrics
            .lines()
            .filter(|l| l.starts_with("kubeproxy_sync_proxy_rules_last_timestamp_seconds"))
            .any(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v > 0.0));
        if synced {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{what} never synced");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `topo` serves the scenario as `mode` must (30 s at most).
fn wait_served(topo: &Topology, scenario: &kproxy_oracle::Scenario, mode: Dataplane, what: &str) {
    let start = Instant::now();
    loop {
        let failures = check_scenario_for(topo, scenario, mode);
        if failures.is_empty() {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{what} never served:\n{}", failures.join("\n"));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn taking_over_from_upstream_and_handing_back_keeps_connections() {
    let _one_at_a_time = kproxy_e2e::exclusive();
    let Some(bins) = e2e_binaries("taking_over_from_upstream_and_handing_back_keeps_connections") else { return };
    let scenario = scenarios::all().into_iter().find(|s| s.name == "node_port").unwrap();
    let mut cp = ControlPlane::start(&bins).unwrap();
    let api = cp.admin().unwrap();
    apply(&api, &scenario).unwrap();
    let upstream_kubeconfig = cp.kubeconfig(ProxyKind::Upstream.user()).unwrap();
    let kproxy_kubeconfig = cp.kubeconfig(ProxyKind::Kproxy.user()).unwrap();
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for upstream_mode in [Dataplane::Nftables, Dataplane::Iptables] {
        for kproxy_mode in [Dataplane::Nftables, Dataplane::Iptables] {
            let pair = format!("{} -> {}", name(upstream_mode), name(kproxy_mode));
            let mut topo = Topology::build(&scenario).unwrap();
            cp.attach(&topo.node).unwrap();
            let upstream = start_proxy(ProxyKind::Upstream, &mut topo.node, &config_in(&scenario, &upstream_kubeconfig, upstream_mode), cp.dir(), &bins.path("kube-proxy")).unwrap();
            wait_served(&topo, &scenario, upstream_mode, &format!("{pair}: upstream"));

            // The traffic that must not notice: one held connection, and
            // a new one every 10 ms to the ClusterIP and to the NodePort.
            let client: std::net::IpAddr = fx::LOCAL_CLIENT_POD.parse().unwrap();
            let pod = topo.pods.get_mut(&client).unwrap();
            let src = fx::LOCAL_CLIENT_POD;
            let held = pod.spawn(&["python3", KPT, "hold", "--src", src, "--dst", CLUSTER_IP, "--port", "80", "--seconds", "24"]).unwrap();
            let to_cluster_ip = pod.spawn(&["python3", KPT, "watch", "--src", src, "--dst", CLUSTER_IP, "--port", "80", "--seconds", "22", "--interval", "0.01"]).unwrap();
            let to_node_port = pod.spawn(&["python3", KPT, "watch", "--src", src, "--dst", fx::NODE_IP, "--port", "3001", "--seconds", "22", "--interval", "0.01"]).unwrap();
            std::thread::sleep(Duration::from_secs(1));

            // Take over: upstream stops (its rules stay), kproxy starts.
            let pid = topo.node.pid(upstream).unwrap().to_string();
            kproxy_testkit::run(&["kill", "-TERM", &pid]).unwrap();
            topo.node.wait_exit(upstream, Duration::from_secs(10)).expect("kube-proxy ignored SIGTERM");
            let start = Instant::now();
            let kproxy = start_proxy(ProxyKind::Kproxy, &mut topo.node, &config_in(&scenario, &kproxy_kubeconfig, kproxy_mode), cp.dir(), BIN).unwrap();
            while leftovers(&topo, ProxyKind::Upstream, upstream_mode, kproxy_mode) && start.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let took_over = start.elapsed();
            let log = std::fs::read_to_string(log_path(ProxyKind::Kproxy, &topo.node, cp.dir())).unwrap_or_default();
            if leftovers(&topo, ProxyKind::Upstream, upstream_mode, kproxy_mode) {
                failures.push(format!("{pair}: upstream's leftovers still there after 30 s; kproxy log:\n{log}"));
            }
            wait_served(&topo, &scenario, kproxy_mode, &format!("{pair}: kproxy"));
            std::thread::sleep(Duration::from_secs(4));

            // Hand back: kproxy stops (its rules stay), upstream starts
            // and serves, then `kproxy --hand-back`.
            let pid = topo.node.pid(kproxy).unwrap().to_string();
            kproxy_testkit::run(&["kill", "-TERM", &pid]).unwrap();
            topo.node.wait_exit(kproxy, Duration::from_secs(10)).expect("kproxy ignored SIGTERM");
            let back = Instant::now();
            let again = start_proxy(ProxyKind::Upstream, &mut topo.node, &config_in(&scenario, &upstream_kubeconfig, upstream_mode), cp.dir(), &bins.path("kube-proxy")).unwrap();
            wait_synced(&topo, &format!("{pair}: upstream again"));
            let out = topo.node.exec(&[BIN, "--hand-back"]).unwrap();
            let handed_back = back.elapsed();
            if leftovers(&topo, ProxyKind::Kproxy, Dataplane::Nftables, upstream_mode) {
                failures.push(format!("{pair}: kproxy's tables stayed after --hand-back ({out})"));
            }
            wait_served(&topo, &scenario, upstream_mode, &format!("{pair}: upstream again"));

            let pod = topo.pods.get_mut(&client).unwrap();
            let results = [("ClusterIP", to_cluster_ip), ("NodePort", to_node_port)].map(|(what, h)| (what, pod.wait_output(h).unwrap()));
            let held = pod.wait_output(held).unwrap_or_else(|e| e);
            let line = format!(
                "{pair}: leftovers gone {:.2} s after kproxy's start; handed back (upstream synced, then --hand-back) {:.2} s after upstream's start; held connection: {}; new connections: {}",
                took_over.as_secs_f64(),
                handed_back.as_secs_f64(),
                held.trim(),
                results.iter().map(|(w, r)| format!("{w} {}", r.trim())).collect::<Vec<_>>().join(", "),
            );
            println!("{line}");
            report.push(line.clone());
            if !held.starts_with("held") {
                failures.push(format!("{pair}: the held connection broke: {held}"));
            }
            // Upstream in nftables mode removes iptables rules before it
            // writes its own (break before make, upstream's start-up): a
            // hand-back from kproxy's iptables mode to it can lose new
            // connections for that moment. Everything else must not.
            let upstream_gap = kproxy_mode == Dataplane::Iptables && upstream_mode == Dataplane::Nftables;
            for (what, r) in &results {
                let failed = r.split_whitespace().nth(3).and_then(|n| n.parse::<u32>().ok()).unwrap_or(u32::MAX);
                if failed > 0 && !upstream_gap {
                    failures.push(format!("{pair}: new connections to the {what} failed: {r}"));
                }
            }
            topo.node.kill(again);
        }
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
