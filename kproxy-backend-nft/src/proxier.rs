//! [`NftProxier`]: the nftables backend behind the `Proxier` contract.
//!
//! A sync renders the desired ruleset and sends only the difference from the
//! last committed one, in one atomic transaction. A rebuild (first sync,
//! drift, node change, an oversized change, or the periodic forced rebuild)
//! builds a complete new table under the other of two names in bounded
//! chunks, with no hooks attached, then swaps it in with one small atomic
//! transaction that attaches the hooks and deletes the old table. Traffic is
//! never without rules, and the kernel is never held for one giant commit.

use async_trait::async_trait;
use kproxy_core::skeleton::{Applied, Dataplane, Refresh, StateProxier};
use kproxy_core::{Error, IpFamily, Protocol, ProxierConfig, ProxyState, Result, StateChanges, SyncRequest};

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::kernel::{elements_digest, Kernel, KernelError, Outline};
use crate::model::{Key, Value};
use crate::names;
use crate::render::{Renderer, Structure};
use crate::transaction::{Op, Transaction};

const BACKEND: &str = "nftables";

/// Tuning knobs of the nftables backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NftOptions {
    /// Most elements in one transaction while building a table.
    pub chunk_elements: usize,
    /// An incremental change with more elements than this becomes a
    /// chunked rebuild instead of one large atomic commit.
    pub max_incremental_elements: usize,
    /// Every this many full syncs, rebuild even without detected drift (a
    /// backstop: every full sync already compares each chain's rules, each
    /// set's declaration and every element with what kproxy wrote). 0
    /// never forces one.
    pub rebuild_every_full_syncs: u32,
}

impl Default for NftOptions {
    fn default() -> Self {
        NftOptions {
            chunk_elements: 5_000,
            max_incremental_elements: 50_000,
            rebuild_every_full_syncs: 120,
        }
    }
}

/// What is in the kernel now, as far as kproxy knows: the table's name and
/// structure; its elements are the renderer's as of the last good sync.
#[derive(Debug)]
struct Committed {
    table: String,
    structure: Structure,
    /// The kernel's own outline (with digests) right after kproxy last
    /// changed the table's structure: later outlines must equal it.
    baseline: Option<Outline>,
}

/// Keys looked up at a time when a full sync checks a slot map.
const LOOKUP_CHUNK: usize = 4096;

/// Which half of a slot map `key` is checked with (0 or 1).
fn key_half(key: &Key) -> u32 {
    (crate::kernel::elements_digest([(key, None)]).1 & 1) as u32
}

/// The nftables backend for one IP family: a [`StateProxier`] over
/// [`NftDataplane`].
pub type NftProxier<K> = StateProxier<NftDataplane<K>>;

/// The nftables backend's own part: rendering and the kernel.
#[derive(Debug)]
pub struct NftDataplane<K: Kernel> {
    config: ProxierConfig,
    renderer: Renderer,
    kernel: K,
    options: NftOptions,
    committed: Option<Committed>,
    full_syncs: u32,
    /// The affinity map may hold entries (some Service had affinity, or
    /// the table predates this process).
    affinity_entries_may_exist: bool,
}

/// A configuration the backend cannot program (the same for every backend).
pub use kproxy_core::InvalidConfig as ConfigError;

impl<K: Kernel + 'static> NftDataplane<K> {
    /// A proxier for `config.family` on node `node_name`, programming
    /// `kernel`.
    pub fn proxier(node_name: &str, config: ProxierConfig, kernel: K, options: NftOptions) -> Result<NftProxier<K>, ConfigError> {
        config.validate()?;
        let dataplane = NftDataplane {
            renderer: Renderer::new(config.clone()),
            kernel,
            options,
            committed: None,
            full_syncs: 0,
            affinity_entries_may_exist: true,
            config,
        };
        Ok(StateProxier::new(ProxyState::new(dataplane.config.family, node_name), dataplane))
    }
}

impl<K: Kernel> NftDataplane<K> {
    /// The kernel this proxier programs (for tests and tools).
    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// Mutable access to the kernel (for tests that simulate drift).
    pub fn kernel_mut(&mut self) -> &mut K {
        &mut self.kernel
    }

    /// The table kproxy last committed to, if any.
    pub fn table(&self) -> Option<&str> {
        self.committed.as_ref().map(|c| c.table.as_str())
    }

