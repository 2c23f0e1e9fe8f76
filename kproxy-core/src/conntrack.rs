//! Which conntrack entries a sync left stale: the pure half of upstream's
//! UDP cleanup. (The kernel half — dumping and deleting entries — is
//! `kproxy-netfilter`'s.)
//!
//! Connectionless flows keep following their conntrack entry: a UDP client
//! that keeps sending to a ClusterIP keeps reaching the pod its first
//! packet was DNATed to, even after that pod is gone, until the entry
//! times out (and a steady sender never lets it). So after a sync, entries
//! are deleted when their original destination is a service frontend —
//! ClusterIP, externalIP or LoadBalancer VIP with the service port, or any
//! address with the NodePort — and their reply source is not a serving
//! endpoint of that service. Deleting an entry is harmless: the next
//! packet is load-balanced afresh.
//!
//! As upstream:
//! - only UDP and SCTP entries are considered (TCP connections reset
//!   themselves);
//! - a service with no serving endpoint left has every flow to its
//!   frontends deleted, so the client's next packet meets the
//!   no-endpoint REJECT instead of following the entry to the old pod for
//!   as long as it keeps sending (kubernetes/kubernetes#139628, fixed
//!   upstream the same way);
//! - terminating-but-serving endpoints still count as serving, and traffic
//!   policies and topology are ignored, so existing flows behave as TCP
//!   connections do.
//!
//! Beyond upstream:
//! - a flow to a known frontend is never judged by the NodePort rule, so
//!   a healthy flow to a ClusterIP whose port happens to equal another
//!   service's NodePort is not deleted on every sync; nor is a flow that
//!   was not DNATed (the node talking to another host's port that equals
//!   a NodePort);
//! - NodePort flows of a service without endpoints are deleted too
//!   (upstream's fix leaves them, as it cannot tell them apart from
//!   unrelated traffic by port alone; the DNAT condition above does);
//! - flows to a ClusterIP whose UDP/SCTP service was deleted are deleted
//!   (upstream's older behaviour), unless the address serves again.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use crate::endpoints_map::EndpointsMap;
use crate::model::Protocol;
use crate::service_map::ServiceMap;

/// One conntrack entry, as far as the cleanup needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Flow {
    /// Its layer-4 protocol.
    pub protocol: Protocol,
    /// Source of the original direction (the client).
    pub original_source: SocketAddr,
    /// Destination of the original direction (the address the client
    /// sent to: a ClusterIP, a node address with a NodePort, ...).
    pub original_destination: SocketAddr,
    /// Source of the reply direction: the endpoint the flow was DNATed
    /// to, or the original destination if it was not DNATed.
    pub reply_source: SocketAddr,
    /// Its conntrack zone (0 unless something set one).
    pub zone: u16,
}

/// Decides which [`Flow`]s are stale, from the services and endpoints of
/// one IP family. Build it with [`StaleFlowFilter::new`] (or
/// [`ProxyState::stale_flow_filter`](crate::ProxyState::stale_flow_filter))
/// and test each entry with [`StaleFlowFilter::is_stale`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaleFlowFilter {
    /// (protocol, frontend IP:port) → index into `serving`.
    frontends: HashMap<(Protocol, SocketAddr), usize>,
    /// (protocol, NodePort) → index into `serving`.
    node_ports: HashMap<(Protocol, u16), usize>,
    /// Every frontend IP, of every protocol (so a deleted ClusterIP that
    /// is in use again is left alone).
    frontend_ips: HashSet<IpAddr>,
    /// The serving endpoint IPs of each UDP/SCTP service port (empty for
    /// a port with none: every flow to it is stale).
    serving: Vec<HashSet<IpAddr>>,
    /// ClusterIPs of deleted UDP/SCTP service ports.
    deleted: HashSet<IpAddr>,
}

impl StaleFlowFilter {
    /// A filter for these services and endpoints, which also deletes flows
    /// to `deleted_cluster_ips` (ClusterIPs of UDP/SCTP service ports just
    /// deleted).
    pub fn new(services: &ServiceMap, endpoints: &EndpointsMap, deleted_cluster_ips: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut filter = StaleFlowFilter::default();
        for (name, info) in services.iter() {
            let ips = std::iter::once(&info.cluster_ip).chain(&info.external_ips).chain(&info.load_balancer_vips);
            filter.frontend_ips.extend(ips.clone());
            if !info.protocol.needs_conntrack_cleanup() {
                continue;
            }
            let serving: HashSet<IpAddr> = endpoints.get(name).iter().filter(|e| e.serving).map(|e| e.ip).collect();
            let index = filter.serving.len();
            filter.serving.push(serving);
            for ip in ips {
                filter.frontends.insert((info.protocol, SocketAddr::new(*ip, info.port)), index);
            }
            if let Some(port) = info.node_port {
                filter.node_ports.insert((info.protocol, port), index);
            }
        }
        filter.deleted = deleted_cluster_ips.into_iter().filter(|ip| !filter.frontend_ips.contains(ip)).collect();
        filter
    }

    /// Whether `flow` is stale: it should be deleted so its next packet is
    /// load-balanced afresh.
    pub fn is_stale(&self, flow: &Flow) -> bool {
        if !flow.protocol.needs_conntrack_cleanup() {
            return false;
        }
        let dst = flow.original_destination;
        let reply = flow.reply_source.ip();
        if let Some(&i) = self.frontends.get(&(flow.protocol, dst)) {
            return !self.serving[i].contains(&reply);
        }
        if let Some(&i) = self.node_ports.get(&(flow.protocol, dst.port())) {
            // Only DNATed flows can be a NodePort's: a flow the node sent
            // to some host's port equal to a NodePort is none of ours.
            if !self.frontend_ips.contains(&dst.ip()) && flow.reply_source != dst {
                return !self.serving[i].contains(&reply);
            }
        }
        self.deleted.contains(&dst.ip())
    }

    /// Whether no flow can be stale (nothing to dump).
    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty() && self.node_ports.is_empty() && self.deleted.is_empty()
    }
}

#[cfg(test)]
mod tests;
