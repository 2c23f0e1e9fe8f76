//! The binary in standalone mode, for real: `kproxy --manifests DIR` runs in
//! a private node namespace, a shared scenario's objects are its manifests,
//! and every case is checked with real traffic. Then a manifest changes and
//! the traffic follows. Needs root (skips without, must run in CI).

use std::time::{Duration, Instant};

use kproxy_oracle::{fixtures as fx, scenarios, Verdict};
use kproxy_core::IpFamily;
use kproxy_netfilter::Conntrack;
use kproxy_testkit::{check_case, check_scenario, kernel_tests_enabled, Topology, KPT};

mod common;
use common::write_manifests;

const BIN: &str = env!("CARGO_BIN_EXE_kproxy");


/// Starts `kproxy --manifests` for `scenario` in its topology's node and
/// waits for the table; returns the manifests directory.
fn start_kproxy(topo: &mut Topology, scenario: &kproxy_oracle::Scenario, tag: &str) -> std::path::PathBuf {
    start_kproxy_with(topo, scenario, tag, &[])
}

/// [`start_kproxy`] with extra flags.
fn start_kproxy_with(topo: &mut Topology, scenario: &kproxy_oracle::Scenario, tag: &str, extra: &[&str]) -> std::path::PathBuf {
    start_kproxy_handle(topo, scenario, tag, extra).0
}

