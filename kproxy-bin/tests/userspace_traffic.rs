//! `kproxy --proxy-mode userspace` for real (the `kproxy-userspace`
//! backend, written outside the library): every shared scenario runs in
//! private network namespaces with the binary in standalone mode in the
//! node namespace, and every case is checked with real traffic against the
//! oracle's userspace verdicts (`kproxy_oracle::evaluate_for`: the
//! endpoint sees the node as the source; no SCTP; no refusal of a
//! ClusterIP's other ports). Then the proxy's own duties: a UDP session
//! ends when idle, and a Service that loses its endpoints is refused.
//! Needs root (skips without, must run in CI). `KPROXY_SCENARIO=name`
//! runs one scenario only.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kproxy_oracle::{fixtures as fx, scenarios, Dataplane, Scenario};
use kproxy_testkit::{check_scenario_for, kernel_tests_enabled, Topology, KPT};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_kproxy");

/// Starts kproxy in userspace mode for `scenario` and waits until its
/// first sync is in (`/healthz` answers 200); returns its directory and
/// handle. The directory is named after the scenario: tests running at
/// the same time give theirs their own names.
fn start(topo: &mut Topology, scenario: &Scenario) -> (std::path::PathBuf, usize) {
    let (dir, handle) = common::start_configured(topo, scenario, Dataplane::Userspace, BIN);
    let start = Instant::now();
    while common::http_get(topo, "http://127.0.0.1:10256/healthz").0 != "200" {
        assert!(start.elapsed() < Duration::from_secs(60), "{}: kproxy never became healthy", scenario.name);
        std::thread::sleep(Duration::from_millis(100));
    }
    (dir, handle)
}

