//! One node with its pods and an outside client, built from a scenario, in
//! namespaces that have no link to the host's.
//!
//! ```text
//!  pod namespaces (one per endpoint IP, plus a client pod)
//!     eth0 ──veth── kpvN   (routed: gateway address on kpvN, host route
//!                          to the pod; or, for the bridge-interface
//!                          detector, kpvN enslaved to the bridge kpbr0)
//!                       node namespace (the proxy programs this one)
//!                         kpeth0 (192.168.0.2/24, 2001:db8::2/64)
//!                            │ veth
//!                         kpc0 (192.168.0.100/24, 2001:db8::100/64, + every outside source)
//!                       outside-client namespace
//! ```
//!
//! Pods have host addresses (/32, /128) and reach everything, each other
//! included, through the node, so replies always pass its conntrack. Routed
//! veths are the default because Linux will not route a packet that a
//! bridge delivered back to the pod that sent it (hairpin to self).
//! Endpoints "on other nodes" (10.180.1.0/24) sit on the same bridge: which
//! node an endpoint is on is the proxy's view (the slice's `nodeName`), not
//! the wiring.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use kproxy_oracle::{fixtures as fx, Origin, Scenario};
use kproxy_oracle::POD_INTERFACE;
use kproxy_core::{LocalDetector, Protocol};

use crate::netns::Netns;

/// The script that serves and probes.
pub const KPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/kpt.py");

/// A built topology. Dropping it removes every namespace and process.
#[derive(Debug)]
pub struct Topology {
    /// The node the proxy runs in.
    pub node: Netns,
    /// The outside client.
    pub outside: Netns,
    /// Pod namespaces by IP.
    pub pods: BTreeMap<IpAddr, Netns>,
}

fn v4(ip: &IpAddr) -> bool {
    ip.is_ipv4()
}

/// Adds an address (IPv6 without duplicate address detection, so it is
/// usable at once).
fn add_addr(ns: &Netns, addr: &str, dev: &str) -> Result<String, String> {
    if addr.contains(':') {
        ns.ip(&["addr", "add", addr, "dev", dev, "nodad"])
    } else {
        ns.ip(&["addr", "add", addr, "dev", dev])
    }
}

fn pod_prefix(ip: &IpAddr) -> (String, &'static str) {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            (format!("{ip}/32"), if o[2] == 0 { "10.180.0.254" } else { "10.180.1.254" })
        }
        IpAddr::V6(_) => (format!("{ip}/128"), "fd00:10:180::fe"),
    }
}

