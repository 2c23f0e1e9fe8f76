//! The nfnetlink wire format: building messages and attributes, parsing
//! replies, and a socket that runs dumps and collects acknowledgements.
//!
//! Messages are written into a plain `Vec<u8>`, several per buffer, and
//! sent with one `send`: netlink takes a batch of messages per datagram.

use std::io;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

/// `NLM_F_REQUEST`: every message to the kernel.
pub const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_ACK`: ask for an acknowledgement.
pub const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_DUMP`: list every object.
pub const NLM_F_DUMP: u16 = 0x300;
/// `NLM_F_CREATE`: create if missing.
pub const NLM_F_CREATE: u16 = 0x400;
/// `NLMSG_ERROR`: an error or (code 0) an acknowledgement.
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a dump.
pub const NLMSG_DONE: u16 = 3;
/// `NLA_F_NESTED`: the attribute holds attributes.
pub const NLA_F_NESTED: u16 = 0x8000;

/// Bytes of a netlink header plus the nfgenmsg header.
pub const HEADER_LEN: usize = 20;

/// A failed netlink operation, described in one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NetlinkError(pub String);

fn io_err(what: &str, e: impl std::fmt::Display) -> NetlinkError {
    NetlinkError(format!("{what}: {e}"))
}

/// Appends one netlink attribute (padded to 4 bytes).
pub fn attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// Appends a nested attribute whose body `body` writes.
pub fn nested(buf: &mut Vec<u8>, kind: u16, body: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    body(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    buf[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
}

/// A NUL-terminated string payload.
pub fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// The header fields of one message.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    /// Message type: `(subsystem << 8) | command`, or a control type.
    pub kind: u16,
    /// `NLM_F_*` flags.
    pub flags: u16,
    /// Sequence number.
    pub seq: u32,
    /// nfgenmsg family (`NFPROTO_*`, or `AF_*` for conntrack).
    pub family: u8,
    /// nfgenmsg resource id (the subsystem, in batch markers).
    pub res_id: u16,
}

/// Appends a message: netlink header, nfgenmsg, then what `body` writes.
pub fn message(buf: &mut Vec<u8>, header: Header, body: impl FnOnce(&mut Vec<u8>)) {
    let [r0, r1] = header.res_id.to_be_bytes();
    netlink_message(buf, header.kind, header.flags, header.seq, &[header.family, 0, r0, r1], body);
}

/// Appends a message of any netlink protocol: the netlink header (its
/// length filled in at the end), the protocol's fixed header `fixed`
/// (nfgenmsg, genlmsghdr, ifinfomsg, ...), then what `body` writes.
pub fn netlink_message(buf: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, fixed: &[u8], body: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 16]);
    buf.extend_from_slice(fixed);
    body(buf);
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    buf[start + 4..start + 6].copy_from_slice(&kind.to_ne_bytes());
    buf[start + 6..start + 8].copy_from_slice(&flags.to_ne_bytes());
    buf[start + 8..start + 12].copy_from_slice(&seq.to_ne_bytes());
}

/// Parsed attributes: (type without the nested flag, payload).
pub type Attrs<'a> = Vec<(u16, &'a [u8])>;

/// Parsed attributes, owned.
pub type OwnedAttrs = Vec<(u16, Vec<u8>)>;

/// The attributes in `data`. Stops at the first malformed one.
pub fn parse_attrs(mut data: &[u8]) -> Attrs<'_> {
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

/// The payload of the first attribute of type `kind`.
pub fn find<'a>(attrs: &[(u16, &'a [u8])], kind: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v)
}

/// The first attribute of type `kind`, as a string (without its NUL).
pub fn attr_str<'a>(attrs: &[(u16, &'a [u8])], kind: u16) -> Option<&'a str> {
    find(attrs, kind).and_then(|v| std::str::from_utf8(v.strip_suffix(&[0]).unwrap_or(v)).ok())
}

/// The messages in one datagram: (type, whole message). Stops at the
/// first malformed header.
pub fn messages(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
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

/// The sequence number of a message (0 if it is too short to have one).
pub fn message_seq(msg: &[u8]) -> u32 {
    msg.get(8..12).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0)
}

/// One datagram from a [`connected`] socket; `what` names the socket in
/// errors, a reply that never came included.
pub fn recv_reply(socket: &mut Socket, what: &str) -> Result<Vec<u8>, NetlinkError> {
    match socket.recv_from_full() {
        Ok((data, _)) => Ok(data),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(NetlinkError(format!("{what}: no reply within {} s", REPLY_TIMEOUT.as_secs()))),
        Err(e) => Err(io_err(&format!("{what} recv"), e)),
    }
}

