//! Checking a scenario's cases with real connections.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use kproxy_oracle::{scenarios, transitions, Dataplane, Origin, Packet, Scenario, Transition, Verdict};
use kproxy_core::{Protocol, Proxier, ProxierConfig, SyncRequest};

use crate::topology::{Topology, KPT};

/// One probe's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A pod answered; it saw the connection come from `peer`.
    Answered {
        /// The pod's IP.
        pod: IpAddr,
        /// The source address the pod saw.
        peer: IpAddr,
    },
    /// Refused at once.
    Refused,
    /// No answer within the timeout.
    Timeout,
    /// The node's own datagram was stopped by a filter rule on its way out
    /// (the kernel answers the send with EPERM, for a DROP and a REJECT
    /// alike, so the two cannot be told apart from the node).
    Filtered,
    /// No route, or another error.
    Other(String),
}

/// Sends `count` connections (TCP) or datagrams (UDP) for `packet` from
/// where it originates.
pub fn probe(topo: &Topology, packet: &Packet, count: usize, timeout: Duration) -> Result<Vec<Seen>, String> {
    let ns = topo.source(packet.origin, packet.src).ok_or_else(|| format!("no namespace owns source {}", packet.src))?;
    let proto = match packet.protocol {
        Protocol::Udp => "udp",
        _ => "tcp",
    };
    let out = ns.exec(&[
        "python3",
        KPT,
        "probe",
        "--src",
        &packet.src.to_string(),
        "--dst",
        &packet.dst.to_string(),
        "--port",
        &packet.dport.to_string(),
        "--proto",
        proto,
        "--count",
        &count.to_string(),
        "--timeout",
        &format!("{:.1}", timeout.as_secs_f64()),
    ])?;
    Ok(out
        .lines()
        .map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            match parts.as_slice() {
                ["ok", pod, peer] => match (pod.parse(), peer.parse()) {
                    (Ok(pod), Ok(peer)) => Seen::Answered { pod, peer },
                    _ => Seen::Other(l.to_string()),
                },
                ["refused"] => Seen::Refused,
                ["timeout"] => Seen::Timeout,
                ["filtered"] => Seen::Filtered,
                _ => Seen::Other(l.to_string()),
            }
        })
        .collect())
}

/// Checks every case of `scenario` on a topology whose node runs the
/// proxy (in nftables mode); returns a description of each case that failed.
pub fn check_scenario(topo: &Topology, scenario: &Scenario) -> Vec<String> {
    check_scenario_for(topo, scenario, Dataplane::Nftables)
}

/// [`check_scenario`] for a proxy with `dataplane`'s semantics.
pub fn check_scenario_for(topo: &Topology, scenario: &Scenario, dataplane: Dataplane) -> Vec<String> {
    let mut failures = Vec::new();
    for (case, expected) in scenario.cases.iter().zip(scenario.verdicts_for(dataplane)) {
        if let Err(why) = check_case(topo, &case.packet, &expected) {
            failures.push(format!("{} / {}: {} — {why}", scenario.name, case.name, case.packet));
        }
    }
    failures
}

/// Takes `proxier` (programming `topo`'s node, built from
/// [`Transition::combined`]) through `transition`: the first step fed and
/// synced in full, then each next step's changes (as updates) and a
/// partial sync, each step's cases checked with real traffic, with
/// `dataplane`'s semantics. Returns a description of each case that failed.
pub async fn check_transition<P: Proxier + ?Sized>(
    topo: &Topology,
    transition: &Transition,
    dataplane: Dataplane,
    proxier: &mut P,
) -> Vec<String> {
    let mut failures = Vec::new();
    for (i, step) in transition.steps.iter().enumerate() {
        if i == 0 {
            step.feed(proxier);
        } else {
            step.feed_changes_from(&transition.steps[i - 1], proxier);
        }
        if let Err(e) = proxier.sync(SyncRequest { full: i == 0 }).await {
            failures.push(format!("{} / step {i} ({}): sync failed: {e}", transition.name, step.name));
            break;
        }
        let found = tokio::task::block_in_place(|| check_scenario_for(topo, step, dataplane));
        failures.extend(found.into_iter().map(|f| format!("{} / step {i}: {f}", transition.name)));
    }
    failures
}

