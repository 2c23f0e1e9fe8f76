//! [`IpvsProxier`]: the IPVS backend behind the `Proxier` contract.
//!
//! A sync renders the desired virtual servers, dummy-interface addresses
//! and ipsets from the applied state, then brings the kernel there:
//! addresses added, sets that changed rewritten (ipset commands over
//! netlink),
//! the iptables ruleset written when it may be missing (it does not depend
//! on the Services), the IPVS table diffed against what the kernel reports
//! and the difference sent as one batch of netlink messages, and stale
//! addresses removed. A partial sync looks only at the virtual servers of
//! the Services that changed and those still draining; a full one (the
//! first, after a node change or a failure, and the periodic ones) looks at
//! everything and repairs drift.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use async_trait::async_trait;
use ipnet::IpNet;
use kproxy_backend_iptables::render::Chains;
use kproxy_backend_iptables::Table;
use kproxy_core::skeleton::{Applied, Dataplane, Refresh, StateProxier};
use kproxy_core::{Error, IpFamily, NamespacedName, ProxierConfig, ProxyState, Result, StateChanges, SyncRequest};

use crate::diff::diff;
use crate::kernel::{IpvsKernel, KernelError};
use crate::model::{Scheduler, Timeouts, VsKey};
use crate::incremental::{Journal, Renderer};
use crate::render::{DesiredIpvs, DesiredService};
use crate::rules::{out_filter_rules, render_chains, restore_text, IPVS_OUT_FILTER};
use crate::sets::{all_sets, entry_commands, restore_commands};

const BACKEND: &str = "ipvs";

/// Tuning knobs of the IPVS backend (`ipvs.*` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsOptions {
    /// The scheduler of every virtual server (`ipvs.scheduler`).
    pub scheduler: Scheduler,
    /// Set `arp_ignore=1` and `arp_announce=2` so the node does not answer
    /// ARP for the addresses on the dummy interface (`ipvs.strictARP`).
    pub strict_arp: bool,
    /// IPVS connection timeouts; 0 leaves one unchanged.
    pub timeouts: Timeouts,
    /// Virtual servers inside these ranges are someone else's: never
    /// deleted (`ipvs.excludeCIDRs`).
    pub exclude_cidrs: Vec<IpNet>,
    /// The dummy interface holding the service addresses.
    pub device: String,
}

impl Default for IpvsOptions {
    fn default() -> Self {
        IpvsOptions { scheduler: Scheduler::Rr, strict_arp: false, timeouts: Timeouts::default(), exclude_cidrs: Vec::new(), device: DEVICE.to_string() }
    }
}

/// Upstream's dummy interface.
pub const DEVICE: &str = "kube-ipvs0";

/// What the last sync sent to the kernel (for benchmarks and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// IPVS messages sent (one per operation).
    pub ipvs_messages: usize,
    /// Virtual servers whose real servers were listed.
    pub dumped_services: usize,
    /// Sets rewritten.
    pub sets_written: usize,
    /// Whether the iptables ruleset was written.
    pub rules_written: bool,
    /// Addresses added to and removed from the dummy interface.
    pub addresses_changed: usize,
    /// Real servers left draining.
    pub draining: usize,
}

/// A configuration the backend cannot program (the same for every backend).
pub use kproxy_core::InvalidConfig as ConfigError;

/// The IPVS backend for one IP family: a [`StateProxier`] over
/// [`IpvsDataplane`].
pub type IpvsProxier<K> = StateProxier<IpvsDataplane<K>>;

/// The IPVS backend's own part: rendering and the kernel.
#[derive(Debug)]
pub struct IpvsDataplane<K: IpvsKernel> {
    config: ProxierConfig,
    options: IpvsOptions,
    kernel: K,
    chains: (Chains, Chains),
    renderer: Renderer,
    /// Whether the kernel holds what the last sync wrote.
    trusted: bool,
    started: bool,
    draining: BTreeSet<VsKey>,
    stats: SyncStats,
}

impl<K: IpvsKernel + 'static> IpvsDataplane<K> {
    /// A proxier for `config.family` on node `node_name`, programming `kernel`.
    pub fn proxier(node_name: &str, config: ProxierConfig, kernel: K, options: IpvsOptions) -> Result<IpvsProxier<K>, ConfigError> {
        config.validate()?;
        let state = ProxyState::new(config.family, node_name);
        Ok(StateProxier::new(state, IpvsDataplane {
            chains: render_chains(&config),
            renderer: Renderer::new(config.clone(), options.scheduler),
            config,
            options,
            kernel,
            trusted: false,
            started: false,
            draining: BTreeSet::new(),
            stats: SyncStats::default(),
        }))
    }
}

impl<K: IpvsKernel> IpvsDataplane<K> {
    /// The kernel this proxier programs (for tests and tools).
    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// Mutable access to the kernel (for tests that simulate drift).
    pub fn kernel_mut(&mut self) -> &mut K {
        &mut self.kernel
    }

