//! A proxier process killed with SIGKILL and restarted: established
//! connections survive, new connections keep working while it is down (its
//! rules stay), and the new process's first sync swaps in the same ruleset
//! without a moment where the service is missing. Needs root.

use std::time::Duration;

use kproxy_oracle::{fixtures as fx, scenarios};
use kproxy_testkit::{kernel_tests_enabled, Topology, KPT};

/// The `kproxy-nft-scenario` example, built if this test runs alone.
fn scenario_bin() -> String {
    let exe = std::env::current_exe().expect("own path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps");
    let bin = profile_dir.join("examples").join("kproxy-nft-scenario");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "-q", "-p", "kproxy-backend-nft", "--example", "kproxy-nft-scenario"]);
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        assert!(cmd.status().map(|s| s.success()).unwrap_or(false), "cannot build the kproxy-nft-scenario example");
    }
    bin.to_string_lossy().into_owned()
}
const VIP: &str = "172.30.0.41";

fn table_listing(topo: &Topology, table: &str) -> String {
    let out = topo.node.exec(&["nft", "list", "table", "ip", table]).unwrap_or_else(|e| panic!("{e}"));
    out.replace(table, "TABLE")
}

#[test]
fn kill_and_restart_keeps_traffic_flowing() {
    if !kernel_tests_enabled("kill_and_restart_keeps_traffic_flowing") {
        return;
    }
    let scenario = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").unwrap();
    let mut topo = Topology::build(&scenario).unwrap();
    let bin = scenario_bin();
    let first = topo.node.spawn_ready(&[&bin, "cluster_ip"]).unwrap();
    let before = table_listing(&topo, "kproxy-a");

    let client: std::net::IpAddr = fx::LOCAL_CLIENT_POD.parse().unwrap();
    let args = |mode: &str, seconds: &str| {
        vec!["python3", KPT, mode, "--src", fx::LOCAL_CLIENT_POD, "--dst", VIP, "--port", "80", "--seconds", seconds]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let pod = topo.pods.get_mut(&client).unwrap();
    let held = {
        let a = args("hold", "6");
        pod.spawn(&a.iter().map(String::as_str).collect::<Vec<_>>()).unwrap()
    };
    std::thread::sleep(Duration::from_millis(500));

    topo.node.kill(first);
    let pod = topo.pods.get_mut(&client).unwrap();
    let down = {
        let a = args("watch", "1");
        pod.spawn(&a.iter().map(String::as_str).collect::<Vec<_>>()).unwrap()
    };
    let down_result = pod.wait_output(down).unwrap();

    let during_restart = {
        let a = args("watch", "2.5");
        pod.spawn(&a.iter().map(String::as_str).collect::<Vec<_>>()).unwrap()
    };
    std::thread::sleep(Duration::from_millis(200));
    let _second = topo.node.spawn_ready(&[&bin, "cluster_ip"]).unwrap();
    let pod = topo.pods.get_mut(&client).unwrap();
    let restart_result = pod.wait_output(during_restart).unwrap();
    let held_result = pod.wait_output(held).unwrap();

    eprintln!("while down: {}during restart: {}established: {}", down_result, restart_result, held_result);
    assert!(down_result.contains("failed 0"), "new connections failed while the proxier was down: {down_result}");
    assert!(restart_result.contains("failed 0"), "connections failed during the restart: {restart_result}");
    assert!(held_result.starts_with("held"), "the established connection broke: {held_result}");
    let tables = topo.node.exec(&["nft", "list", "tables", "ip"]).unwrap();
    assert!(tables.contains("kproxy-b") && !tables.contains("kproxy-a"), "swapped to the other table: {tables}");
    assert_eq!(table_listing(&topo, "kproxy-b"), before, "the new process converged to the same ruleset");
}
