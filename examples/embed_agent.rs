//! Embedding kproxy in your own program (a CNI or node agent): the API
//! server through kproxy-agent's kube source, kproxy's sync runner, the
//! nftables backend (built by the agent from a mode and kube-proxy's
//! options) for this node's IPv4 Services, and the agent's observer for
//! the conntrack cleanup after each sync. NodePorts are served on the
//! Node's own addresses; the Node's pod CIDRs tell local pods.
//!
//! Build it with `cargo build -p kproxy-examples --example embed_agent`;
//! run it as root on a node, with a kubeconfig (`$KUBECONFIG`, or the
//! in-cluster account): `target/debug/examples/embed_agent NODE_NAME`.

use kproxy_agent::backend::{Backend, DetectLocal, Host, Mode, ProxyOptions};
use kproxy_agent::kube_source;
use kproxy_agent::observer::SyncObserver;
use kproxy_core::runner::{RunnerConfig, SyncEvent, SyncRunner};
use kproxy_core::{convert, IpFamily, NodePortAddresses};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let node_name = std::env::args().nth(1).ok_or("usage: embed_agent NODE_NAME")?;
    let client = kube::Client::try_default().await?;
    let node = kube_source::fetch_node(&client, &node_name, 30).await.ok_or("no Node object for this node")?;

    let options = ProxyOptions {
        detect_local: DetectLocal::NodeCidr,
        node_port_addresses: NodePortAddresses::Primary,
        ..ProxyOptions::new(Mode::Nftables, &node_name)
    };
    let host = Host::here(convert::node_info(&node));
    let mut proxier = Backend::detect(Mode::Nftables).await.proxier(&options, IpFamily::V4, &host)?;

    let runner = SyncRunner::new(RunnerConfig::default())?;
    let updates = kube_source::updates(client, &node_name);
    let mut observer = SyncObserver::new(IpFamily::V4, ());
    let observe = |sync: &SyncEvent<'_>| {
        observer.observe(sync);
        println!("synced in {:?} (full: {})", sync.duration, sync.full);
    };
    tokio::select! {
        done = runner.run_stream(&mut *proxier, updates, observe) => done?,
        _ = tokio::signal::ctrl_c() => {}
    }
    // Leave nothing behind when this program stops.
    proxier.cleanup().await?;
    Ok(())
}
