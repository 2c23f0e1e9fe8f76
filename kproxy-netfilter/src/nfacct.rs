//! Extended accounting objects (`nfnetlink_acct`): named packet counters
//! that iptables rules bump with `-m nfacct --nfacct-name NAME`. Upstream
//! kube-proxy's iptables mode counts with two of them and exports them as
//! metrics; kproxy does the same.

use crate::wire::{attr, attr_str, cstr, find, NetlinkError, NfSocket};

/// The nfnetlink subsystem.
const NFNL_SUBSYS_ACCT: u16 = 7;
/// Create a counter.
const NFNL_MSG_ACCT_NEW: u16 = 0;
/// Read a counter.
const NFNL_MSG_ACCT_GET: u16 = 1;
/// The counter's name (a NUL-terminated string, at most 31 bytes).
const NFACCT_NAME: u16 = 1;
/// Packets counted (big-endian u64).
const NFACCT_PKTS: u16 = 2;

/// A connection to the accounting subsystem of one network namespace.
#[derive(Debug)]
pub struct Nfacct {
    socket: NfSocket,
}

impl Nfacct {
    /// In the calling thread's network namespace.
    pub fn open() -> Result<Nfacct, NetlinkError> {
        Ok(Nfacct { socket: NfSocket::open(64 << 10)? })
    }

    /// In the named network namespace (`/run/netns/NAME`).
    pub fn open_in_netns(name: &str) -> Result<Nfacct, NetlinkError> {
        Ok(Nfacct { socket: NfSocket::open_in_netns(name, 64 << 10)? })
    }

    /// Creates the counter `name` unless it exists.
    pub fn ensure(&mut self, name: &str) -> Result<(), NetlinkError> {
        let kind = (NFNL_SUBSYS_ACCT << 8) | NFNL_MSG_ACCT_NEW;
        match self.socket.request(kind, 0, |b| attr(b, NFACCT_NAME, &cstr(name)), |_| {})? {
            // The kernel answers EBUSY (16), or EEXIST (17), when the name
            // exists.
            Some(e) if matches!(e.raw_os_error(), Some(16 | 17)) => Ok(()),
            Some(e) => Err(NetlinkError(format!("nfacct {name}: {e}"))),
            None => Ok(()),
        }
    }

    /// The packets counted by `name`, or None if there is no such counter.
    pub fn packets(&mut self, name: &str) -> Result<Option<u64>, NetlinkError> {
        let kind = (NFNL_SUBSYS_ACCT << 8) | NFNL_MSG_ACCT_GET;
        let mut out = None;
        let error = self.socket.request(kind, 0, |b| attr(b, NFACCT_NAME, &cstr(name)), |attrs| {
            if attr_str(&attrs, NFACCT_NAME) == Some(name) {
                out = find(&attrs, NFACCT_PKTS).and_then(|p| p.try_into().ok()).map(u64::from_be_bytes);
            }
        })?;
        match error {
            Some(e) if e.raw_os_error() == Some(2) => Ok(None),
            Some(e) => Err(NetlinkError(format!("nfacct {name}: {e}"))),
            None => Ok(out),
        }
    }
}
