//! `kproxy-nft-scenario NAME`: programs one of kproxy-core's shared scenarios
//! into the current network namespace with the nftables backend, prints
//! `ready`, and keeps running until killed (leaving its rules in place, as a
//! proxy does across a restart). Tests use it to kill and restart a real
//! proxier process; run it only inside a network namespace you made, e.g.
//! `ip netns exec mytest target/debug/examples/kproxy-nft-scenario cluster_ip`
//! (built by `cargo build -p kproxy-backend-nft --example kproxy-nft-scenario`).

use kproxy_backend_nft::kernel::NftKernel;
use kproxy_backend_nft::{NftOptions, NftDataplane};
use kproxy_oracle::{fixtures as fx, scenarios};
use kproxy_core::{Proxier, SyncRequest};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(scenario) = scenarios::all().into_iter().find(|s| s.name == name) else {
        eprintln!("kproxy-nft-scenario: unknown scenario {name:?}");
        std::process::exit(2);
    };
    let mut proxier = match NftDataplane::proxier(fx::NODE_NAME, scenario.config.clone(), NftKernel::new().expect("netlink socket"), NftOptions::default()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("kproxy-nft-scenario: {e}");
            std::process::exit(2);
        }
    };
    scenario.feed(&mut proxier);
    if let Err(e) = proxier.sync(SyncRequest { full: true }).await {
        eprintln!("kproxy-nft-scenario: {e}");
        std::process::exit(1);
    }
    println!("ready");
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
}
