//! Generic netlink (`NETLINK_GENERIC`): a socket that resolves families by
//! name, sends batches of acknowledged requests, runs dumps and single
//! requests, with the attribute helpers of [`crate::wire`].
//!
//! Unlike an nfnetlink batch, every message of a datagram is processed on
//! its own: one refused request does not stop the others, so each gets
//! `NLM_F_ACK` and its answer is matched by sequence number.

use std::io;

use netlink_sys::{protocols::NETLINK_GENERIC, Socket};

use crate::wire::{attr, cstr, error_code, messages, parse_attrs, Attrs, NetlinkError, OwnedAttrs};
use crate::wire::{NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};

/// Bytes of a netlink header plus the genlmsghdr.
pub const GENL_HEADER_LEN: usize = 20;
/// `GENL_ID_CTRL`: the message type of the controller family, nlctrl.
pub const GENL_ID_CTRL: u16 = 0x10;
/// `CTRL_CMD_GETFAMILY`: look a family up.
pub const CTRL_CMD_GETFAMILY: u8 = 3;
/// `CTRL_ATTR_FAMILY_ID`: a family's id (u16).
pub const CTRL_ATTR_FAMILY_ID: u16 = 1;
/// `CTRL_ATTR_FAMILY_NAME`: a family's name (string).
pub const CTRL_ATTR_FAMILY_NAME: u16 = 2;
/// The largest datagram [`GenlSocket::acked`] sends (a bigger message
/// goes alone).
pub const MAX_SEND: usize = 64 << 10;

/// Bytes read per datagram. The kernel's datagrams are smaller: dumps
/// fill at most 32 KiB, acknowledgements carry only the request's header
/// (`NETLINK_CAP_ACK`), replies to single requests are a few KiB.
pub const RECV_BUFFER: usize = 64 << 10;
/// ENOENT: what nlctrl answers for an unknown family.
const ENOENT: i32 = 2;

fn io_err(what: &str, e: impl std::fmt::Display) -> NetlinkError {
    NetlinkError(format!("{what}: {e}"))
}

/// Appends a generic netlink message: netlink header, genlmsghdr
/// (`cmd`, `version`, reserved 0), then what `body` writes.
pub fn genl_message(buf: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, cmd: u8, version: u8, body: impl FnOnce(&mut Vec<u8>)) {
    crate::wire::netlink_message(buf, kind, flags, seq, &[cmd, version, 0, 0], body);
}

pub use crate::wire::message_seq;

/// The command and attributes of a generic netlink message, or None if
/// it is too short for a genlmsghdr.
pub fn genl_payload(msg: &[u8]) -> Option<(u8, Attrs<'_>)> {
    let cmd = *msg.get(16)?;
    Some((cmd, parse_attrs(msg.get(GENL_HEADER_LEN..)?)))
}

/// One request for [`GenlSocket::acked`]: a command and its attributes,
/// already encoded (with [`crate::wire::attr`] and friends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenlRequest {
    /// The family's command.
    pub cmd: u8,
    /// The encoded attributes.
    pub attrs: Vec<u8>,
}

/// Groups consecutive messages of `lens` bytes into datagrams of at most
/// `limit` bytes (a longer message goes alone); returns each group's end.
pub fn plan_sends(lens: &[usize], limit: usize) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut size = 0;
    for (i, len) in lens.iter().enumerate() {
        if size > 0 && size + len > limit {
            ends.push(i);
            size = 0;
        }
        size += len;
    }
    if size > 0 {
        ends.push(lens.len());
    }
    ends
}

/// A generic netlink socket, bound to one network namespace for life.
#[derive(Debug)]
pub struct GenlSocket {
    socket: Socket,
    seq: u32,
}

impl GenlSocket {
    /// A socket in the calling thread's network namespace, with 1 MiB to
    /// send and 4 MiB for replies (when allowed to force them), short
    /// acknowledgements, and a 30 s limit on every wait for a reply.
    pub fn open() -> Result<GenlSocket, NetlinkError> {
        use nix::sys::socket::{setsockopt, sockopt};
        let socket = crate::wire::connected(NETLINK_GENERIC, "generic netlink")?;
        // Forcing needs CAP_NET_ADMIN; without it the defaults stay, which
        // only matters for big batches.
        let _ = setsockopt(&socket, sockopt::SndBufForce, &(1 << 20));
        let _ = setsockopt(&socket, sockopt::RcvBufForce, &(4 << 20));
        Ok(GenlSocket { socket, seq: 1 })
    }

