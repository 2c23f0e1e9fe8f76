//! What a new connection costs through each proxy's rules (issue 19 item
//! 3), on the side-by-side set-up of [`crate::bench`]: from each node's
//! client pod, one client opens TCP connections one after another to the
//! ClusterIP its proxy's rules reach first and to the one they reach last,
//! and sends UDP request/replies to a UDP Service, each from a new socket
//! (a new flow, as a resolver sends them), so every packet measured first
//! meets the proxy's rules rather than conntrack.
//!
//! "First" and "last" are read from each proxy's own ruleset. In iptables
//! mode a new connection walks `KUBE-SERVICES` one rule at a time, in the
//! order the proxy wrote them (upstream's follows Go's map order, so it
//! differs per sync); in nftables mode both proxies look the destination up
//! in one verdict map, where no order exists, and the first and last
//! Services created stand in.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kproxy_oracle::Dataplane;
use kproxy_testkit::KPT;
use serde_json::{json, Value};

use crate::bench::{bg_ip, SideBySide, CLIENT, POD_D, UDP_TARGET_PORT};
use crate::scenario::ProxyKind;

/// The UDP Service the benchmark adds (port 53, to pod D).
pub const UDP_PROBE_IP: &str = "172.30.0.11";

/// How much each measurement sends.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// TCP connections opened one after another, per target.
    pub connections: usize,
    /// UDP request/replies, each from a new socket.
    pub udp: usize,
}

/// One TCP target's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpCost {
    /// The ClusterIP connected to.
    pub target: String,
    /// Where the proxy's rules match it (0 is first), when they have an
    /// order.
    pub position: Option<usize>,
    /// New connections per second.
    pub connections_per_second: f64,
    /// Connect + first byte, p50 and p99, in ms (answered connections).
    pub connect_ms: (f64, f64),
    /// Connections refused or not answered within 5 s.
    pub failed: u64,
}

/// One proxy's figures at one size.
#[derive(Debug, Clone, PartialEq)]
pub struct Cost {
    /// The first and the last Service in the proxy's order.
    pub tcp: [TcpCost; 2],
    /// UDP round trip on a new flow, p50 and p99, in ms.
    pub udp_ms: (f64, f64),
    /// Where the proxy's rules match the UDP Service, when they have an
    /// order.
    pub udp_position: Option<usize>,
}

impl Cost {
    /// The figures as JSON, for the raw samples file.
    pub fn to_json(&self) -> Value {
        json!({
            "tcp": self.tcp.iter().map(|t| json!({"target": t.target, "position": t.position, "connections_per_second": t.connections_per_second, "connect_p50_ms": t.connect_ms.0, "connect_p99_ms": t.connect_ms.1, "failed": t.failed})).collect::<Vec<_>>(),
            "udp_p50_ms": self.udp_ms.0, "udp_p99_ms": self.udp_ms.1, "udp_position": self.udp_position,
        })
    }
}

/// The ClusterIPs in `save` (`iptables-save -t nat` output) in the order
/// `KUBE-SERVICES` matches them, each once.
pub fn kube_services_order(save: &str) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for line in save.lines().filter(|l| l.starts_with("-A KUBE-SERVICES ")) {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w == "-d" {
                if let Some(ip) = words.next().map(|d| d.trim_end_matches("/32").to_string()) {
                    if seen.insert(ip.clone()) {
                        out.push(ip);
                    }
                }
            }
        }
    }
    out
}

