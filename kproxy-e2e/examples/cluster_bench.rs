//! A simulated multi-node cluster: one real API server, `--nodes` node
//! namespaces each running one proxy, `--services` Services; first
//! kproxy on every node, then upstream kube-proxy (v1.34.4) on every
//! node, in the same mode (`--mode nftables` or `iptables`, on
//! iptables-nft), each kind against a freshly started API server.
//! Per kind it measures:
//!
//! 1. start-up: from starting every proxy at once to the last node's first
//!    sync, and the proxies' CPU and memory by then;
//! 2. network programming latency to every node, over `--changes` moves
//!    of one Service's endpoint: with real connections on the first
//!    `--probed` nodes (API write to the first connection answered by the
//!    new pod), and on every node through its
//!    `kubeproxy_network_programming_duration_seconds` (the benchmark
//!    sets the trigger-time annotation, as the EndpointSlice controller
//!    does); p50, p99, the slowest node;
//! 3. a churn phase (`--churn-rate` slice changes a second for
//!    `--churn-seconds`): the proxies' total CPU seconds, the sum and the
//!    largest of their peak RSS, and programming latency by the metrics;
//! 4. the API server's CPU seconds and peak RSS over the kind's whole
//!    run, and the bytes the control plane sent to the nodes.
//!
//! `--proxies kproxy` (or `kube-proxy`) runs one kind only. Writes
//! `cluster-<mode>.json` to `--out`.
//!
//! ```sh
//! cargo build --release -p kproxy-bin
//! cargo run --release -p kproxy-e2e --example kproxy-cluster-bench -- --nodes 20 --services 5000
//! ```
//! (root; it builds its own namespaces and touches nothing else).

use std::time::Duration;

use kproxy_e2e::bench::quantile_ms;
use kproxy_e2e::cluster_bench::{ClusterBench, KindReport, Plan};
use kproxy_e2e::{e2e_binaries, ProxyKind};
use kproxy_oracle::Dataplane;
use serde_json::json;

struct Args {
    kproxy: String,
    mode: Dataplane,
    nodes: usize,
    probed: usize,
    services: usize,
    plan: Plan,
    kinds: Vec<ProxyKind>,
    out: String,
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value.parse().map_err(|_| format!("{flag} {value:?}: not a number"))
}

