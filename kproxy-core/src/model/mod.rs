//! The typed model: identities, service ports, endpoints and the node.

mod endpoint;
mod names;
mod node;
mod protocol;
mod service_port;

pub use endpoint::{Endpoint, Hints};
pub use names::{InvalidServicePortName, NamespacedName, ServicePortName};
pub use node::{NodeInfo, ZONE_LABEL};
pub use protocol::{IpFamily, Protocol, UnknownProtocol};
pub use service_port::{ServicePortInfo, SourceRanges, DEFAULT_AFFINITY_TIMEOUT_SECONDS};
