//! A backend written outside kproxy: it implements core's `Dataplane` by
//! printing what a dataplane would program, becomes a `Proxier` through
//! core's `StateProxier` (which adds the health checks and the conntrack
//! cleanup to every report), and runs under kproxy's own sync runner.
//!
//! Run it with `cargo run -p kproxy-examples --example proxier_logging`.

use async_trait::async_trait;
use kproxy_core::runner::{RunnerConfig, SyncRunner, Update};
use kproxy_core::skeleton::{Applied, Dataplane, Refresh, StateProxier};
use kproxy_core::{select_endpoints, IpFamily, Proxier, ProxyState, Result, StateChanges, SyncRequest};
use kproxy_oracle::scenarios;
use tokio::sync::mpsc;

/// Prints, on every sync, each service port and the endpoints this node
/// would send its traffic to.
struct Logging {
    syncs: usize,
}

#[async_trait]
impl Dataplane for Logging {
    fn backend(&self) -> &'static str {
        "logging"
    }

    async fn apply(&mut self, state: &ProxyState, changes: &StateChanges, refresh: Refresh, request: SyncRequest) -> Result<Applied> {
        self.syncs += 1;
        let what = match refresh {
            Refresh::All => "everything".to_string(),
            Refresh::Services(s) => format!("{} service(s)", s.len()),
        };
        println!("sync #{} (full: {}), rendering {what}; {} service(s) changed", self.syncs, request.full, changes.updated_services().len());
        for (name, info) in state.services().iter() {
            let selected = select_endpoints(state.endpoints().get(name), info, state.node());
            let endpoints: Vec<String> = selected.cluster.iter().map(ToString::to_string).collect();
            println!("  {name} {}:{}/{} -> [{}]", info.cluster_ip, info.port, info.protocol, endpoints.join(", "));
        }
        Ok(Applied::default())
    }

    async fn cleanup(&mut self) -> Result<()> {
        println!("cleanup: nothing was installed");
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let scenario = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").expect("shipped scenario");
    let mut proxier = StateProxier::new(ProxyState::new(IpFamily::V4, "node-a"), Logging { syncs: 0 });
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
