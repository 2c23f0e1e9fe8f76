//! # kproxy-e2e
//!
//! The end-to-end harness. A real etcd and kube-apiserver (built from
//! `k8s.io/kubernetes` by `e2e/k8s/build.sh`) run in a control-plane
//! network namespace; node namespaces reach it over a private bridge and
//! run a proxy (kproxy, or upstream kube-proxy for comparison); tests
//! create and change objects through the API and check real traffic.
//!
//! ```text
//!  control-plane namespace: etcd (127.0.0.1:2379), kube-apiserver (198.18.0.1:6443)
//!     bridge kpe0 198.18.0.1/24
//!        │ veth per node
//!  node namespace (198.18.0.N): the proxy, pods, an outside client (kproxy-testkit)
//! ```
//!
//! Nothing touches the host's network namespace; every namespace and
//! process is removed when its owner is dropped, also when a test fails.

pub mod api;
pub mod bench;
pub mod binaries;
pub mod cluster_bench;
pub mod control_plane;
pub mod dataplane_cost;
pub mod differential;
pub mod nodes;
pub mod prom;
pub mod scenario;
pub mod standalone_bench;
pub mod svg;
pub mod userspace_bench;

pub use api::Api;
pub use binaries::{e2e_binaries, Binaries};
pub use control_plane::ControlPlane;
pub use scenario::ProxyKind;

/// Serializes the heavy e2e tests of one test binary: each starts its own
/// kube-apiserver and etcd, and two at once on a 2-core machine slow both
/// enough to make proxies' timings, not their behaviour, the thing under
/// test. Hold the guard for the whole test.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A failed test poisons the lock; the next one still runs.
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