/// EPROTO, for a reply too short to say what went wrong.
const EPROTO: i32 = 71;

/// The error code of an `NLMSG_ERROR` message (0 is an acknowledgement).
pub fn error_code(msg: &[u8]) -> i32 {
    msg.get(16..20).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(-EPROTO)
}

/// How long a reply may take before a request/reply socket
/// ([`connected`]) gives up on it.
pub const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A netlink socket of `protocol` (`NETLINK_*`) in the calling thread's
/// namespace, bound and connected to the kernel, with short
/// acknowledgements (refusals without a copy of the request, Linux 4.2
/// and later) and [`REPLY_TIMEOUT`] on every wait for a reply. `what`
/// names it in errors.
pub fn connected(protocol: isize, what: &str) -> Result<Socket, NetlinkError> {
    use nix::sys::socket::{setsockopt, sockopt};
    let mut socket = Socket::new(protocol).map_err(|e| io_err(&format!("{what} socket"), e))?;
    socket.bind_auto().map_err(|e| io_err(&format!("{what} bind"), e))?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(|e| io_err(&format!("{what} connect"), e))?;
    let _ = socket.set_cap_ack(true);
    let timeout = nix::sys::time::TimeVal::new(REPLY_TIMEOUT.as_secs() as _, 0);
    setsockopt(&socket, sockopt::ReceiveTimeout, &timeout).map_err(|e| io_err(&format!("{what} timeout"), e))?;
    Ok(socket)
}

/// Runs `open` on a short-lived thread inside the named network namespace
/// (`/run/netns/NAME`) and returns what it made: a socket opened there
/// stays bound to that namespace, and the caller's namespace is untouched.
pub fn in_netns<T: Send + 'static>(name: &str, open: impl FnOnce() -> Result<T, NetlinkError> + Send + 'static) -> Result<T, NetlinkError> {
    let path = format!("/run/netns/{name}");
    let file = std::fs::File::open(&path).map_err(|e| io_err(&path, e))?;
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| io_err(&format!("setns {path}"), e))?;
        open()
    })
    .join()
    .map_err(|_| NetlinkError("netns thread panicked".into()))?
}

/// A netfilter netlink socket, bound to one network namespace for life.
#[derive(Debug)]
pub struct NfSocket {
    socket: Socket,
    seq: u32,
}

