//! The kernel step of IPVS mode, behind one trait so the proxier runs the
//! same against the real kernel ([`IpvsHost`]) and an in-memory one
//! ([`FakeHost`](crate::host::FakeHost)).
//!
//! Per sync, at most: one IPVS dump (on a partial sync, a lookup per
//! virtual server it looks at instead) plus one real-server dump per
//! virtual server it looks at, one batch of IPVS messages, an address dump
//! and one batch of address changes for the dummy interface (route
//! netlink), the ipset commands (ipset netlink: a round trip per set
//! rewritten, as a swap waits for the fill before it), one
//! `iptables-restore`. Never one process or message round trip per rule,
//! per address or per set element. A cold sync's thousands of address
//! additions run on a thread of their own while the rest goes ahead.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Stdio;

use async_trait::async_trait;
use kproxy_backend_iptables::kernel::{IptablesCli, Kernel as _, Listing};
use kproxy_backend_iptables::Table;
use kproxy_core::IpFamily;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::diff::{CurrentIpvs, CurrentService};
use crate::model::{Op, Timeouts, VsKey};
use crate::netlink::IpvsSocket;
use crate::sets::Command as SetCommand;
use kproxy_netfilter::{Ipset, Rtnl};

/// Address additions from which [`IpvsHost::rebind`] runs on a thread of
/// its own: a cold sync's (the kernel takes about 0.2 ms per address under
/// emulation at 10,000, the same order as the IPVS batch), never a
/// partial one's few.
const BACKGROUND_CHANGES: usize = 512;

/// The socket in `slot`, opened on first use: in the named namespace
/// `netns` (`open_in`), or in the caller's (`open`).
fn opened<'a, S>(
    slot: &'a mut Option<S>,
    netns: Option<&str>,
    open: fn() -> Result<S, kproxy_netfilter::NetlinkError>,
    open_in: fn(&str) -> Result<S, kproxy_netfilter::NetlinkError>,
    fail: fn(kproxy_netfilter::NetlinkError) -> KernelError,
) -> Result<&'a mut S, KernelError> {
    match slot {
        Some(socket) => Ok(socket),
        None => {
            let socket = netns.map_or_else(open, open_in).map_err(fail)?;
            Ok(slot.insert(socket))
        }
    }
}

/// A route or ipset netlink failure, as a kernel step's error.
fn link(e: kproxy_netfilter::NetlinkError) -> KernelError {
    KernelError::Tool(e.0)
}

/// A kernel step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// IPVS over netlink failed (the socket, or the kernel lacks IPVS).
    #[error("IPVS: {0}")]
    Ipvs(String),
    /// The kernel refused some IPVS operations (the others took effect).
    #[error("IPVS refused {count} of {total} operations; first: {first}")]
    Refused {
        /// How many were refused.
        count: usize,
        /// How many were sent.
        total: usize,
        /// The first refusal, with the operation.
        first: String,
    },
    /// A tool (`sysctl`, `iptables-restore`), a route netlink request
    /// (the dummy interface and its addresses) or an ipset command failed.
    #[error("{0}")]
    Tool(String),
    /// The fake kernel refused.
    #[error("fake: {0}")]
    Fake(String),
}

/// What the IPVS proxier needs of a kernel (one network namespace).
#[async_trait]
pub trait IpvsKernel: Send + std::fmt::Debug {
    /// The IPVS table's virtual servers of `family`, with their real
    /// servers: every one, or only those of `only` that exist.
    async fn ipvs_table(&mut self, family: IpFamily, only: Option<&BTreeSet<VsKey>>) -> Result<CurrentIpvs, KernelError>;
    /// Carries out `ops` in order; returns how many messages were sent
    /// and the refusals (the other ops took effect).
    async fn ipvs_apply(&mut self, ops: &[Op]) -> Result<(usize, Vec<(Op, std::io::Error)>), KernelError>;
    /// Sets the IPVS connection timeouts (0 leaves one unchanged).
    async fn ipvs_timeouts(&mut self, timeouts: Timeouts) -> Result<(), KernelError>;
    /// The addresses on `device` (a dummy interface, created here if
    /// missing, and set up).
    async fn bound_addresses(&mut self, device: &str) -> Result<BTreeSet<IpAddr>, KernelError>;
    /// Adds and removes addresses on `device`. The real kernel may finish
    /// a large addition on a thread of its own (a cold sync's thousands of
    /// addresses then overlap the IPVS batch); the next call that touches
    /// the device, which the proxier makes at the end of every sync (the
    /// removals, never left running), waits for it and fails if it failed.
    async fn rebind(&mut self, device: &str, add: &[IpAddr], remove: &[IpAddr]) -> Result<(), KernelError>;
    /// Deletes `device` (cleanup).
    async fn delete_device(&mut self, device: &str) -> Result<(), KernelError>;
    /// Runs ipset commands in order (as `ipset restore` runs its lines);
    /// the first refusal stops them.
    async fn ipsets(&mut self, commands: &[SetCommand]) -> Result<(), KernelError>;
    /// Applies `iptables-restore --noflush` input to `family`'s tables.
    async fn iptables_restore(&mut self, family: IpFamily, text: &str) -> Result<(), KernelError>;
    /// Lists `table`'s chains (every one, rule counts not needed) and its
    /// built-in chains' rules.
    async fn iptables_list(&mut self, family: IpFamily, table: Table) -> Result<Listing, KernelError>;
    /// Sets a sysctl (`net/ipv4/vs/conntrack` style path under
    /// `/proc/sys`).
    async fn sysctl(&mut self, key: &str, value: &str) -> Result<(), KernelError>;
}

