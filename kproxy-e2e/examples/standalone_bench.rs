//! Standalone mode at scale (issue 17's targets): kproxy in nftables mode
//! on a manifests directory of `--services` Services × `--endpoints`
//! endpoints in `--files` files, measured with real connections:
//!
//! 1. process start → the probe Service and a sample of the others answer;
//! 2. peak RSS by then, and at the end;
//! 3. CPU while nothing changes (`--idle-seconds`);
//! 4. rewriting one whole file (its probe Service moved to another pod) →
//!    the first connection answered by the new pod, over `--changes`
//!    changes 1.2 s apart (past the 1 s `minSyncPeriod`): median, p99
//!    and worst.
//!
//! ```sh
//! cargo build --release -p kproxy-bin
//! cargo run --release -p kproxy-e2e --example kproxy-standalone-bench
//! ```
//! (root; it builds its own namespaces and touches nothing else). Prints a
//! table and writes `standalone.json` to `--out` when given.

use std::time::Duration;

use kproxy_e2e::bench::quantile_ms;
use kproxy_e2e::standalone_bench::StandaloneBench;

struct Args {
    kproxy: String,
    services: usize,
    files: usize,
    endpoints: usize,
    changes: usize,
    idle_seconds: u64,
    out: Option<String>,
}

fn parse() -> Result<Args, String> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut a = Args { kproxy: format!("{root}/target/release/kproxy"), services: 10_000, files: 20, endpoints: 10, changes: 50, idle_seconds: 20, out: None };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let (flag, value) = (pair[0].as_str(), pair.get(1).ok_or_else(|| format!("{} needs a value", pair[0]))?);
        let number = || value.parse::<usize>().map_err(|_| format!("{flag}: {value:?} is not a number"));
        match flag {
            "--kproxy" => a.kproxy = value.clone(),
            "--services" => a.services = number()?,
            "--files" => a.files = number()?,
            "--endpoints" => a.endpoints = number()?,
            "--changes" => a.changes = number()?,
            "--idle-seconds" => a.idle_seconds = number()? as u64,
            "--out" => a.out = Some(value.clone()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if !std::path::Path::new(&a.kproxy).exists() {
        return Err(format!("{}: no kproxy binary (cargo build --release -p kproxy-bin)", a.kproxy));
    }
    Ok(a)
}

fn main() -> Result<(), String> {
    let a = parse()?;
    if !kproxy_testkit::kernel_tests_enabled("kproxy-standalone-bench") {
        return Err("kproxy-standalone-bench needs root and the network tools".into());
    }
    let mut bench = StandaloneBench::new(a.services, a.files, a.endpoints)?;
    let started = bench.start(&a.kproxy)?;
    let start = bench.time_to_serve(started, 50, Duration::from_secs(120)).map_err(|e| format!("{e}\n{}", bench.log()))?;
    let start_rss = bench.usage().peak_rss_mib;
    let idle = bench.idle_cpu(Duration::from_secs(a.idle_seconds));
    // Changes 1.2 s apart: past `minSyncPeriod` (upstream defaults a zero
    // to 1 s), so what is measured is the file → kernel path, not the
    // rate limit.
    let writes = bench.write_to_traffic(a.changes, Duration::from_millis(1200), Duration::from_secs(10))?;
    let end_rss = bench.usage().peak_rss_mib;
    let (p50, p99, worst) = (quantile_ms(&writes, 0.5), quantile_ms(&writes, 0.99), quantile_ms(&writes, 1.0));
    println!("| measure | value |");
    println!("| --- | --- |");
    println!("| Services × endpoints (files) | {} × {} ({}) |", a.services, a.endpoints, a.files);
    println!("| start → traffic | {:.2} s |", start.as_secs_f64());
    println!("| peak RSS after start / at the end | {start_rss:.1} / {end_rss:.1} MiB |");
    println!("| CPU while idle ({} s) | {:.2} % of a core |", a.idle_seconds, idle * 100.0);
    println!("| file write → traffic, {} changes | p50 {p50:.1} ms, p99 {p99:.1} ms, worst {worst:.1} ms |", writes.len());
    if let Some(out) = a.out {
        let json = serde_json::json!({
            "services": a.services, "files": a.files, "endpoints": a.endpoints,
            "start_to_traffic_s": start.as_secs_f64(), "start_peak_rss_mib": start_rss, "end_peak_rss_mib": end_rss,
            "idle_cpu_share": idle, "write_to_traffic_ms": writes.iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>(),
        });
        std::fs::create_dir_all(&out).map_err(|e| format!("{out}: {e}"))?;
        std::fs::write(format!("{out}/standalone.json"), json.to_string()).map_err(|e| format!("{out}: {e}"))?;
        std::fs::write(format!("{out}/kproxy.log"), bench.log()).map_err(|e| format!("{out}: {e}"))?;
    }
    Ok(())
}
