//! `kproxy-iptables-bench`: the iptables backend's benchmark. Needs root;
//! it makes a private network namespace per flavour and size, runs there,
//! and deletes it.
//!
//! ```text
//! cargo run --release -p kproxy-backend-iptables --example kproxy-iptables-bench -- [SERVICES,...] [ENDPOINTS] [legacy,nft]
//! ```
//!
//! For each flavour (default both) and size (default 1000,10000,50000
//! services × 10 endpoints) it reports: the cold full sync (first sync
//! call to `iptables-restore` returning), one-service changes (an endpoint
//! added, an endpoint removed, a service added; median and worst of 20,
//! from the handler call to the restore returning, each a partial
//! restore), a periodic sync with nothing changed (median and worst of 3:
//! the drift check with iptables-nft, a full restore with iptables-legacy),
//! the process's peak RSS, the number of rules kproxy wrote,
//! and the size of the full restore text. With `KPROXY_BENCH_HOLD=1` a
//! run keeps its namespace and rules for an hour after measuring, so the
//! tools themselves can be timed against them (`ip netns exec ...`).

use std::process::Command;
use std::time::{Duration, Instant};

use kproxy_backend_iptables::kernel::{Flavour, IptablesCli};
use kproxy_backend_iptables::render::jumps;
use kproxy_backend_iptables::{restore, IptablesOptions, IptablesDataplane};
use kproxy_oracle::fixtures as fx;
use kproxy_testkit::bench::{change_rounds, load, peak_rss_kib, run_isolated, sizes_and_endpoints, summary, Changes};
use kproxy_core::{IpFamily, Proxier, SyncRequest};

async fn one_size(flavour: Flavour, services: usize, eps: usize) {
    let kernel = IptablesCli::new(flavour, None);
    let mut p = IptablesDataplane::proxier(fx::NODE_NAME, fx::config(IpFamily::V4), kernel, IptablesOptions::default()).expect("config");
    load(&mut p, services, eps);
    let start = Instant::now();
    p.sync(SyncRequest { full: true }).await.expect("cold sync");
    let cold = start.elapsed();

    let Changes { added, removed, new_service } = change_rounds(&mut p, services, eps, 20).await;
    // Periodic syncs with nothing changed: with iptables-nft, every chain
    // compared with what kproxy wrote; with iptables-legacy, a full restore.
    let mut periodic = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        p.sync(SyncRequest { full: true }).await.expect("periodic sync");
        periodic.push(start.elapsed());
    }
    assert_eq!(p.repaired_chains(), 0, "nothing was damaged");
    let peak = peak_rss_kib();
    // Rules kproxy wrote (its own chains and the jumps into them); a
    // save of the table would take minutes with iptables-nft at 10k.
    let rules: usize = p.renderer().outline().values().flat_map(|t| t.values()).sum::<usize>() + jumps().len();
    if std::env::var_os("KPROXY_BENCH_HOLD").is_some() {
        eprintln!("holding; namespace left as is");
        std::thread::sleep(Duration::from_secs(3600));
    }
    let text = restore::full(p.renderer(), &Default::default(), &jumps());
    println!(
        "| {} | {services} | {eps} | {:.2} s | {} | {} | {} | {} | {:.1} MiB | {rules} | {:.1} MiB |",
        flavour.name(),
        cold.as_secs_f64(),
        summary(added),
        summary(removed),
        summary(new_service),
        summary(periodic),
        peak as f64 / 1024.0,
        text.len() as f64 / (1024.0 * 1024.0),
    );
}

fn flavour(name: &str) -> Flavour {
    match name {
        "legacy" => Flavour::Legacy,
        "nft" => Flavour::Nft,
        other => panic!("unknown flavour {other:?} (legacy or nft)"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--one") {
        let services: usize = args[2].parse().expect("services");
        let eps: usize = args[3].parse().expect("endpoints");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(one_size(flavour(&args[1]), services, eps));
        return;
    }
    let (sizes, eps) = sizes_and_endpoints(&args, &[1_000, 10_000, 50_000]);
    let flavours: Vec<String> = args.get(2).map(|f| f.split(',').map(str::to_string).collect()).unwrap_or_else(|| vec!["legacy".into(), "nft".into()]);
    let version = Command::new("iptables-legacy").arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("{}; kernel: {}", version.unwrap_or_else(|_| "iptables not found".into()), kernel.trim());
    println!("| flavour | services | endpoints each | cold sync | endpoint added (median / worst ms) | endpoint removed | service added | periodic sync, nothing changed | peak RSS | rules | restore text |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for f in &flavours {
        for &services in &sizes {
            run_isolated("kproxy-iptables-bench", &format!("{f}-{services}"), &["--one".into(), f.clone(), services.to_string(), eps.to_string()]);
        }
    }
}