fn parse() -> Result<Args, String> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut a = Args {
        kproxy: format!("{root}/target/release/kproxy"),
        mode: Dataplane::Nftables,
        nodes: 20,
        probed: 2,
        services: 5000,
        plan: Plan { changes: 40, spacing: Duration::from_millis(1500), limit: Duration::from_secs(10), churn_rate: 5, churn_seconds: 60 },
        kinds: vec![ProxyKind::Kproxy, ProxyKind::Upstream],
        out: format!("{root}/e2e/bench"),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let (flag, value) = (pair[0].as_str(), pair.get(1).ok_or_else(|| format!("{} needs a value", pair[0]))?.as_str());
        match flag {
            "--kproxy" => a.kproxy = value.to_string(),
            "--nodes" => a.nodes = number(flag, value)?,
            "--probed" => a.probed = number(flag, value)?,
            "--services" => a.services = number(flag, value)?,
            "--changes" => a.plan.changes = number(flag, value)?,
            "--churn-rate" => a.plan.churn_rate = number(flag, value)?,
            "--churn-seconds" => a.plan.churn_seconds = number(flag, value)?,
            "--out" => a.out = value.to_string(),
            "--mode" => {
                a.mode = match value {
                    "nftables" => Dataplane::Nftables,
                    "iptables" => Dataplane::Iptables,
                    other => return Err(format!("--mode {other:?}: nftables or iptables")),
                }
            }
            "--proxies" => {
                a.kinds = match value {
                    "both" => vec![ProxyKind::Kproxy, ProxyKind::Upstream],
                    "kproxy" => vec![ProxyKind::Kproxy],
                    "kube-proxy" => vec![ProxyKind::Upstream],
                    other => return Err(format!("--proxies {other:?}: both, kproxy or kube-proxy")),
                }
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.nodes == 0 || a.probed > a.nodes {
        return Err(format!("--nodes {} --probed {}: at least one node, and no more probed nodes than nodes", a.nodes, a.probed));
    }
    if !std::path::Path::new(&a.kproxy).exists() {
        return Err(format!("{}: no kproxy binary (cargo build --release -p kproxy-bin)", a.kproxy));
    }
    Ok(a)
}

fn ms(s: Option<f64>) -> String {
    s.map_or_else(|| "–".into(), |s| format!("{:.0} ms", s * 1000.0))
}

/// One table row per kind, then a ratio row when both ran.
fn rows(reports: &[(ProxyKind, KindReport)], cells: impl Fn(&KindReport) -> Vec<(String, f64)>) -> Vec<String> {
    let mut out: Vec<String> = reports.iter().map(|(k, r)| format!("| {} | {} |", k.label(), cells(r).into_iter().map(|(t, _)| t).collect::<Vec<_>>().join(" | "))).collect();
    if let [(_, k), (_, u)] = reports {
        let ratios: Vec<String> = cells(k).iter().zip(cells(u)).map(|((_, a), (_, b))| if b > 0.0 { format!("{:.3}", a / b) } else { "–".into() }).collect();
        out.push(format!("| ratio | {} |", ratios.join(" | ")));
    }
    out
}

fn main() -> Result<(), String> {
    let args = parse()?;
    let bins = e2e_binaries("kproxy-cluster-bench").ok_or("needs root and the e2e binaries")?;
    let mut bench = ClusterBench::new(&bins, args.nodes, args.probed)?;
    bench.mode = args.mode;
    eprintln!("{} nodes ({} probed); creating {} Services", args.nodes, args.probed, args.services);
    bench.grow_to(args.services)?;
    let mut reports = Vec::new();
    for &kind in &args.kinds {
        eprintln!("{} on every node", kind.label());
        let binary = if kind == ProxyKind::Kproxy { args.kproxy.clone() } else { bins.path("kube-proxy") };
        reports.push((kind, bench.run(kind, &binary, &args.plan)?));
    }
    let mode = if args.mode == Dataplane::Iptables { "iptables" } else { "nftables" };
    println!("## {} nodes, {} Services, {mode} mode", args.nodes, args.services);
    println!("\n### start: every proxy started at once, to the last node's first sync");
    println!("| proxy | last node synced | CPU seconds (all nodes) | peak RSS sum | peak RSS max |\n| --- | --- | --- | --- | --- |");
    for r in rows(&reports, |r| {
        vec![
            (format!("{:.1} s", r.all_synced_s), r.all_synced_s),
            (format!("{:.1}", r.startup.cpu_seconds), r.startup.cpu_seconds),
            (format!("{:.0} MiB", r.startup.rss_sum_mib), r.startup.rss_sum_mib),
            (format!("{:.1} MiB", r.startup.rss_max_mib), r.startup.rss_max_mib),
        ]
    }) {
        println!("{r}");
    }
    println!("\n### network programming latency, {} moves: probed nodes (real connections) and every node (metrics)", args.plan.changes);
    println!("| proxy | probed p50 | probed p99 | probed worst | metrics p50 | metrics p99 | slowest node p99 | slowest node mean |\n| --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in rows(&reports, |r| {
        let p = r.probed_all();
        let m = &r.moves;
        let (s99, smean) = m.slowest.as_ref().map_or((None, None), |(_, p99, mean)| (Some(*p99), Some(*mean)));
        [quantile_ms(&p, 0.5) / 1000.0, quantile_ms(&p, 0.99) / 1000.0, quantile_ms(&p, 1.0) / 1000.0]
            .into_iter()
            .map(Some)
            .chain([m.all.quantile(0.5), m.all.quantile(0.99), s99, smean])
            .map(|s| (ms(s), s.unwrap_or(0.0)))
            .collect()
    }) {
        println!("{r}");
    }
    if args.plan.churn_seconds > 0 {
        println!("\n### churn: {} slice changes/s for {} s", args.plan.churn_rate, args.plan.churn_seconds);
        println!("| proxy | CPU seconds (all nodes) | peak RSS sum | peak RSS max | metrics p50 | metrics p99 | slowest node p99 |\n| --- | --- | --- | --- | --- | --- | --- |");
        for r in rows(&reports, |r| {
            let c = &r.churn_latency;
            let s99 = c.slowest.as_ref().map(|(_, p99, _)| *p99);
            vec![
                (format!("{:.1}", r.churn.cpu_seconds), r.churn.cpu_seconds),
                (format!("{:.0} MiB", r.churn.rss_sum_mib), r.churn.rss_sum_mib),
                (format!("{:.1} MiB", r.churn.rss_max_mib), r.churn.rss_max_mib),
                (ms(c.all.quantile(0.5)), c.all.quantile(0.5).unwrap_or(0.0)),
                (ms(c.all.quantile(0.99)), c.all.quantile(0.99).unwrap_or(0.0)),
                (ms(s99), s99.unwrap_or(0.0)),
            ]
        }) {
            println!("{r}");
        }
    }
    println!("\n### the API server over each kind's whole run");
    println!("| proxy | API server CPU seconds | API server peak RSS | bytes to the nodes |\n| --- | --- | --- | --- |");
    for r in rows(&reports, |r| {
        let mib = r.bytes_to_nodes as f64 / 1_048_576.0;
        vec![
            (format!("{:.1}", r.apiserver.cpu_seconds), r.apiserver.cpu_seconds),
            (format!("{:.0} MiB", r.apiserver.peak_rss_mib), r.apiserver.peak_rss_mib),
            (format!("{mib:.1} MiB"), mib),
        ]
    }) {
        println!("{r}");
    }
    let results = json!({
        "mode": mode, "nodes": args.nodes, "probed": args.probed, "services": args.services,
        "changes": args.plan.changes, "churn_rate": args.plan.churn_rate, "churn_seconds": args.plan.churn_seconds,
        "proxies": reports.iter().map(|(k, r)| (k.label().to_string(), r.to_json())).collect::<serde_json::Map<_, _>>(),
    });
    std::fs::create_dir_all(&args.out).map_err(|e| e.to_string())?;
    let path = format!("{}/cluster-{mode}.json", args.out);
    std::fs::write(&path, serde_json::to_string_pretty(&results).expect("json")).map_err(|e| e.to_string())?;
    println!("\nwrote {path}");
    Ok(())
}
