//! [`IptablesProxier`]: the iptables backend behind the `Proxier` contract.
//!
//! A sync re-renders only the Services that changed and sends one
//! `iptables-restore --noflush` that rewrites just their chains and swaps
//! just their rules in the shared chains (a partial sync). A full restore
//! (every kproxy chain rewritten, stale service chains deleted, missing
//! jumps from the built-in chains put back) runs on the first sync, after a
//! node change or a failed restore, and when a periodic sync finds the
//! kernel differing from what was written (a chain flushed, deleted or
//! edited by someone else), or every `full_restore_every` periodic syncs.

use std::collections::BTreeSet;

use async_trait::async_trait;
use kproxy_core::skeleton::{Applied, Dataplane, Refresh, StateProxier};
use kproxy_core::{Error, IpFamily, ProxierConfig, ProxyState, Result, StateChanges, SyncRequest};

use crate::kernel::{Kernel, KernelError};
use crate::names;
use crate::render::{jumps_for, Jump, Renderer, Table};
use crate::restore::{self, Stale};

const BACKEND: &str = "iptables";

/// Tuning knobs of the iptables backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IptablesOptions {
    /// Every this many periodic (full) sync requests, rewrite everything
    /// even without detected drift. 0 never forces one.
    pub full_restore_every: u32,
    /// Serve NodePorts on 127.0.0.1 (IPv4 only; `localhostNodePorts`),
    /// with upstream's localnet safeguard rule. The caller decides it
    /// (upstream: on, when the IPv4 NodePort ranges hold loopback) and
    /// sets `net.ipv4.conf.all.route_localnet=1`. Off in the library's
    /// default, which serves no NodePort on loopback unless asked.
    pub localhost_node_ports: bool,
    /// conntrack is liberal with out-of-window TCP packets
    /// (`nf_conntrack_tcp_be_liberal` reads 1): no INVALID drop rule in
    /// `KUBE-FORWARD`, as upstream.
    pub tcp_be_liberal: bool,
    /// upstream's two nfacct counters exist ([`crate::names::NFACCT_INVALID_DROPPED`],
    /// [`crate::names::NFACCT_LOCALHOST_NODEPORTS`]; the caller creates
    /// them): the INVALID drop and localhost NodePorts count into them.
    pub nfacct: bool,
}

impl Default for IptablesOptions {
    fn default() -> Self {
        // With the default syncPeriod (30 s): hourly, as upstream.
        IptablesOptions { full_restore_every: 120, localhost_node_ports: false, tcp_be_liberal: false, nfacct: false }
    }
}

/// A configuration the backend cannot program (the same for every backend).
pub use kproxy_core::InvalidConfig as ConfigError;

/// The iptables backend for one IP family: a [`StateProxier`] over
/// [`IptablesDataplane`].
pub type IptablesProxier<K> = StateProxier<IptablesDataplane<K>>;

/// The iptables backend's own part: rendering and the kernel.
#[derive(Debug)]
pub struct IptablesDataplane<K: Kernel> {
    config: ProxierConfig,
    renderer: Renderer,
    kernel: K,
    options: IptablesOptions,
    /// Whether the kernel holds what the renderer last produced.
    trusted: bool,
    periodic: u32,
    localnet_safeguard_removed: bool,
    /// Whether the kernel reads rules cheaply (asked once).
    reads_rules: Option<bool>,
    /// Each chain's digest as kproxy left it (iptables-nft only).
    baseline: std::collections::BTreeMap<(Table, String), u64>,
    repaired: u64,
    /// Rules the last successful restore wrote, per table (for metrics).
    written: std::collections::BTreeMap<Table, usize>,
}

impl<K: Kernel + 'static> IptablesDataplane<K> {
    /// A proxier for `config.family` on node `node_name`, programming `kernel`.
    pub fn proxier(node_name: &str, config: ProxierConfig, kernel: K, options: IptablesOptions) -> Result<IptablesProxier<K>, ConfigError> {
        config.validate()?;
        let state = ProxyState::new(config.family, node_name);
        Ok(StateProxier::new(state, IptablesDataplane {
            renderer: Renderer::new(config.clone()).with_options(crate::render::FixedOptions {
                localhost_node_ports: options.localhost_node_ports,
                tcp_be_liberal: options.tcp_be_liberal,
                nfacct: options.nfacct,
            }),
            config,
            kernel,
            options,
            trusted: false,
            periodic: 0,
            localnet_safeguard_removed: false,
            reads_rules: None,
            baseline: std::collections::BTreeMap::new(),
            repaired: 0,
            written: std::collections::BTreeMap::new(),
        }))
    }
}

