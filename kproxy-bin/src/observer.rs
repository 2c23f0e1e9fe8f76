//! What happens after each sync: metrics, health-check NodePorts, the
//! conntrack cleanup, and a log line.

use std::sync::Arc;
use std::time::Instant;

use kproxy_core::runner::SyncEvent;
use kproxy_core::{IpFamily, SyncReport};
use kproxy_netfilter::Conntrack;

use crate::metrics::Metrics;
use crate::servers::HealthChecks;

/// The runner's observer for one IP family.
#[derive(Debug)]
pub struct SyncObserver {
    family: IpFamily,
    metrics: Arc<Metrics>,
    health_checks: Arc<HealthChecks>,
    /// None where conntrack cannot be reached (no privileges): stale flows then time out on their own.
    conntrack: Option<Conntrack>,
}

impl SyncObserver {
    /// An observer that cleans conntrack in the process's own network
    /// namespace.
    pub fn new(family: IpFamily, metrics: Arc<Metrics>, health_checks: Arc<HealthChecks>) -> Self {
        let conntrack = Conntrack::open()
            .inspect_err(|e| tracing::warn!(%family, error = %e, "conntrack unavailable; stale UDP flows will only time out"))
            .ok();
        SyncObserver { family, metrics, health_checks, conntrack }
    }

    /// Handles one sync's outcome.
    pub fn observe(&mut self, event: &SyncEvent<'_>) {
        let family = self.family;
        self.metrics.observe(family, event);
        match event.result {
            Ok(report) => {
                self.health_checks.update(family, &report.health_checks);
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
                self.metrics.conntrack_cleaned(family, started.elapsed(), r.deleted);
                if r.stale > 0 {
                    tracing::debug!(%family, examined = r.examined, deleted = r.deleted, "deleted stale conntrack entries");
                }
            }
            Err(e) => tracing::warn!(%family, error = %e, "conntrack cleanup failed; it is retried after the next sync that needs it"),
        }
    }
}