impl SideBySide {
    /// Adds the UDP Service, if it is not there yet.
    fn ensure_udp_probe(&mut self) -> Result<(), String> {
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "bench", "name": "udp-probe"},
            "spec": {"clusterIP": UDP_PROBE_IP, "clusterIPs": [UDP_PROBE_IP], "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}});
        let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": "bench", "name": "udp-probe-a", "labels": {"kubernetes.io/service-name": "udp-probe"}},
            "addressType": "IPv4", "endpoints": [{"addresses": [POD_D], "conditions": {"ready": true}, "nodeName": "node-k"}],
            "ports": [{"name": "dns", "port": UDP_TARGET_PORT, "protocol": "UDP"}]});
        self.api.apply_many(vec![svc, slice], 2)
    }

    /// The ClusterIPs in the order `kind`'s rules match them (iptables
    /// mode), or none (nftables mode: a map).
    fn rule_order(&self, kind: ProxyKind) -> Result<Vec<String>, String> {
        if self.mode != Dataplane::Iptables {
            return Ok(Vec::new());
        }
        let node = self.nodes.iter().find(|n| n.kind == kind).ok_or("no such node")?;
        let save = if self.legacy { "iptables-legacy-save" } else { "iptables-nft-save" };
        Ok(kube_services_order(&node.topo.node.exec(&[save, "-t", "nat"])?))
    }

    /// Waits (at most 2 minutes) until neither proxy used more than 50 ms
    /// of CPU over the last 2 s: a proxy's sync still running (a full
    /// `iptables-restore` at 10,000 Services takes seconds) would take the
    /// CPU from the connections measured next, in either node.
    pub fn settle(&mut self) {
        let kinds = [ProxyKind::Kproxy, ProxyKind::Upstream];
        let began = Instant::now();
        let mut before: Vec<f64> = kinds.iter().map(|k| self.usage(*k).cpu_seconds).collect();
        while began.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_secs(2));
            let now: Vec<f64> = kinds.iter().map(|k| self.usage(*k).cpu_seconds).collect();
            if now.iter().zip(&before).all(|(n, b)| n - b <= 0.05) {
                return;
            }
            before = now;
        }
    }

    /// Measures `kind`'s dataplane at the current size (both proxies
    /// running and serving), once both proxies have settled.
    pub fn dataplane_cost(&mut self, kind: ProxyKind, sizes: Sizes) -> Result<Cost, String> {
        self.ensure_udp_probe()?;
        let client = self.client(kind);
        // The UDP Service answers before anything is measured.
        let began = Instant::now();
        while bench(&client, UDP_PROBE_IP, 0, 1).is_err() {
            if began.elapsed() > Duration::from_secs(120) {
                return Err(format!("{kind:?}: the UDP Service never answered"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.settle();
        let order = self.rule_order(kind)?;
        let ends: Vec<String> = if order.is_empty() {
            if self.services == 0 {
                return Err("no background Services".into());
            }
            vec![bg_ip(0), bg_ip(self.services - 1)]
        } else {
            let background: std::collections::HashSet<String> = (0..self.services).map(bg_ip).collect();
            let ours: Vec<&String> = order.iter().filter(|ip| background.contains(*ip)).collect();
            match (ours.first(), ours.last()) {
                (Some(a), Some(b)) => vec![(*a).clone(), (*b).clone()],
                _ => return Err(format!("{kind:?}: no background ClusterIP in KUBE-SERVICES")),
            }
        };
        let position = |ip: &str| order.iter().position(|o| o == ip);
        let mut tcp = Vec::new();
        for target in ends {
            let v = bench(&client, &target, sizes.connections, 0)?;
            tcp.push(TcpCost {
                position: position(&target),
                connections_per_second: number(&v, "connections_per_second")?,
                connect_ms: (number(&v, "connect_p50_ms")?, number(&v, "connect_p99_ms")?),
                failed: number(&v, "connect_failures")? as u64,
                target,
            });
        }
        let v = bench(&client, UDP_PROBE_IP, 0, sizes.udp)?;
        let tcp: [TcpCost; 2] = tcp.try_into().map_err(|_| "two targets")?;
        Ok(Cost { tcp, udp_ms: (number(&v, "udp_p50_ms")?, number(&v, "udp_p99_ms")?), udp_position: position(UDP_PROBE_IP) })
    }
}

/// Runs `kpt.py bench` in the client pod `client` against `dst`.
fn bench(client: &str, dst: &str, connections: usize, udp: usize) -> Result<Value, String> {
    let (c, u) = (connections.to_string(), udp.to_string());
    let out = kproxy_testkit::run(&[
        "ip", "netns", "exec", client, "python3", KPT, "bench", "--src", CLIENT, "--dst", dst, "--port", "80", "--udp-port", "53", "--connections", &c, "--udp-count", &u, "--udp-fresh",
        "--megabytes", "0",
    ])?;
    serde_json::from_str(out.trim()).map_err(|e| format!("{e}: {out}"))
}

fn number(v: &Value, key: &str) -> Result<f64, String> {
    v[key].as_f64().ok_or_else(|| format!("no {key} in {v}"))
}

/// The Markdown table of one run: per size and proxy, each target's
/// figures; then kproxy's ratios to upstream.
pub fn table(rows: &BTreeMap<usize, BTreeMap<ProxyKind, Cost>>) -> String {
    let mut out = String::from(
        "| services | proxy | target (position) | connections/s | connect p50 (ms) | connect p99 (ms) | failed | UDP new flow p50 (ms) | UDP p99 (ms) |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let pos = |p: Option<usize>| p.map_or(String::new(), |p| format!(" ({p})"));
    for (size, by) in rows {
        for (kind, c) in by {
            let name = if *kind == ProxyKind::Kproxy { "kproxy" } else { "kube-proxy" };
            for (i, t) in c.tcp.iter().enumerate() {
                let udp = if i == 0 { (format!("{:.3}{}", c.udp_ms.0, pos(c.udp_position)), format!("{:.3}", c.udp_ms.1)) } else { (String::new(), String::new()) };
                let which = if i == 0 { "first" } else { "last" };
                out.push_str(&format!(
                    "| {size} | {name} | {which}: {}{} | {:.0} | {:.3} | {:.3} | {} | {} | {} |\n",
                    t.target,
                    pos(t.position),
                    t.connections_per_second,
                    t.connect_ms.0,
                    t.connect_ms.1,
                    t.failed,
                    udp.0,
                    udp.1
                ));
            }
        }
        if let (Some(k), Some(u)) = (by.get(&ProxyKind::Kproxy), by.get(&ProxyKind::Upstream)) {
            let r = |i: usize| (k.tcp[i].connections_per_second / u.tcp[i].connections_per_second, k.tcp[i].connect_ms.0 / u.tcp[i].connect_ms.0, k.tcp[i].connect_ms.1 / u.tcp[i].connect_ms.1);
            for (i, which) in ["first", "last"].iter().enumerate() {
                let (a, b, c) = r(i);
                let udp = if i == 0 { (format!("{:.2}", k.udp_ms.0 / u.udp_ms.0), format!("{:.2}", k.udp_ms.1 / u.udp_ms.1)) } else { (String::new(), String::new()) };
                out.push_str(&format!("| {size} | kproxy / kube-proxy | {which} | {a:.2} | {b:.2} | {c:.2} | | {} | {} |\n", udp.0, udp.1));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kube_services_in_rule_order() {
        let save = "\
*nat
:KUBE-SERVICES - [0:0]
-A KUBE-SERVICES -d 172.30.1.9/32 -p tcp -m comment --comment \"bench/bg-8:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-B
-A KUBE-SVC-B -j KUBE-SEP-X
-A KUBE-SERVICES -d 172.30.1.1/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-A
-A KUBE-SERVICES -d 172.30.1.9/32 -p tcp -m tcp --dport 81 -j KUBE-SVC-C
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
COMMIT
";
        assert_eq!(kube_services_order(save), ["172.30.1.9", "172.30.1.1"]);
    }
}
