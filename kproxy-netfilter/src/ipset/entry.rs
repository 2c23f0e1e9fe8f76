//! What an ipset holds: its type ([`SetType`]) and its elements
//! ([`Entry`]), in the text `ipset` reads and prints and in the netlink
//! attributes the kernel takes.

use std::net::IpAddr;

use ipnet::IpNet;
use kproxy_core::Protocol;

use crate::wire::{attr, nested};

/// The set types kproxy uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetType {
    /// `hash:ip`.
    HashIp,
    /// `hash:ip,port`.
    HashIpPort,
    /// `hash:ip,port,ip`.
    HashIpPortIp,
    /// `hash:ip,port,net`.
    HashIpPortNet,
    /// `bitmap:port` (every port, 0-65535).
    BitmapPort,
}

impl SetType {
    /// The type's name, as `ipset create` takes it.
    pub fn name(self) -> &'static str {
        match self {
            SetType::HashIp => "hash:ip",
            SetType::HashIpPort => "hash:ip,port",
            SetType::HashIpPortIp => "hash:ip,port,ip",
            SetType::HashIpPortNet => "hash:ip,port,net",
            SetType::BitmapPort => "bitmap:port",
        }
    }

    /// The type named `name`, if kproxy knows it.
    pub fn from_name(name: &str) -> Option<SetType> {
        [SetType::HashIp, SetType::HashIpPort, SetType::HashIpPortIp, SetType::HashIpPortNet, SetType::BitmapPort]
            .into_iter()
            .find(|t| t.name() == name)
    }
}

/// One element of a set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entry {
    /// `IP,PROTO:PORT`.
    IpPort(IpAddr, Protocol, u16),
    /// `IP,PROTO:PORT,IP`.
    IpPortIp(IpAddr, Protocol, u16, IpAddr),
    /// `IP,PROTO:PORT,NET`.
    IpPortNet(IpAddr, Protocol, u16, IpNet),
    /// `PORT` (bitmap:port).
    Port(u16),
    /// `IP` (hash:ip).
    Ip(IpAddr),
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// `IPSET_ATTR_IP`, `IPSET_ATTR_PORT`, `IPSET_ATTR_PROTO`,
/// `IPSET_ATTR_IP2`, `IPSET_ATTR_CIDR2` (inside `IPSET_ATTR_DATA`).
const ATTR_IP: u16 = 1;
pub(super) const ATTR_PORT: u16 = 4;
pub(super) const ATTR_PORT_TO: u16 = 5;
const ATTR_PROTO: u16 = 7;
const ATTR_IP2: u16 = 20;
const ATTR_CIDR2: u16 = 21;
/// `IPSET_ATTR_IPADDR_IPV4` and `_IPV6`, inside an address attribute.
const ATTR_IPADDR_IPV4: u16 = 1;
const ATTR_IPADDR_IPV6: u16 = 2;
/// `NLA_F_NET_BYTEORDER`: ipset wants addresses, ports and sizes marked
/// as big-endian.
pub(super) const NLA_F_NET_BYTEORDER: u16 = 0x4000;

/// Appends address attribute `kind` holding `ip`.
fn put_ip(buf: &mut Vec<u8>, kind: u16, ip: IpAddr) {
    nested(buf, kind, |b| match ip {
        IpAddr::V4(a) => attr(b, ATTR_IPADDR_IPV4 | NLA_F_NET_BYTEORDER, &a.octets()),
        IpAddr::V6(a) => attr(b, ATTR_IPADDR_IPV6 | NLA_F_NET_BYTEORDER, &a.octets()),
    });
}

/// Appends a port attribute (`IPSET_ATTR_PORT` or `_PORT_TO`).
pub(super) fn put_port(buf: &mut Vec<u8>, kind: u16, port: u16) {
    attr(buf, kind | NLA_F_NET_BYTEORDER, &port.to_be_bytes());
}

impl Entry {
    /// The entry as `ipset add` reads it.
    pub fn text(&self) -> String {
        match self {
            Entry::IpPort(ip, p, port) => format!("{ip},{}:{port}", proto(*p)),
            Entry::IpPortIp(ip, p, port, ip2) => format!("{ip},{}:{port},{ip2}", proto(*p)),
            Entry::IpPortNet(ip, p, port, net) => format!("{ip},{}:{port},{net}", proto(*p)),
            Entry::Port(port) => port.to_string(),
            Entry::Ip(ip) => ip.to_string(),
        }
    }

    /// Appends the entry's attributes (the inside of one
    /// `IPSET_ATTR_DATA`), as the kernel's set types read them.
    pub(super) fn put(&self, buf: &mut Vec<u8>) {
        let ip_port = |buf: &mut Vec<u8>, ip: IpAddr, p: Protocol, port: u16| {
            put_ip(buf, ATTR_IP, ip);
            put_port(buf, ATTR_PORT, port);
            attr(buf, ATTR_PROTO, &[crate::conntrack::protocol_number(p)]);
        };
        match self {
            Entry::IpPort(ip, p, port) => ip_port(buf, *ip, *p, *port),
            Entry::IpPortIp(ip, p, port, ip2) => {
                ip_port(buf, *ip, *p, *port);
                put_ip(buf, ATTR_IP2, *ip2);
            }
            Entry::IpPortNet(ip, p, port, net) => {
                ip_port(buf, *ip, *p, *port);
                put_ip(buf, ATTR_IP2, net.network());
                attr(buf, ATTR_CIDR2, &[net.prefix_len()]);
            }
            Entry::Port(port) => put_port(buf, ATTR_PORT, *port),
            Entry::Ip(ip) => put_ip(buf, ATTR_IP, *ip),
        }
    }

