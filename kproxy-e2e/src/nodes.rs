//! Several nodes on one control plane: each a node namespace (with its
//! pods and outside client, from `kproxy-testkit`) that has its own Node
//! object, zone and proxy, so node-local behaviour (external traffic
//! policy, health-check NodePorts, topology hints) can be seen from every
//! node at once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kproxy_oracle::{fixtures as fx, Dataplane, Scenario};
use kproxy_core::model::ZONE_LABEL;
use kproxy_testkit::Topology;
use serde_json::json;

use crate::api::Api;
use crate::control_plane::ControlPlane;
use crate::scenario::{self, ProxyKind};

/// Which proxy a node runs, from which binary, in which mode.
#[derive(Debug, Clone, Copy)]
pub struct ProxyRun<'a> {
    /// kproxy or upstream kube-proxy.
    pub kind: ProxyKind,
    /// The binary's path.
    pub binary: &'a str,
    /// The proxy mode (nftables or iptables).
    pub mode: Dataplane,
}

/// One node of a multi-node test.
#[derive(Debug)]
pub struct TestNode {
    /// The Node object's name (the proxy's `hostnameOverride`).
    pub name: String,
    /// The node's namespaces: every pod of the world scenario is wired to
    /// every node; which node "has" an endpoint is the slice's `nodeName`.
    pub topo: Topology,
    /// The proxy's handle in `topo.node`.
    pub proxy: usize,
}

/// The fixture Node renamed to `name` in `zone` (same addresses: each
/// node sees itself at [`fx::NODE_IP`] in its own namespace).
pub fn node_object(name: &str, zone: &str) -> Node {
    let mut node = fx::node();
    node.metadata.name = Some(name.to_string());
    node.metadata.labels = Some(BTreeMap::from([(ZONE_LABEL.to_string(), zone.to_string())]));
    if let Some(spec) = node.spec.as_mut() {
        spec.pod_cidr = spec.pod_cidrs.as_ref().and_then(|c| c.first().cloned());
    }
    node
}

impl TestNode {
    /// Builds `world`'s topology (every pod any step will use), attaches
    /// it to the control plane, registers the Node `name` in `zone`, and
    /// starts the `proxy` with `world`'s configuration as that node.
    pub fn start(cp: &mut ControlPlane, api: &Api, world: &Scenario, name: &str, zone: &str, proxy: &ProxyRun) -> Result<TestNode, String> {
        let ProxyRun { kind, binary, mode } = *proxy;
        let mut topo = Topology::build(world)?;
        cp.attach(&topo.node)?;
        api.put(node_object(name, zone))?;
        let mut config = scenario::config_in(world, &cp.kubeconfig(kind.user())?, mode);
        config["hostnameOverride"] = json!(name);
        let proxy = scenario::start_proxy(kind, &mut topo.node, &config, cp.dir(), binary)?;
        Ok(TestNode { name: name.to_string(), topo, proxy })
    }

    /// Asks this node's health-check NodePort `port` from the outside
    /// client, as a load balancer would; returns the HTTP status and the
    /// `localEndpoints` count it reports.
    pub fn health_check(&self, port: u16) -> Result<(u16, u64), String> {
        let url = format!("http://{}:{port}/", fx::NODE_IP);
        let out = self.topo.outside.exec(&["curl", "-sS", "--max-time", "2", "-w", "\n%{http_code}", &url])?;
        let (body, code) = out.rsplit_once('\n').ok_or_else(|| format!("no status line: {out}"))?;
        let code: u16 = code.trim().parse().map_err(|_| format!("bad status {code:?}"))?;
        let body: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("{url}: not JSON ({e}): {body}"))?;
        let count = body["localEndpoints"].as_u64().ok_or_else(|| format!("{url}: no localEndpoints: {body}"))?;
        Ok((code, count))
    }
}

/// Polls `check` every 100 ms until it passes or `limit` passes; prints
/// and returns how long that took, or says what was last seen.
pub fn within(what: &str, limit: Duration, mut check: impl FnMut() -> Result<(), String>) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        match check() {
            Ok(()) => {
                let took = start.elapsed();
                println!("{what}: {:.2} s", took.as_secs_f64());
                return Ok(took);
            }
            Err(e) if start.elapsed() > limit => return Err(format!("{what}: not within {limit:?}: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