/// Every shared scenario (only `KPROXY_SCENARIO` when that is set), each on
/// its own topology, programmed by a proxier that `make` builds for the
/// scenario's configuration and the topology's node, fed the scenario and
/// synced in full; every case checked with real traffic with `dataplane`'s
/// semantics. Returns how many cases were checked and a line per failure.
/// Call it from a multi-threaded runtime (probes block).
pub async fn check_every_scenario<P, F>(dataplane: Dataplane, mut make: F) -> (usize, Vec<String>)
where
    P: Proxier,
    F: FnMut(&ProxierConfig, &Topology) -> P,
{
    let only = std::env::var("KPROXY_SCENARIO").ok();
    let (mut checked, mut failures) = (0, Vec::new());
    for scenario in scenarios::all().into_iter().filter(|s| only.as_ref().is_none_or(|o| o == s.name)) {
        let topo = match Topology::build(&scenario) {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{}: topology: {e}", scenario.name));
                continue;
            }
        };
        let mut proxier = make(&scenario.config, &topo);
        scenario.feed(&mut proxier);
        if let Err(e) = proxier.sync(SyncRequest { full: true }).await {
            failures.push(format!("{}: sync failed: {e}", scenario.name));
            continue;
        }
        failures.extend(tokio::task::block_in_place(|| check_scenario_for(&topo, &scenario, dataplane)));
        checked += scenario.cases.len();
    }
    (checked, failures)
}

/// Every shared transition, each on its own topology (built from
/// [`Transition::combined`]) and through one proxier that `make` builds
/// for the first step's configuration: see [`check_transition`]. Returns
/// a line per failure.
pub async fn check_every_transition<P, F>(dataplane: Dataplane, mut make: F) -> Vec<String>
where
    P: Proxier,
    F: FnMut(&ProxierConfig, &Topology) -> P,
{
    let mut failures = Vec::new();
    for t in transitions::all() {
        match Topology::build(&t.combined()) {
            Ok(topo) => {
                let mut proxier = make(&t.steps[0].config, &topo);
                failures.extend(check_transition(&topo, &t, dataplane, &mut proxier).await);
            }
            Err(e) => failures.push(format!("{}: topology: {e}", t.name)),
        }
    }
    failures
}

/// How long a probe waits for an answer or a refusal that must come: long
/// enough for software emulation with the other core busy (a refusal once
/// took 2.35 s there).
const GENEROUS: Duration = Duration::from_secs(5);

/// Checks one packet against its verdict.
pub fn check_case(topo: &Topology, packet: &Packet, expected: &Verdict) -> Result<(), String> {
    // A DROP or REJECT of the node's own UDP or SCTP datagram fails its
    // send (EPERM) before anything can time out or be refused.
    let filtered_here = packet.origin == Origin::Node && packet.protocol != Protocol::Tcp;
    match expected {
        Verdict::Drop => {
            let seen = probe(topo, packet, 1, Duration::from_millis(800))?;
            (seen == [Seen::Timeout] || (filtered_here && seen == [Seen::Filtered])).then_some(()).ok_or_else(|| format!("expected a timeout (DROP), saw {seen:?}"))
        }
        Verdict::Reject => {
            // Judged by what happened, never by how fast: a refusal is a
            // refusal (a DROP gives none within a timeout generous enough
            // for software emulation on a loaded host).
            let start = Instant::now();
            let seen = probe(topo, packet, 1, GENEROUS)?;
            (seen == [Seen::Refused] || (filtered_here && seen == [Seen::Filtered]))
                .then_some(())
                .ok_or_else(|| format!("expected a refusal (REJECT), saw {seen:?} after {:?}", start.elapsed()))
        }
        Verdict::NotService => {
            let seen = probe(topo, packet, 1, Duration::from_millis(500))?;
            match seen.as_slice() {
                // The address itself answering (a responder beyond the
                // node) is traffic left alone; an endpoint is not.
                [Seen::Answered { pod, .. }] if *pod != packet.dst => Err(format!("expected no service, but pod {pod} answered")),
                _ => Ok(()),
            }
        }
        Verdict::Forward { targets, affinity_seconds } => {
            let wanted: BTreeSet<SocketAddr> = targets.iter().map(|t| t.endpoint).collect();
            let count = if affinity_seconds.is_some() { 8 } else { (16 * targets.len()).max(4) };
            let seen = probe(topo, packet, count, GENEROUS)?;
            let mut answered = BTreeSet::new();
            for s in &seen {
                let Seen::Answered { pod, peer } = s else {
                    return Err(format!("expected an answer from {wanted:?}, saw {s:?}"));
                };
                let target = targets
                    .iter()
                    .find(|t| t.endpoint.ip() == *pod)
                    .ok_or_else(|| format!("pod {pod} answered, expected one of {wanted:?}"))?;
                let masqueraded = *peer != packet.src;
                if masqueraded != target.masquerade {
                    return Err(format!(
                        "pod {pod} saw source {peer}: masquerade {masqueraded}, expected {}",
                        target.masquerade
                    ));
                }
                answered.insert(*pod);
            }
            let wanted_pods: BTreeSet<IpAddr> = wanted.iter().map(SocketAddr::ip).collect();
            if affinity_seconds.is_some() {
                (answered.len() == 1).then_some(()).ok_or_else(|| format!("affinity broken: {count} connections reached {answered:?}"))
            } else {
                (answered == wanted_pods)
                    .then_some(())
                    .ok_or_else(|| format!("{count} connections reached {answered:?}, expected all of {wanted_pods:?}"))
            }
        }
    }
}
