//! Typed identities of Kubernetes objects and service ports.

use std::fmt;
use std::str::FromStr;

use super::Protocol;

/// A namespaced object name, `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamespacedName {
    /// The object's namespace.
    pub namespace: String,
    /// The object's name.
    pub name: String,
}

impl NamespacedName {
    /// Builds a name from its two parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        NamespacedName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The identity of one port of one Service, the key of every map in kproxy:
/// namespace, service name, port name and protocol.
///
/// `Display` gives upstream's spelling, `ns/name:port` (or `ns/name` when the
/// port is unnamed); the protocol is not part of the text, exactly as upstream.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    /// The Service's namespace and name.
    pub service: NamespacedName,
    /// The port's name; empty for the single unnamed port a Service may have.
    pub port: String,
    /// The port's protocol.
    pub protocol: Protocol,
}

impl ServicePortName {
    /// Builds a service port name.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        port: impl Into<String>,
        protocol: Protocol,
    ) -> Self {
        ServicePortName {
            service: NamespacedName::new(namespace, name),
            port: port.into(),
            protocol,
        }
    }
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port.is_empty() {
            write!(f, "{}", self.service)
        } else {
            write!(f, "{}:{}", self.service, self.port)
        }
    }
}

/// The error of parsing a [`ServicePortName`] from `ns/name[:port]/PROTO`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid service port name {0:?} (expected namespace/name[:port]/PROTOCOL)")]
pub struct InvalidServicePortName(pub String);

impl FromStr for ServicePortName {
    type Err = InvalidServicePortName;

    /// Parses `namespace/name[:port]/PROTOCOL`, the `Display` text plus the
    /// protocol, so that a name survives a round trip through text.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidServicePortName(s.to_string());
        let (rest, proto) = s.rsplit_once('/').ok_or_else(bad)?;
        let protocol: Protocol = proto.parse().map_err(|_| bad())?;
        let (namespace, name_port) = rest.split_once('/').ok_or_else(bad)?;
        let (name, port) = name_port.split_once(':').unwrap_or((name_port, ""));
        if namespace.is_empty() || name.is_empty() {
            return Err(bad());
        }
        Ok(ServicePortName::new(namespace, name, port, protocol))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_upstream_spelling() {
        let named = ServicePortName::new("ns1", "svc1", "p80", Protocol::Tcp);
        assert_eq!(named.to_string(), "ns1/svc1:p80");
        let unnamed = ServicePortName::new("ns1", "svc1", "", Protocol::Udp);
        assert_eq!(unnamed.to_string(), "ns1/svc1");
    }

    #[test]
    fn parses_its_own_text_with_protocol() {
        let n: ServicePortName = "ns1/svc1:p80/TCP".parse().unwrap();
        assert_eq!(n, ServicePortName::new("ns1", "svc1", "p80", Protocol::Tcp));
        let n: ServicePortName = "ns1/svc1/udp".parse().unwrap();
        assert_eq!(n, ServicePortName::new("ns1", "svc1", "", Protocol::Udp));
        assert!("svc1/TCP".parse::<ServicePortName>().is_err());
        assert!("ns/svc/ICMP".parse::<ServicePortName>().is_err());
    }
}
