//! kproxy's hooks on kproxy-agent's post-sync observer (which does the
//! conntrack cleanup and the log line): upstream's metrics and the
//! health-check NodePorts.

use std::sync::Arc;
use std::time::Duration;

use kproxy_agent::observer::SyncHooks;
use kproxy_core::runner::SyncEvent;
use kproxy_core::{IpFamily, SyncReport};

use crate::metrics::Metrics;
use kproxy_agent::health::HealthCheckServers;

/// The binary's [`SyncHooks`]: metrics and health-check NodePorts.
#[derive(Debug, Clone)]
pub struct Hooks {
    /// Upstream's metrics.
    pub metrics: Arc<Metrics>,
    /// The health-check NodePort servers.
    pub health_checks: Arc<HealthCheckServers>,
}

impl SyncHooks for Hooks {
    fn synced(&self, family: IpFamily, event: &SyncEvent<'_>) {
        self.metrics.observe(family, event);
    }

    fn reported(&self, family: IpFamily, report: &SyncReport) {
        self.health_checks.update(family, &report.health_checks);
    }

    fn conntrack_cleaned(&self, family: IpFamily, took: Duration, deleted: usize) {
        self.metrics.conntrack_cleaned(family, took, deleted);
    }
}
