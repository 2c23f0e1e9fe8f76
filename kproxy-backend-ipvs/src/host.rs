//! An in-memory kernel for IPVS mode: an IPVS table ([`FakeIpvs`]), the
//! dummy interface's addresses, ipsets read from `ipset restore` scripts
//! with ipset's checks, iptables ([`FakeIptables`]) and sysctls. The
//! proxier's tests and the tracer (`trace`, feature `trace`) run on it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use async_trait::async_trait;
use kproxy_backend_iptables::fake::FakeIptables;
use kproxy_backend_iptables::kernel::Listing;
use kproxy_backend_iptables::Table;
use kproxy_core::IpFamily;

use crate::diff::CurrentIpvs;
use crate::fake::FakeIpvs;
use crate::kernel::{IpvsKernel, KernelError};
use crate::model::{Op, Timeouts, VsKey};
use crate::sets::{Command, Entry};

/// One ipset: its type and entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeSet {
    /// `hash:ip,port`, `bitmap:port`, ...
    pub kind: String,
    /// The entries.
    pub entries: BTreeSet<Entry>,
}

/// The ipsets of a namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeIpsets {
    /// Sets by name.
    pub sets: BTreeMap<String, FakeSet>,
}

impl FakeIpsets {
    /// Applies an `ipset restore` script (`create NAME TYPE ... [-exist]`,
    /// `flush`, `add`, `del`, `swap`, `destroy`) line by line, with ipset's
    /// checks; a refused line stops the script, as `ipset restore` does.
    pub fn restore(&mut self, script: &str) -> Result<(), String> {
        for (n, line) in script.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            self.line(line).map_err(|e| format!("line {}: {line}: {e}", n + 1))?;
        }
        Ok(())
    }

    fn line(&mut self, line: &str) -> Result<(), String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let get = |i: usize| words.get(i).copied().ok_or_else(|| "missing argument".to_string());
        match words[0] {
            "create" => {
                let (name, kind) = (get(1)?, get(2)?);
                match self.sets.get(name) {
                    Some(s) if s.kind == kind && words.contains(&"-exist") => {}
                    Some(_) => return Err("set already exists".into()),
                    None => {
                        self.sets.insert(name.to_string(), FakeSet { kind: kind.to_string(), entries: BTreeSet::new() });
                    }
                }
            }
            "flush" => self.set_mut(get(1)?)?.entries.clear(),
            "add" => {
                let set = self.set_mut(get(1)?)?;
                let entry = Entry::parse(&set.kind, get(2)?).ok_or("entry does not fit the set's type")?;
                if !set.entries.insert(entry) && !words.contains(&"-exist") {
                    return Err("element already added".into());
                }
            }
            "del" => {
                let set = self.set_mut(get(1)?)?;
                let entry = Entry::parse(&set.kind, get(2)?).ok_or("entry does not fit the set's type")?;
                if !set.entries.remove(&entry) && !words.contains(&"-exist") {
                    return Err("element is missing from the set".into());
                }
            }
            "swap" => {
                let (a, b) = (get(1)?, get(2)?);
                let sa = self.sets.get(a).ok_or("no such set")?.clone();
                let sb = self.sets.get(b).ok_or("no such set")?.clone();
                if sa.kind != sb.kind {
                    return Err("sets of different types cannot be swapped".into());
                }
                self.sets.insert(a.to_string(), sb);
                self.sets.insert(b.to_string(), sa);
            }
            "destroy" => {
                self.sets.remove(get(1)?).ok_or("no such set")?;
            }
            other => return Err(format!("unknown command {other}")),
        }
        Ok(())
    }

    fn set_mut(&mut self, name: &str) -> Result<&mut FakeSet, String> {
        self.sets.get_mut(name).ok_or_else(|| "no such set".to_string())
    }
}

