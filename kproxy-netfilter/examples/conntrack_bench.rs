//! How fast the conntrack cleanup is: in a private network namespace, make
//! N UDP entries to one ClusterIP (half DNATed to an endpoint that is gone),
//! then time one `Conntrack::clean` (dump + filter + batched deletes). For
//! scale, it also times deleting entries one `conntrack -D` process each,
//! as per-entry cleanups do.
//!
//! ```sh
//! sudo cargo run --release -p kproxy-netfilter --example kproxy-conntrack-bench -- 10000,100000
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use kproxy_core::conntrack::{Flow, StaleFlowFilter};
use kproxy_core::{Endpoint, EndpointsMap, IpFamily, Protocol, ServiceMap, ServicePortInfo, ServicePortName};
use kproxy_netfilter::Conntrack;
use kproxy_testkit::Netns;

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 10);
const LIVE: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const GONE: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);

fn flows(n: usize) -> Vec<Flow> {
    (0..n)
        .map(|i| {
            let client = Ipv4Addr::new(10, 2, (i >> 8) as u8, i as u8);
            let port = 10_000 + (i >> 16) as u16;
            let endpoint = if i % 2 == 0 { LIVE } else { GONE };
            Flow {
                protocol: Protocol::Udp,
                original_source: SocketAddr::new(IpAddr::V4(client), port),
                original_destination: SocketAddr::new(IpAddr::V4(CLUSTER_IP), 53),
                reply_source: SocketAddr::new(IpAddr::V4(endpoint), 5353),
                zone: 0,
            }
        })
        .collect()
}

fn filter() -> StaleFlowFilter {
    let name = ServicePortName::new("kube-system", "dns", "dns", Protocol::Udp);
    let services: ServiceMap = [(name.clone(), ServicePortInfo::cluster_ip(IpAddr::V4(CLUSTER_IP), 53, Protocol::Udp))].into_iter().collect();
    let endpoints: EndpointsMap = [(name, vec![Endpoint::ready(IpAddr::V4(LIVE), 5353, true)])].into_iter().collect();
    StaleFlowFilter::new(&services, &endpoints, [])
}

fn main() -> Result<(), String> {
    let sizes: Vec<usize> = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "10000,100000".into())
        .split(',')
        .map(|s| s.trim().parse().map_err(|_| format!("{s:?} is not a count")))
        .collect::<Result<_, _>>()?;
    println!("entries  stale  dump+filter+delete  per stale entry");
    for n in sizes {
        let ns = Netns::new("ctbench")?;
        let mut ct = Conntrack::open_in_netns(ns.name()).map_err(|e| e.to_string())?;
        ct.insert(&flows(n), 600).map_err(|e| e.to_string())?;
        let start = Instant::now();
        let report = ct.clean(IpFamily::V4, &filter()).map_err(|e| e.to_string())?;
        let took = start.elapsed();
        assert_eq!(report.deleted, n / 2, "{report:?}");
        println!(
            "{n:>7}  {:>5}  {:>15.1} ms  {:>11.2} µs",
            report.deleted,
            took.as_secs_f64() * 1e3,
            took.as_secs_f64() * 1e6 / report.deleted.max(1) as f64
        );
    }
    // One process per entry, for comparison.
    let ns = Netns::new("ctbench")?;
    let mut ct = Conntrack::open_in_netns(ns.name()).map_err(|e| e.to_string())?;
    let sample = flows(400);
    ct.insert(&sample, 600).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut deleted = 0;
    for f in sample.iter().filter(|f| f.reply_source.ip() == IpAddr::V4(GONE)) {
        let (src, dst) = (f.original_source, f.original_destination);
        ns.exec(&[
            "conntrack", "-D", "-p", "udp",
            "--orig-src", &src.ip().to_string(), "--orig-dst", &dst.ip().to_string(),
            "--orig-port-src", &src.port().to_string(), "--orig-port-dst", &dst.port().to_string(),
        ])?;
        deleted += 1;
    }
    let took = start.elapsed();
    println!("one `conntrack -D` process per entry: {deleted} entries in {:.1} ms, {:.0} µs each", took.as_secs_f64() * 1e3, took.as_secs_f64() * 1e6 / deleted as f64);
    Ok(())
}
