//! ipset over netlink (nfnetlink's `ip_set` subsystem), for what IPVS
//! mode needs of it: sets created, filled in bulk, changed an element at a
//! time, swapped and destroyed, without running `ipset`.
//!
//! [`Ipset::apply`] runs a list of [`Command`]s in order, as `ipset
//! restore` runs its lines. Several commands travel in one datagram, but
//! a swap is sent only once every command before it was acknowledged, so
//! a set filled half-way never replaces the one in use. The first refusal
//! stops the run and is reported with the command, and for an add or a
//! delete the element, it refused.

mod entry;

use std::io;

use kproxy_core::IpFamily;
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

pub use entry::{Entry, SetType};

use crate::wire::{attr, cstr, error_code, find, message, message_seq, messages, nested, parse_attrs, Header, NetlinkError, HEADER_LEN, NLMSG_ERROR, NLM_F_ACK, NLM_F_REQUEST};

/// `NFNL_SUBSYS_IPSET`.
const SUBSYS: u16 = 6;
/// The protocol version sent: the oldest the kernel still takes
/// (`IPSET_PROTOCOL_MIN`), which every command used here accepts.
const PROTOCOL: u8 = 6;
const CMD_CREATE: u16 = 2;
const CMD_DESTROY: u16 = 3;
const CMD_FLUSH: u16 = 4;
const CMD_SWAP: u16 = 6;
const CMD_ADD: u16 = 9;
const CMD_DEL: u16 = 10;
const CMD_TYPE: u16 = 13;
const ATTR_PROTOCOL: u16 = 1;
const ATTR_SETNAME: u16 = 2;
const ATTR_TYPENAME: u16 = 3;
/// The second set of a swap shares the type name's number.
const ATTR_SETNAME2: u16 = 3;
const ATTR_REVISION: u16 = 4;
const ATTR_FAMILY: u16 = 5;
const ATTR_DATA: u16 = 7;
const ATTR_ADT: u16 = 8;
const ATTR_LINENO: u16 = 9;
const ATTR_HASHSIZE: u16 = 18;
const ATTR_MAXELEM: u16 = 19;
/// `NLM_F_EXCL`: without it, ipset treats the command as `-exist`.
const NLM_F_EXCL: u16 = 0x200;
const NFPROTO_UNSPEC: u8 = 0;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// Elements per add or delete message (each is under 100 bytes).
const ELEMENTS_PER_MESSAGE: usize = 256;
/// Bytes of messages gathered before they are sent.
const DATAGRAM: usize = 64 << 10;
const ENOENT: i32 = 2;

/// One ipset command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Creates set `name` of type `kind` (hash types: `family`, hash size
    /// 1024, at most 65536 elements; `bitmap:port`: ports 0-65535). A set
    /// of that name, type and options already there is fine (`-exist`).
    Create {
        /// The set's name (at most 31 bytes).
        name: String,
        /// Its type.
        kind: SetType,
        /// The family of a hash type's addresses.
        family: IpFamily,
    },
    /// Removes every element of a set.
    Flush(String),
    /// Adds elements to a set; with `exist`, one already there is fine.
    Add {
        /// The set.
        name: String,
        /// The elements, in order.
        entries: Vec<Entry>,
        /// `-exist`.
        exist: bool,
    },
    /// Deletes elements from a set; with `exist`, one not there is fine.
    Del {
        /// The set.
        name: String,
        /// The elements, in order.
        entries: Vec<Entry>,
        /// `-exist`.
        exist: bool,
    },
    /// Swaps two sets' contents (their types and families must agree).
    Swap(String, String),
    /// Destroys a set (it must be unreferenced; one not there is fine).
    Destroy(String),
}

