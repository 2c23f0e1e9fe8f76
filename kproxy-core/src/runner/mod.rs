//! The sync runner: feeds updates to a [`Proxier`] and decides when it syncs.
//!
//! One task owns the proxier, so handlers and syncs never race and need no
//! lock. Watchers (or a manifest reader) send [`Update`]s over a channel.

mod health;
mod schedule;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

pub use health::{HealthSnapshot, SyncHealth};
pub use schedule::RunnerConfig;
use schedule::Schedule;

use crate::proxier::{Proxier, SyncReport, SyncRequest};
use crate::{Error, Result};

/// One event for the runner. Objects are shared (`Arc`): a source that
/// feeds several proxiers (one per IP family) and keeps its own cache
/// holds one copy of each.
#[derive(Debug, Clone)]
pub enum Update {
    /// A Service was added (`previous` None), changed, or deleted (`current`
    /// None).
    Service {
        /// The object before the event. Proxiers built on
        /// [`ProxyState`](crate::ProxyState) read only its namespace and
        /// name (for a deletion), so a source may keep and send a
        /// skeleton.
        previous: Option<Arc<Service>>,
        /// The object after the event.
        current: Option<Arc<Service>>,
    },
    /// An EndpointSlice was added or changed, or deleted (`removed`).
    EndpointSlice {
        /// The slice (its last state, for a deletion).
        slice: Arc<EndpointSlice>,
        /// Whether it was deleted.
        removed: bool,
    },
    /// The node's own Node object.
    Node(Arc<Node>),
    /// Every range of every ServiceCIDR object, after any of them changed.
    ServiceCidrs(Arc<Vec<IpNet>>),
    /// The initial Service list has been delivered in full.
    ServicesSynced,
    /// The initial EndpointSlice list has been delivered in full.
    EndpointSlicesSynced,
}

/// The outcome of one sync, handed to the runner's observer.
#[derive(Debug)]
pub struct SyncEvent<'a> {
    /// When the sync started.
    pub started: Instant,
    /// How long it took.
    pub duration: Duration,
    /// Whether it was a full sync.
    pub full: bool,
    /// What it did, or why it failed.
    pub result: &'a Result<SyncReport>,
}

/// Runs a proxier: bounded-frequency syncing as upstream does it.
///
/// - No sync before both initial lists are complete.
/// - At most `burst` syncs back to back, then one per `min_sync_period`.
/// - A full resync `sync_period` after the last full one, with or without
///   changes, however many partial syncs came between.
/// - After a failed sync, a full retry with exponential backoff (from
///   `min_sync_period` up to `sync_period`).
/// - A [`SyncHealth`] signal: unhealthy while an update has been pending for
///   more than 2 × `sync_period`.
#[derive(Debug)]
pub struct SyncRunner {
    config: RunnerConfig,
    health: Arc<SyncHealth>,
}

impl SyncRunner {
    /// A runner with these timings.
    pub fn new(config: RunnerConfig) -> Result<Self> {
        if config.sync_period.is_zero() {
            return Err(Error::InvalidRunnerSetting("syncPeriod must be greater than zero".into()));
        }
        if config.min_sync_period > config.sync_period {
            return Err(Error::InvalidRunnerSetting(format!(
                "minSyncPeriod ({:?}) is longer than syncPeriod ({:?})",
                config.min_sync_period, config.sync_period
            )));
        }
        Ok(SyncRunner {
            config,
            health: Arc::new(SyncHealth::new(config.sync_period * 2)),
        })
    }

    /// The health signal, to share with a health server.
    pub fn health(&self) -> Arc<SyncHealth> {
        Arc::clone(&self.health)
    }

