//! nftables over netlink, for what `nft` 1.0.6 does slowly: element
//! additions and deletions (nft re-reads whole sets to delete one element)
//! and listing tables, chains, rule counts and sets (nft fetches every
//! element to list anything). Batches are atomic, like `nft -f`.

use std::collections::{BTreeMap, BTreeSet};

use kproxy_core::IpFamily;
use kproxy_netfilter::wire::{self, attr, cstr, nested, Attrs, Header, NfSocket, OwnedAttrs, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST};

use super::encode;
use super::{digest, KernelError, Outline, RawElement};
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

fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}


/// A netfilter netlink socket.
#[derive(Debug)]
pub struct Netlink {
    socket: NfSocket,
}

impl From<wire::NetlinkError> for KernelError {
    fn from(e: wire::NetlinkError) -> Self {
        KernelError::Netlink(e.0)
    }
}

impl Netlink {
    /// A socket in the caller's network namespace.
    pub fn open() -> Result<Netlink, KernelError> {
        // Large batches: let the send buffer hold a whole rebuild chunk.
        Ok(Netlink { socket: NfSocket::open(MAX_BATCH)? })
    }

    /// A socket in the named network namespace (`/run/netns/NAME`). The
    /// socket stays in that namespace for its whole life.
    pub fn open_in_netns(name: &str) -> Result<Netlink, KernelError> {
        Ok(Netlink { socket: NfSocket::open_in_netns(name, MAX_BATCH)? })
    }

