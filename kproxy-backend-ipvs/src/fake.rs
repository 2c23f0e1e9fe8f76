//! An in-memory IPVS table that applies [`Op`]s with the kernel's checks
//! (adding what exists fails with `EEXIST`, touching what does not with
//! `ESRCH`/`ENOENT`), for tests of the diff and the proxier without a
//! kernel.

use std::collections::BTreeMap;
use std::io;

use crate::diff::{CurrentIpvs, CurrentService};
use crate::model::{Op, RealServerStatus, RsKey, VirtualServer, VsKey};

const EEXIST: i32 = 17;
const ESRCH: i32 = 3;
const ENOENT: i32 = 2;

/// A fake IPVS table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeIpvs {
    services: BTreeMap<VsKey, (VirtualServer, BTreeMap<RsKey, RealServerStatus>)>,
}

impl FakeIpvs {
    /// An empty table.
    pub fn new() -> Self {
        FakeIpvs::default()
    }

    /// Applies `ops` one by one, as the kernel does (a failing one does not
    /// stop the rest); returns the failures.
    pub fn apply(&mut self, ops: &[Op]) -> Vec<(Op, io::Error)> {
        let mut failed = Vec::new();
        for op in ops {
            if let Err(code) = self.apply_one(op) {
                failed.push((*op, io::Error::from_raw_os_error(code)));
            }
        }
        failed
    }

    fn apply_one(&mut self, op: &Op) -> Result<(), i32> {
        match *op {
            Op::AddService(vs) => {
                if self.services.contains_key(&vs.key) {
                    return Err(EEXIST);
                }
                self.services.insert(vs.key, (vs, BTreeMap::new()));
            }
            Op::EditService(vs) => self.services.get_mut(&vs.key).ok_or(ESRCH)?.0 = vs,
            Op::DelService(key) => {
                self.services.remove(&key).ok_or(ESRCH)?;
            }
            Op::AddDest(key, rs) => {
                let dests = &mut self.services.get_mut(&key).ok_or(ESRCH)?.1;
                if dests.contains_key(&rs.key) {
                    return Err(EEXIST);
                }
                dests.insert(rs.key, RealServerStatus { server: rs, active: 0, inactive: 0 });
            }
            Op::EditDest(key, rs) => {
                let dests = &mut self.services.get_mut(&key).ok_or(ESRCH)?.1;
                dests.get_mut(&rs.key).ok_or(ENOENT)?.server = rs;
            }
            Op::DelDest(key, rs) => {
                let dests = &mut self.services.get_mut(&key).ok_or(ESRCH)?.1;
                dests.remove(&rs).ok_or(ENOENT)?;
            }
        }
        Ok(())
    }

    /// Sets a real server's connection counts (a test's stand-in for
    /// traffic); false if it does not exist.
    pub fn set_connections(&mut self, key: &VsKey, rs: &RsKey, active: u32, inactive: u32) -> bool {
        match self.services.get_mut(key).and_then(|(_, d)| d.get_mut(rs)) {
            Some(d) => {
                d.active = active;
                d.inactive = inactive;
                true
            }
            None => false,
        }
    }

    /// The table as the kernel would report it.
    pub fn current(&self) -> CurrentIpvs {
        self.services.iter().map(|(k, (vs, d))| (*k, CurrentService { server: *vs, dests: d.values().copied().collect() })).collect()
    }
}