impl<K: Kernel> IptablesDataplane<K> {
    /// Whether [`Dataplane::cleanup`] removed the localnet safeguard
    /// (`KUBE-FIREWALL`): the caller then sets `route_localnet` back to 0.
    pub fn localnet_safeguard_removed(&self) -> bool {
        self.localnet_safeguard_removed
    }

    /// How many chains found changed from outside were rewritten so far
    /// (iptables-nft; with iptables-legacy every periodic sync rewrites
    /// everything instead).
    pub fn repaired_chains(&self) -> u64 {
        self.repaired
    }

    /// The kernel this proxier programs (for tests and tools).
    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// Mutable access to the kernel (for tests that simulate drift).
    pub fn kernel_mut(&mut self) -> &mut K {
        &mut self.kernel
    }

    /// The renderer (for tests and tools).
    pub fn renderer(&self) -> &Renderer {
        &self.renderer
    }

    fn family(&self) -> IpFamily {
        self.config.family
    }

    /// Whether the kernel can tell each chain's rules apart cheaply
    /// (iptables-nft: a netlink dump), asked once.
    async fn reads_rules(&mut self) -> Result<bool, KernelError> {
        if self.reads_rules.is_none() {
            let family = self.family();
            self.reads_rules = Some(self.kernel.digests(family, Table::Nat, Some(&[])).await?.is_some());
        }
        Ok(self.reads_rules == Some(true))
    }

    /// Records what the kernel holds now of `chains` (all of kproxy's when
    /// None) as what kproxy wrote: called right after each write.
    async fn take_baseline(&mut self, chains: Option<&Stale>) -> Result<(), KernelError> {
        let family = self.family();
        for table in Table::ALL {
            let names: Option<Vec<String>> = chains.map(|c| c.get(&table).map(|s| s.iter().cloned().collect()).unwrap_or_default());
            if names.as_ref().is_some_and(Vec::is_empty) {
                continue;
            }
            let Some(now) = self.kernel.digests(family, table, names.as_deref()).await? else { return Ok(()) };
            match &names {
                None => {
                    self.baseline.retain(|(t, _), _| *t != table);
                    let outline = self.renderer.outline();
                    let ours = &outline[&table];
                    self.baseline.extend(now.into_iter().filter(|(c, _)| ours.contains_key(c)).map(|(c, d)| ((table, c), d)));
                }
                Some(names) => {
                    for c in names {
                        match now.get(c) {
                            Some(d) => self.baseline.insert((table, c.clone()), *d),
                            None => self.baseline.remove(&(table, c.clone())),
                        };
                    }
                }
            }
        }
        Ok(())
    }

    /// Drops the record of `chains` (deleted).
    fn forget(&mut self, chains: &Stale) {
        for (t, set) in chains {
            for c in set {
                self.baseline.remove(&(*t, c.clone()));
            }
        }
    }

    /// kproxy's chains that differ from what it wrote: among `only` (or
    /// all of them but those this sync rewrites whole or deletes,
    /// `skip`), those whose rules changed or that are gone; with every
    /// chain checked, also service chains kproxy does not have (stale).
    async fn damaged(&mut self, only: Option<&Stale>, skip: &Stale) -> Result<(Stale, Stale), KernelError> {
        let family = self.family();
        let outline = self.renderer.outline();
        let (mut damaged, mut stale) = (Stale::new(), Stale::new());
        for table in Table::ALL {
            let names: Option<Vec<String>> = only.map(|o| o.get(&table).map(|s| s.iter().cloned().collect()).unwrap_or_default());
            if names.as_ref().is_some_and(Vec::is_empty) {
                continue;
            }
            let Some(now) = self.kernel.digests(family, table, names.as_deref()).await? else { continue };
            let ours = &outline[&table];
            let checked: Vec<&String> = match &names {
                Some(n) => n.iter().collect(),
                None => ours.keys().collect(),
            };
            let skipped = |c: &String| skip.get(&table).is_some_and(|s| s.contains(c));
            for c in checked.into_iter().filter(|c| !skipped(c)) {
                if !now.contains_key(c) || now.get(c) != self.baseline.get(&(table, c.clone())) {
                    damaged.entry(table).or_default().insert(c.clone());
                }
            }
            if names.is_none() {
                for c in now.keys().filter(|c| is_service_chain(c) && !ours.contains_key(*c) && !skipped(c)) {
                    stale.entry(table).or_default().insert(c.clone());
                }
            }
        }
        Ok((damaged, stale))
    }