    /// The desired IPVS side, as last rendered.
    pub fn desired(&self) -> DesiredIpvs {
        self.renderer.desired()
    }

    /// The renderer (for tests and tools).
    pub fn renderer(&self) -> &Renderer {
        &self.renderer
    }

    /// What the last successful sync sent.
    pub fn stats(&self) -> SyncStats {
        self.stats
    }

    fn family(&self) -> IpFamily {
        self.config.family
    }

    /// What only the first sync does: sysctls and timeouts.
    async fn start(&mut self) -> Result<(), KernelError> {
        let v = if self.family() == IpFamily::V4 { "ipv4" } else { "ipv6" };
        // IPVS's connections must go through conntrack (masquerade and
        // the conntrack cleanup need it); the other two make a removed
        // real server's connections fail fast instead of hanging.
        for key in ["net/ipv4/vs/conntrack", "net/ipv4/vs/expire_nodest_conn", "net/ipv4/vs/expire_quiescent_template"] {
            self.kernel.sysctl(key, "1").await?;
        }
        if self.options.strict_arp {
            self.kernel.sysctl("net/ipv4/conf/all/arp_ignore", "1").await?;
            self.kernel.sysctl("net/ipv4/conf/all/arp_announce", "2").await?;
        }
        if self.options.timeouts != Timeouts::default() {
            self.kernel.ipvs_timeouts(self.options.timeouts).await?;
        }
        tracing::debug!(family = v, scheduler = %self.options.scheduler, "IPVS proxier started");
        Ok(())
    }

    /// Whether kproxy may delete this virtual server.
    fn owned(&self, key: &VsKey) -> bool {
        self.family().contains(key.addr) && !self.options.exclude_cidrs.iter().any(|n| n.contains(&key.addr))
    }

    /// The IPVS step of a sync: the whole table on a full sync; otherwise
    /// the virtual servers that changed and those with draining real
    /// servers.
    async fn apply_virtual_servers(&mut self, full: bool, journal: &Journal, stats: &mut SyncStats) -> Result<(), KernelError> {
        let family = self.family();
        let (current, wanted) = if full {
            (self.kernel.ipvs_table(family, None).await?, self.renderer.services())
        } else {
            let keys: BTreeSet<VsKey> = journal.services.iter().chain(&self.draining).copied().collect();
            let current = self.kernel.ipvs_table(family, Some(&keys)).await?;
            let wanted: BTreeMap<VsKey, DesiredService> = keys.iter().filter_map(|k| Some((*k, self.renderer.service(k)?.clone()))).collect();
            let current = current.into_iter().filter(|(k, _)| keys.contains(k)).collect();
            (current, wanted)
        };
        stats.dumped_services = current.len();
        let plan = diff(&current, &wanted, |k| self.owned(k));
        // A draining server's virtual server is looked at until it is gone.
        self.draining = plan.draining.iter().map(|(k, _)| *k).collect();
        stats.draining = plan.draining.len();
        let (sent, refused) = self.kernel.ipvs_apply(&plan.ops).await?;
        stats.ipvs_messages = sent;
        if let Some((op, e)) = refused.first() {
            return Err(KernelError::Refused { count: refused.len(), total: sent, first: format!("{op:?}: {e}") });
        }
        Ok(())
    }

