//! A backend written outside kproxy: it implements `Proxier` by printing
//! what a dataplane would program, and runs under kproxy's own sync runner.
//!
//! Run it with `cargo run -p kproxy-examples --example proxier_logging`.

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy_oracle::scenarios;
use kproxy_core::runner::{RunnerConfig, SyncRunner, Update};
use kproxy_core::{select_endpoints, IpFamily, Proxier, ProxyState, Result, SyncReport, SyncRequest};
use tokio::sync::mpsc;

/// Prints, on every sync, each service port and the endpoints this node
/// would send its traffic to.
struct LoggingProxier {
    state: ProxyState,
    syncs: usize,
}

#[async_trait]
impl Proxier for LoggingProxier {
    fn backend(&self) -> &'static str {
        "logging"
    }

    fn on_service_update(&mut self, previous: Option<&Service>, current: Option<&Service>) -> bool {
        self.state.on_service(previous, current)
    }

    fn on_endpoint_slice_update(&mut self, slice: &EndpointSlice, removed: bool) -> bool {
        self.state.on_endpoint_slice(slice, removed)
    }

    fn on_node_update(&mut self, node: &Node) -> bool {
        self.state.on_node(node)
    }

    async fn sync(&mut self, request: SyncRequest) -> Result<SyncReport> {
        let changes = self.state.apply();
        self.syncs += 1;
        println!(
            "sync #{} (full: {}), {} service(s) changed",
            self.syncs,
            request.full,
            changes.updated_services().len()
        );
        for (name, info) in self.state.services().iter() {
            let selected = select_endpoints(self.state.endpoints().get(name), info, self.state.node());
            let endpoints: Vec<String> = selected.cluster.iter().map(ToString::to_string).collect();
            println!("  {name} {}:{}/{} -> [{}]", info.cluster_ip, info.port, info.protocol, endpoints.join(", "));
        }
        Ok(SyncReport::new(request.full, changes))
    }

    async fn cleanup(&mut self) -> Result<()> {
        println!("cleanup: nothing was installed");
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let scenario = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").expect("shipped scenario");
    let mut proxier = LoggingProxier {
        state: ProxyState::new(IpFamily::V4, "node-a"),
        syncs: 0,
    };
    let runner = SyncRunner::new(RunnerConfig::default())?;
    let (tx, rx) = mpsc::channel(64);

    // A watcher would send these; here they come from a shipped scenario.
    tokio::spawn(async move {
        for s in scenario.services {
            let _ = tx.send(Update::Service { previous: None, current: Some(std::sync::Arc::new(s)) }).await;
        }
        for slice in scenario.slices {
            let _ = tx.send(Update::EndpointSlice { slice: std::sync::Arc::new(slice), removed: false }).await;
        }
        let _ = tx.send(Update::ServicesSynced).await;
        let _ = tx.send(Update::EndpointSlicesSynced).await;
        // Give the runner a moment to sync, then close the stream to stop it.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    });

    runner
        .run(&mut proxier, rx, |event| println!("sync took {:?}, ok: {}", event.duration, event.result.is_ok()))
        .await?;
    proxier.cleanup().await
}