    fn next_seq(&mut self) -> u32 {
        self.socket.next_seq()
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
        let marker = |kind, seq| Header { kind, flags: NLM_F_REQUEST, seq, family: 0, res_id: NFNL_SUBSYS_NFTABLES };
        wire::message(&mut buf, marker(NFNL_MSG_BATCH_BEGIN, begin), |_| {});
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
                        let header = Header { kind: nft_type(NFT_MSG_NEWSETELEM), flags: NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK, seq, family, res_id: 0 };
                        wire::message(&mut buf, header, |b| {
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
                        let header = Header { kind: nft_type(NFT_MSG_DELSETELEM), flags: NLM_F_REQUEST | NLM_F_ACK, seq, family, res_id: 0 };
                        wire::message(&mut buf, header, |b| {
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
        wire::message(&mut buf, marker(NFNL_MSG_BATCH_END, end), |_| {});
        if buf.len() > MAX_BATCH {
            return Err(KernelError::Netlink(format!("batch of {} bytes is too large", buf.len())));
        }
        self.socket.send(&buf)?;
        // After an error the kernel aborts the batch; the rest of the
        // messages get no acknowledgement.
        match self.socket.acks(expected, true)?.into_iter().next() {
            Some(e) => Err(KernelError::Netlink(format!("set elements refused: {e}"))),
            None => Ok(()),
        }
    }

    /// Every element of one set: key bytes, an interval's end bytes and,
    /// for maps, data bytes.
    pub fn set_elements(&mut self, family: IpFamily, table: &str, set: &str) -> Result<Vec<RawElement>, KernelError> {
        let mut out = Vec::new();
        for reply in self.dump_with(NFT_MSG_GETSETELEM, family, &[(1, table), (2, set)])? {
            for (kind, list) in &reply {
                if *kind != 3 {
                    continue;
                }
                for (_, element) in wire::parse_attrs(list) {
                    if let Some((key, end, data)) = element_fields(element) {
                        out.push((key.to_vec(), end.map(<[u8]>::to_vec), data.map(<[u8]>::to_vec)));
                    }
                }
            }
        }
        Ok(out)
    }

    /// The number of elements of one set and the sum of their digests
    /// ([`element_digest`](super::element_digest)), read as the dump
    /// streams in (nothing of the size of the set is kept).
    pub fn set_digest(&mut self, family: IpFamily, table: &str, set: &str) -> Result<(usize, u64), KernelError> {
        let (mut count, mut sum) = (0usize, 0u64);
        let body = |b: &mut Vec<u8>| {
            attr(b, 1, &cstr(table));
            attr(b, 2, &cstr(set));
        };
        self.socket.dump(nft_type(NFT_MSG_GETSETELEM), family_byte(family), body, |_, attrs| add_digests(&attrs, &mut count, &mut sum))?;
        Ok((count, sum))
    }

    /// Looks up `keys` in one set or map (the kernel's `get element`, 256
    /// keys a request) and returns how many it holds and the sum of their
    /// digests as it holds them (data included). Costs what the keys
    /// cost, not what the set holds: a dump of a large set is quadratic.
    pub fn lookup_digest(&mut self, family: IpFamily, table: &str, set: &str, keys: &[crate::model::Key]) -> Result<(usize, u64), KernelError> {
        let (mut count, mut sum) = (0usize, 0u64);
        for part in keys.chunks(ELEMENTS_PER_MESSAGE) {
            let body = |b: &mut Vec<u8>| {
                attr(b, 1, &cstr(table));
                attr(b, 2, &cstr(set));
                nested(b, 3, |b| {
                    for k in part {
                        nested(b, 1, |b| element(b, k, None));
                    }
                });
            };
            let ended = self.socket.request(nft_type(NFT_MSG_GETSETELEM), family_byte(family), body, |attrs| add_digests(&attrs, &mut count, &mut sum))?;
            match ended {
                None => {}
                // A key it does not hold: the count says so.
                Some(e) if e.raw_os_error() == Some(2) => {}
                Some(e) => return Err(KernelError::Netlink(format!("get element: {e}"))),
            }
        }
        Ok((count, sum))
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
        let mut out = Vec::new();
        let body = |b: &mut Vec<u8>| {
            for (kind, value) in filters {
                attr(b, *kind, &cstr(value));
            }
        };
        self.socket.dump(nft_type(msg), family_byte(family), body, |_, attrs| {
            out.push(attrs.into_iter().map(|(k, v)| (k, v.to_vec())).collect());
        })?;
        Ok(out)
    }

    /// The names of every table of `family`.
    pub fn tables(&mut self, family: IpFamily) -> Result<Vec<String>, KernelError> {
        let replies = self.dump(NFT_MSG_GETTABLE, family, None)?;
        Ok(replies.iter().filter_map(|a| name_of(a, 1)).collect())
    }

    /// Chains with rule counts, and set names, of one table (no
    /// elements), with a digest of each chain (its hook, type and policy,
    /// then every rule's expressions and comment, in order) and of each
    /// set's declaration.
    pub fn outline(&mut self, family: IpFamily, table: &str) -> Result<Outline, KernelError> {
        let mut chains: BTreeMap<String, usize> = BTreeMap::new();
        let mut digests: BTreeMap<String, u64> = BTreeMap::new();
        // Folds attributes `kinds` of `attrs` into the digest `key`.
        let mut fold = |key: String, attrs: &[(u16, Vec<u8>)], kinds: &[u16]| {
            let d = digests.entry(key).or_insert(0);
            for kind in kinds {
                for (_, v) in attrs.iter().filter(|(k, _)| k == kind) {
                    let mut bytes = d.to_le_bytes().to_vec();
                    bytes.extend_from_slice(&kind.to_le_bytes());
                    bytes.extend_from_slice(v);
                    *d = digest(bytes);
                }
            }
        };
        for a in self.dump(NFT_MSG_GETCHAIN, family, None)? {
            if name_of(&a, 1).as_deref() == Some(table) {
                if let Some(name) = name_of(&a, 3) {
                    // NFTA_CHAIN_HOOK, _POLICY, _TYPE.
                    fold(format!("chain {name}"), &a, &[4, 5, 7]);
                    chains.insert(name, 0);
                }
            }
        }
        for a in self.dump(NFT_MSG_GETRULE, family, Some(table))? {
            if name_of(&a, 1).as_deref() == Some(table) {
                if let Some(c) = name_of(&a, 2) {
                    // NFTA_RULE_EXPRESSIONS, _USERDATA (the comment).
                    fold(format!("chain {c}"), &a, &[4, 7]);
                    *chains.entry(c).or_insert(0) += 1;
                }
            }
        }
        let mut sets = BTreeSet::new();
        for a in self.dump(NFT_MSG_GETSET, family, Some(table))? {
            if name_of(&a, 1).as_deref() != Some(table) {
                continue;
            }
            if let Some(name) = name_of(&a, 2) {
                // NFTA_SET_FLAGS, _KEY_TYPE, _KEY_LEN, _DATA_TYPE, _DATA_LEN.
                fold(format!("set {name}"), &a, &[3, 4, 5, 6, 7]);
                sets.insert(name);
            }
        }
        Ok(Outline { chains, sets, digests })
    }
}

/// Counts the elements of one element-list reply and adds their digests.
fn add_digests(attrs: &[(u16, &[u8])], count: &mut usize, sum: &mut u64) {
    // NFTA_SET_ELEM_LIST_ELEMENTS.
    for (_, list) in attrs.iter().filter(|(kind, _)| *kind == 3) {
        for (_, element) in wire::parse_attrs(list) {
            if let Some((key, end, data)) = element_fields(element) {
                *count += 1;
                *sum = sum.wrapping_add(super::element_digest(key, end, data));
            }
        }
    }
}

/// An element's key, interval end and data, borrowed from a reply.
type ElementFields<'a> = (&'a [u8], Option<&'a [u8]>, Option<&'a [u8]>);

/// An element's key, interval end and data (`NFTA_SET_ELEM_KEY`,
/// `_KEY_END`, `_DATA`, each holding `NFTA_DATA_VALUE`).
fn element_fields(element: &[u8]) -> Option<ElementFields<'_>> {
    let attrs = wire::parse_attrs(element);
    let value_of = |k: u16| {
        attrs.iter().find(|(kind, _)| *kind == k).and_then(|(_, nested)| wire::parse_attrs(nested).into_iter().find(|(t, _)| *t == 1).map(|(_, v)| v))
    };
    Some((value_of(1)?, value_of(10), value_of(2)))
}

fn name_of(attrs: &[(u16, Vec<u8>)], kind: u16) -> Option<String> {
    let borrowed: Attrs<'_> = attrs.iter().map(|(k, v)| (*k, v.as_slice())).collect();
    wire::attr_str(&borrowed, kind).map(str::to_string)
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
