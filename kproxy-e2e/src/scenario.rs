//! A shared scenario (`kproxy_oracle::scenarios`) on the real API:
//! its objects applied through the API server, the proxy's configuration
//! file, and the proxies that can run it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kproxy_oracle::{scenarios, Dataplane, Scenario};
use kproxy_core::LocalDetector;
use kproxy_testkit::{check_scenario_for, Netns, Topology};
use serde_json::{json, Value};

use crate::api::Api;
use crate::binaries::Binaries;
use crate::control_plane::ControlPlane;

/// Applies the scenario's Node, Services (with load-balancer status) and
/// EndpointSlices, creating their namespaces.
pub fn apply(api: &Api, scenario: &Scenario) -> Result<(), String> {
    let mut node = scenario.node.clone();
    if let Some(spec) = node.spec.as_mut() {
        // The API wants podCIDR to be the first of podCIDRs.
        spec.pod_cidr = spec.pod_cidrs.as_ref().and_then(|c| c.first().cloned());
    }
    api.put(&node)?;
    let namespaces: std::collections::BTreeSet<String> =
        scenario.services.iter().filter_map(|s| s.metadata.namespace.clone()).chain(scenario.slices.iter().filter_map(|s| s.metadata.namespace.clone())).collect();
    for ns in namespaces {
        api.namespace(&ns)?;
    }
    for svc in &scenario.services {
        api.apply(svc)?;
        if svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).is_some_and(|lb| lb.ingress.is_some()) {
            api.apply_status(svc)?;
        }
    }
    for slice in &scenario.slices {
        api.apply(slice)?;
    }
    Ok(())
}

/// Deletes the scenario's Services and EndpointSlices (the Node stays).
pub fn delete(api: &Api, scenario: &Scenario) -> Result<(), String> {
    for slice in &scenario.slices {
        api.delete(slice)?;
    }
    for svc in &scenario.services {
        api.delete(svc)?;
    }
    Ok(())
}

/// Which proxy runs a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProxyKind {
    /// kproxy (this repository's binary).
    Kproxy,
    /// Upstream kube-proxy, built by `e2e/k8s/build.sh`.
    Upstream,
}

impl ProxyKind {
    /// The API user the proxy authenticates as (see the control plane's
    /// tokens and bindings).
    pub fn user(self) -> &'static str {
        match self {
            ProxyKind::Kproxy => "kproxy",
            ProxyKind::Upstream => "system:kube-proxy",
        }
    }

    /// The proxy's name in reports and log files: `kproxy` or
    /// `kube-proxy`.
    pub fn label(self) -> &'static str {
        match self {
            ProxyKind::Kproxy => "kproxy",
            ProxyKind::Upstream => "kube-proxy",
        }
    }
}

/// The `KubeProxyConfiguration` both proxies read for `scenario` (same
/// file, same meaning), in nftables mode.
pub fn config(scenario: &Scenario, kubeconfig: &Path) -> Value {
    config_in(scenario, kubeconfig, Dataplane::Nftables)
}

/// A range that holds no address of a scenario's node.
pub const NO_NODE_ADDRESS_RANGE: &str = "198.51.100.0/24";

/// [`config`] in `mode` (nftables or iptables). NodePorts are served as
/// the scenario's configuration says: on the node's primary IP, on every
/// address, or (no NodePort address) nowhere, through a range that holds
/// none of the node's addresses.
pub fn config_in(scenario: &Scenario, kubeconfig: &Path, mode: Dataplane) -> Value {
    let c = &scenario.config;
    let node_ports = if c.node_ports_on_every_address {
        json!(["0.0.0.0/0", "::/0"])
    } else if c.node_port_ips.is_empty() {
        json!([NO_NODE_ADDRESS_RANGE])
    } else {
        json!(["primary"])
    };
    let (mode_name, section) = match mode {
        Dataplane::Nftables => ("nftables", "nftables"),
        Dataplane::Iptables => ("iptables", "iptables"),
        Dataplane::Ipvs => ("ipvs", "ipvs"),
        // Userspace mode syncs at the iptables section's periods, as
        // upstream's did.
        Dataplane::Userspace => ("userspace", "iptables"),
    };
    let mut config = json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": mode_name,
        "nodePortAddresses": node_ports,
        "hostnameOverride": kproxy_oracle::fixtures::NODE_NAME,
        "clientConnection": {"kubeconfig": kubeconfig.to_string_lossy()},
        // The table size is global: tests leave it alone.
        "conntrack": {"maxPerCore": 0},
    });
    config[section] = json!({"minSyncPeriod": "0s", "syncPeriod": "30s"});
    // IPVS mode takes its masquerade settings from the iptables section,
    // as upstream's.
    let masquerade = if mode == Dataplane::Ipvs { "iptables" } else { section };
    config[masquerade]["masqueradeAll"] = json!(c.masquerade_all);
    config[masquerade]["masqueradeBit"] = json!(c.masquerade_bit);
    if mode == Dataplane::Iptables {
        config["iptables"]["localhostNodePorts"] = json!(scenario.localhost_node_ports);
    }
    match &c.local_detector {
        LocalDetector::None => {}
        LocalDetector::ClusterCidr(nets) => {
            config["clusterCIDR"] = json!(nets.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(","));
        }
        LocalDetector::NodeCidr(_) => config["detectLocalMode"] = json!("NodeCIDR"),
        LocalDetector::BridgeInterface(b) => {
            config["detectLocalMode"] = json!("BridgeInterface");
            config["detectLocal"] = json!({"bridgeInterface": b});
        }
        LocalDetector::InterfaceNamePrefix(p) => {
            config["detectLocalMode"] = json!("InterfaceNamePrefix");
            config["detectLocal"] = json!({"interfaceNamePrefix": p});
        }
    }
    config
}

