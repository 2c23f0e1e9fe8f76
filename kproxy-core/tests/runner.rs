//! The sync runner's timing, with a fake proxier under paused time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy_oracle::fixtures::service;
use kproxy_core::runner::{RunnerConfig, SyncRunner, Update};
use kproxy_core::{Error, IpFamily, Proxier, ProxyState, Result, SyncReport, SyncRequest};
use tokio::sync::mpsc;
use tokio::time::{sleep, Instant};

/// Records every sync as (seconds since start, full) and fails the first
/// `failures` syncs.
struct Recorder {
    state: ProxyState,
    start: Instant,
    syncs: Arc<Mutex<Vec<(u64, bool)>>>,
    failures: usize,
}

#[async_trait]
impl Proxier for Recorder {
    fn backend(&self) -> &'static str {
        "recorder"
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
        let at = (Instant::now() - self.start).as_millis() as u64 / 100;
        self.syncs.lock().unwrap().push((at, request.full));
        if self.failures > 0 {
            self.failures -= 1;
            return Err(Error::sync("recorder", "injected failure", None));
        }
        Ok(SyncReport::new(request.full, self.state.apply()))
    }
    async fn cleanup(&mut self) -> Result<()> {
        Ok(())
    }
}

struct Harness {
    tx: mpsc::Sender<Update>,
    syncs: Arc<Mutex<Vec<(u64, bool)>>>,
    runner: Arc<SyncRunner>,
    task: tokio::task::JoinHandle<Result<()>>,
}

/// Starts a runner with minSyncPeriod 1s, syncPeriod 30s, burst 2.
fn start(failures: usize) -> Harness {
    let syncs = Arc::new(Mutex::new(Vec::new()));
    let mut proxier = Recorder {
        state: ProxyState::new(IpFamily::V4, "node-a"),
        start: Instant::now(),
        syncs: Arc::clone(&syncs),
        failures,
    };
    let runner = Arc::new(SyncRunner::new(RunnerConfig::default()).unwrap());
    let (tx, rx) = mpsc::channel(64);
    let r = Arc::clone(&runner);
    let task = tokio::spawn(async move { r.run(&mut proxier, rx, |_| {}).await });
    Harness { tx, syncs, runner, task }
}

fn svc(n: u8) -> Update {
    let s = service("ns", &format!("svc{n}"), &[&format!("172.30.0.{n}")]).port("p", 80, "TCP", 0).build();
    Update::Service { previous: None, current: Some(std::sync::Arc::new(s)) }
}

/// Sync times in tenths of a second since start.
fn syncs(h: &Harness) -> Vec<(u64, bool)> {
    h.syncs.lock().unwrap().clone()
}

#[tokio::test(start_paused = true)]
async fn nothing_syncs_before_both_initial_lists() {
    let h = start(0);
    h.tx.send(svc(1)).await.unwrap();
    h.tx.send(Update::ServicesSynced).await.unwrap();
    sleep(Duration::from_secs(100)).await;
    assert!(syncs(&h).is_empty(), "synced before the slice list: {:?}", syncs(&h));
    h.tx.send(Update::EndpointSlicesSynced).await.unwrap();
    sleep(Duration::from_millis(10)).await;
    assert_eq!(syncs(&h), vec![(1000, true)], "the first sync is immediate and full");
}

#[tokio::test(start_paused = true)]
async fn bursts_then_one_sync_per_min_sync_period_then_periodic_resync() {
    let h = start(0);
    h.tx.send(Update::ServicesSynced).await.unwrap();
    h.tx.send(Update::EndpointSlicesSynced).await.unwrap();
    sleep(Duration::from_millis(10)).await;
    for n in 1..=3 {
        h.tx.send(svc(n)).await.unwrap();
        sleep(Duration::from_millis(10)).await;
    }
    sleep(Duration::from_millis(2000)).await;
    let got = syncs(&h);
    assert_eq!(got[0], (0, true), "initial sync");
    assert_eq!(got[1], (0, false), "second token of the burst");
    assert_eq!(got[2], (10, false), "then one per minSyncPeriod");
    assert_eq!(got.len(), 3, "three changes coalesced into the syncs above: {got:?}");
    sleep(Duration::from_secs(40)).await;
    let got = syncs(&h);
    assert_eq!(got[3], (300, true), "periodic full resync 30s after the last full sync, partial syncs between or not: {got:?}");
}