impl NfSocket {
    /// A socket in the calling thread's network namespace, with buffers
    /// of `send_buffer` bytes and 4 MiB for replies.
    pub fn open(send_buffer: usize) -> Result<NfSocket, NetlinkError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| io_err("netlink socket", e))?;
        socket.bind_auto().map_err(|e| io_err("netlink bind", e))?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(|e| io_err("netlink connect", e))?;
        // Forcing needs CAP_NET_ADMIN; without it the defaults stay, which
        // only limits batch sizes.
        let _ = nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::SndBufForce, &send_buffer);
        let _ = nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBufForce, &(4 << 20));
        Ok(NfSocket { socket, seq: 1 })
    }

    /// A socket in the named network namespace (`/run/netns/NAME`),
    /// opened from a short-lived thread so the caller's namespace is
    /// untouched.
    pub fn open_in_netns(name: &str, send_buffer: usize) -> Result<NfSocket, NetlinkError> {
        in_netns(name, move || NfSocket::open(send_buffer))
    }

    /// The next sequence number (never 0).
    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Sends a buffer of messages.
    pub fn send(&mut self, buf: &[u8]) -> Result<(), NetlinkError> {
        self.socket.send(buf, 0).map_err(|e| io_err("netlink send", e))?;
        Ok(())
    }

    /// Reads `expected` acknowledgements and returns the errors among
    /// them. With `batch`, the kernel stops at the first error (an
    /// nfnetlink batch aborts), so reading stops there too.
    pub fn acks(&mut self, mut expected: usize, batch: bool) -> Result<Vec<io::Error>, NetlinkError> {
        let mut errors = Vec::new();
        while expected > 0 {
            let (data, _) = self.socket.recv_from_full().map_err(|e| io_err("netlink recv", e))?;
            for (kind, msg) in messages(&data) {
                if kind != NLMSG_ERROR {
                    continue;
                }
                let code = error_code(msg);
                expected = expected.saturating_sub(1);
                if code != 0 {
                    errors.push(io::Error::from_raw_os_error(-code));
                    if batch {
                        expected = 0;
                    }
                }
            }
        }
        Ok(errors)
    }

    /// Receives one datagram into a 64 KiB buffer. Reading with a large
    /// buffer also tells the kernel to fill dump replies up to 32 KiB
    /// (it sizes them by the largest read so far), instead of about a
    /// page: a set dump restarts its walk for every reply, so fewer
    /// replies make a large dump several times cheaper.
    fn recv_large(&mut self) -> Result<Vec<u8>, NetlinkError> {
        let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
        self.socket.recv_from(&mut buf, 0).map_err(|e| io_err("netlink recv", e))?;
        Ok(buf)
    }

    /// Runs one acknowledged request (a `get` of several objects, say),
    /// hands each reply's attributes to `each`, and returns the error the
    /// kernel ended it with, if any (a `get` stops at the first object it
    /// does not have).
    pub fn request(&mut self, kind: u16, family: u8, body: impl FnOnce(&mut Vec<u8>), mut each: impl FnMut(Attrs<'_>)) -> Result<Option<io::Error>, NetlinkError> {
        let seq = self.next_seq();
        let mut buf = Vec::new();
        message(&mut buf, Header { kind, flags: NLM_F_REQUEST | NLM_F_ACK, seq, family, res_id: 0 }, body);
        self.send(&buf)?;
        loop {
            let data = self.recv_large()?;
            for (kind, msg) in messages(&data) {
                let msg_seq = message_seq(msg);
                match kind {
                    NLMSG_ERROR if msg_seq == seq => {
                        let code = error_code(msg);
                        return Ok((code != 0).then(|| io::Error::from_raw_os_error(-code)));
                    }
                    NLMSG_ERROR | NLMSG_DONE => {}
                    _ if msg.len() >= HEADER_LEN && msg_seq == seq => each(parse_attrs(&msg[HEADER_LEN..])),
                    _ => {}
                }
            }
        }
    }

    /// Runs one dump request and hands each reply's attributes (after the
    /// nfgenmsg header) and nfgenmsg family to `each`.
    pub fn dump(
        &mut self,
        kind: u16,
        family: u8,
        body: impl FnOnce(&mut Vec<u8>),
        mut each: impl FnMut(u8, Attrs<'_>),
    ) -> Result<(), NetlinkError> {
        let seq = self.next_seq();
        let mut buf = Vec::new();
        message(&mut buf, Header { kind, flags: NLM_F_REQUEST | NLM_F_DUMP, seq, family, res_id: 0 }, body);
        self.send(&buf)?;
        loop {
            let data = self.recv_large()?;
            for (kind, msg) in messages(&data) {
                match kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = error_code(msg);
                        if code != 0 {
                            return Err(io_err("dump refused", io::Error::from_raw_os_error(-code)));
                        }
                    }
                    _ if msg.len() >= HEADER_LEN => each(msg[16], parse_attrs(&msg[HEADER_LEN..])),
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_attributes_round_trip() {
        let mut buf = Vec::new();
        let header = Header { kind: 0x0102, flags: NLM_F_REQUEST, seq: 7, family: 2, res_id: 0 };
        message(&mut buf, header, |b| {
            attr(b, 1, &cstr("abc"));
            nested(b, 2, |b| attr(b, 3, &[1, 2, 3, 4, 5]));
        });
        message(&mut buf, Header { seq: 8, ..header }, |_| {});
        let all: Vec<_> = messages(&buf).collect();
        assert_eq!(all.len(), 2);
        let (kind, msg) = all[0];
        assert_eq!(kind, 0x0102);
        assert_eq!(msg[16], 2, "family");
        let attrs = parse_attrs(&msg[HEADER_LEN..]);
        assert_eq!(attr_str(&attrs, 1), Some("abc"));
        let inner = parse_attrs(find(&attrs, 2).expect("nested attribute"));
        assert_eq!(find(&inner, 3), Some(&[1u8, 2, 3, 4, 5][..]));
        assert_eq!(all[1].1.len(), HEADER_LEN);
    }

    #[test]
    fn truncated_input_stops_parsing_without_panicking() {
        let mut buf = Vec::new();
        message(&mut buf, Header { kind: 1, flags: 0, seq: 1, family: 0, res_id: 0 }, |b| attr(b, 1, &[9; 10]));
        for cut in 0..buf.len() {
            let _ = messages(&buf[..cut]).count();
            let _ = parse_attrs(&buf[HEADER_LEN.min(cut)..cut]);
        }
        assert_eq!(error_code(&[0; 10]), -EPROTO);
    }
}
