//! nftables over netlink, for what `nft` 1.0.6 does slowly: element
//! additions and deletions (nft re-reads whole sets to delete one element)
//! and listing tables, chains, rule counts and sets (nft fetches every
//! element to list anything). Batches are atomic, like `nft -f`.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use kproxy_core::IpFamily;
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use super::encode;
use super::{KernelError, Outline};
use crate::transaction::{Command, Op, Transaction};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;

/// Elements per message: well under the 64 KiB an attribute can hold even
/// for the largest IPv6 elements.
const ELEMENTS_PER_MESSAGE: usize = 256;

/// Most bytes of one batch; a larger transaction is refused (the caller
/// chunks rebuilds well below this).
const MAX_BATCH: usize = 32 << 20;

fn family_byte(f: IpFamily) -> u8 {
    match f {
        IpFamily::V4 => 2,  // NFPROTO_IPV4
        IpFamily::V6 => 10, // NFPROTO_IPV6
    }
}

/// Appends one netlink attribute.
fn attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// Appends a nested attribute built by `body`.
fn nested(buf: &mut Vec<u8>, kind: u16, body: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    body(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    buf[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Appends a message: netlink header, nfgenmsg, then `body`.
fn message(buf: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, body: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 16]);
    buf.extend_from_slice(&[family, 0]);
    buf.extend_from_slice(&res_id.to_be_bytes());
    body(buf);
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    buf[start + 4..start + 6].copy_from_slice(&kind.to_ne_bytes());
    buf[start + 6..start + 8].copy_from_slice(&flags.to_ne_bytes());
    buf[start + 8..start + 12].copy_from_slice(&seq.to_ne_bytes());
}

fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// Parsed attributes of one message: type → payload.
type Attrs<'a> = Vec<(u16, &'a [u8])>;

/// The attributes of one dump reply, owned.
type OwnedAttrs = Vec<(u16, Vec<u8>)>;

/// A set element as the kernel stores it: key bytes and, in maps, data
/// bytes.
pub type RawElement = (Vec<u8>, Option<Vec<u8>>);

fn parse_attrs(mut data: &[u8]) -> Attrs<'_> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let kind = u16::from_ne_bytes([data[2], data[3]]) & !NLA_F_NESTED;
        if len < 4 || len > data.len() {
            break;
        }
        out.push((kind, &data[4..len]));
        data = &data[len.next_multiple_of(4).min(data.len())..];
    }
    out
}

fn attr_str<'a>(attrs: &Attrs<'a>, kind: u16) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(k, _)| *k == kind)
        .and_then(|(_, v)| std::str::from_utf8(v.strip_suffix(&[0]).unwrap_or(v)).ok())
}

/// The messages in one netlink datagram: (type, whole message). Stops at
/// the first malformed header.
fn messages(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes(data[0..4].try_into().ok()?) as usize;
        if len < 16 || len > data.len() {
            data = &[];
            return None;
        }
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        let msg = &data[..len];
        data = &data[len.next_multiple_of(4).min(data.len())..];
        Some((kind, msg))
    })
}

/// EPROTO, for a reply too short to say what went wrong.
const EPROTO: i32 = 71;

/// The error code of an `NLMSG_ERROR` message (0 is an ACK).
fn error_code(msg: &[u8]) -> i32 {
    msg.get(16..20).map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes"))).unwrap_or(-EPROTO)
}

/// A netfilter netlink socket.
#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

fn io_err(what: &str, e: io::Error) -> KernelError {
    KernelError::Netlink(format!("{what}: {e}"))
}

