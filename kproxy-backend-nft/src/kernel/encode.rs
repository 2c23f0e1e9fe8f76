//! The kernel's binary layout of set keys and map data: each field of a
//! concatenation padded to a 4-byte register, addresses and ports in network
//! order, `numgen` slot numbers in host order.

use std::net::IpAddr;

use ipnet::IpNet;
use kproxy_core::Protocol;

use crate::model::{Key, Value};

fn proto_byte(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn addr(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
    }
}

fn proto(out: &mut Vec<u8>, p: Protocol) {
    out.extend_from_slice(&[proto_byte(p), 0, 0, 0]);
}

fn port(out: &mut Vec<u8>, port: u16) {
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
}

fn slot(out: &mut Vec<u8>, i: u32) {
    out.extend_from_slice(&i.to_ne_bytes());
}

fn last_addr(net: &IpNet) -> IpAddr {
    net.broadcast()
}

/// The key bytes of an element, and for interval keys the end bytes.
pub fn key(k: &Key) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut out = Vec::with_capacity(40);
    match *k {
        Key::Addr(a) => addr(&mut out, a),
        Key::AddrPair(a, b) => {
            addr(&mut out, a);
            addr(&mut out, b);
        }
        Key::Service(a, p, n) => {
            addr(&mut out, a);
            proto(&mut out, p);
            port(&mut out, n);
        }
        Key::Port(p, n) => {
            proto(&mut out, p);
            port(&mut out, n);
        }
        Key::ServiceSlot(a, p, n, i) => {
            addr(&mut out, a);
            proto(&mut out, p);
            port(&mut out, n);
            slot(&mut out, i);
        }
        Key::PortSlot(p, n, i) => {
            proto(&mut out, p);
            port(&mut out, n);
            slot(&mut out, i);
        }
        Key::ServiceSource(a, p, n, net) => {
            addr(&mut out, a);
            proto(&mut out, p);
            port(&mut out, n);
            let mut end = out.clone();
            addr(&mut out, net.network());
            addr(&mut end, last_addr(&net));
            return (out, Some(end));
        }
        Key::Affinity(c, d, p, n) => {
            addr(&mut out, c);
            addr(&mut out, d);
            proto(&mut out, p);
            port(&mut out, n);
        }
    }
    (out, None)
}

fn read_addr(bytes: &[u8], v6: bool) -> Option<(IpAddr, &[u8])> {
    if v6 {
        let (a, rest) = bytes.split_at_checked(16)?;
        let octets: [u8; 16] = a.try_into().ok()?;
        Some((IpAddr::from(octets), rest))
    } else {
        let (a, rest) = bytes.split_at_checked(4)?;
        let octets: [u8; 4] = a.try_into().ok()?;
        Some((IpAddr::from(octets), rest))
    }
}

fn read_proto(b: u8) -> Option<Protocol> {
    match b {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        132 => Some(Protocol::Sctp),
        _ => None,
    }
}

/// Decodes an affinity map element: its key and its DNAT target.
pub fn decode_affinity(v6: bool, key: &[u8], data: &[u8]) -> Option<(Key, IpAddr, u16)> {
    let (client, rest) = read_addr(key, v6)?;
    let (dest, rest) = read_addr(rest, v6)?;
    let (p, rest) = rest.split_at_checked(4)?;
    let (port, _) = rest.split_at_checked(2)?;
    let (target, rest) = read_addr(data, v6)?;
    let (tport, _) = rest.split_at_checked(2)?;
    Some((
        Key::Affinity(client, dest, read_proto(p[0])?, u16::from_be_bytes([port[0], port[1]])),
        target,
        u16::from_be_bytes([tport[0], tport[1]]),
    ))
}

/// A map element's data bytes: a DNAT target, address then port.
pub fn data(v: &Value) -> Vec<u8> {
    match v {
        Value::Target(ip, p) => {
            let mut out = Vec::with_capacity(20);
            addr(&mut out, *ip);
            port(&mut out, *p);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_elements_round_trip() {
        let k = Key::Affinity("10.0.0.1".parse().unwrap(), "172.30.0.1".parse().unwrap(), Protocol::Tcp, 80);
        let (bytes, _) = key(&k);
        let data = data(&Value::Target("10.180.0.9".parse().unwrap(), 8080));
        assert_eq!(decode_affinity(false, &bytes, &data), Some((k, "10.180.0.9".parse().unwrap(), 8080)));
    }

    #[test]
    fn concatenations_are_register_aligned() {
        let (k, end) = key(&Key::ServiceSlot("172.30.0.1".parse().unwrap(), Protocol::Udp, 53, 2));
        assert_eq!(k, vec![172, 30, 0, 1, 17, 0, 0, 0, 0, 53, 0, 0, 2u32.to_ne_bytes()[0], 2u32.to_ne_bytes()[1], 2u32.to_ne_bytes()[2], 2u32.to_ne_bytes()[3]]);
        assert!(end.is_none());
        let (start, end) = key(&Key::ServiceSource("1.2.3.4".parse().unwrap(), Protocol::Tcp, 80, "203.0.113.0/25".parse().unwrap()));
        assert_eq!(&start[12..], &[203, 0, 113, 0]);
        assert_eq!(&end.unwrap()[12..], &[203, 0, 113, 127]);
        assert_eq!(data(&Value::Target("10.0.0.1".parse().unwrap(), 8080)), vec![10, 0, 0, 1, 0x1f, 0x90, 0, 0]);
    }
}
