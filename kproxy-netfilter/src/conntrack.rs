//! Conntrack over netlink (ctnetlink): list entries, delete stale ones in
//! batches.
//!
//! [`Conntrack::clean`] is upstream's post-sync UDP cleanup: dump the
//! family's entries, keep the UDP/SCTP ones a
//! [`StaleFlowFilter`] calls stale, and delete them a few hundred per
//! datagram (deleting one entry per request was a known upstream
//! slowdown).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use kproxy_core::conntrack::{Flow, StaleFlowFilter};
use kproxy_core::{IpFamily, Protocol};

use crate::wire::{self, Header, NetlinkError, NfSocket, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST};

/// `NLM_F_EXCL`: fail if the entry exists.
const NLM_F_EXCL: u16 = 0x200;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TIMEOUT: u16 = 7;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

const ENOENT: i32 = 2;

/// Deletions per datagram: small enough that the acknowledgements fit the
/// receive buffer many times over.
const DELETES_PER_SEND: usize = 512;

fn ct_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_CTNETLINK << 8) | msg
}

fn af(family: IpFamily) -> u8 {
    match family {
        IpFamily::V4 => 2,  // AF_INET
        IpFamily::V6 => 10, // AF_INET6
    }
}

/// A protocol's IP protocol number.
pub(crate) fn protocol_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn protocol_of(number: u8) -> Option<Protocol> {
    match number {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        132 => Some(Protocol::Sctp),
        _ => None,
    }
}

/// What one [`Conntrack::clean`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanReport {
    /// Entries listed (TCP, UDP and SCTP of the family).
    pub examined: usize,
    /// Entries the filter called stale.
    pub stale: usize,
    /// Entries deleted (a stale entry may expire before its turn).
    pub deleted: usize,
}

/// A ctnetlink socket.
#[derive(Debug)]
pub struct Conntrack {
    socket: NfSocket,
}

impl Conntrack {
    /// Conntrack of the calling thread's network namespace.
    pub fn open() -> Result<Conntrack, NetlinkError> {
        Ok(Conntrack { socket: NfSocket::open(1 << 20)? })
    }

    /// Conntrack of the named network namespace (`/run/netns/NAME`).
    pub fn open_in_netns(name: &str) -> Result<Conntrack, NetlinkError> {
        Ok(Conntrack { socket: NfSocket::open_in_netns(name, 1 << 20)? })
    }

    /// Every TCP, UDP and SCTP entry of `family`.
    pub fn flows(&mut self, family: IpFamily) -> Result<Vec<Flow>, NetlinkError> {
        let mut out = Vec::new();
        self.socket.dump(ct_type(IPCTNL_MSG_CT_GET), af(family), |_| {}, |_, attrs| out.extend(decode_flow(&attrs)))?;
        Ok(out)
    }

    /// Deletes `flows`; returns how many existed. Entries already gone
    /// are not an error.
    pub fn delete(&mut self, flows: &[Flow]) -> Result<usize, NetlinkError> {
        let mut deleted = 0;
        for part in flows.chunks(DELETES_PER_SEND) {
            let mut buf = Vec::new();
            for flow in part {
                let seq = self.socket.next_seq();
                encode_delete(&mut buf, seq, flow);
            }
            self.socket.send(&buf)?;
            let errors = self.socket.acks(part.len(), false)?;
            if let Some(e) = errors.iter().find(|e| e.raw_os_error() != Some(ENOENT)) {
                return Err(NetlinkError(format!("conntrack delete refused: {e}")));
            }
            deleted += part.len() - errors.len();
        }
        Ok(deleted)
    }

    /// Creates entries for `flows` (replies addressed to the original
    /// source, so no source NAT), expiring after `timeout_seconds`: for
    /// tests and benchmarks, which need many entries without the traffic.
    pub fn insert(&mut self, flows: &[Flow], timeout_seconds: u32) -> Result<(), NetlinkError> {
        for part in flows.chunks(DELETES_PER_SEND) {
            let mut buf = Vec::new();
            for flow in part {
                let seq = self.socket.next_seq();
                let family = if flow.original_destination.is_ipv4() { IpFamily::V4 } else { IpFamily::V6 };
                let flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK;
                let header = Header { kind: ct_type(IPCTNL_MSG_CT_NEW), flags, seq, family: af(family), res_id: 0 };
                wire::message(&mut buf, header, |b| {
                    encode_tuple(b, CTA_TUPLE_ORIG, flow.protocol, flow.original_source, flow.original_destination);
                    encode_tuple(b, CTA_TUPLE_REPLY, flow.protocol, flow.reply_source, flow.original_source);
                    wire::attr(b, CTA_TIMEOUT, &timeout_seconds.to_be_bytes());
                    if flow.zone != 0 {
                        wire::attr(b, CTA_ZONE, &flow.zone.to_be_bytes());
                    }
                });
            }
            self.socket.send(&buf)?;
            if let Some(e) = self.socket.acks(part.len(), false)?.first() {
                return Err(NetlinkError(format!("conntrack insert refused: {e}")));
            }
        }
        Ok(())
    }