#[test]
fn userspace_mode_serves_every_shared_scenario() {
    if !kernel_tests_enabled("userspace_mode_serves_every_shared_scenario") {
        return;
    }
    let only = std::env::var("KPROXY_SCENARIO").ok();
    let (mut checked, mut failures) = (0, Vec::new());
    for scenario in scenarios::all().into_iter().filter(|s| only.as_ref().is_none_or(|o| o == s.name)) {
        let mut topo = Topology::build(&scenario).unwrap_or_else(|e| panic!("{}: topology: {e}", scenario.name));
        let (dir, handle) = start(&mut topo, &scenario);
        failures.extend(check_scenario_for(&topo, &scenario, Dataplane::Userspace));
        checked += scenario.cases.len();
        topo.node.kill(handle);
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(checked > 0, "no scenario ran");
    assert!(failures.is_empty(), "{} of {checked} cases failed:\n{}", failures.len(), failures.join("\n"));
}

/// Rewrites the manifests of a kproxy started by [`start`] to `scenario`'s
/// objects, then waits (generously) until every case meets the oracle's
/// userspace verdict for them; the cases still unmet otherwise.
fn change_to(topo: &Topology, dir: &std::path::Path, scenario: &Scenario) -> Result<(), Vec<String>> {
    common::write_manifests(&dir.join("m"), scenario);
    let start = Instant::now();
    loop {
        let unmet = check_scenario_for(topo, scenario, Dataplane::Userspace);
        if unmet.is_empty() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err(unmet);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// ClientIP affinity switched off on a running proxy: the same client's
/// connections spread over every endpoint again.
#[test]
fn affinity_switched_off_spreads_connections_again() {
    if !kernel_tests_enabled("affinity_switched_off_spreads_connections_again") {
        return;
    }
    let mut sticky = scenarios::all().into_iter().find(|s| s.name == "session_affinity").unwrap();
    sticky.name = "session_affinity_switched_off";
    let mut topo = Topology::build(&sticky).unwrap();
    let (dir, handle) = start(&mut topo, &sticky);
    let failures = check_scenario_for(&topo, &sticky, Dataplane::Userspace);
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let mut spread = sticky.clone();
    for svc in &mut spread.services {
        let spec = svc.spec.as_mut().unwrap();
        spec.session_affinity = Some("None".into());
        spec.session_affinity_config = None;
    }
    let result = change_to(&topo, &dir, &spread);
    topo.node.kill(handle);
    let _ = std::fs::remove_dir_all(&dir);
    result.unwrap_or_else(|unmet| panic!("affinity stayed on:\n{}", unmet.join("\n")));
}

/// The proxy's UDP sessions: a client sending from one port stays on one
/// endpoint while it keeps talking, moves on (round robin) once its
/// session has been idle longer than the timeout (250 ms), and is refused
/// once the Service has no endpoint.
///
/// "Keeps talking" is judged from what the client did, not assumed: a run
/// in which it fell silent for 200 ms or more (a late reply or a late
/// wake-up on a busy machine; its datagrams' send times are printed)
/// says nothing about stickiness and is run again, five runs at most.
#[test]
fn udp_sessions_stick_until_idle_and_are_refused_without_endpoints() {
    if !kernel_tests_enabled("udp_sessions_stick_until_idle_and_are_refused_without_endpoints") {
        return;
    }
    let mut scenario = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").unwrap();
    scenario.name = "cluster_ip_udp_sessions";
    let mut topo = Topology::build(&scenario).unwrap();
    let (dir, handle) = start(&mut topo, &scenario);
    let client: std::net::IpAddr = fx::LOCAL_CLIENT_POD.parse().unwrap();
    let stream = |topo: &mut Topology, seconds: &str, interval: &str| {
        let pod = topo.pods.get_mut(&client).unwrap();
        let args = ["python3", KPT, "udpstream", "--src", fx::LOCAL_CLIENT_POD, "--sport", "40053", "--dst", "172.30.0.41", "--port", "53", "--seconds", seconds, "--interval", interval];
        let out = pod.exec(&args).unwrap();
        // "SECONDS ANSWER" per datagram: when it was sent, and who answered.
        out.lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                Some((parts.next()?.parse::<f64>().ok()?, parts.next()?.to_string()))
            })
            .collect::<Vec<(f64, String)>>()
    };
    let answers = |run: &[(f64, String)]| run.iter().map(|(_, a)| a.clone()).collect::<Vec<_>>();
    let mut failures = Vec::new();
    // A datagram every 50 ms: one session, one endpoint.
    let mut unsteady = Vec::new();
    let mut judged = false;
    while !judged && unsteady.len() < 5 {
        let talking = stream(&mut topo, "1.5", "0.05");
        let silent = talking.windows(2).map(|w| w[1].0 - w[0].0).fold(0.0, f64::max);
        if silent >= 0.2 || talking.len() < 2 || talking.iter().any(|(_, a)| !a.starts_with("10.180.")) {
            unsteady.push(format!("longest silence {:.0} ms, answers {:?}", silent * 1000.0, answers(&talking)));
            continue;
        }
        judged = true;
        let pods: BTreeSet<String> = answers(&talking).into_iter().collect();
        if pods.len() != 1 {
            failures.push(format!("a session that kept talking (never silent for {:.0} ms) reached {:?}", silent * 1000.0, answers(&talking)));
        }
    }
    if !judged {
        failures.push(format!("the client never kept talking for 1.5 s (five runs): {}", unsteady.join("; ")));
    }
    // A datagram a second: each one a new session, round robin.
    let idle = answers(&stream(&mut topo, "3.5", "1.0"));
    let pods: BTreeSet<&String> = idle.iter().collect();
    if pods.len() != 2 || idle.iter().any(|a| !a.starts_with("10.180.")) {
        failures.push(format!("sessions idle for a second each reached {idle:?}, expected both endpoints"));
    }
    // Every endpoint goes: the flow is refused.
    let mut empty = scenario.clone();
    for slice in &mut empty.slices {
        slice.endpoints.clear();
    }
    common::write_manifests(&dir.join("m"), &empty);
    let start = Instant::now();
    loop {
        let seen = answers(&stream(&mut topo, "0.5", "0.05"));
        if seen.last().is_some_and(|a| a == "refused") {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            failures.push(format!("never refused once the Service had no endpoint; last answers {seen:?}"));
            break;
        }
    }
    topo.node.kill(handle);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A mode switched on a running node, both ways between userspace and
/// nftables modes: the new mode serves every case, and removes the old
/// mode's table once its own rules are in (the old proxy's rules stay
/// when it stops, as on a DaemonSet rollout); `--cleanup` then removes
/// whatever kproxy table is left.
#[test]
fn switching_between_userspace_and_nftables_modes_removes_the_old_table() {
    if !kernel_tests_enabled("switching_between_userspace_and_nftables_modes_removes_the_old_table") {
        return;
    }
    let mut scenario = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").unwrap();
    scenario.name = "cluster_ip_mode_switch";
    let tables = |topo: &Topology| topo.node.exec(&["nft", "list", "tables"]).unwrap_or_default();
    let mut failures = Vec::new();
    for (from, to, old_table) in [(Dataplane::Userspace, Dataplane::Nftables, "kproxy-userspace"), (Dataplane::Nftables, Dataplane::Userspace, "kproxy-a")] {
        let mut topo = Topology::build(&scenario).unwrap();
        let (_, first) = common::start_configured(&mut topo, &scenario, from, BIN);
        if let Err(unmet) = common::wait_served(&topo, &scenario, from) {
            failures.push(format!("{from:?} never served: {unmet:?}"));
        }
        topo.node.kill(first);
        assert!(tables(&topo).contains(old_table), "{from:?} mode's rules stay when it stops");
        let (dir, second) = common::start_configured(&mut topo, &scenario, to, BIN);
        if let Err(unmet) = common::wait_served(&topo, &scenario, to) {
            failures.push(format!("{from:?} -> {to:?}: never served: {unmet:?}"));
        }
        let start = Instant::now();
        while tables(&topo).contains(old_table) && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(100));
        }
        if tables(&topo).contains(old_table) {
            failures.push(format!("{from:?} -> {to:?}: {old_table} is still there:\n{}", tables(&topo)));
        }
        topo.node.kill(second);
        let out = topo.node.exec(&[BIN, "--cleanup", "--hostname-override", fx::NODE_NAME]).unwrap_or_else(|e| e);
        if tables(&topo).contains("kproxy") {
            failures.push(format!("{from:?} -> {to:?}: --cleanup left {}; it said:\n{out}", tables(&topo)));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `kproxy-userspace-bench` at a tiny size (so it cannot rot): every path
/// carries every kind of traffic it measures.
#[test]
fn the_userspace_benchmark_measures_every_path() {
    if !kernel_tests_enabled("the_userspace_benchmark_measures_every_path") {
        return;
    }
    use kproxy_e2e::userspace_bench::{run, table, Sizes, PATHS};
    let figures = run(BIN, Sizes { connections: 20, udp: 20, megabytes: 4 }).unwrap();
    assert_eq!(figures.len(), PATHS.len());
    for (path, f) in PATHS.iter().zip(&figures) {
        let positive = [f.connections_per_second, f.connect_ms.0, f.connect_ms.1, f.udp_ms.0, f.udp_ms.1, f.tcp_mib_per_second];
        assert!(positive.iter().all(|v| v.is_finite() && *v > 0.0), "{path}: {f:?}");
    }
    println!("{}", table(&figures));
}