/// The log file of `kind` running in `node`.
pub fn log_path(kind: ProxyKind, node: &Netns, dir: &Path) -> PathBuf {
    dir.join(format!("{}-{}.log", kind.label(), node.name()))
}

/// Writes `scenario`'s Node, Services and EndpointSlices into `dir`, one
/// object per file (JSON is YAML), for `kproxy --manifests DIR`.
pub fn write_manifests(dir: &Path, scenario: &Scenario) -> Result<(), String> {
    let objects = std::iter::once(serde_json::to_string(&scenario.node))
        .chain(scenario.services.iter().map(serde_json::to_string))
        .chain(scenario.slices.iter().map(serde_json::to_string));
    for (n, text) in objects.enumerate() {
        let file = dir.join(format!("{n:03}.yaml"));
        std::fs::write(&file, text.map_err(|e| e.to_string())?).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(())
}

/// Starts `kind` in `node` with `config` (written to `dir`, where its log
/// goes too); returns the process handle in `node`.
pub fn start_proxy(kind: ProxyKind, node: &mut Netns, config: &Value, dir: &Path, binary: &str) -> Result<usize, String> {
    start_proxy_with(kind, node, config, dir, binary, &[])
}

/// [`start_proxy`] with more command-line arguments after `--config`
/// (`--v=2` for a sync summary in the log, say).
pub fn start_proxy_with(kind: ProxyKind, node: &mut Netns, config: &Value, dir: &Path, binary: &str, extra: &[&str]) -> Result<usize, String> {
    let path: PathBuf = dir.join(format!("config-{}.json", node.name()));
    std::fs::write(&path, config.to_string()).map_err(|e| e.to_string())?;
    let log = log_path(kind, node, dir);
    let config_arg = format!("--config={}", path.display());
    let mut args = vec![binary, config_arg.as_str()];
    args.extend_from_slice(extra);
    node.spawn_logged(&args, &log)
}

/// Runs every shared scenario with `kind` (its binary at `binary`) against
/// a fresh control plane, one node namespace at a time: objects through
/// the API, the proxy started with the scenario's configuration, every
/// case checked with real traffic until it passes or 20 s pass. Prints,
/// per scenario, how long after the proxy's start every case passed;
/// returns the failures. `KPROXY_E2E_SCENARIOS=name,...` limits the run
/// to those scenarios.
pub fn run_all(bins: &Binaries, kind: ProxyKind, binary: &str) -> Result<Vec<String>, String> {
    run_all_in(bins, kind, binary, Dataplane::Nftables)
}

/// [`run_all`] with the proxy in `mode` (nftables or iptables), each case
/// checked with that mode's semantics.
pub fn run_all_in(bins: &Binaries, kind: ProxyKind, binary: &str, mode: Dataplane) -> Result<Vec<String>, String> {
    let mut cp = ControlPlane::start(bins)?;
    let api = cp.admin()?;
    let kubeconfig = cp.kubeconfig(kind.user())?;
    let mut failures = Vec::new();
    // KPROXY_E2E_SCENARIOS=a,b runs only those (while working on them).
    let only = std::env::var("KPROXY_E2E_SCENARIOS").ok();
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o.split(',').any(|w| w == name));
    for s in scenarios::all().into_iter().filter(|s| wanted(s.name)) {
        let mut topo = Topology::build(&s)?;
        cp.attach(&topo.node)?;
        apply(&api, &s)?;
        let start = Instant::now();
        start_proxy(kind, &mut topo.node, &config_in(&s, &kubeconfig, mode), cp.dir(), binary)?;
        let mut last = Vec::new();
        while start.elapsed() < Duration::from_secs(20) {
            last = check_scenario_for(&topo, &s, mode);
            if last.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        println!("{:<48} {:>2} cases, all passing {:.1} s after {kind:?} ({mode:?}) started", s.name, s.cases.len(), start.elapsed().as_secs_f64());
        if !last.is_empty() {
            // The proxy's own account, for a failure seen only in CI.
            let log = std::fs::read_to_string(log_path(kind, &topo.node, cp.dir())).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
            last.push(format!("--- last lines of the {kind:?} log for {}:\n{}", s.name, tail.join("\n")));
        }
        failures.extend(last);
        drop(topo);
        delete(&api, &s)?;
    }
    Ok(failures)
}
