//! IPVS generic netlink messages, as bytes: the requests for each [`Op`]
//! and the parsing of the kernel's replies. Pure functions, no socket.
//!
//! Numbers from the Linux uapi header `include/uapi/linux/ip_vs.h`; what
//! each command requires from `net/netfilter/ipvs/ip_vs_ctl.c`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use kproxy_core::Protocol;
use kproxy_netfilter::genl::GenlRequest;
use kproxy_netfilter::wire::{attr, cstr, find, nested, parse_attrs};

use crate::model::{Op, RealServer, RealServerStatus, RsKey, Scheduler, Timeouts, VirtualServer, VsKey};

/// `IPVS_GENL_NAME`: the generic netlink family.
pub const IPVS_GENL_NAME: &str = "IPVS";
/// `IPVS_GENL_VERSION`.
pub const IPVS_GENL_VERSION: u8 = 1;

pub(super) const CMD_NEW_SERVICE: u8 = 1;
pub(super) const CMD_SET_SERVICE: u8 = 2;
pub(super) const CMD_DEL_SERVICE: u8 = 3;
pub(super) const CMD_GET_SERVICE: u8 = 4;
pub(super) const CMD_NEW_DEST: u8 = 5;
pub(super) const CMD_SET_DEST: u8 = 6;
pub(super) const CMD_DEL_DEST: u8 = 7;
pub(super) const CMD_GET_DEST: u8 = 8;
pub(super) const CMD_SET_CONFIG: u8 = 12;
pub(super) const CMD_GET_CONFIG: u8 = 13;
pub(super) const CMD_FLUSH: u8 = 17;

const CMD_ATTR_SERVICE: u16 = 1;
const CMD_ATTR_DEST: u16 = 2;
const CMD_ATTR_TIMEOUT_TCP: u16 = 4;
const CMD_ATTR_TIMEOUT_TCP_FIN: u16 = 5;
const CMD_ATTR_TIMEOUT_UDP: u16 = 6;

const SVC_ATTR_AF: u16 = 1;
const SVC_ATTR_PROTOCOL: u16 = 2;
const SVC_ATTR_ADDR: u16 = 3;
const SVC_ATTR_PORT: u16 = 4;
const SVC_ATTR_FWMARK: u16 = 5;
const SVC_ATTR_SCHED_NAME: u16 = 6;
const SVC_ATTR_FLAGS: u16 = 7;
const SVC_ATTR_TIMEOUT: u16 = 8;
const SVC_ATTR_NETMASK: u16 = 9;

const DEST_ATTR_ADDR: u16 = 1;
const DEST_ATTR_PORT: u16 = 2;
const DEST_ATTR_FWD_METHOD: u16 = 3;
const DEST_ATTR_WEIGHT: u16 = 4;
const DEST_ATTR_U_THRESH: u16 = 5;
const DEST_ATTR_L_THRESH: u16 = 6;
const DEST_ATTR_ACTIVE_CONNS: u16 = 7;
const DEST_ATTR_INACT_CONNS: u16 = 8;
/// Linux 3.18 and later (IPv4 real servers in IPv6 services); older
/// kernels ignore it and take the service's family.
const DEST_ATTR_ADDR_FAMILY: u16 = 11;

/// `IP_VS_SVC_F_PERSISTENT`.
const SVC_F_PERSISTENT: u32 = 0x1;
/// `IP_VS_SVC_F_SCHED2`: for `mh`, hash the source port too
/// (`mh-port`); upstream sets it on every `mh` service.
const SVC_F_SCHED2: u32 = 0x10;
/// `IP_VS_CONN_F_MASQ`: forwarding by NAT.
const CONN_F_MASQ: u32 = 0;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

fn family(addr: IpAddr) -> u16 {
    if addr.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    }
}

/// The 16-byte `nf_inet_addr`: an IPv4 address fills the first 4 bytes.
fn inet_addr(addr: IpAddr) -> [u8; 16] {
    let mut out = [0; 16];
    match addr {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out = a.octets(),
    }
    out
}

fn protocol_number(p: Protocol) -> u16 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// Appends the attributes naming a service: family, protocol, address,
/// port.
pub fn service_key_attrs(buf: &mut Vec<u8>, key: &VsKey) {
    attr(buf, SVC_ATTR_AF, &family(key.addr).to_ne_bytes());
    attr(buf, SVC_ATTR_PROTOCOL, &protocol_number(key.protocol).to_ne_bytes());
    attr(buf, SVC_ATTR_ADDR, &inet_addr(key.addr));
    attr(buf, SVC_ATTR_PORT, &key.port.to_be_bytes());
}