/// The real kernel: IPVS over generic netlink, the dummy interface and
/// its addresses over route netlink, ipsets over ipset netlink, and the
/// `sysctl` and `iptables-restore` tools, in the caller's network
/// namespace or in a named one (`/run/netns/NAME`).
#[derive(Debug)]
pub struct IpvsHost {
    netns: Option<String>,
    socket: Option<IpvsSocket>,
    /// Route netlink, for the dummy interface and its addresses.
    rtnl: Option<Rtnl>,
    /// ipset netlink.
    ipset: Option<Ipset>,
    /// The dummy interface's name and index, as the last full sync found
    /// them (a partial sync changes addresses without looking it up; if
    /// it went meanwhile, that sync fails and the next, full, one looks).
    device: Option<(String, u32)>,
    /// A large address change still running on its own thread, which has
    /// the route netlink socket and gives it back with the outcome.
    rebinding: Option<std::thread::JoinHandle<(Rtnl, Result<(), kproxy_netfilter::NetlinkError>)>>,
    iptables: IptablesCli,
}

impl IpvsHost {
    /// The kernel of `netns` (the caller's when `None`), with `iptables`
    /// for the rules (built for the same namespace).
    pub fn new(netns: Option<&str>, iptables: IptablesCli) -> Self {
        IpvsHost { netns: netns.map(str::to_string), socket: None, rtnl: None, ipset: None, device: None, rebinding: None, iptables }
    }

    /// Waits for an address change left running, takes its socket back and
    /// returns its outcome.
    fn settle(&mut self) -> Result<(), KernelError> {
        let Some(thread) = self.rebinding.take() else { return Ok(()) };
        let (rtnl, outcome) = thread.join().map_err(|_| KernelError::Tool("the address thread panicked".into()))?;
        self.rtnl = Some(rtnl);
        if outcome.is_err() {
            self.device = None;
        }
        outcome.map_err(link)
    }

    /// The route netlink socket, once any address change left running is
    /// over (its failure is returned here).
    fn rtnl(&mut self) -> Result<&mut Rtnl, KernelError> {
        self.settle()?;
        opened(&mut self.rtnl, self.netns.as_deref(), Rtnl::open, Rtnl::open_in_netns, link)
    }

    fn ipset(&mut self) -> Result<&mut Ipset, KernelError> {
        opened(&mut self.ipset, self.netns.as_deref(), Ipset::open, Ipset::open_in_netns, link)
    }

    fn socket(&mut self) -> Result<&mut IpvsSocket, KernelError> {
        opened(&mut self.socket, self.netns.as_deref(), IpvsSocket::open, IpvsSocket::open_in_netns, |e| KernelError::Ipvs(e.0))
    }

    /// Runs `argv` (inside the namespace when one is set), feeding `stdin`.
    async fn run(&self, argv: &[&str], stdin: Option<&str>) -> Result<String, KernelError> {
        let mut full: Vec<&str> = Vec::new();
        if let Some(ns) = &self.netns {
            full.extend(["ip", "netns", "exec", ns.as_str()]);
        }
        full.extend_from_slice(argv);
        let mut cmd = Command::new(full[0]);
        cmd.args(&full[1..]).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let what = argv.join(" ");
        let mut child = cmd.spawn().map_err(|e| KernelError::Tool(format!("cannot run {what}: {e}")))?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A tool that stops reading says why in its status.
            let _ = pipe.write_all(text.as_bytes()).await;
        }
        let out = child.wait_with_output().await.map_err(|e| KernelError::Tool(format!("{what}: {e}")))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let first: Vec<&str> = stderr.lines().take(3).collect();
            return Err(KernelError::Tool(format!("{what} failed ({}): {}", out.status, first.join(" | "))));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[async_trait]
impl IpvsKernel for IpvsHost {
    async fn ipvs_table(&mut self, family: IpFamily, only: Option<&BTreeSet<VsKey>>) -> Result<CurrentIpvs, KernelError> {
        let socket = self.socket()?;
        let ipvs = |e: kproxy_netfilter::NetlinkError| KernelError::Ipvs(e.0);
        let servers = match only {
            // A few lookups instead of a dump of every virtual server.
            Some(keys) => {
                let mut found = Vec::new();
                for key in keys {
                    found.extend(socket.service(key).map_err(ipvs)?);
                }
                found
            }
            None => socket.services().map_err(ipvs)?,
        };
        let mut out = CurrentIpvs::new();
        for server in servers.into_iter().filter(|s| family.contains(s.key.addr)) {
            let dests = socket.destinations(&server.key).map_err(ipvs)?;
            out.insert(server.key, CurrentService { server, dests });
        }
        Ok(out)
    }

