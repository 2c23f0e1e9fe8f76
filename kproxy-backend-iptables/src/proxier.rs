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

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy_core::{Error, IpFamily, Proxier, ProxierConfig, ProxyState, Result, StateChanges, SyncReport, SyncRequest};

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
}

impl Default for IptablesOptions {
    fn default() -> Self {
        // With the default syncPeriod (30 s): hourly, as upstream.
        IptablesOptions { full_restore_every: 120, localhost_node_ports: false, tcp_be_liberal: false }
    }
}

/// A configuration the backend cannot program (the same for every backend).
pub use kproxy_core::InvalidConfig as ConfigError;

/// The iptables backend for one IP family.
#[derive(Debug)]
pub struct IptablesProxier<K: Kernel> {
    state: ProxyState,
    config: ProxierConfig,
    renderer: Renderer,
    kernel: K,
    options: IptablesOptions,
    /// Whether the kernel holds what the renderer last produced.
    trusted: bool,
    rendered_once: bool,
    periodic: u32,
    unreported: StateChanges,
    localnet_safeguard_removed: bool,
}

impl<K: Kernel> IptablesProxier<K> {
    /// A proxier for `config.family` on node `node_name`, programming `kernel`.
    pub fn new(node_name: &str, config: ProxierConfig, kernel: K, options: IptablesOptions) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(IptablesProxier {
            state: ProxyState::new(config.family, node_name),
            renderer: Renderer::new(config.clone()).with_options(crate::render::FixedOptions {
                localhost_node_ports: options.localhost_node_ports,
                tcp_be_liberal: options.tcp_be_liberal,
            }),
            config,
            kernel,
            options,
            trusted: false,
            rendered_once: false,
            periodic: 0,
            unreported: StateChanges::default(),
            localnet_safeguard_removed: false,
        })
    }

    /// Whether [`Proxier::cleanup`] removed the localnet safeguard
    /// (`KUBE-FIREWALL`): the caller then sets `route_localnet` back to 0.
    pub fn localnet_safeguard_removed(&self) -> bool {
        self.localnet_safeguard_removed
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

    /// The proxy state (for tests and tools).
    pub fn state(&self) -> &ProxyState {
        &self.state
    }

    fn family(&self) -> IpFamily {
        self.config.family
    }

    /// Whether the kernel differs from what was written, judged cheaply:
    /// the built-in chains' jumps and the fixed chains' rule counts (a
    /// service chain deleted from outside shows as a missing rule in
    /// `KUBE-SERVICES`, since its reference had to go first). A chain
    /// merely flushed is caught by the forced full restore.
    async fn drifted(&mut self) -> Result<bool, KernelError> {
        let outline = self.renderer.outline();
        for table in Table::ALL {
            let want = &outline[&table];
            let mut names: Vec<&str> = table.builtins().to_vec();
            names.extend(want.keys().map(String::as_str).filter(|c| !is_service_chain(c)));
            let listing = self.kernel.list(self.family(), table, &names).await?;
            let counts_differ = want.iter().filter(|(c, _)| !is_service_chain(c)).any(|(c, n)| listing.chains.get(c) != Some(n));
            let jump_missing = jumps_for(self.renderer.localhost_node_ports()).iter().filter(|j| j.table == table).any(|j| !j.is_in(&listing));
            if counts_differ || jump_missing {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// What a full restore must also do: delete stale service chains and
    /// put back missing jumps.
    async fn repairs(&mut self) -> Result<(Stale, Vec<Jump>), KernelError> {
        let outline = self.renderer.outline();
        let mut stale = Stale::new();
        let mut missing = Vec::new();
        let all_jumps = jumps_for(self.renderer.localhost_node_ports());
        for table in Table::ALL {
            for chain in self.kernel.chain_names(self.family(), table).await? {
                if is_service_chain(&chain) && !outline[&table].contains_key(&chain) {
                    stale.entry(table).or_default().insert(chain);
                }
            }
            let listing = self.kernel.list(self.family(), table, table.builtins()).await?;
            missing.extend(all_jumps.iter().filter(|j| j.table == table && !j.is_in(&listing)).cloned());
        }
        // Keep upstream's order: missing jumps are inserted in list order.
        missing.sort_by_key(|j| all_jumps.iter().position(|k| k == j));
        Ok((stale, missing))
    }

    /// Writes the sync's restore; returns whether it was a full one.
    async fn apply(&mut self, request: SyncRequest) -> Result<bool, KernelError> {
        let journal = self.renderer.take_journal();
        let mut full = journal.full || !self.trusted;
        if request.full && !full {
            self.periodic += 1;
            let every = self.options.full_restore_every;
            let forced = every > 0 && self.periodic % every == 0;
            let drift = self.drifted().await?;
            if drift {
                tracing::warn!(family = ?self.family(), "iptables rules changed behind kproxy's back; rewriting them all");
            }
            full = drift || forced;
        }
        // If the restore fails, the kernel may hold part of it: the next
        // sync writes everything.
        self.trusted = false;
        let family = self.family();
        if full {
            let (stale, missing) = self.repairs().await?;
            let mut pieces = restore::full_pieces(&self.renderer, &stale, &missing);
            self.kernel.restore_pieces(family, &mut pieces).await?;
        } else {
            let text = restore::partial(&self.renderer, &journal, &[]);
            self.kernel.restore(family, &text).await?;
        }
        self.trusted = true;
        Ok(full)
    }
}

fn is_service_chain(chain: &str) -> bool {
    names::SERVICE_CHAIN_PREFIXES.iter().any(|p| chain.starts_with(p))
}

fn kernel_error(e: KernelError) -> Error {
    Error::sync(BACKEND, e.to_string(), Some(Box::new(e)))
}

#[async_trait]
impl<K: Kernel + 'static> Proxier for IptablesProxier<K> {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn on_service_update(&mut self, previous: Option<&Service>, current: Option<&Service>) -> bool {
        self.state.on_service(previous, current)
    }

    fn on_endpoint_slice_update(&mut self, slice: &EndpointSlice, removed: bool) -> bool {
        self.state.on_endpoint_slice(slice, removed)
    }

    fn on_node_update(&mut self, node: &Node) -> bool {
        self.state.on_node(node)
    }

    async fn sync(&mut self, request: SyncRequest) -> Result<SyncReport> {
        let mut changes = std::mem::take(&mut self.unreported);
        changes.absorb(self.state.apply());
        if changes.node_changed || !self.rendered_once {
            self.renderer.refresh_all(&self.state);
            self.rendered_once = true;
        } else {
            let services: Vec<_> = changes.updated_services().into_iter().cloned().collect();
            self.renderer.refresh(&self.state, services.iter());
        }
        match self.apply(request).await {
            Ok(full) => {
                Ok(self.state.report(request.full || full, changes, self.renderer.no_local_endpoints()))
            }
            Err(e) => {
                self.unreported = changes;
                Err(kernel_error(e))
            }
        }
    }

    async fn cleanup(&mut self) -> Result<()> {
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
            let text = restore::cleanup(&listings, localnet);
            self.kernel.restore(family, &text).await.map_err(|e| Error::Cleanup { backend: BACKEND, message: e.to_string(), source: Some(Box::new(e)) })?;
        }
        self.trusted = false;
        Ok(())
    }
}
