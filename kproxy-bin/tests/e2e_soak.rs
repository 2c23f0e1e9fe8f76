//! Soak: kproxy (nftables mode) behind a real kube-apiserver while a
//! Service's only endpoint moves between two pods, again and again, and a
//! client in a pod connects every few milliseconds (`kpt.py follow`, which
//! prints each change of the answering pod).
//!
//! Fails on any move the client does not see within two `syncPeriod`s
//! (syncPeriod is 5 s here, so 10 s: a bound on lost changes, not a speed
//! target), and on any flap: the old pod answering again after the new one
//! did. Prints how many moves ran and their latency from the start of the
//! API write (median, p99, worst), how long the writes took, each move
//! slower than 2 s with its write's share, how many watch failures the
//! proxy logged meanwhile, and how many connections failed after a move
//! was seen (the first five with their source ports, and at the first the
//! rules naming the Service, the node's conntrack entries to it and what
//! connections straight to each pod see). A move not seen in time is
//! reported with what five fresh connections see then, the same rules,
//! conntrack entries and direct connections; both proxies run at `-v=2`,
//! so the log tail shows the syncs around it.
//!
//! `KPROXY_SOAK_SECONDS` sets the length (default 60; CI uses the
//! default); `KPROXY_SOAK_DEBUG=1` prints the proxy's whole log;
//! `KPROXY_SOAK_PORT_RANGE="LOW HIGH"` sets the client's ephemeral
//! ports (default 1024–65535), to run the soak while they run out or are
//! reused. Needs
//! root and the e2e binaries; skips without, must run in CI.

use std::time::{Duration, Instant, SystemTime};

use kproxy_oracle::{scenarios, Verdict};
use kproxy_e2e::bench::{quantile_ms, time_wait, Prober, CLIENT_PORT_RANGE};
use kproxy_e2e::{e2e_binaries, scenario, ControlPlane, ProxyKind};
use kproxy_testkit::{check_case, check_scenario, probe, Topology};
use serde_json::json;

const KPROXY: &str = env!("CARGO_BIN_EXE_kproxy");
const SYNC_PERIOD: Duration = Duration::from_secs(5);

fn now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

#[test]
fn endpoint_moves_all_arrive_for_as_long_as_they_come() {
    let Some(bins) = e2e_binaries("endpoint_moves_all_arrive_for_as_long_as_they_come") else { return };
    soak(&bins, ProxyKind::Kproxy, KPROXY);
}

/// The same soak with upstream kube-proxy, for comparison (and to check
/// the soak itself against a proxy it did not come from).
#[test]
fn upstream_meets_the_same_soak() {
    let Some(bins) = e2e_binaries("upstream_meets_the_same_soak") else { return };
    soak(&bins, ProxyKind::Upstream, &bins.path("kube-proxy"));
}