impl Netlink {
    /// A socket in the caller's network namespace.
    pub fn open() -> Result<Netlink, KernelError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| io_err("netlink socket", e))?;
        socket.bind_auto().map_err(|e| io_err("netlink bind", e))?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(|e| io_err("netlink connect", e))?;
        // Large batches: let the send buffer hold a whole rebuild chunk.
        let _ = nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::SndBufForce, &(MAX_BATCH));
        let _ = nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBufForce, &(4 << 20));
        Ok(Netlink { socket, seq: 1 })
    }

    /// A socket in the named network namespace (`/run/netns/NAME`). The
    /// socket stays in that namespace for its whole life.
    pub fn open_in_netns(name: &str) -> Result<Netlink, KernelError> {
        let path = format!("/run/netns/{name}");
        let file = std::fs::File::open(&path).map_err(|e| io_err(&path, e))?;
        std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| KernelError::Netlink(format!("setns {path}: {e}")))?;
            Netlink::open()
        })
        .join()
        .map_err(|_| KernelError::Netlink("netns thread panicked".into()))?
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Whether a transaction holds only element changes (what this path
    /// applies).
    pub fn handles(tx: &Transaction) -> bool {
        tx.commands
            .iter()
            .all(|c| matches!(c.op, Op::AddElements { .. } | Op::DeleteElements { .. }))
    }

    /// Applies an element-only transaction as one atomic batch.
    pub fn apply_elements(&mut self, tx: &Transaction) -> Result<(), KernelError> {
        if tx.is_empty() {
            return Ok(());
        }
        let family = family_byte(tx.family);
        let mut buf = Vec::new();
        let begin = self.next_seq();
        message(&mut buf, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, begin, 0, NFNL_SUBSYS_NFTABLES, |_| {});
        let mut expected = 0usize;
        for Command { table, op } in &tx.commands {
            // Attribute lengths are 16 bits: a message carries at most
            // ELEMENTS_PER_MESSAGE elements, and a batch as many messages as
            // it needs (still one atomic commit).
            match op {
                Op::AddElements { set, elements } => {
                    for part in elements.chunks(ELEMENTS_PER_MESSAGE) {
                        let seq = self.next_seq();
                        expected += 1;
                        message(&mut buf, nft_type(NFT_MSG_NEWSETELEM), NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK, seq, family, 0, |b| {
                            attr(b, 1, &cstr(table));
                            attr(b, 2, &cstr(set));
                            nested(b, 3, |b| {
                                for (k, v) in part {
                                    nested(b, 1, |b| element(b, k, v.as_ref()));
                                }
                            });
                        });
                    }
                }
                Op::DeleteElements { set, keys } => {
                    for part in keys.chunks(ELEMENTS_PER_MESSAGE) {
                        let seq = self.next_seq();
                        expected += 1;
                        message(&mut buf, nft_type(NFT_MSG_DELSETELEM), NLM_F_REQUEST | NLM_F_ACK, seq, family, 0, |b| {
                            attr(b, 1, &cstr(table));
                            attr(b, 2, &cstr(set));
                            nested(b, 3, |b| {
                                for k in part {
                                    nested(b, 1, |b| element(b, k, None));
                                }
                            });
                        });
                    }
                }
                other => return Err(KernelError::Netlink(format!("not an element command: {other:?}"))),
            }
        }
        let end = self.next_seq();
        message(&mut buf, NFNL_MSG_BATCH_END, NLM_F_REQUEST, end, 0, NFNL_SUBSYS_NFTABLES, |_| {});
        if buf.len() > MAX_BATCH {
            return Err(KernelError::Netlink(format!("batch of {} bytes is too large", buf.len())));
        }
        self.socket.send(&buf, 0).map_err(|e| io_err("netlink send", e))?;
        self.read_acks(expected)
    }

    /// Reads one ACK (or the first error) per message of a batch.
    fn read_acks(&mut self, mut expected: usize) -> Result<(), KernelError> {
        let mut first_error = None;
        while expected > 0 {
            let (data, _) = self.socket.recv_from_full().map_err(|e| io_err("netlink recv", e))?;
            for (kind, msg) in messages(&data) {
                if kind != NLMSG_ERROR {
                    continue;
                }
                let code = error_code(msg);
                expected = expected.saturating_sub(1);
                if code != 0 {
                    first_error.get_or_insert(io::Error::from_raw_os_error(-code));
                    // After an error the kernel aborts the batch; the rest
                    // of the messages get no ACK.
                    expected = 0;
                }
            }
        }
        match first_error {
            Some(e) => Err(KernelError::Netlink(format!("set elements refused: {e}"))),
            None => Ok(()),
        }
    }

    /// Every element of one set: key bytes and, for maps, data bytes.
    pub fn set_elements(&mut self, family: IpFamily, table: &str, set: &str) -> Result<Vec<RawElement>, KernelError> {
        let mut out = Vec::new();
        for reply in self.dump_with(NFT_MSG_GETSETELEM, family, &[(1, table), (2, set)])? {
            for (kind, list) in &reply {
                if *kind != 3 {
                    continue;
                }
                for (_, element) in parse_attrs(list) {
                    let attrs = parse_attrs(element);
                    let value_of = |k: u16| {
                        attrs
                            .iter()
                            .find(|(kind, _)| *kind == k)
                            .and_then(|(_, nested)| parse_attrs(nested).into_iter().find(|(t, _)| *t == 1).map(|(_, v)| v.to_vec()))
                    };
                    if let Some(key) = value_of(1) {
                        out.push((key, value_of(2)));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Runs a dump request and returns the attributes of every reply.
    fn dump(&mut self, msg: u16, family: IpFamily, filter_table: Option<&str>) -> Result<Vec<OwnedAttrs>, KernelError> {
        match filter_table {
            Some(t) => self.dump_with(msg, family, &[(1, t)]),
            None => self.dump_with(msg, family, &[]),
        }
    }

    /// Runs a dump request with string attributes and returns the
    /// attributes of every reply.
    fn dump_with(&mut self, msg: u16, family: IpFamily, filters: &[(u16, &str)]) -> Result<Vec<OwnedAttrs>, KernelError> {
        let seq = self.next_seq();
        let mut buf = Vec::new();
        message(&mut buf, nft_type(msg), NLM_F_REQUEST | NLM_F_DUMP, seq, family_byte(family), 0, |b| {
            for (kind, value) in filters {
                attr(b, *kind, &cstr(value));
            }
        });
        self.socket.send(&buf, 0).map_err(|e| io_err("netlink send", e))?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(|e| io_err("netlink recv", e))?;
            for (kind, msg) in messages(&data) {
                match kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = error_code(msg);
                        if code != 0 {
                            return Err(KernelError::Netlink(format!("dump refused: {}", io::Error::from_raw_os_error(-code))));
                        }
                    }
                    _ if msg.len() >= 20 => {
                        out.push(parse_attrs(&msg[20..]).into_iter().map(|(k, v)| (k, v.to_vec())).collect());
                    }
                    _ => {}
                }
            }
        }
    }

    /// The names of every table of `family`.
    pub fn tables(&mut self, family: IpFamily) -> Result<Vec<String>, KernelError> {
        let replies = self.dump(NFT_MSG_GETTABLE, family, None)?;
        Ok(replies.iter().filter_map(|a| name_of(a, 1)).collect())
    }

    /// Chains with rule counts, and set names, of one table (no elements).
    pub fn outline(&mut self, family: IpFamily, table: &str) -> Result<Outline, KernelError> {
        let mut chains: BTreeMap<String, usize> = BTreeMap::new();
        for a in self.dump(NFT_MSG_GETCHAIN, family, None)? {
            if name_of(&a, 1).as_deref() == Some(table) {
                if let Some(name) = name_of(&a, 3) {
                    chains.insert(name, 0);
                }
            }
        }
        for a in self.dump(NFT_MSG_GETRULE, family, Some(table))? {
            if name_of(&a, 1).as_deref() == Some(table) {
                if let Some(c) = name_of(&a, 2) {
                    *chains.entry(c).or_insert(0) += 1;
                }
            }
        }
        let sets: BTreeSet<String> = self
            .dump(NFT_MSG_GETSET, family, Some(table))?
            .iter()
            .filter(|a| name_of(a, 1).as_deref() == Some(table))
            .filter_map(|a| name_of(a, 2))
            .collect();
        Ok(Outline { chains, sets })
    }
}

fn name_of(attrs: &[(u16, Vec<u8>)], kind: u16) -> Option<String> {
    let borrowed: Attrs<'_> = attrs.iter().map(|(k, v)| (*k, v.as_slice())).collect();
    attr_str(&borrowed, kind).map(str::to_string)
}

/// One `NFTA_LIST_ELEM` body.
fn element(b: &mut Vec<u8>, k: &crate::model::Key, v: Option<&crate::model::Value>) {
    let (key, key_end) = encode::key(k);
    // NFTA_SET_ELEM_KEY holding NFTA_DATA_VALUE.
    nested(b, 1, |b| attr(b, 1, &key));
    if let Some(end) = key_end {
        // NFTA_SET_ELEM_KEY_END: the end of a range.
        nested(b, 10, |b| attr(b, 1, &end));
    }
    if let Some(v) = v {
        // NFTA_SET_ELEM_DATA
        nested(b, 2, |b| attr(b, 1, &encode::data(v)));
    }
}