    async fn write(&mut self, full: bool, journal: Journal) -> Result<SyncStats, KernelError> {
        let mut stats = SyncStats::default();
        // The process's first sync may take the node over from iptables
        // mode (kproxy's or upstream's), whose DNAT rules live in the
        // chains this sync rewrites: the virtual servers go in before
        // those rules, so no new connection meets a bound address with no
        // virtual server behind it (refused). Later syncs write the
        // rules first, so a VIP the node may not reach is blocked before
        // it serves.
        let first = !self.started;
        if first {
            self.start().await?;
            self.started = true;
        }
        let device = self.options.device.clone();
        let family = self.family();

        // Addresses first, so a new virtual server works at once; stale
        // ones go last.
        let (add, remove): (Vec<IpAddr>, Vec<IpAddr>) = if full {
            let bound: BTreeSet<IpAddr> = self.kernel.bound_addresses(&device).await?.into_iter().filter(|ip| family.contains(*ip)).collect();
            let desired = self.renderer.addresses();
            (desired.difference(&bound).copied().collect(), bound.difference(&desired).copied().collect())
        } else {
            let pick = |want: bool| journal.addresses.iter().filter(|(_, a)| **a == want).map(|(ip, _)| *ip).collect();
            (pick(true), pick(false))
        };
        self.kernel.rebind(&device, &add, &[]).await?;

        // Sets before rules: a rule may name a set only once it exists. A
        // full sync rewrites every set (each swapped in whole); a partial
        // one adds and deletes entries in place.
        let commands = if full {
            stats.sets_written = all_sets().len();
            restore_commands(&self.renderer.sets(), family)
        } else {
            stats.sets_written = journal.entries.keys().map(|(set, _)| *set).collect::<BTreeSet<_>>().len();
            entry_commands(&journal.entries, family)
        };
        self.kernel.ipsets(&commands).await?;

        if first {
            self.apply_virtual_servers(full, &journal, &mut stats).await?;
        }

        // The rules: all of them on a full sync (the fixed chains, with
        // KUBE-IPVS-OUT-FILTER filled); otherwise only that chain, when
        // the VIPs the node may not reach changed.
        if full {
            let nat = self.kernel.iptables_list(family, Table::Nat).await?;
            let filter = self.kernel.iptables_list(family, Table::Filter).await?;
            let mut present = nat;
            present.builtin_rules.extend(filter.builtin_rules);
            let mut filter_chains = self.chains.1.clone();
            filter_chains.insert(IPVS_OUT_FILTER.into(), out_filter_rules(&self.renderer.node_blocks()));
            let text = restore_text(&self.chains.0, &filter_chains, &present);
            self.kernel.iptables_restore(family, &text).await?;
            stats.rules_written = true;
        } else if !journal.blocks.is_empty() {
            let chain: Chains = [(IPVS_OUT_FILTER.to_string(), out_filter_rules(&self.renderer.node_blocks()))].into();
            self.kernel.iptables_restore(family, &kproxy_backend_iptables::restore::chains(&[(Table::Filter, &chain)], &[])).await?;
        }

        if !first {
            self.apply_virtual_servers(full, &journal, &mut stats).await?;
        }

        self.kernel.rebind(&device, &[], &remove).await?;
        stats.addresses_changed = add.len() + remove.len();
        Ok(stats)
    }
}

fn kernel_error(e: KernelError) -> Error {
    Error::sync(BACKEND, e.to_string(), Some(Box::new(e)))
}

#[async_trait]
impl<K: IpvsKernel + 'static> Dataplane for IpvsDataplane<K> {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn apply(&mut self, state: &ProxyState, changes: &StateChanges, refresh: Refresh, request: SyncRequest) -> Result<Applied> {
        match refresh {
            Refresh::All => self.renderer.refresh_all(state),
            Refresh::Services(services) => {
                let changed: BTreeSet<NamespacedName> = services.into_iter().collect();
                self.renderer.refresh(state, &changed);
            }
        }
        let journal = self.renderer.take_journal();
        let full = request.full || !self.trusted || changes.node_changed;
        // If a step fails, the kernel may hold part of this sync: the next
        // one looks at everything.
        self.trusted = false;
        self.stats = self.write(full, journal).await.map_err(kernel_error)?;
        self.trusted = true;
        Ok(Applied { full, no_local_endpoints: self.renderer.no_local_endpoints(), ..Applied::default() })
    }

    async fn cleanup(&mut self) -> Result<()> {
        self.cleanup_keeping(&|_| false).await
    }
}

impl<K: IpvsKernel + 'static> IpvsDataplane<K> {
    /// [`Dataplane::cleanup`], except the iptables chains `keep` names:
    /// on a node that now runs iptables mode in the same iptables flavour,
    /// the chains both modes write (`KUBE-SERVICES`, `KUBE-POSTROUTING`,
    /// ...) are iptables mode's and stay. The virtual servers, the dummy
    /// interface and the ipsets go all the same.
    pub async fn cleanup_keeping(&mut self, keep: &(dyn Fn(&str) -> bool + Sync)) -> Result<()> {
        let fail = |e: KernelError| Error::Cleanup { backend: BACKEND, message: e.to_string(), source: Some(Box::new(e)) };
        for family in [IpFamily::V4, IpFamily::V6] {
            let table = self.kernel.ipvs_table(family, None).await.map_err(fail)?;
            let ops: Vec<_> = table.keys().filter(|k| !self.options.exclude_cidrs.iter().any(|n| n.contains(&k.addr))).map(|k| crate::model::Op::DelService(*k)).collect();
            let (_, refused) = self.kernel.ipvs_apply(&ops).await.map_err(fail)?;
            if let Some((op, e)) = refused.first() {
                return Err(fail(KernelError::Refused { count: refused.len(), total: ops.len(), first: format!("{op:?}: {e}") }));
            }
            let mut listings = Vec::new();
            for table in Table::ALL {
                listings.push((table, self.kernel.iptables_list(family, table).await.map_err(fail)?));
            }
            let text = crate::rules::cleanup_text(&listings, keep);
            if !text.is_empty() {
                self.kernel.iptables_restore(family, &text).await.map_err(fail)?;
            }
        }
        self.kernel.delete_device(&self.options.device).await.map_err(fail)?;
        self.kernel.ipsets(&crate::sets::destroy_commands()).await.map_err(fail)?;
        self.trusted = false;
        self.started = false;
        Ok(())
    }
}