    /// Deletes the entries of `family` that `filter` calls stale.
    pub fn clean(&mut self, family: IpFamily, filter: &StaleFlowFilter) -> Result<CleanReport, NetlinkError> {
        if filter.is_empty() {
            return Ok(CleanReport::default());
        }
        let flows = self.flows(family)?;
        let stale: Vec<Flow> = flows.iter().filter(|f| filter.is_stale(f)).copied().collect();
        let deleted = self.delete(&stale)?;
        Ok(CleanReport { examined: flows.len(), stale: stale.len(), deleted })
    }
}

/// Appends a delete request for `flow`'s entry (found by its original
/// tuple and zone).
fn encode_delete(buf: &mut Vec<u8>, seq: u32, flow: &Flow) {
    let family = if flow.original_destination.is_ipv4() { IpFamily::V4 } else { IpFamily::V6 };
    let header = Header { kind: ct_type(IPCTNL_MSG_CT_DELETE), flags: NLM_F_REQUEST | NLM_F_ACK, seq, family: af(family), res_id: 0 };
    wire::message(buf, header, |b| {
        encode_tuple(b, CTA_TUPLE_ORIG, flow.protocol, flow.original_source, flow.original_destination);
        if flow.zone != 0 {
            wire::attr(b, CTA_ZONE, &flow.zone.to_be_bytes());
        }
    });
}

fn encode_tuple(b: &mut Vec<u8>, kind: u16, protocol: Protocol, src: SocketAddr, dst: SocketAddr) {
    wire::nested(b, kind, |b| {
        wire::nested(b, CTA_TUPLE_IP, |b| match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                wire::attr(b, CTA_IP_V4_SRC, &s.octets());
                wire::attr(b, CTA_IP_V4_DST, &d.octets());
            }
            (s, d) => {
                wire::attr(b, CTA_IP_V6_SRC, &v6_octets(s));
                wire::attr(b, CTA_IP_V6_DST, &v6_octets(d));
            }
        });
        wire::nested(b, CTA_TUPLE_PROTO, |b| {
            wire::attr(b, CTA_PROTO_NUM, &[protocol_number(protocol)]);
            wire::attr(b, CTA_PROTO_SRC_PORT, &src.port().to_be_bytes());
            wire::attr(b, CTA_PROTO_DST_PORT, &dst.port().to_be_bytes());
        });
    });
}

fn v6_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// (protocol, source, destination) of one `CTA_TUPLE_*`.
fn decode_tuple(payload: &[u8]) -> Option<(Protocol, SocketAddr, SocketAddr)> {
    let attrs = wire::parse_attrs(payload);
    let ip = wire::parse_attrs(wire::find(&attrs, CTA_TUPLE_IP)?);
    let proto = wire::parse_attrs(wire::find(&attrs, CTA_TUPLE_PROTO)?);
    let (src, dst) = if let (Some(s), Some(d)) = (wire::find(&ip, CTA_IP_V4_SRC), wire::find(&ip, CTA_IP_V4_DST)) {
        (IpAddr::from(Ipv4Addr::from(<[u8; 4]>::try_from(s).ok()?)), IpAddr::from(Ipv4Addr::from(<[u8; 4]>::try_from(d).ok()?)))
    } else {
        let s = <[u8; 16]>::try_from(wire::find(&ip, CTA_IP_V6_SRC)?).ok()?;
        let d = <[u8; 16]>::try_from(wire::find(&ip, CTA_IP_V6_DST)?).ok()?;
        (IpAddr::from(Ipv6Addr::from(s)), IpAddr::from(Ipv6Addr::from(d)))
    };
    let protocol = protocol_of(*wire::find(&proto, CTA_PROTO_NUM)?.first()?)?;
    let port = |kind| wire::find(&proto, kind).and_then(|p| <[u8; 2]>::try_from(p).ok()).map(u16::from_be_bytes);
    Some((protocol, SocketAddr::new(src, port(CTA_PROTO_SRC_PORT)?), SocketAddr::new(dst, port(CTA_PROTO_DST_PORT)?)))
}