impl Command {
    /// The command as `ipset restore` reads it: one line, or one line per
    /// element for an add or a delete.
    pub fn restore_text(&self) -> String {
        let exist = |e: bool| if e { " -exist" } else { "" };
        match self {
            Command::Create { name, kind, family } => {
                let options = match (kind, family) {
                    (SetType::BitmapPort, _) => "range 0-65535".to_string(),
                    (_, IpFamily::V4) => "family inet hashsize 1024 maxelem 65536".to_string(),
                    (_, IpFamily::V6) => "family inet6 hashsize 1024 maxelem 65536".to_string(),
                };
                format!("create {name} {} {options} -exist\n", kind.name())
            }
            Command::Flush(name) => format!("flush {name}\n"),
            Command::Add { name, entries, exist: e } => entries.iter().map(|x| format!("add {name} {x}{}\n", exist(*e))).collect(),
            Command::Del { name, entries, exist: e } => entries.iter().map(|x| format!("del {name} {x}{}\n", exist(*e))).collect(),
            Command::Swap(a, b) => format!("swap {a} {b}\n"),
            Command::Destroy(name) => format!("destroy {name}\n"),
        }
    }

    /// What the command does, for errors: `add to KUBE-CLUSTER-IP`.
    fn describe(&self) -> String {
        match self {
            Command::Create { name, kind, .. } => format!("create {name} ({})", kind.name()),
            Command::Flush(name) => format!("flush {name}"),
            Command::Add { name, .. } => format!("add to {name}"),
            Command::Del { name, .. } => format!("delete from {name}"),
            Command::Swap(a, b) => format!("swap {a} with {b}"),
            Command::Destroy(name) => format!("destroy {name}"),
        }
    }
}

/// The words `ipset` uses for the kernel's ipset-specific error codes.
fn reason(code: i32) -> String {
    let text = match code {
        4097 => "ipset protocol error",
        4098 => "the kernel does not have this set type (or revision)",
        4099 => "the kernel cannot hold more sets",
        4100 => "the set is in use by a kernel component",
        4101 => "the second set does not exist",
        4102 => "the two sets' types or families differ",
        4103 => "the element is already added, or missing",
        4104 => "invalid CIDR prefix",
        4105 => "invalid netmask",
        4106 => "the address family does not fit the set",
        4107 => "timeout not supported by the set",
        4108 => "the set is referenced",
        4109 => "an IPv4 address was expected",
        4110 => "an IPv6 address was expected",
        4352 => "the set is full, or the element is outside its range",
        4353 => "a null element, or a range too large for the set",
        4354 => "invalid protocol",
        4355 => "a protocol is required",
        17 => "a set of this name already exists with another type or options",
        ENOENT => "no such set",
        _ => return io::Error::from_raw_os_error(code).to_string(),
    };
    text.to_string()
}

fn io_err(what: &str, e: impl std::fmt::Display) -> NetlinkError {
    NetlinkError(format!("{what}: {e}"))
}

/// A message sent and not yet acknowledged: its sequence number, the
/// command it carries and, for adds and deletes, the index of its first
/// element.
#[derive(Debug, Clone, Copy)]
struct Pending {
    seq: u32,
    command: usize,
    first: usize,
}

/// An ipset netlink socket, bound to one network namespace for life.
#[derive(Debug)]
pub struct Ipset {
    socket: Socket,
    seq: u32,
    /// The kernel's newest revision of each set type and family, asked
    /// once.
    revisions: Vec<((SetType, u8), u8)>,
}

impl Ipset {
    /// A socket in the calling thread's network namespace (every wait
    /// for a reply gives up after [`crate::wire::REPLY_TIMEOUT`]).
    pub fn open() -> Result<Ipset, NetlinkError> {
        Ok(Ipset { socket: crate::wire::connected(NETLINK_NETFILTER, "ipset netlink")?, seq: 1, revisions: Vec::new() })
    }

