//! Differential runs: the same random walks of cluster states (see
//! `kproxy_oracle::random`) through the real API server, once with
//! upstream kube-proxy and once with kproxy in the same mode, each on a
//! fresh node, every state's probes sent with real traffic. A probe that
//! one proxy answers as the oracle says and the other does not is a
//! difference; one that both miss is the oracle's own mistake. Each is
//! reported with the walk, the state and the packet.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{LoadBalancerStatus, Service, ServiceStatus};
use kproxy_oracle::{Dataplane, Scenario, Transition};
use kproxy_testkit::{check_case, Topology};

use crate::api::Api;
use crate::binaries::Binaries;
use crate::control_plane::ControlPlane;
use crate::scenario::{apply, config_in, delete, log_path, start_proxy, ProxyKind};

/// How long a state's probes may take to come right after the change into
/// it (generous: a proxy's sync on a loaded 2-core machine).
const SETTLE: Duration = Duration::from_secs(10);

/// The result of every probe of every state of every walk: `Ok` when the
/// proxy did what the oracle says, else what it did.
pub type Results = Vec<Vec<Vec<Result<(), String>>>>;

/// Applies the change from `before` to `after` through the API: objects
/// gone are deleted, the rest applied (a Service no longer a LoadBalancer
/// loses its status' ingress).
pub fn apply_change(api: &Api, before: &Scenario, after: &Scenario) -> Result<(), String> {
    let name = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| m.name.clone().unwrap_or_default();
    let kept_slices: Vec<String> = after.slices.iter().map(|s| name(&s.metadata)).collect();
    for slice in before.slices.iter().filter(|s| !kept_slices.contains(&name(&s.metadata))) {
        api.delete(slice)?;
    }
    let kept: Vec<String> = after.services.iter().map(|s| name(&s.metadata)).collect();
    for svc in before.services.iter().filter(|s| !kept.contains(&name(&s.metadata))) {
        api.delete(svc)?;
    }
    let was_lb: BTreeMap<String, bool> = before.services.iter().map(|s| (name(&s.metadata), is_lb(s))).collect();
    for svc in &after.services {
        api.apply(svc)?;
        if is_lb(svc) {
            api.apply_status(svc)?;
        } else if was_lb.get(&name(&svc.metadata)).copied().unwrap_or(false) {
            let mut cleared = svc.clone();
            cleared.status = Some(ServiceStatus { load_balancer: Some(LoadBalancerStatus { ingress: None }), ..Default::default() });
            api.apply_status(&cleared)?;
        }
    }
    for slice in &after.slices {
        api.apply(slice)?;
    }
    Ok(())
}

fn is_lb(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
}

/// Each probe of `step` with `mode`'s semantics, in rounds of every probe,
/// until one round passes whole, or [`SETTLE`] has passed and at least two
/// rounds ran. The second round matters: a round can outlast `SETTLE` by
/// itself, and the first may have met the proxy before its first sync (a
/// datagram sent then gets no answer, whatever the proxy does next).
fn settle(topo: &Topology, step: &Scenario, mode: Dataplane) -> Vec<Result<(), String>> {
    let start = Instant::now();
    for round in 1.. {
        let results: Vec<Result<(), String>> = step.cases.iter().map(|c| check_case(topo, &c.packet, c.expected_for(mode))).collect();
        if results.iter().all(Result::is_ok) || (round >= 2 && start.elapsed() > SETTLE) {
            return results;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    unreachable!("the rounds end by returning")
}

/// Runs every walk with `kind` (its binary at `binary`) in `mode`, against
/// one fresh control plane: per walk a fresh node, the first state applied
/// before the proxy starts, then each next state's changes while it runs.
pub fn run(bins: &Binaries, kind: ProxyKind, binary: &str, mode: Dataplane, walks: &[Transition]) -> Result<Results, String> {
    let mut cp = ControlPlane::start(bins)?;
    let api = cp.admin()?;
    let kubeconfig = cp.kubeconfig(kind.user())?;
    let mut all = Vec::new();
    for walk in walks {
        let mut topo = Topology::build(&walk.combined())?;
        cp.attach(&topo.node)?;
        apply(&api, &walk.steps[0])?;
        start_proxy(kind, &mut topo.node, &config_in(&walk.steps[0], &kubeconfig, mode), cp.dir(), binary)?;
        let mut per_step = Vec::new();
        for (i, step) in walk.steps.iter().enumerate() {
            if i > 0 {
                apply_change(&api, &walk.steps[i - 1], step)?;
            }
            per_step.push(settle(&topo, step, mode));
        }
        if per_step.iter().flatten().any(Result::is_err) {
            let log = std::fs::read_to_string(log_path(kind, &topo.node, cp.dir())).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
            eprintln!("--- last lines of the {kind:?} log for walk {}:\n{}", walk.name, tail.join("\n"));
        }
        all.push(per_step);
        drop(topo);
        delete(&api, walk.steps.last().expect("a walk has a state"))?;
    }
    Ok(all)
}

/// The probes on which kproxy and upstream differ, or on which both miss
/// the oracle, one line each: walk, state, probe, packet, what each did.
pub fn differences(walks: &[Transition], kproxy: &Results, upstream: &Results) -> Vec<String> {
    let mut out = Vec::new();
    for (w, walk) in walks.iter().enumerate() {
        for (s, step) in walk.steps.iter().enumerate() {
            for (c, case) in step.cases.iter().enumerate() {
                let k = &kproxy[w][s][c];
                let u = &upstream[w][s][c];
                let what = match (k, u) {
                    (Ok(()), Ok(())) => continue,
                    (Err(_), Ok(())) => "kproxy differs from upstream",
                    (Ok(()), Err(_)) => "upstream differs from kproxy (and the oracle)",
                    (Err(_), Err(_)) => "both differ from the oracle",
                };
                let show = |r: &Result<(), String>| r.as_ref().err().cloned().unwrap_or_else(|| "as the oracle says".into());
                out.push(format!(
                    "{what}: walk {} state {} ({}), {}: {} — kproxy: {}; upstream: {}",
                    walk.name,
                    s,
                    step.name,
                    case.name,
                    case.packet,
                    show(k),
                    show(u)
                ));
            }
        }
    }
    out
}
