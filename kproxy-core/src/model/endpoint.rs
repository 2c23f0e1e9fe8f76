//! One backend of one service port.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// One endpoint of a service port, merged from the Service's EndpointSlices.
///
/// Conditions carry upstream's defaults for absent values: `ready` and
/// `serving` default to true, `terminating` to false.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// The endpoint's IP (of the proxier's family).
    pub ip: IpAddr,
    /// The target port.
    pub port: u16,
    /// `conditions.ready`.
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
    /// Whether the endpoint runs on this node (`nodeName` equals the node's).
    pub is_local: bool,
    /// `hints.forZones[].name`.
    pub zone_hints: Hints,
    /// `hints.forNodes[].name`.
    pub node_hints: Hints,
}

impl Endpoint {
    /// A ready, serving, non-terminating endpoint with no hints.
    pub fn ready(ip: IpAddr, port: u16, is_local: bool) -> Self {
        Endpoint {
            ip,
            port,
            ready: true,
            serving: true,
            terminating: false,
            is_local,
            zone_hints: Hints::default(),
            node_hints: Hints::default(),
        }
    }

    /// The endpoint's `IP:port` address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// Serving but terminating: usable only as a fallback.
    pub fn is_serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }
}

/// Topology hint names (`hints.forZones[].name` or `hints.forNodes[].name`),
/// sorted and without repeats. Most endpoints carry none: then this is one
/// null pointer, so a cluster's hundred thousand endpoints pay nothing for
/// the feature.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
// The box makes the field one word (a thin pointer) where a `Vec` takes
// three: it is paid for on every endpoint, and used on few.
#[allow(clippy::box_collection)]
pub struct Hints(Option<Box<Vec<String>>>);

impl Hints {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Whether `name` is one of them.
    pub fn contains(&self, name: &str) -> bool {
        self.0.as_deref().is_some_and(|names| names.binary_search_by(|n| n.as_str().cmp(name)).is_ok())
    }

    /// The names, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().flat_map(|names| names.iter().map(String::as_str))
    }
}

impl FromIterator<String> for Hints {
    fn from_iter<I: IntoIterator<Item = String>>(iter: I) -> Self {
        let mut names: Vec<String> = iter.into_iter().collect();
        names.sort_unstable();
        names.dedup();
        names.shrink_to_fit();
        Hints((!names.is_empty()).then(|| Box::new(names)))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_sorted_unique_and_free_when_absent() {
        let h: Hints = ["b", "a", "b"].into_iter().map(String::from).collect();
        assert_eq!(h.iter().collect::<Vec<_>>(), ["a", "b"]);
        assert!(h.contains("a") && h.contains("b") && !h.contains("c"));
        let none: Hints = std::iter::empty().collect();
        assert!(none.is_empty() && !none.contains("a") && none == Hints::default());
        assert_eq!(std::mem::size_of::<Hints>(), std::mem::size_of::<usize>(), "no hints: one null pointer");
    }
}