fn soak(bins: &kproxy_e2e::Binaries, kind: ProxyKind, binary: &str) {
    let seconds: u64 = std::env::var("KPROXY_SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let s = scenarios::all().into_iter().find(|s| s.name == "cluster_ip").unwrap();
    let mut cp = ControlPlane::start(bins).unwrap();
    let api = cp.admin().unwrap();
    let mut topo = Topology::build(&s).unwrap();
    cp.attach(&topo.node).unwrap();
    scenario::apply(&api, &s).unwrap();
    let kubeconfig = cp.kubeconfig(kind.user()).unwrap();
    let mut config = scenario::config(&s, &kubeconfig);
    config["nftables"]["syncPeriod"] = json!(format!("{}s", SYNC_PERIOD.as_secs()));
    // -v=2: both proxies log a line per sync, so a late move's log tail
    // shows whether a sync ran meanwhile.
    scenario::start_proxy_with(kind, &mut topo.node, &config, cp.dir(), binary, &["--v=2"]).unwrap();
    kproxy_e2e::nodes::within("every case passes", Duration::from_secs(30), || {
        let f = check_scenario(&topo, &s);
        if f.is_empty() { Ok(()) } else { Err(f.join("\n")) }
    })
    .unwrap();

    // The Service's one endpoint: pod A or pod B (both serve 8080).
    let pods = ["10.180.0.1", "10.180.1.1"];
    let slice_with = |pod: &str| {
        let mut slice = s.slices[0].clone();
        slice.endpoints.retain(|e| e.addresses[0] == pod);
        slice
    };
    let packet = &s.cases[0].packet;
    // Settled on pod A alone before the client starts watching.
    api.apply(slice_with(pods[0])).unwrap();
    let only_a = Verdict::forward(&[&format!("{}:8080", pods[0])], false);
    kproxy_e2e::nodes::within("one endpoint left", Duration::from_secs(30), || check_case(&topo, packet, &only_a)).unwrap();
    let client_ns = topo.source(packet.origin, packet.src).unwrap();
    let client = client_ns.name().to_string();
    let witness = Witness { topo: &topo, client: client_ns, src: packet.src.to_string(), vip: packet.dst.to_string(), pods: &pods };
    // The client's ephemeral ports: every unprivileged one by default
    // (see CLIENT_PORT_RANGE for why); running out is tested on purpose
    // with KPROXY_SOAK_PORT_RANGE.
    let range = std::env::var("KPROXY_SOAK_PORT_RANGE").unwrap_or_else(|_| CLIENT_PORT_RANGE.to_string());
    let prober = Prober::follow(&client, &packet.src.to_string(), &packet.dst.to_string(), (seconds + 60) as f64, &range).unwrap();

    let limit = SYNC_PERIOD * 2;
    let mut latencies = Vec::new();
    // How long each API write took (a move counts from its start, as
    // upstream's network programming latency does; a slow write is the
    // API server's, not the proxy's, and is reported apart).
    let mut writes = Vec::new();
    let mut slow = Vec::new();
    let mut problems = Vec::new();
    let mut current = 0;
    let mut moves = 0u32;
    // Connections that failed after the move was seen (each change to a
    // failure is one line from `follow`): the first few are printed with
    // the rules of the moment, the rest counted.
    let mut failed_after = 0usize;
    let mut written_at = now();
    let mut write_took = 0.0;
    let started = Instant::now();
    loop {
        let wanted = pods[current];
        // Lines are "TIME POD", one at each change of the answering pod.
        let deadline = Instant::now() + limit;
        let mut seen_at = None;
        // What the client saw meanwhile (the old pod, or failed
        // connections and why), to tell a late move's cause.
        let mut meanwhile = Vec::new();
        while seen_at.is_none() {
            let Some(line) = prober.next_line(deadline.saturating_duration_since(Instant::now())) else { break };
            let mut parts = line.split_whitespace();
            if let (Some(t), Some(pod)) = (parts.next().and_then(|t| t.parse::<f64>().ok()), parts.next()) {
                if pod == wanted {
                    seen_at = Some(t);
                } else {
                    meanwhile.push(line.clone());
                }
            }
        }
        let meanwhile = if meanwhile.is_empty() { "no other answer or failure".to_string() } else { meanwhile.join("; ") };
        match seen_at {
            Some(t) if moves > 0 => {
                if t - written_at > 2.0 {
                    slow.push(format!("move {moves}: {:.2} s, of which the API write {write_took:.2} s (written at {written_at:.3}); meanwhile: {meanwhile}", t - written_at));
                }
                latencies.push(Duration::from_secs_f64((t - written_at).max(0.0)))
            }
            Some(_) => {}
            None => problems.push(format!(
                "move {moves} to {wanted}: not seen within {limit:?} of the API write returning (the write took {write_took:.2} s; written at {written_at:.3}); meanwhile: {meanwhile}; client sockets in TIME-WAIT: {:?}; now {}; {}",
                time_wait(&client),
                probes(&topo, packet),
                witness.report(&meanwhile),
            )),
        }
        // Hold a little, watching for a flap back to the other pod.
        let hold_until = Instant::now() + Duration::from_millis(300 + (u64::from(moves) * 37) % 200);
        while let Some(line) = prober.next_line(hold_until.saturating_duration_since(Instant::now())) {
            let pod = line.split_whitespace().nth(1).unwrap_or_default().to_string();
            if pod == "-" {
                // A failed connection is not a flap; printed for the record.
                failed_after += 1;
                if failed_after <= 5 {
                    println!("soak ({kind:?}): move {moves}: a connection failed after {wanted} answered: {line}");
                }
                if failed_after == 1 {
                    println!("soak ({kind:?}): {}", witness.report(&line));
                }
            } else if pod != wanted {
                problems.push(format!("move {moves}: {pod} answered again after {wanted} did"));
            }
        }
        if started.elapsed() >= Duration::from_secs(seconds) {
            break;
        }
        current = 1 - current;
        moves += 1;
        written_at = now();
        api.apply(slice_with(pods[current])).unwrap();
        write_took = now() - written_at;
        writes.push(Duration::from_secs_f64(write_took.max(0.0)));
    }
    let log = std::fs::read_to_string(scenario::log_path(kind, &topo.node, cp.dir())).unwrap_or_default();
    // kproxy's words, and client-go's reflector's.
    let watch_failures = log.lines().filter(|l| l.contains("watch failed") || l.contains("Failed to watch")).count();
    println!(
        "soak ({kind:?}): {} moves in {} s, latency median {:.1} ms, p99 {:.1} ms, worst {:.1} ms; API write median {:.1} ms, worst {:.1} ms; {} not seen within {limit:?}; {watch_failures} watch failures logged; {failed_after} connections failed after a move was seen; client sockets in TIME-WAIT at the end: {:?}",
        latencies.len(),
        seconds,
        quantile_ms(&latencies, 0.5),
        quantile_ms(&latencies, 0.99),
        latencies.iter().max().copied().unwrap_or_default().as_secs_f64() * 1000.0,
        quantile_ms(&writes, 0.5),
        writes.iter().max().copied().unwrap_or_default().as_secs_f64() * 1000.0,
        problems.iter().filter(|p| p.contains("not seen")).count(),
        time_wait(&client),
    );
    for s in &slow {
        println!("soak ({kind:?}): slow {s}");
    }
    if std::env::var_os("KPROXY_SOAK_DEBUG").is_some() {
        eprintln!("{log}");
    }
    assert!(problems.is_empty(), "{}\n--- the {kind:?} log (last 40 lines):\n{}", problems.join("\n"), log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"));
    assert!(latencies.len() >= 10, "the soak made too few moves to mean anything: {}", latencies.len());
}

/// Who answers five fresh connections now, from the soak's client.
fn probes(topo: &Topology, packet: &kproxy_oracle::Packet) -> String {
    match probe(topo, packet, 5, Duration::from_secs(1)) {
        Ok(seen) => format!("5 fresh connections saw {seen:?}"),
        Err(e) => format!("could not probe: {e}"),
    }
}

/// What the soak reports beside a failed connection or a late move, to
/// name its cause: the rules, the conntrack entries and what each pod
/// answers directly.
struct Witness<'a> {
    topo: &'a Topology,
    /// The client's namespace.
    client: &'a kproxy_testkit::Netns,
    src: String,
    vip: String,
    pods: &'a [&'a str],
}