    /// The built-in chains' jumps into kproxy's chains that are missing.
    async fn missing_jumps(&mut self) -> Result<Vec<Jump>, KernelError> {
        let all = jumps_for(self.renderer.localhost_node_ports());
        let mut missing = Vec::new();
        for table in Table::ALL {
            let listing = self.kernel.list(self.family(), table, table.builtins()).await?;
            missing.extend(all.iter().filter(|j| j.table == table && !listing.has(j)).cloned());
        }
        // Keep upstream's order: missing jumps are inserted in list order.
        missing.sort_by_key(|j| all.iter().position(|k| k == j));
        Ok(missing)
    }

    /// What a full restore must also do: delete stale service chains and
    /// put back missing jumps.
    async fn repairs(&mut self) -> Result<(Stale, Vec<Jump>), KernelError> {
        let outline = self.renderer.outline();
        let mut stale = Stale::new();
        for table in Table::ALL {
            for chain in self.kernel.chain_names(self.family(), table).await? {
                if is_service_chain(&chain) && !outline[&table].contains_key(&chain) {
                    stale.entry(table).or_default().insert(chain);
                }
            }
        }
        Ok((stale, self.missing_jumps().await?))
    }

    /// Writes the sync's restore; returns whether it was a full one.
    ///
    /// With iptables-nft, every chain's rules are compared with what
    /// kproxy wrote (digests read right after each write): on a periodic
    /// sync all of kproxy's chains, on the others the shared chains the
    /// sync edits in place (so a change from outside is never folded into
    /// the record). Changed chains are rewritten whole, with the sync's
    /// own changes. With iptables-legacy, which has no cheap reading of
    /// rules, each periodic sync is a full restore.
    async fn write_rules(&mut self, request: SyncRequest) -> Result<bool, KernelError> {
        let journal = self.renderer.take_journal();
        let reads_rules = self.reads_rules().await?;
        let mut full = journal.full || !self.trusted;
        if request.full && !full {
            self.periodic += 1;
            let every = self.options.full_restore_every;
            full = !reads_rules || (every > 0 && self.periodic % every == 0);
        }
        let family = self.family();
        if full {
            // If the restore fails, the kernel may hold part of it: the
            // next sync writes everything.
            self.trusted = false;
            let (stale, missing) = self.repairs().await?;
            {
                let mut pieces = restore::full_pieces(&self.renderer, &stale, &missing);
                self.kernel.restore_pieces(family, &mut pieces).await?;
            }
            self.take_baseline(None).await?;
            self.trusted = true;
            self.written = self.renderer.rule_totals();
            return Ok(true);
        }
        let text = restore::partial(&self.renderer, &journal, &[]);
        let restore::Touched { declared, edited, deleted } = restore::touched(&text);
        let (damaged, stale, missing) = if !reads_rules {
            (Stale::new(), Stale::new(), Vec::new())
        } else if request.full {
            let (damaged, stale) = self.damaged(None, &union(&declared, &deleted)).await?;
            (damaged, stale, self.missing_jumps().await?)
        } else {
            let (damaged, _) = self.damaged(Some(&edited), &Stale::new()).await?;
            (damaged, Stale::new(), Vec::new())
        };
        self.trusted = false;
        if damaged.values().all(BTreeSet::is_empty) && stale.is_empty() && missing.is_empty() {
            self.kernel.restore(family, &text).await?;
            self.written = restore::rule_lines(&text);
        } else {
            let count: usize = damaged.values().map(BTreeSet::len).sum::<usize>() + stale.values().map(BTreeSet::len).sum::<usize>();
            tracing::warn!(family = ?family, chains = count, jumps = missing.len(), "iptables rules changed behind kproxy's back; rewriting those chains");
            self.repaired += count as u64;
            // The damaged chains and everything this sync touches,
            // rewritten whole (a chain edited in place is rewritten too:
            // its old rules may be what changed).
            let write = union(&union(&damaged, &declared), &edited);
            let delete = union(&stale, &deleted);
            let repair = restore::rewrite(&self.renderer, &write, &delete, &missing);
            self.kernel.restore(family, &repair).await?;
            self.written = restore::rule_lines(&repair);
            self.forget(&delete);
            self.take_baseline(Some(&write)).await?;
            self.trusted = true;
            return Ok(false);
        }
        self.forget(&deleted);
        self.take_baseline(Some(&union(&declared, &edited))).await?;
        self.trusted = true;
        Ok(false)
    }
}