/// The fake kernel of one network namespace.
#[derive(Debug, Clone, Default)]
pub struct FakeHost {
    /// The IPVS table.
    pub ipvs: FakeIpvs,
    /// The dummy interface's addresses, if it exists.
    pub device: Option<(String, BTreeSet<IpAddr>)>,
    /// The ipsets.
    pub ipsets: FakeIpsets,
    /// The iptables rules.
    pub iptables: FakeIptables,
    /// Sysctls set, by `/proc/sys` path.
    pub sysctls: BTreeMap<String, String>,
    /// The IPVS timeouts last set.
    pub timeouts: Timeouts,
    /// Tool runs and netlink batches, by kind (`ipvs`, `ip`, `ipset`,
    /// `iptables`), for tests that count kernel round trips.
    pub calls: BTreeMap<&'static str, usize>,
    /// Refuse every operation of the next IPVS batch (a test's stand-in
    /// for a kernel that says no).
    pub refuse_next_batch: bool,
    /// How many virtual servers the IPVS table held at each iptables
    /// restore, for tests of the order of a sync's steps.
    pub virtual_servers_at_restore: Vec<usize>,
}

impl FakeHost {
    /// An empty namespace.
    pub fn new() -> Self {
        FakeHost::default()
    }

    /// A fake holding what a live node's tools print, for tracing the
    /// node's own rules: its IPVS table, `ipset save` output (the `KUBE-*`
    /// sets) and `family`'s Service rules in `iptables-restore` form.
    pub fn from_live(family: IpFamily, ipvs: &CurrentIpvs, ipset_save: &str, iptables_rules: &str) -> Result<FakeHost, String> {
        let mut host = FakeHost::new();
        let mut ops = Vec::new();
        for (key, service) in ipvs.iter().filter(|(k, _)| family.contains(k.addr)) {
            ops.push(Op::AddService(service.server));
            ops.extend(service.dests.iter().map(|d| Op::AddDest(*key, d.server)));
        }
        if let Some((op, e)) = host.ipvs.apply(&ops).into_iter().next() {
            return Err(format!("the IPVS table cannot be read back ({op:?}: {e})"));
        }
        let kube_sets: String = ipset_save
            .lines()
            .filter(|l| l.split_whitespace().nth(1).is_some_and(|name| name.starts_with("KUBE-")))
            .map(|l| format!("{l}\n"))
            .collect();
        host.ipsets.restore(&kube_sets).map_err(|e| format!("ipset save: {e}"))?;
        host.iptables.restore(family, iptables_rules).map_err(|e| format!("iptables-save: {e}"))?;
        Ok(host)
    }

    /// The addresses on the dummy interface.
    pub fn addresses(&self) -> BTreeSet<IpAddr> {
        self.device.as_ref().map(|(_, a)| a.clone()).unwrap_or_default()
    }

    /// Everything `family`'s proxier wrote, as the tools print it: the
    /// dummy interface's addresses, the ipsets (`ipset save`), the rules
    /// (`iptables-save`) and the IPVS table (`ipvsadm-save -n`).
    pub fn dump(&self, family: IpFamily) -> String {
        let mut out = String::new();
        let device = self.device.as_ref().map_or(crate::proxier::DEVICE, |(n, _)| n.as_str());
        out.push_str(&format!("# addresses on {device}\n"));
        for ip in self.addresses().iter().filter(|ip| family.contains(**ip)) {
            out.push_str(&format!("{ip}\n"));
        }
        out.push_str("# ipset save\n");
        for (name, set) in &self.ipsets.sets {
            out.push_str(&format!("create {name} {}\n", set.kind));
            for e in &set.entries {
                out.push_str(&format!("add {name} {}\n", e.text()));
            }
        }
        out.push_str("# iptables-save\n");
        for table in Table::ALL {
            out.push_str(&self.iptables.save(family, table));
        }
        out.push_str("# ipvsadm-save -n\n");
        for (key, svc) in self.ipvs.current().iter().filter(|(k, _)| family.contains(k.addr)) {
            let proto = match key.protocol {
                kproxy_core::Protocol::Tcp => "-t",
                kproxy_core::Protocol::Udp => "-u",
                kproxy_core::Protocol::Sctp => "--sctp-service",
            };
            let vip = crate::model::RsKey { addr: key.addr, port: key.port };
            let persistence = svc.server.persistence.map(|p| format!(" -p {p}")).unwrap_or_default();
            out.push_str(&format!("-A {proto} {vip} -s {}{persistence}\n", svc.server.scheduler));
            for d in &svc.dests {
                out.push_str(&format!("-a {proto} {vip} -r {} -m -w {}\n", d.server.key, d.server.weight));
            }
        }
        out
    }

