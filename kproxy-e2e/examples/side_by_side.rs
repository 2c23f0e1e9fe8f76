//! kproxy against upstream kube-proxy (v1.34.4), both in nftables mode
//! (or both in iptables mode, `--mode iptables`, on iptables-nft, or on
//! iptables-legacy with `--flavour legacy`) with
//! the same configuration, watching the same real API server, measured in
//! one run:
//!
//! 1. network programming latency — API write to the first connection
//!    answered by the new endpoint — p50, p99, the worst change and the
//!    number of changes not seen within 10 s, over `--changes` changes at
//!    each of `--sizes` services;
//! 2. CPU seconds and peak RSS over a churn run (`--churn-rate` endpoint
//!    changes per second for `--churn-seconds` at the largest size);
//! 3. time from process start to every sampled service answering, and the
//!    peak RSS by then, at each of `--startup` services;
//! 4. what a new connection costs through each proxy's rules, at each of
//!    `--dataplane` services: TCP connections per second and connect
//!    p50/p99 to the first and the last Service in the proxy's order, and
//!    UDP round trips on new flows (`kproxy_e2e::dataplane_cost`), one
//!    proxy's client at a time.
//!
//! Background Services have one endpoint each, or `--endpoints-each N`
//! (at most 10, on ten pods). `--startup-proxies kproxy` leaves upstream
//! out of the start-up phase (its columns then read "–"), for a quicker
//! look at kproxy's own start-up and memory.
//!
//! Sizes are visited in ascending order (the cluster only grows): at each,
//! start-up first, then latency, then (at the largest latency size) churn,
//! then the dataplane cost. A phase given an empty list (`--startup ""`)
//! is left out.
//! Writes `side-by-side.json` and `latency.svg` to `--out`.
//!
//! ```sh
//! cargo build --release -p kproxy-bin
//! cargo run --release -p kproxy-e2e --example kproxy-side-by-side
//! ```
//! (root; it builds its own namespaces and touches nothing else).

use std::collections::BTreeMap;
use std::time::Duration;

use kproxy_e2e::bench::{quantile_ms, SideBySide, MAX_ENDPOINTS_EACH};
use kproxy_e2e::dataplane_cost::{self, Cost};
use kproxy_e2e::svg::{latency_chart, Series};
use kproxy_oracle::Dataplane;
use kproxy_e2e::{e2e_binaries, ProxyKind};
use serde_json::json;

struct Args {
    kproxy: String,
    sizes: Vec<usize>,
    changes: usize,
    startup: Vec<usize>,
    churn_rate: u32,
    churn_seconds: u64,
    out: String,
    mode: Dataplane,
    dataplane: Vec<usize>,
    dataplane_sizes: dataplane_cost::Sizes,
    legacy: bool,
    endpoints_each: usize,
    startup_upstream: bool,
}

fn list(v: &str) -> Result<Vec<usize>, String> {
    v.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().map_err(|_| format!("{s:?} is not a number"))).collect()
}