/// The chains of both, per table.
fn union(a: &Stale, b: &Stale) -> Stale {
    let mut out = a.clone();
    for (t, set) in b {
        out.entry(*t).or_default().extend(set.iter().cloned());
    }
    out
}

fn is_service_chain(chain: &str) -> bool {
    names::SERVICE_CHAIN_PREFIXES.iter().any(|p| chain.starts_with(p))
}

fn kernel_error(e: KernelError) -> Error {
    Error::sync(BACKEND, e.to_string(), Some(Box::new(e)))
}

#[async_trait]
impl<K: Kernel + 'static> Dataplane for IptablesDataplane<K> {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn apply(&mut self, state: &ProxyState, _changes: &StateChanges, refresh: Refresh, request: SyncRequest) -> Result<Applied> {
        match refresh {
            Refresh::All => self.renderer.refresh_all(state),
            Refresh::Services(services) => self.renderer.refresh(state, services.iter()),
        }
        let full = self.write_rules(request).await.map_err(kernel_error)?;
        let mut applied = Applied { full, no_local_endpoints: self.renderer.no_local_endpoints(), ..Applied::default() };
        for (table, total) in self.renderer.rule_totals() {
            let written = self.written.get(&table).copied().unwrap_or(0);
            applied.rule_counts.insert(table.name(), kproxy_core::RuleCount { total, written });
        }
        Ok(applied)
    }

    async fn cleanup(&mut self) -> Result<()> {
        self.cleanup_keeping(&|_| false).await
    }
}

impl<K: Kernel + 'static> IptablesDataplane<K> {
    /// [`Dataplane::cleanup`], except the chains `keep` names: on a node
    /// that now runs IPVS mode in the same iptables flavour, the chains
    /// both modes write (`KUBE-SERVICES`, `KUBE-POSTROUTING`, ...) are IPVS
    /// mode's and stay; iptables mode's own (`KUBE-SVC-*`,
    /// `KUBE-NODEPORTS`, `KUBE-EXTERNAL-SERVICES`, ...) and their jumps go.
    pub async fn cleanup_keeping(&mut self, keep: &(dyn Fn(&str) -> bool + Sync)) -> Result<()> {
        for family in [IpFamily::V4, IpFamily::V6] {
            let mut listings = Vec::new();
            let mut localnet = false;
            for table in Table::ALL {
                let names = self.kernel.chain_names(family, table).await.map_err(kernel_error)?;
                let listed: Vec<&str> = table.builtins().iter().copied().chain([crate::names::FIREWALL]).collect();
                let mut listing = self.kernel.list(family, table, &listed).await.map_err(kernel_error)?;
                for name in names {
                    listing.chains.entry(name).or_insert(0);
                }
                localnet |= family == IpFamily::V4 && table == Table::Filter && restore::localnet_safeguard_is_ours(&listing);
                listings.push((table, listing));
            }
            self.localnet_safeguard_removed |= localnet;
            let text = restore::cleanup(&listings, localnet, keep);
            self.kernel.restore(family, &text).await.map_err(|e| Error::Cleanup { backend: BACKEND, message: e.to_string(), source: Some(Box::new(e)) })?;
        }
        self.trusted = false;
        Ok(())
    }
}
