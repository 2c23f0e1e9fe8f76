//! What happens after each sync, whoever runs the proxier: the conntrack
//! cleanup the sync's report asks for, and the embedder's [`SyncHooks`]
//! (metrics, health-check NodePorts), then a log line.

use std::time::{Duration, Instant};

use kproxy_core::runner::SyncEvent;
use kproxy_core::{IpFamily, SyncReport};
use kproxy_netfilter::Conntrack;

/// What an embedder does with each sync's outcome. Every method has a
/// default that does nothing.
pub trait SyncHooks: Send {
    /// Every sync, successful or not (metrics).
    fn synced(&self, family: IpFamily, event: &SyncEvent<'_>) {
        let _ = (family, event);
    }

    /// A successful sync's report, before the conntrack cleanup (serve its
    /// `health_checks`, for instance).
    fn reported(&self, family: IpFamily, report: &SyncReport) {
        let _ = (family, report);
    }

    /// A conntrack cleanup ran: how long it took and how many entries it
    /// deleted.
    fn conntrack_cleaned(&self, family: IpFamily, took: Duration, deleted: usize) {
        let _ = (family, took, deleted);
    }
}

/// No hooks: the conntrack cleanup and the log line only.
impl SyncHooks for () {}

/// The runner's observer for one IP family: pass
/// `|event| observer.observe(event)` to
/// [`SyncRunner::run_stream`](kproxy_core::runner::SyncRunner::run_stream).
#[derive(Debug)]
pub struct SyncObserver<H> {
    family: IpFamily,
    hooks: H,
    /// None where conntrack cannot be reached (no privileges): stale flows
    /// then time out on their own.
    conntrack: Option<Conntrack>,
}

impl<H: SyncHooks> SyncObserver<H> {
    /// An observer that cleans conntrack in the process's own network
    /// namespace (or the calling thread's) and calls `hooks`.
    pub fn new(family: IpFamily, hooks: H) -> Self {
        let conntrack = Conntrack::open()
            .inspect_err(|e| tracing::warn!(%family, error = %e, "conntrack unavailable; stale UDP flows will only time out"))
            .ok();
        SyncObserver { family, hooks, conntrack }
    }

    /// Handles one sync's outcome.
    pub fn observe(&mut self, event: &SyncEvent<'_>) {
        let family = self.family;
        self.hooks.synced(family, event);
        match event.result {
            Ok(report) => {
                self.hooks.reported(family, report);
                self.clean_conntrack(report);
                // A sync summary: upstream logs it at -v=2.
                tracing::debug!(
                    %family,
                    full = event.full,
                    changed = report.changes.updated_services().len(),
                    duration_ms = event.duration.as_secs_f64() * 1000.0,
                    "synced"
                );
            }
            Err(e) => tracing::warn!(%family, error = %e, "sync failed"),
        }
    }

    /// Deletes the conntrack entries the sync left stale (after the rules
    /// are in place, so the next packet of each flow finds a live
    /// endpoint).
    fn clean_conntrack(&mut self, report: &SyncReport) {
        let (Some(conntrack), Some(filter)) = (self.conntrack.as_mut(), report.stale_flows.as_ref()) else { return };
        let family = self.family;
        let started = Instant::now();
        match conntrack.clean(family, filter) {
            Ok(r) => {
                self.hooks.conntrack_cleaned(family, started.elapsed(), r.deleted);
                if r.stale > 0 {
                    tracing::debug!(%family, examined = r.examined, deleted = r.deleted, "deleted stale conntrack entries");
                }
            }
            Err(e) => tracing::warn!(%family, error = %e, "conntrack cleanup failed; it is retried after the next sync that needs it"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Default, Clone)]
    struct Calls(Arc<Mutex<Vec<String>>>);

    impl SyncHooks for Calls {
        fn synced(&self, family: IpFamily, event: &SyncEvent<'_>) {
            self.0.lock().unwrap().push(format!("synced {family} ok={}", event.result.is_ok()));
        }
        fn reported(&self, family: IpFamily, report: &SyncReport) {
            self.0.lock().unwrap().push(format!("reported {family} full={}", report.full));
        }
    }

    #[test]
    fn hooks_see_every_sync_and_reports_only_of_good_ones() {
        let calls = Calls::default();
        let mut observer = SyncObserver::new(IpFamily::V6, calls.clone());
        let started = tokio::time::Instant::now();
        let good: kproxy_core::Result<SyncReport> = Ok(SyncReport::new(true, Default::default()));
        observer.observe(&SyncEvent { started, duration: Duration::ZERO, full: true, result: &good });
        let bad: kproxy_core::Result<SyncReport> = Err(kproxy_core::Error::sync("test", "refused", None));
        observer.observe(&SyncEvent { started, duration: Duration::ZERO, full: false, result: &bad });
        assert_eq!(*calls.0.lock().unwrap(), ["synced IPv6 ok=true", "reported IPv6 full=true", "synced IPv6 ok=false"]);
    }
}
