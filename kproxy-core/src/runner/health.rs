//! The sync health signal behind `/healthz` and `/livez`.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// Tracks when the dataplane was last programmed and whether an update has
/// waited too long, with upstream's rule: unhealthy only while an update has
/// been pending for longer than the timeout (2 × syncPeriod by default).
#[derive(Debug)]
pub struct SyncHealth {
    timeout: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Inner {
    last_updated: Option<(Instant, SystemTime)>,
    oldest_queued: Option<Instant>,
}

/// A point-in-time view of [`SyncHealth`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSnapshot {
    /// Wall-clock time of the last successful sync.
    pub last_updated: Option<SystemTime>,
    /// How long the oldest unsynced update has waited.
    pub pending_for: Option<Duration>,
    /// Whether the proxy counts as healthy.
    pub healthy: bool,
}

impl SyncHealth {
    /// A health signal that turns unhealthy when an update waits longer than
    /// `timeout`.
    pub fn new(timeout: Duration) -> Self {
        SyncHealth {
            timeout,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// An update is waiting for a sync (only the oldest counts).
    pub fn queued(&self, now: Instant) {
        let mut inner = self.lock();
        inner.oldest_queued.get_or_insert(now);
    }

    /// A sync succeeded: nothing is pending any more.
    pub fn updated(&self, now: Instant) {
        let mut inner = self.lock();
        inner.last_updated = Some((now, SystemTime::now()));
        inner.oldest_queued = None;
    }

    /// The state as of `now`.
    pub fn snapshot(&self, now: Instant) -> HealthSnapshot {
        let inner = *self.lock();
        let pending_for = inner.oldest_queued.map(|q| now.saturating_duration_since(q));
        HealthSnapshot {
            last_updated: inner.last_updated.map(|(_, wall)| wall),
            pending_for,
            healthy: pending_for.is_none_or(|p| p < self.timeout),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere; the data is plain.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn unhealthy_only_when_an_update_waits_past_the_timeout() {
        let h = SyncHealth::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(h.snapshot(t0).healthy, "healthy while starting up");
        h.queued(t0);
        assert!(h.snapshot(t0 + Duration::from_secs(59)).healthy);
        h.queued(t0 + Duration::from_secs(30));
        let late = h.snapshot(t0 + Duration::from_secs(61));
        assert!(!late.healthy, "the oldest queued update counts");
        h.updated(t0 + Duration::from_secs(62));
        let s = h.snapshot(t0 + Duration::from_secs(500));
        assert!(s.healthy && s.last_updated.is_some() && s.pending_for.is_none());
    }
}