#[tokio::test(start_paused = true)]
async fn failed_syncs_retry_in_full_with_backoff() {
    let h = start(3);
    h.tx.send(Update::ServicesSynced).await.unwrap();
    h.tx.send(Update::EndpointSlicesSynced).await.unwrap();
    sleep(Duration::from_secs(10)).await;
    assert_eq!(syncs(&h), vec![(0, true), (10, true), (30, true), (70, true)]);
}

#[tokio::test(start_paused = true)]
async fn health_turns_bad_when_an_update_waits_past_twice_the_sync_period() {
    let h = start(usize::MAX);
    h.tx.send(Update::ServicesSynced).await.unwrap();
    h.tx.send(Update::EndpointSlicesSynced).await.unwrap();
    h.tx.send(svc(1)).await.unwrap();
    sleep(Duration::from_secs(59)).await;
    assert!(h.runner.health().snapshot(Instant::now()).healthy);
    sleep(Duration::from_secs(2)).await;
    assert!(!h.runner.health().snapshot(Instant::now()).healthy, "failing for more than 60s");
}

#[tokio::test(start_paused = true)]
async fn the_runner_stops_when_the_update_stream_closes() {
    let h = start(0);
    let recorded = Arc::clone(&h.syncs);
    drop(h.tx);
    assert!(h.task.await.unwrap().is_ok());
    assert!(recorded.lock().unwrap().is_empty(), "nothing synced without the initial lists");
}

/// A batch sent and closed at once: the runner syncs it before it returns
/// (pending work is finished, not dropped).
#[tokio::test(start_paused = true)]
async fn pending_work_is_synced_before_the_runner_returns() {
    let h = start(0);
    for u in [Update::ServicesSynced, Update::EndpointSlicesSynced, svc(1), svc(2), svc(3), svc(4)] {
        h.tx.send(u).await.unwrap();
    }
    let recorded = Arc::clone(&h.syncs);
    drop(h.tx);
    assert!(h.task.await.unwrap().is_ok());
    let got = recorded.lock().unwrap().clone();
    assert!(!got.is_empty() && got[0].1, "the batch was synced: {got:?}");
}

/// A `Stream` of updates (here a plain iterator's), as an embedder has.
struct Updates(std::collections::VecDeque<Update>);

impl futures_core::Stream for Updates {
    type Item = Update;
    fn poll_next(mut self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Option<Update>> {
        std::task::Poll::Ready(self.0.pop_front())
    }
}

#[tokio::test(start_paused = true)]
async fn any_stream_of_updates_drives_the_runner() {
    let syncs = Arc::new(Mutex::new(Vec::new()));
    let mut proxier = Recorder { state: ProxyState::new(IpFamily::V4, "node-a"), start: Instant::now(), syncs: Arc::clone(&syncs), failures: 0 };
    let runner = SyncRunner::new(RunnerConfig::default()).unwrap();
    let updates = Updates([svc(1), Update::ServicesSynced, Update::EndpointSlicesSynced].into());
    let mut seen = 0;
    runner.run_stream(&mut proxier, updates, |_| seen += 1).await.unwrap();
    assert_eq!((syncs.lock().unwrap().len(), seen), (1, 1));
}

#[test]
fn the_missing_initial_lists_are_named() {
    assert_eq!(kproxy_core::runner::missing(false, false), "ServicesSynced, EndpointSlicesSynced");
    assert_eq!(kproxy_core::runner::missing(true, false), "EndpointSlicesSynced");
}

#[test]
fn bad_runner_settings_are_refused() {
    let zero = RunnerConfig { sync_period: Duration::ZERO, ..RunnerConfig::default() };
    assert!(SyncRunner::new(zero).is_err());
    let inverted = RunnerConfig { min_sync_period: Duration::from_secs(60), ..RunnerConfig::default() };
    assert!(SyncRunner::new(inverted).is_err());
}