fn parse() -> Result<Args, String> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut a = Args {
        kproxy: format!("{root}/target/release/kproxy"),
        sizes: vec![100, 1000, 5000],
        changes: 200,
        startup: vec![1000, 10_000],
        churn_rate: 10,
        churn_seconds: 300,
        out: format!("{root}/e2e/bench"),
        mode: Dataplane::Nftables,
        dataplane: vec![1000, 10_000],
        dataplane_sizes: dataplane_cost::Sizes { connections: 2000, udp: 2000 },
        legacy: false,
        endpoints_each: 1,
        startup_upstream: true,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let (flag, value) = (pair[0].as_str(), pair.get(1).ok_or_else(|| format!("{} needs a value", pair[0]))?);
        match flag {
            "--kproxy" => a.kproxy = value.clone(),
            "--sizes" => a.sizes = list(value)?,
            "--changes" => a.changes = value.parse().map_err(|_| "--changes: not a number")?,
            "--startup" => a.startup = list(value)?,
            "--churn-rate" => a.churn_rate = value.parse().map_err(|_| "--churn-rate: not a number")?,
            "--churn-seconds" => a.churn_seconds = value.parse().map_err(|_| "--churn-seconds: not a number")?,
            "--out" => a.out = value.clone(),
            "--dataplane" => a.dataplane = list(value)?,
            "--flavour" => {
                a.legacy = match value.as_str() {
                    "nft" => false,
                    "legacy" => true,
                    other => return Err(format!("--flavour {other:?}: nft or legacy")),
                }
            }
            "--endpoints-each" => {
                a.endpoints_each = value.parse().map_err(|_| "--endpoints-each: not a number")?;
                if !(1..=MAX_ENDPOINTS_EACH).contains(&a.endpoints_each) {
                    return Err(format!("--endpoints-each {value}: from 1 to {MAX_ENDPOINTS_EACH}"));
                }
            }
            "--startup-proxies" => {
                a.startup_upstream = match value.as_str() {
                    "both" => true,
                    "kproxy" => false,
                    other => return Err(format!("--startup-proxies {other:?}: both or kproxy")),
                }
            }
            "--dataplane-connections" => a.dataplane_sizes.connections = value.parse().map_err(|_| "--dataplane-connections: not a number")?,
            "--dataplane-udp" => a.dataplane_sizes.udp = value.parse().map_err(|_| "--dataplane-udp: not a number")?,
            "--mode" => {
                a.mode = match value.as_str() {
                    "nftables" => Dataplane::Nftables,
                    "iptables" => Dataplane::Iptables,
                    other => return Err(format!("--mode {other:?}: nftables or iptables")),
                }
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.legacy && a.mode != Dataplane::Iptables {
        return Err("--flavour legacy needs --mode iptables".into());
    }
    if !std::path::Path::new(&a.kproxy).exists() {
        return Err(format!("{}: no kproxy binary (cargo build --release -p kproxy-bin)", a.kproxy));
    }
    Ok(a)
}

fn main() -> Result<(), String> {
    let args = parse()?;
    let bins = e2e_binaries("kproxy-side-by-side").ok_or("needs root and the e2e binaries")?;
    let mut bench = SideBySide::new(&bins, &args.kproxy)?;
    bench.mode = args.mode;
    bench.legacy = args.legacy;
    bench.endpoints_each = args.endpoints_each;
    let kinds = [ProxyKind::Kproxy, ProxyKind::Upstream];
    let mut results = json!({"latency": [], "churn": {}, "startup": [], "dataplane": []});
    let mut dataplane_rows: BTreeMap<usize, BTreeMap<ProxyKind, Cost>> = BTreeMap::new();
    let mut series: BTreeMap<ProxyKind, Vec<(f64, f64, f64)>> = BTreeMap::new();
    let (mut latency_rows, mut churn_rows, mut startup_rows) = (Vec::new(), Vec::new(), Vec::new());
    // Sizes in ascending order (the cluster only grows): at each, the
    // start-up measurement first (one proxy at a time), then latency with
    // both running, then churn at the largest latency size.
    let mut all: Vec<usize> = args.sizes.iter().chain(&args.startup).chain(&args.dataplane).copied().collect();
    all.sort_unstable();
    all.dedup();
    let churn_at = args.sizes.iter().copied().max();
    let mut running = false;
    for size in all {
        bench.grow_to(size)?;
        if args.startup.contains(&size) {
            eprintln!("start-up at {size} services");
            let mut row = BTreeMap::new();
            for kind in kinds.into_iter().filter(|k| args.startup_upstream || *k == ProxyKind::Kproxy) {
                bench.stop(ProxyKind::Kproxy);
                bench.stop(ProxyKind::Upstream);
                let started = bench.start(kind)?;
                let took = bench.time_to_serve(kind, started, 50, Duration::from_secs(900))?;
                row.insert(kind, (took.as_secs_f64(), bench.usage(kind).peak_rss_mib));
                bench.stop(kind);
            }
            running = false;
            let (kt, km) = row[&ProxyKind::Kproxy];
            let upstream = row.get(&ProxyKind::Upstream).copied();
            let cell = |f: &dyn Fn((f64, f64)) -> String| upstream.map(f).unwrap_or_else(|| "–".into());
            startup_rows.push(format!(
                "| {size} | {kt:.2} s | {} | {} | {km:.1} MiB | {} | {} |",
                cell(&|(ut, _)| format!("{ut:.2} s")),
                cell(&|(ut, _)| format!("{:.3}", kt / ut)),
                cell(&|(_, um)| format!("{um:.1} MiB")),
                cell(&|(_, um)| format!("{:.3}", km / um)),
            ));
            results["startup"].as_array_mut().expect("array").push(json!({
                "services": size,
                "endpoints_each": args.endpoints_each,
                "kproxy": {"seconds": kt, "peak_rss_mib": km},
                "kube_proxy": upstream.map(|(ut, um)| json!({"seconds": ut, "peak_rss_mib": um})),
            }));
        }
        if !args.sizes.contains(&size) && !args.dataplane.contains(&size) {
            continue;
        }
        if !running {
            let started = std::time::SystemTime::now();
            for kind in kinds {
                bench.start(kind)?;
            }
            for kind in kinds {
                bench.time_to_serve(kind, started, 20, Duration::from_secs(900))?;
            }
            running = true;
        }
        let started = std::time::SystemTime::now();
        for kind in kinds {
            bench.time_to_serve(kind, started, 20, Duration::from_secs(600))?;
        }
        if args.sizes.contains(&size) {
            latency(&mut bench, &args, size, &mut LatencyOut { rows: &mut latency_rows, churn: &mut churn_rows, series: &mut series, results: &mut results }, churn_at)?;
        }
        if args.dataplane.contains(&size) {
            eprintln!("dataplane cost at {size} services");
            for kind in kinds {
                let cost = bench.dataplane_cost(kind, args.dataplane_sizes)?;
                results["dataplane"].as_array_mut().expect("array").push(json!({"services": size, "proxy": kind.label(), "figures": cost.to_json()}));
                dataplane_rows.entry(size).or_default().insert(kind, cost);
            }
        }
    }

    println!("## network programming latency (API write -> first connection to the new endpoint)");
    println!("| services | kproxy p50 | kproxy p99 | kproxy worst | kproxy over 10 s | kube-proxy p50 | kube-proxy p99 | kube-proxy worst | kube-proxy over 10 s | p50 ratio | p99 ratio | API write p50 |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in &latency_rows {
        println!("{r}");
    }
    println!();
    for r in &churn_rows {
        println!("{r}");
    }
    println!("\n## start to every sampled service answering (one proxy at a time)");
    println!("| services | kproxy | kube-proxy | ratio | kproxy peak RSS | kube-proxy peak RSS | RSS ratio |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for r in &startup_rows {
        println!("{r}");
    }
    if !dataplane_rows.is_empty() {
        println!("\n## what a new connection costs (one client, one connection after another)");
        print!("{}", dataplane_cost::table(&dataplane_rows));
    }

    std::fs::create_dir_all(&args.out).map_err(|e| e.to_string())?;
    let chart: Vec<Series> = kinds
        .iter()
        .map(|k| Series {
            label: k.label().to_string(),
            color: if *k == ProxyKind::Kproxy { "#1f77b4" } else { "#d62728" }.to_string(),
            points: series.get(k).cloned().unwrap_or_default(),
        })
        .collect();
    let title = format!("Network programming latency ({} mode)", if args.mode == Dataplane::Iptables { "iptables" } else { "nftables" });
    let svg = latency_chart(&title, &chart);
    std::fs::write(format!("{}/latency.svg", args.out), svg).map_err(|e| e.to_string())?;
    std::fs::write(format!("{}/side-by-side.json", args.out), serde_json::to_string_pretty(&results).expect("json")).map_err(|e| e.to_string())?;
    bench.keep_logs(std::path::Path::new(&args.out))?;
    println!("\nwrote {0}/latency.svg, {0}/side-by-side.json and both proxies' logs", args.out);
    Ok(())
}

/// Where the latency and churn phases put their results.
struct LatencyOut<'a> {
    rows: &'a mut Vec<String>,
    churn: &'a mut Vec<String>,
    series: &'a mut BTreeMap<ProxyKind, Vec<(f64, f64, f64)>>,
    results: &'a mut serde_json::Value,
}

/// The latency phase at `size` services (both proxies serving), then the
/// churn phase if `size` is `churn_at`.
fn latency(bench: &mut SideBySide, args: &Args, size: usize, out: &mut LatencyOut, churn_at: Option<usize>) -> Result<(), String> {
    let kinds = [ProxyKind::Kproxy, ProxyKind::Upstream];
    eprintln!("latency at {size} services");
    // Let the creation storm's syncs finish and both rate limiters
    // refill before measuring.
    std::thread::sleep(Duration::from_secs(5));
    let limit = Duration::from_secs(10);
    let measured = bench.programming_latency(args.changes, Duration::from_millis(1100), limit)?;
    let (lat, writes) = (measured.by_proxy, measured.writes);
    let q = |kind: ProxyKind, p: f64| quantile_ms(&lat[&kind], p);
    let (k50, k99, u50, u99) = (q(ProxyKind::Kproxy, 0.5), q(ProxyKind::Kproxy, 0.99), q(ProxyKind::Upstream, 0.5), q(ProxyKind::Upstream, 0.99));
    // The worst change, and how many never reached the new endpoint
    // within the limit (recorded at the limit): p99 alone hides both.
    let worst = |kind: ProxyKind| q(kind, 1.0);
    let capped = |kind: ProxyKind| lat[&kind].iter().filter(|d| **d >= limit).count();
    let w50 = quantile_ms(&writes, 0.5);
    out.rows.push(format!(
        "| {size} | {k50:.1} ms | {k99:.1} ms | {:.1} ms | {} | {u50:.1} ms | {u99:.1} ms | {:.1} ms | {} | {:.3} | {:.3} | {w50:.1} ms |",
        worst(ProxyKind::Kproxy),
        capped(ProxyKind::Kproxy),
        worst(ProxyKind::Upstream),
        capped(ProxyKind::Upstream),
        k50 / u50,
        k99 / u99
    ));
    for kind in kinds {
        out.series.entry(kind).or_default().push((size as f64, q(kind, 0.5), q(kind, 0.99)));
    }
    out.results["latency"].as_array_mut().expect("array").push(json!({
        "services": size, "changes": args.changes,
        "api_write_ms": writes.iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>(),
        "kproxy_ms": lat[&ProxyKind::Kproxy].iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>(),
        "kube_proxy_ms": lat[&ProxyKind::Upstream].iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>(),
    }));
    if Some(size) == churn_at && args.churn_seconds > 0 {
        eprintln!("churn at {size} services");
        let usage = bench.churn(args.churn_rate, args.churn_seconds)?;
        out.churn.push(format!("## churn: {} endpoint changes/s for {} s at {size} services", args.churn_rate, args.churn_seconds));
        out.churn.push("| proxy | CPU seconds | peak RSS |".to_string());
        for kind in kinds {
            let u = usage[&kind];
            out.churn.push(format!("| {} | {:.1} | {:.1} MiB |", kind.label(), u.cpu_seconds, u.peak_rss_mib));
            out.results["churn"][kind.label()] = json!({"cpu_seconds": u.cpu_seconds, "peak_rss_mib": u.peak_rss_mib, "services": size, "rate": args.churn_rate, "seconds": args.churn_seconds});
        }
        let (k, u) = (usage[&ProxyKind::Kproxy], usage[&ProxyKind::Upstream]);
        out.churn.push(format!("| ratio | {:.3} | {:.3} |", k.cpu_seconds / u.cpu_seconds, k.peak_rss_mib / u.peak_rss_mib));
    }
    Ok(())
}