/// [`start_kproxy_with`], also returning the process's handle in the node.
fn start_kproxy_handle(topo: &mut Topology, scenario: &kproxy_oracle::Scenario, tag: &str, extra: &[&str]) -> (std::path::PathBuf, usize) {
    let dir = std::env::temp_dir().join(format!("kproxy-standalone-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    write_manifests(&dir, scenario);
    let mut args = vec![BIN, "--proxy-mode", "nftables", "--hostname-override", fx::NODE_NAME, "--cluster-cidr", fx::POD_CIDR, "--manifests", dir.to_str().unwrap()];
    args.extend(extra);
    let handle = topo.node.spawn(&args).unwrap();
    let start = Instant::now();
    while !topo.node.exec(&["nft", "list", "tables"]).unwrap_or_default().contains("kproxy-") {
        assert!(start.elapsed() < Duration::from_secs(10), "kproxy never programmed the node");
        std::thread::sleep(Duration::from_millis(100));
    }
    (dir, handle)
}

#[test]
fn health_check_node_ports_answer_for_local_policy_services() {
    if !kernel_tests_enabled("health_check_node_ports_answer_for_local_policy_services") {
        return;
    }
    for (name, status, weight) in [
        ("external_policy_local_with_local_endpoints", "HTTP/1.1 200", "1"),
        ("external_policy_local_without_local_endpoints", "HTTP/1.1 503", "0"),
    ] {
        let scenario = scenarios::all().into_iter().find(|s| s.name == name).unwrap();
        let mut topo = Topology::build(&scenario).unwrap();
        let dir = start_kproxy(&mut topo, &scenario, name);
        let start = Instant::now();
        let answer = loop {
            // On the NodePort address (the node IP: nftables mode's
            // `primary`), as upstream listens.
            let out = topo.node.exec(&["curl", "-sS", "-i", "--max-time", "2", &format!("http://{}:30000/", fx::NODE_IP)]).unwrap_or_else(|e| e);
            if out.starts_with("HTTP/") || start.elapsed() > Duration::from_secs(5) {
                break out;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(answer.starts_with(status), "{name}: {answer}");
        assert!(answer.to_lowercase().contains(&format!("x-load-balancing-endpoint-weight: {weight}")), "{name}: {answer}");
        assert!(answer.contains("\"name\": \"svc"), "{name}: {answer}");
        let loopback = topo.node.exec(&["curl", "-sS", "-i", "--max-time", "2", "http://127.0.0.1:30000/"]);
        assert!(loopback.is_err(), "{name}: not a NodePort address, yet it answered: {loopback:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn standalone_mode_serves_a_scenario_and_follows_manifest_changes() {
    if !kernel_tests_enabled("standalone_mode_serves_a_scenario_and_follows_manifest_changes") {
        return;
    }
    let scenario = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").unwrap();
    let mut topo = Topology::build(&scenario).unwrap();
    let dir = start_kproxy(&mut topo, &scenario, "cluster_ip");
    let failures = check_scenario(&topo, &scenario);
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The health and metrics servers answer as kube-proxy's do.
    let get = |url: &str| topo.node.exec(&["curl", "-sS", "-i", "--max-time", "2", url]).unwrap_or_else(|e| panic!("{url}: {e}"));
    let healthz = get("http://127.0.0.1:10256/healthz");
    assert!(healthz.starts_with("HTTP/1.1 200") && healthz.contains("\"nodeEligible\":true"), "{healthz}");
    assert!(get("http://127.0.0.1:10256/livez").starts_with("HTTP/1.1 200"));
    let metrics = get("http://127.0.0.1:10249/metrics");
    assert!(metrics.contains("kubeproxy_sync_proxy_rules_duration_seconds_count"), "{metrics}");
    assert!(metrics.contains("kubeproxy_proxy_healthz_total{code=\"200\"} 1"), "{metrics}");
    assert!(get("http://127.0.0.1:10249/proxyMode").ends_with("nftables"));

    // Scale the service down to one endpoint by editing its manifest.
    let mut slice = scenario.slices[0].clone();
    slice.endpoints.retain(|e| e.addresses[0] == "10.180.1.1");
    let last = std::fs::read_dir(&dir).unwrap().count() - 1;
    std::fs::write(dir.join(format!("{last:03}.yaml")), serde_json::to_string(&slice).unwrap()).unwrap();
    let packet = scenario.cases[0].packet.clone();
    let only_remote = Verdict::forward(&["10.180.1.1:8080"], false);
    let start = Instant::now();
    loop {
        match check_case(&topo, &packet, &only_remote) {
            Ok(()) => break,
            Err(e) if start.elapsed() > Duration::from_secs(10) => panic!("the change never reached the kernel: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A UDP client that keeps sending from one source port keeps one
/// conntrack entry; when its endpoint leaves the service (the pod still
/// answering), kproxy deletes the entry so the next datagram reaches a
/// serving endpoint instead of the old one for as long as the client
/// keeps talking.
#[test]
fn udp_flows_move_off_an_endpoint_that_leaves_the_service() {
    if !kernel_tests_enabled("udp_flows_move_off_an_endpoint_that_leaves_the_service") {
        return;
    }
    let scenario = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").unwrap();
    let mut topo = Topology::build(&scenario).unwrap();
    let dir = start_kproxy(&mut topo, &scenario, "udp-conntrack");
    let client: std::net::IpAddr = fx::LOCAL_CLIENT_POD.parse().unwrap();
    let stream = topo.pods.get_mut(&client).unwrap();
    let handle = stream
        .spawn(&["python3", KPT, "udpstream", "--src", fx::LOCAL_CLIENT_POD, "--sport", "40053", "--dst", "172.30.0.41", "--port", "53", "--seconds", "9"])
        .unwrap();

    // Which endpoint did the flow's conntrack entry pick?
    let mut conntrack = Conntrack::open_in_netns(topo.node.name()).unwrap();
    let start = Instant::now();
    let first = loop {
        let flows = conntrack.flows(IpFamily::V4).unwrap();
        let found = flows.iter().find(|f| f.original_source.port() == 40053 && f.original_destination.port() == 53);
        if let Some(f) = found {
            break f.reply_source.ip().to_string();
        }
        assert!(start.elapsed() < Duration::from_secs(5), "the stream never made a conntrack entry: {flows:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(["10.180.0.1", "10.180.1.1"].contains(&first.as_str()), "DNATed to {first}");
    std::thread::sleep(Duration::from_millis(1000));

    // Take that endpoint out of the slice; its pod keeps answering.
    let mut slice = scenario.slices[0].clone();
    slice.endpoints.retain(|e| e.addresses[0] != first);
    let last = std::fs::read_dir(&dir).unwrap().count() - 1;
    std::fs::write(dir.join(format!("{last:03}.yaml")), serde_json::to_string(&slice).unwrap()).unwrap();

    let out = topo.pods.get_mut(&client).unwrap().wait_output(handle).unwrap();
    let answers: Vec<&str> = out.lines().filter_map(|l| l.split_whitespace().nth(1)).collect();
    let other = if first == "10.180.0.1" { "10.180.1.1" } else { "10.180.0.1" };
    assert_eq!(answers.first().copied(), Some(first.as_str()), "{out}");
    let moved = answers.iter().position(|a| *a == other).unwrap_or_else(|| panic!("the flow never left {first}:\n{out}"));
    assert!(answers[moved..].iter().all(|a| *a == other), "the flow went back to {first} or was lost:\n{out}");
    assert!(answers.len() - moved >= 20, "moved too late:\n{out}");

    let metrics = topo.node.exec(&["curl", "-sS", "--max-time", "2", "http://127.0.0.1:10249/metrics"]).unwrap();
    let deleted = metrics
        .lines()
        .find(|l| l.starts_with("kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv4\"}"))
        .unwrap_or_else(|| panic!("no deleted-entries metric:\n{metrics}"));
    assert!(!deleted.ends_with(" 0"), "{deleted}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts `kproxy --manifests` in `mode` for `scenario` and waits until
/// its first case is served; returns the manifests directory and the
/// process's handle in the node.
fn start_kproxy_in(topo: &mut Topology, scenario: &kproxy_oracle::Scenario, tag: &str, mode: &str) -> (std::path::PathBuf, usize) {
    let dir = std::env::temp_dir().join(format!("kproxy-standalone-{}-{tag}-{mode}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    write_manifests(&dir, scenario);
    let args = [BIN, "--proxy-mode", mode, "--hostname-override", fx::NODE_NAME, "--cluster-cidr", fx::POD_CIDR, "--manifests", dir.to_str().unwrap()];
    let handle = topo.node.spawn(&args).unwrap();
    let case = &scenario.cases[0];
    let dataplane = if mode == "iptables" { kproxy_oracle::Dataplane::Iptables } else { kproxy_oracle::Dataplane::Nftables };
    let start = Instant::now();
    while let Err(e) = check_case(topo, &case.packet, case.expected_for(dataplane)) {
        assert!(start.elapsed() < Duration::from_secs(30), "{mode}: kproxy never served {}: {e}", case.name);
        std::thread::sleep(Duration::from_millis(200));
    }
    (dir, handle)
}

/// kubernetes/kubernetes#139628: a UDP client streaming from one source
/// port to a ClusterIP keeps its conntrack entry to the old pod after the
/// Service drops to zero endpoints, unless the proxy deletes it. kproxy
/// deletes it, so the next datagram meets the no-endpoint REJECT (ICMP
/// port unreachable) and no later one reaches the old pod. Both modes the
/// host kernel has.
#[test]
fn udp_flows_are_refused_once_the_service_has_no_endpoints() {
    if !kernel_tests_enabled("udp_flows_are_refused_once_the_service_has_no_endpoints") {
        return;
    }
    let scenario = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").unwrap();
    for mode in ["nftables", "iptables"] {
        let mut topo = Topology::build(&scenario).unwrap();
        let (dir, _) = start_kproxy_in(&mut topo, &scenario, "udp-zero", mode);
        let client: std::net::IpAddr = fx::LOCAL_CLIENT_POD.parse().unwrap();
        let stream = topo.pods.get_mut(&client).unwrap();
        let handle = stream
            .spawn(&["python3", KPT, "udpstream", "--src", fx::LOCAL_CLIENT_POD, "--sport", "40054", "--dst", "172.30.0.41", "--port", "53", "--seconds", "12"])
            .unwrap();
        let mut conntrack = Conntrack::open_in_netns(topo.node.name()).unwrap();
        let start = Instant::now();
        while !conntrack.flows(IpFamily::V4).unwrap().iter().any(|f| f.original_source.port() == 40054) {
            assert!(start.elapsed() < Duration::from_secs(10), "{mode}: the stream never made a conntrack entry");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(1000));

        // Scale to zero: the slice keeps its ports and loses every
        // endpoint; the pods keep answering anything that reaches them.
        let mut slice = scenario.slices[0].clone();
        slice.endpoints.clear();
        let last = std::fs::read_dir(&dir).unwrap().count() - 1;
        std::fs::write(dir.join(format!("{last:03}.yaml")), serde_json::to_string(&slice).unwrap()).unwrap();

        let out = topo.pods.get_mut(&client).unwrap().wait_output(handle).unwrap();
        let answers: Vec<&str> = out.lines().filter_map(|l| l.split_whitespace().nth(1)).collect();
        // The pods answer with their own address.
        let is_pod = |a: &str| a.parse::<std::net::IpAddr>().is_ok();
        assert!(answers.first().is_some_and(|a| is_pod(a)), "{mode}: the stream never reached a pod:\n{out}");
        let refused = answers.iter().position(|a| *a == "refused").unwrap_or_else(|| panic!("{mode}: never refused after the scale to zero:\n{out}"));
        let after = &answers[refused..];
        assert!(after.iter().all(|a| !is_pod(a)), "{mode}: a pod answered after the first refusal:\n{out}");
        assert!(after.iter().filter(|a| **a == "refused").count() >= 10, "{mode}: too few refusals after the change:\n{out}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The conntrack sysctls are set in kproxy's own network namespace, from
/// the flags; the host's stay as they were.
#[test]
fn conntrack_sysctls_are_set_at_start() {
    if !kernel_tests_enabled("conntrack_sysctls_are_set_at_start") {
        return;
    }
    const DIR: &str = "/proc/sys/net/netfilter/";
    let names = ["nf_conntrack_tcp_timeout_established", "nf_conntrack_tcp_timeout_close_wait", "nf_conntrack_tcp_be_liberal", "nf_conntrack_udp_timeout"];
    let host = |name: &str| std::fs::read_to_string(format!("{DIR}{name}")).unwrap().trim().to_string();
    let host_before: Vec<String> = names.iter().map(|n| host(n)).collect();
    let scenario = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").unwrap();
    let mut topo = Topology::build(&scenario).unwrap();
    // maxPerCore 0: the table size is global; a test must not touch it.
    let flags = [
        "--conntrack-max-per-core", "0",
        "--conntrack-tcp-timeout-established", "2h",
        "--conntrack-tcp-be-liberal",
        "--conntrack-udp-timeout", "45s",
    ];
    let dir = start_kproxy_with(&mut topo, &scenario, "sysctls", &flags);
    let node = |name: &str| topo.node.exec(&["cat", &format!("{DIR}{name}")]).unwrap().trim().to_string();
    let expected = ["7200", "3600", "1", "45"];
    for (name, want) in names.iter().zip(expected) {
        assert_eq!(node(name), want, "{name} in the node namespace");
    }
    let host_after: Vec<String> = names.iter().map(|n| host(n)).collect();
    assert_eq!(host_before, host_after, "the host's conntrack sysctls changed");
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM (how Kubernetes stops a pod) stops kproxy with status 0 and
/// leaves the rules in place, so traffic keeps flowing across a restart.
#[test]
fn sigterm_stops_kproxy_and_leaves_the_rules() {
    if !kernel_tests_enabled("sigterm_stops_kproxy_and_leaves_the_rules") {
        return;
    }
    let scenario = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").unwrap();
    let mut topo = Topology::build(&scenario).unwrap();
    let (dir, handle) = start_kproxy_handle(&mut topo, &scenario, "sigterm", &[]);
    // Wait for the first sync's traffic before stopping.
    let case = &scenario.cases[0];
    let start = Instant::now();
    while let Err(e) = check_case(&topo, &case.packet, &case.expected) {
        assert!(start.elapsed() < Duration::from_secs(10), "never served: {e}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = topo.node.pid(handle).unwrap().to_string();
    kproxy_testkit::run(&["kill", "-TERM", &pid]).unwrap();
    let status = topo.node.wait_exit(handle, Duration::from_secs(10)).expect("kproxy ignored SIGTERM");
    assert!(status.success(), "{status}");
    let failures = check_scenario(&topo, &scenario);
    assert!(failures.is_empty(), "traffic stopped with kproxy:\n{}", failures.join("\n"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--cleanup` removes every table kproxy installed, leaves other tables
/// alone, exits 0, and is idempotent.
#[test]
fn cleanup_removes_kproxys_tables_and_nothing_else() {
    if !kernel_tests_enabled("cleanup_removes_kproxys_tables_and_nothing_else") {
        return;
    }
    let scenario = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").unwrap();
    let mut topo = Topology::build(&scenario).unwrap();
    topo.node.exec(&["nft", "add", "table", "inet", "someone-else"]).unwrap();
    let (dir, handle) = start_kproxy_handle(&mut topo, &scenario, "cleanup", &[]);
    let pid = topo.node.pid(handle).unwrap().to_string();
    kproxy_testkit::run(&["kill", "-TERM", &pid]).unwrap();
    topo.node.wait_exit(handle, Duration::from_secs(10)).expect("kproxy ignored SIGTERM");
    assert!(topo.node.exec(&["nft", "list", "tables"]).unwrap().contains("kproxy-"), "rules should outlive the process");
    for round in 0..2 {
        let said = topo.node.exec(&[BIN, "--cleanup", "--hostname-override", fx::NODE_NAME]).unwrap();
        let tables = topo.node.exec(&["nft", "list", "tables"]).unwrap();
        assert!(!tables.contains("kproxy-"), "{tables}");
        assert!(tables.contains("table inet someone-else"), "{tables}");
        // It says what it removed, one line per kind: the tables the
        // first time, none the second.
        assert_eq!(said.contains("removed nftables table ip kproxy-"), round == 0, "{said}");
        assert!(said.lines().all(|l| l.starts_with("removed ") || l.starts_with("set ")), "{said}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--cleanup` after iptables mode removes exactly what kproxy wrote: its
/// chains and jumps, and (with no kubelet managing iptables here) the
/// localhost NodePorts' `KUBE-FIREWALL` safeguard, with `route_localnet`
/// back to 0. Someone else's `KUBE-MARK-DROP` and its jump stay. With
/// kubelet's canary present, `KUBE-FIREWALL` and `route_localnet` stay.
#[test]
fn iptables_cleanup_removes_what_kproxy_wrote_and_nothing_else() {
    if !kernel_tests_enabled("iptables_cleanup_removes_what_kproxy_wrote_and_nothing_else") {
        return;
    }
    let scenario = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").unwrap();
    for kubelet in [false, true] {
        let mut topo = Topology::build(&scenario).unwrap();
        let ipt = |args: &[&str]| topo.node.exec(&[&["iptables", "-w", "5"][..], args].concat()).unwrap();
        ipt(&["-t", "nat", "-N", "KUBE-MARK-DROP"]);
        ipt(&["-t", "nat", "-A", "KUBE-MARK-DROP", "-j", "MARK", "--set-xmark", "0x8000/0x8000"]);
        ipt(&["-t", "nat", "-A", "PREROUTING", "-s", "192.0.2.9", "-j", "KUBE-MARK-DROP"]);
        if kubelet {
            ipt(&["-t", "filter", "-N", "KUBE-KUBELET-CANARY"]);
        }
        let (dir, handle) = start_kproxy_in(&mut topo, &scenario, &format!("ipt-cleanup-{kubelet}"), "iptables");
        let route_localnet = |topo: &Topology| topo.node.exec(&["cat", "/proc/sys/net/ipv4/conf/all/route_localnet"]).unwrap().trim().to_string();
        let save = |topo: &Topology| topo.node.exec(&["iptables-save"]).unwrap();
        assert_eq!(route_localnet(&topo), "1", "localhost NodePorts are on by default");
        assert!(save(&topo).contains("block incoming localnet connections"), "{}", save(&topo));
        let pid = topo.node.pid(handle).unwrap().to_string();
        kproxy_testkit::run(&["kill", "-TERM", &pid]).unwrap();
        topo.node.wait_exit(handle, Duration::from_secs(10)).expect("kproxy ignored SIGTERM");

        for _ in 0..2 {
            topo.node.exec(&[BIN, "--cleanup", "--hostname-override", fx::NODE_NAME]).unwrap();
            let after = save(&topo);
            for gone in ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-FORWARD", "KUBE-SVC-", "KUBE-SEP-", "KUBE-PROXY-CANARY"] {
                assert!(!after.contains(gone), "kubelet={kubelet}: {gone} left behind:\n{after}");
            }
            assert!(after.contains(":KUBE-MARK-DROP"), "kubelet={kubelet}: someone else's chain went:\n{after}");
            assert!(after.contains("-A PREROUTING -s 192.0.2.9/32 -j KUBE-MARK-DROP"), "kubelet={kubelet}: someone else's jump went:\n{after}");
            if kubelet {
                assert!(after.contains("block incoming localnet connections"), "kubelet's safeguard went:\n{after}");
                assert_eq!(route_localnet(&topo), "1");
            } else {
                assert!(!after.contains("KUBE-FIREWALL"), "the safeguard stayed:\n{after}");
                assert_eq!(route_localnet(&topo), "0");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// As upstream, kproxy proxies every family the kernel has, not only the
/// Node's: an IPv4-only Node still gets IPv6 rules (for dual-stack pods).
/// When the Node's IPs change, kproxy exits non-zero with one line saying
/// why, so that the DaemonSet restarts it with the new addresses.
#[test]
fn every_kernel_family_is_proxied_and_a_node_ip_change_restarts() {
    if !kernel_tests_enabled("every_kernel_family_is_proxied_and_a_node_ip_change_restarts") {
        return;
    }
    let mut scenario = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").unwrap();
    let addresses = scenario.node.status.as_mut().unwrap().addresses.as_mut().unwrap();
    addresses.retain(|a| !a.address.contains(':'));
    let mut topo = Topology::build(&scenario).unwrap();
    let dir = std::env::temp_dir().join(format!("kproxy-standalone-{}-families", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    write_manifests(&dir, &scenario);
    let log = dir.join("kproxy.log");
    let args = [BIN, "--proxy-mode", "nftables", "--hostname-override", fx::NODE_NAME, "--cluster-cidr", fx::POD_CIDR, "--manifests", dir.to_str().unwrap()];
    let handle = topo.node.spawn_logged(&args, &log).unwrap();
    let start = Instant::now();
    loop {
        let tables = topo.node.exec(&["nft", "list", "tables"]).unwrap_or_default();
        if tables.contains("table ip kproxy-") && tables.contains("table ip6 kproxy-") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "not both families: {tables}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The Node object (file 000) gains its IPv6 address.
    let mut node = scenario.node.clone();
    node.status.as_mut().unwrap().addresses.as_mut().unwrap().push(k8s_openapi::api::core::v1::NodeAddress { address: fx::NODE_IP_V6.into(), type_: "InternalIP".into() });
    std::fs::write(dir.join("000.yaml"), serde_json::to_string(&node).unwrap()).unwrap();
    let status = topo.node.wait_exit(handle, Duration::from_secs(20)).expect("kproxy kept running after its Node's IPs changed");
    assert!(!status.success(), "{status}");
    let text = std::fs::read_to_string(&log).unwrap();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("the Node's IPs changed")).collect();
    assert_eq!(errors.len(), 1, "{text}");
    assert!(errors[0].contains("exiting so that kproxy restarts"), "{text}");
    assert!(topo.node.exec(&["nft", "list", "tables"]).unwrap().contains("table ip kproxy-"), "the rules stay in place");
    let _ = std::fs::remove_dir_all(&dir);
}

/// On a kernel without IPVS, `--proxy-mode ipvs` stops at once with one
/// line saying so (run in a private namespace all the same: on a kernel
/// with IPVS it would start, and the VM's tests cover that).
#[test]
fn ipvs_mode_without_an_ipvs_kernel_is_one_line() {
    if !kernel_tests_enabled("ipvs_mode_without_an_ipvs_kernel_is_one_line") {
        return;
    }
    if std::path::Path::new("/proc/net/ip_vs").exists() {
        kproxy_testkit::skipped("ipvs_mode_without_an_ipvs_kernel_is_one_line", "this kernel has IPVS (kernel_ipvs_mode covers it)");
        return;
    }
    let ns = kproxy_testkit::Netns::new("noipvs").unwrap();
    let cluster = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/cluster");
    let err = ns.exec(&[BIN, "--proxy-mode", "ipvs", "--hostname-override", "node-a", "--manifests", cluster]).unwrap_err();
    // `ip netns exec ... failed: STDERR`: kproxy's stderr is one line.
    let stderr = err.split_once(" failed: ").map_or(err.as_str(), |(_, e)| e);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("the kernel has no IPVS (modprobe ip_vs)"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// As upstream: the configuration's `oomScoreAdj` is applied to the
/// process (the default -999, here 250), and a change to the configuration
/// file (here half-written, as an editor or a ConfigMap update may leave
/// it) makes kproxy exit non-zero, saying why, with the rules in place, so
/// that its DaemonSet restarts it with the new file. The restart then
/// refuses the broken file in one line.
#[test]
fn oom_score_is_applied_and_a_changed_config_file_restarts() {
    if !kernel_tests_enabled("oom_score_is_applied_and_a_changed_config_file_restarts") {
        return;
    }
    let scenario = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").unwrap();
    let mut topo = Topology::build(&scenario).unwrap();
    let dir = std::env::temp_dir().join(format!("kproxy-standalone-{}-config-change", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    write_manifests(&dir.join("manifests"), &scenario);
    let config = dir.join("config.yaml");
    let text = format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\nhostnameOverride: {}\nclusterCIDR: {}\noomScoreAdj: 250\nconntrack:\n  maxPerCore: 0\n",
        fx::NODE_NAME,
        fx::POD_CIDR
    );
    std::fs::write(&config, &text).unwrap();
    let log = dir.join("kproxy.log");
    let config_arg = format!("--config={}", config.display());
    let manifests = dir.join("manifests");
    let args = [BIN, &config_arg, "--manifests", manifests.to_str().unwrap()];
    let handle = topo.node.spawn_logged(&args, &log).unwrap();
    let start = Instant::now();
    while !topo.node.exec(&["nft", "list", "tables"]).unwrap_or_default().contains("kproxy-") {
        assert!(start.elapsed() < Duration::from_secs(10), "kproxy never programmed the node: {}", std::fs::read_to_string(&log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = topo.node.pid(handle).unwrap();
    let score = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
    assert_eq!(score.trim(), "250", "oomScoreAdj applied");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(topo.node.pid(handle).is_some() && topo.node.wait_exit(handle, Duration::from_millis(10)).is_none(), "an unchanged file keeps kproxy running");

    std::fs::write(&config, &text[..text.len() / 2]).unwrap();
    let status = topo.node.wait_exit(handle, Duration::from_secs(20)).expect("kproxy kept running after its configuration file changed");
    assert!(!status.success(), "{status}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("configuration file was updated") && logged.contains("exiting so that kproxy restarts"), "{logged}");
    assert!(topo.node.exec(&["nft", "list", "tables"]).unwrap().contains("table ip kproxy-"), "the rules stay in place");
    let again = topo.node.exec(&args).unwrap_err();
    assert!(again.matches("kproxy: ").count() == 1 && again.contains("config.yaml: ") && !again.contains("panicked"), "the broken file, in one line: {again}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A manifest rewritten in place, slowly, ten times a second (a reader may
/// find it empty or cut short) never withdraws its Service: every probe
/// during the rewrites is answered. A wrong type in the file afterwards
/// costs nothing either.
#[test]
fn files_rewritten_in_place_never_withdraw_their_objects() {
    if !kernel_tests_enabled("files_rewritten_in_place_never_withdraw_their_objects") {
        return;
    }
    let scenario = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").unwrap();
    let mut topo = Topology::build(&scenario).unwrap();
    let dir = start_kproxy(&mut topo, &scenario, "in-place");
    let case = scenario.cases[0].clone();
    let start = Instant::now();
    while let Err(e) = check_case(&topo, &case.packet, &case.expected) {
        assert!(start.elapsed() < Duration::from_secs(10), "never served: {e}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (dir, stop) = (dir.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let files: Vec<(std::path::PathBuf, Vec<u8>)> = ["001.yaml", "002.yaml"].iter().map(|f| (dir.join(f), std::fs::read(dir.join(f)).unwrap())).collect();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (path, text) in &files {
                    // Truncate, half, a pause, the rest: a slow writer.
                    let mut f = std::fs::File::create(path).unwrap();
                    f.write_all(&text[..text.len() / 2]).unwrap();
                    std::thread::sleep(Duration::from_millis(20));
                    f.write_all(&text[text.len() / 2..]).unwrap();
                }
                std::thread::sleep(Duration::from_millis(60));
            }
        })
    };
    let mut lost = Vec::new();
    for _ in 0..40 {
        if let Err(e) = check_case(&topo, &case.packet, &case.expected) {
            lost.push(e);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(lost.is_empty(), "{} of 40 probes lost while the files were rewritten: {lost:?}", lost.len());
    // A wrong type: the Service keeps its last good state.
    let broken = std::fs::read_to_string(dir.join("002.yaml")).unwrap().replace("\"port\":8080", "\"port\":\"eighty\"");
    std::fs::write(dir.join("002.yaml"), broken).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    check_case(&topo, &case.packet, &case.expected).expect("a bad document withdrew its object");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `kproxy trace` on the live kernel (kproxy in nftables mode, then in
/// iptables mode, in the scenario's node namespace, configured as the
/// scenario says) gives, for every case of every shared scenario, the
/// verdict the oracle states for that mode and the real packets met: DNAT
/// to the same endpoints with the same masquerading, REJECT, DROP, or left
/// alone.
#[test]
fn trace_agrees_with_the_oracle_on_the_live_rules() {
    if !kernel_tests_enabled("trace_agrees_with_the_oracle_on_the_live_rules") {
        return;
    }
    use kproxy_oracle::Dataplane;
    let mut failures = Vec::new();
    let mut traced = 0;
    for (mode, name) in [(Dataplane::Nftables, "nftables"), (Dataplane::Iptables, "iptables")] {
        for scenario in scenarios::all() {
            let mut topo = Topology::build(&scenario).unwrap();
            let (dir, handle) = common::start_configured(&mut topo, &scenario, mode, BIN);
            let served = common::wait_served(&topo, &scenario, mode).map_err(|unmet| failures.push(format!("{name}: {}: never served: {unmet:?}", scenario.name))).is_ok();
            if served {
                failures.extend(common::trace::disagreements(&topo, &scenario, BIN, mode, true));
                traced += scenario.cases.len();
            }
            topo.node.kill(handle);
            drop(topo);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    println!("kproxy trace agreed with the oracle on {traced} cases");
    assert!(failures.is_empty(), "kproxy trace disagrees with the oracle:\n{}", failures.join("\n"));
}

/// `--init-only` does the work that needs full privileges (the sysctls)
/// and exits 0, as upstream's, without programming any rule.
#[test]
fn init_only_sets_up_and_exits_without_rules() {
    if !kernel_tests_enabled("init_only_sets_up_and_exits_without_rules") {
        return;
    }
    let scenario = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").unwrap();
    let topo = Topology::build(&scenario).unwrap();
    let dir = std::env::temp_dir().join(format!("kproxy-standalone-{}-init-only", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    write_manifests(&dir, &scenario);
    for mode in ["nftables", "iptables"] {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", topo.node.name(), BIN, "--proxy-mode", mode, "--hostname-override", fx::NODE_NAME, "--manifests", dir.to_str().unwrap(), "--init-only"])
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && log.contains("System initialized and --init-only specified"), "{mode}: {log}");
        assert!(!topo.node.exec(&["nft", "list", "tables"]).unwrap_or_default().contains("kproxy-"), "{mode}: no table");
        assert!(!topo.node.exec(&["iptables-save"]).unwrap_or_default().contains("KUBE-SERVICES"), "{mode}: no chain");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `kproxy diagnose` on a node kproxy programs (the example cluster, in
/// nftables mode and then in iptables mode): the Service without endpoints
/// is reported, the others agree; then an endpoint removed by hand (kproxy
/// stopped, as when a node is inspected) is reported as drift, naming the
/// endpoint the kernel lost.
#[test]
fn diagnose_reports_missing_endpoints_and_drift() {
    if !kernel_tests_enabled("diagnose_reports_missing_endpoints_and_drift") {
        return;
    }
    for mode in ["nftables", "iptables"] {
        let mut ns = kproxy_testkit::Netns::new("diagnose").unwrap();
        ns.exec(&["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"]).unwrap();
        ns.exec(&["ip", "addr", "add", "192.168.50.2/24", "dev", "eth0"]).unwrap();
        ns.exec(&["ip", "link", "set", "eth0", "up"]).unwrap();
        let cluster = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/cluster");
        let handle = ns.spawn(&[BIN, "--proxy-mode", mode, "--hostname-override", "node-a", "--cluster-cidr", "10.244.0.0/16", "--manifests", cluster]).unwrap();
        let programmed = |ns: &kproxy_testkit::Netns| match mode {
            "nftables" => ns.exec(&["nft", "list", "ruleset"]).unwrap_or_default().contains("10.96.0.10 . tcp . 80 . 1 : 10.244.1.11 . 8080"),
            _ => ns.exec(&["iptables-save", "-t", "nat"]).unwrap_or_default().contains("demo/web:http -> 10.244.1.11:8080"),
        };
        let start = Instant::now();
        while !programmed(&ns) {
            assert!(start.elapsed() < Duration::from_secs(20), "{mode}: kproxy never programmed the node");
            std::thread::sleep(Duration::from_millis(100));
        }
        ns.kill(handle);
        let diagnose = |only: &[&str]| {
            // The flags kproxy runs with: diagnose needs the same picture.
            let mut args = vec!["ip", "netns", "exec", ns.name(), BIN, "diagnose", "--manifests", cluster, "--hostname-override", "node-a", "--proxy-mode", mode, "--cluster-cidr", "10.244.0.0/16"];
            args.extend_from_slice(only);
            let out = std::process::Command::new(args[0]).args(&args[1..]).output().unwrap();
            (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
        };
        let (code, text) = diagnose(&[]);
        assert_eq!(code, Some(1), "{mode}: {text}");
        assert!(text.contains("demo/pending:"), "{mode}: the Service without endpoints: {text}");
        assert!(!text.contains("demo/web:") && !text.contains("demo/dns:"), "{mode}: the others agree: {text}");
        assert_eq!(diagnose(&["demo/web"]).0, Some(0), "{mode}: one Service that agrees");
        let (code, text) = diagnose(&["--source", "198.51.100.9", "demo/shop"]);
        assert_eq!(code, Some(1), "{mode}: {text}");
        assert!(text.starts_with("demo/shop: loadBalancerSourceRanges (203.0.113.0/24) leave out the client 198.51.100.9") && !text.contains("the kernel"), "{mode}: the kernel drops it too: {text}");

        if mode == "nftables" {
            // 10.244.1.10's slot handed to 10.244.1.11 by hand.
            let table = ns.exec(&["nft", "list", "tables", "ip"]).unwrap().lines().find_map(|l| l.strip_prefix("table ip ")).unwrap().trim().to_string();
            ns.exec(&["nft", "delete", "element", "ip", &table, "cluster-slots-tcp-2", "{ 10.96.0.10 . tcp . 80 . 0 }"]).unwrap();
            ns.exec(&["nft", "add", "element", "ip", &table, "cluster-slots-tcp-2", "{ 10.96.0.10 . tcp . 80 . 0 : 10.244.1.11 . 8080 }"]).unwrap();
        } else {
            let rule = ns.exec(&["iptables", "-t", "nat", "-S"]).unwrap().lines().find(|l| l.contains("demo/web:http -> 10.244.1.10:8080")).unwrap().to_string();
            let mut delete: Vec<String> = vec!["iptables".into(), "-t".into(), "nat".into()];
            delete.extend(kproxy_backend_iptables::rule::tokenize(&rule.replacen("-A", "-D", 1)).unwrap());
            ns.exec(&delete.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        }
        let (code, text) = diagnose(&["demo/web"]);
        assert_eq!(code, Some(1), "{mode}: {text}");
        assert!(text.contains("the kernel does dnat [\"10.244.1.11:8080\"], the API says dnat [\"10.244.1.10:8080\", \"10.244.1.11:8080\"]"), "{mode}: {text}");
    }
}

/// `--vmodule=observer=2` raises the verbosity of that file only, as
/// klog's: its sync summaries (logged at -v=2) appear, other files' debug
/// lines do not; without it neither does.
#[test]
fn vmodule_raises_one_file_s_verbosity() {
    if !kernel_tests_enabled("vmodule_raises_one_file_s_verbosity") {
        return;
    }
    let scenario = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").unwrap();
    for (extra, summaries) in [(Some("--vmodule=observer=2"), true), (None, false)] {
        let mut topo = Topology::build(&scenario).unwrap();
        let dir = std::env::temp_dir().join(format!("kproxy-standalone-{}-vmodule-{summaries}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("m")).unwrap();
        write_manifests(&dir.join("m"), &scenario);
        let log = dir.join("kproxy.log");
        let m = dir.join("m");
        let mut args = vec![BIN, "--proxy-mode", "nftables", "--hostname-override", fx::NODE_NAME, "--manifests", m.to_str().unwrap()];
        args.extend(extra);
        let handle = topo.node.spawn_logged(&args, &log).unwrap();
        let case = &scenario.cases[0];
        let start = Instant::now();
        while let Err(e) = check_case(&topo, &case.packet, &case.expected) {
            assert!(start.elapsed() < Duration::from_secs(20), "never served: {e}");
            std::thread::sleep(Duration::from_millis(200));
        }
        topo.node.kill(handle);
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text.lines().any(|l| l.contains("observer.rs") && l.contains("\"synced\"")), summaries, "{extra:?}:\n{text}");
        assert!(!text.contains("\"Service changed\""), "other files stay at -v=0 (proxy.rs logs each change at -v=4): {text}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The standalone benchmark's set-up at a small size (the command in
/// BENCHMARKS.md runs it at 10,000 Services): every sampled Service
/// answers, and every whole-file rewrite that moves the probe Service is
/// followed by a connection answered by the new pod within the generous
/// 10 s bound (a change never seen counts as exactly the bound).
#[test]
fn the_standalone_benchmark_sees_every_file_rewrite() {
    if !kernel_tests_enabled("the_standalone_benchmark_sees_every_file_rewrite") {
        return;
    }
    let mut bench = kproxy_e2e::standalone_bench::StandaloneBench::new(300, 3, 4).unwrap();
    let started = bench.start(BIN).unwrap();
    bench.time_to_serve(started, 10, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}\n{}", bench.log()));
    let limit = Duration::from_secs(10);
    let changes = bench.write_to_traffic(4, Duration::from_millis(300), limit).unwrap();
    assert_eq!(changes.len(), 4);
    assert!(changes.iter().all(|d| *d < limit), "a rewrite was never followed: {changes:?}\n{}", bench.log());
    assert!(bench.usage().peak_rss_mib > 0.0, "the proxy's memory is read");
}