    /// A socket in the named network namespace (`/run/netns/NAME`),
    /// opened from a short-lived thread so the caller's namespace is
    /// untouched.
    pub fn open_in_netns(name: &str) -> Result<Ipset, NetlinkError> {
        crate::wire::in_netns(name, Ipset::open)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    fn recv(&mut self) -> Result<Vec<u8>, NetlinkError> {
        crate::wire::recv_reply(&mut self.socket, "ipset netlink")
    }

    /// The newest revision of `kind` for `family` the kernel has, as
    /// `ipset` picks it.
    fn revision(&mut self, kind: SetType, family: u8) -> Result<u8, NetlinkError> {
        if let Some((_, r)) = self.revisions.iter().find(|(k, _)| *k == (kind, family)) {
            return Ok(*r);
        }
        let seq = self.next_seq();
        let mut buf = Vec::new();
        let header = Header { kind: (SUBSYS << 8) | CMD_TYPE, flags: NLM_F_REQUEST | NLM_F_ACK, seq, family: NFPROTO_IPV4, res_id: 0 };
        message(&mut buf, header, |b| {
            attr(b, ATTR_PROTOCOL, &[PROTOCOL]);
            attr(b, ATTR_TYPENAME, &cstr(kind.name()));
            attr(b, ATTR_FAMILY, &[family]);
        });
        self.socket.send(&buf, 0).map_err(|e| io_err("ipset netlink send", e))?;
        let mut revision = None;
        loop {
            let data = self.recv()?;
            for (msg_kind, msg) in messages(&data) {
                if message_seq(msg) != seq {
                    continue;
                }
                if msg_kind == NLMSG_ERROR {
                    let code = -error_code(msg);
                    return match (code, revision) {
                        (0, Some(r)) => {
                            self.revisions.push(((kind, family), r));
                            Ok(r)
                        }
                        (0, None) => Err(NetlinkError(format!("ipset: the kernel named no revision of {}", kind.name()))),
                        (code, _) => Err(NetlinkError(format!("ipset: cannot use set type {}: {}", kind.name(), reason(code)))),
                    };
                }
                if msg.len() >= HEADER_LEN {
                    revision = find(&parse_attrs(&msg[HEADER_LEN..]), ATTR_REVISION).and_then(|v| v.first().copied());
                }
            }
        }
    }

    /// Runs `commands` in order, stopping at the first refusal (see the
    /// module's documentation).
    pub fn apply(&mut self, commands: &[Command]) -> Result<(), NetlinkError> {
        // Revisions first: asking for one reads replies of its own.
        for c in commands {
            if let Command::Create { kind, family, .. } = c {
                self.revision(*kind, nf_family(*kind, *family))?;
            }
        }
        let mut buf = Vec::new();
        let mut pending = Vec::new();
        for (index, command) in commands.iter().enumerate() {
            if matches!(command, Command::Swap(..)) {
                self.flush(&mut buf, &mut pending, commands)?;
            }
            let parts = match command {
                Command::Add { entries, .. } | Command::Del { entries, .. } => entries.len().div_ceil(ELEMENTS_PER_MESSAGE).max(1),
                _ => 1,
            };
            for part in 0..parts {
                self.encode(&mut buf, &mut pending, index, command, part)?;
                if buf.len() >= DATAGRAM {
                    self.flush(&mut buf, &mut pending, commands)?;
                }
            }
        }
        self.flush(&mut buf, &mut pending, commands)
    }

    /// Appends message `part` of `command` (a long add or delete takes
    /// several, of [`ELEMENTS_PER_MESSAGE`] elements each).
    fn encode(&mut self, buf: &mut Vec<u8>, pending: &mut Vec<Pending>, index: usize, command: &Command, part: usize) -> Result<(), NetlinkError> {
        let mut push = |this: &mut Ipset, buf: &mut Vec<u8>, cmd: u16, excl: bool, first: usize, body: &dyn Fn(&mut Vec<u8>)| {
            let seq = this.next_seq();
            let flags = NLM_F_REQUEST | NLM_F_ACK | if excl { NLM_F_EXCL } else { 0 };
            message(buf, Header { kind: (SUBSYS << 8) | cmd, flags, seq, family: NFPROTO_IPV4, res_id: 0 }, |b| {
                attr(b, ATTR_PROTOCOL, &[PROTOCOL]);
                body(b);
            });
            pending.push(Pending { seq, command: index, first });
        };
        match command {
            Command::Create { name, kind, family } => {
                let family = nf_family(*kind, *family);
                let revision = self.revision(*kind, family)?;
                push(self, buf, CMD_CREATE, false, 0, &|b| {
                    attr(b, ATTR_SETNAME, &cstr(name));
                    attr(b, ATTR_TYPENAME, &cstr(kind.name()));
                    attr(b, ATTR_REVISION, &[revision]);
                    attr(b, ATTR_FAMILY, &[family]);
                    nested(b, ATTR_DATA, |b| match kind {
                        SetType::BitmapPort => {
                            entry::put_port(b, entry::ATTR_PORT, 0);
                            entry::put_port(b, entry::ATTR_PORT_TO, u16::MAX);
                        }
                        _ => {
                            attr(b, ATTR_HASHSIZE | entry::NLA_F_NET_BYTEORDER, &1024u32.to_be_bytes());
                            attr(b, ATTR_MAXELEM | entry::NLA_F_NET_BYTEORDER, &65536u32.to_be_bytes());
                        }
                    });
                });
            }
            Command::Flush(name) => push(self, buf, CMD_FLUSH, false, 0, &|b| attr(b, ATTR_SETNAME, &cstr(name))),
            Command::Destroy(name) => push(self, buf, CMD_DESTROY, true, 0, &|b| attr(b, ATTR_SETNAME, &cstr(name))),
            Command::Swap(a, b2) => push(self, buf, CMD_SWAP, false, 0, &|b| {
                attr(b, ATTR_SETNAME, &cstr(a));
                attr(b, ATTR_SETNAME2, &cstr(b2));
            }),
            Command::Add { name, entries, exist } | Command::Del { name, entries, exist } => {
                let cmd = if matches!(command, Command::Add { .. }) { CMD_ADD } else { CMD_DEL };
                let first = part * ELEMENTS_PER_MESSAGE;
                let part = &entries[first.min(entries.len())..(first + ELEMENTS_PER_MESSAGE).min(entries.len())];
                if !part.is_empty() {
                    push(self, buf, cmd, !exist, first, &|b| {
                        attr(b, ATTR_SETNAME, &cstr(name));
                        // Numbered elements: a refusal names the one it
                        // refused.
                        attr(b, ATTR_LINENO, &0u32.to_ne_bytes());
                        nested(b, ATTR_ADT, |b| {
                            for (i, e) in part.iter().enumerate() {
                                nested(b, ATTR_DATA, |b| {
                                    e.put(b);
                                    attr(b, ATTR_LINENO, &(i as u32 + 1).to_ne_bytes());
                                });
                            }
                        });
                    });
                }
            }
        }
        Ok(())
    }

    /// Sends what `buf` holds and reads an acknowledgement for each of
    /// `pending`; the first refusal, in order, is the error.
    fn flush(&mut self, buf: &mut Vec<u8>, pending: &mut Vec<Pending>, commands: &[Command]) -> Result<(), NetlinkError> {
        if pending.is_empty() {
            return Ok(());
        }
        self.socket.send(buf, 0).map_err(|e| io_err("ipset netlink send", e))?;
        buf.clear();
        // (pending index, error code, refused element's number)
        let mut refusals: Vec<(usize, i32, Option<u32>)> = Vec::new();
        let mut left = pending.len();
        while left > 0 {
            let data = self.recv()?;
            for (kind, msg) in messages(&data) {
                let Some(at) = pending.iter().position(|p| p.seq == message_seq(msg)) else { continue };
                if kind != NLMSG_ERROR {
                    continue;
                }
                left = left.saturating_sub(1);
                let code = -error_code(msg);
                if code != 0 {
                    refusals.push((at, code, refused_element(msg)));
                }
            }
        }
        let sent = std::mem::take(pending);
        // Destroying a set that is not there leaves the same state.
        refusals.retain(|&(at, code, _)| !(code == ENOENT && matches!(commands[sent[at].command], Command::Destroy(_))));
        let Some(&(at, code, line)) = refusals.iter().min_by_key(|(at, _, _)| *at) else { return Ok(()) };
        let p = sent[at];
        let command = &commands[p.command];
        let element = match (command, line) {
            (Command::Add { entries, .. } | Command::Del { entries, .. }, Some(n)) if n >= 1 => {
                entries.get(p.first + n as usize - 1).map(|e| format!(" {e}")).unwrap_or_default()
            }
            _ => String::new(),
        };
        Err(NetlinkError(format!("ipset {}{element} refused: {}", command.describe(), reason(code))))
    }
}

/// The family a set is created with: hash types carry theirs,
/// `bitmap:port` none (as `ipset` creates it).
fn nf_family(kind: SetType, family: IpFamily) -> u8 {
    match (kind, family) {
        (SetType::BitmapPort, _) => NFPROTO_UNSPEC,
        (_, IpFamily::V4) => NFPROTO_IPV4,
        (_, IpFamily::V6) => NFPROTO_IPV6,
    }
}

/// The number of the element an add or delete refused: the kernel sends
/// the request back in its error, with `IPSET_ATTR_LINENO` set to it.
fn refused_element(msg: &[u8]) -> Option<u32> {
    // nlmsghdr, the error code, then the request: its nlmsghdr and nfgenmsg.
    let request = msg.get(16 + 4..)?;
    let attrs = parse_attrs(request.get(HEADER_LEN..)?);
    let raw = find(&attrs, ATTR_LINENO)?;
    Some(u32::from_ne_bytes(raw.get(..4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kproxy_core::Protocol;

    #[test]
    fn commands_read_as_ipset_restore_reads_them() {
        let ip = "172.30.0.1".parse().unwrap();
        let create = Command::Create { name: "KUBE-CLUSTER-IP".into(), kind: SetType::HashIpPort, family: IpFamily::V6 };
        assert_eq!(create.restore_text(), "create KUBE-CLUSTER-IP hash:ip,port family inet6 hashsize 1024 maxelem 65536 -exist\n");
        let add = Command::Add { name: "S".into(), entries: vec![Entry::IpPort(ip, Protocol::Tcp, 80), Entry::Ip(ip)], exist: true };
        assert_eq!(add.restore_text(), "add S 172.30.0.1,tcp:80 -exist\nadd S 172.30.0.1 -exist\n");
        assert_eq!(Command::Swap("A".into(), "B".into()).restore_text(), "swap A B\n");
    }

    #[test]
    fn a_refusal_names_the_element_the_kernel_numbered() {
        // What the kernel sends back: an error header, then the request
        // with its line number attribute rewritten.
        let mut request = Vec::new();
        message(&mut request, Header { kind: (SUBSYS << 8) | CMD_ADD, flags: NLM_F_REQUEST, seq: 5, family: NFPROTO_IPV4, res_id: 0 }, |b| {
            attr(b, ATTR_PROTOCOL, &[PROTOCOL]);
            attr(b, ATTR_LINENO, &3u32.to_ne_bytes());
        });
        let mut reply = vec![0u8; 16];
        reply.extend_from_slice(&(-4103i32).to_ne_bytes());
        reply.extend_from_slice(&request);
        assert_eq!(refused_element(&reply), Some(3));
        assert_eq!(error_code(&reply), -4103);
        for cut in 0..reply.len() {
            let _ = refused_element(&reply[..cut]);
        }
        assert_eq!(reason(4102), "the two sets' types or families differ");
        assert!(reason(1).contains("not permitted"), "{}", reason(1));
    }
}
