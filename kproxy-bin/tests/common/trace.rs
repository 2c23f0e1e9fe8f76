//! Running `kproxy trace` on every case of a scenario in its node
//! namespace, and comparing with the oracle's verdicts for that mode.

use kproxy_oracle::{Dataplane, Origin, Scenario, Verdict};
use kproxy_testkit::Topology;

/// One line per case where `kproxy trace --proxy-mode MODE` (the binary at
/// `bin`) on the node's live rules disagrees with the oracle's verdict for
/// `mode`: verdict and endpoints, and the masquerade flag too when
/// `masquerade`.
pub fn disagreements(topo: &Topology, scenario: &Scenario, bin: &str, mode: Dataplane, masquerade: bool) -> Vec<String> {
    let mode_name = match mode {
        Dataplane::Nftables => "nftables",
        Dataplane::Iptables => "iptables",
        Dataplane::Ipvs => "ipvs",
        Dataplane::Userspace => "userspace",
    };
    let mut failures = Vec::new();
    for case in &scenario.cases {
        let p = &case.packet;
        let arrival = match p.origin {
            Origin::Outside => "external",
            Origin::LocalPod => "local-pod",
            Origin::Node => "node",
        };
        let (src, dst, protocol) = (p.src.to_string(), std::net::SocketAddr::new(p.dst, p.dport).to_string(), format!("{:?}", p.protocol).to_lowercase());
        let out = topo.node.exec(&[bin, "trace", "--source", &src, "--destination", &dst, "--protocol", &protocol, "--arrival", arrival, "--proxy-mode", mode_name, "--output", "json"]);
        let json: serde_json::Value = match out.as_deref().map(serde_json::from_str) {
            Ok(Ok(v)) => v,
            other => {
                failures.push(format!("{} / {}: {other:?}", scenario.name, case.name));
                continue;
            }
        };
        let traced_masquerade = json["masquerade"].as_bool().unwrap_or(false);
        let (verdict, endpoints, expected_masquerade) = match case.expected_for(mode) {
            Verdict::Forward { targets, .. } => ("dnat", targets.iter().map(|t| t.endpoint.to_string()).collect::<Vec<_>>(), targets.iter().any(|t| t.masquerade)),
            Verdict::Reject => ("reject", Vec::new(), false),
            Verdict::Drop => ("drop", Vec::new(), false),
            Verdict::NotService => ("accept", Vec::new(), traced_masquerade),
        };
        let got: Vec<String> = json["endpoints"].as_array().map(|a| a.iter().map(|e| e.as_str().unwrap_or_default().to_string()).collect()).unwrap_or_default();
        if json["verdict"] != verdict || got != endpoints || (masquerade && traced_masquerade != expected_masquerade) {
            failures.push(format!(
                "{mode_name}: {} / {}: trace says {} {got:?} masquerade={traced_masquerade}, the oracle {verdict} {endpoints:?} masquerade={expected_masquerade}",
                scenario.name, case.name, json["verdict"]
            ));
        }
    }
    failures
}
