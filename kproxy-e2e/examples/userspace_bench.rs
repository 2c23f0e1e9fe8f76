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

use kproxy_e2e::userspace_bench::{run, table, Sizes};

struct Args {
    kproxy: String,
    sizes: Sizes,
}

fn parse() -> Result<Args, String> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut a = Args { kproxy: format!("{root}/target/release/kproxy"), sizes: Sizes { connections: 2000, udp: 2000, megabytes: 500 } };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let (flag, value) = (pair[0].as_str(), pair.get(1).ok_or_else(|| format!("{} needs a value", pair[0]))?);
        let number = || value.parse::<usize>().map_err(|_| format!("{flag}: {value:?} is not a number"));
        match flag {
            "--kproxy" => a.kproxy = value.clone(),
            "--connections" => a.sizes.connections = number()?,
            "--udp" => a.sizes.udp = number()?,
            "--megabytes" => a.sizes.megabytes = number()?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if !Path::new(&a.kproxy).exists() {
        return Err(format!("{}: no kproxy binary (cargo build --release -p kproxy-bin)", a.kproxy));
    }
    Ok(a)
}

fn main() -> Result<(), String> {
    let a = parse()?;
    if !kproxy_testkit::kernel_tests_enabled("kproxy-userspace-bench") {
        return Err("kproxy-userspace-bench needs root and the network tools".into());
    }
    let figures = run(&a.kproxy, a.sizes)?;
    println!("{} connections, {} UDP round trips, {} MiB", a.sizes.connections, a.sizes.udp, a.sizes.megabytes);
    print!("{}", table(&figures));
    Ok(())
}