/// Appends a whole service, as NEW_SERVICE and SET_SERVICE need it: the
/// key, scheduler, flags (all of them set: mask ~0), persistence timeout
/// (0 when not persistent) and the host netmask (/32 as 0xffffffff; for
/// IPv6 the prefix length, 128).
pub fn service_attrs(buf: &mut Vec<u8>, vs: &VirtualServer) {
    service_key_attrs(buf, &vs.key);
    attr(buf, SVC_ATTR_SCHED_NAME, &cstr(vs.scheduler.name()));
    let mut flags = if vs.persistence.is_some() { SVC_F_PERSISTENT } else { 0 };
    if vs.scheduler == Scheduler::Mh {
        flags |= SVC_F_SCHED2;
    }
    attr(buf, SVC_ATTR_FLAGS, &[flags.to_ne_bytes(), u32::MAX.to_ne_bytes()].concat());
    attr(buf, SVC_ATTR_TIMEOUT, &vs.persistence.unwrap_or(0).to_ne_bytes());
    let netmask: u32 = if vs.key.addr.is_ipv4() { u32::MAX } else { 128 };
    attr(buf, SVC_ATTR_NETMASK, &netmask.to_ne_bytes());
}

/// Appends a real server's attributes: address, port and family, plus,
/// with a weight, what NEW_DEST and SET_DEST need (masquerading, the
/// weight, no connection thresholds).
pub fn dest_attrs(buf: &mut Vec<u8>, key: &RsKey, weight: Option<u32>) {
    attr(buf, DEST_ATTR_ADDR, &inet_addr(key.addr));
    attr(buf, DEST_ATTR_PORT, &key.port.to_be_bytes());
    attr(buf, DEST_ATTR_ADDR_FAMILY, &family(key.addr).to_ne_bytes());
    if let Some(weight) = weight {
        attr(buf, DEST_ATTR_FWD_METHOD, &CONN_F_MASQ.to_ne_bytes());
        attr(buf, DEST_ATTR_WEIGHT, &weight.to_ne_bytes());
        attr(buf, DEST_ATTR_U_THRESH, &0u32.to_ne_bytes());
        attr(buf, DEST_ATTR_L_THRESH, &0u32.to_ne_bytes());
    }
}

/// The request that carries out `op`.
pub fn op_request(op: &Op) -> GenlRequest {
    let mut attrs = Vec::new();
    let cmd = match op {
        Op::AddService(vs) | Op::EditService(vs) => {
            nested(&mut attrs, CMD_ATTR_SERVICE, |b| service_attrs(b, vs));
            if matches!(op, Op::AddService(_)) {
                CMD_NEW_SERVICE
            } else {
                CMD_SET_SERVICE
            }
        }
        Op::DelService(key) => {
            nested(&mut attrs, CMD_ATTR_SERVICE, |b| service_key_attrs(b, key));
            CMD_DEL_SERVICE
        }
        Op::AddDest(key, rs) | Op::EditDest(key, rs) => {
            nested(&mut attrs, CMD_ATTR_SERVICE, |b| service_key_attrs(b, key));
            nested(&mut attrs, CMD_ATTR_DEST, |b| dest_attrs(b, &rs.key, Some(rs.weight)));
            if matches!(op, Op::AddDest(..)) {
                CMD_NEW_DEST
            } else {
                CMD_SET_DEST
            }
        }
        Op::DelDest(key, rs) => {
            nested(&mut attrs, CMD_ATTR_SERVICE, |b| service_key_attrs(b, key));
            nested(&mut attrs, CMD_ATTR_DEST, |b| dest_attrs(b, rs, None));
            CMD_DEL_DEST
        }
    };
    GenlRequest { cmd, attrs }
}

/// The attributes of a GET_DEST dump: the service, by its key.
pub fn dests_dump_attrs(key: &VsKey) -> Vec<u8> {
    let mut attrs = Vec::new();
    nested(&mut attrs, CMD_ATTR_SERVICE, |b| service_key_attrs(b, key));
    attrs
}

/// The SET_CONFIG request for `t` (the kernel leaves a 0 unchanged).
pub fn set_config_request(t: Timeouts) -> GenlRequest {
    let mut attrs = Vec::new();
    attr(&mut attrs, CMD_ATTR_TIMEOUT_TCP, &t.tcp.to_ne_bytes());
    attr(&mut attrs, CMD_ATTR_TIMEOUT_TCP_FIN, &t.tcp_fin.to_ne_bytes());
    attr(&mut attrs, CMD_ATTR_TIMEOUT_UDP, &t.udp.to_ne_bytes());
    GenlRequest { cmd: CMD_SET_CONFIG, attrs }
}

/// The FLUSH request: every service and real server goes.
pub fn flush_request() -> GenlRequest {
    GenlRequest { cmd: CMD_FLUSH, attrs: Vec::new() }
}

fn u16_ne(v: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(v.get(..2)?.try_into().ok()?))
}

