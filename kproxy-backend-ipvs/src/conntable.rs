//! IPVS's own connection table, as the kernel lists it in
//! `/proc/net/ip_vs_conn` (the table `ipvsadm -Lnc` prints): one entry per
//! connection IPVS forwards, with the TCP state IPVS tracks for it.
//!
//! A takeover from IPVS mode waits for the connections IPVS still carries
//! to end before it removes IPVS mode's virtual servers. It reads them
//! here rather than from each real server's "active connections" counter:
//! the table says which connections it waits for, and in what state, so a
//! drain that takes long says why.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Where the kernel lists IPVS's connections, for the reader's network
/// namespace.
pub const PATH: &str = "/proc/net/ip_vs_conn";

/// One entry of IPVS's connection table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsConnection {
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The client's address and port.
    pub client: SocketAddr,
    /// The virtual server's address and port the client connected to.
    pub virtual_server: SocketAddr,
    /// The real server IPVS sends the connection to.
    pub destination: SocketAddr,
    /// IPVS's state for it: `ESTABLISHED`, `FIN_WAIT`, `TIME_WAIT`,
    /// `CLOSE`, ... (`UDP` for UDP entries).
    pub state: String,
    /// Seconds until IPVS forgets the entry.
    pub expires: u32,
}

impl IpvsConnection {
    /// Whether IPVS still carries a live TCP or SCTP connection here (not
    /// one closing or closed, nor a UDP entry, which only waits out its
    /// timeout).
    pub fn is_established(&self) -> bool {
        self.state == "ESTABLISHED"
    }
}

/// Parses the text of [`PATH`]: the header and any line that does not
/// read as an entry are skipped.
pub fn parse(text: &str) -> Vec<IpvsConnection> {
    text.lines().filter_map(parse_line).collect()
}

/// Reads and parses [`PATH`] for the current network namespace.
pub fn read() -> std::io::Result<Vec<IpvsConnection>> {
    Ok(parse(&std::fs::read_to_string(PATH)?))
}

fn parse_line(line: &str) -> Option<IpvsConnection> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [protocol, from, fport, to, tport, dest, dport, state, expires, ..] = fields[..] else {
        return None;
    };
    Some(IpvsConnection {
        protocol: protocol.to_string(),
        client: SocketAddr::new(address(from)?, port(fport)?),
        virtual_server: SocketAddr::new(address(to)?, port(tport)?),
        destination: SocketAddr::new(address(dest)?, port(dport)?),
        state: state.to_string(),
        expires: expires.parse().ok()?,
    })
}

/// An IPv4 address is printed as 8 hex digits in network order; an IPv6
/// one in full colon notation.
fn address(field: &str) -> Option<IpAddr> {
    if field.len() == 8 && !field.contains(':') {
        return u32::from_str_radix(field, 16).ok().map(|n| IpAddr::V4(Ipv4Addr::from(n)));
    }
    field.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

fn port(field: &str) -> Option<u16> {
    u16::from_str_radix(field, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // As a 6.1 kernel prints it: one IPv4 and one IPv6 entry.
    const TABLE: &str = "\
Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
TCP 0AB40064 AD35 AC1E002A 0050 0AB40102 0050 ESTABLISHED     899
TCP 0AB40064 E2A5 C0A80002 0BB9 0AB40002 0050 TIME_WAIT        97
TCP fd00:0000:0000:0000:0000:0000:0000:0064 9C40 fd00:0000:0000:0000:0000:0000:0000:002a 0050 fd00:0000:0000:0000:0000:0000:0001:0002 1F90 FIN_WAIT         12
UDP 0AB40064 1234 AC1E000A 0035 0AB40105 0035 UDP             290
garbage line
";

    #[test]
    fn reads_every_entry_and_skips_the_rest() {
        let got = parse(TABLE);
        assert_eq!(got.len(), 4);
        assert_eq!(
            got[0],
            IpvsConnection {
                protocol: "TCP".into(),
                client: "10.180.0.100:44341".parse().unwrap(),
                virtual_server: "172.30.0.42:80".parse().unwrap(),
                destination: "10.180.1.2:80".parse().unwrap(),
                state: "ESTABLISHED".into(),
                expires: 899,
            }
        );
        assert_eq!(got[1].virtual_server, "192.168.0.2:3001".parse().unwrap());
        assert_eq!(got[2].virtual_server, "[fd00::2a]:80".parse().unwrap());
        assert_eq!(got[2].destination, "[fd00::1:2]:8080".parse().unwrap());
        assert_eq!(got[3].protocol, "UDP");
        let established: Vec<_> = got.iter().filter(|c| c.is_established()).map(|c| c.client.port()).collect();
        assert_eq!(established, [44341]);
    }
}