    async fn ipvs_apply(&mut self, ops: &[Op]) -> Result<(usize, Vec<(Op, std::io::Error)>), KernelError> {
        let applied = self.socket()?.apply(ops).map_err(|e| KernelError::Ipvs(e.0))?;
        Ok((applied.messages, applied.failed))
    }

    async fn ipvs_timeouts(&mut self, timeouts: Timeouts) -> Result<(), KernelError> {
        self.socket()?.set_timeouts(timeouts).map_err(|e| KernelError::Ipvs(e.0))
    }

    async fn bound_addresses(&mut self, device: &str) -> Result<BTreeSet<IpAddr>, KernelError> {
        let rtnl = self.rtnl()?;
        let index = match rtnl.link_index(device).map_err(link)? {
            Some(index) => index,
            None => {
                // Upstream leaves the device down: addresses on a down
                // dummy are still local, and nothing is ever sent through
                // it. (The other family's proxier may make it meanwhile;
                // that is fine.)
                rtnl.add_dummy(device).map_err(link)?;
                rtnl.link_index(device).map_err(link)?.ok_or_else(|| KernelError::Tool(format!("{device} vanished as it was made")))?
            }
        };
        let addresses = rtnl.addresses(index).map_err(link)?;
        self.device = Some((device.to_string(), index));
        Ok(addresses)
    }

    async fn rebind(&mut self, device: &str, add: &[IpAddr], remove: &[IpAddr]) -> Result<(), KernelError> {
        self.settle()?;
        if add.is_empty() && remove.is_empty() {
            return Ok(());
        }
        let known = self.device.as_ref().filter(|(name, _)| name == device).map(|(_, index)| *index);
        let rtnl = self.rtnl()?;
        let index = match known {
            Some(index) => index,
            None => rtnl.link_index(device).map_err(link)?.ok_or_else(|| KernelError::Tool(format!("{device} is gone")))?,
        };
        if remove.is_empty() && add.len() >= BACKGROUND_CHANGES {
            let mut rtnl = self.rtnl.take().expect("opened above");
            let add = add.to_vec();
            self.rebinding = Some(std::thread::spawn(move || {
                let outcome = rtnl.change_addresses(index, &add, &[]);
                (rtnl, outcome)
            }));
            return Ok(());
        }
        let changed = rtnl.change_addresses(index, add, remove).map_err(link);
        if changed.is_err() {
            self.device = None;
        }
        changed
    }

    async fn delete_device(&mut self, device: &str) -> Result<(), KernelError> {
        self.device = None;
        self.rtnl()?.delete_link(device).map_err(link)
    }

    async fn ipsets(&mut self, commands: &[SetCommand]) -> Result<(), KernelError> {
        if commands.is_empty() {
            return Ok(());
        }
        self.ipset()?.apply(commands).map_err(link)
    }

    async fn iptables_restore(&mut self, family: IpFamily, text: &str) -> Result<(), KernelError> {
        self.iptables.restore(family, text).await.map_err(|e| KernelError::Tool(e.to_string()))
    }

    async fn iptables_list(&mut self, family: IpFamily, table: Table) -> Result<Listing, KernelError> {
        let tool = |e: kproxy_backend_iptables::kernel::KernelError| KernelError::Tool(e.to_string());
        let mut listing = self.iptables.list(family, table, table.builtins()).await.map_err(tool)?;
        for chain in self.iptables.chain_names(family, table).await.map_err(tool)? {
            listing.chains.entry(chain).or_insert(0);
        }
        Ok(listing)
    }

    async fn sysctl(&mut self, key: &str, value: &str) -> Result<(), KernelError> {
        match &self.netns {
            // Our own namespace: write the file (a slim image has no
            // `sysctl` tool).
            None => {
                let path = format!("/proc/sys/{key}");
                tokio::fs::write(&path, value).await.map_err(|e| KernelError::Tool(format!("cannot set {path} to {value}: {e}")))
            }
            Some(_) => {
                let setting = format!("{}={value}", key.replace('/', "."));
                self.run(&["sysctl", "-q", "-w", &setting], None).await.map(|_| ())
            }
        }
    }
}
