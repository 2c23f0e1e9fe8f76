//! `kproxy-nft-bench`: the nftables backend's benchmark. Needs root; it makes
//! a private network namespace per size, runs there, and deletes it.
//!
//! ```text
//! cargo run --release -p kproxy-backend-nft --example kproxy-nft-bench -- [SERVICES,...] [ENDPOINTS]
//! ```
//!
//! For each size (default 1000,10000,50000 services × 10 endpoints) it
//! reports: the cold full sync (wall time from the first sync call to the
//! kernel commit returning), one-service changes (an endpoint added, an
//! endpoint removed, a service added; median and worst of 20, from the
//! handler call to the kernel commit returning), the periodic full sync with
//! nothing changed (median and worst of 5: the drift check that compares
//! every chain, set declaration and element with what kproxy wrote), the
//! process's peak RSS, and the rendered ruleset's size.
//!
//! `KPROXY_BENCH_STAGES=1` prints the memory after each stage;
//! `KPROXY_BENCH_STOP=load` or `=cold` ends a `--one` run after loading
//! the objects or after the cold sync, for a heap profile of that stage
//! (`heaptrack target/release/examples/kproxy-nft-bench --one 10000 10`).

use std::process::Command;
use std::time::Instant;

use kproxy_backend_nft::kernel::NftKernel;
use kproxy_backend_nft::transaction::Transaction;
use kproxy_backend_nft::{NftOptions, NftDataplane};
use kproxy_oracle::fixtures as fx;
use kproxy_testkit::bench::{change_rounds, load, peak_rss_kib, rss_kib, run_isolated, sizes_and_endpoints, summary, Changes};
use kproxy_core::{IpFamily, Proxier, SyncRequest};

/// With KPROXY_BENCH_STAGES=1, prints memory after each stage to stderr.
fn stage(name: &str) {
    if std::env::var_os("KPROXY_BENCH_STAGES").is_some() {
        eprintln!("{name}: rss {} MiB, peak {} MiB", rss_kib() / 1024, peak_rss_kib() / 1024);
    }
}

/// With KPROXY_BENCH_STOP=load or cold, the run ends after that stage (for
/// a heap profile of it).
fn stop_after(name: &str) -> bool {
    std::env::var("KPROXY_BENCH_STOP").is_ok_and(|v| v == name)
}

async fn one_size(services: usize, eps: usize) {
    let mut p = NftDataplane::proxier(fx::NODE_NAME, fx::config(IpFamily::V4), NftKernel::new().expect("netlink socket"), NftOptions::default()).expect("config");
    load(&mut p, services, eps);
    stage("objects handled");
    if stop_after("load") {
        return;
    }
    let start = Instant::now();
    p.sync(SyncRequest { full: true }).await.expect("cold sync");
    let cold = start.elapsed();
    stage("cold sync done");
    if stop_after("cold") {
        return;
    }

    let Changes { added, removed, new_service } = change_rounds(&mut p, services, eps, 20).await;
    let mut periodic = Vec::new();
    for _ in 0..5 {
        let table = p.table().map(str::to_string);
        let start = Instant::now();
        p.sync(SyncRequest { full: true }).await.expect("periodic sync");
        periodic.push(start.elapsed());
        assert_eq!(p.table().map(str::to_string), table, "a periodic sync with no drift rebuilt the table");
    }
    // Read the peak before rendering the text below, which only the
    // benchmark needs.
    let peak = peak_rss_kib();
    let rs = p.ruleset();
    let mut tx = Transaction::new(IpFamily::V4);
    tx.create("kproxy-a", rs, true);
    let text = tx.to_nft();
    println!(
        "| {services} | {eps} | {:.2} s | {} | {} | {} | {} | {:.1} MiB | {} | {} | {:.1} MiB |",
        cold.as_secs_f64(),
        summary(added),
        summary(removed),
        summary(new_service),
        summary(periodic),
        peak as f64 / 1024.0,
        rs.element_count(),
        rs.rule_count(),
        text.len() as f64 / (1024.0 * 1024.0),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--one") {
        let services: usize = args[1].parse().expect("services");
        let eps: usize = args[2].parse().expect("endpoints");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(one_size(services, eps));
        return;
    }
    let (sizes, eps) = sizes_and_endpoints(&args, &[1_000, 10_000, 50_000]);
    let nft = Command::new("nft").arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("nft: {}; kernel: {}", nft.unwrap_or_else(|_| "nft not found".into()), kernel.trim());
    println!("| services | endpoints each | cold sync | endpoint added (median / worst ms) | endpoint removed | service added | periodic full sync (drift check) | peak RSS | elements | rules | nft text |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for services in sizes {
        run_isolated("kproxy-nft-bench", &services.to_string(), &["--one".into(), services.to_string(), eps.to_string()]);
    }
}