    /// The desired ruleset as of the last sync.
    pub fn ruleset(&self) -> &crate::model::Ruleset {
        self.renderer.ruleset()
    }

    fn family(&self) -> IpFamily {
        self.config.family
    }

    /// Whether this sync must rebuild: no trusted table, the periodic
    /// forced rebuild, or (on a full sync) a kernel table that differs from
    /// what was committed (`structure_drift`).
    async fn needs_rebuild(&mut self, request: SyncRequest) -> Result<bool, KernelError> {
        let Some(committed) = &self.committed else { return Ok(true) };
        if !request.full {
            return Ok(false);
        }
        self.full_syncs += 1;
        let every = self.options.rebuild_every_full_syncs;
        if every > 0 && self.full_syncs % every == 0 {
            return Ok(true);
        }
        let table = committed.table.clone();
        let drift = self.structure_drift(&table).await?;
        Ok(self.report_drift(&table, drift))
    }

    /// Logs `drift` (when there is some) and says whether there was.
    fn report_drift(&self, table: &str, drift: Option<String>) -> bool {
        if let Some(why) = &drift {
            tracing::warn!(table = %table, "nftables table changed behind kproxy's back ({why}); rebuilding it");
        }
        drift.is_some()
    }

    /// What changed in `table`'s structure behind kproxy's back, if
    /// anything: its chains, rule counts and sets; any rule, chain or set
    /// declaration (against the digests the kernel gave right after
    /// kproxy's own write).
    async fn structure_drift(&mut self, table: &str) -> Result<Option<String>, KernelError> {
        let family = self.family();
        let Some(committed) = &self.committed else { return Ok(Some("nothing committed".into())) };
        let Some(actual) = self.kernel.outline(family, table).await? else { return Ok(Some("the table is gone".into())) };
        let chains: BTreeMap<String, usize> = committed.structure.chains.iter().map(|(n, c)| (n.clone(), c.rules.len())).collect();
        let sets: BTreeSet<String> = committed.structure.sets.keys().cloned().collect();
        if actual.shape() != (&chains, &sets) {
            return Ok(Some("chains, rule counts or sets differ".into()));
        }
        if let Some(baseline) = &committed.baseline {
            if let Some((what, _)) = baseline.digests.iter().find(|(k, d)| actual.digests.get(*k) != Some(d)) {
                return Ok(Some(format!("{what} was edited")));
            }
        }
        Ok(None)
    }

    /// Which set or map of `table` holds other elements than kproxy wrote,
    /// if any (all but the dynamic affinity map; checked after a sync's
    /// own changes are applied).
    async fn element_drift(&mut self, table: &str) -> Result<Option<String>, KernelError> {
        let family = self.family();
        for (name, set) in self.renderer.ruleset().sets.iter().filter(|(n, _)| n.as_str() != names::AFFINITY) {
            if name.contains("-slots-") {
                // The DNAT slot maps, 10 or more elements per Service:
                // each key kproxy wrote is looked up (a dump of a map this
                // size is quadratic in the kernel), half of them (by a hash
                // of the key) on each full sync, so damage is found within
                // two. A foreign key needs no look: the dispatch sets,
                // checked whole, decide which frontends reach a slot map,
                // and numgen which slots.
                let half = self.full_syncs % 2;
                let mut elements = set.elements.iter();
                let mut part = Vec::with_capacity(LOOKUP_CHUNK);
                let mut want = (0usize, 0u64);
                loop {
                    let next = elements.next();
                    if let Some((k, v)) = next {
                        if key_half(k) != half {
                            continue;
                        }
                        part.push(*k);
                        let (n, sum) = elements_digest([(k, v.as_ref())]);
                        want = (want.0 + n, want.1.wrapping_add(sum));
                        if part.len() < LOOKUP_CHUNK {
                            continue;
                        }
                    }
                    if !part.is_empty() {
                        let Some(got) = self.kernel.lookup_digest(family, table, name, &part).await? else { return Ok(None) };
                        if got != want {
                            return Ok(Some(format!("map {name} lost or changed elements")));
                        }
                        part.clear();
                        want = (0, 0);
                    }
                    if next.is_none() {
                        break;
                    }
                }
                continue;
            }
            let Some((count, sum)) = self.kernel.element_digest(family, table, name).await? else { return Ok(None) };
            let (want_count, want_sum) = elements_digest(set.elements.iter().map(|(k, v)| (k, v.as_ref())));
            if count != want_count {
                return Ok(Some(format!("set {name} holds {count} elements, not {want_count}")));
            }
            if sum != want_sum {
                return Ok(Some(format!("set {name} holds elements kproxy did not write")));
            }
        }
        Ok(None)
    }

