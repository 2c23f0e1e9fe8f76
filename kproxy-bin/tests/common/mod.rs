//! Helpers shared by the binary's integration tests.

#![allow(dead_code)] // each test file uses a part

pub mod deploy;
pub mod fake_api;
pub mod trace;

/// Writes `scenario`'s Node, Services and EndpointSlices into `dir`, one
/// object per file (JSON is YAML), for `kproxy --manifests DIR`.
pub fn write_manifests(dir: &std::path::Path, scenario: &kproxy_core::oracle::Scenario) {
    let objects = std::iter::once(serde_json::to_string(&scenario.node).unwrap())
        .chain(scenario.services.iter().map(|s| serde_json::to_string(s).unwrap()))
        .chain(scenario.slices.iter().map(|s| serde_json::to_string(s).unwrap()));
    for (n, text) in objects.enumerate() {
        std::fs::write(dir.join(format!("{n:03}.yaml")), text).unwrap();
    }
}

/// GET `url` from inside `topo`'s node namespace with curl: the status
/// code and the body, whatever the status ("000" and "" when nothing
/// answered).
pub fn http_get(topo: &kproxy_testkit::Topology, url: &str) -> (String, String) {
    let out = topo.node.exec(&["curl", "-sS", "--max-time", "5", "-w", "\n%{http_code}", url]).unwrap_or_default();
    let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    (code.trim().to_string(), body.to_string())
}