fn u32_ne(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

fn port_be(v: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?))
}

fn parse_addr(af: u16, v: &[u8]) -> Result<IpAddr, String> {
    match af {
        AF_INET => v.get(..4).map(|b| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        AF_INET6 => v.get(..16).and_then(|b| <[u8; 16]>::try_from(b).ok()).map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        _ => return Err(format!("address family {af}")),
    }
    .ok_or_else(|| format!("a {}-byte address", v.len()))
}

fn need<'a>(attrs: &[(u16, &'a [u8])], kind: u16, what: &str) -> Result<&'a [u8], String> {
    find(attrs, kind).ok_or_else(|| format!("no {what}"))
}

fn bad(what: &str) -> String {
    format!("malformed {what}")
}

/// The virtual server in one GET_SERVICE reply (its top-level
/// attributes). Err says why it is skipped: fwmark services, schedulers
/// and protocols this model lacks, malformed entries.
pub fn parse_service(reply: &[(u16, &[u8])]) -> Result<VirtualServer, String> {
    let attrs = parse_attrs(need(reply, CMD_ATTR_SERVICE, "service")?);
    if let Some(mark) = find(&attrs, SVC_ATTR_FWMARK) {
        return Err(format!("fwmark service {}", u32_ne(mark).unwrap_or(0)));
    }
    let af = u16_ne(need(&attrs, SVC_ATTR_AF, "family")?).ok_or_else(|| bad("family"))?;
    let proto = u16_ne(need(&attrs, SVC_ATTR_PROTOCOL, "protocol")?).ok_or_else(|| bad("protocol"))?;
    let addr = parse_addr(af, need(&attrs, SVC_ATTR_ADDR, "address")?)?;
    let port = port_be(need(&attrs, SVC_ATTR_PORT, "port")?).ok_or_else(|| bad("port"))?;
    let protocol = Protocol::ALL.into_iter().find(|p| protocol_number(*p) == proto).ok_or_else(|| format!("protocol {proto}"))?;
    let key = VsKey { protocol, addr, port };
    let sched = need(&attrs, SVC_ATTR_SCHED_NAME, "scheduler")?;
    let sched = std::str::from_utf8(sched.split(|b| *b == 0).next().unwrap_or(sched)).map_err(|_| bad("scheduler"))?;
    let scheduler = Scheduler::ALL.into_iter().find(|s| s.name() == sched).ok_or_else(|| format!("{key}: scheduler {sched:?}"))?;
    let flags = u32_ne(need(&attrs, SVC_ATTR_FLAGS, "flags")?).ok_or_else(|| bad("flags"))?;
    let timeout = find(&attrs, SVC_ATTR_TIMEOUT).and_then(u32_ne).unwrap_or(0);
    let persistence = (flags & SVC_F_PERSISTENT != 0).then_some(timeout);
    Ok(VirtualServer { key, scheduler, persistence })
}

/// The real server in one GET_DEST reply (its top-level attributes) of
/// `service` (whose family it has on kernels that do not report its
/// own). Err says why it is skipped.
pub fn parse_dest(reply: &[(u16, &[u8])], service: &VsKey) -> Result<RealServerStatus, String> {
    let attrs = parse_attrs(need(reply, CMD_ATTR_DEST, "real server")?);
    let af = match find(&attrs, DEST_ATTR_ADDR_FAMILY) {
        Some(v) => u16_ne(v).ok_or_else(|| bad("family"))?,
        None => family(service.addr),
    };
    let addr = parse_addr(af, need(&attrs, DEST_ATTR_ADDR, "address")?)?;
    let port = port_be(need(&attrs, DEST_ATTR_PORT, "port")?).ok_or_else(|| bad("port"))?;
    let weight = u32_ne(need(&attrs, DEST_ATTR_WEIGHT, "weight")?).ok_or_else(|| bad("weight"))?;
    let count = |kind| find(&attrs, kind).and_then(u32_ne).unwrap_or(0);
    Ok(RealServerStatus {
        server: RealServer { key: RsKey { addr, port }, weight },
        active: count(DEST_ATTR_ACTIVE_CONNS),
        inactive: count(DEST_ATTR_INACT_CONNS),
    })
}

/// The timeouts in a GET_CONFIG reply (0 for any missing).
pub fn parse_timeouts(reply: &[(u16, &[u8])]) -> Timeouts {
    let get = |kind| find(reply, kind).and_then(u32_ne).unwrap_or(0);
    Timeouts { tcp: get(CMD_ATTR_TIMEOUT_TCP), tcp_fin: get(CMD_ATTR_TIMEOUT_TCP_FIN), udp: get(CMD_ATTR_TIMEOUT_UDP) }
}

#[cfg(test)]
#[path = "message_tests.rs"]
mod tests;