    fn count(&mut self, what: &'static str) {
        *self.calls.entry(what).or_default() += 1;
    }
}

#[async_trait]
impl IpvsKernel for FakeHost {
    async fn ipvs_table(&mut self, family: IpFamily, only: Option<&BTreeSet<VsKey>>) -> Result<CurrentIpvs, KernelError> {
        self.count("ipvs");
        let mut table = self.ipvs.current();
        table.retain(|k, _| family.contains(k.addr) && only.is_none_or(|o| o.contains(k)));
        Ok(table)
    }

    async fn ipvs_apply(&mut self, ops: &[Op]) -> Result<(usize, Vec<(Op, std::io::Error)>), KernelError> {
        self.count("ipvs");
        if std::mem::take(&mut self.refuse_next_batch) {
            return Ok((ops.len(), ops.iter().map(|op| (*op, std::io::Error::from_raw_os_error(5))).collect()));
        }
        Ok((ops.len(), self.ipvs.apply(ops)))
    }

    async fn ipvs_timeouts(&mut self, timeouts: Timeouts) -> Result<(), KernelError> {
        self.timeouts = timeouts;
        Ok(())
    }

    async fn bound_addresses(&mut self, device: &str) -> Result<BTreeSet<IpAddr>, KernelError> {
        self.count("ip");
        Ok(self.device.get_or_insert_with(|| (device.to_string(), BTreeSet::new())).1.clone())
    }

    async fn rebind(&mut self, device: &str, add: &[IpAddr], remove: &[IpAddr]) -> Result<(), KernelError> {
        self.count("ip");
        let Some((name, addrs)) = self.device.as_mut().filter(|(n, _)| n == device) else {
            return Err(KernelError::Fake(format!("no device {device}")));
        };
        for ip in remove {
            if !addrs.remove(ip) {
                return Err(KernelError::Fake(format!("{ip} is not on {name}")));
            }
        }
        for ip in add {
            if !addrs.insert(*ip) {
                return Err(KernelError::Fake(format!("{ip} is already on {name}")));
            }
        }
        Ok(())
    }

    async fn delete_device(&mut self, device: &str) -> Result<(), KernelError> {
        if self.device.as_ref().is_some_and(|(n, _)| n == device) {
            self.device = None;
        }
        Ok(())
    }

    async fn ipsets(&mut self, commands: &[Command]) -> Result<(), KernelError> {
        if commands.is_empty() {
            return Ok(());
        }
        self.count("ipset");
        self.ipsets.restore(&crate::sets::script(commands)).map_err(KernelError::Fake)
    }

    async fn iptables_restore(&mut self, family: IpFamily, text: &str) -> Result<(), KernelError> {
        self.count("iptables");
        self.virtual_servers_at_restore.push(self.ipvs.current().len());
        self.iptables.restore(family, text).map_err(KernelError::Fake)
    }

    async fn iptables_list(&mut self, family: IpFamily, table: Table) -> Result<Listing, KernelError> {
        let mut listing = Listing::parse(&self.iptables.save(family, table), table);
        listing.builtin_rules.retain(|l| l.split_whitespace().nth(1).is_some_and(|c| table.builtins().contains(&c)));
        Ok(listing)
    }

    async fn sysctl(&mut self, key: &str, value: &str) -> Result<(), KernelError> {
        self.sysctls.insert(key.to_string(), value.to_string());
        Ok(())
    }
}