impl Topology {
    /// Builds the node, a pod per endpoint of `scenario` (serving every
    /// port its slices name), the client pods the cases use, and the
    /// outside client with every outside source address the cases use.
    pub fn build(scenario: &Scenario) -> Result<Topology, String> {
        let node = Netns::new("node")?;
        let outside = Netns::new("out")?;
        for (k, v) in [("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1")] {
            node.exec(&["sysctl", "-qw", &format!("{k}={v}")])?;
        }
        // Interface-based detectors need every pod behind one bridge.
        let bridged = matches!(
            scenario.config.local_detector,
            LocalDetector::BridgeInterface(_) | LocalDetector::InterfaceNamePrefix(_)
        );
        if bridged {
            node.ip(&["link", "add", POD_INTERFACE, "type", "bridge"])?;
            for addr in ["10.180.0.254/24", "10.180.1.254/24", "fd00:10:180::fe/64"] {
                add_addr(&node, addr, POD_INTERFACE)?;
            }
            node.ip(&["link", "set", POD_INTERFACE, "up"])?;
        }
        node.ip(&["link", "add", "kpeth0", "type", "veth", "peer", "name", "kpc0", "netns", outside.name()])?;
        add_addr(&node, &format!("{}/24", fx::NODE_IP), "kpeth0")?;
        add_addr(&node, &format!("{}/64", fx::NODE_IP_V6), "kpeth0")?;
        node.ip(&["link", "set", "kpeth0", "up"])?;
        add_addr(&outside, "192.168.0.100/24", "kpc0")?;
        add_addr(&outside, "2001:db8::100/64", "kpc0")?;
        outside.ip(&["link", "set", "kpc0", "up"])?;
        outside.ip(&["route", "add", "default", "via", "192.168.0.2"])?;
        outside.ip(&["-6", "route", "add", "default", "via", "2001:db8::2"])?;
        // The node sends whatever it does not DNAT out to the client side.
        node.ip(&["route", "add", "default", "via", "192.168.0.100"])?;
        node.ip(&["-6", "route", "add", "default", "via", "2001:db8::100"])?;

        // Outside sources: on the client, routed back to it from the node.
        let outside_sources: BTreeSet<IpAddr> =
            scenario.cases.iter().filter(|c| c.packet.origin == Origin::Outside).map(|c| c.packet.src).collect();
        // Node-origin sources that are not the node's addresses (a VIP the
        // node holds locally) go on its loopback (which has 127.0.0.1).
        for case in scenario.cases.iter().filter(|c| c.packet.origin == Origin::Node) {
            let src = case.packet.src;
            if src.to_string() != fx::NODE_IP && src.to_string() != fx::NODE_IP_V6 && !src.is_loopback() {
                let plen = if v4(&src) { 32 } else { 128 };
                add_addr(&node, &format!("{src}/{plen}"), "lo")?;
            }
        }
        for src in &outside_sources {
            let on_link = match src {
                IpAddr::V4(a) => a.octets()[..3] == [192, 168, 0],
                IpAddr::V6(a) => a.segments()[..4] == [0x2001, 0xdb8, 0, 0],
            };
            if on_link {
                continue;
            }
            let (plen, via) = if v4(src) { ("32", "192.168.0.100") } else { ("128", "2001:db8::100") };
            add_addr(&outside, &format!("{src}/{plen}"), "kpc0")?;
            node.ip(&["route", "replace", &format!("{src}/{plen}"), "via", via])?;
        }

        // Pods: every endpoint, plus every pod-origin client address.
        let mut ports: BTreeMap<IpAddr, BTreeSet<(Protocol, u16)>> = BTreeMap::new();
        let state = scenario.state();
        for (name, eps) in state.endpoints().iter() {
            for ep in eps {
                ports.entry(ep.ip).or_default().insert((name.protocol, ep.port));
            }
        }
        for case in scenario.cases.iter().filter(|c| c.packet.origin == Origin::LocalPod) {
            ports.entry(case.packet.src).or_default();
        }
        let mut topo = Topology { node, outside, pods: BTreeMap::new() };
        for (i, (ip, serve)) in ports.into_iter().enumerate() {
            let mut pod = Netns::new(&format!("p{i}"))?;
            let host_end = format!("kpv{i}");
            topo.node.ip(&["link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", pod.name()])?;
            let (addr, gw) = pod_prefix(&ip);
            if bridged {
                topo.node.ip(&["link", "set", &host_end, "master", POD_INTERFACE, "up"])?;
            } else {
                // Routed, as Calico does it: the gateway address on every
                // pod's host-side veth and a host route to the pod.
                let gw_host = if v4(&ip) { format!("{gw}/32") } else { format!("{gw}/128") };
                add_addr(&topo.node, &gw_host, &host_end)?;
                topo.node.ip(&["link", "set", &host_end, "up"])?;
                topo.node.ip(&["route", "add", &addr, "dev", &host_end])?;
            }
            add_addr(&pod, &addr, "eth0")?;
            pod.ip(&["link", "set", "eth0", "up"])?;
            // A host address and an on-link gateway: even traffic to a pod
            // on the same bridge goes through the node's routing (and so
            // its conntrack), as with br_netfilter or a routed CNI.
            pod.ip(&["route", "add", gw, "dev", "eth0"])?;
            pod.ip(&["route", "add", "default", "via", gw])?;
            if !serve.is_empty() {
                serve_on(&mut pod, ip, &serve, false)?;
            }
            topo.pods.insert(ip, pod);
        }
        // Beyond the node: a responder on every address of the scenario's
        // ServiceCIDRs that its cases send to and no Service holds, so
        // traffic the proxy lets through (leaks) is answered by the
        // address itself, and a drop is told from a leak.
        for (ip, serve) in beyond(scenario, &state) {
            add_addr(&topo.outside, &format!("{ip}/{}", if v4(&ip) { 32 } else { 128 }), "kpc0")?;
            serve_on(&mut topo.outside, ip, &serve, true)?;
        }
        Ok(topo)
    }

    /// The namespace a packet of `origin` with source `src` starts in.
    pub fn source(&self, origin: Origin, src: IpAddr) -> Option<&Netns> {
        match origin {
            Origin::Node => Some(&self.node),
            Origin::Outside => Some(&self.outside),
            Origin::LocalPod => self.pods.get(&src),
        }
    }
}

/// Runs `kpt.py serve` in `ns`, answering as `ip` on `ports` (on every
/// address, or on `ip` only when `only_ip`).
fn serve_on(ns: &mut Netns, ip: IpAddr, ports: &BTreeSet<(Protocol, u16)>, only_ip: bool) -> Result<(), String> {
    let mut args = vec!["python3".to_string(), KPT.to_string(), "serve".into(), "--name".into(), ip.to_string()];
    if only_ip {
        args.push("--addr".into());
        args.push(ip.to_string());
    }
    for (proto, port) in ports {
        let flag = match proto {
            Protocol::Udp => "--udp",
            _ => "--tcp",
        };
        args.push(flag.into());
        args.push(port.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ns.spawn_ready(&args).map(|_| ())
}

/// The destinations (with their ports) of the pod and node cases of a
/// scenario with ServiceCIDRs that no Service holds: whatever the proxy
/// does not drop there must reach them, beyond the node.
fn beyond(scenario: &Scenario, state: &kproxy_core::ProxyState) -> BTreeMap<IpAddr, BTreeSet<(Protocol, u16)>> {
    let mut out: BTreeMap<IpAddr, BTreeSet<(Protocol, u16)>> = BTreeMap::new();
    if scenario.service_cidrs.is_empty() {
        return out;
    }
    let held = |ip: &IpAddr| {
        state.services().iter().any(|(_, s)| s.cluster_ip == *ip || s.external_ips.contains(ip) || s.load_balancer_vips.contains(ip))
    };
    for case in scenario.cases.iter().filter(|c| matches!(c.packet.origin, Origin::LocalPod | Origin::Node)) {
        let dst = case.packet.dst;
        if !held(&dst) && !scenario.config.node_ips.contains(&dst) {
            out.entry(dst).or_default().insert((case.packet.protocol, case.packet.dport));
        }
    }
    out
}
