//! The side-by-side benchmark command (`kproxy-side-by-side`, BENCHMARKS.md)
//! run at its smallest size, so it cannot rot: every phase (start-up,
//! programming latency, churn, dataplane cost) against upstream
//! kube-proxy, in nftables mode and in iptables mode on iptables-legacy
//! (`--flavour legacy`), and every figure it reports present; with
//! `--endpoints-each` in one and `--startup-proxies kproxy` in the other.
//! Needs root and the e2e binaries (Go); must run in CI.

use std::process::Command;

use kproxy_e2e::e2e_binaries;

const BIN: &str = env!("CARGO_BIN_EXE_kproxy");

/// The example as `cargo test` builds it, beside the kproxy binary.
fn example() -> std::path::PathBuf {
    std::path::Path::new(BIN).parent().expect("target dir").join("examples/kproxy-side-by-side")
}

fn smoke(test: &str, mode: &str, flavour: &str, extra: &[&str]) {
    let _guard = kproxy_e2e::exclusive();
    let Some(_bins) = e2e_binaries(test) else { return };
    let out_dir = std::env::temp_dir().join(format!("kproxy-side-by-side-{mode}-{}", std::process::id()));
    let out = Command::new(example())
        .args(["--kproxy", BIN, "--mode", mode, "--flavour", flavour, "--sizes", "20", "--changes", "3", "--startup", "20", "--churn-rate", "5", "--churn-seconds", "2"])
        .args(["--dataplane", "20", "--dataplane-connections", "20", "--dataplane-udp", "20"])
        .args(extra)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (cargo test builds the example)", example().display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{mode}: {}\n{stdout}\n{stderr}", out.status);
    println!("{stdout}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out_dir.join("side-by-side.json")).unwrap()).unwrap();
    assert_eq!(json["latency"][0]["kproxy_ms"].as_array().map(Vec::len), Some(3), "{json}");
    assert_eq!(json["startup"][0]["services"], 20);
    let endpoints_each = extra.iter().position(|a| *a == "--endpoints-each").map_or(1, |i| extra[i + 1].parse::<u64>().unwrap());
    assert_eq!(json["startup"][0]["endpoints_each"], endpoints_each, "{json}");
    let upstream_started = !extra.contains(&"kproxy");
    assert_eq!(json["startup"][0]["kube_proxy"]["seconds"].as_f64().is_some(), upstream_started, "{json}");
    assert!(json["churn"]["kproxy"]["cpu_seconds"].as_f64().is_some(), "{json}");
    let dataplane = json["dataplane"].as_array().unwrap();
    assert_eq!(dataplane.len(), 2, "one entry per proxy: {json}");
    for entry in dataplane {
        let figures = &entry["figures"];
        let tcp = figures["tcp"].as_array().unwrap();
        assert_eq!(tcp.len(), 2, "{entry}");
        let mut numbers: Vec<f64> = tcp.iter().flat_map(|t| ["connections_per_second", "connect_p50_ms", "connect_p99_ms"].map(|k| t[k].as_f64().unwrap_or(-1.0))).collect();
        numbers.extend(["udp_p50_ms", "udp_p99_ms"].map(|k| figures[k].as_f64().unwrap_or(-1.0)));
        assert!(numbers.iter().all(|n| n.is_finite() && *n > 0.0), "{entry}");
        // In iptables mode, the first and the last Service are read from
        // the proxy's own rules and are not the same one.
        if mode == "iptables" {
            let (first, last) = (tcp[0]["position"].as_u64(), tcp[1]["position"].as_u64());
            assert!(first.zip(last).is_some_and(|(f, l)| f < l && l >= 19), "{entry}");
        }
    }
    assert!(stdout.contains("| 20 | kproxy / kube-proxy | last |"), "{stdout}");
    // Both proxies ran on the flavour asked for.
    let logs = |name: &str| std::fs::read_to_string(out_dir.join(name)).unwrap_or_default();
    if mode == "iptables" {
        assert!(logs("kproxy.log").contains(&format!("using iptables-{flavour}")), "{}", logs("kproxy.log"));
    }
    let _ = std::fs::remove_dir_all(&out_dir);
}

#[test]
fn the_side_by_side_benchmark_runs_at_its_smallest_size_in_nftables_mode() {
    smoke("the_side_by_side_benchmark_runs_at_its_smallest_size_in_nftables_mode", "nftables", "nft", &["--endpoints-each", "3"]);
}

#[test]
fn the_side_by_side_benchmark_runs_at_its_smallest_size_in_iptables_mode_on_iptables_legacy() {
    smoke("the_side_by_side_benchmark_runs_at_its_smallest_size_in_iptables_mode_on_iptables_legacy", "iptables", "legacy", &["--startup-proxies", "kproxy"]);
}

/// The multi-node benchmark (`kproxy-cluster-bench`) at its smallest
/// size: two nodes (one probed), ten Services, both proxy kinds; every
/// figure it reports is present and was measured.
#[test]
fn the_cluster_benchmark_runs_at_its_smallest_size() {
    let test = "the_cluster_benchmark_runs_at_its_smallest_size";
    let _guard = kproxy_e2e::exclusive();
    let Some(_bins) = e2e_binaries(test) else { return };
    let example = std::path::Path::new(BIN).parent().expect("target dir").join("examples/kproxy-cluster-bench");
    let out_dir = std::env::temp_dir().join(format!("kproxy-cluster-bench-{}", std::process::id()));
    let out = Command::new(&example)
        .args(["--kproxy", BIN, "--nodes", "2", "--probed", "1", "--services", "10", "--changes", "2", "--churn-rate", "5", "--churn-seconds", "1"])
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (cargo test builds the example)", example.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    println!("{stdout}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out_dir.join("cluster-nftables.json")).unwrap()).unwrap();
    for kind in ["kproxy", "kube-proxy"] {
        let r = &json["proxies"][kind];
        let positive = |v: &serde_json::Value| v.as_f64().is_some_and(|n| n.is_finite() && n > 0.0);
        assert_eq!(r["nodes"], 2, "{r}");
        assert!(positive(&r["all_synced_s"]) && positive(&r["startup"]["cpu_seconds"]), "{kind}: {r}");
        assert!(r["startup"]["rss_sum_mib"].as_f64() >= r["startup"]["rss_max_mib"].as_f64() && positive(&r["startup"]["rss_max_mib"]), "{kind}: {r}");
        // One probed node, two moves, each timed by real connections.
        let probed = r["probed_ms"].as_array().unwrap();
        assert_eq!(probed.len(), 1, "{kind}: {r}");
        assert_eq!(probed[0].as_array().map(Vec::len), Some(2), "{kind}: {r}");
        // Every node's metrics saw every move (the trigger time is set).
        assert!(r["moves_by_metrics"]["observations"].as_f64() >= Some(4.0), "{kind}: {r}");
        assert!(r["moves_by_metrics"]["slowest_node"]["node"].is_string(), "{kind}: {r}");
        assert!(r["churn_by_metrics"]["observations"].as_f64() >= Some(1.0), "{kind}: {r}");
        assert!(positive(&r["apiserver"]["cpu_seconds"]) && positive(&r["apiserver"]["peak_rss_mib"]), "{kind}: {r}");
        assert!(r["bytes_to_nodes"].as_u64() > Some(0), "{kind}: {r}");
    }
    assert!(stdout.contains("| ratio |"), "{stdout}");
    let _ = std::fs::remove_dir_all(&out_dir);
}