    /// Reads an entry of a set of type `kind` as `ipset` prints it.
    pub fn parse(kind: &str, text: &str) -> Option<Entry> {
        let ip_port = |a: &str, b: &str| -> Option<(IpAddr, Protocol, u16)> {
            let (p, port) = b.split_once(':')?;
            let p = match p {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                "sctp" => Protocol::Sctp,
                _ => return None,
            };
            Some((a.parse().ok()?, p, port.parse().ok()?))
        };
        let parts: Vec<&str> = text.split(',').collect();
        match (SetType::from_name(kind)?, parts.as_slice()) {
            (SetType::BitmapPort, [port]) => port.parse().ok().map(Entry::Port),
            (SetType::HashIp, [ip]) => ip.parse().ok().map(Entry::Ip),
            (SetType::HashIpPort, [a, b]) => ip_port(a, b).map(|(ip, p, port)| Entry::IpPort(ip, p, port)),
            (SetType::HashIpPortIp, [a, b, c]) => {
                let (ip, p, port) = ip_port(a, b)?;
                Some(Entry::IpPortIp(ip, p, port, c.parse().ok()?))
            }
            (SetType::HashIpPortNet, [a, b, c]) => {
                let (ip, p, port) = ip_port(a, b)?;
                Some(Entry::IpPortNet(ip, p, port, c.parse().ok()?))
            }
            _ => None,
        }
    }

    /// Whether a packet's fields, picked by `flags` as `-m set` picks them
    /// (`dst,dst,src`: the destination address, the destination port with
    /// the protocol, the source address), are this entry. Source ports
    /// never appear in kproxy's rules and never match.
    pub fn contains(&self, flags: &str, protocol: Protocol, src: IpAddr, dst: IpAddr, dport: u16) -> bool {
        let f: Vec<&str> = flags.split(',').collect();
        let addr = |i: usize| match f.get(i) {
            Some(&"src") => Some(src),
            Some(&"dst") => Some(dst),
            _ => None,
        };
        let port_is = |i: usize, p: Protocol, port: u16| f.get(i) == Some(&"dst") && p == protocol && port == dport;
        match self {
            Entry::IpPort(ip, p, port) => f.len() == 2 && addr(0) == Some(*ip) && port_is(1, *p, *port),
            Entry::IpPortIp(ip, p, port, ip2) => f.len() == 3 && addr(0) == Some(*ip) && port_is(1, *p, *port) && addr(2) == Some(*ip2),
            Entry::IpPortNet(ip, p, port, net) => {
                f.len() == 3 && addr(0) == Some(*ip) && port_is(1, *p, *port) && addr(2).is_some_and(|a| net.contains(&a))
            }
            Entry::Port(port) => f == ["dst"] && *port == dport,
            Entry::Ip(ip) => f.len() == 1 && addr(0) == Some(*ip),
        }
    }
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{find, parse_attrs};

    #[test]
    fn entries_read_back_from_their_text_and_carry_their_fields() {
        let e = Entry::IpPortNet("fd00::1".parse().unwrap(), Protocol::Sctp, 9, "fd00:1::/64".parse().unwrap());
        assert_eq!(e.text(), "fd00::1,sctp:9,fd00:1::/64");
        assert_eq!(Entry::parse("hash:ip,port,net", &e.text()), Some(e.clone()));
        assert_eq!(Entry::parse("hash:ip,port", &e.text()), None, "three parts do not fit two dimensions");
        assert_eq!(Entry::parse("list:set", "a"), None, "an unknown type");

        let mut buf = Vec::new();
        e.put(&mut buf);
        let attrs = parse_attrs(&buf);
        assert_eq!(find(&attrs, ATTR_PORT | NLA_F_NET_BYTEORDER), Some(&9u16.to_be_bytes()[..]), "the port, big-endian");
        assert_eq!(find(&attrs, ATTR_PROTO), Some(&[132u8][..]), "SCTP");
        assert_eq!(find(&attrs, ATTR_CIDR2), Some(&[64u8][..]), "the net's prefix length");
        let ip2 = parse_attrs(find(&attrs, ATTR_IP2).expect("the second address"));
        let net: std::net::Ipv6Addr = "fd00:1::".parse().unwrap();
        assert_eq!(find(&ip2, ATTR_IPADDR_IPV6 | NLA_F_NET_BYTEORDER), Some(&net.octets()[..]));
        for t in [SetType::HashIp, SetType::HashIpPort, SetType::HashIpPortIp, SetType::HashIpPortNet, SetType::BitmapPort] {
            assert_eq!(SetType::from_name(t.name()), Some(t));
        }
    }
}