    /// The kernel's outline of `table` as kproxy just wrote it.
    async fn baseline(&mut self, table: &str) -> Result<Option<Outline>, KernelError> {
        self.kernel.outline(self.family(), table).await
    }

    /// Builds the renderer's ruleset in a fresh table and swaps it in
    /// atomically.
    async fn rebuild(&mut self) -> Result<(), KernelError> {
        let family = self.family();
        let ruleset = self.renderer.ruleset();
        let existing = self.kernel.tables(family).await?;
        let live = self.committed.as_ref().map(|c| c.table.clone()).filter(|t| existing.contains(t));
        // Build under the name that is not serving traffic right now. With
        // no committed table, a table left by a previous process keeps
        // serving until the swap.
        let serving = live.or_else(|| existing.first().cloned());
        let target = names::TABLES.iter().find(|t| Some(**t) != serving.as_deref()).expect("two names").to_string();
        self.committed = None;
        if existing.contains(&target) {
            let mut drop_stale = Transaction::new(family);
            drop_stale.push(&target, Op::DeleteTable);
            self.kernel.apply(&drop_stale).await?;
        }
        let mut structure = Transaction::new(family);
        structure.create_structure(&target, ruleset, false);
        self.kernel.apply(&structure).await?;
        // Elements in bounded chunks, built one at a time so a large table
        // is never copied whole.
        let mut chunk = Transaction::new(family);
        let mut in_chunk = 0;
        for (name, set) in &ruleset.sets {
            let mut elements = Vec::new();
            for (k, v) in &set.elements {
                elements.push((*k, *v));
                in_chunk += 1;
                if in_chunk == self.options.chunk_elements {
                    chunk.push(&target, Op::AddElements { set: name.clone(), elements: std::mem::take(&mut elements) });
                    self.kernel.apply(&chunk).await?;
                    chunk = Transaction::new(family);
                    in_chunk = 0;
                }
            }
            if !elements.is_empty() {
                chunk.push(&target, Op::AddElements { set: name.clone(), elements });
            }
        }
        self.kernel.apply(&chunk).await?;
        let mut swap = Transaction::new(family);
        for (name, chain) in ruleset.chains.iter().filter(|(_, c)| c.base.is_some()) {
            swap.push(&target, Op::AddChain { name: name.clone(), base: chain.base });
            swap.add_rules(&target, name, chain);
        }
        for old in existing.iter().filter(|t| **t != target) {
            swap.push(old, Op::DeleteTable);
        }
        self.kernel.apply(&swap).await?;
        let structure = Structure::of(ruleset);
        let baseline = self.baseline(&target).await?;
        self.committed = Some(Committed { table: target, structure, baseline });
        Ok(())
    }

