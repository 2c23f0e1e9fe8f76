//! From the kernel's IPVS table and the desired one to the operations
//! between them, with upstream's graceful termination: a real server that
//! is no longer wanted but still has TCP (or SCTP) connections goes to
//! weight 0 and stays until they drain; a UDP one is deleted at once.

use std::collections::BTreeMap;

use kproxy_core::Protocol;

use crate::model::{Op, RealServer, RealServerStatus, RsKey, VirtualServer, VsKey};
use crate::render::DesiredService;

/// A virtual server as the kernel holds it, with its real servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentService {
    /// The virtual server.
    pub server: VirtualServer,
    /// Its real servers, with their connection counts.
    pub dests: Vec<RealServerStatus>,
}

/// The kernel's IPVS table, by key.
pub type CurrentIpvs = BTreeMap<VsKey, CurrentService>;

/// What [`diff`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The operations, in an order the kernel accepts (deletions of
    /// virtual servers last, real servers after their virtual server).
    pub ops: Vec<Op>,
    /// Real servers kept at weight 0 until their connections drain.
    pub draining: Vec<(VsKey, RsKey)>,
}

/// The operations that make `current` into `desired`. Virtual servers in
/// `current` that `owned` does not claim are someone else's and are left
/// alone.
pub fn diff(current: &CurrentIpvs, desired: &BTreeMap<VsKey, DesiredService>, owned: impl Fn(&VsKey) -> bool) -> Plan {
    let mut plan = Plan::default();
    for (key, want) in desired {
        match current.get(key) {
            None => {
                plan.ops.push(Op::AddService(want.server));
                plan.ops.extend(want.dests.iter().map(|(rs, &weight)| Op::AddDest(*key, RealServer { key: *rs, weight })));
            }
            Some(have) => {
                if have.server != want.server {
                    plan.ops.push(Op::EditService(want.server));
                }
                dests(key, have, want, &mut plan);
            }
        }
    }
    for key in current.keys() {
        if !desired.contains_key(key) && owned(key) {
            plan.ops.push(Op::DelService(*key));
        }
    }
    plan
}

fn dests(key: &VsKey, have: &CurrentService, want: &DesiredService, plan: &mut Plan) {
    let existing: BTreeMap<RsKey, &RealServerStatus> = have.dests.iter().map(|d| (d.server.key, d)).collect();
    for (rs, &weight) in &want.dests {
        let server = RealServer { key: *rs, weight };
        match existing.get(rs) {
            None => plan.ops.push(Op::AddDest(*key, server)),
            Some(d) if d.server.weight != weight => plan.ops.push(Op::EditDest(*key, server)),
            Some(_) => {}
        }
    }
    let graceful = key.protocol != Protocol::Udp;
    for (rs, d) in existing {
        if want.dests.contains_key(&rs) {
            continue;
        }
        if graceful && d.connections() > 0 {
            plan.draining.push((*key, rs));
            if d.server.weight != 0 {
                plan.ops.push(Op::EditDest(*key, RealServer { key: rs, weight: 0 }));
            }
        } else {
            plan.ops.push(Op::DelDest(*key, rs));
        }
    }
}