    /// A socket in the named network namespace (`/run/netns/NAME`),
    /// opened from a short-lived thread so the caller's namespace is
    /// untouched.
    pub fn open_in_netns(name: &str) -> Result<GenlSocket, NetlinkError> {
        crate::wire::in_netns(name, GenlSocket::open)
    }

    /// `count` consecutive sequence numbers; returns the first.
    fn take_seqs(&mut self, count: usize) -> u32 {
        let first = self.seq;
        self.seq = self.seq.wrapping_add(count as u32);
        first
    }

    fn send(&mut self, buf: &[u8]) -> Result<(), NetlinkError> {
        self.socket.send(buf, 0).map_err(|e| io_err("generic netlink send", e))?;
        Ok(())
    }

    /// One datagram, read with one call into a [`RECV_BUFFER`]-byte buffer
    /// (which also makes the kernel fill dump datagrams up to 32 KiB).
    fn recv(&mut self) -> Result<Vec<u8>, NetlinkError> {
        let mut data = Vec::with_capacity(RECV_BUFFER);
        match self.socket.recv(&mut data, nix::sys::socket::MsgFlags::MSG_TRUNC.bits()) {
            Ok(len) if len > data.len() => Err(NetlinkError(format!("generic netlink: a {len}-byte reply is larger than the buffer"))),
            Ok(_) => Ok(data),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                Err(NetlinkError(format!("generic netlink: no reply within {} s", crate::wire::REPLY_TIMEOUT.as_secs())))
            }
            Err(e) => Err(io_err("generic netlink recv", e)),
        }
    }

    /// The id of the family called `name`, or None if this kernel has no
    /// such family (nlctrl answers ENOENT).
    pub fn family(&mut self, name: &str) -> Result<Option<u16>, NetlinkError> {
        let mut body = Vec::new();
        attr(&mut body, CTRL_ATTR_FAMILY_NAME, &cstr(name));
        match self.transact(GENL_ID_CTRL, 1, CTRL_CMD_GETFAMILY, &body)? {
            Ok(attrs) => {
                let id = attrs.iter().find(|(k, _)| *k == CTRL_ATTR_FAMILY_ID).and_then(|(_, v)| v.get(..2));
                match id {
                    Some(b) => Ok(Some(u16::from_ne_bytes([b[0], b[1]]))),
                    None => Err(NetlinkError(format!("generic netlink family {name}: the reply has no id"))),
                }
            }
            Err(e) if e.raw_os_error() == Some(ENOENT) => Ok(None),
            Err(e) => Err(io_err(&format!("generic netlink family {name}"), e)),
        }
    }

    /// Sends one request and returns the attributes of its reply; a
    /// refusal is an error naming `cmd`.
    pub fn get(&mut self, family: u16, version: u8, cmd: u8, attrs: &[u8]) -> Result<OwnedAttrs, NetlinkError> {
        self.transact(family, version, cmd, attrs)?.map_err(|e| io_err(&format!("generic netlink command {cmd} refused"), e))
    }

    /// Sends one request and returns the attributes of its reply, or the
    /// kernel's refusal as an `io::Error` (for requests where a refusal is
    /// an answer, such as looking up something that may not exist).
    pub fn lookup(&mut self, family: u16, version: u8, cmd: u8, attrs: &[u8]) -> Result<Result<OwnedAttrs, io::Error>, NetlinkError> {
        self.transact(family, version, cmd, attrs)
    }

    /// Sends one request with `flags`; returns its sequence number.
    fn request(&mut self, family: u16, version: u8, cmd: u8, flags: u16, attrs: &[u8]) -> Result<u32, NetlinkError> {
        let seq = self.take_seqs(1);
        let mut buf = Vec::new();
        genl_message(&mut buf, family, flags, seq, cmd, version, |b| b.extend_from_slice(attrs));
        self.send(&buf)?;
        Ok(seq)
    }

    /// One request, one reply: Ok(attributes) or the kernel's error.
    fn transact(&mut self, family: u16, version: u8, cmd: u8, attrs: &[u8]) -> Result<Result<OwnedAttrs, io::Error>, NetlinkError> {
        let seq = self.request(family, version, cmd, NLM_F_REQUEST, attrs)?;
        loop {
            let data = self.recv()?;
            for (kind, msg) in messages(&data) {
                if message_seq(msg) != seq {
                    continue;
                }
                if kind == NLMSG_ERROR {
                    let code = error_code(msg);
                    if code != 0 {
                        return Ok(Err(io::Error::from_raw_os_error(-code)));
                    }
                    continue;
                }
                let (_, parsed) =
                    genl_payload(msg).ok_or_else(|| NetlinkError(format!("generic netlink command {cmd}: truncated reply")))?;
                return Ok(Ok(parsed.into_iter().map(|(k, v)| (k, v.to_vec())).collect()));
            }
        }
    }

    /// Sends every request with `NLM_F_ACK`, as many per datagram as fit
    /// in [`MAX_SEND`] bytes, and returns the refused ones: (index in
    /// `requests`, the kernel's error). Each request is processed on its
    /// own, in order; a refusal does not stop the rest. Replies other than
    /// acknowledgements are ignored.
    pub fn acked(&mut self, family: u16, version: u8, requests: &[GenlRequest]) -> Result<Vec<(usize, io::Error)>, NetlinkError> {
        let lens: Vec<usize> = requests.iter().map(|r| GENL_HEADER_LEN + r.attrs.len()).collect();
        let mut failed = Vec::new();
        let mut start = 0;
        let mut buf = Vec::with_capacity(MAX_SEND);
        for end in plan_sends(&lens, MAX_SEND) {
            let chunk = &requests[start..end];
            let first = self.take_seqs(chunk.len());
            buf.clear();
            for (i, r) in chunk.iter().enumerate() {
                let seq = first.wrapping_add(i as u32);
                genl_message(&mut buf, family, NLM_F_REQUEST | NLM_F_ACK, seq, r.cmd, version, |b| b.extend_from_slice(&r.attrs));
            }
            self.send(&buf)?;
            let mut answered = vec![false; chunk.len()];
            let mut missing = chunk.len();
            while missing > 0 {
                let data = self.recv()?;
                for (kind, msg) in messages(&data) {
                    let i = message_seq(msg).wrapping_sub(first) as usize;
                    if kind != NLMSG_ERROR || i >= chunk.len() || answered[i] {
                        continue;
                    }
                    answered[i] = true;
                    missing -= 1;
                    let code = error_code(msg);
                    if code != 0 {
                        failed.push((start + i, io::Error::from_raw_os_error(-code)));
                    }
                }
            }
            start = end;
        }
        Ok(failed)
    }

    /// Runs one dump request and hands each reply's command and
    /// attributes to `each`.
    pub fn dump(
        &mut self,
        family: u16,
        version: u8,
        cmd: u8,
        attrs: &[u8],
        mut each: impl FnMut(u8, Attrs<'_>),
    ) -> Result<(), NetlinkError> {
        let seq = self.request(family, version, cmd, NLM_F_REQUEST | NLM_F_DUMP, attrs)?;
        loop {
            let data = self.recv()?;
            for (kind, msg) in messages(&data) {
                if message_seq(msg) != seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = error_code(msg);
                        if code != 0 {
                            return Err(io_err(&format!("generic netlink dump {cmd} refused"), io::Error::from_raw_os_error(-code)));
                        }
                    }
                    _ => {
                        if let Some((reply_cmd, parsed)) = genl_payload(msg) {
                            each(reply_cmd, parsed);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::attr_str;

    #[test]
    fn genl_messages_carry_command_and_version() {
        let mut buf = Vec::new();
        genl_message(&mut buf, 0x1234, NLM_F_REQUEST | NLM_F_ACK, 9, 7, 1, |b| attr(b, 2, &cstr("IPVS")));
        genl_message(&mut buf, 0x1234, NLM_F_REQUEST, 10, 8, 1, |_| {});
        let all: Vec<_> = messages(&buf).collect();
        assert_eq!(all.len(), 2);
        let (kind, msg) = all[0];
        assert_eq!(kind, 0x1234);
        assert_eq!(&msg[6..8], &(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        assert_eq!(message_seq(msg), 9);
        assert_eq!(&msg[16..20], &[7, 1, 0, 0], "genlmsghdr");
        let (cmd, attrs) = genl_payload(msg).unwrap();
        assert_eq!((cmd, attr_str(&attrs, 2)), (7, Some("IPVS")));
        assert_eq!(all[1].1.len(), GENL_HEADER_LEN);
        assert_eq!(message_seq(all[1].1), 10);
        for cut in 0..buf.len() {
            messages(&buf[..cut]).for_each(|(_, m)| drop(genl_payload(m)));
        }
        assert_eq!(genl_payload(&buf[..19]), None);
        assert_eq!(message_seq(&buf[..11]), 0);
    }

    #[test]
    fn sends_are_planned_up_to_the_limit() {
        assert_eq!(plan_sends(&[], 100), Vec::<usize>::new());
        assert_eq!(plan_sends(&[40, 40, 40, 100, 10, 150, 10], 100), vec![2, 3, 4, 5, 6, 7]);
        assert_eq!(plan_sends(&[50, 50, 1], 100), vec![2, 3]);
        let lens = vec![140; 8000];
        let ends = plan_sends(&lens, MAX_SEND);
        assert_eq!(*ends.last().unwrap(), 8000);
        assert!(ends.windows(2).all(|w| (w[1] - w[0]) * 140 <= MAX_SEND));
        assert_eq!(ends.len(), 8000usize.div_ceil(MAX_SEND / 140));
    }

    /// Against the running kernel's nlctrl (every kernel has it), in a
    /// private network namespace.
    #[test]
    fn families_acks_and_dumps_against_the_kernel() {
        if !kproxy_testkit::kernel_tests_enabled("families_acks_and_dumps_against_the_kernel") {
            return;
        }
        let ns = kproxy_testkit::Netns::new("genl").unwrap();
        let mut s = GenlSocket::open_in_netns(ns.name()).unwrap();
        assert_eq!(s.family("nlctrl").unwrap(), Some(GENL_ID_CTRL));
        assert_eq!(s.family("kproxy-no-such").unwrap(), None);
        // 3,000 lookups over several datagrams: every 500th exists, the
        // others are refused one by one without stopping the rest.
        let requests: Vec<GenlRequest> = (0..3000)
            .map(|i| {
                let mut attrs = Vec::new();
                attr(&mut attrs, CTRL_ATTR_FAMILY_NAME, &cstr(if i % 500 == 0 { "nlctrl" } else { "kproxy-no-such" }));
                GenlRequest { cmd: CTRL_CMD_GETFAMILY, attrs }
            })
            .collect();
        let failed = s.acked(GENL_ID_CTRL, 1, &requests).unwrap();
        let indexes: Vec<usize> = failed.iter().map(|(i, _)| *i).collect();
        assert_eq!(indexes, (0..3000).filter(|i| i % 500 != 0).collect::<Vec<_>>());
        assert!(failed.iter().all(|(_, e)| e.raw_os_error() == Some(ENOENT)));
        let mut names = Vec::new();
        s.dump(GENL_ID_CTRL, 1, CTRL_CMD_GETFAMILY, &[], |_, attrs| {
            names.extend(attr_str(&attrs, CTRL_ATTR_FAMILY_NAME).map(String::from))
        })
        .unwrap();
        assert!(names.iter().any(|n| n == "nlctrl"), "{names:?}");
        let reply = s.get(GENL_ID_CTRL, 1, CTRL_CMD_GETFAMILY, &{
            let mut a = Vec::new();
            attr(&mut a, CTRL_ATTR_FAMILY_NAME, &cstr("nlctrl"));
            a
        });
        assert!(reply.unwrap().iter().any(|(k, v)| *k == CTRL_ATTR_FAMILY_ID && v[..2] == GENL_ID_CTRL.to_ne_bytes()));
        let err = s.get(GENL_ID_CTRL, 1, CTRL_CMD_GETFAMILY, &[]).unwrap_err().to_string();
        assert!(err.contains("refused"), "{err}");
    }
}
