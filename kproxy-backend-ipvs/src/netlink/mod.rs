//! The kernel step for IPVS: the IPVS generic netlink family, spoken with
//! messages built here ([`message`]) over a
//! [`GenlSocket`](kproxy_netfilter::genl::GenlSocket). No ipvsadm, no
//! IPVS library.
//!
//! IPVS tables belong to a network namespace; an [`IpvsSocket`] speaks
//! to the one it was opened in for life.

pub mod message;

use kproxy_netfilter::genl::{GenlRequest, GenlSocket};
use kproxy_netfilter::NetlinkError;

use crate::model::{Op, RealServerStatus, Timeouts, VirtualServer, VsKey};
use message::{IPVS_GENL_NAME, IPVS_GENL_VERSION};

/// "No such service".
const ESRCH: i32 = 3;

/// What [`IpvsSocket::apply`] did.
#[derive(Debug)]
pub struct Applied {
    /// Messages sent: one per op.
    pub messages: usize,
    /// The ops the kernel refused, in order, with its error (e.g.
    /// `EEXIST` for a duplicate, `ESRCH` for a missing service, `ENOENT`
    /// for a missing real server or scheduler). The other ops took effect.
    pub failed: Vec<(Op, std::io::Error)>,
}

/// A socket speaking IPVS's generic netlink family in one network
/// namespace.
#[derive(Debug)]
pub struct IpvsSocket {
    genl: GenlSocket,
    family: u16,
}

impl IpvsSocket {
    /// A socket in the calling thread's network namespace. Fails with
    /// "the kernel has no IPVS (modprobe ip_vs)" when the family is
    /// missing.
    pub fn open() -> Result<Self, NetlinkError> {
        Self::with(GenlSocket::open()?)
    }

    /// A socket in the named network namespace (`/run/netns/NAME`); the
    /// caller's namespace is untouched.
    pub fn open_in_netns(name: &str) -> Result<Self, NetlinkError> {
        Self::with(GenlSocket::open_in_netns(name)?)
    }

    fn with(mut genl: GenlSocket) -> Result<Self, NetlinkError> {
        match genl.family(IPVS_GENL_NAME)? {
            Some(family) => Ok(IpvsSocket { genl, family }),
            None => Err(NetlinkError("the kernel has no IPVS (modprobe ip_vs)".into())),
        }
    }

    /// Every virtual server, sorted. Firewall-mark services and those with
    /// a scheduler or protocol the model lacks are left out (logged at
    /// debug level).
    pub fn services(&mut self) -> Result<Vec<VirtualServer>, NetlinkError> {
        let mut out = Vec::new();
        self.genl
            .dump(self.family, IPVS_GENL_VERSION, message::CMD_GET_SERVICE, &[], |cmd, attrs| {
                if cmd != message::CMD_NEW_SERVICE {
                    return;
                }
                match message::parse_service(&attrs) {
                    Ok(vs) => out.push(vs),
                    Err(why) => tracing::debug!("IPVS: skipping a virtual server: {why}"),
                }
            })
            .map_err(context("listing IPVS services"))?;
        out.sort();
        Ok(out)
    }

    /// The virtual server `key`, if the kernel has it (one request, no
    /// dump).
    pub fn service(&mut self, key: &VsKey) -> Result<Option<VirtualServer>, NetlinkError> {
        let attrs = message::dests_dump_attrs(key);
        match self.genl.lookup(self.family, IPVS_GENL_VERSION, message::CMD_GET_SERVICE, &attrs).map_err(context(&format!("looking up {key}")))? {
            Ok(reply) => {
                let attrs: Vec<(u16, &[u8])> = reply.iter().map(|(k, v)| (*k, v.as_slice())).collect();
                message::parse_service(&attrs).map(Some).map_err(|why| NetlinkError(format!("looking up {key}: {why}")))
            }
            Err(e) if e.raw_os_error() == Some(ESRCH) => Ok(None),
            Err(e) => Err(NetlinkError(format!("looking up {key}: {e}"))),
        }
    }

    /// The real servers of `vs`, sorted, with their connection counts.
    /// The kernel answers an empty list for a service it does not have.
    pub fn destinations(&mut self, vs: &VsKey) -> Result<Vec<RealServerStatus>, NetlinkError> {
        let mut out = Vec::new();
        let attrs = message::dests_dump_attrs(vs);
        self.genl
            .dump(self.family, IPVS_GENL_VERSION, message::CMD_GET_DEST, &attrs, |cmd, attrs| {
                if cmd != message::CMD_NEW_DEST {
                    return;
                }
                match message::parse_dest(&attrs, vs) {
                    Ok(rs) => out.push(rs),
                    Err(why) => tracing::debug!("IPVS: skipping a real server of {vs}: {why}"),
                }
            })
            .map_err(context(&format!("listing the IPVS real servers of {vs}")))?;
        out.sort_by_key(|rs| rs.server);
        Ok(out)
    }

    /// Carries out `ops` in order, one message each, as many per datagram
    /// as fit. Each op succeeds or fails on its own (generic netlink is no
    /// transaction): refusals are returned in [`Applied::failed`]. An
    /// `Err` means the socket itself failed, and an unknown part of `ops`
    /// took effect.
    pub fn apply(&mut self, ops: &[Op]) -> Result<Applied, NetlinkError> {
        let requests: Vec<GenlRequest> = ops.iter().map(message::op_request).collect();
        let failed = self.genl.acked(self.family, IPVS_GENL_VERSION, &requests).map_err(context("applying IPVS changes"))?;
        Ok(Applied { messages: requests.len(), failed: failed.into_iter().map(|(i, e)| (ops[i], e)).collect() })
    }

    /// Deletes every virtual server and real server (`ipvsadm -C`).
    pub fn flush(&mut self) -> Result<(), NetlinkError> {
        self.one(message::flush_request(), "flush")
    }

    /// The connection timeouts (`ipvsadm -L --timeout`), in seconds.
    pub fn timeouts(&mut self) -> Result<Timeouts, NetlinkError> {
        let reply =
            self.genl.get(self.family, IPVS_GENL_VERSION, message::CMD_GET_CONFIG, &[]).map_err(context("reading IPVS timeouts"))?;
        let attrs: Vec<(u16, &[u8])> = reply.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        Ok(message::parse_timeouts(&attrs))
    }

    /// Sets the connection timeouts (`ipvsadm --set`); a 0 leaves that
    /// one unchanged.
    pub fn set_timeouts(&mut self, t: Timeouts) -> Result<(), NetlinkError> {
        self.one(message::set_config_request(t), "setting timeouts")
    }

    fn one(&mut self, request: GenlRequest, what: &str) -> Result<(), NetlinkError> {
        match self.genl.acked(self.family, IPVS_GENL_VERSION, &[request]).map_err(context(&format!("IPVS {what}")))?.pop() {
            Some((_, e)) => Err(NetlinkError(format!("IPVS {what} refused: {e}"))),
            None => Ok(()),
        }
    }
}

/// Prefixes a socket error with what was being done.
fn context(what: &str) -> impl Fn(NetlinkError) -> NetlinkError + '_ {
    move |e| NetlinkError(format!("{what}: {}", e.0))
}
