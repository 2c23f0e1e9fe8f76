//! One proxier per IP family, each run by its own [`SyncRunner`] task, fed
//! the same updates: upstream's per-family proxiers behind one source.

use std::sync::Arc;

use kproxy_core::runner::{RunnerConfig, SyncEvent, SyncHealth, SyncRunner, Update};
use kproxy_core::{IpFamily, Proxier};
use tokio::sync::mpsc;

use crate::kube_source::Sink;
use crate::observer::{SyncHooks, SyncObserver};

/// How many updates may wait for one family's runner before a source
/// waits too.
pub const QUEUE: usize = 1024;

/// The families' runners, as one [`Sink`]: [`FanOut::add`] each family's
/// proxier, then [`FanOut::start`] them all.
#[derive(Default)]
pub struct FanOut {
    senders: Vec<(IpFamily, mpsc::Sender<Update>)>,
    healths: Vec<(IpFamily, Arc<SyncHealth>)>,
    /// Added, not started yet (behind a lock only so the fan-out is
    /// `Sync`: proxiers need not be).
    pending: std::sync::Mutex<Vec<Pending>>,
}

/// A family's proxier, runner and queue before [`FanOut::start`].
type Pending = (IpFamily, Box<dyn Proxier>, SyncRunner, mpsc::Receiver<Update>);

impl std::fmt::Debug for FanOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanOut").field("families", &self.families()).field("started", &self.pending.lock().map(|p| p.is_empty()).unwrap_or(true)).finish()
    }
}

impl FanOut {
    /// No family yet.
    pub fn new() -> Self {
        FanOut::default()
    }

    /// Adds `proxier` for `family`, run with `config`'s timings once
    /// started. Updates sent before [`FanOut::start`] wait for it.
    pub fn add(&mut self, family: IpFamily, proxier: Box<dyn Proxier>, config: RunnerConfig) -> kproxy_core::Result<()> {
        let runner = SyncRunner::new(config)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        self.senders.push((family, tx));
        self.healths.push((family, runner.health()));
        self.pending.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).push((family, proxier, runner, rx));
        Ok(())
    }

    /// Starts a task per added family that runs its proxier until the
    /// fan-out is dropped; after each sync, a [`SyncObserver`] cleans
    /// conntrack and calls that family's `hooks(family)`.
    pub fn start<H: SyncHooks + 'static>(&mut self, hooks: impl Fn(IpFamily) -> H) {
        let pending = std::mem::take(self.pending.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner));
        for (family, mut proxier, runner, rx) in pending {
            let mut observer = SyncObserver::new(family, hooks(family));
            tokio::spawn(async move {
                if let Err(e) = runner.run(&mut *proxier, rx, |event: &SyncEvent<'_>| observer.observe(event)).await {
                    tracing::error!(%family, error = %e, "the sync runner stopped");
                }
            });
        }
    }

    /// The families, in the order they were started.
    pub fn families(&self) -> Vec<IpFamily> {
        self.senders.iter().map(|(f, _)| *f).collect()
    }

    /// Each family's health signal (for a health server).
    pub fn healths(&self) -> &[(IpFamily, Arc<SyncHealth>)] {
        &self.healths
    }

    /// Whether every family has synced once.
    pub fn all_synced(&self) -> bool {
        self.healths.iter().all(|(_, h)| h.snapshot(tokio::time::Instant::now()).last_updated.is_some())
    }

    /// Hands `updates` to every family, in order (objects are shared, not
    /// copied).
    pub async fn send(&self, updates: &[Update]) {
        for (_, tx) in &self.senders {
            for u in updates {
                let _ = tx.send(u.clone()).await;
            }
        }
    }
}

impl Sink for FanOut {
    async fn send(&self, updates: Vec<Update>) {
        FanOut::send(self, &updates).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kproxy_core::skeleton::{Applied, Dataplane, Refresh, StateProxier};
    use kproxy_core::{ProxyState, StateChanges, SyncRequest};
    use std::sync::Mutex;

    /// Counts the services each family's dataplane saw at its last sync.
    struct Count(Arc<Mutex<Vec<(IpFamily, usize)>>>, IpFamily);

    #[async_trait::async_trait]
    impl Dataplane for Count {
        fn backend(&self) -> &'static str {
            "count"
        }
        async fn apply(&mut self, state: &ProxyState, _: &StateChanges, _: Refresh, _: SyncRequest) -> kproxy_core::Result<Applied> {
            self.0.lock().unwrap().push((self.1, state.services().len()));
            Ok(Applied::default())
        }
        async fn cleanup(&mut self) -> kproxy_core::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn every_family_gets_every_update_and_syncs() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut fan = FanOut::new();
        for family in [IpFamily::V4, IpFamily::V6] {
            let proxier = StateProxier::new(ProxyState::new(family, "node-a"), Count(Arc::clone(&seen), family));
            fan.add(family, Box::new(proxier), RunnerConfig::default()).unwrap();
        }
        fan.start(|_| ());
        assert_eq!(fan.families(), [IpFamily::V4, IpFamily::V6]);
        let dual = kproxy_oracle::fixtures::service("ns", "web", &["172.30.0.1", "fd00::1"]).port("p", 80, "TCP", 0).build();
        fan.send(&[Update::Service { previous: None, current: Some(Arc::new(dual)) }, Update::ServicesSynced, Update::EndpointSlicesSynced]).await;
        // A generous bound: judged is whether both synced, not how fast.
        for _ in 0..3000 {
            if fan.all_synced() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(fan.all_synced(), "both families synced");
        let mut seen = seen.lock().unwrap().clone();
        seen.sort_by_key(|(f, _)| *f == IpFamily::V6);
        assert_eq!(seen, [(IpFamily::V4, 1), (IpFamily::V6, 1)], "each family proxies its own address of the Service");
    }
}