/// One dump reply as a [`Flow`]; None for protocols kproxy does not
/// serve (ICMP, ...) or a malformed entry.
fn decode_flow(attrs: &[(u16, &[u8])]) -> Option<Flow> {
    let (protocol, original_source, original_destination) = decode_tuple(wire::find(attrs, CTA_TUPLE_ORIG)?)?;
    let (_, reply_source, _) = decode_tuple(wire::find(attrs, CTA_TUPLE_REPLY)?)?;
    let zone = wire::find(attrs, CTA_ZONE).and_then(|z| <[u8; 2]>::try_from(z).ok()).map(u16::from_be_bytes).unwrap_or(0);
    Some(Flow { protocol, original_source, original_destination, reply_source, zone })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(s: &str) -> SocketAddr {
        s.parse().expect("test socket address")
    }

    /// A dump reply as the kernel writes one: both tuples and a zone.
    fn reply(flow: &Flow, reply_destination: SocketAddr) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_tuple(&mut buf, CTA_TUPLE_ORIG, flow.protocol, flow.original_source, flow.original_destination);
        encode_tuple(&mut buf, CTA_TUPLE_REPLY, flow.protocol, flow.reply_source, reply_destination);
        wire::attr(&mut buf, CTA_ZONE, &flow.zone.to_be_bytes());
        buf
    }

    #[test]
    fn dump_replies_decode_to_flows() {
        for (src, dst, reply_src) in [
            ("10.0.0.9:40000", "172.30.0.10:53", "10.1.0.1:5353"),
            ("[fd00::9]:40000", "[fd00:30::10]:53", "[fd00:1::1]:5353"),
        ] {
            for protocol in [Protocol::Udp, Protocol::Sctp, Protocol::Tcp] {
                let flow = Flow { protocol, original_source: sock(src), original_destination: sock(dst), reply_source: sock(reply_src), zone: 7 };
                let bytes = reply(&flow, sock(src));
                assert_eq!(decode_flow(&wire::parse_attrs(&bytes)), Some(flow));
            }
        }
    }

    #[test]
    fn other_protocols_and_truncated_replies_are_skipped() {
        let flow = Flow { protocol: Protocol::Udp, original_source: sock("10.0.0.9:1"), original_destination: sock("10.0.0.1:2"), reply_source: sock("10.0.0.1:2"), zone: 0 };
        let mut bytes = reply(&flow, sock("10.0.0.9:1"));
        for cut in 0..bytes.len() {
            let _ = decode_flow(&wire::parse_attrs(&bytes[..cut]));
        }
        // Rewrite the protocol number to ICMP (1).
        let pos = bytes.windows(5).position(|w| w == [5, 0, 1, 0, 17]).expect("protocol attribute");
        bytes[pos + 4] = 1;
        assert_eq!(decode_flow(&wire::parse_attrs(&bytes)), None);
    }

    #[test]
    fn a_delete_request_names_the_original_tuple_and_zone() {
        let flow = Flow { protocol: Protocol::Udp, original_source: sock("10.0.0.9:40000"), original_destination: sock("172.30.0.10:53"), reply_source: sock("10.1.0.1:5353"), zone: 3 };
        let mut buf = Vec::new();
        encode_delete(&mut buf, 9, &flow);
        let (kind, msg) = wire::messages(&buf).next().expect("one message");
        assert_eq!(kind, 0x0102, "IPCTNL_MSG_CT_DELETE");
        assert_eq!(msg[16], 2, "AF_INET");
        let attrs = wire::parse_attrs(&msg[wire::HEADER_LEN..]);
        let tuple = decode_tuple(wire::find(&attrs, CTA_TUPLE_ORIG).expect("original tuple"));
        assert_eq!(tuple, Some((Protocol::Udp, flow.original_source, flow.original_destination)));
        assert_eq!(wire::find(&attrs, CTA_ZONE), Some(&[0u8, 3][..]));
        assert!(wire::find(&attrs, CTA_TUPLE_REPLY).is_none());
    }
}
