//! Route netlink (`NETLINK_ROUTE`), for what IPVS mode needs of it: a
//! dummy interface (upstream's `kube-ipvs0`) and the service addresses
//! bound to it, read and changed without running `ip`.
//!
//! Adding an address that is already there, deleting one that is not,
//! creating the interface when it exists and deleting it when it does not
//! are not errors: two proxiers (one per IP family) share the interface,
//! and a sync that failed half-way is simply run again.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;

use netlink_sys::{protocols::NETLINK_ROUTE, Socket};

use crate::wire::{attr, cstr, error_code, messages, nested, netlink_message, parse_attrs, NetlinkError, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
/// Fail if the object exists (with `NLM_F_CREATE`).
const NLM_F_EXCL: u16 = 0x200;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
/// No duplicate address detection: an IPv6 address usable at once.
const IFA_F_NODAD: u32 = 0x02;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// Length of `struct nlmsghdr`.
const NLMSG_HEADER: usize = 16;
/// Length of `struct ifinfomsg`.
const IFINFO_LEN: usize = 16;
/// Length of `struct ifaddrmsg`.
const IFADDR_LEN: usize = 8;
/// Address changes sent per datagram (each is under 100 bytes).
const CHANGES_PER_SEND: usize = 256;

const EEXIST: i32 = 17;
const ENODEV: i32 = 19;
const EADDRNOTAVAIL: i32 = 99;

fn io_err(what: &str, e: impl std::fmt::Display) -> NetlinkError {
    NetlinkError(format!("{what}: {e}"))
}

/// An `ifinfomsg` naming interface `index` (0: none).
fn ifinfo(index: u32) -> [u8; IFINFO_LEN] {
    let mut m = [0u8; IFINFO_LEN];
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m
}

/// The request that adds (`RTM_NEWADDR`) or deletes (`RTM_DELADDR`) host
/// address `ip` (a /32 or /128) on interface `index`.
fn address_message(buf: &mut Vec<u8>, kind: u16, seq: u32, index: u32, ip: IpAddr) {
    let (family, prefix, octets): (u8, u8, Vec<u8>) = match ip {
        IpAddr::V4(a) => (AF_INET, 32, a.octets().to_vec()),
        IpAddr::V6(a) => (AF_INET6, 128, a.octets().to_vec()),
    };
    let nodad = ip.is_ipv6() && kind == RTM_NEWADDR;
    let mut fixed = [0u8; IFADDR_LEN];
    fixed[0] = family;
    fixed[1] = prefix;
    fixed[2] = if nodad { IFA_F_NODAD as u8 } else { 0 };
    fixed[4..8].copy_from_slice(&index.to_ne_bytes());
    let flags = if kind == RTM_NEWADDR { NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL } else { NLM_F_REQUEST | NLM_F_ACK };
    netlink_message(buf, kind, flags, seq, &fixed, |b| {
        attr(b, IFA_LOCAL, &octets);
        attr(b, IFA_ADDRESS, &octets);
        if nodad {
            attr(b, IFA_FLAGS, &IFA_F_NODAD.to_ne_bytes());
        }
    });
}

/// The interface index and address of one `RTM_NEWADDR` dump reply.
fn decode_address(msg: &[u8]) -> Option<(u32, IpAddr)> {
    let fixed = msg.get(NLMSG_HEADER..NLMSG_HEADER + IFADDR_LEN)?;
    let index = u32::from_ne_bytes(fixed[4..8].try_into().ok()?);
    let attrs = parse_attrs(msg.get(NLMSG_HEADER + IFADDR_LEN..)?);
    let raw = crate::wire::find(&attrs, IFA_LOCAL).or_else(|| crate::wire::find(&attrs, IFA_ADDRESS))?;
    let ip = match fixed[0] {
        AF_INET => IpAddr::from(<[u8; 4]>::try_from(raw).ok()?),
        AF_INET6 => IpAddr::from(<[u8; 16]>::try_from(raw).ok()?),
        _ => return None,
    };
    Some((index, ip))
}

/// A route netlink socket, bound to one network namespace for life.
#[derive(Debug)]
pub struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    /// A socket in the calling thread's network namespace (every wait
    /// for a reply gives up after [`crate::wire::REPLY_TIMEOUT`]).
    pub fn open() -> Result<Rtnl, NetlinkError> {
        Ok(Rtnl { socket: crate::wire::connected(NETLINK_ROUTE, "route netlink")?, seq: 1 })
    }

    /// A socket in the named network namespace (`/run/netns/NAME`),
    /// opened from a short-lived thread so the caller's namespace is
    /// untouched.
    pub fn open_in_netns(name: &str) -> Result<Rtnl, NetlinkError> {
        crate::wire::in_netns(name, Rtnl::open)
    }

    /// One datagram from the kernel.
    fn recv(&mut self) -> Result<Vec<u8>, NetlinkError> {
        crate::wire::recv_reply(&mut self.socket, "route netlink")
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Sends `buf` and reads `count` acknowledgements; returns the error
    /// codes (positive errno values) among them, in order.
    fn acked(&mut self, buf: &[u8], count: usize) -> Result<Vec<i32>, NetlinkError> {
        self.socket.send(buf, 0).map_err(|e| io_err("route netlink send", e))?;
        let mut left = count;
        let mut errors = Vec::new();
        while left > 0 {
            let data = self.recv()?;
            for (kind, msg) in messages(&data) {
                if kind == NLMSG_ERROR {
                    left = left.saturating_sub(1);
                    let code = -error_code(msg);
                    if code != 0 {
                        errors.push(code);
                    }
                }
            }
        }
        Ok(errors)
    }

    /// The index of interface `name`, if it exists.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>, NetlinkError> {
        let seq = self.next_seq();
        let mut buf = Vec::new();
        netlink_message(&mut buf, RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, seq, &ifinfo(0), |b| attr(b, IFLA_IFNAME, &cstr(name)));
        self.socket.send(&buf, 0).map_err(|e| io_err("route netlink send", e))?;
        let mut found = None;
        loop {
            let data = self.recv()?;
            for (kind, msg) in messages(&data) {
                match kind {
                    RTM_NEWLINK => {
                        found = msg.get(NLMSG_HEADER + 4..NLMSG_HEADER + 8).and_then(|b| b.try_into().ok()).map(u32::from_ne_bytes);
                    }
                    NLMSG_ERROR => {
                        return match -error_code(msg) {
                            0 => Ok(found),
                            ENODEV => Ok(None),
                            code => Err(io_err(&format!("cannot look up interface {name}"), io::Error::from_raw_os_error(code))),
                        };
                    }
                    _ => {}
                }
            }
        }
    }

    /// Creates dummy interface `name` (left down, as upstream leaves
    /// `kube-ipvs0`); one that exists already is fine.
    pub fn add_dummy(&mut self, name: &str) -> Result<(), NetlinkError> {
        let seq = self.next_seq();
        let mut buf = Vec::new();
        netlink_message(&mut buf, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq, &ifinfo(0), |b| {
            attr(b, IFLA_IFNAME, &cstr(name));
            nested(b, IFLA_LINKINFO, |b| attr(b, IFLA_INFO_KIND, &cstr("dummy")));
        });
        match self.acked(&buf, 1)?.first() {
            None | Some(&EEXIST) => Ok(()),
            Some(&code) => Err(io_err(&format!("cannot create dummy interface {name}"), io::Error::from_raw_os_error(code))),
        }
    }

    /// Deletes interface `name`, if it exists.
    pub fn delete_link(&mut self, name: &str) -> Result<(), NetlinkError> {
        let seq = self.next_seq();
        let mut buf = Vec::new();
        netlink_message(&mut buf, RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, seq, &ifinfo(0), |b| attr(b, IFLA_IFNAME, &cstr(name)));
        match self.acked(&buf, 1)?.first() {
            None | Some(&ENODEV) => Ok(()),
            Some(&code) => Err(io_err(&format!("cannot delete interface {name}"), io::Error::from_raw_os_error(code))),
        }
    }

    /// Every address (of both families) on interface `index`.
    pub fn addresses(&mut self, index: u32) -> Result<BTreeSet<IpAddr>, NetlinkError> {
        let seq = self.next_seq();
        let mut buf = Vec::new();
        netlink_message(&mut buf, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, &[0u8; IFADDR_LEN], |_| {});
        self.socket.send(&buf, 0).map_err(|e| io_err("route netlink send", e))?;
        let mut out = BTreeSet::new();
        loop {
            let data = self.recv()?;
            for (kind, msg) in messages(&data) {
                match kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR if error_code(msg) != 0 => {
                        return Err(io_err("address dump refused", io::Error::from_raw_os_error(-error_code(msg))));
                    }
                    RTM_NEWADDR => out.extend(decode_address(msg).filter(|(i, _)| *i == index).map(|(_, ip)| ip)),
                    _ => {}
                }
            }
        }
    }

    /// Deletes `remove`, then adds `add`, as host addresses (/32, /128;
    /// IPv6 without duplicate address detection) on interface `index`.
    /// An address already added, or already gone, is not an error.
    pub fn change_addresses(&mut self, index: u32, add: &[IpAddr], remove: &[IpAddr]) -> Result<(), NetlinkError> {
        let changes: Vec<(u16, IpAddr)> = remove.iter().map(|ip| (RTM_DELADDR, *ip)).chain(add.iter().map(|ip| (RTM_NEWADDR, *ip))).collect();
        for part in changes.chunks(CHANGES_PER_SEND) {
            let mut buf = Vec::new();
            for &(kind, ip) in part {
                let seq = self.next_seq();
                address_message(&mut buf, kind, seq, index, ip);
            }
            if let Some(&code) = self.acked(&buf, part.len())?.iter().find(|c| **c != EEXIST && **c != EADDRNOTAVAIL) {
                return Err(io_err("cannot change the interface's addresses", io::Error::from_raw_os_error(code)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_request_reads_back_as_its_address() {
        for (ip, family, prefix) in [("172.30.0.1", AF_INET, 32u8), ("fd00::1", AF_INET6, 128)] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut buf = Vec::new();
            address_message(&mut buf, RTM_NEWADDR, 9, 7, ip);
            let all: Vec<_> = messages(&buf).collect();
            assert_eq!(all.len(), 1);
            let (kind, msg) = all[0];
            assert_eq!(kind, RTM_NEWADDR);
            assert_eq!((msg[16], msg[17]), (family, prefix), "family and prefix length");
            assert_eq!(decode_address(msg), Some((7, ip)));
            let attrs = parse_attrs(&msg[NLMSG_HEADER + IFADDR_LEN..]);
            assert_eq!(crate::wire::find(&attrs, IFA_FLAGS).is_some(), ip.is_ipv6(), "only IPv6 asks for no DAD");
        }
    }

    #[test]
    fn truncated_replies_decode_to_nothing() {
        let mut buf = Vec::new();
        address_message(&mut buf, RTM_DELADDR, 1, 3, "10.0.0.1".parse().unwrap());
        // Anything shorter than the headers and the first address attribute.
        for cut in 0..NLMSG_HEADER + IFADDR_LEN + 8 {
            assert_eq!(decode_address(&buf[..cut]), None, "cut at {cut}");
        }
    }
}