    /// Deletes affinity entries whose remembered endpoint no longer serves
    /// their destination, so a client stuck to a removed pod is balanced
    /// again at once (upstream drops the endpoint's affinity set with it),
    /// and entries of destinations that no longer have affinity (switched
    /// off), which the load-balancing chains would otherwise still follow
    /// while any other Service has affinity.
    async fn forget_stale_affinity(&mut self) -> Result<(), KernelError> {
        let Some(table) = self.table().map(str::to_string) else { return Ok(()) };
        let rs = self.renderer.ruleset();
        let with_affinity: std::collections::HashSet<(IpAddr, Protocol, u16)> = rs
            .sets
            .iter()
            .filter(|(n, _)| n.starts_with("affinity-services-"))
            .flat_map(|(_, s)| s.elements.keys())
            .filter_map(|k| match *k {
                Key::Service(d, p, port) => Some((d, p, port)),
                _ => None,
            })
            .collect();
        // With no affinity left, entries can only linger from before: look
        // once, so a Service given affinity later never meets them.
        if with_affinity.is_empty() && !std::mem::take(&mut self.affinity_entries_may_exist) {
            return Ok(());
        }
        self.affinity_entries_may_exist = !with_affinity.is_empty();
        let entries = self.kernel.affinity_entries(self.family(), &table).await?;
        if entries.is_empty() {
            return Ok(());
        }
        let node_port_ips = &self.config.node_port_ips;
        let mut valid: std::collections::HashSet<(IpAddr, Protocol, u16, IpAddr, u16)> = std::collections::HashSet::new();
        for set in rs.sets.iter().filter(|(n, _)| n.contains("-slots-")).map(|(_, s)| s) {
            for (k, v) in &set.elements {
                let Some(Value::Target(ip, port)) = v else { continue };
                match *k {
                    Key::ServiceSlot(d, p, dport, _) => {
                        valid.insert((d, p, dport, *ip, *port));
                    }
                    Key::PortSlot(p, np, _) => {
                        for &node_ip in node_port_ips {
                            valid.insert((node_ip, p, np, *ip, *port));
                        }
                    }
                    _ => {}
                }
            }
        }
        let stale: Vec<Key> = entries
            .into_iter()
            .filter(|(k, ip, port)| match *k {
                Key::Affinity(_, d, p, dport) => !with_affinity.contains(&(d, p, dport)) || !valid.contains(&(d, p, dport, *ip, *port)),
                _ => false,
            })
            .map(|(k, _, _)| k)
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        let mut tx = Transaction::new(self.family());
        tx.push(&table, Op::DeleteElements { set: names::AFFINITY.to_string(), keys: stale });
        self.kernel.apply(&tx).await
    }

    /// Sends what changed since the last sync as one atomic transaction, or
    /// rebuilds when that would be too large.
    async fn apply_changes(&mut self, request: SyncRequest) -> Result<bool, KernelError> {
        let journal = self.renderer.take_journal();
        if journal.is_full()
            || self.needs_rebuild(request).await?
            || journal.touched_count() > self.options.max_incremental_elements
        {
            self.rebuild().await?;
            return Ok(true);
        }
        // If applying fails, the kernel kept its old state (nft commits
        // atomically) but the renderer moved on: forget the table so the
        // retry rebuilds.
        let committed = self.committed.take().expect("needs_rebuild covers a missing table");
        let tx = journal.transaction(&committed.table, &committed.structure, self.renderer.ruleset());
        self.kernel.apply(&tx).await?;
        let structure = Structure::of(self.renderer.ruleset());
        let baseline = if structure == committed.structure { committed.baseline } else { self.baseline(&committed.table).await? };
        let table = committed.table.clone();
        self.committed = Some(Committed { table: committed.table, structure, baseline });
        // A full sync also compares every element (an element deleted or
        // changed from outside keeps the outline).
        if request.full {
            let drift = self.element_drift(&table).await?;
            if self.report_drift(&table, drift) {
                self.rebuild().await?;
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn kernel_error(e: KernelError) -> Error {
    Error::sync(BACKEND, e.to_string(), Some(Box::new(e)))
}

#[async_trait]
impl<K: Kernel + 'static> Dataplane for NftDataplane<K> {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn apply(&mut self, state: &ProxyState, changes: &StateChanges, refresh: Refresh, request: SyncRequest) -> Result<Applied> {
        match refresh {
            Refresh::All => self.renderer.refresh_all(state),
            Refresh::Services(services) => self.renderer.refresh(state, services.iter()),
        }
        let rebuilt = self.apply_changes(request).await.map_err(kernel_error)?;
        if !changes.updated_services().is_empty() {
            if let Err(e) = self.forget_stale_affinity().await {
                tracing::warn!(error = %e, "could not clean up affinity entries; they will expire on their own");
            }
        }
        Ok(Applied { full: rebuilt, no_local_endpoints: self.renderer.no_local_endpoints(), ..Applied::default() })
    }

    async fn cleanup(&mut self) -> Result<()> {
        for family in [IpFamily::V4, IpFamily::V6] {
            let tables = self.kernel.tables(family).await.map_err(kernel_error)?;
            let mut tx = Transaction::new(family);
            for t in &tables {
                tx.push(t, Op::DeleteTable);
            }
            self.kernel.apply(&tx).await.map_err(|e| Error::Cleanup {
                backend: BACKEND,
                message: e.to_string(),
                source: Some(Box::new(e)),
            })?;
        }
        self.committed = None;
        Ok(())
    }
}
