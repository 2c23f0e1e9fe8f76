//! When to sync: a token bucket for `minSyncPeriod` with bursts, the periodic
//! resync, and retry backoff. Pure logic over instants, so it is tested
//! without a clock.

use std::time::Duration;

use tokio::time::Instant;

/// Timing settings of the sync runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunnerConfig {
    /// At most one sync per this period on average (`minSyncPeriod`).
    pub min_sync_period: Duration,
    /// A full resync at least this often (`syncPeriod`).
    pub sync_period: Duration,
    /// How many syncs may run back to back before `min_sync_period` applies.
    pub burst: u32,
}

impl Default for RunnerConfig {
    /// Upstream's defaults: minSyncPeriod 1s, syncPeriod 30s, burst 2.
    fn default() -> Self {
        RunnerConfig {
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
            burst: 2,
        }
    }
}

/// The runner's timing state.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    config: RunnerConfig,
    tokens: f64,
    refilled_at: Instant,
    next_full: Instant,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Schedule {
    pub(crate) fn new(config: RunnerConfig, now: Instant) -> Self {
        Schedule {
            config,
            tokens: f64::from(config.burst.max(1)),
            refilled_at: now,
            next_full: now + config.sync_period,
            retry_at: None,
            backoff: initial_backoff(config),
        }
    }

    /// The earliest time a sync may run, given whether changes are pending;
    /// `None` means "only when something happens".
    pub(crate) fn next_sync(&mut self, now: Instant, dirty: bool) -> Option<Instant> {
        self.refill(now);
        let wanted = if dirty || self.retry_at.is_some() {
            now.min(self.next_full)
        } else {
            self.next_full
        };
        let wanted = self.retry_at.map_or(wanted, |r| wanted.max(r));
        Some(wanted.max(self.token_time(now)))
    }

    /// Whether the sync that runs now should be full (periodic or retry).
    pub(crate) fn full_due(&self, now: Instant) -> bool {
        now >= self.next_full || self.retry_at.is_some()
    }

    /// Records a sync that started at `started`, whether it was `full`, and
    /// its outcome. Only a full sync puts the next one off: partial syncs,
    /// however frequent, never delay the periodic full sync (and its
    /// repair of changes made from outside) past `sync_period`.
    pub(crate) fn record(&mut self, started: Instant, full: bool, ok: bool) {
        self.refill(started);
        self.tokens = (self.tokens - 1.0).max(0.0);
        if ok {
            self.retry_at = None;
            self.backoff = initial_backoff(self.config);
            if full {
                self.next_full = started + self.config.sync_period;
            }
        } else {
            self.retry_at = Some(started + self.backoff);
            self.backoff = (self.backoff * 2).min(self.config.sync_period.max(initial_backoff(self.config)));
        }
    }

    fn refill(&mut self, now: Instant) {
        let min = self.config.min_sync_period;
        let cap = f64::from(self.config.burst.max(1));
        if min.is_zero() {
            self.tokens = cap;
        } else {
            let earned = now.saturating_duration_since(self.refilled_at).as_secs_f64() / min.as_secs_f64();
            self.tokens = (self.tokens + earned).min(cap);
        }
        self.refilled_at = now;
    }

    /// When the next whole token is available.
    fn token_time(&self, now: Instant) -> Instant {
        if self.tokens >= 1.0 || self.config.min_sync_period.is_zero() {
            now
        } else {
            now + self.config.min_sync_period.mul_f64(1.0 - self.tokens)
        }
    }
}

fn initial_backoff(config: RunnerConfig) -> Duration {
    config.min_sync_period.max(Duration::from_millis(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn schedule() -> (Schedule, Instant) {
        let now = Instant::now();
        let config = RunnerConfig {
            min_sync_period: S,
            sync_period: 30 * S,
            burst: 2,
        };
        (Schedule::new(config, now), now)
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_two_then_one_per_min_sync_period() {
        let (mut s, t0) = schedule();
        assert_eq!(s.next_sync(t0, true), Some(t0));
        s.record(t0, true, true);
        assert_eq!(s.next_sync(t0, true), Some(t0), "second sync of the burst");
        s.record(t0, true, true);
        assert_eq!(s.next_sync(t0, true), Some(t0 + S), "bucket empty: wait one period");
    }

    #[tokio::test(start_paused = true)]
    async fn periodic_full_resync_without_changes() {
        let (mut s, t0) = schedule();
        s.record(t0, true, true);
        assert_eq!(s.next_sync(t0, false), Some(t0 + 30 * S));
        assert!(!s.full_due(t0 + 29 * S));
        assert!(s.full_due(t0 + 30 * S));
    }

    #[tokio::test(start_paused = true)]
    async fn partial_syncs_never_put_off_the_periodic_full_sync() {
        let (mut s, t0) = schedule();
        s.record(t0, true, true);
        // A change every second: each sync is partial until syncPeriod.
        for i in 1..30 {
            let t = t0 + i * S;
            assert!(!s.full_due(t), "{i} s");
            assert_eq!(s.next_sync(t, true), Some(t));
            s.record(t, false, true);
        }
        assert!(s.full_due(t0 + 30 * S), "the full sync is due after syncPeriod however busy");
        s.record(t0 + 30 * S, true, true);
        assert!(!s.full_due(t0 + 31 * S));
        assert!(s.full_due(t0 + 60 * S));
        // With nothing changing, the next sync is the periodic one.
        assert_eq!(s.next_sync(t0 + 31 * S, false), Some(t0 + 60 * S));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_up_to_the_sync_period() {
        let (mut s, t0) = schedule();
        let mut t = t0;
        let mut waits = Vec::new();
        for _ in 0..8 {
            s.record(t, true, false);
            let next = s.next_sync(t, true).unwrap();
            waits.push((next - t).as_secs());
            assert!(s.full_due(next), "a retry is a full sync");
            t = next;
        }
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        s.record(t, true, true);
        assert!(!s.full_due(t));
    }
}
