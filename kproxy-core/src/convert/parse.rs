//! Lenient address parsing, as upstream's `ParseIPSloppy`/`ParseCIDRSloppy`:
//! IPv4 octets with leading zeros are read as decimal, surrounding blanks are
//! ignored. Anything else that does not parse is an error for the caller to
//! report.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

/// Parses an IP address, accepting IPv4 octets with leading zeros.
pub fn parse_ip(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    parse_v4_leading_zeros(text).map(IpAddr::V4)
}

/// Parses a CIDR, accepting IPv4 octets with leading zeros. A plain address
/// without a prefix length is not a CIDR.
pub fn parse_cidr(text: &str) -> Option<IpNet> {
    let text = text.trim();
    let (addr, len) = text.split_once('/')?;
    let addr = parse_ip(addr)?;
    let len: u8 = if len.len() <= 3 && len.bytes().all(|b| b.is_ascii_digit()) {
        len.parse().ok()?
    } else {
        return None;
    };
    IpNet::new(addr, len).ok().map(|n| n.trunc())
}

fn parse_v4_leading_zeros(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_upstream_accepts() {
        assert_eq!(parse_ip("010.000.0.1"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(parse_ip(" fd00::1 "), Some("fd00::1".parse().unwrap()));
        assert_eq!(parse_cidr("10.0.0.7/8"), Some("10.0.0.0/8".parse().unwrap()));
        assert_eq!(parse_cidr("203.0.113.0/25"), Some("203.0.113.0/25".parse().unwrap()));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "1.2.3", "1.2.3.4.5", "256.1.1.1", "a.b.c.d", "1..2.3", "::g"] {
            assert_eq!(parse_ip(bad), None, "{bad}");
        }
        for bad in ["10.0.0.0", "10.0.0.0/33", "10.0.0.0/-1", "x/8", "10.0.0.0/0008", "::/129"] {
            assert_eq!(parse_cidr(bad), None, "{bad}");
        }
    }
}
