//! Helpers shared by the binary's integration tests.

#![allow(dead_code)] // each test file uses a part

pub mod deploy;
pub mod fake_api;

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