    /// Runs until `updates` closes (see [`SyncRunner::run_stream`]).
    pub async fn run<P, F>(&self, proxier: &mut P, updates: mpsc::Receiver<Update>, observe: F) -> Result<()>
    where
        P: Proxier + ?Sized,
        F: FnMut(&SyncEvent<'_>) + Send,
    {
        self.run_stream(proxier, ChannelStream(updates), observe).await
    }

    /// Runs until `updates` ends. `observe` sees every sync's outcome (for
    /// metrics, logs and conntrack cleanup). When the stream ends, pending
    /// changes are synced before it returns (once both initial lists are
    /// in). While an initial list is missing after
    /// [`INITIAL_LISTS_WARNING`], a warning names what is missing.
    pub async fn run_stream<P, F, S>(&self, proxier: &mut P, mut updates: S, mut observe: F) -> Result<()>
    where
        P: Proxier + ?Sized,
        F: FnMut(&SyncEvent<'_>) + Send,
        S: Stream<Item = Update> + Unpin,
    {
        let mut schedule = Schedule::new(self.config, Instant::now());
        let (mut services_synced, mut slices_synced) = (false, false);
        // The first sync is owed as soon as both lists are in, changes or not.
        let mut synced_once = false;
        let mut dirty = true;
        let mut warn_at = Some(Instant::now() + INITIAL_LISTS_WARNING);
        loop {
            let ready = services_synced && slices_synced;
            let deadline = if ready { schedule.next_sync(Instant::now(), dirty) } else { None };
            let warning = warn_at.filter(|_| !ready);
            tokio::select! {
                biased;
                update = next(&mut updates) => {
                    let Some(update) = update else {
                        if ready && dirty {
                            self.sync_once(proxier, &mut schedule, &mut synced_once, &mut observe).await;
                        } else if !ready {
                            tracing::warn!(missing = %missing(services_synced, slices_synced), "the update stream ended before the initial lists were complete; nothing was synced");
                        }
                        return Ok(());
                    };
                    let changed = match update {
                        Update::Service { previous, current } => {
                            proxier.on_service_update(previous.as_deref(), current.as_deref())
                        }
                        Update::EndpointSlice { slice, removed } => proxier.on_endpoint_slice_update(&slice, removed),
                        Update::Node(node) => proxier.on_node_update(&node),
                        Update::ServiceCidrs(cidrs) => proxier.on_service_cidrs_update(&cidrs),
                        Update::ServicesSynced => { services_synced = true; false }
                        Update::EndpointSlicesSynced => { slices_synced = true; false }
                    };
                    dirty = dirty || changed;
                    if dirty && services_synced && slices_synced {
                        self.health.queued(Instant::now());
                    }
                }
                _ = sleep_until(warning.unwrap_or_else(far_future)), if warning.is_some() => {
                    tracing::warn!(missing = %missing(services_synced, slices_synced), "the initial lists are not complete after {}s; nothing is synced until they are", INITIAL_LISTS_WARNING.as_secs());
                    warn_at = Some(Instant::now() + INITIAL_LISTS_WARNING);
                }
                _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                    if self.sync_once(proxier, &mut schedule, &mut synced_once, &mut observe).await {
                        dirty = false;
                    }
                }
            }
        }
    }

    /// One sync, recorded in the schedule and the health signal and shown
    /// to `observe`; true when it succeeded.
    async fn sync_once<P, F>(&self, proxier: &mut P, schedule: &mut Schedule, synced_once: &mut bool, observe: &mut F) -> bool
    where
        P: Proxier + ?Sized,
        F: FnMut(&SyncEvent<'_>) + Send,
    {
        let started = Instant::now();
        let full = !*synced_once || schedule.full_due(started);
        let result = proxier.sync(SyncRequest { full }).await;
        let duration = started.elapsed();
        schedule.record(started, full, result.is_ok());
        let ok = result.is_ok();
        match &result {
            Ok(_) => {
                *synced_once = true;
                self.health.updated(Instant::now());
            }
            Err(e) => tracing::warn!(backend = proxier.backend(), error = %e, "sync failed; retrying with backoff"),
        }
        observe(&SyncEvent { started, duration, full, result: &result });
        ok
    }
}

/// How long the runner waits for both initial lists before it warns (and
/// again as often while they stay incomplete).
pub const INITIAL_LISTS_WARNING: Duration = Duration::from_secs(60);

/// The initial-list markers not yet received, by name.
pub fn missing(services_synced: bool, slices_synced: bool) -> String {
    let names: Vec<&str> = [(services_synced, "ServicesSynced"), (slices_synced, "EndpointSlicesSynced")].into_iter().filter(|(done, _)| !done).map(|(_, n)| n).collect();
    names.join(", ")
}

/// A tokio channel's receiver as a [`Stream`].
#[derive(Debug)]
struct ChannelStream(mpsc::Receiver<Update>);

impl Stream for ChannelStream {
    type Item = Update;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Update>> {
        self.0.poll_recv(cx)
    }
}

/// The next item of `stream`.
async fn next<S: Stream<Item = Update> + Unpin>(stream: &mut S) -> Option<Update> {
    std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
