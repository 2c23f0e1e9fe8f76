//! Set and map elements: compact typed keys and values.

use std::net::IpAddr;

use ipnet::IpNet;
use kproxy_core::Protocol;

/// The key of a set or map element. Each variant is one key shape, so an
/// element is a few dozen bytes and needs no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// `addr`.
    Addr(IpAddr),
    /// `addr . addr`.
    AddrPair(IpAddr, IpAddr),
    /// `addr . proto . port`: a service destination.
    Service(IpAddr, Protocol, u16),
    /// `proto . port`: a NodePort.
    Port(Protocol, u16),
    /// `addr . proto . port . slot`: one DNAT slot of a service destination.
    ServiceSlot(IpAddr, Protocol, u16, u32),
    /// `proto . port . slot`: one DNAT slot of a NodePort.
    PortSlot(Protocol, u16, u32),
    /// `addr . proto . port . network`: a source network allowed to reach a
    /// service destination (an interval set).
    ServiceSource(IpAddr, Protocol, u16, IpNet),
    /// `client . destination . proto . port`: an entry of the dynamic
    /// affinity map, written by the kernel and cleaned up by kproxy.
    Affinity(IpAddr, IpAddr, Protocol, u16),
}

/// What a map element maps to: kproxy's maps all hold DNAT targets (it
/// uses no verdict maps; see [`crate::names`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    /// A DNAT target `addr . port`.
    Target(IpAddr, u16),
}