impl Witness<'_> {
    /// The report, given what `follow` printed of the failures
    /// (their source ports are looked up in conntrack).
    fn report(&self, failures: &str) -> String {
        format!(
            "{}; {}; {}",
            rules_naming(self.topo, self.pods, &self.vip),
            conntrack_naming(self.topo, &self.vip, &failed_ports(failures)),
            self.direct_probes()
        )
    }

    /// What connections straight to each pod (through the node, no
    /// Service) see from the client: tells a pod that stopped answering
    /// from a proxy that stopped sending to it.
    fn direct_probes(&self) -> String {
        let seen: Vec<String> = self
            .pods
            .iter()
            .map(|pod| {
                let out = self.client.exec(&["python3", kproxy_testkit::KPT, "probe", "--src", &self.src, "--dst", pod, "--port", "8080", "--count", "3"]);
                format!("{pod}:8080 directly: {}", out.map(|o| o.lines().collect::<Vec<_>>().join(", ")).unwrap_or_else(|e| e))
            })
            .collect();
        seen.join("; ")
    }
}

/// The source ports of the failures in a `meanwhile` report.
fn failed_ports(meanwhile: &str) -> Vec<String> {
    meanwhile.split("sport=").skip(1).filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()).filter(|p| !p.is_empty()).map(str::to_string).collect()
}

/// The node's conntrack entries to the Service address: how many in each
/// state and toward each pod, and those of the client ports that failed
/// (the first three).
fn conntrack_naming(topo: &Topology, vip: &str, ports: &[String]) -> String {
    let Ok(out) = kproxy_testkit::run(&["ip", "netns", "exec", topo.node.name(), "conntrack", "-L", "-p", "tcp", "--orig-dst", vip]) else {
        return "could not list conntrack".to_string();
    };
    let mut by_state: std::collections::BTreeMap<String, usize> = Default::default();
    for line in out.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let state = fields.get(3).copied().unwrap_or("?");
        let toward = fields.iter().filter(|f| f.starts_with("src=")).nth(1).copied().unwrap_or("?");
        *by_state.entry(format!("{state} {toward}")).or_default() += 1;
    }
    let failing: Vec<&str> = out.lines().filter(|l| ports.iter().take(3).any(|p| l.contains(&format!("sport={p} ")))).collect();
    format!("conntrack entries to {vip} by state and pod: {by_state:?}; those of the failed ports {:?}: {}", ports.iter().take(3).collect::<Vec<_>>(), failing.join(" | "))
}

/// The node's nftables lines that name the Service's address or either
/// pod (upstream's iptables-nft rules included): what the proxy has
/// programmed for this Service at the moment.
fn rules_naming(topo: &Topology, pods: &[&str], vip: &str) -> String {
    match kproxy_testkit::run(&["ip", "netns", "exec", topo.node.name(), "nft", "list", "ruleset"]) {
        Ok(rules) => {
            let lines: Vec<&str> = rules.lines().map(str::trim).filter(|l| l.contains(vip) || pods.iter().any(|p| l.contains(p))).collect();
            format!("the rules naming {vip} or the pods: {}", lines.join(" | "))
        }
        Err(e) => format!("could not list the rules: {e}"),
    }
}
