//! Helpers shared by the binary's integration tests.

#![allow(dead_code)] // each test file uses a part

pub mod deploy;
pub mod fake_api;
pub mod takeover;
pub mod trace;

/// Writes `scenario`'s manifests into `dir` ([`kproxy_e2e::scenario::write_manifests`]).
pub fn write_manifests(dir: &std::path::Path, scenario: &kproxy_oracle::Scenario) {
    kproxy_e2e::scenario::write_manifests(dir, scenario).unwrap();
}

/// Starts kproxy in `mode` on `scenario` with the scenario's own
/// configuration (`--config`, as the e2e harness writes it) and its
/// manifests, ServiceCIDRs included; `bin` is the kproxy binary.
pub fn start_configured(topo: &mut kproxy_testkit::Topology, scenario: &kproxy_oracle::Scenario, mode: kproxy_oracle::Dataplane, bin: &str) -> (std::path::PathBuf, usize) {
    start_configured_to(topo, scenario, mode, bin, None)
}

/// [`start_configured`] with kproxy's output appended to `log` (when
/// given) instead of the test's own.
pub fn start_configured_to(
    topo: &mut kproxy_testkit::Topology,
    scenario: &kproxy_oracle::Scenario,
    mode: kproxy_oracle::Dataplane,
    bin: &str,
    log: Option<&std::path::Path>,
) -> (std::path::PathBuf, usize) {
    let dir = std::env::temp_dir().join(format!("kproxy-standalone-{}-configured-{}", std::process::id(), scenario.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("m")).unwrap();
    write_manifests(&dir.join("m"), scenario);
    for (i, net) in scenario.service_cidrs.iter().enumerate() {
        let object = serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": format!("cidr-{i}")}, "spec": {"cidrs": [net.to_string()]}});
        std::fs::write(dir.join("m").join(format!("cidr-{i}.yaml")), object.to_string()).unwrap();
    }
    let mut config = kproxy_e2e::scenario::config_in(scenario, std::path::Path::new("unused"), mode);
    config.as_object_mut().unwrap().remove("clientConnection");
    let file = dir.join("config.yaml");
    std::fs::write(&file, config.to_string()).unwrap();
    let manifests = dir.join("m");
    let args = [bin, "--config", file.to_str().unwrap(), "--manifests", manifests.to_str().unwrap()];
    let handle = match log {
        Some(log) => topo.node.spawn_logged(&args, log),
        None => topo.node.spawn(&args),
    }
    .unwrap();
    (dir, handle)
}

/// Waits until `topo` meets every case of `scenario` with `mode`'s
/// semantics, 90 s at most (generous: the IPVS tests run in an emulated
/// VM, at times beside other work); on timeout, the cases still unmet.
pub fn wait_served(topo: &kproxy_testkit::Topology, scenario: &kproxy_oracle::Scenario, mode: kproxy_oracle::Dataplane) -> Result<(), Vec<String>> {
    let start = std::time::Instant::now();
    loop {
        let unmet = kproxy_testkit::check_scenario_for(topo, scenario, mode);
        if unmet.is_empty() {
            return Ok(());
        }
        if start.elapsed() > std::time::Duration::from_secs(90) {
            return Err(unmet);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
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

/// Waits until the proxy in `topo.node` has synced its rules once (its
/// `kubeproxy_sync_proxy_rules_last_timestamp_seconds` is set; `/healthz`
/// says 200 before the first sync), 90 s at most.
pub fn wait_synced(topo: &kproxy_testkit::Topology, what: &str) {
    let start = std::time::Instant::now();
    loop {
        let metrics = topo.node.exec(&["curl", "-sS", "--max-time", "1", "http://127.0.0.1:10249/metrics"]).unwrap_or_default();
        let synced = metrics
            .lines()
            .filter(|l| l.starts_with("kubeproxy_sync_proxy_rules_last_timestamp_seconds"))
            .any(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v > 0.0));
        if synced {
            return;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(90), "{what} never synced");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
