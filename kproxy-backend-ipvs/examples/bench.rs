//! `kproxy-ipvs-bench`: the IPVS backend's benchmark, with the nftables
//! backend measured the same way on the same machine for the ratio. Needs
//! root and a kernel with IPVS: run it in the VM
//! (`bash scripts/ipvs-vm.sh target/release/examples/kproxy-ipvs-bench`).
//! Each backend and size runs in a private network namespace it makes and
//! deletes.
//!
//! ```text
//! cargo build --release -p kproxy-backend-ipvs --example kproxy-ipvs-bench
//! kproxy-ipvs-bench [SERVICES,...] [ENDPOINTS] [ipvs,nftables]
//! ```
//!
//! For each backend and size (default 1000,10000 ClusterIP Services × 10
//! endpoints) it reports the cold full sync and one-service changes (an
//! endpoint added, removed, a Service added; median and worst of 20, each
//! its own sync), with, for IPVS, the netlink messages each sync sent and
//! the virtual servers whose real servers it listed.

use std::time::{Duration, Instant};

use kproxy_backend_iptables::kernel::{Flavour, IptablesCli};
use kproxy_backend_ipvs::kernel::IpvsHost;
use kproxy_backend_ipvs::{IpvsOptions, IpvsProxier, IpvsDataplane};
use kproxy_backend_nft::kernel::NftKernel;
use kproxy_backend_nft::{NftOptions, NftProxier, NftDataplane};
use kproxy_oracle::fixtures as fx;
use kproxy_core::{IpFamily, Proxier, SyncRequest};
use kproxy_testkit::bench::{bench_endpoints, bench_service, load, peak_rss_kib, run_isolated, sizes_and_endpoints, summary};

/// One timed sync, and what the proxier sent in it.
async fn timed<P: Proxier>(p: &mut P, stats: &impl Fn(&P) -> (usize, usize)) -> (Duration, usize, usize) {
    let t = Instant::now();
    p.sync(SyncRequest::default()).await.expect("sync");
    let elapsed = t.elapsed();
    let (messages, dumped) = stats(p);
    (elapsed, messages, dumped)
}

async fn one_size(backend: &str, services: usize, eps: usize) {
    match backend {
        "ipvs" => {
            let kernel = IpvsHost::new(None, IptablesCli::new(Flavour::Nft, None));
            let p = IpvsDataplane::proxier(fx::NODE_NAME, fx::config(IpFamily::V4), kernel, IpvsOptions::default()).expect("config");
            measure(p, |p: &IpvsProxier<IpvsHost>| (p.stats().ipvs_messages, p.stats().dumped_services), backend, services, eps).await;
        }
        "nftables" => {
            let kernel = NftKernel::new().expect("netlink socket");
            let p = NftDataplane::proxier(fx::NODE_NAME, fx::config(IpFamily::V4), kernel, NftOptions::default()).expect("config");
            measure(p, |_: &NftProxier<NftKernel>| (0, 0), backend, services, eps).await;
        }
        other => panic!("unknown backend {other:?} (ipvs or nftables)"),
    }
}

/// The cold sync and the change rounds of `p`; `stats` reads the IPVS
/// proxier's counters (messages sent, real-server lists) after a sync.
async fn measure<P: Proxier>(mut p: P, stats: impl Fn(&P) -> (usize, usize), backend: &str, services: usize, eps: usize) {
    load(&mut p, services, eps);
    let start = Instant::now();
    p.sync(SyncRequest { full: true }).await.expect("cold sync");
    let cold = start.elapsed();
    let (cold_messages, _) = stats(&p);

    let (mut added, mut removed, mut new_service) = (Vec::new(), Vec::new(), Vec::new());
    let mut messages = [0usize; 3];
    let mut dumped = 0;
    let rounds = 20;
    for r in 0..rounds {
        let i = (r * 7919) % services;
        p.on_endpoint_slice_update(&bench_endpoints(i, eps + 1), false);
        let (t, m, d) = timed(&mut p, &stats).await;
        added.push(t);
        messages[0] = messages[0].max(m);
        dumped = dumped.max(d);
        p.on_endpoint_slice_update(&bench_endpoints(i, eps), false);
        let (t, m, _) = timed(&mut p, &stats).await;
        removed.push(t);
        messages[1] = messages[1].max(m);
        let n = services + r;
        p.on_service_update(None, Some(&bench_service(n)));
        p.on_endpoint_slice_update(&bench_endpoints(n, eps), false);
        let (t, m, _) = timed(&mut p, &stats).await;
        new_service.push(t);
        messages[2] = messages[2].max(m);
    }
    println!(
        "| {backend} | {services} | {eps} | {:.2} s | {cold_messages} | {} ({}) | {} ({}) | {} ({}) | {dumped} | {:.1} MiB |",
        cold.as_secs_f64(),
        summary(added),
        messages[0],
        summary(removed),
        messages[1],
        summary(new_service),
        messages[2],
        peak_rss_kib() as f64 / 1024.0,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--one") {
        let services: usize = args[2].parse().expect("services");
        let eps: usize = args[3].parse().expect("endpoints");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(one_size(&args[1], services, eps));
        return;
    }
    let (sizes, eps) = sizes_and_endpoints(&args, &[1_000, 10_000]);
    let backends: Vec<String> = args.get(2).map(|f| f.split(',').map(str::to_string).collect()).unwrap_or_else(|| vec!["ipvs".into(), "nftables".into()]);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("kernel: {}; {} CPUs", kernel.trim(), std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    println!("| backend | services | endpoints each | cold sync | cold messages | endpoint added (median / worst ms; messages) | endpoint removed | service added | real-server lists per change | peak RSS |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for &services in &sizes {
        for b in &backends {
            run_isolated("kproxy-ipvs-bench", &format!("{b}-{services}"), &["--one".into(), b.clone(), services.to_string(), eps.to_string()]);
        }
    }
}
