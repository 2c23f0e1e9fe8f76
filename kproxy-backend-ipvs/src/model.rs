//! The IPVS part of the desired state as plain data: virtual servers, their
//! real servers, and the operations that turn one table into another.
//!
//! The netlink layer ([`crate::netlink`]) speaks these types to the kernel;
//! the fake ([`crate::fake`]) applies the same operations in memory.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use kproxy_core::Protocol;

/// An IPVS scheduler (`ipvs.scheduler`), all of upstream's choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Scheduler {
    /// Round robin (upstream's default).
    #[default]
    Rr,
    /// Weighted round robin.
    Wrr,
    /// Least connections.
    Lc,
    /// Weighted least connections.
    Wlc,
    /// Locality-based least connections.
    Lblc,
    /// Locality-based least connections with replication.
    Lblcr,
    /// Source hashing.
    Sh,
    /// Destination hashing.
    Dh,
    /// Shortest expected delay.
    Sed,
    /// Never queue.
    Nq,
    /// Maglev hashing.
    Mh,
}

impl Scheduler {
    /// Every scheduler.
    pub const ALL: [Scheduler; 11] = [
        Scheduler::Rr,
        Scheduler::Wrr,
        Scheduler::Lc,
        Scheduler::Wlc,
        Scheduler::Lblc,
        Scheduler::Lblcr,
        Scheduler::Sh,
        Scheduler::Dh,
        Scheduler::Sed,
        Scheduler::Nq,
        Scheduler::Mh,
    ];

    /// The kernel's name for it (`ip_vs_NAME` is its module).
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
            Scheduler::Lc => "lc",
            Scheduler::Wlc => "wlc",
            Scheduler::Lblc => "lblc",
            Scheduler::Lblcr => "lblcr",
            Scheduler::Sh => "sh",
            Scheduler::Dh => "dh",
            Scheduler::Sed => "sed",
            Scheduler::Nq => "nq",
            Scheduler::Mh => "mh",
        }
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown scheduler name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown IPVS scheduler {0:?} (expected one of rr wrr lc wlc lblc lblcr sh dh sed nq mh)")]
pub struct UnknownScheduler(pub String);

impl FromStr for Scheduler {
    type Err = UnknownScheduler;

    /// Parses a name; empty means upstream's default, `rr`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Ok(Scheduler::Rr);
        }
        Scheduler::ALL.into_iter().find(|x| x.name() == s).ok_or_else(|| UnknownScheduler(s.to_string()))
    }
}

/// What identifies a virtual server: protocol, address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VsKey {
    /// The layer-4 protocol.
    pub protocol: Protocol,
    /// The virtual IP.
    pub addr: IpAddr,
    /// The virtual port.
    pub port: u16,
}

impl fmt::Display for VsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        };
        match self.addr {
            IpAddr::V4(a) => write!(f, "{proto} {a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "{proto} [{a}]:{}", self.port),
        }
    }
}

/// A virtual server: what `ipvsadm -A` creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VirtualServer {
    /// Protocol, address and port.
    pub key: VsKey,
    /// How it spreads connections.
    pub scheduler: Scheduler,
    /// `Some(seconds)`: persistent (ClientIP session affinity) with this
    /// timeout and a host netmask (/32, /128).
    pub persistence: Option<u32>,
}

/// What identifies a real server within its virtual server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RsKey {
    /// The endpoint's address.
    pub addr: IpAddr,
    /// The endpoint's port.
    pub port: u16,
}

impl fmt::Display for RsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

/// A real server (always masquerading-forwarded, as upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RealServer {
    /// Address and port.
    pub key: RsKey,
    /// Its weight: 1 while it takes new connections, 0 while it drains.
    pub weight: u32,
}

/// A real server as the kernel reports it: with its connection counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RealServerStatus {
    /// The real server.
    pub server: RealServer,
    /// Established connections.
    pub active: u32,
    /// Other connections (TIME_WAIT, FIN_WAIT, UDP, ...).
    pub inactive: u32,
}

impl RealServerStatus {
    /// All its connections.
    pub fn connections(&self) -> u32 {
        self.active + self.inactive
    }
}

/// One change to the IPVS table. A sync sends a list of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Create a virtual server (`IPVS_CMD_NEW_SERVICE`).
    AddService(VirtualServer),
    /// Change a virtual server's scheduler or persistence
    /// (`IPVS_CMD_SET_SERVICE`).
    EditService(VirtualServer),
    /// Delete a virtual server and its real servers
    /// (`IPVS_CMD_DEL_SERVICE`).
    DelService(VsKey),
    /// Add a real server (`IPVS_CMD_NEW_DEST`).
    AddDest(VsKey, RealServer),
    /// Change a real server's weight (`IPVS_CMD_SET_DEST`).
    EditDest(VsKey, RealServer),
    /// Delete a real server (`IPVS_CMD_DEL_DEST`).
    DelDest(VsKey, RsKey),
}

/// The IPVS connection timeouts (`ipvsadm --set`); 0 leaves one unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timeouts {
    /// Established TCP connections, seconds.
    pub tcp: u32,
    /// TCP after a FIN, seconds.
    pub tcp_fin: u32,
    /// UDP, seconds.
    pub udp: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_names_round_trip_and_bad_names_are_named() {
        for s in Scheduler::ALL {
            assert_eq!(s.name().parse::<Scheduler>(), Ok(s));
        }
        assert_eq!("".parse::<Scheduler>(), Ok(Scheduler::Rr));
        let err = "fifo".parse::<Scheduler>().unwrap_err().to_string();
        assert!(err.contains("\"fifo\"") && err.contains("mh"), "{err}");
    }

    #[test]
    fn keys_print_like_ipvsadm() {
        let k = VsKey { protocol: Protocol::Udp, addr: "fd00::1".parse().unwrap(), port: 53 };
        assert_eq!(k.to_string(), "UDP [fd00::1]:53");
        let r = RsKey { addr: "10.0.0.1".parse().unwrap(), port: 80 };
        assert_eq!(r.to_string(), "10.0.0.1:80");
    }
}
